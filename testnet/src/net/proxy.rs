//! The fault proxy: network faults between real nodes without root.
//!
//! Each node binds its real port (`listen` in its node file); the cluster
//! file lists a proxy port for it instead, so every peer and client reaches
//! the node through the proxy. The proxy is a UDP NAT: for each source
//! address it opens one upstream socket towards the node, so the node's
//! replies come back on that socket and are relayed to the source from the
//! proxy port the source dialed. QUIC sees an ordinary path.
//!
//! Sources whose address is a node's real port are that node (the lower id
//! dials, from its QUIC socket), so every datagram has a direction
//! `from -> to` between two nodes and the rules in `faults.json` apply:
//! blocked directed links (`partition`), delay with jitter, and loss. Client
//! traffic (any other source) passes untouched.
//!
//! `partition` and `heal` rewrite `faults.json` with a higher `generation`;
//! the proxy re-reads it twenty times a second, and once the new rules are
//! in force writes that generation to `faults-applied.json`, which the
//! command waits for. "In force" holds for every datagram, on connections
//! old and new: a datagram's fate is decided and it is sent under one read
//! of the rules (which the swap takes exclusively), and a delayed datagram
//! is checked again against the rules of the moment it leaves. So once the
//! command returns, nothing crosses a cut link, whenever it was sent.
//!
//! Memory is bounded: at most [`MAX_MAPPINGS`] sources per node port
//! (expired after [`MAPPING_IDLE`] without traffic) and at most
//! [`MAX_DELAYED_BYTES`] of delayed datagrams; beyond either, datagrams are
//! dropped and counted, as a congested network would.

use super::error::NetError;
use super::layout::{read_faults, write_applied, Layout, State};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Sources remembered per node port.
pub const MAX_MAPPINGS: usize = 1024;
/// A source silent this long loses its mapping (longer than QUIC's idle
/// timeout, so a live connection never does).
pub const MAPPING_IDLE: Duration = Duration::from_secs(60);
/// Delayed datagrams held at once, in bytes.
pub const MAX_DELAYED_BYTES: usize = 64 << 20;
/// Largest datagram relayed.
const MAX_DATAGRAM: usize = 65_536;
/// How often the rules file is re-read (`partition` and `heal` wait up to
/// this long for the proxy to notice).
const RELOAD_INTERVAL: Duration = Duration::from_millis(50);

/// The proxy's rules, kept in `faults.json`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Directed links `[from, to]` whose datagrams are dropped.
    #[serde(default)]
    pub blocked: Vec<[u16; 2]>,
    /// The partition as given to `bftnet partition`, for status lines.
    #[serde(default)]
    pub partition: Option<String>,
    /// Added to every datagram between two nodes, each direction.
    #[serde(default)]
    pub delay_ms: u64,
    /// Up to this much more, uniformly at random (reorders datagrams).
    #[serde(default)]
    pub jitter_ms: u64,
    /// Datagrams between nodes dropped at random, in percent.
    #[serde(default)]
    pub loss_percent: f64,
    /// Which version of the rules this is: each command that changes them
    /// writes a new one, and the proxy writes back the generation it has put
    /// in force (`faults-applied.json`), so the command can wait for it.
    #[serde(default)]
    pub generation: u64,
}

impl Faults {
    /// What happens to a datagram `from -> to`: `None` drops it, otherwise
    /// it leaves after the returned delay. Anything with a client end passes
    /// at once.
    fn decide(&self, from: Option<u16>, to: Option<u16>, rng: &mut impl Rng) -> Option<Duration> {
        let (Some(from), Some(to)) = (from, to) else {
            return Some(Duration::ZERO);
        };
        if self.blocked.contains(&[from, to]) {
            return None;
        }
        if self.loss_percent > 0.0 && rng.gen::<f64>() * 100.0 < self.loss_percent {
            return None;
        }
        let jitter = if self.jitter_ms > 0 {
            rng.gen_range(0..=self.jitter_ms)
        } else {
            0
        };
        Some(Duration::from_millis(self.delay_ms.saturating_add(jitter)))
    }

