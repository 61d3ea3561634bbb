//! `bftnet scenario`: timelines of faults with expectations, read from
//! TOML files (`scenarios/` ships one per classic failure), run against a
//! fresh real testnet.
//!
//! - [`format`]: what a file says: the testnet, steps, actions,
//!   expectations;
//! - [`parse`]: reading a file, every mistake named with its line;
//! - [`judge`]: how each expectation is judged over its window;
//! - [`run`]: the run itself, from a fresh testnet to the pass/fail table.

pub mod format;
pub mod judge;
pub mod parse;
pub mod run;

pub use format::{Action, Expectation, Scenario, Step, Target, TestnetSpec, When};
pub use run::{Report, RunOptions};
