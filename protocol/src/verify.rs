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
use crate::ids::NodeId;
use crate::message::{Request, Signable, Signed, SignedRequest, ViewChange, WireMessage};
use bftd_crypto::{SignatureCheck, ValidatedKey};
use serde::{Deserialize, Serialize};
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
    /// to, and requests carry no signature. Several times the throughput, at
    /// the cost of trusting that node for the origin of the requests it
    /// submits (a byzantine node could invent requests in a client's name; it
    /// still cannot break agreement).
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
                self.checks.push(check);
            }
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
            WireMessage::PrePrepare { pre_prepare, batch } => {
                self.add_signed(pre_prepare);
                self.add_requests(&batch.requests);
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
        match self.error {
            Some(error) => Err(error),
            None => Ok(self.checks),
        }
    }
}

/// Verifies every signature in `message`.
pub fn verify_message(
    message: WireMessage,
    committee: &Committee,
    mode: RequestMode,
    verifier: &mut impl SignatureVerifier,
) -> Result<Verified<WireMessage>, VerifyError> {
    let mut collector = SignatureCollector::new(committee, mode);
    collector.add_message(&message);
    let checks = collector.finish()?;
    verifier
        .verify(&checks)
        .map_err(|_| VerifyError::InvalidSignature)?;
    Ok(Verified(message))
}

/// Verifies several messages with one batch: when all are valid (the usual
/// case) this costs one batch verification; otherwise each message is
/// verified on its own to find the bad ones.
pub fn verify_messages(
    messages: Vec<WireMessage>,
    committee: &Committee,
    mode: RequestMode,
    verifier: &mut impl SignatureVerifier,
) -> Vec<Result<Verified<WireMessage>, VerifyError>> {
    let mut all = Vec::new();
    let mut collected = Vec::with_capacity(messages.len());
    for message in &messages {
        let mut collector = SignatureCollector::new(committee, mode);
        collector.add_message(message);
        let checks = collector.finish();
        if let Ok(checks) = &checks {
            all.extend(checks.iter().cloned());
        }
        collected.push(checks.map(|_| ()));
    }
    let all_valid = collected.iter().all(Result::is_ok) && verifier.verify(&all).is_ok();
    messages
        .into_iter()
        .zip(collected)
        .map(|(message, collected)| {
            collected?;
            if all_valid {
                Ok(Verified(message))
            } else {
                verify_message(message, committee, mode, verifier)
            }
        })
        .collect()
}

/// Verifies a client's request (its signature, in client-signed mode).
pub fn verify_request(
    request: SignedRequest,
    committee: &Committee,
    mode: RequestMode,
    verifier: &mut impl SignatureVerifier,
) -> Result<Verified<SignedRequest>, VerifyError> {
    let mut collector = SignatureCollector::new(committee, mode);
    collector.add_requests(std::iter::once(&request));
    let checks = collector.finish()?;
    verifier
        .verify(&checks)
        .map_err(|_| VerifyError::InvalidSignature)?;
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
