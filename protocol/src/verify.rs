//! Signature verification, done before a message reaches the replica.
//!
//! The shell (daemon or simulator) decodes a message, collects *every*
//! signature inside it — nested view-changes, certificates, client requests —
//! and verifies them together with batch verification, off the consensus
//! task. Only then does the message become a [`Verified`] value, the only
//! form the replica accepts. The replica still checks every semantic field:
//! views, windows, digests, quorum sizes, distinct senders.

use crate::certificate::Vote;
use crate::codec;
use crate::committee::Committee;
use crate::config::Config;
use crate::ids::NodeId;
use crate::message::{
    Batch, Forward, Grant, MessageKind, Request, Signable, Signed, SignedRequest, ViewChange,
    Vouch, WireMessage,
};
use bftd_crypto::{Digest, Domain, Signature, SignatureCheck, ValidatedKey};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::ops::Deref;

/// How clients' requests are authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RequestMode {
    /// Every request carries the client's signature and every replica checks
    /// it: no replica, primary included, can forge or alter a request. Costs
    /// one signature verification per request per replica.
    #[default]
    ClientSigned,
    /// The client proves its key in the TLS handshake to the node it submits
    /// to, and its requests carry, instead of a signature each, one
    /// signature the client made once: its grant to that node. The node
    /// vouches for its clients' requests with one signature per forward.
    /// Several times the throughput, at the cost of trusting that node for
    /// the origin of its own clients' requests (a byzantine node could invent
    /// requests in the name of clients that submit through it, and no
    /// other's; it still cannot break agreement). See `crate::vouch`.
    ConnectionAuthenticated,
}

/// Why a message was refused before reaching the replica.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A signature names a replica that is not in the committee.
    #[error("signed by unknown replica {signer}")]
    UnknownSigner {
        /// The claimed signer.
        signer: NodeId,
    },
    /// At least one signature does not verify.
    #[error("invalid signature")]
    InvalidSignature,
    /// A client-signed request without a signature.
    #[error("request without the client signature this cluster requires")]
    MissingClientSignature,
    /// A request's client key is not a valid Ed25519 key.
    #[error("request from an invalid client key")]
    InvalidClientKey,
    /// A value could not be encoded to check its signature (oversized).
    #[error("message too large to verify")]
    Oversized,
    /// Connection-authenticated mode: a request carries no grant.
    #[error("request without the client's grant to the node it came through")]
    MissingGrant,
    /// Connection-authenticated mode: a pre-prepare's vouches do not cover
    /// its batch exactly.
    #[error("a pre-prepare's requests are not all vouched for")]
    Unvouched,
    /// The message breaks a bound no honest replica's message breaks (more
    /// votes than members, a repeated signer, a batch over the batch
    /// limits, ...): refused before any of its signatures is checked.
    #[error("malformed message refused before verification: {0}")]
    Shape(&'static str),
}

/// What a message may hold, checked before any signature in it is: every
/// bound here is one that no honest replica's message exceeds, so a
/// message that breaks one is refused for the price of a look at it, not
/// of thousands of signature checks. Built from the replica's [`Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// How requests are authenticated.
    pub request_mode: RequestMode,
    /// See [`Config::window`].
    pub window: u64,
    /// See [`Config::max_batch_requests`].
    pub max_batch_requests: usize,
    /// See [`Config::max_batch_bytes`].
    pub max_batch_bytes: usize,
    /// See [`Config::max_request_bytes`].
    pub max_request_bytes: usize,
    /// See [`Config::fetch_max_blocks`]: a state-transfer response holds no
    /// more blocks than this replica asks for.
    pub fetch_max_blocks: u64,
}

impl MessageLimits {
    /// The limits `config` implies.
    pub fn of(config: &Config) -> MessageLimits {
        MessageLimits {
            request_mode: config.request_mode,
            window: config.window,
            max_batch_requests: config.max_batch_requests,
            max_batch_bytes: config.max_batch_bytes,
            max_request_bytes: config.max_request_bytes,
            fetch_max_blocks: config.fetch_max_blocks,
        }
    }
}

/// Encoded bytes of the parts messages are made of, at most (see
/// `crate::codec`: byte strings carry an 8-byte length).
mod encoded {
    /// A signed request's fields beyond its payload: client key (8 + 32),
    /// id, valid_until, payload length, option tag, signature (8 + 64).
    pub const REQUEST_OVERHEAD: usize = 40 + 8 + 8 + 8 + 1 + 72;
    /// `Signed<T>` beyond `T`: signer and signature.
    pub const SIGNED_OVERHEAD: usize = 2 + 72;
    /// One vote in a certificate: signer and signature.
    pub const VOTE: usize = 2 + 72;
    /// View, sequence and digest: the value of a prepare, commit, checkpoint
    /// or pre-prepare, with room to spare.
    pub const VALUE: usize = 8 + 8 + 40;
    /// A vouch: voucher, count, signature.
    pub const VOUCH: usize = 2 + 4 + 72;
    /// Messages with no variable part (votes, statuses, fetches,
    /// suspicions), generously.
    pub const SMALL_MESSAGE: usize = 64 * 1024;
}

