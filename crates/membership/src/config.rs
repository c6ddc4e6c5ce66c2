//! Protocol parameters, with presets for a LAN, a WAN and tests.

use std::time::Duration;

/// Every parameter of the protocol. Start from a preset ([`Config::lan`],
/// [`Config::wan`], [`Config::for_tests`]) and change what you need; call
/// [`Config::validate`] (the state machine does so on construction).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Time between two probes of this node (the SWIM protocol period).
    /// Lifeguard scales it by the local health multiplier. LAN default: 1 s.
    pub probe_interval: Duration,
    /// How long to wait for a direct ack before asking `indirect_checks`
    /// members to probe indirectly. Scaled like `probe_interval`. LAN default: 500 ms.
    pub probe_timeout: Duration,
    /// Members asked to probe a silent target indirectly (SWIM's k). LAN default: 3.
    pub indirect_checks: usize,
    /// When the direct probe times out, also ping the target over the stream
    /// transport (TCP), as memberlist does: a stream gets through datagram loss
    /// that would otherwise look like a failure. Default: on.
    pub stream_fallback: bool,
    /// Lifeguard on or off. Off gives plain SWIM with suspicion (fixed probe
    /// timing, fixed suspicion timeout, no nacks, no buddy rule), for comparison.
    /// Default: on.
    pub lifeguard: bool,
    /// Lifeguard's largest local health multiplier: probe interval and timeout
    /// grow up to `(1 + max_health_multiplier)` times their base. LAN default: 8.
    pub max_health_multiplier: u32,
    /// Suspicion timeout base: a suspect is declared dead after
    /// `suspicion_mult * log10(max(N, 1)) * probe_interval` when confirmed by
    /// enough members (the minimum). LAN default: 4.
    pub suspicion_mult: u32,
    /// Lifeguard: the suspicion timeout starts at `suspicion_max_mult` times the
    /// minimum and shrinks logarithmically with each independent confirmation.
    /// LAN default: 6.
    pub suspicion_max_mult: u32,
    /// Lifeguard: independent confirmations after which the suspicion timeout
    /// reaches its minimum. LAN default: 3.
    pub suspicion_confirmations: u32,
    /// Dissemination: each update is sent `retransmit_mult * ceil(log10(N + 1))`
    /// times (SWIM's lambda log N), a user gossip message three times as many
    /// (nothing repairs a node it missed). LAN default: 4.
    pub retransmit_mult: u32,
    /// Largest datagram, in bytes, including piggybacked gossip. Default: 1400.
    pub max_packet_size: usize,
    /// Gossip fan-out: every `gossip_interval`, when there is something to
    /// disseminate, send it to `gossip_nodes` random members besides the
    /// piggyback on probes. `None` disables it (pure piggybacking). LAN default: 200 ms.
    pub gossip_interval: Option<Duration>,
    /// Members per gossip fan-out round. LAN default: 3.
    pub gossip_nodes: usize,
    /// Push-pull anti-entropy: a full state exchange with one random member every
    /// `push_pull_interval * max(0.25, N / push_pull_scale_members)` on average.
    /// Scaling linearly keeps the bytes each node sends per second flat in N.
    /// LAN default: 30 s (so 30 s at 16 members, 31 min at 1,000; cluster-wide
    /// that is still one exchange every 2 s).
    pub push_pull_interval: Duration,
    /// See `push_pull_interval`. Default: 16.
    pub push_pull_scale_members: usize,
    /// Repair of a drifted view: when every view digest this node hears on pings
    /// and acks differs from its own for this long, it runs a push-pull with
    /// the last member that sent one (so at most once per this interval).
    /// This closes the rare (observer, member) pair that dissemination missed
    /// within seconds, where the scaled push-pull interval would take hours at
    /// N = 10,000. `None` disables it. LAN default: 10 s.
    pub digest_sync_after: Option<Duration>,
    /// How often to try a full state exchange with one random failed (not left)
    /// member, so that partitions heal once repaired. LAN default: 10 s.
    pub reconnect_interval: Duration,
    /// How long a failed or departed member is kept (for refutation, rejoin and
    /// reconnection) before it is forgotten. LAN default: 1 h.
    pub dead_retention: Duration,
    /// The most failed or departed members kept; the oldest are reaped first, so
    /// memory stays bounded under churn. Default: 4096.
    pub max_dead_members: usize,
    /// Interval between join attempts while no seed has answered; doubles up
    /// to `join_retry_max`. LAN default: 1 s.
    pub join_retry_interval: Duration,
    /// See `join_retry_interval`. LAN default: 30 s.
    pub join_retry_max: Duration,
    /// Largest encoded node metadata in bytes. Default: 512.
    pub max_meta_size: usize,
    /// Largest user gossip message payload in bytes; must leave room in one
    /// datagram. Default: 1024.
    pub max_user_payload: usize,
    /// How long the id of a user gossip message is remembered to drop
    /// duplicates. LAN default: 5 min.
    pub user_seen_retention: Duration,
    /// The most user message ids remembered (oldest dropped first). Default: 65536.
    pub max_user_seen: usize,
    /// The most pending broadcasts; beyond it the most-retransmitted are
    /// dropped first. Default: 8192.
    pub max_broadcasts: usize,
}

