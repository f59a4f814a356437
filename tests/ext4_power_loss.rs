//! Power loss on a real kernel: the crash suite's workloads on an ext4
//! filesystem that is cut off mid-write, with no journal flush.
//!
//! As root, the test makes a small ext4 image, attaches it to a loop device and
//! mounts it. Each iteration a child process runs the workloads of the crash
//! suite's parts at once, one thread each, on that filesystem: store batches,
//! `JobLock` holders, `JobLedger` charges and refunds, and job events, each on a
//! `DirStore` and on a `LogStore`. The child acknowledges writes over its
//! stdout, never on the filesystem under test. At a random moment (seeded,
//! the seed printed) the parent shuts the filesystem down with the ext4
//! shutdown ioctl and no log flush (`xfs_io -x -c shutdown`, which issues
//! `EXT4_IOC_SHUTDOWN` with `EXT4_GOING_FLAGS_NOLOGFLUSH` on ext4): from then on
//! nothing reaches the disk, as if the power went. It kills the child, unmounts,
//! mounts again (the journal replays), reopens every store and runs the parts'
//! checks: every acknowledged write present, no torn record, recovery works, no
//! lock held forever. Every other iteration runs with `data=writeback`, where
//! ext4 keeps no order between file data and metadata, so that only the
//! stores' own fsyncs make their writes durable.
//!
//! It needs root, a loop device, `mkfs.ext4` and `xfs_io`, so a plain `cargo
//! test` lists it as ignored, with that reason; run it with `cargo test --test
//! ext4_power_loss -- --ignored` (`.ci/run` does). Run so but without them, the
//! test prints a loud `SKIPPED: <reason>` and passes, unless
//! `JOBSAFE_REQUIRE_EXT4=1` makes that a failure (CI sets it wherever loop
//! devices work). `JOBSAFE_EXT4_ITERATIONS`
//! sets the number of power losses (5 by default; CI runs 40);
//! `JOBSAFE_CRASH_SEED` replays a run.
#![cfg(target_os = "linux")]
// Test code, children included: a step that fails fails the test.
#![allow(clippy::unwrap_used, clippy::panic)]

mod common;
mod crash;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::child::Child;
use crash::backend::UNSYNCED_VAR;
use crash::part::{self, Model, PartId, ROLE, Tally};
use crash::summary::env_or;

const TEST: &str = "acknowledged_writes_survive_ext4_power_loss";
const IMAGE_BYTES: u64 = 192 << 20;

#[test]
#[ignore = "needs root, a loop device, mkfs.ext4 and xfs_io: run with --ignored (.ci/run does)"]
fn acknowledged_writes_survive_ext4_power_loss() {
    if part::serve_child() {
        return;
    }
    let required = std::env::var("JOBSAFE_REQUIRE_EXT4").is_ok_and(|v| v == "1");
    let mut fs = match Ext4::mount() {
        Ok(fs) => fs,
        Err(reason) => {
            let line = format!("SKIPPED: ext4_power_loss: {reason}");
            println!(
                "\n{}\n{line}\n{}\n",
                "!".repeat(line.len()),
                "!".repeat(line.len())
            );
            eprintln!("{line}");
            assert!(
                !required,
                "JOBSAFE_REQUIRE_EXT4=1, but the ext4 power-loss test cannot run: {reason}"
            );
            return;
        }
    };
    let iterations: u64 = env_or("JOBSAFE_EXT4_ITERATIONS", 5);
    let seed: u64 = env_or("JOBSAFE_CRASH_SEED", fastrand::u64(..));
    let mut rng = fastrand::Rng::with_seed(seed);
    let started = Instant::now();

    let mut run = Run::new(fs.mount_point.join("suite"), false, seed);
    for iteration in 1..=iterations {
        run.power_loss(&mut fs, iteration, &mut rng);
    }
    // The control: the same workloads on stores that never fsync must lose
    // acknowledged writes, or this test could not see a loss at all.
    let mut control = Run::new(fs.mount_point.join("control"), true, seed);
    for iteration in 1..=CONTROL_ITERATIONS {
        control.power_loss(&mut fs, iteration, &mut rng);
        if !control.violations().is_empty() {
            break;
        }
    }

    let violations = run.violations();
    let per_part: Vec<String> = run
        .parts
        .iter()
        .zip(&run.tallies)
        .map(|(part, tally)| format!("{part}={}", tally.acknowledged))
        .collect();
    println!(
        "ext4_power_loss: iterations={} acknowledged_checked={} violations={} writeback_iterations={} writes_in_flight_at_shutdown={} errors_after_shutdown={} acknowledged_by_part={} control_iterations={} control_violations={} seed={seed} secs={:.1}",
        run.iterations,
        run.acknowledged(),
        violations.len(),
        run.writeback,
        run.in_flight,
        run.errors_after_shutdown,
        per_part.join(","),
        control.iterations,
        control.violations().len(),
        started.elapsed().as_secs_f64()
    );
    assert!(
        violations.is_empty(),
        "violations (seed {seed}):\n{}",
        violations.join("\n")
    );
    for (part, tally) in run.parts.iter().zip(&run.tallies) {
        assert!(tally.acknowledged > 0, "{part}: no write was acknowledged");
    }
    assert!(
        !control.violations().is_empty(),
        "stores that never fsync lost no acknowledged write in {} power losses (seed {seed}): \
         the test cannot tell a durable store from one that is not",
        control.iterations
    );
}

