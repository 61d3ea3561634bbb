//! The cluster file: TOML parsed and validated as `Cluster::load` does.
#![no_main]

use bftd::config::Cluster;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cluster) = Cluster::parse(text, Path::new("cluster.toml")) {
        // What a node does with a cluster it loaded.
        let file = cluster.to_file();
        for id in 0..cluster.committee.n() + 1 {
            let _ = cluster.address(bftd_protocol::NodeId(id as u16));
        }
        let _ = cluster.protocol.apply(bftd_protocol::Config::default());
        assert_eq!(file.nodes.len(), cluster.committee.n());
    }
});