impl MessageLimits {
    /// The largest encoding an honest replica's message of `kind` can have
    /// in a committee of `n`: what a frame of that kind may hold at most.
    /// The transport refuses a bigger frame as soon as it has read it, by
    /// its first four bytes (`MessageKind::peek`), before queueing or
    /// decoding it: the peers' frame limit (64 MiB) is for the biggest kind
    /// (a state-transfer answer), and a vote or a forward of that size is
    /// only ever an attack (design notes §27). Each bound is exact for the
    /// fields' worst case plus 1 KiB, which the test
    /// `honest_messages_fit_their_kinds_bound` checks for the big kinds.
    pub fn max_encoded_bytes(&self, kind: MessageKind, n: usize) -> usize {
        use encoded::*;
        let certificate = |votes: usize| VALUE + 8 + votes.saturating_mul(VOTE);
        let batch = self
            .max_batch_bytes
            .max(self.max_request_bytes)
            .saturating_add(self.max_batch_requests.saturating_mul(REQUEST_OVERHEAD))
            .saturating_add(8);
        let prepared = SIGNED_OVERHEAD + VALUE + certificate(n);
        let window = usize::try_from(self.window).unwrap_or(usize::MAX);
        let view_change = (SIGNED_OVERHEAD + 8 + certificate(n) + 8)
            .saturating_add(window.saturating_mul(prepared));
        let bound = match kind {
            MessageKind::Forward | MessageKind::Batch => SIGNED_OVERHEAD + batch,
            MessageKind::PrePrepare => (SIGNED_OVERHEAD + VALUE + batch + 8)
                .saturating_add(self.max_batch_requests.saturating_mul(VOUCH)),
            MessageKind::ViewChange => view_change,
            MessageKind::NewView => (SIGNED_OVERHEAD + 8 + 8 + 8)
                .saturating_add(n.saturating_mul(view_change))
                .saturating_add(window.saturating_mul(SIGNED_OVERHEAD + VALUE)),
            MessageKind::Blocks => {
                // Blocks up to about `FETCH_MAX_BYTES` of payload (counted
                // with 128 bytes per request, so twice that covers the
                // encoding), plus the one block that crosses it, each with
                // its header and commit certificate.
                let blocks = usize::try_from(self.fetch_max_blocks).unwrap_or(usize::MAX);
                (SIGNED_OVERHEAD + 8 + certificate(n))
                    .saturating_add(crate::replica::FETCH_MAX_BYTES.saturating_mul(2))
                    .saturating_add(batch)
                    .saturating_add(blocks.saturating_mul(8 + 40 + 40 + 8 + certificate(n)))
            }
            MessageKind::Prepare
            | MessageKind::Commit
            | MessageKind::Checkpoint
            | MessageKind::Status
            | MessageKind::FetchBlocks
            | MessageKind::FetchBatch
            | MessageKind::Suspect => return SMALL_MESSAGE,
        };
        // The enum tag and 1 KiB to spare, and never below the
        // small-message allowance.
        bound.saturating_add(4 + 1024).max(SMALL_MESSAGE)
    }
}

impl From<&Config> for MessageLimits {
    fn from(config: &Config) -> MessageLimits {
        MessageLimits::of(config)
    }
}

/// Whether `requests` fit in one batch: at most `max_batch_requests`, each
/// payload at most `max_request_bytes`, at most `max_batch_bytes` in all
/// (a single request may use the whole request limit). The replica holds
/// pre-prepares and forwards to the same rule.
pub fn batch_within_limits(
    requests: &[SignedRequest],
    max_batch_requests: usize,
    max_batch_bytes: usize,
    max_request_bytes: usize,
) -> bool {
    if requests.len() > max_batch_requests {
        return false;
    }
    let mut bytes = 0usize;
    for request in requests {
        let size = request.payload_len();
        if size > max_request_bytes {
            return false;
        }
        bytes = bytes.saturating_add(size);
    }
    bytes <= max_batch_bytes || requests.len() == 1
}

/// The cheap structural checks of `message`, run before any signature in
/// it is verified: counts, distinct signers, committee membership, sizes.
/// Each refuses only what the replica would refuse anyway after paying for
/// the signatures, so an honest message always passes.
pub fn check_shape(
    message: &WireMessage,
    committee: &Committee,
    limits: &MessageLimits,
) -> Result<(), VerifyError> {
    let batch = |requests: &[SignedRequest], what| {
        if batch_within_limits(
            requests,
            limits.max_batch_requests,
            limits.max_batch_bytes,
            limits.max_request_bytes,
        ) {
            Ok(())
        } else {
            Err(VerifyError::Shape(what))
        }
    };
    match message {
        WireMessage::PrePrepare {
            batch: b, vouches, ..
        } => {
            if vouches.len() > b.requests.len() {
                return Err(VerifyError::Shape("more vouches than requests"));
            }
            batch(&b.requests, "pre-prepare batch over the batch limits")
        }
        WireMessage::Forward(m) => batch(&m.value.requests, "forward over the batch limits"),
        WireMessage::Batch(m) => batch(&m.value.batch.requests, "batch over the batch limits"),
        WireMessage::ViewChange(m) => {
            if crate::replica::valid_view_change(committee, limits.window, &m.value) {
                Ok(())
            } else {
                Err(VerifyError::Shape("invalid view-change"))
            }
        }
        WireMessage::NewView(m) => {
            if crate::replica::valid_new_view(committee, limits.window, &m.value) {
                Ok(())
            } else {
                Err(VerifyError::Shape("invalid new-view"))
            }
        }
        WireMessage::Blocks(m) => {
            if m.value.blocks.len() as u64 > limits.fetch_max_blocks {
                return Err(VerifyError::Shape("more blocks than asked for"));
            }
            let certificates_hold = m
                .value
                .blocks
                .iter()
                .all(|block| block.certificate.check(committee).is_ok());
            if !certificates_hold || m.value.checkpoint.check(committee).is_err() {
                return Err(VerifyError::Shape("invalid certificate in blocks"));
            }
            Ok(())
        }
        WireMessage::Prepare(_)
        | WireMessage::Commit(_)
        | WireMessage::Checkpoint(_)
        | WireMessage::Status(_)
        | WireMessage::FetchBlocks(_)
        | WireMessage::FetchBatch(_)
        | WireMessage::Suspect(_) => Ok(()),
    }
}

