//! What the simulator needs from a membership protocol, and rumor's implementation of it.

use std::net::SocketAddr;
use std::time::Duration;

use membership::{Config, Event, Membership, Meta, Status};

pub use membership::Transmit;

/// What a node reports, reduced to what the simulator measures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimEvent {
    /// The node now sees `name` as a live member.
    Up(String),
    /// The node suspects `name`.
    Suspect(String),
    /// The node sees `name` as failed or departed.
    Down(String),
    /// A user gossip message arrived; the simulator puts a unique id in its first 8 bytes.
    Message(Vec<u8>),
}

/// Everything a protocol implementation gets to create one node.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Index in the simulation; stable across restarts.
    pub index: usize,
    /// Node name; stable across restarts.
    pub name: String,
    /// Address of this incarnation of the node.
    pub addr: SocketAddr,
    /// Seed for the node's own randomness.
    pub seed: u64,
    /// Simulated time of creation.
    pub now: Duration,
}

/// A membership protocol as a pure state machine, so that several can run in
/// the same simulated network (rumor with or without Lifeguard, foca).
pub trait Protocol {
    /// Hands in a datagram.
    fn handle_datagram(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]);
    /// Hands in a message that arrived over a reliable stream.
    fn handle_stream(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]);
    /// Fires timers due at `now`.
    fn handle_timeout(&mut self, now: Duration);
    /// The next deadline.
    fn poll_timeout(&self) -> Option<Duration>;
    /// The next outgoing packet.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// The next event.
    fn poll_event(&mut self) -> Option<SimEvent>;
    /// Joins through `seeds` (empty: start a cluster).
    fn join(&mut self, now: Duration, seeds: &[SocketAddr]);
    /// Leaves gracefully.
    fn leave(&mut self, now: Duration);
    /// Starts disseminating a user message; false if refused.
    fn broadcast(&mut self, now: Duration, payload: &[u8]) -> bool;
    /// The protocol period, to express times in rounds.
    fn protocol_period(&self) -> Duration;
}

/// rumor's `membership` crate driven by the simulator.
#[derive(Debug)]
pub struct Rumor {
    inner: Membership,
}

impl Rumor {
    /// Creates a node with `cfg` and no metadata.
    pub fn new(cfg: Config, spec: &NodeSpec) -> Self {
        Self::with_meta(cfg, spec, Meta::default())
    }

    /// Creates a node with `cfg` that advertises `meta`, as a real node
    /// advertises its roles, services and models: every member entry a
    /// push-pull or an update carries includes it, so the gossip bytes
    /// depend on it.
    pub fn with_meta(cfg: Config, spec: &NodeSpec, meta: Meta) -> Self {
        let inner = Membership::new(cfg, spec.name.clone(), spec.addr, meta, spec.seed, spec.now)
            .expect("simulator configs are valid");
        Self { inner }
    }

    /// The state machine, for assertions.
    pub fn inner(&self) -> &Membership {
        &self.inner
    }
}

impl Protocol for Rumor {
    fn handle_datagram(&mut self, now: Duration, _from: SocketAddr, bytes: &[u8]) {
        self.inner.handle_datagram(now, bytes);
    }

    fn handle_stream(&mut self, now: Duration, _from: SocketAddr, bytes: &[u8]) {
        self.inner.handle_stream(now, bytes);
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.inner.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.inner.poll_timeout()
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.inner.poll_transmit()
    }

    fn poll_event(&mut self) -> Option<SimEvent> {
        loop {
            let e = match self.inner.poll_event()? {
                Event::MemberUp(m) => SimEvent::Up(m.name),
                Event::MemberUpdated(m) if m.status == Status::Alive => SimEvent::Up(m.name),
                Event::MemberSuspect { name, .. } => SimEvent::Suspect(name),
                Event::MemberDown { name, .. } => SimEvent::Down(name),
                Event::UserMessage { payload, .. } => SimEvent::Message(payload.to_vec()),
                _ => continue,
            };
            return Some(e);
        }
    }

    fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        self.inner.join(now, seeds);
    }

    fn leave(&mut self, now: Duration) {
        self.inner.leave(now);
    }

    fn broadcast(&mut self, now: Duration, payload: &[u8]) -> bool {
        self.inner.broadcast(now, payload.to_vec().into()).is_ok()
    }

    fn protocol_period(&self) -> Duration {
        self.inner.config().probe_interval
    }
}
