//! What the dashboard shows, derived from samples of the nodes by pure
//! functions (no clock, no I/O: the server passes the time and the
//! samples in), so each rule is unit-tested here.
//!
//! Each poll gives every node's `/status` and a few `/metrics` values;
//! [`Tracker::observe`] compares them with the previous poll and returns
//! the events nodes caused on their own (suspicions, view changes, new
//! views, evidence, state transfer, checkpoints, crashes), and keeps a few
//! minutes of commit rate and latency. [`Tracker::view`] is the JSON the
//! page reads.

use crate::net::events::{Event, EventKind};
use crate::net::proxy::Faults;
use bftd::client_api::NodeStatus;
use serde::Serialize;
use std::collections::VecDeque;

/// Points of commit rate and latency kept (one a poll: 5 minutes at 1 s).
pub const SERIES_POINTS: usize = 300;
/// Events kept for pages that connect later.
pub const EVENTS_KEPT: usize = 1000;
/// At most one checkpoint event this often: at a few hundred requests a
/// second a checkpoint becomes stable every second or so, which would
/// bury the timeline.
const CHECKPOINT_EVERY_MS: u64 = 30_000;
/// How long after a `kill`, `restart` or `down` a node's death is put down
/// to that command rather than reported as a crash.
const COMMAND_EXPLAINS_MS: u64 = 10_000;

/// The values the dashboard reads from one node's `/metrics`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// `bftd_requests_committed_total`.
    pub requests_committed: f64,
    /// `bftd_suspicions_total`.
    pub suspicions: f64,
    /// `bftd_misbehaviour_evidence_total`.
    pub evidence: f64,
    /// `bftd_blocks_fetched_total`.
    pub blocks_fetched: f64,
    /// `bftd_commit_latency_seconds` buckets: `(le, cumulative count)`,
    /// `+Inf` last.
    pub latency_buckets: Vec<(f64, f64)>,
}

/// Reads [`Counters`] from a Prometheus text exposition.
pub fn parse_metrics(text: &str) -> Counters {
    let mut counters = Counters::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (base, labels) = name.split_once('{').unwrap_or((name, ""));
        match base {
            "bftd_requests_committed_total" => counters.requests_committed += value,
            "bftd_suspicions_total" => counters.suspicions += value,
            "bftd_misbehaviour_evidence_total" => counters.evidence += value,
            "bftd_blocks_fetched_total" => counters.blocks_fetched += value,
            "bftd_commit_latency_seconds_bucket" => {
                let bound = labels
                    .strip_prefix("le=\"")
                    .and_then(|rest| rest.split('"').next())
                    .and_then(|bound| match bound {
                        "+Inf" => Some(f64::INFINITY),
                        bound => bound.parse().ok(),
                    });
                if let Some(bound) = bound {
                    counters.latency_buckets.push((bound, value));
                }
            }
            _ => {}
        }
    }
    counters.latency_buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    counters
}

/// The `q` quantile, in milliseconds, of what a cumulative histogram
/// gained from `before` to `after` (its bucket's upper bound; the highest
/// finite bound for the overflow bucket). `None` when nothing was added or
/// the node restarted (counts went down).
pub fn quantile_ms(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    if before.len() != after.len() && !before.is_empty() {
        return None;
    }
    let gained: Vec<(f64, f64)> = after
        .iter()
        .enumerate()
        .map(|(i, &(bound, count))| (bound, count - before.get(i).map_or(0.0, |b| b.1)))
        .collect();
    let total = gained.last()?.1;
    if total <= 0.0 || gained.iter().any(|(_, count)| *count < 0.0) {
        return None;
    }
    let finite_max = gained
        .iter()
        .map(|(bound, _)| *bound)
        .filter(|bound| bound.is_finite())
        .fold(0.0, f64::max);
    let (bound, _) = gained.iter().find(|(_, count)| *count >= q * total)?;
    Some(
        if bound.is_finite() {
            *bound
        } else {
            finite_max
        } * 1000.0,
    )
}