/// A value whose signatures have all been verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verified<T>(T);

impl<T> Verified<T> {
    /// The verified value.
    pub fn into_inner(self) -> T {
        self.0
    }

    /// Keeps the verified status through a change that adds no unverified
    /// content (the byzantine layer drops requests from a verified forward).
    #[cfg(feature = "byzantine")]
    pub(crate) fn map<U>(self, change: impl FnOnce(T) -> U) -> Verified<U> {
        Verified(change(self.0))
    }
}

impl<T> Deref for Verified<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Checks a set of signatures. The daemon uses batch verification; the
/// simulator adds a cache, since it verifies the same broadcast bytes once per
/// receiver.
pub trait SignatureVerifier {
    /// `Ok` if every check passes, else the indices of those that fail.
    fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>>;

    /// Removes from `checks` the client checks (request signatures, grants)
    /// that passed before. A node meets the same client signature more
    /// than once (a request on arrival and again in the pre-prepare; a
    /// grant in every request of its client through one node), so a
    /// verifier may remember the ones that passed; by default it remembers
    /// nothing.
    fn drop_known(&mut self, _checks: &mut Vec<SignatureCheck>) {}

    /// Client checks that just passed.
    fn remember(&mut self, _checks: &[SignatureCheck]) {}
}

/// Client checks that passed, bounded: two generations of at most
/// [`ClientCheckCache::CAPACITY`] entries each; when the newer fills, the
/// older is dropped. So the most recent `CAPACITY` checks are always
/// remembered (a request is usually met again within milliseconds, in the
/// pre-prepare), and a forgotten check is only verified again.
#[derive(Debug, Default)]
pub struct ClientCheckCache {
    newer: HashSet<Digest>,
    older: HashSet<Digest>,
}

impl ClientCheckCache {
    /// Entries per generation: a few seconds of requests at full load,
    /// every active client's grant, with room to spare (about 2 MiB each).
    pub const CAPACITY: usize = 1 << 16;

    fn knows(&self, key: &Digest) -> bool {
        self.newer.contains(key) || self.older.contains(key)
    }

    /// Whether `check` passed before.
    pub fn contains(&self, check: &SignatureCheck) -> bool {
        self.knows(&check.fingerprint())
    }

    /// Checks remembered.
    pub fn len(&self) -> usize {
        self.newer.len() + self.older.len()
    }

    /// Whether none is remembered.
    pub fn is_empty(&self) -> bool {
        self.newer.is_empty() && self.older.is_empty()
    }

    /// Removes from `checks` those that passed before.
    pub fn drop_known(&self, checks: &mut Vec<SignatureCheck>) {
        let fingerprints: Vec<Digest> = checks.iter().map(SignatureCheck::fingerprint).collect();
        self.drop_fingerprinted(checks, &fingerprints);
    }

    /// [`ClientCheckCache::drop_known`] with the checks' fingerprints
    /// computed by the caller (outside a lock around the cache).
    fn drop_fingerprinted(&self, checks: &mut Vec<SignatureCheck>, fingerprints: &[Digest]) {
        let mut known = fingerprints.iter().map(|key| self.knows(key));
        checks.retain(|_| !known.next().unwrap_or(false));
    }

    /// Remembers checks that passed.
    pub fn insert(&mut self, checks: &[SignatureCheck]) {
        self.insert_fingerprints(checks.iter().map(SignatureCheck::fingerprint));
    }

    fn insert_fingerprints(&mut self, fingerprints: impl IntoIterator<Item = Digest>) {
        for key in fingerprints {
            if self.knows(&key) {
                continue;
            }
            if self.newer.len() >= Self::CAPACITY {
                self.older = std::mem::take(&mut self.newer);
            }
            self.newer.insert(key);
        }
    }
}

/// Batch verification that remembers passed client checks in a shared
/// cache (the daemon's verification workers share one).
#[derive(Debug)]
pub struct CachingVerifier<'a>(pub &'a std::sync::Mutex<ClientCheckCache>);

