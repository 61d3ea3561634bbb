//! Certificates, on their own (they also arrive inside view-changes,
//! new-views, blocks and receipts): the first byte picks the kind, the rest
//! is decoded, checked and verified against a fixed committee.
#![no_main]

use bftd_fuzz::{committee, decode_canonical, verify_for_real};
use bftd_protocol::{CheckpointCertificate, CommitCertificate, PreparedCertificate};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, rest)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Some(certificate) = decode_canonical::<CommitCertificate>(rest) {
                let _ = certificate.check(committee());
                let value = certificate.value;
                if verify_for_real(data) {
                    let _ = certificate.verify_for(committee(), value.seq, value.digest);
                }
            }
        }
        1 => {
            if let Some(certificate) = decode_canonical::<CheckpointCertificate>(rest) {
                let _ = (certificate.seq(), certificate.check(committee()));
                if verify_for_real(data) {
                    let _ = certificate.verify(committee());
                }
            }
        }
        _ => {
            if let Some(certificate) = decode_canonical::<PreparedCertificate>(rest) {
                let _ = (certificate.view(), certificate.seq(), certificate.digest());
                let _ = certificate.check(committee());
                if verify_for_real(data) {
                    let _ = certificate.verify(committee());
                }
            }
        }
    }
});
