//! Protocol messages, as in the paper, and their signed envelopes.
//!
//! Every message a replica sends is a [`Signed`] value: the signature covers
//! the message kind's domain tag and the canonical encoding of the value (see
//! [`crate::codec`]), so a prepare can never pass for a commit, nor a message
//! of one protocol version for another.

use crate::block::CommittedBlock;
use crate::certificate::{CheckpointCertificate, PreparedCertificate};
use crate::codec::{self, CodecError};
use crate::ids::{NodeId, SeqNum, View};
use bftd_crypto::{Digest, Domain, KeyPair, PublicKey, Signature};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// A value with a domain tag: the kinds of things replicas and clients sign.
pub trait Signable: Serialize {
    /// The tag every signature on this kind of value is made under.
    const DOMAIN: Domain;
}

macro_rules! signable {
    ($($type:ty => $tag:literal,)*) => {
        $(impl Signable for $type { const DOMAIN: Domain = Domain::new($tag); })*
    };
}

signable! {
    Request => "bftd/v1/request",
    PrePrepare => "bftd/v1/pre-prepare",
    Prepare => "bftd/v1/prepare",
    Commit => "bftd/v1/commit",
    Checkpoint => "bftd/v1/checkpoint",
    ViewChange => "bftd/v1/view-change",
    NewView => "bftd/v1/new-view",
    Status => "bftd/v1/status",
    Forward => "bftd/v1/forward",
    FetchBlocks => "bftd/v1/fetch-blocks",
    Blocks => "bftd/v1/blocks",
    FetchBatch => "bftd/v1/fetch-batch",
    BatchResponse => "bftd/v1/batch",
    Suspect => "bftd/v1/suspect",
    Grant => "bftd/v1/grant",
}

/// A value signed by a replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed<T> {
    /// Who signed. The signature only verifies under this replica's key.
    pub signer: NodeId,
    /// The signed value.
    pub value: T,
    /// Signature over `SHA-256(T::DOMAIN || encode(value))` (see
    /// `Domain::signing_bytes`).
    pub signature: Signature,
}

impl<T: Signable> Signed<T> {
    /// Signs `value` as `signer`. Only the [`crate::signer::Signer`] (and the
    /// byzantine test layer) call this: it is the one place keys are used.
    pub(crate) fn sign(signer: NodeId, value: T, key: &KeyPair) -> Result<Signed<T>, CodecError> {
        let bytes = codec::encode(&value)?;
        let signature = key.sign(T::DOMAIN, &bytes);
        Ok(Signed {
            signer,
            value,
            signature,
        })
    }
}

/// A client's request: an opaque payload to be ordered.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Request {
    /// The client's identity key.
    pub client: PublicKey,
    /// Chosen by the client: each `(client, request_id)` executes at most
    /// once (any order; the client library counts up from a random start).
    pub request_id: u64,
    /// The last height at which the request may execute; at most
    /// `request_lifetime` above the height it executes at. Until then,
    /// re-sending it is always safe; after it, the request can never execute
    /// (see `crate::clients`).
    pub valid_until: SeqNum,
    /// The transaction, opaque to bftd.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// A request and, in client-signed mode, the client's signature over it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SignedRequest {
    /// The request.
    pub request: Request,
    /// Client-signed mode: the client's signature over the request.
    /// Connection-authenticated mode: the client's [`Grant`] to the replica
    /// it submitted through (the same signature on all its requests there),
    /// which lets that replica, and no other, vouch for the request's origin
    /// (see `crate::vouch`).
    pub signature: Option<Signature>,
}

impl SignedRequest {
    /// A request signed by the client's key.
    pub fn sign(request: Request, key: &KeyPair) -> Result<SignedRequest, CodecError> {
        let bytes = codec::encode(&request)?;
        let signature = Some(key.sign(Request::DOMAIN, &bytes));
        Ok(SignedRequest { request, signature })
    }

    /// A request for connection-authenticated mode, carrying the client's
    /// grant to replica `node`, the one it submits through.
    pub fn granted(request: Request, key: &KeyPair, node: NodeId) -> SignedRequest {
        SignedRequest {
            request,
            signature: Some(Grant::sign(key, node)),
        }
    }

