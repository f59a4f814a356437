//! Ordered, paged listing of a [`DirStore`](super::DirStore)'s keys.
//!
//! Directory entries come in no order, and encoded names do not sort like their
//! segments, so each directory's entries are decoded and sorted by segment. A key
//! sorts before every key that extends it, so a directory's record comes before its
//! subdirectory. Subtrees that lie wholly before the cursor are skipped unread.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use super::layout::Layout;
use super::naming::{self, DIR_SUFFIX, RECORD_SUFFIX, SEGMENT_FILE};
use super::record_file;
use crate::error::steps;
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::{ListPage, read_own_file};
use crate::vfs::{FileKind, Vfs};

pub(super) fn list<V: Vfs>(
    vfs: &V,
    layout: &Layout,
    prefix: &Prefix,
    after: Option<&Key>,
    limit: usize,
) -> Result<ListPage> {
    let want = limit.saturating_add(1);
    let after = after.map(Key::segments);
    let mut keys = Vec::new();
    let p = prefix.segments();
    if !p.is_empty() && after.is_none_or(|a| p > a) {
        let key = Key::new(p.iter().cloned())?;
        if is_file(vfs, &layout.record_path(&key)) {
            keys.push(key);
        }
    }
    let mut walker = Walker {
        vfs,
        after,
        want,
        keys,
    };
    if layout.check_dirs(vfs, p)? {
        walker.walk(&layout.dir_path(p), &mut p.to_vec())?;
    }
    let mut keys = walker.keys;
    let next = if keys.len() > limit {
        keys.truncate(limit);
        keys.last().cloned()
    } else {
        None
    };
    Ok(ListPage { keys, next })
}

struct Walker<'a, V> {
    vfs: &'a V,
    after: Option<&'a [String]>,
    want: usize,
    keys: Vec<Key>,
}

/// The keys one directory holds, by segment: a record (`<seg>.r`), a directory
/// of longer keys (`<seg>.d`), or both.
#[derive(Debug, Default)]
pub(super) struct Slot {
    pub(super) record: bool,
    pub(super) dir: Option<PathBuf>,
}

/// One directory's entries, decoded, in key order: a `BTreeMap` by segment,
/// since names on disk neither come in order nor sort like their segments.
pub(super) type Entries = BTreeMap<String, Slot>;

impl<V: Vfs> Walker<'_, V> {
    fn walk(&mut self, dir: &Path, path: &mut Vec<String>) -> Result<()> {
        for (segment, slot) in read_entries(self.vfs, dir)? {
            if self.keys.len() >= self.want {
                return Ok(());
            }
            path.push(segment);
            let (emit, descend) = match self.after {
                None => (true, true),
                Some(after) => {
                    let here = path.as_slice();
                    (here > after, here > after || after.starts_with(here))
                }
            };
            if emit && slot.record {
                self.keys.push(Key::new(path.iter().cloned())?);
            }
            // A directory at the deepest key holds no key of the store.
            if descend
                && path.len() < Key::MAX_SEGMENTS
                && let Some(sub) = slot.dir
            {
                self.walk(&sub, path)?;
            }
            path.pop();
        }
        Ok(())
    }
}

/// Reads `dir` once and decodes its entries into key order (none if it is
/// gone: a delete pruned it). Call with the stripes held, at least shared: a
/// write renaming a record into `dir` during the read could make it skip the
/// record's name on some filesystems.
pub(super) fn read_entries<V: Vfs>(vfs: &V, dir: &Path) -> Result<Entries> {
    let names = match vfs.read_dir(dir) {
        Ok(names) => names,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Entries::new()),
        Err(e) => return Err(Error::io(steps::READ_DIRECTORY, dir, e)),
    };
    let mut slots = Entries::new();
    for name in names {
        let Some(name) = name.to_str() else { continue };
        // Temp files, `.segment`, and anything else hidden are not keys.
        if name.starts_with('.') {
            continue;
        }
        if let Some(stem) = name.strip_suffix(RECORD_SUFFIX) {
            let file = dir.join(name);
            if let Some(segment) = record_segment(vfs, stem, &file)? {
                slots.entry(segment).or_default().record = true;
            }
        } else if let Some(stem) = name.strip_suffix(DIR_SUFFIX) {
            let sub = dir.join(name);
            // A symlink here is reported, never walked: what it names is
            // not the store's.
            if !crate::store::is_own_dir(vfs, &sub)? {
                continue;
            }
            if let Some(segment) = dir_segment(vfs, stem, &sub)? {
                slots.entry(segment).or_default().dir = Some(sub);
            }
        }
    }
    Ok(slots)
}

