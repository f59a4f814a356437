//! `JobState`: every transition (valid and invalid), the client view, events
//! (bound, replay, live under concurrent appends, slow and panicking
//! subscribers, following the store), restart, recovery and purge, with a
//! `ManualClock`.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use jobsafe::jobs::{
    Event, FailureKind, Job, JobError, JobFilter, JobStatus, NewJob, RecoveryAction,
};
use jobsafe::lock::{Acquire, LockRequest};
use jobsafe::{DirStore, Error, JobLock, JobState, Key, ManualClock, MemStore, Store};
use serde_json::json;
use tempfile::TempDir;

use common::limits::{assert_too_large, json_of_len, metadata_of_len, snapshot, text_of_len};

const START_MS: u64 = 1_700_000_000_000;
type Jobs = JobState<Arc<dyn Store>>;

fn backends() -> Vec<(&'static str, Jobs, ManualClock, Option<TempDir>)> {
    common::backends::each_with_clock(START_MS, JobState::new)
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

#[test]
fn a_job_runs_through_its_stages_to_completion() {
    for (name, jobs, clock, _dir) in backends() {
        let job = jobs
            .create(
                NewJob::new("summarize")
                    .owner("inst-7")
                    .meta("url", "https://x"),
            )
            .unwrap();
        assert_eq!((job.status, job.attempt), (JobStatus::Queued, 0));
        clock.advance(Duration::from_secs(1));
        let worker = jobs.start(&job.id, None).unwrap();
        assert_eq!(worker.attempt, 1);
        jobs.set_stage(&worker, "transcribe").unwrap();
        jobs.progress(&worker, "half way").unwrap();
        jobs.set_stage(&worker, "analyze").unwrap();
        // The result is kept and sent exactly as given, even with a "result" field.
        let result = json!({ "result": { "title": "Episode 12" }, "credit_charged": true });
        let done = jobs.complete(&worker, result.clone()).unwrap();
        assert_eq!(done.status, JobStatus::Complete, "{name}");
        assert_eq!(done.stages_done, ["transcribe", "analyze"]);
        assert_eq!(done.result.as_ref(), Some(&result));
        assert_eq!(done.completed_ms, Some(START_MS + 1000));
        assert_eq!(done.progress.as_deref(), Some("half way"));
        let events = jobs.events_since(&job.id, 0).unwrap().events;
        assert_eq!(
            kinds(&events),
            ["started", "stage", "progress", "stage", "done"],
            "{name}"
        );
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5]
        );
        assert_eq!(
            events[4].data, result,
            "{name}: the done event must not rewrap the result"
        );
        assert_eq!(jobs.get(&job.id).unwrap().unwrap(), done);
    }
}

#[test]
fn invalid_transitions_are_typed_errors_that_change_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        assert!(
            jobs.retry(&job.id).unwrap_err().is_invalid_transition(),
            "{name}"
        );
        let worker = jobs.start(&job.id, None).unwrap();
        assert!(
            jobs.start(&job.id, None)
                .unwrap_err()
                .is_invalid_transition()
        );
        jobs.complete(&worker, json!(1)).unwrap();
        let before = jobs.get(&job.id).unwrap().unwrap();
        for err in [
            jobs.complete(&worker, json!(2)).map(|_| ()).unwrap_err(),
            jobs.fail(&worker, JobError::new("x"), FailureKind::Permanent)
                .map(|_| ())
                .unwrap_err(),
            jobs.set_stage(&worker, "late").map(|_| ()).unwrap_err(),
            jobs.start(&job.id, None).map(|_| ()).unwrap_err(),
            jobs.cancel(&job.id).map(|_| ()).unwrap_err(),
            jobs.retry(&job.id).map(|_| ()).unwrap_err(),
        ] {
            assert!(err.is_invalid_transition(), "{name}: {err}");
            assert!(err.to_string().contains("complete"), "{err}");
        }
        assert_eq!(jobs.get(&job.id).unwrap().unwrap(), before, "{name}");
        let err = jobs.start("no-such-job", None).unwrap_err();
        assert!(matches!(err, Error::JobNotFound { .. }), "{err}");
    }
}

#[test]
fn a_transient_failure_requeues_with_a_retry_time() {
    for (name, jobs, clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let first = jobs.start(&job.id, None).unwrap();
        let retry_at = START_MS + 30_000;
        let failed = jobs
            .fail(
                &first,
                JobError::new("busy, retrying"),
                FailureKind::Transient {
                    retry_at_ms: retry_at,
                },
            )
            .unwrap();
        assert_eq!(
            failed.status,
            JobStatus::Queued,
            "{name}: a transient failure is not terminal"
        );
        assert_eq!(failed.retry_at_ms, Some(retry_at));
        clock.advance(Duration::from_millis(29_999));
        assert!(
            jobs.start(&job.id, None)
                .unwrap_err()
                .is_invalid_transition(),
            "{name}: not due"
        );
        clock.advance(Duration::from_millis(1));
        let second = jobs.start(&job.id, None).unwrap();
        assert_eq!(second.attempt, 2);
        // The first attempt's worker is stale now.
        let err = jobs.complete(&first, json!("late")).unwrap_err();
        assert!(err.is_stale_worker(), "{name}: {err}");
        jobs.complete(&second, json!("ok")).unwrap();
        let events = jobs.events_since(&job.id, 0).unwrap().events;
        assert_eq!(kinds(&events), ["started", "retry", "started", "done"]);
    }
}

#[test]
fn a_permanent_failure_is_final_until_a_manual_retry() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let first = jobs.start(&job.id, None).unwrap();
        let error = JobError::new("the file could not be decoded")
            .internal("ffmpeg exit 1 at /srv/tmp/a.m4a")
            .code("bad_media");
        let failed = jobs
            .fail(&first, error.clone(), FailureKind::Permanent)
            .unwrap();
        assert_eq!(failed.status, JobStatus::Failed, "{name}");
        assert!(
            jobs.start(&job.id, None)
                .unwrap_err()
                .is_invalid_transition()
        );
        let requeued = jobs.retry(&job.id).unwrap();
        assert_eq!(requeued.status, JobStatus::Queued);
        assert_eq!(
            requeued.error.as_ref(),
            Some(&error),
            "the last error stays visible"
        );
        let second = jobs.start(&job.id, None).unwrap();
        assert_eq!(second.attempt, 2);
        jobs.complete(&second, json!({})).unwrap();
        let events = jobs.events_since(&job.id, 0).unwrap().events;
        assert_eq!(
            kinds(&events),
            ["started", "error", "requeued", "started", "done"],
            "{name}"
        );
    }
}

