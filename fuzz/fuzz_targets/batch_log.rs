//! Batch log records (`node/src/storage/log.rs`): the bytes a read from a
//! segment gets, checked (magic, the batch the index names, length, CRC)
//! and decoded. The first byte picks the sequence number and digest the
//! index would name and whether the rest is taken as a whole record (odd:
//! header included, as a damaged disk may give it) or as a body the target
//! wraps in an intact header (even: so that the batch decoder behind the
//! checksum is reached too).
#![no_main]

use bftd::storage::{check_log_record, log_record};
use bftd_crypto::Digest;
use bftd_protocol::{codec, Batch, SeqNum};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let seq = SeqNum(u64::from(mode >> 1));
    let digest = Digest([mode; 32]);
    if mode & 1 == 1 {
        let _ = check_log_record(rest, seq, &digest);
        return;
    }
    let record = log_record(seq, &digest, rest);
    let intact = check_log_record(&record, seq, &digest);
    // An intact record is refused only when its body is not a batch.
    assert_eq!(intact, codec::decode::<Batch>(rest).is_ok());
    // Any other batch, sequence number or length is refused.
    assert!(!check_log_record(&record, SeqNum(seq.0 + 1), &digest));
    if let Some((_, shorter)) = record.split_last() {
        assert!(!check_log_record(shorter, seq, &digest));
    }
});
