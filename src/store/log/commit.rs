//! Committing a group of requests: each decided in order against the index and
//! the requests before it, all appended as one frame, made durable by one flush.

use std::collections::HashMap;
#[cfg(feature = "async")]
use std::future::Future;
use std::path::Path;
#[cfg(feature = "async")]
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
#[cfg(feature = "async")]
use std::task::{Context, Poll};

#[cfg(feature = "async")]
use super::compact;
use super::frame::FrameBuilder;
use super::index::Slot;
use super::{Access, Flock, Packed, Shared};
use crate::error::steps;
use crate::error::{Error, Result};
use crate::store::packed::pack;
use crate::store::{Applied, BatchOp, Version};
use crate::vfs::Vfs;

impl<V: Vfs> Shared<V> {
    /// Commits `ops` as one transaction, in the next group.
    pub(super) fn commit(self: &Arc<Self>, ops: Vec<BatchOp>) -> Result<Vec<Applied>> {
        let committed = self.commit_in_group(ops);
        // What the group's catch-up found of other writers, told now that
        // the lead and the store's locks are let go.
        self.changes.tell();
        committed
    }

    fn commit_in_group(self: &Arc<Self>, ops: Vec<BatchOp>) -> Result<Vec<Applied>> {
        self.group.submit(
            ops,
            |group| self.commit_group(group),
            || self.leader_panicked(),
            || {
                // Only when the lead passes to an async writer.
                #[cfg(feature = "async")]
                self.start_leader();
            },
        )
    }

    /// The result of a request whose group's leader panicked.
    fn leader_panicked(&self) -> Result<Vec<Applied>> {
        Err(Error::Io {
            step: steps::COMMIT_GROUP,
            path: self.journal_path.clone(),
            source: std::io::Error::other("the writer leading this commit panicked"),
        })
    }

    /// Starts a leader on a thread of the crate's pool, for queued requests
    /// of the async face, which cannot lead (see `group`). Urgent: ahead of
    /// the pool's queue, or on a thread beyond its bound, since threads of
    /// the pool may themselves be waiting for a group commit.
    ///
    /// The leader leads on, on its thread, for as long as the lead would pass
    /// to another async writer: one thread for a run of groups, not one
    /// started per group. If its commit panics, the lead goes to a leader
    /// started afresh, since this one's work ends with the panic.
    #[cfg(feature = "async")]
    fn start_leader(self: &Arc<Self>) {
        let held = super::InBackground::new(self);
        crate::pool::detach_urgent(move || {
            let shared = held.shared();
            loop {
                let again = std::cell::Cell::new(false);
                shared.group.lead_queued(
                    &|group| shared.commit_group(group),
                    &|| shared.leader_panicked(),
                    &|| {
                        if std::thread::panicking() {
                            shared.start_leader();
                        } else {
                            again.set(true);
                        }
                    },
                );
                shared.changes.tell();
                compact::maybe_start(shared);
                if !again.get() {
                    return;
                }
            }
        });
    }

    /// Commits a group of requests, usually with one append and one flush: each
    /// request is decided against the index and the requests before it.
    fn commit_group(&self, group: Vec<Vec<BatchOp>>) -> Vec<Result<Vec<Applied>>> {
        let requests = group.len();
        if self.poisoned.load(Ordering::SeqCst) {
            return (0..requests).map(|_| Err(self.poisoned_error())).collect();
        }
        let mut journal = self.journal.lock();
        let prepared = match self.lock_file() {
            Some(lock_file) => Flock::exclusive(lock_file, &self.lock_path()).and_then(|flock| {
                self.catch_up(&mut journal, Access::Exclusive)
                    .map(|()| Some(flock))
            }),
            // Exclusive mode: nobody else writes, so there is nothing to read
            // back, unless an append of this handle failed part way.
            None if self.tail_unsettled.load(Ordering::SeqCst) => {
                self.catch_up(&mut journal, Access::Exclusive).map(|()| {
                    self.tail_unsettled.store(false, Ordering::SeqCst);
                    None
                })
            }
            None => Ok(None),
        };
        let _flock = match prepared {
            Ok(flock) => flock,
            Err(e) => return replicate(e, requests, &self.journal_path),
        };

        let (mut results, parts) = self.decide(group);
        let mut parts = parts.into_iter();
        while let Some(FramePart {
            frame,
            requests: in_frame,
            changes,
        }) = parts.next()
        {
            let frame = frame.finish(journal.header.journal_id, journal.next_seq);
            let frame_at = journal.end;
            self.probe.lock().at = journal.end + frame.len() as u64;
            if let Err(failure) = journal.append(&frame, self.sync) {
                self.probe.lock().at = journal.end;
                if self.is_exclusive() {
                    self.tail_unsettled.store(true, Ordering::SeqCst);
                }
                if failure.poisons() {
                    self.poisoned.store(true, Ordering::SeqCst);
                }
                let error = Error::io(failure.step, &self.journal_path, failure.source);
                let failed: Vec<usize> = in_frame
                    .into_iter()
                    .chain(parts.flat_map(|part| part.requests))
                    .collect();
                let errors = replicate::<Vec<Applied>>(error, failed.len(), &self.journal_path);
                for (request, error) in failed.into_iter().zip(errors) {
                    results[request] = error;
                }
                return results;
            }
            let mut index = self.index.write();
            for change in changes {
                match change {
                    Change::Put { key, slot, value } => {
                        let slot = slot.moved(frame_at);
                        index.cache().insert(slot.at, value);
                        index.put(key, slot);
                    }
                    Change::Delete { key } => index.delete(&key),
                }
            }
            drop(index);
            let mut probe = self.probe.lock();
            probe.at = journal.end;
            probe.noticed = false;
        }
        results
    }

