//! Real processes on a real kernel network path: every `rumor node` runs in
//! a Linux network namespace of its own (network/netns.rs), so gossip, gRPC
//! and Kafka traffic cross veths and a bridge, and faults (loss, partitions)
//! are nftables rules the kernel applies. A client load runs through the
//! gateways during each scenario (half over the client edge's WebSocket,
//! half over the admin API) and records a history, which network/checker.rs
//! checks against the Kafka topic and what the bridge stored in PostgreSQL.
//!
//! Twelve hosts: gateways gw1 and gw2, forward node fw, workers w1..w9, all
//! on the `test` membership preset (100 ms protocol period). A tansu broker
//! and `rumor bridge` run in the root namespace, the broker on the subnet's
//! .1 address so the nodes reach it.
//!
//! The tests need root, `ip` and `nft`, a tansu binary and PostgreSQL; they
//! run when RUMOR_TEST_NETNS is set (scripts/test sets it when it runs as
//! root) and are skipped, saying so, when it is not. With it set, a missing
//! requirement fails the test. Each scenario prints its figures and appends
//! them to `network-figures.txt` in the test's target temporary directory.
//! Two runs of an hour (`long_*` and `soak_*`) and a large cluster
//! (`large_*`: RUMOR_NETWORK_HOSTS hosts, 100 by default, laid out as two
//! gateways, a forward node and workers) are ignored by default;
//! `scripts/network-long` runs them.

// The harness's parts, in tests/network/ (a test's root file resolves its
// modules beside itself, hence the paths).
#[path = "network/checker.rs"]
mod checker;
mod common;
#[path = "network/netns.rs"]
mod netns;
#[path = "network/predict.rs"]
mod predict;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use checker::{Event, Row};
use common::{TestDb, eventually, nanos};
use netns::{Net, Traffic};
use node::client::AdminClient;
use node::crypto::Key;
use predict::{Prediction, Preset};
use proto::api::{MemberStatus, Members, SendRequest};

// ---- Gating ----

/// Whether the network tests run here. Unset RUMOR_TEST_NETNS: skipped, said
/// loudly. Set: every requirement must hold, or the test fails.
fn enabled(test: &str) -> bool {
    if std::env::var_os("RUMOR_TEST_NETNS").is_none() {
        eprintln!(
            "SKIPPED {test}: RUMOR_TEST_NETNS is not set. These tests need root, `ip` and `nft`; \
             scripts/test sets it when it runs as root."
        );
        return false;
    }
    if let Some(why) = netns::missing_requirements() {
        panic!("RUMOR_TEST_NETNS is set but {why}: run scripts/test as root, which installs nftables");
    }
    true
}

/// The scenarios of one process run one at a time (`cargo test` runs tests
/// on threads; nextest runs each in its own process and serializes them with
/// the `rumor-network` test group of .config/nextest.toml): each is a dozen
/// processes whose failure detection is timed, on a machine of 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `scenario` when the namespace tests are on, alone (see [`SERIAL`]),
/// within `limit`.
async fn alone(test: &str, limit: Duration, scenario: impl Future<Output = ()>) {
    if !enabled(test) {
        return;
    }
    let _serial = SERIAL.lock().await;
    tokio::time::timeout(limit, scenario)
        .await
        .unwrap_or_else(|_| panic!("scenario did not finish within {limit:?}"));
}

/// Prints a scenario's figures and appends them to the figures file.
fn figures(scenario: &str, text: &str) {
    let line = format!("FIGURES {scenario}: {text}");
    eprintln!("{line}");
    let file = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("network-figures.txt");
    if let Ok(mut f) = std::fs::OpenOptions::new().create(true).append(true).open(file) {
        let _ = writeln!(f, "{line}");
    }
}

fn ms(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

// ---- Services in the root namespace: PostgreSQL database, tansu, bridge ----

impl TestDb {
    /// Every row of the bridge's `messages` table, in storage order.
    async fn rows(&self) -> Vec<Row> {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url())
            .await
            .unwrap();
        type Raw = (i64, String, i32, String, Vec<u8>, Option<i32>);
        let raw: Vec<Raw> = sqlx::query_as(
            "SELECT seq, message_id, kind, conversation_key, payload, error_code FROM messages ORDER BY seq",
        )
        .fetch_all(&mut c)
        .await
        .unwrap_or_default(); // before the bridge's migrations: no table yet
        raw.into_iter()
            .map(|(seq, id, kind, conv, payload, error_code)| Row {
                seq,
                id,
                kind,
                conv,
                payload: String::from_utf8_lossy(&payload).into_owned(),
                error_code,
            })
            .collect()
    }

    /// The records the bridge has consumed from the topic (the sum of its
    /// next offsets) and the dead letters it kept.
    async fn consumed_and_dead_letters(&self) -> (i64, i64) {
        let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url())
            .await
            .unwrap();
        let mut one = async |sql: &str| {
            sqlx::query_as::<_, (i64,)>(sql)
                .fetch_one(&mut c)
                .await
                .map_or(0, |r| r.0)
        };
        let consumed = one("SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets").await;
        (consumed, one("SELECT count(*) FROM dead_letters").await)
    }
}

