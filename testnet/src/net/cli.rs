//! The testnet subcommands' command line (flattened into `bftnet`'s).

use super::attack;
use super::bench::{self, BenchOptions, Pacing};
use super::commands::{self, LoadArgs, UpOptions};
use super::layout::ByzantineArg;
use super::NetError;
use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::RequestMode;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// The testnet subcommands.
#[derive(Subcommand, Debug)]
pub enum NetCommand {
    /// Start a local testnet of real bftd processes and watch it.
    ///
    /// Generates keys and configs in --dir, starts a fault proxy and every
    /// node on loopback, waits until all are healthy, and prints where
    /// everything is. Then, unless --detach, it drives a light load (20 tx/s,
    /// so heights move; --idle turns it off) and shows a live status line
    /// (height, tx/s, view, each node's height and behaviour) until Ctrl-C,
    /// which stops every process it started. Data is kept: `bftnet up` on the
    /// same --dir resumes with the same keys and logs, with the behaviours,
    /// delay and loss of the new command line. On a testnet that partly runs
    /// (nodes killed, say every bftd at once while the proxy ran on), `up`
    /// starts only what is down, with the recorded data and behaviours, and
    /// keeps the rules in force; it refuses only when everything runs.
    ///
    /// Attached, it also serves a live dashboard on 127.0.0.1 (its URL is
    /// printed; port 7300, or a free port if that is taken; --ui-port picks
    /// one, --no-ui turns it off): every node up or down, primary or backup,
    /// view, height, behaviour, pending requests and evidence; the links
    /// between nodes with partitions drawn as cut links; commit rate and
    /// latency; a timeline of kills, restarts, partitions, view changes,
    /// evidence, state transfer and checkpoints (also those caused by
    /// `bftnet` commands from other shells: every command appends to
    /// DIR/events.jsonl); and buttons that run the same commands as the
    /// CLI, showing the command line each one runs. `bftnet ui` serves it
    /// for a testnet started with --detach.
    ///
    /// Every node is reached through the fault proxy, so `bftnet partition`,
    /// --delay and --loss need no root. Byzantine nodes run bftd with a
    /// behaviour that rewrites what their honest core sends: silent,
    /// equivocate, bad-signature, wrong-digest, corrupt, replay,
    /// forge-certificate, slow:MS, flood, lie-to-clients, fake-checkpoint;
    /// censor (leaves the first client it sees out of everything), starve[:MS]
    /// (lets one request in per interval: tiny batches, slowly);
    /// view-change liars omit-prepared, stale-prepared, worst-new-view
    /// (as new primary, builds the valid new-view that keeps least), withhold
    /// (answers no fetch); repropose (as primary, adds requests of earlier
    /// batches to its own: duplicates to skip); random; and collude (several nodes fork the log
    /// together; needs more than f of them, hence --allow-unsafe).
    ///
    /// Examples:
    ///   bftnet up                                   4 nodes, light load, live status
    ///   bftnet up -f 2 --byzantine 0=equivocate --byzantine 3=silent
    ///   bftnet up --delay 20 --jitter 5 --loss 1
    ///   bftnet up --detach --idle && bftnet status
    ///   bftnet up --byzantine 0=collude --byzantine 1=collude --allow-unsafe
    ///   bftnet up --ui-port 8080                     dashboard on http://127.0.0.1:8080/
    #[command(verbatim_doc_comment)]
    Up(UpArgs),
    /// Serve the live dashboard of a running testnet (as `bftnet up` does
    /// when attached) until Ctrl-C; the testnet keeps running.
    ///
    /// Examples:
    ///   bftnet up --detach && bftnet ui
    ///   bftnet ui --port 0          any free port
    #[command(verbatim_doc_comment)]
    Ui {
        #[command(flatten)]
        dir: DirArg,
        /// The port on 127.0.0.1 [default: 7300, or a free one if taken].
        #[arg(long)]
        port: Option<u16>,
    },
    /// Generate a cluster for real hosts: keys, the cluster file and one
    /// directory per host, ready to copy.
    ///
    /// Node i gets the i-th address. OUT/nodeI/ holds node.toml, node.key,
    /// a copy of cluster.toml and data/ with the node's store already
    /// created (as `bftd init` does): copy it to host I and run `bftd run
    /// --config node.toml` there. OUT/cluster.toml and OUT/client.key are
    /// for clients. Each node listens on its advertised address, or on
    /// every interface with --bind-all (hosts behind NAT, cloud hosts whose
    /// public address is not on an interface); metrics listen on the same
    /// address at --metrics-port. --compose also writes
    /// OUT/docker-compose.yml running the cluster as containers on a
    /// private network whose subnet is the hosts' /24. See
    /// docs/operating.md.
    ///
    /// Examples:
    ///   bftnet init --hosts 10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4 --out cluster
    ///   bftnet init --hosts-file hosts.txt --bind-all --out cluster
    ///   bftnet init --hosts 172.28.0.10,172.28.0.11,172.28.0.12,172.28.0.13 --compose --out c
    #[command(verbatim_doc_comment)]
    Init(InitArgs),
    /// Show every node: up or down, height, view, primary, behaviour.
    ///
    /// Examples:
    ///   bftnet status
    ///   bftnet status --json | jq '.nodes[].status.height'
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        dir: DirArg,
        /// Print JSON (for scripts).
        #[arg(long)]
        json: bool,
    },
    /// Order transactions and print the height each committed at.
    ///
    /// Submits through the first honest node that answers, with the
    /// testnet's client key, and verifies every receipt (certificate and
    /// Merkle proof) against the cluster's keys.
    ///
    /// Examples:
    ///   bftnet submit hello world
    #[command(verbatim_doc_comment)]
    Submit {
        #[command(flatten)]
        dir: DirArg,
        /// The transactions (one each).
        #[arg(required = true)]
        payloads: Vec<String>,
    },
    /// Offer open-loop load and report throughput and latency.
    ///
    /// Requests leave at --rate whatever the answers, spread over several
    /// clients on every honest running node. Prints a progress line while
    /// running, then the achieved rate and latency p50/p90/p99/max.
    ///
    /// Examples:
    ///   bftnet load --rate 1000 --duration 30s --size 256
    ///   bftnet load --rate 200 --duration 5s --json
    ///   bftnet load --rate 50000 --max-in-flight 1000   (capacity: closed loop)
    #[command(verbatim_doc_comment)]
    Load {
        #[command(flatten)]
        dir: DirArg,
        /// Load any cluster from its cluster file instead of a testnet
        /// directory (every node, e.g. containers or real hosts).
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Requests per second.
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        /// How long: 30s, 500ms, 2m (plain numbers are seconds).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Payload bytes per request.
        #[arg(long, default_value_t = 128)]
        size: usize,
        /// Client connections per honest node.
        #[arg(long, default_value_t = 2)]
        clients: usize,
        /// Most requests waiting for receipts; more are not sent (counted).
        /// A small window with a high --rate measures capacity without
        /// burying the cluster under a backlog.
        #[arg(long, default_value_t = 20_000)]
        max_in_flight: usize,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Measure throughput, latency, CPU and memory of a fresh cluster.
    ///
    /// Starts N real bftd processes in a new temporary directory, on
    /// 127.0.0.1 with free ports. The nodes talk to each other directly: no
    /// fault proxy is in the path (unlike `bftnet up`), so the figures are
    /// the nodes' own. Once all are healthy it offers load through --clients
    /// connections spread round-robin over the honest nodes: --warmup first
    /// (not counted), then --duration measured, then at most 5 s to drain
    /// the last receipts. Then it stops every process it started, by PID
    /// (also on errors and Ctrl-C), and deletes the directory (--keep keeps
    /// it, with the nodes' logs).
    ///
    /// Reported: committed tx/s (verified receipts arriving in the window,
    /// per second); latency p50/p90/p99/max of the requests sent in the
    /// window, from submit to verified receipt; failures; CPU seconds per
    /// 1,000 committed transactions summed over all bftd processes (utime +
    /// stime from /proc); the load generator's own CPU per 1,000, reported
    /// separately; each node's peak and final resident memory; each node's
    /// final height and view (a view above 0 means a view change happened).
    /// --runs K repeats it all on K fresh clusters and adds the medians.
    ///
    /// The load generator runs on the same machine and competes with the
    /// nodes for the cores: on a shared or small machine the figures include
    /// its cost (its CPU is shown so you can tell how much). Measure a
    /// release build (`cargo run --release -p bftnet -- bench ...`): debug
    /// builds are many times slower. The nodes' stores live in the
    /// temporary directory ($TMPDIR, else /tmp), so its disk's fsync latency
    /// is part of the figures; TMPDIR=/dev/shm takes the disk out.
    ///
    /// Examples:
    ///   bftnet bench --rate 50000                capacity: 50,000 tx/s offered, open loop
    ///   bftnet bench --closed-loop --clients 1   latency at low load: one request at a time
    ///   bftnet bench --signed-requests           every request signed, verified by every node
    ///   bftnet bench --runs 3 --json             three fresh clusters and the medians, as JSON
    ///   bftnet bench --rate 5000 --duration 16s --kill-primary 4s
    ///                                            time a view change under load
    ///   bftnet bench --rate 25000 --duration 40s --catch-up
    ///                                            a node 1,000,000 tx behind: how fast it catches up
    ///   bftnet bench --rate 20000 --duration 30m --retain-blocks 1100 --sample-every 60s
    ///                                            a long run with pruning: do memory and disk stay flat?
    #[command(verbatim_doc_comment)]
    Bench(BenchArgs),
    /// Run an attack of issue 10 against a fresh cluster under honest load.
    ///
    /// Starts N real bftd processes on loopback (no fault proxy; without
    /// the last node when the attacker speaks as it, with its key), offers
    /// honest open-loop load at --rate (warm-up, then --duration measured)
    /// unattacked, then starts the attack and offers the same load again.
    /// Samples every node's resident memory throughout, reads the nodes'
    /// /metrics counters before and after the attacked phase, checks the
    /// honest logs at the end (agreement, no request executed twice), and
    /// stops every process it started, by PID (also on errors and Ctrl-C).
    ///
    /// Prints one line per attack: honest committed tx/s and p50/p99
    /// unattacked -> attacked, peak node RSS, counters that changed, and
    /// PASS or FAIL. PASS: attacked rate >= 95% of unattacked, attacked p99
    /// <= max(2 x unattacked p99, --p99-floor-ms), every node's peak RSS <=
    /// --max-rss-mb, the check holds, and nothing the attack watches for
    /// happened (a request executed twice, newcomers refused). Exits 1 if
    /// any attack failed.
    ///
    /// Examples:
    ///   bftnet attack --list
    ///   bftnet attack all
    ///   bftnet attack huge-certificate --rate 1000 --duration 30s
    ///   bftnet attack client-flood --json
    ///   bftnet attack all --bftd /path/to/old/bftd
    #[command(verbatim_doc_comment)]
    Attack(AttackArgs),
    /// SIGKILL a node (fail-stop). Its data stays; `restart` brings it back.
    ///
    /// Examples:
    ///   bftnet kill 0          kill the primary of view 0: watch the view change
    #[command(verbatim_doc_comment)]
    Kill {
        #[command(flatten)]
        dir: DirArg,
        /// The node.
        id: u16,
    },
    /// Restart a node with the same config and data (stopping it first if it
    /// runs), optionally as another behaviour.
    ///
    /// Examples:
    ///   bftnet restart 0
    ///   bftnet restart 2 --byzantine equivocate
    ///   bftnet restart 2 --honest
    #[command(verbatim_doc_comment)]
    Restart {
        #[command(flatten)]
        dir: DirArg,
        /// The node.
        id: u16,
        /// Restart it as this byzantine behaviour.
        #[arg(long, conflicts_with = "honest", value_parser = parse_behaviour)]
        byzantine: Option<Behaviour>,
        /// Restart it honest.
        #[arg(long)]
        honest: bool,
        /// Allow more than f byzantine nodes.
        #[arg(long)]
        allow_unsafe: bool,
        /// How long it may take to become healthy.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Cut links between nodes (at the fault proxy; clients are unaffected).
    ///
    /// SPEC is groups separated by `/` (no datagram crosses between groups,
    /// either way; nodes not named keep every link), or `A,B->C,D` (one way:
    /// datagrams from A and B to C and D are dropped, replies still flow). A
    /// new partition replaces the previous one.
    ///
    /// Examples:
    ///   bftnet partition 0,1/2,3      no side has a quorum: commits stop
    ///   bftnet partition 3/0,1,2      isolate node 3; the others go on
    ///   bftnet partition 0->1,2,3     node 0 can hear but not speak
    #[command(verbatim_doc_comment)]
    Partition {
        #[command(flatten)]
        dir: DirArg,
        /// The partition.
        spec: String,
    },
    /// Remove the partition (delay and loss from `up` stay).
    ///
    /// Examples:
    ///   bftnet heal
    #[command(verbatim_doc_comment)]
    Heal {
        #[command(flatten)]
        dir: DirArg,
    },
    /// Check safety: every honest node's log verifies and they agree.
    ///
    /// Reads every honest node's blocks from height 1 (over the client API,
    /// or from its store if it is down), verifies every commit certificate
    /// with the cluster's public keys and every hash link, checks the logs
    /// are prefixes of one another and that no request executed twice.
    /// Exits 0 with a one-line summary, or 1 with a report naming the first
    /// divergent height and which nodes hold which block.
    ///
    /// Examples:
    ///   bftnet check
    ///   bftnet check --json
    #[command(verbatim_doc_comment)]
    Check {
        #[command(flatten)]
        dir: DirArg,
        /// Check any cluster from its cluster file instead of a testnet
        /// directory: every node's log over the client API (a node that
        /// does not answer fails the check).
        #[arg(long, value_name = "FILE")]
        cluster: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Stop every node and the fault proxy (by PID). Data is kept unless
    /// --clean.
    ///
    /// Examples:
    ///   bftnet down
    ///   bftnet down --clean
    #[command(verbatim_doc_comment)]
    Down {
        #[command(flatten)]
        dir: DirArg,
        /// Also delete the testnet directory.
        #[arg(long)]
        clean: bool,
    },
    /// Run timelines of faults with expectations from scenario files.
    ///
    /// A scenario file (TOML) describes a fresh testnet ([testnet]: nodes
    /// or f, byzantine behaviours, delay/jitter/loss, load) and a timeline
    /// of [[step]]s, each with a time (at = "5s" after the testnet is up,
    /// after = "2s" after the previous step, or at_height = 200), at most
    /// one action (kill, restart, behave, partition, heal, load) and
    /// expectations judged over a window after it (expect = "commits
    /// continue", "no commits", "caught up", "view change", "check ok",
    /// "fork detected"; p99_below = "2s"; view_above = 0).
    /// `scenarios/` in the source tree has one file per classic failure,
    /// each opening with what it teaches. docs/design-notes.md §33 has the
    /// format and how each expectation is judged.
    ///
    /// Examples:
    ///   bftnet scenario list
    ///   bftnet scenario check scenarios/fail-stop-primary.toml
    ///   bftnet scenario run scenarios/fail-stop-primary.toml
    ///   bftnet scenario run scenarios/*.toml          every file, one after another
    ///   bftnet scenario run --keep --dir /tmp/sc scenarios/minority-partition.toml
    ///
    /// A file:
    ///   # Fail-stop: the primary crashes; the others elect a new one.
    ///   [testnet]
    ///   nodes = 4
    ///   load = 100                      # tx/s from the start
    ///
    ///   [[step]]
    ///   at = "3s"
    ///   kill = "primary"                # or a node id, "all", [2, 0]
    ///   expect = ["view change", "commits continue"]
    ///   within = "20s"
    ///
    ///   [[step]]
    ///   after = "1s"
    ///   expect = "check ok"
    ///
    /// Step keys:
    ///   at / after / at_height   when (default: right after the previous step)
    ///   kill, restart            a node id, "primary", "all", "down", or [2, 0]
    ///   as = "equivocate"        with restart (or "honest"); behave = N needs it
    ///   partition = "0,1|2,3"    groups cut apart ("0->1,2,3": one way); heal = true
    ///   load = 500               tx/s from now on; "stop", "start"
    ///   say = "..."              a line for the reader
    ///   expect = [...]           "commits continue", "no commits", "caught up",
    ///                            "view change", "check ok", "fork detected"
    ///   p99_below = "1s"         latency of receipts arriving during `for`
    ///   view_above = 0           honest nodes with a quorum settle above view 0
    ///   within = "20s"           how long what must come true may take
    ///   for = "3s"               how long what must hold is watched
    ///                            ("no commits" waits 1 s first: blocks in flight land)
    ///   min_blocks = 3           what "commits continue" waits for
    ///   nodes = [3]              the nodes height and view expectations look at
    /// Steps run in order; a step starts once the previous one's expectations
    /// are decided (what must come true passes as soon as it does).
    #[command(verbatim_doc_comment)]
    Scenario {
        #[command(subcommand)]
        command: ScenarioCommand,
    },
    /// Delay the node-to-node traffic of any cluster in userspace (no root,
    /// no netem): the fault proxy in front of a cluster file's nodes.
    ///
    /// Binds one UDP port per node on --bind (an address every node can
    /// reach: the Docker bridge's gateway for containers, 127.0.0.1 for
    /// processes) and writes --write-cluster: the cluster file with each
    /// node's address replaced by its relay port. Start the nodes with that
    /// file (their node files keep `listen` at their real address, as
    /// `bftnet init` writes them); clients keep the original file and reach
    /// the nodes directly, undelayed. Every datagram between two nodes
    /// (recognised by its source: a node's real address) is held --delay ms
    /// in each direction: one-way +DELAY, round trip +2 x DELAY, like netem's
    /// delay on each node's egress. Runs until SIGTERM or Ctrl-C.
    ///
    /// Examples:
    ///   bftnet relay --cluster c/cluster.toml --bind 172.31.5.1 --delay 20 --write-cluster relayed.toml
    ///   bftnet relay --cluster cluster.toml --bind 127.0.0.1 --port 17000 --delay 20 --jitter 5 --write-cluster r.toml
    #[command(verbatim_doc_comment)]
    Relay(RelayArgs),
    /// Run the fault proxy of a testnet (started by `bftnet up`).
    #[command(hide = true)]
    Proxy {
        #[command(flatten)]
        dir: DirArg,
    },
}

/// `bftnet scenario`'s subcommands.
#[derive(Subcommand, Debug)]
pub enum ScenarioCommand {
    /// Run scenario files, each against a fresh testnet.
    ///
    /// Starts the file's testnet (real bftd processes behind the fault
    /// proxy, in --dir or a new temporary directory), runs its steps in
    /// order, printing one line per step and per verdict with the time
    /// since the testnet came up, then a pass/fail table. Every process
    /// it started is stopped by PID at the end, also on failure and
    /// Ctrl-C. A passing run's temporary directory is deleted (--keep keeps
    /// it); a failing run's is kept, with the nodes' logs. Exits 0 if every
    /// expectation of every file held, 1 otherwise.
    ///
    /// --ui serves the live dashboard of `bftnet up` for each file's
    /// testnet while it runs (its URL is printed; it ends with the run).
    ///
    /// Examples:
    ///   bftnet scenario run scenarios/fail-stop-primary.toml
    ///   bftnet scenario run scenarios/*.toml
    ///   bftnet scenario run --ui scenarios/majority-partition.toml   watch it in a browser
    #[command(verbatim_doc_comment)]
    Run {
        /// The scenario files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// The testnet directory (absent or empty; one file only).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Keep the testnet directory after a passing run too.
        #[arg(long)]
        keep: bool,
        /// How long nodes may take to become healthy (start, restarts).
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
        /// Serve the dashboard while each scenario runs.
        #[arg(long)]
        ui: bool,
        /// The dashboard's port (implies --ui; default 7300, else a free one).
        #[arg(long, value_name = "PORT")]
        ui_port: Option<u16>,
    },
    /// Check scenario files without running them; print their timelines.
    ///
    /// Examples:
    ///   bftnet scenario check scenarios/*.toml
    #[command(verbatim_doc_comment)]
    Check {
        /// The scenario files.
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
    /// List the scenario files of a directory with what each teaches.
    ///
    /// Examples:
    ///   bftnet scenario list
    ///   bftnet scenario list my-scenarios/
    #[command(verbatim_doc_comment)]
    List {
        /// The directory.
        #[arg(default_value = "scenarios")]
        dir: PathBuf,
    },
}

/// `bftnet relay`'s arguments.
#[derive(Args, Debug)]
pub struct RelayArgs {
    /// The cluster file listing the nodes' real addresses.
    #[arg(long)]
    cluster: PathBuf,
    /// The IP the relay's ports are bound on (reachable by every node).
    #[arg(long)]
    bind: std::net::IpAddr,
    /// Node i's relay port is PORT + i [default: free ports].
    #[arg(long)]
    port: Option<u16>,
    /// Hold every node-to-node datagram this many milliseconds, each
    /// direction.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    delay: u64,
    /// Add up to this much random delay (reorders datagrams).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    jitter: u64,
    /// Drop this percentage of node-to-node datagrams at random.
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    loss: f64,
    /// Where to write the cluster file the nodes use (relay ports).
    #[arg(long)]
    write_cluster: PathBuf,
}

/// `--dir`.
#[derive(Args, Debug)]
pub struct DirArg {
    /// The testnet directory (keys, configs, data, logs). The default is
    /// `testnet-data`, not `testnet`: run from the source tree, `./testnet`
    /// is bftnet's own crate.
    #[arg(long, default_value = "testnet-data")]
    pub dir: PathBuf,
}

/// How requests are authenticated.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// Every node verifies every request's signature.
    ClientSigned,
    /// The client's key is proven in the handshake; requests are unsigned.
    ConnectionAuthenticated,
}

/// `bftnet up`'s options.
#[derive(Args, Debug)]
pub struct UpArgs {
    #[command(flatten)]
    dir: DirArg,
    /// Nodes: 3f + 1 (default 4).
    #[arg(short = 'n', conflicts_with = "f")]
    n: Option<usize>,
    /// Faults to tolerate: n = 3f + 1.
    #[arg(short = 'f')]
    f: Option<usize>,
    /// Make node ID byzantine (repeatable), e.g. 0=equivocate, 3=slow:200.
    #[arg(long, value_name = "ID=BEHAVIOUR")]
    byzantine: Vec<ByzantineArg>,
    /// Allow more than f byzantine nodes (the log can then fork).
    #[arg(long)]
    allow_unsafe: bool,
    /// Delay every node-to-node datagram this many milliseconds [default:
    /// 0; on a testnet that partly runs, unchanged].
    #[arg(long, value_name = "MS")]
    delay: Option<u64>,
    /// Add up to this much random delay (reorders datagrams) [default: 0;
    /// on a testnet that partly runs, unchanged].
    #[arg(long, value_name = "MS")]
    jitter: Option<u64>,
    /// Drop this percentage of node-to-node datagrams at random [default:
    /// 0; on a testnet that partly runs, unchanged].
    #[arg(long, value_name = "PERCENT")]
    loss: Option<f64>,
    /// How requests are authenticated [default: client-signed; on a
    /// testnet that partly runs, unchanged].
    #[arg(long, value_enum)]
    request_mode: Option<ModeArg>,
    /// Return once every node is healthy, leaving the testnet running.
    #[arg(long)]
    detach: bool,
    /// No default load while attached.
    #[arg(long)]
    idle: bool,
    /// How long nodes may take to become healthy.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// No dashboard while attached.
    #[arg(long, conflicts_with = "ui_port")]
    no_ui: bool,
    /// The dashboard's port on 127.0.0.1 (0: any free one) [default: 7300,
    /// or a free one if that is taken].
    #[arg(long, value_name = "PORT")]
    ui_port: Option<u16>,
}

/// `bftnet init`'s options.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// Every node's address, in id order: IP or IP:PORT, comma-separated.
    #[arg(
        long,
        value_name = "ADDRS",
        required_unless_present = "hosts_file",
        conflicts_with = "hosts_file"
    )]
    hosts: Option<String>,
    /// A file of addresses as --hosts, one or more per line (`#` comments).
    #[arg(long, value_name = "FILE")]
    hosts_file: Option<PathBuf>,
    /// The QUIC port of addresses given without one.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Every node's metrics port (/metrics, /status, /healthz, /evidence);
    /// nodes sharing an IP get consecutive ports from it.
    #[arg(long, default_value_t = 9100)]
    metrics_port: u16,
    /// Listen on 0.0.0.0 while advertising the host's address.
    #[arg(long)]
    bind_all: bool,
    /// Also write docker-compose.yml for the cluster on a private network.
    #[arg(long)]
    compose: bool,
    /// The image the compose file runs (override with $BFTD_IMAGE).
    #[arg(long, default_value = "bftd:local", requires = "compose")]
    image: String,
    /// How requests are authenticated.
    #[arg(long, value_enum, default_value = "client-signed")]
    request_mode: ModeArg,
    /// The directory to create (absent or empty).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,
}

