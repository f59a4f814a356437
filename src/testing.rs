//! Test support, with the feature `testing`: a clock shared by the processes of
//! one test, and [`Vfs`](crate::vfs::Vfs) wrappers that count operations or fail
//! chosen ones.
//!
//! [`ManualClock`](crate::ManualClock), which every single-process test of time
//! needs, is always available at the crate root.
//!
//! In a crate's own tests, enable the feature from its dev-dependencies:
//!
//! ```toml
//! [dev-dependencies]
//! jobsafe = { version = "0.2", features = ["testing"] }
//! ```

pub use crate::clock::file::FileClock;
pub use crate::vfs::counting::{Counting, CountingFile, OpCounts};
pub use crate::vfs::faulty::{Fault, Faulty, FaultyFile, Injected, InjectedError, OpEvent, OpKind};
