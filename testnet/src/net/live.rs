//! What the testnet is doing now: `bftnet status` and the live status line
//! of `bftnet up`.

use super::launch::{node_alive, node_counter, node_status, proxy_alive};
use super::layout::{read_faults, Layout, State};
use bftd::client_api::NodeStatus;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How long a node may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// One node, now.
#[derive(Clone, Debug, Serialize)]
pub struct NodeView {
    /// Node id.
    pub id: u16,
    /// Whether its process runs.
    pub running: bool,
    /// Its PID, if running.
    pub pid: Option<u32>,
    /// Its behaviour ("honest" if none).
    pub behaviour: String,
    /// QUIC address in the cluster file (through the proxy).
    pub address: String,
    /// Where the node binds.
    pub listen: String,
    /// Metrics URL.
    pub metrics: String,
    /// Data directory.
    pub data_dir: String,
    /// Log file.
    pub log: String,
    /// Its `/status`, if it answered.
    pub status: Option<NodeStatus>,
}

impl NodeView {
    /// Whether the node answers.
    pub fn healthy(&self) -> bool {
        self.status.is_some()
    }
}

/// The whole testnet, now (`bftnet status --json`).
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    /// The directory.
    pub dir: String,
    /// Nodes.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// Request authentication.
    pub request_mode: String,
    /// Whether the fault proxy runs.
    pub proxy_running: bool,
    /// Network faults in force ("" if none).
    pub faults: String,
    /// Every node.
    pub nodes: Vec<NodeView>,
}

impl Snapshot {
    /// The highest height among answering honest nodes.
    pub fn height(&self) -> u64 {
        self.honest_statuses().map(|s| s.height).max().unwrap_or(0)
    }

    /// The view most answering honest nodes are in, and whether any of
    /// them is changing views.
    pub fn view(&self) -> (u64, u16, bool) {
        let statuses: Vec<&NodeStatus> = self.honest_statuses().collect();
        let view = statuses.iter().map(|s| s.view).max().unwrap_or(0);
        let primary = statuses
            .iter()
            .find(|s| s.view == view)
            .map_or(0, |s| s.primary);
        (view, primary, statuses.iter().any(|s| s.in_view_change))
    }

    fn honest_statuses(&self) -> impl Iterator<Item = &NodeStatus> {
        self.nodes
            .iter()
            .filter(|node| node.behaviour == "honest")
            .filter_map(|node| node.status.as_ref())
    }
}

/// Asks every node for its status, all at once.
pub async fn snapshot(layout: &Layout, state: &State) -> Snapshot {
    let mut asks = tokio::task::JoinSet::new();
    for node in &state.nodes {
        let address = node.metrics;
        let running = node_alive(layout, state, node.id);
        let id = node.id;
        asks.spawn(async move {
            let status = if running {
                node_status(address, STATUS_TIMEOUT).await
            } else {
                None
            };
            (id, running, status)
        });
    }
    let mut answers = vec![(false, None); state.n];
    while let Some(Ok((id, running, status))) = asks.join_next().await {
        if let Some(slot) = answers.get_mut(usize::from(id)) {
            *slot = (running, status);
        }
    }
    let nodes = state
        .nodes
        .iter()
        .zip(answers)
        .map(|(node, (running, status))| NodeView {
            id: node.id,
            running,
            pid: node.pid.filter(|_| running),
            behaviour: node.behaviour.clone().unwrap_or_else(|| "honest".into()),
            address: node.address.to_string(),
            listen: node.listen.to_string(),
            metrics: format!("http://{}/metrics", node.metrics),
            data_dir: layout.data_dir(node.id).display().to_string(),
            log: layout.node_log(node.id).display().to_string(),
            status,
        })
        .collect();
    Snapshot {
        dir: layout.dir.display().to_string(),
        n: state.n,
        f: state.f,
        request_mode: serde_json::to_value(state.request_mode)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        proxy_running: proxy_alive(layout, state),
        faults: read_faults(layout).describe(),
        nodes,
    }
}