/// `bftnet bench`'s options.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Nodes: 3f + 1.
    #[arg(short = 'n', default_value_t = 4)]
    n: usize,
    /// Client connections, spread round-robin over the honest nodes.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Payload bytes per request.
    #[arg(long, value_name = "BYTES", default_value_t = 512)]
    size: usize,
    /// Open loop: requests per second offered in total, whatever the
    /// answers (latency then includes queueing). Requests beyond 20,000
    /// awaiting receipts are not sent, and counted as not sent.
    #[arg(long, value_name = "R", default_value_t = 20_000.0)]
    rate: f64,
    /// Closed loop instead of --rate: each client keeps --window requests
    /// outstanding and sends the next as soon as a receipt arrives.
    #[arg(long, conflicts_with = "rate")]
    closed_loop: bool,
    /// Closed loop: requests each client keeps outstanding.
    #[arg(long, value_name = "W", default_value_t = 1, requires = "closed_loop")]
    window: usize,
    /// How long to measure: 10s, 500ms, 2m (plain numbers are seconds).
    #[arg(long, value_name = "D", default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load before measuring, not counted (connections, batching and
    /// caches settle).
    #[arg(long, value_name = "D", default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// The nodes' max_batch_requests, the most requests in one block
    /// (default: bftd's, 1000).
    #[arg(long, value_name = "B")]
    batch: Option<usize>,
    /// Client-signed requests: every node verifies every request's
    /// signature. Default: connection-authenticated (the client's key is
    /// proven once in the QUIC handshake; requests are unsigned).
    #[arg(long)]
    signed_requests: bool,
    /// Make node ID byzantine (repeatable), as in `bftnet up`, e.g.
    /// 3=slow:200. Clients connect to honest nodes only.
    #[arg(long, value_name = "ID=BEHAVIOUR")]
    byzantine: Vec<ByzantineArg>,
    /// Allow more than f byzantine nodes.
    #[arg(long)]
    allow_unsafe: bool,
    /// Measure K fresh clusters, one after another; report each and the
    /// medians of throughput and latency.
    #[arg(long, value_name = "K", default_value_t = 1)]
    runs: usize,
    /// Keep each run's directory (configs, logs, stores) and print its path.
    #[arg(long)]
    keep: bool,
    /// Print one JSON object (for scripts) instead of the table.
    #[arg(long)]
    json: bool,
    /// SIGKILL the primary this far into the measurement window (e.g. 4s)
    /// and report how long until the survivors were in a new view and a
    /// block committed in it (their /status polled every 20 ms).
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    kill_primary: Option<Duration>,
    /// SIGKILL the last node when the window opens and keep it down; after
    /// the drain, restart it with its data and report how many
    /// transactions it was behind and how fast it caught up (state
    /// transfer from its peers, process start included). E.g. `--rate
    /// 25000 --duration 40s --catch-up`: a node 1,000,000 behind.
    #[arg(long)]
    catch_up: bool,
    /// The nodes' [storage] retain_blocks: each stable checkpoint prunes
    /// the blocks more than B below it (B must exceed the cluster's
    /// request_lifetime, 1024 by default). Default: every block kept.
    #[arg(long, value_name = "B")]
    retain_blocks: Option<u64>,
    /// Every D through the window, print and record the committed rate
    /// and latency of that interval, each node's resident memory and its
    /// store's disk use, and report how much they grew: whether a long run
    /// is flat. E.g. `--rate 20000 --duration 30m --retain-blocks 1100
    /// --sample-every 60s`.
    #[arg(long, value_name = "D", value_parser = parse_duration)]
    sample_every: Option<Duration>,
}

