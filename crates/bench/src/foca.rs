//! The crates.io SWIM crate [foca](https://docs.rs/foca/2.0.0) driven by the
//! simulator, so rumor's SWIM+Lifeguard can be compared with it in the same
//! simulated network.

use std::cell::RefCell;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::num::NonZeroU32;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use ::foca::{
    BroadcastHandler, Codec, Header, Identity, Incarnation, Invalidates, Member, Message, Notification,
    OwnedNotification, Runtime, State, Timer,
};
use bytes::{Buf, BufMut};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use sim::{NodeSpec, Protocol, SimEvent, Transmit};

/// foca's configuration type, to build a [`Foca`] with [`Foca::with_config`].
pub use ::foca::Config as FocaConfig;

/// Room left in a packet for foca's header (two identities and a message)
/// and the 2-byte length prefix when sizing user payloads.
const HEADER_ALLOWANCE: usize = 160;

/// First delay between join announces when the cluster has not answered yet.
const JOIN_RETRY_FIRST: Duration = Duration::from_secs(1);
/// Longest delay between join announces.
const JOIN_RETRY_MAX: Duration = Duration::from_secs(30);

type Inner = ::foca::Foca<FocaId, WireCodec, SmallRng, UserBroadcasts>;

/// foca driven by the simulator.
///
/// # What runs
///
/// foca 2.0.0 as published, with:
/// - an identity (`FocaId`) of node name, socket address and a *bump*;
/// - a hand-written compact binary `Codec` (`WireCodec`);
/// - a custom broadcast handler (`UserBroadcasts`) for user messages;
/// - a runtime (`Io`) that keeps foca's timers in a deterministic queue.
///
/// Everything is a pure function of the [`NodeSpec`] and the inputs: foca's
/// random source is a `SmallRng` seeded from `spec.seed`, time only advances
/// through the `now` the simulator passes in, and nothing spawns threads.
///
/// # Parameters ([`Foca::new`]: `foca::Config::new_lan(cluster_size)`)
///
/// foca's LAN preset, derived from memberlist's `DefaultLANConfig`:
///
/// | parameter | value | n = 10 | n = 100 | n = 1000 |
/// |---|---|---|---|---|
/// | `probe_period` | 1 s | | | |
/// | `probe_rtt` (direct ack wait before indirect probes) | 500 ms | | | |
/// | `num_indirect_probes` (also the fan-out of explicit gossip) | 3 | | | |
/// | `max_transmissions` = ⌊4·log10(n+1)⌋ | | 4 | 8 | 12 |
/// | `suspect_to_down_after` = max(1, log10 n)·4·`probe_period` (fixed, no Lifeguard scaling) | | 4 s | 8 s | 12 s |
/// | `remove_down_after` | 24 h | | | |
/// | `max_packet_size` | 1400 B | | | |
/// | `notify_down_members` (send `TurnUndead` to a member declared down) | true | | | |
/// | `periodic_gossip` (only when updates or broadcasts are pending) | every 200 ms to 3 members | | | |
/// | `periodic_announce` (ask for more peers) | every 30 s to 1 member | | | |
/// | `periodic_announce_to_down_members` (heals partitions) | every 65 s to 2 members | | | |
///
/// foca has no Lifeguard: no local health multiplier, no dynamic suspicion
/// timeout, no suspicion confirmations; no push-pull state sync either.
///
/// # Identity, rejoin and renewal
///
/// foca's `Identity::Addr` (what it uses to recognise the same member across
/// identities) is the node *name*, so a node restarted under the same name,
/// at the same or a new address, replaces its former identity everywhere.
/// Conflicts between two identities of the same name are won by the higher
/// `bump` (ties, which need a restart within the same microsecond, by the
/// larger socket address). A node's first bump is its creation time in
/// microseconds of simulated time, so a restarted node always outranks its
/// previous life.
///
/// **Renewal is enabled**: `Identity::renew` returns the same name and address
/// with `bump + 1`. When foca learns the cluster declared it down (from gossip
/// about itself, or from the `TurnUndead` message that `notify_down_members`
/// makes peers send), it switches to the renewed identity, declares the old
/// one down itself and gossips, so a falsely-declared-down node rejoins as
/// soon as its new identity reaches a member, instead of staying defunct.
/// Peers then see a `Rename` followed by `MemberUp`. (After a partition, both
/// sides saw each other down; `TurnUndead` replies make nodes on both sides
/// renew, and the cluster heals once the new identities meet.)
///
/// # Joining
///
/// foca joins by sending `Announce` to an identity. The adapter only knows a
/// seed's address, so it announces to a placeholder identity with an empty
/// name and the seed's address. foca accepts an `Announce` whose destination
/// has the same `Addr` as its own identity, and the adapter's `Addr` type
/// treats an empty name as matching any name, so the seed accepts it and
/// replies with a `Feed` from its real identity. The placeholder never enters
/// a membership list: it is only ever a destination. Announces are repeated
/// (1 s, doubling, capped at 30 s, like rumor's `join_retry_interval`) until
/// foca reports `Active`, so a lost announce or a seed that is down does not
/// strand the node.
///
/// The adapter does the same whenever foca stops being connected: after
/// `Idle` (every known member is down), and after `Rejoin` (foca renewed its
/// identity, which resets it to disconnected with its probe and gossip timers
/// cancelled; if the gossip announcing the new identity is lost, foca alone
/// would wait for a peer's announce to down members, up to 65 s). Those
/// announces go to the seeds and to up to two members foca still lists as
/// active, and stop once foca reports `Active` again. This is adapter
/// behaviour, the kind of reconnect loop an application embedding foca
/// would write; foca itself is unchanged.
///
/// # Events
///
/// - foca `MemberUp` → [`SimEvent::Up`], `MemberDown` → [`SimEvent::Down`]
///   (deduplicated per name; a `Rename` to an active identity reports `Up`).
/// - foca has no suspicion notification. After an input, at most every 50 ms
///   of simulated time, the adapter scans foca's membership state (O(members)) and emits [`SimEvent::Suspect`] once per transition of a member
///   into `State::Suspect`. So first detection for foca is its first suspicion,
///   as for rumor; members foca learns about directly as `Down` produce no
///   `Suspect`.
///
/// # User broadcasts
///
/// [`Protocol::broadcast`] hands the payload to `foca::Foca::add_broadcast`.
/// The handler keys it by its first 8 bytes (a little-endian u64 id),
/// de-duplicates by that id and emits [`SimEvent::Message`] on the first
/// receipt at every node but the origin. foca then piggybacks it on its own
/// messages (probes, acks, and the 200 ms periodic gossip) until it has been
/// sent `max_transmissions` times by each node that holds it, as for its
/// membership updates. Payloads must fit in one packet after the header and
/// any membership updates; [`Foca::max_user_payload`] bounds them.
///
/// # After `leave`
///
/// `leave` calls `foca::Foca::leave_cluster` (which gossips the node's own
/// `Down` to 3 members and turns foca defunct), after which the adapter drops
/// every input and timer. Without that, gossip about its own departure could
/// make foca renew its identity and rejoin.
pub struct Foca {
    inner: Inner,
    io: Io,
    config: FocaConfig,
    /// Payloads received through the broadcast handler, not yet reported.
    inbox: Rc<RefCell<VecDeque<Vec<u8>>>>,
    events: VecDeque<SimEvent>,
    /// Liveness last reported per name, to report transitions only.
    reported_up: HashMap<Arc<str>, bool>,
    /// Names seen in `State::Suspect` at the last scan.
    suspected: Vec<Arc<str>>,
    /// When `suspected` was last refreshed.
    last_scan: Option<Duration>,
    seeds: Vec<SocketAddr>,
    /// Delay before the next announce while foca is not connected.
    join_backoff: Duration,
    /// A `Due::JoinRetry` is queued.
    retry_armed: bool,
    /// foca reported `Active` and has not gone `Idle`, `Defunct` or renewed since.
    connected: bool,
    left: bool,
    /// Errors foca returned (junk data, stale probes); for diagnostics.
    errors: u64,
}

