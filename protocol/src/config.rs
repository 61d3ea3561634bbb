//! Protocol parameters, validated in one place.

use crate::verify::RequestMode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A parameter is outside its allowed range.
    #[error("{parameter} must be {rule}; got {value}")]
    OutOfRange {
        /// The parameter's name as in the config file.
        parameter: &'static str,
        /// The rule it breaks.
        rule: &'static str,
        /// The value given.
        value: u64,
    },
}

/// The replica's parameters. Every bound on what a peer or client can make a
/// replica hold is here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// How requests are authenticated.
    pub request_mode: RequestMode,
    /// A checkpoint every this many sequence numbers (K in the paper).
    pub checkpoint_interval: u64,
    /// Watermark window `L`: sequence numbers in `(h, h + L]` are accepted,
    /// `h` being the stable checkpoint. A multiple of the interval, at least
    /// twice it, so ordering continues while a checkpoint stabilises.
    pub window: u64,
    /// Most sequence numbers the primary keeps in flight (proposed, not yet
    /// executed).
    pub pipeline: u64,
    /// Most requests in one batch.
    pub max_batch_requests: usize,
    /// Most payload bytes in one batch. 1 MiB: the batches a replica holds
    /// between stable checkpoints, and the bytes ahead of a request in the
    /// pipeline, scale with it (design notes §38); batches of small requests
    /// fill `max_batch_requests` first.
    pub max_batch_bytes: usize,
    /// Longest a request waits at the primary for its batch to fill.
    #[serde(rename = "batch_delay_ms", with = "millis")]
    pub batch_delay: Duration,
    /// Largest payload a request may carry.
    pub max_request_bytes: usize,
    /// Most requests a replica holds that are not yet executed (queued at the
    /// primary, or forwarded and watched by a backup). Beyond it new requests
    /// are refused with "busy".
    pub max_pending_requests: usize,
    /// Most payload bytes of such requests held: the same refusal beyond
    /// it, so large requests cannot pin `max_pending_requests ×
    /// max_request_bytes`. At least `max_batch_bytes`.
    pub max_pending_bytes: usize,
    /// A backup that waited this long for a request relays it to every
    /// replica; after as long again it suspects the primary, and 2f+1
    /// suspicions start a view change. Raised automatically to twice the
    /// longest recent wait of an executed request (load is not a fault).
    #[serde(rename = "request_timeout_ms", with = "millis")]
    pub request_timeout: Duration,
    /// The automatic raise stops here: the longest a primary that slows
    /// everyone down can hold a request before it is suspected is twice
    /// this.
    #[serde(rename = "request_timeout_max_ms", with = "millis")]
    pub request_timeout_max: Duration,
    /// How long to wait for a new view once 2f+1 view-changes are in;
    /// doubles with every view that fails in a row.
    #[serde(rename = "view_change_timeout_ms", with = "millis")]
    pub view_change_timeout: Duration,
    /// The doubling stops here.
    #[serde(rename = "view_change_timeout_max_ms", with = "millis")]
    pub view_change_timeout_max: Duration,
    /// Status reports go out this often; they drive catch-up and
    /// retransmission of view-changes and new-views.
    #[serde(rename = "status_interval_ms", with = "millis")]
    pub status_interval: Duration,
    /// A peer that reports itself in an older view is sent the new-view
    /// that started ours (2f+1 view-changes with their certificates: a
    /// large message, costly to check) at most once per this interval,
    /// however often it reports: a small signed status must not buy that
    /// every time. A peer that lost it gets it again within this interval
    /// plus one status interval.
    #[serde(rename = "new_view_resend_ms", with = "millis")]
    pub new_view_resend: Duration,
    /// Most blocks in one state-transfer response.
    pub fetch_max_blocks: u64,
    /// A state-transfer request unanswered for this long is sent to another
    /// peer.
    #[serde(rename = "fetch_timeout_ms", with = "millis")]
    pub fetch_timeout: Duration,
    /// Most normal-case messages for future views held per peer until the
    /// view starts.
    pub max_future_messages_per_peer: usize,
    /// Most bytes (encoded) of such messages held per peer; the oldest go
    /// first. The newest message is always kept, so the bound is this or
    /// one message, whichever is larger (a message is within the batch
    /// limits, checked before it is buffered). At least `max_batch_bytes`.
    pub max_future_bytes_per_peer: usize,
    /// How many heights above the one it executes at a request may be
    /// valid (`Request::valid_until`). Executed requests are remembered for
    /// this many heights, so deduplication holds at most
    /// `(request_lifetime + 1) × max_batch_requests` of them.
    pub request_lifetime: u64,
    /// A replica that finds the blocks it needs next pruned by f+1 peers
    /// (`[storage] retain_blocks`) jumps to their certified stable
    /// checkpoint, from the last `request_lifetime` blocks below it,
    /// instead of waiting for a peer that still holds them (design notes
    /// §47). Not a cluster setting: the daemon turns it off when an
    /// application is embedded, whose state is not in the blocks and would
    /// miss the skipped ones.
    pub jump_past_pruned: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            request_mode: RequestMode::ClientSigned,
            checkpoint_interval: 64,
            window: 256,
            pipeline: 16,
            max_batch_requests: 1000,
            max_batch_bytes: 1024 * 1024,
            batch_delay: Duration::from_millis(1),
            max_request_bytes: 64 * 1024,
            max_pending_requests: 200_000,
            max_pending_bytes: 128 * 1024 * 1024,
            request_timeout: Duration::from_millis(800),
            request_timeout_max: Duration::from_secs(8),
            view_change_timeout: Duration::from_millis(800),
            view_change_timeout_max: Duration::from_secs(30),
            status_interval: Duration::from_millis(250),
            new_view_resend: Duration::from_millis(1000),
            fetch_max_blocks: 64,
            fetch_timeout: Duration::from_millis(1000),
            max_future_messages_per_peer: 1024,
            max_future_bytes_per_peer: 32 * 1024 * 1024,
            request_lifetime: 1024,
            jump_past_pruned: true,
        }
    }
}

