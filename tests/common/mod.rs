//! Helpers shared by the integration tests. Each test binary compiles this module
//! and uses a part of it, hence the `dead_code` allowance; `pub` marks what the
//! tests use, which the crate-level `unreachable_pub` lint cannot see. A helper
//! that cannot do its job fails the test that called it, by panicking.
#![allow(dead_code, unreachable_pub, clippy::panic)]

pub mod child;
