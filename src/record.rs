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

use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
use serde::de::{DeserializeOwned, DeserializeSeed, Error as _, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

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
/// The bytes are read straight into the record type, the top-level `"schema"`
/// member taken out as it passes. If that fails, or the schema is missing,
/// invalid or newer than `R::SCHEMA`, the bytes are read again the slow way: into
/// a [`serde_json::Value`], then the schema, then the fields. That second read
/// decides, so a newer schema is reported as [`Error::UnsupportedSchema`] even
/// when the fields do not parse either, and a record that repeats a member is
/// read with the last one (as a `Value` keeps it), where the first read stops.
/// Both give the same record wherever the first succeeds: the second costs time
/// only on records that are refused or repeat a member.
///
/// # Errors
/// [`Error::Corrupt`] if the bytes are not a JSON object with a numeric schema
/// field and the record's fields; [`Error::UnsupportedSchema`] if the schema version
/// is newer than `R::SCHEMA`.
pub fn decode<R: Record>(key: &Key, bytes: &[u8]) -> Result<R> {
    match decode_direct::<R>(bytes) {
        Some(record) => Ok(record),
        None => decode_through_value(key, bytes),
    }
}

/// The record in `bytes`, read without an intermediate value, if it reads
/// cleanly and its schema is one this build reads; `None` otherwise, for
/// [`decode_through_value`] to explain.
fn decode_direct<R: Record>(bytes: &[u8]) -> Option<R> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let mut schema = None;
    let record = R::deserialize(SchemaTaken {
        inner: &mut deserializer,
        schema: &mut schema,
        newest: R::SCHEMA,
    })
    .ok()?;
    deserializer.end().ok()?;
    schema.map(|_| record)
}

/// The reading that reports why a record is refused: the whole object as a
/// value first, then its schema, then its fields.
fn decode_through_value<R: Record>(key: &Key, bytes: &[u8]) -> Result<R> {
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
        .as_ref()
        .and_then(schema_number)
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

/// The schema version a `"schema"` member holds, if it is a valid one.
fn schema_number(value: &serde_json::Value) -> Option<u32> {
    value.as_u64().and_then(|v| u32::try_from(v).ok())
}

/// A JSON deserializer for a record whose top-level object gives its
/// `"schema"` member to `schema` and every other member to the record type.
/// Stops at a schema that is invalid, repeated or newer than `newest`.
struct SchemaTaken<'a, 'b> {
    inner: &'a mut serde_json::Deserializer<serde_json::de::SliceRead<'b>>,
    schema: &'a mut Option<u32>,
    newest: u32,
}

impl<'de> Deserializer<'de> for SchemaTaken<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, serde_json::Error> {
        self.inner.deserialize_any(SchemaTakenVisitor {
            inner: visitor,
            schema: self.schema,
            newest: self.newest,
        })
    }

    // Whatever the record type asks for, a record is an object: anything else
    // fails, and the value reading explains why.
    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

struct SchemaTakenVisitor<'a, V> {
    inner: V,
    schema: &'a mut Option<u32>,
    newest: u32,
}

impl<'de, V: Visitor<'de>> Visitor<'de> for SchemaTakenVisitor<'_, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.expecting(f)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.inner.visit_map(SchemaTakenMap {
            inner: map,
            schema: self.schema,
            newest: self.newest,
        })
    }
}

struct SchemaTakenMap<'a, A> {
    inner: A,
    schema: &'a mut Option<u32>,
    newest: u32,
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for SchemaTakenMap<'_, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        while let Some(name) = self.inner.next_key::<FieldName<'de>>()? {
            if name.as_str() != SCHEMA_FIELD {
                return match name {
                    FieldName::Borrowed(name) => {
                        seed.deserialize(BorrowedStrDeserializer::new(name))
                    }
                    FieldName::Owned(name) => seed.deserialize(StringDeserializer::new(name)),
                }
                .map(Some);
            }
            if self.schema.is_some() {
                return Err(A::Error::duplicate_field(SCHEMA_FIELD));
            }
            let value: serde_json::Value = self.inner.next_value()?;
            match schema_number(&value) {
                Some(schema) if schema <= self.newest => *self.schema = Some(schema),
                _ => return Err(A::Error::custom("unsupported schema")),
            }
        }
        Ok(None)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        self.inner.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.inner.size_hint()
    }
}

