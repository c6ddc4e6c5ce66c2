//! Real processes: every node is a separate `rumor node` process on
//! 127.0.0.1. Nodes bind port 0 and print where they listen on their first
//! stdout line, which the harness reads, so no port is ever guessed. Nodes use
//! the `test` membership preset (100 ms protocol period). Every scenario is
//! bounded by `LIMIT`, and every child is killed when its handle drops.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use node::client::AdminClient;
use node::crypto::Key;
use proto::api::{MemberStatus, MessageKind, SendRequest};

mod common;

use common::{TestDb, eventually, nanos};

const LIMIT: Duration = Duration::from_secs(90);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("scenario did not finish in time")
}

/// One `rumor node` process, killed (SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    gossip: String,
    admin: String,
    /// The client edge's address, on a gateway with edge credentials.
    edge: Option<String>,
    /// The stdout lines after the first, as they come.
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn start(name: &str, roles: &str, seeds: &[&str], key: &str) -> Proc {
        Self::start_with(name, roles, seeds, key, None)
    }

    /// Like [`Proc::start`], with `config` (TOML text) as the config file.
    fn start_with(name: &str, roles: &str, seeds: &[&str], key: &str, config: Option<&str>) -> Proc {
        Self::start_env(name, roles, seeds, key, config, &[])
    }

    /// Like [`Proc::start_with`], with environment variables `env` set.
    fn start_env(
        name: &str,
        roles: &str,
        seeds: &[&str],
        key: &str,
        config: Option<&str>,
        env: &[(&str, &str)],
    ) -> Proc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rumor"));
        cmd.envs(env.iter().copied());
        if let Some(text) = config {
            let file = std::env::temp_dir().join(format!("rumor-test-{}-{name}-{}.toml", std::process::id(), nanos()));
            std::fs::write(&file, text).unwrap();
            cmd.arg("node").arg("--config").arg(&file);
        }
        if config.is_none() {
            cmd.arg("node");
        }
        cmd.args(["--name", name, "--roles", roles, "--preset", "test"])
            .args(["--gossip-bind", "127.0.0.1:0", "--mesh-bind", "127.0.0.1:0"])
            .args(["--admin-bind", "127.0.0.1:0", "--edge-bind", "127.0.0.1:0"])
            .env("RUMOR_KEYS", key)
            .env_remove("RUMOR_SEEDS")
            .env_remove("RUMOR_NAME")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        let mut child = cmd.spawn().expect("spawning rumor node");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads stdout to the end, so the child never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("{name} did not print its addresses"));
        let field = |k: &str| -> String {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .unwrap_or_else(|| panic!("no {k} in {line:?}"))
                .to_owned()
        };
        Proc {
            name: name.to_owned(),
            gossip: field("gossip="),
            admin: field("admin="),
            edge: line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("edge="))
                .map(str::to_owned),
            child,
            lines: rx,
        }
    }

    /// Waits up to `limit` for the process to exit; its status and the
    /// stdout lines it printed after the first.
    async fn wait_exit(&mut self, limit: Duration) -> (Option<std::process::ExitStatus>, Vec<String>) {
        let deadline = Instant::now() + limit;
        let mut exited = None;
        while Instant::now() < deadline {
            exited = self.child.try_wait().unwrap();
            if exited.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The reader thread sends the last lines before the pipe closes.
        tokio::time::sleep(Duration::from_millis(50)).await;
        (exited, self.lines.try_iter().collect())
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(self.admin.clone()).with_timeout(Duration::from_secs(5))
    }

    /// `kill -9`.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Workers that take a few milliseconds per reply chunk, so that messages are
/// in flight (some mid-stream) whenever a worker is killed.
const SLOW_ECHO: &str = "[worker.echo]\nchunks = 3\ndelay_ms = 3\n";

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A gateway `gw`, a forward node `fw` and workers `w1..=workers`, joined
/// through `gw`, with every node seeing all of them and the same ring.
async fn cluster(workers: usize, key: &str, worker_config: Option<&str>) -> Vec<Proc> {
    let gw = Proc::start("gw", "gateway", &[], key);
    let seed = gw.gossip.clone();
    let mut nodes = vec![gw, Proc::start("fw", "forward", &[&seed], key)];
    for i in 1..=workers {
        nodes.push(Proc::start_with(
            &format!("w{i}"),
            "worker",
            &[&seed],
            key,
            worker_config,
        ));
    }
    let names: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
    agree(&nodes, &names, workers).await;
    nodes
}

/// Waits until every node lists exactly `names` as alive and all report the
/// same ring checksum over `workers` workers; returns that checksum.
async fn agree(nodes: &[Proc], names: &BTreeSet<String>, workers: usize) -> String {
    let clients: Vec<AdminClient> = nodes.iter().map(Proc::client).collect();
    eventually(
        "every node to agree on members and ring",
        Duration::from_secs(30),
        || async {
            let mut sums = BTreeSet::new();
            for c in &clients {
                let m = c.members().await.ok()?;
                let alive: BTreeSet<String> = m
                    .members
                    .iter()
                    .filter(|x| x.status() == MemberStatus::Alive)
                    .map(|x| x.name.clone())
                    .collect();
                if &alive != names || !m.joined {
                    return None;
                }
                let r = c.ring().await.ok()?;
                if r.workers.len() != workers {
                    return None;
                }
                sums.insert(r.checksum);
            }
            (sums.len() == 1).then(|| sums.pop_first().unwrap())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_node_cluster_forms_and_every_node_reports_the_same_members_and_ring() {
    within(async {
        let key = Key::generate().to_base64();
        let nodes = cluster(3, &key, None).await;
        let names: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
        let checksum = agree(&nodes, &names, 3).await;
        let mut views = BTreeSet::new();
        for p in &nodes {
            let c = p.client();
            assert!(c.ready().await.unwrap(), "{} is ready", p.name);
            let m = c.members().await.unwrap();
            views.insert(m.checksum.clone());
            // Filtered by state: nobody is down, everybody alive; the
            // checksum covers the whole view whatever the filter.
            let down = c
                .members_in(&[MemberStatus::Suspect, MemberStatus::Dead, MemberStatus::Left])
                .await
                .unwrap();
            assert!(down.members.is_empty(), "{} lists nobody down: {down:?}", p.name);
            assert_eq!(down.checksum, m.checksum);
            assert_eq!(c.members_in(&[MemberStatus::Alive]).await.unwrap().members, m.members);
            let bad = c
                .get_json::<proto::api::Members>("/v1/members?status=alive,zombie")
                .await;
            let why = bad.expect_err("an unknown state is refused").to_string();
            assert!(why.contains("400") && why.contains("\"zombie\""), "{why}");
            let w: Vec<_> = m.members.iter().filter(|x| x.roles == ["worker"]).collect();
            assert_eq!(w.len(), 3);
            assert!(w.iter().all(|x| x.capacity > 0 && x.services.contains_key("mesh")));
            assert!(m.members.iter().all(|x| x.services.contains_key("admin")));
            let r = c.ring().await.unwrap();
            assert_eq!(r.checksum, checksum);
            let share: f64 = r.workers.iter().map(|x| x.share).sum();
            assert!((share - 1.0).abs() < 1e-9, "shares sum to 1: {share}");
            let metrics = c.metrics().await.unwrap();
            assert!(metrics.contains("# TYPE rumor_membership_probes_total counter"));
            assert!(metrics.contains("rumor_members{status=\"alive\"} 5"));
            assert!(metrics.contains("rumor_ready 1"));
        }
        assert_eq!(views.len(), 1, "every node has the same view checksum: {views:?}");
        assert_eq!(views.first().unwrap().len(), 16);
    })
    .await;
}

/// What happened to the messages of the steady stream.
#[derive(Debug, Default)]
struct Tally {
    answered: AtomicU64,
    errors: AtomicU64,
    /// No complete answer: the guarantee is broken.
    lost: AtomicU64,
    /// Workers that answered, with how many messages each.
    by_worker: std::sync::Mutex<BTreeMap<String, u64>>,
}

async fn send_stream(gw: AdminClient, sender: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let payload = format!("s{sender}-m{i}");
        let req = SendRequest {
            key: format!("conv-{}", (i as usize * 7 + sender) % 32),
            payload: payload.clone(),
            id: None,
            timeout_ms: Some(5000),
            ..Default::default()
        };
        match gw.send(&req, |_| {}).await {
            Ok(lines) => {
                let terminal = lines.iter().filter(|l| l.is_terminal()).count();
                assert_eq!(terminal, 1, "exactly one final line: {lines:?}");
                let last = lines.last().unwrap();
                if last.error.is_some() {
                    tally.errors.fetch_add(1, Ordering::Relaxed);
                } else {
                    let data: String = lines.iter().map(|l| l.data.as_str()).collect();
                    assert_eq!(data, payload, "the reply is the echo, once");
                    let seqs: Vec<u64> = lines.iter().map(|l| l.seq).collect();
                    assert_eq!(seqs, (0..lines.len() as u64).collect::<Vec<_>>());
                    tally.answered.fetch_add(1, Ordering::Relaxed);
                    *tally.by_worker.lock().unwrap().entry(last.worker.clone()).or_default() += 1;
                }
            }
            Err(e) => {
                eprintln!("lost {payload}: {e}");
                tally.lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        i += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_loses_no_message_is_marked_dead_everywhere_and_rejoins_under_its_name() {
    within(async {
        let key = Key::generate().to_base64();
        let mut nodes = cluster(3, &key, Some(SLOW_ECHO)).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let senders: Vec<_> = (0..4)
            .map(|s| tokio::spawn(send_stream(nodes[0].client(), s, stop.clone(), tally.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let before_kill = tally.answered.load(Ordering::Relaxed);
        assert!(before_kill > 0, "messages flow before the kill");
        assert!(
            tally.by_worker.lock().unwrap().get("w2").is_some_and(|&n| n > 0),
            "w2 owns some of the keys in the stream"
        );

        let victim = nodes.iter().position(|p| p.name == "w2").unwrap();
        let killed_at = Instant::now();
        nodes[victim].kill();
        let others: Vec<AdminClient> = nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != victim)
            .map(|(_, p)| p.client())
            .collect();
        eventually("every node to mark w2 dead", Duration::from_secs(20), || async {
            for c in &others {
                let m = c.members().await.ok()?;
                let w2 = m.members.iter().find(|x| x.name == "w2")?;
                if w2.status() != MemberStatus::Dead {
                    return None;
                }
            }
            Some(())
        })
        .await;
        eprintln!("w2 dead everywhere {:?} after kill -9", killed_at.elapsed());
        for c in &others {
            let dead = c.members_in(&[MemberStatus::Dead]).await.unwrap();
            let names: Vec<&str> = dead.members.iter().map(|m| m.name.as_str()).collect();
            assert_eq!(names, ["w2"], "{} lists only w2 dead", dead.node);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, Ordering::Relaxed);
        for s in senders {
            s.await.expect("a sender's checks held");
        }
        let (answered, errors, lost) = (
            tally.answered.load(Ordering::Relaxed),
            tally.errors.load(Ordering::Relaxed),
            tally.lost.load(Ordering::Relaxed),
        );
        eprintln!(
            "answered {answered} ({:?}), explicit errors {errors}, lost {lost}",
            tally.by_worker.lock().unwrap()
        );
        assert_eq!(lost, 0, "no message is silently lost");
        assert!(answered > before_kill, "messages kept flowing after the kill");

        // Restart under the same name, at new ports.
        let seed = nodes[0].gossip.clone();
        nodes[victim] = Proc::start_with("w2", "worker", &[&seed], &key, Some(SLOW_ECHO));
        let names: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
        agree(&nodes, &names, 3).await;
        let lines = nodes[0]
            .client()
            .send(
                &SendRequest {
                    key: "after-rejoin".into(),
                    payload: "still here".into(),
                    id: None,
                    timeout_ms: Some(5000),
                    ..Default::default()
                },
                |_| {},
            )
            .await
            .unwrap();
        assert!(lines.last().unwrap().last);
    })
    .await;
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_with_the_wrong_gossip_key_cannot_join_and_is_counted() {
    within(async {
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let w1 = Proc::start("w1", "worker", &[&gw.gossip], &key);
        let names: BTreeSet<String> = ["gw", "w1"].map(String::from).into();
        let nodes = [gw, w1];
        agree(&nodes, &names, 1).await;

        let intruder = Proc::start("intruder", "worker", &[&nodes[0].gossip], &Key::generate().to_base64());
        let gw = nodes[0].client();
        eventually(
            "the seed to count decrypt failures",
            Duration::from_secs(10),
            || async {
                let m = gw.metrics().await.ok()?;
                (metric(&m, "rumor_transport_decrypt_failures_total") > 0).then_some(())
            },
        )
        .await;
        // Give it a few join retries more: it must stay out.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            !intruder.client().ready().await.unwrap(),
            "the intruder never becomes ready"
        );
        let own = intruder.client().members().await.unwrap();
        assert!(!own.joined);
        assert_eq!(own.members.len(), 1, "the intruder knows only itself");
        for p in &nodes {
            let m = p.client().members().await.unwrap();
            assert!(
                m.members.iter().all(|x| x.name != "intruder"),
                "{} never lists it",
                p.name
            );
        }
    })
    .await;
}

/// Runs `rumor` with `args` to completion within `limit`, returning
/// (success, stdout, stderr).
fn run(args: &[&str], limit: Duration) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rumor"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rumor {args:?} did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn up_prints_members_and_the_demo_reply_then_exits_cleanly() {
    let (ok, out, err) = run(&["up", "--exit-after", "1"], Duration::from_secs(60));
    assert!(ok, "exit status: stdout {out}\nstderr {err}");
    for name in ["gateway-1", "forward-1", "worker-1", "worker-2", "worker-3"] {
        assert!(out.contains(name), "{name} listed:\n{out}");
    }
    assert!(out.contains("reply \"hello through the mesh\" from worker-"), "{out}");
    assert!(out.contains("gossip message forward-1#"), "{out}");
    assert!(out.trim_end().ends_with("stopped"), "{out}");
    // Its embedded database is gone with it.
    let db = out
        .split_whitespace()
        .map(|w| w.trim_end_matches(')'))
        .find(|w| w.contains("rumor-up-") && w.ends_with(".db"))
        .expect("the database path is printed");
    assert!(!std::path::Path::new(db).exists(), "{db} left behind");
}

/// `rumor up --backend` with the real model `scripts/test` starts
/// (`RUMOR_TEST_LLAMA`): the demo message is answered by the model, and
/// the OpenAI snippet names it.
#[test]
fn up_with_a_real_model_answers_the_demo_message_with_it() {
    let url = std::env::var("RUMOR_TEST_LLAMA")
        .unwrap_or_else(|_| panic!("RUMOR_TEST_LLAMA is not set: run scripts/test, which starts scripts/llama-server"));
    let (ok, out, err) = run(
        &["up", "--backend", &url, "--edge-port", "0", "--exit-after", "1"],
        Duration::from_secs(180),
    );
    assert!(ok, "exit status: stdout {out}\nstderr {err}");
    assert!(out.contains("workers answer with model SmolLM2-135M-Instruct"), "{out}");
    assert!(
        out.contains("for key \"conversation-1\" through gateway-1: reply"),
        "no demo reply:\n{out}"
    );
    // The reply's text cannot tell the model from an echo: a small model may
    // answer by repeating the message. The usage stored with the reply can:
    // an echo has none.
    let usage = out
        .lines()
        .find(|l| l.contains("the reply's usage: model SmolLM2-135M-Instruct"))
        .unwrap_or_else(|| panic!("no model usage stored with the reply:\n{out}"));
    let completion: u64 = usage
        .split(", ")
        .find_map(|p| p.strip_suffix(" completion tokens"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no completion tokens in {usage:?}"));
    assert!(completion > 0, "{usage}");
    assert!(out.contains("model=\"SmolLM2-135M-Instruct\""), "{out}");
}

#[test]
fn bad_config_is_refused_with_the_setting_named() {
    let (ok, _, err) = run(&["node", "--name", "x", "--roles", "boss"], Duration::from_secs(20));
    assert!(!ok);
    assert!(err.contains("roles"), "{err}");
    let dir = std::env::temp_dir().join(format!("rumor-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("node.toml");
    std::fs::write(&file, "name = \"x\"\n[mesh]\nmax_hopz = 3\n").unwrap();
    let (ok, _, err) = run(&["node", "--config", file.to_str().unwrap()], Duration::from_secs(20));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok);
    assert!(err.contains("max_hopz"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_status_send_and_gossip_talk_to_a_running_cluster() {
    within(async {
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let w1 = Proc::start("w1", "worker", &[&gw.gossip], &key);
        let names: BTreeSet<String> = ["gw", "w1"].map(String::from).into();
        let nodes = [gw, w1];
        agree(&nodes, &names, 1).await;
        let admin = nodes[0].admin.clone();
        let out = tokio::task::spawn_blocking(move || {
            let mut outs = BTreeMap::new();
            for (k, args) in [
                ("status", vec!["status", "--admin", &admin]),
                ("send", vec!["send", "--admin", &admin, "--key", "k1", "hello there"]),
                ("gossip", vec!["gossip", "--admin", &admin, "news"]),
            ] {
                let (ok, out, err) = run(&args, Duration::from_secs(20));
                assert!(ok, "{k}: {err}");
                outs.insert(k, out);
            }
            outs
        })
        .await
        .unwrap();
        assert!(out["status"].contains("ring checksum"), "{}", out["status"]);
        assert!(out["status"].contains("w1"));
        assert!(out["send"].starts_with("hello there\n"), "{}", out["send"]);
        assert!(out["send"].contains("answered by w1"), "{}", out["send"]);
        assert!(out["gossip"].contains("2/2 live members have it"), "{}", out["gossip"]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_makes_a_worker_leave_gracefully_and_exit_cleanly() {
    within(async {
        let key = Key::generate().to_base64();
        let mut nodes = cluster(2, &key, None).await;
        let w1 = nodes.iter().position(|p| p.name == "w1").unwrap();
        let status = Command::new("kill")
            .args(["-TERM", &nodes[w1].pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let mut exited = None;
        for _ in 0..200 {
            exited = nodes[w1].child.try_wait().unwrap();
            if exited.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            exited.is_some_and(|s| s.success()),
            "w1 exits 0 after SIGTERM: {exited:?}"
        );
        let gw = nodes[0].client();
        eventually(
            "the gateway to see w1 as left, not failed",
            Duration::from_secs(10),
            || async {
                let m = gw.members().await.ok()?;
                (m.members.iter().find(|x| x.name == "w1")?.status() == MemberStatus::Left).then_some(())
            },
        )
        .await;
        assert_eq!(gw.ring().await.unwrap().workers.len(), 1);
        nodes.remove(w1);
    })
    .await;
}

/// Workers whose replies take about a second: five chunks 200 ms apart.
const ONE_SECOND_REPLIES: &str = "[worker.echo]\nchunks = 5\ndelay_ms = 200\n";

/// Sends `payload` for `key` through `gw`, collecting the reply's lines;
/// `first` hears when the first line arrived.
async fn send_collect(
    gw: AdminClient,
    key: String,
    payload: &str,
    first: Option<tokio::sync::oneshot::Sender<()>>,
) -> Vec<proto::api::ReplyLine> {
    let req = SendRequest {
        key,
        payload: payload.into(),
        timeout_ms: Some(20_000),
        ..Default::default()
    };
    let mut first = first;
    gw.with_timeout(Duration::from_secs(25))
        .send(&req, |_| {
            if let Some(tx) = first.take() {
                let _ = tx.send(());
            }
        })
        .await
        .unwrap()
}

fn worker_accepted(metrics: &str) -> u64 {
    metric(metrics, "rumor_worker_accepted_total")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_sent_sigterm_finishes_its_replies_and_its_next_messages_go_elsewhere_once() {
    within(async {
        let key = Key::generate().to_base64();
        let mut nodes = cluster(2, &key, Some(ONE_SECOND_REPLIES)).await;
        let gw = nodes[0].client();
        let w1 = nodes.iter().position(|p| p.name == "w1").unwrap();
        let w2 = nodes.iter().position(|p| p.name == "w2").unwrap();
        // A conversation that w1 owns (one-byte probes take one chunk).
        let mut conversation = None;
        for i in 0..50 {
            let k = format!("drain-{i}");
            let lines = send_collect(gw.clone(), k.clone(), "?", None).await;
            if lines.last().unwrap().worker == "w1" {
                conversation = Some(k);
                break;
            }
        }
        let conversation = conversation.expect("w1 owns one of 50 conversations");
        let w2_before = worker_accepted(&nodes[w2].client().metrics().await.unwrap());

        // A streams for about a second; w1 gets SIGTERM after its first chunk.
        let (first_tx, first_rx) = tokio::sync::oneshot::channel();
        let a = tokio::spawn(send_collect(
            gw.clone(),
            conversation.clone(),
            "abcdefghij",
            Some(first_tx),
        ));
        first_rx.await.unwrap();
        assert!(
            Command::new("kill")
                .args(["-TERM", &nodes[w1].pid().to_string()])
                .status()
                .unwrap()
                .success()
        );
        // B, for the same conversation, arrives while w1 drains.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let b = send_collect(gw.clone(), conversation.clone(), "after", None).await;

        let a = a.await.unwrap();
        let a_end = a.last().unwrap();
        assert!(a_end.last && a_end.error.is_none(), "A was cut: {a:?}");
        assert_eq!(a.iter().map(|l| l.data.as_str()).collect::<String>(), "abcdefghij");
        assert!(a.iter().all(|l| l.worker == "w1"), "{a:?}");
        let b_end = b.last().unwrap();
        assert!(b_end.last && b_end.error.is_none() && !b_end.replayed, "{b:?}");
        assert_eq!(b_end.worker, "w2", "the leaving worker took no new message");

        let (status, lines) = nodes[w1].wait_exit(Duration::from_secs(10)).await;
        assert!(status.is_some_and(|s| s.success()), "w1 exits 0: {status:?} {lines:?}");
        let summary = lines
            .iter()
            .find(|l| l.starts_with("node stopped"))
            .expect("a summary line");
        assert!(summary.contains("drained true, abandoned 0"), "{summary}");
        // w2 processed B and nothing else: A was not processed twice.
        let w2_after = worker_accepted(&nodes[w2].client().metrics().await.unwrap());
        assert_eq!(w2_after - w2_before, 1, "w2 took exactly one message");
        nodes.remove(w1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_gossip_key_across_the_running_cluster_keeps_it_whole() {
    within(async {
        let old = Key::generate().to_base64();
        let new = Key::generate().to_base64();
        let mut nodes = cluster(2, &old, None).await;
        let mut names: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
        let admin = nodes[0].admin.clone();
        let steps = [("install", new.clone()), ("use", new.clone()), ("remove", old.clone())];
        tokio::task::spawn_blocking(move || {
            for (op, key) in &steps {
                let (ok, out, err) = run(&["keys", "--admin", &admin, "--all", op, key], Duration::from_secs(20));
                assert!(ok, "keys {op}: {out}{err}");
                assert_eq!(out.lines().count(), 4, "every node answered: {out}");
            }
        })
        .await
        .unwrap();
        let expected = nodes[0].client().keys().await.unwrap();
        assert_eq!(expected.keys.len(), 1);
        for p in &nodes {
            assert_eq!(
                p.client().keys().await.unwrap(),
                expected,
                "{} has only the new key",
                p.name
            );
        }
        // Still one cluster after a few protocol periods, and a node with only the new key joins.
        tokio::time::sleep(Duration::from_millis(500)).await;
        agree(&nodes, &names, 2).await;
        let before = metric(
            &nodes[0].client().metrics().await.unwrap(),
            "rumor_transport_decrypt_failures_total",
        );
        nodes.push(Proc::start("w9", "worker", &[&nodes[0].gossip], &new));
        names.insert("w9".into());
        agree(&nodes, &names, 3).await;
        let after = metric(
            &nodes[0].client().metrics().await.unwrap(),
            "rumor_transport_decrypt_failures_total",
        );
        assert_eq!(before, after, "no packet failed to decrypt after the rotation");
    })
    .await;
}

/// Workers that allow `POST /v1/fault/isolate`, which drops all of a node's
/// gossip traffic at its transport until it is lifted.
const FAULTS: &str = "[debug]\nfault_injection = true\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_is_suspected_declared_dead_and_rejoins_one_view_after_repair() {
    within(async {
        let key = Key::generate().to_base64();
        let nodes = cluster(3, &key, Some(FAULTS)).await;
        let all: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
        let (cut, rest) = nodes.split_last().unwrap();
        assert_eq!(cut.name, "w3");

        // Fault injection is refused where it was not enabled.
        assert!(
            rest[0].client().isolate(true).await.is_err(),
            "gw allows no fault injection"
        );

        cut.client().isolate(true).await.unwrap();
        let others: BTreeSet<String> = rest.iter().map(|p| p.name.clone()).collect();
        // Everyone else suspects it, declares it dead and drops it from the ring...
        agree(rest, &others, 2).await;
        for p in rest {
            let m = p.client().members().await.unwrap();
            let w3 = m.members.iter().find(|x| x.name == "w3").expect("w3 is still listed");
            assert_eq!(w3.status(), MemberStatus::Dead, "{} has w3 dead", p.name);
            let metrics = p.client().metrics().await.unwrap();
            assert!(
                metric(&metrics, "rumor_membership_suspicions_total") >= 1,
                "{} suspected",
                p.name
            );
        }
        // ...while the cut node in turn declares every other member dead.
        let c = cut.client();
        eventually("w3 to see only itself alive", Duration::from_secs(30), || async {
            let own = c.members().await.ok()?;
            (own.members.iter().filter(|x| x.status() == MemberStatus::Alive).count() == 1).then_some(())
        })
        .await;
        assert!(
            metric(
                &cut.client().metrics().await.unwrap(),
                "rumor_transport_isolated_drops_total"
            ) > 0
        );

        // Repair: one view of all five again, everywhere, with the same ring.
        cut.client().isolate(false).await.unwrap();
        agree(&nodes, &all, 3).await;
    })
    .await;
}

// ---- The event log and the bridge, with real Kafka (tansu) and PostgreSQL ----
//
// scripts/test starts both; RUMOR_TEST_KAFKA and RUMOR_TEST_DATABASE_URL say
// where they are. Each test uses its own topics and its own database.

fn kafka() -> String {
    std::env::var("RUMOR_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// One `rumor bridge` process, killed when dropped.
struct BridgeProc {
    child: Child,
    http: String,
}

impl BridgeProc {
    fn start(db: &TestDb, topics: &str, extra: &[&str]) -> BridgeProc {
        Self::start_at(&db.url(), &kafka(), topics, extra)
    }

    /// Like [`BridgeProc::start`], with the database and the brokers given.
    fn start_at(database_url: &str, brokers: &str, topics: &str, extra: &[&str]) -> BridgeProc {
        Self::start_env(database_url, brokers, topics, extra, &[])
    }

    /// Like [`BridgeProc::start_at`], with environment variables `env` set.
    fn start_env(database_url: &str, brokers: &str, topics: &str, extra: &[&str], env: &[(&str, &str)]) -> BridgeProc {
        Self::start_full(database_url, brokers, topics, "", extra, env)
    }

    /// Like [`BridgeProc::start_env`], with `settings` (TOML lines) added to its config file.
    fn start_full(
        database_url: &str,
        brokers: &str,
        topics: &str,
        settings: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> BridgeProc {
        let file = std::env::temp_dir().join(format!("rumor-test-bridge-{}-{}.toml", std::process::id(), nanos()));
        let text = format!(
            "database_url = \"{database_url}\"\nbrokers = \"{brokers}\"\nhttp_bind = \"127.0.0.1:0\"\ngroup_id = \"{topics}-bridge\"\n\
             messages_topic = \"{topics}.messages\"\nforward_topic = \"{topics}.forward\"\npartitions = 2\nbatch_max_wait_ms = 20\n{settings}\n"
        );
        std::fs::write(&file, text).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rumor"))
            .args(["bridge", "--config"])
            .arg(&file)
            .args(extra)
            .envs(env.iter().copied())
            .env_remove("RUMOR_DATABASE_URL")
            .env_remove("RUMOR_KAFKA_BROKERS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning rumor bridge");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().expect("the bridge printed nothing").unwrap();
        std::thread::spawn(move || for _ in lines {});
        let http = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .unwrap_or_else(|| panic!("no http= in {line:?}"))
            .to_owned();
        BridgeProc { child, http }
    }
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.1 request; returns (status, body).
async fn http(addr: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned();
    (status, body)
}

async fn history(bridge: &str, key: &str) -> Option<bridge::api::History> {
    let (status, body) = http(bridge, "GET", &format!("/v1/conversations/{key}/messages"), None).await;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// gw (gateway), fw (forward) and w1 (worker) publishing to `topics`.
fn event_config(topics: &str) -> String {
    event_config_at(&kafka(), topics)
}

fn event_config_at(brokers: &str, topics: &str) -> String {
    format!(
        "[events]\nbrokers = \"{brokers}\"\nmessages_topic = \"{topics}.messages\"\nforward_topic = \"{topics}.forward\"\n\
         partitions = 2\nforward_group = \"{topics}-forward\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_into_the_mesh_and_injected_from_outside_end_up_in_postgresql_with_their_replies() {
    within(async {
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let events = event_config(&topics);
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let fw = Proc::start_with("fw", "forward", &[&gw.gossip], &key, Some(&events));
        let w1 = Proc::start_with("w1", "worker", &[&gw.gossip], &key, Some(&events));
        let names: BTreeSet<String> = ["gw", "fw", "w1"].map(String::from).into();
        let nodes = [gw, fw, w1];
        agree(&nodes, &names, 1).await;
        let bridge = BridgeProc::start(&db, &topics, &[]);

        // A client message through the gateway.
        let req = SendRequest {
            key: "conv-a".into(),
            payload: "hello kafka".into(),
            id: None,
            timeout_ms: Some(10_000),
            ..Default::default()
        };
        let lines = nodes[0].client().send(&req, |_| {}).await.unwrap();
        let id = lines.last().unwrap().id.clone();
        let h = eventually(
            "the message and its reply in PostgreSQL",
            Duration::from_secs(30),
            || async { history(&bridge.http, "conv-a").await.filter(|h| h.messages.len() >= 2) },
        )
        .await;
        assert_eq!(h.messages.len(), 2, "{h:?}");
        assert_eq!(
            (h.messages[0].kind(), h.messages[1].kind()),
            (MessageKind::Inbound, MessageKind::Reply)
        );
        assert!(
            h.messages
                .iter()
                .all(|m| m.id == id && m.worker == "w1" && m.source == "client")
        );
        assert_eq!(h.messages[0].payload, "hello kafka");
        assert_eq!(h.messages[1].payload, "hello kafka", "the echo reply, chunks joined");

        // A message injected through the bridge, routed by the forward node.
        let (status, body) = http(
            &bridge.http,
            "POST",
            "/v1/forward",
            Some(r#"{"key":"conv-b","payload":"from outside","source":"crm"}"#),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let forwarded: bridge::api::Forwarded = serde_json::from_str(&body).unwrap();
        let h = eventually(
            "the injected message and its reply in PostgreSQL",
            Duration::from_secs(30),
            || async { history(&bridge.http, "conv-b").await.filter(|h| h.messages.len() >= 2) },
        )
        .await;
        assert!(
            h.messages
                .iter()
                .all(|m| m.id == forwarded.id && m.source == "bridge:crm"),
            "{h:?}"
        );
        assert_eq!(h.messages[1].kind(), MessageKind::Reply);
        assert_eq!(h.messages[1].payload, "from outside");
    })
    .await;
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&db.url())
        .await
        .unwrap();
    let row: (i64,) = sqlx::query_as(sql).fetch_one(&mut c).await.unwrap();
    row.0
}

/// gw (gateway) and w1 (worker, with `events` as its config), agreeing on both.
async fn gateway_and_worker(events: &str) -> [Proc; 2] {
    let key = Key::generate().to_base64();
    let gw = Proc::start("gw", "gateway", &[], &key);
    let w1 = Proc::start_with("w1", "worker", &[&gw.gossip], &key, Some(events));
    let names: BTreeSet<String> = ["gw", "w1"].map(String::from).into();
    let nodes = [gw, w1];
    agree(&nodes, &names, 1).await;
    nodes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_killed_right_after_its_database_commit_restarts_with_no_duplicate_and_no_gap() {
    within(async {
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let events = event_config(&topics);
        let nodes = gateway_and_worker(&events).await;
        // 20 messages on 10 conversations: 40 records (message and reply each).
        for i in 0..20 {
            let req = SendRequest {
                key: format!("conv-{}", i % 10),
                payload: format!("m{i}"),
                id: None,
                timeout_ms: Some(10_000),
                ..Default::default()
            };
            nodes[0].client().send(&req, |_| {}).await.unwrap();
        }

        // The bridge aborts right after its first database commit, before it
        // commits anything to Kafka.
        let mut crashing = BridgeProc::start(&db, &topics, &["--crash-after-batch", "1"]);
        let status = eventually(
            "the bridge to crash after its first commit",
            Duration::from_secs(30),
            || {
                let s = crashing.child.try_wait().unwrap();
                async move { s }
            },
        )
        .await;
        assert!(!status.success(), "it aborted: {status:?}");
        let first = count(&db, "SELECT count(*) FROM messages").await;
        assert!(first >= 1, "the first batch was committed before the crash");

        // Restarted, it resumes from the offsets stored with the rows.
        let _bridge = BridgeProc::start(&db, &topics, &[]);
        eventually("all 40 records stored", Duration::from_secs(30), || async {
            (count(&db, "SELECT count(*) FROM messages").await == 40).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 40, "no duplicate");
        assert_eq!(
            count(
                &db,
                "SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM messages"
            )
            .await,
            40,
            "every record of the topic, each once"
        );
        assert_eq!(
            count(
                &db,
                "SELECT coalesce(sum(next_offset), 0)::bigint FROM consumer_offsets"
            )
            .await,
            40,
            "the stored offsets are past every record and no further: no gap"
        );
        assert_eq!(count(&db, "SELECT count(*) FROM dead_letters").await, 0);
    })
    .await;
}

// ---- Outages: Kafka or PostgreSQL unreachable while clients keep sending ----

/// A TCP proxy on loopback that a test cuts and restores: cut closes every
/// open connection and drops each new one at once, as a dead server or a
/// broken network looks to its clients.
struct Proxy {
    addr: String,
    up: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (up, rx) = tokio::sync::watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !*rx.borrow() {
                    continue; // dropped: the client sees its connection closed
                }
                let (target, mut rx) = (target.clone(), rx.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = rx.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { addr, up, task }
    }

    fn cut(&self) {
        self.up.send_replace(false);
    }

    fn restore(&self) {
        self.up.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A tansu broker of this test alone, reached only through a [`Proxy`]: it
/// advertises the proxy's address, so every client connection (bootstrap,
/// metadata, produce, fetch, group coordination) crosses the cut.
struct PrivateKafka {
    child: Child,
    proxy: Proxy,
}

impl PrivateKafka {
    async fn start() -> PrivateKafka {
        let tansu = std::env::var("RUMOR_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let listen = format!("127.0.0.1:{port}");
        let proxy = Proxy::start(listen.clone()).await;
        let child = Command::new(&tansu)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://{listen}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{}", proxy.addr))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {tansu} (scripts/test installs it and sets RUMOR_TEST_TANSU): {e}"));
        let kafka = PrivateKafka { child, proxy };
        eventually("the private tansu broker to listen", Duration::from_secs(20), || {
            let listen = listen.clone();
            async move { tokio::net::TcpStream::connect(&listen).await.ok().map(drop) }
        })
        .await;
        kafka
    }

    fn brokers(&self) -> &str {
        &self.proxy.addr
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends messages `range` on conversations `conv-0..conv-9` through `gw`;
/// every one must be answered. Returns their ids.
async fn send_all(gw: &AdminClient, range: std::ops::Range<usize>) -> Vec<String> {
    let mut ids = Vec::new();
    for i in range {
        let req = SendRequest {
            key: format!("conv-{}", i % 10),
            payload: format!("m{i}"),
            id: None,
            timeout_ms: Some(10_000),
            ..Default::default()
        };
        let lines = gw
            .send(&req, |_| {})
            .await
            .unwrap_or_else(|e| panic!("message {i} was not answered: {e}"));
        let last = lines.last().expect("a reply");
        assert!(last.error.is_none(), "message {i}: {last:?}");
        ids.push(last.id.clone());
    }
    ids
}

/// Every id has its inbound row and its reply row, and nothing else is stored.
async fn assert_stored_once(db_url: &str, ids: &[String]) {
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(db_url).await.unwrap();
    let rows: Vec<(String, i32)> = sqlx::query_as("SELECT message_id, kind FROM messages")
        .fetch_all(&mut c)
        .await
        .unwrap();
    let stored: BTreeMap<(String, i32), usize> = rows.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.clone()).or_default() += 1;
        m
    });
    let expected: BTreeSet<(String, i32)> = ids.iter().flat_map(|id| [(id.clone(), 1), (id.clone(), 2)]).collect();
    let missing: Vec<_> = expected.iter().filter(|k| !stored.contains_key(*k)).collect();
    assert!(missing.is_empty(), "not stored: {missing:?}");
    assert_eq!(rows.len(), expected.len(), "a row stored twice, or a row nobody sent");
    let (offsets,): (i64,) = sqlx::query_as("SELECT count(DISTINCT (kafka_partition, kafka_offset)) FROM messages")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(offsets as usize, rows.len(), "one row per record of the topic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answered_message_is_in_postgresql_even_when_its_worker_is_killed_the_moment_it_answered() {
    within(async {
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        // With `[worker] wait_for_records_ms = 0` this fails: the records of
        // the last replies are lost with the process.
        let events = event_config(&topics);
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let seed = gw.gossip.clone();
        let names: BTreeSet<String> = ["gw", "w1"].map(String::from).into();
        let mut nodes = vec![gw, Proc::start_with("w1", "worker", &[&seed], &key, Some(&events))];
        let _bridge = BridgeProc::start(&db, &topics, &[]);
        let mut ids = Vec::new();
        for round in 0..5 {
            agree(&nodes, &names, 1).await;
            let req = SendRequest {
                key: format!("conv-kill-{round}"),
                payload: format!("answered {round}"),
                timeout_ms: Some(10_000),
                ..Default::default()
            };
            let pid = nodes[1].pid().to_string();
            // kill -9 the worker as soon as the final chunk is here: the
            // message was answered, so its records must be in Kafka already.
            let lines = nodes[0]
                .client()
                .send(&req, |l| {
                    if l.is_terminal() {
                        let _ = Command::new("kill").args(["-9", &pid]).status();
                    }
                })
                .await
                .unwrap();
            let last = lines.last().unwrap();
            assert!(last.last && last.error.is_none(), "{last:?}");
            ids.push(last.id.clone());
            let _ = nodes[1].child.wait();
            // Restarted under the same name, it rejoins.
            nodes[1] = Proc::start_with("w1", "worker", &[&seed], &key, Some(&events));
        }
        eventually(
            "every answered message and its reply in PostgreSQL",
            Duration::from_secs(30),
            || async { (count(&db, "SELECT count(*) FROM messages").await as usize >= 2 * ids.len()).then_some(()) },
        )
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_stored_once(&db.url(), &ids).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_and_back_while_clients_keep_sending_loses_no_record() {
    within(async {
        let kafka = PrivateKafka::start().await;
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let events = event_config_at(kafka.brokers(), &topics);
        let nodes = gateway_and_worker(&events).await;
        let bridge = BridgeProc::start_at(&db.url(), kafka.brokers(), &topics, &[]);
        let (gw, w1) = (nodes[0].client(), nodes[1].client());

        let mut ids = send_all(&gw, 0..10).await;
        eventually("the first 20 rows", Duration::from_secs(30), || async {
            (count(&db, "SELECT count(*) FROM messages").await == 20).then_some(())
        })
        .await;

        kafka.proxy.cut();
        // The worker keeps answering; its records wait in the publisher.
        ids.extend(send_all(&gw, 10..30).await);
        let buffered = metric(&w1.metrics().await.unwrap(), "rumor_events_buffered");
        assert!(buffered > 0, "records wait for Kafka while it is down");
        eventually("the worker to report not ready", Duration::from_secs(20), || async {
            (!w1.ready().await.unwrap()).then_some(())
        })
        .await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM messages").await,
            20,
            "nothing new reached the bridge"
        );

        kafka.proxy.restore();
        ids.extend(send_all(&gw, 30..40).await);
        eventually("all 80 rows after Kafka came back", Duration::from_secs(60), || async {
            (count(&db, "SELECT count(*) FROM messages").await >= 80).then_some(())
        })
        .await;
        eventually("the worker to report ready again", Duration::from_secs(20), || async {
            w1.ready().await.unwrap().then_some(())
        })
        .await;
        let m = w1.metrics().await.unwrap();
        assert_eq!(metric(&m, "rumor_events_buffered"), 0);
        assert_eq!(metric(&m, "rumor_events_refused_total"), 0, "no record refused");
        assert_eq!(metric(&m, "rumor_events_published_total"), 80);
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_stored_once(&db.url(), &ids).await;
        drop(bridge);
    })
    .await;
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// A gateway, a worker and a bridge with a stall watch on a private tansu,
/// with the first ten messages stored: where the consumer-group tests
/// start from.
struct StrandedGroup {
    kafka: PrivateKafka,
    db: TestDb,
    topics: String,
    _nodes: [Proc; 2],
    gw: AdminClient,
    bridge: BridgeProc,
    ids: Vec<String>,
}

impl StrandedGroup {
    async fn start(stall_timeout_ms: &str) -> StrandedGroup {
        let kafka = PrivateKafka::start().await;
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let events = event_config_at(kafka.brokers(), &topics);
        let nodes = gateway_and_worker(&events).await;
        let bridge = BridgeProc::start_full(
            &db.url(),
            kafka.brokers(),
            &topics,
            &format!("stall_timeout_ms = {stall_timeout_ms}"),
            &[],
            &[("RUMOR_LOG", "info,bridge=info")],
        );
        let gw = nodes[0].client();
        let ids = send_all(&gw, 0..10).await;
        eventually("the first 20 rows", Duration::from_secs(30), || async {
            (count(&db, "SELECT count(*) FROM messages").await == 20).then_some(())
        })
        .await;
        StrandedGroup {
            kafka,
            db,
            topics,
            _nodes: nodes,
            gw,
            bridge,
            ids,
        }
    }

    /// Sends twenty more messages on ten conversations (both partitions),
    /// waits up to `limit` for all 60 rows, checks each is stored once and
    /// returns the bridge's metrics.
    async fn all_stored_within(&mut self, limit: Duration) -> String {
        self.ids.extend(send_all(&self.gw, 10..30).await);
        let db = &self.db;
        eventually("all 60 rows", limit, || async {
            (count(db, "SELECT count(*) FROM messages").await >= 60).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_stored_once(&self.db.url(), &self.ids).await;
        http(&self.bridge.http, "GET", "/metrics", None).await.1
    }
}

/// The outage that left tansu 0.6's consumer group with a partition no
/// bridge held: the bridge stops past its session (the broker evicts it),
/// then the broker stops while the bridge tries to rejoin, so its JoinGroup
/// requests time out and are answered to nobody. Without the stall watch
/// (`stall_timeout_ms = 0`) the partition's records are never stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_the_group_strands_after_a_broker_outage_is_stored_once_the_bridge_rejoins() {
    let run = async {
        let stall = std::env::var("RUMOR_TEST_STALL_TIMEOUT_MS").unwrap_or_else(|_| "10000".into());
        let mut g = StrandedGroup::start(&stall).await;
        let bridge_pid = g.bridge.child.id();
        signal(bridge_pid, "-STOP");
        tokio::time::sleep(Duration::from_secs(12)).await;
        signal(g.kafka.child.id(), "-STOP");
        signal(bridge_pid, "-CONT");
        tokio::time::sleep(Duration::from_secs(40)).await;
        signal(g.kafka.child.id(), "-CONT");

        let m = g.all_stored_within(Duration::from_secs(90)).await;
        let (rejoins, assigned) = (
            metric(&m, "rumor_bridge_group_rejoins_total"),
            metric(&m, "rumor_bridge_assigned_partitions"),
        );
        eprintln!("bridge: group rejoins {rejoins}, assigned partitions {assigned}");
        // Without a rejoin the outage did not strand a partition this time,
        // and the test proved nothing.
        assert!(rejoins >= 1, "the bridge never rejoined: was a partition stranded?");
        assert_eq!(assigned, 2, "every partition assigned in the end");
        let _ = g.bridge.child.kill();
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("scenario did not finish in time");
}

/// A hung member of the bridge's consumer group, on a real broker: it
/// takes its share at a rebalance and then stops polling while its
/// heartbeats go on (a hung bridge whose librdkafka thread still runs,
/// allowed ten minutes between polls). Its partitions wait until the stall
/// watch makes the bridge rejoin. tansu 0.6 does not wait for the hung
/// member at that rebalance and drops it within a rejoin or two, so the
/// group recovers without the bridge reading alone (which the in-process
/// log's never-forming group tests: `MemoryLog::set_group_stuck`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_group_member_s_partitions_are_stored_once_the_bridge_rejoins() {
    let run = async {
        let mut g = StrandedGroup::start("10000").await;
        let mut cfg = events::KafkaConfig::new(g.kafka.brokers());
        cfg.consumer.insert("max.poll.interval.ms".into(), "600000".into());
        let topics = &g.topics;
        let mut hung =
            events::kafka::KafkaConsumer::new(&cfg, &format!("{topics}-bridge"), &[&format!("{topics}.messages")])
                .expect("the second member");
        let taken = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                if let events::ConsumerEvent::Assigned(tps) = hung.recv().await.expect("the second member polls") {
                    break tps;
                }
            }
        })
        .await
        .expect("the second member was given partitions within 60 s");
        eprintln!("the second member took {taken:?} and stops polling");
        assert!(
            !taken.is_empty(),
            "the second member took no partition: nothing was withheld"
        );

        let m = g.all_stored_within(Duration::from_secs(150)).await;
        let rejoins = metric(&m, "rumor_bridge_group_rejoins_total");
        eprintln!(
            "bridge: group rejoins {rejoins}, reads alone {}",
            metric(&m, "rumor_bridge_reads_alone_total")
        );
        assert!(rejoins >= 1, "the hung member's partition was stored without a rejoin");
        let _ = g.bridge.child.kill();
        tokio::task::spawn_blocking(move || drop(hung));
    };
    tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("scenario did not finish in time");
}

/// Injects messages `range` on conversations `conv-0..conv-9` through the
/// bridge, each retried until the bridge takes it (its producer may still
/// be recovering from an outage).
async fn inject_all(bridge: &str, range: std::ops::Range<usize>) {
    for i in range {
        let body = format!(r#"{{"key":"conv-{}","payload":"f{i}","source":"crm"}}"#, i % 10);
        eventually(
            &format!("the bridge to take injected message {i}"),
            Duration::from_secs(60),
            || {
                let body = body.clone();
                async move { (http(bridge, "POST", "/v1/forward", Some(&body)).await.0 == 202).then_some(()) }
            },
        )
        .await;
    }
}

/// The same outage as the bridge's, on the forward node's own consumer
/// group: the node stops past its session, then the broker stops while it
/// tries to rejoin. Without the forward role's stall watch
/// (`forward_stall_timeout_ms = 0`) the stranded partition's injected
/// messages are never routed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_partition_the_group_strands_after_a_broker_outage_is_routed_once_the_node_rejoins() {
    let run = async {
        let kafka = PrivateKafka::start().await;
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let stall = std::env::var("RUMOR_TEST_STALL_TIMEOUT_MS").unwrap_or_else(|_| "10000".into());
        let events = event_config_at(kafka.brokers(), &topics);
        let forward = format!("{events}forward_stall_timeout_ms = {stall}\n");
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let fw = Proc::start_with("fw", "forward", &[&gw.gossip], &key, Some(&forward));
        let w1 = Proc::start_with("w1", "worker", &[&gw.gossip], &key, Some(&events));
        let names: BTreeSet<String> = ["gw", "fw", "w1"].map(String::from).into();
        let nodes = [gw, fw, w1];
        agree(&nodes, &names, 1).await;
        let bridge = BridgeProc::start_at(&db.url(), kafka.brokers(), &topics, &[]);
        let fw = &nodes[1].client();
        let routed = move || async move { metric(&fw.metrics().await.unwrap(), "rumor_forward_routed_total") };

        inject_all(&bridge.http, 0..10).await;
        eventually("the first 10 routed", Duration::from_secs(30), || async {
            (routed().await >= 10).then_some(())
        })
        .await;

        let fw_pid = nodes[1].pid();
        signal(fw_pid, "-STOP");
        tokio::time::sleep(Duration::from_secs(12)).await;
        signal(kafka.child.id(), "-STOP");
        signal(fw_pid, "-CONT");
        tokio::time::sleep(Duration::from_secs(40)).await;
        signal(kafka.child.id(), "-CONT");

        // Ten conversations cover both partitions.
        inject_all(&bridge.http, 10..30).await;
        let waited = eventually("all 30 routed after the outage", Duration::from_secs(90), || async {
            let n = routed().await;
            (n >= 30).then_some(n)
        })
        .await;
        let m = fw.metrics().await.unwrap();
        let rejoins = metric(&m, "rumor_forward_group_rejoins_total");
        eprintln!("forward: routed {waited}, group rejoins {rejoins}");
        assert_eq!(metric(&m, "rumor_forward_set_aside_total"), 0, "nothing set aside");
        // Without a rejoin the outage did not strand a partition this time,
        // and the test proved nothing.
        assert!(
            rejoins >= 1,
            "the forward node never rejoined: was a partition stranded?"
        );
    };
    tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("scenario did not finish in time");
}

/// Where `host:port` is in a database URL.
fn authority(url: &str) -> std::ops::Range<usize> {
    let start = url.find('@').map_or_else(|| url.find("://").unwrap() + 3, |i| i + 1);
    start..start + url[start..].find('/').unwrap()
}

/// `url` with its `host:port` replaced by `addr`.
fn via(url: &str, addr: &str) -> String {
    let at = authority(url);
    format!("{}{addr}{}", &url[..at.start], &url[at.end..])
}

fn host_port(url: &str) -> String {
    url[authority(url)].to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_down_mid_run_then_back_loses_no_row_and_stores_none_twice() {
    within(async {
        let db = TestDb::create("rumor_cli").await;
        let pg = Proxy::start(host_port(&db.url())).await;
        let topics = format!("t{}", nanos());
        let events = event_config(&topics);
        let nodes = gateway_and_worker(&events).await;
        let bridge = BridgeProc::start_at(&via(&db.url(), &pg.addr), &kafka(), &topics, &[]);
        let gw = nodes[0].client();

        let mut ids = send_all(&gw, 0..10).await;
        eventually("the first 20 rows", Duration::from_secs(30), || async {
            (count(&db, "SELECT count(*) FROM messages").await == 20).then_some(())
        })
        .await;

        pg.cut();
        ids.extend(send_all(&gw, 10..30).await);
        eventually("the bridge to report not ready", Duration::from_secs(30), || async {
            let (status, _) = http(&bridge.http, "GET", "/readyz", None).await;
            (status == 503).then_some(())
        })
        .await;
        eventually("the bridge to count failed writes", Duration::from_secs(30), || async {
            let (_, m) = http(&bridge.http, "GET", "/metrics", None).await;
            (metric(&m, "rumor_bridge_db_errors_total") > 0).then_some(())
        })
        .await;
        assert_eq!(count(&db, "SELECT count(*) FROM messages").await, 20);

        pg.restore();
        ids.extend(send_all(&gw, 30..40).await);
        eventually(
            "all 80 rows after PostgreSQL came back",
            Duration::from_secs(60),
            || async { (count(&db, "SELECT count(*) FROM messages").await >= 80).then_some(()) },
        )
        .await;
        eventually("the bridge to report ready again", Duration::from_secs(20), || async {
            let (status, _) = http(&bridge.http, "GET", "/readyz", None).await;
            (status == 200).then_some(())
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_stored_once(&db.url(), &ids).await;
        assert_eq!(
            count(&db, "SELECT count(*) FROM dead_letters").await,
            0,
            "an outage is not poison"
        );
    })
    .await;
}

/// The client edge's API key in the edge tests, and the config that holds
/// its hash.
const EDGE_KEY: &str = "edge-test-key";

fn edge_config() -> String {
    format!(
        "[[edge.api_keys]]\nname = \"test\"\nsha256 = \"{}\"\n",
        gateway::key_hash(EDGE_KEY)
    )
}

/// Two gateways with an edge, a forward node and `workers` workers whose
/// echo streams 20 chunks 100 ms apart.
async fn edge_cluster(workers: usize, key: &str) -> Vec<Proc> {
    let edge = edge_config();
    let gw1 = Proc::start_with("gw1", "gateway", &[], key, Some(&edge));
    let seed = gw1.gossip.clone();
    let mut nodes = vec![gw1, Proc::start_with("gw2", "gateway", &[&seed], key, Some(&edge))];
    let slow = "[worker.echo]\nchunks = 20\ndelay_ms = 100\n";
    for i in 1..=workers {
        nodes.push(Proc::start_with(&format!("w{i}"), "worker", &[&seed], key, Some(slow)));
    }
    let names: BTreeSet<String> = nodes.iter().map(|p| p.name.clone()).collect();
    agree(&nodes, &names, workers).await;
    nodes
}

/// A JSON WebSocket client of the edge.
struct EdgeWs(tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>);

impl EdgeWs {
    async fn connect(edge: &str) -> EdgeWs {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let mut req = format!("ws://{edge}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {EDGE_KEY}").parse().unwrap());
        EdgeWs(tokio_tungstenite::connect_async(req).await.unwrap().0)
    }

    async fn send(&mut self, v: serde_json::Value) {
        use futures_util::SinkExt as _;
        self.0
            .send(tokio_tungstenite::tungstenite::Message::text(v.to_string()))
            .await
            .unwrap();
    }

    async fn next(&mut self) -> serde_json::Value {
        use futures_util::StreamExt as _;
        loop {
            match self.0.next().await.expect("open").expect("a frame") {
                tokio_tungstenite::tungstenite::Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                _ => continue,
            }
        }
    }

    /// Event frames up to and including an `end` (or, with `gap_ends`, a
    /// `gap`).
    async fn events_until_end(&mut self) -> Vec<serde_json::Value> {
        let mut events = Vec::new();
        loop {
            let f = self.next().await;
            if let Some(e) = f.get("event") {
                events.push(e.clone());
                if e.get("end").is_some() {
                    return events;
                }
            }
        }
    }
}

fn seq(position: &serde_json::Value) -> u64 {
    position["seq"].as_str().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_mid_reply_loses_nothing_for_a_client_that_resumes_on_another() {
    within(async {
        let key = Key::generate().to_base64();
        let mut nodes = edge_cluster(2, &key).await;
        let text = "0123456789".repeat(4);
        let mut ws = EdgeWs::connect(nodes[0].edge.as_deref().unwrap()).await;
        ws.send(serde_json::json!({"send": {"conversation": "survivor", "client_id": "a", "text": text}}))
            .await;
        let mut seen = String::new();
        let mut last = serde_json::Value::Null;
        while seen.len() < 8 {
            let f = ws.next().await;
            if let Some(c) = f.get("chunk") {
                seen.push_str(c["text"].as_str().unwrap());
                last = c["position"].clone();
            }
        }
        nodes[0].kill();
        // The client reconnects to the other gateway and picks up where it was.
        let mut ws = EdgeWs::connect(nodes[1].edge.as_deref().unwrap()).await;
        ws.send(serde_json::json!({"watch": {"conversation": "survivor", "after": last}}))
            .await;
        let events = ws.events_until_end().await;
        assert!(events.iter().all(|e| e.get("gap").is_none()), "{events:?}");
        assert_eq!(seq(&events[0]["position"]), seq(&last) + 1, "{events:?}");
        assert!(
            events
                .windows(2)
                .all(|w| seq(&w[1]["position"]) == seq(&w[0]["position"]) + 1),
            "{events:?}"
        );
        seen.extend(events.iter().filter_map(|e| e["chunk"]["text"].as_str()));
        assert_eq!(seen, text);
        assert!(events.last().unwrap()["end"].get("error").is_none(), "{events:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_is_told_of_the_gap_when_the_owner_dies_mid_reply_and_follows_the_new_owner() {
    within(async {
        let key = Key::generate().to_base64();
        let mut nodes = edge_cluster(2, &key).await;
        let mut watcher = EdgeWs::connect(nodes[1].edge.as_deref().unwrap()).await;
        watcher
            .send(serde_json::json!({"watch": {"conversation": "orphan"}}))
            .await;
        assert!(watcher.next().await.get("watching").is_some());
        let mut sender = EdgeWs::connect(nodes[0].edge.as_deref().unwrap()).await;
        sender
            .send(serde_json::json!({"send": {"conversation": "orphan", "client_id": "a", "text": "x".repeat(40)}}))
            .await;
        // The owner streams a few chunks, then is killed.
        let mut owner = None;
        let mut before = Vec::new();
        while before.len() < 4 {
            let f = watcher.next().await;
            if let Some(e) = f.get("event") {
                if let Some(w) = e["chunk"]["worker"].as_str() {
                    owner = Some(w.to_owned());
                }
                before.push(e.clone());
            }
        }
        let owner = owner.unwrap();
        let victim = nodes.iter().position(|p| p.name == owner).unwrap();
        nodes[victim].kill();
        // The sender's reply ends with an error, not silently.
        loop {
            let f = sender.next().await;
            if let Some(e) = f.get("error") {
                assert_eq!(e["client_id"], "a", "{f}");
                break;
            }
            assert!(f.get("done").is_none(), "a reply cut mid-stream is not done: {f}");
        }
        // The watcher is told what it may have missed before anything from
        // the new owner; then it sees the next message there.
        sender
            .send(serde_json::json!({"send": {"conversation": "orphan", "client_id": "b", "text": "next"}}))
            .await;
        let mut after = Vec::new();
        loop {
            let f = watcher.next().await;
            let Some(e) = f.get("event") else { continue };
            after.push(e.clone());
            if e["message"]["text"] == "next" {
                break;
            }
        }
        let gap = after.iter().position(|e| e.get("gap").is_some());
        let epoch = before[0]["position"]["epoch"].clone();
        let first_new = after
            .iter()
            .position(|e| e["position"]["epoch"] != epoch && e.get("gap").is_none());
        assert!(gap.is_some() && gap < first_new, "{after:?}");
        assert_eq!(after[gap.unwrap()]["gap"]["reason"], "epoch", "{after:?}");
        let rest = watcher.events_until_end().await;
        let text: String = rest.iter().filter_map(|e| e["chunk"]["text"].as_str()).collect();
        assert_eq!(text, "next");
        assert_ne!(rest[0]["chunk"]["worker"], owner);
    })
    .await;
}

/// What [`recording_backend`] was sent, request by request: the message
/// list, and the `traceparent` header (empty when there was none).
type Seen = Arc<std::sync::Mutex<Vec<(serde_json::Value, String)>>>;

/// An OpenAI-compatible backend that records what it is sent and answers
/// each request with "answer N", ending its stream 100 ms after the answer.
async fn recording_backend() -> (String, Seen) {
    use axum::response::IntoResponse as _;
    let seen: Seen = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let seen = kept.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let tp = headers.get("traceparent").and_then(|v| v.to_str().ok()).unwrap_or("");
                let n = {
                    let mut s = seen.lock().unwrap();
                    s.push((v["messages"].clone(), tp.to_owned()));
                    s.len()
                };
                let chunk = serde_json::json!({"choices": [{"index": 0, "delta": {"content": format!("answer {n}")}}]});
                // The answer, then the end 100 ms later, as a model streams:
                // the reply is on its way before the backend call ends.
                let events = [format!("data: {chunk}\n\n"), "data: [DONE]\n\n".to_owned()];
                let body = futures_util::stream::unfold(0, move |i| {
                    let event = events.get(i).cloned();
                    async move {
                        if i > 0 {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        event.map(|e| (Ok::<_, std::io::Error>(e), i + 1))
                    }
                });
                (
                    [("content-type", "text/event-stream")],
                    axum::body::Body::from_stream(body),
                )
                    .into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/v1"), seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owner_killed_mid_conversation_its_successor_answers_the_next_turn_with_the_whole_history() {
    within(async {
        let db = TestDb::create("rumor_cli").await;
        let topics = format!("t{}", nanos());
        let bridge = BridgeProc::start(&db, &topics, &[]);
        let (backend, seen) = recording_backend().await;
        let config = format!(
            "{}[worker]\nprocessor = \"openai\"\n[worker.openai]\nbase_url = \"{backend}\"\nmodel = \"recorder\"\n\
             system_prompt = \"Be brief.\"\nhistory = \"{}\"\n",
            event_config(&topics),
            bridge.http
        );
        let key = Key::generate().to_base64();
        let gw = Proc::start("gw", "gateway", &[], &key);
        let seed = gw.gossip.clone();
        let mut nodes = vec![
            gw,
            Proc::start_with("w1", "worker", &[&seed], &key, Some(&config)),
            Proc::start_with("w2", "worker", &[&seed], &key, Some(&config)),
        ];
        let names: BTreeSet<String> = ["gw", "w1", "w2"].map(String::from).into();
        agree(&nodes, &names, 2).await;
        let turn = |text: &str| SendRequest {
            key: "conv-context".into(),
            payload: text.into(),
            timeout_ms: Some(20_000),
            ..Default::default()
        };
        let mut owner = String::new();
        for (i, text) in ["first", "second", "third"].iter().enumerate() {
            let lines = nodes[0].client().send(&turn(text), |_| {}).await.unwrap();
            let last = lines.last().unwrap();
            assert!(last.last && last.error.is_none(), "{last:?}");
            assert_eq!(
                lines.iter().map(|l| l.data.as_str()).collect::<String>(),
                format!("answer {}", i + 1)
            );
            owner.clone_from(&last.worker);
        }
        // The owner sent the history it held: the third request carries both earlier turns.
        assert_eq!(seen.lock().unwrap()[2].0.as_array().unwrap().len(), 1 + 2 * 2 + 1);
        eventually(
            "the three turns and their answers in the bridge",
            Duration::from_secs(30),
            || async {
                history(&bridge.http, "conv-context")
                    .await
                    .filter(|h| h.messages.len() >= 6)
            },
        )
        .await;

        let at = nodes.iter().position(|n| n.name == owner).unwrap();
        nodes[at].kill();
        let survivor = nodes.remove(at);
        drop(survivor);
        let left: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
        agree(&nodes, &left, 1).await;

        let lines = nodes[0].client().send(&turn("fourth"), |_| {}).await.unwrap();
        let last = lines.last().unwrap();
        assert!(last.last && last.error.is_none(), "{last:?}");
        assert_ne!(last.worker, owner, "the next turn is answered by the new owner");
        let sent = seen.lock().unwrap().last().unwrap().0.clone();
        let contents: Vec<(&str, &str)> = sent
            .as_array()
            .unwrap()
            .iter()
            .map(|m| (m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        assert_eq!(
            contents,
            [
                ("system", "Be brief."),
                ("user", "first"),
                ("assistant", "answer 1"),
                ("user", "second"),
                ("assistant", "answer 2"),
                ("user", "third"),
                ("assistant", "answer 3"),
                ("user", "fourth"),
            ],
            "the new owner rebuilt the whole history from the bridge"
        );
        let metrics = http(
            &nodes[1..].iter().find(|n| n.name != "gw").unwrap().admin,
            "GET",
            "/metrics",
            None,
        )
        .await
        .1;
        assert_eq!(
            metric(&metrics, "rumor_processor_context_rebuilt_total"),
            1,
            "{metrics}"
        );
    })
    .await;
}

/// `promtool check metrics` on `text`: its complaints, empty when the
/// exposition follows Prometheus's naming conventions.
fn promtool_complaints(promtool: &str, text: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {promtool}: {e}"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && said.trim().is_empty() {
        String::new()
    } else {
        format!("exit {}: {said}", out.status)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metrics_endpoint_follows_the_prometheus_conventions_promtool_checks() {
    let Ok(promtool) = std::env::var("RUMOR_TEST_PROMTOOL") else {
        eprintln!(
            "skipped: RUMOR_TEST_PROMTOOL is not set (scripts/test installs Debian's prometheus package and sets it)"
        );
        return;
    };
    within(async {
        let db = TestDb::create("rumor_prom").await;
        let topics = format!("t{}", nanos());
        let events = event_config(&topics);
        let key = Key::generate().to_base64();
        let gw_config = format!("{}\n{events}", edge_config());
        let gw = Proc::start_with("gw", "gateway", &[], &key, Some(&gw_config));
        let w1 = Proc::start_with("w1", "worker", &[&gw.gossip], &key, Some(&events));
        let names: BTreeSet<String> = ["gw", "w1"].map(String::from).into();
        let nodes = [gw, w1];
        agree(&nodes, &names, 1).await;
        let bridge = BridgeProc::start(&db, &topics, &[]);
        let edge = nodes[0].edge.clone().expect("the gateway serves its edge");

        // One message through the edge, so that every histogram has a sample.
        let mut ws = EdgeWs::connect(&edge).await;
        ws.send(serde_json::json!({"send": {"conversation": "prom-1", "text": "count me", "client_id": "c1"}}))
            .await;
        loop {
            let f = ws.next().await;
            if f.get("done").is_some() {
                break;
            }
            assert!(f.get("error").is_none(), "{f}");
        }
        eventually("the message in PostgreSQL", Duration::from_secs(30), || async {
            history(&bridge.http, "prom-1").await.filter(|h| h.messages.len() >= 2)
        })
        .await;

        let scrape = |addr: String| async move { http(&addr, "GET", "/metrics", None).await };
        let endpoints = [
            ("gateway admin", nodes[0].admin.clone()),
            ("gateway edge", edge.clone()),
            ("worker admin", nodes[1].admin.clone()),
            ("bridge", bridge.http.clone()),
        ];
        let mut complaints = Vec::new();
        let mut texts = BTreeMap::new();
        for (what, addr) in endpoints {
            let (status, text) = scrape(addr).await;
            assert_eq!(status, 200, "{what}: {text}");
            let said = promtool_complaints(&promtool, &text);
            if !said.is_empty() {
                complaints.push(format!("{what}: {said}"));
            }
            texts.insert(what, text);
        }
        assert!(
            complaints.is_empty(),
            "promtool check metrics:\n{}",
            complaints.join("\n")
        );
        // The latency histograms are there, in seconds, with the message counted.
        let count = |what: &str, name: &str| metric(&texts[what], &format!("{name}_count"));
        assert_eq!(count("gateway edge", "rumor_edge_reply_seconds"), 1);
        assert_eq!(count("gateway edge", "rumor_edge_first_chunk_seconds"), 1);
        assert_eq!(count("worker admin", "rumor_worker_processing_seconds"), 1);
        assert_eq!(count("worker admin", "rumor_worker_queued_seconds"), 1);
        assert!(count("bridge", "rumor_bridge_batch_seconds") >= 1);
    })
    .await;
}

/// A small OTLP/gRPC trace receiver (the collector's trace service, on the
/// opentelemetry-proto types): it keeps every span the processes export.
mod otlp {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
    use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};

    /// One span as received.
    #[derive(Debug, Clone)]
    pub(crate) struct Got {
        /// The exporting process's `service.name`.
        pub(crate) service: String,
        pub(crate) name: String,
        pub(crate) trace_id: Vec<u8>,
        pub(crate) span_id: Vec<u8>,
        /// Empty for a root span.
        pub(crate) parent: Vec<u8>,
        pub(crate) attributes: BTreeMap<String, String>,
        /// When it ended, in unix nanoseconds.
        pub(crate) end: u64,
    }

    #[derive(Debug, Clone, Default)]
    pub(crate) struct Receiver {
        pub(crate) spans: Arc<Mutex<Vec<Got>>>,
    }

    fn text(v: Option<&AnyValue>) -> String {
        match v.and_then(|v| v.value.as_ref()) {
            Some(Value::StringValue(s)) => s.clone(),
            Some(Value::IntValue(i)) => i.to_string(),
            Some(Value::BoolValue(b)) => b.to_string(),
            Some(Value::DoubleValue(d)) => d.to_string(),
            Some(other) => format!("{other:?}"),
            None => String::new(),
        }
    }

    fn map(kvs: &[KeyValue]) -> BTreeMap<String, String> {
        kvs.iter().map(|kv| (kv.key.clone(), text(kv.value.as_ref()))).collect()
    }

    #[tonic::async_trait]
    impl TraceService for Receiver {
        async fn export(
            &self,
            request: tonic::Request<ExportTraceServiceRequest>,
        ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
            let mut got = Vec::new();
            for rs in request.into_inner().resource_spans {
                let resource = rs.resource.map(|r| map(&r.attributes)).unwrap_or_default();
                let service = resource.get("service.name").cloned().unwrap_or_default();
                for ss in rs.scope_spans {
                    for s in ss.spans {
                        got.push(Got {
                            service: service.clone(),
                            name: s.name,
                            trace_id: s.trace_id,
                            span_id: s.span_id,
                            parent: s.parent_span_id,
                            attributes: map(&s.attributes),
                            end: s.end_time_unix_nano,
                        });
                    }
                }
            }
            self.spans.lock().unwrap().extend(got);
            Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
        }
    }

    impl Receiver {
        /// Serves on 127.0.0.1; returns the receiver and its endpoint URL.
        pub(crate) async fn start() -> (Receiver, String) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let receiver = Receiver::default();
            let service = TraceServiceServer::new(receiver.clone());
            tokio::spawn(async move {
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                    .await
            });
            (receiver, format!("http://{addr}"))
        }

        /// The spans of trace `trace_id` received so far.
        pub(crate) fn trace(&self, trace_id: &[u8]) -> Vec<Got> {
            let spans = self.spans.lock().unwrap();
            spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
        }

        /// The trace id of the `edge` span of message `id`, once received.
        pub(crate) fn trace_of(&self, id: &str) -> Option<Vec<u8>> {
            let spans = self.spans.lock().unwrap();
            spans
                .iter()
                .find(|s| s.name == "edge" && s.attributes.get("id").map(String::as_str) == Some(id))
                .map(|s| s.trace_id.clone())
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Checks that `spans` form one trace hanging from one span whose parent is
/// `root_parent` (empty: a root span): every other span's parent is a span
/// of the trace. Returns the spans as "service/name" from the top, or why not.
fn connected(spans: &[otlp::Got], root_parent: &[u8]) -> Result<Vec<String>, String> {
    let ids: BTreeSet<&[u8]> = spans.iter().map(|s| s.span_id.as_slice()).collect();
    let tops: Vec<&otlp::Got> = spans.iter().filter(|s| s.parent == root_parent).collect();
    if tops.len() != 1 {
        return Err(format!("{} spans hang from the client's span, not 1", tops.len()));
    }
    for s in spans {
        if s.parent != root_parent && !ids.contains(s.parent.as_slice()) {
            return Err(format!(
                "{}/{} has parent {}, which is not in the trace",
                s.service,
                s.name,
                hex(&s.parent)
            ));
        }
    }
    // Walk down from the top, so the order says who called whom.
    let mut order = Vec::new();
    let mut frontier = vec![tops[0]];
    while let Some(s) = frontier.pop() {
        order.push(format!("{}/{}", s.service, s.name));
        frontier.extend(spans.iter().filter(|c| c.parent == s.span_id));
    }
    if order.len() != spans.len() {
        return Err(format!(
            "only {} of {} spans are reached from the top",
            order.len(),
            spans.len()
        ));
    }
    Ok(order)
}

/// POSTs JSON `body` to `addr`'s `path` with `headers`; the status and body.
async fn post_with(addr: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let req = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         {extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_owned())
}

/// [`post_with`] to the edge, with its credential.
async fn edge_post(edge: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let auth = format!("Bearer {EDGE_KEY}");
    let mut all = vec![("authorization", auth.as_str())];
    all.extend_from_slice(headers);
    post_with(edge, path, body, &all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_yields_one_connected_trace_from_the_edge_through_the_worker_and_backend_to_the_bridge() {
    within(async {
        let (receiver, endpoint) = otlp::Receiver::start().await;
        let env = |service: &'static str| {
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()),
                ("OTEL_SERVICE_NAME", service.to_owned()),
                ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
            ]
        };
        let db = TestDb::create("rumor_traces").await;
        let topics = format!("t{}", nanos());
        let events = event_config(&topics);
        let bridge_env = env("rumor-bridge");
        let bridge_env: Vec<(&str, &str)> = bridge_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let bridge = BridgeProc::start_env(&db.url(), &kafka(), &topics, &[], &bridge_env);
        let (backend, seen) = recording_backend().await;
        let worker_config = format!(
            "{events}[worker]\nprocessor = \"openai\"\n[worker.openai]\nbase_url = \"{backend}\"\nmodel = \"m\"\n"
        );
        let key = Key::generate().to_base64();
        let gw_config = format!("{}\n{events}", edge_config());
        let start = |name: &'static str, roles: &str, seeds: &[&str], config: &str| {
            let vars = env(match name {
                "gw" => "rumor-gw",
                "fw" => "rumor-fw",
                "w1" => "rumor-w1",
                _ => "rumor-w2",
            });
            let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            Proc::start_env(name, roles, seeds, &key, Some(config), &vars)
        };
        let gw = start("gw", "gateway", &[], &gw_config);
        let seed = gw.gossip.clone();
        let nodes = [
            gw,
            start("fw", "forward", &[&seed], &events),
            start("w1", "worker", &[&seed], &worker_config),
            start("w2", "worker", &[&seed], &worker_config),
        ];
        let names: BTreeSet<String> = ["gw", "fw", "w1", "w2"].map(String::from).into();
        agree(&nodes, &names, 2).await;
        let edge = nodes[0].edge.clone().expect("the gateway serves its edge");

        // A client that traces: its span's context rides on a WebSocket send,
        // and on an HTTP send as the `traceparent` header.
        let client_span = [0xc1u8, 0x1e, 0x17, 0, 0, 0, 0, 0x01];
        let ws_trace = [0xabu8; 16];
        let http_trace = [0xcdu8; 16];
        let tp = |trace: &[u8; 16]| format!("00-{}-{}-01", hex(trace), hex(&client_span));
        let mut ws = EdgeWs::connect(&edge).await;
        ws.send(
            serde_json::json!({"send": {"conversation": "trace-ws", "text": "hello", "client_id": "c1",
            "traceparent": tp(&ws_trace)}}),
        )
        .await;
        loop {
            let f = ws.next().await;
            assert!(f.get("error").is_none(), "{f}");
            if f.get("done").is_some() {
                break;
            }
        }
        let (status, body) = edge_post(
            &edge,
            "/v1/conversations/trace-http/messages",
            r#"{"text": "hello"}"#,
            &[("traceparent", &tp(&http_trace))],
        )
        .await;
        assert_eq!(status, 200, "{body}");
        // A client that does not trace: the edge starts the trace.
        let (status, body) = edge_post(&edge, "/v1/conversations/trace-none/messages", r#"{"text": "hi"}"#, &[]).await;
        assert_eq!(status, 200, "{body}");
        let untraced_id = serde_json::from_str::<serde_json::Value>(&body).unwrap()["message_id"]
            .as_str()
            .unwrap_or_else(|| panic!("no message_id in {body}"))
            .to_owned();
        // A system outside injects a message through the bridge: the trace
        // crosses the forward topic to a forward node, then the mesh.
        let inject_trace = [0xefu8; 16];
        let (status, body) = post_with(
            &bridge.http,
            "/v1/forward",
            r#"{"key": "trace-inject", "payload": "from outside"}"#,
            &[("traceparent", &tp(&inject_trace))],
        )
        .await;
        assert_eq!(status, 202, "{body}");

        // Each message: the edge at the gateway, routing at the gateway and
        // at the worker, the worker's processing and its backend call, and
        // the bridge storing the message and its reply.
        let complete = |spans: &[otlp::Got]| {
            let n = |name: &str| spans.iter().filter(|s| s.name == name).count();
            n("edge") == 1 && n("message") == 2 && n("process") == 1 && n("backend") == 1 && n("store") == 2
        };
        let mut traces = Vec::new();
        for (what, trace, parent) in [
            ("WebSocket", ws_trace.to_vec(), client_span.to_vec()),
            ("HTTP", http_trace.to_vec(), client_span.to_vec()),
        ] {
            let spans = eventually(
                &format!("the {what} message's trace"),
                Duration::from_secs(30),
                || async {
                    let spans = receiver.trace(&trace);
                    complete(&spans).then_some(spans)
                },
            )
            .await;
            traces.push((what, spans, parent));
        }
        let trace = eventually("the untraced message's trace", Duration::from_secs(30), || async {
            let trace = receiver.trace_of(&untraced_id)?;
            let spans = receiver.trace(&trace);
            complete(&spans).then_some(spans)
        })
        .await;
        traces.push(("untraced HTTP", trace, Vec::new()));
        let injected = eventually("the injected message's trace", Duration::from_secs(30), || async {
            let spans = receiver.trace(&inject_trace);
            let n = |name: &str| spans.iter().filter(|s| s.name == name).count();
            (n("inject") == 1 && n("message") == 2 && n("process") == 1 && n("backend") == 1 && n("store") == 2)
                .then_some(spans)
        })
        .await;
        let order = connected(&injected, &client_span).unwrap_or_else(|e| panic!("injected: {e}\n{injected:#?}"));
        eprintln!("injected: {}", order.join(", "));
        assert_eq!(order[0], "rumor-bridge/inject");
        let inject = injected.iter().find(|s| s.name == "inject").unwrap();
        let at_fw = injected
            .iter()
            .find(|s| s.name == "message" && s.service == "rumor-fw")
            .expect("the forward node routed it");
        assert_eq!(at_fw.parent, inject.span_id, "the forward node routes under the inject");

        for (what, spans, parent) in &traces {
            let order =
                connected(spans, parent).unwrap_or_else(|e| panic!("{what}: not one connected trace: {e}\n{spans:#?}"));
            eprintln!("{what}: {}", order.join(", "));
            assert_eq!(order[0], "rumor-gw/edge", "{what}: {order:?}");
            let worker = spans.iter().find(|s| s.name == "process").unwrap();
            let by = |name: &str| spans.iter().find(|s| s.name == name).unwrap();
            let routed = |service: &str| {
                spans
                    .iter()
                    .find(|s| s.name == "message" && s.service == service)
                    .unwrap_or_else(|| panic!("{what}: no message span at {service}: {order:?}"))
            };
            assert!(
                ["rumor-w1", "rumor-w2"].contains(&worker.service.as_str()),
                "{what}: {order:?}"
            );
            // Each step is the child of the one before it, across processes.
            assert_eq!(
                routed("rumor-gw").parent,
                by("edge").span_id,
                "{what}: the gateway routes under the edge"
            );
            assert_eq!(
                routed(&worker.service).parent,
                routed("rumor-gw").span_id,
                "{what}: the worker's routing follows the gateway's"
            );
            assert_eq!(
                worker.parent,
                routed(&worker.service).span_id,
                "{what}: the worker processes what it routed"
            );
            assert_eq!(by("backend").service, worker.service, "{what}");
            assert_eq!(
                by("backend").parent,
                worker.span_id,
                "{what}: the backend call is the worker's"
            );
            // A span lasts as long as its step: the edge's until the reply
            // was sent, the worker's until its records were in the log.
            assert!(
                by("edge").end >= by("backend").end,
                "{what}: the edge span ended before the backend call"
            );
            assert!(
                worker.end >= by("backend").end,
                "{what}: the process span ended before the backend call"
            );
            for store in spans.iter().filter(|s| s.name == "store") {
                assert_eq!(store.service, "rumor-bridge", "{what}");
                assert_eq!(
                    store.parent, worker.span_id,
                    "{what}: the bridge stores what the worker recorded"
                );
                assert_eq!(store.attributes["outcome"], "committed", "{what}");
            }
            // The backend was told the trace too, with its call as the parent.
            let sent = format!("00-{}-{}-01", hex(&worker.trace_id), hex(&by("backend").span_id));
            assert!(
                seen.lock().unwrap().iter().any(|(_, tp)| *tp == sent),
                "{what}: the backend did not get {sent}"
            );
        }
        // Nothing but message spans was exported: no node, lane or gossip spans.
        let names: BTreeSet<String> = receiver.spans.lock().unwrap().iter().map(|s| s.name.clone()).collect();
        let expected: BTreeSet<String> = ["edge", "inject", "message", "process", "backend", "store"]
            .map(String::from)
            .into();
        assert_eq!(names, expected);
    })
    .await;
}
