//! `rumor-bench bridge`: records per second from Kafka into PostgreSQL
//! through the bridge, next to COPY of the same rows into the same database
//! in the same run, and the latency from produce to committed row.
//!
//! ```text
//!  setup:      fresh database rumor_bench_bridge, fresh topic; M records produced once
//!  every round (the order reversed in odd rounds, so drift hits all alike):
//!    COPY      the M rows, as CSV, straight into `messages` (one statement)
//!    bridge B  a new consumer group reads the M records, batches of B, one
//!              transaction per batch (rows + fenced offsets), as `rumor bridge` does
//!    (tables truncated before each step; after each bridge step the rows are
//!     checked against the topic: no duplicate, no gap)
//!  latency:    records produced at half the peak rate; each record's time from
//!              produce to the commit of the batch that stored it
//! ```
//!
//! Throughput is counted from the first committed batch to the last, so the
//! consumer group's join (seconds with a fresh group) is not in it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bridge::{BatchConfig, BridgeConfig, CommitInfo};
use events::{EventLog, KafkaConfig, OutRecord, Pending, Producer, TopicSpec, codec};
use proto::events::{MessageRecord, message_record::Kind};
use sqlx::{Connection as _, PgConnection, PgPool};

use crate::report::proc::machine_cpu_times as cpu_times;
use crate::report::{Machine, loadavg, median, met, percentile as pct};

/// Batch sizes measured.
const BATCH_SIZES: [usize; 3] = [100, 1_000, 5_000];
/// The bridge's goals.
const GOAL_RATE: f64 = 50_000.0;
const GOAL_RATIO: f64 = 0.60;
const GOAL_P99_MS: f64 = 250.0;
const DATABASE: &str = "rumor_bench_bridge";
/// Conversations the records are spread over.
const CONVERSATIONS: usize = 1_000;

/// What `rumor-bench bridge` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Records of each throughput step.
    pub records: usize,
    pub rounds: usize,
    /// Measured seconds of the latency step.
    pub latency: Duration,
    pub payload_bytes: usize,
    pub partitions: i32,
    /// A PostgreSQL URL whose user may create databases; the bench works in
    /// its own database next to it.
    pub database_url: String,
    pub brokers: String,
    pub out: PathBuf,
    pub command: String,
}

impl Options {
    pub fn new(
        records: usize,
        rounds: usize,
        quick: bool,
        database_url: String,
        brokers: String,
        out: PathBuf,
    ) -> anyhow::Result<Self> {
        ensure!(records >= 10_000, "--records must be at least 10000");
        ensure!(rounds >= 1, "--rounds must be at least 1");
        let mut command = String::from("rumor-bench bridge");
        if quick {
            command.push_str(" --quick");
        } else {
            let _ = write!(command, " --records {records} --rounds {rounds}");
        }
        if out != std::path::Path::new("docs/benchmarks/bridge.md") {
            let _ = write!(command, " --out {}", out.display());
        }
        let (records, rounds, latency) = if quick {
            (10_000, 1, Duration::from_secs(2))
        } else {
            (records, rounds, Duration::from_secs(20))
        };
        Ok(Self {
            records,
            rounds,
            latency,
            payload_bytes: 200,
            partitions: 6,
            database_url,
            brokers,
            out,
            command,
        })
    }
}

/// One step of a round.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Copy,
    /// The records read from Kafka and dropped: how fast the log alone delivers them.
    ReadOnly,
    Bridge(usize),
}

impl Step {
    fn name(self) -> String {
        match self {
            Step::Copy => "COPY (baseline)".into(),
            Step::ReadOnly => "Kafka read only, no database".into(),
            Step::Bridge(b) => format!("bridge, batch {b}"),
        }
    }
}

/// A record as produced, with where it landed.
#[derive(Debug)]
struct Produced {
    rec: MessageRecord,
    partition: i32,
    offset: i64,
}