impl CachingVerifier<'_> {
    fn cache(&self) -> std::sync::MutexGuard<'_, ClientCheckCache> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SignatureVerifier for CachingVerifier<'_> {
    fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
        bftd_crypto::verify_batch(checks)
    }

    // Fingerprints (a SHA-256 each) are computed before taking the lock,
    // which the node's verification workers share.
    fn drop_known(&mut self, checks: &mut Vec<SignatureCheck>) {
        if !checks.is_empty() {
            let fingerprints: Vec<Digest> =
                checks.iter().map(SignatureCheck::fingerprint).collect();
            self.cache().drop_fingerprinted(checks, &fingerprints);
        }
    }

    fn remember(&mut self, checks: &[SignatureCheck]) {
        if !checks.is_empty() {
            let fingerprints: Vec<Digest> =
                checks.iter().map(SignatureCheck::fingerprint).collect();
            self.cache().insert_fingerprints(fingerprints);
        }
    }
}

/// `Forward { requests }` over a run of a batch, borrowed: encodes exactly
/// as the [`Forward`] the voucher signed.
#[derive(Serialize)]
struct ForwardRun<'a> {
    requests: &'a [SignedRequest],
}

impl Signable for ForwardRun<'_> {
    const DOMAIN: Domain = Forward::DOMAIN;
}

/// Batch verification without caching.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchVerifier;

impl SignatureVerifier for BatchVerifier {
    fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
        bftd_crypto::verify_batch(checks)
    }
}

/// Gathers the signature checks inside a message.
#[derive(Debug)]
pub struct SignatureCollector<'a> {
    committee: &'a Committee,
    mode: RequestMode,
    checks: Vec<SignatureCheck>,
    /// Client checks (request signatures, grants), apart: verifiers may
    /// cache them.
    client: Vec<SignatureCheck>,
    granted: HashSet<(NodeId, Signature)>,
    error: Option<VerifyError>,
    scratch: Vec<u8>,
}

impl<'a> SignatureCollector<'a> {
    /// An empty collector.
    pub fn new(committee: &'a Committee, mode: RequestMode) -> SignatureCollector<'a> {
        SignatureCollector {
            committee,
            mode,
            checks: Vec::new(),
            client: Vec::new(),
            granted: HashSet::new(),
            error: None,
            scratch: Vec::new(),
        }
    }

    fn fail(&mut self, error: VerifyError) {
        self.error.get_or_insert(error);
    }

    fn member_key(&mut self, signer: NodeId) -> Option<ValidatedKey> {
        let key = self.committee.key(signer).copied();
        if key.is_none() {
            self.fail(VerifyError::UnknownSigner { signer });
        }
        key
    }

    fn encode<T: Signable>(&mut self, value: &T) -> bool {
        if codec::encode_into(value, &mut self.scratch).is_err() {
            self.fail(VerifyError::Oversized);
            return false;
        }
        true
    }

    pub(crate) fn add_signed<T: Signable>(&mut self, signed: &Signed<T>) {
        if let Some(key) = self.member_key(signed.signer) {
            if self.encode(&signed.value) {
                let check = SignatureCheck::new(key, T::DOMAIN, &self.scratch, signed.signature);
                self.checks.push(check);
            }
        }
    }

    pub(crate) fn add_votes<T: Signable>(&mut self, value: &T, votes: &[Vote]) {
        if !self.encode(value) {
            return;
        }
        for vote in votes {
            if let Some(key) = self.member_key(vote.signer) {
                let check = SignatureCheck::new(key, T::DOMAIN, &self.scratch, vote.signature);
                self.checks.push(check);
            }
        }
    }

    /// Client signatures, in client-signed mode only.
    pub(crate) fn add_requests<'r>(
        &mut self,
        requests: impl IntoIterator<Item = &'r SignedRequest>,
    ) {
        if self.mode != RequestMode::ClientSigned {
            return;
        }
        for request in requests {
            let Some(signature) = request.signature else {
                self.fail(VerifyError::MissingClientSignature);
                return;
            };
            let Ok(key) = request.request.client.validate() else {
                self.fail(VerifyError::InvalidClientKey);
                return;
            };
            if self.encode(&request.request) {
                let check = SignatureCheck::new(key, Request::DOMAIN, &self.scratch, signature);
                self.client.push(check);
            }
        }
    }

    /// Connection-authenticated mode: each request must carry its client's
    /// grant to `voucher`. One client's requests through one node all carry
    /// the same grant, so each is checked once per message.
    pub(crate) fn add_grants(&mut self, voucher: NodeId, requests: &[SignedRequest]) {
        if self.mode != RequestMode::ConnectionAuthenticated {
            return;
        }
        let mut grant = Vec::new();
        if codec::encode_into(&Grant { node: voucher }, &mut grant).is_err() {
            self.fail(VerifyError::Oversized);
            return;
        }
        for request in requests {
            let Some(signature) = request.signature else {
                self.fail(VerifyError::MissingGrant);
                return;
            };
            if !self.granted.insert((voucher, signature)) {
                continue;
            }
            let Ok(key) = request.request.client.validate() else {
                self.fail(VerifyError::InvalidClientKey);
                return;
            };
            let check = SignatureCheck::new(key, Grant::DOMAIN, &grant, signature);
            self.client.push(check);
        }
    }

