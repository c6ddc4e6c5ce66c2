//! `rumor-bench traces`: what tracing costs a message, measured against the
//! same cluster untraced in the same run.
//!
//! ```text
//!  load ─WebSocket─> gateway ──mesh──> worker (echo)           untraced: no OTLP endpoint
//!  load ─WebSocket─> gateway ──mesh──> worker (echo) ──OTLP──> receiver in this process
//!  load ─WebSocket─> gateway ──mesh──> worker (echo) ──OTLP──> (the same, 10% of traces sampled)
//! ```
//!
//! Three clusters of real `rumor node` processes, alike but for their trace
//! settings (and separate gossip keys, so they never meet). Closed-loop
//! steps go round them, in reverse every other round; each reads the CPU
//! time of both of its processes from `/proc`, so the cost per message is
//! compared as well as the rate, which the shared machine makes noisy. The
//! receiver counts what arrives, so the report also says whether every span
//! was exported under load (the SDK drops spans rather than wait when its
//! queue is full).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use node::crypto::Key;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;

use crate::dataplane::Proc;
use crate::edge::{Target, closed_loop, gateway_process};
use crate::report::proc::{clock_ticks, cpu_ticks};
use crate::report::{Machine, loadavg, median, percentile_of, table};

/// The spans one echoed message makes: `edge`, `message` at the gateway and
/// at the worker, `process`.
const SPANS_PER_MESSAGE: u64 = 4;
/// A cluster's trace settings: its name in the report, its service name.
#[derive(Debug, Clone, Copy)]
struct Kind {
    name: &'static str,
    service: &'static str,
}

const PLAIN: Kind = Kind {
    name: "untraced",
    service: "",
};
const TRACED: Kind = Kind {
    name: "traced",
    service: "rumor-traced",
};
const SAMPLED: Kind = Kind {
    name: "traced, 10% sampled",
    service: "rumor-sampled",
};

/// `rumor-bench traces` settings.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub rounds: usize,
    pub connections: usize,
    pub out: PathBuf,
    pub command: String,
}

impl Options {
    pub fn new(duration_s: f64, rounds: usize, connections: usize, quick: bool, out: PathBuf) -> Self {
        let mut command =
            format!("rumor-bench traces --duration {duration_s} --rounds {rounds} --connections {connections}");
        if quick {
            command.push_str(" --quick");
        }
        if out != std::path::Path::new("docs/benchmarks/traces.md") {
            let _ = write!(command, " --out {}", out.display());
        }
        let (duration, rounds) = if quick {
            (Duration::from_millis(500), 2)
        } else {
            (Duration::from_secs_f64(duration_s), rounds)
        };
        Self {
            duration,
            rounds,
            connections,
            out,
            command,
        }
    }
}