/// Power losses at most this many times for the control, which stops at its
/// first violation.
const CONTROL_ITERATIONS: u64 = 10;

/// Every part's model and figures, over the power losses of one run.
struct Run {
    root: PathBuf,
    /// Whether the children's stores skip fsync (the control).
    unsynced: bool,
    /// The run's seed, for the messages of a failure that ends it.
    seed: u64,
    parts: Vec<PartId>,
    models: Vec<Box<dyn Model>>,
    tallies: Vec<Tally>,
    iterations: u64,
    /// Iterations whose workload ran with `data=writeback`.
    writeback: u64,
    in_flight: u64,
    errors_after_shutdown: u64,
}

impl Run {
    fn new(root: PathBuf, unsynced: bool, seed: u64) -> Run {
        std::fs::create_dir_all(&root).unwrap();
        let parts = PartId::all();
        Run {
            models: parts.iter().map(|p| part::model(*p, &root)).collect(),
            tallies: parts.iter().map(|_| Tally::default()).collect(),
            root,
            unsynced,
            seed,
            parts,
            iterations: 0,
            writeback: 0,
            in_flight: 0,
            errors_after_shutdown: 0,
        }
    }

    /// One child, one power loss, one recovery, and every part's checks.
    fn power_loss(&mut self, fs: &mut Ext4, iteration: u64, rng: &mut fastrand::Rng) {
        let mut vars = part::child_vars(&self.parts, &self.root, iteration, rng.u64(..));
        if self.unsynced {
            vars.insert(UNSYNCED_VAR, "1".to_owned());
        }
        let mut worker = Child::spawn(TEST, ROLE, &vars);
        self.iterations += 1;
        self.writeback += u64::from(fs.data == DataMode::Writeback);
        let mut last_was_intent = vec![false; self.parts.len()];
        // Until every part has acknowledged one to three writes (or failed),
        // so that the power goes while all of them write.
        let mut awaited: Vec<usize> = self.parts.iter().map(|_| rng.usize(1..=3)).collect();
        while awaited.iter().any(|n| *n > 0) {
            let Some(line) = worker.next_report() else {
                break;
            };
            let failed = part::route(&line).is_some_and(|(_, r)| part::failure(r).is_some());
            if let Some(index) = self.absorb(&line, iteration, false, &mut last_was_intent)
                && !last_was_intent[index]
            {
                // A failed part acknowledges nothing more: stop waiting for it.
                awaited[index] = if failed {
                    0
                } else {
                    awaited[index].saturating_sub(1)
                };
            }
        }
        let late = if rng.u8(0..4) == 0 { 50_000 } else { 5_000 };
        std::thread::sleep(Duration::from_micros(rng.u64(0..late)));
        fs.shut_down()
            .unwrap_or_else(|e| panic!("iteration {iteration} (seed {}): {e}", self.seed));
        for line in worker.kill() {
            self.absorb(&line, iteration, true, &mut last_was_intent);
        }
        self.in_flight += last_was_intent.iter().filter(|b| **b).count() as u64;
        // Every other power loss in writeback mode, where ext4 orders nothing
        // between data and metadata: only fsync makes a write durable there.
        let data = if iteration.is_multiple_of(2) {
            DataMode::Writeback
        } else {
            DataMode::Ordered
        };
        fs.remount(data).unwrap_or_else(|e| {
            panic!("iteration {iteration} (seed {}): recovery: {e}", self.seed)
        });
        for (model, tally) in self.models.iter_mut().zip(&mut self.tallies) {
            model.check(iteration, tally);
        }
    }

    /// Hands one reported line to its part's model; returns the part's index.
    fn absorb(
        &mut self,
        line: &str,
        iteration: u64,
        shut_down: bool,
        last_was_intent: &mut [bool],
    ) -> Option<usize> {
        let Some((part, report)) = part::route(line) else {
            self.tallies[0].violate(iteration, format!("unexpected report {line:?}"));
            return None;
        };
        let index = self.parts.iter().position(|p| *p == part)?;
        last_was_intent[index] = part::is_intent(report);
        let tally = &mut self.tallies[index];
        match part::failure(report) {
            // After the shutdown every write fails: that is the point.
            Some(_) if shut_down => self.errors_after_shutdown += 1,
            Some(error) => tally.violate(iteration, format!("{part} failed: {error}")),
            None => self.models[index].absorb(report, tally),
        }
        Some(index)
    }

