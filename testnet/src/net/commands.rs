//! The testnet subcommands: what `bftnet up`, `down`, `status`, `submit`,
//! `load`, `kill`, `restart`, `partition`, `heal` and `check` do.

use super::binaries::find_bftd;
use super::check::{self, CheckReport};
use super::error::NetError;
use super::events::{self, EventKind};
use super::launch::{
    find_bftnet, kill as kill_pid, log_tail, node_alive, node_marker, output_closed, proxy_alive,
    proxy_marker, say, shutdown_signal, start_node, start_proxy, stop_all, wait_healthy,
};
use super::layout::{
    assign_behaviours, behaviours, check_size, generate, next_generation, read_applied,
    read_faults, unsafe_warning, write_faults, write_node_files, ByzantineArg, Layout, Network,
    State,
};
use super::live::{nodes_list, render_table, snapshot, watch, Liveness};
use super::load::{self, LoadOptions, LoadReport};
use super::proxy::{parse_partition, Faults};
use bftd::client::Client;
use bftd::config::Cluster;
use bftd_protocol::byzantine::Behaviour;
use bftd_protocol::{NodeId, RequestMode};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

/// Grace period for SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Options of `bftnet up`.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The testnet directory.
    pub dir: PathBuf,
    /// Nodes (3f + 1); `None` keeps an existing testnet's size, or 4.
    pub n: Option<usize>,
    /// Byzantine nodes.
    pub byzantine: Vec<ByzantineArg>,
    /// Allow more than f byzantine nodes.
    pub allow_unsafe: bool,
    /// Delay between nodes, each direction (`None`: 0 on a new or stopped
    /// testnet, unchanged on one that partly runs; likewise below).
    pub delay_ms: Option<u64>,
    /// Extra random delay.
    pub jitter_ms: Option<u64>,
    /// Loss between nodes, percent.
    pub loss_percent: Option<f64>,
    /// Request authentication (`None`: client-signed on a new or stopped
    /// testnet, unchanged on one that partly runs).
    pub request_mode: Option<RequestMode>,
    /// Return once healthy, leaving the testnet running.
    pub detach: bool,
    /// No default load while attached.
    pub idle: bool,
    /// How long nodes may take to become healthy.
    pub timeout: Duration,
    /// The default load's rate (tx/s) while attached.
    pub default_rate: f64,
}

/// The `--dir` to repeat in suggested commands ("" for the default).
fn dir_flag(layout: &Layout) -> String {
    let default = Layout::new(Path::new("testnet-data"));
    if layout.dir == default.dir {
        String::new()
    } else {
        format!(" --dir {}", layout.dir.display())
    }
}

/// What `bftnet up` found in its directory.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Found {
    /// No testnet: one was generated.
    Nothing,
    /// A testnet none of whose processes runs.
    Stopped,
    /// A testnet some of whose processes run (a node killed, or every node
    /// killed at once while the proxy ran on): only what is down starts,
    /// with the recorded settings.
    PartlyRunning(Liveness),
}

/// Loads an existing testnet for `up`, or generates a new one.
fn prepare(layout: &Layout, options: &UpOptions, bftd: &Path) -> Result<(State, Found), NetError> {
    match State::load(layout) {
        Ok(mut state) => {
            let liveness = Liveness::of(layout, &state);
            if liveness.everything_runs() {
                return Err(NetError::AlreadyRunning {
                    dir: layout.dir.clone(),
                    running: liveness.describe_running(),
                });
            }
            if let Some(n) = options.n.filter(|&n| n != state.n) {
                return Err(NetError::SizeMismatch {
                    dir: layout.dir.clone(),
                    existing: state.n,
                    asked: n,
                });
            }
            state.bftd = bftd.to_owned();
            if liveness.nothing_runs() {
                return Ok((state, Found::Stopped));
            }
            refuse_changes(layout, &state, options, &liveness)?;
            Ok((state, Found::PartlyRunning(liveness)))
        }
        Err(NetError::NoTestnet { .. }) => {
            let occupied = std::fs::read_dir(&layout.dir).is_ok_and(|entries| {
                entries
                    .flatten()
                    .any(|entry| entry.file_name() != super::layout::LOCK_FILE)
            });
            if occupied {
                return Err(NetError::NotATestnet {
                    dir: layout.dir.clone(),
                });
            }
            let n = options.n.unwrap_or(4);
            check_size(n, " (or give -f F)")?;
            // Refuse bad --byzantine values before writing anything.
            behaviours(n, &options.byzantine, options.allow_unsafe)?;
            let request_mode = options.request_mode.unwrap_or(RequestMode::ClientSigned);
            let state = generate(layout, n, request_mode, Network::Proxied, bftd)?;
            Ok((state, Found::Nothing))
        }
        Err(error) => Err(error),
    }
}

