//! Which process wrote a record, and whether that process has provably exited.
//!
//! A process is named by what Linux shows of it in `/proc`: its id, its start
//! time, the kernel boot it ran under and its PID namespace. Together they name
//! one process for the life of a boot: an id can be reused by a later process,
//! but not with the same start time. Everything here only reads small `/proc`
//! files with plain, size-bounded reads, answers "cannot tell" whenever something
//! is missing, unreadable or unexpected, and never panics.
//!
//! These reads go to `/proc` with `std::fs`, not through the [`vfs`](crate::vfs)
//! layer: `/proc` is the kernel's view of its processes, not a file of a store,
//! and the faults and power losses the layer lets tests inject have no meaning
//! there.
#![allow(clippy::disallowed_methods)]

use serde::{Deserialize, Serialize};

/// A process, recorded so that another process of the same machine can later
/// tell whether it is still running: see [`liveness`](ProcessIdentity::liveness).
///
/// Stored as JSON in the records that carry it:
///
/// ```text
/// {"pid":4242,"start_ticks":1234567,"boot_id":"8f6c…","pid_ns":4026531836,"time_ns":4026531834}
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ProcessIdentity {
    /// Its process id, in its PID namespace.
    pub pid: u32,
    /// When it started, in clock ticks since boot (field 22 of
    /// `/proc/<pid>/stat`): tells it apart from a later process given the same id.
    pub start_ticks: u64,
    /// The kernel boot it ran under (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Its PID namespace: the inode number in `/proc/<pid>/ns/pid`.
    pub pid_ns: u64,
    /// Its time namespace (which shifts the start times it sees), the inode
    /// number in `/proc/<pid>/ns/time`; `None` on kernels without time
    /// namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ns: Option<u64>,
}

/// What this process can tell about another from its [`ProcessIdentity`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProcessLiveness {
    /// A process with that id and start time exists. It may have exited and not
    /// yet been reaped (a zombie), which is not told apart: a zombie thread group
    /// leader can still have running threads.
    Alive,
    /// It has provably exited: it ran under this boot, in this process's PID and
    /// time namespaces, and no process with its id and start time exists (its id
    /// is free, or taken by a process that started later).
    Dead,
    /// Cannot tell: another boot or machine, another PID or time namespace, a
    /// `/proc` that is missing, unreadable, hides other users' processes, or
    /// belongs to another PID namespace, a malformed identity, or a system other
    /// than Linux.
    Unknown,
}

