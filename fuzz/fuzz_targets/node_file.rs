//! The node file: TOML parsed as `NodeConfig::load` does, then checked
//! against a fixed key and cluster (node 0 of a four-node cluster).
#![no_main]

use bftd::config::{Cluster, ClusterFile, ClusterNode, NodeConfig, NodeFile};
use bftd_fuzz::keys;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Cluster> = OnceLock::new();
    CLUSTER.get_or_init(|| {
        let file = ClusterFile {
            protocol: Default::default(),
            nodes: keys()
                .iter()
                .enumerate()
                .map(|(id, key)| ClusterNode {
                    id: id as u16,
                    address: format!("127.0.0.1:{}", 7000 + id)
                        .parse()
                        .expect("an address"),
                    public_key: key.public().to_string(),
                    grpc: None,
                })
                .collect(),
        };
        Cluster::from_file(&file, Path::new("cluster.toml")).expect("a valid cluster")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/bftd/node.toml");
    let Ok(file) = NodeFile::parse(text, path) else {
        return;
    };
    let key = keys()[0].clone();
    let _ = NodeConfig::from_file(file, path, key, cluster().clone());
});