/// An OTLP/gRPC trace service that counts the spans it receives, by
/// service and span name.
#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<BTreeMap<(String, String), u64>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    *counts.entry((service.clone(), s.name)).or_default() += 1;
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> anyhow::Result<(Receiver, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let receiver = Receiver::default();
        let service = TraceServiceServer::new(receiver.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        Ok((receiver, addr))
    }

    fn counts(&self) -> BTreeMap<(String, String), u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One cluster: a worker and a gateway with its edge.
struct Cluster {
    kind: Kind,
    worker: Proc,
    gateway: Proc,
    edge: SocketAddr,
}

impl Cluster {
    async fn start(kind: Kind, dir: &std::path::Path, env: &[(&str, String)]) -> anyhow::Result<Cluster> {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let key = Key::generate().to_base64();
        let tag = if kind.service.is_empty() { "plain" } else { kind.service };
        let config = dir.join(format!("worker-{tag}.toml"));
        std::fs::write(&config, "[worker.echo]\nchunks = 3\ndelay_ms = 0\n")?;
        let mut cmd = Command::new(crate::rumor_exe()?);
        cmd.arg("node")
            .arg("--config")
            .arg(&config)
            .args(["--name", &format!("worker-{tag}"), "--roles", "worker"])
            .args(["--gossip-bind", "127.0.0.1:0", "--mesh-bind", "127.0.0.1:0"])
            .args(["--admin-bind", "127.0.0.1:0"])
            .env("RUMOR_KEYS", &key)
            .env_remove("RUMOR_SEEDS")
            .env_remove("RUMOR_NAME")
            .envs(env.iter().copied());
        let worker = Proc::spawn(&format!("worker ({})", kind.name), cmd).await?;
        let seed: SocketAddr = worker.field("gossip")?.parse()?;
        let (gateway, edge) = gateway_process(&format!("gateway-{tag}"), seed, &key, dir, &env).await?;
        Ok(Cluster {
            kind,
            worker,
            gateway,
            edge,
        })
    }

    fn cpu_ticks(&self) -> u64 {
        [self.worker.pid(), self.gateway.pid()]
            .iter()
            .filter_map(|&pid| cpu_ticks(pid))
            .sum()
    }
}

/// One closed-loop step on one cluster.
#[derive(Debug, Clone)]
struct Step {
    rate: f64,
    messages: usize,
    /// CPU of the cluster's two processes per message, µs.
    cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

async fn step(c: &Cluster, o: &Options, text: &str, ticks_per_s: f64) -> Step {
    let before = c.cpu_ticks();
    let (tally, rate) = closed_loop(&Target::Ws(c.edge), o.connections, Duration::ZERO, o.duration, text).await;
    let cpu_s = c.cpu_ticks().saturating_sub(before) as f64 / ticks_per_s;
    let messages = tally.done.len();
    Step {
        rate,
        messages,
        cpu_us: cpu_s * 1e6 / messages.max(1) as f64,
        p50_ms: percentile_of(&tally.done, 0.50).unwrap_or(f64::NAN) / 1e3,
        p99_ms: percentile_of(&tally.done, 0.99).unwrap_or(f64::NAN) / 1e3,
        errors: tally.errors.values().sum(),
    }
}

pub async fn run(o: Options) -> anyhow::Result<()> {
    let machine = Machine::read();
    let started = Instant::now();
    let ticks_per_s = clock_ticks();
    let dir = std::env::temp_dir().join(format!("rumor-bench-traces-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (receiver, addr) = Receiver::start().await?;
    let endpoint = format!("http://{addr}");
    let otlp = |service: &'static str| {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
            ("OTEL_SERVICE_NAME", service.to_owned()),
        ]
    };
    let mut sampled_env = otlp(SAMPLED.service);
    sampled_env.push(("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()));
    sampled_env.push(("OTEL_TRACES_SAMPLER_ARG", "0.1".into()));
    let clusters = [
        Cluster::start(PLAIN, &dir, &[]).await?,
        Cluster::start(TRACED, &dir, &otlp(TRACED.service)).await?,
        Cluster::start(SAMPLED, &dir, &sampled_env).await?,
    ];
    let text = "x".repeat(256);
    // Warm up: connections, lanes, the exporter's channel. Each gateway
    // answered one message already, when it was checked.
    let mut answered: BTreeMap<&str, usize> = clusters.iter().map(|c| (c.kind.name, 1)).collect();
    for c in &clusters {
        let one_second = Duration::from_secs(1);
        let (tally, _) = closed_loop(&Target::Ws(c.edge), o.connections, Duration::ZERO, one_second, &text).await;
        *answered.entry(c.kind.name).or_default() += tally.done.len();
    }
    let mut steps: BTreeMap<&str, Vec<Step>> = BTreeMap::new();
    for round in 0..o.rounds {
        let mut order: Vec<&Cluster> = clusters.iter().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for c in order {
            let s = step(c, &o, &text, ticks_per_s).await;
            eprintln!(
                "round {}: {:<20} {:>7.0} msg/s, {:>6.0} µs CPU per message, p50 {:.2} ms, p99 {:.2} ms",
                round + 1,
                c.kind.name,
                s.rate,
                s.cpu_us,
                s.p50_ms,
                s.p99_ms
            );
            *answered.entry(c.kind.name).or_default() += s.messages;
            steps.entry(c.kind.name).or_default().push(s);
        }
    }
    // The exporter sends a batch at least every 5 s (OTEL_BSP_SCHEDULE_DELAY);
    // wait for the last one.
    let before_wait = receiver.counts();
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counts = receiver.counts();
    drop(clusters);
    let _ = std::fs::remove_dir_all(&dir);
    let received = Received {
        answered,
        before_wait,
        counts,
    };
    let report = render(&o, &machine, &steps, &received, started.elapsed());
    crate::report::write(&o.out, &report)?;
    println!("wrote {}", o.out.display());
    Ok(())
}

/// What the traced clusters answered and what the receiver got.
struct Received<'a> {
    /// Messages answered per cluster, counted inside the steps' windows.
    answered: BTreeMap<&'a str, usize>,
    /// Spans per (service, span name) at the end of the last step, and after the wait.
    before_wait: BTreeMap<(String, String), u64>,
    counts: BTreeMap<(String, String), u64>,
}

fn render(o: &Options, m: &Machine, steps: &BTreeMap<&str, Vec<Step>>, r: &Received<'_>, took: Duration) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "# What tracing costs\n");
    let _ = writeln!(
        w,
        "Command: `{}` (release build; {:.0} s).\n",
        o.command,
        took.as_secs_f64()
    );
    let _ = writeln!(w, "{}, load average {} at the end.\n", m.line(), loadavg());
    let _ = writeln!(
        w,
        "What runs: three clusters of real `rumor node` processes, each a gateway (client edge) and a worker \
         (echo, 3 chunks), alike but for their trace settings: untraced (no OTLP endpoint); traced, exporting every \
         message's spans over OTLP/gRPC with the default batch settings; and traced with \
         `OTEL_TRACES_SAMPLER=parentbased_traceidratio` at 0.1. The spans go to a receiver in the bench process, \
         which counts them. {} WebSocket connections in a closed loop, 256-byte messages, {:.1} s per step, {} \
         rounds, the order of the clusters reversed every other round. CPU is both processes' user and system time \
         from `/proc` over the step, per message answered.\n",
        o.connections,
        o.duration.as_secs_f64(),
        o.rounds
    );
    let med = |name: &str, f: fn(&Step) -> f64| median(steps[name].iter().map(f));
    let _ = writeln!(w, "## Medians of {} rounds\n", o.rounds);
    let kinds = [PLAIN, TRACED, SAMPLED];
    let rows = kinds.iter().map(|k| {
        vec![
            k.name.to_owned(),
            format!("{:.0}", med(k.name, |s| s.rate)),
            format!("{:.0}%", 100.0 * med(k.name, |s| s.rate) / med(PLAIN.name, |s| s.rate)),
            format!("{:.0}", med(k.name, |s| s.cpu_us)),
            format!("{:+.0}", med(k.name, |s| s.cpu_us) - med(PLAIN.name, |s| s.cpu_us)),
            format!("{:.2}", med(k.name, |s| s.p50_ms)),
            format!("{:.2}", med(k.name, |s| s.p99_ms)),
            steps[k.name].iter().map(|s| s.errors).sum::<usize>().to_string(),
        ]
    });
    table(
        &mut w,
        &[
            "cluster",
            "msg/s",
            "of untraced",
            "CPU µs per message",
            "CPU µs over untraced",
            "p50 ms",
            "p99 ms",
            "errors",
        ],
        rows,
    );
    // Per message: exported costs all four spans; sampled costs a tenth of
    // that plus what a span costs when it is not sampled.
    let exported = med(TRACED.name, |s| s.cpu_us) - med(PLAIN.name, |s| s.cpu_us);
    let sampled = med(SAMPLED.name, |s| s.cpu_us) - med(PLAIN.name, |s| s.cpu_us);
    let unsampled = (sampled - 0.1 * exported) / 0.9;
    let spans = SPANS_PER_MESSAGE as f64;
    let _ = writeln!(
        w,
        "\nWhat the figures say: a traced message costs {exported:.0} µs more CPU over the two processes, \
         {:.1} µs for each of its {SPANS_PER_MESSAGE} spans created, recorded, batched and sent. Sampling 10% \
         of traces cuts that to {sampled:.0} µs: a message whose trace is not sampled still costs about \
         {unsampled:.0} µs ({:.1} µs a span), for creating its spans and passing its trace context on, so \
         sampling saves {:.0}% of the cost, not 90%. Whether every span arrived is in the last table.",
        exported / spans,
        unsampled / spans,
        100.0 * (1.0 - sampled / exported)
    );
    let _ = writeln!(w, "\n## Every round\n");
    let mut rows = Vec::new();
    for k in kinds {
        for (i, s) in steps[k.name].iter().enumerate() {
            rows.push(vec![
                (i + 1).to_string(),
                k.name.to_owned(),
                format!("{:.0}", s.rate),
                format!("{:.0}", s.cpu_us),
                format!("{:.2}", s.p50_ms),
                format!("{:.2}", s.p99_ms),
            ]);
        }
    }
    table(
        &mut w,
        &["round", "cluster", "msg/s", "CPU µs per message", "p50 ms", "p99 ms"],
        rows,
    );
    let _ = writeln!(w, "\n## Spans received\n");
    let _ = writeln!(
        w,
        "Messages answered are counted inside the steps' windows (with the warm-up and the readiness check); \
         up to {} more per step end just after a window and are not counted. Spans as the receiver had them 6 s \
         after the last step, and when it ended.\n",
        o.connections
    );
    let mut rows = Vec::new();
    for k in [TRACED, SAMPLED] {
        let of = |counts: &BTreeMap<(String, String), u64>, name: Option<&str>| -> u64 {
            counts
                .iter()
                .filter(|((service, span), _)| service == k.service && name.is_none_or(|n| n == span))
                .map(|(_, n)| n)
                .sum()
        };
        let answered = r.answered[k.name];
        let edge = of(&r.counts, Some("edge"));
        let total = of(&r.counts, None);
        rows.push(vec![
            k.name.to_owned(),
            answered.to_string(),
            edge.to_string(),
            format!("{:.1}%", edge as f64 * 100.0 / answered.max(1) as f64),
            total.to_string(),
            of(&r.before_wait, None).to_string(),
            format!("{:.2}", total as f64 / edge.max(1) as f64),
        ]);
    }
    table(
        &mut w,
        &[
            "cluster",
            "messages answered",
            "edge spans",
            "edge spans per message",
            "spans",
            "spans at the last step's end",
            "spans per edge span",
        ],
        rows,
    );
    let _ = writeln!(
        w,
        "\nEach traced message makes {SPANS_PER_MESSAGE} spans: edge, routing at the gateway and at the worker, \
         processing."
    );
    w
}
