//! The node config file (TOML), `RUMOR_*` environment overrides and flag
//! overrides, turned into a [`server::ServerConfig`]. Every setting and its
//! default is documented in docs/config.md; `examples/node.toml` shows them.
//!
//! Precedence: flags over environment over file over defaults. Every error
//! names the setting (as its TOML path, or the environment variable).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{Context, bail};
use node::{NodeConfig, Processor, Roles};
use processors::Echo;
use serde::Deserialize;
use server::{EventsConfig, ServerConfig};

/// The whole file. Unknown settings are refused, so a typo is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileConfig {
    pub(crate) name: String,
    pub(crate) roles: Vec<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) keys: Vec<String>,
    pub(crate) capacity: usize,
    pub(crate) drain_timeout_ms: u64,
    pub(crate) bind: Binds,
    pub(crate) advertise: Option<String>,
    pub(crate) membership: MembershipSection,
    pub(crate) mesh: MeshSection,
    pub(crate) worker: WorkerSection,
    pub(crate) events: EventsSection,
    pub(crate) debug: DebugSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct Binds {
    pub(crate) gossip: String,
    pub(crate) mesh: String,
    pub(crate) admin: String,
}

/// A preset and optional overrides of single parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MembershipSection {
    pub(crate) preset: String,
    pub(crate) probe_interval_ms: Option<u64>,
    pub(crate) probe_timeout_ms: Option<u64>,
    pub(crate) indirect_checks: Option<usize>,
    pub(crate) suspicion_mult: Option<u32>,
    pub(crate) retransmit_mult: Option<u32>,
    pub(crate) gossip_interval_ms: Option<u64>,
    pub(crate) push_pull_interval_ms: Option<u64>,
    pub(crate) max_packet_size: Option<usize>,
    pub(crate) dead_retention_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MeshSection {
    pub(crate) max_envelope_bytes: usize,
    pub(crate) max_hops: u32,
    pub(crate) default_timeout_ms: u64,
    pub(crate) connect_timeout_ms: u64,
    pub(crate) tls: Option<TlsSection>,
}

/// `[mesh.tls]`: present means TLS on the mesh; paths are read at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TlsSection {
    pub(crate) cert: std::path::PathBuf,
    pub(crate) key: std::path::PathBuf,
    pub(crate) ca: std::path::PathBuf,
    #[serde(default = "yes")]
    pub(crate) require_client_cert: bool,
    #[serde(default)]
    pub(crate) server_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// `[events]`: where workers publish what they process and forward nodes
/// read injected messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EventsSection {
    /// Kafka bootstrap servers; empty: no event log (nothing is published).
    pub(crate) brokers: String,
    pub(crate) messages_topic: String,
    pub(crate) forward_topic: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) create_topics: bool,
    pub(crate) forward_group: String,
    pub(crate) max_buffered: usize,
    pub(crate) max_buffered_bytes: usize,
}

impl Default for EventsSection {
    fn default() -> Self {
        let t = events::Topics::default();
        let p = events::publisher::PublisherConfig::default();
        Self {
            brokers: String::new(),
            messages_topic: t.messages,
            forward_topic: t.forward,
            partitions: t.partitions,
            replication: t.replication,
            create_topics: true,
            forward_group: "rumor-forward".into(),
            max_buffered: p.max_buffered,
            max_buffered_bytes: p.max_buffered_bytes,
        }
    }
}

impl EventsSection {
    /// `None` when no brokers are configured.
    fn setup(&self) -> anyhow::Result<Option<EventsConfig>> {
        if self.brokers.trim().is_empty() {
            return Ok(None);
        }
        if self.messages_topic.is_empty() || self.forward_topic.is_empty() {
            bail!("events.messages_topic and events.forward_topic: must not be empty");
        }
        if self.partitions < 1 || self.replication < 1 {
            bail!("events.partitions and events.replication: must be at least 1");
        }
        if self.max_buffered == 0 || self.max_buffered_bytes == 0 {
            bail!("events.max_buffered and events.max_buffered_bytes: must be at least 1");
        }
        if self.forward_group.is_empty() {
            bail!("events.forward_group: must not be empty");
        }
        Ok(Some(EventsConfig {
            log: events::EventLog::Kafka(events::KafkaConfig::new(self.brokers.trim())),
            topics: events::Topics {
                messages: self.messages_topic.clone(),
                forward: self.forward_topic.clone(),
                partitions: self.partitions,
                replication: self.replication,
            },
            create_topics: self.create_topics,
            forward_group: self.forward_group.clone(),
            publisher: events::publisher::PublisherConfig {
                max_buffered: self.max_buffered,
                max_buffered_bytes: self.max_buffered_bytes,
                ..Default::default()
            },
        }))
    }
}

