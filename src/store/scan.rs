//! [`Scan`]: every key under a prefix, page by page, as one pass.

use std::fmt;

use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::store::{Store, check_page_size};

/// The pages of keys of [`Store::scan`], in key order.
///
/// An iterator of `Result<Vec<Key>>`: each item is one non-empty page, and an
/// error ends the scan. Backends that read their keys in one pass build it with
/// [`Scan::new`] from their own iterator.
pub struct Scan<'a> {
    pages: Box<dyn Iterator<Item = Result<Vec<Key>>> + Send + 'a>,
}

impl<'a> Scan<'a> {
    /// A scan yielding `pages` (for backends). The iterator must yield the keys
    /// in key order, each page non-empty, and stop after an error.
    pub fn new(pages: impl Iterator<Item = Result<Vec<Key>>> + Send + 'a) -> Self {
        Scan {
            pages: Box::new(pages),
        }
    }

    /// The scan [`Store::scan`] does by default: one [`Store::list`] call per
    /// page, each continuing after the last key of the page before.
    pub fn by_pages<S: Store + ?Sized>(store: &'a S, prefix: Prefix, page_size: usize) -> Self {
        let mut after: Option<Key> = None;
        let mut done = false;
        Scan::new(std::iter::from_fn(move || {
            if done {
                return None;
            }
            if let Err(e) = check_page_size(page_size) {
                done = true;
                return Some(Err(e));
            }
            match store.list(&prefix, after.as_ref(), page_size) {
                Ok(page) => {
                    done = page.next.is_none();
                    after = page.next;
                    if page.keys.is_empty() {
                        done = true;
                        return None;
                    }
                    Some(Ok(page.keys))
                }
                Err(e) => {
                    done = true;
                    Some(Err(e))
                }
            }
        }))
    }
}

impl Iterator for Scan<'_> {
    type Item = Result<Vec<Key>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.pages.next()
    }
}

impl fmt::Debug for Scan<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Scan").finish_non_exhaustive()
    }
}