    /// A request without any signature: refused by every cluster (tests,
    /// and what a replica would see from a client that skipped the grant).
    pub fn unsigned(request: Request) -> SignedRequest {
        SignedRequest {
            request,
            signature: None,
        }
    }

    /// The deduplication key.
    pub fn key(&self) -> RequestKey {
        RequestKey {
            client: self.request.client,
            request_id: self.request.request_id,
        }
    }

    /// Payload bytes, for batch size limits.
    pub fn payload_len(&self) -> usize {
        self.request.payload.len()
    }
}

/// `(client, request_id)`: what "at most once" is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestKey {
    /// The client.
    pub client: PublicKey,
    /// Its request id.
    pub request_id: u64,
}

/// The requests ordered at one sequence number. An empty batch is the "null
/// request" a new primary proposes for a gap.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// The requests, in order.
    pub requests: Vec<SignedRequest>,
}

/// `<PRE-PREPARE, v, s, d>`: the primary assigns batch digest `d` to sequence
/// `s` in view `v`. The batch itself travels beside it in
/// [`WireMessage::PrePrepare`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrePrepare {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: SeqNum,
    /// Batch digest (Merkle root, see [`crate::merkle`]).
    pub digest: Digest,
}

/// `<PREPARE, v, s, d, i>`: backup `i` accepted the pre-prepare.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: SeqNum,
    /// Batch digest.
    pub digest: Digest,
}

/// `<COMMIT, v, s, d, i>`: replica `i` has a prepared certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    /// View.
    pub view: View,
    /// Sequence number.
    pub seq: SeqNum,
    /// Batch digest.
    pub digest: Digest,
}

/// `<CHECKPOINT, s, chain_hash, i>`: replica `i` executed through `s` and
/// its chain head there is `block_hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Sequence number (a multiple of the checkpoint interval).
    pub seq: SeqNum,
    /// Hash of the block at `seq`, which chains every block before it.
    pub block_hash: Digest,
}

/// `<VIEW-CHANGE, v+1, C, P, i>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewChange {
    /// The view being moved to.
    pub new_view: View,
    /// The sender's stable checkpoint with its 2f+1 proof.
    pub checkpoint: CheckpointCertificate,
    /// For each sequence above the checkpoint that the sender prepared, its
    /// prepared certificate from the highest view. Sorted by sequence.
    pub prepared: Vec<PreparedCertificate>,
}

/// `<NEW-VIEW, v+1, V, O>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewView {
    /// The view being started.
    pub view: View,
    /// `V`: 2f+1 view-changes for `view` from distinct replicas.
    pub view_changes: Vec<Signed<ViewChange>>,
    /// `O`: the pre-prepares recomputed from `V`, one per sequence between
    /// the highest checkpoint in `V` and the highest prepared sequence.
    pub pre_prepares: Vec<Signed<PrePrepare>>,
}

/// Periodic status, so replicas find out who is behind: a lagging replica
/// fetches blocks, a replica in an old view is sent the new-view it missed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The sender's view (the target view while it is changing views).
    pub view: View,
    /// Whether the sender is between views.
    pub in_view_change: bool,
    /// The highest sequence the sender executed.
    pub last_executed: SeqNum,
    /// The sender's stable checkpoint.
    pub stable_checkpoint: SeqNum,
    /// The sender's consensus settings: a replica ignores a peer whose
    /// settings differ from its own (a cluster file out of step).
    pub settings: crate::config::ConsensusSettings,
}

/// A client's permission for replica `node` to vouch for the origin of its
/// requests in connection-authenticated mode. Signed once by the client (for
/// each replica it submits through) and carried in every request it sends
/// there; it cannot be revoked: a client that stops trusting a replica
/// uses a new key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The replica allowed to vouch.
    pub node: NodeId,
}

impl Grant {
    /// The client's signature granting `node`.
    pub fn sign(key: &KeyPair, node: NodeId) -> Signature {
        // A two-byte value always encodes.
        let bytes = codec::encode(&Grant { node }).unwrap_or_default();
        key.sign(Grant::DOMAIN, &bytes)
    }
}