/// A child process killed (SIGKILL) when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A tansu broker of this test, in the root namespace on the subnet's .1.
async fn start_tansu(addr: Ipv4Addr) -> (Killed, String) {
    let tansu = std::env::var("RUMOR_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
    let port = std::net::TcpListener::bind((addr, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("{addr}:{port}");
    let child = Command::new(&tansu)
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .arg("--listener-url")
        .arg(format!("tcp://{listen}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://{listen}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {tansu} (scripts/test installs it and sets RUMOR_TEST_TANSU): {e}"));
    let child = Killed(child);
    eventually("the tansu broker to listen", Duration::from_secs(20), || {
        let listen = listen.clone();
        async move { tokio::net::TcpStream::connect(&listen).await.ok().map(drop) }
    })
    .await;
    (child, listen)
}

/// `rumor bridge` in the root namespace, from `brokers` into `db`, logging
/// at info level into a file of its own (in the temporary directory, kept
/// after the run); also returns its HTTP address and that file.
fn start_bridge(db: &TestDb, brokers: &str, topics: &str) -> (Killed, String, PathBuf) {
    let file = std::env::temp_dir().join(format!("rumor-net-bridge-{}-{}.toml", std::process::id(), nanos()));
    let text = format!(
        "database_url = \"{}\"\nbrokers = \"{brokers}\"\nhttp_bind = \"127.0.0.1:0\"\ngroup_id = \"{topics}-bridge\"\n\
         messages_topic = \"{topics}.messages\"\nforward_topic = \"{topics}.forward\"\npartitions = 2\nbatch_max_wait_ms = 20\n",
        db.url()
    );
    std::fs::write(&file, text).unwrap();
    let log = file.with_extension("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rumor"))
        .args(["bridge", "--config"])
        .arg(&file)
        .env_remove("RUMOR_DATABASE_URL")
        .env_remove("RUMOR_KAFKA_BROKERS")
        .env("RUMOR_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).expect("the bridge's log file"))
        .spawn()
        .expect("spawning rumor bridge");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("the bridge printed nothing").unwrap();
    let http = first
        .split_whitespace()
        .find_map(|w| w.strip_prefix("http="))
        .unwrap_or_else(|| panic!("no http= in the bridge's first line: {first}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (Killed(child), http, log)
}

// ---- Nodes, each in its host's namespace ----

const GOSSIP_PORT: u16 = 7946;
const MESH_PORT: u16 = 7947;
const ADMIN_PORT: u16 = 7948;
const EDGE_PORT: u16 = 8080;

/// The client edge's API key of the load, and the gateways' edge settings:
/// that key, and rate limits the load never reaches (it is not what is
/// tested here).
const EDGE_KEY: &str = "network-test-key";

fn edge_config() -> String {
    format!(
        "[edge]\nmessages_per_second = 100000\nburst = 100000\n[[edge.api_keys]]\nname = \"load\"\nsha256 = \"{}\"\n",
        gateway::key_hash(EDGE_KEY)
    )
}

/// Workers answer in 3 chunks, 2 ms apart, so that replies are in flight
/// when a fault strikes.
const WORKER_ECHO: &str = "[worker.echo]\nchunks = 3\ndelay_ms = 2\n";

/// One node: where it runs, and its process while it runs.
struct Node {
    name: String,
    roles: &'static str,
    host: usize,
    config: PathBuf,
    proc: Option<Running>,
}

struct Running {
    child: Child,
    gossip: String,
    admin: String,
    /// The client edge, on gateways.
    edge: Option<String>,
    /// SIGSTOPped: its admin API does not answer.
    stopped: bool,
}

impl Node {
    /// Starts the process in its host's namespace, bound to `addr` on fixed
    /// ports, and reads where it listens from its first stdout line.
    fn start(&mut self, net: &Net, seeds: &[String], key: &str, preset: Preset) {
        assert!(self.proc.is_none(), "{} is running", self.name);
        let host = &net.hosts[self.host];
        let at = |port: u16| format!("{}:{port}", host.addr);
        let mut cmd = Command::new("ip");
        let (gossip, mesh, admin, edge) = (at(GOSSIP_PORT), at(MESH_PORT), at(ADMIN_PORT), at(EDGE_PORT));
        cmd.args([
            "netns",
            "exec",
            host.ns.as_str(),
            env!("CARGO_BIN_EXE_rumor"),
            "node",
            "--config",
        ])
        .arg(&self.config)
        .args([
            "--name",
            self.name.as_str(),
            "--roles",
            self.roles,
            "--preset",
            preset.name(),
        ])
        .args(["--gossip-bind", gossip.as_str(), "--mesh-bind", mesh.as_str()])
        .args(["--admin-bind", admin.as_str(), "--edge-bind", edge.as_str()])
        .env("RUMOR_KEYS", key)
        .env_remove("RUMOR_SEEDS")
        .env_remove("RUMOR_NAME")
        .env_remove("RUMOR_ADVERTISE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        // `ip netns exec` execs the program: the child is the node itself.
        let mut child = cmd.spawn().expect("spawning ip netns exec rumor node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout to the end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{} did not print its addresses", self.name));
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        self.proc = Some(Running {
            gossip: field("gossip="),
            admin: field("admin="),
            edge: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("edge="))
                .map(str::to_owned),
            child,
            stopped: false,
        });
    }

    fn running(&self) -> &Running {
        self.proc
            .as_ref()
            .unwrap_or_else(|| panic!("{} is not running", self.name))
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(self.running().admin.clone()).with_timeout(Duration::from_secs(3))
    }

    /// `kill -9`.
    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }

    /// SIGTERM: the node leaves the cluster gracefully and exits; killed
    /// if it has not within 10 s.
    fn terminate(&mut self) {
        self.signal("-TERM");
        let mut p = self.proc.take().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while p.child.try_wait().expect("waiting for the node").is_none() {
            if Instant::now() > deadline {
                eprintln!("{} did not exit within 10 s of SIGTERM: killed", self.name);
                let _ = p.child.kill();
                let _ = p.child.wait();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&mut self, sig: &str) {
        let p = self.proc.as_mut().expect("running");
        netns::run(&["kill", sig, &p.child.id().to_string()], None).unwrap();
        p.stopped = sig == "-STOP";
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(p) = &self.proc
            && p.stopped
        {
            // A stopped process dies from SIGKILL too, but be plain about it.
            let _ = netns::run(&["kill", "-CONT", &p.child.id().to_string()], None);
        }
        self.kill();
    }
}

/// The cluster of one scenario. Fields drop in order: nodes, bridge and
/// broker first, then the database, and the network last.
struct Cluster {
    nodes: Vec<Node>,
    _bridge: Killed,
    /// The bridge's HTTP address and its log file.
    bridge_http: String,
    bridge_log: PathBuf,
    _tansu: Killed,
    db: TestDb,
    key: String,
    net: Net,
    /// The broker, and the messages topic the workers publish to.
    brokers: String,
    messages_topic: String,
    /// From the first node's start to one view of all.
    formed_in: Duration,
    /// When that one view was seen.
    formed_at: Instant,
    /// The membership preset every node runs.
    preset: Preset,
    /// Where the checker's failures wait when they must not stop the run
    /// before its other figures are printed (see [`Cluster::defer_verdicts`]);
    /// `None`: the checker panics at once.
    deferred: Option<std::sync::Mutex<Vec<String>>>,
}

/// What a cluster is made of.
struct Setup {
    hosts: usize,
    preset: Preset,
    /// TOML put first in every worker's configuration.
    worker: String,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            hosts: HOSTS,
            preset: Preset::Test,
            worker: String::new(),
        }
    }
}

/// Who runs where: hosts 0 and 1 gateways, 2 the forward node, 3.. workers.
fn roles(host: usize) -> (String, &'static str) {
    match host {
        0 => ("gw1".into(), "gateway"),
        1 => ("gw2".into(), "gateway"),
        2 => ("fw".into(), "forward"),
        h => (format!("w{}", h - 2), "worker"),
    }
}

/// Hosts of the scenarios run in CI.
const HOSTS: usize = 12;

impl Cluster {
    /// Network, database, broker, twelve nodes agreeing on one view, bridge.
    async fn start() -> Cluster {
        Cluster::start_with(Setup::default()).await
    }

    /// The same as `setup` says: its hosts are two gateways, a forward node
    /// and workers.
    async fn start_with(setup: Setup) -> Cluster {
        let Setup { hosts, preset, worker } = setup;
        assert!(hosts > 3, "a cluster has two gateways, a forward node and workers");
        let net = Net::create(hosts);
        let db = TestDb::create("rumor_net").await;
        let (tansu, brokers) = start_tansu(net.ip(1)).await;
        let topics = format!("t{}", nanos());
        let events = format!(
            "[events]\nbrokers = \"{brokers}\"\nmessages_topic = \"{topics}.messages\"\nforward_topic = \"{topics}.forward\"\n\
             partitions = 2\nforward_group = \"{topics}-forward\"\n"
        );
        let key = Key::generate().to_base64();
        let nodes = (0..hosts)
            .map(|h| {
                let (name, roles) = roles(h);
                let text = match roles {
                    "worker" => format!("{worker}{WORKER_ECHO}{events}"),
                    "forward" => events.clone(),
                    _ => edge_config(),
                };
                let config =
                    std::env::temp_dir().join(format!("rumor-net-{}-{name}-{}.toml", std::process::id(), nanos()));
                std::fs::write(&config, text).unwrap();
                Node {
                    name,
                    roles,
                    host: h,
                    config,
                    proc: None,
                }
            })
            .collect();
        let (bridge, bridge_http, bridge_log) = start_bridge(&db, &brokers, &topics);
        let mut c = Cluster {
            nodes,
            _bridge: bridge,
            bridge_http,
            bridge_log,
            _tansu: tansu,
            db,
            key,
            net,
            brokers,
            messages_topic: format!("{topics}.messages"),
            formed_in: Duration::ZERO,
            formed_at: Instant::now(),
            preset,
            deferred: None,
        };
        let started = Instant::now();
        for h in 0..hosts {
            c.start_node(h);
        }
        let t = c
            .one_view(Duration::from_secs(30 + hosts.saturating_sub(HOSTS) as u64))
            .await;
        c.formed_in = started.elapsed().max(t);
        c.formed_at = Instant::now();
        eprintln!(
            "network: {hosts} nodes on {} in one view {} after the first started",
            c.net.cidr(),
            ms(c.formed_in)
        );
        c
    }

    /// Hosts in the cluster.
    fn hosts(&self) -> usize {
        self.nodes.len()
    }

    /// Every host.
    fn all(&self) -> Vec<usize> {
        (0..self.hosts()).collect()
    }

    /// How long to wait between two polls of every host's view: each poll
    /// is a request to every node, so larger clusters are polled less often.
    fn poll_every(&self, base: Duration) -> Duration {
        base * self.hosts().div_ceil(HOSTS) as u32
    }

    /// A time limit of the twelve-host scenarios on the `test` preset,
    /// stretched for larger clusters (doubled at 100 hosts, four times at
    /// 300) and for the `lan` preset's ten times longer protocol period.
    fn limit(&self, base: Duration) -> Duration {
        let period =
            self.preset.config().probe_interval.as_secs_f64() / Preset::Test.config().probe_interval.as_secs_f64();
        (base + base.mul_f64(self.hosts().saturating_sub(HOSTS) as f64 / 96.0)).mul_f64(period)
    }

    /// Starts host `h`'s node with the running gateways as its seeds (the
    /// first gateway starts with none and the others join through it).
    fn start_node(&mut self, h: usize) {
        let seeds: Vec<String> = (0..2)
            .filter(|&g| g != h)
            .filter_map(|g| Some(self.nodes[g].proc.as_ref()?.gossip.clone()))
            .collect();
        self.nodes[h].start(&self.net, &seeds, &self.key, self.preset);
    }

    fn index(&self, name: &str) -> usize {
        self.nodes.iter().position(|n| n.name == name).unwrap()
    }

    fn names(&self, hosts: &[usize]) -> Vec<String> {
        hosts.iter().map(|&h| self.nodes[h].name.clone()).collect()
    }

    /// Hosts whose node runs and answers (not stopped).
    fn answering(&self) -> Vec<usize> {
        (0..self.hosts())
            .filter(|&h| self.nodes[h].proc.as_ref().is_some_and(|p| !p.stopped))
            .collect()
    }

    /// What `hosts` list as suspect, dead or left, with their view
    /// checksums, fetched concurrently (None: no answer). A member a view
    /// does not list is alive in it, or not known; asking only for these
    /// keeps every answer small in a large cluster that mostly agrees.
    async fn views(&self, hosts: &[usize]) -> Vec<Option<Members>> {
        let clients: Vec<AdminClient> = hosts.iter().map(|&h| self.nodes[h].client()).collect();
        futures_util::future::join_all(
            clients
                .iter()
                .map(|c| async move { c.members_in(&NOT_ALIVE).await.ok() }),
        )
        .await
    }

    /// Polls the views of `hosts` every 500 ms for `d`: who listed whom dead
    /// (or left), and how many suspects they showed.
    async fn sightings(&self, hosts: &[usize], d: Duration) -> Sightings {
        let started = Instant::now();
        let mut seen = Sightings::default();
        while started.elapsed() < d {
            for (h, view) in hosts.iter().zip(self.views(hosts).await) {
                let Some(view) = view else { continue };
                for m in &view.members {
                    match m.status() {
                        MemberStatus::Dead | MemberStatus::Left => seen.dead.push(format!(
                            "{} listed {} as {:?} at {}",
                            self.nodes[*h].name,
                            m.name,
                            m.status(),
                            ms(started.elapsed())
                        )),
                        MemberStatus::Suspect => seen.suspect += 1,
                        _ => {}
                    }
                }
            }
            tokio::time::sleep(self.poll_every(Duration::from_millis(500))).await;
        }
        seen
    }

    /// A counter from the /metrics of each of `hosts`, by node name.
    async fn counter(&self, hosts: &[usize], name: &str) -> BTreeMap<String, u64> {
        self.counters(hosts, &[name]).await.pop().unwrap()
    }

    /// The membership counters `names` (as `membership::Stats` names them)
    /// of every host, one read of each: for each name, by node name.
    async fn membership_counters(&self, names: &[&'static str]) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
        let metrics: Vec<String> = names.iter().map(|n| membership_metric(n)).collect();
        let metrics: Vec<&str> = metrics.iter().map(String::as_str).collect();
        names
            .iter()
            .copied()
            .zip(self.counters(&self.all(), &metrics).await)
            .collect()
    }

    /// Counters `names` from the /metrics of each of `hosts`, one read of
    /// every host at about the same moment: for each name, by node name.
    async fn counters(&self, hosts: &[usize], names: &[&str]) -> Vec<BTreeMap<String, u64>> {
        let texts = futures_util::future::join_all(hosts.iter().map(|&h| async move {
            let client = self.nodes[h].client();
            // Retried: under packet loss a request can time out.
            eventually("the node's /metrics", Duration::from_secs(20), || async {
                client.metrics().await.ok()
            })
            .await
        }))
        .await;
        names
            .iter()
            .map(|name| {
                hosts
                    .iter()
                    .zip(&texts)
                    .map(|(&h, text)| (self.nodes[h].name.clone(), metric(text, name)))
                    .collect()
            })
            .collect()
    }

    /// Waits until every running node lists exactly the running nodes as
    /// alive, each at the gossip address it listens on, has joined, and all
    /// report the same ring over the running workers. Returns the time taken.
    async fn one_view(&self, limit: Duration) -> Duration {
        let started = Instant::now();
        let hosts: Vec<usize> = (0..self.hosts()).filter(|&h| self.nodes[h].proc.is_some()).collect();
        let expected: BTreeMap<String, String> = hosts
            .iter()
            .map(|&h| (self.nodes[h].name.clone(), self.nodes[h].running().gossip.clone()))
            .collect();
        let workers = hosts.iter().filter(|&&h| self.nodes[h].roles == "worker").count();
        let clients: Vec<AdminClient> = hosts.iter().map(|&h| self.nodes[h].client()).collect();
        // `eventually` asks again after 20 ms; larger clusters are asked less often.
        let pause = self.poll_every(Duration::from_millis(20)) - Duration::from_millis(20);
        eventually("one view of the running nodes", limit, || async {
            // First the cheap question: does every node have the same view
            // checksum, with no running node listed down? Only then every
            // member and the ring, to check that view is the expected one.
            let agreed = same_view(self.views(&hosts).await, &expected).is_some()
                && one_view_in(
                    futures_util::future::join_all(clients.iter().map(|c| async move {
                        let m = c.members().await.ok()?;
                        let r = c.ring().await.ok()?;
                        Some((m, r))
                    }))
                    .await,
                    &expected,
                    workers,
                )
                .is_some();
            if !agreed {
                tokio::time::sleep(pause).await;
            }
            agreed.then_some(())
        })
        .await;
        started.elapsed()
    }

    /// Polls until each observer lists each of its targets dead; returns
    /// when the first observer listed a target as suspect or dead, and when
    /// the last target was dead everywhere, both from `since`.
    async fn detect(&self, since: Instant, expect: &[(usize, Vec<String>)], limit: Duration) -> Detection {
        let hosts: Vec<usize> = expect.iter().map(|e| e.0).collect();
        let mut first_suspect = None;
        let deadline = Instant::now() + limit;
        loop {
            let views = self.views(&hosts).await;
            let mut all_dead = true;
            for ((_, targets), view) in expect.iter().zip(&views) {
                let Some(view) = view else {
                    all_dead = false;
                    continue;
                };
                for t in targets {
                    let status = view
                        .members
                        .iter()
                        .find(|m| &m.name == t)
                        .map_or(MemberStatus::Alive, |m| m.status());
                    if status != MemberStatus::Alive && first_suspect.is_none() {
                        first_suspect = Some(since.elapsed());
                    }
                    all_dead &= status == MemberStatus::Dead;
                }
            }
            if all_dead {
                return Detection {
                    first_suspect,
                    dead_everywhere: since.elapsed(),
                };
            }
            assert!(
                Instant::now() < deadline,
                "not every observer declared its targets dead within {limit:?}: {expect:?}"
            );
            tokio::time::sleep(self.poll_every(Duration::from_millis(10))).await;
        }
    }

    /// Cuts the network with `cut` and waits until every observer in
    /// `expect` sees its targets dead; lets the sides go on apart for 2 s,
    /// heals and waits for one view; then checks the load's history. Returns
    /// the detection, the time from the heal to one view and the checker's
    /// summary.
    async fn cut_and_heal(
        &self,
        scenario: &str,
        load: Load,
        cut: impl FnOnce(&Net),
        expect: &[(usize, Vec<String>)],
    ) -> (Detection, Duration, checker::Summary) {
        // Times run from when the rules are in place in every host (they
        // go in concurrently; the first host's took effect that much earlier).
        let installing = Instant::now();
        cut(&self.net);
        let at = Instant::now();
        let d = self.detect(at, expect, self.limit(Duration::from_secs(30))).await;
        // Each side goes on alone for a moment, its ring over its own workers.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let healing = Instant::now();
        self.net.heal();
        let healed = Instant::now();
        eprintln!(
            "{scenario}: the cut took {} to put in place, the heal {}",
            ms(at - installing),
            ms(healed - healing)
        );
        self.one_view(self.limit(Duration::from_secs(60))).await;
        let merged = healed.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let summary = self.check(scenario, load).await;
        (d, merged, summary)
    }

    /// Every record in the messages topic now, read from Kafka by a
    /// consumer group of its own (the bridge's reading is what is checked,
    /// so the checker does not rely on it).
    async fn topic(&self) -> Vec<checker::TopicRecord> {
        use events::kafka::{KafkaConfig, KafkaConsumer};
        use events::{ConsumerEvent, TopicPartition};
        let cfg = KafkaConfig::new(self.brokers.clone());
        let group = format!("checker-{}", nanos());
        let mut consumer = KafkaConsumer::new(&cfg, &group, &[&self.messages_topic]).expect("a Kafka consumer");
        // Each partition's end when it was assigned; the topic is read up to
        // there, and then until no more records come.
        let mut ends: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut next: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        let mut records = Vec::new();
        // Generous: after an hour-long run the topic holds a few hundred
        // thousand records.
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let all_read = ends.len() == 2 && ends.iter().all(|(tp, end)| next.get(tp).copied().unwrap_or(0) >= *end);
            assert!(
                Instant::now() < deadline,
                "the checker could not read the topic within 300 s"
            );
            let Ok(ev) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await else {
                // Past the ends, and nothing more for a second: that is all
                // (a broker's end offset may lag the records it serves).
                if all_read {
                    return records;
                }
                continue;
            };
            match ev.expect("reading the topic") {
                ConsumerEvent::Assigned(tps) => {
                    for tp in tps {
                        let (_, high) = consumer.watermarks(&tp).await.expect("the topic's watermarks");
                        ends.insert(tp, high);
                    }
                }
                ConsumerEvent::Revoked(_) => {}
                ConsumerEvent::Record(rec) => {
                    next.insert(rec.tp(), rec.offset + 1);
                    let m = events::codec::decode_message(&rec).expect("a message record");
                    records.push(checker::TopicRecord {
                        id: m.id,
                        kind: m.kind,
                        worker: m.worker,
                    });
                }
            }
        }
    }

    /// The gateways' admin API and client edge addresses, for the client load.
    fn gateways(&self) -> Vec<Gateway> {
        (0..2)
            .map(|h| {
                let r = self.nodes[h].running();
                Gateway {
                    admin: r.admin.clone(),
                    edge: r.edge.clone().expect("a gateway has a client edge"),
                }
            })
            .collect()
    }

    /// From now on the checker's failures are kept, not raised: a long run
    /// prints every figure first, then [`Cluster::verdicts`] fails it.
    fn defer_verdicts(&mut self) {
        self.deferred = Some(std::sync::Mutex::new(Vec::new()));
    }

    /// Panics with the checker failures kept since [`Cluster::defer_verdicts`].
    fn verdicts(&self) {
        let failures = self
            .deferred
            .as_ref()
            .map(|d| std::mem::take(&mut *d.lock().unwrap()))
            .unwrap_or_default();
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    /// Fails the run now, or once its figures are printed (after
    /// [`Cluster::defer_verdicts`]).
    fn fail(&self, why: String) {
        match &self.deferred {
            Some(d) => {
                eprintln!("{why}");
                d.lock().unwrap().push(why);
            }
            None => panic!("{why}"),
        }
    }

    /// Stops the load, waits for the bridge to store what was acknowledged
    /// and runs the checker; fails with the counterexamples (see
    /// [`Cluster::fail`]).
    async fn check(&self, scenario: &str, load: Load) -> checker::Summary {
        let mut history = load.stop().await;
        // Acknowledged means the records were in Kafka (the worker waits for
        // them, or the publisher retries them until they are), so the
        // bridge must get them all. It is given as long as it makes
        // progress (on a saturated machine it may lag far behind), and as
        // long as its own repair of a stuck consumer group takes when it
        // does not: its stall watch (60 s by default) rejoins the group
        // twice, then reads alone, within about four and a half timeouts.
        let stopped = Instant::now();
        let mut progress = (stopped, self.db.consumed_and_dead_letters().await.0);
        let (summary, violations) = loop {
            let rows = self.db.rows().await;
            checker::resolve_unaccepted(&mut history, &rows);
            let (summary, violations) = checker::check(&history, &rows);
            let missing = violations
                .iter()
                .any(|v| matches!(v, checker::Violation::Missing { .. }));
            let consumed = self.db.consumed_and_dead_letters().await.0;
            if consumed != progress.1 {
                progress = (Instant::now(), consumed);
            }
            if !missing || progress.0.elapsed() > Duration::from_secs(270) {
                break (summary, violations);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let caught_up = stopped.elapsed();
        // What the bridge says of itself: its partitions, lag and errors.
        let bridge: Vec<String> = AdminClient::new(&self.bridge_http)
            .metrics()
            .await
            .map(|text| {
                text.lines()
                    .filter(|l| {
                        l.starts_with("rumor_bridge_")
                            && [
                                "assigned", "lag", "records", "errors", "seek", "gaps", "ready", "rejoins", "alone",
                            ]
                            .iter()
                            .any(|w| l.split(['{', ' ']).next().is_some_and(|name| name.contains(w)))
                    })
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_else(|e| vec![format!("no metrics from the bridge: {e}")]);
        // How often a conversation stayed with the worker holding its
        // records not yet in the log, and how often that was given up.
        let running: Vec<usize> = (0..self.hosts())
            .filter(|&h| self.nodes[h].proc.as_ref().is_some_and(|p| !p.stopped))
            .collect();
        let pins: Vec<u64> = self
            .counters(
                &running,
                &[
                    "rumor_mesh_pinned_total",
                    "rumor_mesh_kept_for_records_total",
                    "rumor_mesh_pins_lost_total",
                ],
            )
            .await
            .iter()
            .map(|by_node| by_node.values().sum())
            .collect();
        let rows = self.db.rows().await.len() as i64;
        let (consumed, dead) = self.db.consumed_and_dead_letters().await;
        // The topic itself: every acknowledged message must be there, and a
        // record there twice (one message processed twice, or a producer
        // retry) is listed with the workers that wrote it; the bridge
        // stores each once.
        let topic = self.topic().await;
        let (twice, in_topic) = checker::check_topic(&history, &topic);
        let violations: Vec<checker::Violation> = violations.into_iter().chain(in_topic).collect();
        let twice: Vec<String> = twice.iter().map(ToString::to_string).collect();
        figures(
            scenario,
            &format!(
                "history: {summary}; {rows} rows in PostgreSQL ({} after the load stopped), {consumed} records \
                 consumed by the bridge ({}; its log: {}), {dead} dead letters; {} records in the topic, {} of them \
                 there more than once{}; since the running nodes started, {} messages sent to the worker \
                 holding their conversation's records not yet in the log, {} kept there, {} pins lost",
                ms(caught_up),
                bridge.join(", "),
                self.bridge_log.display(),
                topic.len(),
                twice.len(),
                if twice.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", twice.join(", "))
                },
                pins[0],
                pins[1],
                pins[2],
            ),
        );
        if !violations.is_empty() {
            let shown: Vec<String> = violations
                .iter()
                .take(20)
                .map(|v| {
                    let timelines: Vec<String> = v.ids().iter().map(|id| checker::timeline(&history, id)).collect();
                    format!("  {v}\n{}", timelines.join("      --\n"))
                })
                .collect();
            self.fail(format!(
                "{scenario}: the checker found {} violations (first {}):\n{}",
                violations.len(),
                shown.len(),
                shown.join("\n")
            ));
        }
        let (edge, admin) = acknowledged_by_path(&history);
        if edge == 0 || admin == 0 {
            self.fail(format!(
                "{scenario}: both paths got answers: {edge} acknowledged over the edge, {admin} over the admin API"
            ));
        }
        summary
    }
}

/// The states [`Cluster::views`] asks for.
const NOT_ALIVE: [MemberStatus; 3] = [MemberStatus::Suspect, MemberStatus::Dead, MemberStatus::Left];

/// Some when every node answered, has joined, lists none of `expected` as
/// down, and all have the same view checksum.
fn same_view(down: Vec<Option<Members>>, expected: &BTreeMap<String, String>) -> Option<()> {
    let mut sums = BTreeSet::new();
    for m in down {
        let m = m?;
        if !m.joined || m.members.iter().any(|x| expected.contains_key(&x.name)) {
            return None;
        }
        sums.insert(m.checksum);
    }
    (sums.len() == 1).then_some(())
}

/// Some when every answer lists exactly `expected` alive (name and gossip
/// address), has joined and has `workers` on its ring, and all rings agree.
fn one_view_in(
    answers: Vec<Option<(Members, proto::api::Ring)>>,
    expected: &BTreeMap<String, String>,
    workers: usize,
) -> Option<()> {
    let mut sums = BTreeSet::new();
    for a in answers {
        let (m, r) = a?;
        let alive: BTreeMap<String, String> = m
            .members
            .iter()
            .filter(|x| x.status() == MemberStatus::Alive)
            .map(|x| (x.name.clone(), x.addr.clone()))
            .collect();
        if &alive != expected || !m.joined || r.workers.len() != workers {
            return None;
        }
        sums.insert(r.checksum);
    }
    (sums.len() == 1).then_some(())
}

#[derive(Debug)]
struct Detection {
    first_suspect: Option<Duration>,
    dead_everywhere: Duration,
}

impl Detection {
    fn describe(&self) -> String {
        format!(
            "first suspicion {}, dead everywhere {}",
            self.first_suspect.map_or("not seen".into(), ms),
            ms(self.dead_everywhere)
        )
    }
}

// ---- The client load and its history ----

/// Where the load reaches a gateway.
struct Gateway {
    admin: String,
    edge: String,
}

/// Senders through the gateways, each with conversations of its own,
/// sending one message at a time and recording a history. Half the senders
/// use the client edge (WebSocket, as applications do), half the admin API
/// (`rumor send`); each gateway gets one of each.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    history: Arc<Mutex<Vec<Event>>>,
}

/// Conversations per sender.
const CONVERSATIONS: usize = 4;

static IDS: AtomicU64 = AtomicU64::new(0);

fn new_id() -> String {
    let unix_ms = (nanos() / 1_000_000) as u64;
    let random = nanos() ^ (u128::from(IDS.fetch_add(1, Ordering::Relaxed)) << 64) ^ u128::from(std::process::id());
    proto::message_id(unix_ms, random)
}

/// What every sender shares: when to stop, the history, its clock.
#[derive(Clone)]
struct Recorder {
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<Vec<Event>>>,
    epoch: Instant,
}

impl Recorder {
    fn at(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn push(&self, e: Event) {
        self.history.lock().unwrap().push(e);
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

impl Load {
    fn start(gateways: Vec<Gateway>, senders: usize) -> Load {
        let rec = Recorder {
            stop: Arc::new(AtomicBool::new(false)),
            history: Arc::new(Mutex::new(Vec::new())),
            epoch: Instant::now(),
        };
        let tasks = (0..senders)
            .map(|s| {
                let gw = &gateways[s % gateways.len()];
                if s < senders.div_ceil(2) {
                    tokio::spawn(edge_sender(gw.edge.clone(), s, rec.clone()))
                } else {
                    tokio::spawn(admin_sender(gw.admin.clone(), s, rec.clone()))
                }
            })
            .collect();
        Load {
            stop: rec.stop,
            tasks,
            history: rec.history,
        }
    }

    async fn stop(self) -> Vec<Event> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.expect("a sender panicked");
        }
        std::mem::take(&mut *self.history.lock().unwrap())
    }
}

/// Acknowledged messages of the edge senders and of the admin API senders
/// (the edge senders are the first half; a payload names its sender).
fn acknowledged_by_path(history: &[Event]) -> (usize, usize) {
    let sender: BTreeMap<&str, usize> = history
        .iter()
        .filter_map(|e| match e {
            Event::Sent { id, payload, .. } => {
                let s = payload.strip_prefix('s')?.split_once('-')?.0.parse().ok()?;
                Some((id.as_str(), s))
            }
            _ => None,
        })
        .collect();
    let (mut edge, mut admin) = (0, 0);
    for e in history {
        if let Event::Chunk { id, last: true, .. } = e
            && let Some(&s) = sender.get(id.as_str())
        {
            if s < SENDERS.div_ceil(2) {
                edge += 1;
            } else {
                admin += 1;
            }
        }
    }
    (edge, admin)
}

/// Time a message has in the mesh, and how long a sender waits for its end.
const MESSAGE_TIMEOUT_MS: u32 = 3000;
const CLIENT_WAIT: Duration = Duration::from_secs(6);

/// Sends through a gateway's admin API: the sender picks each message's id.
async fn admin_sender(admin: String, s: usize, rec: Recorder) {
    let gw = AdminClient::new(admin).with_timeout(CLIENT_WAIT);
    let mut i = 0usize;
    while !rec.stopped() {
        let (id, conv, payload) = (
            new_id(),
            format!("conv-{s}-{}", i % CONVERSATIONS),
            format!("s{s}-m{i}"),
        );
        rec.push(Event::Sent {
            id: id.clone(),
            conv: conv.clone(),
            payload: payload.clone(),
            at_ms: rec.at(),
        });
        let req = SendRequest {
            key: conv,
            payload,
            id: Some(id.clone()),
            timeout_ms: Some(MESSAGE_TIMEOUT_MS.into()),
            ..Default::default()
        };
        let result = gw
            .send(&req, |l| {
                rec.push(match &l.error {
                    Some(err) => Event::Failed {
                        id: l.id.clone(),
                        code: err.code,
                        name: err.name.clone(),
                        at_ms: rec.at(),
                    },
                    None => Event::Chunk {
                        id: l.id.clone(),
                        seq: l.seq,
                        data: l.data.clone(),
                        worker: l.worker.clone(),
                        last: l.last,
                        at_ms: rec.at(),
                    },
                })
            })
            .await;
        if let Err(e) = result {
            rec.push(Event::Unknown {
                id,
                why: e.to_string(),
                at_ms: rec.at(),
            });
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

type EdgeSocket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends over one WebSocket to a gateway's client edge, reconnecting when
/// it breaks. The gateway names each message (`accepted`); until it has, the
/// message is known by a provisional id (see [`checker::resolve_unaccepted`]).
/// Chunks are numbered as they arrive, and `done` is recorded as an empty
/// final chunk.
async fn edge_sender(edge: String, s: usize, rec: Recorder) {
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

    let connect = async || -> Result<EdgeSocket, String> {
        let mut req = format!("ws://{edge}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {EDGE_KEY}").parse().unwrap());
        match tokio::time::timeout(CLIENT_WAIT, tokio_tungstenite::connect_async(req)).await {
            Ok(Ok((ws, _))) => Ok(ws),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("connecting timed out".into()),
        }
    };
    let mut ws: Option<EdgeSocket> = None;
    let mut i = 0usize;
    while !rec.stopped() {
        if ws.is_none() {
            match connect().await {
                Ok(new) => ws = Some(new),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            }
        }
        let socket = ws.as_mut().expect("connected");
        let (conv, payload) = (format!("conv-{s}-{}", i % CONVERSATIONS), format!("s{s}-m{i}"));
        let client_id = payload.clone();
        i += 1;
        let sent_at = rec.at();
        let mut id: Option<String> = None;
        let sent = |id: &str| Event::Sent {
            id: id.to_owned(),
            conv: conv.clone(),
            payload: payload.clone(),
            at_ms: sent_at,
        };
        let frame = serde_json::json!({"send": {
            "conversation": conv, "client_id": client_id, "text": payload, "timeout_ms": MESSAGE_TIMEOUT_MS,
        }});
        let mut outcome: Result<(), String> = socket
            .send(Message::text(frame.to_string()))
            .await
            .map_err(|e| format!("sending: {e}"));
        let deadline = tokio::time::Instant::now() + CLIENT_WAIT;
        let mut chunks = 0u64;
        while outcome.is_ok() {
            let f = match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_) => Err("no end within the client's wait".to_owned()),
                Ok(None) => Err("connection closed".to_owned()),
                Ok(Some(Err(e))) => Err(e.to_string()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    serde_json::from_str::<serde_json::Value>(&t).map_err(|e| format!("a frame that is not JSON: {e}"))
                }
                Ok(Some(Ok(_))) => continue,
            };
            let f = match f {
                Ok(f) => f,
                Err(e) => {
                    outcome = Err(e);
                    break;
                }
            };
            let Some((kind, body)) = f.as_object().and_then(|o| o.iter().next()) else {
                outcome = Err(format!("a frame of no kind: {f}"));
                break;
            };
            if body["client_id"].as_str() != Some(client_id.as_str()) {
                continue; // the welcome, or a late frame of an earlier message
            }
            let text = |k: &str| body[k].as_str().unwrap_or_default().to_owned();
            // The gateway says `accepted` before anything else about a
            // message; should that ever change, the history still has it sent.
            if id.is_none() && matches!(kind.as_str(), "chunk" | "done") {
                rec.push(sent(&text("message_id")));
                id = Some(text("message_id"));
            }
            match kind.as_str() {
                "accepted" => {
                    let mesh_id = text("message_id");
                    rec.push(sent(&mesh_id));
                    id = Some(mesh_id);
                }
                "chunk" => {
                    rec.push(Event::Chunk {
                        id: text("message_id"),
                        seq: chunks,
                        data: text("text"),
                        worker: text("worker"),
                        last: false,
                        at_ms: rec.at(),
                    });
                    chunks += 1;
                }
                "done" => {
                    rec.push(Event::Chunk {
                        id: text("message_id"),
                        seq: chunks,
                        data: String::new(),
                        worker: text("worker"),
                        last: true,
                        at_ms: rec.at(),
                    });
                    break;
                }
                "error" => {
                    let mesh_id = text("message_id");
                    let mesh_id = match (&id, mesh_id.is_empty()) {
                        (Some(id), _) => id.clone(),
                        (None, false) => {
                            rec.push(sent(&mesh_id));
                            id = Some(mesh_id.clone());
                            mesh_id
                        }
                        (None, true) => {
                            let provisional = format!("{}{client_id}", checker::UNACCEPTED);
                            rec.push(sent(&provisional));
                            id = Some(provisional.clone());
                            provisional
                        }
                    };
                    rec.push(Event::Failed {
                        id: mesh_id,
                        code: 0,
                        name: text("code"),
                        at_ms: rec.at(),
                    });
                    break;
                }
                _ => {}
            }
        }
        if let Err(why) = outcome {
            let id = id.unwrap_or_else(|| {
                let provisional = format!("{}{client_id}", checker::UNACCEPTED);
                rec.push(sent(&provisional));
                provisional
            });
            rec.push(Event::Unknown {
                id,
                why,
                at_ms: rec.at(),
            });
            // A fresh connection: frames still to come on this one would be
            // about a message whose end was already recorded.
            ws = None;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

const SENDERS: usize = 4;

/// A cluster with the client load running for 2 s.
async fn loaded() -> (Cluster, Load) {
    let c = Cluster::start().await;
    let load = Load::start(c.gateways(), SENDERS);
    tokio::time::sleep(Duration::from_secs(2)).await;
    (c, load)
}

/// How much `after` exceeds `before`, summed over the nodes (counters by node).
fn increase(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> u64 {
    after.iter().map(|(k, v)| v.saturating_sub(before[k])).sum()
}

/// What the nodes' views showed, polled every 500 ms.
#[derive(Debug, Default)]
struct Sightings {
    /// A member listed dead or left, by whom and when.
    dead: Vec<String>,
    /// Suspect members seen, summed over the polls.
    suspect: usize,
}

/// Fails if a poll saw a member dead or left, or a node's count of failure
/// declarations went up (`after` against `before`, by node).
fn no_member_declared_dead(seen: &Sightings, after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) {
    assert!(
        seen.dead.is_empty(),
        "a healthy member was declared dead: {:?}",
        seen.dead
    );
    assert_eq!(
        increase(after, before),
        0,
        "no node declares a healthy member dead: {after:?} (before {before:?})"
    );
}

/// The figures of a cut and its heal, beside the simulator's prediction
/// (time until `seen`, time to one view after repair).
fn split_figures(scenario: &str, fault: &str, seen: &str, d: &Detection, merged: Duration, sim: Prediction) {
    let (sim_split, sim_heal, seeds) = sim;
    figures(
        scenario,
        &format!(
            "{fault}: {}; after heal one view in {}. Simulator (median of {seeds} seeds): {seen} after {} ({:.2}x \
             real), one view {} after repair ({:.2}x real)",
            d.describe(),
            ms(merged),
            ms(sim_split),
            d.dead_everywhere.as_secs_f64() / sim_split.as_secs_f64(),
            ms(sim_heal),
            merged.as_secs_f64() / sim_heal.as_secs_f64()
        ),
    );
}

impl Cluster {
    /// kill -9 of `victim`, until every other running node lists it dead;
    /// then restarted at the same address and ports, until one view. The
    /// detection, and the time from the restart to one view.
    async fn crash_and_restart(&mut self, victim: &str) -> (Detection, Duration) {
        let h = self.index(victim);
        let killed = Instant::now();
        self.nodes[h].kill();
        let others: Vec<(usize, Vec<String>)> = self
            .answering()
            .into_iter()
            .map(|o| (o, vec![victim.to_owned()]))
            .collect();
        let d = self.detect(killed, &others, self.limit(Duration::from_secs(20))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let restarted = Instant::now();
        self.start_node(h);
        self.one_view(self.limit(Duration::from_secs(30))).await;
        (d, restarted.elapsed())
    }
}

/// The figures of a crash and restart, beside the simulator's prediction
/// for the same cluster size.
fn crash_figures(scenario: &str, victim: &str, c: &Cluster, d: &Detection, rejoin: Duration) {
    let (sim_first, sim_all, seeds) = predict::crash(c.preset, c.hosts());
    figures(
        scenario,
        &format!(
            "kill -9 {victim}: {}; restarted, one view after {}. Simulator ({} nodes, {} preset, median of {seeds} \
             seeds): first suspicion {}, dead everywhere {} ({:.2}x real)",
            d.describe(),
            ms(rejoin),
            c.hosts(),
            c.preset.name(),
            ms(sim_first),
            ms(sim_all),
            d.dead_everywhere.as_secs_f64() / sim_all.as_secs_f64()
        ),
    );
}

// ---- Scenarios ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_crash_kill9_worker_dead_everywhere_then_rejoins() {
    alone(
        "scenario_crash_kill9_worker_dead_everywhere_then_rejoins",
        Duration::from_secs(120),
        async {
            let (mut c, load) = loaded().await;

            let (d, rejoin) = c.crash_and_restart("w5").await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let summary = c.check("crash", load).await;
            assert!(summary.by_worker.contains_key("w5"), "w5 answered some messages");
            crash_figures("crash", "w5", &c, &d, rejoin);
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_loss_10_percent_everywhere_declares_no_healthy_member_dead() {
    alone(
        "scenario_loss_10_percent_everywhere_declares_no_healthy_member_dead",
        Duration::from_secs(180),
        async {
            loss_everywhere("loss", Duration::from_secs(60)).await;
        },
    )
    .await;
}

/// How long the long runs last: RUMOR_NETWORK_MINUTES, an hour by default.
fn long_run() -> Duration {
    let minutes: f64 = std::env::var("RUMOR_NETWORK_MINUTES")
        .ok()
        .map(|m| m.parse().expect("RUMOR_NETWORK_MINUTES is a number of minutes"))
        .unwrap_or(60.0);
    Duration::from_secs_f64(minutes * 60.0)
}

/// The loss scenario for an hour (scripts/network-long): the goal is no
/// healthy member declared dead, and the figure is false positives per
/// node-hour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour long; scripts/network-long runs it"]
async fn long_loss_10_percent_everywhere_for_an_hour_declares_no_healthy_member_dead() {
    let lasts = long_run();
    alone(
        "long_loss_10_percent_everywhere_for_an_hour_declares_no_healthy_member_dead",
        lasts + Duration::from_secs(600),
        async {
            loss_everywhere("long loss", lasts).await;
        },
    )
    .await;
}

/// 10% inbound loss on every host for `loss_for`, with the client load
/// running; before it, 10 s of the converged cluster with nothing wrong.
/// Reports gossip bytes of both beside the simulator's, and fails if any
/// node declares a healthy member dead or the checker finds a violation.
async fn loss_everywhere(scenario: &str, loss_for: Duration) {
    let c = Cluster::start().await;
    c.quiet_gossip(scenario, QUIET_FOR).await;
    let load = Load::start(c.gateways(), SENDERS);
    let lossy = c.lossy(loss_for).await;
    let summary = c.check(scenario, load).await;
    lossy.report(scenario, &format!("{} acknowledged", summary.acknowledged));
    lossy.assert_no_member_declared_dead();
    c.one_view(Duration::from_secs(10)).await;
}

/// How long the converged cluster's gossip is measured with nothing wrong.
const QUIET_FOR: Duration = Duration::from_secs(10);

/// The membership counters (as `membership::Stats` names them; the metric
/// is `rumor_membership_<name>_total`) compared with the simulator's over a
/// period of loss, to trace where real and simulated gossip differ.
const COMPARED: [&str; 9] = [
    "bytes_out",
    "packets_out",
    "probes",
    "probe_failures",
    "indirect_probes",
    "suspicions",
    "refutations",
    "push_pulls",
    "failures_declared",
];

/// What the hosts' views and counters showed over a period of loss.
struct Lossy {
    hosts: usize,
    lasted: Duration,
    seen: Sightings,
    /// Each of [`COMPARED`] before and after, by node.
    before: BTreeMap<&'static str, BTreeMap<String, u64>>,
    after: BTreeMap<&'static str, BTreeMap<String, u64>>,
    preset: Preset,
    planned: Duration,
}

fn membership_metric(name: &str) -> String {
    format!("rumor_membership_{name}_total")
}

/// `name real/simulated (ratio)` per node-hour for each of `names`, from how
/// much each counter `rose` over `node_hours`; no ratio where the simulator
/// counted none.
fn per_node_hour(names: &[&str], rose: impl Fn(&str) -> u64, node_hours: f64, sim: &predict::LossPrediction) -> String {
    names
        .iter()
        .map(|&name| {
            let real = rose(name) as f64 / node_hours;
            let predicted = sim.per_node_hour.get(name).copied().unwrap_or(0.0);
            let ratio = if predicted > 0.0 {
                format!(" ({:.2}x)", real / predicted)
            } else {
                String::new()
            };
            format!("{name} {real:.0}/{predicted:.0}{ratio}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Cluster {
    /// Measures the gossip of the cluster as it is for `d` and reports it
    /// beside the simulator's for the same size; returns bytes per node per second.
    async fn quiet_gossip(&self, scenario: &str, d: Duration) -> f64 {
        // As the simulated cluster is: settled, past the first full state
        // exchange every node runs after it joins.
        tokio::time::sleep_until((self.formed_at + self.preset.settle()).into()).await;
        // Bytes, and the counters that say where they went.
        const QUIET: [&str; 5] = ["bytes_out", "packets_out", "probes", "push_pulls", "digest_syncs"];
        let from = self.membership_counters(&QUIET).await;
        let started = Instant::now();
        tokio::time::sleep(d).await;
        let to = self.membership_counters(&QUIET).await;
        let lasted = started.elapsed();
        let rose = |name: &str| increase(&to[name], &from[name]);
        let quiet = rose("bytes_out") as f64 / self.hosts() as f64 / lasted.as_secs_f64();
        let sim = predict::loss(self.preset, self.hosts(), 0.0, d);
        let node_hours = self.hosts() as f64 * lasted.as_secs_f64() / 3600.0;
        let counters = per_node_hour(&QUIET[1..], rose, node_hours, &sim);
        figures(
            &format!("{scenario} (quiet before it)"),
            &format!(
                "converged {} hosts, nothing wrong, for {}: gossip {quiet:.0} bytes per node per second. Simulator \
                 ({} seeds): {:.0} bytes per node per second ({:.2}x real). Per node-hour, real/simulated: {}",
                self.hosts(),
                ms(lasted),
                sim.seeds,
                sim.bytes,
                quiet / sim.bytes,
                counters
            ),
        );
        quiet
    }

    /// 10% of every IPv4 packet every host receives is lost for `d` (gossip,
    /// gRPC, Kafka and the test's own admin requests alike); then healed.
    async fn lossy(&self, d: Duration) -> Lossy {
        let all = self.all();
        let before = self.membership_counters(&COMPARED).await;
        self.net.loss_everywhere(10, Traffic::All);
        let started = Instant::now();
        let seen = self.sightings(&all, d).await;
        self.net.heal();
        let lasted = started.elapsed();
        // Read after the heal, a moment past the loss.
        let after = self.membership_counters(&COMPARED).await;
        Lossy {
            hosts: self.hosts(),
            lasted,
            seen,
            before,
            after,
            preset: self.preset,
            planned: d,
        }
    }
}

impl Lossy {
    /// How much counter `name` (one of [`COMPARED`]) rose, summed over the nodes.
    fn increase(&self, name: &str) -> u64 {
        increase(&self.after[name], &self.before[name])
    }

    /// Prints the figures beside the simulator's for the planned length
    /// (simulated now: after the checker, not while the load runs).
    /// `acknowledged` says what the load got meanwhile.
    fn report(&self, scenario: &str, acknowledged: &str) {
        let sim = &predict::loss(self.preset, self.hosts, 0.10, self.planned);
        let failures = self.increase("failures_declared");
        let suspicions = self.increase("suspicions");
        // Gossip payload each node produced per second (before encryption).
        let bytes = self.increase("bytes_out") as f64 / self.hosts as f64 / self.lasted.as_secs_f64();
        let node_hours = self.hosts as f64 * self.lasted.as_secs_f64() / 3600.0;
        let compared = per_node_hour(&COMPARED, |name| self.increase(name), node_hours, sim);
        figures(
            scenario,
            &format!(
                "10% inbound loss on all {} hosts for {:.1} min ({node_hours:.2} node-hours): {suspicions} suspicions \
                 ({:.0} per node-hour), {} refutations, {failures} members declared dead ({:.2} false positives per \
                 node-hour), {} suspect sightings in polls of every view; {acknowledged}; gossip {bytes:.0} bytes \
                 per node per second. Simulator (10% datagram loss, {} seeds of {:.1} min): {} healthy members \
                 declared dead; gossip {:.0} bytes per node per second ({:.2}x real). Per node-hour, real/simulated: {}",
                self.hosts,
                self.lasted.as_secs_f64() / 60.0,
                suspicions as f64 / node_hours,
                self.increase("refutations"),
                failures as f64 / node_hours,
                self.seen.suspect,
                sim.seeds,
                self.planned.as_secs_f64() / 60.0,
                sim.declared,
                sim.bytes,
                bytes / sim.bytes,
                compared
            ),
        );
    }

    fn assert_no_member_declared_dead(&self) {
        let name = "failures_declared";
        no_member_declared_dead(&self.seen, &self.after[name], &self.before[name]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_partition_50_50_each_side_declares_the_other_dead_then_heals() {
    alone(
        "scenario_partition_50_50_each_side_declares_the_other_dead_then_heals",
        Duration::from_secs(150),
        async {
            let (c, load) = loaded().await;

            // gw1, fw, w1..w4 | gw2, w5..w9: a gateway and workers on each side.
            let a: Vec<usize> = vec![0, 2, 3, 4, 5, 6];
            let b: Vec<usize> = vec![1, 7, 8, 9, 10, 11];
            let expect: Vec<(usize, Vec<String>)> = a
                .iter()
                .map(|&h| (h, c.names(&b)))
                .chain(b.iter().map(|&h| (h, c.names(&a))))
                .collect();
            let (d, merged, _) = c
                .cut_and_heal("partition", load, |net| net.partition(&a, &b), &expect)
                .await;
            let sim = predict::partition(c.preset, &a, &b);
            split_figures(
                "partition",
                "two-way 6|6 partition",
                "each side sees the other dead",
                &d,
                merged,
                sim,
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_a_cut_link_and_a_lossy_one_are_probed_around_and_declare_no_member_dead() {
    const FAULT_FOR: Duration = Duration::from_secs(30);
    alone(
        "scenario_a_cut_link_and_a_lossy_one_are_probed_around_and_declare_no_member_dead",
        Duration::from_secs(150),
        async {
            let c = Cluster::start().await;
            let all = c.all();
            let before = c.counter(&all, "rumor_membership_failures_declared_total").await;
            let load = Load::start(c.gateways(), SENDERS);

            // w1 and w2 cannot reach each other at all, and half of what w3
            // sends to gw1 is lost; every other link is healthy, so indirect
            // probes through the others find them alive.
            c.net.link_loss(3, 4, 100);
            c.net.link_loss(4, 3, 100);
            c.net.link_loss(5, 0, 50);
            let seen = c.sightings(&all, FAULT_FOR).await;
            c.net.heal();
            let after = c.counter(&all, "rumor_membership_failures_declared_total").await;
            let failures = increase(&after, &before);
            let summary = c.check("cut link", load).await;
            let (sim_declared, seeds) = predict::cut_link(c.preset, HOSTS, 3, 4, FAULT_FOR);
            figures(
                "cut link",
                &format!(
                    "w1-w2 cut both ways and 50% loss from w3 to gw1 for {}: {failures} members declared dead; {} \
                     acknowledged. Simulator (the w1-w2 cut alone, {seeds} seeds of the same length): {sim_declared} \
                     healthy members declared dead",
                    ms(FAULT_FOR),
                    summary.acknowledged
                ),
            );
            no_member_declared_dead(&seen, &after, &before);
            c.one_view(Duration::from_secs(10)).await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_one_way_partition_the_unheard_side_is_declared_dead_then_all_rejoin() {
    alone(
        "scenario_one_way_partition_the_unheard_side_is_declared_dead_then_all_rejoin",
        Duration::from_secs(150),
        async {
            let (c, load) = loaded().await;

            // w1 and w2 still hear everyone, but nobody hears them: their
            // acks, refutations and replies are lost on the way out.
            let a: Vec<usize> = vec![3, 4];
            let b: Vec<usize> = (0..HOSTS).filter(|h| !a.contains(h)).collect();
            let expect: Vec<(usize, Vec<String>)> = b.iter().map(|&h| (h, c.names(&a))).collect();
            let (d, merged, _) = c
                .cut_and_heal("one-way partition", load, |net| net.partition_one_way(&a, &b), &expect)
                .await;
            let sim = predict::one_way(c.preset, &a, &b);
            split_figures(
                "one-way partition",
                "2 workers unheard by the other 10",
                "the other 10 see both dead",
                &d,
                merged,
                sim,
            );
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_restart_at_a_new_address_everyone_sees_it_alive_there() {
    alone("scenario_restart_at_a_new_address_everyone_sees_it_alive_there", Duration::from_secs(120), async {
        let (mut c, load) = loaded().await;

        let victim = c.index("w3");
        let old = c.nodes[victim].running().gossip.clone();
        // The host loses its address; its process keeps running, cut off.
        let lost = Instant::now();
        c.net.drop_address(c.nodes[victim].host);
        tokio::time::sleep(Duration::from_secs(1)).await;
        // It comes back with another, and the service restarts bound to it.
        let new = c.net.add_address(c.nodes[victim].host);
        c.nodes[victim].kill();
        let restarted = Instant::now();
        c.start_node(victim);
        let gossip = c.nodes[victim].running().gossip.clone();
        assert_eq!(gossip, format!("{new}:{GOSSIP_PORT}"));
        // one_view checks every member's address: w3 alive at the new one.
        c.one_view(Duration::from_secs(30)).await;
        let seen = restarted.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        c.check("readdress", load).await;
        figures(
            "readdress",
            &format!(
                "w3 {old} -> {gossip} (address gone {} before the restart): alive at the new address everywhere {} after the restart",
                ms(restarted - lost),
                ms(seen)
            ),
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_sigstop_worker_is_suspected_then_converges_after_sigcont() {
    const STOPPED_FOR: Duration = Duration::from_secs(3);
    alone(
        "scenario_sigstop_worker_is_suspected_then_converges_after_sigcont",
        Duration::from_secs(120),
        async {
            let mut c = Cluster::start().await;
            let victim = c.index("w7");
            let others: Vec<usize> = (0..HOSTS).filter(|&h| h != victim).collect();
            let before_failures = c.counter(&others, "rumor_membership_failures_declared_total").await;
            let before_refutations = c.counter(&[victim], "rumor_membership_refutations_total").await;
            let load = Load::start(c.gateways(), SENDERS);
            tokio::time::sleep(Duration::from_secs(2)).await;

            let stopped = Instant::now();
            c.nodes[victim].signal("-STOP");
            // Watch the others' views of w7 while it is stopped.
            let mut first_suspect = None;
            let mut first_dead_somewhere = None;
            let mut dead_everywhere = None;
            while stopped.elapsed() < STOPPED_FOR {
                let views = c.views(&others).await;
                let statuses: Vec<MemberStatus> = views
                    .iter()
                    .flatten()
                    .map(|v| {
                        v.members
                            .iter()
                            .find(|m| m.name == "w7")
                            .map_or(MemberStatus::Alive, |m| m.status())
                    })
                    .collect();
                let t = stopped.elapsed();
                if statuses.iter().any(|s| *s != MemberStatus::Alive) {
                    first_suspect.get_or_insert(t);
                }
                if statuses.contains(&MemberStatus::Dead) {
                    first_dead_somewhere.get_or_insert(t);
                }
                if statuses.len() == others.len() && statuses.iter().all(|s| *s == MemberStatus::Dead) {
                    dead_everywhere.get_or_insert(t);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            c.nodes[victim].signal("-CONT");
            let resumed = Instant::now();
            c.one_view(Duration::from_secs(30)).await;
            let converged = resumed.elapsed();
            let failures: u64 = c
                .counter(&others, "rumor_membership_failures_declared_total")
                .await
                .iter()
                .map(|(k, v)| v - before_failures[k])
                .sum();
            let refutations =
                c.counter(&[victim], "rumor_membership_refutations_total").await["w7"] - before_refutations["w7"];
            tokio::time::sleep(Duration::from_secs(1)).await;
            c.check("sigstop", load).await;
            let opt = |d: Option<Duration>| d.map_or("never".into(), ms);
            figures(
                "sigstop",
                &format!(
                    "SIGSTOP w7 for {}: first suspicion {}, first dead somewhere {}, dead everywhere {}; \
                 {failures} declarations of death, {refutations} refutations by w7; one view {} after SIGCONT",
                    ms(STOPPED_FOR),
                    opt(first_suspect),
                    opt(first_dead_somewhere),
                    opt(dead_everywhere),
                    ms(converged)
                ),
            );
            assert!(first_suspect.is_some(), "a stopped worker is suspected");
        },
    )
    .await;
}

/// Resident memory (KiB) and open file descriptors of a process, from /proc.
fn resources(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// Resident memory (KiB) and descriptors of each watched process, and when.
type Sample = (Duration, BTreeMap<String, (u64, usize)>);

/// The soak's workers remember this many completed messages (the default is
/// 10,000): at the soak's load the less busy workers take most of an hour
/// to fill a window of the default size, and its filling, bounded and by
/// design, would pass for growth. With 1,000 it is full within minutes, so
/// the last half measures what a leak would add.
const SOAK_DEDUP_WINDOW: usize = 1000;

/// The resources of each of `watched` (name, pid) now, as taken at `at`.
fn sample(at: Duration, watched: &[(String, u32)]) -> Sample {
    let by_name = watched
        .iter()
        .map(|(who, pid)| {
            let r = resources(*pid).unwrap_or_else(|| panic!("{who} (pid {pid}) is gone"));
            (who.clone(), r)
        })
        .collect();
    (at, by_name)
}

/// The median of the samples of `who` taken within `window` of `at`.
fn median_near(samples: &[Sample], who: &str, at: Duration, window: Duration) -> (u64, usize) {
    let near: Vec<(u64, usize)> = samples
        .iter()
        .filter(|(t, _)| t.abs_diff(at) <= window)
        .filter_map(|(_, m)| m.get(who).copied())
        .collect();
    assert!(!near.is_empty(), "no sample of {who} near {at:?}");
    let mut rss: Vec<u64> = near.iter().map(|s| s.0).collect();
    let mut fds: Vec<usize> = near.iter().map(|s| s.1).collect();
    rss.sort_unstable();
    fds.sort_unstable();
    (rss[rss.len() / 2], fds[fds.len() / 2])
}

/// An hour of client load with churn (scripts/network-long): every few
/// minutes (RUMOR_SOAK_CHURN_SECS, 180 by default) one of w7, w8 and w9 in
/// turn is killed with SIGKILL or stopped with SIGTERM, and restarted 5 s
/// later. The processes that run throughout (both gateways, the forward
/// node, w1..w6, the bridge and the broker) are sampled every 30 s; the
/// resident memory and descriptors of the rumor processes must not grow by
/// 5% or more over the last half of the run, and the checker must pass over
/// the whole history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "an hour long; scripts/network-long runs it"]
async fn soak_an_hour_of_load_and_churn_memory_and_descriptors_stay_flat() {
    let lasts = long_run();
    let churn_every = Duration::from_secs(
        std::env::var("RUMOR_SOAK_CHURN_SECS")
            .ok()
            .map(|s| s.parse().expect("RUMOR_SOAK_CHURN_SECS is a number of seconds"))
            .unwrap_or(180),
    );
    const SAMPLE_EVERY: Duration = Duration::from_secs(30);
    alone(
        "soak_an_hour_of_load_and_churn_memory_and_descriptors_stay_flat",
        lasts + Duration::from_secs(900),
        async {
            let mut c = Cluster::start_with(Setup {
                worker: format!("[worker]\ndedup_window = {SOAK_DEDUP_WINDOW}\n"),
                ..Setup::default()
            })
            .await;
            let load = Load::start(c.gateways(), SENDERS);
            let churned: Vec<usize> = ["w7", "w8", "w9"].iter().map(|n| c.index(n)).collect();
            let steady: Vec<usize> = (0..HOSTS).filter(|h| !churned.contains(h)).collect();
            let mut watched: Vec<(String, u32)> = steady
                .iter()
                .map(|&h| (c.nodes[h].name.clone(), c.nodes[h].running().child.id()))
                .collect();
            watched.push(("bridge".into(), c._bridge.0.id()));
            watched.push(("tansu".into(), c._tansu.0.id()));
            let all = c.all();
            let before_failures = c.counter(&all, "rumor_membership_failures_declared_total").await;

            let steady_workers: Vec<usize> = steady.iter().copied().filter(|&h| c.nodes[h].roles == "worker").collect();
            let mut windows_at_middle = None;

            let started = Instant::now();
            let mut samples: Vec<Sample> = Vec::new();
            let (mut next_sample, mut next_churn) = (Duration::ZERO, churn_every);
            let mut rejoins: Vec<Duration> = Vec::new();
            let mut churns = 0usize;
            while started.elapsed() < lasts {
                let now = started.elapsed();
                if now >= next_sample {
                    samples.push(sample(now, &watched));
                    next_sample = now + SAMPLE_EVERY;
                }
                // Before the first of the samples the middle's median is taken from.
                if windows_at_middle.is_none() && now >= lasts / 2 - Duration::from_secs(60).min(lasts / 8) {
                    windows_at_middle = Some(c.counter(&steady_workers, "rumor_worker_dedup_window_messages").await);
                }
                // A churn takes up to a minute; none starts that could not end in time.
                if now >= next_churn && now + Duration::from_secs(70) < lasts {
                    let victim = churned[churns % churned.len()];
                    // Alternately a crash and a graceful leave.
                    if churns.is_multiple_of(2) {
                        c.nodes[victim].kill();
                    } else {
                        c.nodes[victim].terminate();
                    }
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    let restarted = Instant::now();
                    c.start_node(victim);
                    c.one_view(Duration::from_secs(60)).await;
                    rejoins.push(restarted.elapsed());
                    churns += 1;
                    next_churn += churn_every;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            let ran = started.elapsed();
            samples.push(sample(ran, &watched));
            let after_failures = c.counter(&all, "rumor_membership_failures_declared_total").await;
            let remembered = c
                .counters(
                    &steady_workers,
                    &[
                        "rumor_worker_dedup_window_messages",
                        "rumor_worker_dedup_window_reply_bytes",
                        "rumor_worker_event_log_bytes",
                    ],
                )
                .await;
            let summary = c.check("soak", load).await;

            // Growth over the last half: the median of the samples near the
            // end against those near the middle (within a minute, or an eighth
            // of the run if it is short, so the two sets never overlap).
            let window = Duration::from_secs(60).min(ran / 8);
            let mut lines = Vec::new();
            let mut grew = Vec::new();
            for (who, _) in &watched {
                let (first_rss, first_fds) = samples[0].1[who];
                let (mid_rss, mid_fds) = median_near(&samples, who, ran / 2, window);
                let (end_rss, end_fds) = median_near(&samples, who, ran, window);
                let rss_growth = end_rss as f64 / mid_rss as f64 - 1.0;
                let fd_growth = end_fds as f64 / mid_fds as f64 - 1.0;
                lines.push(format!(
                    "{who} {first_rss}/{mid_rss}/{end_rss} KiB ({:+.1}%), {first_fds}/{mid_fds}/{end_fds} fds ({:+.1}%)",
                    rss_growth * 100.0,
                    fd_growth * 100.0
                ));
                // The broker keeps every record in memory by design: reported
                // only. Descriptors come and go with connections: a couple
                // more is not growth.
                let fds_grew = end_fds as f64 >= (mid_fds as f64 * 1.05).max(mid_fds as f64 + 3.0);
                if who != "tansu" && (rss_growth >= 0.05 || fds_grew) {
                    grew.push(who.clone());
                }
            }
            rejoins.sort();
            figures(
                "soak",
                &format!(
                    "{:.1} min of load with {churns} churns (one of w7..w9 every {} s, alternately kill -9 and SIGTERM, \
                     restarted 5 s later; one view again after a median {} and at most {}); {} failure declarations \
                     counted by the nodes (kill -9 is declared, SIGTERM is a leave; a restarted node counts from \
                     zero); {} acknowledged. What the steady workers remember at the end (de-duplication window of \
                     {SOAK_DEDUP_WINDOW}: messages, reply bytes; event log bytes): {}. Resident memory and \
                     descriptors, start/middle/end (end against middle): {}",
                    ran.as_secs_f64() / 60.0,
                    churn_every.as_secs(),
                    rejoins.get(rejoins.len() / 2).map_or("-".into(), |d| ms(*d)),
                    rejoins.last().map_or("-".into(), |d| ms(*d)),
                    increase(&after_failures, &before_failures),
                    summary.acknowledged,
                    steady_workers
                        .iter()
                        .map(|&h| {
                            let n = &c.nodes[h].name;
                            format!("{n} {}, {}; {}", remembered[0][n], remembered[1][n], remembered[2][n])
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                    lines.join("; ")
                ),
            );
            // The half that is measured must begin with the bounded caches
            // full, or their filling would pass for growth.
            let windows = windows_at_middle.expect("the middle was reached");
            assert!(
                windows.values().all(|&n| n == SOAK_DEDUP_WINDOW as u64),
                "the workers' de-duplication windows were not full by the middle of the run, so the last half \
                 measures their filling: {windows:?}; run longer"
            );
            assert!(grew.is_empty(), "grew by 5% or more over the last half: {grew:?}\n{}", lines.join("\n"));
        },
    )
    .await;
}

/// The 1, 5 and 15 minute load averages, as /proc/loadavg gives them.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Hosts of the large run: RUMOR_NETWORK_HOSTS, 100 by default.
fn large_hosts() -> usize {
    std::env::var("RUMOR_NETWORK_HOSTS")
        .ok()
        .map(|n| n.parse().expect("RUMOR_NETWORK_HOSTS is a number of hosts"))
        .unwrap_or(100)
}

/// A large cluster (RUMOR_NETWORK_HOSTS hosts, 100 by default) on one
/// network and the `lan` preset, with the client load running throughout:
/// formation, the gossip of the quiet cluster, a worker killed and
/// restarted, 10% loss on every host for RUMOR_NETWORK_MINUTES, and a 50/50
/// partition and its heal; the checker runs at the end. Each figure stands
/// beside the simulator's for the same cluster size and preset. (The
/// twelve-host scenarios run the `test` preset, 100 ms a protocol period;
/// at this size its tenfold traffic would need more cores than a small
/// machine has, and starved nodes are not what is measured here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes to an hour; scripts/network-long large runs it"]
async fn large_cluster_crash_loss_and_partition_beside_the_simulator() {
    let hosts = large_hosts();
    let lasts = long_run();
    let scenario = format!("large {hosts}");
    alone(
        "large_cluster_crash_loss_and_partition_beside_the_simulator",
        lasts + Duration::from_secs(900) + Duration::from_secs(3 * hosts as u64),
        async {
            let mut c = Cluster::start_with(Setup {
                hosts,
                preset: Preset::Lan,
                ..Setup::default()
            })
            .await;
            // The crash, loss and partition figures print after the checker:
            // a failed check must not keep them from the report.
            c.defer_verdicts();
            figures(
                &scenario,
                &format!(
                    "{hosts} hosts started one after another: one view {} after the first",
                    ms(c.formed_in)
                ),
            );
            // How busy the machine was after each phase: at this size the
            // nodes, the broker and the bridge share two cores.
            let busy = |phase: &str| figures(&scenario, &format!("load average after {phase}: {}", load_average()));
            // A minute: push-pull runs every 30 s in this preset.
            c.quiet_gossip(&scenario, Duration::from_secs(60)).await;
            busy("the quiet minute");
            let load = Load::start(c.gateways(), SENDERS);
            tokio::time::sleep(Duration::from_secs(2)).await;

            let victim = c.nodes[hosts / 2].name.clone();
            let (crash, rejoin) = c.crash_and_restart(&victim).await;
            busy("the crash and restart");

            let lossy = c.lossy(lasts).await;
            c.one_view(c.limit(Duration::from_secs(30))).await;
            busy("the loss");

            // Even hosts on one side (gw1 and fw among them), odd on the
            // other (gw2): a gateway and half the workers on each.
            let a: Vec<usize> = (0..hosts).filter(|h| h % 2 == 0).collect();
            let b: Vec<usize> = (0..hosts).filter(|h| h % 2 == 1).collect();
            let expect: Vec<(usize, Vec<String>)> = a
                .iter()
                .map(|&h| (h, c.names(&b)))
                .chain(b.iter().map(|&h| (h, c.names(&a))))
                .collect();
            let (d, merged, summary) = c
                .cut_and_heal(&scenario, load, |net| net.partition(&a, &b), &expect)
                .await;
            // The simulator's predictions run now, after the checker.
            crash_figures(&format!("{scenario} crash"), &victim, &c, &crash, rejoin);
            lossy.report(
                &format!("{scenario} loss"),
                &format!("{} acknowledged over the whole run", summary.acknowledged),
            );
            split_figures(
                &format!("{scenario} partition"),
                &format!("two-way {}|{} partition", a.len(), b.len()),
                "each side sees the other dead",
                &d,
                merged,
                predict::partition(c.preset, &a, &b),
            );
            lossy.assert_no_member_declared_dead();
            c.verdicts();
        },
    )
    .await;
}

/// The harness itself, without nodes: every fault becomes the nftables rule
/// it should, heal removes them all, an address moves, and dropping the
/// network deletes every namespace and link it made.
#[test]
fn harness_turns_faults_into_nftables_rules_and_cleans_up() {
    if !enabled("harness_turns_faults_into_nftables_rules_and_cleans_up") {
        return;
    }
    let mut net = Net::create(3);
    let (a, b) = (net.hosts[0].addr, net.hosts[1].addr);
    net.loss(2, 10, Traffic::Udp);
    net.link_loss(0, 1, 25);
    net.partition_one_way(&[0, 1], &[2]);
    let rules = net.rules(2);
    assert!(
        rules.contains("meta l4proto udp numgen random mod 100 < 10 drop"),
        "{rules}"
    );
    assert!(rules.contains(&format!("ip saddr {{ {a}, {b} }} drop")), "{rules}");
    let rules = net.rules(1);
    assert!(
        rules.contains(&format!("ip saddr {a} numgen random mod 100 < 25 drop")),
        "{rules}"
    );
    net.heal();
    for h in 0..3 {
        assert!(!net.rules(h).contains("drop"), "healed: {}", net.rules(h));
    }
    net.drop_address(2);
    let new = net.add_address(2);
    assert_eq!(new, net.ip(512 + 12));
    let addrs = netns::run(
        &["ip", "-n", &net.hosts[2].ns, "-4", "addr", "show", "dev", "eth0"],
        None,
    )
    .unwrap();
    assert!(
        addrs.contains(&format!("{new}/22")) && !addrs.contains(&format!("{}/22", net.ip(12))),
        "{addrs}"
    );
    // A host reaches the root namespace's .1 through the bridge, until it
    // loses every packet it receives (the SYN-ACK too).
    let listener = std::net::TcpListener::bind((net.ip(1), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let connect = |net: &Net| {
        let script = format!("exec 3<>/dev/tcp/{}/{port}", net.ip(1));
        netns::run(
            &[
                "ip",
                "netns",
                "exec",
                &net.hosts[0].ns,
                "timeout",
                "2",
                "bash",
                "-c",
                &script,
            ],
            None,
        )
    };
    connect(&net).expect("host 0 connects to .1");
    net.loss(0, 100, Traffic::All);
    assert!(connect(&net).is_err(), "100% loss cuts host 0 off");
    net.heal();
    connect(&net).expect("healed, host 0 connects again");
    drop(listener);

    let namespaces = net.namespaces();
    drop(net);
    let left = netns::run(&["ip", "netns", "list"], None).unwrap();
    for ns in namespaces {
        assert!(!left.contains(&ns), "{ns} deleted: {left}");
    }
}
