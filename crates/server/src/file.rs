//! The node's config file (TOML), `RUMOR_*` environment overrides and flag
//! overrides, turned into a [`ServerConfig`]. Every setting and its default
//! is documented in docs/config.md; `examples/node.toml` shows them.
//!
//! The binary reads the file and the environment and hands them here (the
//! text, and a function that looks variables up), so this module does no IO
//! of its own beyond loading TLS certificates the file names.
//!
//! Precedence: flags over environment over file over defaults. Every error
//! is a [`ConfigError`] naming one setting, as its TOML path or its
//! environment variable, and the reason once.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use node::{NodeConfig, Processor, Roles};
use processors::Echo;
use serde::Deserialize;

use crate::{EventsConfig, ServerConfig};

/// A setting that is not valid. Displays as `setting: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{setting}: {reason}")]
pub struct ConfigError {
    /// The setting as written in the file (`mesh.max_hops`), or the
    /// environment variable (`RUMOR_CAPACITY`).
    pub setting: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            reason: reason.into(),
        }
    }
}

fn bad<T>(setting: impl Into<String>, reason: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError::new(setting, reason))
}
/// The whole file. Unknown settings are refused, so a typo is an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub name: String,
    pub roles: Vec<String>,
    pub seeds: Vec<String>,
    pub keys: Vec<String>,
    pub capacity: usize,
    pub drain_timeout_ms: u64,
    pub bind: Binds,
    pub advertise: Option<String>,
    pub membership: MembershipSection,
    pub mesh: MeshSection,
    pub worker: WorkerSection,
    pub events: EventsSection,
    pub edge: EdgeSection,
    pub debug: DebugSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Binds {
    pub gossip: String,
    pub mesh: String,
    pub admin: String,
    /// The client edge of a gateway node.
    pub edge: String,
}

/// A preset and optional overrides of single parameters.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MembershipSection {
    pub preset: String,
    pub probe_interval_ms: Option<u64>,
    pub probe_timeout_ms: Option<u64>,
    pub indirect_checks: Option<usize>,
    pub suspicion_mult: Option<u32>,
    pub retransmit_mult: Option<u32>,
    pub gossip_interval_ms: Option<u64>,
    pub push_pull_interval_ms: Option<u64>,
    pub max_packet_size: Option<usize>,
    pub dead_retention_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MeshSection {
    pub max_envelope_bytes: usize,
    pub max_hops: u32,
    pub default_timeout_ms: u64,
    pub connect_timeout_ms: u64,
    pub tls: Option<TlsSection>,
}

/// `[mesh.tls]`: present means TLS on the mesh; paths are read at start.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    #[serde(default)]
    pub server_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// `[events]`: where workers publish what they process and forward nodes
/// read injected messages.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsSection {
    /// Kafka bootstrap servers; empty: no event log (nothing is published).
    pub brokers: String,
    pub messages_topic: String,
    pub forward_topic: String,
    pub partitions: i32,
    pub replication: i32,
    pub create_topics: bool,
    pub forward_group: String,
    /// Milliseconds a forward-topic partition's records may wait with the
    /// group's committed offset still before a forward node rejoins its
    /// group; 0 turns the watch off.
    pub forward_stall_timeout_ms: u64,
    pub max_buffered: usize,
    pub max_buffered_bytes: usize,
    pub max_record_bytes: usize,
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
            forward_stall_timeout_ms: 120_000,
            max_buffered: p.max_buffered,
            max_buffered_bytes: p.max_buffered_bytes,
            max_record_bytes: events::DEFAULT_MAX_RECORD_BYTES,
        }
    }
}

