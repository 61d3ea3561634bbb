//! What can go wrong in a testnet command. Every message says what to do.

use std::path::PathBuf;

/// Why a testnet command failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A file or directory operation failed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done ("write", "create", ...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The directory holds no testnet.
    #[error("no testnet in {dir} (no testnet.json there): start one with `bftnet up --dir {dir}`")]
    NoTestnet {
        /// The directory.
        dir: PathBuf,
    },
    /// The state file is unreadable.
    #[error(
        "{path} is not a bftnet state file ({source}); remove the directory or pick another --dir"
    )]
    BadState {
        /// The state file.
        path: PathBuf,
        /// The parser's message.
        source: serde_json::Error,
    },
    /// Every process of the testnet there already runs.
    #[error("the testnet in {dir} already runs ({running}): `bftnet status --dir {dir}` shows it, `bftnet down --dir {dir}` stops it (or pick another --dir)")]
    AlreadyRunning {
        /// The directory.
        dir: PathBuf,
        /// Which processes are up.
        running: String,
    },
    /// `bftnet up` was asked to change a setting while some of the
    /// testnet's processes still run with the recorded one.
    #[error("the testnet in {dir} partly runs ({running}) with its recorded {setting} ({recorded}): `bftnet up --dir {dir}` without {flag} brings back the rest as recorded; to change the {setting}, `bftnet down --dir {dir}` first")]
    ChangeWhileRunning {
        /// The directory.
        dir: PathBuf,
        /// Which processes are up.
        running: String,
        /// What the command line would change ("behaviours", ...).
        setting: &'static str,
        /// Its recorded value.
        recorded: String,
        /// The flag that asked for the change.
        flag: &'static str,
    },
    /// A stopped testnet asked to change a setting its stores were created
    /// with.
    #[error("the testnet in {dir} was created with {setting} {recorded}, and its nodes' stores executed their blocks under it, so it cannot change: `bftnet up --dir {dir}` without {flag} resumes it; `bftnet down --dir {dir} --clean` then `bftnet up` starts over")]
    StoresBindSetting {
        /// The directory.
        dir: PathBuf,
        /// The setting ("request mode").
        setting: &'static str,
        /// Its recorded value.
        recorded: String,
        /// The flag that asked for the change.
        flag: &'static str,
    },
    /// The directory exists and holds something else.
    #[error("{dir} exists, is not empty and holds no bftnet testnet: pick another --dir (bftnet never deletes what it did not create)")]
    NotATestnet {
        /// The directory.
        dir: PathBuf,
    },
    /// The testnet there was made with another size.
    #[error("{dir} holds a {existing}-node testnet, not {asked}: use `bftnet down --clean --dir {dir}` to start over, or another --dir")]
    SizeMismatch {
        /// The directory.
        dir: PathBuf,
        /// Its size.
        existing: usize,
        /// The size asked for.
        asked: usize,
    },
    /// A binary could not be found.
    #[error("cannot find the `{name}` binary (looked at {}); build it with `cargo build -p bftnet -p bftd` (add --release for speed), or point {env} at it", searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    BinaryMissing {
        /// The binary.
        name: &'static str,
        /// The environment variable that overrides the search.
        env: &'static str,
        /// Where it was looked for.
        searched: Vec<PathBuf>,
    },
    /// Building `bftd` with cargo failed.
    #[error("building bftd failed ({command}): {detail}")]
    Build {
        /// The cargo command.
        command: String,
        /// Its exit status and error output.
        detail: String,
    },
    /// A process could not be started.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A node did not become healthy.
    #[error("node {id} {reason}; its log ({log}) ends with:\n{tail}")]
    Unhealthy {
        /// The node.
        id: u16,
        /// What happened ("exited", "not healthy after 30 s").
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The fault proxy stopped.
    #[error("the fault proxy exited; its log ({log}) ends with:\n{tail}")]
    ProxyDied {
        /// Its log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// The fault proxy did not confirm new rules in time.
    #[error("the fault proxy (pid {pid}) did not put the new rules of {dir}/faults.json in force within {timeout_ms} ms, so they may not hold yet; its log ({log}) ends with:\n{tail}\n`bftnet down --dir {dir}` then `bftnet up --dir {dir}` restarts it")]
    RulesNotApplied {
        /// The testnet directory.
        dir: PathBuf,
        /// The proxy's PID.
        pid: u32,
        /// How long the command waited.
        timeout_ms: u128,
        /// The proxy's log file.
        log: PathBuf,
        /// The log's last lines.
        tail: String,
    },
    /// A command-line value is invalid.
    #[error("{flag} {value}: {reason}")]
    BadArgument {
        /// The flag or argument.
        flag: &'static str,
        /// The value given.
        value: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// More byzantine nodes than PBFT tolerates.
    #[error("{count} byzantine nodes exceed f = {f} for n = {n}: PBFT then guarantees nothing. Add --allow-unsafe to watch it break")]
    Unsafe {
        /// Byzantine nodes asked for.
        count: usize,
        /// Faults tolerated.
        f: usize,
        /// Nodes.
        n: usize,
    },
    /// No such node.
    #[error("node {id} does not exist: this testnet has nodes 0..={last}")]
    UnknownNode {
        /// The id given.
        id: u16,
        /// The highest id.
        last: usize,
    },
    /// No honest node answers.
    #[error("no honest node answers (try `bftnet status --dir {dir}`; `bftnet up --dir {dir}` brings back every node that is down)")]
    NoHealthyNode {
        /// The directory.
        dir: PathBuf,
    },
    /// A client operation failed.
    #[error("node {id}: {source}")]
    Client {
        /// The node.
        id: u16,
        /// Why.
        source: bftd::client::ClientError,
    },
    /// A generated configuration does not load (boxed: it is large and
    /// rare).
    #[error("{0}")]
    Config(Box<bftd::config::LoadError>),
    /// A benchmark's measurement window saw no committed request.
    #[error("nothing committed during the {window_seconds:.1} s measurement window ({failures}); the nodes' logs end with:\n{tails}")]
    NothingCommitted {
        /// The window's length.
        window_seconds: f64,
        /// What happened to the requests instead.
        failures: String,
        /// Each node's last log lines.
        tails: String,
    },
    /// A node's store could not be created.
    #[error("cannot create the store of node {id}: {source}")]
    Store {
        /// The node.
        id: u16,
        /// Why (boxed: it is large and rare).
        source: Box<bftd::StartError>,
    },
    /// A scenario file is invalid.
    #[error("{}: {message}", match line { Some(line) => format!("{}:{line}", path.display()), None => path.display().to_string() })]
    Scenario {
        /// The file.
        path: PathBuf,
        /// The line at fault, when known.
        line: Option<usize>,
        /// What is wrong and what would be right.
        message: String,
    },
    /// Ctrl-C (or SIGTERM/SIGHUP) stopped the command.
    #[error("interrupted: every process this command started has been stopped")]
    Interrupted,
    /// `bftnet attack` itself (the attacker and the honest load) grew past
    /// its memory limit; the attack was abandoned.
    #[error("bftnet attack itself uses {megabytes:.0} MB, above its {limit:.0} MB limit: attack abandoned, its cluster stopped")]
    AttackerMemory {
        /// Resident megabytes.
        megabytes: f64,
        /// The limit.
        limit: f64,
    },
    /// The async runtime could not start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl From<bftd::config::LoadError> for NetError {
    fn from(error: bftd::config::LoadError) -> NetError {
        NetError::Config(Box::new(error))
    }
}

impl NetError {
    /// An `Io` error.
    pub fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> NetError {
        let path = path.into();
        move |source| NetError::Io {
            action,
            path,
            source,
        }
    }
}