impl ProcessIdentity {
    /// This process, or `None` where it cannot be named reliably: on systems
    /// other than Linux, or when `/proc` is missing, unreadable or shows another
    /// PID namespace than this process's.
    ///
    /// Read once per process and kept.
    pub fn current() -> Option<ProcessIdentity> {
        #[cfg(target_os = "linux")]
        {
            linux::with_observer(|observer| observer.me.clone())
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }

    /// Whether this process still runs, as far as the calling process can tell
    /// from `/proc`. [`ProcessLiveness::Dead`] is an answer only when provable:
    /// see its documentation. Reads at most one small file.
    pub fn liveness(&self) -> ProcessLiveness {
        #[cfg(target_os = "linux")]
        {
            linux::with_observer(|observer| observer.liveness_of(self))
                .unwrap_or(ProcessLiveness::Unknown)
        }
        #[cfg(not(target_os = "linux"))]
        {
            ProcessLiveness::Unknown
        }
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use std::ffi::OsStr;
    use std::fs::File;
    use std::io::{self, Read};
    use std::path::Path;
    use std::sync::OnceLock;

    use super::{ProcessIdentity, ProcessLiveness};

    /// Bound on `/proc/<pid>/stat` (about 300 bytes) and the boot id (37).
    const SMALL_FILE: u64 = 4096;
    /// Bound on `/proc/self/status` (about 1.5 KiB).
    const STATUS_FILE: u64 = 64 << 10;
    /// Bound on `/proc/self/mountinfo`: a line per mount, thousands of mounts on
    /// a busy host. Past this, whether `/proc` hides processes is not known.
    const MOUNTINFO_FILE: u64 = 8 << 20;
    /// No process id reaches this (`PID_MAX_LIMIT` on 64-bit Linux).
    const PID_MAX_LIMIT: u32 = 1 << 22;

    /// This process as it sees itself, and what its `/proc` can prove.
    pub(super) struct Observer {
        pub(super) me: ProcessIdentity,
        /// Whether a process id missing from `/proc` means no process has it. Not
        /// so when `/proc` is mounted with `hidepid` (systemd's `ProtectProc=`),
        /// which hides other users' processes as if they did not exist.
        absence_is_exit: bool,
    }

    static OBSERVER: OnceLock<Option<Observer>> = OnceLock::new();

    /// Runs `f` with this process's observer, read once per process. A process
    /// forked since it was read (another id) reads its own afresh.
    pub(super) fn with_observer<T>(f: impl FnOnce(&Observer) -> T) -> Option<T> {
        match OBSERVER.get_or_init(read_observer) {
            Some(observer) if observer.me.pid == std::process::id() => Some(f(observer)),
            Some(_) => read_observer().map(|observer| f(&observer)),
            None => None,
        }
    }

    impl Observer {
        pub(super) fn liveness_of(&self, other: &ProcessIdentity) -> ProcessLiveness {
            let me = &self.me;
            // Another boot, or another machine that reaches the same store: no
            // process id here says anything about it. In another PID namespace
            // the id names another process; in another time namespace start
            // times are shifted.
            if other.boot_id != me.boot_id
                || other.pid_ns != me.pid_ns
                || other.time_ns != me.time_ns
            {
                return ProcessLiveness::Unknown;
            }
            if other.pid == 0 || other.pid >= PID_MAX_LIMIT {
                return ProcessLiveness::Unknown;
            }
            let seen = if other.pid == me.pid {
                Seen::Started(me.start_ticks)
            } else {
                look_up(other.pid)
            };
            match seen {
                Seen::Absent if self.absence_is_exit => ProcessLiveness::Dead,
                Seen::Started(ticks) if ticks == other.start_ticks => ProcessLiveness::Alive,
                // The id was given to a process that started later: the one
                // recorded has exited. (One that started earlier would have had
                // the id all along: the record is wrong, and proves nothing.)
                Seen::Started(ticks) if ticks > other.start_ticks => ProcessLiveness::Dead,
                _ => ProcessLiveness::Unknown,
            }
        }
    }

    enum Seen {
        /// No `/proc/<pid>`.
        Absent,
        /// A process with this id, started at this tick.
        Started(u64),
        /// Unreadable or unexpected.
        Unclear,
    }

    fn look_up(pid: u32) -> Seen {
        let path = format!("/proc/{pid}/stat");
        let bytes = match read_bounded(Path::new(&path), SMALL_FILE) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Seen::Absent,
            Err(_) => return Seen::Unclear,
        };
        match parse_stat(&bytes) {
            Some(stat) if stat.pid == pid => Seen::Started(stat.start_ticks),
            _ => Seen::Unclear,
        }
    }

    fn read_observer() -> Option<Observer> {
        let pid = std::process::id();
        // `/proc` must be the one of our own PID namespace, or the ids in it are
        // not the ids we and our peers record: `NSpid` lists our id in each
        // namespace from the one `/proc` shows down to ours, so exactly one
        // entry, equal to our id, says it is ours.
        let status = read_bounded(Path::new("/proc/self/status"), STATUS_FILE).ok()?;
        if parse_nspid(&status)? != [pid] {
            return None;
        }
        let stat = parse_stat(&read_bounded(Path::new("/proc/self/stat"), SMALL_FILE).ok()?)?;
        if stat.pid != pid {
            return None;
        }
        let boot_id =
            read_bounded(Path::new("/proc/sys/kernel/random/boot_id"), SMALL_FILE).ok()?;
        let boot_id = parse_boot_id(&boot_id)?;
        let pid_ns = parse_ns_link(
            std::fs::read_link("/proc/self/ns/pid").ok()?.as_os_str(),
            "pid",
        )?;
        let time_ns = match std::fs::read_link("/proc/self/ns/time") {
            Ok(link) => Some(parse_ns_link(link.as_os_str(), "time")?),
            // A kernel without time namespaces (before 5.6).
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(_) => return None,
        };
        let absence_is_exit = read_bounded(Path::new("/proc/self/mountinfo"), MOUNTINFO_FILE)
            .ok()
            .and_then(|mountinfo| proc_hides_pids(&mountinfo))
            == Some(false);
        Some(Observer {
            me: ProcessIdentity {
                pid,
                start_ticks: stat.start_ticks,
                boot_id,
                pid_ns,
                time_ns,
            },
            absence_is_exit,
        })
    }

    /// Reads at most `limit` bytes of a `/proc` file; a longer one is an error.
    fn read_bounded(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        File::open(path)?
            .take(limit.saturating_add(1))
            .read_to_end(&mut bytes)?;
        if bytes.len() as u64 > limit {
            return Err(io::Error::other("longer than a /proc file of its kind"));
        }
        Ok(bytes)
    }

    /// The fields of `/proc/<pid>/stat` we use.
    #[derive(Debug, PartialEq, Eq)]
    pub(super) struct Stat {
        pub(super) pid: u32,
        pub(super) start_ticks: u64,
    }

    /// Parses `/proc/<pid>/stat`: `pid (comm) state ppid … starttime …`. The
    /// command name may hold anything (spaces, parentheses, newlines), so the
    /// fields after it are those after the last `)`.
    pub(super) fn parse_stat(bytes: &[u8]) -> Option<Stat> {
        let open = bytes.iter().position(|&b| b == b'(')?;
        let close = bytes.iter().rposition(|&b| b == b')')?;
        if close < open {
            return None;
        }
        let pid = std::str::from_utf8(bytes.get(..open)?)
            .ok()?
            .strip_suffix(' ')?;
        let rest = std::str::from_utf8(bytes.get(close + 1..)?).ok()?;
        let mut fields = rest.split_ascii_whitespace();
        // Field 3, the state: one letter.
        let state = fields.next()?;
        if state.len() != 1 || !state.bytes().all(|b| b.is_ascii_alphabetic()) {
            return None;
        }
        // Field 22 is the 19th after the state. The next one must follow, or the
        // number may be cut short.
        let start_ticks = fields.nth(18)?;
        fields.next()?;
        Some(Stat {
            pid: number(pid)?,
            start_ticks: number(start_ticks)?,
        })
    }

    /// The ids of the `NSpid:` line of `/proc/<pid>/status`.
    pub(super) fn parse_nspid(status: &[u8]) -> Option<Vec<u32>> {
        let text = std::str::from_utf8(status).ok()?;
        let line = text.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
        let ids: Option<Vec<u32>> = line.split_ascii_whitespace().map(number).collect();
        ids.filter(|ids| !ids.is_empty())
    }

    /// The boot id: a UUID and a newline.
    pub(super) fn parse_boot_id(bytes: &[u8]) -> Option<String> {
        let text = std::str::from_utf8(bytes).ok()?.trim_end_matches('\n');
        let well_formed = (1..=64).contains(&text.len())
            && text.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
        well_formed.then(|| text.to_owned())
    }

    /// The inode number of a namespace link, `pid:[4026531836]`.
    pub(super) fn parse_ns_link(link: &OsStr, kind: &str) -> Option<u64> {
        let inode = link
            .to_str()?
            .strip_prefix(kind)?
            .strip_prefix(":[")?
            .strip_suffix(']')?;
        number(inode)
    }

    /// Whether the `proc` filesystem mounted at `/proc` hides processes (any
    /// `hidepid` but `0`/`off`, on any of the mounts stacked there); `None` if
    /// `mountinfo` shows none.
    pub(super) fn proc_hides_pids(mountinfo: &[u8]) -> Option<bool> {
        let text = std::str::from_utf8(mountinfo).ok()?;
        let mut found = None;
        for line in text.lines() {
            // id parent major:minor root mount-point options [optional…] - type source super-options
            let fields: Vec<&str> = line.split(' ').collect();
            if fields.get(4) != Some(&"/proc") {
                continue;
            }
            let dash = fields.iter().skip(6).position(|f| *f == "-")?;
            let after = fields.get(6 + dash + 1..)?;
            if after.first() != Some(&"proc") {
                continue;
            }
            let options = after.get(2).copied().unwrap_or("");
            let hides = options.split(',').any(|option| {
                option
                    .strip_prefix("hidepid=")
                    .is_some_and(|value| value != "0" && value != "off")
            });
            found = Some(found.unwrap_or(false) || hides);
        }
        found
    }

    /// A decimal number, digits only.
    fn number<T: std::str::FromStr>(text: &str) -> Option<T> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse().ok()
    }

