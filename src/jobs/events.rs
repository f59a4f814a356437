//! A job's event log in the store: one record per event, written in the same
//! batch as the job record that counts them.
//!
//! Events live at `<namespace>/event/<job id>/<seq>`, the sequence number
//! zero-padded to 20 digits so that key order is sequence order. The job record's
//! [`EventWindow`] says which sequence numbers exist: `first_seq..next_seq`. An
//! append writes the event and the record (compare-and-set on its version) in one
//! batch, so sequence numbers are dense, every stored event is counted, and of
//! two concurrent appends the second retries with the next number. Past the
//! bound, the same batch deletes the oldest events.

use serde_json::Value;

use super::record::StoredEvent;
use super::{Event, EventWindow, Job, JobState};
use crate::attempt::AttemptId;
use crate::error::Result;
use crate::key::{Key, Prefix};
use crate::record as codec;
use crate::store::{Applied, Batch, BatchOp, Expect, Store, Version};

/// Events read by [`JobState::events_since`].
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct EventPage {
    /// The events after the requested sequence number, in order.
    pub events: Vec<Event>,
    /// How many events after the requested sequence number were dropped by the
    /// bound before they could be read (the first returned event's sequence number
    /// is that much higher than asked).
    pub dropped: u64,
    /// The sequence number the job's next event will get.
    pub next_seq: u64,
}

/// An event to append: its type and data.
pub(super) type NewEvent = (String, Value);

impl<S: Store> JobState<S> {
    /// The events of job `id` with a sequence number greater than `after` (0 for
    /// all), as stored now: the replay a reconnecting client asks for with its
    /// last seen id (SSE `Last-Event-ID`).
    ///
    /// # Errors
    /// [`Error::JobNotFound`](crate::Error::JobNotFound); [`Error::Corrupt`](crate::Error::Corrupt)
    /// naming an unreadable event; store errors.
    pub fn events_since(&self, id: &str, after: u64) -> Result<EventPage> {
        let (job, _) = self.read_required(id)?;
        let window = job.events;
        let from = after.saturating_add(1).max(window.first_seq);
        let mut events = Vec::new();
        let prefix = self.events_prefix(id)?;
        let mut cursor = Some(self.event_key(id, from.saturating_sub(1))?);
        'pages: loop {
            let page = self.store.list(&prefix, cursor.as_ref(), 256)?;
            for key in &page.keys {
                let Some(entry) = self.store.get(key)? else {
                    continue; // dropped by the bound since the listing
                };
                let event: Event = codec::decode(key, &entry.value)?;
                if event.seq >= window.next_seq {
                    break 'pages; // appended after the record was read
                }
                events.push(event);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let first_read = events.first().map_or(window.next_seq, |e| e.seq);
        Ok(EventPage {
            dropped: first_read
                .saturating_sub(after.saturating_add(1))
                .min(window.dropped),
            events,
            next_seq: window.next_seq,
        })
    }

    /// Writes `job` (read at `version`) with `new_events` appended, in one batch,
    /// the record and each event carrying the write id `write`. Returns the
    /// events written (those the bound dropped at once are not written, but
    /// still counted); `job` is left as the batch writes it, with the version
    /// the store gave it if the store said.
    pub(super) fn commit(
        &self,
        job: &mut Job,
        version: Version,
        new_events: Vec<NewEvent>,
        extra: &[BatchOp],
        write: &AttemptId,
        was_open: bool,
    ) -> Result<Vec<Event>> {
        let now = job.updated_ms;
        let window = job.events;
        let record_key = self.record_key(&job.id)?;
        let mut written = Vec::new();
        let mut next_seq = window.next_seq;
        for (kind, data) in new_events {
            written.push(Event {
                seq: next_seq,
                kind,
                data,
                time_ms: now,
            });
            next_seq = next_seq
                .checked_add(1)
                .ok_or_else(|| crate::Error::Corrupt {
                    key: record_key.clone(),
                    path: None,
                    reason: "event sequence numbers exhausted".to_owned(),
                })?;
        }
        let first_seq = window
            .first_seq
            .max(next_seq.saturating_sub(self.max_events));
        let mut batch = Batch::new();
        for seq in window.first_seq..first_seq.min(window.next_seq) {
            batch = batch.delete(&self.event_key(&job.id, seq)?, Expect::Any);
        }
        written.retain(|event| event.seq >= first_seq);
        for event in &written {
            let key = self.event_key(&job.id, event.seq)?;
            let stored = StoredEvent {
                event: event.clone(),
                write: Some(write.clone()),
            };
            batch = batch.put(&key, codec::encode(&key, &stored)?, Expect::Absent);
        }
        job.events = EventWindow {
            first_seq,
            next_seq,
            dropped: window.dropped.saturating_add(first_seq - window.first_seq),
        };
        job.write = Some(write.clone());
        for op in extra {
            batch.push(op.clone());
        }
        if let Some(entry) = self.open_entry_op(&job.id, was_open, !job.status.is_finished())? {
            batch.push(entry);
        }
        let bytes = codec::encode(&record_key, &*job)?;
        let applied = if batch.is_empty() {
            vec![Applied::Put(self.store.put(
                &record_key,
                &bytes,
                Expect::Version(version),
            )?)]
        } else {
            batch = batch.put(&record_key, bytes, Expect::Version(version));
            self.store.apply(&batch)?
        };
        if let Some(Applied::Put(version)) = applied.last() {
            job.version = *version;
        }
        Ok(written)
    }

    /// The event of job `id` with sequence number `seq` as stored, with the
    /// id of the write that appended it; `None` if there is none.
    pub(super) fn read_event(&self, id: &str, seq: u64) -> Result<Option<StoredEvent>> {
        let key = self.event_key(id, seq)?;
        match self.store.get(&key)? {
            None => Ok(None),
            Some(entry) => codec::decode(&key, &entry.value).map(Some),
        }
    }

    /// Deletes `job` (read at `version`) and all its events in one batch, with
    /// `extra` operations (on keys outside the job's).
    pub(super) fn remove_with_events(
        &self,
        job: &Job,
        version: Version,
        extra: &[BatchOp],
    ) -> Result<()> {
        let mut batch = Batch::new().delete(&self.record_key(&job.id)?, Expect::Version(version));
        for key in self.store.list_all(&self.events_prefix(&job.id)?)? {
            batch = batch.delete(&key, Expect::Any);
        }
        if let Some(entry) = self.open_entry_op(&job.id, !job.status.is_finished(), false)? {
            batch.push(entry);
        }
        for op in extra {
            batch.push(op.clone());
        }
        self.store.apply(&batch).map(|_| ())
    }

    fn events_prefix(&self, id: &str) -> Result<Prefix> {
        let mut segments = self.namespace.segments().to_vec();
        segments.extend(["event".to_owned(), id.to_owned()]);
        Prefix::new(segments)
    }

    fn event_key(&self, id: &str, seq: u64) -> Result<Key> {
        let segments = self.namespace.segments().iter().cloned();
        Key::new(segments.chain(["event".to_owned(), id.to_owned(), format!("{seq:020}")]))
    }
}
