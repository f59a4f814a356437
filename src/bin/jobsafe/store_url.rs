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
//!
//! A PostgreSQL URL is never printed with its password: see
//! [`without_password`].

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
            // A PostgreSQL connection string of `key=value` pairs, or a URL
            // with a mistyped scheme, may hold a password.
            let shown = without_password(text);
            Failure::usage(format!(
                "malformed store URL {shown:?}: {why}; expected log:PATH, dir:PATH or postgres://..."
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
                    // No sweep at open: the tool removes nothing unasked (its
                    // `sweep` command asks). A batch left pending is still
                    // completed, as every open of the store does: it was
                    // durable, and the store reads it as applied.
                    DirStore::builder(path)
                        .create(false)
                        .sweep_at_open(None)
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
                        .map_err(|e| {
                            // A service that owns the store in exclusive mode
                            // keeps every other process out, this tool included.
                            let context = if e.is_store_in_use() {
                                format!(
                                    "open store {name} (a service holding it in exclusive \
                                     mode must be stopped first)"
                                )
                            } else {
                                format!("open store {name}")
                            };
                            Failure::library(context, &e)
                        })?,
                )
            }
            StoreUrl::Postgres(url) => open_postgres(url, pg, &name)?,
        };
        Ok(Opened { store, name })
    }
}

