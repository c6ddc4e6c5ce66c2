//! `rumor-bench bridge --quick`: a smoke run of the bridge benchmark against
//! the broker and PostgreSQL that scripts/test provides, into a temporary
//! file. It checks that every step ran and stored the records once; it
//! asserts nothing about the figures (no test asserts on wall time).

use std::process::{Command, Stdio};

#[test]
fn quick_bridge_bench_runs_every_step_and_stores_every_record_once() {
    let out = std::env::temp_dir().join(format!("rumor-bridge-bench-{}.md", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let output = Command::new(env!("CARGO_BIN_EXE_rumor-bench"))
        .args(["bridge", "--quick", "--out"])
        .arg(&out)
        .env_remove("RUMOR_LOG")
        .stdin(Stdio::null())
        .output()
        .expect("running rumor-bench bridge");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "bench failed: {}\n{stderr}", output.status);
    let report = std::fs::read_to_string(&out).expect("the report was written");
    let _ = std::fs::remove_file(&out);
    for needle in [
        "# Bridge benchmark: Kafka into PostgreSQL",
        "`rumor-bench bridge --quick --out ",
        "| COPY (baseline) | ",
        "| Kafka read only, no database | ",
        "| bridge, batch 100 | ",
        "| bridge, batch 1000 | ",
        "| bridge, batch 5000 | ",
        "0 duplicates and 0 missing in every one",
        "| produce to committed row | ",
        "| zero duplicates and zero gaps | 3 of 3 steps clean | met |",
    ] {
        assert!(report.contains(needle), "no {needle:?} in the report:\n{report}");
    }
}