impl Config {
    /// Defaults for a local network: 1 s protocol period, 500 ms probe timeout
    /// (these match HashiCorp memberlist's LAN profile where they overlap).
    pub fn lan() -> Self {
        Self {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            stream_fallback: true,
            lifeguard: true,
            max_health_multiplier: 8,
            suspicion_mult: 4,
            suspicion_max_mult: 6,
            suspicion_confirmations: 3,
            retransmit_mult: 4,
            max_packet_size: 1400,
            gossip_interval: Some(Duration::from_millis(200)),
            gossip_nodes: 3,
            push_pull_interval: Duration::from_secs(30),
            push_pull_scale_members: 16,
            digest_sync_after: Some(Duration::from_secs(10)),
            reconnect_interval: Duration::from_secs(10),
            dead_retention: Duration::from_secs(3600),
            max_dead_members: 4096,
            join_retry_interval: Duration::from_secs(1),
            join_retry_max: Duration::from_secs(30),
            max_meta_size: 512,
            max_user_payload: 1024,
            user_seen_retention: Duration::from_secs(300),
            max_user_seen: 65536,
            max_broadcasts: 8192,
        }
    }

    /// Defaults for links with high latency: 5 s period, 3 s probe timeout,
    /// more suspicion and retransmission.
    pub fn wan() -> Self {
        Self {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            retransmit_mult: 4,
            gossip_interval: Some(Duration::from_millis(500)),
            gossip_nodes: 4,
            push_pull_interval: Duration::from_secs(60),
            digest_sync_after: Some(Duration::from_secs(30)),
            reconnect_interval: Duration::from_secs(30),
            join_retry_interval: Duration::from_secs(2),
            join_retry_max: Duration::from_secs(60),
            ..Self::lan()
        }
    }

    /// Fast timings for tests on one machine: 100 ms period, 50 ms probe timeout.
    pub fn for_tests() -> Self {
        Self {
            probe_interval: Duration::from_millis(100),
            probe_timeout: Duration::from_millis(50),
            gossip_interval: Some(Duration::from_millis(20)),
            push_pull_interval: Duration::from_secs(3),
            digest_sync_after: Some(Duration::from_secs(1)),
            reconnect_interval: Duration::from_millis(500),
            dead_retention: Duration::from_secs(60),
            join_retry_interval: Duration::from_millis(100),
            join_retry_max: Duration::from_secs(1),
            user_seen_retention: Duration::from_secs(30),
            ..Self::lan()
        }
    }

    /// Checks the constraints between parameters.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |field: &'static str, reason: &'static str| Err(ConfigError { field, reason });
        if self.probe_interval.is_zero() {
            return err("probe_interval", "must be positive");
        }
        if self.probe_timeout.is_zero() || self.probe_timeout >= self.probe_interval {
            return err("probe_timeout", "must be positive and less than probe_interval");
        }
        if self.max_packet_size < 512 {
            return err("max_packet_size", "must be at least 512 bytes");
        }
        if self.max_user_payload + 256 > self.max_packet_size {
            return err("max_user_payload", "must leave 256 bytes of a packet for headers");
        }
        if self.max_meta_size + 256 > self.max_packet_size {
            return err("max_meta_size", "must leave 256 bytes of a packet for headers");
        }
        if self.suspicion_mult == 0 || self.suspicion_max_mult == 0 {
            return err("suspicion_mult", "suspicion multipliers must be positive");
        }
        if self.retransmit_mult == 0 {
            return err("retransmit_mult", "must be positive");
        }
        if self.gossip_interval.is_some_and(|d| d.is_zero()) {
            return err("gossip_interval", "must be positive when set");
        }
        if self.push_pull_interval.is_zero() || self.reconnect_interval.is_zero() {
            return err("push_pull_interval", "anti-entropy intervals must be positive");
        }
        if self.join_retry_interval.is_zero() || self.join_retry_max < self.join_retry_interval {
            return err("join_retry_interval", "must be positive and at most join_retry_max");
        }
        if self.digest_sync_after.is_some_and(|d| d.is_zero()) {
            return err("digest_sync_after", "must be positive when set");
        }
        if self.push_pull_scale_members == 0 {
            return err("push_pull_scale_members", "must be positive");
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Self::lan()
    }
}

/// A parameter that breaks a constraint. Nothing was constructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("membership config: {field} {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}
