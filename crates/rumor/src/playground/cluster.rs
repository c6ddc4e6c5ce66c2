//! The playground's local cluster: every node a separate `rumor node`
//! process on 127.0.0.1, started, killed, restarted, cut off and slowed on
//! request, and its state gathered for the page a few times a second.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use node::client::AdminClient;
use node::crypto::Key;
use proto::api::KeyOperation;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How a node process is started.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// The `rumor` binary (this one).
    pub(crate) exe: PathBuf,
    /// Config files and each node's log go here.
    pub(crate) dir: PathBuf,
    /// Membership preset of every node.
    pub(crate) preset: String,
    /// The event log's brokers, when there is one.
    pub(crate) brokers: Option<String>,
    /// Prefix of this run's topics and consumer groups, so that a playground
    /// pointed at a shared broker never touches another deployment's.
    pub(crate) topics: String,
    /// The bridge's HTTP address, for history.
    pub(crate) bridge: Option<String>,
    /// Workers answer with this OpenAI-compatible backend (base URL, model
    /// id); `None`: they echo, slowly enough to watch.
    pub(crate) backend: Option<(String, String)>,
}

/// What the process of a node is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Process {
    Running,
    /// Killed with SIGKILL.
    Killed,
    /// Stopped with SIGTERM: it left the cluster gracefully.
    Stopped,
    /// Exited by itself.
    Exited,
}

/// One node of the playground.
#[derive(Debug)]
pub(crate) struct NodeProc {
    pub(crate) name: String,
    pub(crate) role: &'static str,
    pub(crate) child: Option<Child>,
    pub(crate) process: Process,
    pub(crate) gossip: String,
    pub(crate) admin: String,
    pub(crate) edge: Option<String>,
    pub(crate) isolated: bool,
    pub(crate) delay_ms: u32,
    /// How many times it was started.
    pub(crate) starts: u32,
    /// The wait for a stopped process to exit, which a restart joins first.
    leaving: Option<tokio::task::JoinHandle<()>>,
}

/// The nodes, the gossip key, and what was done to them.
#[derive(Debug)]
pub(crate) struct Cluster {
    settings: Settings,
    /// The gossip keys a node starts with, comma-separated, the primary
    /// first: during a rotation, what the running nodes hold at that step.
    keys: String,
    /// The API key the playground uses at the gateways' client edge.
    pub(crate) edge_key: String,
    pub(crate) nodes: BTreeMap<String, NodeProc>,
    next_worker: usize,
    /// What was done, newest last, with the time (ms since the Unix epoch).
    pub(crate) actions: VecDeque<(u64, String)>,
}

/// Actions remembered for the page.
const MAX_ACTIONS: usize = 50;