    /// Connection-authenticated mode: the vouches cover the batch exactly,
    /// run by run, each run a forward its voucher signed, of requests whose
    /// clients granted the voucher.
    fn add_vouched(&mut self, batch: &Batch, vouches: &[Vouch]) {
        if self.mode != RequestMode::ConnectionAuthenticated {
            return;
        }
        let requests = &batch.requests;
        let mut start = 0usize;
        for vouch in vouches {
            let end = start.saturating_add(vouch.count as usize);
            let Some(run) = requests.get(start..end).filter(|run| !run.is_empty()) else {
                self.fail(VerifyError::Unvouched);
                return;
            };
            if let Some(key) = self.member_key(vouch.voucher) {
                if self.encode(&ForwardRun { requests: run }) {
                    let check =
                        SignatureCheck::new(key, Forward::DOMAIN, &self.scratch, vouch.signature);
                    self.checks.push(check);
                }
            }
            self.add_grants(vouch.voucher, run);
            start = end;
        }
        if start != requests.len() {
            self.fail(VerifyError::Unvouched);
        }
    }

    fn add_view_change(&mut self, view_change: &Signed<ViewChange>) {
        self.add_signed(view_change);
        let value = &view_change.value;
        value.checkpoint.collect_signatures(self);
        for prepared in &value.prepared {
            prepared.collect_signatures(self);
        }
    }

    /// Every signature in `message`.
    ///
    /// Client signatures are checked where requests enter the cluster (from a
    /// client, in a forward, in a pre-prepare). They are not re-checked inside
    /// state-transfer blocks or fetched batches: those carry a commit or
    /// prepared certificate, so at least f+1 honest replicas already checked
    /// them.
    pub fn add_message(&mut self, message: &WireMessage) {
        match message {
            WireMessage::PrePrepare {
                pre_prepare,
                batch,
                vouches,
            } => {
                self.add_signed(pre_prepare);
                self.add_requests(&batch.requests);
                self.add_vouched(batch, vouches);
            }
            WireMessage::Prepare(m) => self.add_signed(m),
            WireMessage::Commit(m) => self.add_signed(m),
            WireMessage::Checkpoint(m) => self.add_signed(m),
            WireMessage::Status(m) => self.add_signed(m),
            WireMessage::FetchBlocks(m) => self.add_signed(m),
            WireMessage::FetchBatch(m) => self.add_signed(m),
            WireMessage::Batch(m) => self.add_signed(m),
            WireMessage::Suspect(m) => self.add_signed(m),
            WireMessage::ViewChange(m) => self.add_view_change(m),
            WireMessage::NewView(m) => {
                self.add_signed(m);
                for view_change in &m.value.view_changes {
                    self.add_view_change(view_change);
                }
                for pre_prepare in &m.value.pre_prepares {
                    self.add_signed(pre_prepare);
                }
            }
            WireMessage::Forward(m) => {
                self.add_signed(m);
                self.add_requests(&m.value.requests);
                self.add_grants(m.signer, &m.value.requests);
            }
            WireMessage::Blocks(m) => {
                self.add_signed(m);
                for block in &m.value.blocks {
                    block.certificate.collect_signatures(self);
                }
                m.value.checkpoint.collect_signatures(self);
            }
        }
    }

    /// The checks gathered, or the first structural error met.
    pub fn finish(self) -> Result<Vec<SignatureCheck>, VerifyError> {
        let (mut checks, client) = self.finish_apart()?;
        checks.extend(client);
        Ok(checks)
    }

    /// The checks gathered and, apart, the client checks.
    fn finish_apart(self) -> Result<(Vec<SignatureCheck>, Vec<SignatureCheck>), VerifyError> {
        match self.error {
            Some(error) => Err(error),
            None => Ok((self.checks, self.client)),
        }
    }

    /// The checks to run with `verifier`: everything but the client checks
    /// it remembers; and where the client checks begin.
    fn checks_for(
        self,
        verifier: &mut impl SignatureVerifier,
    ) -> Result<(Vec<SignatureCheck>, usize), VerifyError> {
        let (mut checks, mut client) = self.finish_apart()?;
        verifier.drop_known(&mut client);
        let first_client = checks.len();
        checks.extend(client);
        Ok((checks, first_client))
    }
}

/// Checks `message`'s shape ([`check_shape`]), then verifies every
/// signature in it.
pub fn verify_message(
    message: WireMessage,
    committee: &Committee,
    limits: &MessageLimits,
    verifier: &mut impl SignatureVerifier,
) -> Result<Verified<WireMessage>, VerifyError> {
    check_shape(&message, committee, limits)?;
    let mut collector = SignatureCollector::new(committee, limits.request_mode);
    collector.add_message(&message);
    let (checks, first_client) = collector.checks_for(verifier)?;
    verifier
        .verify(&checks)
        .map_err(|_| VerifyError::InvalidSignature)?;
    verifier.remember(checks.get(first_client..).unwrap_or_default());
    Ok(Verified(message))
}