impl fmt::Debug for Foca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Foca")
            .field("identity", self.inner.identity())
            .field("members", &self.inner.num_members())
            .field("timers", &self.io.timers.len())
            .field("connected", &self.connected)
            .field("left", &self.left)
            .field("errors", &self.errors)
            .finish()
    }
}

impl Foca {
    /// Creates a node with foca's LAN preset for a cluster of `cluster_size`
    /// (`foca::Config::new_lan`; values in the [type documentation](Foca)).
    pub fn new(spec: &NodeSpec, cluster_size: usize) -> Self {
        let n = u32::try_from(cluster_size.max(1)).unwrap_or(u32::MAX);
        let n = NonZeroU32::new(n).expect("at least one");
        Self::with_config(spec, FocaConfig::new_lan(n))
    }

    /// Creates a node with a custom foca configuration.
    ///
    /// # Panics
    ///
    /// When `spec.name` is empty: the empty name is reserved for seeds whose
    /// name is not known yet.
    pub fn with_config(spec: &NodeSpec, config: FocaConfig) -> Self {
        assert!(!spec.name.is_empty(), "foca nodes need a non-empty name");
        let bump = u64::try_from(spec.now.as_micros()).unwrap_or(u64::MAX);
        let id = FocaId {
            name: spec.name.as_str().into(),
            addr: spec.addr,
            bump,
        };
        let inbox = Rc::new(RefCell::new(VecDeque::new()));
        let handler = UserBroadcasts {
            seen: HashSet::new(),
            inbox: Rc::clone(&inbox),
        };
        let rng = SmallRng::seed_from_u64(spec.seed);
        let inner = Inner::with_custom_broadcast(id, config.clone(), rng, WireCodec::default(), handler);
        Self {
            inner,
            io: Io {
                now: spec.now,
                ..Io::default()
            },
            config,
            inbox,
            events: VecDeque::new(),
            reported_up: HashMap::new(),
            suspected: Vec::new(),
            last_scan: None,
            seeds: Vec::new(),
            join_backoff: JOIN_RETRY_FIRST,
            retry_armed: false,
            connected: false,
            left: false,
            errors: 0,
        }
    }

    /// The foca configuration in effect.
    pub fn config(&self) -> &FocaConfig {
        &self.config
    }

    /// Members this node sees as active (alive or suspect).
    pub fn num_members(&self) -> usize {
        self.inner.num_members()
    }

    /// This node's current bump; it grows by one on every renewal.
    pub fn bump(&self) -> u64 {
        self.inner.identity().bump
    }

