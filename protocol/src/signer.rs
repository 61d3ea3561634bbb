//! The one signer: owns the replica's key and its safety state, and refuses
//! to sign two conflicting votes — even after a restart, because its state is
//! persisted before anything it signed is sent.
//!
//! Modelled on aptos' safety-rules. The rules are PBFT's:
//! - in a view, at most one digest per sequence number is pre-prepared or
//!   prepared (so two conflicting batches can never both gather a quorum);
//! - a commit is signed only for the digest this replica accepted;
//! - once a replica has asked to leave view `v` (a view-change for `v' > v`),
//!   it signs nothing more for views below `v'`.

use crate::codec::CodecError;
use crate::ids::{NodeId, SeqNum, View};
use crate::message::{
    BatchResponse, Blocks, Checkpoint, Commit, FetchBatch, FetchBlocks, Forward, NewView,
    PrePrepare, Prepare, Signable, Signed, Status, Suspect, ViewChange,
};
use bftd_crypto::{Digest, KeyPair, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What the signer must remember across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SafetyState {
    /// The highest view entered or asked for.
    pub view: View,
    /// True after a view-change for `view` was signed and before its
    /// new-view was accepted.
    pub in_view_change: bool,
    /// Per sequence number in the window: the view and digest this replica
    /// last pre-prepared or prepared.
    pub accepted: BTreeMap<SeqNum, (View, Digest)>,
}

/// Why the signer refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SafetyError {
    /// A normal-case vote for a view other than the current one, or while
    /// leaving it.
    #[error("not signing for {requested}: current view {current}, view change: {in_view_change}")]
    WrongView {
        /// The view asked for.
        requested: View,
        /// The signer's view.
        current: View,
        /// Whether the signer is between views.
        in_view_change: bool,
    },
    /// A second digest for a sequence number already accepted in this view.
    #[error("{seq} already accepted {accepted:#} in {view}; refusing {requested:#}")]
    Conflict {
        /// The sequence number.
        seq: SeqNum,
        /// The view.
        view: View,
        /// What was accepted.
        accepted: Digest,
        /// What was asked for.
        requested: Digest,
    },
    /// A commit for a digest this replica never accepted.
    #[error("commit for {seq} without having accepted it")]
    NotAccepted {
        /// The sequence number.
        seq: SeqNum,
    },
    /// Going back to an older view.
    #[error("refusing to move back from {current} to {requested}")]
    ViewRegression {
        /// The view asked for.
        requested: View,
        /// The signer's view.
        current: View,
    },
    /// The value is too large to encode.
    #[error("value too large to sign")]
    Oversized,
}

impl From<CodecError> for SafetyError {
    fn from(_: CodecError) -> SafetyError {
        SafetyError::Oversized
    }
}

/// Values with no safety rule attached: signing them never conflicts.
pub trait FreelySignable: Signable {}
impl FreelySignable for Checkpoint {}
impl FreelySignable for Status {}
impl FreelySignable for Forward {}
impl FreelySignable for FetchBlocks {}
impl FreelySignable for Blocks {}
impl FreelySignable for FetchBatch {}
impl FreelySignable for BatchResponse {}
impl FreelySignable for Suspect {}

/// Owns the key and the safety state.
#[derive(Debug)]
pub struct Signer {
    id: NodeId,
    key: KeyPair,
    state: SafetyState,
    dirty: bool,
}

impl Signer {
    /// A signer with recovered (or default, for a new replica) state.
    pub fn new(id: NodeId, key: KeyPair, state: SafetyState) -> Signer {
        Signer {
            id,
            key,
            state,
            dirty: false,
        }
    }

    /// The state, for inspection.
    pub fn state(&self) -> &SafetyState {
        &self.state
    }

    /// The replica's public key.
    pub fn public(&self) -> PublicKey {
        self.key.public()
    }

    /// The state to persist if it changed since the last call. The replica
    /// puts it first in the actions it returns, so it is durable before
    /// anything signed under it is sent.
    pub fn take_changes(&mut self) -> Option<SafetyState> {
        if std::mem::take(&mut self.dirty) {
            Some(self.state.clone())
        } else {
            None
        }
    }

    fn check_normal_case(&self, view: View) -> Result<(), SafetyError> {
        if view != self.state.view || self.state.in_view_change {
            return Err(SafetyError::WrongView {
                requested: view,
                current: self.state.view,
                in_view_change: self.state.in_view_change,
            });
        }
        Ok(())
    }

    fn accept(&mut self, view: View, seq: SeqNum, digest: Digest) -> Result<(), SafetyError> {
        self.check_normal_case(view)?;
        match self.state.accepted.get(&seq) {
            Some(&(accepted_view, accepted)) if accepted_view == view => {
                if accepted != digest {
                    return Err(SafetyError::Conflict {
                        seq,
                        view,
                        accepted,
                        requested: digest,
                    });
                }
            }
            _ => {
                self.state.accepted.insert(seq, (view, digest));
                self.dirty = true;
            }
        }
        Ok(())
    }

    /// Signs a pre-prepare (primary only).
    pub fn sign_pre_prepare(
        &mut self,
        value: PrePrepare,
    ) -> Result<Signed<PrePrepare>, SafetyError> {
        self.accept(value.view, value.seq, value.digest)?;
        Ok(Signed::sign(self.id, value, &self.key)?)
    }

