//! Store records: every value `node/src/storage` decodes from disk (the
//! first byte picks the table and key, or the log's step records), decoded
//! with the same codec.
#![no_main]

use bftd::storage::{decode_step_record, StoreIdentity};
use bftd_fuzz::decode_canonical;
use bftd_protocol::codec;
use bftd_protocol::message::{NewView, Suspect};
use bftd_protocol::signer::SafetyState;
use bftd_protocol::{Batch, CheckpointCertificate, CommittedBlock, PreparedCertificate, Signed};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 11 {
        // meta/format
        0 => drop(decode_canonical::<u32>(rest)),
        // meta/identity
        1 => drop(decode_canonical::<StoreIdentity>(rest)),
        // state/safety: its `accepted` map decodes from keys in any order
        // (and a repeated key keeps the last value), so it is not canonical;
        // it is only ever read back from this node's own store, never signed
        // or sent.
        2 => {
            if let Ok(state) = codec::decode::<SafetyState>(rest) {
                let again: SafetyState = codec::decode(&codec::encode(&state).unwrap()).unwrap();
                assert_eq!(again, state);
            }
        }
        // state/stable_checkpoint
        3 => drop(decode_canonical::<CheckpointCertificate>(rest)),
        // state/new_view
        4 => drop(decode_canonical::<Signed<NewView>>(rest)),
        // state/suspicion
        5 => drop(decode_canonical::<Vec<Signed<Suspect>>>(rest)),
        // prepared/*
        6 => drop(decode_canonical::<PreparedCertificate>(rest)),
        // batches/*
        7 => drop(decode_canonical::<Batch>(rest)),
        // blocks/* (a block's chunks, joined)
        8 => {
            if let Some(block) = decode_canonical::<CommittedBlock>(rest) {
                let _ = (block.height(), block.hash());
            }
        }
        // duplicates/*
        9 => drop(decode_canonical::<Vec<u32>>(rest)),
        // a step record's body in the log (the replay after a crash)
        _ => drop(decode_step_record(rest)),
    }
});