#[test]
fn cancel_is_final_and_stops_the_worker() {
    for (name, jobs, _clock, _dir) in backends() {
        let queued = jobs.create(NewJob::new("k")).unwrap();
        assert_eq!(
            jobs.cancel(&queued.id).unwrap().status,
            JobStatus::Cancelled,
            "{name}"
        );
        let running = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&running.id, None).unwrap();
        jobs.cancel(&running.id).unwrap();
        let err = jobs.progress(&worker, "still going").unwrap_err();
        assert!(err.is_invalid_transition(), "{name}: {err}");
        assert!(
            jobs.cancel(&running.id)
                .unwrap_err()
                .is_invalid_transition()
        );
        let events = jobs.events_since(&running.id, 0).unwrap().events;
        assert_eq!(kinds(&events), ["started", "cancelled"]);
        assert!(events[1].is_terminal());
    }
}

#[test]
fn a_paused_stale_worker_cannot_overwrite_the_job_after_a_takeover() {
    let clock = ManualClock::new(START_MS);
    let store = Arc::new(MemStore::new());
    let locks = JobLock::new(Arc::clone(&store), Arc::new(clock.clone()));
    let jobs = JobState::new(Arc::clone(&store), Arc::new(clock.clone()));
    let job = jobs.create(NewJob::new("reindex")).unwrap();
    let ttl = Duration::from_secs(60);
    let lock_key = Key::new(["job", &job.id]).unwrap();

    let Acquire::Acquired(lease_a) = locks.acquire(&lock_key, ttl, &LockRequest::new()).unwrap()
    else {
        panic!("free")
    };
    let worker_a = jobs.start(&job.id, Some(lease_a.token())).unwrap();
    jobs.set_stage(&worker_a, "embed").unwrap();
    let _ = lease_a.into_handle(); // A pauses (GC, swap, a stopped VM) past its lease

    clock.advance(ttl);
    let Acquire::Acquired(lease_b) = locks.acquire(&lock_key, ttl, &LockRequest::new()).unwrap()
    else {
        panic!("expired")
    };
    assert!(lease_b.token() > worker_a.token.unwrap());
    let worker_b = jobs.start(&job.id, Some(lease_b.token())).unwrap();
    assert_eq!(worker_b.attempt, 2);

    // A wakes up and carries on: every change is refused.
    for err in [
        jobs.progress(&worker_a, "99%").map(|_| ()).unwrap_err(),
        jobs.complete(&worker_a, json!("stale result"))
            .map(|_| ())
            .unwrap_err(),
        jobs.fail(&worker_a, JobError::new("x"), FailureKind::Permanent)
            .map(|_| ())
            .unwrap_err(),
    ] {
        assert!(err.is_stale_worker(), "{err}");
    }
    // An older token cannot take the job back either.
    assert!(
        jobs.start(&job.id, worker_a.token)
            .unwrap_err()
            .is_stale_worker()
    );
    let done = jobs.complete(&worker_b, json!("fresh result")).unwrap();
    assert_eq!(done.result, Some(json!("fresh result")));
    assert_eq!(done.fencing, Some(lease_b.token()));
}

#[test]
fn the_client_view_never_shows_the_internal_message() {
    for (name, jobs, _clock, _dir) in backends() {
        let secret = "connect to 10.1.2.3:5432 failed for user relay_admin";
        let job = jobs
            .create(NewJob::new("k").meta("internal_note", "do not show"))
            .unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        jobs.fail(
            &worker,
            JobError::new("the database is unavailable").internal(secret),
            FailureKind::Permanent,
        )
        .unwrap();
        let view = serde_json::to_string(&jobs.client_view(&job.id).unwrap().unwrap()).unwrap();
        assert!(
            !view.contains("10.1.2.3") && !view.contains("do not show"),
            "{name}: {view}"
        );
        assert!(view.contains("the database is unavailable"));
        let events = serde_json::to_string(&jobs.events_since(&job.id, 0).unwrap().events).unwrap();
        assert!(!events.contains("10.1.2.3"), "{name}: {events}");
        // Operators still see it.
        let record = jobs.get(&job.id).unwrap().unwrap();
        assert_eq!(record.error.unwrap().internal_message(), secret);

        // Without a client message, clients get the fixed default.
        let other = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&other.id, None).unwrap();
        jobs.fail(
            &worker,
            JobError::internal_only(secret),
            FailureKind::Permanent,
        )
        .unwrap();
        let view = jobs.client_view(&other.id).unwrap().unwrap();
        assert_eq!(
            view.error.unwrap().message,
            JobError::DEFAULT_CLIENT_MESSAGE
        );
    }
}

#[test]
fn progress_messages_are_bounded() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    let long = "é".repeat(Job::MAX_PROGRESS_LEN);
    let kept = jobs.progress(&worker, &long).unwrap().progress.unwrap();
    assert!(kept.len() <= Job::MAX_PROGRESS_LEN && long.starts_with(&kept) && !kept.is_empty());
}

#[test]
fn the_event_log_is_bounded_and_says_what_it_dropped() {
    for (name, _, clock, dir) in backends() {
        let store: Arc<dyn Store> = match &dir {
            Some(dir) => Arc::new(DirStore::open(dir.path().join("bounded")).unwrap()),
            None => Arc::new(MemStore::new()),
        };
        let jobs = JobState::builder(Arc::clone(&store), Arc::new(clock))
            .max_events(5)
            .build()
            .unwrap();
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap(); // event 1
        for i in 0..11 {
            jobs.append_event(&worker, "window", json!({ "i": i }))
                .unwrap(); // 2..=12
        }
        let record = jobs.get(&job.id).unwrap().unwrap();
        assert_eq!(
            (
                record.events.first_seq,
                record.events.next_seq,
                record.events.dropped
            ),
            (8, 13, 7),
            "{name}"
        );
        let page = jobs.events_since(&job.id, 0).unwrap();
        assert_eq!(
            page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [8, 9, 10, 11, 12]
        );
        assert_eq!(page.dropped, 7, "{name}: the drop is visible");
        let page = jobs.events_since(&job.id, 9).unwrap();
        assert_eq!((page.events.len(), page.dropped), (3, 0));
        // Exactly the kept events are stored.
        let stored = store
            .list_all(&jobsafe::Prefix::new(["jobs", "event"]).unwrap())
            .unwrap();
        assert_eq!(stored.len(), 5, "{name}");
    }
}

