//! The wire format is a contract: a golden file pins the exact bytes of every
//! message kind (an encoding change is never silent), and property tests show
//! the decoder never panics and is canonical — anything it accepts re-encodes
//! to the very same bytes, which is what lets signatures be checked over
//! re-encoded values.
//!
//! After an intended format change: `BFTD_BLESS=1 cargo test -p bftd-protocol
//! --test wire_format` rewrites the golden file; review the diff.

use bftd_crypto::{Digest, KeyPair};
use bftd_protocol::certificate::QuorumCertificate;
use bftd_protocol::message::{
    BatchResponse, Blocks, Checkpoint, Commit, FetchBatch, FetchBlocks, Forward, MessageKind,
    NewView, PrePrepare, Prepare, Status, Suspect, ViewChange,
};
use bftd_protocol::{
    codec, Batch, Block, CheckpointCertificate, CommittedBlock, NodeId, PreparedCertificate,
    Request, SeqNum, Signable, Signed, SignedRequest, View, Vote, Vouch, WireMessage,
};
use proptest::prelude::*;
use std::sync::Arc;

fn sign<T: Signable>(signer: u16, value: T) -> Signed<T> {
    let key = KeyPair::from_seed([signer as u8 + 1; 32]);
    let bytes = codec::encode(&value).unwrap();
    Signed {
        signer: NodeId(signer),
        signature: key.sign(T::DOMAIN, &bytes),
        value,
    }
}

fn samples() -> Vec<(&'static str, WireMessage)> {
    let client = KeyPair::from_seed([42; 32]);
    let request = SignedRequest::sign(
        Request {
            client: client.public(),
            request_id: 7,
            valid_until: SeqNum(900),
            payload: b"pay".to_vec(),
        },
        &client,
    )
    .unwrap();
    let batch = Arc::new(Batch {
        requests: vec![
            request.clone(),
            SignedRequest::unsigned(request.request.clone()),
        ],
    });
    let digest = Digest([0xd1; 32]);
    let (view, seq) = (View(3), SeqNum(9));
    let pre_prepare = sign(3, PrePrepare { view, seq, digest });
    let prepares = QuorumCertificate {
        value: Prepare { view, seq, digest },
        votes: vec![Vote {
            signer: NodeId(0),
            signature: sign(0, Prepare { view, seq, digest }).signature,
        }],
    };
    let prepared = PreparedCertificate {
        pre_prepare: pre_prepare.clone(),
        prepares,
    };
    let checkpoint = CheckpointCertificate {
        value: Checkpoint {
            seq: SeqNum(8),
            block_hash: Digest([0xcc; 32]),
        },
        votes: vec![Vote {
            signer: NodeId(1),
            signature: sign(
                1,
                Checkpoint {
                    seq: SeqNum(8),
                    block_hash: Digest([0xcc; 32]),
                },
            )
            .signature,
        }],
    };
    let view_change = sign(
        2,
        ViewChange {
            new_view: View(4),
            checkpoint: checkpoint.clone(),
            prepared: vec![prepared],
        },
    );
    let block = Arc::new(CommittedBlock {
        block: Block {
            height: seq,
            prev_hash: Digest([0xaa; 32]),
            batch_digest: digest,
            batch: batch.clone(),
        },
        certificate: QuorumCertificate {
            value: Commit { view, seq, digest },
            votes: vec![Vote {
                signer: NodeId(2),
                signature: sign(2, Commit { view, seq, digest }).signature,
            }],
        },
    });
    vec![
        (
            "pre_prepare",
            WireMessage::PrePrepare {
                pre_prepare: pre_prepare.clone(),
                batch: batch.clone(),
                vouches: vec![Vouch {
                    voucher: NodeId(1),
                    count: batch.requests.len() as u32,
                    signature: sign(
                        1,
                        Forward {
                            requests: batch.requests.clone(),
                        },
                    )
                    .signature,
                }],
            },
        ),
        (
            "prepare",
            WireMessage::Prepare(sign(1, Prepare { view, seq, digest })),
        ),
        (
            "commit",
            WireMessage::Commit(sign(1, Commit { view, seq, digest })),
        ),
        (
            "checkpoint",
            WireMessage::Checkpoint(sign(
                0,
                Checkpoint {
                    seq: SeqNum(8),
                    block_hash: Digest([0xcc; 32]),
                },
            )),
        ),
        ("view_change", WireMessage::ViewChange(view_change.clone())),
        (
            "new_view",
            WireMessage::NewView(sign(
                0,
                NewView {
                    view: View(4),
                    view_changes: vec![view_change],
                    pre_prepares: vec![sign(
                        0,
                        PrePrepare {
                            view: View(4),
                            seq,
                            digest,
                        },
                    )],
                },
            )),
        ),
        (
            "status",
            WireMessage::Status(sign(
                1,
                Status {
                    view,
                    in_view_change: true,
                    last_executed: seq,
                    stable_checkpoint: SeqNum(8),
                    // Fixed values, not the defaults: a changed default
                    // is not a changed wire format.
                    settings: bftd_protocol::ConsensusSettings {
                        max_batch_bytes: 4 * 1024 * 1024,
                        ..bftd_protocol::ConsensusSettings::default()
                    },
                },
            )),
        ),
        (
            "forward",
            WireMessage::Forward(sign(
                2,
                Forward {
                    requests: vec![request],
                },
            )),
        ),
        (
            "fetch_blocks",
            WireMessage::FetchBlocks(sign(
                3,
                FetchBlocks {
                    from: SeqNum(1),
                    to: SeqNum(64),
                },
            )),
        ),
        (
            "blocks",
            WireMessage::Blocks(sign(
                3,
                Blocks {
                    blocks: vec![block],
                    checkpoint,
                },
            )),
        ),
        (
            "fetch_batch",
            WireMessage::FetchBatch(sign(0, FetchBatch { digest })),
        ),
        (
            "batch",
            WireMessage::Batch(sign(1, BatchResponse { batch })),
        ),
        ("suspect", WireMessage::Suspect(sign(2, Suspect { view }))),
    ]
}