/// One node at one poll.
#[derive(Clone, Debug)]
pub struct NodeSample {
    /// Node id.
    pub id: u16,
    /// Whether its process runs.
    pub running: bool,
    /// Its behaviour ("honest" if none).
    pub behaviour: String,
    /// Its `/status`, if it answered.
    pub status: Option<NodeStatus>,
    /// Its `/metrics` values, if it answered.
    pub counters: Option<Counters>,
    /// The nodes its `/evidence` names as equivocators (filled in only
    /// when its evidence count changed; otherwise carried over).
    pub culprits: Vec<u16>,
}

impl NodeSample {
    fn honest(&self) -> bool {
        self.behaviour == "honest"
    }
}

/// Which nodes `/evidence` names: its entries are the evidence printed
/// for people, each naming its signer as `signer: NodeId(N)`.
pub fn culprits(evidence: &[String]) -> Vec<u16> {
    let mut ids: Vec<u16> = evidence
        .iter()
        .filter_map(|entry| {
            let rest = entry.split("signer: NodeId(").nth(1)?;
            rest.split(')').next()?.parse().ok()
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A point of the commit-rate and latency charts.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Point {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Requests committed per second since the previous poll.
    pub rate: f64,
    /// Commit latency p50 over that interval, ms (none if nothing committed).
    pub p50_ms: Option<f64>,
    /// Commit latency p99 over that interval, ms.
    pub p99_ms: Option<f64>,
    /// The highest height of an honest node.
    pub height: u64,
}

/// An event with its place in the dashboard's list.
#[derive(Clone, Debug, Serialize)]
pub struct Numbered {
    /// Increases by one per event: pages ask for what follows the last
    /// they have.
    pub seq: u64,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
    /// The concept it illustrates, in a few words.
    pub concept: &'static str,
}

/// The concept an event illustrates, for the timeline.
pub fn concept(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Kill | EventKind::NodeLost => "fail-stop: a crashed node just stops",
        EventKind::Restart => "recovery: same keys and log, catches up from peers",
        EventKind::Partition => "partition: only a side with a quorum of 2f+1 commits",
        EventKind::Heal => "heal: the lagging side catches up",
        EventKind::Suspicion => "a request waited too long: the primary is suspected",
        EventKind::ViewChange => "view change: 2f+1 suspicions replace the primary",
        EventKind::NewView => "new view: the next primary carries over prepared requests",
        EventKind::Evidence => "equivocation: two conflicting signed messages prove a liar",
        EventKind::StateTransfer => "state transfer: a lagging node fetches certified blocks",
        EventKind::Checkpoint => "checkpoint: 2f+1 nodes signed the same state",
        EventKind::Up | EventKind::Down => "",
        EventKind::LoadStarted | EventKind::LoadStopped => "",
        EventKind::Other => "",
    }
}

/// The cluster's view as the honest nodes that answer see it: the highest
/// view, its primary, and whether any of them is still changing views.
pub fn cluster_view(nodes: &[NodeSample]) -> Option<(u64, u16, bool)> {
    let statuses: Vec<&NodeStatus> = nodes
        .iter()
        .filter(|node| node.honest() && node.running)
        .filter_map(|node| node.status.as_ref())
        .collect();
    let view = statuses.iter().map(|s| s.view).max()?;
    let primary = statuses.iter().find(|s| s.view == view)?.primary;
    let changing = statuses.iter().any(|s| s.view == view && s.in_view_change);
    Some((view, primary, changing))
}

/// Remembers the previous poll, derives events and the charts' series.
#[derive(Debug, Default)]
pub struct Tracker {
    previous: Vec<NodeSample>,
    previous_at_ms: u64,
    /// The last view a change towards was announced, and the last view
    /// announced as installed.
    announced_change: u64,
    installed: Option<u64>,
    checkpoint: Option<u64>,
    checkpoint_shown_ms: u64,
    series: VecDeque<Point>,
    events: VecDeque<Numbered>,
    next_seq: u64,
}

impl Tracker {
    /// Adds an event (from the log, or derived) to the list; returns it
    /// numbered.
    pub fn push(&mut self, event: Event) -> Numbered {
        let numbered = Numbered {
            seq: self.next_seq,
            concept: concept(event.kind),
            event,
        };
        self.next_seq += 1;
        self.events.push_back(numbered.clone());
        while self.events.len() > EVENTS_KEPT {
            self.events.pop_front();
        }
        numbered
    }

    /// The events kept, oldest first.
    pub fn events(&self) -> impl Iterator<Item = &Numbered> {
        self.events.iter()
    }

    /// The chart series, oldest first.
    pub fn series(&self) -> impl Iterator<Item = &Point> {
        self.series.iter()
    }

    /// The previous poll's samples (the server carries culprits over).
    pub fn previous(&self) -> &[NodeSample] {
        &self.previous
    }

    /// Takes a poll at `at_ms`; returns the events it reveals (not yet
    /// pushed: the caller pushes them, after the log's events of the same
    /// moment).
    pub fn observe(&mut self, at_ms: u64, nodes: Vec<NodeSample>) -> Vec<Event> {
        let mut events = Vec::new();
        for node in &nodes {
            if let Some(before) = self.previous.iter().find(|b| b.id == node.id) {
                self.node_events(at_ms, before, node, &mut events);
            }
        }
        self.view_events(at_ms, &nodes, &mut events);
        self.checkpoint_events(at_ms, &nodes, &mut events);
        self.sample_series(at_ms, &nodes);
        self.previous = nodes;
        self.previous_at_ms = at_ms;
        events
    }

    /// What one node did between two polls.
    fn node_events(
        &self,
        at_ms: u64,
        before: &NodeSample,
        now: &NodeSample,
        events: &mut Vec<Event>,
    ) {
        let id = now.id;
        if before.running && !now.running && !self.explained(at_ms, id) {
            events.push(derived(
                at_ms,
                EventKind::NodeLost,
                vec![id],
                format!("node {id} stopped, and no bftnet command stopped it: a crash"),
            ));
        }
        let (Some(b), Some(n)) = (&before.counters, &now.counters) else {
            return;
        };
        if n.suspicions > b.suspicions {
            let (view, primary) = before
                .status
                .as_ref()
                .map_or((0, 0), |s| (s.view, s.primary));
            let detail = if primary == id {
                format!("node {id}, primary of view {view}, gives up on its own view: a request it holds waited too long")
            } else {
                format!("node {id} suspects node {primary}, primary of view {view}: a request it holds waited too long")
            };
            events.push(derived(
                at_ms,
                EventKind::Suspicion,
                if primary == id {
                    vec![id]
                } else {
                    vec![id, primary]
                },
                detail,
            ));
        }
        if n.evidence > b.evidence {
            let who = if now.culprits.is_empty() {
                String::new()
            } else {
                format!(": {} signed two conflicting messages", list(&now.culprits))
            };
            let mut nodes = vec![id];
            nodes.extend(now.culprits.iter().filter(|&&c| c != id));
            events.push(derived(
                at_ms,
                EventKind::Evidence,
                nodes,
                format!(
                    "node {id} holds {} new piece{} of evidence of equivocation{who}",
                    n.evidence - b.evidence,
                    if n.evidence - b.evidence == 1.0 {
                        ""
                    } else {
                        "s"
                    }
                ),
            ));
        }
        if n.blocks_fetched > b.blocks_fetched {
            events.push(derived(
                at_ms,
                EventKind::StateTransfer,
                vec![id],
                format!(
                    "node {id} fetched {} certified block{} from its peers to catch up",
                    n.blocks_fetched - b.blocks_fetched,
                    if n.blocks_fetched - b.blocks_fetched == 1.0 {
                        ""
                    } else {
                        "s"
                    }
                ),
            ));
        }
    }

    /// Whether a recent command explains node `id` stopping.
    fn explained(&self, at_ms: u64, id: u16) -> bool {
        self.events.iter().rev().any(|numbered| {
            let event = &numbered.event;
            matches!(
                event.kind,
                EventKind::Kill | EventKind::Restart | EventKind::Down
            ) && (event.nodes.is_empty() || event.nodes.contains(&id))
                && at_ms.saturating_sub(event.at_ms) <= COMMAND_EXPLAINS_MS
        })
    }

    /// View changes and new views, once each, as the honest nodes see them.
    fn view_events(&mut self, at_ms: u64, nodes: &[NodeSample], events: &mut Vec<Event>) {
        let Some((view, primary, changing)) = cluster_view(nodes) else {
            return;
        };
        let Some(installed) = self.installed else {
            // The first poll: whatever view it is in is where we start.
            self.installed = Some(view);
            self.announced_change = view;
            return;
        };
        if view > self.announced_change && view > installed {
            let moving: Vec<u16> = nodes
                .iter()
                .filter(|n| n.status.as_ref().is_some_and(|s| s.view == view))
                .map(|n| n.id)
                .collect();
            let old_primary = self
                .previous
                .iter()
                .filter_map(|n| n.status.as_ref())
                .find(|s| s.view == installed)
                .map(|s| s.primary);
            events.push(derived(
                at_ms,
                EventKind::ViewChange,
                moving.clone(),
                format!(
                    "view change: {} moving from view {installed}{} to view {view}",
                    list(&moving),
                    old_primary
                        .map(|p| format!(" (primary {p})"))
                        .unwrap_or_default()
                ),
            ));
            self.announced_change = view;
        }
        if !changing && view > installed {
            events.push(derived(
                at_ms,
                EventKind::NewView,
                vec![primary],
                format!("view {view} started: node {primary} is the primary"),
            ));
            self.installed = Some(view);
            self.announced_change = self.announced_change.max(view);
        }
    }

    /// A higher stable checkpoint at any honest node.
    fn checkpoint_events(&mut self, at_ms: u64, nodes: &[NodeSample], events: &mut Vec<Event>) {
        let Some(highest) = nodes
            .iter()
            .filter(|n| n.honest())
            .filter_map(|n| n.status.as_ref())
            .map(|s| s.stable_checkpoint)
            .max()
        else {
            return;
        };
        match self.checkpoint {
            Some(known)
                if highest > known
                    && at_ms.saturating_sub(self.checkpoint_shown_ms) >= CHECKPOINT_EVERY_MS =>
            {
                self.checkpoint_shown_ms = at_ms;
                let at: Vec<u16> = nodes
                    .iter()
                    .filter(|n| {
                        n.status
                            .as_ref()
                            .is_some_and(|s| s.stable_checkpoint == highest)
                    })
                    .map(|n| n.id)
                    .collect();
                events.push(derived(
                    at_ms,
                    EventKind::Checkpoint,
                    at,
                    format!("checkpoint at height {highest} is stable: older protocol messages can be discarded"),
                ));
            }
            _ => {}
        }
        if self.checkpoint.is_none() {
            self.checkpoint_shown_ms = at_ms;
        }
        self.checkpoint = Some(highest);
    }

    /// A point of the charts: the commit rate of the honest node that
    /// committed most since the last poll (nodes cut off commit nothing,
    /// the cluster's rate is what its progressing part does), with that
    /// node's latency.
    fn sample_series(&mut self, at_ms: u64, nodes: &[NodeSample]) {
        let seconds = at_ms.saturating_sub(self.previous_at_ms) as f64 / 1000.0;
        let height = nodes
            .iter()
            .filter(|n| n.honest())
            .filter_map(|n| n.status.as_ref())
            .map(|s| s.height)
            .max()
            .unwrap_or(0);
        let mut best: Option<(f64, &Counters, &Counters)> = None;
        for node in nodes.iter().filter(|n| n.honest()) {
            let Some(now) = &node.counters else { continue };
            let Some(before) = self
                .previous
                .iter()
                .find(|b| b.id == node.id)
                .and_then(|b| b.counters.as_ref())
            else {
                continue;
            };
            let gained = now.requests_committed - before.requests_committed;
            if gained >= 0.0 && best.is_none_or(|(most, _, _)| gained > most) {
                best = Some((gained, before, now));
            }
        }
        if self.previous.is_empty() || seconds <= 0.0 {
            return;
        }
        let point = match best {
            Some((gained, before, now)) => Point {
                at_ms,
                rate: gained / seconds,
                p50_ms: quantile_ms(&before.latency_buckets, &now.latency_buckets, 0.5),
                p99_ms: quantile_ms(&before.latency_buckets, &now.latency_buckets, 0.99),
                height,
            },
            None => Point {
                at_ms,
                rate: 0.0,
                p50_ms: None,
                p99_ms: None,
                height,
            },
        };
        self.series.push_back(point);
        while self.series.len() > SERIES_POINTS {
            self.series.pop_front();
        }
    }
}

fn derived(at_ms: u64, kind: EventKind, nodes: Vec<u16>, detail: String) -> Event {
    Event {
        at_ms,
        kind,
        nodes,
        command: None,
        detail,
    }
}

/// "node 3" or "nodes 0, 2".
fn list(ids: &[u16]) -> String {
    crate::net::live::nodes_list(ids)
}

/// A directed link between two nodes, as the fault proxy treats it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Link {
    /// Sender.
    pub from: u16,
    /// Receiver.
    pub to: u16,
    /// Whether the partition drops every datagram on it.
    pub cut: bool,
}

/// Every directed link between the `n` nodes under `faults`.
pub fn links(n: usize, faults: &Faults) -> Vec<Link> {
    let mut links = Vec::new();
    for from in 0..n as u16 {
        for to in (0..n as u16).filter(|&to| to != from) {
            links.push(Link {
                from,
                to,
                cut: faults.blocked.contains(&[from, to]),
            });
        }
    }
    links
}

/// The largest set of running nodes that all reach one another both ways
/// (a quorum must exchange messages among itself). Exhaustive over subsets
/// for the testnet sizes people watch (n <= 16); larger testnets count
/// every running node.
pub fn largest_connected(n: usize, blocked: &[[u16; 2]], running: &[u16]) -> Vec<u16> {
    if n > 16 {
        return running.to_vec();
    }
    let linked = |a: u16, b: u16| !blocked.contains(&[a, b]) && !blocked.contains(&[b, a]);
    let mut best: Vec<u16> = Vec::new();
    for mask in 1u32..(1 << running.len()) {
        if (mask.count_ones() as usize) <= best.len() {
            continue;
        }
        let set: Vec<u16> = running
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, &id)| id)
            .collect();
        let clique = set
            .iter()
            .all(|&a| set.iter().all(|&b| a == b || linked(a, b)));
        if clique {
            best = set;
        }
    }
    best
}

