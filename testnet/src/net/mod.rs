//! Real local testnets: `bftd` processes on loopback behind a fault proxy,
//! and benchmarks of fresh clusters without it.
//!
//! - [`layout`]: the testnet directory, generated keys and configs, and
//!   `testnet.json` (ports, PIDs, behaviours) that every subcommand reads;
//! - [`binaries`]: finding `bftd` (building it when run by cargo);
//! - [`launch`]: starting and stopping processes by PID,
//!   health over HTTP;
//! - [`proxy`]: the UDP fault proxy (partitions, delay, loss) that needs no
//!   root;
//! - [`relay`]: `bftnet relay`, the proxy in front of any cluster (a
//!   userspace delay relay, e.g. between containers);
//! - [`load`]: the load generator (open or closed loop);
//! - [`bench`]: `bftnet bench`, throughput, latency, CPU and memory of a
//!   fresh cluster whose nodes talk directly;
//! - [`attack`]: `bftnet attack`, issue 10's attacks against a fresh
//!   cluster under honest load, and whether honest clients kept their rate,
//!   latency and the nodes their memory bounds;
//! - [`check`]: the safety check of honest logs;
//! - [`live`]: `status` and the live status line;
//! - [`events`]: the testnet's event log, `events.jsonl`;
//! - [`dashboard`]: the live browser dashboard of `bftnet up`;
//! - [`init`]: `bftnet init`, a cluster for real hosts (and compose);
//! - [`scenario`]: `bftnet scenario`, timelines of faults with
//!   expectations, from files, against a fresh testnet;
//! - [`commands`]: the subcommands themselves.

pub mod attack;
pub mod bench;
pub mod binaries;
pub mod check;
pub mod cli;
pub mod commands;
pub mod dashboard;
mod error;
pub mod events;
pub mod init;
pub mod launch;
pub mod layout;
pub mod live;
pub mod load;
pub mod proxy;
pub mod relay;
pub mod scenario;

pub use error::NetError;
