//! [`Store::scan`](crate::Store::scan) of a [`DirStore`]: the tree under a
//! prefix walked once, in key order, each directory read once.
//!
//! A loop of `list` calls reads, for every page, each directory on the way to
//! the cursor again, and sorts it again: a prefix of n keys in one directory
//! costs n / page reads of n names. The walk here keeps a stack of the
//! directories it is in, each with its entries not yet visited, sorted once
//! (by [`list::read_entries`], the same rules as `list`), and reads a
//! directory only when the walk reaches it. Memory: one page, and the remaining
//! entries of the directories on the current path (at most 16 deep).
//!
//! Locking: every directory is read under all stripes taken shared, as `list`
//! reads, so no rename lands in a directory while it is read (a read racing a
//! rename over a name can skip that name on some filesystems, and the key was
//! there all along). The stripes are taken once per page, only if the page
//! reads a directory, and released before the page is returned: between pages
//! the caller may write (a purge deletes what it was given), and writers are
//! never kept waiting for longer than a page. A directory's entries are what
//! it held when it was read: a key created in it afterwards is missed, one
//! deleted afterwards is still returned, as the [`Store::scan`] contract
//! allows; a key present for the whole scan is in its directory's read, once.

use std::collections::btree_map;
use std::path::PathBuf;

use super::DirStore;
use super::list::{self, Entries, Slot};
use super::stripes::StripeGuard;
use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::store::{Scan, check_page_size, is_own_dir};
use crate::vfs::Vfs;

pub(super) fn scan<'a, V: Vfs>(
    store: &'a DirStore<V>,
    prefix: &Prefix,
    page_size: usize,
) -> Scan<'a> {
    Scan::new(Walk {
        store,
        prefix: prefix.clone(),
        page_size,
        started: false,
        done: false,
        frames: Vec::new(),
        path: Vec::new(),
        pending: None,
    })
}

struct Walk<'a, V: Vfs> {
    store: &'a DirStore<V>,
    prefix: Prefix,
    page_size: usize,
    started: bool,
    done: bool,
    /// The directories the walk is in, outermost first, each with the entries
    /// it has not visited yet.
    frames: Vec<btree_map::IntoIter<String, Slot>>,
    /// The segments of the innermost directory (of `pending` once it is set).
    path: Vec<String>,
    /// The directory the walk goes into next, not read yet.
    pending: Option<PathBuf>,
}

impl<V: Vfs> Walk<'_, V> {
    /// The next page, or `None` when the walk is over.
    fn next_page(&mut self) -> Result<Option<Vec<Key>>> {
        check_page_size(self.page_size)?;
        let vfs = self.store.writer().vfs();
        let layout = self.store.layout();
        let mut page = Vec::with_capacity(self.page_size.min(1024));
        // Held from the first directory this page reads until it is returned.
        let mut stripes: Option<StripeGuard<V::File>> = None;
        if !self.started {
            self.started = true;
            stripes = Some(self.store.lock_all_shared()?);
            let p = self.prefix.segments();
            if !p.is_empty() {
                let key = Key::new(p.iter().cloned())?;
                if list::is_file(vfs, &layout.record_path(&key)) {
                    page.push(key);
                }
            }
            if layout.check_dirs(vfs, p)? {
                self.path = p.to_vec();
                self.pending = Some(layout.dir_path(p));
            }
        }
        while page.len() < self.page_size {
            if let Some(dir) = self.pending.take() {
                if stripes.is_none() {
                    stripes = Some(self.store.lock_all_shared()?);
                }
                // Checked again now, not only when its parent was read: what is
                // there may have been replaced since, and a link is never
                // followed. Gone (pruned by a delete): nothing in it.
                let entries = if is_own_dir(vfs, &dir)? {
                    list::read_entries(vfs, &dir)?
                } else {
                    Entries::new()
                };
                self.frames.push(entries.into_iter());
                continue;
            }
            let Some(frame) = self.frames.last_mut() else {
                self.done = true;
                break;
            };
            match frame.next() {
                Some((segment, slot)) => {
                    // A key sorts before the keys that extend it: the record
                    // first, then its directory.
                    self.path.push(segment);
                    if slot.record {
                        page.push(Key::new(self.path.iter().cloned())?);
                    }
                    match slot.dir {
                        Some(dir) if self.path.len() < Key::MAX_SEGMENTS => {
                            self.pending = Some(dir)
                        }
                        _ => {
                            self.path.pop();
                        }
                    }
                }
                None => {
                    self.frames.pop();
                    // The outermost directory is the prefix's: its segments stay.
                    if !self.frames.is_empty() {
                        self.path.pop();
                    }
                }
            }
        }
        drop(stripes);
        Ok((!page.is_empty()).then_some(page))
    }
}

impl<V: Vfs> Iterator for Walk<'_, V> {
    type Item = Result<Vec<Key>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.next_page() {
            Ok(Some(page)) => Some(Ok(page)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}
