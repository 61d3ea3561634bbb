//! Writes the seed corpora: one valid, correctly signed example of every
//! message kind, frame, certificate, config file and store record, so the
//! fuzzer starts past the signature checks instead of having to guess them.
//! `fuzz/build.sh --example seeds && target/<host>/release/examples/seeds DIR`
//! writes DIR/<target>/seed-*; fuzz/run.sh merges them into the corpora.

// Linked for the coverage callbacks the instrumented crates call.
use libfuzzer_sys as _;

use bftd::client_api::{ClientMessage, NodeMessage, NodeStatus, Receipt, Rejection};
use bftd::storage::StoreIdentity;
use bftd_crypto::{Digest, KeyPair};
use bftd_fuzz::{committee, keys};
use bftd_protocol::block::Block;
use bftd_protocol::codec;
use bftd_protocol::merkle::MerkleTree;
use bftd_protocol::message::{
    BatchResponse, Blocks, Checkpoint, Commit, FetchBatch, FetchBlocks, Forward, NewView,
    PrePrepare, Prepare, Status, Suspect, ViewChange,
};
use bftd_protocol::signer::SafetyState;
use bftd_protocol::snapshot::{SnapshotAttestation, SnapshotManifest};
use bftd_protocol::{
    Batch, CheckpointCertificate, CommitCertificate, CommittedBlock, ConsensusSettings, NodeId,
    PreparedCertificate, QuorumCertificate, Request, RequestMode, SeqNum, Signable, Signed,
    SignedRequest, View, Vote, WireMessage,
};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn sign<T: Signable>(id: u16, value: T) -> Signed<T> {
    let bytes = codec::encode(&value).unwrap();
    let signature = keys()[id as usize].sign(T::DOMAIN, &bytes);
    Signed {
        signer: NodeId(id),
        value,
        signature,
    }
}

fn votes<T: Signable>(value: &T, ids: &[u16]) -> Vec<Vote> {
    ids.iter()
        .map(|&id| {
            let bytes = codec::encode(value).unwrap();
            Vote {
                signer: NodeId(id),
                signature: keys()[id as usize].sign(T::DOMAIN, &bytes),
            }
        })
        .collect()
}

fn request(seed: u8, id: u64, payload: &[u8]) -> SignedRequest {
    let client = KeyPair::from_seed([seed; 32]);
    SignedRequest::sign(
        Request {
            client: client.public(),
            request_id: id,
            valid_until: SeqNum(100),
            payload: payload.to_vec(),
        },
        &client,
    )
    .unwrap()
}

fn batch() -> Arc<Batch> {
    Arc::new(Batch {
        requests: vec![request(9, 1, b"fuzz"), request(10, 7, b"another")],
    })
}

fn commit_certificate(seq: u64, digest: Digest) -> CommitCertificate {
    let value = Commit {
        view: View(0),
        seq: SeqNum(seq),
        digest,
    };
    QuorumCertificate {
        votes: votes(&value, &[0, 1, 2]),
        value,
    }
}

fn checkpoint_certificate() -> CheckpointCertificate {
    let value = Checkpoint {
        seq: SeqNum(4),
        block_hash: Digest([4; 32]),
    };
    QuorumCertificate {
        votes: votes(&value, &[0, 2, 3]),
        value,
    }
}

fn prepared_certificate() -> PreparedCertificate {
    let digest = MerkleTree::new(&batch()).root();
    let pre_prepare = sign(
        0,
        PrePrepare {
            view: View(0),
            seq: SeqNum(5),
            digest,
        },
    );
    let prepare = Prepare {
        view: View(0),
        seq: SeqNum(5),
        digest,
    };
    PreparedCertificate {
        pre_prepare,
        prepares: QuorumCertificate {
            votes: votes(&prepare, &[1, 2]),
            value: prepare,
        },
    }
}

fn committed_block() -> CommittedBlock {
    let batch = batch();
    let digest = MerkleTree::new(&batch).root();
    CommittedBlock {
        block: Block {
            height: SeqNum(5),
            prev_hash: Digest::ZERO,
            batch_digest: digest,
            batch,
        },
        certificate: commit_certificate(5, digest),
    }
}