/// A member name of a JSON object, borrowed from the input unless it has
/// escapes.
pub(crate) enum FieldName<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl FieldName<'_> {
    pub(crate) fn as_str(&self) -> &str {
        match self {
            FieldName::Borrowed(name) => name,
            FieldName::Owned(name) => name,
        }
    }

    pub(crate) fn into_string(self) -> String {
        match self {
            FieldName::Borrowed(name) => name.to_owned(),
            FieldName::Owned(name) => name,
        }
    }
}

impl<'de> Deserialize<'de> for FieldName<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = FieldName<'de>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }

            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                name: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(FieldName::Borrowed(name))
            }

            fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
                Ok(FieldName::Owned(name.to_owned()))
            }

            fn visit_string<E: serde::de::Error>(self, name: String) -> Result<Self::Value, E> {
                Ok(FieldName::Owned(name))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}

/// Implements `Deserialize` for a record type read from a map of its fields by
/// name, as `#[derive(Deserialize)]` with `#[serde(flatten)] extra: Extra` does
/// (unknown members kept, `unknown keep(extra)`, or skipped, `unknown ignore`),
/// without flatten's buffering: a flattened derive holds each member it does not
/// match (and every member of a flattened struct, such as a lock's process
/// identity or a stored event's event) as serde's intermediate content, then
/// reads it a second time. Most of what [`decode`] saves is the `Value`; this
/// saves most where a struct was flattened (a lock's process).
///
/// `required` fields fail with "missing field" when absent, `defaulted` ones
/// take `Default::default()` (an `Option` without `#[serde(default)]` is one of
/// these: derive reads it as `None` too). Each name binds a local of the field's
/// value for the `build` expression; a member given twice fails with
/// "duplicate field", as with derive. Like a flattened derive it reads a map
/// only (`deserialize_map`), never a sequence.
macro_rules! record_deserialize {
    (
        $ty:ty, $expecting:literal,
        required [$($req:ident = $req_name:literal),* $(,)?],
        defaulted [$($def:ident = $def_name:literal),* $(,)?],
        unknown $mode:ident $(($extra:ident))?,
        build $build:expr $(,)?
    ) => {
        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                struct FieldsVisitor;
                impl<'de> ::serde::de::Visitor<'de> for FieldsVisitor {
                    type Value = $ty;

                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str($expecting)
                    }

                    fn visit_map<A: ::serde::de::MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> ::std::result::Result<$ty, A::Error> {
                        use ::serde::de::Error as _;
                        $(let mut $req = ::std::option::Option::None;)*
                        $(let mut $def = ::std::option::Option::None;)*
                        $crate::record::record_deserialize!(@start $mode $($extra)?);
                        while let ::std::option::Option::Some(name) =
                            map.next_key::<$crate::record::FieldName<'de>>()?
                        {
                            match name.as_str() {
                                $($req_name => {
                                    if $req.is_some() {
                                        return ::std::result::Result::Err(A::Error::duplicate_field($req_name));
                                    }
                                    $req = ::std::option::Option::Some(map.next_value()?);
                                })*
                                $($def_name => {
                                    if $def.is_some() {
                                        return ::std::result::Result::Err(A::Error::duplicate_field($def_name));
                                    }
                                    $def = ::std::option::Option::Some(map.next_value()?);
                                })*
                                _ => $crate::record::record_deserialize!(@unknown map name $mode $($extra)?),
                            }
                        }
                        $(let $req = $req.ok_or_else(|| A::Error::missing_field($req_name))?;)*
                        $(let $def = $def.unwrap_or_default();)*
                        ::std::result::Result::Ok($build)
                    }
                }
                deserializer.deserialize_map(FieldsVisitor)
            }
        }
    };
    (@start keep $extra:ident) => {
        let mut $extra = $crate::record::Extra::new();
    };
    (@start ignore) => {};
    (@unknown $map:ident $name:ident keep $extra:ident) => {{
        let value: ::serde_json::Value = $map.next_value()?;
        $extra.insert($name.into_string(), value);
    }};
    (@unknown $map:ident $name:ident ignore) => {{
        $map.next_value::<::serde::de::IgnoredAny>()?;
    }};
}
pub(crate) use record_deserialize;

