//! jobsafe next to the raw limits of a durable write, to SQLite and to the
//! naive whole-file JSON rewrite, on the same operations, in one run, on the
//! same disk (a directory under `target/`): see DESIGN.md, "Performance and
//! how it is measured".
//!
//! `cargo bench -p jobsafe-bench --bench compare` runs four sections:
//!
//! 1. `table`: every bench by every implementation at 1, 4 and 16 threads.
//!    - Benches: `reserve_new` (a `JobLedger` reserve of a new job id: one
//!      durable insert), `reserve_dup` (the same job id again: a read),
//!      `lock_cycle` (a `JobLock` acquire + release), `lifecycle` (a `JobState`
//!      job through create → start → three stages → complete: six durable
//!      writes), `put` (a 256-byte value under a new key) and `get`.
//!    - Implementations: jobsafe's components over `memstore`, `dirstore` and
//!      `logstore` (`Durability::Full`), and for `get` only `logstore_excl`,
//!      the same store opened in exclusive mode (no check for other
//!      processes' writes before a read); SQLite in WAL mode at
//!      `synchronous=FULL` (`sqlite_full`) and `NORMAL` (`sqlite_normal`, which
//!      survives a process crash but not a power loss), one connection per
//!      thread, with the SQL of `common::sqlite` and `common::ledger` (a
//!      lifecycle is an insert and five compare-and-set updates of the job's
//!      row); `naive_json`, the seeds' design of rewriting one JSON file of
//!      every record per change (durably, behind a mutex; no locks); and, for
//!      puts only, the raw limits: `raw_append` (append + `fdatasync`),
//!      `raw_overwrite` (overwrite preallocated space + `fdatasync`),
//!      `raw_replace` (temp file + fsync + rename + directory fsync), each a
//!      file per thread, and `raw_group` (the threads append to one file, one
//!      leader `fdatasync`s each batch: the limit of group commit).
//!      Built with the feature `postgres` and a server named by
//!      `JOBSAFE_PG_URL` (`bash .ci/postgres.sh cargo bench -p jobsafe-bench
//!      --features postgres --bench compare` starts one on loopback), `pgstore`
//!      adds jobsafe's ledger and locks over `PgStore` (`Durability::Full`, a
//!      schema per cell, one connection pool shared by the threads) for
//!      `reserve_new`, `reserve_dup` and `lock_cycle`; its flushes happen in the
//!      server and show as `n/a`.
//!    - Each cell starts fresh with 1,000 records (reservations, or keys for
//!      put, get and lifecycle) loaded untimed, then runs its threads for the
//!      cell time and records every operation's latency. It reports ops/s,
//!      p50 and p99 latency, and flushes per operation: counted through
//!      jobsafe's I/O layer for its stores and by the bench's own code for the
//!      raw limits and the naive file, `n/a` for SQLite, which flushes out of
//!      sight. A durable implementation whose writes made no flush fails the
//!      run: a lost guarantee, not a win.
//! 2. `flat`: LogStore ledger reserves (1 thread, full durability) in a ledger
//!    of 1,000 and one of 1,000,000 reservations, loaded untimed through a
//!    second handle at `Durability::AtomicOnly`; three alternating rounds each.
//! 3. `reopen`: a LogStore of 1,000,000 live records opened by a child
//!    process, against reading the same files sequentially, both from the disk
//!    (files dropped from the page cache) and from the page cache, and the
//!    growth of resident memory per record.
//! 4. `compaction`: p99 latency of durable puts from one thread into a
//!    LogStore of 1,000,000 records while `LogStore::compact` runs in another
//!    thread, against without.
//!
//! It prints a markdown table per thread count (a row per bench, a column per
//! implementation, each cell `ops/s (p50/p99 µs, fsyncs/op)`, the highest
//! throughput of each row in bold), the sections, and the targets,
//! each met or MISSED; it writes one JSON object per row to
//! `target/compare.jsonl` (`{"bench", "impl", "threads", "ops_per_s",
//! "p50_us", "p99_us", "fsyncs_per_op", "ops"}`; the flatness rows as
//! `reserve_new_<size>`) and an SVG chart per bench (throughput against
//! thread count, a line per implementation) to `target/compare-<bench>.svg`.
//! `target/` is the workspace's target directory (`CARGO_TARGET_DIR` where
//! set), not one of the bench crate's own.
//!
//! # Options
//!
//! Each as a variable or as an argument after `--` (which wins):
//!
//! | variable | argument | default |
//! |---|---|---|
//! | `JOBSAFE_COMPARE_SECTIONS` | `--sections` | `table,flat,reopen,compaction` |
//! | `JOBSAFE_COMPARE_BENCHES` | `--benches` | `reserve_new,reserve_dup,lock_cycle,lifecycle,put,get` |
//! | `JOBSAFE_COMPARE_IMPLS` | `--impls` | all eleven, and `pgstore` where it can run |
//! | `JOBSAFE_COMPARE_THREADS` | `--threads` | `1,4,16` |
//! | `JOBSAFE_COMPARE_SECS` | `--secs` | `1.0` seconds per cell |
//! | `JOBSAFE_COMPARE_PRELOAD` | `--preload` | `1000` records per cell |
//! | `JOBSAFE_COMPARE_GET_RECORDS` | `--get_records` | `1000000` records per `get` cell of the embedded stores and SQLite (the others keep `preload`), each get of a key drawn uniformly at random: far more than a LogStore handle's value cache holds |
//! | `JOBSAFE_COMPARE_ROUNDS` | `--rounds` | `1`: rounds of each table cell, the implementations taking turns (forwards, then backwards); a row sums its rounds |
//! | `JOBSAFE_COMPARE_SMALL` | `--small` | `1000`: the small flatness ledger |
//! | `JOBSAFE_COMPARE_RECORDS` | `--records` | `1000000`: the large size of `flat`, `reopen`, `compaction` |
//!
//! A quick run of the table takes under a minute:
//! `cargo bench -p jobsafe-bench --bench compare -- --sections table --secs 0.2`.
//! `JOBSAFE_BENCH_SMOKE=1` runs every path in seconds with tiny counts and
//! sizes (CI does this); its figures mean nothing.