    /// Decides each request of a group in order; returns their results (to be
    /// replaced by an error if their frame cannot be written) and the frames to
    /// append, none if nothing changes.
    fn decide(&self, group: Vec<Vec<BatchOp>>) -> (Vec<Result<Vec<Applied>>>, Vec<FramePart>) {
        let index = self.index.read();
        // What the group's earlier requests made of each key they touched.
        let mut overlay: HashMap<Packed, Option<Version>> = HashMap::new();
        let mut last_version = index.last_version;
        let mut parts: Vec<FramePart> = Vec::new();
        let mut results = Vec::with_capacity(group.len());
        for (request, ops) in group.into_iter().enumerate() {
            let keys: Vec<Packed> = ops
                .iter()
                .map(|op| pack(op.key().segments()).into_boxed_slice())
                .collect();
            let current = |key: &Packed, overlay: &HashMap<Packed, Option<Version>>| {
                overlay
                    .get(key)
                    .copied()
                    .unwrap_or_else(|| index.current(key))
            };
            let check = ops
                .iter()
                .zip(&keys)
                .try_for_each(|(op, key)| op.expect().check(op.key(), current(key, &overlay)));
            if let Err(conflict) = check {
                results.push(Err(conflict));
                continue;
            }
            let puts = ops
                .iter()
                .filter(|op| matches!(op, BatchOp::Put { .. }))
                .count();
            if last_version.checked_add(puts as u64).is_none() {
                // Only a damaged journal (a frame claiming a version near the
                // end of the space) gets here: refuse rather than wrap.
                results.push(Err(Error::CorruptFile {
                    path: self.journal_path.clone(),
                    reason: format!("version space exhausted at version {last_version}"),
                }));
                continue;
            }
            let part = match parts.last_mut() {
                Some(part) if part.frame.payload_len() < FRAME_TARGET => part,
                _ => {
                    parts.push(FramePart::default());
                    parts
                        .last_mut()
                        .unwrap_or_else(|| unreachable!("just pushed"))
                }
            };
            part.requests.push(request);
            part.frame.begin();
            let mut applied = Vec::with_capacity(ops.len());
            for (op, key) in ops.into_iter().zip(keys) {
                match op {
                    BatchOp::Put { value, .. } => {
                        last_version += 1;
                        let version = Version::new(last_version);
                        let at = part.frame.put(&key, version, &value);
                        overlay.insert(key.clone(), Some(version));
                        let slot = Slot::of(version, at as u64, &value);
                        part.changes.push(Change::Put { key, slot, value });
                        applied.push(Applied::Put(version));
                    }
                    BatchOp::Delete { .. } => {
                        let existed = current(&key, &overlay).is_some();
                        if existed {
                            part.frame.delete(&key);
                            part.changes.push(Change::Delete { key: key.clone() });
                        }
                        overlay.insert(key, None);
                        applied.push(Applied::Deleted(existed));
                    }
                }
            }
            results.push(Ok(applied));
        }
        // A frame of deletes of absent keys changes nothing: no need to write it.
        parts.retain(|part| !part.changes.is_empty());
        (results, parts)
    }

    pub(super) fn poisoned_error(&self) -> Error {
        Error::Poisoned {
            path: self.root.clone(),
        }
    }
}

/// Frames of a group are cut at about this many payload bytes. A frame is
/// flushed before the next is written (see the journal format), so a group
/// larger than this costs more than one flush; no single request is split.
const FRAME_TARGET: usize = 64 << 20;

/// The requests of a group that go into one frame, and what they change.
struct FramePart {
    frame: FrameBuilder,
    requests: Vec<usize>,
    changes: Vec<Change>,
}

/// What a frame changes in the index once it is written.
enum Change {
    /// The slot's offset is counted from the start of the frame. The value
    /// goes to the cache: what was just written is likely read soon.
    Put {
        key: Packed,
        slot: Slot,
        value: Vec<u8>,
    },
    Delete {
        key: Packed,
    },
}