/// Checks that [`decode`] reads records as the decoding it replaced did: a
/// whole [`serde_json::Value`] first, then the schema, then the fields into a
/// type deriving `Deserialize` with `#[serde(flatten)]`.
#[cfg(test)]
pub(crate) mod same_as_before {
    use proptest::prelude::*;
    use serde::Serialize;
    use serde::de::DeserializeOwned;
    use serde_json::{Map, Value};

    use super::{Record, SCHEMA_FIELD, decode};
    use crate::error::Error;
    use crate::key::Key;

    /// What a decoding gave: the record as JSON, or its error.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Outcome {
        Read(Value),
        Corrupt(String),
        Unsupported(u32),
    }

    /// The decoding this crate did before, into `Old`, which derives what the
    /// record type derived then.
    pub(crate) fn before<Old: DeserializeOwned + Serialize>(schema: u32, bytes: &[u8]) -> Outcome {
        let mut value: Value = match serde_json::from_slice(bytes) {
            Ok(value) => value,
            Err(e) => return Outcome::Corrupt(format!("not JSON: {e}")),
        };
        let Some(object) = value.as_object_mut() else {
            return Outcome::Corrupt("not a JSON object".to_owned());
        };
        let Some(found) = object
            .remove(SCHEMA_FIELD)
            .and_then(|v| v.as_u64())
            .and_then(|v| u32::try_from(v).ok())
        else {
            return Outcome::Corrupt(format!("missing or invalid \"{SCHEMA_FIELD}\" field"));
        };
        if found > schema {
            return Outcome::Unsupported(found);
        }
        match serde_json::from_value::<Old>(value) {
            Ok(old) => Outcome::Read(serde_json::to_value(old).unwrap()),
            Err(e) => Outcome::Corrupt(format!("bad fields: {e}")),
        }
    }

    impl Outcome {
        /// The outcome without the reason of a corrupt record: for types that
        /// flattened a struct, whose fields derive read after the others, so
        /// that of two bad fields it could report the other one.
        pub(crate) fn without_reason(self) -> Self {
            match self {
                Outcome::Corrupt(_) => Outcome::Corrupt(String::new()),
                other => other,
            }
        }
    }

    /// What [`decode`] gives now.
    pub(crate) fn now<R: Record>(bytes: &[u8]) -> Outcome {
        let key = Key::new(["records", "a"]).unwrap();
        match decode::<R>(&key, bytes) {
            Ok(record) => Outcome::Read(serde_json::to_value(record).unwrap()),
            Err(Error::Corrupt {
                key: k,
                path: None,
                reason,
            }) if k == key => Outcome::Corrupt(reason),
            Err(Error::UnsupportedSchema { key: k, found, .. }) if k == key => {
                Outcome::Unsupported(found)
            }
            Err(e) => panic!("an error not about the record: {e}"),
        }
    }

    /// A JSON value of any shape, small.
    pub(crate) fn json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1e6f64..1e6).prop_map(Value::from),
            "[a-z\"\\\\é ]{0,6}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                proptest::collection::btree_map("[a-z]{1,4}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Changes to a valid record's members: members added (under any name,
    /// the record's own among them), changed, repeated, and all of them written
    /// in another order.
    #[derive(Clone, Debug)]
    pub(crate) struct Rearrangement {
        added: Vec<(String, Value)>,
        repeated: Vec<(usize, Option<Value>)>,
        order: Vec<u32>,
    }

    pub(crate) fn rearrangement(
        names: &'static [&'static str],
    ) -> impl Strategy<Value = Rearrangement> {
        let name = prop_oneof![
            3 => "[a-z_]{1,8}",
            2 => proptest::sample::select(names).prop_map(str::to_owned),
            1 => Just(SCHEMA_FIELD.to_owned()),
        ];
        (
            proptest::collection::vec((name, json()), 0..4),
            proptest::collection::vec((any::<usize>(), proptest::option::of(json())), 0..2),
            proptest::collection::vec(any::<u32>(), 40),
        )
            .prop_map(|(added, repeated, order)| Rearrangement {
                added,
                repeated,
                order,
            })
    }

    /// `record`'s members with `change` made, as JSON text.
    pub(crate) fn arrange(record: &Map<String, Value>, change: &Rearrangement) -> Vec<u8> {
        let mut members: Vec<(String, Value)> =
            record.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, value) in &change.added {
            match members.iter_mut().find(|(k, _)| k == name) {
                Some(member) => member.1 = value.clone(),
                None => members.push((name.clone(), value.clone())),
            }
        }
        for (at, value) in &change.repeated {
            if let Some((name, old)) = members.get(at % members.len().max(1)).cloned() {
                members.push((name, value.clone().unwrap_or(old)));
            }
        }
        let mut keyed: Vec<(u32, usize, (String, Value))> = members
            .into_iter()
            .enumerate()
            .map(|(i, m)| (change.order.get(i).copied().unwrap_or(0), i, m))
            .collect();
        keyed.sort_by_key(|(rank, i, _)| (*rank, *i));
        let text: Vec<String> = keyed
            .into_iter()
            .map(|(_, _, (k, v))| format!("{}:{}", serde_json::to_string(&k).unwrap(), v))
            .collect();
        format!("{{{}}}", text.join(",")).into_bytes()
    }
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