/// Commits seen by the bridge's hook, in order.
type Commits = Arc<Mutex<Vec<(Instant, CommitInfo)>>>;

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let started = std::time::SystemTime::now();
    let load_before = loadavg();
    let url = database_url_with_name(&opts.database_url, DATABASE)?;
    recreate_database(&opts.database_url, DATABASE).await?;
    // Opening a store runs the bridge's migrations: the same tables and indexes the bridge writes to.
    bridge::Store::open(&url, 1)
        .await
        .with_context(|| format!("migrating {url}"))?
        .close()
        .await;
    let pool = PgPool::connect(&url)
        .await
        .with_context(|| format!("connecting to {url}"))?;
    let pg_version: String = sqlx::query_scalar("SHOW server_version").fetch_one(&pool).await?;

    let log = EventLog::Kafka(KafkaConfig::new(&opts.brokers));
    let run_id = events::unix_ms();
    let topic = format!("rumor-bench-{run_id}");
    let latency_topic = |b: usize, share: &str| format!("rumor-bench-{run_id}-latency-{b}-{share}");
    let forward_topic = format!("rumor-bench-{run_id}-forward");
    let mut names = vec![topic.clone(), forward_topic.clone()];
    for b in BATCH_SIZES {
        names.extend(["half", "quarter"].map(|share| latency_topic(b, share)));
    }
    let specs: Vec<TopicSpec> = names
        .iter()
        .map(|name| TopicSpec {
            name: name.clone(),
            partitions: opts.partitions,
            replication: 1,
        })
        .collect();
    log.create_topics(&specs)
        .await
        .with_context(|| format!("creating topics on {}", opts.brokers))?;
    let producer = log.producer()?;

    eprintln!("producing {} records to {topic} ...", opts.records);
    let t = Instant::now();
    let produced = produce_all(&producer, &topic, opts.records, opts.payload_bytes).await?;
    let produce_rate = opts.records as f64 / t.elapsed().as_secs_f64();
    eprintln!("  {produce_rate:.0} records/s");

    let mut steps = vec![Step::Copy, Step::ReadOnly];
    steps.extend(BATCH_SIZES.iter().map(|&b| Step::Bridge(b)));
    let mut rates: BTreeMap<Step, Vec<f64>> = BTreeMap::new();
    let mut checks = Vec::new();
    for round in 0..opts.rounds {
        let order: Vec<Step> = if round % 2 == 0 {
            steps.clone()
        } else {
            steps.iter().rev().copied().collect()
        };
        for step in order {
            truncate(&pool).await?;
            let rate = match step {
                Step::Copy => copy_rows(&pool, &produced, &topic).await?,
                Step::ReadOnly => {
                    read_rate(&log, &topic, &format!("bench-{run_id}-r{round}-read"), opts.records).await?
                }
                Step::Bridge(b) => {
                    let group = format!("bench-{run_id}-r{round}-b{b}");
                    let cfg = bridge_config(&url, &log, &topic, &forward_topic, &group, b);
                    let rate = bridge_rate(cfg, opts.records).await?;
                    checks.push((step, round, check_rows(&pool, &produced).await?));
                    rate
                }
            };
            eprintln!("round {}: {}: {rate:.0} records/s", round + 1, step.name());
            rates.entry(step).or_default().push(rate);
        }
    }

    let copy = median(rates[&Step::Copy].iter().copied());
    let read = median(rates[&Step::ReadOnly].iter().copied());
    let (peak_batch, peak) = BATCH_SIZES
        .iter()
        .map(|&b| (b, median(rates[&Step::Bridge(b)].iter().copied())))
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, 0.0));
    let mut latency = Vec::new();
    for b in BATCH_SIZES {
        for (share, target) in [("half", peak / 2.0), ("quarter", peak / 4.0)] {
            eprintln!("latency at batch {b}, {target:.0} records/s ({share} of the peak) ...");
            truncate(&pool).await?;
            let group = format!("bench-{run_id}-latency-{b}-{share}");
            let t = latency_topic(b, share);
            let cfg = bridge_config(&url, &log, &t, &forward_topic, &group, b);
            let l = latency_step(cfg, &producer, &t, target, opts.latency, opts.payload_bytes).await?;
            latency.push((b, share, l));
        }
    }
    pool.close().await;

    let report = report(&Report {
        opts: &opts,
        started,
        load_before,
        load_after: loadavg(),
        pg_version,
        produce_rate,
        rates: &rates,
        copy,
        read,
        peak,
        peak_batch,
        checks: &checks,
        latency: &latency,
    });
    crate::report::write(&opts.out, &report)?;
    println!("wrote {}", opts.out.display());
    let bad: Vec<_> = checks.iter().filter(|(_, _, c)| !c.ok()).collect();
    if !bad.is_empty() {
        bail!("rows did not match the topic after {} bridge steps: {bad:?}", bad.len());
    }
    Ok(())
}

