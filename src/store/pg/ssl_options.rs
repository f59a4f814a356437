//! The connection options PgStore reads itself, out of the URL or key=value
//! string, before the client library reads the rest: `sslmode`,
//! `sslrootcert` and `sslsni`, with libpq's meanings.
//!
//! The client library knows only `sslmode=disable|prefer|require` and refuses
//! every other `ssl*` option, so these are taken out of the text here, and the
//! rest is handed on unchanged (byte for byte, so that the client reads the
//! user, the password and every other option exactly as it would have).
//!
//! The text is split the way the client splits it: in a URL, the query string
//! starts at the first `?` after the first `@` (the client takes everything up
//! to the first `@` as the user and password), and its keys and values are
//! percent-decoded; in the key=value form, values may be single-quoted, and
//! a backslash escapes the next character. A later option overrides an
//! earlier one, as in libpq.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use crate::error::{Error, Result};

/// How a connection is secured, libpq's `sslmode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, else in clear.
    Prefer,
    /// TLS or no connection.
    Require,
    /// TLS, and the server's certificate chain checked against the roots.
    VerifyCa,
    /// TLS, the chain checked, and the certificate must name the host.
    VerifyFull,
}

impl SslMode {
    /// The mode as the connection string spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// Where the trusted roots come from, libpq's `sslrootcert`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum RootCert {
    /// The certificates in this PEM file.
    File(PathBuf),
    /// The system's trusted roots (`sslrootcert=system`).
    System,
}

impl fmt::Display for RootCert {
    /// As messages name the roots.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RootCert::File(path) => write!(f, "sslrootcert {}", path.display()),
            RootCert::System => f.write_str("sslrootcert=system (the system's trusted roots)"),
        }
    }
}

/// The `ssl*` options of a connection string, checked against each other.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SslOptions {
    /// The mode in force: the one given, or libpq's default (`prefer`, or
    /// `verify-full` with `sslrootcert=system`).
    pub(crate) mode: SslMode,
    /// The roots given, if any.
    pub(crate) root_cert: Option<RootCert>,
    /// Whether to send the host name in the handshake (`sslsni`, default on).
    pub(crate) sni: bool,
}

/// A connection string with the options read here taken out.
#[derive(Debug)]
pub(crate) struct ConnString {
    /// The rest, for the client library.
    pub(crate) rest: String,
    pub(crate) ssl: SslOptions,
    /// Whether the text may hold a password: then no message of the client
    /// about it may be shown, since it could quote a piece of it. Errs towards
    /// yes.
    pub(crate) may_hold_password: bool,
}

/// Options of libpq's that PgStore does not support: refused by name rather
/// than left to the client's "unknown option" (client certificates,
/// revocation lists).
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// One option of the text: its key, its decoded value, and the bytes it takes.
struct Param {
    key: String,
    value: String,
    span: Range<usize>,
}

