//! The listening side: handshakes, then routing by ALPN and key.

use super::limits::AddressSlot;
use super::{
    close_code, lock, peer, tls, ClientConnection, Shared, ALPN_CLIENT, ALPN_PEER,
    HANDSHAKE_TIMEOUT,
};
use bftd_crypto::PublicKey;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Accepts connection attempts, each handshake in its own task, at most
/// `max_handshakes` at once.
///
/// Under handshake pressure (see `limits`), an attempt from an address not
/// yet validated is answered with a QUIC Retry instead of a slot. Attempts
/// from a committee member's IP address then draw from a small reserved
/// pool, so strangers holding every general slot with handshakes they never
/// finish cannot lock the peers out; when the reserved pool is empty (on
/// loopback every client shares the peers' IP) they use the general one,
/// where a validated address may hold `max_handshakes_per_address`. The
/// key, not the address, is what authenticates; the address only picks the
/// pool and the per-address count.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let limits = &shared.limits;
        let in_progress = limits
            .max_handshakes
            .saturating_sub(shared.handshake_slots.available_permits());
        if !incoming.remote_address_validated()
            && in_progress >= limits.handshakes_before_retry
            && incoming.may_retry()
        {
            match incoming.retry() {
                Ok(()) => shared.counters.handshakes_retried.increment(),
                Err(error) => {
                    shared.counters.handshake_busy.increment();
                    error.into_incoming().refuse();
                }
            }
            continue;
        }
        let ip = incoming.remote_address().ip();
        let from_peer_ip = shared.peer_ips.contains(&ip);
        let reserved = from_peer_ip
            .then(|| shared.peer_handshake_slots.clone().try_acquire_owned().ok())
            .flatten();
        let slot = match reserved {
            Some(slot) => HandshakeSlot {
                _slot: slot,
                _address: None,
            },
            None => {
                // Only a validated address is counted: a forged one would
                // let a forger use up the address it forges.
                let address = if incoming.remote_address_validated() {
                    match shared.handshakes_per_address.try_take(ip) {
                        Some(address) => Some(address),
                        None => {
                            shared.counters.handshakes_refused_per_address.increment();
                            incoming.refuse();
                            continue;
                        }
                    }
                } else {
                    None
                };
                match shared.handshake_slots.clone().try_acquire_owned() {
                    Ok(slot) => HandshakeSlot {
                        _slot: slot,
                        _address: address,
                    },
                    Err(_) => {
                        shared.counters.handshake_busy.increment();
                        incoming.refuse();
                        continue;
                    }
                }
            }
        };
        shared.spawn(handle_incoming(shared.clone(), incoming, slot));
    }
}

/// What one handshake in progress holds, released when it ends.
struct HandshakeSlot {
    _slot: OwnedSemaphorePermit,
    _address: Option<AddressSlot>,
}

/// Completes one incoming handshake and routes the connection by ALPN.
async fn handle_incoming(shared: Arc<Shared>, incoming: quinn::Incoming, slot: HandshakeSlot) {
    let address = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(error) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, %error, "incoming connection failed");
            return;
        }
    };
    // Dropping `connecting` on timeout abandons the connection.
    let connection = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, %error, "incoming handshake failed");
            return;
        }
        Err(_) => {
            shared.counters.handshake_failed.increment();
            tracing::debug!(%address, "incoming handshake timed out");
            return;
        }
    };
    drop(slot);
    let (Some(key), Some(alpn)) = (
        tls::connection_key(&connection),
        tls::connection_alpn(&connection),
    ) else {
        // Our verifier and ALPN list guarantee both; be safe anyway.
        refuse(&shared, &connection, "no identity or ALPN");
        return;
    };
    if alpn == ALPN_PEER {
        match shared.committee.get(&key) {
            // The lower id dials (see `peer`): only lower ids may connect to us.
            Some(&id) if id < shared.me => {
                if let Some(link) = shared.links.get(&id) {
                    peer::run_connection(shared.clone(), link.clone(), connection).await;
                }
            }
            Some(&id) => {
                tracing::warn!(peer = %id, "peer dialed us, but the lower id dials: refused");
                refuse(&shared, &connection, "the lower id dials");
            }
            None => {
                // Debug, not warn: strangers can repeat this at will.
                tracing::debug!(%address, key = %key.short(), "non-committee key on the peer ALPN: refused");
                refuse(&shared, &connection, "not a committee key");
            }
        }
    } else if alpn == ALPN_CLIENT {
        accept_client(&shared, connection, key);
    } else {
        refuse(&shared, &connection, "unknown ALPN");
    }
}

fn refuse(shared: &Shared, connection: &quinn::Connection, reason: &'static str) {
    shared.counters.handshake_rejected.increment();
    connection.close(close_code::UNAUTHORIZED, reason.as_bytes());
}

/// Hands a client connection to the consumer, or refuses it when the client
/// limit (overall or for its address) is reached or the consumer is not
/// keeping up.
fn accept_client(shared: &Shared, connection: quinn::Connection, key: PublicKey) {
    let Some(address) = shared
        .clients_per_address
        .try_take(connection.remote_address().ip())
    else {
        shared.counters.clients_refused_per_address.increment();
        connection.close(
            close_code::BUSY,
            b"too many connections from your address (max_clients_per_address)",
        );
        return;
    };
    let Ok(slot) = shared.client_slots.clone().try_acquire_owned() else {
        shared.counters.clients_refused.increment();
        connection.close(close_code::BUSY, b"too many clients");
        return;
    };
    let client = ClientConnection::new(
        key,
        connection.clone(),
        shared.max_frame_bytes,
        shared.max_client_frame_bytes,
        shared.counters.clone(),
        ClientSlot {
            _slot: slot,
            _address: address,
        },
    );
    let sent = lock(&shared.clients)
        .as_ref()
        .map(|clients| clients.try_send(client).is_ok());
    if sent == Some(true) {
        shared.counters.client_connections.increment();
    } else {
        shared.counters.clients_refused.increment();
        connection.close(close_code::BUSY, b"node busy");
    }
}

/// What one client connection holds, released when the connection and
/// both its stream halves are dropped.
#[derive(Debug)]
pub(crate) struct ClientSlot {
    _slot: OwnedSemaphorePermit,
    _address: AddressSlot,
}