/// `url` with its database name replaced by `name`.
fn database_url_with_name(url: &str, name: &str) -> anyhow::Result<String> {
    let scheme_end = url
        .find("://")
        .context("a database URL looks like postgres://user@host:port/db")?
        + 3;
    let (base, query) = match url.find('?') {
        Some(q) => (&url[..q], &url[q..]),
        None => (url, ""),
    };
    let host_end = base[scheme_end..].find('/').map_or(base.len(), |i| scheme_end + i);
    Ok(format!("{}/{name}{query}", &base[..host_end]))
}

async fn recreate_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to {admin_url}"))?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .with_context(|| format!("creating database {name} (the URL's user must be allowed to)"))?;
    conn.close().await?;
    Ok(())
}

async fn truncate(pool: &PgPool) -> anyhow::Result<()> {
    sqlx::query("TRUNCATE messages, consumer_offsets, dead_letters RESTART IDENTITY")
        .execute(pool)
        .await?;
    // Leave no dead tuples or dirty pages of the last step to the next one.
    sqlx::query("CHECKPOINT").execute(pool).await?;
    Ok(())
}

/// The `i`-th record of a run: inbound and reply alternate, spread over
/// [`CONVERSATIONS`] conversations, with a payload of printable bytes.
fn record(i: usize, payload_bytes: usize) -> MessageRecord {
    let payload: Vec<u8> = (0..payload_bytes).map(|j| b'a' + ((i + j) % 26) as u8).collect();
    MessageRecord {
        id: events::new_message_id(),
        key: format!("conv-{}", i % CONVERSATIONS),
        kind: (if i.is_multiple_of(2) {
            Kind::Inbound
        } else {
            Kind::Reply
        }) as i32,
        payload: payload.into(),
        worker: format!("worker-{}", i % 3),
        origin: "gateway-1".into(),
        source: "client".into(),
        created_unix_ms: events::unix_ms(),
        chunks: if i.is_multiple_of(2) { 0 } else { 3 },
        ..Default::default()
    }
}

/// Produces `n` records and waits for every delivery.
async fn produce_all(
    producer: &Producer,
    topic: &str,
    n: usize,
    payload_bytes: usize,
) -> anyhow::Result<Vec<Produced>> {
    let mut out = Vec::with_capacity(n);
    let mut pending: Vec<(MessageRecord, Pending)> = Vec::new();
    for i in 0..n {
        let rec = record(i, payload_bytes);
        let p = enqueue(producer, &codec::message_record(topic, &rec)).await?;
        pending.push((rec, p));
        if pending.len() >= 10_000 || i + 1 == n {
            for (rec, p) in pending.drain(..) {
                let d = p.await.context("delivering a record")?;
                out.push(Produced {
                    rec,
                    partition: d.partition,
                    offset: d.offset,
                });
            }
        }
    }
    Ok(out)
}

/// Enqueues, waiting while librdkafka's queue is full.
async fn enqueue(producer: &Producer, rec: &OutRecord) -> anyhow::Result<Pending> {
    let mut waited = Duration::ZERO;
    loop {
        match producer.enqueue(rec) {
            Ok(p) => return Ok(p),
            Err(e) if waited < Duration::from_secs(30) => {
                tracing::debug!("enqueue: {e}; waiting");
                tokio::time::sleep(Duration::from_millis(5)).await;
                waited += Duration::from_millis(5);
            }
            Err(e) => return Err(e).context("enqueueing a record"),
        }
    }
}

const COLUMNS: &str = "message_id, kind, conversation_key, payload, worker, origin, source, error_code, \
     error_message, chunks, truncated, created_unix_ms, deadline_unix_ms, topic, kafka_partition, kafka_offset";

