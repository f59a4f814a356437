//! How the pipeline reads artifacts back: never through a symlink, never
//! blocking on a FIFO or a device, never more than expected, and a file that a
//! stage of the run recorded only while it still has the recorded length and
//! SHA-256.
//!
//! Stage reads, the job's result and checkpoint verification all read here, so
//! "verifies" means one thing: the bytes a stage is given are the bytes the
//! stage that made them wrote.
//!
//! A read that does not verify hands the stage an error, never the bytes, and
//! the runner ends the stage as a transient failure whatever it returns (see
//! the "Verified inputs" part of [`Pipeline`](super::Pipeline)'s docs). The run
//! does not go back to the stage that wrote the file: a file that changes
//! again and again would make it loop. The next run's checkpoint verification,
//! which reads here too, finds that stage stale and runs it again.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::checkpoint::{Artifact, hex};
use super::paths;
use crate::error::steps;
use crate::error::{Error, IoContext, Result};
use crate::vfs::{Vfs, VfsFile};

/// The artifacts recorded by the stages of a run so far (skipped after they
/// verified, or run), by path: what a later read of that path is checked
/// against. A path recorded by two stages keeps the later record.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    by_path: BTreeMap<PathBuf, (String, Artifact)>,
}

impl Recorded {
    /// Adds the artifacts `stage` recorded.
    pub(crate) fn add(&mut self, stage: &str, artifacts: &[Artifact]) {
        for artifact in artifacts {
            self.by_path
                .insert(artifact.path.clone(), (stage.to_owned(), artifact.clone()));
        }
    }

    /// The stage that recorded `rel` last, and its record.
    pub(crate) fn get(&self, rel: &Path) -> Option<(&str, &Artifact)> {
        self.by_path
            .get(rel)
            .map(|(stage, artifact)| (stage.as_str(), artifact))
    }
}

/// How an artifact differs from its record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Mismatch {
    /// Nothing is there.
    Missing,
    /// A symlink, a FIFO, a socket, a device or a directory is there.
    NotRegular,
    /// Its length is not the recorded one.
    Length { found: u64, recorded: u64 },
    /// Its length changed while it was read.
    Changed,
    /// Same length, other bytes.
    Digest,
    /// The record names no file below the artifact root.
    BadPath,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Mismatch::Missing => f.write_str("it is missing"),
            Mismatch::NotRegular => f.write_str(
                "it is not a regular file (a symlink, a FIFO, a device or a directory), \
                 which is neither followed nor read",
            ),
            Mismatch::Length { found, recorded } => {
                write!(f, "it is {found} bytes long, not the {recorded} recorded")
            }
            Mismatch::Changed => f.write_str("its length changed while it was read"),
            Mismatch::Digest => f.write_str("its SHA-256 is not the one recorded"),
            Mismatch::BadPath => f.write_str("its recorded path is not below the artifact root"),
        }
    }
}

/// Reads the artifact `artifact` records, below `root`, if it still is what
/// was recorded: `Ok(Err(mismatch))` if not. At most the recorded length and
/// one byte more are read. With `keep` false the bytes are only checked, and
/// an empty vector is returned.
///
/// # Errors
/// [`Error::CorruptFile`] for a symlink or a file where a directory on its way
/// belongs (as writes report it); I/O errors that say nothing about the file's
/// content (permission denied, EIO), naming the path.
pub(crate) fn read_recorded<V: Vfs>(
    vfs: &V,
    root: &Path,
    artifact: &Artifact,
    keep: bool,
) -> Result<std::result::Result<Vec<u8>, Mismatch>> {
    let plain = artifact.path.components().next().is_some()
        && artifact
            .path
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
    if !plain {
        return Ok(Err(Mismatch::BadPath));
    }
    let path = root.join(&artifact.path);
    let file = match open(vfs, root, &path)? {
        Opened::File(file) => file,
        Opened::Missing => return Ok(Err(Mismatch::Missing)),
        Opened::NotRegular => return Ok(Err(Mismatch::NotRegular)),
    };
    let found = file.size().at(steps::INSPECT_ARTIFACT, &path)?;
    if found != artifact.len {
        return Ok(Err(Mismatch::Length {
            found,
            recorded: artifact.len,
        }));
    }
    let mut hasher = Sha256::new();
    let mut bytes = if keep {
        buffer_for(found, &path)?
    } else {
        Vec::new()
    };
    let read = read_at_most(&file, artifact.len.saturating_add(1), |chunk| {
        hasher.update(chunk);
        if keep {
            bytes.extend_from_slice(chunk);
        }
    })
    .at(steps::READ_ARTIFACT, &path)?;
    if read != artifact.len {
        return Ok(Err(Mismatch::Changed));
    }
    if hex(&hasher.finalize()) != artifact.sha256 {
        return Ok(Err(Mismatch::Digest));
    }
    Ok(Ok(bytes))
}