    #[cfg(test)]
    #[allow(clippy::unwrap_used)]
    mod tests {
        use super::*;

        /// A stat line with `comm` as given and start time 777.
        fn stat_line(pid: &str, comm: &[u8]) -> Vec<u8> {
            let mut line = format!("{pid} (").into_bytes();
            line.extend_from_slice(comm);
            line.extend_from_slice(
                b") S 1 42 42 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 777 1000 200 \
                  18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n",
            );
            line
        }

        #[test]
        fn stat_fields_are_found_after_the_last_parenthesis() {
            for comm in [
                &b"sleep"[..],
                b"a b",
                b"(x)",
                b") S 1 2 3 4",
                b"x) 9 9 (y",
                b"new\nline",
                b"\xff\xfe",
                b"",
            ] {
                assert_eq!(
                    parse_stat(&stat_line("4242", comm)),
                    Some(Stat {
                        pid: 4242,
                        start_ticks: 777
                    }),
                    "comm {comm:?}"
                );
            }
        }

        #[test]
        fn truncated_or_garbage_stat_is_no_answer() {
            let full = stat_line("4242", b"worker");
            // Every prefix that stops before the start time.
            let start = full.windows(5).position(|w| w == b" 777 ").unwrap();
            for end in 0..=start + 5 {
                assert_eq!(parse_stat(&full[..end]), None, "{:?}", &full[..end]);
            }
            let valid = b"42 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0";
            assert_eq!(
                parse_stat(valid),
                Some(Stat {
                    pid: 42,
                    start_ticks: 777
                })
            );
            for bytes in [
                &b""[..],
                b"\x00\x00\x00",
                b"(((",
                b")",
                b") (",
                b"4242 worker S 1 2",
                b"abc (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0",
                b"+42 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0",
                b"42 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 -7 0",
                b"42 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 99999999999999999999999 0",
                b"42 (w) SS 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0",
                b"99999999999 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0",
                b"42 (w) S 1 42 42 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 7\xff7 0",
            ] {
                assert_eq!(parse_stat(bytes), None, "{bytes:?}");
            }
        }