/// `[debug]`: switches for tests, off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct DebugSection {
    pub(crate) fault_injection: bool,
}

/// `[worker]`: the worker's queues and the processor it calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct WorkerSection {
    pub(crate) dedup_window: usize,
    /// One of [`processors::NAMES`].
    pub(crate) processor: String,
    pub(crate) echo: EchoSection,
}

/// `[worker.echo]`: the built-in echo processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct EchoSection {
    pub(crate) chunks: usize,
    pub(crate) delay_ms: u64,
}

impl Default for FileConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            roles: vec!["worker".into()],
            seeds: Vec::new(),
            keys: Vec::new(),
            capacity: 256,
            drain_timeout_ms: 5000,
            bind: Binds::default(),
            advertise: None,
            membership: MembershipSection::default(),
            mesh: MeshSection::default(),
            worker: WorkerSection::default(),
            events: EventsSection::default(),
            debug: DebugSection::default(),
        }
    }
}

impl Default for Binds {
    fn default() -> Self {
        Self {
            gossip: "127.0.0.1:7946".into(),
            mesh: "127.0.0.1:7947".into(),
            admin: "127.0.0.1:7948".into(),
        }
    }
}

impl Default for MembershipSection {
    fn default() -> Self {
        Self {
            preset: "lan".into(),
            probe_interval_ms: None,
            probe_timeout_ms: None,
            indirect_checks: None,
            suspicion_mult: None,
            retransmit_mult: None,
            gossip_interval_ms: None,
            push_pull_interval_ms: None,
            max_packet_size: None,
            dead_retention_ms: None,
        }
    }
}

impl Default for MeshSection {
    fn default() -> Self {
        let d = node::mesh::MeshConfig::default();
        Self {
            max_envelope_bytes: d.max_envelope_bytes,
            max_hops: d.max_hops,
            default_timeout_ms: d.default_timeout.as_millis() as u64,
            connect_timeout_ms: d.connect_timeout.as_millis() as u64,
            tls: None,
        }
    }
}

impl Default for WorkerSection {
    fn default() -> Self {
        Self {
            dedup_window: node::worker::WorkerConfig::default().dedup_window,
            processor: "echo".into(),
            echo: EchoSection::default(),
        }
    }
}

impl Default for EchoSection {
    fn default() -> Self {
        let e = Echo::default();
        Self {
            chunks: e.chunks,
            delay_ms: e.delay.as_millis() as u64,
        }
    }
}

impl WorkerSection {
    /// The processor chosen by name, with its settings.
    fn processor(&self) -> anyhow::Result<Arc<dyn Processor>> {
        match self.processor.as_str() {
            "echo" => {
                if self.echo.chunks == 0 {
                    bail!("worker.echo.chunks: must be at least 1");
                }
                Ok(Arc::new(Echo {
                    chunks: self.echo.chunks,
                    delay: Duration::from_millis(self.echo.delay_ms),
                }))
            }
            other => bail!(
                "worker.processor: unknown processor {other:?}; known: {}",
                processors::NAMES.join(", ")
            ),
        }
    }
}

