//! What reserving a job id costs through [`JobLedger`](jobsafe::JobLedger), next to
//! SQLite and the naive JSON file, and whether that cost stays flat as the ledger
//! grows, all measured in one run on one disk.
//!
//! `cargo bench -p jobsafe-bench --bench ledger` measures, in a directory under
//! `target/`:
//!
//! 1. Throughput: reserves of new job ids and retries of reserved ones, from 1
//!    and from 4 threads, by `JobLedger<DirStore>` (`Durability::Full`, its
//!    flushes counted), `JobLedger<MemStore>`, SQLite (WAL, `synchronous` `FULL`
//!    and `NORMAL`, one connection per thread; `INSERT ... ON CONFLICT DO
//!    NOTHING`, whose rows changed tell a new job id from a retry) and the naive
//!    design of rewriting one JSON file of every reservation per new one (1 thread
//!    only: it has one writer). Every contender starts each round with 1,000
//!    reservations; the naive file runs again with 100,000 (few operations: each
//!    rewrites the whole file). The naive file runs last, in rounds of its own:
//!    its every write frees an inode, which slows the file creations of whatever
//!    runs after it on ext4 without a journal (see `common::ledger`), so its
//!    ratios to `DirStore` pair rounds run minutes apart.
//! 2. Flatness: new reserves (1 thread) into a `DirStore` ledger of 1,000 and of
//!    100,000 reservations, and into a `MemStore` ledger of 1,000 and of
//!    1,000,000. Each ledger is loaded once, before the rounds; `DirStore` through
//!    a second handle with `Durability::AtomicOnly` and then a system-wide `sync`,
//!    while the measured reserves go through the handle with `Durability::Full`.
//!    `DirStore` keeps what the rounds reserve (its ledgers grow by 100 a round);
//!    `MemStore` removes each timed reserve again, untimed. Cost per reserve must
//!    not grow with the ledger: the large ledger's throughput must be at least
//!    0.8x the small one's (its cost at most 1.25x).
//!
//! Reservations are spread round-robin over 100 accounts; job ids are UUID v7
//! strings. Comparisons run in interleaved rounds and report medians, and every
//! ratio is between benches of the same rounds: see [`common`]. The bench prints
//! the set-up times, the measurements with the disk flushes per operation where
//! they can be counted, the contenders side by side, the ratios, and then one JSON
//! object per line for each measurement and each ratio.
//!
//! `JOBSAFE_BENCH_SMOKE=1` runs every path once with a few operations and ledgers
//! of 100 and 1,000 reservations, for CI; `JOBSAFE_BENCH_OPS=N` and
//! `JOBSAFE_BENCH_ROUNDS=N` override the counts.

mod common;

use std::time::Instant;

use self::common::ledger::{
    ACCOUNTS, FlatWorkload, Loaded, NaiveLedger, ReserveWorkload, Sizes, SqliteLedger, StoreLedger,
    Timed, size_label,
};
use self::common::report::{self, Measurement, Ratio, Table};
use self::common::sqlite::Synchronous;
use self::common::{BenchResult, Config, RunDir, Workload, interleave};

/// Threads of the concurrent rows.
const THREADS: usize = 4;
/// Operations per round and row of a full run, for the contenders that flush
/// (a `DirStore` reserve makes two flushes, an SQLite `FULL` commit one)...
const DURABLE_OPS: usize = 1_000;
/// ...for those that run at memory speed (`MemStore`, SQLite `NORMAL`)...
const FAST_OPS: usize = 10_000;
/// ...and for the naive file, whose every new reserve rewrites all of it: few
/// enough that the small file grows by a tenth at most in a round.
const NAIVE_SMALL_OPS: usize = 100;
const NAIVE_LARGE_OPS: usize = 10;
/// Reserves per round of the flatness rows. `DirStore` keeps them (see
/// `Timed::Kept`): its small ledger grows from 1,000 to 2,100 reservations over
/// a full run, its large one by 1%. `MemStore` removes each untimed.
const FLAT_DIR_OPS: usize = 100;
const FLAT_MEM_OPS: usize = 20_000;

