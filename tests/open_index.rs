//! The index of open jobs (`JobState::list_open`): an entry per queued or
//! running job, written in the same batch as each record that opens or
//! settles it; built once for a store written without it; stale entries
//! dropped; and a pipeline pass that reads the open jobs' records only,
//! however many settled jobs the store keeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::hooked_store::{HookedStore, StoreOp};
use jobsafe::jobs::{FailureKind, JobError, JobStatus, NewJob};
use jobsafe::{Expect, JobState, Key, ManualClock, MemStore, Pipeline, Prefix, Store};
use serde_json::json;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(1_700_000_000_000))
}

/// The ids that have an entry in the index, read behind the manager's back.
fn entries(store: &dyn Store) -> BTreeSet<String> {
    store
        .list_all(&Prefix::new(["jobs", "open"]).unwrap())
        .unwrap()
        .into_iter()
        .map(|key| key.segments().last().unwrap().clone())
        .collect()
}

fn ids(jobs: &[jobsafe::jobs::Job]) -> BTreeSet<String> {
    jobs.iter().map(|job| job.id.clone()).collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn every_write_that_opens_or_settles_a_job_keeps_its_entry_in_step() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), clock());
    let create = |id: &str| jobs.create(NewJob::new("k").id(id)).unwrap();
    for id in [
        "done",
        "failed",
        "cancelled",
        "queued",
        "running",
        "deleted",
    ] {
        create(id);
    }
    assert_eq!(entries(&*store).len(), 6, "each create writes its entry");

    let done = jobs.start("done", None).unwrap();
    jobs.set_stage(&done, "one").unwrap();
    jobs.progress(&done, "half").unwrap();
    jobs.complete(&done, json!({})).unwrap();
    let failed = jobs.start("failed", None).unwrap();
    jobs.fail(&failed, JobError::new("no"), FailureKind::Permanent)
        .unwrap();
    jobs.cancel("cancelled").unwrap();
    jobs.start("running", None).unwrap();
    assert!(jobs.delete("deleted").unwrap());
    assert_eq!(entries(&*store), set(&["queued", "running"]));
    assert_eq!(
        ids(&jobs.list_open().unwrap().jobs),
        set(&["queued", "running"])
    );

    // A transient failure keeps the job open; a retry by hand reopens it.
    let running = jobs.start("queued", None).unwrap();
    jobs.fail(
        &running,
        JobError::new("later"),
        FailureKind::Transient {
            retry_at_ms: 1_700_000_100_000,
        },
    )
    .unwrap();
    jobs.retry("failed").unwrap();
    assert_eq!(entries(&*store), set(&["failed", "queued", "running"]));
    let open = jobs.list_open().unwrap();
    assert_eq!(ids(&open.jobs), set(&["failed", "queued", "running"]));
    assert!(
        open.jobs
            .iter()
            .all(|job| matches!(job.status, JobStatus::Queued | JobStatus::Running))
    );
    assert!(open.unreadable.is_empty());
}

#[test]
fn a_store_written_without_the_index_is_indexed_by_its_first_listing() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), clock());
    for id in ["a", "b", "c"] {
        jobs.create(NewJob::new("k").id(id)).unwrap();
    }
    let worker = jobs.start("b", None).unwrap();
    jobs.complete(&worker, json!({})).unwrap();
    // As a version without the index left it: no entries, no mark.
    for key in store
        .list_all(&Prefix::new(["jobs", "open"]).unwrap())
        .unwrap()
    {
        store.delete(&key, Expect::Any).unwrap();
    }
    let fresh = JobState::new(Arc::clone(&store), clock());
    assert_eq!(ids(&fresh.list_open().unwrap().jobs), set(&["a", "c"]));
    assert_eq!(entries(&*store), set(&["a", "c"]));
    let mark = Key::new(["jobs", "index", "open"]).unwrap();
    assert!(
        store.get(&mark).unwrap().is_some(),
        "the mark is written last"
    );

    // Built: another handle lists through the index alone.
    let counted = Arc::new(HookedStore::default());
    let reads = Arc::new(AtomicUsize::new(0));
    let counting = Arc::clone(&reads);
    counted.on_op(move |op| {
        if let StoreOp::List(prefix) = op
            && prefix.segments().iter().any(|s| s == "job")
        {
            counting.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    });
    let on_hooked = JobState::new(Arc::clone(&counted), clock());
    for id in ["x", "y"] {
        on_hooked.create(NewJob::new("k").id(id)).unwrap();
    }
    on_hooked.list_open().unwrap();
    assert_eq!(reads.load(Ordering::SeqCst), 1, "the first listing builds");
    let again = JobState::new(Arc::clone(&counted), clock());
    assert_eq!(ids(&again.list_open().unwrap().jobs), set(&["x", "y"]));
    assert_eq!(
        reads.load(Ordering::SeqCst),
        1,
        "built: no listing of every job"
    );
}

