//! `bftnet init`: a cluster for real hosts. Generates every node's key, the
//! cluster file and one directory per host, ready to copy to that machine
//! and start with `bftd run --config node.toml`; with `--compose`, also a
//! compose file that runs the same cluster as containers on a private
//! network.
//!
//! ```text
//! OUT/cluster.toml            ids, advertised addresses, public keys
//! OUT/client.key              a client key for `bftd submit --key`
//! OUT/node0/node.toml         node 0's node file (paths relative to it)
//! OUT/node0/node.key          node 0's secret key (mode 0600)
//! OUT/node0/cluster.toml      a copy of the cluster file
//! OUT/node0/data/bftd.redb    node 0's store, created as `bftd init` does
//! OUT/docker-compose.yml      with --compose
//! ```
//!
//! Each store is created here, once, with bftd's own `init`: `bftd run`
//! never creates one (a missing data directory must not silently become a
//! new node that forgot its votes), so a node directory is complete.

use super::error::NetError;
use super::layout::{check_size, write_atomic, RuntimeOut};
use bftd::config::{write_key, ClusterFile, ClusterNode, NodeConfig};
use bftd_crypto::KeyPair;
use bftd_protocol::{ConsensusSettings, RequestMode};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where the node file puts the store inside a container (the image
/// declares `/data` a volume).
pub const CONTAINER_DATA_DIR: &str = "/data";
/// Where a container finds its node directory (mounted read-only).
pub const CONTAINER_CONFIG_DIR: &str = "/config";

/// `bftnet init`'s options.
#[derive(Clone, Debug)]
pub struct InitOptions {
    /// Every node's advertised address, by id (`HOST` or `HOST:PORT`,
    /// already parsed; the port defaulted to `port`).
    pub hosts: Vec<SocketAddr>,
    /// The metrics port of every node.
    pub metrics_port: u16,
    /// Listen on 0.0.0.0 (every interface) instead of the advertised
    /// address: for hosts behind NAT or cloud hosts whose public address
    /// is not on any interface.
    pub bind_all: bool,
    /// Also write `docker-compose.yml`; node files then name the
    /// container's paths (`/data`).
    pub compose: bool,
    /// The image the compose file runs.
    pub image: String,
    /// How requests are authenticated.
    pub request_mode: RequestMode,
    /// The output directory (must be absent or empty).
    pub out: PathBuf,
}

/// Parses `--hosts`: comma- or whitespace-separated `IP` or `IP:PORT`
/// (`[v6]:PORT` for IPv6); a bare IP gets `port`. Lines starting with `#`
/// are comments (for `--hosts-file`). Host names are refused: the cluster
/// file holds addresses, so every node and client dials exactly what is
/// written, with no resolver in the trust path.
pub fn parse_hosts(text: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let mut hosts = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        for item in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|item| !item.is_empty())
        {
            let address = if let Ok(address) = item.parse::<SocketAddr>() {
                address
            } else if let Ok(ip) = item.parse::<IpAddr>() {
                SocketAddr::new(ip, port)
            } else {
                return Err(format!(
                    "`{item}` is not an IP address or IP:PORT (host names are not accepted: \
                     the cluster file holds addresses)"
                ));
            };
            if address.port() == 0 {
                return Err(format!("`{item}`: port 0 cannot be dialled"));
            }
            if address.ip().is_unspecified() {
                return Err(format!(
                    "`{item}`: 0.0.0.0 cannot be dialled; give each host's own address \
                     (--bind-all makes the nodes listen on every interface)"
                ));
            }
            if hosts.contains(&address) {
                return Err(format!("`{item}` is listed twice"));
            }
            hosts.push(address);
        }
    }
    Ok(hosts)
}

/// One node's directory.
pub fn node_dir(out: &Path, id: u16) -> PathBuf {
    out.join(format!("node{id}"))
}

#[derive(Serialize)]
struct NodeFileOut {
    id: u16,
    key_file: &'static str,
    cluster_file: &'static str,
    data_dir: String,
    listen: SocketAddr,
    metrics: SocketAddr,
    log_format: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    runtime: Option<RuntimeOut>,
}