/// The bytes of every message kind are exactly those in the golden file.
#[test]
fn golden_wire_format() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/wire_format.txt");
    let actual: String = samples()
        .into_iter()
        .map(|(name, message)| format!("{name} {}\n", hex(&codec::encode(&message).unwrap())))
        .collect();
    if std::env::var_os("BFTD_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).expect("golden file (create it with BFTD_BLESS=1)");
    for (want, got) in expected.lines().zip(actual.lines()) {
        assert_eq!(
            want, got,
            "the wire format changed; if intended, rerun with BFTD_BLESS=1 and review the diff"
        );
    }
    assert_eq!(expected.lines().count(), actual.lines().count());
}

/// Every sample survives an encode/decode round trip unchanged.
#[test]
fn samples_round_trip() {
    for (name, message) in samples() {
        let bytes = codec::encode(&message).unwrap();
        let back: WireMessage = codec::decode(&bytes).unwrap();
        assert_eq!(back, message, "{name}");
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Arbitrary bytes never panic the decoder, and whatever it accepts
    /// re-encodes to the same bytes (the encoding is canonical).
    #[test]
    fn decode_then_encode_is_identity(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(message) = codec::decode::<WireMessage>(&bytes) {
            prop_assert_eq!(codec::encode(&message).unwrap(), bytes);
        }
    }

    /// Mutating a valid message (flip, truncate, extend) never panics the
    /// decoder and still only accepts canonical bytes.
    #[test]
    fn mutated_messages_are_safe(index in 0usize..12, position in any::<usize>(), flip in 1u8.., cut in any::<bool>()) {
        let (_, message) = samples().swap_remove(index);
        let mut bytes = codec::encode(&message).unwrap();
        let at = position % bytes.len();
        if cut {
            bytes.truncate(at);
        } else {
            bytes[at] ^= flip;
        }
        if let Ok(decoded) = codec::decode::<WireMessage>(&bytes) {
            prop_assert_eq!(codec::encode(&decoded).unwrap(), bytes);
        }
    }

    /// A length prefix claiming more than the input holds is refused without
    /// allocating it.
    #[test]
    fn huge_length_prefixes_are_refused(claimed in (1u64 << 32)..u64::MAX) {
        // Variant 9 = Blocks; then a signer, then a vector length.
        let mut bytes = 9u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&0u16.to_le_bytes());
        bytes.extend_from_slice(&claimed.to_le_bytes());
        prop_assert!(codec::decode::<WireMessage>(&bytes).is_err());
    }

    /// Votes round-trip for any field values.
    #[test]
    fn votes_round_trip(view in any::<u64>(), seq in any::<u64>(), digest in any::<[u8; 32]>(), signer in any::<u16>()) {
        let message = WireMessage::Commit(Signed {
            signer: NodeId(signer),
            value: Commit { view: View(view), seq: SeqNum(seq), digest: Digest(digest) },
            signature: bftd_crypto::Signature([7; 64]),
        });
        let bytes = codec::encode(&message).unwrap();
        prop_assert_eq!(codec::decode::<WireMessage>(&bytes).unwrap(), message);
    }
}

/// `MessageKind::peek` names every variant's kind from its encoding alone,
/// and nothing for bytes too short or with an unknown tag.
#[test]
fn peek_kind_matches_every_variant() {
    let samples = samples();
    for kind in MessageKind::ALL {
        assert!(
            samples.iter().any(|(_, message)| message.kind() == kind),
            "no sample of {kind:?}"
        );
    }
    for (name, message) in samples {
        let bytes = codec::encode(&message).unwrap();
        assert_eq!(MessageKind::peek(&bytes), Some(message.kind()), "{name}");
    }
    assert_eq!(MessageKind::peek(&[0, 0, 0]), None);
    assert_eq!(MessageKind::peek(&[13, 0, 0, 0]), None);
    assert_eq!(MessageKind::peek(&[0, 0, 0, 1]), None);
}