#[test]
fn reserved_event_types_are_refused() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    for kind in ["done", "error", "cancelled", ""] {
        let err = jobs.append_event(&worker, kind, json!({})).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{kind:?}: {err}");
    }
}

#[test]
fn a_late_subscriber_replays_then_follows_live_under_concurrent_appends() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        for i in 0..5 {
            jobs.append_event(&worker, "early", json!(i)).unwrap();
        }
        let mut subscription = jobs.subscribe(&job.id, 0).unwrap();
        std::thread::scope(|scope| {
            for t in 0..3 {
                let (jobs, worker) = (&jobs, &worker);
                scope.spawn(move || {
                    for i in 0..20 {
                        jobs.append_event(worker, "window", json!({ "t": t, "i": i }))
                            .unwrap();
                    }
                });
            }
        });
        jobs.complete(&worker, json!("end")).unwrap();
        let mut seen = Vec::new();
        while let Some(event) = subscription.next_event().unwrap() {
            seen.push(event);
        }
        let seqs: Vec<u64> = seen.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            (1..=67).collect::<Vec<_>>(),
            "{name}: every event once, in order"
        );
        assert_eq!(seen, jobs.events_since(&job.id, 0).unwrap().events);
        assert!(subscription.is_finished());
    }
}

#[test]
fn a_subscriber_from_a_sequence_number_gets_only_what_follows() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    for i in 0..4 {
        jobs.append_event(&worker, "e", json!(i)).unwrap();
    }
    let mut subscription = jobs.subscribe(&job.id, 3).unwrap();
    jobs.append_event(&worker, "e", json!(4)).unwrap();
    // Stored 4 and 5 ("started" was 1), then live 6.
    let seqs: Vec<u64> = (0..3)
        .map(|_| subscription.next_event().unwrap().unwrap().seq)
        .collect();
    assert_eq!(seqs, [4, 5, 6]);
    assert!(subscription.try_next_event().unwrap().is_none());
}

#[test]
fn a_slow_subscriber_catches_up_from_the_store_without_blocking_writers() {
    let jobs = JobState::builder(MemStore::new(), Arc::new(ManualClock::new(0)))
        .subscriber_buffer(2)
        .build()
        .unwrap();
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    let mut slow = jobs.subscribe(&job.id, 0).unwrap();
    // The writer never waits for the subscriber, whose buffer holds 2.
    for i in 0..50 {
        jobs.append_event(&worker, "e", json!(i)).unwrap();
    }
    jobs.complete(&worker, json!(null)).unwrap();
    let mut seqs = Vec::new();
    while let Some(event) = slow.next_event().unwrap() {
        seqs.push(event.seq);
    }
    assert_eq!(seqs, (1..=52).collect::<Vec<_>>());
}

#[test]
fn a_subscriber_that_fell_behind_the_bound_still_ends_after_the_terminal_event() {
    let jobs = JobState::builder(MemStore::new(), Arc::new(ManualClock::new(0)))
        .max_events(2)
        .subscriber_buffer(1)
        .build()
        .unwrap();
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    let mut slow = jobs.subscribe(&job.id, 1).unwrap();
    // The buffer of one holds event 2 and overflows; the store keeps only
    // the last two events, 11 and 12, so 2 is passed over by the jump.
    for i in 0..10 {
        jobs.append_event(&worker, "e", json!(i)).unwrap();
    }
    jobs.complete(&worker, json!(null)).unwrap();
    let mut seqs = Vec::new();
    while let Some(event) = slow.try_next_event().unwrap() {
        seqs.push(event.seq);
    }
    assert_eq!(seqs, [11, 12]);
    assert!(slow.is_finished(), "the stream did not end after `done`");
    assert_eq!(slow.next_event().unwrap(), None);
}

#[test]
fn a_panicking_subscriber_does_not_affect_the_others() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    let mut healthy = jobs.subscribe(&job.id, 0).unwrap();
    let doomed = jobs.subscribe(&job.id, 0).unwrap();
    let crashed = std::thread::spawn(move || {
        let _subscription = doomed;
        panic!("a subscriber's handler panics");
    })
    .join();
    assert!(crashed.is_err());
    jobs.append_event(&worker, "e", json!(1)).unwrap();
    jobs.complete(&worker, json!(2)).unwrap();
    let mut kinds_seen = Vec::new();
    while let Some(event) = healthy.next_event().unwrap() {
        kinds_seen.push(event.kind);
    }
    assert_eq!(kinds_seen, ["started", "e", "done"]);
}

#[test]
fn follow_reads_the_same_stream_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let clock = ManualClock::new(START_MS);
    let writer = JobState::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    // Another process: its own store handle and job state, no shared hub.
    let reader = JobState::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let job = writer.create(NewJob::new("k")).unwrap();
    let worker = writer.start(&job.id, None).unwrap();
    let mut follower = reader
        .follow(&job.id, 0, Duration::from_millis(100))
        .unwrap();
    assert_eq!(kinds(&follower.poll().unwrap()), ["started"]);
    assert!(follower.poll().unwrap().is_empty());
    writer.progress(&worker, "1/2").unwrap();
    writer.progress(&worker, "2/2").unwrap();
    assert_eq!(kinds(&follower.poll().unwrap()), ["progress", "progress"]);
    writer.complete(&worker, json!({"ok": true})).unwrap();
    let last = follower.next_event().unwrap().unwrap();
    assert_eq!(last.kind, "done");
    assert!(follower.is_finished());
    assert!(follower.next_event().unwrap().is_none());
}