/// Refuses a command line that would change what the still-running
/// processes were started with: the nodes brought back must run the same
/// protocol as those that never stopped.
fn refuse_changes(
    layout: &Layout,
    state: &State,
    options: &UpOptions,
    liveness: &Liveness,
) -> Result<(), NetError> {
    let refuse = |setting: &'static str, recorded: String, flag: &'static str| {
        Err(NetError::ChangeWhileRunning {
            dir: layout.dir.clone(),
            running: liveness.describe_running(),
            setting,
            recorded,
            flag,
        })
    };
    if !options.byzantine.is_empty() {
        let asked = behaviours(state.n, &options.byzantine, options.allow_unsafe)?;
        let recorded: Vec<Option<String>> = state
            .nodes
            .iter()
            .map(|node| node.behaviour.clone())
            .collect();
        let asked: Vec<Option<String>> = asked
            .iter()
            .map(|b| b.as_ref().map(ToString::to_string))
            .collect();
        if asked != recorded {
            let described: Vec<String> = state
                .nodes
                .iter()
                .filter_map(|node| Some(format!("{}={}", node.id, node.behaviour.as_deref()?)))
                .collect();
            let described = if described.is_empty() {
                "every node honest".into()
            } else {
                described.join(" ")
            };
            return refuse("behaviours", described, "--byzantine");
        }
    }
    if options
        .request_mode
        .is_some_and(|mode| mode != state.request_mode)
    {
        let recorded = serde_json::to_value(state.request_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        return refuse("request mode", recorded, "--request-mode");
    }
    let faults = read_faults(layout);
    let network = || {
        let described = faults.describe();
        if described.is_empty() {
            "clean".to_string()
        } else {
            described
        }
    };
    if options
        .delay_ms
        .is_some_and(|delay| delay != faults.delay_ms)
    {
        return refuse("network", network(), "--delay");
    }
    if options
        .jitter_ms
        .is_some_and(|jitter| jitter != faults.jitter_ms)
    {
        return refuse("network", network(), "--jitter");
    }
    if options
        .loss_percent
        .is_some_and(|loss| loss != faults.loss_percent)
    {
        return refuse("network", network(), "--loss");
    }
    Ok(())
}

/// Starts the testnet `options` describe (generated, resumed or brought
/// back), quietly but for a line on standard error, and returns once every
/// node started is healthy: the layout, its state and the processes
/// started (for [`reap`]). `bftnet up` and `bftnet scenario run` share it.
pub(super) async fn start_testnet(
    options: &UpOptions,
) -> Result<(Layout, State, Vec<Child>), NetError> {
    let layout = Layout::new(&options.dir);
    let bftd = find_bftd()?;
    let bftnet = find_bftnet()?;
    let fresh = !layout.dir.exists();
    std::fs::create_dir_all(&layout.dir).map_err(NetError::io("create", &layout.dir))?;
    let lock = layout.lock()?;
    let (mut state, found) = match prepare(&layout, options, &bftd) {
        Ok(prepared) => prepared,
        Err(error) => {
            // Leave no half-made testnet behind.
            if fresh {
                let _ = std::fs::remove_dir_all(&layout.dir);
            }
            return Err(error);
        }
    };
    let mut children = Vec::new();
    let started = match &found {
        Found::Nothing | Found::Stopped => {
            let resumed = found == Found::Stopped;
            start_configured(
                &layout,
                &mut state,
                options,
                resumed,
                &bftnet,
                &mut children,
            )
            .await
        }
        Found::PartlyRunning(liveness) => {
            bring_back(
                &layout,
                &mut state,
                liveness,
                &bftnet,
                &mut children,
                options.timeout,
            )
            .await
        }
    };
    if let Err(error) = started {
        reap(children);
        return Err(error);
    }
    drop(lock);
    events::command(
        &layout,
        EventKind::Up,
        Vec::new(),
        format!("bftnet up{}", dir_flag(&layout)),
        format!("{} nodes (f = {}) running", state.n, state.f),
    );
    Ok((layout, state, children))
}

/// `bftnet up` without the dashboard.
pub async fn up(options: UpOptions) -> Result<(), NetError> {
    up_with_ui(None, options).await
}

/// `bftnet up`; unless `--detach`, with the dashboard if `ui` says on
/// which port (`Some(None)`: the default one, or a free one).
pub async fn up_with_ui(ui: Option<Option<u16>>, options: UpOptions) -> Result<(), NetError> {
    let (layout, state, children) = start_testnet(&options).await?;
    print_summary(&layout, &state, &options);
    if options.detach {
        if ui.is_some() {
            super::launch::say_out(&format!(
                "dashboard: `bftnet ui{}` serves it for this detached testnet",
                dir_flag(&layout)
            ));
        }
        return Ok(());
    }
    let _dashboard = match ui {
        Some(port) => super::dashboard::announce(&layout, port).await,
        None => None,
    };
    let background = if options.idle {
        None
    } else {
        start_default_load(&layout, &state, options.default_rate).await
    };
    // Ctrl-C, or nobody left reading our output (`| tee log` gone).
    let stop = async {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = output_closed() => {}
        }
    };
    watch(&layout, stop).await;
    if let Some(load) = &background {
        load.stop();
    }
    // From here on the output may be a closed pipe: nothing may panic.
    say("stopping the testnet ...");
    let lock = layout.lock()?;
    events::command(
        &layout,
        EventKind::Down,
        Vec::new(),
        format!("bftnet down{}", dir_flag(&layout)),
        "bftnet up stopped the testnet (Ctrl-C)".into(),
    );
    let stopped = stop_testnet(&layout);
    drop(lock);
    reap(children);
    say(&format!(
        "stopped {stopped}. Data kept in {}: `bftnet up{}` resumes it, `bftnet down --clean{}` deletes it.",
        layout.dir.display(),
        dir_flag(&layout),
        dir_flag(&layout)
    ));
    Ok(())
}