/// The table `bftnet status` prints.
pub fn render_table(snapshot: &Snapshot) -> String {
    let mut out = format!(
        "testnet {}: {} nodes (f = {}), {}, fault proxy {}{}\n",
        snapshot.dir,
        snapshot.n,
        snapshot.f,
        snapshot.request_mode,
        if snapshot.proxy_running {
            "running"
        } else {
            "DOWN (nodes cannot reach each other)"
        },
        if snapshot.faults.is_empty() {
            String::new()
        } else {
            format!("; faults: {}", snapshot.faults)
        },
    );
    out.push_str(&format!(
        "{:<5} {:<8} {:>8} {:>6} {:>8} {:<18} {:>8}  {:<22} {}\n",
        "node", "state", "height", "view", "primary", "behaviour", "pid", "address", "metrics"
    ));
    for node in &snapshot.nodes {
        let (state, height, view, primary) = match &node.status {
            Some(s) => (
                if s.in_view_change { "changing" } else { "up" },
                s.height.to_string(),
                s.view.to_string(),
                s.primary.to_string(),
            ),
            None if node.running => ("no answer", "-".into(), "-".into(), "-".into()),
            None => ("down", "-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<5} {:<8} {:>8} {:>6} {:>8} {:<18} {:>8}  {:<22} {}\n",
            node.id,
            state,
            height,
            view,
            primary,
            node.behaviour,
            node.pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into()),
            node.address,
            node.metrics,
        ));
    }
    out
}

/// The one-line summary the live display shows.
pub fn status_line(snapshot: &Snapshot, rate: Option<f64>) -> String {
    let (view, primary, changing) = snapshot.view();
    let nodes = snapshot
        .nodes
        .iter()
        .map(|node| {
            let health = match (&node.status, node.running) {
                (Some(s), _) => format!("{}", s.height),
                (None, true) => "?".into(),
                (None, false) => "DOWN".into(),
            };
            if node.behaviour == "honest" {
                format!("{}:{health}", node.id)
            } else {
                format!("{}:{health}({})", node.id, node.behaviour)
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "height {}  {}  view {view}{} primary {primary}  nodes {nodes}{}{}",
        snapshot.height(),
        rate.map(|r| format!("{r:>7.1} tx/s"))
            .unwrap_or_else(|| "      - tx/s".into()),
        if changing { " (changing)" } else { "" },
        if snapshot.proxy_running {
            String::new()
        } else {
            "  PROXY DOWN".into()
        },
        if snapshot.faults.is_empty() {
            String::new()
        } else {
            format!("  [{}]", snapshot.faults)
        },
    )
}

/// Committed requests per second, from one honest node's counter over the
/// last few seconds.
#[derive(Debug, Default)]
pub struct RateMeter {
    node: Option<u16>,
    samples: VecDeque<(Instant, f64)>,
}

impl RateMeter {
    /// Samples the counter of the first answering honest node.
    pub async fn sample(&mut self, state: &State, snapshot: &Snapshot) -> Option<f64> {
        let node = snapshot
            .nodes
            .iter()
            .find(|node| node.behaviour == "honest" && node.healthy())?;
        let address = state.node(node.id).ok()?.metrics;
        let value = node_counter(address, "bftd_requests_committed_total", STATUS_TIMEOUT).await?;
        if self.node != Some(node.id) || self.samples.back().is_some_and(|(_, last)| *last > value)
        {
            self.samples.clear();
            self.node = Some(node.id);
        }
        let now = Instant::now();
        self.samples.push_back((now, value));
        while self.samples.len() > 2
            && self
                .samples
                .front()
                .is_some_and(|(t, _)| now - *t > Duration::from_secs(3))
        {
            self.samples.pop_front();
        }
        let (first_time, first_value) = *self.samples.front()?;
        let seconds = (now - first_time).as_secs_f64();
        (seconds > 0.2).then(|| (value - first_value) / seconds)
    }
}

/// Shows the status line until `stop` resolves: rewritten in place four
/// times a second on a terminal, a plain line every five seconds otherwise.
/// Returns early if every process of the testnet has gone (`bftnet down`
/// from elsewhere).
pub async fn watch(layout: &Layout, stop: impl std::future::Future<Output = ()>) {
    let terminal = std::io::stderr().is_terminal();
    let period = if terminal {
        Duration::from_millis(250)
    } else {
        Duration::from_secs(5)
    };
    let mut meter = RateMeter::default();
    let mut ticker = tokio::time::interval(period);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let Ok(state) = State::load(layout) else {
            break;
        };
        let snapshot = snapshot(layout, &state).await;
        if !snapshot.proxy_running && snapshot.nodes.iter().all(|node| !node.running) {
            if terminal {
                eprintln!();
            }
            eprintln!("every process of the testnet has stopped");
            return;
        }
        let rate = meter.sample(&state, &snapshot).await;
        let line = status_line(&snapshot, rate);
        let mut err = std::io::stderr().lock();
        if terminal {
            let _ = write!(err, "\r\x1b[K{line}");
            let _ = err.flush();
        } else {
            let _ = writeln!(err, "{line}");
        }
    }
    if terminal {
        eprintln!();
    }
}
