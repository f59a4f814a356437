//! The parts of `cargo bench -p jobsafe-bench --bench compare`, each a small
//! module: what to run ([`options`]), how each implementation does each
//! operation ([`cell`]), timing threads ([`run`]), the main table and its
//! targets ([`table`], [`targets`]), the sections beside it ([`flat`],
//! [`reopen`], [`compaction`]), and the chart ([`chart`]).

pub(crate) mod cell;
pub(crate) mod chart;
pub(crate) mod compaction;
pub(crate) mod flat;
pub(crate) mod options;
pub(crate) mod reopen;
pub(crate) mod run;
pub(crate) mod table;
pub(crate) mod targets;