#[test]
fn a_restarted_process_sees_jobs_and_events_and_recovers_abandoned_ones() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let clock = ManualClock::new(START_MS);
    let (requeue_id, fail_id, events_before) = {
        let jobs = JobState::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
        let a = jobs.create(NewJob::new("transcribe")).unwrap();
        let b = jobs.create(NewJob::new("charge")).unwrap();
        let wa = jobs.start(&a.id, None).unwrap();
        jobs.progress(&wa, "10%").unwrap();
        jobs.start(&b.id, None).unwrap();
        let events = jobs.events_since(&a.id, 0).unwrap().events;
        (a.id, b.id, events)
    }; // the process dies here
    let jobs = JobState::new(DirStore::open(&root).unwrap(), Arc::new(clock.clone()));
    assert_eq!(
        jobs.events_since(&requeue_id, 0).unwrap().events,
        events_before
    );
    assert_eq!(
        jobs.get(&requeue_id).unwrap().unwrap().status,
        JobStatus::Running
    );

    // Not stale yet: nothing recovered.
    let stale = Duration::from_secs(120);
    assert!(
        jobs.recover(stale, RecoveryAction::Requeue)
            .unwrap()
            .is_empty()
    );
    clock.advance(stale);
    let recovered = jobs
        .recover_where(RecoveryAction::Requeue, |job| job.kind == "transcribe")
        .unwrap();
    assert_eq!(recovered.len(), 1);
    let failed = jobs.recover(stale, RecoveryAction::Fail).unwrap();
    assert_eq!(
        failed.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
        [fail_id.as_str()]
    );

    let requeued = jobs.get(&requeue_id).unwrap().unwrap();
    assert_eq!(requeued.status, JobStatus::Queued);
    let again = jobs.start(&requeue_id, None).unwrap();
    assert_eq!(again.attempt, 2);
    let failed = jobs.get(&fail_id).unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.error.unwrap().error_code(), Some("interrupted"));
    let events = jobs.events_since(&requeue_id, 0).unwrap().events;
    assert_eq!(
        kinds(&events),
        ["started", "progress", "requeued", "started"]
    );
}

#[test]
fn list_filters_by_status_kind_and_owner() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let a = jobs
        .create(NewJob::new("transcribe").owner("alice"))
        .unwrap();
    jobs.create(NewJob::new("transcribe").owner("bob")).unwrap();
    jobs.create(NewJob::new("summarize").owner("alice"))
        .unwrap();
    jobs.start(&a.id, None).unwrap();
    let ids = |filter: JobFilter| jobs.list(&filter).unwrap().jobs.len();
    assert_eq!(ids(JobFilter::default()), 3);
    assert_eq!(ids(JobFilter::new().status(JobStatus::Running)), 1);
    assert_eq!(ids(JobFilter::new().kind("transcribe")), 2);
    assert_eq!(ids(JobFilter::new().owner("alice").kind("summarize")), 1);
}

#[test]
fn purge_removes_old_finished_and_never_started_jobs_with_their_events() {
    for (name, jobs, clock, _dir) in backends() {
        let day = Duration::from_secs(24 * 3600);
        let finish = |status: JobStatus| {
            let job = jobs.create(NewJob::new("k")).unwrap();
            if status == JobStatus::Queued {
                return job.id;
            }
            let worker = jobs.start(&job.id, None).unwrap();
            match status {
                JobStatus::Complete => drop(jobs.complete(&worker, json!(1)).unwrap()),
                JobStatus::Failed => drop(
                    jobs.fail(&worker, JobError::new("x"), FailureKind::Permanent)
                        .unwrap(),
                ),
                JobStatus::Cancelled => drop(jobs.cancel(&job.id).unwrap()),
                _ => {}
            }
            job.id
        };
        let old: Vec<String> = [
            JobStatus::Complete,
            JobStatus::Complete,
            JobStatus::Failed,
            JobStatus::Cancelled,
            JobStatus::Running,
        ]
        .into_iter()
        .map(finish)
        .collect();
        let never_started = finish(JobStatus::Queued);
        clock.advance(day * 2);
        let recent = finish(JobStatus::Complete);
        let counts = jobs.purge(day, day * 7).unwrap();
        assert_eq!(
            (
                counts.complete,
                counts.failed,
                counts.cancelled,
                counts.queued
            ),
            (2, 1, 1, 0),
            "{name}"
        );
        assert!(
            jobs.get(&old[4]).unwrap().is_some(),
            "running jobs are never purged"
        );
        assert!(jobs.get(&recent).unwrap().is_some());
        assert!(jobs.get(&old[0]).unwrap().is_none());
        assert!(jobs.events_since(&old[0], 0).is_err());
        clock.advance(day * 6);
        let counts = jobs.purge(day, day * 7).unwrap();
        assert_eq!((counts.complete, counts.queued), (1, 1), "{name}");
        assert!(jobs.get(&never_started).unwrap().is_none());
    }
}

#[test]
fn delete_removes_a_job_and_its_events_but_not_a_running_one() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    assert!(jobs.delete(&job.id).unwrap_err().is_invalid_transition());
    jobs.complete(&worker, json!(1)).unwrap();
    assert!(jobs.delete(&job.id).unwrap());
    assert!(!jobs.delete(&job.id).unwrap());
    assert!(store.list_all(&jobsafe::Prefix::all()).unwrap().is_empty());
}

#[test]
fn a_client_chosen_id_is_created_once() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    jobs.create(NewJob::new("k").id("req-42")).unwrap();
    assert!(
        jobs.create(NewJob::new("k").id("req-42"))
            .unwrap_err()
            .is_conflict()
    );
    assert!(jobs.create(NewJob::new("")).is_err());
}

#[test]
fn a_stream_goes_on_past_an_error_when_the_job_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let jobs = JobState::new(
        DirStore::open(&root).unwrap(),
        Arc::new(ManualClock::new(0)),
    );
    let job = jobs.create(NewJob::new("k")).unwrap();
    let first = jobs.start(&job.id, None).unwrap();
    jobs.fail(&first, JobError::new("bad input"), FailureKind::Permanent)
        .unwrap();
    jobs.retry(&job.id).unwrap();
    let second = jobs.start(&job.id, None).unwrap();
    jobs.complete(&second, json!("ok")).unwrap();
    let expected = ["started", "error", "requeued", "started", "done"];

    let mut subscription = jobs.subscribe(&job.id, 0).unwrap();
    let mut seen = Vec::new();
    while let Some(event) = subscription.next_event().unwrap() {
        seen.push(event.kind);
    }
    assert_eq!(seen, expected);

    let other = JobState::new(
        DirStore::open(&root).unwrap(),
        Arc::new(ManualClock::new(0)),
    );
    let mut follower = other.follow(&job.id, 0, Duration::from_millis(10)).unwrap();
    assert_eq!(kinds(&follower.poll().unwrap()), expected);
    assert!(follower.is_finished());
}