/// Splits `text` into the options read here and the rest.
///
/// # Errors
/// [`Error::InvalidArgument`] for an option given a value it cannot take, an
/// unsupported one, or options that contradict each other. No message quotes
/// a value (only option names and the modes themselves), so none can show a
/// password.
pub(crate) fn split(text: &str) -> Result<ConnString> {
    let url = url_query(text);
    let (params, may_hold_password) = match url {
        Some((query, credentials)) => (url_params(text, query), credentials.contains(':')),
        None => match key_value_params(text) {
            Some(params) => (params, false),
            // Text the client will refuse in any case: handed on unchanged.
            None => (Vec::new(), true),
        },
    };
    let may_hold_password = may_hold_password || params.iter().any(|p| p.key == "password");

    let mut mode = None;
    let mut root_cert = None;
    let mut sni = true;
    let mut taken = Vec::new();
    for param in &params {
        match param.key.as_str() {
            "sslmode" => mode = Some(parse_mode(&param.value)?),
            // An empty value is no value, as in libpq.
            "sslrootcert" if param.value.is_empty() => root_cert = None,
            "sslrootcert" if param.value == "system" => root_cert = Some(RootCert::System),
            "sslrootcert" => root_cert = Some(RootCert::File(PathBuf::from(&param.value))),
            "sslsni" => {
                sni = match param.value.as_str() {
                    "0" => false,
                    "1" => true,
                    _ => return Err(invalid("sslsni takes 0 or 1")),
                }
            }
            key if UNSUPPORTED.contains(&key) => {
                return Err(invalid(&format!(
                    "the connection option {key} is not supported: PgStore sends no client \
                     certificate and reads no revocation list"
                )));
            }
            _ => continue,
        }
        taken.push(param.span.clone());
    }

    let system = root_cert == Some(RootCert::System);
    let mode = match mode {
        Some(mode) => mode,
        // libpq 16: the system's roots make verify-full the default.
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if system && mode != SslMode::VerifyFull {
        // As libpq: the system's roots trust any public CA, for any name, so
        // only the host name check makes them mean anything.
        return Err(invalid(&format!(
            "sslmode={} may not be used with sslrootcert=system: use sslmode=verify-full",
            mode.name()
        )));
    }
    Ok(ConnString {
        rest: without(text, &taken, url.map(|(query, _)| query)),
        ssl: SslOptions {
            mode,
            root_cert,
            sni,
        },
        may_hold_password,
    })
}

fn parse_mode(value: &str) -> Result<SslMode> {
    Ok(match value {
        "disable" => SslMode::Disable,
        "prefer" => SslMode::Prefer,
        "require" => SslMode::Require,
        "verify-ca" => SslMode::VerifyCa,
        "verify-full" => SslMode::VerifyFull,
        "allow" => {
            return Err(invalid(
                "sslmode=allow is not supported: use prefer (TLS when the server offers it) \
                 or disable",
            ));
        }
        // The value is not quoted: it may be a piece of a password that a
        // missing quote ran into this option.
        _ => {
            return Err(invalid(
                "sslmode takes disable, prefer, require, verify-ca or verify-full",
            ));
        }
    })
}

fn invalid(why: &str) -> Error {
    Error::InvalidArgument(format!("the database URL: {why}"))
}

/// Where a URL's query string starts (after its `?`), if `text` is a URL,
/// and the user info the client reads (what precedes the first `@`).
fn url_query(text: &str) -> Option<(usize, &str)> {
    let prefix = ["postgres://", "postgresql://"]
        .into_iter()
        .find(|p| text.starts_with(p))?;
    let rest = &text[prefix.len()..];
    let (credentials, after) = match rest.find('@') {
        Some(at) => (&rest[..at], prefix.len() + at + 1),
        None => ("", prefix.len()),
    };
    let query = text[after..]
        .find('?')
        .map_or(text.len(), |q| after + q + 1);
    Some((query, credentials))
}

/// The options of a URL's query string, from `start`: `&`-separated
/// `key=value` pairs, each percent-decoded. A pair without `=` is left for
/// the client to refuse.
fn url_params(text: &str, start: usize) -> Vec<Param> {
    let mut params = Vec::new();
    let mut at = start;
    for pair in text.get(start..).unwrap_or_default().split('&') {
        let span = at..at + pair.len();
        at = span.end + 1;
        if let Some((key, value)) = pair.split_once('=') {
            params.push(Param {
                key: decode(key),
                value: decode(value),
                span,
            });
        }
    }
    params
}

fn decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// The options of a key=value string, read as the client reads them; `None`
/// if it does not read as one (the client will refuse it).
fn key_value_params(text: &str) -> Option<Vec<Param>> {
    let mut params = Vec::new();
    let mut chars = text.char_indices().peekable();
    let skip_ws = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut chars);
        let Some(&(start, _)) = chars.peek() else {
            return Some(params);
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        // The client stops reading at an option without a name.
        if key.is_empty() {
            return Some(params);
        }
        skip_ws(&mut chars);
        chars.next_if(|(_, c)| *c == '=')?;
        skip_ws(&mut chars);
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut value = String::new();
        let mut closed = false;
        while let Some(&(_, c)) = chars.peek() {
            if quoted && c == '\'' {
                chars.next();
                closed = true;
                break;
            }
            if !quoted && c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '\\' {
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            } else {
                value.push(c);
            }
        }
        if (quoted && !closed) || (!quoted && value.is_empty()) {
            return None;
        }
        let end = chars.peek().map_or(text.len(), |&(i, _)| i);
        params.push(Param {
            key,
            value,
            span: start..end,
        });
    }
}