    /// One line for status displays; empty when the network is clean.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(partition) = &self.partition {
            parts.push(format!("partition {partition}"));
        }
        if self.delay_ms > 0 || self.jitter_ms > 0 {
            parts.push(format!(
                "delay {} ms (+0..{} ms)",
                self.delay_ms, self.jitter_ms
            ));
        }
        if self.loss_percent > 0.0 {
            parts.push(format!("loss {}%", self.loss_percent));
        }
        parts.join(", ")
    }
}

/// Parses a partition spec for `n` nodes into the directed links it blocks.
///
/// - `A,B/C,D` (two or more groups): no datagram crosses between groups,
///   either way. Nodes not named keep talking to everyone.
/// - `A,B->C,D`: one way only: datagrams from A or B to C or D are dropped,
///   the other direction still flows.
pub fn parse_partition(spec: &str, n: usize) -> Result<Vec<[u16; 2]>, String> {
    let group = |text: &str| -> Result<Vec<u16>, String> {
        let mut ids = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let id: u16 = part
                .parse()
                .map_err(|_| format!("`{part}` is not a node id"))?;
            if usize::from(id) >= n {
                return Err(format!(
                    "node {id} does not exist (nodes are 0..={})",
                    n - 1
                ));
            }
            if ids.contains(&id) {
                return Err(format!("node {id} is named twice"));
            }
            ids.push(id);
        }
        Ok(ids)
    };
    let mut blocked = Vec::new();
    if let Some((left, right)) = spec.split_once("->") {
        let (from, to) = (group(left)?, group(right)?);
        if let Some(id) = from.iter().find(|id| to.contains(id)) {
            return Err(format!("node {id} is on both sides"));
        }
        for &a in &from {
            for &b in &to {
                blocked.push([a, b]);
            }
        }
        return Ok(blocked);
    }
    let groups = spec.split('/').map(group).collect::<Result<Vec<_>, _>>()?;
    if groups.len() < 2 {
        return Err("expected two or more groups, like 0,1/2,3 (or one way: 0,1->2,3)".into());
    }
    for (i, first) in groups.iter().enumerate() {
        for (j, second) in groups.iter().enumerate() {
            if i == j {
                continue;
            }
            if let Some(id) = first.iter().find(|id| second.contains(id)) {
                return Err(format!("node {id} is in two groups"));
            }
            for &a in first {
                for &b in second {
                    blocked.push([a, b]);
                }
            }
        }
    }
    Ok(blocked)
}

/// Datagram counters, logged now and then.
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    blocked: AtomicU64,
    overflow: AtomicU64,
    refused_sources: AtomicU64,
}

/// A datagram waiting for its delay.
#[derive(Debug)]
struct Delayed {
    due: Instant,
    /// The link `[from, to]` it travels (only node-to-node datagrams are
    /// delayed), checked again when it is due.
    link: [u16; 2],
    socket: Arc<UdpSocket>,
    to: SocketAddr,
    bytes: Vec<u8>,
}

/// What became of one attempt to pass a datagram on.
#[derive(Debug, PartialEq)]
enum Verdict {
    /// Handed to the kernel.
    Sent,
    /// Dropped by the rules (a cut link, or random loss).
    Dropped,
    /// To be sent after this delay.
    Delay(Duration),
    /// The socket's send buffer is full: wait until it is writable and try
    /// again (deciding again: the rules may have changed meanwhile).
    Busy,
}

