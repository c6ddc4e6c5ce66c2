//! The SWIM + Lifeguard state machine.
//!
//! Inputs are method calls carrying `now` (a [`Duration`] since any epoch the
//! caller chooses): [`Membership::handle_datagram`], [`Membership::handle_stream`],
//! [`Membership::handle_timeout`], [`Membership::join`], [`Membership::leave`],
//! [`Membership::broadcast`], [`Membership::set_meta`]. Outputs are polled:
//! [`Membership::poll_transmit`], [`Membership::poll_event`],
//! [`Membership::poll_timeout`]. Randomness comes from a seed given at construction.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use proto::Message;
use proto::bytes::Bytes;
use proto::gossip as pb;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};

use crate::broadcast::{self, Key, Queue};
use crate::codec::{self, DecodeError, PROTOCOL_VERSION};
use crate::config::{Config, ConfigError};
use crate::member::{Member, Meta, Status};
use crate::table::{Entry, Slot, Table};

/// Largest message accepted on a reliable stream (push-pull), in bytes.
pub const MAX_STREAM_MESSAGE: usize = 32 << 20;

/// Capacity kept by the output queues once drained.
const KEPT_CAPACITY: usize = 16;

/// A packet to send. `reliable` packets (push-pull state exchanges) go over a
/// stream transport such as TCP and may exceed the datagram size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination gossip address.
    pub to: SocketAddr,
    /// Encoded `rumor.gossip.v1.Packet`.
    pub payload: Vec<u8>,
    /// True for push-pull exchanges, to be sent over a stream.
    pub reliable: bool,
}

/// Something the application may want to know. Events are queued in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A seed answered the join request: this node has the cluster's state.
    Joined,
    /// A member joined, or came back after failing or leaving.
    MemberUp(Member),
    /// A live member changed address or metadata, or refuted a suspicion.
    MemberUpdated(Member),
    /// A member is suspected of having failed.
    MemberSuspect {
        /// The suspect.
        name: String,
        /// Its incarnation when suspected.
        incarnation: u64,
    },
    /// A member was declared failed (`left == false`) or left gracefully.
    MemberDown {
        /// The member.
        name: String,
        /// True for a graceful leave.
        left: bool,
    },
    /// A failed or departed member was forgotten after its retention.
    MemberReaped {
        /// The member.
        name: String,
    },
    /// This node was suspected or declared dead by others and refuted it.
    Refuted {
        /// The new local incarnation.
        incarnation: u64,
    },
    /// A user gossip message arrived for the first time.
    UserMessage {
        /// Name of the node that created it.
        origin: String,
        /// Per-origin sequence number; `(origin, seq)` is the message id.
        seq: u64,
        /// The payload.
        payload: Bytes,
    },
}

stats::snapshot! {
    /// Counters. Every dropped input is counted here. The doc comment of
    /// each field is its metric description.
    Stats;
    /// Packets handed in (datagrams and stream messages).
    packets_in,
    /// Bytes handed in.
    bytes_in,
    /// Packets produced.
    packets_out,
    /// Bytes produced.
    bytes_out,
    /// Packets that did not decode as a gossip packet.
    malformed,
    /// Packets from a peer speaking another protocol version.
    version_mismatch,
    /// Packets over the size limit.
    oversized,
    /// Packets or gossip items with a missing or invalid field.
    invalid,
    /// Pings addressed to another node name (a stale address).
    misdirected,
    /// Probes started.
    probes,
    /// Probes that ended without an ack.
    probe_failures,
    /// Indirect probe requests sent.
    indirect_probes,
    /// Nacks received.
    nacks_received,
    /// Suspicions about this node refuted.
    refutations,
    /// Push-pull exchanges initiated.
    push_pulls,
    /// Push-pulls started because this node's view digest differed from every
    /// digest it heard for `Config::digest_sync_after` (included in `push_pulls`).
    digest_syncs,
    /// User messages delivered to this node's application.
    user_delivered,
    /// Duplicate user messages dropped.
    user_duplicates,
    /// Times this node marked another member suspect.
    suspicions,
    /// Times this node marked another member dead (failed, not left).
    failures_declared,
    /// Times this node's timers fired more than half a probe timeout late:
    /// it was kept from running, which raises its local health multiplier.
    late_wakeups,
    /// Probes that ended while this node was late, so suspected nobody.
    inconclusive_probes,
}

/// Why [`Membership::broadcast`] refused a message. No state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    /// The payload exceeds `Config::max_user_payload`.
    #[error("gossip message of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Payload size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// This node has left the cluster.
    #[error("this node has left the cluster")]
    Left,
}

/// Why [`Membership::set_meta`] refused new metadata. No state changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node metadata of {len} bytes exceeds the limit of {limit}")]
pub struct MetaTooLarge {
    /// Encoded size.
    pub len: usize,
    /// The limit.
    pub limit: usize,
}