#[cfg(test)]
mod direct_tests {
    use proptest::prelude::*;

    use super::same_as_before::{Outcome, arrange, before, now, rearrangement};
    use super::*;

    /// A record read by `record_deserialize!`, keeping unknown fields.
    #[derive(Serialize, Debug, PartialEq)]
    struct Lease {
        holder: String,
        renewals: u32,
        note: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    }
    record_deserialize! {
        Lease, "struct Lease",
        required [holder = "holder"],
        defaulted [renewals = "renewals", note = "note"],
        unknown keep(extra),
        build Lease { holder, renewals, note, extra },
    }
    impl Record for Lease {
        const SCHEMA: u32 = 2;
    }

    /// `Lease` as derive reads it.
    #[derive(Serialize, Deserialize)]
    struct DerivedLease {
        holder: String,
        #[serde(default)]
        renewals: u32,
        note: Option<String>,
        #[serde(flatten)]
        extra: Extra,
    }

    /// A user's type keeping unknown fields with flatten is read directly
    /// too, through its derived `Deserialize`.
    impl Record for DerivedLease {
        const SCHEMA: u32 = 2;
    }

    const NAMES: &[&str] = &["holder", "renewals", "note"];

    fn key() -> Key {
        Key::new(["records", "a"]).unwrap()
    }

    fn lease(bytes: &[u8]) -> Result<Lease> {
        decode::<Lease>(&key(), bytes)
    }

    fn unsupported(found: u32, bytes: &[u8]) {
        let err = lease(bytes).unwrap_err();
        assert!(
            matches!(&err, Error::UnsupportedSchema { key: k, found: f, supported: 2 } if *k == key() && *f == found),
            "{err}"
        );
    }

