//! bftd-protocol (work in progress).
#![cfg_attr(
    not(test),
    deny(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::indexing_slicing,
        clippy::panic
    )
)]

mod ids;
pub use ids::{NodeId, SeqNum, View};