/// Verifies several messages with one batch: when all are valid (the usual
/// case) this costs one batch verification; otherwise each message is
/// verified on its own to find the bad ones.
pub fn verify_messages(
    messages: Vec<WireMessage>,
    committee: &Committee,
    limits: &MessageLimits,
    verifier: &mut impl SignatureVerifier,
) -> Vec<Result<Verified<WireMessage>, VerifyError>> {
    let mut all = Vec::new();
    let mut client = Vec::new();
    let mut collected = Vec::with_capacity(messages.len());
    for message in &messages {
        let checks = check_shape(message, committee, limits).and_then(|()| {
            let mut collector = SignatureCollector::new(committee, limits.request_mode);
            collector.add_message(message);
            collector.checks_for(verifier)
        });
        if let Ok((checks, first_client)) = &checks {
            let (own, own_client) = checks.split_at(*first_client.min(&checks.len()));
            all.extend(own.iter().cloned());
            client.extend(own_client.iter().cloned());
        }
        collected.push(checks.map(|_| ()));
    }
    let first_client = all.len();
    all.extend(client);
    let all_valid = collected.iter().all(Result::is_ok) && verifier.verify(&all).is_ok();
    if all_valid {
        verifier.remember(all.get(first_client..).unwrap_or_default());
    }
    messages
        .into_iter()
        .zip(collected)
        .map(|(message, collected)| {
            collected?;
            if all_valid {
                Ok(Verified(message))
            } else {
                verify_message(message, committee, limits, verifier)
            }
        })
        .collect()
}

/// Verifies a request a client submitted to replica `entry`: its
/// signature in client-signed mode, its grant to `entry` in
/// connection-authenticated mode.
pub fn verify_request(
    request: SignedRequest,
    entry: NodeId,
    committee: &Committee,
    mode: RequestMode,
    verifier: &mut impl SignatureVerifier,
) -> Result<Verified<SignedRequest>, VerifyError> {
    let mut collector = SignatureCollector::new(committee, mode);
    collector.add_requests(std::iter::once(&request));
    collector.add_grants(entry, std::slice::from_ref(&request));
    let (checks, first_client) = collector.checks_for(verifier)?;
    verifier
        .verify(&checks)
        .map_err(|_| VerifyError::InvalidSignature)?;
    verifier.remember(checks.get(first_client..).unwrap_or_default());
    Ok(Verified(request))
}

