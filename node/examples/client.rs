//! Submit transactions to a running cluster and follow its chain.
//!
//! Start a testnet first (`cargo run --release -p bftnet -- up --detach`),
//! then:
//!
//! ```text
//! cargo run --release -p bftd --example client -- testnet-data/cluster.toml
//! ```
//!
//! Every receipt and every block is verified against the committee's public
//! keys from the cluster file: the node you talk to could lie, and you would
//! know.

use bftd::client::Client;
use bftd::config::Cluster;
use bftd_crypto::KeyPair;
use bftd_protocol::{NodeId, SeqNum};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "testnet-data/cluster.toml".into());
    let cluster = Cluster::load(path.as_ref())?;
    let key = KeyPair::generate(&mut rand::rngs::OsRng);
    let client = Client::connect(&cluster, NodeId(1), key).await?;

    for i in 0..5 {
        let committed = client
            .submit(format!("example transaction {i}").into_bytes())
            .await?;
        println!(
            "committed at height {} in batch {:#}",
            committed.height.0, committed.batch_digest
        );
    }

    let status = client.status().await?;
    let from = status.height.saturating_sub(4).max(1);
    let mut blocks = client.subscribe(SeqNum(from)).await?;
    while let Some(block) = blocks.next().await? {
        println!(
            "block {} ({:#}): {} requests, certificate of {} signatures verified",
            block.block.height().0,
            block.hash,
            block.block.block.batch.requests.len(),
            block.block.certificate.votes.len()
        );
        if block.block.height().0 >= status.height {
            break;
        }
    }
    Ok(())
}
