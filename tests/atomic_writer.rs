//! The guarantees of `AtomicWriter`, `write_atomic`, `PendingFile` and `sweep`, one
//! test each, through the public API only.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jobsafe::atomic::PendingFile;
use jobsafe::testing::{Counting, Fault, Faulty, OpKind};
use jobsafe::vfs::{IoAction, StdVfs, Vfs};
use jobsafe::{AtomicWriter, Durability, Error, ManualClock, SystemClock, write_atomic};
use tempfile::tempdir;

use common::{TestResult, mode_of, set_mode, temp_files_in};

// ---------------------------------------------------------------------------------
// Atomic replace
// ---------------------------------------------------------------------------------

#[test]
fn target_keeps_its_old_content_until_commit_and_has_the_new_content_after() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    fs::write(&target, "old")?;

    let writer = AtomicWriter::new();
    let mut pending = writer.begin(&target)?;
    pending.write_bytes(b"new ")?;
    std::io::Write::write_all(&mut pending, b"content")?;
    assert_eq!(fs::read(&target)?, b"old");

    pending.commit()?;
    assert_eq!(fs::read(&target)?, b"new content");
    Ok(())
}

#[test]
fn temp_file_lives_beside_the_target_with_the_temp_suffix_and_the_final_mode() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let writer = AtomicWriter::new();
    let pending = writer.begin(&target)?;

    let temp = pending.temp_path();
    assert_eq!(temp.parent(), Some(dir.path()));
    assert!(
        file_name(temp).ends_with(AtomicWriter::TEMP_SUFFIX),
        "{}",
        temp.display()
    );
    assert_eq!(temp_files_in(dir.path())?, [temp]);
    assert_eq!(mode_of(temp)?, AtomicWriter::DEFAULT_MODE);
    assert_eq!(pending.target(), target);
    Ok(())
}

#[test]
fn no_temp_file_remains_after_commit() -> TestResult {
    let dir = tempdir()?;
    let writer = AtomicWriter::new();
    writer.write(dir.path().join("created"), b"1")?;
    writer.write(dir.path().join("created"), b"2")?;
    writer
        .to_builder()
        .no_clobber(true)
        .build()?
        .write(dir.path().join("created-once"), b"3")?;
    write_atomic(dir.path().join("one-call"), b"4")?;

    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn temp_names_of_long_target_names_stay_within_the_file_name_limit() -> TestResult {
    let dir = tempdir()?;
    // 255 bytes is the name limit of common filesystems; the temp name adds a
    // prefix and suffix, so it must shorten the target's name (on a char boundary).
    for name in ["a".repeat(255), "é".repeat(127)] {
        let target = dir.path().join(&name);
        write_atomic(&target, name.as_bytes())?;
        assert_eq!(fs::read(&target)?, name.as_bytes());
    }
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Abandoned writes
// ---------------------------------------------------------------------------------

#[test]
fn dropping_an_uncommitted_pending_file_removes_its_temp_file_and_keeps_the_target() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    fs::write(&target, "old")?;

    let writer = AtomicWriter::new();
    let mut pending = writer.begin(&target)?;
    pending.write_bytes(b"abandoned")?;
    let temp = pending.temp_path().to_path_buf();
    drop(pending);

    assert!(!temp.exists());
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    assert_eq!(fs::read(&target)?, b"old");
    Ok(())
}

#[test]
fn discard_removes_the_temp_file_and_keeps_the_target() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    fs::write(&target, "old")?;

    let writer = AtomicWriter::new();
    let mut pending = writer.begin(&target)?;
    pending.write_bytes(b"abandoned")?;
    pending.discard()?;

    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    assert_eq!(fs::read(&target)?, b"old");
    Ok(())
}

// ---------------------------------------------------------------------------------
// File modes
// ---------------------------------------------------------------------------------

#[test]
fn default_mode_is_0600_whatever_the_mode_of_the_replaced_target() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("secret.json");
    fs::write(&target, "old")?;
    set_mode(&target, 0o666)?;

    write_atomic(&target, b"new")?;
    assert_eq!(AtomicWriter::DEFAULT_MODE, 0o600);
    assert_eq!(mode_of(&target)?, AtomicWriter::DEFAULT_MODE);

    AtomicWriter::new().write(&target, b"newer")?;
    assert_eq!(mode_of(&target)?, AtomicWriter::DEFAULT_MODE);
    Ok(())
}

