//! View change and new view, as in the paper: a replica that suspects the
//! primary sends a view-change with its stable checkpoint and prepared
//! certificates; the new primary gathers 2f+1, recomputes `O` (re-proposing
//! the highest-view prepared digest for every sequence, a null batch for
//! gaps) and sends a new-view; every replica recomputes `O` from `V` and
//! refuses a new-view that differs.

use super::normal_case::null_digest;
use super::{DropReason, Phase, Replica};
use crate::certificate::CheckpointCertificate;
use crate::committee::Committee;
use crate::ids::{SeqNum, View};
use crate::message::{NewView, PrePrepare, Signed, ViewChange, WireMessage};
use bftd_crypto::Digest;
use std::collections::BTreeSet;
use std::time::Duration;

/// View-changes kept per replica: its few highest views. Several, not one: a
/// replica that timed out and moved on to `v+2` may still be the last vote a
/// slower new primary of `v+1` needs, and its `v+1` view-change stays valid.
const VIEW_CHANGES_PER_PEER: usize = 4;

impl Replica {
    /// Leaves the current view for `target` (if not already moving there or
    /// beyond).
    pub(super) fn start_view_change(&mut self, target: View) {
        // `view` is the current view or the one being moved to: only ever
        // move forward.
        if target <= self.view {
            return;
        }
        self.view = target;
        self.phase = Phase::ViewChange { quorum_at: None };
        self.metrics.view_changes_started += 1;
        self.queue.clear();
        self.suspects.clear();
        self.send_view_change();
    }

    /// Signs and broadcasts a view-change for `self.view`.
    pub(super) fn send_view_change(&mut self) {
        let low = self.low_watermark();
        let prepared = self
            .slots
            .range(low.next()..)
            .filter_map(|(_, slot)| slot.prepared.clone())
            .collect();
        let value = ViewChange {
            new_view: self.view,
            checkpoint: self.stable_checkpoint.clone(),
            prepared,
        };
        match self.signer.sign_view_change(value) {
            Ok(signed) => {
                self.store_view_change(signed.clone());
                self.broadcast(WireMessage::ViewChange(signed));
                self.check_view_change_quorum();
            }
            Err(_) => self.drop_input(DropReason::SafetyRefused),
        }
    }

    /// Re-sends our view-changes while the view change lasts (peers may have
    /// missed them): the current one and the few before it that a slower new
    /// primary may still be collecting.
    pub(super) fn retransmit_view_change(&mut self) {
        if self.phase == Phase::Normal {
            return;
        }
        let own: Vec<Signed<ViewChange>> = self
            .view_changes
            .values()
            .filter_map(|by_signer| by_signer.get(&self.id).cloned())
            .collect();
        for view_change in own {
            self.broadcast(WireMessage::ViewChange(view_change));
        }
    }

    /// Keeps a view-change, at most [`VIEW_CHANGES_PER_PEER`] views per
    /// signer. Returns false if it was already known or too old to keep.
    fn store_view_change(&mut self, view_change: Signed<ViewChange>) -> bool {
        let signer = view_change.signer;
        let view = view_change.value.new_view;
        if self
            .view_changes
            .get(&view)
            .is_some_and(|by_signer| by_signer.contains_key(&signer))
        {
            return false;
        }
        let held: Vec<View> = self
            .view_changes
            .iter()
            .filter(|(_, by_signer)| by_signer.contains_key(&signer))
            .map(|(&v, _)| v)
            .collect();
        if held.len() >= VIEW_CHANGES_PER_PEER {
            match held.first() {
                Some(&lowest) if lowest < view => {
                    if let Some(by_signer) = self.view_changes.get_mut(&lowest) {
                        by_signer.remove(&signer);
                    }
                    self.view_changes
                        .retain(|_, by_signer| !by_signer.is_empty());
                }
                _ => return false,
            }
        }
        self.view_changes
            .entry(view)
            .or_default()
            .insert(signer, view_change);
        true
    }