/// One plain-language line about a fault in force.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lesson {
    /// The concept's name: "fail-stop", "gray failure", ...
    pub concept: &'static str,
    /// What it means here, now.
    pub text: String,
}

/// A line per fault in force, naming its concept, and the quorum rule.
pub fn lessons(n: usize, f: usize, nodes: &[NodeSample], faults: &Faults) -> Vec<Lesson> {
    let quorum = 2 * f + 1;
    let mut out = vec![Lesson {
        concept: "quorum of 2f+1",
        text: format!("n = {n} nodes tolerate f = {f} faulty one{}: every commit needs {quorum} matching signed votes, and any two groups of {quorum} share at least one honest node, so they cannot commit different blocks at one height.", if f == 1 { "" } else { "s" }),
    }];
    let running: Vec<u16> = nodes.iter().filter(|n| n.running).map(|n| n.id).collect();
    let primary = cluster_view(nodes).map(|(_, primary, _)| primary);
    for node in nodes.iter().filter(|node| !node.running) {
        let id = node.id;
        let rest = if running.len() >= quorum {
            format!(
                "The {} running still form a quorum of {quorum}, so commits continue",
                running.len()
            )
        } else {
            format!("Only {} run, fewer than a quorum of {quorum}: nothing commits until enough come back, and nothing unsafe happens meanwhile", running.len())
        };
        let primary = if primary == Some(id) {
            "; it leads this view, so the others will suspect it and change views"
        } else {
            ""
        };
        out.push(Lesson {
            concept: "fail-stop",
            text: format!("Node {id} is down, a fail-stop fault: it says nothing, wrong or right. {rest}{primary}."),
        });
    }
    let liars: Vec<&NodeSample> = nodes.iter().filter(|n| !n.honest()).collect();
    for node in &liars {
        let (id, behaviour) = (node.id, node.behaviour.as_str());
        let lesson = if behaviour.starts_with("slow") || behaviour.starts_with("starve") {
            Lesson {
                concept: "gray failure",
                text: format!("Node {id} runs `{behaviour}`: a gray failure, alive but slow. The others do not wait for it; as primary it is replaced once requests wait too long."),
            }
        } else {
            Lesson {
                concept: "Byzantine fault",
                text: format!("Node {id} runs `{behaviour}`: a Byzantine (lying) node. Its votes are signed, so a lie is either outvoted by {quorum} honest matching votes or proves itself as evidence."),
            }
        };
        out.push(lesson);
    }
    if liars.len() > f {
        out.push(Lesson {
            concept: "beyond f",
            text: format!("{} liars is more than f = {f}: two quorums of {quorum} may now overlap only in liars, so the log can fork (`bftnet check` finds where).", liars.len()),
        });
    }
    if let Some(spec) = &faults.partition {
        let side = largest_connected(n, &faults.blocked, &running);
        let text = if side.len() >= quorum {
            format!("Partition {spec}: {} still reach one another, a quorum of {quorum}, and keep committing; the nodes cut off from them stop and catch up after `heal`.", list(&side))
        } else {
            format!("Partition {spec}: no group of connected nodes reaches a quorum of {quorum}, so commits stop everywhere rather than diverge: consistency over availability (CAP).")
        };
        out.push(Lesson {
            concept: "partition",
            text,
        });
    }
    if faults.delay_ms > 0 || faults.jitter_ms > 0 || faults.loss_percent > 0.0 {
        out.push(Lesson {
            concept: "gray failure",
            text: format!("Every link delays {} ms (+0..{} ms) and drops {}% of datagrams: a slow, lossy network rather than a dead one; retransmissions and timeouts absorb it, at a cost in latency.", faults.delay_ms, faults.jitter_ms, faults.loss_percent),
        });
    }
    out
}