/// `text` without the byte ranges `taken` (in order, not overlapping). In a
/// URL, whose query starts at `query` (`None` for the key=value form), the
/// `&` that joined a removed pair goes with it, and so does a `?` left with
/// nothing after it; in the key=value form the whitespace around a removed
/// option stays, keeping its neighbours apart.
fn without(text: &str, taken: &[Range<usize>], query: Option<usize>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut from = 0;
    for span in taken {
        out.push_str(text.get(from..span.start).unwrap_or_default());
        from = span.end;
        if query.is_some() && text.get(from..from + 1) == Some("&") {
            from += 1;
        }
    }
    out.push_str(text.get(from..).unwrap_or_default());
    if let Some(query) = query
        && !taken.is_empty()
    {
        while out.len() > query && out.ends_with('&') {
            out.pop();
        }
        if out.len() == query && out.ends_with('?') {
            out.pop();
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> ConnString {
        split(text).unwrap()
    }

    #[test]
    fn a_url_without_ssl_options_is_unchanged_and_prefers_tls() {
        for url in [
            "postgres://app:pw@db:5432/jobs",
            "postgresql://app@db/jobs?application_name=x&connect_timeout=3",
            "host=db user=app password='a b' dbname=jobs",
        ] {
            let conn = ok(url);
            assert_eq!(conn.rest, url);
            assert_eq!(conn.ssl.mode, SslMode::Prefer);
            assert_eq!(conn.ssl.root_cert, None);
            assert!(conn.ssl.sni);
        }
    }

    #[test]
    fn ssl_options_come_out_of_a_url_decoded_and_the_rest_stays_as_given() {
        let conn = ok("postgres://app:p%40ss@db:5432/jobs?sslmode=verify-full\
                       &application_name=a%20b&sslrootcert=%2Fetc%2Fca%20x.pem&sslsni=0");
        assert_eq!(
            conn.rest,
            "postgres://app:p%40ss@db:5432/jobs?application_name=a%20b"
        );
        assert_eq!(conn.ssl.mode, SslMode::VerifyFull);
        assert_eq!(
            conn.ssl.root_cert,
            Some(RootCert::File("/etc/ca x.pem".into()))
        );
        assert!(!conn.ssl.sni);
        assert!(conn.may_hold_password);

        let conn = ok("postgresql://db/jobs?sslmode=require");
        assert_eq!(conn.rest, "postgresql://db/jobs");
        assert_eq!(conn.ssl.mode, SslMode::Require);
        assert!(!conn.may_hold_password);
        // An encoded key is still the key.
        assert_eq!(
            ok("postgres://db?ssl%6dode=disable").ssl.mode,
            SslMode::Disable
        );
    }

    #[test]
    fn a_question_mark_in_the_user_info_does_not_start_the_query() {
        // The client takes all up to the first `@` as user and password.
        let conn = ok("postgres://app:a?sslmode=disable@db/jobs?sslmode=require");
        assert_eq!(conn.rest, "postgres://app:a?sslmode=disable@db/jobs");
        assert_eq!(conn.ssl.mode, SslMode::Require);
    }

    #[test]
    fn ssl_options_come_out_of_a_key_value_string() {
        let conn = ok(r"host=db sslmode = verify-ca  sslrootcert='/a b/c\'d.pem' user=app");
        assert_eq!(conn.ssl.mode, SslMode::VerifyCa);
        assert_eq!(
            conn.ssl.root_cert,
            Some(RootCert::File("/a b/c'd.pem".into()))
        );
        let config: tokio_postgres::Config = conn.rest.parse().unwrap();
        assert_eq!(config.get_user(), Some("app"));
        assert_eq!(conn.rest.split_whitespace().count(), 2, "{}", conn.rest);
        // A later option overrides an earlier one.
        assert_eq!(
            ok("sslmode=require host=h sslmode=disable").ssl.mode,
            SslMode::Disable
        );
        assert!(ok("host=h password=x").may_hold_password);
    }

    #[test]
    fn what_the_client_reads_is_what_it_would_have_read() {
        for (with, plain) in [
            (
                "postgres://u:p%26w@h:1/d?sslmode=require&options=-c%20a%3Db&sslrootcert=x",
                "postgres://u:p%26w@h:1/d?options=-c%20a%3Db",
            ),
            (
                "host=h sslmode=require password='x y\\'z' sslsni=1 port=1",
                "host=h password='x y\\'z' port=1",
            ),
        ] {
            let a: tokio_postgres::Config = ok(with).rest.parse().unwrap();
            let b: tokio_postgres::Config = plain.parse().unwrap();
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }

    #[test]
    fn system_roots_mean_verify_full() {
        let conn = ok("postgres://db?sslrootcert=system");
        assert_eq!(conn.ssl.mode, SslMode::VerifyFull);
        assert_eq!(conn.ssl.root_cert, Some(RootCert::System));
        for weak in ["disable", "prefer", "require", "verify-ca"] {
            let err = split(&format!("postgres://db?sslrootcert=system&sslmode={weak}"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("verify-full"), "{err}");
        }
    }

    #[test]
    fn bad_values_are_refused_without_quoting_them() {
        for text in [
            "postgres://db?sslmode=Zq1secret",
            "host=db sslmode=Zq1secret",
            "postgres://db?sslsni=Zq1",
            "postgres://db?sslmode=allow&x=Zq1",
            "postgres://db?sslkey=Zq1.pem",
            "host=db sslcert=Zq1.pem",
        ] {
            let err = split(text).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
            assert!(!err.to_string().contains("Zq"), "{err}");
        }
    }

    #[test]
    fn text_that_does_not_read_is_handed_on_as_it_is() {
        for text in ["host=db password='unterminated", "host", "postgres://db?a"] {
            let conn = ok(text);
            assert_eq!(conn.rest, text);
        }
        assert!(ok("host=db password='unterminated").may_hold_password);
    }
}