/// `bftnet attack`'s options.
#[derive(Args, Debug)]
pub struct AttackArgs {
    /// The attack (see --list), or `all`.
    #[arg(required_unless_present = "list")]
    name: Option<String>,
    /// List the attacks, one line each, and exit.
    #[arg(long)]
    list: bool,
    /// Honest requests per second (open loop).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Each phase's measured window: 30s, 500ms, 2m.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    duration: Duration,
    /// Each phase's load before its window, not counted.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    warmup: Duration,
    /// Nodes: 3f + 1, at least 4 (the last one is the attacker's).
    #[arg(short = 'n', long = "nodes", default_value_t = 4)]
    n: usize,
    /// Honest client connections, round-robin over the honest nodes.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Honest payload bytes.
    #[arg(long, default_value_t = 128)]
    size: usize,
    /// Connection-authenticated requests (default: client-signed; the
    /// client flood needs client-signed: it submits other keys' requests).
    #[arg(long)]
    connection_authenticated: bool,
    /// The attacked p99 may always reach this, whatever the unattacked one.
    #[arg(long, value_name = "MS", default_value_t = 50.0)]
    p99_floor_ms: f64,
    /// No node's peak resident memory may exceed this.
    #[arg(long, value_name = "MB", default_value_t = 300.0)]
    max_rss_mb: f64,
    /// The bftd binary the nodes run (default: as `bftnet bench` finds it).
    #[arg(long, value_name = "PATH")]
    bftd: Option<PathBuf>,
    /// Keep each cluster's directory (configs, logs, stores).
    #[arg(long)]
    keep: bool,
    /// Print JSON (for scripts) instead of one line per attack.
    #[arg(long)]
    json: bool,
    /// Run each attack K times, each on a fresh cluster, and judge the
    /// medians: the honest rate and p99 by their median over runs (one
    /// run's tail on two shared cores moves several-fold), memory and the
    /// check and every "must never happen" by every run.
    #[arg(long, value_name = "K", default_value_t = 1)]
    runs: usize,
    /// Print the honest p50 and p99 of each second of each phase, to see
    /// when a tail happens (a stall as the attack starts, or one every few
    /// seconds) and not only how long it is.
    #[arg(long)]
    every_second: bool,
}