/// One node as the page shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PageNode {
    /// Node id.
    pub id: u16,
    /// Whether its process runs.
    pub running: bool,
    /// Whether it answered this poll.
    pub answering: bool,
    /// "primary", "backup", "down" or "no answer".
    pub role: &'static str,
    /// Its view (the one it moves to while changing views).
    pub view: Option<u64>,
    /// Whether it is changing views.
    pub in_view_change: bool,
    /// Its committed height.
    pub height: Option<u64>,
    /// "honest" or its lie.
    pub behaviour: String,
    /// Requests it holds, not yet executed.
    pub pending_requests: Option<usize>,
    /// Pieces of evidence of equivocation it has seen.
    pub evidence: Option<f64>,
    /// Who that evidence names.
    pub culprits: Vec<u16>,
    /// Whether it hears from a quorum.
    pub has_quorum: Option<bool>,
    /// Other nodes it heard from recently.
    pub peers_in_touch: Option<usize>,
    /// Its stable checkpoint.
    pub stable_checkpoint: Option<u64>,
}

/// The network's rules as the page shows them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PageNetwork {
    /// The partition, as given to `bftnet partition`.
    pub partition: Option<String>,
    /// Delay each way, ms.
    pub delay_ms: u64,
    /// Extra random delay, ms.
    pub jitter_ms: u64,
    /// Datagrams dropped, percent.
    pub loss_percent: f64,
    /// Every directed link.
    pub links: Vec<Link>,
    /// Whether the fault proxy runs (without it no node reaches another).
    pub proxy_running: bool,
}