    /// Errors foca returned so far (junk data, stale probe cycles, etc.).
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Largest payload [`Protocol::broadcast`] accepts.
    pub fn max_user_payload(&self) -> usize {
        self.config.max_packet_size.get().saturating_sub(HEADER_ALLOWANCE)
    }

    fn count(&mut self, r: Result<(), ::foca::Error>) {
        if r.is_err() {
            self.errors += 1;
        }
    }

    /// Announces to every seed and to up to two other members foca still
    /// lists as active; false when there is nobody to announce to.
    fn announce(&mut self) -> bool {
        let mut targets: Vec<FocaId> = self.seeds.iter().map(|&a| FocaId::seed(a)).collect();
        let others = self
            .inner
            .iter_members()
            .map(|m| m.id())
            .filter(|id| !self.seeds.contains(&id.addr));
        targets.extend(others.take(2).cloned());
        let any = !targets.is_empty();
        for dst in targets {
            let r = self.inner.announce(dst, &mut self.io);
            self.count(r);
        }
        any
    }

    /// Starts announcing (1 s, doubling up to 30 s) until foca reports `Active`.
    fn arm_retry(&mut self) {
        if self.retry_armed || self.left {
            return;
        }
        self.retry_armed = true;
        self.join_backoff = JOIN_RETRY_FIRST;
        self.io.schedule(Due::JoinRetry, self.join_backoff);
    }

    /// Turns what foca said during the last call into events.
    fn after(&mut self, now: Duration) {
        let notes = std::mem::take(&mut self.io.notes);
        for n in notes {
            match n {
                OwnedNotification::MemberUp(id) => self.report(&id.name, true),
                OwnedNotification::MemberDown(id) => self.report(&id.name, false),
                // A rename to an identity foca sees as active: the name is up.
                OwnedNotification::Rename(_, new) if self.inner.iter_members().any(|m| m.id() == &new) => {
                    self.report(&new.name, true);
                }
                OwnedNotification::Active => self.connected = true,
                OwnedNotification::Idle | OwnedNotification::Defunct | OwnedNotification::Rejoin(_) => {
                    self.connected = false;
                    self.arm_retry();
                }
                // Variants behind foca's `unstable-notifications` feature.
                #[allow(unreachable_patterns)]
                _ => {}
            }
        }
        // The scan is O(members); doing it after every input made N = 1,000
        // quadratic. Every 50 ms of simulated time is fine for figures in seconds.
        if self.last_scan.is_none_or(|t| now >= t + SCAN_EVERY) {
            self.last_scan = Some(now);
            self.scan_suspects();
        }
        let mut inbox = self.inbox.borrow_mut();
        while let Some(p) = inbox.pop_front() {
            self.events.push_back(SimEvent::Message(p));
        }
    }

    fn report(&mut self, name: &Arc<str>, up: bool) {
        let was_up = self.reported_up.get(name).copied().unwrap_or(false);
        if was_up == up {
            return;
        }
        self.reported_up.insert(Arc::clone(name), up);
        let name = name.to_string();
        self.events
            .push_back(if up { SimEvent::Up(name) } else { SimEvent::Down(name) });
    }

    fn scan_suspects(&mut self) {
        let mut now: Vec<Arc<str>> = Vec::new();
        for m in self.inner.iter_membership_state() {
            if m.state() == State::Suspect {
                now.push(Arc::clone(&m.id().name));
            }
        }
        for name in &now {
            if !self.suspected.contains(name) {
                self.events.push_back(SimEvent::Suspect(name.to_string()));
            }
        }
        self.suspected = now;
    }
}

/// How often (in simulated time) the adapter looks for new suspects in foca's state.
const SCAN_EVERY: Duration = Duration::from_millis(50);

impl Protocol for Foca {
    fn handle_datagram(&mut self, now: Duration, _from: SocketAddr, bytes: &[u8]) {
        if self.left {
            return;
        }
        self.io.now = now;
        let r = self.inner.handle_data(bytes, &mut self.io);
        self.count(r);
        self.after(now);
    }

    fn handle_stream(&mut self, now: Duration, from: SocketAddr, bytes: &[u8]) {
        // foca never asks for a stream; treat anything that arrives as a datagram.
        self.handle_datagram(now, from, bytes);
    }

    fn handle_timeout(&mut self, now: Duration) {
        if self.left {
            self.io.timers.clear();
            return;
        }
        self.io.now = now;
        while let Some(Reverse(t)) = self.io.timers.peek() {
            if t.at > now {
                break;
            }
            let Reverse(t) = self.io.timers.pop().expect("peeked");
            match t.what {
                Due::Foca(timer) => {
                    let r = self.inner.handle_timer(timer, &mut self.io);
                    self.count(r);
                }
                Due::JoinRetry => {
                    self.retry_armed = false;
                    if !self.connected && self.announce() {
                        self.retry_armed = true;
                        self.join_backoff = (self.join_backoff * 2).min(JOIN_RETRY_MAX);
                        self.io.schedule(Due::JoinRetry, self.join_backoff);
                    }
                }
            }
        }
        self.after(now);
    }

    fn poll_timeout(&self) -> Option<Duration> {
        self.io.timers.peek().map(|Reverse(t)| t.at)
    }

    fn poll_transmit(&mut self) -> Option<Transmit> {
        self.io.out.pop_front()
    }