/// Generates the cluster in `options.out`. Returns the cluster file's
/// path.
pub fn init(options: &InitOptions) -> Result<PathBuf, NetError> {
    let n = options.hosts.len();
    check_size(
        n,
        ": list one address per node in --hosts (4 hosts tolerate 1 fault)",
    )?;
    let subnet = if options.compose {
        Some(compose_subnet(&options.hosts)?)
    } else {
        None
    };
    let out = std::path::absolute(&options.out).unwrap_or_else(|_| options.out.clone());
    match std::fs::read_dir(&out) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(NetError::BadArgument {
                    flag: "--out",
                    value: out.display().to_string(),
                    reason: "exists and is not empty; bftnet init never overwrites keys or \
                             stores: pick a new directory"
                        .into(),
                });
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(NetError::Io {
                action: "read",
                path: out,
                source,
            })
        }
    }
    std::fs::create_dir_all(&out).map_err(NetError::io("create", &out))?;

    let mut rng = rand::rngs::OsRng;
    let keys: Vec<KeyPair> = (0..n).map(|_| KeyPair::generate(&mut rng)).collect();
    let cluster = ClusterFile {
        protocol: ConsensusSettings {
            request_mode: options.request_mode,
            ..Default::default()
        },
        nodes: options
            .hosts
            .iter()
            .zip(&keys)
            .enumerate()
            .map(|(id, (address, key))| ClusterNode {
                id: id as u16,
                address: *address,
                public_key: key.public().to_string(),
                // gRPC is opt-in per node (docs/operating.md); add
                // `grpc = "host:port"` here when a node serves it.
                grpc: None,
            })
            .collect(),
    };
    let cluster_text = format!(
        "# Generated by `bftnet init`: the cluster file. Every node and every client\n\
         # needs this same file. `address` is what peers and clients dial (one UDP\n\
         # port per node: QUIC for peers and clients alike). [protocol] decides what\n\
         # executes and must be identical on every node.\n{}",
        toml::to_string(&cluster).unwrap_or_default()
    );
    let cluster_path = out.join("cluster.toml");
    write_atomic(&cluster_path, &cluster_text)?;
    bftd::config::Cluster::load(&cluster_path)?;
    let client_key = out.join("client.key");
    write_key(&client_key, &KeyPair::generate(&mut rng))
        .map_err(NetError::io("write", &client_key))?;

    for (id, (address, key)) in options.hosts.iter().zip(&keys).enumerate() {
        let id = id as u16;
        let dir = node_dir(&out, id);
        std::fs::create_dir_all(&dir).map_err(NetError::io("create", &dir))?;
        let key_path = dir.join("node.key");
        write_key(&key_path, key).map_err(NetError::io("write", &key_path))?;
        write_atomic(&dir.join("cluster.toml"), &cluster_text)?;
        let bind_ip = if options.bind_all {
            unspecified(address.ip())
        } else {
            address.ip()
        };
        let file = NodeFileOut {
            id,
            key_file: "node.key",
            cluster_file: "cluster.toml",
            data_dir: if options.compose {
                CONTAINER_DATA_DIR.into()
            } else {
                "data".into()
            },
            listen: SocketAddr::new(bind_ip, address.port()),
            metrics: SocketAddr::new(bind_ip, metrics_port(options, usize::from(id))?),
            log_format: if options.compose { "json" } else { "human" },
            runtime: RuntimeOut::shared(sharing(options, usize::from(id))),
        };
        let where_data = if options.compose {
            "# data_dir is the container's /data volume (compose mounts ./node{id}/data there).\n"
                .replace("{id}", &id.to_string())
        } else {
            String::new()
        };
        let text = format!(
            "# Generated by `bftnet init`: node {id} of {n}, advertised at {address}.\n\
             # Copy this directory to that host and start it from here:\n\
             #   bftd run --config node.toml\n\
             # Paths are relative to this file. The store in data/ was created once by\n\
             # `bftnet init` (as `bftd init` does); never replace it with an older copy.\n\
             # /metrics, /status, /healthz and /evidence are public on `metrics`.\n\
             {where_data}{}",
            toml::to_string(&file).unwrap_or_default()
        );
        let node_path = dir.join("node.toml");
        write_atomic(&node_path, &text)?;
        let mut config = NodeConfig::load(&node_path)?;
        // In a container the store lives at /data; here it is the directory
        // compose mounts there.
        config.data_dir = dir.join("data");
        bftd::init(&config).map_err(|error| NetError::Io {
            action: "create the store in",
            path: config.data_dir.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
    }
    if let Some(subnet) = subnet {
        let path = out.join("docker-compose.yml");
        write_atomic(&path, &compose_file(options, subnet))?;
    }
    Ok(cluster_path)
}

/// How many nodes share node `index`'s machine: those on its IP, or all
/// of them in containers on this Docker host.
fn sharing(options: &InitOptions, index: usize) -> usize {
    let ip = options.hosts[index].ip();
    if options.compose {
        options.hosts.len()
    } else {
        options.hosts.iter().filter(|host| host.ip() == ip).count()
    }
}

/// Node `index`'s metrics port: `metrics_port`, plus one for each earlier
/// node on the same IP (several nodes on one machine, as in a test).
fn metrics_port(options: &InitOptions, index: usize) -> Result<u16, NetError> {
    let ip = options.hosts[index].ip();
    let earlier = options.hosts[..index]
        .iter()
        .filter(|host| host.ip() == ip)
        .count();
    u16::try_from(usize::from(options.metrics_port) + earlier)
        .ok()
        .filter(|port| *port != 0)
        .ok_or_else(|| NetError::BadArgument {
            flag: "--metrics-port",
            value: options.metrics_port.to_string(),
            reason: "too high for one port per node on the same address".into(),
        })
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The /24 every compose address must share (the private network's
/// subnet), or an error saying so.
fn compose_subnet(hosts: &[SocketAddr]) -> Result<[u8; 3], NetError> {
    let mut subnet = None;
    for host in hosts {
        let IpAddr::V4(ip) = host.ip() else {
            return Err(compose_error(host, "IPv4 addresses only"));
        };
        let [a, b, c, d] = ip.octets();
        if d < 2 || d == 255 {
            return Err(compose_error(
                host,
                "x.y.z.1 is the network's gateway; use .2 to .254",
            ));
        }
        if ip.is_loopback() {
            return Err(compose_error(host, "a private network, not loopback"));
        }
        match subnet {
            None => subnet = Some([a, b, c]),
            Some(prefix) if prefix != [a, b, c] => {
                return Err(compose_error(
                    host,
                    "every address in one /24 (the private network's subnet), e.g. \
                     172.28.0.10,172.28.0.11,...",
                ))
            }
            Some(_) => {}
        }
    }
    subnet.ok_or_else(|| NetError::BadArgument {
        flag: "--hosts",
        value: String::new(),
        reason: "no hosts".into(),
    })
}

fn compose_error(host: &SocketAddr, reason: &str) -> NetError {
    NetError::BadArgument {
        flag: "--hosts",
        value: host.to_string(),
        reason: format!("--compose needs {reason}"),
    }
}

/// A compose file running the cluster on its own bridge network, each node
/// at its cluster address, its node directory mounted read-only at
/// /config and its store directory at /data.
fn compose_file(options: &InitOptions, [a, b, c]: [u8; 3]) -> String {
    let mut text = format!(
        "# Generated by `bftnet init --compose`: {n} bftd nodes on a private network.\n\
         # Build the image first (deploy/build-image.sh), then from this directory:\n\
         #   docker-compose up -d\n\
         # The containers run as a non-root user: the node directories must be\n\
         # readable and data/ writable by it (deploy/up.sh sets BFTD_USER and\n\
         # ownership). From the Docker host, clients reach the nodes at the\n\
         # addresses in cluster.toml: bftd submit --cluster cluster.toml hello\n\
         version: \"2.4\"\n\
         services:\n",
        n = options.hosts.len()
    );
    for (id, host) in options.hosts.iter().enumerate() {
        text.push_str(&format!(
            "  node{id}:\n\
             \x20   image: ${{BFTD_IMAGE:-{image}}}\n\
             \x20   user: \"${{BFTD_USER:-10001:10001}}\"\n\
             \x20   command: [\"run\", \"--config\", \"{config}/node.toml\"]\n\
             \x20   stop_grace_period: 20s\n\
             \x20   restart: unless-stopped\n\
             \x20   volumes:\n\
             \x20     - ./node{id}:{config}:ro\n\
             \x20     - ./node{id}/data:{data}\n\
             \x20   networks:\n\
             \x20     bftd:\n\
             \x20       ipv4_address: {ip}\n",
            image = options.image,
            config = CONTAINER_CONFIG_DIR,
            data = CONTAINER_DATA_DIR,
            ip = host.ip(),
        ));
    }
    text.push_str(&format!(
        "networks:\n\
         \x20 bftd:\n\
         \x20   driver: bridge\n\
         \x20   ipam:\n\
         \x20     config:\n\
         \x20       - subnet: {a}.{b}.{c}.0/24\n"
    ));
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("bftnet-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn options(hosts: &str, out: &Path) -> InitOptions {
        InitOptions {
            hosts: parse_hosts(hosts, 7000).unwrap(),
            metrics_port: 9100,
            bind_all: false,
            compose: false,
            image: "bftd:local".into(),
            request_mode: RequestMode::ClientSigned,
            out: out.to_owned(),
        }
    }

    /// Hosts parse as IPs with the default port or IP:PORT; names, 0.0.0.0,
    /// port 0 and duplicates are refused.
    #[test]
    fn hosts_parse() {
        let hosts = parse_hosts(
            "10.0.0.1,10.0.0.2:7100\n# a comment\n[::1]:7000 10.0.0.4",
            7000,
        )
        .unwrap();
        assert_eq!(
            hosts,
            vec![
                "10.0.0.1:7000".parse().unwrap(),
                "10.0.0.2:7100".parse().unwrap(),
                "[::1]:7000".parse().unwrap(),
                "10.0.0.4:7000".parse().unwrap(),
            ]
        );
        for bad in [
            "node1.example",
            "0.0.0.0",
            "10.0.0.1:0",
            "10.0.0.1,10.0.0.1",
        ] {
            assert!(parse_hosts(bad, 7000).is_err(), "{bad} accepted");
        }
    }

    /// Every node directory loads with bftd's own loader (advertised
    /// address in the cluster file, the listen address as asked), holds a
    /// store bftd accepts, and a second init into the same directory is
    /// refused.
    #[test]
    fn node_directories_are_complete() {
        let out = temp("dirs");
        let mut opts = options("10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4", &out);
        opts.bind_all = true;
        init(&opts).unwrap();
        for id in 0..4u16 {
            let config = NodeConfig::load(&node_dir(&out, id).join("node.toml")).unwrap();
            assert_eq!(config.id.0, id);
            assert_eq!(
                config.cluster.addresses[usize::from(id)],
                format!("10.0.0.{}:7000", id + 1).parse().unwrap()
            );
            assert_eq!(config.listen, "0.0.0.0:7000".parse().unwrap());
            assert_eq!(config.metrics, Some("0.0.0.0:9100".parse().unwrap()));
            assert_eq!(config.data_dir, node_dir(&out, id).join("data"));
            // A machine of its own: one runtime thread per core.
            assert_eq!(config.runtime.worker_threads, 0);
            assert!(bftd::runtime::store_path(&config).exists());
            // `bftd init` would refuse: the store is there.
            assert!(bftd::init(&config).is_err());
        }
        let error = init(&opts).unwrap_err();
        assert!(error.to_string().contains("not empty"), "{error}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// Without --bind-all a node listens on its advertised address;
    /// --compose writes a compose file with every address on one subnet
    /// and node files naming the container's /data; addresses outside one
    /// /24 and sizes other than 3f + 1 are refused.
    #[test]
    fn compose_and_refusals() {
        let out = temp("compose");
        let mut opts = options("172.28.0.10,172.28.0.11,172.28.0.12,172.28.0.13", &out);
        opts.compose = true;
        init(&opts).unwrap();
        let compose = std::fs::read_to_string(out.join("docker-compose.yml")).unwrap();
        assert!(compose.contains("subnet: 172.28.0.0/24"), "{compose}");
        for id in 0..4 {
            assert!(compose.contains(&format!("ipv4_address: 172.28.0.1{id}")));
            assert!(compose.contains(&format!("./node{id}/data:/data")));
        }
        let node = std::fs::read_to_string(node_dir(&out, 2).join("node.toml")).unwrap();
        assert!(node.contains("data_dir = \"/data\""), "{node}");
        assert!(node.contains("listen = \"172.28.0.12:7000\""), "{node}");
        assert!(node_dir(&out, 2).join("data/bftd.redb").exists());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert!(
            node.contains(&format!(
                "[runtime]\nworker_threads = {}",
                (cores / 4).max(1)
            )),
            "containers on one host share its cores: {node}"
        );
        std::fs::remove_dir_all(&out).unwrap();

        // Two nodes on one IP share its cores; the others have their own.
        let out = temp("shared");
        init(&options("10.0.0.1,10.0.0.1:7100,10.0.0.3,10.0.0.4", &out)).unwrap();
        let threads = |id| {
            NodeConfig::load(&node_dir(&out, id).join("node.toml"))
                .unwrap()
                .runtime
                .worker_threads
        };
        assert_eq!(
            [threads(0), threads(1), threads(2), threads(3)],
            [(cores / 2).max(1), (cores / 2).max(1), 0, 0]
        );
        std::fs::remove_dir_all(&out).unwrap();

        let mut split = options("172.28.0.10,172.28.1.11,172.28.0.12,172.28.0.13", &out);
        split.compose = true;
        assert!(init(&split).unwrap_err().to_string().contains("/24"));
        let three = options("10.0.0.1,10.0.0.2,10.0.0.3", &out);
        assert!(init(&three).unwrap_err().to_string().contains("3f + 1"));
        let _ = std::fs::remove_dir_all(&out);
    }
}