/// Everything the page draws (`GET /api/state`).
#[derive(Clone, Debug, Serialize)]
pub struct Page {
    /// Nodes.
    pub n: usize,
    /// Faults tolerated.
    pub f: usize,
    /// 2f + 1.
    pub quorum: usize,
    /// The honest nodes' view, its primary, and whether it is changing.
    pub view: Option<u64>,
    /// The primary of `view`.
    pub primary: Option<u16>,
    /// Whether honest nodes are changing views.
    pub changing_view: bool,
    /// The highest honest height.
    pub height: u64,
    /// Every node.
    pub nodes: Vec<PageNode>,
    /// Links and rules.
    pub network: PageNetwork,
    /// The charts, oldest first.
    pub series: Vec<Point>,
    /// A line per fault in force.
    pub lessons: Vec<Lesson>,
    /// The extra load started from the page, tx/s.
    pub extra_load: Option<f64>,
}

/// What [`page`] needs besides the tracker.
#[derive(Debug)]
pub struct PageInput<'a> {
    /// The testnet's state file.
    pub state: &'a crate::net::layout::State,
    /// This poll.
    pub samples: &'a [NodeSample],
    /// The proxy's rules.
    pub faults: &'a Faults,
    /// Whether the proxy runs.
    pub proxy_running: bool,
    /// The page's extra load.
    pub extra_load: Option<f64>,
}

