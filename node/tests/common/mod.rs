//! A real cluster for tests: `bftd run` processes on loopback with free
//! ports, killed by PID when the guard drops (even if the test fails).

#![allow(dead_code)]

use bftd::client::Client;
use bftd::config::{self, Cluster, ClusterFile, ClusterNode};
use bftd_crypto::KeyPair;
use bftd_protocol::{NodeId, RequestMode};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Small windows so that a few dozen blocks prune (with `[storage]
/// retain_blocks = 17`): a checkpoint every 8 heights, requests remembered
/// for 16.
pub fn small_windows() -> bftd_protocol::ConsensusSettings {
    bftd_protocol::ConsensusSettings {
        request_mode: RequestMode::ClientSigned,
        checkpoint_interval: 8,
        window: 16,
        request_lifetime: 16,
        ..bftd_protocol::ConsensusSettings::default()
    }
}

/// Ports tests pick from: below Linux's ephemeral range (32768-60999 by
/// default), where the kernel puts the source ports of outgoing
/// connections. A port picked from the ephemeral range could be taken,
/// between the pick and the node's bind, by any client connection of a
/// test running alongside (each metrics poll opens one): "address already
/// in use" at a node's start, one run in a few hundred.
const TEST_PORTS: std::ops::Range<u16> = 20_000..32_768;

/// `count` distinct loopback ports that were free a moment ago for both
/// UDP (QUIC) and TCP (metrics, gRPC), from [`TEST_PORTS`] (each is held
/// until all are picked, so no two are the same).
pub fn free_ports(count: usize) -> Vec<u16> {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        let port = rng.gen_range(TEST_PORTS);
        let bound = UdpSocket::bind(("127.0.0.1", port))
            .and_then(|udp| Ok((udp, std::net::TcpListener::bind(("127.0.0.1", port))?)));
        if let Ok(sockets) = bound {
            held.push((port, sockets));
        }
    }
    held.into_iter().map(|(port, _)| port).collect()
}

/// A free loopback port for UDP and TCP (see [`free_ports`]).
pub fn free_port() -> u16 {
    free_ports(1)[0]
}

pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub cluster: Cluster,
    pub metrics: Vec<SocketAddr>,
    children: Vec<Option<Child>>,
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn bftd() -> &'static str {
    env!("CARGO_BIN_EXE_bftd")
}

impl TestCluster {
    /// The cluster's nodes as transport peers (for tests that join the
    /// peer network themselves, as a replica would).
    #[allow(dead_code)]
    pub fn peers(&self) -> Vec<bftd::transport::Peer> {
        self.cluster
            .committee
            .public_keys()
            .into_iter()
            .enumerate()
            .map(|(id, key)| bftd::transport::Peer {
                id: NodeId(id as u16),
                address: self.cluster.addresses[id],
                key,
            })
            .collect()
    }

    /// Writes keys and configs for `n` nodes and starts them all.
    pub fn start(n: usize, mode: RequestMode, extra: &str) -> TestCluster {
        let mut cluster = TestCluster::configure(n, mode, extra);
        for id in 0..n {
            cluster.init(id);
            cluster.start_node(id);
        }
        cluster.wait_healthy(Duration::from_secs(20));
        cluster
    }

    /// Writes keys and configs for `n` nodes, starting none.
    pub fn configure(n: usize, mode: RequestMode, extra: &str) -> TestCluster {
        let protocol = bftd_protocol::ConsensusSettings {
            request_mode: mode,
            ..Default::default()
        };
        TestCluster::configure_with(n, protocol, extra)
    }