mod common;
#[path = "compare/mod.rs"]
mod compare;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use self::common::{BenchResult, RunDir};
use self::compare::options::{Options, Section};
use self::compare::targets::{self, Target};
use self::compare::{chart, compaction, flat, reopen, table};

fn main() -> BenchResult {
    if let Some(dir) = std::env::var_os(reopen::CHILD_VAR) {
        return reopen::child(Path::new(&dir));
    }
    let started = Instant::now();
    let options = Options::from_env_and_args()?;
    let mut run_dir = RunDir::create("compare")?;
    let target_dir = target_dir()?;
    println!(
        "# jobsafe comparison\n\n{}{:.2} s per cell and round, {} round(s), {} records \
         preloaded per cell, run directory {}\n",
        if options.smoke {
            "Smoke run, figures mean nothing; "
        } else {
            ""
        },
        options.length.time.as_secs_f64(),
        options.rounds,
        options.preload,
        run_dir.path().display()
    );

    let mut jsonl = Vec::new();
    let mut goals: Vec<Target> = Vec::new();
    if options.runs(Section::Table) {
        let rows = table::measure(&options, &mut run_dir)?;
        for &threads in &options.threads {
            println!(
                "## {threads} thread{}\n\nops/s (p50/p99 µs, fsyncs/op)\n\n{}",
                if threads == 1 { "" } else { "s" },
                table::markdown(&rows, threads)
            );
        }
        jsonl.extend(rows.iter().map(|r| r.json()));
        goals.extend(targets::of_table(&rows));
        for path in chart::draw_all(&rows, &target_dir)? {
            println!("Chart: {}", path.display());
        }
        println!();
    }
    if options.runs(Section::Flat) {
        let flat = flat::measure(&options, &mut run_dir)?;
        println!(
            "## Flatness: LogStore reserve_new, 1 thread\n\n\
             | records | ops/s | p50 µs | p99 µs | fsyncs/op |\n|---|---|---|---|---|"
        );
        for (size, row) in [&flat.small, &flat.large] {
            println!(
                "| {size} | {:.0} | {:.0} | {:.0} | {:.2} |",
                row.ops_per_s(),
                row.p50_us(),
                row.p99_us(),
                row.fsyncs_per_op().unwrap_or(f64::NAN)
            );
        }
        println!("\nLoading the large ledger took {:.1} s.\n", flat.load_secs);
        jsonl.extend(flat.json());
        goals.push(flat.target());
    }
    if options.runs(Section::Reopen) {
        let r = reopen::measure(options.records, &mut run_dir)?;
        println!(
            "## Reopen\n\n{} live records, {:.1} MiB of files; {:.0} bytes of resident \
             memory per record (values of {} bytes).\n\n\
             | | read into one buffer | open |\n|---|---|---|\n\
             | from the disk | {:.3} s | {:.3} s |\n\
             | from the page cache | {:.3} s | {:.3} s |\n\n\
             From the page cache into one 1 MiB buffer, reused: {:.3} s.\n",
            r.records,
            r.file_bytes as f64 / (1 << 20) as f64,
            r.rss_bytes_per_record,
            common::kv::VALUE_LEN,
            r.cold_read_secs,
            r.cold_open_secs,
            r.read_secs,
            r.open_secs,
            r.read_reused_secs,
        );
        goals.extend(r.targets());
    }
    if options.runs(Section::Compaction) {
        let c = compaction::measure(options.records, options.length, &mut run_dir)?;
        println!(
            "## Writes during compaction ({} records)\n\n\
             | | puts | p50 µs | p99 µs |\n|---|---|---|---|\n\
             | without compaction | {} | {:.0} | {:.0} |\n\
             | while compacting | {} | {:.0} | {:.0} |\n\n\
             {} compaction(s) ran, the first in {:.2} s; {:.2} fsyncs per put, \
             compactions' included.\n",
            c.records,
            c.quiet.count(),
            c.quiet.quantile_us(0.5),
            c.quiet.quantile_us(0.99),
            c.during.count(),
            c.during.quantile_us(0.5),
            c.during.quantile_us(0.99),
            c.compactions,
            c.compaction_secs,
            c.fsyncs_per_write,
        );
        goals.push(c.target());
    }

    println!("## Targets\n\n{}", targets::markdown(&goals));
    let jsonl_path = target_dir.join("compare.jsonl");
    let mut text = jsonl.join("\n");
    text.push('\n');
    fs::write(&jsonl_path, text)
        .map_err(|e| format!("cannot write {}: {e}", jsonl_path.display()))?;
    println!("Rows: {}", jsonl_path.display());
    for goal in &goals {
        println!("{}", goal.json());
    }
    run_dir.remove()?;
    #[cfg(feature = "postgres")]
    if options.impls.contains(&compare::cell::Impl::PgStore) {
        common::pg::drop_schemas()?;
    }
    eprintln!("compare: {:.0} s in all", started.elapsed().as_secs_f64());
    Ok(())
}

/// Cargo's target directory, where the rows and charts go: the parent of the
/// bench temp directory.
fn target_dir() -> BenchResult<PathBuf> {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "CARGO_TARGET_TMPDIR has no parent".into())
}