/// The page state.
pub fn page(input: &PageInput<'_>, tracker: &Tracker) -> Page {
    let (n, f) = (input.state.n, input.state.f);
    let view = cluster_view(input.samples);
    let nodes = input
        .samples
        .iter()
        .map(|sample| {
            let status = sample.status.as_ref();
            let role = match (sample.running, status) {
                (false, _) => "down",
                (true, None) => "no answer",
                (true, Some(_)) if view.is_some_and(|(_, p, _)| p == sample.id) => "primary",
                (true, Some(_)) => "backup",
            };
            PageNode {
                id: sample.id,
                running: sample.running,
                answering: status.is_some(),
                role,
                view: status.map(|s| s.view),
                in_view_change: status.is_some_and(|s| s.in_view_change),
                height: status.map(|s| s.height),
                behaviour: sample.behaviour.clone(),
                pending_requests: status.map(|s| s.pending_requests),
                evidence: sample.counters.as_ref().map(|c| c.evidence),
                culprits: sample.culprits.clone(),
                has_quorum: status.map(NodeStatus::has_quorum),
                peers_in_touch: status.map(|s| s.peers_in_touch),
                stable_checkpoint: status.map(|s| s.stable_checkpoint),
            }
        })
        .collect();
    Page {
        n,
        f,
        quorum: 2 * f + 1,
        view: view.map(|v| v.0),
        primary: view.map(|v| v.1),
        changing_view: view.is_some_and(|v| v.2),
        height: input
            .samples
            .iter()
            .filter(|s| s.honest())
            .filter_map(|s| s.status.as_ref())
            .map(|s| s.height)
            .max()
            .unwrap_or(0),
        nodes,
        network: PageNetwork {
            partition: input.faults.partition.clone(),
            delay_ms: input.faults.delay_ms,
            jitter_ms: input.faults.jitter_ms,
            loss_percent: input.faults.loss_percent,
            links: links(n, input.faults),
            proxy_running: input.proxy_running,
        },
        series: tracker.series().cloned().collect(),
        lessons: lessons(n, f, input.samples, input.faults),
        extra_load: input.extra_load,
    }
}

#[cfg(test)]
mod tests;
