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
#[cfg(feature = "grpc")]
pub mod grpc;
pub mod health;
pub mod runtime;
pub mod snapshots;
pub mod storage;
pub mod transport;

pub use runtime::{
    check_store, explain_start_error, init, start, Application, NodeHandle, NodeStopped, StartError,
};

/// Runs `main` on a multi-threaded tokio runtime of `worker_threads`
/// threads (0: one per core) and makes its result the process's exit
/// status, printing an error as `error: ...`: the `main` of the `bftd`
/// binary and of the testnets' `bftd-byzantine`.
pub fn run_main(
    worker_threads: usize,
    main: impl std::future::Future<Output = Result<(), String>>,
) -> std::process::ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if worker_threads > 0 {
        builder.worker_threads(worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Logs to stderr in `format`, at the level `RUST_LOG` sets (default
/// `info`): what both node binaries do at start.
pub fn init_logging(format: config::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        config::LogFormat::Json => builder.json().init(),
        config::LogFormat::Human => builder.init(),
    }
}