/// Verifies the signatures a closure collects, with batch verification.
pub(crate) fn verify_all(
    committee: &Committee,
    collect: impl FnOnce(&mut SignatureCollector<'_>),
) -> Result<(), VerifyError> {
    let mut collector = SignatureCollector::new(committee, RequestMode::ConnectionAuthenticated);
    collect(&mut collector);
    let checks = collector.finish()?;
    BatchVerifier
        .verify(&checks)
        .map_err(|_| VerifyError::InvalidSignature)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::certificate::QuorumCertificate;
    use crate::ids::{SeqNum, View};
    use crate::message::{Checkpoint, Signed};
    use bftd_crypto::{Digest, KeyPair};

    fn keys() -> Vec<KeyPair> {
        (0..4u8).map(|i| KeyPair::from_seed([i + 70; 32])).collect()
    }

    fn committee() -> Committee {
        Committee::new(&keys().iter().map(KeyPair::public).collect::<Vec<_>>()).unwrap()
    }

    /// Counts the signatures it is asked to check, and checks them.
    #[derive(Default)]
    struct Counting(usize);

    impl SignatureVerifier for Counting {
        fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
            self.0 += checks.len();
            BatchVerifier.verify(checks)
        }
    }

    /// A view-change whose checkpoint certificate repeats one valid vote
    /// thousands of times: refused on its shape, before a single signature
    /// is checked (each repeat used to cost a verification).
    #[test]
    fn repeated_votes_are_refused_before_any_signature_check() {
        let keys = keys();
        let checkpoint = Checkpoint {
            seq: SeqNum(64),
            block_hash: Digest([5; 32]),
        };
        let vote = Signed::sign(NodeId(1), checkpoint, &keys[1]).unwrap();
        let certificate = QuorumCertificate {
            value: checkpoint,
            votes: vec![
                crate::certificate::Vote {
                    signer: vote.signer,
                    signature: vote.signature,
                };
                10_000
            ],
        };
        let view_change = ViewChange {
            new_view: View(1),
            checkpoint: certificate,
            prepared: Vec::new(),
        };
        let message =
            WireMessage::ViewChange(Signed::sign(NodeId(1), view_change, &keys[1]).unwrap());
        let mut verifier = Counting::default();
        let result = verify_message(
            message,
            &committee(),
            &MessageLimits::of(&Config::default()),
            &mut verifier,
        );
        println!(
            "result {:?}, signatures checked: {}",
            result.as_ref().map(|_| ()),
            verifier.0
        );
        assert!(result.is_err(), "a certificate of one repeated vote");
        assert_eq!(verifier.0, 0, "refused before any signature check");
    }

    /// A pre-prepare whose batch holds more client-signed requests than a
    /// batch may is refused without checking one of their signatures; a
    /// batch within the limits is verified as before.
    #[test]
    fn oversized_batches_are_refused_before_their_signatures() {
        use crate::message::{Batch, PrePrepare};
        let keys = keys();
        let client = KeyPair::from_seed([99; 32]);
        let limits = MessageLimits {
            max_batch_requests: 8,
            ..MessageLimits::of(&Config::default())
        };
        let pre_prepare = |count: u64| {
            let requests = (0..count)
                .map(|id| {
                    let request = Request {
                        client: client.public(),
                        request_id: id,
                        valid_until: SeqNum(10),
                        payload: vec![1; 8],
                    };
                    SignedRequest::sign(request, &client).unwrap()
                })
                .collect();
            let batch = Batch { requests };
            let value = PrePrepare {
                view: View(0),
                seq: SeqNum(1),
                digest: crate::merkle::MerkleTree::new(&batch).root(),
            };
            WireMessage::PrePrepare {
                pre_prepare: Signed::sign(NodeId(0), value, &keys[0]).unwrap(),
                batch: std::sync::Arc::new(batch),
                vouches: Vec::new(),
            }
        };
        let mut verifier = Counting::default();
        let result = verify_message(pre_prepare(9), &committee(), &limits, &mut verifier);
        assert!(matches!(result, Err(VerifyError::Shape(_))), "{result:?}");
        assert_eq!(verifier.0, 0);
        let result = verify_messages(vec![pre_prepare(9)], &committee(), &limits, &mut verifier);
        assert!(matches!(result[..], [Err(VerifyError::Shape(_))]));
        assert_eq!(verifier.0, 0);
        let result = verify_message(pre_prepare(8), &committee(), &limits, &mut verifier);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(verifier.0, 9, "the primary's signature and eight requests'");
    }

    /// Counts the signatures it checks; remembers client checks in a cache.
    struct CountingCache<'a> {
        cache: CachingVerifier<'a>,
        checked: usize,
    }

    impl SignatureVerifier for CountingCache<'_> {
        fn verify(&mut self, checks: &[SignatureCheck]) -> Result<(), Vec<usize>> {
            self.checked += checks.len();
            self.cache.verify(checks)
        }
        fn drop_known(&mut self, checks: &mut Vec<SignatureCheck>) {
            self.cache.drop_known(checks);
        }
        fn remember(&mut self, checks: &[SignatureCheck]) {
            self.cache.remember(checks);
        }
    }

    /// Client-signed mode: a request verified on arrival is not verified
    /// again in the pre-prepare that carries it; and the cache never lets a
    /// signature pass for anything but what it signed (a remembered
    /// signature on other bytes, or by another key, is checked and refused).
    #[test]
    fn a_request_signature_is_verified_once_per_node_and_only_for_what_it_signs() {
        use crate::message::{Batch, PrePrepare};
        let keys = keys();
        let alice = KeyPair::from_seed([98; 32]);
        let limits = MessageLimits {
            request_mode: RequestMode::ClientSigned,
            ..MessageLimits::of(&Config::default())
        };
        let request = |id: u64| Request {
            client: alice.public(),
            request_id: id,
            valid_until: SeqNum(10),
            payload: vec![7; 16],
        };
        let signed = |id: u64| SignedRequest::sign(request(id), &alice).unwrap();
        let cache = std::sync::Mutex::new(ClientCheckCache::default());
        let mut verifier = CountingCache {
            cache: CachingVerifier(&cache),
            checked: 0,
        };
        let mode = RequestMode::ClientSigned;
        verify_request(signed(1), NodeId(1), &committee(), mode, &mut verifier).unwrap();
        assert_eq!((verifier.checked, cache.lock().unwrap().len()), (1, 1));

        let batch = Batch {
            requests: vec![signed(1), signed(2)],
        };
        let value = PrePrepare {
            view: View(0),
            seq: SeqNum(1),
            digest: crate::merkle::MerkleTree::new(&batch).root(),
        };
        let message = WireMessage::PrePrepare {
            pre_prepare: Signed::sign(NodeId(0), value, &keys[0]).unwrap(),
            batch: std::sync::Arc::new(batch),
            vouches: Vec::new(),
        };
        verify_message(message, &committee(), &limits, &mut verifier).unwrap();
        assert_eq!(
            verifier.checked, 3,
            "the primary's signature and request 2's; request 1's was known"
        );

        // Request 1's remembered signature on request 1 with another payload.
        let mut tampered = signed(1);
        tampered.request.payload = vec![8; 16];
        let result = verify_request(tampered, NodeId(1), &committee(), mode, &mut verifier);
        assert_eq!(result.err(), Some(VerifyError::InvalidSignature));
        // ... and as if another client had made it.
        let mut other_key = signed(1);
        other_key.request.client = KeyPair::from_seed([97; 32]).public();
        let result = verify_request(other_key, NodeId(1), &committee(), mode, &mut verifier);
        assert_eq!(result.err(), Some(VerifyError::InvalidSignature));
        assert_eq!(
            cache.lock().unwrap().len(),
            2,
            "failures are not remembered"
        );
    }

    /// The cache keeps at least its capacity of the most recent checks:
    /// when the newer generation fills, the older one goes, not everything.
    #[test]
    fn the_client_check_cache_forgets_the_oldest_generation_only() {
        // Inserting does not verify, so one (wrong) signature over many
        // messages makes distinct entries cheaply.
        let key = KeyPair::from_seed([96; 32]).public().validate().unwrap();
        let check = |i: u64| {
            SignatureCheck::new(key, Request::DOMAIN, &i.to_le_bytes(), Signature([1; 64]))
        };
        let mut cache = ClientCheckCache::default();
        let capacity = ClientCheckCache::CAPACITY as u64;
        let all: Vec<SignatureCheck> = (0..capacity + 1).map(check).collect();
        cache.insert(&all);
        assert_eq!(cache.len(), ClientCheckCache::CAPACITY + 1);
        assert!(cache.contains(&all[0]) && cache.contains(&all[capacity as usize]));
        let more: Vec<SignatureCheck> = (capacity + 1..2 * capacity + 1).map(check).collect();
        cache.insert(&more);
        assert!(!cache.contains(&all[0]), "the oldest generation is gone");
        assert!(cache.contains(&all[capacity as usize]) && cache.contains(&more[0]));
    }

    /// Each kind's bound covers the biggest message an honest replica sends
    /// of it: batches full to both limits with signatures on every request,
    /// vouches for every request, view-changes with a prepared certificate
    /// for every sequence of the window, new-views of n of them, and a
    /// state-transfer answer at its byte cap; and the bound of the small
    /// kinds is far below the frame limit (so a vote the size of a batch is
    /// dropped before it is queued or decoded).
    #[test]
    fn honest_messages_fit_their_kinds_bound() {
        use crate::block::{Block, CommittedBlock};
        use crate::certificate::{PreparedCertificate, QuorumCertificate};
        use crate::message::{
            Blocks, Checkpoint, Commit, MessageKind, NewView, PrePrepare, Prepare, Vouch,
        };
        use std::sync::Arc;
        let signature = bftd_crypto::Signature([7; 64]);
        let client = KeyPair::from_seed([99; 32]).public();
        for n in [4usize, 7] {
            let limits = MessageLimits::of(&Config::default());
            let payload = limits.max_batch_bytes / limits.max_batch_requests;
            let batch = Arc::new(Batch {
                requests: (0..limits.max_batch_requests as u64)
                    .map(|id| SignedRequest {
                        request: Request {
                            client,
                            request_id: u64::MAX - id,
                            valid_until: SeqNum(u64::MAX),
                            payload: vec![0xff; payload],
                        },
                        signature: Some(signature),
                    })
                    .collect(),
            });
            fn signed<T>(value: T) -> Signed<T> {
                Signed {
                    signer: NodeId(0),
                    value,
                    signature: bftd_crypto::Signature([7; 64]),
                }
            }
            let votes = |count: usize| {
                (0..count)
                    .map(|i| Vote {
                        signer: NodeId(i as u16),
                        signature,
                    })
                    .collect::<Vec<_>>()
            };
            let value = PrePrepare {
                view: View(u64::MAX),
                seq: SeqNum(u64::MAX),
                digest: Digest([1; 32]),
            };
            let checkpoint = QuorumCertificate {
                value: Checkpoint {
                    seq: SeqNum(u64::MAX),
                    block_hash: Digest([1; 32]),
                },
                votes: votes(n),
            };
            let view_change = ViewChange {
                new_view: View(u64::MAX),
                checkpoint: checkpoint.clone(),
                prepared: (0..limits.window)
                    .map(|_| PreparedCertificate {
                        pre_prepare: signed(value),
                        prepares: QuorumCertificate {
                            value: Prepare {
                                view: View(u64::MAX),
                                seq: SeqNum(u64::MAX),
                                digest: Digest([1; 32]),
                            },
                            votes: votes(n),
                        },
                    })
                    .collect(),
            };
            let block = Arc::new(CommittedBlock {
                block: Block {
                    height: SeqNum(u64::MAX),
                    prev_hash: Digest([1; 32]),
                    batch_digest: Digest([1; 32]),
                    batch: batch.clone(),
                },
                certificate: QuorumCertificate {
                    value: Commit {
                        view: View(u64::MAX),
                        seq: SeqNum(u64::MAX),
                        digest: Digest([1; 32]),
                    },
                    votes: votes(n),
                },
            });
            // `blocks_to_serve` stops once it holds 16 MiB of payload: with
            // full batches that is five blocks.
            let per_block = batch.requests.len() * (payload + 128);
            let blocks = crate::replica::FETCH_MAX_BYTES.div_ceil(per_block) + 1;
            let messages = [
                WireMessage::Forward(signed(Forward {
                    requests: batch.requests.clone(),
                })),
                WireMessage::PrePrepare {
                    pre_prepare: signed(value),
                    batch: batch.clone(),
                    vouches: (0..limits.max_batch_requests)
                        .map(|_| Vouch {
                            voucher: NodeId(0),
                            count: 1,
                            signature,
                        })
                        .collect(),
                },
                WireMessage::ViewChange(signed(view_change.clone())),
                WireMessage::NewView(signed(NewView {
                    view: View(u64::MAX),
                    view_changes: (0..n).map(|_| signed(view_change.clone())).collect(),
                    pre_prepares: (0..limits.window).map(|_| signed(value)).collect(),
                })),
                WireMessage::Blocks(signed(Blocks {
                    blocks: (0..blocks).map(|_| block.clone()).collect(),
                    checkpoint,
                })),
            ];
            for message in messages {
                let kind = message.kind();
                let bytes = codec::encoded_len(&message).unwrap() as usize;
                let bound = limits.max_encoded_bytes(kind, n);
                println!("n = {n}: {kind:?} {bytes} bytes, bound {bound}");
                assert!(
                    bytes <= bound,
                    "n = {n}: {kind:?} of {bytes} bytes over {bound}"
                );
            }
            for kind in [
                MessageKind::Prepare,
                MessageKind::Commit,
                MessageKind::Status,
            ] {
                assert_eq!(limits.max_encoded_bytes(kind, n), 64 * 1024);
            }
            assert!(limits.max_encoded_bytes(MessageKind::Forward, n) < 5 * 1024 * 1024);
        }
    }
}
