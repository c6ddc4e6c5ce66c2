//! rumor's benchmarks. Each writes a Markdown report under `docs/benchmarks/`
//! that states the command that made it and compares with a baseline
//! measured in the same run (the machine is shared and noisy, so reports
//! quote medians and ratios). Nothing here is linked into the `rumor` binary.
//!
//! | command | report | module |
//! |---|---|---|
//! | `rumor-bench membership` | membership.md: SWIM + Lifeguard, without Lifeguard, and foca in the simulator | [`membership`] |
//! | `rumor-bench dataplane` | dataplane.md: gateway to worker and back against a bare tonic echo | [`dataplane`] |
//! | `rumor-bench edge` | edge.md: the client edge against the router path and a bare WebSocket echo; idle connections; watchers | [`edge`] |
//! | `rumor-bench bridge` | bridge.md: Kafka into PostgreSQL against COPY | [`bridge`] |
//! | `rumor-bench ai` | ai.md: real models: overhead against llama.cpp direct, cache affinity of routing rules, memory of many conversations | [`ai`] |
//! | `rumor-bench traces` | traces.md: a cluster exporting every message's spans over OTLP against the same cluster untraced | [`traces`] |
//! | `rumor-bench overload` | overload.md: 1,000 `rumor node` processes on a 2-core host converge and stay converged | [`overload`] |
//! | `cargo bench -p bench --bench routing` | routing.md: the ring against other consistent-hashing crates | `benches/routing.rs` |
//!
//! [`report`] holds what the reports share: the machine, percentiles, tables.

pub mod ai;
pub mod bridge;
pub mod dataplane;
pub mod edge;
pub mod foca;
pub mod membership;
pub mod overload;
pub mod records;
pub mod report;
pub mod traces;

use std::path::PathBuf;

use anyhow::{Context as _, bail};

pub use server::terminated;

/// The `rumor` binary that benchmarks start as separate processes: `RUMOR_BIN`
/// when set, otherwise `rumor` next to this executable (cargo puts both in
/// `target/<profile>/`; integration tests run from its `deps/`).
pub fn rumor_exe() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("RUMOR_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe().context("finding this executable")?;
    for dir in me.ancestors().skip(1).take(2) {
        let candidate = dir.join("rumor");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no rumor binary next to {}: build it with the same profile first (cargo build --release -p rumor), \
         or set RUMOR_BIN",
        me.display()
    )
}