        #[test]
        fn our_own_stat_is_read() {
            let bytes = read_bounded(Path::new("/proc/self/stat"), SMALL_FILE).unwrap();
            let stat = parse_stat(&bytes).unwrap();
            assert_eq!(stat.pid, std::process::id());
            assert!(stat.start_ticks > 0);
        }

        #[test]
        fn namespace_links_boot_ids_and_nspid_are_parsed_strictly() {
            let link = |s: &str| parse_ns_link(OsStr::new(s), "pid");
            assert_eq!(link("pid:[4026531836]"), Some(4026531836));
            for bad in [
                "pid:[]",
                "mnt:[4026531836]",
                "pid:[x1]",
                "pid:4026531836",
                "pid:[1]x",
            ] {
                assert_eq!(link(bad), None, "{bad}");
            }
            assert_eq!(
                parse_boot_id(b"b483c490-994b-4663-bc44-a1af62b1cb43\n").as_deref(),
                Some("b483c490-994b-4663-bc44-a1af62b1cb43")
            );
            for bad in [&b""[..], b"\n", b"../etc", b"\xff", &[b'a'; 65]] {
                assert_eq!(parse_boot_id(bad), None, "{bad:?}");
            }
            assert_eq!(
                parse_nspid(b"Name:\tx\nNSpid:\t25035\nNSsid:\t1\n"),
                Some(vec![25035])
            );
            assert_eq!(parse_nspid(b"NSpid:\t25035\t2\n"), Some(vec![25035, 2]));
            for bad in [&b"Name:\tx\n"[..], b"NSpid:\n", b"NSpid:\tx\n", b"\xff"] {
                assert_eq!(parse_nspid(bad), None, "{bad:?}");
            }
        }

