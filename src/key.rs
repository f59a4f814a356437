//! Validated hierarchical keys.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{Error, Result};

const MAX_SEGMENT_LEN: usize = Key::MAX_SEGMENT_LEN;
const MAX_SEGMENTS: usize = Key::MAX_SEGMENTS;

/// A record's name: a non-empty list of segments, compared segment by segment.
///
/// A segment is any non-empty UTF-8 string without NUL, at most
/// [`Key::MAX_SEGMENT_LEN`] bytes. User ids such as `lic:abc123`, UUIDs, and even `..`,
/// `a/b` or `CON` are accepted as they are: making them safe on disk is each store's
/// job, never the caller's.
///
/// Keys order segment by segment (so `["a", "b"]` < `["a", "b", "c"]` < `["a", "c"]`),
/// which is the order [`Store::list`](crate::Store::list) returns.
///
/// ```
/// use jobsafe::Key;
///
/// let key = Key::new(["locks", "lic:abc123", "vault/../x"])?;
/// assert_eq!(key.segments().len(), 3);
/// assert_eq!(key.to_string(), "locks/lic:abc123/vault%2F..%2Fx");
/// assert!(Key::new(["jobs", ""]).is_err());
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Key {
    segments: Vec<String>,
}

impl Key {
    /// Longest accepted segment, in bytes of UTF-8.
    pub const MAX_SEGMENT_LEN: usize = 1024;

    /// Most segments a key may have. Stores map segments to directory levels or
    /// prefixes; a bound keeps paths and index entries bounded.
    pub const MAX_SEGMENTS: usize = 16;

    /// Builds a key from its segments, validating each one.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] if there are no segments, more than [`Key::MAX_SEGMENTS`], or a
    /// segment is empty, contains NUL or is longer than [`Key::MAX_SEGMENT_LEN`] bytes.
    pub fn new<I, S>(segments: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        validate(&segments, false)?;
        Ok(Key { segments })
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The last segment.
    pub fn name(&self) -> &str {
        // Invariant: a key has at least one segment.
        self.segments.last().map(String::as_str).unwrap_or_default()
    }

    /// This key with one more segment.
    ///
    /// # Errors
    /// As [`Key::new`] for the new segment.
    pub fn child(&self, segment: impl Into<String>) -> Result<Key> {
        let mut segments = self.segments.clone();
        segments.push(segment.into());
        validate(&segments, false)?;
        Ok(Key { segments })
    }

    /// Whether `prefix`'s segments are the leading segments of this key.
    pub fn starts_with(&self, prefix: &Prefix) -> bool {
        self.segments.starts_with(&prefix.segments)
    }

    /// The prefix made of all of this key's segments.
    pub fn as_prefix(&self) -> Prefix {
        Prefix {
            segments: self.segments.clone(),
        }
    }
}

/// Leading whole segments selecting keys for [`Store::list`](crate::Store::list).
///
/// Unlike a [`Key`], a prefix may be empty ([`Prefix::all`]). `["jobs"]` selects
/// `["jobs", "1"]` and `["jobs"]` itself but not `["jobsX"]`: prefixes match whole
/// segments, never parts of one.
///
/// ```
/// use jobsafe::{Key, Prefix};
///
/// let p = Prefix::new(["jobs"])?;
/// assert!(Key::new(["jobs", "42"])?.starts_with(&p));
/// assert!(!Key::new(["jobs42"])?.starts_with(&p));
/// assert!(Key::new(["anything"])?.starts_with(&Prefix::all()));
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Prefix {
    segments: Vec<String>,
}

impl Prefix {
    /// The empty prefix: every key.
    pub fn all() -> Self {
        Prefix::default()
    }

    /// A prefix from segments, each validated as for [`Key::new`]; zero segments
    /// are allowed.
    ///
    /// # Errors
    /// [`Error::InvalidKey`] for an invalid segment or too many segments.
    pub fn new<I, S>(segments: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let segments: Vec<String> = segments.into_iter().map(Into::into).collect();
        validate(&segments, true)?;
        Ok(Prefix { segments })
    }