/// Sends without waiting; a full send buffer is [`Verdict::Busy`], any other
/// error drops the datagram (as a network would).
fn send_now(socket: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Verdict {
    match socket.try_send_to(bytes, to) {
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => Verdict::Busy,
        _ => Verdict::Sent,
    }
}

/// What every relay task shares.
#[derive(Debug)]
struct Context {
    /// Real node ports to node ids.
    who: HashMap<SocketAddr, u16>,
    /// The rules in force. Every datagram is decided and sent while holding
    /// a read guard, and `reload` swaps the rules under the write lock
    /// before it acknowledges them, so once acknowledged no datagram decided
    /// under the old rules can still leave.
    rules: RwLock<Faults>,
    delayed: mpsc::Sender<Delayed>,
    counters: Counters,
    started: Instant,
}

impl Context {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Decides a datagram `from -> to_node` and, if it may leave at once,
    /// sends it, under one read of the rules.
    fn decide_and_send(
        &self,
        (from, to_node): (Option<u16>, Option<u16>),
        socket: &UdpSocket,
        to: SocketAddr,
        bytes: &[u8],
        rng: &mut impl Rng,
    ) -> Verdict {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        match rules.decide(from, to_node, rng) {
            None => Verdict::Dropped,
            Some(delay) if delay.is_zero() => send_now(socket, to, bytes),
            Some(delay) => Verdict::Delay(delay),
        }
    }

    /// Sends a delayed datagram that is due, unless its link has been cut
    /// since it was queued (a partition applies to datagrams in flight).
    fn release(&self, item: &Delayed) -> Verdict {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner());
        if rules.blocked.contains(&item.link) {
            return Verdict::Dropped;
        }
        send_now(&item.socket, item.to, &item.bytes)
    }

    fn count(&self, verdict: &Verdict) {
        let counter = match verdict {
            Verdict::Sent => &self.counters.forwarded,
            Verdict::Dropped => &self.counters.blocked,
            Verdict::Delay(_) | Verdict::Busy => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Passes one datagram `from -> to_node` on from `socket` to `to`, as
    /// the rules say.
    async fn relay(
        &self,
        link: (Option<u16>, Option<u16>),
        socket: &Arc<UdpSocket>,
        to: SocketAddr,
        bytes: &[u8],
        rng: &mut impl Rng,
    ) {
        loop {
            let verdict = self.decide_and_send(link, socket, to, bytes, rng);
            self.count(&verdict);
            match verdict {
                Verdict::Sent | Verdict::Dropped => return,
                Verdict::Busy => {
                    let _ = socket.writable().await;
                }
                Verdict::Delay(delay) => {
                    let (Some(from), Some(to_node)) = link else {
                        return;
                    };
                    let delayed = Delayed {
                        due: Instant::now() + delay,
                        link: [from, to_node],
                        socket: socket.clone(),
                        to,
                        bytes: bytes.to_vec(),
                    };
                    if self.delayed.try_send(delayed).is_err() {
                        self.counters.overflow.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
            }
        }
    }
}

/// A UDP socket on loopback with large buffers (the default ones drop
/// datagrams under load, which would look like injected loss).
fn udp_socket(address: SocketAddr) -> std::io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(address),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    UdpSocket::from_std(socket.into())
}

/// One node behind the proxy: the port its peers and clients dial (the
/// proxy's), and where the node really listens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// The node's id.
    pub id: u16,
    /// The proxy's port for it (port 0: any free port, see
    /// [`Proxy::routes`]).
    pub listen: SocketAddr,
    /// The node's real address: where datagrams to it are relayed, and the
    /// source address by which its own datagrams are recognised.
    pub target: SocketAddr,
}

/// A running proxy; dropping it stops every task it started.
#[derive(Debug)]
pub struct Proxy {
    context: Arc<Context>,
    routes: Vec<Route>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Proxy {
    /// Binds one port per route and starts relaying under `rules`; with
    /// `reload_from`, the rules are then re-read from that testnet's
    /// `faults.json` (as `bftnet partition` and `heal` expect), otherwise
    /// they stay fixed. Must run inside a Tokio runtime.
    pub fn start(
        routes: &[Route],
        rules: Faults,
        reload_from: Option<Layout>,
    ) -> Result<Proxy, NetError> {
        let (delayed_tx, delayed_rx) = mpsc::channel(4096);
        let context = Arc::new(Context {
            who: routes
                .iter()
                .map(|route| (route.target, route.id))
                .collect(),
            rules: RwLock::new(rules),
            delayed: delayed_tx,
            counters: Counters::default(),
            started: Instant::now(),
        });
        let mut sockets = Vec::new();
        let mut bound = Vec::new();
        for route in routes {
            let socket = udp_socket(route.listen).map_err(NetError::io(
                "bind the proxy port",
                route.listen.to_string(),
            ))?;
            let listen = socket.local_addr().map_err(NetError::io(
                "bind the proxy port",
                route.listen.to_string(),
            ))?;
            bound.push(Route { listen, ..*route });
            sockets.push(socket);
        }
        let mut tasks = Vec::new();
        for (route, socket) in bound.iter().zip(sockets) {
            tasks.push(tokio::spawn(serve(
                context.clone(),
                route.id,
                Arc::new(socket),
                route.target,
            )));
        }
        tasks.push(tokio::spawn(schedule(context.clone(), delayed_rx)));
        if let Some(layout) = reload_from {
            tasks.push(tokio::spawn(reload(context.clone(), layout)));
        }
        Ok(Proxy {
            context,
            routes: bound,
            tasks,
        })
    }

    /// The routes as bound (a port 0 replaced by the one chosen).
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// Logs the datagram counters (relayed, dropped and why).
    pub fn log_counters(&self) {
        log_counters(&self.context);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Runs the proxy for the testnet in `layout` until SIGTERM or Ctrl-C.
pub async fn run(layout: &Layout) -> Result<(), NetError> {
    let state = State::load(layout)?;
    let routes: Vec<Route> = state
        .nodes
        .iter()
        .map(|node| Route {
            id: node.id,
            listen: node.address,
            target: node.listen,
        })
        .collect();
    let proxy = Proxy::start(&routes, read_faults(layout), Some(layout.clone()))?;
    eprintln!(
        "bftnet proxy: relaying {} nodes ({}); rules from {}",
        state.n,
        describe_routes(proxy.routes()),
        layout.faults().display()
    );
    super::launch::shutdown_signal().await;
    proxy.log_counters();
    drop(proxy);
    eprintln!("bftnet proxy: stopped");
    Ok(())
}

/// `listen -> target` for each route, for log lines.
fn describe_routes(routes: &[Route]) -> String {
    routes
        .iter()
        .map(|route| format!("{} -> {}", route.listen, route.target))
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_counters(context: &Context) {
    let c = &context.counters;
    eprintln!(
        "bftnet proxy: {} datagrams relayed, {} dropped by rules, {} dropped (delay queue full), {} sources refused",
        c.forwarded.load(Ordering::Relaxed),
        c.blocked.load(Ordering::Relaxed),
        c.overflow.load(Ordering::Relaxed),
        c.refused_sources.load(Ordering::Relaxed),
    );
}

/// Re-reads `faults.json` whenever it changes, puts the rules in force and
/// acknowledges their generation in `faults-applied.json`.
async fn reload(context: Arc<Context>, layout: Layout) {
    let mut last = String::new();
    let mut ticks = 0u64;
    loop {
        ticks += 1;
        if ticks.is_multiple_of(600) {
            log_counters(&context);
        }
        if let Ok(text) = std::fs::read_to_string(layout.faults()) {
            if text != last {
                apply(&context, &layout, &text);
                last = text;
            }
        }
        tokio::time::sleep(RELOAD_INTERVAL).await;
    }
}

/// Puts the rules in `text` in force, then says so in
/// `faults-applied.json`. The write lock waits out every datagram being
/// decided under the old rules, so the acknowledgement is true of every
/// datagram that leaves after it.
fn apply(context: &Context, layout: &Layout, text: &str) {
    let faults = match serde_json::from_str::<Faults>(text) {
        Ok(faults) => faults,
        Err(error) => {
            eprintln!(
                "bftnet proxy: ignoring unreadable {} (the previous rules stay): {error}",
                layout.faults().display()
            );
            return;
        }
    };
    let described = faults.describe();
    let generation = faults.generation;
    *context.rules.write().unwrap_or_else(|e| e.into_inner()) = faults;
    eprintln!(
        "bftnet proxy: rules now (generation {generation}): {}",
        if described.is_empty() {
            "none"
        } else {
            &described
        }
    );
    if let Err(error) = write_applied(layout, generation) {
        eprintln!("bftnet proxy: cannot acknowledge generation {generation}: {error}");
    }
}

/// One source's path to the node: its upstream socket and the task relaying
/// the node's replies back.
struct Mapping {
    upstream: Arc<UdpSocket>,
    last_active: Arc<AtomicU64>,
    replies: tokio::task::JoinHandle<()>,
}

/// Relays datagrams arriving at node `node`'s proxy port to its real port.
async fn serve(context: Arc<Context>, node: u16, listener: Arc<UdpSocket>, target: SocketAddr) {
    let mut mappings: HashMap<SocketAddr, Mapping> = HashMap::new();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut rng = rand::rngs::StdRng::from_entropy();
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            received = listener.recv_from(&mut buffer) => {
                let Ok((length, source)) = received else { continue };
                if !mappings.contains_key(&source) {
                    if mappings.len() >= MAX_MAPPINGS {
                        context.counters.refused_sources.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Ok(mapping) = open_mapping(&context, node, &listener, source, target).await else {
                        continue;
                    };
                    mappings.insert(source, mapping);
                }
                let Some(mapping) = mappings.get(&source) else { continue };
                mapping.last_active.store(context.now_ms(), Ordering::Relaxed);
                let from = context.who.get(&source).copied();
                let bytes = buffer.get(..length).unwrap_or_default();
                context.relay((from, Some(node)), &mapping.upstream, target, bytes, &mut rng).await;
            }
            _ = sweep.tick() => {
                let now = context.now_ms();
                let idle = MAPPING_IDLE.as_millis() as u64;
                mappings.retain(|_, mapping| {
                    let keep = now.saturating_sub(mapping.last_active.load(Ordering::Relaxed)) < idle;
                    if !keep {
                        mapping.replies.abort();
                    }
                    keep
                });
            }
        }
    }
}

async fn open_mapping(
    context: &Arc<Context>,
    node: u16,
    listener: &Arc<UdpSocket>,
    source: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<Mapping> {
    // On the proxy's own address, not the node's: a node in a container
    // is reached from the host's address on that network (the node's
    // address is not the host's to bind), and the node then sees every
    // relayed path coming from the proxy.
    let upstream = udp_socket(SocketAddr::new(listener.local_addr()?.ip(), 0))?;
    upstream.connect(target).await?;
    let upstream = Arc::new(upstream);
    let last_active = Arc::new(AtomicU64::new(context.now_ms()));
    let replies = tokio::spawn(relay_replies(
        context.clone(),
        node,
        upstream.clone(),
        listener.clone(),
        source,
        last_active.clone(),
    ));
    Ok(Mapping {
        upstream,
        last_active,
        replies,
    })
}

/// Relays the node's datagrams on one upstream socket back to the source.
async fn relay_replies(
    context: Arc<Context>,
    node: u16,
    upstream: Arc<UdpSocket>,
    listener: Arc<UdpSocket>,
    source: SocketAddr,
    last_active: Arc<AtomicU64>,
) {
    let to = context.who.get(&source).copied();
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut rng = rand::rngs::StdRng::from_entropy();
    loop {
        // A connected UDP socket reports "connection refused" while the node
        // is down; that is not a reason to stop.
        let length = match upstream.recv(&mut buffer).await {
            Ok(length) => length,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        last_active.store(context.now_ms(), Ordering::Relaxed);
        let bytes = buffer.get(..length).unwrap_or_default();
        context
            .relay((Some(node), to), &listener, source, bytes, &mut rng)
            .await;
    }
}

/// An entry of the delay queue, ordered by due time, then arrival.
struct Due(Instant, u64, Delayed);

impl PartialEq for Due {
    fn eq(&self, other: &Due) -> bool {
        (self.0, self.1) == (other.0, other.1)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Due) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Due) -> std::cmp::Ordering {
        (self.0, self.1).cmp(&(other.0, other.1))
    }
}

/// Sends delayed datagrams when they are due (if their link is still
/// open), holding at most [`MAX_DELAYED_BYTES`].
async fn schedule(context: Arc<Context>, mut incoming: mpsc::Receiver<Delayed>) {
    let mut queue: BinaryHeap<Reverse<Due>> = BinaryHeap::new();
    let mut held = 0usize;
    let mut arrivals = 0u64;
    loop {
        let next = queue.peek().map(|Reverse(due)| due.0);
        tokio::select! {
            item = incoming.recv() => {
                let Some(item) = item else { return };
                if held + item.bytes.len() > MAX_DELAYED_BYTES {
                    context.counters.overflow.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                held += item.bytes.len();
                arrivals += 1;
                queue.push(Reverse(Due(item.due, arrivals, item)));
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                while queue.peek().is_some_and(|Reverse(due)| due.0 <= now) {
                    let Some(Reverse(Due(_, _, item))) = queue.pop() else { break };
                    held = held.saturating_sub(item.bytes.len());
                    loop {
                        let verdict = context.release(&item);
                        context.count(&verdict);
                        if verdict != Verdict::Busy {
                            break;
                        }
                        let _ = item.socket.writable().await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Partition specs block exactly the links they name, both ways for
    /// groups, one way for `->`; bad specs are refused with a reason.
    #[test]
    fn partition_specs() {
        let mut two_way = parse_partition("0,1/2,3", 4).unwrap();
        two_way.sort();
        assert_eq!(
            two_way,
            vec![
                [0, 2],
                [0, 3],
                [1, 2],
                [1, 3],
                [2, 0],
                [2, 1],
                [3, 0],
                [3, 1]
            ]
        );
        assert_eq!(parse_partition("0->1,2", 4).unwrap(), vec![[0, 1], [0, 2]]);
        assert_eq!(parse_partition("0/1/2", 4).unwrap().len(), 6);
        assert!(parse_partition("0,1", 4).is_err());
        assert!(parse_partition("0,1/1,2", 4).is_err());
        assert!(parse_partition("0/7", 4).is_err());
        assert!(parse_partition("a/b", 4).is_err());
        assert!(parse_partition("0->0", 4).is_err());
    }

    /// Rules apply between nodes only; clients always pass.
    #[test]
    fn decisions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let faults = Faults {
            blocked: vec![[0, 1]],
            delay_ms: 5,
            ..Faults::default()
        };
        assert_eq!(faults.decide(Some(0), Some(1), &mut rng), None);
        assert_eq!(
            faults.decide(Some(1), Some(0), &mut rng),
            Some(Duration::from_millis(5))
        );
        assert_eq!(faults.decide(None, Some(1), &mut rng), Some(Duration::ZERO));
        let lossy = Faults {
            loss_percent: 50.0,
            ..Faults::default()
        };
        let dropped = (0..1000)
            .filter(|_| lossy.decide(Some(0), Some(1), &mut rng).is_none())
            .count();
        assert!((400..600).contains(&dropped), "{dropped}");
    }

    /// A context relaying between `nodes` (real address, id) with no rules,
    /// its delay queue running.
    fn test_context(nodes: &[(SocketAddr, u16)]) -> Arc<Context> {
        let (delayed, receiver) = mpsc::channel(16);
        let context = Arc::new(Context {
            who: nodes.iter().copied().collect(),
            rules: RwLock::new(Faults::default()),
            delayed,
            counters: Counters::default(),
            started: Instant::now(),
        });
        tokio::spawn(schedule(context.clone(), receiver));
        context
    }

    /// Datagrams cross the proxy both ways, and a blocked link drops them,
    /// on a path (mapping) opened before the rule came.
    #[tokio::test]
    async fn relays_and_blocks() {
        let node = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = Arc::new(udp_socket("127.0.0.1:0".parse().unwrap()).unwrap());
        let proxy_address = listener.local_addr().unwrap();
        let context = test_context(&[
            (node.local_addr().unwrap(), 1),
            (peer.local_addr().unwrap(), 0),
        ]);
        tokio::spawn(serve(
            context.clone(),
            1,
            listener,
            node.local_addr().unwrap(),
        ));
        let mut buffer = [0u8; 64];
        let timeout = Duration::from_secs(2);
        peer.send_to(b"ping", proxy_address).await.unwrap();
        let (length, via) = tokio::time::timeout(timeout, node.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buffer[..length], b"ping");
        node.send_to(b"pong", via).await.unwrap();
        let (length, from) = tokio::time::timeout(timeout, peer.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!((&buffer[..length], from), (&b"pong"[..], proxy_address));
        *context.rules.write().unwrap() = Faults {
            blocked: vec![[0, 1]],
            ..Faults::default()
        };
        peer.send_to(b"lost", proxy_address).await.unwrap();
        let late =
            tokio::time::timeout(Duration::from_millis(300), node.recv_from(&mut buffer)).await;
        assert!(late.is_err(), "a blocked datagram arrived");
        // The other direction still flows (one-way rule).
        node.send_to(b"back", via).await.unwrap();
        let (length, _) = tokio::time::timeout(timeout, peer.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buffer[..length], b"back");
    }

    /// A partition applies to datagrams already in flight: one queued by
    /// the delay before the cut is dropped when it falls due after it.
    #[tokio::test]
    async fn a_cut_drops_delayed_datagrams_in_flight() {
        let node = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let peer = udp_socket("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = Arc::new(udp_socket("127.0.0.1:0".parse().unwrap()).unwrap());
        let proxy_address = listener.local_addr().unwrap();
        let context = test_context(&[
            (node.local_addr().unwrap(), 1),
            (peer.local_addr().unwrap(), 0),
        ]);
        let delayed = Faults {
            delay_ms: 300,
            ..Faults::default()
        };
        *context.rules.write().unwrap() = delayed.clone();
        tokio::spawn(serve(
            context.clone(),
            1,
            listener,
            node.local_addr().unwrap(),
        ));
        let mut buffer = [0u8; 64];
        peer.send_to(b"queued", proxy_address).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        *context.rules.write().unwrap() = Faults {
            blocked: vec![[0, 1]],
            ..delayed.clone()
        };
        let late =
            tokio::time::timeout(Duration::from_millis(600), node.recv_from(&mut buffer)).await;
        assert!(
            late.is_err(),
            "a datagram queued before the cut crossed it after"
        );
        // Healed: delayed datagrams arrive again.
        *context.rules.write().unwrap() = delayed;
        peer.send_to(b"after", proxy_address).await.unwrap();
        let (length, _) = tokio::time::timeout(Duration::from_secs(2), node.recv_from(&mut buffer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buffer[..length], b"after");
    }

    /// The proxy acknowledges each generation of `faults.json` once it is in
    /// force, and only then; a file it cannot read changes nothing and is
    /// not acknowledged.
    #[tokio::test]
    async fn new_rules_are_acknowledged_once_in_force() {
        let dir = std::env::temp_dir().join(format!("bftnet-proxy-ack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = Layout::new(&dir);
        let context = test_context(&[]);
        let wait_for = |generation: u64| {
            let layout = layout.clone();
            async move {
                for _ in 0..200 {
                    if crate::net::layout::read_applied(&layout) == Some(generation) {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                false
            }
        };
        let cut = Faults {
            blocked: vec![[0, 1]],
            partition: Some("0/1".into()),
            generation: 5,
            ..Faults::default()
        };
        crate::net::layout::write_faults(&layout, &cut).unwrap();
        let reloader = tokio::spawn(reload(context.clone(), layout.clone()));
        assert!(wait_for(5).await, "generation 5 never acknowledged");
        assert_eq!(*context.rules.read().unwrap(), cut);
        let healed = Faults {
            generation: 6,
            ..Faults::default()
        };
        crate::net::layout::write_faults(&layout, &healed).unwrap();
        assert!(wait_for(6).await, "generation 6 never acknowledged");
        assert_eq!(*context.rules.read().unwrap(), healed);
        assert_eq!(crate::net::layout::next_generation(&layout), 7);
        std::fs::write(layout.faults(), "{ not json").unwrap();
        tokio::time::sleep(RELOAD_INTERVAL * 4).await;
        assert_eq!(crate::net::layout::read_applied(&layout), Some(6));
        assert_eq!(*context.rules.read().unwrap(), healed);
        reloader.abort();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