impl EventsSection {
    /// `None` when no brokers are configured.
    fn setup(&self) -> Result<Option<EventsConfig>, ConfigError> {
        if self.brokers.trim().is_empty() {
            return Ok(None);
        }
        if self.messages_topic.is_empty() || self.forward_topic.is_empty() {
            return bad("events.messages_topic", "the topics must not be empty");
        }
        if self.partitions < 1 || self.replication < 1 {
            return bad("events.partitions", "partitions and replication must be at least 1");
        }
        if self.max_buffered == 0 || self.max_buffered_bytes == 0 {
            return bad("events.max_buffered", "the buffer limits must be at least 1");
        }
        if self.forward_group.is_empty() {
            return bad("events.forward_group", "must not be empty");
        }
        if (1..10_000).contains(&self.forward_stall_timeout_ms) {
            return bad(
                "events.forward_stall_timeout_ms",
                "must be at least 10000 (or 0: off); shorter, a forwarder that restarts or rebalances would look stalled",
            );
        }
        if self.max_record_bytes < 64 * 1024 {
            return bad("events.max_record_bytes", "must be at least 65536");
        }
        let mut kafka = events::KafkaConfig::new(self.brokers.trim());
        kafka.max_record_bytes = self.max_record_bytes;
        Ok(Some(EventsConfig {
            log: events::EventLog::Kafka(kafka),
            topics: events::Topics {
                messages: self.messages_topic.clone(),
                forward: self.forward_topic.clone(),
                partitions: self.partitions,
                replication: self.replication,
            },
            create_topics: self.create_topics,
            forward_group: self.forward_group.clone(),
            forward_stall_timeout: (self.forward_stall_timeout_ms > 0)
                .then(|| Duration::from_millis(self.forward_stall_timeout_ms)),
            publisher: events::publisher::PublisherConfig {
                max_buffered: self.max_buffered,
                max_buffered_bytes: self.max_buffered_bytes,
                ..Default::default()
            },
        }))
    }
}

/// `[edge]`: the client edge of a gateway node (docs/protocol.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeSection {
    pub resume_grace_ms: u64,
    pub heartbeat_ms: u64,
    pub default_timeout_ms: u64,
    /// The bridge's HTTP address, for filling gaps from history; empty: none.
    pub history: String,
    pub watch_buffer: usize,
    pub drain_timeout_ms: u64,
    pub max_frame_bytes: usize,
    pub max_text_bytes: usize,
    pub max_in_flight: usize,
    pub max_watches: usize,
    pub messages_per_second: u32,
    pub burst: u32,
    pub max_connections_per_credential: usize,
    pub max_connections: usize,
    pub send_queue_bytes: usize,
    pub api_keys: Vec<ApiKeySection>,
    pub jwt: Option<JwtSection>,
}

/// `[[edge.api_keys]]`: one API key, kept as its SHA-256.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeySection {
    pub name: String,
    pub sha256: String,
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub watch_only: bool,
}

/// `[edge.jwt]`: how JWTs are checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSection {
    pub audience: String,
    #[serde(default)]
    pub issuer: Option<String>,
    /// A file holding the HS256 secret (its bytes, trailing newline removed).
    #[serde(default)]
    pub hs256_secret_file: Option<std::path::PathBuf>,
    /// A file holding the RS256 public key, PEM.
    #[serde(default)]
    pub rs256_public_key_file: Option<std::path::PathBuf>,
}

impl Default for EdgeSection {
    fn default() -> Self {
        let e = gateway::EdgeConfig::default();
        let l = e.limits;
        Self {
            resume_grace_ms: e.resume_grace.as_millis() as u64,
            heartbeat_ms: e.heartbeat.as_millis() as u64,
            default_timeout_ms: e.default_timeout.as_millis() as u64,
            history: String::new(),
            watch_buffer: e.watch_buffer,
            drain_timeout_ms: e.drain_timeout.as_millis() as u64,
            max_frame_bytes: l.max_frame_bytes,
            max_text_bytes: l.max_text_bytes,
            max_in_flight: l.max_in_flight,
            max_watches: l.max_watches,
            messages_per_second: l.messages_per_second,
            burst: l.burst,
            max_connections_per_credential: l.max_connections_per_credential,
            max_connections: l.max_connections,
            send_queue_bytes: l.send_queue_bytes,
            api_keys: Vec::new(),
            jwt: None,
        }
    }
}

