//! Crash states: from a trace, what a power loss after each event may leave.
//!
//! Replaying the trace keeps, per inode, what is durable (flushed) and, in
//! trace order, the changes not flushed yet. At each crash point every
//! unflushed change is a slot with the outcomes the model allows (a write:
//! lost, kept, a prefix, or its later sector pieces; a directory change: lost
//! or kept). When the slots' combinations are no more than the budget, all of
//! them are built; otherwise "all lost", "all kept" and random combinations
//! drawn from the seeded generator, up to the budget.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;
use std::ops::ControlFlow;

use super::fs::{Data, DirEffect, Event, FileData, Image, Ino, Kind, Node, ROOT};

/// Disks write whole sectors at best: tears fall on these boundaries (and,
/// for a write within one sector, inside it too).
const SECTOR: u64 = 512;

/// How many states to build per crash point.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// All combinations when there are at most this many; else this many.
    pub per_point: usize,
}

/// One state a power loss may leave.
#[derive(Debug)]
pub struct CrashState {
    /// How many events of the trace happened before the power loss.
    pub point: usize,
    pub image: Image,
    /// What happened to each unflushed change, for a failure message.
    pub choices: String,
}

/// Counts over a run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub crash_points: usize,
    pub states: usize,
    /// Crash points whose every allowed state was built.
    pub exhaustive_points: usize,
}

/// What became of one unflushed write.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Fate {
    Lost,
    Kept,
    /// The first `n` bytes landed.
    Prefix(u64),
    /// Bytes from `n` on landed (whole sectors), the ones before did not.
    Suffix(u64),
}

struct PendingWrite {
    seq: usize,
    ino: Ino,
    offset: u64,
    data: Data,
}

struct PendingDir {
    seq: usize,
    effect: DirEffect,
    /// The directories it touches not flushed since.
    waiting: BTreeSet<Ino>,
}

/// The durable state and the unflushed changes after a prefix of the trace.
#[derive(Default)]
struct Tracker {
    durable: HashMap<Ino, Node>,
    writes: Vec<PendingWrite>,
    dirs: Vec<PendingDir>,
}

impl Tracker {
    fn apply(&mut self, seq: usize, event: &Event) {
        match event {
            Event::Write { ino, offset, data } => self.writes.push(PendingWrite {
                seq,
                ino: *ino,
                offset: *offset,
                data: data.clone(),
            }),
            Event::SyncFile { ino, .. } => {
                let (flushed, kept) = std::mem::take(&mut self.writes)
                    .into_iter()
                    .partition(|w| w.ino == *ino);
                self.writes = kept;
                let file = file_mut(&mut self.durable, *ino);
                for w in flushed {
                    file.write(w.offset, &w.data, 0, w.data.len());
                }
            }
            Event::Dir(effect) => self.dirs.push(PendingDir {
                seq,
                effect: effect.clone(),
                waiting: effect.changes.iter().map(|(dir, _, _)| *dir).collect(),
            }),
            Event::SyncDir { ino, .. } => {
                for d in &mut self.dirs {
                    d.waiting.remove(ino);
                }
                let (flushed, kept) = std::mem::take(&mut self.dirs)
                    .into_iter()
                    .partition(|d| d.waiting.is_empty());
                self.dirs = kept;
                for d in flushed {
                    apply_dir(&mut self.durable, &d.effect);
                }
            }
        }
    }