    pub(super) fn on_view_change(&mut self, view_change: Signed<ViewChange>) {
        let new_view = view_change.value.new_view;
        if new_view < self.view || (new_view == self.view && self.phase == Phase::Normal) {
            // A replica behind us; it learns the view from our status.
            self.drop_input(DropReason::StaleView);
            return;
        }
        if !valid_view_change(&self.committee, self.config.window, &view_change.value) {
            self.drop_input(DropReason::InvalidViewChange);
            return;
        }
        if !self.store_view_change(view_change) {
            return;
        }
        self.join_higher_view();
        self.check_suspects();
        self.check_view_change_quorum();
    }

    /// f+1 replicas want a view above ours: at least one is honest, so join
    /// the smallest of those views rather than wait for our own timer.
    fn join_higher_view(&mut self) {
        let current = self.view;
        // Each other replica's highest view above ours.
        let mut highest: std::collections::BTreeMap<crate::NodeId, View> = Default::default();
        for (&view, by_signer) in self.view_changes.range(current.next()..) {
            for &signer in by_signer.keys() {
                if signer != self.id {
                    highest.insert(signer, view);
                }
            }
        }
        let higher: Vec<View> = highest.into_values().collect();
        if higher.len() >= self.committee.weak_quorum() {
            if let Some(&smallest) = higher.iter().min() {
                self.start_view_change(smallest);
            }
        }
    }