/// Why [`Membership::new`] refused to start. Nothing was constructed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NewError {
    /// A configuration constraint is broken.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The initial metadata is too large.
    #[error(transparent)]
    Meta(#[from] MetaTooLarge),
    /// The node name is empty.
    #[error("node name must not be empty")]
    EmptyName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lifecycle {
    Running,
    Leaving,
}

/// Lifeguard's dynamic suspicion: the timeout starts at `max` and shrinks
/// towards `min` as independent members confirm the suspicion.
#[derive(Debug)]
struct Suspicion {
    started: Duration,
    confirmers: BTreeSet<String>,
    /// Confirmations needed to reach `min`; 0 means a fixed timeout of `min`.
    k: u32,
    min: Duration,
    max: Duration,
    deadline: Duration,
}

impl Suspicion {
    fn timeout(&self) -> Duration {
        if self.k == 0 {
            return self.min;
        }
        let c = self.confirmers.len().saturating_sub(1) as f64;
        let frac = (c + 1.0).ln() / (f64::from(self.k) + 1.0).ln();
        let shrink = (self.max - self.min).mul_f64(frac.min(1.0));
        (self.max - shrink).max(self.min)
    }
}

#[derive(Debug)]
struct Probe {
    seq: u64,
    target: String,
    ack_deadline: Duration,
    indirect_sent: bool,
    expected_nacks: u32,
    nacks: u32,
}

/// An indirect probe this node runs for another member.
#[derive(Debug)]
struct Relay {
    requester: SocketAddr,
    seq: u64,
    nack_at: Option<Duration>,
    expires: Duration,
}

#[derive(Debug)]
struct Join {
    seeds: Vec<SocketAddr>,
    next_at: Duration,
    backoff: Duration,
}

/// One node's view of the cluster and its part in the protocol.
#[derive(Debug)]
pub struct Membership {
    cfg: Config,
    name: String,
    addr: SocketAddr,
    incarnation: u64,
    meta: Meta,
    lifecycle: Lifecycle,
    /// Every other member this node knows of, live or not yet reaped.
    members: Table,
    /// Live members other than this node.
    live: usize,
    /// Wrapping sum of `name_hash` over the live members and this node: equal
    /// live sets give equal digests.
    digest: u32,
    /// Since when every digest heard on a ping or ack has differed from ours.
    digest_differs_since: Option<Duration>,
    probe_order: Vec<Slot>,
    probe_pos: usize,
    seq: u64,
    probe: Option<Probe>,
    relays: BTreeMap<u64, Relay>,
    /// Suspected members, kept apart from the table since few ever are.
    suspicions: BTreeMap<Slot, Suspicion>,
    suspicion_deadlines: BTreeSet<(Duration, Slot)>,
    /// Failed and departed members by the time they went down, for reaping.
    down: BTreeSet<(Duration, Slot)>,
    broadcasts: Queue,
    /// True while merging the state a seed sent in answer to this node's
    /// first join request: that state is the seed's view, which the cluster
    /// already has, so it is learnt without being gossiped again.
    quiet: bool,
    user_seen: BTreeSet<(String, u64)>,
    user_seen_order: VecDeque<(Duration, String, u64)>,
    user_seq: u64,
    /// Lifeguard's local health multiplier (memberlist calls it awareness).
    health: u32,
    next_probe: Duration,
    next_gossip: Duration,
    next_push_pull: Duration,
    next_reconnect: Duration,
    join: Option<Join>,
    rng: SmallRng,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    stats: Stats,
}

impl Membership {
    /// Creates the state machine for the node `name` listening on `addr`.
    /// `seed` drives every random choice, so a run is reproducible from it.
    pub fn new(
        cfg: Config,
        name: impl Into<String>,
        addr: SocketAddr,
        meta: Meta,
        seed: u64,
        now: Duration,
    ) -> Result<Self, NewError> {
        cfg.validate()?;
        let name = name.into();
        if name.is_empty() {
            return Err(NewError::EmptyName);
        }
        check_meta(&cfg, &meta)?;
        let mut rng = SmallRng::seed_from_u64(seed);
        // Spread the first timers over one interval so that nodes started
        // together do not probe and gossip in lockstep.
        let next_probe = now + cfg.probe_interval.mul_f64(rng.random::<f64>());
        let next_gossip = now + cfg.gossip_interval.unwrap_or(cfg.probe_interval);
        let next_push_pull = now + cfg.push_pull_interval.mul_f64(0.5 + rng.random::<f64>());
        let next_reconnect = now + cfg.reconnect_interval.mul_f64(0.5 + rng.random::<f64>());
        let digest = name_hash(&name);
        Ok(Self {
            cfg,
            name,
            addr,
            incarnation: 0,
            meta,
            lifecycle: Lifecycle::Running,
            members: Table::default(),
            live: 0,
            digest,
            digest_differs_since: None,
            probe_order: Vec::new(),
            probe_pos: 0,
            seq: 0,
            probe: None,
            relays: BTreeMap::new(),
            suspicions: BTreeMap::new(),
            suspicion_deadlines: BTreeSet::new(),
            down: BTreeSet::new(),
            broadcasts: Queue::default(),
            quiet: false,
            user_seen: BTreeSet::new(),
            user_seen_order: VecDeque::new(),
            user_seq: 0,
            health: 0,
            next_probe,
            next_gossip,
            next_push_pull,
            next_reconnect,
            join: None,
            rng,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
        })
    }

    // ---- queries -------------------------------------------------------

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// This node's gossip address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// This node's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// This node's metadata.
    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Lifeguard's local health multiplier: 0 when healthy, up to
    /// `max_health_multiplier` when this node keeps missing acks.
    pub fn health_score(&self) -> u32 {
        self.health
    }

    /// Other members this node knows, including failed and departed ones not
    /// yet reaped, in no particular order. `Member::since` is to the second.
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members.iter().filter_map(|(s, _)| self.members.member(s))
    }

    /// One member by name (not this node).
    pub fn member(&self, name: &str) -> Option<Member> {
        self.members.slot(name).and_then(|s| self.members.member(s))
    }

    /// Live (alive or suspect) members, this node included.
    pub fn num_live(&self) -> usize {
        self.live + 1
    }

    /// This node as a member record.
    pub fn local_member(&self, now: Duration) -> Member {
        Member {
            name: self.name.clone(),
            addr: self.addr,
            incarnation: self.incarnation,
            status: Status::Alive,
            meta: self.meta.clone(),
            since: now,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Updates waiting to be disseminated. A leaving node waits for this to
    /// reach zero (or a timeout) before it stops.
    pub fn pending_broadcasts(&self) -> usize {
        self.broadcasts.len()
    }

    /// True until a seed has answered a join request.
    pub fn is_joining(&self) -> bool {
        self.join.is_some()
    }

    // ---- outputs -------------------------------------------------------

    /// The next packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        let t = self.transmits.pop_front();
        if t.is_none() {
            self.transmits.shrink_to(KEPT_CAPACITY);
        }
        t
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        if e.is_none() {
            // A join brings one event per member at once: do not keep that
            // capacity for the life of the node (N nodes would keep N² events).
            self.events.shrink_to(KEPT_CAPACITY);
        }
        e
    }

    /// When [`Membership::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Duration> {
        let mut t = self.next_push_pull;
        let mut min = |d: Duration| t = t.min(d);
        if self.lifecycle == Lifecycle::Running {
            min(self.next_probe);
            if let Some(p) = &self.probe
                && !p.indirect_sent
            {
                min(p.ack_deadline);
            }
            if !self.down.is_empty() {
                min(self.next_reconnect);
            }
            if let Some(j) = &self.join {
                min(j.next_at);
            }
        }
        if !self.broadcasts.is_empty()
            && let Some(_) = self.cfg.gossip_interval
        {
            min(self.next_gossip);
        }
        for r in self.relays.values() {
            min(r.nack_at.unwrap_or(r.expires));
        }
        if let Some((d, _)) = self.suspicion_deadlines.first() {
            min(*d);
        }
        if let Some((d, _)) = self.down.first() {
            min(*d + self.cfg.dead_retention);
        }
        if let Some((d, _, _)) = self.user_seen_order.front() {
            min(*d + self.cfg.user_seen_retention);
        }
        Some(t)
    }

    // ---- commands ------------------------------------------------------

    /// Joins the cluster through `seeds`: a push-pull state exchange is sent to
    /// each, retried with exponential backoff until one answers
    /// ([`Event::Joined`]). With no seeds this node starts a new cluster.
    pub fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        let seeds: Vec<SocketAddr> = seeds.iter().copied().filter(|s| *s != self.addr).collect();
        if seeds.is_empty() {
            self.join = None;
            self.events.push_back(Event::Joined);
            return;
        }
        self.join = Some(Join {
            seeds,
            next_at: now,
            backoff: self.cfg.join_retry_interval,
        });
        self.try_join(now);
    }

    /// Leaves gracefully: a `left` notice about this node is disseminated and
    /// probing stops. Keep driving the machine until
    /// [`Membership::pending_broadcasts`] is zero or a timeout passes, then stop.
    pub fn leave(&mut self, now: Duration) {
        if self.lifecycle == Lifecycle::Leaving {
            return;
        }
        self.lifecycle = Lifecycle::Leaving;
        self.incarnation += 1;
        self.probe = None;
        self.join = None;
        let g = dead_gossip(&self.name, self.incarnation, &self.name, true);
        self.queue(now, Key::Member(self.name.clone()), g);
        // Tell a few members right away rather than waiting for the next probe.
        self.next_gossip = now;
    }

    /// Creates a user gossip message, spread to every live member.
    /// Returns its id `(origin, seq)`; the origin is this node's name.
    pub fn broadcast(&mut self, now: Duration, payload: Bytes) -> Result<(String, u64), BroadcastError> {
        if self.lifecycle == Lifecycle::Leaving {
            return Err(BroadcastError::Left);
        }
        if payload.len() > self.cfg.max_user_payload {
            return Err(BroadcastError::TooLarge {
                len: payload.len(),
                limit: self.cfg.max_user_payload,
            });
        }
        self.user_seq += 1;
        let seq = self.user_seq;
        self.remember_user(now, self.name.clone(), seq);
        let g = pb::Gossip {
            kind: Some(pb::gossip::Kind::User(pb::UserMessage {
                origin: self.name.clone(),
                seq,
                payload,
            })),
        };
        self.queue(now, Key::User(self.name.clone(), seq), g);
        // Start spreading it now rather than at the next gossip tick.
        self.next_gossip = self.next_gossip.min(now);
        Ok((self.name.clone(), seq))
    }

    /// Replaces this node's metadata. The incarnation is raised so that the new
    /// metadata supersedes the old everywhere.
    pub fn set_meta(&mut self, now: Duration, meta: Meta) -> Result<(), MetaTooLarge> {
        check_meta(&self.cfg, &meta)?;
        if meta != self.meta {
            self.meta = meta;
            self.incarnation += 1;
            self.queue_self_alive(now);
        }
        Ok(())
    }

    // ---- inputs --------------------------------------------------------

    /// Handles one datagram.
    pub fn handle_datagram(&mut self, now: Duration, bytes: &[u8]) {
        let limit = self.cfg.max_packet_size;
        self.handle(now, bytes, limit);
    }

    /// Handles one message received over a stream (push-pull).
    pub fn handle_stream(&mut self, now: Duration, bytes: &[u8]) {
        self.handle(now, bytes, MAX_STREAM_MESSAGE);
    }

    /// Fires every timer due at `now`.
    ///
    /// Lifeguard, extended to a node's own slowness: when this call comes
    /// more than half a probe timeout after the deadline it was asked for,
    /// this node was kept from running (a busy host, hundreds of processes on
    /// a few cores). Its local health multiplier rises, which stretches its
    /// probe period and timeouts, and a probe that ends in such a late call
    /// suspects nobody: a node that could not run cannot tell a silent member
    /// from its own silence.
    pub fn handle_timeout(&mut self, now: Duration) {
        let late = self.cfg.lifeguard
            && self
                .poll_timeout()
                .is_some_and(|due| now.saturating_sub(due) > self.cfg.probe_timeout / 2);
        if late {
            self.stats.late_wakeups += 1;
            self.adjust_health(1);
        }
        self.expire_user_seen(now);
        // Suspicions first: a member they declare dead is recorded at its
        // deadline, and reaping after them keeps even a short retention
        // from leaving a reap deadline in the past.
        self.expire_suspicions(now);
        self.reap(now);
        self.expire_relays(now);
        if self.lifecycle == Lifecycle::Running {
            if let Some(j) = &self.join
                && j.next_at <= now
            {
                self.try_join(now);
            }
            if let Some(p) = &self.probe
                && !p.indirect_sent
                && p.ack_deadline <= now
            {
                self.send_indirect_probes(now);
            }
            if self.next_probe <= now {
                self.end_probe(now, late);
                self.start_probe(now);
            }
            if self.next_push_pull <= now {
                self.push_pull_random(now);
            }
            if self.next_reconnect <= now {
                self.reconnect(now);
            }
        } else if self.next_push_pull <= now {
            self.next_push_pull = now + self.cfg.push_pull_interval;
        }
        if let Some(iv) = self.cfg.gossip_interval
            && self.next_gossip <= now
        {
            self.gossip_round();
            self.next_gossip = now + iv;
        }
    }

    // ---- packet handling -----------------------------------------------

    fn handle(&mut self, now: Duration, bytes: &[u8], limit: usize) {
        let reliable = limit == MAX_STREAM_MESSAGE;
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let packet = match codec::decode_packet(bytes, limit) {
            Ok(p) => p,
            Err(e) => {
                self.count(&e);
                return;
            }
        };
        let (from_name, from_addr) = match codec::parse_node(packet.from.as_ref()) {
            Ok(f) => f,
            Err(e) => {
                self.count(&e);
                return;
            }
        };
        // Gossip first: a ping that carries a suspicion about this node is then
        // answered with an ack that already carries the refutation.
        for g in packet.gossip {
            if let Err(e) = self.handle_gossip(now, g) {
                self.count(&e);
            }
        }
        if packet.view_digest != 0 {
            self.compare_digest(now, packet.view_digest, from_addr);
        }
        use pb::packet::Kind;
        match packet.kind {
            Some(Kind::Ping(ping)) => {
                if ping.target != self.name {
                    self.stats.misdirected += 1;
                    return;
                }
                let ack = Kind::Ack(pb::Ack { seq: ping.seq });
                if reliable {
                    // A fallback probe over a stream is answered the same way.
                    self.send_stream(from_addr, ack);
                } else {
                    self.send(from_addr, ack, None);
                }
            }
            Some(Kind::PingReq(req)) => {
                let (target, target_addr) = match codec::parse_node(req.target.as_ref()) {
                    Ok(t) => t,
                    Err(e) => {
                        self.count(&e);
                        return;
                    }
                };
                if self.lifecycle != Lifecycle::Running {
                    return;
                }
                let seq = self.next_seq();
                let timeout = self.scaled(self.cfg.probe_timeout);
                self.relays.insert(
                    seq,
                    Relay {
                        requester: from_addr,
                        seq: req.seq,
                        nack_at: (req.want_nack && self.cfg.lifeguard).then(|| now + timeout.mul_f64(0.8)),
                        expires: now + self.scaled(self.cfg.probe_interval),
                    },
                );
                self.send(target_addr, Kind::Ping(pb::Ping { seq, target }), None);
            }
            Some(Kind::Ack(ack)) => self.handle_ack(ack.seq),
            Some(Kind::Nack(nack)) => {
                if let Some(p) = &mut self.probe
                    && p.seq == nack.seq
                {
                    p.nacks += 1;
                    self.stats.nacks_received += 1;
                }
            }
            Some(Kind::PushPull(pp)) => self.handle_push_pull(now, &from_name, from_addr, pp),
            Some(Kind::GossipOnly(_)) => {}
            None => self.stats.invalid += 1,
        }
    }

    fn count(&mut self, e: &DecodeError) {
        match e {
            DecodeError::Malformed(_) => self.stats.malformed += 1,
            DecodeError::Version { .. } => self.stats.version_mismatch += 1,
            DecodeError::TooLarge { .. } => self.stats.oversized += 1,
            DecodeError::Invalid(_) => self.stats.invalid += 1,
        }
    }

    /// Repairs a drifted view: a node whose digest differs from every one it
    /// hears for `digest_sync_after` lacks a member the others have (or has one
    /// they dropped), which an exchange of full state fixes on both sides.
    /// Differences while an update spreads last a second or so and end as soon
    /// as one equal digest arrives.
    fn compare_digest(&mut self, now: Duration, theirs: u32, from: SocketAddr) {
        let Some(after) = self.cfg.digest_sync_after else {
            return;
        };
        if theirs == self.digest {
            self.digest_differs_since = None;
            return;
        }
        let since = *self.digest_differs_since.get_or_insert(now);
        if now.saturating_sub(since) >= after && self.lifecycle == Lifecycle::Running {
            // Starting the clock again limits this to one exchange per `after`.
            self.digest_differs_since = None;
            self.stats.digest_syncs += 1;
            self.push_pull_to(now, from);
        }
    }

    fn handle_ack(&mut self, seq: u64) {
        if let Some(p) = &self.probe
            && p.seq == seq
        {
            self.probe = None;
            self.adjust_health(-1);
            return;
        }
        if let Some(r) = self.relays.remove(&seq) {
            self.send(r.requester, pb::packet::Kind::Ack(pb::Ack { seq: r.seq }), None);
        }
    }

    fn handle_gossip(&mut self, now: Duration, g: pb::Gossip) -> Result<(), DecodeError> {
        use pb::gossip::Kind;
        match g.kind.ok_or(DecodeError::Invalid("gossip.kind"))? {
            Kind::Alive(a) => {
                if self.is_stale_alive(a.node.as_ref(), a.incarnation) {
                    return Ok(());
                }
                let (name, addr) = codec::parse_node(a.node.as_ref())?;
                self.on_alive(now, name, addr, a.incarnation, codec::meta_from_pb(a.meta));
            }
            Kind::Suspect(s) => {
                if s.node.is_empty() {
                    return Err(DecodeError::Invalid("suspect.node"));
                }
                self.on_suspect(now, &s.node, s.incarnation, &s.from);
            }
            Kind::Dead(d) => {
                if d.node.is_empty() {
                    return Err(DecodeError::Invalid("dead.node"));
                }
                self.on_dead(now, &d.node, d.incarnation, &d.from, d.left);
            }
            Kind::User(u) => {
                if u.origin.is_empty() {
                    return Err(DecodeError::Invalid("user.origin"));
                }
                if u.payload.len() > self.cfg.max_user_payload {
                    return Err(DecodeError::Invalid("user.payload"));
                }
                if self.user_seen.contains(&(u.origin.clone(), u.seq)) {
                    self.stats.user_duplicates += 1;
                    return Ok(());
                }
                self.remember_user(now, u.origin.clone(), u.seq);
                self.stats.user_delivered += 1;
                self.events.push_back(Event::UserMessage {
                    origin: u.origin.clone(),
                    seq: u.seq,
                    payload: u.payload.clone(),
                });
                let key = Key::User(u.origin.clone(), u.seq);
                let g = pb::Gossip {
                    kind: Some(Kind::User(u)),
                };
                self.queue(now, key, g);
            }
        }
        Ok(())
    }

    fn handle_push_pull(&mut self, now: Duration, from: &str, from_addr: SocketAddr, pp: pb::PushPull) {
        self.quiet = !pp.request && self.join.is_some() && self.members.len() == 0;
        for state in pp.members {
            if let Err(e) = self.merge_state(now, from, state) {
                self.count(&e);
            }
        }
        self.quiet = false;
        if pp.request {
            let reply = pb::PushPull {
                request: false,
                join: false,
                members: self.full_state(now),
            };
            self.send_reliable(from_addr, reply);
        } else if self.join.take().is_some() {
            self.events.push_back(Event::Joined);
            // A node that has just joined is known to few members, so gossip
            // about members joining at the same moment may miss it: the first
            // exchange, at most one base interval away, makes up for that.
            // Later ones are spaced for the cluster's size.
            let first = self.push_pull_interval().min(self.cfg.push_pull_interval);
            self.next_push_pull = now + first.mul_f64(0.5 + self.rng.random::<f64>());
        }
    }

    /// Merges one member record from a full state exchange. A remote "dead" is
    /// taken as a suspicion, so a live member gets the chance to refute it.
    fn merge_state(&mut self, now: Duration, from: &str, s: pb::MemberState) -> Result<(), DecodeError> {
        let status = codec::status_from_pb(s.status)?;
        if status == Status::Alive && self.is_stale_alive(s.node.as_ref(), s.incarnation) {
            return Ok(());
        }
        let (name, addr) = codec::parse_node(s.node.as_ref())?;
        match status {
            Status::Alive => self.on_alive(now, name, addr, s.incarnation, codec::meta_from_pb(s.meta)),
            Status::Suspect | Status::Dead => {
                if name != self.name && self.members.slot(&name).is_none() {
                    if status == Status::Dead {
                        return Ok(());
                    }
                    self.on_alive(now, name.clone(), addr, s.incarnation, codec::meta_from_pb(s.meta));
                }
                self.on_suspect(now, &name, s.incarnation, from);
            }
            Status::Left => self.on_dead(now, &name, s.incarnation, from, true),
        }
        Ok(())
    }

    // ---- the membership rules ------------------------------------------

    /// True for an `Alive` about another member that brings nothing new. Most
    /// gossip is such a repeat, so it is dropped before any parsing.
    fn is_stale_alive(&self, node: Option<&pb::NodeRef>, inc: u64) -> bool {
        let Some(node) = node else { return false };
        node.name != self.name && self.members.get(&node.name).is_some_and(|e| inc <= e.incarnation)
    }

    fn on_alive(&mut self, now: Duration, name: String, addr: SocketAddr, inc: u64, meta: Meta) {
        if name == self.name {
            if self.lifecycle == Lifecycle::Leaving || inc < self.incarnation {
                return;
            }
            if inc == self.incarnation && addr == self.addr && meta == self.meta {
                return;
            }
            // Someone holds a different or newer record of this node, e.g. from
            // before a restart: outbid it.
            self.refute(now, inc);
            return;
        }
        let (s, up) = match self.members.slot(&name) {
            None => {
                let s = self.members.insert(Entry::new(&name, addr, inc, now), meta);
                self.became_live(s, &name);
                (s, true)
            }
            Some(s) => {
                let Some(e) = self.members.at_mut(s) else { return };
                if inc <= e.incarnation {
                    return;
                }
                let was = e.status;
                e.incarnation = inc;
                e.status = Status::Alive;
                e.set_addr(addr);
                if was != Status::Alive {
                    e.set_since(now);
                }
                self.members.set_meta(s, meta);
                if let Some(sus) = self.suspicions.remove(&s) {
                    self.suspicion_deadlines.remove(&(sus.deadline, s));
                }
                if !was.is_live() {
                    self.down.retain(|&(_, d)| d != s);
                    self.became_live(s, &name);
                }
                (s, !was.is_live())
            }
        };
        let Some(member) = self.members.member(s) else { return };
        let g = alive_gossip(&member.name, member.addr, member.incarnation, &member.meta);
        self.events.push_back(if up {
            Event::MemberUp(member)
        } else {
            Event::MemberUpdated(member)
        });
        self.gossip(now, Key::Member(name), g);
    }

    fn on_suspect(&mut self, now: Duration, name: &str, inc: u64, from: &str) {
        if name == self.name {
            if self.lifecycle == Lifecycle::Leaving {
                return;
            }
            if inc < self.incarnation {
                // The sender has not heard our last refutation: say it again.
                self.queue_self_alive(now);
                return;
            }
            self.refute(now, inc);
            self.adjust_health(1);
            return;
        }
        let live = self.live;
        let Some(s) = self.members.slot(name) else { return };
        let Some(e) = self.members.at_mut(s) else { return };
        if inc < e.incarnation || !e.status.is_live() {
            return;
        }
        if e.status == Status::Suspect && inc == e.incarnation {
            // A confirmation: Lifeguard shortens the timeout for each new,
            // independent suspecter.
            let Some(sus) = self.suspicions.get_mut(&s) else { return };
            if sus.k == 0 || !sus.confirmers.insert(from.to_owned()) {
                return;
            }
            let old = sus.deadline;
            // A shortened timeout that has already run out ends the
            // suspicion now, not at a deadline in the past (see `queue`).
            sus.deadline = (sus.started + sus.timeout()).max(now);
            let new = sus.deadline;
            self.suspicion_deadlines.remove(&(old, s));
            self.suspicion_deadlines.insert((new, s));
        } else {
            e.status = Status::Suspect;
            e.incarnation = inc;
            e.set_since(now);
            if let Some(old) = self.suspicions.remove(&s) {
                self.suspicion_deadlines.remove(&(old.deadline, s));
            }
            let sus = new_suspicion(&self.cfg, now, from, live + 1);
            self.suspicion_deadlines.insert((sus.deadline, s));
            self.suspicions.insert(s, sus);
            self.stats.suspicions += 1;
            self.events.push_back(Event::MemberSuspect {
                name: name.to_owned(),
                incarnation: inc,
            });
        }
        self.gossip(now, Key::Member(name.to_owned()), suspect_gossip(name, inc, from));
    }

    fn on_dead(&mut self, now: Duration, name: &str, inc: u64, from: &str, left: bool) {
        if name == self.name {
            if self.lifecycle == Lifecycle::Leaving {
                return;
            }
            if inc < self.incarnation {
                self.queue_self_alive(now);
                return;
            }
            self.refute(now, inc);
            return;
        }
        let Some(s) = self.members.slot(name) else { return };
        let Some(e) = self.members.at_mut(s) else { return };
        if inc < e.incarnation {
            return;
        }
        let status = if left { Status::Left } else { Status::Dead };
        if !e.status.is_live() {
            // Already down; only a graceful-leave notice changes how it is recorded.
            if e.status == Status::Dead && left {
                e.status = Status::Left;
            }
            return;
        }
        e.status = status;
        e.incarnation = inc;
        e.set_since(now);
        if let Some(sus) = self.suspicions.remove(&s) {
            self.suspicion_deadlines.remove(&(sus.deadline, s));
        }
        self.live -= 1;
        self.digest = self.digest.wrapping_sub(name_hash(name));
        if !left {
            self.stats.failures_declared += 1;
        }
        if self.down.is_empty() {
            // Reconnection is not kept current while nobody is down; it
            // starts again from now (see `queue`).
            self.next_reconnect = self.next_reconnect.max(now);
        }
        self.down.insert((now, s));
        self.events.push_back(Event::MemberDown {
            name: name.to_owned(),
            left,
        });
        self.gossip(now, Key::Member(name.to_owned()), dead_gossip(name, inc, from, left));
        self.bound_down();
    }

    /// Queues an update about another member for dissemination.
    fn gossip(&mut self, now: Duration, key: Key, g: pb::Gossip) {
        if !self.quiet {
            self.queue(now, key, g);
        }
    }

    fn refute(&mut self, now: Duration, inc: u64) {
        self.incarnation = self.incarnation.max(inc) + 1;
        self.stats.refutations += 1;
        self.events.push_back(Event::Refuted {
            incarnation: self.incarnation,
        });
        self.queue_self_alive(now);
    }

    fn queue_self_alive(&mut self, now: Duration) {
        let g = alive_gossip(&self.name, self.addr, self.incarnation, &self.meta);
        self.queue(now, Key::Member(self.name.clone()), g);
    }

    /// Queues `g` for dissemination. The gossip tick is not kept current
    /// while nothing is queued, so the first news after a quiet spell starts
    /// it again from `now`: every deadline [`Membership::poll_timeout`]
    /// gives is then one this node could have met, and a call that comes
    /// long after one means this node was kept from running (see
    /// [`Membership::handle_timeout`]).
    fn queue(&mut self, now: Duration, key: Key, g: pb::Gossip) {
        if self.broadcasts.is_empty() {
            self.next_gossip = self.next_gossip.max(now);
        }
        self.broadcasts.push(key, g, self.cfg.max_broadcasts);
    }

    fn became_live(&mut self, s: Slot, name: &str) {
        self.live += 1;
        self.digest = self.digest.wrapping_add(name_hash(name));
        // Put it at a random place among the members not yet probed this round
        // (SWIM's round-robin asks that a new member be probed within one round);
        // a swap keeps this O(1).
        self.probe_order.push(s);
        let last = self.probe_order.len() - 1;
        let pos = self.rng.random_range(self.probe_pos.min(last)..=last);
        self.probe_order.swap(pos, last);
    }

    // ---- probing -------------------------------------------------------

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// `d` stretched by Lifeguard's local health multiplier.
    fn scaled(&self, d: Duration) -> Duration {
        d * (self.health + 1)
    }

    fn adjust_health(&mut self, delta: i32) {
        if !self.cfg.lifeguard {
            return;
        }
        let h = i64::from(self.health) + i64::from(delta);
        self.health = h.clamp(0, i64::from(self.cfg.max_health_multiplier)) as u32;
    }

    /// The next live member in a shuffled round-robin order.
    fn next_probe_target(&mut self) -> Option<Slot> {
        for _ in 0..2 {
            while self.probe_pos < self.probe_order.len() {
                let s = self.probe_order[self.probe_pos];
                self.probe_pos += 1;
                if self.members.at(s).is_some_and(|e| e.status.is_live()) {
                    return Some(s);
                }
            }
            // One round done: rebuild from the live members and reshuffle.
            self.probe_order.clear();
            let live = self.members.iter().filter(|(_, e)| e.status.is_live());
            self.probe_order.extend(live.map(|(s, _)| s));
            self.probe_order.shuffle(&mut self.rng);
            self.probe_pos = 0;
        }
        None
    }

    fn start_probe(&mut self, now: Duration) {
        self.next_probe = now + self.scaled(self.cfg.probe_interval);
        let Some(e) = self.next_probe_target().and_then(|s| self.members.at(s)) else {
            return;
        };
        let target = e.name().to_owned();
        let addr = e.addr();
        // Lifeguard's buddy rule: a suspect learns of it in the probe itself.
        let buddy = (self.cfg.lifeguard && e.status == Status::Suspect)
            .then(|| suspect_gossip(&target, e.incarnation, &self.name));
        let seq = self.next_seq();
        self.stats.probes += 1;
        self.probe = Some(Probe {
            seq,
            target: target.clone(),
            ack_deadline: now + self.scaled(self.cfg.probe_timeout),
            indirect_sent: false,
            expected_nacks: 0,
            nacks: 0,
        });
        self.send(addr, pb::packet::Kind::Ping(pb::Ping { seq, target }), buddy);
    }

    fn send_indirect_probes(&mut self, _now: Duration) {
        let Some(p) = &self.probe else { return };
        let target = p.target.clone();
        let seq = p.seq;
        let Some(t) = self.members.slot(&target) else {
            self.probe = None;
            return;
        };
        let Some(t_addr) = self.members.at(t).map(Entry::addr) else {
            return;
        };
        let target_ref = codec::node_ref(&target, t_addr);
        let helpers = self.random_live(self.cfg.indirect_checks, Some(t));
        let want_nack = self.cfg.lifeguard;
        for &h in &helpers {
            let Some(addr) = self.members.at(h).map(Entry::addr) else {
                continue;
            };
            self.stats.indirect_probes += 1;
            let req = pb::PingReq {
                seq,
                target: Some(target_ref.clone()),
                want_nack,
            };
            self.send(addr, pb::packet::Kind::PingReq(req), None);
        }
        if self.cfg.stream_fallback {
            // Like memberlist, also try the target over the stream transport:
            // TCP gets through datagram loss that would otherwise look like a failure.
            self.send_stream(
                t_addr,
                pb::packet::Kind::Ping(pb::Ping {
                    seq,
                    target: target.clone(),
                }),
            );
        }
        if let Some(p) = &mut self.probe {
            p.indirect_sent = true;
            p.expected_nacks = if want_nack { helpers.len() as u32 } else { 0 };
        }
    }

    /// Ends the probe of the period that just closed: no ack means suspicion,
    /// unless this node itself was `late` (see `handle_timeout`).
    fn end_probe(&mut self, now: Duration, late: bool) {
        let Some(p) = self.probe.take() else { return };
        self.stats.probe_failures += 1;
        // Lifeguard: if the helpers answered with nacks, the network around this
        // node works and the target is the likely culprit; each missing nack
        // (or, with no helpers, the miss itself) counts against our own health.
        let delta = if p.expected_nacks > 0 {
            p.expected_nacks.saturating_sub(p.nacks)
        } else {
            1
        };
        self.adjust_health(delta as i32);
        if late {
            self.stats.inconclusive_probes += 1;
            return;
        }
        let Some(e) = self.members.get(&p.target) else { return };
        // A failed probe of a member already suspected (usually through gossip,
        // which outruns the next prober) is an independent confirmation:
        // Lifeguard shortens the suspicion timeout with each one.
        if e.status.is_live() {
            let inc = e.incarnation;
            let me = self.name.clone();
            self.on_suspect(now, &p.target, inc, &me);
        }
    }

    fn expire_suspicions(&mut self, now: Duration) {
        while let Some(&(deadline, s)) = self.suspicion_deadlines.first() {
            if deadline > now {
                break;
            }
            self.suspicion_deadlines.pop_first();
            let Some(e) = self.members.at(s) else { continue };
            if e.status != Status::Suspect {
                continue;
            }
            let (name, inc) = (e.name().to_owned(), e.incarnation);
            let me = self.name.clone();
            self.on_dead(deadline, &name, inc, &me, false);
        }
    }

    fn expire_relays(&mut self, now: Duration) {
        let mut nacks = Vec::new();
        self.relays.retain(|_, r| {
            if let Some(at) = r.nack_at
                && at <= now
            {
                nacks.push((r.requester, r.seq));
                r.nack_at = None;
            }
            r.expires > now
        });
        for (to, seq) in nacks {
            self.send(to, pb::packet::Kind::Nack(pb::Nack { seq }), None);
        }
    }

    // ---- anti-entropy --------------------------------------------------

    fn try_join(&mut self, now: Duration) {
        let Some(j) = &mut self.join else { return };
        let seeds = j.seeds.clone();
        j.next_at = now + j.backoff;
        j.backoff = (j.backoff * 2).min(self.cfg.join_retry_max);
        for s in seeds {
            let msg = pb::PushPull {
                request: true,
                join: true,
                members: self.full_state(now),
            };
            self.stats.push_pulls += 1;
            self.send_reliable(s, msg);
        }
    }

    /// The push-pull interval scaled linearly with cluster size, so that the
    /// bytes each node sends for anti-entropy per second stay flat in N
    /// (a full state is O(N) bytes, sent every O(N) seconds). Small clusters
    /// exchange more often, but never more than four times per base interval.
    fn push_pull_interval(&self) -> Duration {
        let scale = self.num_live() as f64 / self.cfg.push_pull_scale_members as f64;
        self.cfg.push_pull_interval.mul_f64(scale.max(0.25))
    }

    fn push_pull_random(&mut self, now: Duration) {
        self.next_push_pull = now + self.push_pull_interval().mul_f64(0.5 + self.rng.random::<f64>());
        if let Some(addr) = self
            .random_live(1, None)
            .pop()
            .and_then(|s| self.members.at(s))
            .map(Entry::addr)
        {
            self.push_pull_to(now, addr);
        }
    }

    /// Tries a state exchange with one random failed member: after a partition
    /// is repaired, this is how the two sides find each other again.
    fn reconnect(&mut self, now: Duration) {
        self.next_reconnect = now + self.cfg.reconnect_interval.mul_f64(0.5 + self.rng.random::<f64>());
        let failed: Vec<SocketAddr> = self
            .down
            .iter()
            .filter_map(|&(_, s)| self.members.at(s))
            .filter(|e| e.status == Status::Dead)
            .map(Entry::addr)
            .collect();
        if failed.is_empty() {
            return;
        }
        let addr = failed[self.rng.random_range(0..failed.len())];
        self.push_pull_to(now, addr);
    }

    fn push_pull_to(&mut self, now: Duration, addr: SocketAddr) {
        self.stats.push_pulls += 1;
        let msg = pb::PushPull {
            request: true,
            join: false,
            members: self.full_state(now),
        };
        self.send_reliable(addr, msg);
    }

    fn full_state(&self, _now: Duration) -> Vec<pb::MemberState> {
        let mut out = Vec::with_capacity(self.members.len() + 1);
        out.push(pb::MemberState {
            node: Some(codec::node_ref(&self.name, self.addr)),
            incarnation: self.incarnation,
            status: codec::status_to_pb(if self.lifecycle == Lifecycle::Leaving {
                Status::Left
            } else {
                Status::Alive
            }) as i32,
            meta: Some(codec::meta_to_pb(&self.meta)),
        });
        for (s, e) in self.members.iter() {
            out.push(pb::MemberState {
                node: Some(codec::node_ref(e.name(), e.addr())),
                incarnation: e.incarnation,
                status: codec::status_to_pb(e.status) as i32,
                meta: Some(codec::meta_to_pb(self.members.meta(s))),
            });
        }
        out
    }

    // ---- dissemination -------------------------------------------------

    fn retransmit_limit(&self) -> u32 {
        let n = self.num_live() as f64;
        self.cfg.retransmit_mult * ((n + 1.0).log10().ceil() as u32).max(1)
    }

    fn gossip_round(&mut self) {
        if self.broadcasts.is_empty() {
            return;
        }
        for peer in self.random_live(self.cfg.gossip_nodes, None) {
            if self.broadcasts.is_empty() {
                break;
            }
            let Some(addr) = self.members.at(peer).map(Entry::addr) else {
                continue;
            };
            self.send(addr, pb::packet::Kind::GossipOnly(pb::Empty {}), None);
        }
    }

    fn send(&mut self, to: SocketAddr, kind: pb::packet::Kind, first: Option<pb::Gossip>) {
        let gossip_only = matches!(kind, pb::packet::Kind::GossipOnly(_));
        let probe = matches!(kind, pb::packet::Kind::Ping(_) | pb::packet::Kind::Ack(_));
        let packet = pb::Packet {
            version: PROTOCOL_VERSION,
            from: Some(codec::node_ref(&self.name, self.addr)),
            kind: Some(kind),
            gossip: Vec::new(),
            view_digest: if probe { self.digest } else { 0 },
        };
        let mut buf = Vec::with_capacity(self.cfg.max_packet_size);
        packet.encode(&mut buf).expect("a Vec grows as needed");
        let header = buf.len();
        if let Some(g) = first {
            buf.extend_from_slice(&broadcast::frame(g));
        }
        let budget = self.cfg.max_packet_size.saturating_sub(buf.len());
        let limit = self.retransmit_limit();
        self.broadcasts.take(budget, limit, &mut buf);
        if gossip_only && buf.len() == header {
            return;
        }
        self.emit(to, buf, false);
    }

    fn send_reliable(&mut self, to: SocketAddr, pp: pb::PushPull) {
        self.send_stream(to, pb::packet::Kind::PushPull(pp));
    }

    /// Sends one packet over the stream transport, without piggybacked gossip.
    fn send_stream(&mut self, to: SocketAddr, kind: pb::packet::Kind) {
        let packet = pb::Packet {
            version: PROTOCOL_VERSION,
            from: Some(codec::node_ref(&self.name, self.addr)),
            kind: Some(kind),
            gossip: Vec::new(),
            view_digest: 0,
        };
        self.emit(to, codec::encode(&packet), true);
    }

    fn emit(&mut self, to: SocketAddr, payload: Vec<u8>, reliable: bool) {
        self.stats.packets_out += 1;
        self.stats.bytes_out += payload.len() as u64;
        self.transmits.push_back(Transmit { to, payload, reliable });
    }

    /// Up to `n` distinct random live members, excluding `except`.
    fn random_live(&mut self, n: usize, except: Option<Slot>) -> Vec<Slot> {
        let mut out = Vec::with_capacity(n);
        let len = self.probe_order.len();
        if len == 0 || n == 0 {
            return out;
        }
        // Sample positions of the probe order (a superset of the live members)
        // and keep live ones; bounded attempts keep this O(n).
        for _ in 0..(4 * n + 8) {
            if out.len() == n {
                break;
            }
            let s = self.probe_order[self.rng.random_range(0..len)];
            if Some(s) == except || out.contains(&s) {
                continue;
            }
            if self.members.at(s).is_some_and(|e| e.status.is_live()) {
                out.push(s);
            }
        }
        out
    }

    fn remember_user(&mut self, now: Duration, origin: String, seq: u64) {
        self.user_seen.insert((origin.clone(), seq));
        self.user_seen_order.push_back((now, origin, seq));
        while self.user_seen_order.len() > self.cfg.max_user_seen {
            if let Some((_, o, s)) = self.user_seen_order.pop_front() {
                self.user_seen.remove(&(o, s));
            }
        }
    }

    fn expire_user_seen(&mut self, now: Duration) {
        while let Some((t, _, _)) = self.user_seen_order.front() {
            if *t + self.cfg.user_seen_retention > now {
                break;
            }
            if let Some((_, o, s)) = self.user_seen_order.pop_front() {
                self.user_seen.remove(&(o, s));
            }
        }
    }

    // ---- retention -----------------------------------------------------

    fn reap(&mut self, now: Duration) {
        while let Some(&(since, s)) = self.down.first() {
            if since + self.cfg.dead_retention > now {
                break;
            }
            self.forget(s, since);
        }
    }

    fn bound_down(&mut self) {
        while self.down.len() > self.cfg.max_dead_members {
            let Some(&(since, s)) = self.down.first() else {
                break;
            };
            self.forget(s, since);
        }
    }

    fn forget(&mut self, s: Slot, since: Duration) {
        self.down.remove(&(since, s));
        if self.members.at(s).is_some_and(|e| !e.status.is_live())
            && let Some(e) = self.members.remove(s)
        {
            self.events.push_back(Event::MemberReaped {
                name: e.name().to_owned(),
            });
        }
    }
}