    /// Builds the image in which each pending write met `fates[i]` and each
    /// pending directory change was kept if `kept[i]`.
    fn image(&self, fates: &[Fate], kept: &[bool]) -> Image {
        let mut dirs: HashMap<Ino, Node> = self
            .durable
            .iter()
            .filter(|(_, n)| matches!(n, Node::Dir(_)))
            .map(|(i, n)| (*i, n.clone()))
            .collect();
        dirs.entry(ROOT).or_insert_with(|| Node::empty(Kind::Dir));
        for (d, _) in self.dirs.iter().zip(kept).filter(|(_, k)| **k) {
            apply_dir(&mut dirs, &d.effect);
        }
        // What is reachable from the root, and of which kind.
        let mut reachable: BTreeMap<Ino, Kind> = BTreeMap::from([(ROOT, Kind::Dir)]);
        let mut todo = vec![ROOT];
        while let Some(dir) = todo.pop() {
            if let Some(Node::Dir(entries)) = dirs.get(&dir) {
                for &ino in entries.values() {
                    let kind = match dirs.get(&ino) {
                        Some(Node::Dir(_)) => Kind::Dir,
                        _ => Kind::File,
                    };
                    if reachable.insert(ino, kind).is_none() && kind == Kind::Dir {
                        todo.push(ino);
                    }
                }
            }
        }
        let mut nodes = HashMap::with_capacity(reachable.len());
        for (&ino, &kind) in &reachable {
            let node = match kind {
                Kind::Dir => dirs.remove(&ino).unwrap_or_else(|| Node::empty(Kind::Dir)),
                Kind::File => match self.durable.get(&ino) {
                    Some(Node::File(data)) => Node::File(data.clone()),
                    _ => Node::File(FileData::default()),
                },
            };
            nodes.insert(ino, node);
        }
        for (w, fate) in self.writes.iter().zip(fates) {
            let Some(Node::File(file)) = nodes.get_mut(&w.ino) else {
                continue;
            };
            let len = w.data.len();
            let (from, to) = match *fate {
                Fate::Lost => (0, 0),
                Fate::Kept => (0, len),
                Fate::Prefix(n) => (0, n),
                Fate::Suffix(n) => (n, len),
            };
            file.write(w.offset, &w.data, from, to);
        }
        Image { nodes }
    }

    /// Sector boundaries strictly inside write `w`, relative to its start.
    fn boundaries(w: &PendingWrite) -> Vec<u64> {
        let len = w.data.len();
        let first = (w.offset / SECTOR + 1) * SECTOR - w.offset;
        (0..)
            .map(|i| first + i * SECTOR)
            .take_while(|&b| b < len)
            .collect()
    }

    /// The fates enumerated for `w`: lost, kept, and a few tears.
    fn fates(w: &PendingWrite) -> Vec<Fate> {
        let mut fates = vec![Fate::Lost, Fate::Kept];
        let bounds = Self::boundaries(w);
        match (bounds.first(), bounds.last()) {
            (Some(&first), Some(&last)) => {
                fates.push(Fate::Prefix(first));
                fates.push(Fate::Suffix(last));
                if last != first {
                    fates.push(Fate::Prefix(last));
                    fates.push(Fate::Suffix(first));
                }
            }
            _ if w.data.len() >= 2 => fates.push(Fate::Prefix(w.data.len() / 2)),
            _ => {}
        }
        fates
    }

    fn random_fate(w: &PendingWrite, rng: &mut fastrand::Rng) -> Fate {
        let len = w.data.len();
        match rng.u8(0..4) {
            0 => Fate::Lost,
            1 => Fate::Kept,
            2 if len >= 2 => Fate::Prefix(rng.u64(1..len)),
            3 => {
                let bounds = Self::boundaries(w);
                if bounds.is_empty() {
                    Fate::Lost
                } else {
                    Fate::Suffix(bounds[rng.usize(0..bounds.len())])
                }
            }
            _ => Fate::Kept,
        }
    }
}

fn file_mut(nodes: &mut HashMap<Ino, Node>, ino: Ino) -> &mut FileData {
    let node = nodes
        .entry(ino)
        .or_insert_with(|| Node::File(FileData::default()));
    if !matches!(node, Node::File(_)) {
        *node = Node::File(FileData::default());
    }
    match node {
        Node::File(data) => data,
        Node::Dir(_) => unreachable!("just made a file"),
    }
}

fn apply_dir(nodes: &mut HashMap<Ino, Node>, effect: &DirEffect) {
    for (dir, name, target) in &effect.changes {
        if let Some((ino, Kind::Dir)) = target {
            nodes.entry(*ino).or_insert_with(|| Node::empty(Kind::Dir));
        }
        let dir = nodes.entry(*dir).or_insert_with(|| Node::empty(Kind::Dir));
        if let Node::Dir(entries) = dir {
            match target {
                Some((ino, _)) => entries.insert(name.clone(), *ino),
                None => entries.remove(name),
            };
        }
    }
}

