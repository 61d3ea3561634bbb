//! `bftnet relay`: the fault proxy in front of any cluster, not only a
//! testnet of `bftnet up`, as a userspace delay relay (for a kernel without
//! `sch_netem`, or without root).
//!
//! Given a cluster file (the nodes' real addresses) and an IP every node can
//! reach (the Docker bridge's gateway for containers, 127.0.0.1 for
//! processes), it binds one UDP port per node on that IP and writes a second
//! cluster file, identical but for each node's address, which is now the
//! relay's port for that node. Nodes started with that file (and `listen`
//! set to their real address in their node file, as `bftnet init` writes
//! it) dial each other through the relay; clients keep the original file
//! and reach the nodes directly.
//!
//! What is delayed, exactly: every datagram between two nodes waits
//! `--delay` ms (plus up to `--jitter`) in the relay, in each direction, so
//! a node-to-node one-way trip gains the delay and a round trip twice it, as
//! netem's `delay` on each node's egress would give. A datagram is a node's
//! when its source address is a node's real address (nodes dial from their
//! QUIC socket). Anything else (a client that uses the relayed file by
//! mistake) passes at once. The relay's memory is bounded as the proxy's is
//! (sources per port, bytes held while delayed).

use super::error::NetError;
use super::layout::write_atomic;
use super::proxy::{Faults, Proxy, Route};
use bftd::config::ClusterFile;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// `bftnet relay`'s options.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// The cluster file with the nodes' real addresses.
    pub cluster: PathBuf,
    /// The IP the relay's ports are bound on.
    pub bind: IpAddr,
    /// Node i's relay port is `first_port + i`; `None`: free ports.
    pub first_port: Option<u16>,
    /// Added to every node-to-node datagram, each direction.
    pub delay_ms: u64,
    /// Up to this much more, uniformly at random.
    pub jitter_ms: u64,
    /// Node-to-node datagrams dropped at random, in percent.
    pub loss_percent: f64,
    /// Where the relayed cluster file is written.
    pub write_cluster: PathBuf,
}

/// Reads a cluster file as written (keeping `[protocol]`, keys and gRPC
/// addresses, which `Cluster::to_file` would not), refused with bftd's own
/// errors (file and field named) if it is not a valid cluster.
pub fn read_cluster(path: &Path) -> Result<ClusterFile, NetError> {
    let text = std::fs::read_to_string(path).map_err(NetError::io("read", path))?;
    let file: ClusterFile = toml::from_str(&text).map_err(|error| NetError::BadArgument {
        flag: "--cluster",
        value: path.display().to_string(),
        reason: format!("not a cluster file: {error}"),
    })?;
    bftd::config::Cluster::from_file(&file, path)?;
    Ok(file)
}

/// The routes for `cluster`'s nodes: the relay's port on `bind` for each,
/// to its address in the cluster file.
pub fn routes(
    cluster: &ClusterFile,
    bind: IpAddr,
    first_port: Option<u16>,
) -> Result<Vec<Route>, NetError> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(index, node)| {
            let port = match first_port {
                None => 0,
                Some(first) => u16::try_from(usize::from(first) + index).map_err(|_| {
                    NetError::BadArgument {
                        flag: "--port",
                        value: first.to_string(),
                        reason: "too high for one port per node".into(),
                    }
                })?,
            };
            Ok(Route {
                id: node.id,
                listen: SocketAddr::new(bind, port),
                target: node.address,
            })
        })
        .collect()
}

/// `cluster` with each node's address replaced by its relay port.
pub fn relayed(cluster: &ClusterFile, routes: &[Route]) -> ClusterFile {
    let mut relayed = cluster.clone();
    for node in &mut relayed.nodes {
        if let Some(route) = routes.iter().find(|route| route.id == node.id) {
            node.address = route.listen;
        }
    }
    relayed
}

/// What the relay does, in one line.
pub fn describe(options: &RelayOptions) -> String {
    let jitter = if options.jitter_ms > 0 {
        format!(" plus 0..{} ms at random", options.jitter_ms)
    } else {
        String::new()
    };
    let loss = if options.loss_percent > 0.0 {
        format!(", {}% of them dropped", options.loss_percent)
    } else {
        String::new()
    };
    format!(
        "every node-to-node datagram held {} ms{jitter} in each direction (one-way +{} ms, \
         round trip +{} ms){loss}; clients dialling the nodes' own addresses bypass the relay",
        options.delay_ms,
        options.delay_ms,
        2 * options.delay_ms
    )
}

/// Starts the relay and writes the relayed cluster file; the relay runs
/// until the returned [`Proxy`] is dropped.
pub fn start(options: &RelayOptions) -> Result<Proxy, NetError> {
    let cluster = read_cluster(&options.cluster)?;
    let routes = routes(&cluster, options.bind, options.first_port)?;
    let rules = Faults {
        delay_ms: options.delay_ms,
        jitter_ms: options.jitter_ms,
        loss_percent: options.loss_percent,
        ..Faults::default()
    };
    let proxy = Proxy::start(&routes, rules, None)?;
    let relayed = relayed(&cluster, proxy.routes());
    let text = format!(
        "# Written by `bftnet relay` from {}: the same cluster, each node's address\n\
         # replaced by the relay's port for it. For the nodes (their node files keep\n\
         # `listen` at their real address); clients use the original file.\n{}",
        options.cluster.display(),
        toml::to_string(&relayed).unwrap_or_default()
    );
    write_atomic(&options.write_cluster, &text)?;
    Ok(proxy)
}

