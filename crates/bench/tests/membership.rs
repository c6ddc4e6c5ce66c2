//! The membership benchmark: the quick report has every section and goal,
//! and the N-node speed run starts, converges and reads its memory. Nothing
//! here asserts on wall time.

use std::time::Duration;

#[test]
fn the_speed_run_starts_converges_and_reports_its_memory() {
    let sp = bench::membership::measure_speed(100, 1, 4, Duration::from_secs(120));
    assert!(sp.converged && sp.total.is_some(), "{sp:?}");
    assert_eq!(sp.pace, 10);
    if cfg!(target_os = "linux") {
        assert!(sp.peak_rss > 0, "{sp:?}");
    }
}

#[test]
fn the_quick_membership_report_has_every_section_and_goal() {
    let report = bench::membership::report(&bench::membership::Options::quick(1), "test", |_| {});
    for section in [
        "## Failure detection",
        "## False positives under loss",
        "## False positives with slow nodes",
        "## Dissemination",
        "## Steady-state traffic",
        "## Partition healing",
        "## Goals",
    ] {
        assert!(report.contains(section), "{section} missing from:\n{report}");
    }
    assert!(report.contains("- Better than foca, N = 10, loss 0%"), "{report}");
    assert!(report.contains("| 10 | 0% | rumor (no Lifeguard) |"), "{report}");
}