fn describe(tracker: &Tracker, fates: &[Fate], kept: &[bool]) -> String {
    let mut out = String::new();
    for (w, fate) in tracker.writes.iter().zip(fates) {
        let _ = write!(
            out,
            "write#{}(ino {} @{} +{}):{fate:?} ",
            w.seq,
            w.ino,
            w.offset,
            w.data.len()
        );
    }
    for (d, k) in tracker.dirs.iter().zip(kept) {
        let names: Vec<String> = d
            .effect
            .changes
            .iter()
            .map(|(dir, n, t)| {
                let sign = if t.is_some() { "+" } else { "-" };
                format!("{sign}{dir}/{}", n.to_string_lossy())
            })
            .collect();
        let _ = write!(
            out,
            "dir#{}({}):{} ",
            d.seq,
            names.join(","),
            if *k { "kept" } else { "lost" }
        );
    }
    if out.is_empty() {
        out.push_str("nothing unflushed");
    }
    out
}

/// Calls `each` with every crash state of `trace`, recorded on a filesystem
/// booted from `base`, that the budget allows, crash point by crash point,
/// until it breaks; returns the counts.
pub fn for_each_state(
    base: &Image,
    trace: &[Event],
    budget: Budget,
    rng: &mut fastrand::Rng,
    mut each: impl FnMut(CrashState) -> ControlFlow<()>,
) -> Totals {
    let mut tracker = Tracker {
        durable: base.nodes.clone(),
        ..Tracker::default()
    };
    let mut totals = Totals::default();
    for point in 0..=trace.len() {
        if point > 0 {
            tracker.apply(point - 1, &trace[point - 1]);
        }
        totals.crash_points += 1;
        let options: Vec<Vec<Fate>> = tracker.writes.iter().map(Tracker::fates).collect();
        let combos = options
            .iter()
            .map(Vec::len)
            .chain(tracker.dirs.iter().map(|_| 2))
            .try_fold(1usize, |acc, n| acc.checked_mul(n));
        let mut emit = |fates: &[Fate], kept: &[bool], totals: &mut Totals| {
            totals.states += 1;
            each(CrashState {
                point,
                image: tracker.image(fates, kept),
                choices: describe(&tracker, fates, kept),
            })
        };
        match combos {
            Some(n) if n <= budget.per_point => {
                totals.exhaustive_points += 1;
                for mut i in 0..n {
                    let fates: Vec<Fate> = options
                        .iter()
                        .map(|o| {
                            let f = o[i % o.len()];
                            i /= o.len();
                            f
                        })
                        .collect();
                    let kept: Vec<bool> = tracker
                        .dirs
                        .iter()
                        .map(|_| {
                            let k = i % 2 == 1;
                            i /= 2;
                            k
                        })
                        .collect();
                    if emit(&fates, &kept, &mut totals).is_break() {
                        return totals;
                    }
                }
            }
            _ => {
                let w = tracker.writes.len();
                let d = tracker.dirs.len();
                let mut seen = HashSet::new();
                for sample in 0..budget.per_point.max(2) {
                    let (fates, kept): (Vec<Fate>, Vec<bool>) = match sample {
                        0 => (vec![Fate::Lost; w], vec![false; d]),
                        1 => (vec![Fate::Kept; w], vec![true; d]),
                        _ => (
                            tracker
                                .writes
                                .iter()
                                .map(|pw| Tracker::random_fate(pw, rng))
                                .collect(),
                            (0..d).map(|_| rng.bool()).collect(),
                        ),
                    };
                    if !seen.insert((fates.clone(), kept.clone())) {
                        continue;
                    }
                    if emit(&fates, &kept, &mut totals).is_break() {
                        return totals;
                    }
                }
            }
        }
    }
    totals
}
