//! bftd embedded as a library: four nodes in this process, on loopback, one
//! of them feeding committed blocks to an application.
//!
//! ```text
//! cargo run -p bftd --example embedded
//! ```

use bftd::client::Client;
use bftd::config::{write_key, Cluster, ClusterFile, ClusterNode, NodeConfig};
use bftd::Application;
use bftd_crypto::KeyPair;
use bftd_protocol::{CommittedBlock, NodeId, SeqNum};

/// The application: here, a running count of transactions.
struct Counter {
    transactions: u64,
}

impl Application for Counter {
    fn deliver(&mut self, block: &CommittedBlock, duplicates: &[u32]) {
        let fresh = block.block.batch.requests.len() - duplicates.len();
        self.transactions += fresh as u64;
        println!(
            "application: block {} with {fresh} transactions, {} so far",
            block.height().0,
            self.transactions
        );
    }

    // Snapshots (optional): with them, the node may prune blocks and jump
    // past blocks its peers pruned; the application is then restored from
    // a snapshot that f+1 nodes signed (design notes §48).
    fn takes_snapshots(&self) -> bool {
        true
    }

    // The same bytes on every honest node at the same height.
    fn snapshot(&self) -> Vec<u8> {
        self.transactions.to_le_bytes().to_vec()
    }

    fn restore(&mut self, height: SeqNum, state: &[u8]) -> Result<(), String> {
        let bytes: [u8; 8] = state.try_into().map_err(|_| "not a counter's state")?;
        self.transactions = u64::from_le_bytes(bytes);
        println!("application: restored at height {}", height.0);
        Ok(())
    }
}

fn free_address() -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    socket.local_addr().expect("an address")
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("bftd-embedded-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let keys: Vec<KeyPair> = (0..4)
        .map(|_| KeyPair::generate(&mut rand::rngs::OsRng))
        .collect();
    let file = ClusterFile {
        // What every node must share (the defaults here).
        protocol: Default::default(),
        nodes: keys
            .iter()
            .enumerate()
            .map(|(id, key)| ClusterNode {
                id: id as u16,
                address: free_address(),
                public_key: key.public().to_string(),
                grpc: None,
            })
            .collect(),
    };
    std::fs::write(dir.join("cluster.toml"), toml::to_string(&file)?)?;
    let mut nodes = Vec::new();
    for (id, key) in keys.iter().enumerate() {
        write_key(&dir.join(format!("node{id}.key")), key)?;
        let node_file = format!(
            "id = {id}\nkey_file = \"node{id}.key\"\ncluster_file = \"cluster.toml\"\ndata_dir = \"data{id}\"\n"
        );
        let path = dir.join(format!("node{id}.toml"));
        std::fs::write(&path, node_file)?;
        let config = NodeConfig::load(&path)?;
        // A new node: create its store (once; `start` never does).
        bftd::init(&config)?;
        let application: Option<(Box<dyn Application>, SeqNum)> = if id == 0 {
            Some((Box::new(Counter { transactions: 0 }), SeqNum(1)))
        } else {
            None
        };
        nodes.push(bftd::start(config, application).await?);
    }

    let cluster = Cluster::load(&dir.join("cluster.toml"))?;
    let client = Client::connect(
        &cluster,
        NodeId(2),
        KeyPair::generate(&mut rand::rngs::OsRng),
    )
    .await?;
    for i in 0..10 {
        let committed = client.submit(format!("tx {i}").into_bytes()).await?;
        println!("client: tx {i} committed at height {}", committed.height.0);
    }
    nodes[0].wait_for_height(SeqNum(10)).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for node in nodes {
        node.shutdown().await;
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
