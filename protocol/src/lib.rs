//! PBFT (Castro & Liskov, the signature variant) as a pure state machine.
//!
//! This crate holds no sockets, no files, no clock and no global randomness.
//! A [`Replica`] takes inputs — messages whose signatures were already
//! verified, client requests, and the time — and returns [`Actions`]: what to
//! persist, what to deliver, what to send. The daemon runs it over QUIC and a
//! disk store; the simulator runs many of them on a virtual clock.
//!
//! # The step/drain loop
//!
//! ```
//! use bftd_crypto::KeyPair;
//! use bftd_protocol::{
//!     verify_request, BatchVerifier, Committee, Config, MemStorage, NodeId, Recovered,
//!     Replica, ReplicaSetup, Request, SeqNum, SignedRequest, Storage,
//! };
//! use std::{sync::Arc, time::Duration};
//!
//! // A committee of one replica (f = 0): every quorum is itself.
//! let key = KeyPair::from_seed([1; 32]);
//! let committee = Committee::new(&[key.public()]).unwrap();
//! let mut storage = MemStorage::new();
//! let setup = ReplicaSetup {
//!     id: NodeId(0),
//!     key,
//!     committee: committee.clone(),
//!     config: Config::default(),
//!     blocks: Arc::new(storage.clone()),
//! };
//! let mut replica = Replica::new(setup, Recovered::default(), Duration::ZERO).unwrap();
//!
//! // A client signs a request; the shell verifies it, then hands it over.
//! let client = KeyPair::from_seed([9; 32]);
//! let request = SignedRequest::sign(
//!     Request {
//!         client: client.public(),
//!         request_id: 1,
//!         valid_until: SeqNum(100), // the last height it may execute at
//!         payload: b"hello".to_vec(),
//!     },
//!     &client,
//! ).unwrap();
//! let config = Config::default();
//! let verified = verify_request(request, NodeId(0), &committee, config.request_mode, &mut BatchVerifier).unwrap();
//! replica.handle_request(Duration::from_millis(1), verified, true);
//!
//! // Drain: persist first, then send, then reply.
//! let actions = replica.drain_actions();
//! storage.apply(&actions.persist, &actions.deliver).unwrap();
//! assert_eq!(actions.deliver.len(), 1, "one block delivered");
//! assert_eq!(actions.replies.len(), 1, "the client is told its height");
//! // A real shell would now send `actions.send` to the peers, and call
//! // `handle_timeout` at `replica.next_deadline()`.
//! ```
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

pub mod block;
#[cfg(feature = "byzantine")]
pub mod byzantine;
pub mod certificate;
pub mod clients;
pub mod codec;
pub mod committee;
pub mod config;
mod ids;
pub mod merkle;
pub mod message;
pub mod replica;
pub mod signer;
pub mod snapshot;
pub mod storage;
pub mod verify;
pub mod vouch;

pub use block::{Block, BlockError, CommittedBlock};
pub use certificate::{
    CertificateError, CheckpointCertificate, CommitCertificate, PreparedCertificate,
    QuorumCertificate, Vote,
};
pub use committee::{Committee, CommitteeError};
pub use config::{Config, ConfigError, ConsensusSettings};
pub use ids::{NodeId, SeqNum, View};
pub use message::{
    Batch, Grant, Request, RequestKey, Signable, Signed, SignedRequest, Vouch, WireMessage,
};
pub use replica::{
    Actions, ClientReply, Destination, DropReason, Evidence, Metrics, Outgoing, RejectReason,
    Replica, ReplicaError, ReplicaSetup, ReplicaStatus, ReplyOutcome,
};
pub use storage::{
    BlockSource, Delivery, JumpRecord, MemStorage, Record, Recovered, Storage, StorageError,
};
pub use verify::{
    verify_message, verify_messages, verify_request, BatchVerifier, CachingVerifier,
    ClientCheckCache, MessageLimits, RequestMode, SignatureVerifier, Verified, VerifyError,
};