#[test]
fn explicit_mode_is_applied_exactly() -> TestResult {
    let dir = tempdir()?;
    let writer = AtomicWriter::builder().mode(0o640).build()?;

    let created = dir.path().join("created");
    writer.write(&created, b"new")?;
    assert_eq!(mode_of(&created)?, 0o640);

    let replaced = dir.path().join("replaced");
    fs::write(&replaced, "old")?;
    set_mode(&replaced, 0o604)?;
    writer.write(&replaced, b"new")?;
    assert_eq!(mode_of(&replaced)?, 0o640);
    Ok(())
}

#[test]
fn modes_are_exact_whatever_the_umask() -> TestResult {
    if let Some(dir) = common::umask_child_dir() {
        File::create(dir.join("control"))?;
        write_atomic(dir.join("default"), b"d")?;
        AtomicWriter::builder()
            .mode(0o640)
            .build()?
            .write(dir.join("explicit"), b"e")?;
        return Ok(());
    }
    let dir = tempdir()?;
    common::run_under_umask("777", "modes_are_exact_whatever_the_umask", dir.path())?;
    // A plain create in the child got no permission bits at all: the umask was in force.
    assert_eq!(mode_of(&dir.path().join("control"))?, 0);
    assert_eq!(
        mode_of(&dir.path().join("default"))?,
        AtomicWriter::DEFAULT_MODE
    );
    assert_eq!(mode_of(&dir.path().join("explicit"))?, 0o640);
    Ok(())
}

#[test]
fn a_symlinked_target_is_replaced_by_a_regular_file_and_the_file_it_points_to_is_untouched()
-> TestResult {
    let dir = tempdir()?;
    let pointee = dir.path().join("pointee");
    fs::write(&pointee, "pointee")?;
    let link = dir.path().join("link");
    symlink(&pointee, &link)?;

    write_atomic(&link, b"new")?;

    assert!(fs::symlink_metadata(&link)?.file_type().is_file());
    assert_eq!(fs::read(&link)?, b"new");
    assert_eq!(fs::read(&pointee)?, b"pointee");
    Ok(())
}

#[test]
fn mode_is_not_inherited_from_the_file_a_symlinked_target_points_to() -> TestResult {
    let dir = tempdir()?;
    let pointee = dir.path().join("pointee");
    fs::write(&pointee, "pointee")?;
    set_mode(&pointee, 0o644)?;
    let link = dir.path().join("link");
    symlink(&pointee, &link)?;

    write_atomic(&link, b"new")?;

    assert_eq!(mode_of(&link)?, AtomicWriter::DEFAULT_MODE);
    assert_eq!(mode_of(&pointee)?, 0o644);
    Ok(())
}

// ---------------------------------------------------------------------------------
// No-clobber
// ---------------------------------------------------------------------------------

#[test]
fn no_clobber_commit_fails_with_already_exists_and_leaves_the_existing_file_untouched() -> TestResult
{
    let dir = tempdir()?;
    let target = dir.path().join("once.json");
    fs::write(&target, "first")?;
    set_mode(&target, 0o644)?;

    let writer = AtomicWriter::builder().no_clobber(true).build()?;
    let err = writer.write(&target, b"second").unwrap_err();

    assert!(err.is_already_exists(), "{err}");
    assert!(err.to_string().contains(&shown(&target)), "{err}");
    assert_eq!(fs::read(&target)?, b"first");
    assert_eq!(mode_of(&target)?, 0o644);
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn no_clobber_commit_creates_an_absent_target() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("once.json");

    AtomicWriter::builder()
        .no_clobber(true)
        .build()?
        .write(&target, b"first")?;

    assert_eq!(fs::read(&target)?, b"first");
    assert_eq!(mode_of(&target)?, AtomicWriter::DEFAULT_MODE);
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn no_clobber_counts_a_dangling_symlink_as_existing_and_does_not_follow_it() -> TestResult {
    let dir = tempdir()?;
    let nowhere = dir.path().join("nowhere");
    let link = dir.path().join("link");
    symlink(&nowhere, &link)?;

    let err = AtomicWriter::builder()
        .no_clobber(true)
        .build()?
        .write(&link, b"x")
        .unwrap_err();

    assert!(err.is_already_exists(), "{err}");
    assert!(fs::symlink_metadata(&link)?.file_type().is_symlink());
    assert!(!nowhere.exists());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Sweep
// ---------------------------------------------------------------------------------

const MINUTE: Duration = Duration::from_secs(60);

/// An arbitrary fixed instant: sweeps compare file times with a `ManualClock`, so the
/// real time never matters.
fn t0() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_767_225_600)
}

