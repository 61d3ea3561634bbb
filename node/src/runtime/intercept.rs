//! The one seam through which a node can be made to lie: a layer between
//! the replica and the network. It exists for the testnets' byzantine
//! nodes, which are a separate binary (`bftd-byzantine`, in the `bftnet`
//! crate, like CometBFT's "maverick" node). The operator's `bftd` never
//! installs one, and nothing in this crate builds one: no setting and no
//! cargo feature can make `bftd` lie (docs/design-notes.md, "The lying node
//! is its own binary").

use bftd_protocol::replica::ClientReply;
use bftd_protocol::{Destination, Outgoing, SignedRequest, Verified, WireMessage};
use std::time::Duration;

/// A message ready for the wire, possibly delayed or mangled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Emission {
    /// How long to hold it before sending.
    pub delay: Duration,
    /// Where to.
    pub to: Destination,
    /// The encoded message.
    pub bytes: Vec<u8>,
}

/// Changes what a node receives and sends (see the module doc).
pub trait Intercept: Send + 'static {
    /// A peer's verified message, before the replica sees it: passed on,
    /// changed (keeping only verified content) or dropped.
    fn admit(
        &mut self,
        now: Duration,
        message: Verified<WireMessage>,
    ) -> Option<Verified<WireMessage>>;

    /// Whether a request from a client connected here reaches the replica.
    fn admit_request(&mut self, now: Duration, request: &SignedRequest) -> bool;

    /// What the replica sends, encoded for the wire.
    fn tamper(&mut self, sends: Vec<Outgoing>) -> Vec<Emission>;

    /// What the replica answers its clients.
    fn tamper_replies(&mut self, replies: Vec<ClientReply>) -> Vec<ClientReply>;
}
