//! The client protocol is a contract too: a golden file pins the exact
//! bytes of the client messages and of the node's small answers, so a
//! change (a field added to `NodeStatus`, say) is never silent. Receipts and
//! blocks are made of protocol types pinned by `bftd-protocol`'s own golden
//! test.
//!
//! After an intended format change: `BFTD_BLESS=1 cargo test -p bftd --test
//! client_wire_format` rewrites the golden file; review the diff. Clients
//! and nodes on either side of a change do not understand each other (the
//! codec rejects missing and trailing bytes).

use bftd::client_api::{ClientMessage, NodeMessage, NodeStatus, Rejection};
use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::snapshot::{SnapshotAttestation, SnapshotManifest};
use bftd_protocol::{codec, NodeId, Request, RequestMode, SeqNum, SignedRequest};

fn client_samples() -> Vec<(&'static str, ClientMessage)> {
    let client = KeyPair::from_seed([42; 32]);
    let request = Request {
        client: client.public(),
        request_id: 7,
        valid_until: bftd_protocol::SeqNum(900),
        payload: b"pay".to_vec(),
    };
    vec![
        (
            "submit_signed",
            ClientMessage::Submit(SignedRequest::sign(request.clone(), &client).unwrap()),
        ),
        (
            "submit_unsigned",
            ClientMessage::Submit(SignedRequest::unsigned(request)),
        ),
        ("subscribe", ClientMessage::Subscribe { from: SeqNum(9) }),
        ("status_request", ClientMessage::Status),
        ("snapshots_request", ClientMessage::Snapshots),
        (
            "snapshot_chunk_request",
            ClientMessage::SnapshotChunk {
                height: SeqNum(64),
                index: 1,
            },
        ),
    ]
}

fn node_samples() -> Vec<(&'static str, NodeMessage)> {
    vec![
        (
            "status",
            NodeMessage::Status(NodeStatus {
                id: 1,
                n: 4,
                f: 1,
                view: 3,
                in_view_change: true,
                primary: 3,
                height: 99,
                head_hash: "ab".into(),
                stable_checkpoint: 64,
                pending_requests: 5,
                request_mode: RequestMode::ConnectionAuthenticated,
                byzantine: Some("silent".into()),
                peers_in_touch: 1,
                quorum: 3,
                request_lifetime: 1024,
                first_height: 33,
                needs_snapshot: false,
            }),
        ),
        (
            "rejected",
            NodeMessage::Rejected {
                request_id: 7,
                reason: Rejection::Busy,
            },
        ),
        ("malformed", NodeMessage::Malformed),
        (
            "subscription_ended",
            NodeMessage::SubscriptionEnded {
                reason: "slow".into(),
            },
        ),
        (
            "snapshots",
            NodeMessage::Snapshots(vec![SnapshotAttestation::sign(
                SnapshotManifest::of(SeqNum(64), Digest([5; 32]), b"state").unwrap(),
                NodeId(2),
                &KeyPair::from_seed([2; 32]),
            )]),
        ),
        (
            "snapshot_chunk",
            NodeMessage::SnapshotChunk {
                height: SeqNum(64),
                index: 0,
                bytes: Some(b"state".to_vec()),
            },
        ),
        (
            "snapshot_chunk_missing",
            NodeMessage::SnapshotChunk {
                height: SeqNum(64),
                index: 3,
                bytes: None,
            },
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of every sample are exactly those in the golden file, and
/// every sample decodes back to itself.
#[test]
fn golden_client_wire_format() {
    let mut actual = String::new();
    for (name, message) in client_samples() {
        let bytes = codec::encode(&message).unwrap();
        assert_eq!(codec::decode::<ClientMessage>(&bytes).unwrap(), message);
        actual += &format!("{name} {}\n", hex(&bytes));
    }
    for (name, message) in node_samples() {
        let bytes = codec::encode(&message).unwrap();
        assert_eq!(codec::decode::<NodeMessage>(&bytes).unwrap(), message);
        actual += &format!("{name} {}\n", hex(&bytes));
    }
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/client_wire_format.txt");
    if std::env::var_os("BFTD_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).expect("golden file (create it with BFTD_BLESS=1)");
    for (want, got) in expected.lines().zip(actual.lines()) {
        assert_eq!(
            want, got,
            "the client wire format changed; if intended, rerun with BFTD_BLESS=1 and review the diff"
        );
    }
    assert_eq!(expected.lines().count(), actual.lines().count());
}