impl Default for FramePart {
    fn default() -> Self {
        FramePart {
            frame: FrameBuilder::new(),
            requests: Vec::new(),
            changes: Vec::new(),
        }
    }
}

/// One error for each of `n` requests of a group that failed together.
fn replicate<T>(error: Error, n: usize, path: &Path) -> Vec<Result<T>> {
    let mut results = Vec::with_capacity(n);
    for _ in 1..n {
        results.push(Err(match &error {
            Error::Poisoned { path } => Error::Poisoned { path: path.clone() },
            Error::CorruptFile { path, reason } => Error::CorruptFile {
                path: path.clone(),
                reason: reason.clone(),
            },
            Error::Io { step, path, source } => Error::Io {
                step: *step,
                path: path.clone(),
                // The same OS error number, so that callers who match on it
                // (ENOSPC, EIO) see it whichever request of the group they made.
                source: match source.raw_os_error() {
                    Some(code) => std::io::Error::from_raw_os_error(code),
                    None => std::io::Error::new(source.kind(), source.to_string()),
                },
            },
            other => Error::Io {
                step: steps::COMMIT_GROUP,
                path: path.to_path_buf(),
                source: std::io::Error::other(other.to_string()),
            },
        }));
    }
    if n > 0 {
        results.push(Err(error));
    }
    results
}

/// A commit of the async face: `ops` queued in the next group as a future,
/// committed by a leader on another thread (see `group`), never on the
/// thread that polls it. Dropped before its group was taken, it withdraws
/// the request; dropped after, the commit happens and its result is dropped.
#[cfg(feature = "async")]
pub(super) struct Committing<V: Vfs> {
    shared: Arc<Shared<V>>,
    state: CommitState,
}

#[cfg(feature = "async")]
enum CommitState {
    New(Vec<BatchOp>),
    Queued(u64),
    Done,
}

#[cfg(feature = "async")]
impl<V: Vfs> Committing<V> {
    pub(super) fn new(shared: Arc<Shared<V>>, ops: Vec<BatchOp>) -> Self {
        Committing {
            shared,
            state: CommitState::New(ops),
        }
    }
}

#[cfg(feature = "async")]
impl<V: Vfs> Future for Committing<V> {
    type Output = Result<Vec<Applied>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        match std::mem::replace(&mut this.state, CommitState::Done) {
            CommitState::New(ops) => {
                let (ticket, start_leader) = this.shared.group.enqueue(ops, cx.waker().clone());
                this.state = CommitState::Queued(ticket);
                if start_leader {
                    this.shared.start_leader();
                }
                Poll::Pending
            }
            CommitState::Queued(ticket) => match this.shared.group.poll_done(ticket, cx.waker()) {
                // The leader looked for a compaction to start after the group.
                Some(result) => Poll::Ready(result),
                None => {
                    this.state = CommitState::Queued(ticket);
                    Poll::Pending
                }
            },
            CommitState::Done => Poll::Ready(Err(Error::InvalidArgument(
                "a commit's future was polled after it completed".to_owned(),
            ))),
        }
    }
}

#[cfg(feature = "async")]
impl<V: Vfs> Drop for Committing<V> {
    fn drop(&mut self) {
        if let CommitState::Queued(ticket) = self.state {
            self.shared.group.forget(ticket);
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::error::Error as _;

    /// Regression: the other requests of a group that failed together got an
    /// error of the same kind but without the OS error number.
    #[test]
    fn every_request_of_a_failed_group_gets_the_os_error_number() {
        let path = Path::new("/store/journal");
        let error = Error::io(
            crate::error::steps::FDATASYNC_JOURNAL,
            path,
            std::io::Error::from_raw_os_error(28),
        );
        let results = replicate::<()>(error, 3, path);
        assert_eq!(results.len(), 3);
        for result in results {
            let err = result.unwrap_err();
            assert_eq!(err.to_string(), "fdatasync journal /store/journal");
            let io = err
                .source()
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .unwrap();
            assert_eq!(io.raw_os_error(), Some(28));
        }
    }

    /// A journal whose versions reached the end of the space (only damage can
    /// do that) refuses new versions instead of wrapping or panicking.
    #[test]
    fn a_version_at_the_end_of_the_space_is_reported_not_wrapped() {
        use crate::store::{Expect, Store};
        let dir = tempfile::tempdir().unwrap();
        let store = super::super::LogStore::open(dir.path()).unwrap();
        let key = crate::Key::new(["k"]).unwrap();
        store.shared.index.write().last_version = u64::MAX - 1;
        assert_eq!(
            store.put(&key, b"last", Expect::Any).unwrap().get(),
            u64::MAX
        );
        let err = store.put(&key, b"past it", Expect::Any).unwrap_err();
        assert!(matches!(err, Error::CorruptFile { .. }), "{err}");
        assert!(err.to_string().contains("version space exhausted"), "{err}");
        assert_eq!(store.get(&key).unwrap().unwrap().value, b"last");
    }
}