/// COPY of the rows the bridge stores for `produced`, in CSV (no escaping
/// needed beyond quotes). Returns rows per second, CSV building included.
async fn copy_rows(pool: &PgPool, produced: &[Produced], topic: &str) -> anyhow::Result<f64> {
    let mut conn = pool.acquire().await?;
    let t = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY messages ({COLUMNS}) FROM STDIN WITH (FORMAT csv)"))
        .await?;
    let mut buf = String::with_capacity(1 << 20);
    for p in produced {
        let r = &p.rec;
        let _ = write!(buf, "{},{},{},\\x", csv(&r.id), r.kind, csv(&r.key));
        for b in r.payload.iter() {
            let _ = write!(buf, "{b:02x}");
        }
        let _ = writeln!(
            buf,
            ",{},{},{},,,{},{},{},{},{},{},{}",
            csv(&r.worker),
            csv(&r.origin),
            csv(&r.source),
            r.chunks,
            r.truncated,
            r.created_unix_ms,
            r.deadline_unix_ms,
            csv(topic),
            p.partition,
            p.offset
        );
        if buf.len() >= 1 << 20 {
            copy.send(std::mem::take(&mut buf).into_bytes()).await?;
            buf.reserve(1 << 20);
        }
    }
    copy.send(buf.into_bytes()).await?;
    let rows = copy.finish().await?;
    let secs = t.elapsed().as_secs_f64();
    ensure!(
        rows as usize == produced.len(),
        "COPY stored {rows} of {} rows",
        produced.len()
    );
    Ok(produced.len() as f64 / secs)
}

fn csv(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn bridge_config(url: &str, log: &EventLog, topic: &str, forward: &str, group: &str, batch: usize) -> BridgeConfig {
    let mut cfg = BridgeConfig::new(url, log.clone());
    cfg.topics.messages = topic.into();
    cfg.topics.forward = forward.into();
    cfg.create_topics = false;
    cfg.group_id = group.into();
    cfg.batch = BatchConfig {
        max_records: batch,
        // Count decides, not bytes: 5,000 records of this bench are about 1.6 MB.
        max_bytes: 64 << 20,
        ..BatchConfig::default()
    };
    cfg.http_bind = "127.0.0.1:0".parse().expect("a socket address");
    cfg
}

/// Starts a bridge with a hook that records every commit.
async fn start_timed(mut cfg: BridgeConfig) -> anyhow::Result<(bridge::Bridge, Commits)> {
    let commits: Commits = Arc::default();
    let c = commits.clone();
    cfg.after_commit = Some(Arc::new(move |info: &CommitInfo| {
        c.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((Instant::now(), info.clone()));
        false
    }));
    let b = bridge::start(cfg).await.context("starting the bridge")?;
    Ok((b, commits))
}

fn committed(commits: &Commits) -> usize {
    commits
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(_, i)| i.records)
        .sum()
}

/// Runs a bridge until it has stored `n` records; rows per second from its
/// first commit to its last.
async fn bridge_rate(cfg: BridgeConfig, n: usize) -> anyhow::Result<f64> {
    let (b, commits) = start_timed(cfg).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    while committed(&commits) < n {
        ensure!(
            Instant::now() < deadline,
            "the bridge stored {} of {n} records in 600 s",
            committed(&commits)
        );
        ensure!(!b.consumer_stopped(), "the bridge's consume loop stopped");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.shutdown().await?;
    let c = commits.lock().unwrap_or_else(|e| e.into_inner());
    let (first_t, first) = c.first().context("no commit")?;
    let (last_t, _) = c.last().context("no commit")?;
    let secs = last_t.duration_since(*first_t).as_secs_f64();
    ensure!(secs > 0.0, "everything was stored in one batch: use more --records");
    Ok((n - first.records) as f64 / secs)
}

/// Reads `n` records with a new consumer group and drops them; records per
/// second from the first record to the last.
async fn read_rate(log: &EventLog, topic: &str, group: &str, n: usize) -> anyhow::Result<f64> {
    let mut consumer = log.consumer(group, &[topic])?;
    let mut first = None;
    let mut seen = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < n {
        let ev = tokio::time::timeout_at(deadline.into(), consumer.recv())
            .await
            .with_context(|| format!("read {seen} of {n} records in 600 s"))??;
        if let events::ConsumerEvent::Record(_) = ev {
            first.get_or_insert_with(Instant::now);
            seen += 1;
        }
    }
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    ensure!(secs > 0.0, "no time passed reading");
    Ok((n - 1) as f64 / secs)
}

/// Rows against the topic's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Check {
    rows: i64,
    duplicates: i64,
    missing: i64,
}

impl Check {
    fn ok(&self) -> bool {
        self.duplicates == 0 && self.missing == 0
    }
}

