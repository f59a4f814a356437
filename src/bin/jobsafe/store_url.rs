//! Which store to open: `--store URL` or `JOBSAFE_STORE`.
//!
//! - `log:PATH`: a [`LogStore`] (journal; jobsafe's default store) in the
//!   directory `PATH`.
//! - `dir:PATH`: a [`DirStore`] (one file per key) in the directory `PATH`.
//! - `postgres://...` or `postgresql://...`: a `PgStore` (needs the tool built
//!   with `--features cli,postgres`).
//!
//! `dir://PATH` and `log://PATH` are accepted too and mean the same as without
//! the slashes, so `dir:///var/lib/app/state` is the absolute path
//! `/var/lib/app/state` and `dir://state` the relative path `state`. The tool
//! never creates a DirStore or LogStore: a missing directory is an error naming
//! it, so that a typo cannot leave an empty store behind. A PgStore's tables
//! are created or migrated on open, as `PgStore::open` does in the service;
//! `--pg-schema` and `--pg-table` say where they are.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use jobsafe::vfs::{FileKind, StdVfs, Vfs};
use jobsafe::{DirStore, LogStore, Store};

use crate::exit::Failure;

/// A parsed store URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum StoreUrl {
    Dir(PathBuf),
    Log(PathBuf),
    Postgres(String),
}

/// Where a PgStore's tables are.
#[derive(Clone, Debug)]
// Read only when PgStore is built in.
#[cfg_attr(not(feature = "postgres"), allow(dead_code))]
pub(crate) struct PgNames {
    pub(crate) schema: String,
    pub(crate) table: String,
}

/// An open store, with the name errors and headings use.
pub(crate) struct Opened {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) name: String,
}

impl StoreUrl {
    pub(crate) fn parse(text: &str) -> Result<StoreUrl, Failure> {
        let malformed = |why: &str| {
            Failure::usage(format!(
                "malformed store URL {text:?}: {why}; expected log:PATH, dir:PATH or postgres://..."
            ))
        };
        let path = |rest: &str| -> Result<PathBuf, Failure> {
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            if rest.is_empty() {
                return Err(malformed("the path is empty"));
            }
            Ok(PathBuf::from(rest))
        };
        if let Some(rest) = text.strip_prefix("dir:") {
            Ok(StoreUrl::Dir(path(rest)?))
        } else if let Some(rest) = text.strip_prefix("log:") {
            Ok(StoreUrl::Log(path(rest)?))
        } else if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            Ok(StoreUrl::Postgres(text.to_owned()))
        } else {
            match text.split_once(':') {
                Some((scheme, _)) if !scheme.is_empty() && !scheme.contains('/') => {
                    Err(malformed(&format!("unknown scheme {scheme:?}")))
                }
                _ => Err(malformed("no scheme")),
            }
        }
    }

    /// Opens the store, never creating a DirStore or LogStore.
    pub(crate) fn open(&self, pg: &PgNames) -> Result<Opened, Failure> {
        let name = self.to_string();
        let missing_dir = |path: &PathBuf| {
            // `path/.`: a symbolic link naming the store's directory is
            // followed on the way to `.`, which `metadata` alone would not do.
            if StdVfs
                .metadata(&path.join("."))
                .is_ok_and(|info| info.kind == FileKind::Dir)
            {
                Ok(())
            } else {
                Err(Failure::new(
                    crate::exit::Code::Error,
                    format!(
                        "store {name}: the directory {} does not exist (the tool never creates a store)",
                        path.display()
                    ),
                ))
            }
        };
        let store: Arc<dyn Store> = match self {
            StoreUrl::Dir(path) => {
                missing_dir(path)?;
                Arc::new(
                    DirStore::builder(path)
                        .create(false)
                        .open()
                        .map_err(|e| Failure::library(format!("open store {name}"), &e))?,
                )
            }
            StoreUrl::Log(path) => {
                missing_dir(path)?;
                Arc::new(
                    LogStore::builder(path)
                        .create(false)
                        .no_background_compaction()
                        .open()
                        .map_err(|e| Failure::library(format!("open store {name}"), &e))?,
                )
            }
            StoreUrl::Postgres(url) => open_postgres(url, pg, &name)?,
        };
        Ok(Opened { store, name })
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str, pg: &PgNames, name: &str) -> Result<Arc<dyn Store>, Failure> {
    let store = jobsafe::PgStore::builder(url)
        .schema(&pg.schema)
        .table(&pg.table)
        .open()
        .map_err(|e| Failure::library(format!("open store {name}"), &e))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "postgres"))]
fn open_postgres(_url: &str, _pg: &PgNames, name: &str) -> Result<Arc<dyn Store>, Failure> {
    Err(Failure::usage(format!(
        "store {name}: this jobsafe was built without PostgreSQL support; \
         build it with `--features cli,postgres`"
    )))
}

impl fmt::Display for StoreUrl {
    /// The URL as given, with a PostgreSQL password hidden.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Dir(path) => write!(f, "dir:{}", path.display()),
            StoreUrl::Log(path) => write!(f, "log:{}", path.display()),
            StoreUrl::Postgres(url) => f.write_str(&without_password(url)),
        }
    }
}

/// `url` with the password of its user info replaced by `***`.
fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_form() {
        let parse = |s: &str| StoreUrl::parse(s).map_err(|e| e.to_string());
        assert_eq!(parse("dir:state"), Ok(StoreUrl::Dir("state".into())));
        assert_eq!(parse("dir:///var/x"), Ok(StoreUrl::Dir("/var/x".into())));
        assert_eq!(parse("log://rel/x"), Ok(StoreUrl::Log("rel/x".into())));
        assert!(matches!(
            parse("postgres://u@h/db"),
            Ok(StoreUrl::Postgres(_))
        ));
        for bad in ["dir:", "log://", "state", "/var/x", "s3://bucket", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hides_the_password() {
        assert_eq!(
            without_password("postgres://app:s3cret@db:5432/jobs?sslmode=require"),
            "postgres://app:***@db:5432/jobs?sslmode=require"
        );
        assert_eq!(
            without_password("postgres://app@db/jobs"),
            "postgres://app@db/jobs"
        );
        let shown = StoreUrl::parse("postgresql://a:b@h/d").map(|u| u.to_string());
        assert!(shown.is_ok_and(|s| !s.contains(":b@")));
    }
}