impl EdgeSection {
    /// The edge's settings; reads the JWT key files.
    pub fn setup(&self) -> Result<gateway::EdgeConfig, ConfigError> {
        let positive = |setting: &str, v: u64| {
            if v == 0 {
                bad(format!("edge.{setting}"), "must be at least 1")
            } else {
                Ok(())
            }
        };
        positive("heartbeat_ms", self.heartbeat_ms)?;
        positive("max_frame_bytes", self.max_frame_bytes as u64)?;
        positive("max_text_bytes", self.max_text_bytes as u64)?;
        positive("max_in_flight", self.max_in_flight as u64)?;
        positive("messages_per_second", u64::from(self.messages_per_second))?;
        positive("max_connections", self.max_connections as u64)?;
        positive("send_queue_bytes", self.send_queue_bytes as u64)?;
        if self.max_text_bytes > self.max_frame_bytes {
            return bad("edge.max_text_bytes", "must not be more than edge.max_frame_bytes");
        }
        let default_timeout = proto::rules::timeout_ms("edge.default_timeout_ms", self.default_timeout_ms)
            .map_err(|e| ConfigError::new("edge.default_timeout_ms", e.to_string()))?;
        let keys: Vec<gateway::ApiKey> = self
            .api_keys
            .iter()
            .map(|k| gateway::ApiKey {
                name: k.name.clone(),
                sha256: k.sha256.clone(),
                prefix: k.prefix.clone(),
                watch_only: k.watch_only,
            })
            .collect();
        let jwt = self.jwt.as_ref().map(jwt_config).transpose()?;
        let auth = gateway::Auth::new(&keys, jwt.as_ref()).map_err(|e| ConfigError::new("edge", e.to_string()))?;
        Ok(gateway::EdgeConfig {
            auth,
            limits: gateway::Limits {
                max_frame_bytes: self.max_frame_bytes,
                max_text_bytes: self.max_text_bytes,
                max_in_flight: self.max_in_flight,
                max_watches: self.max_watches,
                messages_per_second: self.messages_per_second,
                burst: self.burst,
                max_connections_per_credential: self.max_connections_per_credential,
                max_connections: self.max_connections,
                send_queue_bytes: self.send_queue_bytes,
            },
            resume_grace: Duration::from_millis(self.resume_grace_ms),
            heartbeat: Duration::from_millis(self.heartbeat_ms),
            default_timeout,
            history: Some(self.history.trim().to_owned()).filter(|h| !h.is_empty()),
            watch_buffer: self.watch_buffer,
            drain_timeout: Duration::from_millis(self.drain_timeout_ms),
        })
    }
}

fn jwt_config(j: &JwtSection) -> Result<gateway::JwtConfig, ConfigError> {
    let read = |setting: &str, path: &std::path::Path| {
        std::fs::read(path)
            .map_err(|e| ConfigError::new(format!("edge.jwt.{setting}"), format!("{}: {e}", path.display())))
    };
    let hs256_secret = match &j.hs256_secret_file {
        Some(p) => {
            let mut secret = read("hs256_secret_file", p)?;
            while secret.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                secret.pop();
            }
            Some(secret)
        }
        None => None,
    };
    let rs256_public_pem = match &j.rs256_public_key_file {
        Some(p) => Some(
            String::from_utf8(read("rs256_public_key_file", p)?)
                .map_err(|_| ConfigError::new("edge.jwt.rs256_public_key_file", "not a PEM text file"))?,
        ),
        None => None,
    };
    Ok(gateway::JwtConfig {
        hs256_secret,
        rs256_public_pem,
        audience: j.audience.clone(),
        issuer: j.issuer.clone(),
    })
}

/// `[debug]`: switches for tests, off by default.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DebugSection {
    pub fault_injection: bool,
}

/// `[worker]`: the worker's queues and the processor it calls.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerSection {
    pub dedup_window: usize,
    /// How long a reply's final chunk waits for its records; 0: never.
    pub wait_for_records_ms: u64,
    /// One of [`processors::NAMES`].
    pub processor: String,
    pub echo: EchoSection,
    pub openai: OpenAiSection,
    pub webhook: WebhookSection,
}

/// `[worker.webhook]`: a URL that answers each message.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSection {
    pub name: String,
    pub url: String,
    /// Advertised in gossip for routing by model; empty: none.
    pub model: String,
    /// The environment variable holding a bearer token; empty: none.
    pub api_key_env: String,
    /// Read from `api_key_env` by [`FileConfig::apply_env`], never from the file.
    #[serde(skip)]
    pub api_key: Option<String>,
    pub max_concurrency: usize,
    pub max_queue: usize,
    pub first_byte_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub retries: u32,
    pub backoff_ms: u64,
    /// CA certificates (PEM file) an https URL must chain to; empty: the system's bundle.
    pub ca_file: String,
}

