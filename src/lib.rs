//! placeholder
mod atomic;
mod clock;
mod error;
mod fencing;
mod key;
pub mod record;
mod store;
pub mod vfs;

pub use atomic::{AtomicWriter, DEFAULT_MODE, Durability, PendingFile, TEMP_SUFFIX, write_atomic};
pub use clock::{Clock, FileClock, ManualClock, SharedClock, SystemClock};
pub use error::{Error, Result};
pub use fencing::FencingToken;
pub use key::{Key, MAX_SEGMENT_LEN, MAX_SEGMENTS, Prefix};
pub use store::mem::MemStore;
pub use store::{Applied, Batch, Entry, Expect, ListPage, Op, Quarantined, Store, Version};