/// The parameters that decide what executes or what is valid: every replica
/// must use the same values, so they live in the cluster file (`[protocol]`),
/// not in each node's own file. Replicas exchange them in their status
/// messages and ignore a peer whose values differ.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsensusSettings {
    /// See [`Config::request_mode`].
    pub request_mode: RequestMode,
    /// See [`Config::request_lifetime`].
    pub request_lifetime: u64,
    /// See [`Config::checkpoint_interval`].
    pub checkpoint_interval: u64,
    /// See [`Config::window`].
    pub window: u64,
    /// See [`Config::max_batch_requests`].
    pub max_batch_requests: usize,
    /// See [`Config::max_batch_bytes`].
    pub max_batch_bytes: usize,
    /// See [`Config::max_request_bytes`].
    pub max_request_bytes: usize,
}

impl Default for ConsensusSettings {
    fn default() -> ConsensusSettings {
        Config::default().consensus()
    }
}

impl ConsensusSettings {
    /// The names of the settings in which `self` and `other` differ, with
    /// both values, for error messages.
    pub fn differences(&self, other: &ConsensusSettings) -> Vec<(&'static str, String, String)> {
        let mut differences = Vec::new();
        let mut compare = |name: &'static str, ours: String, theirs: String| {
            if ours != theirs {
                differences.push((name, ours, theirs));
            }
        };
        compare(
            "request_mode",
            format!("{:?}", self.request_mode),
            format!("{:?}", other.request_mode),
        );
        compare(
            "request_lifetime",
            self.request_lifetime.to_string(),
            other.request_lifetime.to_string(),
        );
        compare(
            "checkpoint_interval",
            self.checkpoint_interval.to_string(),
            other.checkpoint_interval.to_string(),
        );
        compare("window", self.window.to_string(), other.window.to_string());
        compare(
            "max_batch_requests",
            self.max_batch_requests.to_string(),
            other.max_batch_requests.to_string(),
        );
        compare(
            "max_batch_bytes",
            self.max_batch_bytes.to_string(),
            other.max_batch_bytes.to_string(),
        );
        compare(
            "max_request_bytes",
            self.max_request_bytes.to_string(),
            other.max_request_bytes.to_string(),
        );
        differences
    }

    /// `config` with these settings.
    pub fn apply(&self, config: Config) -> Config {
        Config {
            request_mode: self.request_mode,
            request_lifetime: self.request_lifetime,
            checkpoint_interval: self.checkpoint_interval,
            window: self.window,
            max_batch_requests: self.max_batch_requests,
            max_batch_bytes: self.max_batch_bytes,
            max_request_bytes: self.max_request_bytes,
            ..config
        }
    }

    /// The names of the settings, as in files.
    pub const NAMES: [&'static str; 7] = [
        "request_mode",
        "request_lifetime",
        "checkpoint_interval",
        "window",
        "max_batch_requests",
        "max_batch_bytes",
        "max_request_bytes",
    ];
}