fn main() -> BenchResult {
    let started = Instant::now();
    let config = Config::from_env()?;
    let sizes = Sizes::for_config(&config);
    let mut run = RunDir::create("ledger")?;
    println!(
        "# jobsafe ledger bench\n\n{config}; run directory {}\n\n\
         Reservations spread round-robin over {ACCOUNTS} accounts, job ids UUID v7; \
         every throughput contender starts each round with {} reservations.\n",
        run.path().display(),
        sizes.base,
    );

    let mut throughput = throughput(&config, &sizes, &mut run)?;
    let mut setup = Table::new(["set-up", "reservations", "load secs", "sync secs"]);
    let dir_flat = dir_flatness(&config, &sizes, &mut run, &mut setup)?;
    let mem_flat = mem_flatness(&config, &sizes, &mut run, &mut setup)?;
    throughput.extend(naive(&config, &sizes, &mut run)?);

    let mut all = throughput.clone();
    all.extend(dir_flat.iter().cloned());
    all.extend(mem_flat.iter().cloned());
    println!("## Set-up (untimed, before the rounds)\n\n{setup}");
    println!("## Measurements\n\n{}", report::measurements(&all));
    println!(
        "## Reserves per second ({} reservations before each round; naive_json_{} with {})\n\n{}",
        sizes.base,
        size_label(sizes.naive_large),
        sizes.naive_large,
        report::comparison(&throughput)
    );
    let mut flat = dir_flat;
    flat.extend(mem_flat);
    println!(
        "## Flatness: new reserves, 1 thread, by ledger size\n\n{}",
        report::comparison(&flat)
    );
    let ratios = ratios(&sizes);
    println!("## Ratios\n\n{}", report::ratios(&ratios, &all)?);
    for m in &all {
        println!("{}", m.json());
    }
    for ratio in &ratios {
        println!("{}", ratio.json(ratio.value(&all)?));
    }
    run.remove()?;
    eprintln!(
        "ledger bench: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Every contender but the naive file on fresh state per round.
fn throughput(config: &Config, sizes: &Sizes, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    let durable = config.ops(DURABLE_OPS);
    let fast = config.ops(FAST_OPS);
    let base = sizes.base;
    let mut dir = ReserveWorkload::new("dirstore", StoreLedger::dir, base, durable, THREADS);
    let mut log = ReserveWorkload::new("logstore", StoreLedger::log, base, durable, THREADS);
    let mut mem = ReserveWorkload::new("memstore", StoreLedger::mem, base, fast, THREADS);
    let mut sqlite_full = ReserveWorkload::new(
        "sqlite_full",
        |dir| SqliteLedger::open(dir, Synchronous::Full),
        base,
        durable,
        THREADS,
    );
    let mut sqlite_normal = ReserveWorkload::new(
        "sqlite_normal",
        |dir| SqliteLedger::open(dir, Synchronous::Normal),
        base,
        fast,
        THREADS,
    );
    let mut workloads: Vec<&mut dyn Workload> = vec![
        &mut dir,
        &mut log,
        &mut mem,
        &mut sqlite_full,
        &mut sqlite_normal,
    ];
    #[cfg(feature = "postgres")]
    let mut pg = ReserveWorkload::new("pgstore", StoreLedger::pg, base, durable, THREADS);
    #[cfg(feature = "postgres")]
    let pg_server = common::pg::url().is_some();
    #[cfg(feature = "postgres")]
    if pg_server {
        workloads.push(&mut pg);
    }
    #[cfg(not(feature = "postgres"))]
    println!("PgStore rows skipped: built without the feature `postgres`\n");
    let measured = interleave(config, run, durable, &mut workloads);
    #[cfg(feature = "postgres")]
    if pg_server {
        common::pg::drop_schemas()?;
    }
    measured
}

/// The naive file at both sizes, in rounds of their own after every other
/// bench: each of its writes frees the inode of the file it replaces, which
/// would make the file creations of `DirStore` measured after it slower (see
/// `common::ledger`).
fn naive(config: &Config, sizes: &Sizes, run: &mut RunDir) -> BenchResult<Vec<Measurement>> {
    let (small, large) = (sizes.base, sizes.naive_large);
    interleave(
        config,
        run,
        config.ops(NAIVE_SMALL_OPS),
        &mut [
            &mut ReserveWorkload::new(
                format!("naive_json_{}", size_label(small)),
                NaiveLedger::open,
                small,
                config.ops(NAIVE_SMALL_OPS),
                THREADS,
            ),
            &mut ReserveWorkload::new(
                format!("naive_json_{}", size_label(large)),
                NaiveLedger::open,
                large,
                config.ops(NAIVE_LARGE_OPS),
                THREADS,
            ),
        ],
    )
}

fn setup_row(table: &mut Table, name: &str, size: usize, loaded: Loaded) {
    table.row([
        name.to_owned(),
        size.to_string(),
        format!("{:.1}", loaded.secs),
        loaded
            .flush_secs
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.1}")),
    ]);
}

/// `DirStore` ledgers of the two sizes, each loaded once, in the same rounds.
fn dir_flatness(
    config: &Config,
    sizes: &Sizes,
    run: &mut RunDir,
    setup: &mut Table,
) -> BenchResult<Vec<Measurement>> {
    let ops = config.ops(FLAT_DIR_OPS);
    let mut workloads = Vec::new();
    for size in [sizes.base, sizes.dir_large] {
        let name = format!("dirstore_{}", size_label(size));
        let engine = StoreLedger::dir(&run.fresh(&name)?)?;
        let (workload, loaded) = FlatWorkload::load(&name, engine, size, ops, Timed::Kept)?;
        setup_row(setup, &name, size, loaded);
        workloads.push(workload);
    }
    let mut workloads: Vec<&mut dyn Workload> = workloads
        .iter_mut()
        .map(|w| w as &mut dyn Workload)
        .collect();
    interleave(config, run, ops, &mut workloads)
}

/// `MemStore` ledgers of the two sizes, each loaded once, in the same rounds.
fn mem_flatness(
    config: &Config,
    sizes: &Sizes,
    run: &mut RunDir,
    setup: &mut Table,
) -> BenchResult<Vec<Measurement>> {
    let ops = config.ops(FLAT_MEM_OPS);
    let mut workloads = Vec::new();
    for size in [sizes.base, sizes.mem_large] {
        let name = format!("memstore_{}", size_label(size));
        let engine = StoreLedger::mem(run.path())?;
        let (workload, loaded) = FlatWorkload::load(&name, engine, size, ops, Timed::Removed)?;
        setup_row(setup, &name, size, loaded);
        workloads.push(workload);
    }
    let mut workloads: Vec<&mut dyn Workload> = workloads
        .iter_mut()
        .map(|w| w as &mut dyn Workload)
        .collect();
    interleave(config, run, ops, &mut workloads)
}

/// The ratios to judge by, each between benches of the same rounds.
fn ratios(sizes: &Sizes) -> Vec<Ratio> {
    let mut ratios = Vec::new();
    for store in ["dirstore", "logstore"] {
        for other in ["sqlite_full", "sqlite_normal"] {
            for op in [
                "reserve_new_t1",
                "reserve_dup_t1",
                "reserve_new_t4",
                "reserve_dup_t4",
            ] {
                ratios.push(Ratio::new(format!("{store}/{op}"), format!("{other}/{op}")));
            }
        }
    }
    for size in [sizes.base, sizes.naive_large] {
        for op in ["reserve_new_t1", "reserve_dup_t1"] {
            ratios.push(Ratio::new(
                format!("dirstore/{op}"),
                format!("naive_json_{}/{op}", size_label(size)),
            ));
        }
    }
    for subject in [
        "dirstore",
        "logstore",
        "memstore",
        "sqlite_full",
        "sqlite_normal",
    ] {
        ratios.push(Ratio::new(
            format!("{subject}/reserve_new_t{THREADS}"),
            format!("{subject}/reserve_new_t1"),
        ));
    }
    for (store, large) in [("dirstore", sizes.dir_large), ("memstore", sizes.mem_large)] {
        ratios.push(
            Ratio::new(
                format!("{store}_{}/reserve_new_t1", size_label(large)),
                format!("{store}_{}/reserve_new_t1", size_label(sizes.base)),
            )
            .at_least(0.8),
        );
    }
    ratios
}