    /// Signs a prepare for an accepted pre-prepare.
    pub fn sign_prepare(&mut self, value: Prepare) -> Result<Signed<Prepare>, SafetyError> {
        self.accept(value.view, value.seq, value.digest)?;
        Ok(Signed::sign(self.id, value, &self.key)?)
    }

    /// Signs a commit; only for the digest accepted at that view and
    /// sequence.
    pub fn sign_commit(&mut self, value: Commit) -> Result<Signed<Commit>, SafetyError> {
        self.check_normal_case(value.view)?;
        match self.state.accepted.get(&value.seq) {
            Some(&(view, digest)) if view == value.view && digest == value.digest => {
                Ok(Signed::sign(self.id, value, &self.key)?)
            }
            _ => Err(SafetyError::NotAccepted { seq: value.seq }),
        }
    }

    /// Signs a view-change, after which nothing is signed for lower views.
    pub fn sign_view_change(
        &mut self,
        value: ViewChange,
    ) -> Result<Signed<ViewChange>, SafetyError> {
        let requested = value.new_view;
        let allowed = requested > self.state.view
            || (requested == self.state.view && self.state.in_view_change);
        if !allowed {
            return Err(SafetyError::ViewRegression {
                requested,
                current: self.state.view,
            });
        }
        if self.state.view != requested || !self.state.in_view_change {
            self.state.view = requested;
            self.state.in_view_change = true;
            self.dirty = true;
        }
        Ok(Signed::sign(self.id, value, &self.key)?)
    }

    /// Enters `view` (a new-view was accepted, or is being sent).
    pub fn enter_view(&mut self, view: View) -> Result<(), SafetyError> {
        if view < self.state.view {
            return Err(SafetyError::ViewRegression {
                requested: view,
                current: self.state.view,
            });
        }
        if view != self.state.view || self.state.in_view_change {
            self.state.view = view;
            self.state.in_view_change = false;
            self.dirty = true;
        }
        Ok(())
    }

    /// Signs a new-view (the new primary, after entering the view).
    pub fn sign_new_view(&mut self, value: NewView) -> Result<Signed<NewView>, SafetyError> {
        self.check_normal_case(value.view)?;
        Ok(Signed::sign(self.id, value, &self.key)?)
    }

    /// Signs a message that carries no vote.
    pub fn sign<T: FreelySignable>(&self, value: T) -> Result<Signed<T>, SafetyError> {
        Ok(Signed::sign(self.id, value, &self.key)?)
    }

    /// Forgets accepted digests at or below a stable checkpoint.
    pub fn forget_through(&mut self, seq: SeqNum) {
        let before = self.state.accepted.len();
        self.state.accepted.retain(|&s, _| s > seq);
        if self.state.accepted.len() != before {
            self.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        Signer::new(
            NodeId(1),
            KeyPair::from_seed([1; 32]),
            SafetyState::default(),
        )
    }

    fn digest(byte: u8) -> Digest {
        Digest([byte; 32])
    }

    fn prepare(view: u64, seq: u64, d: u8) -> Prepare {
        Prepare {
            view: View(view),
            seq: SeqNum(seq),
            digest: digest(d),
        }
    }

    fn view_change(view: u64) -> ViewChange {
        ViewChange {
            new_view: View(view),
            checkpoint: crate::certificate::CheckpointCertificate::genesis(),
            prepared: Vec::new(),
        }
    }

    /// Two different digests for one (view, sequence) are never both signed,
    /// also not after a restart from the persisted state.
    #[test]
    fn no_conflicting_prepares_even_after_restart() {
        let mut s = signer();
        s.sign_prepare(prepare(0, 5, 1)).unwrap();
        assert!(matches!(
            s.sign_prepare(prepare(0, 5, 2)),
            Err(SafetyError::Conflict { .. })
        ));
        let persisted = s.take_changes().unwrap();
        let mut restarted = Signer::new(NodeId(1), KeyPair::from_seed([1; 32]), persisted);
        assert!(matches!(
            restarted.sign_prepare(prepare(0, 5, 2)),
            Err(SafetyError::Conflict { .. })
        ));
        // The same digest again is fine (retransmission).
        restarted.sign_prepare(prepare(0, 5, 1)).unwrap();
    }

    /// Commits only for what was accepted; nothing for old views after a
    /// view-change; no going back.
    #[test]
    fn commits_and_view_changes() {
        let mut s = signer();
        let commit = |d| Commit {
            view: View(0),
            seq: SeqNum(3),
            digest: digest(d),
        };
        assert!(s.sign_commit(commit(1)).is_err());
        s.sign_prepare(prepare(0, 3, 1)).unwrap();
        s.sign_commit(commit(1)).unwrap();
        assert!(s.sign_commit(commit(2)).is_err());
        s.sign_view_change(view_change(1)).unwrap();
        assert!(s.sign_prepare(prepare(0, 4, 1)).is_err());
        assert!(
            s.sign_prepare(prepare(1, 4, 1)).is_err(),
            "still changing views"
        );
        assert!(s.sign_view_change(view_change(0)).is_err());
        s.enter_view(View(1)).unwrap();
        s.sign_prepare(prepare(1, 3, 2)).unwrap();
        assert!(s.enter_view(View(0)).is_err());
        assert!(s.take_changes().is_some());
        assert!(s.take_changes().is_none());
    }
}
