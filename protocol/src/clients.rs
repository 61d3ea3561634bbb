//! Which requests already executed: "at most once", with bounded memory.
//!
//! Every request names the last height at which it may execute
//! (`Request::valid_until`), at most `request_lifetime` heights above the
//! height it executes at. Every replica applies the same blocks in the same
//! order to this table, so every replica reaches the same verdict on every
//! request:
//!
//! - a request whose `valid_until` is below the height has expired: it never
//!   executes there, or at any later height;
//! - one whose `valid_until` is more than `request_lifetime` above the
//!   height is refused (it would have to be remembered too long);
//! - one executed before, and still remembered, is a duplicate.
//!
//! A request executed at height `e` has `valid_until <= e + lifetime`, so
//! from height `e + lifetime + 1` on it has expired and the expiry rule alone
//! refuses any replay of it: the table forgets it then. It therefore holds
//! only the requests executed in the last `lifetime + 1` heights, at most
//! `(lifetime + 1) × max_batch_requests` of them, whatever clients do (no
//! per-client state: a million throwaway keys cost the same as one client).

use crate::ids::SeqNum;
use crate::message::{Request, RequestKey};
use std::collections::{HashMap, VecDeque};

/// What the table says of a request at a height.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// May execute.
    Fresh,
    /// Executed in the block at `height`.
    Executed {
        /// The block's height.
        height: SeqNum,
    },
    /// `valid_until` is below the height: it can never execute any more.
    Expired,
    /// `valid_until` is more than the lifetime above the height.
    TooFarAhead,
}

/// The deduplication table.
#[derive(Clone, Debug)]
pub struct ExecutedRequests {
    /// Executed requests still valid somewhere, with their heights.
    executed: HashMap<RequestKey, SeqNum>,
    /// The same, in execution order, to forget them when they expire.
    by_height: VecDeque<(SeqNum, RequestKey)>,
    lifetime: u64,
}

impl ExecutedRequests {
    /// An empty table for requests valid at most `lifetime` heights ahead.
    pub fn new(lifetime: u64) -> ExecutedRequests {
        ExecutedRequests {
            executed: HashMap::new(),
            by_height: VecDeque::new(),
            lifetime,
        }
    }

    /// The most heights a request may be valid for, beyond the one it
    /// executes at.
    pub fn lifetime(&self) -> u64 {
        self.lifetime
    }

    /// The verdict on `request` at `height`.
    pub fn lookup(&self, request: &Request, height: SeqNum) -> Lookup {
        let key = RequestKey {
            client: request.client,
            request_id: request.request_id,
        };
        self.lookup_key(&key, request.valid_until, height)
    }

    /// [`Self::lookup`] of the request `key` valid until `valid_until`.
    pub fn lookup_key(&self, key: &RequestKey, valid_until: SeqNum, height: SeqNum) -> Lookup {
        if let Some(&executed) = self.executed.get(key) {
            return Lookup::Executed { height: executed };
        }
        if valid_until < height {
            Lookup::Expired
        } else if valid_until.0 - height.0 > self.lifetime {
            Lookup::TooFarAhead
        } else {
            Lookup::Fresh
        }
    }

    /// `key` executed at `height` (heights never decrease).
    pub fn record(&mut self, key: RequestKey, height: SeqNum) {
        self.executed.insert(key, height);
        self.by_height.push_back((height, key));
    }

    /// Forgets what executed more than `lifetime` heights below `height`:
    /// all of it has expired there.
    pub fn forget_expired(&mut self, height: SeqNum) {
        while let Some(&(executed, key)) = self.by_height.front() {
            if executed.0.saturating_add(self.lifetime) >= height.0 {
                break;
            }
            self.by_height.pop_front();
            self.executed.remove(&key);
        }
    }

    /// Every request remembered, with the height it executed at.
    #[cfg(test)]
    pub(crate) fn entries(&self) -> &HashMap<RequestKey, SeqNum> {
        &self.executed
    }

    /// A digest of every request remembered with its height, in (height,
    /// client, id) order: two tables with the same entries have the same
    /// fingerprint, however they were built (execution, a restart's
    /// rebuild, a jump's).
    pub fn fingerprint(&self) -> bftd_crypto::Digest {
        const TABLE: bftd_crypto::Domain = bftd_crypto::Domain::new("bftd/v1/executed-table");
        let mut entries: Vec<(SeqNum, &RequestKey)> = self
            .executed
            .iter()
            .map(|(key, &height)| (height, key))
            .collect();
        entries.sort_by_key(|&(height, key)| (height, key.client.0, key.request_id));
        let mut digest = bftd_crypto::DigestBuilder::new(TABLE);
        for (height, key) in entries {
            digest
                .update(&height.0.to_le_bytes())
                .update(&key.client.0)
                .update(&key.request_id.to_le_bytes());
        }
        digest.finish()
    }

    /// Requests remembered.
    pub fn len(&self) -> usize {
        self.executed.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.executed.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bftd_crypto::PublicKey;

    fn request(client: u8, id: u64, valid_until: u64) -> Request {
        Request {
            client: PublicKey([client; 32]),
            request_id: id,
            valid_until: SeqNum(valid_until),
            payload: Vec::new(),
        }
    }

    fn key(request: &Request) -> RequestKey {
        RequestKey {
            client: request.client,
            request_id: request.request_id,
        }
    }

    /// A request is fresh inside its validity, a duplicate while remembered,
    /// expired after; too long a validity is refused; and the table forgets
    /// exactly what has expired.
    #[test]
    fn expiry_and_duplicates() {
        let mut table = ExecutedRequests::new(10);
        let paid = request(1, 7, 15);
        assert_eq!(table.lookup(&paid, SeqNum(5)), Lookup::Fresh);
        assert_eq!(table.lookup(&paid, SeqNum(4)), Lookup::TooFarAhead);
        assert_eq!(table.lookup(&paid, SeqNum(16)), Lookup::Expired);
        table.record(key(&paid), SeqNum(5));
        assert_eq!(
            table.lookup(&paid, SeqNum(9)),
            Lookup::Executed { height: SeqNum(5) }
        );
        table.forget_expired(SeqNum(15));
        assert_eq!(table.len(), 1, "valid through 15: still remembered");
        table.forget_expired(SeqNum(16));
        assert!(table.is_empty());
        assert_eq!(table.lookup(&paid, SeqNum(16)), Lookup::Expired);
    }

    /// Whatever clients do, the table holds only what executed in the last
    /// lifetime + 1 heights: a flood of throwaway clients evicts nobody and
    /// is forgotten as it expires.
    #[test]
    fn memory_is_bounded_by_lifetime() {
        let mut table = ExecutedRequests::new(4);
        for height in 1..=100u64 {
            for client in 0..50u8 {
                let r = request(client, height, height + 4);
                assert_eq!(table.lookup(&r, SeqNum(height)), Lookup::Fresh);
                table.record(key(&r), SeqNum(height));
            }
            table.forget_expired(SeqNum(height + 1));
            assert!(table.len() <= 5 * 50, "{} at {height}", table.len());
        }
    }
}
