//! `bftd`: the Byzantine fault-tolerant ordering daemon and its client
//! commands.

use bftd::client::Client;
use bftd::config::{self, Cluster, NodeConfig};
use bftd_crypto::KeyPair;
use bftd_protocol::{NodeId, SeqNum};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// bftd orders transactions with PBFT across n = 3f + 1 nodes and keeps
/// ordering correctly while up to f of them lie, crash or stall. Every block
/// comes with a commit certificate (2f + 1 signatures) that anyone holding
/// the cluster file can verify.
///
/// Start here: `bftnet up` runs a local 4-node testnet. To deploy, run
/// `bftd keygen` on each machine, list every node's id, address and public
/// key in a cluster file, create each node's store once with `bftd init
/// --config`, and start each node with `bftd run --config`.
#[derive(Parser, Debug)]
#[command(name = "bftd", version, about, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create a new Ed25519 identity key (node or client) and print its
    /// public key for the cluster file.
    Keygen {
        /// Where to write the secret key (created readable only by you; never
        /// overwritten).
        #[arg(long)]
        out: PathBuf,
    },
    /// Create a new node's store, once, before its first `run`.
    ///
    /// The store remembers what the node signed; `run` refuses to start
    /// without one, so a data directory that is missing or not mounted
    /// never silently becomes a new, empty node. Refuses if a store exists.
    Init {
        /// The node config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a stopped node's store: read everything back and verify it.
    ///
    /// Verifies redb's page checksums, every batch record's checksum in the
    /// batch log, every block's commit certificate against the cluster file
    /// and its link to the block below, and reads the state a restart
    /// recovers. Prints what the store holds and exits 0, or names the
    /// first damage and exits 1. Use it on a backup before relying on it,
    /// or after a disk error. The node must be stopped (a running node
    /// holds its store's lock).
    Check {
        /// The node config file (TOML).
        #[arg(long)]
        config: PathBuf,
    },
    /// Run a node.
    ///
    /// The node file names the node's id, key file, cluster file and data
    /// directory (see the README for a commented example). The node
    /// recovers from its store, so restarting with the same config resumes
    /// where it stopped and catches up from its peers. The store must exist
    /// (`bftd init`, or `--init`).
    Run {
        /// The node config file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Create the store first if there is none (as `bftd init`): for a
        /// node's first start only; never leave it in a service definition,
        /// or an unmounted data directory becomes a new, empty node.
        #[arg(long)]
        init: bool,
    },
    /// Submit transactions and wait for their verified receipts.
    ///
    /// Prints one line per payload: its height and block hash, proven by the
    /// block's commit certificate and a Merkle proof (a lying node cannot
    /// fake them). A request `--node` leaves unanswered for 5 s goes to
    /// every node (the same request: it is ordered at most once), and the
    /// first receipt that verifies is taken; after 30 s the error says why
    /// nothing committed, if a node knows (no quorum).
    Submit {
        #[command(flatten)]
        target: Target,
        /// The client key (from `bftd keygen`); a fresh key if absent.
        #[arg(long)]
        key: Option<PathBuf>,
        /// The payloads (one transaction each).
        #[arg(required = true)]
        payloads: Vec<String>,
        /// Print one JSON object per receipt (payload in base64, digests
        /// in hex) instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Print committed blocks as they commit, verifying each certificate and
    /// the hash chain.
    ///
    /// If the node goes away (it restarts, crashes, or closes the
    /// connection), tail says so on stderr, reconnects as soon as the node
    /// answers and goes on from the next height: the first block after must
    /// chain to the last one printed. Ctrl-C stops it.
    Tail {
        #[command(flatten)]
        target: Target,
        /// First height.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Stop after this many blocks.
        #[arg(long)]
        count: Option<u64>,
        /// Print one JSON object per block, with every field: header, hash,
        /// certificate votes, and each request (client, id, valid_until,
        /// payload in base64, signature, whether it executes). For
        /// pipelines and other languages: `bftd tail --json | jq .height`.
        #[arg(long)]
        json: bool,
    },
    /// Ask a node's /healthz and exit 0 if it answers 200 (running, with
    /// a quorum of peers in touch), 1 otherwise, printing its answer.
    ///
    /// For container health checks and supervisors where there is no
    /// curl: `bftd health --config node.toml` asks the node file's
    /// `metrics` address (a node listening on every interface, 0.0.0.0, is
    /// asked on loopback); `--address` asks another. Gives up after 3 s.
    Health {
        /// The node file whose `metrics` address to ask.
        #[arg(long, required_unless_present = "address")]
        config: Option<PathBuf>,
        /// The metrics address to ask instead (HOST:PORT).
        #[arg(long, conflicts_with = "config")]
        address: Option<std::net::SocketAddr>,
    },
    /// Show a node's view, height and pending requests.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Writes one line to standard output; `false` once the reader has gone
/// (`bftd tail | head -1`): the command then ends quietly, as a pipeline
/// expects, instead of panicking on the broken pipe as `println!` would.
fn print_line(line: &str) -> Result<bool, String> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(format!("cannot write to standard output: {error}")),
    }
}

