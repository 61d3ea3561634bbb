//! What the testnet is doing now: which of its processes run (and the
//! command that brings back the rest), `bftnet status` and the live status
//! line of `bftnet up`.

use super::launch::{node_alive, node_counter, node_status, proxy_alive};
use super::layout::{read_faults, Layout, Network, State};
use bftd::client_api::NodeStatus;
use serde::Serialize;
use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How long a node may take to answer `/status`.
const STATUS_TIMEOUT: Duration = Duration::from_millis(300);

/// Which processes of a testnet run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Liveness {
    /// Nodes whose process runs.
    pub running: Vec<u16>,
    /// Nodes whose process does not.
    pub down: Vec<u16>,
    /// Whether the fault proxy runs; `None` on a direct testnet, which has
    /// none.
    pub proxy: Option<bool>,
}

impl Liveness {
    /// Looks at the recorded PIDs of `state`.
    pub fn of(layout: &Layout, state: &State) -> Liveness {
        let (running, down) = state
            .nodes
            .iter()
            .map(|node| node.id)
            .partition(|&id| node_alive(layout, state, id));
        Liveness {
            running,
            down,
            proxy: (state.network == Network::Proxied).then(|| proxy_alive(layout, state)),
        }
    }

    /// Whether every process the testnet needs runs.
    pub fn everything_runs(&self) -> bool {
        self.down.is_empty() && self.proxy != Some(false)
    }

    /// Whether no process of the testnet runs.
    pub fn nothing_runs(&self) -> bool {
        self.running.is_empty() && self.proxy != Some(true)
    }

    /// What runs, as "nodes 0, 2 and the fault proxy".
    pub fn describe_running(&self) -> String {
        let proxy = self.proxy == Some(true);
        match (self.running.as_slice(), proxy) {
            ([], false) => "nothing".into(),
            ([], true) => "the fault proxy".into(),
            (nodes, false) => nodes_list(nodes),
            (nodes, true) => format!("{} and the fault proxy", nodes_list(nodes)),
        }
    }

    /// One line saying what is down and the command that fixes it, for
    /// `bftnet status` (`dir` is "" or " --dir DIR"). Every command it
    /// names works in the state it describes.
    pub fn next_step(&self, dir: &str) -> String {
        if self.nothing_runs() {
            return format!(
                "the testnet is stopped: `bftnet up{dir}` starts it again (same keys and data)"
            );
        }
        if self.everything_runs() {
            return format!("every process runs: `bftnet down{dir}` stops them (data kept)");
        }
        let mut what = Vec::new();
        match self.down.as_slice() {
            [] => {}
            _ if self.running.is_empty() => what.push("every node is down".to_string()),
            [id] => what.push(format!("node {id} is down")),
            nodes => what.push(format!("{} are down", nodes_list(nodes))),
        }
        match self.proxy {
            Some(false) => {
                what.push("the fault proxy is down (nodes cannot reach each other)".into())
            }
            Some(true) if self.running.is_empty() => what.push("the fault proxy still runs".into()),
            _ => {}
        }
        format!(
            "{}: `bftnet up{dir}` brings back what is down (same keys, data and behaviours)",
            what.join("; ")
        )
    }
}

/// "node 3" or "nodes 0, 2".
pub(super) fn nodes_list(ids: &[u16]) -> String {
    let list = ids
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if ids.len() == 1 {
        format!("node {list}")
    } else {
        format!("nodes {list}")
    }
}

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
        "{:<5} {:<9} {:>8} {:>6} {:>8} {:<18} {:>8}  {:<22} {}\n",
        "node", "state", "height", "view", "primary", "behaviour", "pid", "address", "metrics"
    ));
    for node in &snapshot.nodes {
        let (state, height, view, primary) = match &node.status {
            Some(s) => (
                if !s.has_quorum() {
                    "no quorum"
                } else if s.in_view_change {
                    "changing"
                } else {
                    "up"
                },
                s.height.to_string(),
                s.view.to_string(),
                s.primary.to_string(),
            ),
            None if node.running => ("no answer", "-".into(), "-".into(), "-".into()),
            None => ("down", "-".into(), "-".into(), "-".into()),
        };
        out.push_str(&format!(
            "{:<5} {:<9} {:>8} {:>6} {:>8} {:<18} {:>8}  {:<22} {}\n",
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
    // Nodes that hear from too few peers: nothing commits through them.
    let no_quorum = snapshot
        .nodes
        .iter()
        .filter(|node| node.status.as_ref().is_some_and(|s| !s.has_quorum()))
        .map(|node| node.id.to_string())
        .collect::<Vec<_>>();
    format!(
        "height {}  {}  view {view}{} primary {primary}  nodes {nodes}{}{}{}",
        snapshot.height(),
        rate.map(|r| format!("{r:>7.1} tx/s"))
            .unwrap_or_else(|| "      - tx/s".into()),
        if changing { " (changing)" } else { "" },
        if no_quorum.is_empty() {
            String::new()
        } else {
            format!("  NO QUORUM at {}", no_quorum.join(","))
        },
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
                super::launch::say("");
            }
            super::launch::say("every process of the testnet has stopped");
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
        super::launch::say("");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(running: &[u16], down: &[u16], proxy: Option<bool>) -> Liveness {
        Liveness {
            running: running.to_vec(),
            down: down.to_vec(),
            proxy,
        }
    }

    /// `bftnet status` names, in every state, a command that works there:
    /// `up` whenever anything is down (it starts only that), `down` when
    /// everything runs (where `up` refuses).
    #[test]
    fn status_names_a_command_that_works() {
        let dir = " --dir /tmp/t";
        let cases = [
            (liveness(&[], &[0, 1, 2, 3], Some(false)), "bftnet up --dir /tmp/t` starts it again"),
            (liveness(&[], &[0, 1, 2, 3], Some(true)), "every node is down; the fault proxy still runs: `bftnet up --dir /tmp/t` brings back"),
            (liveness(&[0, 2], &[1, 3], Some(true)), "nodes 1, 3 are down: `bftnet up --dir /tmp/t` brings back"),
            (liveness(&[0, 1, 3], &[2], Some(true)), "node 2 is down: `bftnet up --dir /tmp/t` brings back"),
            (liveness(&[0, 1, 2, 3], &[], Some(false)), "the fault proxy is down (nodes cannot reach each other): `bftnet up --dir /tmp/t` brings back"),
            (liveness(&[0, 1, 2, 3], &[], Some(true)), "every process runs: `bftnet down --dir /tmp/t` stops them"),
            (liveness(&[0, 1, 2, 3], &[], None), "every process runs: `bftnet down --dir /tmp/t`"),
        ];
        for (state, expected) in cases {
            let line = state.next_step(dir);
            assert!(line.contains(expected), "{state:?}: {line}");
            // `up` refuses exactly when the line does not suggest it.
            assert_eq!(
                state.everything_runs(),
                !line.contains("bftnet up"),
                "{line}"
            );
        }
        assert!(liveness(&[], &[0, 1, 2, 3], Some(false)).nothing_runs());
        assert!(!liveness(&[], &[0, 1, 2, 3], Some(true)).nothing_runs());
        assert_eq!(
            liveness(&[0, 2], &[1, 3], Some(true)).describe_running(),
            "nodes 0, 2 and the fault proxy"
        );
        assert_eq!(
            liveness(&[], &[0], Some(true)).describe_running(),
            "the fault proxy"
        );
    }
}