    /// The segments, outermost first.
    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// Checks that keys `depth` segments longer than this prefix are allowed, for
    /// a component that keeps its records `depth` segments below its namespace.
    pub(crate) fn check_room(&self, depth: usize, component: &str) -> Result<()> {
        if self.segments.len() + depth <= MAX_SEGMENTS {
            return Ok(());
        }
        Err(Error::invalid_key(
            DisplaySegments(&self.segments).to_string(),
            format!(
                "a {component} namespace of {} segments leaves no room for its keys, \
                 which are {depth} segments longer (at most {MAX_SEGMENTS} in all)",
                self.segments.len()
            ),
        ))
    }
}

impl From<Key> for Prefix {
    fn from(key: Key) -> Self {
        Prefix {
            segments: key.segments,
        }
    }
}

impl From<&Key> for Prefix {
    fn from(key: &Key) -> Self {
        key.as_prefix()
    }
}

fn validate(segments: &[String], allow_empty: bool) -> Result<()> {
    let shown = || DisplaySegments(segments).to_string();
    if segments.is_empty() && !allow_empty {
        return Err(Error::invalid_key("", "a key needs at least one segment"));
    }
    if segments.len() > MAX_SEGMENTS {
        return Err(Error::invalid_key(
            shown(),
            format!(
                "{} segments, at most {MAX_SEGMENTS} are allowed",
                segments.len()
            ),
        ));
    }
    for (i, s) in segments.iter().enumerate() {
        let reason = if s.is_empty() {
            format!("segment {i} is empty")
        } else if s.len() > MAX_SEGMENT_LEN {
            format!(
                "segment {i} is {} bytes, at most {MAX_SEGMENT_LEN} are allowed",
                s.len()
            )
        } else if s.contains('\0') {
            format!("segment {i} contains NUL")
        } else {
            continue;
        };
        return Err(Error::invalid_key(shown(), reason));
    }
    Ok(())
}

/// Joins segments with `/`, escaping `%` and `/` inside a segment so that the
/// display is unambiguous.
struct DisplaySegments<'a>(&'a [String]);

impl fmt::Display for DisplaySegments<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            for c in s.chars() {
                match c {
                    '%' => f.write_str("%25")?,
                    '/' => f.write_str("%2F")?,
                    c => fmt::Write::write_char(f, c)?,
                }
            }
        }
        Ok(())
    }
}

impl fmt::Display for Key {
    /// Segments joined by `/`; a `%` or `/` inside a segment is shown as `%25` or `%2F`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DisplaySegments(&self.segments).fmt(f)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({self})")
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        DisplaySegments(&self.segments).fmt(f)
    }
}

/// Parses the form [`Display`](fmt::Display) prints: segments joined by `/`, with
/// `%2F` standing for a `/` inside a segment and `%25` for a `%` (any other `%`
/// stands for itself). For keys typed by people: an operator tool, a config file.
///
/// ```
/// use jobsafe::Key;
///
/// let key: Key = "locks/lic:abc123/vault%2F..%2Fx".parse()?;
/// assert_eq!(key, Key::new(["locks", "lic:abc123", "vault/../x"])?);
/// assert_eq!(key.to_string().parse::<Key>()?, key);
/// assert!("jobs//42".parse::<Key>().is_err());
/// # Ok::<(), jobsafe::Error>(())
/// ```
impl FromStr for Key {
    type Err = Error;

    /// # Errors
    /// As [`Key::new`]; an empty string or an empty segment (`a//b`) is invalid.
    fn from_str(text: &str) -> Result<Self> {
        Key::new(parse_segments(text))
    }
}

/// Parses the form [`Display`](fmt::Display) prints, as for [`Key`]; the empty
/// string is [`Prefix::all`].
///
/// ```
/// use jobsafe::Prefix;
///
/// assert_eq!("pipeline/locks".parse::<Prefix>()?, Prefix::new(["pipeline", "locks"])?);
/// assert_eq!("".parse::<Prefix>()?, Prefix::all());
/// # Ok::<(), jobsafe::Error>(())
/// ```
impl FromStr for Prefix {
    type Err = Error;

    /// # Errors
    /// As [`Prefix::new`]; an empty segment (`a//b`) is invalid.
    fn from_str(text: &str) -> Result<Self> {
        if text.is_empty() {
            return Ok(Prefix::all());
        }
        Prefix::new(parse_segments(text))
    }
}