#[derive(clap::Args, Debug)]
struct Target {
    /// The cluster file (node ids, addresses, public keys) [default:
    /// $BFTD_CLUSTER, else ./cluster.toml if present (a node directory),
    /// else testnet-data/cluster.toml].
    #[arg(long)]
    cluster: Option<PathBuf>,
    /// Which node to talk to.
    #[arg(long, default_value_t = 0)]
    node: u16,
}

/// mimalloc instead of the system allocator: at saturation glibc's malloc
/// and free were a fifth of the node's CPU (docs/design-notes.md, "Allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `run` reads its node file before the runtime starts: the file says
    // how many threads the runtime has.
    if let Command::Run { config: file, init } = cli.command {
        return match NodeConfig::load(&file) {
            Ok(config) => {
                bftd::run_main(config.runtime.worker_threads, run_node(file, config, init))
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        };
    }
    bftd::run_main(0, run(cli))
}

/// `bftd run`: starts the node and runs it until it stops or is told to.
async fn run_node(file: PathBuf, config: NodeConfig, init: bool) -> Result<(), String> {
    bftd::init_logging(config.log_format);
    let explain = |e: bftd::StartError| bftd::explain_start_error(&file, &config, &e);
    if init && !bftd::runtime::store_path(&config).exists() {
        let path = bftd::init(&config).map_err(explain)?;
        tracing::info!(store = %path.display(), "created a new store (--init)");
    }
    let mut node = bftd::start(config.clone(), None).await.map_err(explain)?;
    tokio::select! {
        result = node.wait() => result.map_err(|e| format!("node stopped: {e}"))?,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            node.shutdown().await;
        }
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Keygen { out } => {
            let key = KeyPair::generate(&mut rand::rngs::OsRng);
            config::write_key(&out, &key).map_err(|error| {
                if error.kind() == std::io::ErrorKind::AlreadyExists {
                    format!("{} already exists; bftd never overwrites a key (delete it first if you mean it)", out.display())
                } else {
                    format!("cannot write {}: {error}", out.display())
                }
            })?;
            println!("{}", key.public());
            eprintln!(
                "secret key written to {}; put the public key above in the cluster file",
                out.display()
            );
            Ok(())
        }
        Command::Init { config: file } => {
            let config = NodeConfig::load(&file).map_err(|e| e.to_string())?;
            let path =
                bftd::init(&config).map_err(|e| bftd::explain_start_error(&file, &config, &e))?;
            eprintln!(
                "created the store of node {} at {}; start it with `bftd run`",
                config.id.0,
                path.display()
            );
            Ok(())
        }
        Command::Check { config: file } => {
            let config = NodeConfig::load(&file).map_err(|e| e.to_string())?;
            let path = bftd::runtime::store_path(&config);
            let check = bftd::check_store(&config)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            let gaps = match check.gaps.as_slice() {
                [] => String::new(),
                gaps => format!(
                    "; missing heights (the node was fetching them): {}",
                    gaps.iter()
                        .map(|(from, to)| format!("{}..={}", from.0, to.0))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            println!(
                "store {} of node {}: OK\n  {} blocks, heights {}..={}, {} requests{gaps}\n  every certificate and the hash chain verify; every page and record checksum matches\n  {} batches accepted since the last stable checkpoint; redb file {:.2} MB, batch log {:.2} MB in {} segment{}",
                path.display(),
                config.id.0,
                check.blocks,
                check.first_height.0,
                check.last_height.0,
                check.requests,
                check.pending_batches,
                check.redb_bytes as f64 / 1e6,
                check.log_bytes as f64 / 1e6,
                check.segments,
                if check.segments == 1 { "" } else { "s" },
            );
            Ok(())
        }
        Command::Run { .. } => unreachable!("main runs `run` itself"),
        Command::Submit {
            target,
            key,
            payloads,
            json,
        } => {
            let client = connect(&target, key).await?;
            for payload in payloads {
                let committed = client
                    .submit(payload.clone().into_bytes())
                    .await
                    .map_err(|e| e.to_string())?;
                let line = if json {
                    bftd::client::json::receipt(payload.as_bytes(), &committed).to_string()
                } else {
                    format!(
                        "{payload}\theight {}\tbatch {}",
                        committed.height.0, committed.batch_digest
                    )
                };
                if !print_line(&line)? {
                    return Ok(());
                }
            }
            Ok(())
        }
        Command::Tail {
            target,
            from,
            count,
            json,
        } => {
            let mut client = connect(&target, None).await?;
            let mut blocks = client
                .subscribe(SeqNum(from))
                .await
                .map_err(|e| e.to_string())?;
            let mut seen = 0u64;
            while count.is_none_or(|count| seen < count) {
                let Some(block) = blocks.next().await.map_err(|e| e.to_string())? else {
                    // The node went away (a restart, a crash, its idle
                    // timeout): follow it back, still checking the chain.
                    eprintln!(
                        "node {} closed the connection before height {}: reconnecting (Ctrl-C stops)",
                        target.node,
                        blocks.next_height().0
                    );
                    follow_again(&target, &mut client, &mut blocks).await;
                    continue;
                };
                seen += 1;
                let certificate = &block.block.certificate;
                let line = if json {
                    bftd::client::json::block(&block).to_string()
                } else {
                    format!(
                    "height {}\tblock {:#}\tprev {:#}\t{} requests ({} duplicates)\tview {}\tcertificate {} signatures verified",
                    block.block.height().0,
                    block.hash,
                    block.block.block.prev_hash,
                    block.block.block.batch.requests.len(),
                    block.duplicates.len(),
                    certificate.value.view.0,
                    certificate.votes.len(),
                    )
                };
                if !print_line(&line)? {
                    return Ok(());
                }
            }
            Ok(())
        }
        Command::Health { config, address } => {
            let address = match (address, config) {
                (Some(address), _) => address,
                (None, Some(path)) => health_address(&path)?,
                (None, None) => return Err("give --config or --address".into()),
            };
            let (ok, answer) = bftd::health::check(address, std::time::Duration::from_secs(3))
                .map_err(|e| format!("no answer from http://{address}/healthz: {e}"))?;
            println!("{}", answer.trim_end());
            if ok {
                Ok(())
            } else {
                Err(format!("http://{address}/healthz: not healthy"))
            }
        }
        Command::Status { target, json } => {
            let client = connect(&target, None).await?;
            let status = client.status().await.map_err(|e| e.to_string())?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?
                );
            } else {
                println!(
                    "node {} of {} (f = {}): height {}, view {}{}, primary {}, stable checkpoint {}, {} pending, mode {:?}, {}{}",
                    status.id, status.n, status.f, status.height, status.view,
                    if status.in_view_change { " (changing)" } else { "" },
                    status.primary, status.stable_checkpoint, status.pending_requests, status.request_mode,
                    if status.has_quorum() {
                        format!("{} of {} peers in touch", status.peers_in_touch, status.n.saturating_sub(1))
                    } else {
                        format!("NO QUORUM ({}): nothing commits", status.describe_peers())
                    },
                    status.byzantine.as_deref().map(|b| format!(", BYZANTINE: {b}")).unwrap_or_default(),
                );
                // Retention (design notes §29): only worth a line when it
                // applies.
                if status.first_height > 1 {
                    println!(
                        "blocks kept from height {} ([storage] retain_blocks)",
                        status.first_height
                    );
                }
                if status.needs_snapshot {
                    println!("NEEDS SNAPSHOT: a peer refused the blocks this node needs next (it pruned them); it catches up only from a peer that keeps them (raise or remove retain_blocks there): snapshots are not built yet (design notes §29)");
                }
            }
            Ok(())
        }
    }
}

