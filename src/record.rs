//! The versioned JSON record codec shared by every component.
//!
//! A record is a JSON object with a `"schema"` field next to the record's own
//! fields:
//!
//! ```text
//! {"schema":1,"job_id":"…","expires_ms":1767225600000, …}
//! ```
//!
//! Compatibility rules, which let an older deploy read a newer deploy's records
//! during a rolling upgrade:
//! - adding an optional field does not change the schema version; readers ignore
//!   fields they do not know, and a record type that must keep them on rewrite holds
//!   them in a `#[serde(flatten)] extra: Extra` field;
//! - any change an older reader would misread bumps the version, and a reader that
//!   finds a version newer than it supports reports [`Error::UnsupportedSchema`]
//!   instead of guessing.
//!
//! What jobsafe's own records keep on a read-modify-write by this version:
//! - unknown fields at the top level of a job record, a lock record (renewal), a
//!   reservation (confirm, cancel, refund start) and a pipeline's run state are
//!   kept;
//! - a record written afresh drops them: a lock taken over by a new holder, a
//!   checkpoint recorded again, a reservation made again after it expired;
//! - objects nested inside a record that jobsafe defines (a job's error and event
//!   window, a checkpoint's artifacts) keep only the fields this version knows: a
//!   newer version adds its fields at the top level;
//! - values that are the caller's (a job's result and metadata, lock and
//!   reservation metadata, event data, and every value of a
//!   [`Store`](crate::Store)) are stored exactly as given, whatever they hold,
//!   within the bound on each one's size (a constant on its type, such as
//!   [`Job::MAX_RESULT_LEN`](crate::jobs::Job::MAX_RESULT_LEN)).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::key::Key;

/// Fields a reader did not recognise, kept so that rewriting a record written by a
/// newer version does not drop them.
pub type Extra = serde_json::Map<String, serde_json::Value>;

/// Free-form facts stored with a lock or a reservation for people and dashboards
/// (chunks to embed, estimated seconds, a reason), never interpreted by jobsafe.
pub type Metadata = serde_json::Map<String, serde_json::Value>;

/// A type stored as a versioned JSON record.
///
/// ```
/// use jobsafe::record::{self, Extra, Record};
/// use jobsafe::Key;
///
/// #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
/// struct Counter {
///     n: u64,
///     #[serde(flatten)]
///     extra: Extra,
/// }
/// impl Record for Counter {
///     const SCHEMA: u32 = 1;
/// }
///
/// let key = Key::new(["counters", "a"])?;
/// // A newer deploy added a field this one does not know: it is kept.
/// let bytes = br#"{"schema":1,"n":3,"added_later":true}"#;
/// let c: Counter = record::decode(&key, bytes)?;
/// assert_eq!(c.n, 3);
/// let again = String::from_utf8(record::encode(&key, &c)?).unwrap();
/// assert!(again.contains(r#""added_later":true"#));
/// # Ok::<(), jobsafe::Error>(())
/// ```
pub trait Record: Serialize + DeserializeOwned {
    /// The newest schema version this build writes and reads.
    const SCHEMA: u32;
}

/// Name of the schema field in every record.
pub const SCHEMA_FIELD: &str = "schema";

/// Encodes a record as JSON with its schema version.
///
/// # Errors
/// [`Error::Codec`] if the value does not serialize to a JSON object.
pub fn encode<R: Record>(key: &Key, record: &R) -> Result<Vec<u8>> {
    let codec = |source| Error::Codec {
        action: "encode",
        key: key.clone(),
        source,
    };
    let mut value = serde_json::to_value(record).map_err(codec)?;
    let Some(object) = value.as_object_mut() else {
        return Err(codec(serde::ser::Error::custom(
            "a record must serialize to a JSON object",
        )));
    };
    object.insert(SCHEMA_FIELD.to_owned(), R::SCHEMA.into());
    serde_json::to_vec(&value).map_err(codec)
}

/// Decodes a record, checking its schema version.
///
/// # Errors
/// [`Error::Corrupt`] if the bytes are not a JSON object with a numeric schema
/// field and the record's fields; [`Error::UnsupportedSchema`] if the schema version
/// is newer than `R::SCHEMA`.
pub fn decode<R: Record>(key: &Key, bytes: &[u8]) -> Result<R> {
    let corrupt = |reason: String| Error::Corrupt {
        key: key.clone(),
        path: None,
        reason,
    };
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
    let object = value
        .as_object_mut()
        .ok_or_else(|| corrupt("not a JSON object".to_owned()))?;
    let schema = object
        .remove(SCHEMA_FIELD)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| corrupt(format!("missing or invalid \"{SCHEMA_FIELD}\" field")))?;
    if schema > R::SCHEMA {
        return Err(Error::UnsupportedSchema {
            key: key.clone(),
            found: schema,
            supported: R::SCHEMA,
        });
    }
    serde_json::from_value(value).map_err(|e| corrupt(format!("bad fields: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Lease {
        holder: String,
    }
    impl Record for Lease {
        const SCHEMA: u32 = 2;
    }

    fn key() -> Key {
        Key::new(["leases", "a"]).unwrap()
    }

    #[test]
    fn round_trip_writes_schema() {
        let bytes = encode(
            &key(),
            &Lease {
                holder: "w1".into(),
            },
        )
        .unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r#""schema":2"#), "{text}");
        assert_eq!(
            decode::<Lease>(&key(), &bytes).unwrap(),
            Lease {
                holder: "w1".into()
            }
        );
    }

    #[test]
    fn older_schema_is_read_newer_is_refused() {
        let old = br#"{"schema":1,"holder":"w"}"#;
        assert!(decode::<Lease>(&key(), old).is_ok());
        let new = br#"{"schema":3,"holder":"w"}"#;
        let err = decode::<Lease>(&key(), new).unwrap_err();
        assert!(
            matches!(
                err,
                Error::UnsupportedSchema {
                    found: 3,
                    supported: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn garbage_is_corrupt_with_key() {
        for bytes in [
            &b"\x00\x01garbage"[..],
            b"[1,2]",
            br#"{"holder":"w"}"#,
            br#"{"schema":1}"#,
        ] {
            let err = decode::<Lease>(&key(), bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { key: k, .. } if *k == key()),
                "{err}"
            );
            assert!(err.to_string().contains("leases/a"), "{err}");
        }
    }

    #[test]
    fn non_object_cannot_be_encoded() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Bare(u32);
        impl Record for Bare {
            const SCHEMA: u32 = 1;
        }
        let err = encode(&key(), &Bare(1)).unwrap_err();
        assert!(matches!(err, Error::Codec { .. }), "{err}");
    }
}
