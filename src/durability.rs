//! What a completed write survives: one setting shared by every durable part.

/// What a completed write survives.
///
/// Every durable part takes it: [`AtomicWriter`](crate::AtomicWriter),
/// [`DirStore`](crate::DirStore), [`LogStore`](crate::LogStore) and `PgStore`.
/// All default to [`Full`](Durability::Full).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Durability {
    /// Survives a process crash and a power loss. Files are flushed before they
    /// are renamed into place and their directories after, and so is every
    /// directory on their way that the writer does not know to be durable,
    /// whoever created it; journals are flushed before a write returns;
    /// PostgreSQL commits synchronously.
    #[default]
    Full,
    /// **Survives a process crash only.** No flush of what is written: readers
    /// still see the old content or the new, never a mix, but after a power loss
    /// or kernel crash a write that returned may be lost, and a file may hold the
    /// old content, the new, or be empty. For caches, tests and benchmarks that
    /// measure everything but the disk.
    ///
    /// Creating a store is flushed all the same (its format marker, its first
    /// journal, its directories: once, and rare), so a power loss never loses
    /// the store itself. It can leave it needing a hand before it opens again,
    /// though: what was written unflushed may land out of order, and a store
    /// cannot tell that from damage. A `DirStore` batch journal left empty or
    /// cut short, or a `LogStore` frame lost before a later one that landed,
    /// is reported by the next open as [`Error::CorruptFile`](crate::Error)
    /// naming the file (and the offset); remove the batch journal, or cut the
    /// journal at that offset, and the store opens with the writes before
    /// it.
    AtomicOnly,
}