async fn check_rows(pool: &PgPool, produced: &[Produced]) -> anyhow::Result<Check> {
    let stored: Vec<(i32, i64)> = sqlx::query_as("SELECT kafka_partition, kafka_offset FROM messages")
        .fetch_all(pool)
        .await?;
    let rows = stored.len() as i64;
    let unique: std::collections::BTreeSet<(i32, i64)> = stored.into_iter().collect();
    let expected: std::collections::BTreeSet<(i32, i64)> = produced.iter().map(|p| (p.partition, p.offset)).collect();
    Ok(Check {
        rows,
        duplicates: rows - unique.len() as i64,
        missing: expected.difference(&unique).count() as i64,
    })
}

/// Produce-to-commit latency.
#[derive(Debug, Default)]
struct Latency {
    achieved_rate: f64,
    /// Share of the machine's CPU time that was busy while producing.
    cpu_busy: f64,
    records: usize,
    /// Produce to committed row, milliseconds, sorted.
    ms: Vec<f64>,
    /// Produce to the broker's acknowledgement (a part of `ms`), milliseconds, sorted.
    ack_ms: Vec<f64>,
    batches: usize,
}

impl Latency {
    fn pct(&self, p: f64) -> f64 {
        pct(&self.ms, p)
    }
}

/// Produces at `rate` records per second for `measure` (after a second of
/// warm-up that is not counted) and times each record from its enqueue to
/// the commit of the batch that stored it.
async fn latency_step(
    cfg: BridgeConfig,
    producer: &Producer,
    topic: &str,
    rate: f64,
    measure: Duration,
    payload_bytes: usize,
) -> anyhow::Result<Latency> {
    let (b, commits) = start_timed(cfg).await?;
    // Wait until the bridge stores records: the group has joined and seeked.
    let mut i = 0;
    let ready = Instant::now() + Duration::from_secs(60);
    while committed(&commits) == 0 {
        ensure!(Instant::now() < ready, "the bridge stored nothing within 60 s");
        producer
            .send(
                &codec::message_record(topic, &record(i, payload_bytes)),
                Duration::from_secs(10),
            )
            .await?;
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, bool, Pending)>();
    let deliveries = tokio::spawn(async move {
        let mut out = Vec::new();
        while let Some((at, counted, p)) = rx.recv().await {
            let d = p.await?;
            if counted {
                out.push((at, Instant::now(), d.partition, d.offset));
            }
        }
        anyhow::Ok(out)
    });
    let warmup = Duration::from_secs(1);
    let tick = Duration::from_millis(5);
    let cpu_before = cpu_times();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut counted_sent = 0usize;
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    while start.elapsed() < warmup + measure {
        ticker.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        let counted = start.elapsed() >= warmup;
        while sent < due {
            let p = enqueue(producer, &codec::message_record(topic, &record(i, payload_bytes))).await?;
            i += 1;
            sent += 1;
            if counted {
                counted_sent += 1;
            }
            tx.send((Instant::now(), counted, p)).ok();
        }
    }
    let cpu_busy = match (cpu_before, cpu_times()) {
        (Some((busy0, all0)), Some((busy1, all1))) if all1 > all0 => (busy1 - busy0) as f64 / (all1 - all0) as f64,
        _ => f64::NAN,
    };
    drop(tx);
    let delivered = deliveries.await??;
    // Wait until every delivered record's offset is below its partition's stored offset.
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for &(_, _, p, o) in &delivered {
        let e = last.entry(p).or_insert(o);
        *e = (*e).max(o);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stored = stored_offsets(&commits);
        if last.iter().all(|(p, o)| stored.get(p).is_some_and(|s| s > o)) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the bridge did not store the latency step's records within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b.shutdown().await?;

    // Per partition, the commits in order: (next offset after, when).
    let c = commits.lock().unwrap_or_else(|e| e.into_inner());
    let mut by_part: BTreeMap<i32, Vec<(i64, Instant)>> = BTreeMap::new();
    for (at, info) in c.iter() {
        for (tp, next) in &info.offsets {
            by_part.entry(tp.partition).or_default().push((*next, *at));
        }
    }
    let mut ms = Vec::with_capacity(delivered.len());
    let mut ack_ms: Vec<f64> = delivered
        .iter()
        .map(|(sent_at, acked_at, _, _)| acked_at.duration_since(*sent_at).as_secs_f64() * 1e3)
        .collect();
    ack_ms.sort_by(f64::total_cmp);
    for (sent_at, _, p, o) in &delivered {
        let list = by_part.get(p).context("a partition with no commit")?;
        let idx = list.partition_point(|(next, _)| *next <= *o);
        let (_, at) = list.get(idx).context("a delivered record with no commit")?;
        ms.push(at.duration_since(*sent_at).as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    Ok(Latency {
        achieved_rate: counted_sent as f64 / measure.as_secs_f64(),
        cpu_busy,
        records: ms.len(),
        ms,
        ack_ms,
        batches: c.len(),
    })
}

fn stored_offsets(commits: &Commits) -> BTreeMap<i32, i64> {
    let mut out = BTreeMap::new();
    for (_, info) in commits.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        for (tp, next) in &info.offsets {
            out.insert(tp.partition, *next);
        }
    }
    out
}

struct Report<'a> {
    opts: &'a Options,
    started: std::time::SystemTime,
    load_before: String,
    load_after: String,
    pg_version: String,
    produce_rate: f64,
    rates: &'a BTreeMap<Step, Vec<f64>>,
    copy: f64,
    read: f64,
    peak: f64,
    peak_batch: usize,
    checks: &'a [(Step, usize, Check)],
    /// Per batch size, at half and at a quarter of the peak.
    latency: &'a [(usize, &'static str, Latency)],
}