/// Starts a new or stopped testnet as the command line says; on failure
/// stops every process again.
async fn start_configured(
    layout: &Layout,
    state: &mut State,
    options: &UpOptions,
    resumed: bool,
    bftnet: &Path,
    children: &mut Vec<Child>,
) -> Result<(), NetError> {
    configure(layout, state, options)?;
    eprintln!(
        "{} a {}-node testnet in {} ...",
        if resumed { "resuming" } else { "starting" },
        state.n,
        layout.dir.display()
    );
    let started = start_all(layout, state, bftnet, children, options.timeout).await;
    if started.is_err() {
        stop_testnet(layout);
    }
    started
}

/// Starts what is down of a testnet that partly runs (the nodes with their
/// recorded data and behaviours, the proxy with the recorded rules); on
/// failure stops only what it started, since the rest ran before.
async fn bring_back(
    layout: &Layout,
    state: &mut State,
    liveness: &Liveness,
    bftnet: &Path,
    children: &mut Vec<Child>,
    timeout: Duration,
) -> Result<(), NetError> {
    state.save(layout)?;
    let proxy = liveness.proxy == Some(false);
    let mut starting = Vec::new();
    match liveness.down.as_slice() {
        [] => {}
        _ if liveness.running.is_empty() => starting.push("every node".to_string()),
        down => starting.push(nodes_list(down)),
    }
    if proxy {
        starting.push("the fault proxy".into());
    }
    eprintln!(
        "bringing back {} of the {}-node testnet in {} with the recorded data, behaviours and network ({} still running) ...",
        starting.join(" and "),
        state.n,
        layout.dir.display(),
        liveness.describe_running(),
    );
    let started = start_processes(
        layout,
        state,
        bftnet,
        children,
        timeout,
        proxy,
        &liveness.down,
    )
    .await;
    if started.is_err() {
        forget_started(layout, &liveness.down, proxy);
    }
    started
}

/// Applies the command line to a new or stopped testnet: behaviours,
/// request mode, node files and the network's rules (no partition).
fn configure(layout: &Layout, state: &mut State, options: &UpOptions) -> Result<(), NetError> {
    assign_behaviours(state, &options.byzantine, options.allow_unsafe)?;
    // The request mode is in the cluster file's consensus settings, which
    // every store is bound to: a testnet whose nodes ever ran keeps it.
    if let Some(mode) = options
        .request_mode
        .filter(|&mode| mode != state.request_mode)
    {
        let ran = (0..state.n as u16).any(|id| layout.data_dir(id).exists());
        if ran {
            return Err(NetError::StoresBindSetting {
                dir: layout.dir.clone(),
                setting: "request mode",
                recorded: serde_json::to_value(state.request_mode)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                flag: "--request-mode",
            });
        }
        state.request_mode = mode;
    }
    if state.byzantine_count() > state.f {
        eprintln!("{}", unsafe_warning(state.byzantine_count(), state.f));
    }
    write_node_files(layout, state)?;
    write_faults(
        layout,
        &Faults {
            delay_ms: options.delay_ms.unwrap_or(0),
            jitter_ms: options.jitter_ms.unwrap_or(0),
            loss_percent: options.loss_percent.unwrap_or(0.0),
            generation: next_generation(layout),
            ..Faults::default()
        },
    )?;
    state.save(layout)
}