    fn view_changes_for(&self, view: View) -> Vec<Signed<ViewChange>> {
        self.view_changes
            .get(&view)
            .map(|by_signer| by_signer.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Once 2f+1 replicas are changing to our target view or beyond, start
    /// the new-view timer (so a lone replica never races ahead, yet a quorum
    /// split over neighbouring views still moves on together); the new
    /// primary sends the new-view when 2f+1 are for exactly our target.
    fn check_view_change_quorum(&mut self) {
        let Phase::ViewChange { quorum_at } = self.phase else {
            return;
        };
        if quorum_at.is_none() {
            let changing: BTreeSet<crate::NodeId> = self
                .view_changes
                .range(self.view..)
                .flat_map(|(_, by_signer)| by_signer.keys().copied())
                .collect();
            if changing.len() >= self.committee.quorum() {
                self.phase = Phase::ViewChange {
                    quorum_at: Some(self.now),
                };
            }
        }
        let mut view_changes = self.view_changes_for(self.view);
        if view_changes.len() < self.committee.quorum()
            || self.committee.primary(self.view) != self.id
        {
            return;
        }
        // Our own first, then the others by id: any 2f+1 will do.
        view_changes.sort_by_key(|vc| (vc.signer != self.id, vc.signer));
        view_changes.truncate(self.committee.quorum());
        self.send_new_view(view_changes);
    }

    fn send_new_view(&mut self, view_changes: Vec<Signed<ViewChange>>) {
        let view = self.view;
        let (checkpoint, reproposals) =
            compute_reproposals(&view_changes, self.broken_new_view_rule);
        if self.signer.enter_view(view).is_err() {
            self.drop_input(DropReason::SafetyRefused);
            return;
        }
        let mut pre_prepares = Vec::with_capacity(reproposals.len());
        for (seq, digest) in reproposals {
            match self
                .signer
                .sign_pre_prepare(PrePrepare { view, seq, digest })
            {
                Ok(signed) => pre_prepares.push(signed),
                Err(_) => {
                    self.drop_input(DropReason::SafetyRefused);
                    return;
                }
            }
        }
        let value = NewView {
            view,
            view_changes,
            pre_prepares: pre_prepares.clone(),
        };
        match self.signer.sign_new_view(value) {
            Ok(signed) => {
                self.broadcast(WireMessage::NewView(signed.clone()));
                self.install_new_view(signed, checkpoint, pre_prepares);
            }
            Err(_) => self.drop_input(DropReason::SafetyRefused),
        }
    }

    pub(super) fn on_new_view(&mut self, new_view: Signed<NewView>) {
        let view = new_view.value.view;
        if view < self.view || (view == self.view && self.phase == Phase::Normal) {
            return;
        }
        if new_view.signer != self.committee.primary(view) {
            self.drop_input(DropReason::WrongSender);
            return;
        }
        let Some((checkpoint, reproposals)) = check_new_view(
            &self.committee,
            self.config.window,
            &new_view.value,
            self.broken_new_view_rule,
        ) else {
            self.drop_input(DropReason::InvalidNewView);
            return;
        };
        let matches = reproposals.len() == new_view.value.pre_prepares.len()
            && reproposals
                .iter()
                .zip(&new_view.value.pre_prepares)
                .all(|(&(seq, digest), pp)| {
                    pp.signer == new_view.signer && pp.value == PrePrepare { view, seq, digest }
                });
        if !matches {
            self.drop_input(DropReason::InvalidNewView);
            return;
        }
        if self.signer.enter_view(view).is_err() {
            self.drop_input(DropReason::SafetyRefused);
            return;
        }
        let pre_prepares = new_view.value.pre_prepares.clone();
        self.view = view;
        self.install_new_view(new_view, checkpoint, pre_prepares);
    }

    /// Enters the view: adopt the highest checkpoint in `V`, reset per-view
    /// slot state, install `O`, replay buffered messages, resubmit pending
    /// requests.
    fn install_new_view(
        &mut self,
        new_view: Signed<NewView>,
        checkpoint: CheckpointCertificate,
        pre_prepares: Vec<Signed<PrePrepare>>,
    ) {
        let view = self.view;
        self.phase = Phase::Normal;
        self.metrics.views_installed += 1;
        self.view_changes.retain(|&v, _| v > view);
        self.persist(crate::storage::Record::NewView(new_view.clone()));
        self.new_view = Some(new_view);
        self.suspects.clear();
        self.suspicion.clear();
        self.last_execution = self.now;
        if checkpoint.seq() > self.low_watermark() {
            self.advance_stable(checkpoint);
        }
        for slot in self.slots.values_mut() {
            slot.pre_prepare = None;
            slot.pre_prepare_at = None;
            slot.prepares.clear();
            slot.commits.clear();
            slot.commit_sent = false;
            slot.vouches.clear();
            slot.proposed_bytes = 0;
        }
        for pending in self.pending.values_mut() {
            pending.proposed = false;
        }
        let null = null_digest();
        let mut highest = self.low_watermark().max(self.last_executed);
        for pre_prepare in pre_prepares {
            let seq = pre_prepare.value.seq;
            highest = highest.max(seq);
            if !self.in_window(seq) {
                continue;
            }
            let digest = pre_prepare.value.digest;
            let batch = if digest == null {
                Some(std::sync::Arc::new(crate::message::Batch::default()))
            } else {
                self.batch_with_digest(digest)
            };
            self.install_pre_prepare(pre_prepare, batch, None);
        }
        self.next_seq = highest.next();
        self.view_fresh_from = self.next_seq;
        self.replay_future();
        self.resubmit_pending();
        self.execute_ready();
    }

    /// When the new-view timer fires: the view-change timeout (or the
    /// load-adapted request timeout, if longer: a loaded cluster needs
    /// longer to complete a view change too), doubled for every view that
    /// failed in a row.
    pub(super) fn new_view_deadline(&self) -> Option<Duration> {
        let Phase::ViewChange {
            quorum_at: Some(since),
        } = self.phase
        else {
            return None;
        };
        let factor = 1u32
            .checked_shl(self.failed_views.min(16))
            .unwrap_or(u32::MAX);
        let timeout = self
            .config
            .view_change_timeout
            .max(self.request_timeout())
            .saturating_mul(factor)
            .min(self.config.view_change_timeout_max);
        Some(since + timeout)
    }

    pub(super) fn check_new_view_timer(&mut self) {
        if let Some(deadline) = self.new_view_deadline() {
            if self.now >= deadline {
                self.failed_views = self.failed_views.saturating_add(1);
                let next = self.view.next();
                self.start_view_change(next);
            }
        }
    }

    /// The current-view new-view, for a replica that missed it.
    pub(super) fn new_view_message(&self) -> Option<&Signed<NewView>> {
        self.new_view
            .as_ref()
            .filter(|nv| nv.value.view == self.view && self.phase == Phase::Normal)
    }
}

/// A view-change holds: valid checkpoint certificate; prepared certificates
/// valid, for views below the new one, strictly increasing sequences inside
/// the checkpoint's window.
pub(crate) fn valid_view_change(
    committee: &Committee,
    window: u64,
    view_change: &ViewChange,
) -> bool {
    if view_change.checkpoint.check(committee).is_err() {
        return false;
    }
    let low = view_change.checkpoint.seq();
    let high = low.plus(window);
    let mut previous = low;
    for prepared in &view_change.prepared {
        let seq = prepared.seq();
        if seq <= previous
            || seq > high
            || prepared.view() >= view_change.new_view
            || prepared.check(committee).is_err()
        {
            return false;
        }
        previous = seq;
    }
    true
}

/// Checks `V` and recomputes `O` from it: `None` if `V` does not hold.
fn check_new_view(
    committee: &Committee,
    window: u64,
    new_view: &NewView,
    broken: bool,
) -> Option<(CheckpointCertificate, Vec<(SeqNum, Digest)>)> {
    if !valid_new_view(committee, window, new_view) {
        return None;
    }
    Some(compute_reproposals(&new_view.view_changes, broken))
}

/// `V` holds: 2f+1 or more view-changes for the new view from distinct
/// committee members, each valid; and `O` is no longer than the window.
/// Signatures aside, this is everything [`check_new_view`] checks, and
/// cheap: the shell runs it before verifying a single signature.
pub(crate) fn valid_new_view(committee: &Committee, window: u64, new_view: &NewView) -> bool {
    if new_view.view_changes.len() > committee.n() || new_view.pre_prepares.len() as u64 > window {
        return false;
    }
    let mut signers = BTreeSet::new();
    for view_change in &new_view.view_changes {
        if view_change.value.new_view != new_view.view
            || !committee.contains(view_change.signer)
            || !signers.insert(view_change.signer)
            || !valid_view_change(committee, window, &view_change.value)
        {
            return false;
        }
    }
    signers.len() >= committee.quorum()
}

/// `O`: the highest checkpoint in `V`, and for every sequence above it up to
/// the highest prepared one, the digest prepared in the highest view (ties
/// broken by digest, for determinism; honest quorums never tie), or the null
/// batch. `broken` turns the highest-view rule into a lowest-view one
/// ([`super::Replica::break_new_view_rule_for_testing`]).
pub(crate) fn compute_reproposals(
    view_changes: &[Signed<ViewChange>],
    broken: bool,
) -> (CheckpointCertificate, Vec<(SeqNum, Digest)>) {
    let checkpoint = view_changes
        .iter()
        .map(|vc| &vc.value.checkpoint)
        .max_by_key(|cp| cp.seq())
        .cloned()
        .unwrap_or_else(CheckpointCertificate::genesis);
    let low = checkpoint.seq();
    let prepared: Vec<_> = view_changes
        .iter()
        .flat_map(|vc| vc.value.prepared.iter())
        .filter(|p| p.seq() > low)
        .collect();
    let high = prepared.iter().map(|p| p.seq()).max().unwrap_or(low);
    let null = null_digest();
    let mut reproposals = Vec::new();
    let mut seq = low.next();
    while seq <= high {
        let digest = prepared
            .iter()
            // The rule that makes a view change safe: a digest that may
            // have committed was prepared, and in the highest view of any.
            .filter(|p| p.seq() == seq && !broken)
            .max_by_key(|p| (p.view(), p.digest()))
            .map_or(null, |p| p.digest());
        reproposals.push((seq, digest));
        seq = seq.next();
    }
    (checkpoint, reproposals)
}
