//! Peer frames: every `WireMessage` a peer can send, decoded as the ingress
//! task does, then through signature collection and verification against a
//! fixed committee in both request modes. Must never panic.
#![no_main]

use bftd_fuzz::{committee, decode_canonical, verify_for_real, AcceptingVerifier};
use bftd_protocol::verify::SignatureCollector;
use bftd_protocol::{verify_message, verify_messages, BatchVerifier, RequestMode, WireMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode_canonical::<WireMessage>(data) else {
        return;
    };
    let _ = (message.kind(), message.signer());
    // Connection-authenticated mode: the same collection without client
    // signatures.
    let mut collector = SignatureCollector::new(committee(), RequestMode::ConnectionAuthenticated);
    collector.add_message(&message);
    let _ = collector.finish();
    let mode = RequestMode::ClientSigned;
    if verify_for_real(data) {
        // As the ingress task does: a batch, one message at a time on failure.
        let _ = verify_messages(vec![message], committee(), mode, &mut BatchVerifier);
    } else {
        let _ = verify_message(
            message,
            committee(),
            mode,
            &mut AcceptingVerifier::default(),
        );
    }
});