        #[test]
        fn hidepid_on_proc_is_seen() {
            let line = |options: &str| {
                format!(
                    "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
                     22 27 0:21 / /proc rw,relatime shared:12 - proc proc {options}\n"
                )
            };
            assert_eq!(proc_hides_pids(line("rw").as_bytes()), Some(false));
            assert_eq!(
                proc_hides_pids(line("rw,hidepid=0").as_bytes()),
                Some(false)
            );
            assert_eq!(
                proc_hides_pids(line("rw,hidepid=off").as_bytes()),
                Some(false)
            );
            for hiding in ["rw,hidepid=2", "rw,hidepid=invisible", "hidepid=1,gid=5"] {
                assert_eq!(
                    proc_hides_pids(line(hiding).as_bytes()),
                    Some(true),
                    "{hiding}"
                );
            }
            // A hiding mount stacked on a plain one still hides.
            let stacked = format!("{}{}", line("rw"), line("rw,hidepid=2"));
            assert_eq!(proc_hides_pids(stacked.as_bytes()), Some(true));
            assert_eq!(
                proc_hides_pids(b"1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"),
                None
            );
            assert_eq!(proc_hides_pids(b"22 27 0:21 / /proc rw\n"), None);
            assert_eq!(proc_hides_pids(b"\xff"), None);
        }

        fn me() -> ProcessIdentity {
            ProcessIdentity::current().unwrap()
        }

        #[test]
        fn we_are_alive_and_an_earlier_process_with_our_id_is_dead() {
            assert_eq!(me().liveness(), ProcessLiveness::Alive);
            let mut earlier = me();
            earlier.start_ticks -= 1;
            assert_eq!(earlier.liveness(), ProcessLiveness::Dead);
            // A record claiming a later start than the process with that id has
            // is wrong, and proves nothing.
            let mut later = me();
            later.start_ticks += 1;
            assert_eq!(later.liveness(), ProcessLiveness::Unknown);
        }

        #[test]
        fn other_boots_namespaces_and_bad_ids_cannot_be_told() {
            let mut other_boot = me();
            other_boot.boot_id = "00000000-0000-0000-0000-000000000000".into();
            let mut other_pid_ns = me();
            other_pid_ns.pid_ns += 1;
            let mut other_time_ns = me();
            other_time_ns.time_ns = Some(other_time_ns.time_ns.unwrap_or(0) + 1);
            let mut pid_zero = me();
            pid_zero.pid = 0;
            let mut pid_too_large = me();
            pid_too_large.pid = u32::MAX;
            for (what, identity) in [
                ("other boot", other_boot),
                ("other pid namespace", other_pid_ns),
                ("other time namespace", other_time_ns),
                ("pid 0", pid_zero),
                ("pid too large", pid_too_large),
            ] {
                assert_eq!(identity.liveness(), ProcessLiveness::Unknown, "{what}");
            }
        }

        #[test]
        fn an_identity_round_trips_as_json() {
            let json = serde_json::to_string(&me()).unwrap();
            assert!(json.contains(r#""pid":"#), "{json}");
            let back: ProcessIdentity = serde_json::from_str(&json).unwrap();
            assert_eq!(back, me());
        }
    }
}