fn view_change(id: u16) -> Signed<ViewChange> {
    sign(
        id,
        ViewChange {
            new_view: View(1),
            checkpoint: CheckpointCertificate::genesis(),
            prepared: vec![prepared_certificate()],
        },
    )
}

fn wire_messages() -> Vec<WireMessage> {
    let batch = batch();
    let digest = MerkleTree::new(&batch).root();
    let (view, seq) = (View(0), SeqNum(5));
    vec![
        WireMessage::PrePrepare {
            pre_prepare: sign(0, PrePrepare { view, seq, digest }),
            batch: batch.clone(),
            vouches: Vec::new(),
        },
        WireMessage::Prepare(sign(1, Prepare { view, seq, digest })),
        WireMessage::Commit(sign(2, Commit { view, seq, digest })),
        WireMessage::Checkpoint(sign(
            3,
            Checkpoint {
                seq: SeqNum(4),
                block_hash: Digest([4; 32]),
            },
        )),
        WireMessage::ViewChange(view_change(2)),
        WireMessage::NewView(sign(
            1,
            NewView {
                view: View(1),
                view_changes: vec![view_change(0), view_change(2), view_change(3)],
                pre_prepares: vec![sign(
                    1,
                    PrePrepare {
                        view: View(1),
                        seq,
                        digest,
                    },
                )],
            },
        )),
        WireMessage::Status(sign(
            3,
            Status {
                view,
                in_view_change: false,
                last_executed: SeqNum(9),
                stable_checkpoint: SeqNum(4),
                settings: ConsensusSettings::default(),
            },
        )),
        WireMessage::Forward(sign(
            2,
            Forward {
                requests: batch.requests.clone(),
            },
        )),
        WireMessage::FetchBlocks(sign(
            1,
            FetchBlocks {
                from: SeqNum(1),
                to: SeqNum(9),
            },
        )),
        WireMessage::Blocks(sign(
            0,
            Blocks {
                blocks: vec![Arc::new(committed_block())],
                checkpoint: checkpoint_certificate(),
            },
        )),
        WireMessage::FetchBatch(sign(3, FetchBatch { digest })),
        WireMessage::Batch(sign(0, BatchResponse { batch })),
        WireMessage::Suspect(sign(2, Suspect { view })),
    ]
}

fn node_messages() -> Vec<NodeMessage> {
    let block = committed_block();
    let tree = MerkleTree::new(&block.block.batch);
    vec![
        NodeMessage::Receipt(Receipt::new(&block, &tree, 0, 1)),
        NodeMessage::Rejected {
            request_id: 1,
            reason: Rejection::TooFarAhead,
        },
        NodeMessage::Block {
            block: Arc::new(block),
            duplicates: vec![1],
        },
        NodeMessage::Status(NodeStatus {
            id: 1,
            n: 4,
            f: 1,
            view: 0,
            in_view_change: false,
            primary: 0,
            height: 5,
            head_hash: "00".repeat(32),
            stable_checkpoint: 4,
            pending_requests: 2,
            request_mode: RequestMode::ClientSigned,
            byzantine: None,
            peers_in_touch: 3,
            quorum: 3,
            request_lifetime: 1000,
            first_height: 1,
            needs_snapshot: false,
        }),
        NodeMessage::Malformed,
        NodeMessage::Snapshots(
            (0..2)
                .map(|id| {
                    let manifest = SnapshotManifest::of(SeqNum(64), Digest([3; 32]), b"state")
                        .unwrap();
                    SnapshotAttestation::sign(manifest, NodeId(id), &keys()[id as usize])
                })
                .collect(),
        ),
        NodeMessage::SnapshotChunk {
            height: SeqNum(64),
            index: 0,
            bytes: Some(b"state".to_vec()),
        },
    ]
}

fn cluster_text() -> String {
    let mut text = String::from(
        "[protocol]\nrequest_mode = \"client-signed\"\nrequest_lifetime = 1000\n\
         checkpoint_interval = 64\nwindow = 256\nmax_batch_requests = 512\n\
         max_batch_bytes = 1048576\nmax_request_bytes = 65536\n",
    );
    for (id, key) in keys().iter().enumerate() {
        text.push_str(&format!(
            "\n[[node]]\nid = {id}\naddress = \"127.0.0.1:{}\"\npublic_key = \"{}\"\n",
            7000 + id,
            key.public()
        ));
    }
    text
}