impl Default for WebhookSection {
    fn default() -> Self {
        let d = processors::WebhookConfig::default();
        Self {
            name: d.name,
            url: d.url,
            model: d.model,
            api_key_env: String::new(),
            api_key: None,
            max_concurrency: d.max_concurrency,
            max_queue: d.max_queue,
            first_byte_timeout_ms: d.first_byte_timeout.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            total_timeout_ms: d.total_timeout.as_millis() as u64,
            retries: d.retries,
            backoff_ms: d.backoff.as_millis() as u64,
            ca_file: String::new(),
        }
    }
}

/// The checks an HTTP backend's section passes: limits and timeouts of at
/// least 1, and the API key's variable set when one is named.
fn check_backend(
    section: &str,
    at_least_one: [(&str, u64); 4],
    api_key_env: &str,
    api_key: Option<&String>,
) -> Result<(), ConfigError> {
    for (setting, v) in at_least_one {
        if v == 0 {
            return bad(format!("{section}.{setting}"), "must be at least 1");
        }
    }
    if !api_key_env.is_empty() && api_key.is_none() {
        return bad(
            format!("{section}.api_key_env"),
            format!("the environment variable {api_key_env} is not set"),
        );
    }
    Ok(())
}

/// Where the system keeps its CA bundle (Debian and Ubuntu, Fedora and RHEL, Alpine and macOS).
const SYSTEM_CA_FILES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The CA certificates for a backend at `url`: none for http; for https
/// the PEM of `ca_file`, or of the system's bundle when it is empty.
fn ca_pem(url: &str, ca_file: &str, setting: &str) -> Result<Option<Vec<u8>>, ConfigError> {
    if !url.starts_with("https://") {
        return Ok(None);
    }
    if !ca_file.is_empty() {
        return std::fs::read(ca_file)
            .map(Some)
            .map_err(|e| ConfigError::new(setting, format!("reading {ca_file}: {e}")));
    }
    match SYSTEM_CA_FILES.iter().find_map(|f| std::fs::read(f).ok()) {
        Some(pem) => Ok(Some(pem)),
        None => Err(ConfigError::new(
            setting,
            format!(
                "an https backend needs CA certificates: none at {}; name a PEM file",
                SYSTEM_CA_FILES.join(", ")
            ),
        )),
    }
}

/// `[worker.openai]`: an OpenAI-compatible chat completions backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiSection {
    pub name: String,
    pub base_url: String,
    pub model: String,
    /// The environment variable holding the API key; empty: none.
    pub api_key_env: String,
    /// Read from `api_key_env` by [`FileConfig::apply_env`], never from the file.
    #[serde(skip)]
    pub api_key: Option<String>,
    pub max_concurrency: usize,
    pub max_queue: usize,
    pub first_token_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub total_timeout_ms: u64,
    pub retries: u32,
    pub backoff_ms: u64,
    pub system_prompt: String,
    pub context_bytes: usize,
    pub total_context_bytes: usize,
    pub max_tokens: u32,
    /// The bridge's HTTP address, to rebuild a conversation's history; empty: none.
    pub history: String,
    /// CA certificates (PEM file) an https backend must chain to; empty: the system's bundle.
    pub ca_file: String,
}

impl Default for OpenAiSection {
    fn default() -> Self {
        let d = processors::OpenAiConfig::default();
        Self {
            name: d.name,
            base_url: d.base_url,
            model: d.model,
            api_key_env: String::new(),
            api_key: None,
            max_concurrency: d.max_concurrency,
            max_queue: d.max_queue,
            first_token_timeout_ms: d.first_token_timeout.as_millis() as u64,
            idle_timeout_ms: d.idle_timeout.as_millis() as u64,
            total_timeout_ms: d.total_timeout.as_millis() as u64,
            retries: d.retries,
            backoff_ms: d.backoff.as_millis() as u64,
            system_prompt: d.system_prompt,
            context_bytes: d.context_bytes,
            total_context_bytes: d.total_context_bytes,
            max_tokens: d.max_tokens,
            history: String::new(),
            ca_file: String::new(),
        }
    }
}