fn record_segment<V: Vfs>(vfs: &V, stem: &str, file: &Path) -> Result<Option<String>> {
    if !naming::is_hashed(stem) {
        // Only a name the encoder makes: a longer one is hashed, never plain.
        return Ok(naming::decode(stem).filter(|s| naming::encode(s) == stem));
    }
    // The name is a hash: the record's header holds its key.
    let Some(bytes) = read_own_file(vfs, file, record_file::MAX_LEN, steps::READ_RECORD)? else {
        // Gone since the directory was read.
        return Ok(None);
    };
    let corrupt = |reason: String| Error::CorruptFile {
        path: file.to_path_buf(),
        reason: format!("cannot list a record with a shortened name: {reason}"),
    };
    let record = record_file::decode(&bytes).map_err(corrupt)?;
    let segment = record.key.name().to_owned();
    if naming::encode(&segment) != stem {
        return Err(corrupt(format!(
            "it holds the record of {}, whose name is not this one",
            record.key
        )));
    }
    Ok(Some(segment))
}

fn dir_segment<V: Vfs>(vfs: &V, stem: &str, dir: &Path) -> Result<Option<String>> {
    if !naming::is_hashed(stem) {
        return Ok(naming::decode(stem).filter(|s| naming::encode(s) == stem));
    }
    let file = dir.join(SEGMENT_FILE);
    let Some(bytes) = read_own_file(vfs, &file, Key::MAX_SEGMENT_LEN, steps::READ_SEGMENT_FILE)?
    else {
        // A shortened directory is never made without its segment file.
        let missing = io::Error::from(io::ErrorKind::NotFound);
        return Err(Error::io(steps::READ_SEGMENT_FILE, file, missing));
    };
    // The segment must be the one the directory's (hashed) name stands for:
    // anything else would list keys that are not where their name leads.
    match String::from_utf8(bytes) {
        Ok(segment) if naming::encode(&segment) == stem => Ok(Some(segment)),
        _ => Err(Error::CorruptFile {
            path: file,
            reason: "segment file does not hold the segment of its directory's name".to_owned(),
        }),
    }
}

pub(super) fn is_file<V: Vfs>(vfs: &V, path: &Path) -> bool {
    vfs.metadata(path).is_ok_and(|m| m.kind == FileKind::File)
}

/// Every directory of the store that may hold temp files.
pub(super) fn all_dirs<V: Vfs>(vfs: &V, layout: &Layout) -> Result<Vec<PathBuf>> {
    let mut dirs = vec![
        layout.root.clone(),
        layout.stripes.clone(),
        layout.journal.clone(),
        layout.quarantine.clone(),
    ];
    let mut pending = vec![layout.data.clone()];
    while let Some(dir) = pending.pop() {
        let names = match vfs.read_dir(&dir) {
            Ok(names) => names,
            // Pruned by a concurrent delete: nothing left in it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(steps::READ_DIRECTORY, dir, e)),
        };
        for name in names {
            let sub = dir.join(name);
            // Only real directories: a symlink planted in the store could lead the
            // sweep to remove files elsewhere.
            if sub.to_string_lossy().ends_with(DIR_SUFFIX)
                && vfs.metadata(&sub).is_ok_and(|m| m.kind == FileKind::Dir)
            {
                pending.push(sub);
            }
        }
        dirs.push(dir);
    }
    Ok(dirs)
}