/// After a failed partial start: stops the nodes `ids` (and the proxy if
/// `proxy`), which this command started, and forgets their PIDs.
fn forget_started(layout: &Layout, ids: &[u16], proxy: bool) {
    let Ok(mut state) = State::load(layout) else {
        return;
    };
    let mut procs = Vec::new();
    for node in state.nodes.iter_mut().filter(|node| ids.contains(&node.id)) {
        if let Some(pid) = node.pid.take() {
            procs.push((pid, node_marker(layout, node.id)));
        }
    }
    if proxy {
        if let Some(pid) = state.proxy.pid.take() {
            procs.push((pid, proxy_marker(layout)));
        }
    }
    stop_all(&procs, STOP_GRACE);
    let _ = state.save(layout);
}

/// Starts the fault proxy (unless the testnet is direct) and every node,
/// and waits until all nodes are healthy. `children` gets every process
/// started, also on error, for [`reap`].
pub(super) async fn start_all(
    layout: &Layout,
    state: &mut State,
    bftnet: &Path,
    children: &mut Vec<Child>,
    timeout: Duration,
) -> Result<(), NetError> {
    let ids: Vec<u16> = (0..state.n as u16).collect();
    let proxy = state.network == Network::Proxied;
    start_processes(layout, state, bftnet, children, timeout, proxy, &ids).await
}

/// Starts the fault proxy if `proxy`, then the nodes `ids`, and waits until
/// those nodes are healthy. `children` gets every process started, also on
/// error, for [`reap`].
async fn start_processes(
    layout: &Layout,
    state: &mut State,
    bftnet: &Path,
    children: &mut Vec<Child>,
    timeout: Duration,
    proxy: bool,
    ids: &[u16],
) -> Result<(), NetError> {
    if proxy {
        children.push(start_proxy(layout, state, bftnet)?);
    }
    for &id in ids {
        children.push(start_node(layout, state, id)?);
    }
    wait_healthy(layout, state, ids, timeout).await
}

/// Waits for our own children so they leave no zombies.
pub(super) fn reap(children: Vec<Child>) {
    for mut child in children {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }
}

async fn start_default_load(layout: &Layout, state: &State, rate: f64) -> Option<load::Load> {
    let cluster = Cluster::load(&layout.cluster()).ok()?;
    let targets = state.honest_ids();
    let options = LoadOptions {
        rate,
        duration: None,
        size: 64,
        clients_per_node: 1,
        ..LoadOptions::default()
    };
    match load::start(&cluster, &targets, options).await {
        Ok(load) => {
            eprintln!("driving a light load of {rate} tx/s (--idle turns it off; `bftnet load` adds more)");
            Some(load)
        }
        Err(error) => {
            eprintln!("warning: cannot start the default load: {error}");
            None
        }
    }
}

