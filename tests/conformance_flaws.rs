//! The conformance suite catches broken backends: a small store that is correct
//! passes every clause, and each deliberate flaw is reported by the clause about
//! it. A suite that passed every backend would prove nothing.

use std::collections::BTreeMap;

use jobsafe::conformance::{self, Harness};
use jobsafe::store::{Applied, BatchOp, ListPage, Quarantined};
use jobsafe::{Batch, Entry, Error, Expect, Key, Prefix, Result, Store, Version};
use parking_lot::Mutex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flaw {
    None,
    /// `put(Absent)` overwrites like `put(Any)`.
    IgnoresAbsent,
    /// Each key counts its versions from 1 again after a delete (ABA).
    ReusesVersionsAfterDelete,
    /// A batch applies the operations before the one that conflicts.
    BatchStopsAtConflict,
    /// `list` matches the prefix as a string, not as whole segments.
    ListMatchesPartialSegments,
    /// `list` ignores `after` past the first page.
    ListRestartsPages,
    /// A failed precondition reports no current version.
    ConflictHidesCurrent,
}

#[derive(Debug)]
struct Toy {
    flaw: Flaw,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    records: BTreeMap<Key, Entry>,
    /// The last version each key had, kept after deletes.
    last: BTreeMap<Key, u64>,
}

impl Toy {
    fn new(flaw: Flaw) -> Self {
        Toy {
            flaw,
            state: Mutex::new(State::default()),
        }
    }

    fn check(&self, state: &State, key: &Key, expect: Expect) -> Result<()> {
        let current = state.records.get(key).map(|e| e.version);
        let expect = match (self.flaw, expect) {
            (Flaw::IgnoresAbsent, Expect::Absent) => Expect::Any,
            _ => expect,
        };
        match expect.check(key, current) {
            Err(Error::Conflict { key, expected, .. })
                if self.flaw == Flaw::ConflictHidesCurrent =>
            {
                Err(Error::Conflict {
                    key,
                    expected,
                    current: None,
                })
            }
            other => other,
        }
    }

    fn write(&self, state: &mut State, op: &BatchOp) -> Applied {
        match op {
            BatchOp::Put { key, value, .. } => {
                let last = state.last.entry(key.clone()).or_insert(0);
                *last += 1;
                let version = Version::new(*last);
                state
                    .records
                    .insert(key.clone(), Entry::new(value.clone(), version));
                Applied::Put(version)
            }
            BatchOp::Delete { key, .. } => {
                let existed = state.records.remove(key).is_some();
                if self.flaw == Flaw::ReusesVersionsAfterDelete {
                    state.last.remove(key);
                }
                Applied::Deleted(existed)
            }
        }
    }
}

impl Store for Toy {
    fn get(&self, key: &Key) -> Result<Option<Entry>> {
        Ok(self.state.lock().records.get(key).cloned())
    }

    fn put(&self, key: &Key, value: &[u8], expect: Expect) -> Result<Version> {
        self.apply(&Batch::new().put(key, value, expect))
            .map(|applied| match applied[..] {
                [Applied::Put(v)] => v,
                _ => Version::new(0),
            })
    }

    fn delete(&self, key: &Key, expect: Expect) -> Result<bool> {
        self.apply(&Batch::new().delete(key, expect))
            .map(|applied| applied[..] == [Applied::Deleted(true)])
    }

    fn list(&self, prefix: &Prefix, after: Option<&Key>, limit: usize) -> Result<ListPage> {
        if limit == 0 {
            return Err(Error::InvalidArgument("limit 0".to_owned()));
        }
        let after = if self.flaw == Flaw::ListRestartsPages {
            None
        } else {
            after
        };
        let state = self.state.lock();
        let matches = |key: &Key| match self.flaw {
            Flaw::ListMatchesPartialSegments => key
                .segments()
                .join("/")
                .starts_with(&prefix.segments().join("/")),
            _ => key.starts_with(prefix),
        };
        let mut keys: Vec<Key> = state
            .records
            .keys()
            .filter(|k| after.is_none_or(|a| *k > a) && matches(k))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last().cloned()
        } else {
            None
        };
        Ok(ListPage::new(keys, next))
    }

    fn apply(&self, batch: &Batch) -> Result<Vec<Applied>> {
        batch.validate()?;
        let mut state = self.state.lock();
        if self.flaw != Flaw::BatchStopsAtConflict {
            for op in batch.ops() {
                self.check(&state, op.key(), op.expect())?;
            }
        }
        let mut applied = Vec::new();
        for op in batch.ops() {
            self.check(&state, op.key(), op.expect())?;
            applied.push(self.write(&mut state, op));
        }
        Ok(applied)
    }

    fn quarantine(&self, key: &Key) -> Result<Option<Quarantined>> {
        let mut state = self.state.lock();
        let moved = self.write(
            &mut state,
            &BatchOp::Delete {
                key: key.clone(),
                expect: Expect::Any,
            },
        );
        Ok((moved == Applied::Deleted(true)).then(|| Quarantined::new(key.clone(), "nowhere")))
    }
}

struct Toys(Flaw);

impl Harness for Toys {
    type Store = Toy;

    fn fresh(&mut self) -> Result<Toy> {
        Ok(Toy::new(self.0))
    }
}

fn violated(flaw: Flaw) -> Vec<&'static str> {
    let report = conformance::run_all(&mut Toys(flaw));
    report.violations().map(|(name, _)| name).collect()
}

#[test]
fn a_correct_toy_store_passes_every_clause() {
    let report = conformance::run_all(&mut Toys(Flaw::None));
    assert!(report.is_ok(), "{report}");
}

#[test]
fn put_absent_that_overwrites_is_caught() {
    let caught = violated(Flaw::IgnoresAbsent);
    assert!(
        caught.contains(&"put_absent_inserts_only_once"),
        "{caught:?}"
    );
    assert!(
        caught.contains(&"concurrent_put_absent_has_exactly_one_winner"),
        "{caught:?}"
    );
}

#[test]
fn versions_reused_after_delete_are_caught() {
    let caught = violated(Flaw::ReusesVersionsAfterDelete);
    assert!(caught.contains(&"versions_are_never_reused"), "{caught:?}");
}

#[test]
fn batch_applied_up_to_its_conflict_is_caught() {
    let caught = violated(Flaw::BatchStopsAtConflict);
    assert_eq!(caught, ["batch_conflict_changes_nothing"]);
}

#[test]
fn prefix_matching_part_of_a_segment_is_caught() {
    let caught = violated(Flaw::ListMatchesPartialSegments);
    assert!(
        caught.contains(&"list_is_ordered_and_matches_whole_segments"),
        "{caught:?}"
    );
}

#[test]
fn pages_that_ignore_the_cursor_are_caught() {
    let caught = violated(Flaw::ListRestartsPages);
    assert!(
        caught.contains(&"list_pages_cover_every_key_once"),
        "{caught:?}"
    );
}

#[test]
fn conflicts_without_the_current_version_are_caught() {
    let caught = violated(Flaw::ConflictHidesCurrent);
    assert!(
        caught.contains(&"put_absent_inserts_only_once"),
        "{caught:?}"
    );
    assert!(
        caught.contains(&"put_version_is_compare_and_set"),
        "{caught:?}"
    );
}