    #[test]
    fn the_schema_may_come_after_the_fields() {
        let read = lease(br#"{"holder":"w","renewals":3,"schema":2}"#).unwrap();
        assert_eq!((read.holder.as_str(), read.renewals), ("w", 3));
        assert!(read.extra.is_empty());
        unsupported(3, br#"{"holder":"w","schema":3}"#);
        // Named with an escape, it is still the schema.
        assert!(lease(br#"{"holder":"w","sch\u0065ma":1}"#).is_ok());
    }

    #[test]
    fn a_newer_schema_is_reported_before_fields_that_do_not_parse() {
        unsupported(99, br#"{"schema":99,"holder":5}"#);
        unsupported(99, br#"{"holder":5,"renewals":"x","schema":99}"#);
        unsupported(99, br#"{"renewals":-1,"schema":99}"#);
        // An invalid JSON text is not a record at all, whatever its schema.
        let err = lease(br#"{"schema":99,"holder":"#).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    }

    #[test]
    fn missing_or_invalid_schema_and_bad_fields_are_corrupt() {
        for (bytes, reason) in [
            (
                &br#"{"holder":"w"}"#[..],
                "missing or invalid \"schema\" field",
            ),
            (br#"{"holder":"w","schema":"1"}"#, "missing or invalid"),
            (br#"{"holder":"w","schema":1.0}"#, "missing or invalid"),
            (
                br#"{"holder":"w","schema":4294967296}"#,
                "missing or invalid",
            ),
            (br#"{"schema":1}"#, "bad fields: missing field `holder`"),
            (
                br#"{"schema":1,"holder":7}"#,
                "bad fields: invalid type: integer `7`",
            ),
            (br#"[1]"#, "not a JSON object"),
            (
                br#"{"schema":1,"holder":"w"} x"#,
                "not JSON: trailing characters",
            ),
        ] {
            let err = lease(bytes).unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { key: k, path: None, reason: r } if *k == key() && r.contains(reason)),
                "{err}, wanted {reason}"
            );
        }
    }

    #[test]
    fn unknown_fields_are_kept_on_rewrite() {
        let bytes = br#"{"added_later":[1,{"a":null}],"holder":"w","schema":1,"z":"\u00e9"}"#;
        let read = lease(bytes).unwrap();
        assert_eq!(read.extra.len(), 2, "{:?}", read.extra);
        assert!(!read.extra.contains_key(SCHEMA_FIELD));
        let again = encode(&key(), &read).unwrap();
        let text = String::from_utf8(again.clone()).unwrap();
        assert!(text.contains(r#""added_later":[1,{"a":null}]"#), "{text}");
        assert!(text.contains(r#""schema":2"#), "{text}");
        assert_eq!(lease(&again).unwrap(), read);
    }

    /// A member given twice: the last one counts, as when the whole object was
    /// read into a `Value` first (which is how such a record is read).
    #[test]
    fn a_repeated_member_counts_once_the_last_one() {
        let read = lease(br#"{"schema":1,"holder":"a","holder":"b"}"#).unwrap();
        assert_eq!(read.holder, "b");
        let read = lease(br#"{"schema":1,"holder":"a","x":1,"x":2}"#).unwrap();
        assert_eq!(read.extra["x"], 2);
        assert_eq!(
            lease(br#"{"schema":3,"schema":1,"holder":"a"}"#)
                .unwrap()
                .holder,
            "a"
        );
        unsupported(3, br#"{"schema":1,"schema":3,"holder":"a"}"#);
        // The type's own Deserialize, used alone, refuses it as derive does.
        let err = serde_json::from_str::<Lease>(r#"{"holder":"a","holder":"b"}"#).unwrap_err();
        assert!(
            err.to_string().contains("duplicate field `holder`"),
            "{err}"
        );
    }

    proptest! {
        #[test]
        fn decodes_rearranged_records_as_before(
            change in rearrangement(NAMES),
            cut in proptest::option::of(any::<usize>()),
        ) {
            let mut record = serde_json::Map::new();
            record.insert("holder".into(), "w".into());
            record.insert("renewals".into(), 3.into());
            record.insert(SCHEMA_FIELD.into(), 1.into());
            let mut bytes = arrange(&record, &change);
            if let Some(cut) = cut {
                bytes.truncate(cut % (bytes.len() + 1));
            }
            prop_assert_eq!(now::<Lease>(&bytes), before::<DerivedLease>(2, &bytes));
            prop_assert_eq!(now::<DerivedLease>(&bytes), before::<DerivedLease>(2, &bytes));
        }

        #[test]
        fn decodes_arbitrary_bytes_as_before(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let outcome = now::<Lease>(&bytes);
            prop_assert!(!matches!(outcome, Outcome::Read(_)));
            prop_assert_eq!(&outcome, &before::<DerivedLease>(2, &bytes));
            prop_assert_eq!(&outcome, &now::<DerivedLease>(&bytes));
        }
    }
}
