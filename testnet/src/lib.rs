//! bftnet: local bftd testnets, byzantine behaviours, fault injection,
//! benchmarks, and a deterministic simulator.
pub mod net;
pub mod sim;