    fn poll_event(&mut self) -> Option<SimEvent> {
        self.events.pop_front()
    }

    fn join(&mut self, now: Duration, seeds: &[SocketAddr]) {
        self.io.now = now;
        let own = self.inner.identity().addr;
        self.seeds = seeds.iter().copied().filter(|&s| s != own).collect();
        if self.seeds.is_empty() || self.left {
            return;
        }
        self.announce();
        self.arm_retry();
        self.after(now);
    }

    fn leave(&mut self, now: Duration) {
        if self.left {
            return;
        }
        self.io.now = now;
        let r = self.inner.leave_cluster(&mut self.io);
        self.count(r);
        self.after(now);
        self.left = true;
        self.io.timers.clear();
    }

    fn broadcast(&mut self, now: Duration, payload: &[u8]) -> bool {
        if self.left || payload.len() < 8 || payload.len() > self.max_user_payload() {
            return false;
        }
        self.io.now = now;
        matches!(self.inner.add_broadcast(payload), Ok(true))
    }

    fn protocol_period(&self) -> Duration {
        self.config.probe_period
    }
}

/// A foca identity: node name, address of this incarnation of the process,
/// and a bump that orders identities sharing a name.
#[derive(Clone, PartialEq, Eq, Debug)]
struct FocaId {
    /// Empty only in the placeholder for a seed whose name is unknown.
    name: Arc<str>,
    addr: SocketAddr,
    bump: u64,
}

impl FocaId {
    /// The placeholder a join announce is addressed to.
    fn seed(addr: SocketAddr) -> Self {
        Self {
            name: "".into(),
            addr,
            bump: 0,
        }
    }
}

/// What foca compares to recognise one member across identities: the name.
/// The empty name (a seed placeholder) matches every name, so that a seed
/// accepts an announce addressed to its address alone.
#[derive(Clone, Debug)]
struct NameKey(Arc<str>);

impl PartialEq for NameKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.is_empty() || other.0.is_empty() || self.0 == other.0
    }
}

impl Identity for FocaId {
    type Addr = NameKey;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            name: Arc::clone(&self.name),
            addr: self.addr,
            bump: self.bump.wrapping_add(1),
        })
    }

    fn addr(&self) -> NameKey {
        NameKey(Arc::clone(&self.name))
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        (self.bump, self.addr) > (adversary.bump, adversary.addr)
    }
}

/// A timer foca asked for, or the adapter's own join retry.
#[derive(Debug)]
enum Due {
    Foca(Timer<FocaId>),
    JoinRetry,
}

#[derive(Debug)]
struct Pending {
    at: Duration,
    seq: u64,
    what: Due,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

/// foca's runtime: collects packets and notifications, keeps timers in a
/// queue ordered by (deadline, submission order).
#[derive(Debug, Default)]
struct Io {
    now: Duration,
    seq: u64,
    timers: BinaryHeap<Reverse<Pending>>,
    out: VecDeque<Transmit>,
    notes: Vec<OwnedNotification<FocaId>>,
}

impl Io {
    fn schedule(&mut self, what: Due, after: Duration) {
        self.seq += 1;
        self.timers.push(Reverse(Pending {
            at: self.now + after,
            seq: self.seq,
            what,
        }));
    }
}

impl Runtime<FocaId> for Io {
    fn notify(&mut self, notification: Notification<'_, FocaId>) {
        self.notes.push(notification.to_owned());
    }

    fn send_to(&mut self, to: FocaId, data: &[u8]) {
        self.out.push_back(Transmit {
            to: to.addr,
            payload: data.to_vec(),
            reliable: false,
        });
    }

    fn submit_after(&mut self, event: Timer<FocaId>, after: Duration) {
        self.schedule(Due::Foca(event), after);
    }
}

/// User messages as foca custom broadcasts, keyed by their first 8 bytes.
struct UserBroadcasts {
    /// Ids seen so far (grows with the number of distinct messages).
    seen: HashSet<u64>,
    inbox: Rc<RefCell<VecDeque<Vec<u8>>>>,
}

/// The key foca uses to replace a pending broadcast: the message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MessageId(u64);

impl Invalidates for MessageId {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

#[derive(Debug)]
struct ShortMessage;

impl fmt::Display for ShortMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("user message shorter than its 8-byte id")
    }
}

impl std::error::Error for ShortMessage {}

impl BroadcastHandler<FocaId> for UserBroadcasts {
    type Key = MessageId;
    type Error = ShortMessage;

    fn receive_item(&mut self, data: &[u8], sender: Option<&FocaId>) -> Result<Option<MessageId>, ShortMessage> {
        let id = data
            .first_chunk::<8>()
            .map(|b| u64::from_le_bytes(*b))
            .ok_or(ShortMessage)?;
        if !self.seen.insert(id) {
            return Ok(None);
        }
        // `sender` is None for the node's own broadcast, which it does not report.
        if sender.is_some() {
            self.inbox.borrow_mut().push_back(data.to_vec());
        }
        Ok(Some(MessageId(id)))
    }
}

/// Why a packet could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WireError {
    Truncated,
    BadTag(u8),
    BadName,
    Overflow,
    NoSpace,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated => f.write_str("truncated"),
            Self::BadTag(t) => write!(f, "unknown tag {t}"),
            Self::BadName => f.write_str("name is not UTF-8"),
            Self::Overflow => f.write_str("integer too large"),
            Self::NoSpace => f.write_str("no room in the packet"),
        }
    }
}

