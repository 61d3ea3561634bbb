//! bftd: a Byzantine fault-tolerant ordering daemon.
//!
//! - [`runtime::start`] runs a node (the `bftd run` command, or embedded in
//!   your program with an [`runtime::Application`] receiving committed
//!   blocks);
//! - [`client::Client`] submits transactions to a cluster and verifies the
//!   receipts, and subscribes to committed blocks, verifying each
//!   certificate;
//! - [`config`] reads node and cluster files.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod client;
pub mod client_api;
pub mod config;
pub mod runtime;
pub mod storage;
pub mod transport;

pub use runtime::{init, start, Application, NodeHandle, NodeStopped, StartError};