#[test]
fn a_failed_build_still_lists_and_the_next_listing_builds_again() {
    let hooked = Arc::new(HookedStore::default());
    let jobs = JobState::new(Arc::clone(&hooked), clock());
    jobs.create(NewJob::new("k").id("a")).unwrap();
    let refuse = Arc::new(Mutex::new(true));
    let refusing = Arc::clone(&refuse);
    hooked.on_op(move |op| match op {
        StoreOp::Write(key)
            if key.segments().iter().any(|s| s == "index") && *refusing.lock().unwrap() =>
        {
            Err(jobsafe::Error::InvalidArgument(
                "the test refused the mark".into(),
            ))
        }
        _ => Ok(()),
    });
    let mark = Key::new(["jobs", "index", "open"]).unwrap();
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["a"]));
    assert!(hooked.get(&mark).unwrap().is_none());
    *refuse.lock().unwrap() = false;
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["a"]));
    assert!(hooked.get(&mark).unwrap().is_some());
}

#[test]
fn a_stale_entry_is_dropped_and_a_reopened_job_keeps_its_own() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), clock());
    jobs.list_open().unwrap();
    jobs.create(NewJob::new("k").id("settled")).unwrap();
    jobs.cancel("settled").unwrap();
    // Entries the index should not hold: a settled job's (an index built
    // beside a job that settled), and a job deleted behind jobsafe's back.
    let entry = |id: &str| Key::new(["jobs", "open", id]).unwrap();
    store.put(&entry("settled"), b"{}", Expect::Any).unwrap();
    store.put(&entry("gone"), b"{}", Expect::Any).unwrap();
    assert!(jobs.list_open().unwrap().jobs.is_empty());
    assert!(entries(&*store).is_empty(), "{:?}", entries(&*store));

    // Reopened after the listing read its record: its entry is put again,
    // and stays.
    jobs.create(NewJob::new("k").id("back")).unwrap();
    let worker = jobs.start("back", None).unwrap();
    jobs.fail(&worker, JobError::new("no"), FailureKind::Permanent)
        .unwrap();
    store.put(&entry("back"), b"{}", Expect::Any).unwrap();
    jobs.retry("back").unwrap();
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["back"]));
    assert_eq!(entries(&*store), set(&["back"]));
}

#[test]
fn an_unreadable_record_is_listed_apart_and_keeps_its_entry() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), clock());
    jobs.list_open().unwrap();
    jobs.create(NewJob::new("k").id("torn")).unwrap();
    let record = Key::new(["jobs", "job", "torn"]).unwrap();
    store.put(&record, b"{not json", Expect::Any).unwrap();
    let open = jobs.list_open().unwrap();
    assert!(open.jobs.is_empty());
    assert_eq!(open.unreadable.len(), 1);
    assert_eq!(open.unreadable[0].0, record);
    assert_eq!(entries(&*store), set(&["torn"]));
}

#[test]
fn a_pass_reads_the_open_jobs_records_only() {
    let hooked = Arc::new(HookedStore::default());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(Arc::clone(&hooked), clock(), dir.path())
        .stage("one", |_ctx| Ok(()))
        .build()
        .unwrap();
    // 200 settled jobs.
    for n in 0..200 {
        pipeline
            .enqueue("s", NewJob::new("k").id(format!("old-{n:03}")))
            .unwrap();
    }
    assert_eq!(pipeline.run_pass().unwrap().runs.len(), 200);
    let reads = Arc::new(Mutex::new(Vec::new()));
    let reading = Arc::clone(&reads);
    hooked.on_op(move |op| {
        match op {
            StoreOp::Get(key) if key.segments().iter().any(|s| s == "job") => {
                reading
                    .lock()
                    .unwrap()
                    .push(key.segments().last().unwrap().clone());
            }
            StoreOp::List(prefix) if prefix.segments().iter().any(|s| s == "job") => {
                reading.lock().unwrap().push("<every job>".to_owned());
            }
            _ => {}
        }
        Ok(())
    });
    // Nothing due: no record read.
    assert!(pipeline.run_pass().unwrap().runs.is_empty());
    assert_eq!(*reads.lock().unwrap(), Vec::<String>::new());
    // One due job: its record, and no other.
    pipeline.enqueue("s", NewJob::new("k").id("new")).unwrap();
    reads.lock().unwrap().clear();
    let pass = pipeline.run_pass().unwrap();
    assert_eq!(pass.runs.len(), 1);
    let read: BTreeSet<String> = reads.lock().unwrap().iter().cloned().collect();
    assert_eq!(read, set(&["new"]));
}