impl std::error::Error for WireError {}

/// A compact binary codec for foca packets.
///
/// - integers: unsigned LEB128 varints;
/// - identity: name length, name bytes, address (tag 4: 4 address bytes and a
///   big-endian port; tag 6: 16 address bytes, port, flow info and scope id
///   as varints), bump;
/// - header: source identity, source incarnation, destination identity,
///   message tag and fields (probe numbers are one byte);
/// - member: identity, incarnation, state byte.
///
/// With names like `n12`, an IPv4 address and a small bump, an identity takes
/// 12-16 bytes and a ping with no piggybacked update about 30.
#[derive(Debug, Default)]
struct WireCodec {
    scratch: Vec<u8>,
}

mod tag {
    pub(super) const PING: u8 = 0;
    pub(super) const ACK: u8 = 1;
    pub(super) const PING_REQ: u8 = 2;
    pub(super) const INDIRECT_PING: u8 = 3;
    pub(super) const INDIRECT_ACK: u8 = 4;
    pub(super) const FORWARDED_ACK: u8 = 5;
    pub(super) const ANNOUNCE: u8 = 6;
    pub(super) const FEED: u8 = 7;
    pub(super) const GOSSIP: u8 = 8;
    pub(super) const BROADCAST: u8 = 9;
    pub(super) const TURN_UNDEAD: u8 = 10;
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_u8(buf: &mut impl Buf) -> Result<u8, WireError> {
    if buf.has_remaining() {
        Ok(buf.get_u8())
    } else {
        Err(WireError::Truncated)
    }
}

fn get_varint(buf: &mut impl Buf) -> Result<u64, WireError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = get_u8(buf)?;
        let low = u64::from(b & 0x7f);
        if shift == 63 && low > 1 {
            return Err(WireError::Overflow);
        }
        v |= low << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(WireError::Overflow)
}

fn get_bytes<const N: usize>(buf: &mut impl Buf) -> Result<[u8; N], WireError> {
    if buf.remaining() < N {
        return Err(WireError::Truncated);
    }
    let mut b = [0u8; N];
    buf.copy_to_slice(&mut b);
    Ok(b)
}

fn put_id(out: &mut Vec<u8>, id: &FocaId) {
    put_varint(out, id.name.len() as u64);
    out.extend_from_slice(id.name.as_bytes());
    match id.addr {
        SocketAddr::V4(a) => {
            out.push(4);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
        }
        SocketAddr::V6(a) => {
            out.push(6);
            out.extend_from_slice(&a.ip().octets());
            out.extend_from_slice(&a.port().to_be_bytes());
            put_varint(out, u64::from(a.flowinfo()));
            put_varint(out, u64::from(a.scope_id()));
        }
    }
    put_varint(out, id.bump);
}

fn get_id(buf: &mut impl Buf) -> Result<FocaId, WireError> {
    let len = usize::try_from(get_varint(buf)?).map_err(|_| WireError::Overflow)?;
    if buf.remaining() < len {
        return Err(WireError::Truncated);
    }
    let mut name = vec![0u8; len];
    buf.copy_to_slice(&mut name);
    let name = String::from_utf8(name).map_err(|_| WireError::BadName)?;
    let addr = match get_u8(buf)? {
        4 => {
            let ip = Ipv4Addr::from(get_bytes::<4>(buf)?);
            let port = u16::from_be_bytes(get_bytes::<2>(buf)?);
            SocketAddr::new(IpAddr::V4(ip), port)
        }
        6 => {
            let ip = Ipv6Addr::from(get_bytes::<16>(buf)?);
            let port = u16::from_be_bytes(get_bytes::<2>(buf)?);
            let flow = u32::try_from(get_varint(buf)?).map_err(|_| WireError::Overflow)?;
            let scope = u32::try_from(get_varint(buf)?).map_err(|_| WireError::Overflow)?;
            SocketAddr::V6(SocketAddrV6::new(ip, port, flow, scope))
        }
        t => return Err(WireError::BadTag(t)),
    };
    let bump = get_varint(buf)?;
    Ok(FocaId {
        name: name.into(),
        addr,
        bump,
    })
}

fn get_incarnation(buf: &mut impl Buf) -> Result<Incarnation, WireError> {
    Incarnation::try_from(get_varint(buf)?).map_err(|_| WireError::Overflow)
}

fn put_header(out: &mut Vec<u8>, h: &Header<FocaId>) {
    put_id(out, &h.src);
    put_varint(out, u64::from(h.src_incarnation));
    put_id(out, &h.dst);
    let (t, id, pn) = match &h.message {
        Message::Ping(pn) => (tag::PING, None, Some(*pn)),
        Message::Ack(pn) => (tag::ACK, None, Some(*pn)),
        Message::PingReq { target, probe_number } => (tag::PING_REQ, Some(target), Some(*probe_number)),
        Message::IndirectPing { origin, probe_number } => (tag::INDIRECT_PING, Some(origin), Some(*probe_number)),
        Message::IndirectAck { target, probe_number } => (tag::INDIRECT_ACK, Some(target), Some(*probe_number)),
        Message::ForwardedAck { origin, probe_number } => (tag::FORWARDED_ACK, Some(origin), Some(*probe_number)),
        Message::Announce => (tag::ANNOUNCE, None, None),
        Message::Feed => (tag::FEED, None, None),
        Message::Gossip => (tag::GOSSIP, None, None),
        Message::Broadcast => (tag::BROADCAST, None, None),
        Message::TurnUndead => (tag::TURN_UNDEAD, None, None),
    };
    out.push(t);
    if let Some(id) = id {
        put_id(out, id);
    }
    if let Some(pn) = pn {
        out.push(pn);
    }
}