/// `[worker.echo]`: the built-in echo processor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EchoSection {
    pub chunks: usize,
    pub delay_ms: u64,
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
            edge: EdgeSection::default(),
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
            edge: "127.0.0.1:8080".into(),
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
        let w = node::worker::WorkerConfig::default();
        Self {
            dedup_window: w.dedup_window,
            wait_for_records_ms: w.wait_for_records.map_or(0, |d| d.as_millis() as u64),
            processor: "echo".into(),
            echo: EchoSection::default(),
            openai: OpenAiSection::default(),
            webhook: WebhookSection::default(),
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
    fn processor(&self) -> Result<Arc<dyn Processor>, ConfigError> {
        match self.processor.as_str() {
            "echo" => {
                if self.echo.chunks == 0 {
                    return bad("worker.echo.chunks", "must be at least 1");
                }
                Ok(Arc::new(Echo {
                    chunks: self.echo.chunks,
                    delay: Duration::from_millis(self.echo.delay_ms),
                }))
            }
            "openai" => {
                let o = &self.openai;
                check_backend(
                    "worker.openai",
                    [
                        ("max_concurrency", o.max_concurrency as u64),
                        ("first_token_timeout_ms", o.first_token_timeout_ms),
                        ("idle_timeout_ms", o.idle_timeout_ms),
                        ("total_timeout_ms", o.total_timeout_ms),
                    ],
                    &o.api_key_env,
                    o.api_key.as_ref(),
                )?;
                let cfg = processors::OpenAiConfig {
                    name: o.name.clone(),
                    base_url: o.base_url.clone(),
                    model: o.model.clone(),
                    api_key: o.api_key.clone(),
                    ca_pem: ca_pem(&o.base_url, &o.ca_file, "worker.openai.ca_file")?,
                    max_concurrency: o.max_concurrency,
                    max_queue: o.max_queue,
                    first_token_timeout: Duration::from_millis(o.first_token_timeout_ms),
                    idle_timeout: Duration::from_millis(o.idle_timeout_ms),
                    total_timeout: Duration::from_millis(o.total_timeout_ms),
                    retries: o.retries,
                    backoff: Duration::from_millis(o.backoff_ms),
                    system_prompt: o.system_prompt.clone(),
                    context_bytes: o.context_bytes,
                    total_context_bytes: o.total_context_bytes,
                    max_tokens: o.max_tokens,
                    history: (!o.history.is_empty()).then(|| o.history.clone()),
                };
                match processors::OpenAi::new(cfg) {
                    Ok(p) => Ok(Arc::new(p)),
                    Err(e) => bad("worker.openai.base_url", e.to_string()),
                }
            }
            "webhook" => {
                let w = &self.webhook;
                check_backend(
                    "worker.webhook",
                    [
                        ("max_concurrency", w.max_concurrency as u64),
                        ("first_byte_timeout_ms", w.first_byte_timeout_ms),
                        ("idle_timeout_ms", w.idle_timeout_ms),
                        ("total_timeout_ms", w.total_timeout_ms),
                    ],
                    &w.api_key_env,
                    w.api_key.as_ref(),
                )?;
                let cfg = processors::WebhookConfig {
                    name: w.name.clone(),
                    url: w.url.clone(),
                    api_key: w.api_key.clone(),
                    ca_pem: ca_pem(&w.url, &w.ca_file, "worker.webhook.ca_file")?,
                    model: w.model.clone(),
                    max_concurrency: w.max_concurrency,
                    max_queue: w.max_queue,
                    first_byte_timeout: Duration::from_millis(w.first_byte_timeout_ms),
                    idle_timeout: Duration::from_millis(w.idle_timeout_ms),
                    total_timeout: Duration::from_millis(w.total_timeout_ms),
                    retries: w.retries,
                    backoff: Duration::from_millis(w.backoff_ms),
                };
                match processors::Webhook::new(cfg) {
                    Ok(p) => Ok(Arc::new(p)),
                    Err(e) => bad("worker.webhook.url", e.to_string()),
                }
            }
            other => bad(
                "worker.processor",
                format!("unknown processor {other:?}; known: {}", processors::NAMES.join(", ")),
            ),
        }
    }
}

