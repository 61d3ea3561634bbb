//! The step record: what a replay needs to redo one step (design notes
//! §51).
//!
//! Each step appends one to the log, after the records of the batches it
//! writes, and syncs the log: that sync is what makes the step durable.
//! The redb transaction with the same writes is then committed without an
//! fsync (`Durability::None`), and every 200 ms one with
//! (`Durability::Immediate`), which makes every commit before it durable
//! too. Every commit records where the log stood after its step
//! (`meta/log`, a [`super::log::Position`]), so after a crash redb holds
//! the steps up to its last durable commit and the open redoes the step
//! records after the position that commit recorded.
//!
//! A step record is the step's records and deliveries with each batch
//! replaced by where it is: already stored before the step ([`Stored::Before`]),
//! in this record ([`Stored::Here`], a batch small enough for redb), or in
//! the batch log ([`Stored::Log`], the record this step appended before the
//! step record). A batch is never written twice, and the replay is the
//! same code as the step (`write.rs`), on the same redb state as the step
//! saw, so it makes the same writes.
//!
//! [`EntryRef`] borrows what the step already holds, for writing;
//! [`Entry`] owns it, for reading. bincode encodes a reference as the
//! value and a slice as a vector, so the two have one encoding
//! (`passes_the_shared_suite_through_crashes` writes every kind through
//! one and reads it back through the other).

use super::log::LocationBytes;
use bftd_crypto::Digest;
use bftd_protocol::message::{NewView, Suspect};
use bftd_protocol::signer::SafetyState;
use bftd_protocol::{
    Batch, CheckpointCertificate, CommitCertificate, PreparedCertificate, SeqNum, Signed,
};
use serde::{Deserialize, Serialize};

/// Where a step found or put a batch, for writing.
#[derive(Debug, Serialize)]
pub(super) enum StoredRef<'a> {
    /// Stored before this step (at the pre-prepare that accepted it).
    Before,
    /// Written by this step to redb (one chunk or less): here in full.
    Here(&'a Batch),
    /// Written by this step to the batch log, at this location.
    Log(LocationBytes),
}

/// Where a step found or put a batch, as read back.
#[derive(Debug, Deserialize)]
pub(super) enum Stored {
    Before,
    Here(Batch),
    Log(LocationBytes),
}

/// One record or delivery of a step, for writing.
#[derive(Debug, Serialize)]
pub(super) enum EntryRef<'a> {
    Safety(&'a SafetyState),
    Batch {
        seq: SeqNum,
        digest: Digest,
        stored: StoredRef<'a>,
    },
    Prepared(&'a PreparedCertificate),
    StableCheckpoint(&'a CheckpointCertificate),
    NewView(&'a Signed<NewView>),
    Suspicion(&'a [Signed<Suspect>]),
    Deliver {
        height: SeqNum,
        prev_hash: Digest,
        batch_digest: Digest,
        certificate: &'a CommitCertificate,
        duplicates: &'a [u32],
        stored: StoredRef<'a>,
    },
}

/// One record or delivery of a step, as read back: [`EntryRef`]'s
/// variants in [`EntryRef`]'s order.
#[derive(Debug, Deserialize)]
pub(super) enum Entry {
    Safety(SafetyState),
    Batch {
        seq: SeqNum,
        digest: Digest,
        stored: Stored,
    },
    Prepared(PreparedCertificate),
    StableCheckpoint(CheckpointCertificate),
    NewView(Signed<NewView>),
    Suspicion(Vec<Signed<Suspect>>),
    Deliver {
        height: SeqNum,
        prev_hash: Digest,
        batch_digest: Digest,
        certificate: CommitCertificate,
        duplicates: Vec<u32>,
        stored: Stored,
    },
}
