//! The membership benchmark report without building the whole `rumor`
//! binary: the same `sim::bench::report` that `rumor bench membership` runs.
//!
//! `cargo run --release -p sim --example membership_report -- [--quick] [--seed S] [--out PATH]`

use std::path::PathBuf;

fn main() {
    let (mut quick, mut seed, mut out) = (false, 1, PathBuf::from("docs/benchmarks/membership.md"));
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--seed" => seed = args.next().and_then(|s| s.parse().ok()).expect("--seed takes a number"),
            "--out" => out = args.next().expect("--out takes a path").into(),
            _ => panic!("unknown argument {a}; expected --quick, --seed S or --out PATH"),
        }
    }
    let opts = if quick {
        sim::bench::Options::quick(seed)
    } else {
        sim::bench::Options::full(seed)
    };
    let command = format!(
        "cargo run --release -p sim --example membership_report --{} --seed {seed}",
        if quick { " --quick" } else { "" }
    );
    let report = sim::bench::report(&opts, &command, |line| eprintln!("{line}"));
    std::fs::write(&out, report).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
    println!("wrote {}", out.display());
}