/// Parses `30s`, `500ms`, `2m`, `1.5s`; a plain number is seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !(c.is_ascii_digit() || c == '.')) {
        Some(index) => text.split_at(index),
        None => (text, "s"),
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration (try 30s, 500ms or 2m)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "unknown unit `{unit}` in `{text}` (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || !(0.0..=1e7).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_behaviour(text: &str) -> Result<Behaviour, String> {
    text.parse().map_err(|e| format!("{e}"))
}

/// Runs a testnet subcommand.
pub fn run(command: NetCommand) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => return fail(&NetError::Runtime(error)),
    };
    match runtime.block_on(dispatch(command)) {
        Ok(code) => code,
        Err(error) => fail(&error),
    }
}

fn fail(error: &NetError) -> ExitCode {
    eprintln!("error: {error}");
    match error {
        // The shell's convention for "stopped by SIGINT".
        NetError::Interrupted => ExitCode::from(130),
        _ => ExitCode::from(2),
    }
}

async fn dispatch(command: NetCommand) -> Result<ExitCode, NetError> {
    match command {
        NetCommand::Up(args) => {
            let n = match (args.n, args.f) {
                (Some(n), _) => Some(n),
                (None, Some(f)) => Some(3 * f + 1),
                (None, None) => None,
            };
            if let Some(loss) = args.loss.filter(|loss| !(0.0..=100.0).contains(loss)) {
                return Err(NetError::BadArgument {
                    flag: "--loss",
                    value: loss.to_string(),
                    reason: "a percentage: 0 to 100".into(),
                });
            }
            let ui = (!args.no_ui).then_some(args.ui_port);
            let options = UpOptions {
                dir: args.dir.dir,
                n,
                byzantine: args.byzantine,
                allow_unsafe: args.allow_unsafe,
                delay_ms: args.delay,
                jitter_ms: args.jitter,
                loss_percent: args.loss,
                request_mode: args.request_mode.map(|mode| match mode {
                    ModeArg::ClientSigned => RequestMode::ClientSigned,
                    ModeArg::ConnectionAuthenticated => RequestMode::ConnectionAuthenticated,
                }),
                detach: args.detach,
                idle: args.idle,
                timeout: args.timeout,
                default_rate: 20.0,
            };
            commands::up_with_ui(ui, options).await?;
        }
        NetCommand::Init(args) => {
            let text = match (&args.hosts, &args.hosts_file) {
                (Some(hosts), _) => hosts.clone(),
                (None, Some(file)) => {
                    std::fs::read_to_string(file).map_err(NetError::io("read", file))?
                }
                (None, None) => String::new(),
            };
            let hosts = super::init::parse_hosts(&text, args.port).map_err(|reason| {
                NetError::BadArgument {
                    flag: if args.hosts.is_some() {
                        "--hosts"
                    } else {
                        "--hosts-file"
                    },
                    value: text.trim().to_string(),
                    reason,
                }
            })?;
            let out = args.out.clone();
            let cluster = super::init::init(&super::init::InitOptions {
                hosts: hosts.clone(),
                metrics_port: args.metrics_port,
                bind_all: args.bind_all,
                compose: args.compose,
                image: args.image,
                request_mode: match args.request_mode {
                    ModeArg::ClientSigned => RequestMode::ClientSigned,
                    ModeArg::ConnectionAuthenticated => RequestMode::ConnectionAuthenticated,
                },
                out: out.clone(),
            })?;
            println!("cluster file: {}", cluster.display());
            for (id, host) in hosts.iter().enumerate() {
                println!(
                    "node {id}: copy {} to {} and run `bftd run --config node.toml` there",
                    super::init::node_dir(&out, id as u16).display(),
                    host.ip()
                );
            }
            if args.compose {
                println!(
                    "compose: {} (build the image with deploy/build-image.sh)",
                    out.join("docker-compose.yml").display()
                );
            }
            println!(
                "clients: bftd submit --cluster {} --key {} hello",
                cluster.display(),
                out.join("client.key").display()
            );
        }
        NetCommand::Ui { dir, port } => super::dashboard::ui(&dir.dir, port).await?,
        NetCommand::Status { dir, json } => commands::status(&dir.dir, json).await?,
        NetCommand::Submit { dir, payloads } => commands::submit(&dir.dir, &payloads).await?,
        NetCommand::Load {
            dir,
            cluster,
            rate,
            duration,
            size,
            clients,
            max_in_flight,
            json,
        } => {
            if !(rate > 0.0 && rate <= 10_000_000.0) {
                return Err(NetError::BadArgument {
                    flag: "--rate",
                    value: rate.to_string(),
                    reason: "requests per second: more than 0".into(),
                });
            }
            if size == 0 {
                return Err(NetError::BadArgument {
                    flag: "--size",
                    value: "0".into(),
                    reason: "payloads need at least 1 byte".into(),
                });
            }
            commands::load(
                &dir.dir,
                cluster.as_deref(),
                LoadArgs {
                    rate,
                    duration,
                    size,
                    clients: clients.max(1),
                    max_in_flight: max_in_flight.max(1),
                    json,
                },
            )
            .await?;
        }
        NetCommand::Bench(args) => {
            bench::bench(BenchOptions {
                n: args.n,
                clients: args.clients,
                size: args.size,
                pacing: if args.closed_loop {
                    Pacing::Closed {
                        window: args.window,
                    }
                } else {
                    Pacing::Open { rate: args.rate }
                },
                duration: args.duration,
                warmup: args.warmup,
                batch: args.batch,
                request_mode: if args.signed_requests {
                    RequestMode::ClientSigned
                } else {
                    RequestMode::ConnectionAuthenticated
                },
                byzantine: args.byzantine,
                allow_unsafe: args.allow_unsafe,
                runs: args.runs,
                keep: args.keep,
                json: args.json,
                kill_primary: args.kill_primary,
                catch_up: args.catch_up,
                retain_blocks: args.retain_blocks,
                sample_every: args.sample_every,
            })
            .await?;
        }
        NetCommand::Attack(args) => {
            if args.list {
                print!("{}", attack::list());
                return Ok(ExitCode::SUCCESS);
            }
            let name = args.name.unwrap_or_default();
            let attacks = match (name.as_str(), attack::Attack::parse(&name)) {
                ("all", _) => attack::Attack::ALL.to_vec(),
                (_, Some(one)) => vec![one],
                (_, None) => {
                    return Err(NetError::BadArgument {
                        flag: "NAME",
                        value: name,
                        reason: "an attack from `bftnet attack --list`, or `all`".into(),
                    })
                }
            };
            let results = attack::attack(attack::AttackOptions {
                attacks,
                rate: args.rate,
                duration: args.duration,
                warmup: args.warmup,
                n: args.n,
                clients: args.clients,
                size: args.size,
                request_mode: if args.connection_authenticated {
                    RequestMode::ConnectionAuthenticated
                } else {
                    RequestMode::ClientSigned
                },
                p99_floor_ms: args.p99_floor_ms,
                max_rss_mb: args.max_rss_mb,
                bftd: args.bftd,
                keep: args.keep,
                json: args.json,
                runs: args.runs,
                every_second: args.every_second,
            })
            .await?;
            if results.iter().any(|result| !result.pass) {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetCommand::Kill { dir, id } => commands::kill(&dir.dir, id).await?,
        NetCommand::Restart {
            dir,
            id,
            byzantine,
            honest,
            allow_unsafe,
            timeout,
        } => {
            let behaviour = match (byzantine, honest) {
                (Some(behaviour), _) => Some(Some(behaviour)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            commands::restart(&dir.dir, id, behaviour, allow_unsafe, timeout).await?;
        }
        NetCommand::Partition { dir, spec } => commands::partition(&dir.dir, &spec).await?,
        NetCommand::Heal { dir } => commands::heal(&dir.dir).await?,
        NetCommand::Check { dir, cluster, json } => {
            let report = commands::check(&dir.dir, cluster.as_deref(), json).await?;
            if !report.ok() {
                return Ok(ExitCode::FAILURE);
            }
        }
        NetCommand::Down { dir, clean } => commands::down(&dir.dir, clean)?,
        NetCommand::Relay(args) => {
            if !(0.0..=100.0).contains(&args.loss) {
                return Err(NetError::BadArgument {
                    flag: "--loss",
                    value: args.loss.to_string(),
                    reason: "a percentage: 0 to 100".into(),
                });
            }
            super::relay::run(&super::relay::RelayOptions {
                cluster: args.cluster,
                bind: args.bind,
                first_port: args.port,
                delay_ms: args.delay,
                jitter_ms: args.jitter,
                loss_percent: args.loss,
                write_cluster: args.write_cluster,
            })
            .await?
        }
        NetCommand::Proxy { dir } => commands::proxy(&dir.dir).await?,
        NetCommand::Scenario { command } => return scenario(command).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn scenario(command: ScenarioCommand) -> Result<ExitCode, NetError> {
    use super::scenario::{run, Scenario};
    match command {
        ScenarioCommand::Run {
            files,
            dir,
            keep,
            timeout,
            ui,
            ui_port,
        } => {
            if dir.is_some() && files.len() > 1 {
                return Err(NetError::BadArgument {
                    flag: "--dir",
                    value: format!("{} files", files.len()),
                    reason: "each scenario needs a fresh testnet: give --dir with one file only"
                        .into(),
                });
            }
            // Every file is checked before anything starts.
            let scenarios = files
                .iter()
                .map(|file| Scenario::load(file))
                .collect::<Result<Vec<_>, _>>()?;
            let options = run::RunOptions {
                dir,
                keep,
                timeout,
                ui: (ui || ui_port.is_some()).then_some(ui_port),
            };
            let mut reports = Vec::new();
            for scenario in &scenarios {
                let report = run::run(scenario, &options).await?;
                run::print(&format!("\n{}", report.table()));
                reports.push(report);
            }
            if reports.len() > 1 {
                run::print("scenarios:");
                for report in &reports {
                    run::print(&format!(
                        "  {:<6} {:<28} {:>6.1} s",
                        if report.pass() { "PASS" } else { "FAIL" },
                        report.name,
                        report.elapsed.as_secs_f64()
                    ));
                }
            }
            if reports.iter().all(run::Report::pass) {
                Ok(ExitCode::SUCCESS)
            } else {
                Ok(ExitCode::FAILURE)
            }
        }
        ScenarioCommand::Check { files } => {
            for file in &files {
                print!("{}", Scenario::load(file)?.plan());
            }
            Ok(ExitCode::SUCCESS)
        }
        ScenarioCommand::List { dir } => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
                .map_err(NetError::io("read", &dir))?
                .flatten()
                .map(|entry| entry.path())
                .filter(|path| path.extension().is_some_and(|ext| ext == "toml"))
                .collect();
            files.sort();
            for file in files {
                match Scenario::load(&file) {
                    Ok(scenario) => println!(
                        "{:<28} {}",
                        file.display(),
                        scenario.teaches.lines().next().unwrap_or_default()
                    ),
                    Err(error) => println!("{:<28} INVALID: {error}", file.display()),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations parse in the units people type; nonsense is refused.
    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }
}
