//! Identifiers with explicit widths: replicas, views, sequence numbers.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A replica's index in the committee, `0..n`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct NodeId(pub u16);

/// A view number. The primary of view `v` is replica `v mod n`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct View(pub u64);

/// A sequence number, which is also the height of the block it produces.
/// Sequence 0 is the genesis: nothing is ever ordered at 0.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct SeqNum(pub u64);

impl NodeId {
    /// The index as `usize`, for indexing per-replica tables.
    pub fn index(self) -> usize {
        usize::from(self.0)
    }
}

impl View {
    /// The next view, saturating: a peer cannot make us overflow.
    pub fn next(self) -> View {
        View(self.0.saturating_add(1))
    }
}

impl SeqNum {
    /// The next sequence number, saturating.
    pub fn next(self) -> SeqNum {
        SeqNum(self.0.saturating_add(1))
    }

    /// `self + delta`, saturating.
    pub fn plus(self, delta: u64) -> SeqNum {
        SeqNum(self.0.saturating_add(delta))
    }
}

macro_rules! display_as {
    ($type:ty, $prefix:literal) => {
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
        impl fmt::Debug for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}{}", $prefix, self.0)
            }
        }
    };
}
display_as!(NodeId, "n");
display_as!(View, "v");
display_as!(SeqNum, "s");