/// Splits displayed segments at `/` and undoes their escapes.
fn parse_segments(text: &str) -> Vec<String> {
    text.split('/')
        .map(|segment| {
            let mut out = String::with_capacity(segment.len());
            let mut rest = segment;
            while let Some(at) = rest.find('%') {
                out.push_str(&rest[..at]);
                let escape = rest.get(at..at + 3).unwrap_or_default();
                if escape.eq_ignore_ascii_case("%2F") {
                    out.push('/');
                    rest = &rest[at + 3..];
                } else if escape == "%25" {
                    out.push('%');
                    rest = &rest[at + 3..];
                } else {
                    out.push('%');
                    rest = &rest[at + 1..];
                }
            }
            out.push_str(rest);
            out
        })
        .collect()
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let segments = Vec::<String>::deserialize(deserializer)?;
        Key::new(segments).map_err(serde::de::Error::custom)
    }
}

/// Refuses an empty namespace for `component`, whose keys would then begin
/// with what its caller supplies (an account, a lock's own key): a store
/// call's trace names a key's first segment as its namespace, and would show
/// that in clear.
pub(crate) fn check_named_namespace(namespace: &Prefix, component: &str) -> Result<()> {
    if namespace.segments().is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{component} needs a namespace of at least one segment: its keys would otherwise \
             begin with what callers supply"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_hostile_segments_as_they_are() {
        for s in [
            "..",
            ".",
            "a/b",
            "a\\b",
            "lic:abc123",
            ".hidden",
            "CON",
            "Ä",
        ] {
            let key = Key::new(["x", s]).unwrap();
            assert_eq!(key.name(), s);
        }
    }

    #[test]
    fn rejects_bad_segments_with_reason() {
        let cases: [(Vec<String>, &str); 4] = [
            (vec![], "at least one segment"),
            (vec!["a".into(), "".into()], "segment 1 is empty"),
            (vec!["a\0b".into()], "contains NUL"),
            (vec!["x".repeat(MAX_SEGMENT_LEN + 1)], "at most 1024"),
        ];
        for (segments, reason) in cases {
            let err = Key::new(segments).unwrap_err();
            assert!(
                matches!(&err, Error::InvalidKey { reason: r, .. } if r.contains(reason)),
                "{err}"
            );
        }
        assert!(Key::new(["x".repeat(MAX_SEGMENT_LEN)]).is_ok());
        assert!(Key::new(vec!["s"; MAX_SEGMENTS + 1]).is_err());
    }

    #[test]
    fn orders_segment_by_segment() {
        let k = |s: &[&str]| Key::new(s.iter().copied()).unwrap();
        assert!(k(&["a", "b"]) < k(&["a", "b", "c"]));
        assert!(k(&["a", "b", "c"]) < k(&["a", "c"]));
        assert!(k(&["a", "b", "z"]) < k(&["a", "ba"]));
    }

    #[test]
    fn parsing_the_display_form_gives_the_key_back() {
        for segments in [
            vec!["a"],
            vec!["locks", "lic:abc123", "vault/../x"],
            vec!["100%", "%2F", "a%b/c", "%25"],
            vec!["..", ".", "Ä", "a\\b"],
        ] {
            let key = Key::new(segments.iter().copied()).unwrap();
            assert_eq!(key.to_string().parse::<Key>().unwrap(), key, "{key}");
            assert_eq!(
                key.to_string().parse::<Prefix>().unwrap(),
                key.as_prefix(),
                "{key}"
            );
        }
        // A `%` that starts no escape stands for itself.
        assert_eq!("a%zz/%".parse::<Key>().unwrap().segments(), ["a%zz", "%"]);
        assert_eq!("a%2fb".parse::<Key>().unwrap().segments(), ["a/b"]);
        for bad in ["", "a//b", "/a", "a/"] {
            let err = bad.parse::<Key>().unwrap_err();
            assert!(matches!(err, Error::InvalidKey { .. }), "{bad:?}: {err}");
        }
        assert_eq!("".parse::<Prefix>().unwrap(), Prefix::all());
        assert!("a//b".parse::<Prefix>().is_err());
    }

    #[test]
    fn serde_round_trip_validates() {
        let key = Key::new(["a", "b/c"]).unwrap();
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, r#"["a","b/c"]"#);
        assert_eq!(serde_json::from_str::<Key>(&json).unwrap(), key);
        assert!(serde_json::from_str::<Key>(r#"["a",""]"#).is_err());
    }
}
