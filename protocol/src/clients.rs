//! Which requests each client already had executed: "at most once".
//!
//! Every replica applies the same blocks in the same order to this table, so
//! every replica reaches the same verdict on every request. Memory is bounded
//! twice: per client, only the newest `client_window` ids are remembered (older
//! ids are refused as stale, so a client should use increasing ids), and only
//! `max_clients` clients are remembered (the least recently active goes first).

use crate::ids::SeqNum;
use crate::message::RequestKey;
use bftd_crypto::PublicKey;
use std::collections::{BTreeMap, BTreeSet};

/// What the table knows of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// Not executed: may be ordered.
    Fresh,
    /// Executed in the block at `height`.
    Executed {
        /// The block's height.
        height: SeqNum,
    },
    /// Older than the client's window: refused, it may have executed long ago.
    Stale,
}

#[derive(Clone, Debug, Default)]
struct ClientRecord {
    /// Ids at or below this are stale.
    forgotten_through: Option<u64>,
    /// Executed ids in the window, with their heights.
    executed: BTreeMap<u64, SeqNum>,
    last_active: SeqNum,
}

/// The deduplication table.
#[derive(Clone, Debug)]
pub struct ClientTable {
    clients: BTreeMap<PublicKey, ClientRecord>,
    by_activity: BTreeSet<(SeqNum, PublicKey)>,
    window: usize,
    max_clients: usize,
}

impl ClientTable {
    /// An empty table with the given bounds (both at least 1).
    pub fn new(window: usize, max_clients: usize) -> ClientTable {
        ClientTable {
            clients: BTreeMap::new(),
            by_activity: BTreeSet::new(),
            window: window.max(1),
            max_clients: max_clients.max(1),
        }
    }

    /// What is known of `key`.
    pub fn lookup(&self, key: &RequestKey) -> Lookup {
        let Some(record) = self.clients.get(&key.client) else {
            return Lookup::Fresh;
        };
        if let Some(&height) = record.executed.get(&key.request_id) {
            return Lookup::Executed { height };
        }
        if record
            .forgotten_through
            .is_some_and(|through| key.request_id <= through)
        {
            return Lookup::Stale;
        }
        Lookup::Fresh
    }

    /// Records that `key` executed at `height`. Heights must not decrease.
    pub fn record(&mut self, key: &RequestKey, height: SeqNum) {
        let record = self.clients.entry(key.client).or_default();
        self.by_activity.remove(&(record.last_active, key.client));
        record.last_active = height;
        self.by_activity.insert((height, key.client));
        record.executed.insert(key.request_id, height);
        while record.executed.len() > self.window {
            if let Some((id, _)) = record.executed.pop_first() {
                record.forgotten_through = Some(record.forgotten_through.map_or(id, |t| t.max(id)));
            }
        }
        while self.clients.len() > self.max_clients {
            let Some((_, oldest)) = self.by_activity.pop_first() else {
                break;
            };
            self.clients.remove(&oldest);
        }
    }

    /// The highest request id of `client` that is stale (forgotten), if
    /// any: every id up to it is refused.
    pub fn stale_through(&self, client: &PublicKey) -> Option<u64> {
        self.clients.get(client)?.forgotten_through
    }

    /// Number of clients remembered.
    pub fn len(&self) -> usize {
        self.clients.len()
    }

    /// Whether no client is remembered.
    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(client: u8, id: u64) -> RequestKey {
        RequestKey {
            client: PublicKey([client; 32]),
            request_id: id,
        }
    }

    /// A request executes once; ids that slid out of the window are stale;
    /// the least recently active client is forgotten first.
    #[test]
    fn dedup_window_and_client_bound() {
        let mut table = ClientTable::new(2, 2);
        assert_eq!(table.lookup(&key(1, 1)), Lookup::Fresh);
        table.record(&key(1, 1), SeqNum(1));
        assert_eq!(
            table.lookup(&key(1, 1)),
            Lookup::Executed { height: SeqNum(1) }
        );
        table.record(&key(1, 2), SeqNum(2));
        table.record(&key(1, 3), SeqNum(3));
        assert_eq!(table.lookup(&key(1, 1)), Lookup::Stale);
        assert_eq!(table.lookup(&key(1, 0)), Lookup::Stale);
        assert_eq!(table.lookup(&key(1, 4)), Lookup::Fresh);
        table.record(&key(2, 1), SeqNum(4));
        table.record(&key(3, 1), SeqNum(5));
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup(&key(1, 3)),
            Lookup::Fresh,
            "client 1 forgotten"
        );
        assert_eq!(
            table.lookup(&key(3, 1)),
            Lookup::Executed { height: SeqNum(5) }
        );
    }
}
