//! The flush calls in the crate's source, found by reading it: the list a
//! power-loss test checks its workloads against, so that a flush added
//! anywhere in the stores cannot go untested.

use std::collections::BTreeSet;
use std::io;
use std::path::Path;

use super::fs::Site;

/// The source directories of the parts under test, relative to the crate
/// root: the atomic writer, the two file-backed stores, and the default
/// methods of the I/O layer (`create_dir_all_durable`). The I/O layer's
/// implementations (`std_vfs.rs`, `counting.rs`, `faulty.rs`) only forward
/// flushes.
const SCANNED: &[(&str, &[&str])] = &[
    ("src/atomic", &[]),
    ("src/store/dir", &["tests.rs"]),
    ("src/store/log", &[]),
    ("src/vfs", &["std_vfs.rs", "counting.rs", "faulty.rs"]),
];

const CALLS: &[&str] = &[".sync_all(", ".sync_data(", ".sync_dir("];

/// Every line of the scanned sources that calls a flush, outside comments,
/// `#[cfg(test)]` modules and `#[track_caller]` functions (which forward the
/// caller's location, so their callers are the sites).
pub fn in_source(crate_root: &Path) -> io::Result<BTreeSet<Site>> {
    let mut sites = BTreeSet::new();
    for (dir, skip) in SCANNED {
        let mut names: Vec<String> = std::fs::read_dir(crate_root.join(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".rs") && !skip.contains(&n.as_str()))
            .collect();
        names.sort();
        for name in names {
            let rel = format!("{dir}/{name}");
            let text = std::fs::read_to_string(crate_root.join(&rel))?;
            for line in lines_with_calls(&text) {
                // Site files are 'static; the list is small and lives for the test.
                let file: &'static str = Box::leak(rel.clone().into_boxed_str());
                sites.insert(Site { file, line });
            }
        }
    }
    Ok(sites)
}

/// 1-based numbers of the lines of `text` that call a flush (see [`in_source`]).
fn lines_with_calls(text: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let mut forwarding = false;
    let mut depth: i64 = 0;
    let mut next_fn_forwards = false;
    for (i, raw) in text.lines().enumerate() {
        let code = raw.split("//").next().unwrap_or_default();
        let trimmed = code.trim();
        if trimmed == "#[cfg(test)]" {
            break;
        }
        if trimmed == "#[track_caller]" {
            next_fn_forwards = true;
            continue;
        }
        if next_fn_forwards && trimmed.contains("fn ") {
            next_fn_forwards = false;
            // A declaration without a body forwards nothing.
            if !trimmed.ends_with(';') {
                forwarding = true;
                depth = 0;
            }
        }
        if !forwarding && CALLS.iter().any(|c| code.contains(c)) {
            found.push(i as u32 + 1);
        }
        if forwarding {
            depth += code.matches('{').count() as i64 - code.matches('}').count() as i64;
            if depth <= 0 && code.contains('}') {
                forwarding = false;
            }
        }
    }
    found
}