#[test]
fn a_job_fenced_by_a_token_cannot_be_started_without_one() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs
        .start(&job.id, Some(jobsafe::FencingToken::new(7)))
        .unwrap();
    jobs.fail(
        &worker,
        JobError::new("busy"),
        FailureKind::Transient {
            retry_at_ms: START_MS,
        },
    )
    .unwrap();
    let err = jobs.start(&job.id, None).unwrap_err();
    assert!(err.is_stale_worker(), "{err}");
    assert_eq!(
        jobs.get(&job.id).unwrap().unwrap().status,
        JobStatus::Queued
    );
}

#[test]
fn an_event_left_beyond_the_record_is_reported_not_retried_forever() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), Arc::new(ManualClock::new(0)));
    // Damage from outside: an event where the job's next event will go.
    let orphan = Key::new(["jobs", "event", "x", &format!("{:020}", 1)]).unwrap();
    store.put(&orphan, b"{}", jobsafe::Expect::Absent).unwrap();
    jobs.create(NewJob::new("k").id("x")).unwrap();
    let err = jobs.start("x", None).unwrap_err();
    assert!(err.is_corrupt(), "{err}");
    assert!(err.to_string().contains("jobs/event/x"), "{err}");
}

#[test]
fn subscribers_of_one_namespace_never_see_another_namespaces_jobs() {
    let store = Arc::new(MemStore::new());
    let clock = Arc::new(ManualClock::new(0));
    let main = JobState::new(Arc::clone(&store), clock.clone());
    let other = JobState::builder(store, clock)
        .namespace(jobsafe::Prefix::new(["other"]).unwrap())
        .build()
        .unwrap();
    main.create(NewJob::new("k").id("same")).unwrap();
    other.create(NewJob::new("k").id("same")).unwrap();
    let mut subscription = main.subscribe("same", 0).unwrap();
    let worker = other.start("same", None).unwrap();
    other.complete(&worker, json!(1)).unwrap();
    assert_eq!(subscription.try_next_event().unwrap(), None);
    assert!(!subscription.is_finished());
}

#[test]
fn a_subscriber_of_a_deleted_job_is_told_instead_of_waiting_forever() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let mut subscription = jobs.subscribe(&job.id, 0).unwrap();
    assert!(jobs.delete(&job.id).unwrap());
    let err = subscription.next_event().unwrap_err();
    assert!(matches!(err, Error::JobNotFound { .. }), "{err}");
}

#[test]
fn stages_count_as_signs_of_life_for_recovery() {
    let clock = ManualClock::new(START_MS);
    let jobs = JobState::new(MemStore::new(), Arc::new(clock.clone()));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    for stage in ["a", "b", "c", "d"] {
        clock.advance(Duration::from_secs(50));
        jobs.set_stage(&worker, stage).unwrap();
        assert!(
            jobs.recover(Duration::from_secs(60), RecoveryAction::Requeue)
                .unwrap()
                .is_empty()
        );
    }
}

#[test]
fn a_subscriber_that_saw_the_terminal_event_is_told_the_stream_ended() {
    // An SSE client reconnects with Last-Event-ID = the `done` event's id: it
    // must get nothing more and an end, not a stream that waits forever.
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    jobs.append_event(&worker, "e", json!(1)).unwrap();
    let done = jobs.complete(&worker, json!("ok")).unwrap();
    let last = done.events.next_seq - 1;

    let mut subscription = jobs.subscribe(&job.id, last).unwrap();
    assert!(subscription.is_finished());
    assert!(subscription.next_event().unwrap().is_none());
    let mut follower = jobs
        .follow(&job.id, last, Duration::from_millis(10))
        .unwrap();
    assert!(follower.poll().unwrap().is_empty());
    assert!(follower.is_finished());
    assert!(follower.next_event().unwrap().is_none());

    // Past a non-terminal event the stream is not over.
    let open = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&open.id, None).unwrap();
    jobs.append_event(&worker, "e", json!(1)).unwrap();
    let subscription = jobs.subscribe(&open.id, 2).unwrap();
    assert!(!subscription.is_finished());
}

#[test]
fn a_resume_point_past_the_last_event_ends_a_finished_stream_and_is_refused_on_a_running_job() {
    // An SSE client reconnects with a Last-Event-ID the job never reached (made
    // up, or kept from an earlier job of the same id).
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    jobs.append_event(&worker, "e", json!(1)).unwrap();

    // A running job: the client cannot have seen those events, and going on
    // from the last one would hide what it missed. Refused, naming the job.
    for refused in [
        jobs.subscribe(&job.id, 1_000).map(drop),
        jobs.follow(&job.id, 1_000, Duration::from_millis(10))
            .map(drop),
    ] {
        let err = refused.expect_err("past the end of a running job");
        assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
        assert!(err.to_string().contains(&job.id), "{err}");
        assert!(err.to_string().contains("1000"), "{err}");
    }
    // Its last event itself is a fine resume point.
    let last = jobs.get(&job.id).unwrap().unwrap().events.next_seq - 1;
    assert!(!jobs.subscribe(&job.id, last).unwrap().is_finished());

    // A finished job: the stream is over at once, for both.
    let done = jobs.complete(&worker, json!("ok")).unwrap();
    let past = done.events.next_seq + 41;
    let mut subscription = jobs.subscribe(&job.id, past).unwrap();
    assert!(subscription.is_finished());
    assert!(subscription.next_event().unwrap().is_none());
    let mut follower = jobs
        .follow(&job.id, past, Duration::from_millis(10))
        .unwrap();
    assert!(follower.poll().unwrap().is_empty());
    assert!(follower.next_event().unwrap().is_none());

    // A job retried after its error goes on: refused again.
    let failing = jobs.create(NewJob::new("k")).unwrap();
    let worker = jobs.start(&failing.id, None).unwrap();
    jobs.fail(
        &worker,
        jobsafe::jobs::JobError::new("no"),
        jobsafe::jobs::FailureKind::Permanent,
    )
    .unwrap();
    jobs.retry(&failing.id).unwrap();
    assert!(jobs.subscribe(&failing.id, 1_000).is_err());
}