fn report(r: &Report<'_>) -> String {
    let o = r.opts;
    let machine = Machine::read();
    let (cpu, cores, rustc) = (&machine.cpu, machine.cores, &machine.rustc);
    let when = r
        .started
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "# Bridge benchmark: Kafka into PostgreSQL\n");
    let build = if cfg!(debug_assertions) {
        "**a debug build: figures are not representative**"
    } else {
        "release build"
    };
    let _ = writeln!(s, "Written by `{}` ({build}).\n", o.command);
    let _ = writeln!(
        s,
        "- Started at unix time {when}; load average {} before, {} after.\n\
         - Machine: {cpu}, {cores} cores, shared with other work; {rustc}.\n\
         - Kafka protocol broker at {} (tansu, memory storage), PostgreSQL {} on the same machine.\n\
         - {} records per step ({} bytes of payload, {} conversations, {} partitions, inbound and reply alternating); \
         produced once at {:.0} records/s.\n\
         - {} rounds; each runs every step, in reverse order in odd rounds. Tables are truncated and checkpointed \
         before each step. Figures are medians over rounds.",
        r.load_before,
        r.load_after,
        o.brokers,
        r.pg_version,
        o.records,
        o.payload_bytes,
        CONVERSATIONS,
        o.partitions,
        r.produce_rate,
        o.rounds,
    );
    let _ = writeln!(s, "\n## Throughput\n");
    let _ = writeln!(
        s,
        "The bridge's rate counts from its first committed batch to its last (a new consumer group's join is \
         not in it). COPY is one `COPY messages (...) FROM STDIN (FORMAT csv)` of the same rows into the same \
         table with the same indexes, CSV building included. \"Kafka read only\" is a consumer of a new group \
         reading the same records and dropping them: the bridge cannot be faster than that.\n"
    );
    let _ = writeln!(s, "| step | records/s (median) | every round | vs COPY |");
    let _ = writeln!(s, "|---|---:|---|---:|");
    for (step, v) in r.rates {
        let m = median(v.iter().copied());
        let all: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
        let _ = writeln!(
            s,
            "| {} | {m:.0} | {} | {:.0}% |",
            step.name(),
            all.join(", "),
            100.0 * m / r.copy
        );
    }
    let bad = r.checks.iter().filter(|(_, _, c)| !c.ok()).count();
    let _ = writeln!(
        s,
        "\nAfter each of the {} bridge steps the stored rows were checked against the records produced \
         (partition and offset): {}.",
        r.checks.len(),
        if bad == 0 {
            "0 duplicates and 0 missing in every one".to_owned()
        } else {
            let list: Vec<String> = r
                .checks
                .iter()
                .filter(|(_, _, c)| !c.ok())
                .map(|(st, round, c)| {
                    format!(
                        "{} round {}: {} duplicates, {} missing",
                        st.name(),
                        round + 1,
                        c.duplicates,
                        c.missing
                    )
                })
                .collect();
            format!("**{bad} failed**: {}", list.join("; "))
        }
    );
    let _ = writeln!(
        s,
        "\nAt its peak the bridge stores {:.0}% of what the log alone delivers ({:.0} of {:.0} records/s) and \
         {:.0}% of what COPY writes.",
        100.0 * r.peak / r.read,
        r.peak,
        r.read,
        100.0 * r.peak / r.copy
    );
    let _ = writeln!(s, "\n## Latency from produce to committed row\n");
    let _ = writeln!(
        s,
        "Records produced at half ({:.0} records/s) and at a quarter of the peak rate ({:.0} records/s; the \
         peak was at batch {}), for each batch size, with the default `max_wait` of {} ms, for {} s after 1 s of \
         warm-up. Each record is timed from its enqueue in the producer (in the bench process, beside the \
         bridge) to the return of the commit of the batch that stored it; the second line of each is the part \
         from enqueue to the broker's acknowledgement. CPU is the whole machine's busy share during the step: \
         producer, broker, bridge and PostgreSQL share its cores.\n",
        r.peak / 2.0,
        r.peak / 4.0,
        r.peak_batch,
        BatchConfig::default().max_wait.as_millis(),
        o.latency.as_secs()
    );
    let _ = writeln!(
        s,
        "| batch | rate | records | achieved rate | CPU | batches written | | p50 | p99 | max |"
    );
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---|---:|---:|---:|");
    for (b, share, l) in r.latency {
        let _ = writeln!(
            s,
            "| {b} | {share} | {} | {:.0}/s | {:.0}% | {} | produce to committed row | {:.1} ms | {:.1} ms | {:.1} ms |",
            l.records,
            l.achieved_rate,
            100.0 * l.cpu_busy,
            l.batches,
            l.pct(0.50),
            l.pct(0.99),
            l.ms.last().copied().unwrap_or(f64::NAN)
        );
        let _ = writeln!(
            s,
            "| | | | | | | to broker acknowledgement | {:.1} ms | {:.1} ms | {:.1} ms |",
            pct(&l.ack_ms, 0.50),
            pct(&l.ack_ms, 0.99),
            l.ack_ms.last().copied().unwrap_or(f64::NAN)
        );
    }
    let (best_batch, best) = r
        .latency
        .iter()
        .filter(|(_, share, _)| *share == "half")
        .map(|(b, _, l)| (*b, l.pct(0.99)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((0, f64::NAN));
    let ratio = r.peak / r.copy;
    let _ = writeln!(s, "\n## Goals\n");
    let _ = writeln!(s, "| goal | measured | |");
    let _ = writeln!(s, "|---|---|---|");
    let _ = writeln!(
        s,
        "| at least {GOAL_RATE:.0} records/s | {:.0} records/s (batch {}) | {} |",
        r.peak,
        r.peak_batch,
        met(r.peak >= GOAL_RATE)
    );
    let _ = writeln!(
        s,
        "| at least {:.0}% of COPY | {:.0}% ({:.0} of {:.0} records/s) | {} |",
        GOAL_RATIO * 100.0,
        ratio * 100.0,
        r.peak,
        r.copy,
        met(ratio >= GOAL_RATIO)
    );
    let _ = writeln!(
        s,
        "| p99 under {GOAL_P99_MS:.0} ms at half of peak | {best:.1} ms (batch {best_batch}, the best of the three) | {} |",
        met(best < GOAL_P99_MS)
    );
    let _ = writeln!(
        s,
        "| zero duplicates and zero gaps | {} of {} steps clean | {} |",
        r.checks.len() - bad,
        r.checks.len(),
        met(bad == 0)
    );
    let _ = writeln!(
        s,
        "\nThe crash tests (a bridge killed between its database commit and anything else, two bridges on \
         one partition) check duplicates and gaps in the test suite: `scripts/test`."
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_keeps_user_host_and_query() {
        assert_eq!(
            database_url_with_name("postgres://postgres@127.0.0.1:5432/test", "b").unwrap(),
            "postgres://postgres@127.0.0.1:5432/b"
        );
        assert_eq!(
            database_url_with_name("postgres://u:p@h/test?sslmode=disable", "b").unwrap(),
            "postgres://u:p@h/b?sslmode=disable"
        );
        assert_eq!(
            database_url_with_name("postgres://h:5432", "b").unwrap(),
            "postgres://h:5432/b"
        );
    }
}