fn print_summary(layout: &Layout, state: &State, options: &UpOptions) {
    let dir = dir_flag(layout);
    let mut out = String::new();
    out.push_str(&format!(
        "testnet up: {} nodes (f = {}), {} requests, in {}\n",
        state.n,
        state.f,
        serde_json::to_value(state.request_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        layout.dir.display()
    ));
    for node in &state.nodes {
        out.push_str(&format!(
            "  node {}  quic {} (proxy; binds {})  metrics http://{}/metrics  {}  pid {}\n          data {}  log {}\n",
            node.id,
            node.address,
            node.listen,
            node.metrics,
            node.behaviour.as_deref().map(|b| format!("BYZANTINE: {b}")).unwrap_or_else(|| "honest".into()),
            node.pid.map(|p| p.to_string()).unwrap_or_default(),
            layout.data_dir(node.id).display(),
            layout.node_log(node.id).display(),
        ));
    }
    let faults = read_faults(layout).describe();
    out.push_str(&format!(
        "  fault proxy pid {} (log {}); network: {}\n  cluster file {} (for `bftd tail --cluster ... --node 1`)\n",
        state.proxy.pid.map(|p| p.to_string()).unwrap_or_default(),
        layout.proxy_log().display(),
        if faults.is_empty() { "clean".into() } else { faults },
        layout.cluster().display()
    ));
    let suggestions = [
        (
            format!("bftnet status{dir}"),
            "heights, views, who is primary",
        ),
        (
            format!("bftnet submit{dir} hello world"),
            "order two transactions",
        ),
        (
            format!("bftnet load{dir} --rate 500 --duration 10s"),
            "open-loop load, latency percentiles",
        ),
        (
            format!("bftnet kill{dir} 0"),
            "SIGKILL the primary: watch the view change",
        ),
        (
            format!("bftnet restart{dir} 0 --byzantine equivocate"),
            "bring it back as a liar",
        ),
        (
            format!("bftnet partition{dir} 0,1/2,3"),
            "no side has a quorum: commits stop",
        ),
        (format!("bftnet heal{dir}"), "and they resume"),
        (
            format!("bftnet check{dir}"),
            "honest logs agree, certificates verify",
        ),
        (format!("bftnet down{dir}"), "stop everything (data kept)"),
    ];
    let width = suggestions
        .iter()
        .map(|(command, _)| command.len())
        .max()
        .unwrap_or(0);
    out.push_str(&format!(
        "\nnext, {}:\n",
        if options.detach {
            "the testnet keeps running"
        } else {
            "in another terminal"
        }
    ));
    for (command, what) in suggestions {
        out.push_str(&format!("  {command:<width$}   # {what}\n"));
    }
    if !options.detach {
        out.push_str("Ctrl-C stops every node and the proxy (data is kept).\n");
    }
    // Never a panic here: the testnet runs, and a closed pipe must lead to
    // stopping it (see `output_closed`), not to leaving it behind.
    let mut stdout = std::io::stdout().lock();
    let _ = write!(stdout, "{out}");
    let _ = stdout.flush();
}

/// Stops every process of the testnet in `layout` (nodes first, then the
/// proxy) and clears their PIDs. Returns what was stopped, for messages.
/// The caller holds the directory's lock.
pub fn stop_testnet(layout: &Layout) -> String {
    let Ok(mut state) = State::load(layout) else {
        return "nothing (no state file)".into();
    };
    let nodes: Vec<(u32, String)> = state
        .nodes
        .iter()
        .filter_map(|node| node.pid.map(|pid| (pid, node_marker(layout, node.id))))
        .collect();
    let count = nodes
        .iter()
        .filter(|(pid, marker)| super::launch::alive(*pid, marker))
        .count();
    stop_all(&nodes, STOP_GRACE);
    let proxy = state.proxy.pid.map(|pid| (pid, proxy_marker(layout)));
    let proxy_ran = proxy_alive(layout, &state);
    if let Some(proxy) = proxy {
        stop_all(&[proxy], STOP_GRACE);
    }
    for node in &mut state.nodes {
        node.pid = None;
    }
    state.proxy.pid = None;
    let _ = state.save(layout);
    format!(
        "{count} node{}{}",
        if count == 1 { "" } else { "s" },
        if proxy_ran {
            " and the fault proxy"
        } else {
            ""
        }
    )
}

/// `bftnet down`.
pub fn down(dir: &Path, clean: bool) -> Result<(), NetError> {
    let layout = Layout::new(dir);
    State::load(&layout)?;
    let lock = layout.lock()?;
    events::command(
        &layout,
        EventKind::Down,
        Vec::new(),
        format!(
            "bftnet down{}{}",
            dir_flag(&layout),
            if clean { " --clean" } else { "" }
        ),
        "every node and the fault proxy stopped".into(),
    );
    let stopped = stop_testnet(&layout);
    drop(lock);
    if clean {
        std::fs::remove_dir_all(&layout.dir).map_err(NetError::io("remove", &layout.dir))?;
        println!("stopped {stopped}; removed {}", layout.dir.display());
    } else {
        println!(
            "stopped {stopped}; data kept in {} (`bftnet up{}` resumes, `bftnet down --clean{}` deletes)",
            layout.dir.display(),
            dir_flag(&layout),
            dir_flag(&layout)
        );
    }
    Ok(())
}

/// `bftnet status`.
pub async fn status(dir: &Path, json: bool) -> Result<(), NetError> {
    let layout = Layout::new(dir);
    let state = State::load(&layout)?;
    let snapshot = snapshot(&layout, &state).await;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&snapshot).unwrap_or_default()
        );
    } else {
        print!("{}", render_table(&snapshot));
        println!(
            "{}",
            Liveness::of(&layout, &state).next_step(&dir_flag(&layout))
        );
    }
    Ok(())
}