#[cfg(feature = "postgres")]
fn open_postgres(url: &str, pg: &PgNames, name: &str) -> Result<Arc<dyn Store>, Failure> {
    // A URL the library cannot read, or options it refuses (an `sslmode` this
    // build cannot honour), are the operator's to fix: a usage error. The
    // library's message never quotes a password.
    let store = jobsafe::PgStore::builder(url)
        .schema(&pg.schema)
        .table(&pg.table)
        .open()
        .map_err(|e| match e {
            jobsafe::Error::InvalidArgument(why) => Failure::usage(format!("store {name}: {why}")),
            e => Failure::library(format!("open store {name}"), &e),
        })?;
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

/// `text`, a store URL or a PostgreSQL connection string, as the tool prints
/// it: without its password, wherever the text holds one.
///
/// The rule errs towards hiding too much, because the PostgreSQL client's
/// parser (`tokio_postgres::Config`) reads some passwords differently from what the
/// operator meant (an unencoded `@` ends its password early), and because
/// without the `postgres` feature that parser is not built in:
///
/// - URL form (`SCHEME://...`): everything up to the *last* `@` is user info
///   (the client stops at the first), shown as `USER:***@`, or as `***@` if the
///   user part holds `/`, `?`, `&`, `=`, `#` or `pass`. A password holding an
///   unencoded `/`, `?` or `@` is thus hidden whole. In the query string (all
///   that follows the last `@` if the query started before it), the
///   first parameter whose name, percent-decoded, holds `pass` (`password`,
///   `pass%77ord`, `sslpassword`) is shown as `NAME=***`, and the parameters
///   after it are dropped (an unencoded `&` in the password would carry its
///   end into them).
/// - Any other text (`host=h password=pw`, a URL without `//`): everything up
///   to the last `@` becomes `***@`, and from the first word holding `pass`
///   with an `=` after it on, the text becomes `NAME=***`.
///
/// Built with `postgres`, the result is then read with the client's own parser:
/// if it finds a password there that is not `***`, only the scheme is shown.
pub(crate) fn without_password(text: &str) -> String {
    let shown = hide_secrets(text);
    #[cfg(feature = "postgres")]
    if !client_sees_no_password(&shown) {
        return match text.find("://") {
            Some(end) => format!("{}***", &text[..end + 3]),
            None => "***".to_owned(),
        };
    }
    shown
}

fn hide_secrets(text: &str) -> String {
    let Some(end) = text.find("://") else {
        return hide_in_words(text);
    };
    let (scheme, rest) = text.split_at(end + 3);
    let mut shown = scheme.to_owned();
    // Whether the query string starts before the last `@`, in the user info.
    let mut in_query = false;
    let after = match rest.rfind('@') {
        Some(at) => {
            let user_info = &rest[..at];
            in_query = user_info.contains('?');
            let (user, password) = match user_info.split_once(':') {
                Some((user, _)) => (user, true),
                None => (user_info, false),
            };
            let plain = !user.contains(['/', '?', '&', '=', '#']) && !holds_pass(user);
            match (plain, password) {
                (true, true) => shown.push_str(&format!("{user}:***@")),
                (true, false) => shown.push_str(&format!("{user}@")),
                (false, _) => shown.push_str("***@"),
            }
            &rest[at + 1..]
        }
        None => rest,
    };
    let query = if in_query {
        after
    } else {
        let Some((host_path, query)) = after.split_once('?') else {
            shown.push_str(after);
            return shown;
        };
        shown.push_str(host_path);
        shown.push('?');
        query
    };
    let mut params = Vec::new();
    for param in query.split('&') {
        let name = param.split_once('=').map_or(param, |(name, _)| name);
        if holds_pass(&percent_decoded(name)) {
            params.push(format!("{name}=***"));
            break;
        }
        params.push(param.to_owned());
    }
    shown.push_str(&params.join("&"));
    shown
}

/// The rule for text that is not a URL: a `key=value` connection string, or
/// anything else an operator may have typed.
fn hide_in_words(text: &str) -> String {
    let (prefix, rest) = match text.rfind('@') {
        Some(at) => ("***@", &text[at + 1..]),
        None => ("", text),
    };
    // ASCII lowercasing keeps every byte offset.
    // A password is given as `NAME=VALUE`: without an `=` after it, `pass` is
    // part of something else (a path).
    let Some(pass) = rest
        .to_ascii_lowercase()
        .find("pass")
        .filter(|&pass| rest[pass..].contains('='))
    else {
        return format!("{prefix}{rest}");
    };
    let start = rest[..pass]
        .char_indices()
        .rev()
        .find(|&(_, c)| c.is_whitespace() || matches!(c, '\'' | '&' | '?' | ';'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    let name = rest[start..]
        .split(|c: char| c == '=' || c.is_whitespace())
        .next()
        .unwrap_or_default();
    format!("{prefix}{}{name}=***", &rest[..start])
}

fn holds_pass(name: &str) -> bool {
    name.to_ascii_lowercase().contains("pass")
}

/// `text` with `%XX` escapes decoded (invalid UTF-8 replaced), as the client
/// decodes parameter names.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the PostgreSQL client, reading `shown`, finds no password in it
/// other than the `***` put there. Text it cannot read is no connection
/// string it would use.
#[cfg(feature = "postgres")]
fn client_sees_no_password(shown: &str) -> bool {
    shown
        .parse::<tokio_postgres::Config>()
        .map_or(true, |config| {
            config.get_password().is_none_or(|p| p == b"***")
        })
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

    /// Each form a password can take, and how it is shown. Every password here
    /// is made of `Zq` pieces, so that a piece leaking shows.
    const FORMS: &[(&str, &str)] = &[
        (
            "postgres://app:Zq1@db:5432/jobs?sslmode=require",
            "postgres://app:***@db:5432/jobs?sslmode=require",
        ),
        (
            "postgresql://app:Zq1@db/jobs",
            "postgresql://app:***@db/jobs",
        ),
        (
            "postgres://app@db/jobs?password=Zq1",
            "postgres://app@db/jobs?password=***",
        ),
        (
            "postgres://db/jobs?sslmode=require&password=Zq1&application_name=x",
            "postgres://db/jobs?sslmode=require&password=***",
        ),
        (
            "postgres://app:Zq1/Zq2@db/jobs",
            "postgres://app:***@db/jobs",
        ),
        (
            "postgres://app:Zq1?Zq2@db/jobs",
            "postgres://app:***@db/jobs",
        ),
        (
            "postgres://app:Zq1@Zq2@db/jobs",
            "postgres://app:***@db/jobs",
        ),
        (
            "postgres://app:Zq1%2FZq2@db/jobs",
            "postgres://app:***@db/jobs",
        ),
        ("postgres://app:Zq1@db/jobs?x=Zq2@y", "postgres://app:***@y"),
        (
            "postgres://db/jobs?pass%77ord=Zq1",
            "postgres://db/jobs?pass%77ord=***",
        ),
        (
            "postgres://db/jobs?password=Zq1&Zq2&sslmode=require",
            "postgres://db/jobs?password=***",
        ),
        (
            "postgres://db/jobs?application_name=a@b&password=Zq1",
            "postgres://***@b&password=***",
        ),
        (
            "postgres://app:Zq1@db/jobs?sslpassword=Zq2",
            "postgres://app:***@db/jobs?sslpassword=***",
        ),
        (
            "host=db user=app password=Zq1 dbname=jobs",
            "host=db user=app password=***",
        ),
        (
            "host=db PASSWORD = 'Zq1 Zq2' dbname=jobs",
            "host=db PASSWORD=***",
        ),
        ("user=bypass password=Zq1", "user=***"),
        ("postgress://app:Zq1@db/jobs", "postgress://app:***@db/jobs"),
        ("postgres:app:Zq1@db/jobs", "***@db/jobs"),
        ("postgres://app@db/jobs", "postgres://app@db/jobs"),
        ("postgres://db", "postgres://db"),
        ("/srv/passwords/state", "/srv/passwords/state"),
    ];

    #[test]
    fn a_password_is_hidden_in_every_form() {
        for (given, shown) in FORMS {
            assert_eq!(without_password(given), *shown, "{given}");
            assert!(!shown.contains("Zq"), "{shown}");
        }
        let url = StoreUrl::parse("postgresql://a:Zq1@h/d").map(|u| u.to_string());
        assert!(url.is_ok_and(|s| s == "postgresql://a:***@h/d"));
        for given in ["host=h password=Zq1", "pg://u:Zq1@h/d"] {
            let refused = StoreUrl::parse(given).map_err(|e| e.to_string());
            assert!(
                refused.as_ref().is_err_and(|e| !e.contains("Zq")),
                "{refused:?}"
            );
        }
    }

    /// The PostgreSQL client reads a password in each of these forms: not one
    /// piece of what it reads is shown, nor of what the operator meant.
    #[cfg(feature = "postgres")]
    #[test]
    fn what_the_client_reads_as_the_password_is_never_shown() {
        for (given, shown) in FORMS {
            let Ok(config) = given.parse::<tokio_postgres::Config>() else {
                continue;
            };
            if let Some(password) = config.get_password() {
                let password = String::from_utf8_lossy(password);
                assert!(password.contains("Zq"), "{given}: {password}");
                assert!(!shown.contains(&*password), "{given}");
            }
            assert!(client_sees_no_password(shown), "{shown}");
        }
        // The client stops at the first `@`: the rest of the password is its host.
        let config: tokio_postgres::Config = "postgres://app:Zq1@Zq2@db/jobs".parse().unwrap();
        assert_eq!(config.get_password(), Some(&b"Zq1"[..]));
        assert!(!client_sees_no_password("postgres://app:Zq1@db/jobs"));
        assert_eq!(
            without_password("host=db password=Zq1 user=a@b"),
            "***@b",
            "an `@` after the password"
        );
    }
}