/// Overrides from flags; `None` keeps the value from the environment or file.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) name: Option<String>,
    pub(crate) roles: Option<Vec<String>>,
    pub(crate) seeds: Option<Vec<String>>,
    pub(crate) gossip_bind: Option<String>,
    pub(crate) mesh_bind: Option<String>,
    pub(crate) admin_bind: Option<String>,
    pub(crate) advertise: Option<String>,
    pub(crate) preset: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl FileConfig {
    /// Reads and parses `path`. toml's errors name the setting and its line.
    pub(crate) fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub(crate) fn parse(text: &str) -> anyhow::Result<Self> {
        toml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// Applies `RUMOR_*` variables found by `var` (the process environment in
    /// `main`, a map in tests).
    pub(crate) fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = var("RUMOR_NAME") {
            self.name = v;
        }
        if let Some(v) = var("RUMOR_ROLES") {
            self.roles = list(&v);
        }
        if let Some(v) = var("RUMOR_SEEDS") {
            self.seeds = list(&v);
        }
        if let Some(v) = var("RUMOR_KEYS") {
            self.keys = list(&v);
        }
        if let Some(v) = var("RUMOR_GOSSIP_BIND") {
            self.bind.gossip = v;
        }
        if let Some(v) = var("RUMOR_MESH_BIND") {
            self.bind.mesh = v;
        }
        if let Some(v) = var("RUMOR_ADMIN_BIND") {
            self.bind.admin = v;
        }
        if let Some(v) = var("RUMOR_ADVERTISE") {
            self.advertise = Some(v);
        }
        if let Some(v) = var("RUMOR_KAFKA_BROKERS") {
            self.events.brokers = v;
        }
        if let Some(v) = var("RUMOR_PRESET") {
            self.membership.preset = v;
        }
        if let Some(v) = var("RUMOR_CAPACITY") {
            self.capacity = v
                .trim()
                .parse()
                .with_context(|| format!("RUMOR_CAPACITY: {v:?} is not a whole number"))?;
        }
        Ok(())
    }

    pub(crate) fn apply(&mut self, o: Overrides) {
        let Overrides {
            name,
            roles,
            seeds,
            gossip_bind,
            mesh_bind,
            admin_bind,
            advertise,
            preset,
        } = o;
        self.name = name.unwrap_or(std::mem::take(&mut self.name));
        self.roles = roles.unwrap_or(std::mem::take(&mut self.roles));
        self.seeds = seeds.unwrap_or(std::mem::take(&mut self.seeds));
        self.bind.gossip = gossip_bind.unwrap_or(std::mem::take(&mut self.bind.gossip));
        self.bind.mesh = mesh_bind.unwrap_or(std::mem::take(&mut self.bind.mesh));
        self.bind.admin = admin_bind.unwrap_or(std::mem::take(&mut self.bind.admin));
        self.advertise = advertise.or(self.advertise.take());
        self.membership.preset = preset.unwrap_or(std::mem::take(&mut self.membership.preset));
    }

    /// Checks every setting and builds the node process's config.
    pub(crate) fn into_server_config(self) -> anyhow::Result<ServerConfig> {
        let events = self.events.setup()?;
        let mut server = ServerConfig::new(self.into_node_config()?);
        server.events = events;
        Ok(server)
    }

    /// Checks the node's settings and builds its config.
    fn into_node_config(self) -> anyhow::Result<NodeConfig> {
        if self.name.trim().is_empty() {
            bail!("name: must be set (in the file, RUMOR_NAME or --name)");
        }
        let roles: Roles = self
            .roles
            .join(",")
            .parse()
            .map_err(|e| anyhow::anyhow!("roles: {e}"))?;
        if roles.is_empty() {
            bail!("roles: at least one of gateway, forward, worker is needed");
        }
        let mut c = NodeConfig::new(self.name.trim());
        c.roles = roles;
        c.gossip.bind = addr("bind.gossip", &self.bind.gossip)?;
        c.mesh_bind = addr("bind.mesh", &self.bind.mesh)?;
        c.admin_bind = addr("bind.admin", &self.bind.admin)?;
        c.gossip.advertise = self.advertise.as_deref().map(|a| addr("advertise", a)).transpose()?;
        c.gossip.seeds = self
            .seeds
            .iter()
            .map(|s| addr("seeds", s))
            .collect::<anyhow::Result<_>>()?;
        for (i, k) in self.keys.iter().enumerate() {
            node::crypto::Key::from_base64(k).map_err(|e| anyhow::anyhow!("keys[{i}]: {e}"))?;
        }
        c.gossip.keys = self.keys;
        if self.capacity == 0 || self.capacity > u32::MAX as usize {
            bail!("capacity: must be between 1 and {}, got {}", u32::MAX, self.capacity);
        }
        c.worker.capacity = self.capacity;
        c.drain_timeout = Duration::from_millis(self.drain_timeout_ms);
        c.gossip.membership = membership_config(&self.membership)?;
        let m = &self.mesh;
        c.mesh.max_envelope_bytes = m.max_envelope_bytes;
        c.mesh.max_hops = m.max_hops;
        c.mesh.default_timeout = Duration::from_millis(m.default_timeout_ms);
        c.mesh.connect_timeout = Duration::from_millis(m.connect_timeout_ms);
        if let Some(t) = &m.tls {
            let mut tls = node::tls::MeshTls::from_files(&t.cert, &t.key, &t.ca)?;
            tls.require_client_cert = t.require_client_cert;
            tls.server_name = t.server_name.clone();
            c.mesh.tls = Some(tls);
        }
        c.fault_injection = self.debug.fault_injection;
        c.mesh.check().map_err(|e| anyhow::anyhow!("mesh: {e}"))?;
        c.worker.dedup_window = self.worker.dedup_window;
        if c.has_role(node::Role::Worker) {
            c.processor = Some(self.worker.processor()?);
        }
        Ok(c)
    }
}

