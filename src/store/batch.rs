//! Multi-key batches for [`Store::apply`](crate::Store::apply).

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::key::Key;
use crate::store::{Entry, Expect, Version};

/// One operation of a [`Batch`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchOp {
    /// Store `value` at `key` if `expect` holds.
    Put {
        /// Where.
        key: Key,
        /// What.
        value: Vec<u8>,
        /// Precondition.
        expect: Expect,
    },
    /// Delete `key` if `expect` holds.
    Delete {
        /// Where.
        key: Key,
        /// Precondition.
        expect: Expect,
    },
}

impl BatchOp {
    /// The key this operation writes.
    pub fn key(&self) -> &Key {
        match self {
            BatchOp::Put { key, .. } | BatchOp::Delete { key, .. } => key,
        }
    }

    /// This operation's precondition.
    pub fn expect(&self) -> Expect {
        match self {
            BatchOp::Put { expect, .. } | BatchOp::Delete { expect, .. } => *expect,
        }
    }
}

/// What one operation of an applied batch did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The put stored its value at this version.
    Put(Version),
    /// The delete removed a record (`true`) or found none (`false`).
    Deleted(bool),
}

/// Puts and deletes applied all or nothing by [`Store::apply`](crate::Store::apply).
///
/// ```
/// use jobsafe::{Batch, Expect, Key, MemStore, Store};
/// use jobsafe::store::Applied;
///
/// let store = MemStore::new();
/// let balance = Key::new(["credits", "lic:abc"])?;
/// let reservation = Key::new(["ledger", "lic:abc", "job-1"])?;
/// let v = store.put(&balance, b"10", Expect::Absent)?;
///
/// // Charge a credit and record the reservation together, or not at all.
/// let batch = Batch::new()
///     .put(&balance, b"9", Expect::Version(v))
///     .put(&reservation, b"{}", Expect::Absent);
/// let applied = store.apply(&batch)?;
/// assert!(matches!(applied[..], [Applied::Put(_), Applied::Put(_)]));
///
/// // The same batch again conflicts on the balance and changes nothing.
/// assert!(store.apply(&batch).unwrap_err().is_conflict());
/// assert_eq!(store.get(&balance)?.unwrap().value, b"9");
/// # Ok::<(), jobsafe::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    ops: Vec<BatchOp>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }

    /// Adds a put.
    pub fn put(mut self, key: &Key, value: impl Into<Vec<u8>>, expect: Expect) -> Self {
        self.ops.push(BatchOp::Put {
            key: key.clone(),
            value: value.into(),
            expect,
        });
        self
    }

    /// Adds a delete.
    pub fn delete(mut self, key: &Key, expect: Expect) -> Self {
        self.ops.push(BatchOp::Delete {
            key: key.clone(),
            expect,
        });
        self
    }

    /// Adds an operation.
    pub fn push(&mut self, op: BatchOp) {
        self.ops.push(op);
    }

    /// The operations in order.
    pub fn ops(&self) -> &[BatchOp] {
        &self.ops
    }

    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether the batch has no operations.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks what every backend requires of a batch, before any I/O: at least
    /// one operation, no key named twice (the outcome of two writes to one key
    /// in one atomic step would depend on their order, which is a bug waiting
    /// to happen), and no value longer than [`Entry::MAX_VALUE_LEN`].
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the problem; [`Error::TooLarge`]
    /// naming the first put whose value is over the limit.
    pub fn validate(&self) -> Result<()> {
        if self.ops.is_empty() {
            return Err(Error::InvalidArgument("empty batch".to_owned()));
        }
        let mut seen = BTreeSet::new();
        for op in &self.ops {
            if !seen.insert(op.key()) {
                return Err(Error::InvalidArgument(format!(
                    "batch names key {} twice",
                    op.key()
                )));
            }
            if let BatchOp::Put { key, value, .. } = op {
                Entry::check_value(key, value)?;
            }
        }
        Ok(())
    }
}