fn get_header(buf: &mut impl Buf) -> Result<Header<FocaId>, WireError> {
    let src = get_id(buf)?;
    let src_incarnation = get_incarnation(buf)?;
    let dst = get_id(buf)?;
    let message = match get_u8(buf)? {
        tag::PING => Message::Ping(get_u8(buf)?),
        tag::ACK => Message::Ack(get_u8(buf)?),
        tag::PING_REQ => Message::PingReq {
            target: get_id(buf)?,
            probe_number: get_u8(buf)?,
        },
        tag::INDIRECT_PING => Message::IndirectPing {
            origin: get_id(buf)?,
            probe_number: get_u8(buf)?,
        },
        tag::INDIRECT_ACK => Message::IndirectAck {
            target: get_id(buf)?,
            probe_number: get_u8(buf)?,
        },
        tag::FORWARDED_ACK => Message::ForwardedAck {
            origin: get_id(buf)?,
            probe_number: get_u8(buf)?,
        },
        tag::ANNOUNCE => Message::Announce,
        tag::FEED => Message::Feed,
        tag::GOSSIP => Message::Gossip,
        tag::BROADCAST => Message::Broadcast,
        tag::TURN_UNDEAD => Message::TurnUndead,
        t => return Err(WireError::BadTag(t)),
    };
    Ok(Header {
        src,
        src_incarnation,
        dst,
        message,
    })
}

fn put_member(out: &mut Vec<u8>, m: &Member<FocaId>) {
    put_id(out, m.id());
    put_varint(out, u64::from(m.incarnation()));
    out.push(match m.state() {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    });
}

fn get_member(buf: &mut impl Buf) -> Result<Member<FocaId>, WireError> {
    let id = get_id(buf)?;
    let incarnation = get_incarnation(buf)?;
    let state = match get_u8(buf)? {
        0 => State::Alive,
        1 => State::Suspect,
        2 => State::Down,
        t => return Err(WireError::BadTag(t)),
    };
    Ok(Member::new(id, incarnation, state))
}

impl WireCodec {
    /// Writes what `f` encodes only when all of it fits, so a full buffer is left clean.
    fn write(&mut self, mut buf: impl BufMut, f: impl FnOnce(&mut Vec<u8>)) -> Result<(), WireError> {
        self.scratch.clear();
        f(&mut self.scratch);
        if buf.remaining_mut() < self.scratch.len() {
            return Err(WireError::NoSpace);
        }
        buf.put_slice(&self.scratch);
        Ok(())
    }
}

impl Codec<FocaId> for WireCodec {
    type Error = WireError;

    fn encode_header(&mut self, header: &Header<FocaId>, buf: impl BufMut) -> Result<(), WireError> {
        self.write(buf, |out| put_header(out, header))
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<FocaId>, WireError> {
        get_header(&mut buf)
    }

    fn encode_member(&mut self, member: &Member<FocaId>, buf: impl BufMut) -> Result<(), WireError> {
        self.write(buf, |out| put_member(out, member))
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<FocaId>, WireError> {
        get_member(&mut buf)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use sim::{Cluster, NetConfig, sim_addr};

    const N: usize = 10;

    fn cluster(seed: u64, n: usize) -> Cluster<Foca> {
        println!("seed = {seed}");
        let mut c = Cluster::new(seed, NetConfig::default(), move |spec: &NodeSpec| Foca::new(spec, n));
        c.add_node(&[]);
        for _ in 1..n {
            c.add_node(&[0]);
        }
        c
    }

    fn converge(c: &mut Cluster<Foca>) -> Duration {
        c.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |c| c.converged())
            .expect("the cluster converges within a minute")
    }

    fn id(name: &str, addr: SocketAddr, bump: u64) -> FocaId {
        FocaId {
            name: name.into(),
            addr,
            bump,
        }
    }

    fn encode_header(h: &Header<FocaId>) -> Vec<u8> {
        let mut buf = Vec::new();
        WireCodec::default().encode_header(h, &mut buf).expect("fits");
        buf
    }

    #[test]
    fn identities_headers_and_members_round_trip_through_the_codec() {
        let v6 = SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 7946, 3, 9));
        let ids = [
            id("n0", sim_addr(0, 0), 0),
            id("n12", sim_addr(12, 3), u64::MAX),
            id("wörker-7", v6, 1_234_567),
            FocaId::seed(sim_addr(1, 0)),
        ];
        let mut codec = WireCodec::default();
        let messages = |t: &FocaId| {
            vec![
                Message::Ping(7),
                Message::Ack(255),
                Message::PingReq {
                    target: t.clone(),
                    probe_number: 1,
                },
                Message::IndirectPing {
                    origin: t.clone(),
                    probe_number: 2,
                },
                Message::IndirectAck {
                    target: t.clone(),
                    probe_number: 3,
                },
                Message::ForwardedAck {
                    origin: t.clone(),
                    probe_number: 4,
                },
                Message::Announce,
                Message::Feed,
                Message::Gossip,
                Message::Broadcast,
                Message::TurnUndead,
            ]
        };
        for a in &ids {
            for b in &ids {
                for message in messages(b) {
                    let h = Header {
                        src: a.clone(),
                        src_incarnation: 65_535,
                        dst: b.clone(),
                        message,
                    };
                    let bytes = encode_header(&h);
                    let mut rd = &bytes[..];
                    assert_eq!(codec.decode_header(&mut rd).expect("decodes"), h);
                    assert!(rd.is_empty(), "the decoder reads exactly one header");
                }
            }
            for state in [State::Alive, State::Suspect, State::Down] {
                let m = Member::new(a.clone(), 300, state);
                let mut bytes = Vec::new();
                codec.encode_member(&m, &mut bytes).expect("fits");
                bytes.push(0xAA);
                let mut rd = &bytes[..];
                assert_eq!(codec.decode_member(&mut rd).expect("decodes"), m);
                assert_eq!(rd, &[0xAA], "the decoder leaves what follows");
            }
        }
    }

