//! The one classifier of I/O errors: whether the same request, made again
//! later, may succeed. [`Error::is_transient`](crate::Error::is_transient)
//! and the pipeline's [`classify_io`](crate::pipeline::classify_io) both
//! read it, so a store and a stage never disagree about an OS error.

use std::io;

/// Whether an I/O error's cause may pass by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transience {
    /// The error describes a moment, not the request: interrupted, would
    /// block, timed out, busy, out of space or quota, out of memory or of file
    /// descriptors, and the network kinds (connection refused, reset or
    /// aborted, not connected, broken pipe, host or network unreachable,
    /// network down).
    Transient,
    /// Retrying cannot change it: not found, permission denied, invalid input
    /// or data, unexpected end of file, unsupported, already exists, a
    /// read-only filesystem, and the rest of the kinds the standard library
    /// names.
    Permanent,
    /// The error does not say: `Other`, and OS errors the standard library
    /// leaves uncategorized (`EIO` among them). Each user decides by what a
    /// wrong guess costs it.
    Unknown,
}

/// The transience of an error of `kind`.
pub(crate) fn of_kind(kind: io::ErrorKind) -> Transience {
    use io::ErrorKind::*;
    match kind {
        Interrupted | WouldBlock | TimedOut | ResourceBusy | StorageFull | QuotaExceeded
        | ConnectionRefused | ConnectionReset | ConnectionAborted | NotConnected | BrokenPipe
        | HostUnreachable | NetworkUnreachable | NetworkDown | OutOfMemory => Transience::Transient,
        NotFound
        | PermissionDenied
        | InvalidInput
        | InvalidData
        | UnexpectedEof
        | Unsupported
        | AlreadyExists
        | AddrInUse
        | AddrNotAvailable
        | NotADirectory
        | IsADirectory
        | DirectoryNotEmpty
        | ReadOnlyFilesystem
        | StaleNetworkFileHandle
        | FileTooLarge
        | InvalidFilename
        | TooManyLinks
        | CrossesDevices
        | Deadlock
        | ArgumentListTooLong
        | WriteZero
        | NotSeekable
        | ExecutableFileBusy => Transience::Permanent,
        // `Other`, `Uncategorized` and the kinds not yet stable.
        _ => Transience::Unknown,
    }
}

/// The transience of `e`: by its kind, and for an OS error the standard
/// library leaves uncategorized, by its number where that tells.
pub(crate) fn of_error(e: &io::Error) -> Transience {
    match of_kind(e.kind()) {
        Transience::Unknown => match e.raw_os_error() {
            // EMFILE and ENFILE (the same numbers on every Unix): the process
            // or the system has no file descriptor free for now, as a full
            // disk has no block free.
            Some(23 | 24) if cfg!(unix) => Transience::Transient,
            _ => Transience::Unknown,
        },
        known => known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use io::ErrorKind::*;

    const TRANSIENT: [io::ErrorKind; 15] = [
        Interrupted,
        WouldBlock,
        TimedOut,
        ResourceBusy,
        StorageFull,
        QuotaExceeded,
        ConnectionRefused,
        ConnectionReset,
        ConnectionAborted,
        NotConnected,
        BrokenPipe,
        HostUnreachable,
        NetworkUnreachable,
        NetworkDown,
        OutOfMemory,
    ];

    const PERMANENT: [io::ErrorKind; 23] = [
        NotFound,
        PermissionDenied,
        InvalidInput,
        InvalidData,
        UnexpectedEof,
        Unsupported,
        AlreadyExists,
        AddrInUse,
        AddrNotAvailable,
        NotADirectory,
        IsADirectory,
        DirectoryNotEmpty,
        ReadOnlyFilesystem,
        StaleNetworkFileHandle,
        FileTooLarge,
        InvalidFilename,
        TooManyLinks,
        CrossesDevices,
        Deadlock,
        ArgumentListTooLong,
        WriteZero,
        NotSeekable,
        ExecutableFileBusy,
    ];

    #[test]
    fn each_named_kind_has_its_class() {
        for kind in TRANSIENT {
            assert_eq!(of_kind(kind), Transience::Transient, "{kind:?}");
            assert_eq!(
                of_error(&io::Error::from(kind)),
                Transience::Transient,
                "{kind:?}"
            );
        }
        for kind in PERMANENT {
            assert_eq!(of_kind(kind), Transience::Permanent, "{kind:?}");
            assert_eq!(
                of_error(&io::Error::from(kind)),
                Transience::Permanent,
                "{kind:?}"
            );
        }
        assert_eq!(of_kind(Other), Transience::Unknown);
        assert_eq!(of_error(&io::Error::other("x")), Transience::Unknown);
    }

    /// OS errors as the system returns them (by number), Linux numbering:
    /// each takes its kind's class, and the uncategorized ones are unknown
    /// unless their number tells.
    #[cfg(target_os = "linux")]
    #[test]
    fn os_errors_by_number() {
        let class = |code| of_error(&io::Error::from_raw_os_error(code));
        for (name, code) in [
            ("EINTR", 4),
            ("EAGAIN", 11),
            ("ENOMEM", 12),
            ("EBUSY", 16),
            ("ENFILE", 23),
            ("EMFILE", 24),
            ("ENOSPC", 28),
            ("EPIPE", 32),
            ("ENETDOWN", 100),
            ("ENETUNREACH", 101),
            ("ECONNABORTED", 103),
            ("ECONNRESET", 104),
            ("ENOTCONN", 107),
            ("ETIMEDOUT", 110),
            ("ECONNREFUSED", 111),
            ("EHOSTUNREACH", 113),
            ("EDQUOT", 122),
        ] {
            assert_eq!(class(code), Transience::Transient, "{name}");
        }
        for (name, code) in [
            ("EPERM", 1),
            ("ENOENT", 2),
            ("EEXIST", 17),
            ("EXDEV", 18),
            ("ENOTDIR", 20),
            ("EISDIR", 21),
            ("EINVAL", 22),
            ("EFBIG", 27),
            ("EROFS", 30),
            ("ENAMETOOLONG", 36),
            ("ENOSYS", 38),
            ("ENOTEMPTY", 39),
            ("ESTALE", 116),
        ] {
            assert_eq!(class(code), Transience::Permanent, "{name}");
        }
        for (name, code) in [("EIO", 5), ("ENXIO", 6), ("EBADF", 9), ("ELOOP", 40)] {
            assert_eq!(class(code), Transience::Unknown, "{name}");
        }
    }
}
