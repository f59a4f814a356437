//! The SQL a store runs, written out for its schema and table names.
//!
//! Every write states its precondition in its `WHERE` (or `ON CONFLICT`) clause,
//! so that the check and the change are one statement, serialized by the row
//! lock under `READ COMMITTED`: a concurrent writer's change is seen before the
//! condition is evaluated again. Every write also refuses to touch a row whose
//! checksum does not match, so a damaged record is never overwritten.
//!
//! A write draws its version from the sequence only once it holds the key's
//! advisory lock (`pg_advisory_xact_lock`, held to the end of its transaction):
//! every writer of a key takes it before drawing, so versions are drawn in the
//! order the writes commit, and a write that starts after another ended draws a
//! higher number, re-creation after a delete included. Drawn before the lock, a
//! slow write (a large value) could commit a lower version after a quicker one
//! had committed a higher one. The lock is taken in a subquery that the
//! planner cannot flatten (it calls volatile functions), so the sequence is
//! read after the lock is held.

use sha2::{Digest, Sha256};

/// The server's clock in milliseconds since the Unix epoch.
pub(crate) const NOW_MS: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint";

/// How many leading bytes of a key the ordering index holds: a B-tree entry must
/// fit in a third of a page, and a key may take 16 KiB. Ordering by these bytes
/// and then by the whole key is ordering by the key.
const ORDER_PREFIX: usize = 1024;

/// The key segment whose rows notify (see `Names::notify_migration`): that of
/// a job's record (`<namespace>/job/<id>`), which runners and subscriptions
/// watch. Every change of a job, an event appended included, rewrites its
/// record in the same commit, so the events' own rows need not notify. A key
/// of another kind with such a segment notifies too, needlessly.
pub(crate) const NOTIFIED_SEGMENT: &str = "job";

/// How many leading bytes of a key a notification names: its payload must
/// stay under the server's 8000 bytes, and hex doubles them.
pub(crate) const NOTIFIED_KEY_BYTES: usize = 3000;

/// The row's checksum, computed by the server: version, key length, key, value.
fn sum(row: &str) -> String {
    format!(
        "sha256(int8send({row}version) || int4send(length({row}key)) || {row}key || {row}value)"
    )
}

/// The same checksum computed here, to check rows as they are read.
pub(crate) fn checksum(version: i64, key: &[u8], value: &[u8]) -> Vec<u8> {
    let mut hasher = Sha256::new();
    hasher.update(version.to_be_bytes());
    // A key longer than i32::MAX bytes cannot exist (keys are at most 16 KiB).
    hasher.update(i32::try_from(key.len()).unwrap_or(i32::MAX).to_be_bytes());
    hasher.update(key);
    hasher.update(value);
    hasher.finalize().to_vec()
}

/// The row id of a packed key: short and fixed-size whatever the key's length,
/// so that it can be the primary key (a B-tree entry cannot hold a 16 KiB key).
pub(crate) fn row_id(packed: &[u8]) -> Vec<u8> {
    Sha256::digest(packed).to_vec()
}

/// The advisory lock id of a row id: its first eight bytes. Ids are SHA-256
/// digests, so locks of different keys collide only by chance (and of
/// different stores in one database too), which costs waiting, never order.
pub(crate) fn key_lock(id: &[u8]) -> i64 {
    let mut first = [0u8; 8];
    for (to, from) in first.iter_mut().zip(id) {
        *to = *from;
    }
    i64::from_be_bytes(first)
}

/// Names of one store's objects, quoted.
#[derive(Clone, Debug)]
pub(crate) struct Names {
    pub(crate) schema: String,
    pub(crate) table: String,
}

impl Names {
    fn quoted(&self, suffix: &str) -> String {
        format!("\"{}\".\"{}{suffix}\"", self.schema, self.table)
    }

    /// The records table, quoted.
    pub(crate) fn records(&self) -> String {
        self.quoted("")
    }

    /// The quarantine table, quoted.
    pub(crate) fn quarantine(&self) -> String {
        self.quoted("_quarantine")
    }

    /// The version sequence, quoted.
    pub(crate) fn versions(&self) -> String {
        self.quoted("_versions")
    }

    /// The migrations table of the schema, quoted.
    pub(crate) fn migrations(&self) -> String {
        format!("\"{}\".jobsafe_schema", self.schema)
    }