#[test]
fn a_purge_puts_the_entries_that_open_jobs_lack() {
    let store = Arc::new(MemStore::new());
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::builder(Arc::clone(&store), clock(), dir.path())
        .stage("one", |_ctx| Ok(()))
        .build()
        .unwrap();
    let jobs = JobState::new(Arc::clone(&store), clock());
    pipeline.jobs().list_open().unwrap();
    jobs.list_open().unwrap();
    // Opened by a process without the index after it was built.
    pipeline.enqueue("s", NewJob::new("k").id("p")).unwrap();
    jobs.create(NewJob::new("k").id("j")).unwrap();
    let lose = |prefix: [&str; 3]| {
        for key in store.list_all(&Prefix::new(prefix).unwrap()).unwrap() {
            store.delete(&key, Expect::Any).unwrap();
        }
    };
    lose(["pipeline", "jobs", "open"]);
    lose(["jobs", "open", "j"]);
    assert!(
        pipeline.run_pass().unwrap().runs.is_empty(),
        "not found yet"
    );
    assert!(jobs.list_open().unwrap().jobs.is_empty());

    pipeline.purge().unwrap();
    jobs.purge(
        std::time::Duration::from_secs(3600),
        std::time::Duration::from_secs(3600),
    )
    .unwrap();
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["j"]));
    assert_eq!(pipeline.run_pass().unwrap().runs.len(), 1);
}

#[test]
fn a_job_reopened_while_its_stale_entry_is_dropped_keeps_the_new_entry() {
    let hooked = Arc::new(HookedStore::default());
    let jobs = JobState::new(Arc::clone(&hooked), clock());
    jobs.list_open().unwrap();
    jobs.create(NewJob::new("k").id("back")).unwrap();
    let worker = jobs.start("back", None).unwrap();
    jobs.fail(&worker, JobError::new("no"), FailureKind::Permanent)
        .unwrap();
    let entry = Key::new(["jobs", "open", "back"]).unwrap();
    hooked.put(&entry, b"{}", Expect::Any).unwrap();
    // Just before the listing deletes the entry it found stale, the job is
    // retried: its new entry must survive the delete.
    let (retrying, deleting) = (jobs.clone(), entry.clone());
    hooked.once(
        move |op| matches!(op, StoreOp::Write(key) if **key == deleting),
        move || {
            retrying.retry("back").unwrap();
        },
    );
    assert!(
        jobs.list_open().unwrap().jobs.is_empty(),
        "read before the retry"
    );
    assert!(
        hooked.get(&entry).unwrap().is_some(),
        "the retry's entry was deleted"
    );
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["back"]));
}

#[test]
fn a_record_the_build_could_not_read_for_now_keeps_the_mark_unwritten() {
    let hooked = Arc::new(HookedStore::default());
    let writer = JobState::new(Arc::clone(&hooked), clock());
    for id in ["a", "b"] {
        writer.create(NewJob::new("k").id(id)).unwrap();
    }
    for key in hooked
        .list_all(&Prefix::new(["jobs", "open"]).unwrap())
        .unwrap()
    {
        hooked.delete(&key, Expect::Any).unwrap();
    }
    let record_b = Key::new(["jobs", "job", "b"]).unwrap();
    let failing = record_b.clone();
    hooked.on_op(move |op| match op {
        StoreOp::Get(key) if **key == failing => Err(jobsafe::Error::Database {
            step: "get",
            server: "test".to_owned(),
            transient: true,
            source: "the store went away".into(),
        }),
        _ => Ok(()),
    });
    let jobs = JobState::new(Arc::clone(&hooked), clock());
    let first = jobs.list_open().unwrap();
    assert_eq!(ids(&first.jobs), set(&["a"]));
    assert_eq!(first.unreadable.len(), 1);
    assert_eq!(first.unreadable[0].0, record_b);
    let mark = Key::new(["jobs", "index", "open"]).unwrap();
    hooked.on_op(|_| Ok(()));
    assert!(
        hooked.get(&mark).unwrap().is_none(),
        "built with a record unread"
    );
    assert_eq!(entries(&*hooked), set(&["a", "b"]));
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["a", "b"]));
    assert!(hooked.get(&mark).unwrap().is_some());
}

#[test]
fn a_rebuild_finds_the_jobs_opened_without_the_index() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), clock());
    jobs.list_open().unwrap();
    jobs.create(NewJob::new("k").id("lost")).unwrap();
    store
        .delete(&Key::new(["jobs", "open", "lost"]).unwrap(), Expect::Any)
        .unwrap();
    assert!(jobs.list_open().unwrap().jobs.is_empty());
    assert_eq!(
        ids(&jobs.rebuild_open_index().unwrap().jobs),
        set(&["lost"])
    );
    assert_eq!(ids(&jobs.list_open().unwrap().jobs), set(&["lost"]));
}