fn clock_at(time: SystemTime) -> ManualClock {
    let ms = time.duration_since(UNIX_EPOCH).unwrap().as_millis();
    ManualClock::new(u64::try_from(ms).unwrap())
}

/// The temp file of a write whose process "crashed", last modified at `modified`.
fn leftover_temp_file(
    writer: &AtomicWriter,
    target: &Path,
    modified: SystemTime,
) -> std::io::Result<PathBuf> {
    let pending = writer.begin(target).map_err(std::io::Error::other)?;
    let temp = pending.temp_path().to_path_buf();
    std::mem::forget(pending);
    set_modified(&temp, modified)?;
    Ok(temp)
}

fn set_modified(path: &Path, modified: SystemTime) -> std::io::Result<()> {
    File::options()
        .write(true)
        .open(path)?
        .set_modified(modified)
}

#[test]
fn sweep_removes_temp_files_at_least_min_age_old_by_the_clock_and_returns_them() -> TestResult {
    let dir = tempdir()?;
    let writer = AtomicWriter::new();
    let old = leftover_temp_file(&writer, &dir.path().join("a"), t0())?;
    let exactly_min_age = leftover_temp_file(&writer, &dir.path().join("b"), t0() + 30 * MINUTE)?;
    let clock = clock_at(t0() + 60 * MINUTE);

    let mut removed = writer.sweep(dir.path(), 30 * MINUTE, &clock)?;

    removed.sort();
    let mut expected = vec![old, exactly_min_age];
    expected.sort();
    assert_eq!(removed, expected);
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn sweep_keeps_temp_files_younger_than_min_age() -> TestResult {
    let dir = tempdir()?;
    let writer = AtomicWriter::new();
    let young = leftover_temp_file(&writer, &dir.path().join("a"), t0() + 50 * MINUTE)?;
    let clock = clock_at(t0() + 60 * MINUTE);

    let removed = writer.sweep(dir.path(), 30 * MINUTE, &clock)?;

    assert_eq!(removed, Vec::<PathBuf>::new());
    assert_eq!(temp_files_in(dir.path())?, [young]);

    clock.advance(20 * MINUTE);
    assert_eq!(writer.sweep(dir.path(), 30 * MINUTE, &clock)?.len(), 1);
    Ok(())
}

#[test]
fn stale_temp_files_lists_what_sweep_removes_and_removes_nothing() -> TestResult {
    let dir = tempdir()?;
    let writer = AtomicWriter::new();
    let old = leftover_temp_file(&writer, &dir.path().join("a"), t0())?;
    let young = leftover_temp_file(&writer, &dir.path().join("b"), t0() + 50 * MINUTE)?;
    fs::write(dir.path().join("c"), b"not a temp file")?;
    set_modified(&dir.path().join("c"), t0())?;
    let clock = clock_at(t0() + 60 * MINUTE);

    let listed = writer.stale_temp_files(dir.path(), 30 * MINUTE, &clock)?;

    assert_eq!(listed, std::slice::from_ref(&old));
    let mut present = temp_files_in(dir.path())?;
    present.sort();
    let mut expected = vec![old, young.clone()];
    expected.sort();
    assert_eq!(present, expected, "listing removed a file");
    assert_eq!(writer.sweep(dir.path(), 30 * MINUTE, &clock)?, listed);
    assert_eq!(temp_files_in(dir.path())?, [young]);
    Ok(())
}

#[test]
fn sweep_keeps_files_that_are_not_temp_files() -> TestResult {
    let dir = tempdir()?;
    let keep = |name: &str| -> std::io::Result<PathBuf> {
        let path = dir.path().join(name);
        fs::write(&path, name)?;
        set_modified(&path, t0())?;
        Ok(path)
    };
    let kept = [
        keep("report.json")?,
        keep(".hidden")?,
        // The writer's temp names start with a dot; this one is someone else's.
        keep(&format!("notes{}", AtomicWriter::TEMP_SUFFIX))?,
    ];
    let temp_named_dir = dir.path().join(format!(".d{}", AtomicWriter::TEMP_SUFFIX));
    fs::create_dir(&temp_named_dir)?;
    let clock = clock_at(t0() + 24 * 60 * MINUTE);

    let removed = AtomicWriter::new().sweep(dir.path(), MINUTE, &clock)?;

    assert_eq!(removed, Vec::<PathBuf>::new());
    for path in kept {
        assert_eq!(fs::read(&path)?, file_name(&path).as_bytes());
    }
    assert!(temp_named_dir.is_dir());
    Ok(())
}

// ---------------------------------------------------------------------------------
// Errors name the path and the step
// ---------------------------------------------------------------------------------

#[test]
fn a_missing_parent_directory_is_an_io_error_naming_the_path_and_step() -> TestResult {
    let dir = tempdir()?;
    let missing = dir.path().join("missing");

    let err = write_atomic(missing.join("report.json"), b"x").unwrap_err();

    assert!(
        matches!(&err, Error::Io { step, source, .. }
            if step.action() == IoAction::Create && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
    let shown_err = err.to_string();
    assert!(shown_err.contains("create"), "{shown_err}");
    assert!(shown_err.contains(&shown(&missing)), "{shown_err}");
    Ok(())
}

#[test]
fn a_target_without_a_file_name_is_an_error_naming_it() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("..");

    let err = write_atomic(&target, b"x").unwrap_err();

    assert!(matches!(&err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains(&shown(&target)), "{err}");
    Ok(())
}

#[test]
fn a_failed_rename_names_the_target_and_keeps_it() -> TestResult {
    let dir = tempdir()?;
    // A non-empty directory cannot be replaced by a file.
    let target = dir.path().join("occupied");
    fs::create_dir(&target)?;
    fs::write(target.join("inside"), "kept")?;

    let err = write_atomic(&target, b"x").unwrap_err();

    assert!(
        matches!(&err, Error::Io { step, .. } if step.action() == IoAction::Rename),
        "{err:?}"
    );
    assert!(err.to_string().contains("rename"), "{err}");
    assert!(err.to_string().contains(&shown(&target)), "{err}");
    assert_eq!(fs::read(target.join("inside"))?, b"kept");
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn sweeping_a_missing_directory_is_an_io_error_naming_it() -> TestResult {
    let dir = tempdir()?;
    let missing = dir.path().join("missing");

    let err = AtomicWriter::new()
        .sweep(&missing, MINUTE, &ManualClock::default())
        .unwrap_err();

    assert!(
        matches!(&err, Error::Io { step, .. } if step.action() == IoAction::List),
        "{err:?}"
    );
    assert!(err.to_string().contains(&shown(&missing)), "{err}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Injected failures
// ---------------------------------------------------------------------------------

/// Writes `old` to `target` directly, then `new` through `writer`, which fails.
/// A [`Vfs`] on the real filesystem in which every operation of `kind` fails.
fn failing(kind: OpKind) -> Faulty {
    let vfs = Faulty::new(StdVfs);
    vfs.arm(Fault::from_nth(1).only([kind]));
    vfs
}

fn failing_replace<V: Vfs>(writer: &AtomicWriter<V>, target: &Path) -> std::io::Result<Error> {
    fs::write(target, "old")?;
    match writer.write(target, b"new") {
        Ok(()) => Err(std::io::Error::other("the write unexpectedly succeeded")),
        Err(e) => Ok(e),
    }
}

#[test]
fn a_failed_file_fsync_keeps_the_old_content_and_leaves_no_temp_file() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let vfs = failing(OpKind::FileSync);
    let writer = AtomicWriter::with_vfs(vfs.clone());

    let err = failing_replace(&writer, &target)?;

    assert_eq!(vfs.injected().len(), 1);
    assert!(
        matches!(&err, Error::Io { step, .. } if step.is_flush()),
        "{err:?}"
    );
    assert!(err.to_string().contains("fsync"), "{err}");
    assert!(err.to_string().contains(&shown(dir.path())), "{err}");
    assert_eq!(fs::read(&target)?, b"old");
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn a_failed_rename_keeps_the_old_content_and_leaves_no_temp_file() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let vfs = failing(OpKind::Rename);
    let writer = AtomicWriter::with_vfs(vfs.clone());

    let err = failing_replace(&writer, &target)?;

    assert_eq!(vfs.injected().len(), 1);
    assert!(
        matches!(&err, Error::Io { step, .. } if step.action() == IoAction::Rename),
        "{err:?}"
    );
    assert_eq!(fs::read(&target)?, b"old");
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn a_failed_temp_file_creation_names_the_temp_file() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let vfs = failing(OpKind::Create);
    let writer = AtomicWriter::with_vfs(vfs.clone());

    let err = failing_replace(&writer, &target)?;

    assert_eq!(vfs.injected().len(), 1);
    assert!(
        matches!(&err, Error::Io { step, .. } if step.action() == IoAction::Create),
        "{err:?}"
    );
    assert!(err.to_string().contains(AtomicWriter::TEMP_SUFFIX), "{err}");
    assert_eq!(fs::read(&target)?, b"old");
    Ok(())
}

#[test]
fn a_failed_directory_fsync_after_the_rename_is_not_durable_with_the_new_content_visible()
-> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let vfs = failing(OpKind::DirSync);
    let writer = AtomicWriter::with_vfs(vfs.clone());

    let err = failing_replace(&writer, &target)?;

    assert_eq!(vfs.injected().len(), 1);
    assert!(matches!(&err, Error::NotDurable { .. }), "{err:?}");
    assert_eq!(fs::read(&target)?, b"new");
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn a_not_durable_error_says_the_content_is_visible_but_not_durable_and_names_the_directory()
-> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("report.json");
    let writer = AtomicWriter::with_vfs(failing(OpKind::DirSync));

    let err = failing_replace(&writer, &target)?;

    assert!(
        matches!(&err, Error::NotDurable { path, dir: synced, .. }
            if path == &target && synced == dir.path()),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("visible but not known to be durable"),
        "{message}"
    );
    assert!(
        message.contains(&format!("directory {}", shown(dir.path()))),
        "{message}"
    );
    assert!(!message.contains("poison"), "{message}");
    Ok(())
}

#[test]
fn a_failed_no_clobber_link_is_an_io_error_and_creates_nothing() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("once.json");
    let vfs = failing(OpKind::Link);

    let err = AtomicWriter::builder()
        .vfs(vfs.clone())
        .no_clobber(true)
        .build()?
        .write(&target, b"new")
        .unwrap_err();

    assert_eq!(vfs.injected().len(), 1);
    assert!(
        matches!(&err, Error::Io { step, .. } if step.action() == IoAction::Rename),
        "{err:?}"
    );
    assert!(!err.is_already_exists());
    assert!(!target.exists());
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn a_failed_directory_fsync_after_a_no_clobber_link_is_not_durable() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("once.json");
    let vfs = failing(OpKind::DirSync);

    let err = AtomicWriter::builder()
        .vfs(vfs.clone())
        .no_clobber(true)
        .build()?
        .write(&target, b"new")
        .unwrap_err();

    assert_eq!(vfs.injected().len(), 1);
    assert!(matches!(&err, Error::NotDurable { .. }), "{err:?}");
    assert_eq!(fs::read(&target)?, b"new");
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn a_no_clobber_commit_succeeds_once_linked_even_if_the_temp_file_cannot_be_removed() -> TestResult
{
    let dir = tempdir()?;
    let target = dir.path().join("once.json");
    let vfs = failing(OpKind::Remove);

    AtomicWriter::builder()
        .vfs(vfs.clone())
        .no_clobber(true)
        .build()?
        .write(&target, b"new")?;

    assert_eq!(vfs.injected().len(), 1);
    assert_eq!(fs::read(&target)?, b"new");
    // The leftover temp file is a second name of the target's file: a sweep removes
    // that name and leaves the target whole.
    let removed = AtomicWriter::new().sweep(dir.path(), Duration::ZERO, &SystemClock)?;
    assert_eq!(removed.len(), 1);
    assert_eq!(fs::read(&target)?, b"new");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Durability levels
// ---------------------------------------------------------------------------------

/// Two replacing writes and one no-clobber write through `writer`.
fn three_writes<V: Vfs + Clone>(writer: &AtomicWriter<V>, dir: &Path) -> jobsafe::Result<()> {
    writer.write(dir.join("replaced"), b"1")?;
    writer.write(dir.join("replaced"), b"2")?;
    writer
        .to_builder()
        .no_clobber(true)
        .build()?
        .write(dir.join("created"), b"3")
}

#[test]
fn atomic_only_durability_does_no_fsync() -> TestResult {
    let dir = tempdir()?;
    let vfs = Counting::new(StdVfs);
    let writer = AtomicWriter::builder()
        .vfs(vfs.clone())
        .durability(Durability::AtomicOnly)
        .build()?;

    three_writes(&writer, dir.path())?;

    assert_eq!(vfs.counts().syncs(), 0);
    Ok(())
}

#[test]
fn full_durability_does_one_file_and_one_directory_fsync_per_write() -> TestResult {
    let dir = tempdir()?;
    let vfs = Counting::new(StdVfs);
    let writer = AtomicWriter::builder()
        .vfs(vfs.clone())
        .durability(Durability::Full)
        .build()?;

    three_writes(&writer, dir.path())?;

    let counts = vfs.counts();
    assert_eq!((counts.file_syncs, counts.dir_syncs), (3, 3));
    Ok(())
}

#[test]
fn full_durability_is_the_default() {
    assert_eq!(AtomicWriter::new().durability_level(), Durability::Full);
}

// ---------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------

const WRITERS: usize = 8;
const WRITES_PER_WRITER: usize = 25;

/// What writer `i` writes: distinct bytes and lengths, large enough to take several
/// `write` calls, so that a mix of two contents cannot go unnoticed.
fn content_of(i: usize) -> Vec<u8> {
    vec![b'a' + u8::try_from(i).unwrap(); 256 * 1024 + i * 4096]
}

/// `WRITERS` threads each replace `target` `WRITES_PER_WRITER` times.
fn replace_concurrently(writer: &AtomicWriter, target: &Path, contents: &[Vec<u8>]) -> TestResult {
    thread::scope(|s| {
        let writers: Vec<_> = contents
            .iter()
            .map(|content| {
                s.spawn(move || -> jobsafe::Result<()> {
                    for _ in 0..WRITES_PER_WRITER {
                        writer.write(target, content)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for handle in writers {
            handle.join().expect("writer thread panicked")?;
        }
        Ok(())
    })
}

// Atomicity comes from the rename, not from fsync: `AtomicOnly` keeps these fast.

#[test]
fn concurrent_writers_leave_exactly_one_whole_content_and_no_temp_files() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("shared.bin");
    let writer = AtomicWriter::builder()
        .durability(Durability::AtomicOnly)
        .build()?;
    let contents: Vec<_> = (0..WRITERS).map(content_of).collect();

    replace_concurrently(&writer, &target, &contents)?;

    assert!(contents.contains(&fs::read(&target)?));
    assert_eq!(temp_files_in(dir.path())?, Vec::<PathBuf>::new());
    Ok(())
}

#[test]
fn readers_see_whole_contents_never_a_mix_while_writers_replace() -> TestResult {
    let dir = tempdir()?;
    let target = dir.path().join("shared.bin");
    let writer = AtomicWriter::builder()
        .durability(Durability::AtomicOnly)
        .build()?;
    let contents: Vec<_> = (0..WRITERS).map(content_of).collect();
    writer.write(&target, &contents[0])?;
    let writing = AtomicBool::new(true);

    thread::scope(|s| -> TestResult {
        let reader = s.spawn(|| -> std::io::Result<usize> {
            let mut reads = 0;
            loop {
                let seen = fs::read(&target)?;
                assert!(contents.contains(&seen), "a read saw a mix");
                reads += 1;
                if !writing.load(Ordering::SeqCst) {
                    return Ok(reads);
                }
            }
        });
        let written = replace_concurrently(&writer, &target, &contents);
        writing.store(false, Ordering::SeqCst);
        written?;
        assert!(reader.join().expect("reader thread panicked")? > 0);
        Ok(())
    })
}

// ---------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------

#[test]
fn writers_and_pending_files_can_move_between_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<AtomicWriter>();
    send_sync::<AtomicWriter<Counting<StdVfs>>>();
    send_sync::<PendingFile<'static>>();
}

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `path` as error messages show it.
fn shown(path: &Path) -> String {
    path.display().to_string()
}

#[test]
fn a_mode_beyond_the_permission_bits_is_refused_at_build() {
    let err = AtomicWriter::builder().mode(0o10_644).build().unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert!(err.to_string().contains("0o10644"), "{err}");
    assert!(AtomicWriter::builder().mode(0o7777).build().is_ok());
}
