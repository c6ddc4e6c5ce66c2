//! `rumor-bench edge --quick`: a smoke run of the client-edge benchmark into
//! a temporary file. It checks that every section of the report is there and
//! that no step failed; it asserts nothing about the figures.

use std::process::{Command, Stdio};

#[test]
fn quick_edge_bench_writes_every_section_with_no_failed_message() {
    let out = std::env::temp_dir().join(format!("rumor-edge-{}.md", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let run = Command::new(env!("CARGO_BIN_EXE_rumor-bench"))
        .args(["edge", "--quick", "--out"])
        .arg(&out)
        .env_remove("RUMOR_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running rumor-bench edge");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "bench failed: {}\n{stderr}", run.status);
    let report = std::fs::read_to_string(&out).expect("the report was written");
    let _ = std::fs::remove_file(&out);
    for needle in [
        "# The client edge",
        "`rumor-bench edge --quick --out ",
        "## Throughput (closed loop; median of rounds)",
        "| 256 | edge (WebSocket, JSON) |",
        "| 256 | bare axum WebSocket echo |",
        "## Latency at half of the edge's peak",
        "## Idle connections",
        "300 of 300 held",
        "## One conversation, many watchers",
        "Chunks missing at some watcher: 0.",
        "## Goals",
    ] {
        assert!(report.contains(needle), "no {needle:?} in the report:\n{report}");
    }
    // No message failed on any path.
    assert!(!report.contains("{\""), "errors in the report:\n{report}");
}