fn membership_config(s: &MembershipSection) -> anyhow::Result<membership::Config> {
    let mut m = match s.preset.as_str() {
        "lan" => membership::Config::lan(),
        "wan" => membership::Config::wan(),
        "test" => membership::Config::for_tests(),
        other => bail!("membership.preset: unknown preset {other:?}; known: lan, wan, test"),
    };
    let ms = Duration::from_millis;
    if let Some(v) = s.probe_interval_ms {
        m.probe_interval = ms(v);
    }
    if let Some(v) = s.probe_timeout_ms {
        m.probe_timeout = ms(v);
    }
    if let Some(v) = s.indirect_checks {
        m.indirect_checks = v;
    }
    if let Some(v) = s.suspicion_mult {
        m.suspicion_mult = v;
    }
    if let Some(v) = s.retransmit_mult {
        m.retransmit_mult = v;
    }
    if let Some(v) = s.gossip_interval_ms {
        m.gossip_interval = (v > 0).then(|| ms(v));
    }
    if let Some(v) = s.push_pull_interval_ms {
        m.push_pull_interval = ms(v);
    }
    if let Some(v) = s.max_packet_size {
        m.max_packet_size = v;
    }
    if let Some(v) = s.dead_retention_ms {
        m.dead_retention = ms(v);
    }
    m.validate()
        .map_err(|e| anyhow::anyhow!("membership.{}: {}", e.field, e.reason))?;
    Ok(m)
}

/// Parses or resolves `host:port`, naming `setting` on failure.
fn addr(setting: &str, s: &str) -> anyhow::Result<SocketAddr> {
    if let Ok(a) = s.trim().parse() {
        return Ok(a);
    }
    s.trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .with_context(|| format!("{setting}: {s:?} is not a host:port that resolves"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn err(text: &str) -> String {
        match FileConfig::parse(text).and_then(FileConfig::into_server_config) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn the_example_file_parses_with_its_documented_values() {
        let text = include_str!("../../../examples/node.toml");
        let c = FileConfig::parse(text).unwrap().into_node_config().unwrap();
        assert_eq!(c.gossip.name, "worker-1");
        assert!(c.has_role(node::Role::Worker));
    }

    #[test]
    fn bad_settings_get_errors_naming_them() {
        assert!(err("roles = [\"worker\"]").contains("name:"));
        assert!(err("name = \"a\"\nroles = [\"boss\"]").contains("roles:"));
        assert!(err("name = \"a\"\n[bind]\ngossip = \"nowhere\"").contains("bind.gossip"));
        assert!(err("name = \"a\"\nkeys = [\"short\"]").contains("keys[0]"));
        assert!(err("name = \"a\"\n[membership]\npreset = \"moon\"").contains("membership.preset"));
        assert!(err("name = \"a\"\n[membership]\nprobe_timeout_ms = 0").contains("membership."));
        assert!(err("name = \"a\"\n[mesh]\nmax_hops = 0").contains("mesh:"));
        assert!(err("name = \"a\"\ncapacity = 0").contains("capacity"));
        assert!(err("name = \"a\"\ncapacty = 3").contains("capacty"));
        assert!(err("name = \"a\"\n[worker]\nprocessor = \"oracle\"").contains("worker.processor"));
        assert!(err("name = \"a\"\n[worker.echo]\nchunks = 0").contains("worker.echo.chunks"));
        assert!(err("name = 5").contains("name"));
    }

    #[test]
    fn environment_overrides_file_and_flags_override_environment() {
        let mut f = FileConfig::parse("name = \"file\"\nseeds = [\"127.0.0.1:1\"]\ncapacity = 4").unwrap();
        let env: HashMap<&str, &str> = [
            ("RUMOR_NAME", "env"),
            ("RUMOR_SEEDS", "127.0.0.1:2, 127.0.0.1:3"),
            ("RUMOR_ADMIN_BIND", "127.0.0.1:0"),
        ]
        .into();
        f.apply_env(|k| env.get(k).map(|v| v.to_string())).unwrap();
        f.apply(Overrides {
            name: Some("flag".into()),
            ..Overrides::default()
        });
        let c = f.into_node_config().unwrap();
        assert_eq!(c.gossip.name, "flag");
        assert_eq!(c.gossip.seeds.len(), 2);
        assert_eq!(c.admin_bind.port(), 0);
        assert_eq!(c.worker.capacity, 4);
        let mut bad = FileConfig::default();
        let e = bad
            .apply_env(|k| (k == "RUMOR_CAPACITY").then(|| "many".to_owned()))
            .unwrap_err();
        assert!(e.to_string().contains("RUMOR_CAPACITY"));
    }
}
