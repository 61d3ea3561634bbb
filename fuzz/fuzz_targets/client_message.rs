//! Client frames, client to node: a `ClientMessage` decoded as the node's
//! client task does, and a submitted request verified in both modes.
#![no_main]

use bftd::client_api::ClientMessage;
use bftd_fuzz::{committee, decode_canonical};
use bftd_protocol::{verify_request, BatchVerifier, NodeId, RequestMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(message) = decode_canonical::<ClientMessage>(data) else {
        return;
    };
    if let ClientMessage::Submit(request) = message {
        let _ = request.key();
        let _ = request.payload_len();
        // One signature at most: cheap enough to verify every time.
        for mode in [
            RequestMode::ClientSigned,
            RequestMode::ConnectionAuthenticated,
        ] {
            let _ = verify_request(
                request.clone(),
                NodeId(0),
                committee(),
                mode,
                &mut BatchVerifier,
            );
        }
    }
});