    #[test]
    fn a_truncated_or_junk_packet_is_an_error_not_a_panic() {
        let h = Header {
            src: id("n1", sim_addr(1, 0), 5),
            src_incarnation: 2,
            dst: id("n2", sim_addr(2, 0), 6),
            message: Message::PingReq {
                target: id("n3", sim_addr(3, 0), 7),
                probe_number: 9,
            },
        };
        let bytes = encode_header(&h);
        let mut codec = WireCodec::default();
        for cut in 0..bytes.len() {
            assert!(codec.decode_header(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(codec.decode_header(&[0xff; 12][..]).is_err());
    }

    #[test]
    fn an_encoder_without_room_leaves_the_buffer_clean() {
        let m = Member::alive(id("n1", sim_addr(1, 0), 5));
        let mut buf = Vec::new();
        let mut limited = (&mut buf).limit(4);
        assert_eq!(
            WireCodec::default().encode_member(&m, &mut limited),
            Err(WireError::NoSpace)
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn a_probe_packet_takes_about_thirty_bytes() {
        let ping = Header {
            src: id("n3", sim_addr(3, 0), 0),
            src_incarnation: 0,
            dst: id("n7", sim_addr(7, 0), 0),
            message: Message::Ping(1),
        };
        // Header plus foca's u16 count of piggybacked updates (zero here).
        let bare = encode_header(&ping).len() + 2;
        let mut update = Vec::new();
        put_member(&mut update, &Member::alive(id("n12", sim_addr(12, 0), 2_500_000)));
        println!(
            "ping with no update: {bare} B; each piggybacked member update: {} B",
            update.len()
        );
        assert!((24..=40).contains(&bare), "{bare}");
    }

    #[test]
    fn the_seed_placeholder_matches_any_name_but_names_otherwise_differ() {
        let a = NameKey("n1".into());
        assert!(a == NameKey("n1".into()));
        assert!(a != NameKey("n2".into()));
        assert!(a == NameKey("".into()));
        let old = id("n1", sim_addr(1, 0), 10);
        let new = old.renew().expect("renewal is enabled");
        assert_eq!(new.bump, 11);
        assert!(new.win_addr_conflict(&old) && !old.win_addr_conflict(&new));
        let moved = id("n1", sim_addr(1, 1), 10);
        assert!(
            moved.win_addr_conflict(&old) != old.win_addr_conflict(&moved),
            "ties are broken one way"
        );
    }

    #[test]
    fn the_lan_preset_for_ten_nodes_probes_every_second_and_waits_four_seconds_on_a_suspect() {
        let spec = NodeSpec {
            index: 0,
            name: "n0".into(),
            addr: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 1)),
            seed: 1,
            now: Duration::ZERO,
        };
        let f = Foca::new(&spec, N);
        let c = f.config();
        assert_eq!(f.protocol_period(), Duration::from_secs(1));
        assert_eq!(c.probe_rtt, Duration::from_millis(500));
        assert_eq!(c.num_indirect_probes.get(), 3);
        assert_eq!(c.max_transmissions.get(), 4);
        assert_eq!(c.suspect_to_down_after, Duration::from_secs(4));
        assert!(c.notify_down_members);
        let g = c.periodic_gossip.as_ref().expect("periodic gossip");
        assert_eq!((g.frequency, g.num_members.get()), (Duration::from_millis(200), 3));
        assert_eq!(Foca::new(&spec, 100).config().max_transmissions.get(), 8);
        assert_eq!(
            Foca::new(&spec, 100).config().suspect_to_down_after,
            Duration::from_secs(8)
        );
    }

    #[test]
    fn ten_nodes_joining_through_one_seed_converge() {
        let mut c = cluster(11, N);
        let t = converge(&mut c);
        println!("converged at {t:?}");
        c.run_for(Duration::from_secs(30));
        assert!(c.converged(), "and stay converged");
        assert_eq!(c.obs.false_positive_declarations, 0);
        for i in 0..N {
            let p = c.protocol(i).expect("up");
            assert_eq!(p.num_members(), N - 1);
            assert_eq!(p.errors(), 0, "node {i}: {p:?}");
        }
        let (bytes, packets) = c.traffic().iter().fold((0, 0), |(b, p), &(x, y)| (b + x, p + y));
        println!(
            "{packets} packets, {bytes} bytes, {} B per packet",
            bytes / packets.max(1)
        );
    }

    #[test]
    fn steady_state_packets_are_small() {
        let mut c = cluster(12, N);
        converge(&mut c);
        c.run_for(Duration::from_secs(20));
        c.reset_traffic();
        c.run_for(Duration::from_secs(20));
        let (bytes, packets) = c.traffic().iter().fold((0, 0), |(b, p), &(x, y)| (b + x, p + y));
        let per = bytes / packets.max(1);
        println!("steady state: {packets} packets, {bytes} bytes, {per} B per packet");
        assert!(per <= 40, "{per}");
    }

    #[test]
    fn a_crashed_node_is_suspected_then_marked_down_by_all() {
        let mut c = cluster(13, N);
        converge(&mut c);
        c.run_for(Duration::from_secs(5));
        let victim = 5;
        c.watch(victim);
        let crashed_at = c.now();
        c.crash(victim);
        c.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |c| {
            c.watch_status(victim).is_some_and(|w| w.all_down.is_some())
        })
        .expect("every live node marks the crashed node down within a minute");
        let w = c.watch_status(victim).expect("watched");
        let since = |t: Option<Duration>| t.map(|t| t - crashed_at);
        println!(
            "first suspect {:?}, first down {:?}, all down {:?}",
            since(w.first_suspect),
            since(w.first_down),
            since(w.all_down)
        );
        assert!(w.first_suspect.is_some() && w.first_suspect <= w.first_down);
        assert!(
            since(w.first_down).expect("down") >= Duration::from_secs(4),
            "suspicion lasts 4 s"
        );
        assert_eq!(c.obs.false_positive_declarations, 0);
        assert!(c.converged());
    }

    #[test]
    fn a_broadcast_reaches_every_node_once() {
        let mut c = cluster(14, N);
        converge(&mut c);
        let sent_at = c.now();
        assert!(c.broadcast(3, 42, 64));
        c.run_for(Duration::from_secs(10));
        let done = c
            .obs
            .message_complete
            .get(&42)
            .copied()
            .expect("every node got message 42");
        println!("message 42 reached all {N} nodes after {:?}", done - sent_at);
        assert!(!c.broadcast(3, 43, 4000), "too large for one packet");
    }

    #[test]
    fn a_restarted_node_at_a_new_address_is_the_same_member() {
        let mut c = cluster(15, N);
        converge(&mut c);
        let i = 4;
        c.crash(i);
        c.run_for(Duration::from_secs(20));
        c.watch(i);
        c.restart(i, true, &[0]);
        c.run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |c| c.converged())
            .expect("the cluster takes the restarted node back");
        let w = c.watch_status(i).expect("watched");
        println!(
            "restarted node seen up by all after {:?}",
            w.all_up.map(|t| t - w.since)
        );
        for j in 0..N {
            assert_eq!(
                c.protocol(j).expect("up").num_members(),
                N - 1,
                "node {j} has no stale entry"
            );
        }
    }

    #[test]
    fn a_node_declared_down_during_a_partition_renews_its_identity_and_rejoins_after_it_heals() {
        let mut c = cluster(19, N);
        converge(&mut c);
        let i = 7;
        let rest: Vec<usize> = (0..N).filter(|&j| j != i).collect();
        c.partition(&[i], &rest, true);
        c.run_for(Duration::from_secs(20));
        assert_eq!(c.seen_up_by(i), 0, "the cluster declared it down");
        c.repair();
        let repaired = c.now();
        // Each side sees the other as down. The isolated node's announces
        // draw `TurnUndead` replies, so it renews; its announces under the new
        // identity make the others answer, and they renew in turn when told
        // that the isolated node saw them down.
        let t = c
            .run_until_cond(Duration::from_millis(100), Duration::from_secs(60), |c| c.converged())
            .expect("the cluster heals");
        let bumps: Vec<u64> = (0..N).map(|j| c.protocol(j).expect("up").bump()).collect();
        println!("healed {:?} after the repair; bumps {bumps:?}", t - repaired);
        assert!(bumps[i] >= 1, "it renewed its identity");
        c.run_for(Duration::from_secs(30));
        assert!(c.converged(), "and stays converged");
    }

    #[test]
    fn a_node_that_leaves_is_marked_down_and_stays_out() {
        let mut c = cluster(17, N);
        converge(&mut c);
        c.watch(2);
        c.leave(2);
        c.run_for(Duration::from_secs(90));
        let w = c.watch_status(2).expect("watched");
        assert!(w.all_down.is_some(), "every node saw it leave");
        assert!(c.converged());
        assert_eq!(c.seen_up_by(2), 0, "it did not rejoin by renewing");
    }

    #[test]
    fn the_same_seed_replays_the_same_run() {
        let run = |seed| {
            let mut c = cluster(seed, N);
            converge(&mut c);
            c.crash(1);
            c.broadcast(2, 9, 32);
            c.run_for(Duration::from_secs(15));
            (c.traffic(), c.events_processed, c.obs.message_complete.get(&9).copied())
        };
        assert_eq!(run(18), run(18));
    }
}