impl Config {
    /// The settings that must be the same on every replica.
    pub fn consensus(&self) -> ConsensusSettings {
        ConsensusSettings {
            request_mode: self.request_mode,
            request_lifetime: self.request_lifetime,
            checkpoint_interval: self.checkpoint_interval,
            window: self.window,
            max_batch_requests: self.max_batch_requests,
            max_batch_bytes: self.max_batch_bytes,
            max_request_bytes: self.max_request_bytes,
        }
    }

    /// Checks every parameter; the error names the first bad one and its
    /// rule.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let range = |parameter, rule, value: u64, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::OutOfRange {
                    parameter,
                    rule,
                    value,
                })
            }
        };
        let k = self.checkpoint_interval;
        range(
            "checkpoint_interval",
            "between 1 and 1000000",
            k,
            (1..=1_000_000).contains(&k),
        )?;
        range(
            "window",
            "a multiple of checkpoint_interval, at least twice it",
            self.window,
            self.window >= 2 * k && self.window.is_multiple_of(k),
        )?;
        range(
            "pipeline",
            "between 1 and window",
            self.pipeline,
            (1..=self.window).contains(&self.pipeline),
        )?;
        let count = |n: usize| n as u64;
        range(
            "max_batch_requests",
            "between 1 and 100000",
            count(self.max_batch_requests),
            (1..=100_000).contains(&self.max_batch_requests),
        )?;
        range(
            "max_request_bytes",
            "between 1 and 16 MiB",
            count(self.max_request_bytes),
            (1..=16 << 20).contains(&self.max_request_bytes),
        )?;
        range(
            "max_batch_bytes",
            "at least max_request_bytes and at most 32 MiB",
            count(self.max_batch_bytes),
            self.max_batch_bytes >= self.max_request_bytes && self.max_batch_bytes <= 32 << 20,
        )?;
        range(
            "max_pending_bytes",
            "at least max_batch_bytes",
            count(self.max_pending_bytes),
            self.max_pending_bytes >= self.max_batch_bytes,
        )?;
        range(
            "max_future_bytes_per_peer",
            "at least max_batch_bytes",
            count(self.max_future_bytes_per_peer),
            self.max_future_bytes_per_peer >= self.max_batch_bytes,
        )?;
        range(
            "max_pending_requests",
            "at least max_batch_requests",
            count(self.max_pending_requests),
            self.max_pending_requests >= self.max_batch_requests,
        )?;
        let millis = |d: Duration| d.as_millis() as u64;
        for (parameter, value) in [
            ("request_timeout", self.request_timeout),
            ("view_change_timeout", self.view_change_timeout),
            ("status_interval", self.status_interval),
            ("fetch_timeout", self.fetch_timeout),
            ("new_view_resend", self.new_view_resend),
        ] {
            range(
                parameter,
                "at least 1 ms",
                millis(value),
                value >= Duration::from_millis(1),
            )?;
        }
        range(
            "request_timeout_max",
            "at least request_timeout",
            millis(self.request_timeout_max),
            self.request_timeout_max >= self.request_timeout,
        )?;
        range(
            "view_change_timeout_max",
            "at least view_change_timeout",
            millis(self.view_change_timeout_max),
            self.view_change_timeout_max >= self.view_change_timeout,
        )?;
        range(
            "new_view_resend_ms",
            "at most 60000 (a peer that lost the new-view waits up to this long for it again)",
            millis(self.new_view_resend),
            self.new_view_resend <= Duration::from_secs(60),
        )?;
        range(
            "fetch_max_blocks",
            "between 1 and 4096",
            self.fetch_max_blocks,
            (1..=4096).contains(&self.fetch_max_blocks),
        )?;
        range(
            "request_lifetime",
            "between 1 and 1000000",
            self.request_lifetime,
            (1..=1_000_000).contains(&self.request_lifetime),
        )?;
        Ok(())
    }
}

/// Durations as whole milliseconds in config files (the names end in `_ms`).
mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(value.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(deserializer)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The defaults are valid, and a bad window is refused by name.
    #[test]
    fn defaults_valid_and_errors_named() {
        Config::default().validate().unwrap();
        let config = Config {
            window: 100,
            ..Config::default()
        };
        match config.validate() {
            Err(ConfigError::OutOfRange { parameter, .. }) => assert_eq!(parameter, "window"),
            other => panic!("expected a window error, got {other:?}"),
        }
    }
}
