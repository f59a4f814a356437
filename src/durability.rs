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
    /// journal, its directories: once, and rare): a power loss may lose writes,
    /// never the store, which opens again. A `DirStore` batch's journal that a
    /// power loss left empty or cut short is removed by the next open or
    /// writer of the store with this setting, its batch lost (a store opened
    /// with [`Full`](Durability::Full) reports it as damage instead).
    AtomicOnly,
}