#[test]
fn bounded_waits_for_the_next_event_end_with_what_they_found() {
    use jobsafe::Clock;
    use jobsafe::jobs::NextEvent;

    let clock = ManualClock::new(START_MS);
    let jobs = JobState::new(MemStore::new(), Arc::new(clock.clone()));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let last = job.events.next_seq - 1;
    let mut subscription = jobs.subscribe(&job.id, last).unwrap();
    let mut follower = jobs.follow(&job.id, last, Duration::from_secs(2)).unwrap();

    // Nothing yet: each wait ends, and the streams go on. The follower's wait
    // is on the job state's clock: it reads the store every 2 s of it, and
    // once more at the end of the 5 s.
    assert_eq!(
        subscription.next_event_timeout(Duration::ZERO).unwrap(),
        NextEvent::TimedOut
    );
    clock.set_auto_advance(true);
    assert_eq!(
        follower.next_event_timeout(Duration::from_secs(5)).unwrap(),
        NextEvent::TimedOut
    );
    assert_eq!(clock.now_ms(), START_MS + 5_000);
    clock.set_auto_advance(false);

    // An event: each wait returns it, in order, then the end after `done`.
    let worker = jobs.start(&job.id, None).unwrap();
    jobs.append_event(&worker, "e", json!(1)).unwrap();
    jobs.complete(&worker, json!("ok")).unwrap();
    let mut seen = Vec::new();
    loop {
        match subscription
            .next_event_timeout(Duration::from_secs(60))
            .unwrap()
        {
            NextEvent::Event(event) => seen.push(event),
            NextEvent::Finished => break,
            other => panic!("the subscription waited with events at hand: {other:?}"),
        }
    }
    assert_eq!(seen.last().map(|e| e.kind.as_str()), Some("done"));
    for event in &seen {
        assert_eq!(
            follower.next_event_timeout(Duration::ZERO).unwrap(),
            NextEvent::Event(event.clone())
        );
    }
    assert_eq!(
        follower.next_event_timeout(Duration::ZERO).unwrap(),
        NextEvent::Finished
    );
    assert_eq!(
        subscription.next_event_timeout(Duration::ZERO).unwrap(),
        NextEvent::Finished
    );
}

#[test]
fn a_subscriber_does_not_end_at_an_error_whose_retry_is_already_waiting() {
    // A failed job retried at once: `error` then `requeued`. A subscriber
    // that reads `error` while `requeued` already waits for it must go on:
    // the job moved on.
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(0)));
    let job = jobs.create(NewJob::new("k")).unwrap();
    let mut subscription = jobs.subscribe(&job.id, 0).unwrap();
    let worker = jobs.start(&job.id, None).unwrap();
    assert_eq!(subscription.next_event().unwrap().unwrap().kind, "started");
    jobs.fail(&worker, JobError::new("x"), FailureKind::Permanent)
        .unwrap();
    jobs.retry(&job.id).unwrap();

    assert_eq!(subscription.next_event().unwrap().unwrap().kind, "error");
    assert!(!subscription.is_finished());
    assert_eq!(subscription.next_event().unwrap().unwrap().kind, "requeued");
    assert!(!subscription.is_finished());
}

#[test]
fn completing_a_job_clears_the_error_of_an_earlier_attempt() {
    for (name, jobs, clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("export")).unwrap();
        let first = jobs.start(&job.id, None).unwrap();
        let busy = JobError::new("busy, retrying").internal("upstream 503");
        let retry_at_ms = START_MS + 1_000;
        let queued = jobs
            .fail(&first, busy, FailureKind::Transient { retry_at_ms })
            .unwrap();
        assert!(queued.error.is_some(), "{name}: a queued job shows why");
        clock.set(retry_at_ms);
        let second = jobs.start(&job.id, None).unwrap();
        let done = jobs.complete(&second, json!({"ok": true})).unwrap();
        assert_eq!(done.error, None, "{name}: complete with an old error");
        let stored = jobs.get(&job.id).unwrap().unwrap();
        assert_eq!(stored.error, None, "{name}");
        assert_eq!(stored.client_view().error, None, "{name}");
        // The history keeps it: the `retry` event carries the client message.
        let events = jobs.events_since(&job.id, 0).unwrap().events;
        let retry = events.iter().find(|e| e.kind == "retry").unwrap();
        assert_eq!(retry.data["error"]["error"], "busy, retrying", "{name}");
    }
}