/// Connects to the first answering honest node.
async fn connect_honest(layout: &Layout, state: &State) -> Result<(u16, Client), NetError> {
    let cluster = Cluster::load(&layout.cluster())?;
    let key = bftd::config::read_key(&layout.client_key())?;
    let mut last = None;
    for node in state.nodes.iter().filter(|node| node.honest()) {
        if !node_alive(layout, state, node.id) {
            continue;
        }
        match Client::connect(&cluster, NodeId(node.id), key.clone()).await {
            Ok(client) => return Ok((node.id, client)),
            Err(source) => {
                last = Some(NetError::Client {
                    id: node.id,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(NetError::NoHealthyNode {
        dir: layout.dir.clone(),
    }))
}

/// `bftnet submit`.
pub async fn submit(dir: &Path, payloads: &[String]) -> Result<(), NetError> {
    let layout = Layout::new(dir);
    let state = State::load(&layout)?;
    let (id, client) = connect_honest(&layout, &state).await?;
    eprintln!("submitting through node {id}; receipts are verified against the cluster's keys");
    for payload in payloads {
        let committed = client
            .submit(payload.clone().into_bytes())
            .await
            .map_err(|source| NetError::Client { id, source })?;
        println!(
            "{payload}\theight {}\tbatch {}",
            committed.height.0, committed.batch_digest
        );
    }
    Ok(())
}

/// Options of `bftnet load`.
#[derive(Clone, Debug)]
pub struct LoadArgs {
    /// Requests per second.
    pub rate: f64,
    /// How long.
    pub duration: Duration,
    /// Payload bytes.
    pub size: usize,
    /// Clients per honest node.
    pub clients: usize,
    /// Most requests awaiting receipts.
    pub max_in_flight: usize,
    /// Print the report as JSON.
    pub json: bool,
}

/// `bftnet load`.
///
/// With `cluster_file`, loads every node of that cluster (no testnet
/// directory: containers, real hosts); clients reconnect to nodes that
/// are down.
pub async fn load(
    dir: &Path,
    cluster_file: Option<&Path>,
    args: LoadArgs,
) -> Result<LoadReport, NetError> {
    let (cluster, targets) = match cluster_file {
        Some(path) => {
            let cluster = Cluster::load(path)?;
            let targets = (0..cluster.committee.n() as u16).collect();
            (cluster, targets)
        }
        None => {
            let layout = Layout::new(dir);
            let state = State::load(&layout)?;
            let cluster = Cluster::load(&layout.cluster())?;
            let targets: Vec<u16> = state
                .nodes
                .iter()
                .filter(|node| node.honest() && node_alive(&layout, &state, node.id))
                .map(|node| node.id)
                .collect();
            if targets.is_empty() {
                return Err(NetError::NoHealthyNode { dir: layout.dir });
            }
            (cluster, targets)
        }
    };
    let options = LoadOptions {
        rate: args.rate,
        duration: Some(args.duration),
        size: args.size,
        clients_per_node: args.clients,
        max_in_flight: args.max_in_flight,
        ..LoadOptions::default()
    };
    eprintln!(
        "offering {} tx/s of {} B for {:.1} s through honest nodes {:?} ({} clients each)",
        args.rate,
        args.size,
        args.duration.as_secs_f64(),
        targets,
        args.clients
    );
    let running = load::start(&cluster, &targets, options.clone())
        .await
        .map_err(|source| NetError::Client {
            id: targets.first().copied().unwrap_or(0),
            source,
        })?;
    let terminal = std::io::stderr().is_terminal();
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let deadline = running.started() + args.duration;
    while std::time::Instant::now() < deadline {
        ticker.tick().await;
        let line = load::progress_line(&running, &options);
        if terminal {
            eprint!("\r\x1b[K{line}");
        } else {
            eprintln!("{line}");
        }
    }
    if terminal {
        eprintln!();
    }
    eprintln!("waiting for the last receipts ...");
    let report = running.finish().await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", report.summary());
    }
    Ok(report)
}

/// `bftnet kill`.
pub async fn kill(dir: &Path, id: u16) -> Result<(), NetError> {
    println!("{}", kill_node(dir, id).await?);
    Ok(())
}

/// What `bftnet kill` does, returning what it would print.
pub(super) async fn kill_node(dir: &Path, id: u16) -> Result<String, NetError> {
    let layout = Layout::new(dir);
    State::load(&layout)?;
    let _lock = layout.lock()?;
    let mut state = State::load(&layout)?;
    let node = state.node(id)?.clone();
    let Some(pid) = node.pid.filter(|_| node_alive(&layout, &state, id)) else {
        return Ok(format!(
            "node {id} is not running (`bftnet restart {id}{}` starts it)",
            dir_flag(&layout)
        ));
    };
    let status = super::launch::node_status(node.metrics, Duration::from_millis(500)).await;
    // Recorded before the kill: whoever sees the node gone finds why.
    events::command(
        &layout,
        EventKind::Kill,
        vec![id],
        format!("bftnet kill{} {id}", dir_flag(&layout)),
        match &status {
            Some(s) if s.primary == id => {
                format!("node {id} SIGKILLed; it was the primary of view {}", s.view)
            }
            _ => format!("node {id} SIGKILLed"),
        },
    );
    kill_pid(pid);
    for _ in 0..100 {
        if !node_alive(&layout, &state, id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    state.node_mut(id)?.pid = None;
    state.save(&layout)?;
    let primary = status
        .filter(|s| s.primary == id)
        .map(|s| {
            format!(
                "; it was the primary of view {}: the others will change views",
                s.view
            )
        })
        .unwrap_or_default();
    Ok(format!(
        "node {id} killed (SIGKILL, pid {pid}){primary}. `bftnet restart {id}{}` brings it back with its data.",
        dir_flag(&layout)
    ))
}

/// `bftnet restart`.
pub async fn restart(
    dir: &Path,
    id: u16,
    behaviour: Option<Option<Behaviour>>,
    allow_unsafe: bool,
    timeout: Duration,
) -> Result<(), NetError> {
    let said = restart_node(dir, id, behaviour, allow_unsafe, timeout).await?;
    println!("{said}");
    Ok(())
}

/// What `bftnet restart` does, returning what it would print.
pub(super) async fn restart_node(
    dir: &Path,
    id: u16,
    behaviour: Option<Option<Behaviour>>,
    allow_unsafe: bool,
    timeout: Duration,
) -> Result<String, NetError> {
    let layout = Layout::new(dir);
    State::load(&layout)?;
    let _lock = layout.lock()?;
    let mut state = State::load(&layout)?;
    state.node(id)?;
    if !proxy_alive(&layout, &state) {
        return Err(NetError::BadArgument {
            flag: "restart",
            value: id.to_string(),
            reason: format!(
                "the testnet is down (its fault proxy is not running): `bftnet up{}` starts everything",
                dir_flag(&layout)
            ),
        });
    }
    let as_what = match &behaviour {
        Some(Some(b)) => format!(" --byzantine {b}"),
        Some(None) => " --honest".into(),
        None => String::new(),
    };
    if let Some(new) = behaviour {
        let mut args: Vec<ByzantineArg> = state
            .nodes
            .iter()
            .filter(|node| node.id != id)
            .filter_map(|node| {
                let behaviour = node.behaviour.as_deref()?.parse().ok()?;
                Some(ByzantineArg {
                    id: node.id,
                    behaviour,
                })
            })
            .collect();
        if let Some(behaviour) = new {
            args.push(ByzantineArg { id, behaviour });
        }
        let allow = allow_unsafe || state.allow_unsafe;
        assign_behaviours(&mut state, &args, allow)?;
        if state.byzantine_count() > state.f {
            eprintln!("{}", unsafe_warning(state.byzantine_count(), state.f));
        }
        write_node_files(&layout, &state)?;
        state.save(&layout)?;
    }
    events::command(
        &layout,
        EventKind::Restart,
        vec![id],
        format!("bftnet restart{} {id}{as_what}", dir_flag(&layout)),
        format!(
            "node {id} restarts as {}",
            state.node(id)?.behaviour.as_deref().unwrap_or("honest")
        ),
    );
    if let Some(pid) = state
        .node(id)?
        .pid
        .filter(|_| node_alive(&layout, &state, id))
    {
        stop_all(&[(pid, node_marker(&layout, id))], STOP_GRACE);
    }
    let child = start_node(&layout, &mut state, id)?;
    drop(child); // detached: `down` stops it by PID
    wait_healthy(&layout, &state, &[id], timeout).await?;
    let node = state.node(id)?;
    Ok(format!(
        "node {id} restarted (pid {}) as {}, same keys and data: it catches up from its peers",
        node.pid.unwrap_or(0),
        node.behaviour.as_deref().unwrap_or("honest")
    ))
}

/// How long `partition` and `heal` wait for the proxy to put new rules in
/// force (it looks every 50 ms).
const RULES_TIMEOUT: Duration = Duration::from_secs(5);

/// Writes `faults` as the next generation of the proxy's rules and, if the
/// proxy runs, returns only once it has put them in force (it says so in
/// `faults-applied.json`). Returns `false` when no proxy runs: the rules
/// then apply when one starts. The caller holds the directory's lock.
async fn install_faults(
    layout: &Layout,
    state: &State,
    mut faults: Faults,
) -> Result<bool, NetError> {
    faults.generation = next_generation(layout);
    write_faults(layout, &faults)?;
    let Some(pid) = state.proxy.pid.filter(|_| proxy_alive(layout, state)) else {
        return Ok(false);
    };
    let deadline = std::time::Instant::now() + RULES_TIMEOUT;
    loop {
        if read_applied(layout) == Some(faults.generation) {
            return Ok(true);
        }
        if !proxy_alive(layout, state) {
            return Err(NetError::ProxyDied {
                log: layout.proxy_log(),
                tail: log_tail(&layout.proxy_log(), 15),
            });
        }
        if std::time::Instant::now() >= deadline {
            return Err(NetError::RulesNotApplied {
                pid,
                dir: layout.dir.clone(),
                timeout_ms: RULES_TIMEOUT.as_millis(),
                log: layout.proxy_log(),
                tail: log_tail(&layout.proxy_log(), 15),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `bftnet partition`: returns once the proxy drops datagrams across the
/// cut, on every connection.
pub async fn partition(dir: &Path, spec: &str) -> Result<(), NetError> {
    println!("{}", partition_nodes(dir, spec).await?);
    Ok(())
}

/// What `bftnet partition` does, returning what it would print.
pub(super) async fn partition_nodes(dir: &Path, spec: &str) -> Result<String, NetError> {
    let layout = Layout::new(dir);
    let state = State::load(&layout)?;
    let _lock = layout.lock()?;
    let blocked = parse_partition(spec, state.n).map_err(|reason| NetError::BadArgument {
        flag: "partition",
        value: spec.to_owned(),
        reason,
    })?;
    if Liveness::of(&layout, &state).nothing_runs() {
        // `up` on a stopped testnet starts with a clean network: a rule
        // written now would never hold.
        return Err(NetError::BadArgument {
            flag: "partition",
            value: spec.to_owned(),
            reason: format!(
                "the testnet is stopped: start it with `bftnet up{}` (its network starts clean), then partition it",
                dir_flag(&layout)
            ),
        });
    }
    let mut faults = read_faults(&layout);
    faults.blocked = blocked;
    faults.partition = Some(spec.replace(' ', ""));
    let applied = install_faults(&layout, &state, faults).await?;
    let quorum = 2 * state.f + 1;
    events::command(
        &layout,
        EventKind::Partition,
        (0..state.n as u16).collect(),
        format!(
            "bftnet partition{} {}",
            dir_flag(&layout),
            spec.replace(' ', "")
        ),
        format!("links across {spec} cut"),
    );
    let how = if spec.contains("->") {
        "one way only"
    } else {
        "in both directions"
    };
    let heal = format!("`bftnet heal{}` undoes it", dir_flag(&layout));
    if !applied {
        return Ok(format!(
            "partition {spec} recorded; the fault proxy is down, so it applies once `bftnet up{}` restarts it ({heal})",
            dir_flag(&layout)
        ));
    }
    Ok(format!(
        "partition {spec} in force: node-to-node datagrams across it are dropped {how}, on open connections too (clients still reach every node).\n\
         A side keeps committing only if it holds a quorum of {quorum} connected nodes. {heal}."
    ))
}

/// `bftnet heal`: returns once the proxy lets datagrams through again.
pub async fn heal(dir: &Path) -> Result<(), NetError> {
    println!("{}", heal_nodes(dir).await?);
    Ok(())
}

/// What `bftnet heal` does, returning what it would print.
pub(super) async fn heal_nodes(dir: &Path) -> Result<String, NetError> {
    let layout = Layout::new(dir);
    let state = State::load(&layout)?;
    let _lock = layout.lock()?;
    let mut faults = read_faults(&layout);
    let had = faults.partition.take();
    faults.blocked.clear();
    let left = faults.describe();
    let applied = install_faults(&layout, &state, faults).await?;
    events::command(
        &layout,
        EventKind::Heal,
        Vec::new(),
        format!("bftnet heal{}", dir_flag(&layout)),
        match &had {
            Some(partition) => format!("partition {partition} healed: every link open"),
            None => "no partition was in force".into(),
        },
    );
    Ok(format!(
        "{}; every link is open again{}{}",
        had.map(|p| format!("healed partition {p}"))
            .unwrap_or_else(|| "no partition was in force".into()),
        if left.is_empty() {
            String::new()
        } else {
            format!(" (still: {left})")
        },
        if applied {
            ""
        } else {
            " (the fault proxy is not running)"
        }
    ))
}

/// `bftnet check`: prints the verdict; `Ok(true)` when everything holds.
///
/// With `cluster_file`, checks every node of that cluster over the client
/// API (no testnet directory: containers, real hosts).
pub async fn check(
    dir: &Path,
    cluster_file: Option<&Path>,
    json: bool,
) -> Result<CheckReport, NetError> {
    let report = match cluster_file {
        Some(path) => check::run_cluster(&Cluster::load(path)?).await,
        None => {
            let layout = Layout::new(dir);
            let state = State::load(&layout)?;
            check::run(&layout, &state).await?
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        println!("{}", report.render());
    }
    Ok(report)
}

/// `bftnet proxy` (run by `up`).
pub async fn proxy(dir: &Path) -> Result<(), NetError> {
    super::proxy::run(&Layout::new(dir)).await
}