/// The address `bftd health --config` asks: the node file's `metrics`,
/// on loopback if the node listens on every interface.
fn health_address(path: &std::path::Path) -> Result<std::net::SocketAddr, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let file = config::NodeFile::parse(&text, path).map_err(|e| e.to_string())?;
    let Some(mut address) = file.metrics else {
        return Err(format!(
            "{}: no `metrics` address, so the node serves no /healthz: set metrics = \"HOST:PORT\"",
            path.display()
        ));
    };
    if address.ip().is_unspecified() {
        address.set_ip(match address.ip() {
            std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    Ok(address)
}

/// Replaces `client` with a new connection to `target`'s node and resumes
/// `blocks` on it, once the node answers: `tail` follows a node through its
/// restarts.
async fn follow_again(
    target: &Target,
    client: &mut Client,
    blocks: &mut bftd::client::BlockStream,
) {
    const BACKOFF_MIN: std::time::Duration = std::time::Duration::from_millis(100);
    const BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(5);
    let mut backoff = BACKOFF_MIN;
    let mut said = None;
    loop {
        let attempt = match connect(target, None).await {
            Ok(new) => match new.resubscribe(blocks).await {
                Ok(()) => Ok(new),
                Err(error) => Err(error.to_string()),
            },
            Err(error) => Err(error),
        };
        match attempt {
            Ok(new) => {
                eprintln!(
                    "reconnected to node {}: resuming at height {}",
                    target.node,
                    blocks.next_height().0
                );
                *client = new;
                return;
            }
            Err(error) => {
                // Each different reason once, not once per attempt.
                if said.as_ref() != Some(&error) {
                    eprintln!(
                        "{error}; trying again (at least every {} s)",
                        BACKOFF_MAX.as_secs()
                    );
                    said = Some(error);
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn connect(target: &Target, key: Option<PathBuf>) -> Result<Client, String> {
    let cluster_file = config::find_cluster_file(target.cluster.as_deref());
    let cluster = Cluster::load(&cluster_file).map_err(|e| e.to_string())?;
    let key = match key {
        Some(path) => config::read_key(&path).map_err(|e| e.to_string())?,
        None => KeyPair::generate(&mut rand::rngs::OsRng),
    };
    Client::connect(&cluster, NodeId(target.node), key)
        .await
        .map_err(|e| {
            format!(
                "cannot reach node {} ({}): {e}; try another --node",
                target.node,
                cluster_file.display()
            )
        })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