#[test]
fn transitions_return_the_sequence_number_of_the_event_they_appended() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("export")).unwrap();
        assert_eq!(job.last_event_seq(), None, "{name}");
        let claim = jobs.start(&job.id, None).unwrap();
        let events = |jobs: &Jobs| jobs.events_since(&job.id, 0).unwrap().events;
        let seq_of = |seq: u64| events(&jobs).into_iter().find(|e| e.seq == seq).unwrap();
        assert_eq!(seq_of(claim.started_seq.unwrap()).kind, "started", "{name}");

        // Writers racing on one job each learn their own event's number.
        let appended: Vec<(String, u64)> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..4)
                .map(|writer| {
                    let (jobs, claim) = (jobs.clone(), claim.clone());
                    scope.spawn(move || {
                        (0..5)
                            .map(|i| {
                                let message = format!("writer {writer} step {i}");
                                let job = jobs.progress(&claim, &message).unwrap();
                                (message, job.last_event_seq().unwrap())
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        for (message, seq) in &appended {
            assert_eq!(
                seq_of(*seq).data["message"],
                *message,
                "{name}: event {seq}"
            );
        }
        let staged = jobs.set_stage(&claim, "draft").unwrap();
        assert_eq!(
            seq_of(staged.last_event_seq().unwrap()).kind,
            "stage",
            "{name}"
        );
        let cancelled = jobs.cancel(&job.id).unwrap();
        let last = cancelled.last_event_seq().unwrap();
        assert_eq!(seq_of(last).kind, "cancelled", "{name}");
        assert_eq!(last, events(&jobs).last().unwrap().seq, "{name}");
    }
}

#[test]
fn a_job_state_builder_refuses_a_zero_bound_and_a_namespace_without_room() {
    let build = |events: u64, buffer: usize, namespace: jobsafe::Prefix| {
        JobState::builder(MemStore::new(), Arc::new(ManualClock::new(START_MS)))
            .max_events(events)
            .subscriber_buffer(buffer)
            .namespace(namespace)
            .build()
    };
    let plain = jobsafe::Prefix::new(["jobs"]).unwrap();
    let err = build(0, 8, plain.clone()).unwrap_err();
    assert!(err.to_string().contains("max_events"), "{err}");
    let err = build(8, 0, plain.clone()).unwrap_err();
    assert!(err.to_string().contains("subscriber_buffer"), "{err}");
    let deep = jobsafe::Prefix::new((0..Key::MAX_SEGMENTS - 2).map(|i| i.to_string())).unwrap();
    let err = build(8, 8, deep).unwrap_err();
    assert!(matches!(err, Error::InvalidKey { .. }), "{err}");
    assert!(build(1, 1, plain).is_ok());
}

#[test]
fn a_fresh_job_id_is_a_time_ordered_uuid() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(START_MS)));
    let first = jobs.create(NewJob::new("a")).unwrap();
    let second = jobs.create(NewJob::new("b")).unwrap();
    assert_ne!(first.id, second.id);
    for job in [first, second] {
        let id = uuid::Uuid::parse_str(&job.id).unwrap();
        assert_eq!(id.get_version(), Some(uuid::Version::SortRand), "{id}");
    }
}

#[test]
fn a_job_kind_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let kind = text_of_len(Job::MAX_KIND_LEN);
        let job = jobs.create(NewJob::new(kind.clone())).unwrap();
        assert_eq!(jobs.get(&job.id).unwrap().unwrap().kind, kind, "{name}");
        let before = snapshot(jobs.store());
        let over = Job::MAX_KIND_LEN + 1;
        let refused = jobs.create(NewJob::new(text_of_len(over)).id("over"));
        assert_too_large(refused, "job kind", over, Job::MAX_KIND_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

#[test]
fn a_job_owner_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let owner = text_of_len(Job::MAX_OWNER_LEN);
        let job = jobs.create(NewJob::new("k").owner(owner.clone())).unwrap();
        assert_eq!(
            jobs.get(&job.id).unwrap().unwrap().owner,
            Some(owner),
            "{name}"
        );
        let before = snapshot(jobs.store());
        let over = Job::MAX_OWNER_LEN + 1;
        let refused = jobs.create(NewJob::new("k").id("over").owner(text_of_len(over)));
        assert_too_large(refused, "job owner", over, Job::MAX_OWNER_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

#[test]
fn job_metadata_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        // `NewJob::meta` adds fields one by one: one field whose encoding,
        // braces included, is exactly the limit.
        let at_limit = metadata_of_len(Job::MAX_METADATA_LEN);
        let (field, value) = at_limit.iter().next().unwrap();
        let job = jobs
            .create(NewJob::new("k").meta(field.clone(), value.clone()))
            .unwrap();
        assert_eq!(
            jobs.get(&job.id).unwrap().unwrap().metadata,
            at_limit,
            "{name}"
        );
        let before = snapshot(jobs.store());
        let over = Job::MAX_METADATA_LEN + 1;
        let too_big = metadata_of_len(over);
        let (field, value) = too_big.iter().next().unwrap();
        let refused = jobs.create(
            NewJob::new("k")
                .id("over")
                .meta(field.clone(), value.clone()),
        );
        assert_too_large(refused, "job metadata", over, Job::MAX_METADATA_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

#[test]
fn a_job_result_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let over = Job::MAX_RESULT_LEN + 1;
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        let before = snapshot(jobs.store());
        let refused = jobs.complete(&worker, json_of_len(over));
        assert_too_large(refused, "job result", over, Job::MAX_RESULT_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");

        // The job still runs, and completes with a result at the limit, kept
        // in the record and in the `done` event.
        let result = json_of_len(Job::MAX_RESULT_LEN);
        jobs.complete(&worker, result.clone()).unwrap();
        let done = jobs.get(&job.id).unwrap().unwrap();
        assert_eq!(done.status, JobStatus::Complete, "{name}");
        assert_eq!(done.result.as_ref(), Some(&result), "{name}");
        let events = jobs.events_since(&job.id, 0).unwrap().events;
        assert_eq!(events.last().map(|e| &e.data), Some(&result), "{name}");
    }
}

#[test]
fn an_event_kind_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        let kind = text_of_len(Event::MAX_KIND_LEN);
        let event = jobs.append_event(&worker, &kind, json!({})).unwrap();
        assert_eq!(event.kind, kind, "{name}");
        let before = snapshot(jobs.store());
        let over = Event::MAX_KIND_LEN + 1;
        let refused = jobs.append_event(&worker, &text_of_len(over), json!({}));
        assert_too_large(refused, "event kind", over, Event::MAX_KIND_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

#[test]
fn event_data_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        let data = json_of_len(Event::MAX_DATA_LEN);
        let event = jobs.append_event(&worker, "chunk", data.clone()).unwrap();
        let replayed = jobs.events_since(&job.id, event.seq - 1).unwrap().events;
        assert_eq!(replayed.first().map(|e| &e.data), Some(&data), "{name}");
        let before = snapshot(jobs.store());
        let over = Event::MAX_DATA_LEN + 1;
        let refused = jobs.append_event(&worker, "chunk", json_of_len(over));
        assert_too_large(refused, "event data", over, Event::MAX_DATA_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

#[test]
fn a_stage_name_at_its_limit_is_stored_and_one_byte_more_writes_nothing() {
    for (name, jobs, _clock, _dir) in backends() {
        let job = jobs.create(NewJob::new("k")).unwrap();
        let worker = jobs.start(&job.id, None).unwrap();
        let stage = text_of_len(Job::MAX_STAGE_LEN);
        let staged = jobs.set_stage(&worker, &stage).unwrap();
        assert_eq!(staged.stage.as_deref(), Some(stage.as_str()), "{name}");
        let before = snapshot(jobs.store());
        let over = Job::MAX_STAGE_LEN + 1;
        let refused = jobs.set_stage(&worker, &text_of_len(over));
        assert_too_large(refused, "job stage", over, Job::MAX_STAGE_LEN);
        assert_eq!(snapshot(jobs.store()), before, "{name}");
    }
}

/// Another process's appends (another handle of a shared `LogStore` stands
/// for it) reach a subscription as soon as the kernel reports the journal
/// changed: every event once, in order, ending after the terminal one; and
/// an async follower whose poll never comes (the clock does not move) gets
/// them the same way.
#[cfg(target_os = "linux")]
#[test]
fn a_subscription_hears_the_events_another_process_appends() {
    use jobsafe::LogStore;
    use jobsafe::jobs::{AsyncJobState, NextEvent};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("store");
    let clock = ManualClock::new(1_700_000_000_000);
    let here = JobState::new(LogStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let there = JobState::new(LogStore::open(&root).unwrap(), Arc::new(clock.clone()));
    let job = there.create(NewJob::new("export")).unwrap();
    let mut subscription = here.subscribe(&job.id, 0).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (followed_tx, followed) = std::sync::mpsc::channel();
    {
        let jobs = AsyncJobState::new(here.clone());
        let id = job.id.clone();
        std::thread::spawn(move || {
            let kinds = runtime.block_on(async move {
                let mut stream = jobs
                    .follow(&id, 0, Duration::from_secs(3600))
                    .await
                    .unwrap();
                let mut kinds = Vec::new();
                while let Some(event) = futures_util::StreamExt::next(&mut stream).await {
                    kinds.push(event.unwrap().kind);
                }
                kinds
            });
            let _ = followed_tx.send(kinds);
        });
    }
    let worker = there.start(&job.id, None).unwrap();
    there.progress(&worker, "half way").unwrap();
    there.complete(&worker, json!({"pages": 3})).unwrap();
    let mut kinds = Vec::new();
    loop {
        match subscription
            .next_event_timeout(Duration::from_secs(60))
            .unwrap()
        {
            NextEvent::Event(event) => kinds.push(event.kind),
            NextEvent::Finished => break,
            _ => panic!("the other process's events never came: {kinds:?}"),
        }
    }
    let expected = there.events_since(&job.id, 0).unwrap().events;
    let expected: Vec<String> = expected.into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, expected);
    assert_eq!(kinds.last().map(String::as_str), Some("done"));
    let followed = followed
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("the follower never heard the other process"));
    assert_eq!(followed, expected);
}

/// A record whose attempt count is at its end (made by hand) is refused as
/// corrupt by `start`, naming its key; the count used to overflow (a panic
/// in a debug build, a count back at zero in a release one).
#[test]
fn a_start_of_a_job_whose_attempt_count_is_at_its_end_is_refused_as_corrupt() {
    let store = Arc::new(MemStore::new());
    let jobs = JobState::new(Arc::clone(&store), Arc::new(ManualClock::new(1_000)));
    jobs.create(NewJob::new("export").id("j1")).unwrap();
    let key = Key::new(["jobs", "job", "j1"]).unwrap();
    let entry = store.get(&key).unwrap().unwrap();
    let mut record: serde_json::Value = serde_json::from_slice(&entry.value).unwrap();
    record["attempt"] = json!(u32::MAX);
    let bytes = serde_json::to_vec(&record).unwrap();
    store.put(&key, &bytes, jobsafe::Expect::Any).unwrap();

    let e = jobs.start("j1", None).unwrap_err();
    assert!(e.is_corrupt(), "{e}");
    assert!(e.to_string().contains("jobs/job/j1"), "{e}");
    let job = jobs.get("j1").unwrap().unwrap();
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.attempt, u32::MAX);
}

/// The names of the stages a job finished are bounded, so that a worker
/// that sets a stage per item of a long loop cannot grow the record (which
/// every write rewrites) without end.
#[test]
fn the_stages_a_job_finished_are_bounded() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(1_000)));
    let job = jobs.create(NewJob::new("export")).unwrap();
    let claim = jobs.start(&job.id, None).unwrap();
    let name = "s".repeat(Job::MAX_STAGE_LEN);
    let fit = Job::MAX_STAGES_DONE_LEN / Job::MAX_STAGE_LEN;
    // One more than fit: the first call finishes no stage.
    for _ in 0..=fit {
        jobs.set_stage(&claim, &name).unwrap();
    }
    let e = jobs.set_stage(&claim, &name).unwrap_err();
    assert!(e.is_too_large(), "{e}");
    let job = jobs.get(&job.id).unwrap().unwrap();
    assert_eq!(job.stages_done.len(), fit);
    // The job still ends.
    jobs.complete(&claim, json!({})).unwrap();
}

