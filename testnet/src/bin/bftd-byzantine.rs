//! `bftd-byzantine`: a `bftd` node that lies, for testnets only.
//!
//! A test instrument, kept out of what operators run (like CometBFT's
//! "maverick" node): the operator's `bftd` refuses a `byzantine` setting,
//! and no cargo feature changes that. This binary reads the same node file
//! and, for its `byzantine = "BEHAVIOUR"` (and `colluders`), puts the
//! protocol crate's adversary between the replica and the network
//! (`bftd::runtime::Intercept`). `bftnet` runs it for the nodes it makes
//! byzantine (`bftnet up --byzantine ID=BEHAVIOUR`, `bftnet restart`).

use bftd::config::NodeConfig;
use bftd::runtime::{Emission, Intercept};
use bftd_protocol::byzantine::{Adversary, Behaviour};
use bftd_protocol::replica::ClientReply;
use bftd_protocol::{Outgoing, SignedRequest, Verified, WireMessage};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// A lying bftd node for testnets (see `bftnet up --help` for the
/// behaviours). Never run it in a real cluster.
#[derive(Parser, Debug)]
#[command(name = "bftd-byzantine", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a node with the `byzantine` behaviour of its node file (an
    /// honest node if the file has none). The store must exist (`bftd
    /// init`).
    Run {
        /// The node config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
}

/// The protocol crate's adversary as the node's intercept.
#[derive(Debug)]
struct Liar(Adversary);

impl Intercept for Liar {
    fn admit(
        &mut self,
        now: Duration,
        message: Verified<WireMessage>,
    ) -> Option<Verified<WireMessage>> {
        self.0.observe(&message);
        self.0.admit(now, message)
    }

    fn admit_request(&mut self, now: Duration, request: &SignedRequest) -> bool {
        self.0.admit_request(now, request)
    }

    fn tamper(&mut self, sends: Vec<Outgoing>) -> Vec<Emission> {
        self.0
            .tamper(sends)
            .into_iter()
            .map(|emission| Emission {
                delay: emission.delay,
                to: emission.to,
                bytes: emission.bytes,
            })
            .collect()
    }

    fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply> {
        self.0.tamper_replies(replies)
    }
}

/// The adversary the node file asks for, if any.
fn liar(config: &NodeConfig) -> Result<Option<Box<dyn Intercept>>, String> {
    let Some(text) = &config.byzantine else {
        return Ok(None);
    };
    let behaviour: Behaviour = text.parse().map_err(|_| {
        format!("byzantine = \"{text}\": unknown; see `bftnet up --help` for the list")
    })?;
    // Colluders never talk: bftnet writes the list of colluding ids into
    // each colluder's node file, and each derives the same fork from it.
    Ok(Some(Box::new(Liar(Adversary::new(
        behaviour,
        config.id,
        config.key.clone(),
        config.cluster.committee.clone(),
        config.colluders.clone(),
        u64::from(config.id.0),
    )))))
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let Command::Run { config: path } = Cli::parse().command;
    match NodeConfig::load(&path) {
        Ok(config) => bftd::run_main(config.runtime.worker_threads, run(config)),
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: NodeConfig) -> Result<(), String> {
    bftd::init_logging(config.log_format);
    let intercept = liar(&config)?;
    let mut node = bftd::runtime::start_with(config, None, intercept)
        .await
        .map_err(|e| e.to_string())?;
    tokio::select! {
        result = node.wait() => result.map_err(|e| format!("node stopped: {e}"))?,
        _ = bftnet::net::launch::shutdown_signal() => node.shutdown().await,
    }
    Ok(())
}
