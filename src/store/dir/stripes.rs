//! Lock stripes: the per-key serialization of [`DirStore`](super::DirStore), and
//! the version floors that keep versions from being reused.
//!
//! Every key hashes to one of [`STRIPES`] stripes. A stripe is a lock file
//! (`stripes/NN.lock`) taken with `flock` through a fresh open for every
//! acquisition: locks through different opens exclude each other within one process
//! as across processes, so threads and processes are serialized the same way, and a
//! dead process's locks vanish with it. Several stripes are always taken in
//! ascending order, so acquisitions cannot deadlock.
//!
//! A stripe also has a floor (`stripes/NN.floor`): a number at least as large as
//! every version any deleted or moved-aside record of the stripe ever had. A new key
//! gets version `floor + 1`; an update adds one. So a re-created key's first version
//! is above every version its earlier incarnations had (no ABA). When a record is
//! moved aside with a version that cannot be read, the floor jumps by 2³², which
//! covers any record updated fewer than 2³² times. The floor changes only under the
//! stripe's exclusive lock and durably before the delete it accounts for.

use std::path::{Path, PathBuf};

use crate::atomic::AtomicWriter;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::store::Version;
use crate::vfs::{Vfs, VfsFile};

/// Number of stripes. Fixed: it is part of the on-disk format.
pub(super) const STRIPES: usize = 64;

/// How far the floor jumps past a record whose version is unreadable.
const UNKNOWN_VERSION_MARGIN: u64 = 1 << 32;

pub(super) fn lock_path(dir: &Path, stripe: usize) -> PathBuf {
    dir.join(format!("{stripe:02}.lock"))
}

fn floor_path(dir: &Path, stripe: usize) -> PathBuf {
    dir.join(format!("{stripe:02}.floor"))
}

/// Held stripe locks, released when dropped (closing the files releases them).
#[derive(Debug)]
pub(super) struct StripeGuard<F> {
    /// Sorted stripe numbers.
    pub(super) stripes: Vec<usize>,
    _files: Vec<F>,
}

/// Locks `stripes` (any order, duplicates allowed) in ascending order.
pub(super) fn lock<V: Vfs>(
    vfs: &V,
    dir: &Path,
    stripes: impl IntoIterator<Item = usize>,
    exclusive: bool,
) -> Result<StripeGuard<V::File>> {
    let mut stripes: Vec<usize> = stripes.into_iter().collect();
    stripes.sort_unstable();
    stripes.dedup();
    let mut files = Vec::with_capacity(stripes.len());
    for &stripe in &stripes {
        let path = lock_path(dir, stripe);
        // Never through a link, never waiting on a FIFO planted in its place.
        let file = match vfs.open_regular_file(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(crate::store::not_followed(&path, "a stripe lock file"));
            }
            Err(e) => return Err(Error::io(steps::OPEN_STRIPE_LOCK, path, e)),
        };
        if exclusive {
            file.lock().at(steps::LOCK_STRIPE, &path)?;
        } else {
            file.lock_shared().at(steps::LOCK_STRIPE_SHARED, &path)?;
        }
        files.push(file);
    }
    Ok(StripeGuard {
        stripes,
        _files: files,
    })
}

/// The version of a key created now in `stripe`.
pub(super) fn first_version<V: Vfs>(vfs: &V, dir: &Path, stripe: usize) -> Result<Version> {
    let floor = read_floor(vfs, dir, stripe)?;
    // A floor this high was written by nothing but damage: versions stay far
    // below it (see `raise_floor`).
    match floor.checked_add(1).filter(|v| *v < u64::MAX / 2) {
        Some(version) => Ok(Version::new(version)),
        None => Err(Error::CorruptFile {
            path: floor_path(dir, stripe),
            reason: format!("version floor {floor} leaves no version to create a key at"),
        }),
    }
}

/// Raises the floor of `stripe` to `deleted` (or, when the deleted record's version
/// could not be read, past any version it can have had), durably. Call with the stripe locked exclusively, before the delete.
pub(super) fn raise_floor<V: Vfs>(
    writer: &AtomicWriter<V>,
    dir: &Path,
    stripe: usize,
    deleted: Option<Version>,
) -> Result<()> {
    let floor = read_floor(writer.vfs(), dir, stripe)?;
    let needed = match deleted {
        Some(v) => Some(v.get()),
        // The record was created at floor + 1 at most, and updated fewer than 2³²
        // times.
        None => floor.checked_add(UNKNOWN_VERSION_MARGIN + 1),
    };
    let Some(needed) = needed.filter(|n| *n < u64::MAX / 2) else {
        return Err(Error::CorruptFile {
            path: floor_path(dir, stripe),
            reason: "version space exhausted".to_owned(),
        });
    };
    if needed <= floor {
        return Ok(());
    }
    // Checked at every write, not only at open: the floor must not land in a
    // symlink planted since.
    crate::store::is_own_dir(writer.vfs(), dir)?;
    writer.write(floor_path(dir, stripe), needed.to_string().as_bytes())
}

/// The most a floor file may hold: a `u64` is 20 digits, and whitespace
/// around it is tolerated.
const MAX_FLOOR_LEN: usize = 256;

fn read_floor<V: Vfs>(vfs: &V, dir: &Path, stripe: usize) -> Result<u64> {
    let path = floor_path(dir, stripe);
    let Some(bytes) =
        crate::store::read_own_file(vfs, &path, MAX_FLOOR_LEN, steps::READ_VERSION_FLOOR)?
    else {
        return Ok(0);
    };
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .ok_or_else(|| Error::CorruptFile {
            path,
            reason: "version floor is not a number".to_owned(),
        })
}