/// A replica's word for the origin of a run of requests in a batch
/// (connection-authenticated mode): the next `count` requests are exactly
/// a [`Forward`] the voucher signed, and `signature` is its signature on
/// it. Each request in the run must carry its client's [`Grant`] to the
/// voucher. So only a replica a client submits through can put requests in
/// that client's name, and its signature proves it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vouch {
    /// The replica that vouches.
    pub voucher: NodeId,
    /// How many consecutive requests of the batch its forward holds.
    pub count: u32,
    /// The voucher's signature on `Forward { requests: <those requests> }`.
    pub signature: Signature,
}

/// Requests a replica received from its clients (it vouches for them), or
/// such a forward relayed as it was signed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    /// The requests.
    pub requests: Vec<SignedRequest>,
}

/// Asks a peer for committed blocks `from..=to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBlocks {
    /// First height wanted.
    pub from: SeqNum,
    /// Last height wanted (the responder may send fewer).
    pub to: SeqNum,
}

/// Committed blocks with their certificates, for state transfer. The
/// receiver verifies every certificate itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Blocks {
    /// Consecutive blocks, lowest first.
    pub blocks: Vec<Arc<CommittedBlock>>,
    /// The responder's stable checkpoint, so a replica that was far behind
    /// can advance its watermarks once it holds the blocks.
    pub checkpoint: CheckpointCertificate,
}

/// Asks for the batch with this digest (a replica that must prepare a batch
/// re-proposed by a new view but never received it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FetchBatch {
    /// The batch digest.
    pub digest: Digest,
}

/// A batch, sent in answer to [`FetchBatch`]; checked against its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// The batch.
    pub batch: Arc<Batch>,
}

/// A backup suspects the primary of `view`: a request it waits for has waited
/// too long. Not a vote: it commits its signer to nothing, and a replica that
/// stops suspecting simply stops re-sending it. A replica leaves a view only
/// once 2f+1 replicas suspect its primary (at least f+1 of them honest), and
/// it relays those 2f+1 suspicions so every other replica leaves too; one
/// replica whose timer fired alone (it started before the others, or lost
/// its links) therefore never strands itself in a view change while the rest
/// carry on. Zyzzyva's "I hate the primary" serves the same purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Suspect {
    /// The view whose primary is suspected.
    pub view: View,
}

/// Everything one replica sends another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WireMessage {
    /// A pre-prepare and the batch it orders.
    PrePrepare {
        /// The primary's signed pre-prepare.
        pre_prepare: Signed<PrePrepare>,
        /// The batch whose digest it names.
        batch: Arc<Batch>,
        /// Connection-authenticated mode: who vouches for each request of
        /// the batch, run by run (a pre-prepare without them is refused;
        /// a batch re-proposed by a new-view, which a prepared certificate
        /// covers, is fetched instead). Empty in client-signed mode.
        vouches: Vec<Vouch>,
    },
    /// A prepare.
    Prepare(Signed<Prepare>),
    /// A commit.
    Commit(Signed<Commit>),
    /// A checkpoint.
    Checkpoint(Signed<Checkpoint>),
    /// A view-change.
    ViewChange(Signed<ViewChange>),
    /// A new-view.
    NewView(Signed<NewView>),
    /// A status report.
    Status(Signed<Status>),
    /// Requests forwarded to the primary.
    Forward(Signed<Forward>),
    /// A block fetch.
    FetchBlocks(Signed<FetchBlocks>),
    /// Blocks in answer to a fetch.
    Blocks(Signed<Blocks>),
    /// A batch fetch.
    FetchBatch(Signed<FetchBatch>),
    /// A batch in answer to a fetch.
    Batch(Signed<BatchResponse>),
    /// A suspicion of the primary (the signer's own, or relayed).
    Suspect(Signed<Suspect>),
}

