//! The listening side: handshakes, then routing by ALPN and key.

use super::{
    close_code, lock, peer, tls, ClientConnection, Shared, ALPN_CLIENT, ALPN_PEER,
    HANDSHAKE_TIMEOUT,
};
use bftd_crypto::PublicKey;
use std::sync::Arc;
use tokio::sync::OwnedSemaphorePermit;

/// Accepts connection attempts, each handshake in its own task, at most
/// `MAX_CONCURRENT_HANDSHAKES` at once.
///
/// Attempts from a committee member's IP address first draw from a small
/// reserved pool, so strangers holding every general slot with handshakes
/// they never finish cannot lock the peers out; when the reserved pool is
/// empty (on loopback every client shares the peers' IP) they use the
/// general one. The key, not the address, is what authenticates; the
/// address only picks the pool.
pub(crate) async fn accept_loop(shared: Arc<Shared>, endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let from_peer_ip = shared.peer_ips.contains(&incoming.remote_address().ip());
        let reserved = from_peer_ip
            .then(|| shared.peer_handshake_slots.clone().try_acquire_owned().ok())
            .flatten();
        match reserved.map_or_else(|| shared.handshake_slots.clone().try_acquire_owned(), Ok) {
            Ok(slot) => shared.spawn(handle_incoming(shared.clone(), incoming, slot)),
            Err(_) => {
                shared.counters.handshake_busy.increment();
                incoming.refuse();
            }
        }
    }
}

/// Completes one incoming handshake and routes the connection by ALPN.
async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    slot: OwnedSemaphorePermit,
) {
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
/// limit is reached or the consumer is not keeping up.
fn accept_client(shared: &Shared, connection: quinn::Connection, key: PublicKey) {
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
        slot,
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