/// `bftnet relay`: runs until SIGTERM, SIGHUP or Ctrl-C.
pub async fn run(options: &RelayOptions) -> Result<(), NetError> {
    let proxy = start(options)?;
    eprintln!(
        "bftnet relay: {}; {}; nodes use {}",
        proxy
            .routes()
            .iter()
            .map(|route| format!("node {} at {} -> {}", route.id, route.listen, route.target))
            .collect::<Vec<_>>()
            .join(", "),
        describe(options),
        options.write_cluster.display()
    );
    super::launch::shutdown_signal().await;
    proxy.log_counters();
    drop(proxy);
    eprintln!("bftnet relay: stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd::config::ClusterNode;
    use std::time::{Duration, Instant};
    use tokio::net::UdpSocket;

    fn node(id: u16, address: SocketAddr) -> ClusterNode {
        ClusterNode {
            id,
            address,
            public_key: bftd_crypto::KeyPair::from_seed([id as u8 + 1; 32])
                .public()
                .to_string(),
            grpc: None,
        }
    }

    async fn receive(socket: &UdpSocket) -> (Vec<u8>, SocketAddr, Instant) {
        let mut buffer = [0u8; 64];
        let (length, from) =
            tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buffer))
                .await
                .expect("nothing arrived in 5 s")
                .unwrap();
        (buffer[..length].to_vec(), from, Instant::now())
    }

    /// Nodes whose addresses are not the relay's (here 127.0.0.2 and
    /// 127.0.0.3, as container IPs are not the host's): each is recognised
    /// by its real address, every datagram between them is held at least
    /// the delay in each direction, the node sees the relay's address (not
    /// its own) as the source, and a client's datagram is not held.
    #[tokio::test]
    async fn relays_a_cluster_on_other_addresses_with_the_delay() {
        const DELAY: u64 = 150;
        let a = UdpSocket::bind("127.0.0.2:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.3:0").await.unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let cluster = ClusterFile {
            protocol: Default::default(),
            // A valid cluster has 3f + 1 nodes; nodes 2 and 3 stay silent.
            nodes: vec![
                node(0, a.local_addr().unwrap()),
                node(1, b.local_addr().unwrap()),
                node(2, "127.0.0.4:9".parse().unwrap()),
                node(3, "127.0.0.5:9".parse().unwrap()),
            ],
        };
        let dir = std::env::temp_dir().join(format!("bftnet-relay-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let options = RelayOptions {
            cluster: dir.join("cluster.toml"),
            bind: "127.0.0.1".parse().unwrap(),
            first_port: None,
            delay_ms: DELAY,
            jitter_ms: 0,
            loss_percent: 0.0,
            write_cluster: dir.join("relayed.toml"),
        };
        std::fs::write(&options.cluster, toml::to_string(&cluster).unwrap()).unwrap();
        let proxy = start(&options).unwrap();
        // The written file is the cluster with the relay's ports in it.
        let written = read_cluster(&options.write_cluster).unwrap();
        assert_eq!(written, relayed(&cluster, proxy.routes()));
        let via_a = written.nodes[0].address;
        let via_b = written.nodes[1].address;
        assert_eq!(via_a.ip().to_string(), "127.0.0.1");
        assert_ne!(via_a.port(), 0);
        assert_ne!(via_a, via_b);

        // a -> b, through b's relay port: held DELAY.
        let sent = Instant::now();
        a.send_to(b"ping", via_b).await.unwrap();
        let (bytes, seen_from, arrived) = receive(&b).await;
        assert_eq!(bytes, b"ping");
        assert_eq!(
            seen_from.ip().to_string(),
            "127.0.0.1",
            "the relay's address"
        );
        let one_way = arrived - sent;
        assert!(one_way >= Duration::from_millis(DELAY), "{one_way:?}");
        // b answers on the path it saw; a gets it from b's relay port, held
        // DELAY again.
        let sent = Instant::now();
        b.send_to(b"pong", seen_from).await.unwrap();
        let (bytes, from, arrived) = receive(&a).await;
        assert_eq!((bytes.as_slice(), from), (&b"pong"[..], via_b));
        let back = arrived - sent;
        assert!(back >= Duration::from_millis(DELAY), "{back:?}");

        // A client (not a node's address) is relayed without the delay.
        let sent = Instant::now();
        client.send_to(b"hello", via_a).await.unwrap();
        let (bytes, _, arrived) = receive(&a).await;
        assert_eq!(bytes, b"hello");
        let undelayed = arrived - sent;
        assert!(
            undelayed < Duration::from_millis(DELAY),
            "a client's datagram was held {undelayed:?}"
        );
        drop(proxy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Node i's relay port is --port + i.
    #[test]
    fn fixed_ports_follow_ids() {
        let cluster = ClusterFile {
            protocol: Default::default(),
            nodes: (0..4)
                .map(|id| {
                    node(
                        id,
                        SocketAddr::new([172, 31, 0, 10 + id as u8].into(), 7000),
                    )
                })
                .collect(),
        };
        let routes = routes(&cluster, "172.31.0.1".parse().unwrap(), Some(17000)).unwrap();
        let ports: Vec<u16> = routes.iter().map(|route| route.listen.port()).collect();
        assert_eq!(ports, [17000, 17001, 17002, 17003]);
        assert_eq!(routes[3].target, "172.31.0.13:7000".parse().unwrap());
        assert!(super::routes(&cluster, "127.0.0.1".parse().unwrap(), Some(65534)).is_err());
        let relayed = relayed(&cluster, &routes);
        assert_eq!(
            relayed.nodes[2].address,
            "172.31.0.1:17002".parse().unwrap()
        );
        assert_eq!(relayed.nodes[2].public_key, cluster.nodes[2].public_key);
    }
}
