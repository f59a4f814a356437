//! `jobsafe sweep`: temp files left behind by crashed atomic writers.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jobsafe::AtomicWriter;
use jobsafe::vfs::{FileKind, StdVfs, Vfs};
use serde_json::json;

use crate::cli::Ctx;
use crate::confirm::confirm;
use crate::exit::{Code, Failure, Outcome};
use crate::output::{self, parse_duration, print_json};

/// Options of `jobsafe sweep`.
#[derive(clap::Args, Debug)]
pub(crate) struct Args {
    /// The directory to sweep.
    dir: PathBuf,
    /// Only temp files at least this old.
    #[arg(long, default_value = "1h", value_parser = parse_duration, value_name = "DUR")]
    older_than: Duration,
    /// Sweep the directories below DIR too.
    #[arg(long, short = 'r')]
    recursive: bool,
    /// Only list what would be removed.
    #[arg(long)]
    dry_run: bool,
}

pub(crate) fn run(ctx: &Ctx, args: Args) -> Outcome {
    let writer = AtomicWriter::new();
    let dirs = if args.recursive {
        dirs_below(&args.dir)?
    } else {
        vec![args.dir.clone()]
    };
    let mut stale = Vec::new();
    for dir in &dirs {
        stale.extend(
            writer
                .stale_temp_files(dir, args.older_than, ctx.clock.as_ref())
                .map_err(|e| Failure::library("sweep", &e))?,
        );
    }
    let age = output::duration(args.older_than);
    if stale.is_empty() || args.dry_run {
        if ctx.json {
            let listed: Vec<String> = stale.iter().map(|p| p.display().to_string()).collect();
            print_json(&json!({ "stale": listed, "removed": [] }));
        } else if stale.is_empty() {
            out!("no temp files at least {age} old in {}", args.dir.display());
        } else {
            for path in &stale {
                out!("{}", path.display());
            }
            out!("{} temp files would be removed (dry run)", stale.len());
        }
        return Ok(Code::Ok);
    }
    if !ctx.json {
        for path in &stale {
            out!("{}", path.display());
        }
    }
    confirm(
        ctx.yes,
        &format!(
            "Remove these {} temp files, at least {age} old?",
            stale.len()
        ),
    )?;
    let mut removed = Vec::new();
    for dir in &dirs {
        removed.extend(
            writer
                .sweep(dir, args.older_than, ctx.clock.as_ref())
                .map_err(|e| Failure::library("sweep", &e))?,
        );
    }
    if ctx.json {
        let removed: Vec<String> = removed.iter().map(|p| p.display().to_string()).collect();
        print_json(&json!({ "removed": removed }));
    } else {
        out!("removed {} temp files", removed.len());
    }
    Ok(Code::Ok)
}

/// `dir` and every directory below it, not following symbolic links.
fn dirs_below(dir: &Path) -> Result<Vec<PathBuf>, Failure> {
    let mut dirs = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let names = StdVfs.read_dir(&dir).map_err(|e| {
            Failure::new(
                Code::Error,
                format!("sweep: read directory {}: {e}", dir.display()),
            )
        })?;
        for name in names {
            let path = dir.join(name);
            // `metadata` does not follow a symbolic link: one is never a `Dir`.
            if StdVfs
                .metadata(&path)
                .is_ok_and(|info| info.kind == FileKind::Dir)
            {
                pending.push(path);
            }
        }
        dirs.push(dir);
    }
    dirs.sort();
    Ok(dirs)
}
