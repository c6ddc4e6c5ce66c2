//! A deterministic simulator for rumor's gossip membership.
//!
//! One thread, a virtual clock and a seeded random source drive N protocol
//! state machines over a simulated network with latency, jitter, loss,
//! partitions, crashes, restarts and slow nodes. The same seed and the same
//! operations replay the same run, event for event.

//!
//! Other protocols plug in through the [`Protocol`] trait: the benchmarks
//! (crates/bench) drive the `foca` crate through it for comparison.

mod cluster;
mod protocol;

pub use cluster::{Cluster, Cpu, NetConfig, Observations, Order, Watch, sim_addr};
pub use protocol::{NodeSpec, Protocol, Rumor, SimEvent, Transmit};
pub mod scenario;