    /// `schema.table`, for messages.
    pub(crate) fn shown(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// The migrations table, for messages.
    pub(crate) fn migrations_shown(&self) -> String {
        format!("{}.jobsafe_schema", self.schema)
    }

    /// The channel that writes of jobs' records notify on (see
    /// `listen`): `jobsafe:schema.table`, or, when that is longer than the
    /// server's 63-byte names, `jobsafe:` and the first 16 hex digits of the
    /// SHA-256 of `schema.table`. Plain text: schema and table names hold
    /// only lowercase letters, digits and `_`.
    pub(crate) fn channel(&self) -> String {
        let readable = format!("jobsafe:{}", self.shown());
        if readable.len() <= 63 {
            return readable;
        }
        let digest = Sha256::digest(self.shown().as_bytes());
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("jobsafe:{hex}")
    }

    /// The name of the trigger that notifies (and of its function).
    pub(crate) fn notify_trigger(&self) -> String {
        format!("{}_notify", self.table)
    }

    /// The objects the migrations make, each quoted and as messages show it.
    pub(crate) fn objects(&self) -> [(String, String); 3] {
        [
            (self.records(), self.shown()),
            (self.versions(), format!("{}_versions", self.shown())),
            (self.quarantine(), format!("{}_quarantine", self.shown())),
        ]
    }

    /// The migrations that bring a store's objects from nothing to the current
    /// schema, in order; entry `n` makes schema version `n + 1`.
    pub(crate) fn migrations_sql(&self) -> Vec<String> {
        let (t, q, s) = (self.records(), self.quarantine(), self.versions());
        let order = format!("\"{}_order\"", self.table);
        vec![
            format!(
                "CREATE SEQUENCE {s} AS bigint;
             CREATE TABLE {t} (
                 id bytea PRIMARY KEY,
                 key bytea NOT NULL,
                 version bigint NOT NULL CHECK (version > 0),
                 value bytea NOT NULL,
                 sum bytea NOT NULL
             );
             CREATE INDEX {order} ON {t} (substring(key FROM 1 FOR {ORDER_PREFIX}));
             CREATE TABLE {q} (
                 id bigserial PRIMARY KEY,
                 key bytea NOT NULL,
                 version bigint NOT NULL,
                 value bytea NOT NULL,
                 sum bytea NOT NULL,
                 moved_at timestamptz NOT NULL DEFAULT now()
             );"
            ),
            self.notify_migration(),
        ]
    }

    /// Schema version 2: every row of a job's record (a key with a segment
    /// `job`, see [`NOTIFIED_SEGMENT`]) written, changed or deleted notifies the store's [channel](Names::channel) once its
    /// transaction commits (a transaction that rolls back notifies nothing),
    /// whoever writes it: a store's session, or an application's own
    /// transaction. The payload is the writer (the `jobsafe.writer` setting a
    /// store's sessions log in with; empty for any other session), a space,
    /// then `k` and the packed key in hex, or `p` and its first
    /// [`NOTIFIED_KEY_BYTES`] in hex for a longer key (a payload must stay
    /// under 8000 bytes).
    ///
    /// Other rows notify nobody: the server serializes the commits of
    /// transactions that notify (each holds a database-wide lock through its
    /// commit's flush), which would cost every lock and ledger write its
    /// group commit. The trigger's `WHEN` keeps the function from even being
    /// called for them.
    fn notify_migration(&self) -> String {
        let t = self.records();
        let trigger = self.notify_trigger();
        let function = format!("\"{}\".\"{trigger}\"", self.schema);
        let channel = self.channel();
        let most = NOTIFIED_KEY_BYTES;
        // The segment between NULs, in a key with a NUL added at each end.
        // Written with `decode`, whose meaning no string setting changes.
        let notified = |row: &str| {
            let hex: String = NOTIFIED_SEGMENT
                .bytes()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!(
                "position(decode('00{hex}00', 'hex') IN \
                 decode('00', 'hex') || {row}.key || decode('00', 'hex')) > 0"
            )
        };
        format!(
            "CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $notify$
             DECLARE
                 k bytea := CASE WHEN TG_OP = 'DELETE' THEN OLD.key ELSE NEW.key END;
             BEGIN
                 PERFORM pg_notify('{channel}',
                     coalesce(current_setting('jobsafe.writer', true), '') || ' ' ||
                     CASE WHEN length(k) > {most}
                          THEN 'p' || encode(substring(k FROM 1 FOR {most}), 'hex')
                          ELSE 'k' || encode(k, 'hex') END);
                 RETURN NULL;
             END
             $notify$;
             CREATE OR REPLACE TRIGGER \"{trigger}\" AFTER INSERT OR UPDATE ON {t}
                 FOR EACH ROW WHEN ({}) EXECUTE FUNCTION {function}();
             CREATE OR REPLACE TRIGGER \"{trigger}_delete\" AFTER DELETE ON {t}
                 FOR EACH ROW WHEN ({}) EXECUTE FUNCTION {function}();",
            notified("NEW"),
            notified("OLD"),
        )
    }
}

/// Statement texts of one store.
#[derive(Debug)]
pub(crate) struct Sql {
    /// `$1` id → key, version, value, sum.
    pub(crate) get: String,
    /// `$1` id, `$2` key, `$3` value, `$4` key lock → version, if the key was
    /// absent.
    pub(crate) insert: String,
    /// As `insert`, overwriting a healthy row.
    pub(crate) upsert: String,
    /// `$1` id, `$2` value, `$3` expected version, `$4` key lock → version, if
    /// it matched.
    pub(crate) update: String,
    /// `$1` id → version, if a healthy row was deleted.
    pub(crate) delete_any: String,
    /// `$1` id, `$2` expected version → version, if it matched.
    pub(crate) delete_version: String,
    /// `$1` lowest key, `$2` after, `$3` bound (excluded), `$4` limit → keys.
    ///
    /// Not prepared: a generic plan, made without the bounds, estimates that few
    /// rows match and sorts them all, so a page of a long listing would cost the
    /// whole range. Sent with its bounds each time (one round trip, as for a
    /// prepared statement), it is planned as a scan of the ordering index from
    /// the cursor that stops after the page.
    pub(crate) list_range: String,
    /// `$1` after, `$2` limit → keys; planned as `list_range` is.
    pub(crate) list_all: String,
    /// `$1` id → quarantine row id, if a row was moved.
    pub(crate) quarantine: String,
}

impl Sql {
    pub(crate) fn new(names: &Names) -> Self {
        let (t, q, s) = (names.records(), names.quarantine(), names.versions());
        let healthy = format!("t.sum = {}", sum("t."));
        // The key's version, drawn once its lock (`$4`) is held.
        let drawn = |lock: &str| {
            format!(
                "(SELECT nextval('{s}') AS v
                  FROM (SELECT pg_advisory_xact_lock({lock}::bigint)) AS locked) AS n"
            )
        };
        let new_row = format!(
            "INSERT INTO {t} AS t (id, key, version, value, sum)
             SELECT $1::bytea, $2::bytea, n.v, $3::bytea,
                    sha256(int8send(n.v) || int4send(length($2::bytea)) || $2::bytea || $3::bytea)
             FROM {}",
            drawn("$4")
        );
        let prefix = |x: &str| format!("substring({x} FROM 1 FOR {ORDER_PREFIX})");
        let (k, lo, after, hi) = (
            prefix("key"),
            prefix("$1::bytea"),
            prefix("$2::bytea"),
            prefix("$3::bytea"),
        );
        Sql {
            get: format!("SELECT key, version, value, sum FROM {t} WHERE id = $1"),
            insert: format!("{new_row} ON CONFLICT (id) DO NOTHING RETURNING t.version"),
            upsert: format!(
                "{new_row} ON CONFLICT (id) DO UPDATE
                 SET version = excluded.version, value = excluded.value, sum = excluded.sum
                 WHERE {healthy}
                 RETURNING t.version"
            ),
            update: format!(
                "UPDATE {t} AS t SET version = n.v, value = $2::bytea,
                     sum = sha256(int8send(n.v) || int4send(length(t.key)) || t.key || $2::bytea)
                 FROM {}
                 WHERE t.id = $1 AND t.version = $3 AND {healthy}
                 RETURNING t.version",
                drawn("$4")
            ),
            delete_any: format!(
                "DELETE FROM {t} AS t WHERE t.id = $1 AND {healthy} RETURNING t.version"
            ),
            delete_version: format!(
                "DELETE FROM {t} AS t WHERE t.id = $1 AND t.version = $2 AND {healthy}
                 RETURNING t.version"
            ),
            list_range: format!(
                "SELECT key FROM {t}
                 WHERE {k} >= {lo} AND {k} >= {after} AND {k} <= {hi}
                   AND key >= $1 AND key > $2 AND key < $3
                 ORDER BY {k}, key LIMIT $4"
            ),
            list_all: format!(
                "SELECT key FROM {t} WHERE {k} >= {lo} AND key > $1
                 ORDER BY {k}, key LIMIT $2"
            ),
            quarantine: format!(
                "WITH moved AS (DELETE FROM {t} WHERE id = $1 RETURNING key, version, value, sum)
                 INSERT INTO {q} (key, version, value, sum)
                 SELECT key, version, value, sum FROM moved RETURNING id"
            ),
        }
    }
}