fn write(dir: &Path, target: &str, index: usize, bytes: &[u8]) {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{index:02}")), bytes).unwrap();
}

fn tagged<T: Serialize>(tag: u8, value: &T) -> Vec<u8> {
    let mut bytes = vec![tag];
    bytes.extend(codec::encode(value).unwrap());
    bytes
}

fn main() {
    let dir = PathBuf::from(std::env::args().nth(1).expect("usage: seeds DIR"));
    for (i, message) in wire_messages().iter().enumerate() {
        // Seeds are worth most if they verify: the fuzzer mutates from there.
        bftd_protocol::verify_message(
            message.clone(),
            committee(),
            &bftd_protocol::verify::MessageLimits::of(&bftd_protocol::Config::default()),
            &mut bftd_protocol::BatchVerifier,
        )
        .unwrap();
        write(&dir, "wire_message", i, &codec::encode(message).unwrap());
    }
    let clients = [
        ClientMessage::Submit(request(9, 1, b"fuzz")),
        ClientMessage::Submit(SignedRequest::unsigned(request(9, 2, b"x").request)),
        ClientMessage::Subscribe { from: SeqNum(1) },
        ClientMessage::Status,
        ClientMessage::Snapshots,
        ClientMessage::SnapshotChunk {
            height: SeqNum(64),
            index: 1,
        },
    ];
    for (i, message) in clients.iter().enumerate() {
        write(&dir, "client_message", i, &codec::encode(message).unwrap());
    }
    for (i, message) in node_messages().iter().enumerate() {
        write(&dir, "node_message", i, &codec::encode(message).unwrap());
    }
    let block = committed_block();
    block.verify(committee(), Digest::ZERO).unwrap();
    checkpoint_certificate().verify(committee()).unwrap();
    prepared_certificate().verify(committee()).unwrap();
    match &node_messages()[0] {
        NodeMessage::Receipt(receipt) => {
            receipt
                .verify(committee(), 1000, &request(9, 1, b"fuzz"))
                .unwrap();
        }
        _ => unreachable!(),
    }
    bftd::config::Cluster::parse(&cluster_text(), Path::new("cluster.toml")).unwrap();
    write(&dir, "certificate", 0, &tagged(0, &block.certificate));
    write(
        &dir,
        "certificate",
        1,
        &tagged(1, &checkpoint_certificate()),
    );
    write(&dir, "certificate", 2, &tagged(2, &prepared_certificate()));
    write(&dir, "cluster_file", 0, cluster_text().as_bytes());
    let node = "id = 0\nkey_file = \"node0.key\"\ncluster_file = \"cluster.toml\"\n\
                data_dir = \"data\"\nlisten = \"127.0.0.1:7000\"\nmetrics = \"127.0.0.1:9000\"\n\
                log_format = \"json\"\n\n[protocol]\nview_change_timeout_ms = 2000\n\n\
                [clients]\nreply_queue = 64\n";
    write(&dir, "node_file", 0, node.as_bytes());
    write(
        &dir,
        "node_file",
        1,
        b"id = 1\nkey_file = \"k\"\ncluster_file = \"c\"\ndata_dir = \"d\"\n",
    );
    let identity = StoreIdentity::new(
        keys()[0].public(),
        committee(),
        ConsensusSettings::default(),
    );
    let mut safety = SafetyState::default();
    safety
        .accepted
        .insert(SeqNum(5), (View(0), Digest([5; 32])));
    let records: Vec<Vec<u8>> = vec![
        tagged(0, &bftd::storage::FORMAT_VERSION),
        tagged(1, &identity),
        tagged(2, &safety),
        tagged(3, &checkpoint_certificate()),
        tagged(
            4,
            &match &wire_messages()[5] {
                WireMessage::NewView(new_view) => new_view.clone(),
                _ => unreachable!(),
            },
        ),
        tagged(5, &vec![sign(1, Suspect { view: View(0) })]),
        tagged(6, &prepared_certificate()),
        tagged(7, &*batch()),
        tagged(8, &block),
        tagged(9, &vec![0u32, 3]),
    ];
    for (i, record) in records.iter().enumerate() {
        write(&dir, "store_record", i, record);
    }
}