fn check_meta(cfg: &Config, meta: &Meta) -> Result<(), MetaTooLarge> {
    let len = codec::meta_encoded_len(meta);
    if len > cfg.max_meta_size {
        return Err(MetaTooLarge {
            len,
            limit: cfg.max_meta_size,
        });
    }
    Ok(())
}

/// FNV-1a of a member name, the unit of the view digest. Fixed, so that every
/// node computes the same digest for the same live set.
fn name_hash(name: &str) -> u32 {
    name.bytes()
        .fold(0x811c_9dc5_u32, |h, b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

fn new_suspicion(cfg: &Config, now: Duration, from: &str, n: usize) -> Suspicion {
    let n = n.max(1) as f64;
    let min = cfg
        .probe_interval
        .mul_f64(f64::from(cfg.suspicion_mult) * n.log10().max(1.0));
    let (k, max) = if cfg.lifeguard {
        // Too few members to expect independent confirmations: fixed timeout.
        let k = if (n as u32).saturating_sub(2) < cfg.suspicion_confirmations {
            0
        } else {
            cfg.suspicion_confirmations
        };
        (k, min * cfg.suspicion_max_mult)
    } else {
        (0, min)
    };
    let mut s = Suspicion {
        started: now,
        confirmers: BTreeSet::new(),
        k,
        min,
        max,
        deadline: now,
    };
    s.confirmers.insert(from.to_owned());
    s.deadline = now + s.timeout();
    s
}

fn alive_gossip(name: &str, addr: SocketAddr, incarnation: u64, meta: &Meta) -> pb::Gossip {
    pb::Gossip {
        kind: Some(pb::gossip::Kind::Alive(pb::Alive {
            node: Some(codec::node_ref(name, addr)),
            incarnation,
            meta: Some(codec::meta_to_pb(meta)),
        })),
    }
}

fn suspect_gossip(name: &str, incarnation: u64, from: &str) -> pb::Gossip {
    pb::Gossip {
        kind: Some(pb::gossip::Kind::Suspect(pb::Suspect {
            node: name.to_owned(),
            incarnation,
            from: from.to_owned(),
        })),
    }
}

fn dead_gossip(name: &str, incarnation: u64, from: &str, left: bool) -> pb::Gossip {
    pb::Gossip {
        kind: Some(pb::gossip::Kind::Dead(pb::Dead {
            node: name.to_owned(),
            incarnation,
            from: from.to_owned(),
            left,
        })),
    }
}