    fn acknowledged(&self) -> u64 {
        self.tallies.iter().map(|t| t.acknowledged).sum()
    }

    fn violations(&self) -> Vec<String> {
        self.parts
            .iter()
            .zip(&self.tallies)
            .flat_map(|(part, tally)| tally.violations.iter().map(move |v| format!("{part}: {v}")))
            .collect()
    }
}

/// How ext4 journals file data (the `data=` mount option).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DataMode {
    /// The default: data is written before the metadata that points to it.
    Ordered,
    /// Data and metadata in no particular order: a renamed file that was not
    /// fsynced may hold old blocks after a crash.
    Writeback,
}

impl DataMode {
    fn name(self) -> &'static str {
        match self {
            DataMode::Ordered => "ordered",
            DataMode::Writeback => "writeback",
        }
    }
}

/// A small ext4 filesystem in an image file on a loop device, mounted in a
/// temporary directory. Dropping it unmounts it and detaches the device,
/// whatever state the test left it in.
struct Ext4 {
    mount_point: PathBuf,
    device: Option<String>,
    mounted: bool,
    /// The mode the filesystem is mounted in now.
    data: DataMode,
    // Last: removed after the filesystem is unmounted.
    _dir: tempfile::TempDir,
}

impl Ext4 {
    /// Makes, attaches and mounts the filesystem, and checks that it can be
    /// shut down and recovered; the error says what this machine lacks.
    fn mount() -> Result<Ext4, String> {
        if !common::is_root() {
            return Err("not root (mounting a loop device needs root)".to_owned());
        }
        for (tool, probe) in [
            ("mkfs.ext4", "-V"),
            ("losetup", "--version"),
            ("mount", "--version"),
            ("umount", "--version"),
            ("xfs_io", "-V"),
        ] {
            if let Err(e) = Command::new(tool).arg(probe).output() {
                return Err(format!("{tool} is not available ({e})"));
            }
        }
        let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
        let image = dir.path().join("ext4.img");
        std::fs::File::create(&image)
            .and_then(|file| file.set_len(IMAGE_BYTES))
            .map_err(|e| format!("create {}: {e}", image.display()))?;
        let image = text(&image);
        run("mkfs.ext4", &["-q", "-F", image])?;
        let mount_point = dir.path().join("mnt");
        std::fs::create_dir(&mount_point).map_err(|e| format!("mkdir: {e}"))?;
        let mut fs = Ext4 {
            mount_point,
            device: None,
            mounted: false,
            data: DataMode::Ordered,
            _dir: dir,
        };
        let device = run("losetup", &["--find", "--show", image])?;
        fs.device = Some(device.trim().to_owned());
        fs.mount_device(DataMode::Ordered)?;
        // The whole cycle once, so that a kernel without the ioctl is a reason to
        // skip rather than a failure in the middle of the test.
        fs.shut_down()?;
        fs.remount(DataMode::Ordered)?;
        Ok(fs)
    }

    fn device(&self) -> &str {
        self.device.as_deref().unwrap_or_default()
    }

    fn mount_device(&mut self, data: DataMode) -> Result<(), String> {
        let options = format!("data={}", data.name());
        run(
            "mount",
            &[
                "-t",
                "ext4",
                "-o",
                &options,
                self.device(),
                text(&self.mount_point),
            ],
        )?;
        self.mounted = true;
        self.data = data;
        Ok(())
    }

    /// Cuts the filesystem off: the ext4 shutdown ioctl, with no log flush.
    fn shut_down(&self) -> Result<(), String> {
        run("xfs_io", &["-x", "-c", "shutdown", text(&self.mount_point)]).map(drop)
    }

    /// Unmounts and mounts again, in `data` mode: the journal replays what was
    /// committed.
    fn remount(&mut self, data: DataMode) -> Result<(), String> {
        run("umount", &[text(&self.mount_point)])?;
        self.mounted = false;
        self.mount_device(data)
    }
}

impl Drop for Ext4 {
    fn drop(&mut self) {
        if self.mounted && run("umount", &[text(&self.mount_point)]).is_err() {
            // Busy (a child still dying, say): detach it lazily.
            let _ = run("umount", &["-l", text(&self.mount_point)]);
        }
        if let Some(device) = self.device.take() {
            let _ = run("losetup", &["-d", &device]);
        }
    }
}

/// Runs `tool` with `args`; its stdout, or an error with its stderr.
fn run(tool: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(tool)
        .args(args)
        .output()
        .map_err(|e| format!("{tool}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{tool} {:?} failed ({}): {}",
            args,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A path of the test's temporary directory, as an argument.
fn text(path: &Path) -> &str {
    path.to_str()
        .unwrap_or_else(|| panic!("{} is not UTF-8", path.display()))
}