/// A follower's poll interval under the clocks' resolution of 1 ms would
/// be a pause of none: refused, as zero is.
#[test]
fn a_follower_poll_interval_under_a_millisecond_is_refused() {
    let jobs = JobState::new(MemStore::new(), Arc::new(ManualClock::new(1_000)));
    let job = jobs.create(NewJob::new("export")).unwrap();
    for every in [Duration::ZERO, Duration::from_micros(900)] {
        let e = jobs.follow(&job.id, 0, every).map(drop).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{every:?}: {e}");
    }
    jobs.follow(&job.id, 0, Duration::from_millis(1)).unwrap();
}

/// A bound on kept events wider than a record may count is refused when the
/// job state is built, not found out when a job's record is read as
/// damaged after 2^24 events; so is a bound of 0.
#[test]
fn a_bound_on_kept_events_must_fit_what_a_record_may_count() {
    let build = |max_events| {
        JobState::builder(MemStore::new(), Arc::new(ManualClock::new(1_000)))
            .max_events(max_events)
            .build()
            .map(drop)
    };
    for refused in [0, JobState::MAX_EVENTS_KEPT + 1, u64::MAX] {
        let e = build(refused).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{refused}: {e}");
    }
    build(JobState::MAX_EVENTS_KEPT).unwrap();
}
