//! Command-line interface.

use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::NodeId;
use bftnet::sim::{self, ByzantineSpec, Faults, SimConfig, Twins, Workload};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::process::ExitCode;

// Output that a closed pipe (`bftnet sim ... | head`) cannot turn into a
// panic: what is not read is lost, the run's exit status stands.
macro_rules! say {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}
macro_rules! warn {
    ($($arg:tt)*) => {{
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
macro_rules! warn_partial {
    ($($arg:tt)*) => {{
        let _ = write!(std::io::stderr(), $($arg)*);
    }};
}

/// Local bftd testnets: start real clusters, break them, check them; and a
/// deterministic simulator that runs thousands of seeded clusters with lying
/// nodes and a hostile network.
#[derive(Parser, Debug)]
#[command(name = "bftnet", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Simulate whole clusters on a virtual clock and check safety and
    /// liveness.
    ///
    /// Each seed runs n real replicas (real Ed25519, real encoding) over a
    /// seeded network that delays, drops, duplicates, reorders and partitions
    /// messages, crashes and restarts replicas from storage, and runs
    /// byzantine replicas. Then the faults heal and every request must be
    /// executed everywhere. A failing seed prints the command that replays it
    /// exactly.
    ///
    /// Examples:
    ///   bftnet sim --seeds 2000 -n 4 --byzantine random
    ///   bftnet sim --seed 17 -n 7 --byzantine 2:equivocate
    ///   bftnet sim --seeds 300 -n 4 --byzantine 2:collude --allow-unsafe
    ///   bftnet sim --seeds 300 -n 4 --break-new-view
    #[command(verbatim_doc_comment)]
    Sim(SimArgs),
    #[command(flatten)]
    Net(bftnet::net::cli::NetCommand),
}

#[derive(clap::Args, Debug)]
struct SimArgs {
    /// Run this many seeds (0, 1, ...), in parallel.
    #[arg(long, default_value_t = 100, conflicts_with = "seed")]
    seeds: u64,
    /// Run this one seed and print its report and trace hash.
    #[arg(long)]
    seed: Option<u64>,
    /// Replicas: 3f + 1 (4, 7, 10, ...).
    #[arg(short = 'n', default_value_t = 4)]
    n: usize,
    /// Byzantine replicas: BEHAVIOUR (f replicas chosen by the seed),
    /// K:BEHAVIOUR (K replicas), or ID=BEHAVIOUR (that replica; repeatable).
    /// Behaviours: silent, equivocate, bad-signature, wrong-digest, corrupt,
    /// replay, forge-certificate, slow:MS, flood, lie-to-clients,
    /// fake-checkpoint, censor, starve[:MS], omit-prepared, stale-prepared,
    /// worst-new-view, withhold, repropose, random, collude; and `twins`: each byzantine
    /// identity runs as two honest instances with one key, on different
    /// sides of partitions. `random` mixes every behaviour and, in a quarter
    /// of the seeds, twins.
    #[arg(long)]
    byzantine: Vec<String>,
    /// Faults before the heal: all, none, or a list of
    /// drop,duplicate,reorder,partition,crash.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Client requests per run.
    #[arg(long, default_value_t = 40)]
    requests: usize,
    /// What the clients do: `steady` (3 clients, requests valid all run) or
    /// `crowd` (200 clients, 400 requests with a 16-height lifetime that
    /// expire in long faults and are re-signed, and a replayer re-submitting
    /// executed requests).
    #[arg(long, default_value = "steady")]
    workload: String,
    /// Heights a request may be valid for (the cluster's
    /// request_lifetime): 1000 by default, 16 with `--workload crowd`.
    #[arg(long, value_name = "H")]
    request_lifetime: Option<u64>,
    /// Every replica prunes the blocks more than B below its stable
    /// checkpoint ([storage] retain_blocks; B must exceed the request
    /// lifetime), and one replica is down for most of the fault phase: it
    /// comes back to peers that pruned what it needs and jumps past it.
    /// E.g. `--workload crowd --request-lifetime 8 --retain-blocks 10`.
    #[arg(long, value_name = "B")]
    retain_blocks: Option<u64>,
    /// Replicas never jump past pruned history (as with an embedded
    /// application): with --retain-blocks, watch the long-down replica
    /// never catch up and the liveness check fail.
    #[arg(long)]
    no_jump: bool,
    /// How clients' requests are authenticated: `client-signed` (every
    /// replica checks each request's signature) or
    /// `connection-authenticated` (requests carry the client's grant to the
    /// node they enter through, which vouches for them in signed forwards).
    #[arg(long, default_value = "client-signed")]
    request_mode: String,
    /// Allow more than f byzantine replicas (safety can then break: see the
    /// agreement checker fail).
    #[arg(long)]
    allow_unsafe: bool,
    /// Deliberately break the commit rule (2f instead of 2f+1 commits) to
    /// watch the checkers catch it.
    #[arg(long)]
    break_quorum: bool,
    /// Deliberately break the view change's new-view rule (re-propose the
    /// digest prepared in the lowest view instead of the highest) to watch
    /// the agreement checker catch a fork after a view change.
    #[arg(long)]
    break_new_view: bool,
    /// Deliberately break the at-most-once table a replica rebuilds when it
    /// jumps past pruned history (keep only the checkpoint block's
    /// requests), to watch the table check catch it (with --retain-blocks).
    #[arg(long)]
    break_jump_table: bool,
    /// Deliberately make clients believe a node's reply without verifying
    /// its receipt, to watch the receipts checker catch `lie-to-clients`.
    #[arg(long)]
    break_receipts: bool,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print a JSON summary instead of text.
    #[arg(long)]
    json: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(args) => match run_sim(args) {
            Ok(code) => code,
            Err(message) => {
                warn!("error: {message}");
                ExitCode::from(2)
            }
        },
        Command::Net(command) => bftnet::net::cli::run(command),
    }
}

fn parse_byzantine(specs: &[String], n: usize) -> Result<(ByzantineSpec, Twins), String> {
    let f = n.saturating_sub(1) / 3;
    let mut fixed = Vec::new();
    let mut random = None;
    let mut twins = Twins::Never;
    for spec in specs {
        let bad =
            |e: bftd_protocol::byzantine::UnknownBehaviour| format!("--byzantine {spec}: {e}");
        let name = spec.rsplit(['=', ':']).next().unwrap_or_default().trim();
        let spec = &if name == "twins" {
            // Twins run honest code; the behaviour is a placeholder.
            twins = Twins::Always;
            spec.replace("twins", "silent")
        } else {
            if spec.trim() == "random" || spec.ends_with(":random") {
                twins = Twins::Sometimes;
            }
            spec.clone()
        };
        if let Some((id, behaviour)) = spec.split_once('=') {
            let id: u16 = id
                .trim()
                .parse()
                .map_err(|_| format!("--byzantine {spec}: `{id}` is not a replica id"))?;
            if usize::from(id) >= n {
                return Err(format!(
                    "--byzantine {spec}: replica {id} does not exist (n = {n})"
                ));
            }
            fixed.push((NodeId(id), behaviour.parse::<Behaviour>().map_err(bad)?));
        } else if let Some((count, behaviour)) = spec
            .split_once(':')
            .filter(|(c, _)| c.parse::<usize>().is_ok())
        {
            let count: usize = count
                .parse()
                .map_err(|_| format!("--byzantine {spec}: bad count"))?;
            random = Some((count, behaviour.parse::<Behaviour>().map_err(bad)?));
        } else {
            random = Some((f, spec.parse::<Behaviour>().map_err(bad)?));
        }
    }
    match (random, fixed.is_empty()) {
        (Some(_), false) => Err(
            "use either ID=BEHAVIOUR specs or one BEHAVIOUR / K:BEHAVIOUR spec, not both".into(),
        ),
        (Some((count, behaviour)), true) => Ok((ByzantineSpec::Random { count, behaviour }, twins)),
        (None, _) => Ok((ByzantineSpec::Fixed(fixed), twins)),
    }
}

fn byzantine_count(spec: &ByzantineSpec) -> usize {
    match spec {
        ByzantineSpec::Random { count, .. } => *count,
        ByzantineSpec::Fixed(list) => list.len(),
    }
}

fn run_sim(args: SimArgs) -> Result<ExitCode, String> {
    if args.n == 0 || args.n % 3 != 1 {
        return Err(format!(
            "-n must be 3f + 1 (1, 4, 7, 10, ...); got {}",
            args.n
        ));
    }
    let f = (args.n - 1) / 3;
    let (byzantine, twins) = parse_byzantine(&args.byzantine, args.n)?;
    let count = byzantine_count(&byzantine);
    if count > args.n {
        return Err(format!(
            "{count} byzantine replicas but only {} replicas",
            args.n
        ));
    }
    if count > f && !args.allow_unsafe {
        return Err(format!(
            "{count} byzantine replicas exceed f = {f} for n = {}: PBFT then guarantees nothing \
             (the log can fork). Add --allow-unsafe to watch it happen.",
            args.n
        ));
    }
    let mut config = SimConfig::new(args.n, 0);
    config.byzantine = byzantine;
    config.twins = twins;
    config.faults = Faults::parse(&args.faults)?;
    if Workload::parse(&args.workload)? == Workload::Crowd {
        config.crowd();
    }
    if args.requests != 40 {
        config.requests = args.requests;
    }
    if let Some(lifetime) = args.request_lifetime {
        config.protocol.request_lifetime = lifetime;
    }
    if let Some(retain) = args.retain_blocks {
        let lifetime = config.protocol.request_lifetime;
        if retain <= lifetime {
            return Err(format!(
                "--retain-blocks {retain} must exceed the request lifetime ({lifetime}): \
                 at-most-once is decided against the last request_lifetime blocks, which a \
                 store must keep (set a shorter one with --request-lifetime)"
            ));
        }
        config.retain_blocks = Some(retain);
    }
    config.protocol.jump_past_pruned = !args.no_jump;
    config.protocol.request_mode = match args.request_mode.as_str() {
        "client-signed" => bftd_protocol::RequestMode::ClientSigned,
        "connection-authenticated" => bftd_protocol::RequestMode::ConnectionAuthenticated,
        other => {
            return Err(format!(
                "--request-mode {other}: use client-signed or connection-authenticated"
            ))
        }
    };
    config.break_quorum = args.break_quorum;
    config.break_new_view = args.break_new_view;
    config.break_jump_table = args.break_jump_table;
    config.break_receipts = args.break_receipts;
    let replay = replay_command(&args);
    if let Some(seed) = args.seed {
        config.seed = seed;
        let report = sim::run(&config);
        if args.json {
            say!(
                "{}",
                serde_json::to_string_pretty(&report).unwrap_or_default()
            );
        } else {
            say!("seed {seed}: height {} ({} commits over honest replicas), {} requests, {} messages, {:.1} s virtual, highest view {}",
                report.height, report.commits, report.requests, report.messages, report.virtual_ms as f64 / 1000.0, report.max_view);
            if !report.byzantine.is_empty() {
                say!("byzantine: {}", report.byzantine.join(", "));
            }
            for line in &report.replicas {
                say!("  {line}");
            }
            say!("trace hash {}", report.trace_hash);
            say!(
                "clients: {} receipts verified, {} replies refused as lies, {} expired requests re-signed",
                report.receipts_verified, report.lies_refused, report.expired_resigned
            );
            match report.worst_time_to_commit_ms {
                Some(worst) => say!(
                    "worst time-to-commit after the heal {worst} ms (bound {} ms)",
                    report.liveness_bound_ms
                ),
                None => say!("liveness bound {} ms", report.liveness_bound_ms),
            }
            match &report.violation {
                None => {
                    say!("ok: agreement, validity, certificates, receipts and liveness hold")
                }
                Some(violation) => say!("FAILED: {violation}"),
            }
        }
        return Ok(if report.violation.is_some() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    use std::io::IsTerminal;
    let quiet = args.json || !std::io::stderr().is_terminal();
    let progress = move |done: u64, total: u64, failures: u64| {
        if !quiet && (done.is_multiple_of(10) || done == total) {
            warn_partial!("\r  {done}/{total} seeds, {failures} failing");
            let _ = std::io::stderr().flush();
        }
    };
    let summary = sim::sweep(&config, 0..args.seeds, threads, &progress);
    if !quiet {
        warn!();
    }
    if args.json {
        say!(
            "{}",
            serde_json::to_string_pretty(&summary).unwrap_or_default()
        );
    } else {
        say!(
            "{} seeds, n = {}: {} agreement, {} validity, {} certificate, {} receipt violations; {} liveness failures; {} other",
            summary.seeds, args.n, summary.agreement_violations, summary.validity_violations,
            summary.certificate_violations, summary.receipt_violations, summary.liveness_failures,
            summary.other_failures
        );
        say!(
            "liveness bound {} ms after the heal; worst time-to-commit seen {} ms (seed {}); clients verified {} receipts and refused {} lies",
            summary.liveness_bound_ms, summary.worst_time_to_commit_ms,
            summary.worst_time_to_commit_seed, summary.receipts_verified, summary.lies_refused
        );
        if let Some(retain) = args.retain_blocks {
            say!(
                "stores keep {retain} blocks below the stable checkpoint: {} jumps past pruned history{}",
                summary.jumps,
                if args.no_jump { " (jumping off: --no-jump)" } else { "" }
            );
        }
        say!(
            "{} commits in {:.1} s ({:.0} commits/s simulated, {:.0} s of virtual time)",
            summary.commits,
            summary.wall_seconds,
            summary.commits_per_second,
            summary.virtual_seconds
        );
    }
    if let Some(first) = &summary.first_failure {
        warn!("first failure: seed {}: {}", first.seed, first.violation);
        warn!("replay it with: {replay} --seed {}", first.seed);
    }
    Ok(if summary.failures() > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn replay_command(args: &SimArgs) -> String {
    let mut command = format!("bftnet sim -n {}", args.n);
    for spec in &args.byzantine {
        command.push_str(&format!(" --byzantine {spec}"));
    }
    if args.faults != "all" {
        command.push_str(&format!(" --faults {}", args.faults));
    }
    if args.requests != 40 {
        command.push_str(&format!(" --requests {}", args.requests));
    }
    if args.request_mode != "client-signed" {
        command.push_str(&format!(" --request-mode {}", args.request_mode));
    }
    if args.workload != "steady" {
        command.push_str(&format!(" --workload {}", args.workload));
    }
    if let Some(lifetime) = args.request_lifetime {
        command.push_str(&format!(" --request-lifetime {lifetime}"));
    }
    if let Some(retain) = args.retain_blocks {
        command.push_str(&format!(" --retain-blocks {retain}"));
    }
    if args.no_jump {
        command.push_str(" --no-jump");
    }
    if args.allow_unsafe {
        command.push_str(" --allow-unsafe");
    }
    if args.break_quorum {
        command.push_str(" --break-quorum");
    }
    if args.break_new_view {
        command.push_str(" --break-new-view");
    }
    if args.break_jump_table {
        command.push_str(" --break-jump-table");
    }
    if args.break_receipts {
        command.push_str(" --break-receipts");
    }
    command
}
