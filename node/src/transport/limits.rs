//! Connection slots: how many handshakes and client connections the node
//! holds, how many of them one source address may hold, and when a
//! connection attempt must first prove its address (QUIC Retry).
//!
//! A handshake costs the node a slot, a TLS state and up to
//! `HANDSHAKE_TIMEOUT` of waiting, and the first packet that starts one can
//! come from a forged address: a flood of forged Initial packets needs no
//! answers, so it can hold every slot at no cost to the sender. Below
//! `handshakes_before_retry` handshakes in progress an attempt is served at
//! once (no extra round trip for anyone in normal operation); beyond, an
//! attempt whose address is not yet validated is answered with a Retry
//! packet carrying a token, and only a sender that receives it at its
//! address can come back. Forged floods therefore hold at most
//! `handshakes_before_retry` slots, and per-address caps apply only to
//! validated addresses (counting forged ones per address would let a
//! forger lock out the address it forges).

use super::ConfigError;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Default limit on handshakes in progress at once.
pub const DEFAULT_MAX_HANDSHAKES: usize = 64;
/// Default number of handshakes in progress before unvalidated attempts
/// are answered with Retry: half the slots, so a forged flood leaves the
/// other half to senders that can answer.
pub const DEFAULT_HANDSHAKES_BEFORE_RETRY: usize = DEFAULT_MAX_HANDSHAKES / 2;
/// Default limit on validated handshakes in progress from one IP address.
pub const DEFAULT_MAX_HANDSHAKES_PER_ADDRESS: usize = 16;
/// Default limit on concurrently open client connections. Each may make
/// us buffer up to 2.5 MB (QUIC flow control), so 1024 caps that at 2.5 GB.
pub const DEFAULT_MAX_CLIENT_CONNECTIONS: usize = 1024;
/// Default limit on client connections from one IP address: a quarter of
/// the slots, so one host cannot take them all, and enough for a local
/// `bftnet bench` (all its clients share 127.0.0.1; 256 per node allows
/// `--clients 1024` on four nodes).
pub const DEFAULT_MAX_CLIENTS_PER_ADDRESS: usize = 256;
/// Default time a client connection may send nothing before it is closed.
pub const DEFAULT_CLIENT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The node file's `[connections]` limits, as the transport uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Incoming handshakes in progress at once; beyond, attempts are
    /// refused (`handshake_busy`).
    pub max_handshakes: usize,
    /// Handshakes in progress before attempts from addresses not yet
    /// validated are answered with a QUIC Retry (`handshakes_retried`).
    /// 0: always; `max_handshakes`: never.
    pub handshakes_before_retry: usize,
    /// Validated handshakes in progress from one IP address
    /// (`handshakes_refused_per_address`).
    pub max_handshakes_per_address: usize,
    /// Client connections open at once; more are refused
    /// (`clients_refused`).
    pub max_client_connections: usize,
    /// Client connections open at once from one IP address
    /// (`clients_refused_per_address`).
    pub max_clients_per_address: usize,
    /// A client connection that sends nothing (no request, subscription or
    /// status query) for this long, and has no subscription delivering
    /// blocks, is closed (`clients_closed_idle`). Enforced by the node's
    /// client service, which knows what a client sent.
    pub client_idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> ConnectionLimits {
        ConnectionLimits {
            max_handshakes: DEFAULT_MAX_HANDSHAKES,
            handshakes_before_retry: DEFAULT_HANDSHAKES_BEFORE_RETRY,
            max_handshakes_per_address: DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
            max_client_connections: DEFAULT_MAX_CLIENT_CONNECTIONS,
            max_clients_per_address: DEFAULT_MAX_CLIENTS_PER_ADDRESS,
            client_idle_timeout: DEFAULT_CLIENT_IDLE_TIMEOUT,
        }
    }
}

impl ConnectionLimits {
    /// Checks the limits against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let nonzero = [
            ("max_handshakes", self.max_handshakes),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address,
            ),
            ("max_client_connections", self.max_client_connections),
            ("max_clients_per_address", self.max_clients_per_address),
        ];
        if let Some((field, _)) = nonzero.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError::Zero { field });
        }
        if self.client_idle_timeout.is_zero() {
            return Err(ConfigError::Zero {
                field: "client_idle_timeout",
            });
        }
        let within = [
            (
                "handshakes_before_retry",
                self.handshakes_before_retry,
                "max_handshakes",
                self.max_handshakes,
            ),
            (
                "max_handshakes_per_address",
                self.max_handshakes_per_address,
                "max_handshakes",
                self.max_handshakes,
            ),
            (
                "max_clients_per_address",
                self.max_clients_per_address,
                "max_client_connections",
                self.max_client_connections,
            ),
        ];
        for (field, value, bound_field, bound) in within {
            if value > bound {
                return Err(ConfigError::AboveBound {
                    field,
                    value,
                    bound_field,
                    bound,
                });
            }
        }
        Ok(())
    }
}

/// Counts what each IP address holds, up to a cap per address.
#[derive(Debug)]
pub(crate) struct PerAddress {
    cap: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

/// One unit an address holds; released on drop.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    owner: Arc<PerAddress>,
    ip: IpAddr,
}

impl PerAddress {
    pub(crate) fn new(cap: usize) -> Arc<PerAddress> {
        Arc::new(PerAddress {
            cap,
            held: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `ip`, unless it already holds `cap`.
    pub(crate) fn try_take(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut held = super::lock(&self.held);
        let count = held.entry(ip).or_insert(0);
        if *count >= self.cap {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = super::lock(&self.owner.held);
        if let Some(count) = held.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            // Forget addresses that hold nothing, so the map is bounded by
            // what is held, not by every address ever seen.
            if *count == 0 {
                held.remove(&self.ip);
            }
        }
    }
}