    /// [`TestCluster::configure`] with the cluster file's consensus
    /// settings given.
    pub fn configure_with(
        n: usize,
        protocol: bftd_protocol::ConsensusSettings,
        extra: &str,
    ) -> TestCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let keys: Vec<KeyPair> = (0..n)
            .map(|_| KeyPair::generate(&mut rand::rngs::OsRng))
            .collect();
        // Node and metrics ports, all distinct.
        let ports = free_ports(2 * n);
        let nodes: Vec<ClusterNode> = keys
            .iter()
            .enumerate()
            .map(|(id, key)| ClusterNode {
                id: id as u16,
                address: format!("127.0.0.1:{}", ports[id]).parse().unwrap(),
                public_key: key.public().to_string(),
                grpc: None,
            })
            .collect();
        let file = ClusterFile { protocol, nodes };
        std::fs::write(
            dir.path().join("cluster.toml"),
            toml::to_string(&file).unwrap(),
        )
        .unwrap();
        let cluster = Cluster::load(&dir.path().join("cluster.toml")).unwrap();
        let mut metrics = Vec::new();
        for (id, key) in keys.iter().enumerate() {
            config::write_key(&dir.path().join(format!("node{id}.key")), key).unwrap();
            let address: SocketAddr = format!("127.0.0.1:{}", ports[n + id]).parse().unwrap();
            metrics.push(address);
            let text = format!(
                "id = {id}\nkey_file = \"node{id}.key\"\ncluster_file = \"cluster.toml\"\n\
                 data_dir = \"data{id}\"\nmetrics = \"{address}\"\n\n[protocol]\n{extra}\n"
            );
            std::fs::write(dir.path().join(format!("node{id}.toml")), text).unwrap();
        }
        TestCluster {
            dir,
            cluster,
            metrics,
            children: (0..n).map(|_| None).collect(),
        }
    }

    /// `bftd init`: creates node `id`'s store.
    pub fn init(&self, id: usize) {
        let output = Command::new(bftd())
            .arg("init")
            .arg("--config")
            .arg(self.node_file(id))
            .stdin(Stdio::null())
            .output()
            .expect("run bftd init");
        assert!(
            output.status.success(),
            "bftd init: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Node `id`'s node file.
    pub fn node_file(&self, id: usize) -> PathBuf {
        self.path().join(format!("node{id}.toml"))
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn start_node(&mut self, id: usize) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path().join(format!("node{id}.log")))
            .unwrap();
        let child = Command::new(bftd())
            .arg("run")
            .arg("--config")
            .arg(self.path().join(format!("node{id}.toml")))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn bftd");
        self.children[id] = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill(&mut self, id: usize) {
        if let Some(mut child) = self.children[id].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGSTOP: the node stays connected but never answers (a hung or
    /// censoring node, as its clients see it). `resume` undoes it.
    pub fn pause(&self, id: usize) {
        self.signal(id, "STOP");
    }

    /// SIGCONT after [`TestCluster::pause`].
    pub fn resume(&self, id: usize) {
        self.signal(id, "CONT");
    }

    fn signal(&self, id: usize, signal: &str) {
        let pid = self.children[id].as_ref().expect("node running").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn log(&self, id: usize) -> String {
        std::fs::read_to_string(self.path().join(format!("node{id}.log"))).unwrap_or_default()
    }

    /// Blocks until every running node answers /healthz.
    pub fn wait_healthy(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for (id, child) in self.children.iter().enumerate() {
            if child.is_none() {
                continue;
            }
            while http_get(self.metrics[id], "/healthz").is_none() {
                assert!(
                    Instant::now() < deadline,
                    "node {id} not healthy; log:\n{}",
                    self.log(id)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    pub fn metrics(&self, id: usize) -> String {
        http_get(self.metrics[id], "/metrics").unwrap_or_default()
    }

    /// A metric's value (first sample whose name and labels start with `prefix`).
    pub fn metric(&self, id: usize, prefix: &str) -> f64 {
        self.metrics(id)
            .lines()
            .find(|line| line.starts_with(prefix))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to 5 s) until a metric reaches `at_least`, and returns
    /// its value: a node publishes its metrics after the step that changed
    /// them, so a reply can arrive before the count does.
    pub async fn metric_reaches(&self, id: usize, prefix: &str, at_least: f64) -> f64 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let value = self.metric(id, prefix);
            if value >= at_least || tokio::time::Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn client(&self, node: usize) -> Client {
        let key = KeyPair::generate(&mut rand::rngs::OsRng);
        Client::connect(&self.cluster, NodeId(node as u16), key)
            .await
            .expect("client connects")
    }
}

/// A tiny HTTP GET on loopback, for /healthz and /metrics: the body of a
/// 200 answer.
pub fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    match http_answer(address, path)? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// A tiny HTTP GET on loopback: status code and body, whatever the code.
pub fn http_answer(address: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect_timeout(&address, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

pub fn data_dir(cluster: &TestCluster, id: usize) -> PathBuf {
    cluster.path().join(format!("data{id}"))
}