/// Overrides from flags; `None` keeps the value from the environment or file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub name: Option<String>,
    pub roles: Option<Vec<String>>,
    pub seeds: Option<Vec<String>>,
    pub gossip_bind: Option<String>,
    pub mesh_bind: Option<String>,
    pub admin_bind: Option<String>,
    pub edge_bind: Option<String>,
    pub advertise: Option<String>,
    pub preset: Option<String>,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl FileConfig {
    /// Parses the file's text. toml's errors name the setting and its line.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::new("the config file", e.to_string().trim().to_owned()))
    }

    /// Applies `RUMOR_*` variables found by `var` (the process environment in
    /// `main`, a map in tests).
    pub fn apply_env(&mut self, var: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = var("RUMOR_NAME") {
            self.name = v;
        }
        if !self.worker.openai.api_key_env.is_empty() {
            self.worker.openai.api_key = var(&self.worker.openai.api_key_env);
        }
        if !self.worker.webhook.api_key_env.is_empty() {
            self.worker.webhook.api_key = var(&self.worker.webhook.api_key_env);
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
        if let Some(v) = var("RUMOR_EDGE_BIND") {
            self.bind.edge = v;
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
                .map_err(|_| ConfigError::new("RUMOR_CAPACITY", format!("{v:?} is not a whole number")))?;
        }
        Ok(())
    }

    pub fn apply(&mut self, o: Overrides) {
        let Overrides {
            name,
            roles,
            seeds,
            gossip_bind,
            mesh_bind,
            admin_bind,
            edge_bind,
            advertise,
            preset,
        } = o;
        self.bind.edge = edge_bind.unwrap_or(std::mem::take(&mut self.bind.edge));
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
    pub fn into_server_config(self) -> Result<ServerConfig, ConfigError> {
        let events = self.events.setup()?;
        let edge = if self.roles.iter().any(|r| r.trim() == "gateway") {
            Some((addr("bind.edge", &self.bind.edge)?, self.edge.setup()?))
        } else {
            None
        };
        let mut server = ServerConfig::new(self.into_node_config()?);
        server.events = events;
        server.edge = edge;
        Ok(server)
    }

    /// Checks the node's settings and builds its config.
    fn into_node_config(self) -> Result<NodeConfig, ConfigError> {
        if self.name.trim().is_empty() {
            return bad("name", "must be set (in the file, RUMOR_NAME or --name)");
        }
        let roles: Roles = self
            .roles
            .join(",")
            .parse()
            .map_err(|e: node::role::UnknownRole| ConfigError::new("roles", e.to_string()))?;
        if roles.is_empty() {
            return bad("roles", "at least one of gateway, forward, worker is needed");
        }
        let mut c = NodeConfig::new(self.name.trim());
        c.roles = roles;
        c.gossip.bind = addr("bind.gossip", &self.bind.gossip)?;
        c.mesh_bind = addr("bind.mesh", &self.bind.mesh)?;
        c.admin_bind = addr("bind.admin", &self.bind.admin)?;
        c.gossip.advertise = self.advertise.as_deref().map(|a| addr("advertise", a)).transpose()?;
        c.gossip.seeds = self.seeds.iter().map(|s| addr("seeds", s)).collect::<Result<_, _>>()?;
        for (i, k) in self.keys.iter().enumerate() {
            node::crypto::Key::from_base64(k).map_err(|e| ConfigError::new(format!("keys[{i}]"), e.to_string()))?;
        }
        c.gossip.keys = self.keys;
        if self.capacity == 0 || self.capacity > u32::MAX as usize {
            return bad(
                "capacity",
                format!("must be between 1 and {}, got {}", u32::MAX, self.capacity),
            );
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
            let mut tls = node::tls::MeshTls::from_files(&t.cert, &t.key, &t.ca)
                .map_err(|e| ConfigError::new("mesh.tls", e.to_string()))?;
            tls.require_client_cert = t.require_client_cert;
            tls.server_name = t.server_name.clone();
            c.mesh.tls = Some(tls);
        }
        c.fault_injection = self.debug.fault_injection;
        c.mesh.check().map_err(mesh_error)?;
        c.worker.dedup_window = self.worker.dedup_window;
        c.worker.wait_for_records = match self.worker.wait_for_records_ms {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        };
        if c.has_role(node::Role::Worker) {
            c.processor = Some(self.worker.processor()?);
        }
        Ok(c)
    }
}

/// The data plane's constraint that failed, named as its setting.
fn mesh_error(e: node::mesh::MeshConfigError) -> ConfigError {
    use node::mesh::MeshConfigError as E;
    let setting = match &e {
        E::NoHops => "mesh.max_hops",
        E::NoEnvelope => "mesh.max_envelope_bytes",
        E::NoTimeout => "mesh.default_timeout_ms",
        E::Tls(_) => "mesh.tls",
    };
    let text = e.to_string();
    let reason = text
        .strip_prefix(setting)
        .map_or(text.as_str(), |r| r.trim_start())
        .to_owned();
    ConfigError::new(setting, reason)
}

/// The membership parameter behind a `membership::ConfigError`, as the file
/// names it: durations carry `_ms`. Parameters the file does not set come
/// from the preset, which is then the setting to change.
fn membership_setting(field: &str) -> String {
    match field {
        "probe_interval" | "probe_timeout" | "gossip_interval" | "push_pull_interval" | "dead_retention" => {
            format!("membership.{field}_ms")
        }
        "indirect_checks" | "suspicion_mult" | "retransmit_mult" | "max_packet_size" => format!("membership.{field}"),
        _ => "membership.preset".to_owned(),
    }
}

fn membership_config(s: &MembershipSection) -> Result<membership::Config, ConfigError> {
    let mut m = match s.preset.as_str() {
        "lan" => membership::Config::lan(),
        "wan" => membership::Config::wan(),
        "test" => membership::Config::for_tests(),
        other => {
            return bad(
                "membership.preset",
                format!("unknown preset {other:?}; known: lan, wan, test"),
            );
        }
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
        .map_err(|e| ConfigError::new(membership_setting(e.field), e.reason))?;
    Ok(m)
}

/// Parses or resolves `host:port`, naming `setting` on failure.
fn addr(setting: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(a) = s.trim().parse() {
        return Ok(a);
    }
    s.trim()
        .to_socket_addrs()
        .ok()
        .and_then(|mut it| it.next())
        .ok_or_else(|| ConfigError::new(setting, format!("{s:?} is not a host:port that resolves")))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn err(text: &str) -> String {
        match FileConfig::parse(text).and_then(FileConfig::into_server_config) {
            Ok(_) => panic!("{text:?} was accepted"),
            Err(e) => e.to_string(),
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
        // Each error names the setting as the file spells it, once.
        assert!(err("name = \"a\"\n[membership]\nprobe_timeout_ms = 0").starts_with("membership.probe_timeout_ms: "));
        assert_eq!(
            err("name = \"a\"\n[mesh]\nmax_hops = 0"),
            "mesh.max_hops: must be at least 1"
        );
        assert!(err("name = \"a\"\ncapacity = 0").contains("capacity"));
        assert!(err("name = \"a\"\ncapacty = 3").contains("capacty"));
        assert!(err("name = \"a\"\n[worker]\nprocessor = \"oracle\"").contains("worker.processor"));
        assert!(err("name = \"a\"\n[worker.echo]\nchunks = 0").contains("worker.echo.chunks"));
        let processor =
            |name: &str, section: &str| format!("name = \"a\"\n[worker]\nprocessor = \"{name}\"\n{section}");
        assert_eq!(
            err(&processor("webhook", "[worker.webhook]\nidle_timeout_ms = 0")),
            "worker.webhook.idle_timeout_ms: must be at least 1"
        );
        assert!(err(&processor("webhook", "[worker.webhook]\nurl = \"ftp://x/\"")).starts_with("worker.webhook.url: "));
        assert_eq!(
            err(&processor("openai", "[worker.openai]\nmax_concurrency = 0")),
            "worker.openai.max_concurrency: must be at least 1"
        );
        assert!(
            err(&processor(
                "openai",
                "[worker.openai]\nbase_url = \"https://example.com/v1\"\nca_file = \"/nonexistent.pem\""
            ))
            .starts_with("worker.openai.ca_file: reading /nonexistent.pem")
        );
        assert!(err("name = 5").contains("name"));
        assert!(
            err("name = \"a\"\n[events]\nbrokers = \"127.0.0.1:9092\"\nforward_stall_timeout_ms = 500")
                .starts_with("events.forward_stall_timeout_ms: must be at least 10000")
        );
    }

    #[test]
    fn the_forward_stall_watch_is_on_by_default_and_0_turns_it_off() {
        let events = |extra: &str| {
            let text = format!("name = \"a\"\n[events]\nbrokers = \"127.0.0.1:9092\"\n{extra}");
            let c = FileConfig::parse(&text).unwrap().into_server_config().unwrap();
            c.events.unwrap().forward_stall_timeout
        };
        assert_eq!(events(""), Some(Duration::from_secs(120)));
        assert_eq!(
            events("forward_stall_timeout_ms = 30000"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(events("forward_stall_timeout_ms = 0"), None);
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