/// Reads `rel` below `root`, a file no stage of the run recorded (another job's
/// shared file, say), with the same care but nothing to check its content
/// against: at most the length it had when opened.
///
/// # Errors
/// [`Error::CorruptFile`] naming it if it, or a directory on its way, is a
/// symlink or another kind of file; I/O errors naming the path (`NotFound` if
/// it is missing).
pub(crate) fn read_unrecorded<V: Vfs>(vfs: &V, root: &Path, rel: &Path) -> Result<Vec<u8>> {
    let path = root.join(rel);
    let file = match open(vfs, root, &path)? {
        Opened::File(file) => file,
        Opened::Missing => {
            let missing = io::Error::from(io::ErrorKind::NotFound);
            return Err(Error::io(steps::READ_ARTIFACT, path, missing));
        }
        Opened::NotRegular => return Err(crate::store::not_followed(&path, "an artifact")),
    };
    let len = file.size().at(steps::INSPECT_ARTIFACT, &path)?;
    let mut bytes = buffer_for(len, &path)?;
    read_at_most(&file, len, |chunk| bytes.extend_from_slice(chunk))
        .at(steps::READ_ARTIFACT, &path)?;
    Ok(bytes)
}

/// Room for the `len` bytes of the file at `path`, or an error naming it if
/// the allocator refuses it: a file may be of any length (a sparse one costs
/// no disk), and a failed allocation would abort the process, not fail the
/// call. Permanent (`FileTooLarge`): the file will not fit on a retry either.
/// Where the system promises memory it does not have (overcommit), a file
/// just under what it promises is still read until the system runs out.
fn buffer_for(len: u64, path: &Path) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let room = usize::try_from(len)
        .map_err(|_| ())
        .and_then(|len| bytes.try_reserve_exact(len).map_err(|_| ()));
    if room.is_err() {
        let too_large = io::Error::new(
            io::ErrorKind::FileTooLarge,
            format!("the file is {len} bytes long, more than this process can hold in memory"),
        );
        return Err(Error::io(steps::READ_ARTIFACT, path, too_large));
    }
    Ok(bytes)
}

/// The room to make at first for a copy that says it is `len` bytes long,
/// before any of its bytes arrived: at most 64 MiB, so that a length a record
/// claims costs memory only as the bytes come.
pub(crate) fn first_capacity(len: u64) -> usize {
    const AT_MOST: usize = 64 << 20;
    usize::try_from(len).unwrap_or(AT_MOST).min(AT_MOST)
}

/// What [`open`] found.
enum Opened<F> {
    File(F),
    /// The file, or a directory on its way, is missing.
    Missing,
    /// A symlink, a FIFO, a socket, a device or a directory.
    NotRegular,
}

/// Opens the regular file at `path`, below `root`.
fn open<V: Vfs>(vfs: &V, root: &Path, path: &Path) -> Result<Opened<V::File>> {
    if !paths::real_dir(vfs, root, paths::parent(path))? {
        return Ok(Opened::Missing);
    }
    match vfs.open_regular_file(path) {
        Ok(file) => Ok(Opened::File(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Opened::Missing),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Opened::NotRegular),
        Err(e) => Err(Error::io(steps::OPEN_ARTIFACT, path, e)),
    }
}

/// Reads `file` from the start, at most `limit` bytes, handing each chunk to
/// `sink`; returns how many were read.
fn read_at_most<F: VfsFile>(file: &F, limit: u64, mut sink: impl FnMut(&[u8])) -> io::Result<u64> {
    const CHUNK: u64 = 64 * 1024;
    let mut buf = vec![0; usize::try_from(limit.min(CHUNK)).unwrap_or(0)];
    let mut read = 0;
    while read < limit {
        let want = usize::try_from((limit - read).min(CHUNK)).unwrap_or(buf.len());
        let n = file.read_at(&mut buf[..want], read)?;
        if n == 0 {
            break;
        }
        sink(&buf[..n]);
        read += n as u64;
    }
    Ok(read)
}