impl WireMessage {
    /// The message kind, for metrics and logs.
    pub fn kind(&self) -> MessageKind {
        match self {
            WireMessage::PrePrepare { .. } => MessageKind::PrePrepare,
            WireMessage::Prepare(_) => MessageKind::Prepare,
            WireMessage::Commit(_) => MessageKind::Commit,
            WireMessage::Checkpoint(_) => MessageKind::Checkpoint,
            WireMessage::ViewChange(_) => MessageKind::ViewChange,
            WireMessage::NewView(_) => MessageKind::NewView,
            WireMessage::Status(_) => MessageKind::Status,
            WireMessage::Forward(_) => MessageKind::Forward,
            WireMessage::FetchBlocks(_) => MessageKind::FetchBlocks,
            WireMessage::Blocks(_) => MessageKind::Blocks,
            WireMessage::FetchBatch(_) => MessageKind::FetchBatch,
            WireMessage::Batch(_) => MessageKind::Batch,
            WireMessage::Suspect(_) => MessageKind::Suspect,
        }
    }

    /// The replica that signed the outer message.
    pub fn signer(&self) -> NodeId {
        match self {
            WireMessage::PrePrepare { pre_prepare, .. } => pre_prepare.signer,
            WireMessage::Prepare(m) => m.signer,
            WireMessage::Commit(m) => m.signer,
            WireMessage::Checkpoint(m) => m.signer,
            WireMessage::ViewChange(m) => m.signer,
            WireMessage::NewView(m) => m.signer,
            WireMessage::Status(m) => m.signer,
            WireMessage::Forward(m) => m.signer,
            WireMessage::FetchBlocks(m) => m.signer,
            WireMessage::Blocks(m) => m.signer,
            WireMessage::FetchBatch(m) => m.signer,
            WireMessage::Batch(m) => m.signer,
            WireMessage::Suspect(m) => m.signer,
        }
    }
}

/// The kinds of [`WireMessage`], for per-kind counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// Pre-prepare.
    PrePrepare,
    /// Prepare.
    Prepare,
    /// Commit.
    Commit,
    /// Checkpoint.
    Checkpoint,
    /// View-change.
    ViewChange,
    /// New-view.
    NewView,
    /// Status.
    Status,
    /// Forwarded requests.
    Forward,
    /// Block fetch.
    FetchBlocks,
    /// Blocks.
    Blocks,
    /// Batch fetch.
    FetchBatch,
    /// Batch.
    Batch,
    /// Suspicion of the primary.
    Suspect,
}

impl MessageKind {
    /// Every kind, in a fixed order.
    pub const ALL: [MessageKind; 13] = [
        MessageKind::PrePrepare,
        MessageKind::Prepare,
        MessageKind::Commit,
        MessageKind::Checkpoint,
        MessageKind::ViewChange,
        MessageKind::NewView,
        MessageKind::Status,
        MessageKind::Forward,
        MessageKind::FetchBlocks,
        MessageKind::Blocks,
        MessageKind::FetchBatch,
        MessageKind::Batch,
        MessageKind::Suspect,
    ];

    /// The kind of an encoded [`WireMessage`], read from its variant tag
    /// without decoding the rest: lets the shell queue cheap consensus
    /// messages apart from bulky forwarded requests before spending any
    /// work on them. `None` for bytes no message starts with. (The codec
    /// writes an enum's variant index as a little-endian u32 first, and
    /// [`MessageKind::ALL`] lists the kinds in variant order; the
    /// `peek_kind_matches_every_variant` test checks both.)
    pub fn peek(frame: &[u8]) -> Option<MessageKind> {
        let tag = frame.get(..4)?;
        let index = u32::from_le_bytes(tag.try_into().ok()?);
        MessageKind::ALL.get(usize::try_from(index).ok()?).copied()
    }

    /// A short snake_case name, used as a metrics label.
    pub fn name(self) -> &'static str {
        match self {
            MessageKind::PrePrepare => "pre_prepare",
            MessageKind::Prepare => "prepare",
            MessageKind::Commit => "commit",
            MessageKind::Checkpoint => "checkpoint",
            MessageKind::ViewChange => "view_change",
            MessageKind::NewView => "new_view",
            MessageKind::Status => "status",
            MessageKind::Forward => "forward",
            MessageKind::FetchBlocks => "fetch_blocks",
            MessageKind::Blocks => "blocks",
            MessageKind::FetchBatch => "fetch_batch",
            MessageKind::Batch => "batch",
            MessageKind::Suspect => "suspect",
        }
    }
}
