//! `rumor-bench dataplane --quick`: a smoke run of the data-plane benchmark
//! into a temporary file. It checks that the report has its tables and that
//! every process the benchmark started is gone afterwards; it asserts nothing
//! about the figures (no test asserts on wall time).

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(90);

#[test]
fn quick_dataplane_bench_writes_every_table_and_leaves_no_process_behind() {
    let out = std::env::temp_dir().join(format!("rumor-dataplane-{}.md", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_rumor-bench"))
        .args(["dataplane", "--quick", "--out"])
        .arg(&out)
        .env_remove("RUMOR_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning rumor-bench dataplane");
    // Drain both pipes in threads so the child never blocks on them.
    let mut pipe_out = child.stdout.take().unwrap();
    let mut pipe_err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_out.read_to_string(&mut s);
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = pipe_err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("rumor-bench dataplane --quick did not finish within {LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    // Shown when an assertion below fails: the progress lines name each step's errors.
    eprintln!("{stderr}");
    assert!(
        status.success(),
        "bench failed: {status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let report = std::fs::read_to_string(&out).expect("the report was written");
    let _ = std::fs::remove_file(&out);
    for needle in [
        "# Data-plane benchmark",
        "`rumor-bench dataplane --quick --out ",
        "- Machine: ",
        "## Goals, checked against this run",
        "| mesh throughput / baseline, 1 conversation |",
        "| mesh throughput / baseline, 256 conversations |",
        "| mesh p99 at half the peak rate",
        "| idle CPU per node, 5-node cluster",
        "## Closed loop",
        "| conversations | baseline msg/s | mesh msg/s |",
        "## Open loop at half the peak mesh rate",
        "| mesh (gateway -> worker) |",
        "## Answering after the records are in the event log",
        "## Idle footprint, 5-node cluster",
        "| worker-3 | worker |",
        "| **median** |",
    ] {
        assert!(report.contains(needle), "no {needle:?} in the report:\n{report}");
    }
    // The closed-loop rows carry figures, and no message failed.
    for c in [1, 16, 256] {
        let row = report
            .lines()
            .find(|l| l.starts_with(&format!("| {c} | ")) && l.ends_with(" | 0 |"))
            .unwrap_or_else(|| panic!("no error-free closed-loop row for {c} conversations in:\n{report}"));
        let rate: f64 = row.split('|').nth(3).unwrap().trim().parse().unwrap();
        assert!(rate > 0.0, "{row}");
    }
    assert!(stdout.contains("## Closed loop"), "the report is printed too");

    // Every child (the peer and the five idle nodes) was stopped and reaped.
    let pids: Vec<u32> = stderr
        .lines()
        .filter_map(|l| l.split("(pid ").nth(1)?.strip_suffix(')')?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 6, "six children stopped:\n{stderr}");
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} is still there"
        );
    }
}
