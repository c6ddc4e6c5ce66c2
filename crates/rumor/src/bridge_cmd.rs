//! `rumor bridge`: the bridge service (crates/bridge) from a TOML file,
//! `RUMOR_*` variables and flags, on Kafka and PostgreSQL (or SQLite).
//! docs/config.md documents every setting.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bridge::{BatchConfig, BridgeConfig};
use events::{EventLog, KafkaConfig, Topics};
use serde::Deserialize;

/// The bridge's config file. Unknown settings are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct BridgeFile {
    pub(crate) database_url: String,
    pub(crate) max_connections: u32,
    pub(crate) brokers: String,
    pub(crate) http_bind: String,
    pub(crate) group_id: String,
    pub(crate) messages_topic: String,
    pub(crate) forward_topic: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) create_topics: bool,
    pub(crate) batch_max_records: usize,
    pub(crate) batch_max_bytes: usize,
    pub(crate) batch_max_wait_ms: u64,
    /// 0 turns the stall watch off.
    pub(crate) stall_timeout_ms: u64,
}

impl Default for BridgeFile {
    fn default() -> Self {
        let t = Topics::default();
        let b = BatchConfig::default();
        Self {
            database_url: "postgres://postgres@127.0.0.1:5432/rumor".into(),
            max_connections: 8,
            brokers: "127.0.0.1:9092".into(),
            http_bind: "127.0.0.1:8480".into(),
            group_id: "rumor-bridge".into(),
            messages_topic: t.messages,
            forward_topic: t.forward,
            partitions: t.partitions,
            replication: t.replication,
            create_topics: true,
            batch_max_records: b.max_records,
            batch_max_bytes: b.max_bytes,
            batch_max_wait_ms: b.max_wait.as_millis() as u64,
            stall_timeout_ms: 60_000,
        }
    }
}

/// Flag overrides; `None` keeps the file's or environment's value.
#[derive(Debug, Clone, Default)]
pub(crate) struct BridgeFlags {
    pub(crate) database_url: Option<String>,
    pub(crate) brokers: Option<String>,
    pub(crate) http_bind: Option<String>,
    pub(crate) group_id: Option<String>,
    /// Test hook: abort the process right after the Nth database commit.
    pub(crate) crash_after_batch: Option<u64>,
}

impl BridgeFile {
    pub(crate) fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else { return Ok(Self::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).map_err(|e| anyhow::anyhow!("config file {}: {e}", path.display()))
    }

    /// Environment (found by `var`), then flags, over the file.
    pub(crate) fn into_config(
        mut self,
        var: impl Fn(&str) -> Option<String>,
        flags: BridgeFlags,
    ) -> anyhow::Result<BridgeConfig> {
        if let Some(v) = var("RUMOR_DATABASE_URL") {
            self.database_url = v;
        }
        if let Some(v) = var("RUMOR_KAFKA_BROKERS") {
            self.brokers = v;
        }
        if let Some(v) = var("RUMOR_BRIDGE_HTTP_BIND") {
            self.http_bind = v;
        }
        let f = flags;
        self.database_url = f.database_url.unwrap_or(self.database_url);
        self.brokers = f.brokers.unwrap_or(self.brokers);
        self.http_bind = f.http_bind.unwrap_or(self.http_bind);
        self.group_id = f.group_id.unwrap_or(self.group_id);

        if !(self.database_url.starts_with("postgres://")
            || self.database_url.starts_with("postgresql://")
            || self.database_url.starts_with("sqlite:"))
        {
            bail!(
                "database_url: expected postgres://... or sqlite:..., got {:?}",
                self.database_url
            );
        }
        if self.brokers.trim().is_empty() {
            bail!("brokers: must name at least one Kafka broker (host:port)");
        }
        let http_bind = self
            .http_bind
            .parse()
            .with_context(|| format!("http_bind: {:?} is not an address (host:port)", self.http_bind))?;
        let mut c = BridgeConfig::new(
            self.database_url,
            EventLog::Kafka(KafkaConfig::new(self.brokers.trim())),
        );
        c.max_connections = self.max_connections.max(1);
        c.http_bind = http_bind;
        c.group_id = self.group_id;
        c.topics = Topics {
            messages: self.messages_topic,
            forward: self.forward_topic,
            partitions: self.partitions,
            replication: self.replication,
        };
        c.create_topics = self.create_topics;
        c.batch = BatchConfig {
            max_records: self.batch_max_records,
            max_bytes: self.batch_max_bytes,
            max_wait: Duration::from_millis(self.batch_max_wait_ms),
        };
        c.stall_timeout = (self.stall_timeout_ms > 0).then(|| Duration::from_millis(self.stall_timeout_ms));
        if let Some(n) = f.crash_after_batch {
            c.after_commit = Some(Arc::new(move |info: &bridge::CommitInfo| {
                if info.batch >= n {
                    eprintln!(
                        "bridge: crashing on purpose after database commit of batch {}",
                        info.batch
                    );
                    std::process::abort();
                }
                false
            }));
        }
        c.validate().map_err(|e| anyhow::anyhow!(e))?;
        Ok(c)
    }
}

/// Runs the bridge until Ctrl-C or SIGTERM. The first stdout line says
/// where its HTTP API listens (tests read it).
pub(crate) async fn run(config: BridgeConfig) -> anyhow::Result<()> {
    let log = config.log.describe();
    let bridge = bridge::start(config).await.context("starting the bridge")?;
    println!(
        "bridge listening http={} log={log} database={}",
        bridge.addr(),
        bridge.store().kind()
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    crate::commands::terminated().await;
    println!("bridge stopping");
    bridge.shutdown().await.context("stopping the bridge")?;
    Ok(())
}