/// Workers one playground starts at most: each is a process on this host.
pub(crate) const MAX_WORKERS: usize = 32;

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Starts a gateway, a forward node and `workers` workers, the gateway
    /// first (the others join through it).
    pub(crate) async fn start(settings: Settings, workers: usize) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&settings.dir).with_context(|| format!("creating {}", settings.dir.display()))?;
        let mut c = Cluster {
            settings,
            keys: Key::generate().to_base64(),
            edge_key: gateway::new_api_key(),
            nodes: BTreeMap::new(),
            next_worker: 1,
            actions: VecDeque::new(),
        };
        c.spawn("gateway-1", "gateway").await?;
        c.spawn("forward-1", "forward").await?;
        for _ in 0..workers {
            c.add_worker().await?;
        }
        Ok(c)
    }

    pub(crate) fn note(&mut self, what: impl Into<String>) {
        let what = what.into();
        tracing::info!("{what}");
        if self.actions.len() >= MAX_ACTIONS {
            self.actions.pop_front();
        }
        self.actions.push_back((unix_ms(), what));
    }

    /// The config file of a node with `role`.
    fn config_text(&self, role: &str) -> String {
        let mut t = String::from("[debug]\nfault_injection = true\n\n");
        if role == "gateway" {
            if let Some(bridge) = &self.settings.bridge {
                t += &format!("[edge]\nhistory = {bridge:?}\n\n");
            }
            t += &format!(
                "[[edge.api_keys]]\nname = \"playground\"\nsha256 = \"{}\"\n\n",
                gateway::key_hash(&self.edge_key)
            );
        }
        if role == "worker" {
            match &self.settings.backend {
                None => t += "[worker]\nprocessor = \"echo\"\n\n[worker.echo]\nchunks = 4\ndelay_ms = 40\n\n",
                Some((url, model)) => {
                    t += &format!(
                        "[worker]\nprocessor = \"openai\"\n\n[worker.openai]\nbase_url = {url:?}\nmodel = {model:?}\nmax_tokens = 96\n"
                    );
                    if let Some(bridge) = &self.settings.bridge {
                        t += &format!("history = {bridge:?}\n");
                    }
                    t += "\n";
                }
            }
        }
        if let Some(brokers) = &self.settings.brokers {
            let p = &self.settings.topics;
            t += &format!(
                "[events]\nbrokers = {brokers:?}\nmessages_topic = \"{p}.messages\"\nforward_topic = \"{p}.forward\"\nforward_group = \"{p}.forward\"\n"
            );
        }
        t
    }

    /// Gossip addresses of the running nodes, to join through.
    fn seeds(&self, except: &str) -> Vec<String> {
        self.nodes
            .values()
            .filter(|n| n.process == Process::Running && n.name != except)
            .map(|n| n.gossip.clone())
            .collect()
    }

    /// Starts (or starts again) node `name` and waits for the line that
    /// says where it listens.
    async fn spawn(&mut self, name: &str, role: &'static str) -> anyhow::Result<()> {
        let dir = &self.settings.dir;
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, self.config_text(role)).with_context(|| format!("writing {}", config.display()))?;
        let log_path = dir.join(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let mut cmd = Command::new(&self.settings.exe);
        // Only the config file, the flags and the keys shape a node: the
        // user's own RUMOR_* settings (brokers, advertise, ...) would override
        // the file. RUMOR_LOG is kept.
        cmd.env_clear()
            .envs(std::env::vars().filter(|(k, _)| !k.starts_with("RUMOR_") || k == "RUMOR_LOG"))
            .arg("node")
            .arg("--config")
            .arg(&config)
            .args(["--name", name, "--roles", role, "--preset", &self.settings.preset])
            .args(["--gossip-bind", "127.0.0.1:0", "--mesh-bind", "127.0.0.1:0"])
            .args(["--admin-bind", "127.0.0.1:0", "--edge-bind", "127.0.0.1:0"])
            // Its stdin is a pipe this process holds: when the playground dies,
            // however it dies, the node sees the end of it and leaves.
            .arg("--exit-on-eof")
            .env("RUMOR_KEYS", &self.keys)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true);
        let seeds = self.seeds(name);
        if !seeds.is_empty() {
            cmd.args(["--seeds", &seeds.join(",")]);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", self.settings.exe.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .ok()
            .and_then(|l| l.ok().flatten());
        let Some(first) = first else {
            let _ = child.start_kill();
            bail!("{name} did not start; its log: {}", log_path.display());
        };
        // The rest of stdout (joined, leaving, stopped) goes to its log.
        let log_path2 = log_path.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                append(&log_path2, &line);
            }
        });
        let field = |k: &str| {
            first
                .split_whitespace()
                .find_map(|w| w.strip_prefix(k))
                .map(str::to_owned)
        };
        let (Some(gossip), Some(admin)) = (field("gossip="), field("admin=")) else {
            bail!("{name} printed {first:?}, not its addresses");
        };
        let starts = self.nodes.get(name).map_or(0, |n| n.starts) + 1;
        self.nodes.insert(
            name.to_owned(),
            NodeProc {
                name: name.to_owned(),
                role,
                child: Some(child),
                process: Process::Running,
                gossip,
                admin,
                edge: field("edge="),
                isolated: false,
                delay_ms: 0,
                starts,
                leaving: None,
            },
        );
        self.note(if starts == 1 {
            format!("started {name} ({role})")
        } else {
            format!("restarted {name}")
        });
        Ok(())
    }

    fn get(&mut self, name: &str) -> anyhow::Result<&mut NodeProc> {
        self.nodes
            .get_mut(name)
            .with_context(|| format!("no node named {name:?}"))
    }

    fn running(&mut self, name: &str) -> anyhow::Result<&mut NodeProc> {
        let n = self.get(name)?;
        if n.process != Process::Running {
            bail!("{name} is not running");
        }
        Ok(n)
    }

    /// Adds a worker; its name.
    pub(crate) async fn add_worker(&mut self) -> anyhow::Result<String> {
        let workers = self
            .nodes
            .values()
            .filter(|n| n.role == "worker" && n.process == Process::Running)
            .count();
        if workers >= MAX_WORKERS {
            bail!("{workers} workers run already; the playground starts at most {MAX_WORKERS}");
        }
        let name = format!("worker-{}", self.next_worker);
        self.next_worker += 1;
        self.spawn(&name, "worker").await?;
        Ok(name)
    }

    /// SIGKILL: the node vanishes without a word.
    pub(crate) async fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let n = self.running(name)?;
        if let Some(mut child) = n.child.take() {
            let _ = child.kill().await;
        }
        n.process = Process::Killed;
        self.note(format!("killed {name} (SIGKILL)"));
        Ok(())
    }

    /// SIGTERM: the node leaves gracefully (a removed worker hands its share on).
    pub(crate) async fn stop(&mut self, name: &str) -> anyhow::Result<()> {
        let n = self.running(name)?;
        let Some(mut child) = n.child.take() else {
            bail!("{name} has no process")
        };
        if let Err(e) = terminate(&child).await {
            n.child = Some(child);
            bail!("could not send SIGTERM to {name}: {e}");
        }
        n.process = Process::Stopped;
        // Reaped in the background; killed if it has not left in 10 s.
        n.leaving = Some(tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }));
        self.note(format!("stopped {name} (SIGTERM: it leaves gracefully)"));
        Ok(())
    }

    /// Starts a node that is not running again, at new addresses, once its
    /// old process is gone.
    pub(crate) async fn restart(&mut self, name: &str) -> anyhow::Result<()> {
        let n = self.get(name)?;
        if n.process == Process::Running {
            self.kill(name).await?;
        }
        let n = self.get(name)?;
        if let Some(leaving) = n.leaving.take() {
            let _ = leaving.await;
        }
        let role = n.role;
        self.spawn(name, role).await
    }

    /// Cuts the node's gossip traffic (`true`) or restores it.
    pub(crate) async fn isolate(&mut self, name: &str, isolated: bool) -> anyhow::Result<()> {
        let n = self.running(name)?;
        client(&n.admin).isolate(isolated).await?;
        n.isolated = isolated;
        self.note(if isolated {
            format!("cut {name} off (its gossip traffic is dropped)")
        } else {
            format!("repaired {name}'s network")
        });
        Ok(())
    }

    /// Delays the node's outbound gossip traffic by `ms` (0 restores).
    pub(crate) async fn slow(&mut self, name: &str, ms: u32) -> anyhow::Result<()> {
        let n = self.running(name)?;
        client(&n.admin).delay(ms).await?;
        n.delay_ms = ms;
        self.note(if ms > 0 {
            format!("slowed {name}'s link: its gossip leaves {ms} ms late")
        } else {
            format!("restored {name}'s link")
        });
        Ok(())
    }

    /// Rotates the gossip key on every running node: install the new key
    /// everywhere, then use it everywhere, then remove the old one. A node
    /// started meanwhile gets the keys the running nodes hold at that step,
    /// so it can talk to them whatever step failed.
    pub(crate) async fn rotate_key(&mut self) -> anyhow::Result<String> {
        let new = Key::generate().to_base64();
        let old = self.keys.split(',').next().unwrap_or_default().to_owned();
        let running: Vec<(String, String)> = self
            .nodes
            .values()
            .filter(|n| n.process == Process::Running)
            .map(|n| (n.name.clone(), n.admin.clone()))
            .collect();
        let steps = [
            (KeyOperation::Install, &new, format!("{old},{new}")),
            (KeyOperation::Use, &new, format!("{new},{old}")),
            (KeyOperation::Remove, &old, new.clone()),
        ];
        for (op, key, keys_after) in steps {
            for (name, admin) in &running {
                client(admin).change_key(op, key).await.with_context(|| {
                    format!(
                        "key rotation step {} failed on {name}; the nodes hold keys up to the step before",
                        op.short_name()
                    )
                })?;
            }
            self.keys = keys_after;
        }
        let id = Key::from_base64(&new).map(|k| k.id().to_string()).unwrap_or_default();
        self.note(format!(
            "rotated the gossip key on {} nodes (install, use, remove the old one); new key id {id}",
            running.len()
        ));
        Ok(id)
    }

    /// Stops every node gracefully, killing those that take longer than 10 s.
    pub(crate) async fn shutdown(&mut self) {
        let names: Vec<String> = self
            .nodes
            .values()
            .filter(|n| n.process == Process::Running)
            .map(|n| n.name.clone())
            .collect();
        let mut children = Vec::new();
        for name in names {
            if let Some(n) = self.nodes.get_mut(&name)
                && let Some(child) = n.child.take()
            {
                let _ = terminate(&child).await;
                n.process = Process::Stopped;
                children.push(child);
            }
        }
        let leaving: Vec<_> = self.nodes.values_mut().filter_map(|n| n.leaving.take()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        for l in leaving {
            let _ = l.await;
        }
        for mut child in children {
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
    }

    /// Notices processes that exited by themselves.
    pub(crate) fn reap(&mut self) {
        let mut exited = Vec::new();
        for n in self.nodes.values_mut() {
            if let Some(child) = &mut n.child
                && let Ok(Some(status)) = child.try_wait()
            {
                n.child = None;
                n.process = Process::Exited;
                exited.push(format!("{} exited by itself ({status})", n.name));
            }
        }
        for e in exited {
            self.note(e);
        }
    }

    /// The settings nodes are started with.
    pub(crate) fn settings(&self) -> &Settings {
        &self.settings
    }
}

/// Sends SIGTERM to `child`.
async fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("it has exited")?;
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -TERM {pid}: {status}");
    Ok(())
}

fn append(path: &Path, line: &str) {
    use std::io::Write as _;
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = writeln!(f, "{line}");
    }
}

/// A client for a node's admin API, for actions: a node that does not
/// answer within 2 s is reported.
pub(crate) fn client(admin: &str) -> AdminClient {
    AdminClient::new(admin.to_owned()).with_timeout(Duration::from_secs(2))
}

/// A client for a glance at a node's state several times a second: an
/// answer later than 500 ms is no use to the page.
pub(crate) fn glance(admin: &str) -> AdminClient {
    AdminClient::new(admin.to_owned()).with_timeout(Duration::from_millis(500))
}
