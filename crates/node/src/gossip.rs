//! The gossip transport: one task drives [`membership::Membership`] over real
//! sockets.
//!
//! ```text
//!            UDP socket ──datagrams──┐
//!                                    │
//!  TCP listener ─accept─> reader task per connection: header within first_frame_timeout,
//!                         body, decrypt (a snapshot of the keyring) ─plaintext frames (mpsc)─┐
//!                                    │                                                       │
//!  GossipHandle ──commands (mpsc)──> owner task: Membership, Keyring <───────────────────────┘
//!       ^                            │
//!       └── view (watch), events (broadcast), counters (atomics)
//! ```
//!
//! The owner task is the only code that touches the state machine and the
//! only one that changes the keyring, so neither needs a lock; connection
//! readers decrypt with an immutable snapshot of the keyring that the owner
//! publishes whenever it changes. It loops over a `select!` of: a datagram
//! on the UDP socket, a frame from a connection reader, a new TCP
//! connection, a command from a [`GossipHandle`], and the state machine's next
//! deadline; before looking at the deadline it reads every datagram and frame
//! already waiting, so that a process that was kept from running does not
//! count answers it has received but not read as missing. After each input it
//! drains the machine's outputs: datagrams are
//! sent from the owner task; each reliable (push-pull) message is sent by a
//! short-lived task that connects to the peer, writes one frame and closes.
//!
//! # Who may hold a push-pull connection
//!
//! The TCP port is open to anyone who can reach it, so an unauthenticated
//! peer must not be able to starve the members that need it (a joining node
//! pulls the seed's state through it). A connection must send its frame's
//! header within [`GossipConfig::first_frame_timeout`], one source address
//! may hold at most [`GossipConfig::max_streams_per_peer`] idle connections
//! (no header yet), all sources together at most
//! [`GossipConfig::max_pending_streams`] connections that have not delivered
//! an authentic frame, and only frames that decrypt under
//! the cluster's keys count against the shared limit
//! ([`GossipConfig::max_inbound_streams`]) on their way to the owner task.
//!
//! UDP and TCP share one port number. With port 0 the OS picks a free UDP
//! port and the TCP listener takes the same number.
//!
//! Everything dropped is counted: see [`TransportStats`] for the transport's
//! own counters and [`membership::Stats`] for the protocol's.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use membership::{Bytes, Event, Member, Membership, Meta, MetaTooLarge, NewError, Status, Transmit};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout};
use tracing::Instrument as _;
use tracing::{debug, info, warn};

use crate::crypto::{Key, KeyId, Keyring, KeyringError, OVERHEAD, OpenError};
use crate::frame::{self, FrameError};

/// Everything the gossip transport needs to start. A plain struct: the binary
/// reads config files and fills it in.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Unique node name, the member's identity across restarts.
    pub name: String,
    /// Address to bind the UDP socket and the TCP listener to (same port).
    /// Port 0 picks a free port.
    pub bind: SocketAddr,
    /// Address other members reach this node at. Default: the bound address,
    /// which must then not be unspecified (`0.0.0.0`). An advertised port 0
    /// means "the bound port".
    pub advertise: Option<SocketAddr>,
    /// Members to join through (their gossip addresses). Empty: start a new
    /// cluster.
    pub seeds: Vec<SocketAddr>,
    /// Gossip encryption keys, 32 bytes each in standard base64. The first
    /// encrypts (the primary); all decrypt. Empty: no encryption, and the node
    /// logs a warning at start.
    pub keys: Vec<String>,
    /// Protocol parameters.
    pub membership: membership::Config,
    /// This node's initial metadata.
    pub meta: Meta,
    /// Deadline for connecting and writing an outgoing push-pull frame, and for
    /// reading a whole incoming one. Default: 10 s.
    pub stream_timeout: Duration,
    /// Authenticated push-pull frames on their way to the owner task at
    /// once (frames that decrypt under the cluster's keys, or any frame in
    /// plaintext mode); further ones wait. Default: 64.
    pub max_inbound_streams: usize,
    /// Time a new connection has to send its frame's header; an idle one is
    /// closed after it. Default: 1 s.
    pub first_frame_timeout: Duration,
    /// Idle connections (no frame header yet) from one source address, at
    /// most; further ones are closed at once and counted
    /// (`streams_rejected`). Default: 8.
    pub max_streams_per_peer: usize,
    /// Such connections from all sources, at most. Default: 256.
    pub max_pending_streams: usize,
}

impl GossipConfig {
    /// A config with LAN protocol defaults, no seeds, no keys, empty metadata.
    pub fn new(name: impl Into<String>, bind: SocketAddr) -> Self {
        Self {
            name: name.into(),
            bind,
            advertise: None,
            seeds: Vec::new(),
            keys: Vec::new(),
            membership: membership::Config::lan(),
            meta: Meta::default(),
            stream_timeout: Duration::from_secs(10),
            max_inbound_streams: 64,
            first_frame_timeout: Duration::from_secs(1),
            max_streams_per_peer: 8,
            max_pending_streams: 256,
        }
    }
}

/// Why [`spawn`] did not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A configured key is malformed.
    #[error("gossip key: {0}")]
    Key(#[from] KeyringError),
    /// The protocol configuration, name or metadata was refused.
    #[error(transparent)]
    Membership(#[from] NewError),
    /// A socket could not be bound.
    #[error("cannot bind gossip {proto} socket to {addr}: {source}")]
    Bind {
        /// `udp` or `tcp`.
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Bound to an unspecified address with nothing to advertise.
    #[error("gossip is bound to {0}; set an advertise address other members can reach")]
    UnspecifiedAdvertise(SocketAddr),
    /// A transport setting is out of range.
    #[error("gossip config: {0}")]
    Invalid(&'static str),
}

/// The gossip task is gone (shut down, or every handle was dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the gossip task has stopped")]
pub struct Stopped;

/// A command the gossip task refused, or could not take because it stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError<E> {
    /// The gossip task is gone; nothing changed.
    #[error("the gossip task has stopped")]
    Stopped,
    /// The command was refused; nothing changed.
    #[error(transparent)]
    Rejected(E),
}

impl<E> From<Stopped> for CommandError<E> {
    fn from(_: Stopped) -> Self {
        CommandError::Stopped
    }
}

/// How a graceful leave ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaveOutcome {
    /// True when every pending update (the leave notice among them) was
    /// disseminated, or no live member was left to tell.
    pub drained: bool,
    /// Updates still pending when the leave returned.
    pub pending: usize,
}

/// The live membership as this node sees it, published on every change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct View {
    /// This node (status `Alive`, or `Left` after a leave).
    pub local: Member,
    /// Every other known member, failed and departed ones included until
    /// reaped, sorted by name.
    pub members: Vec<Member>,
    /// A seed answered (or there were none): this node is in a cluster.
    pub joined: bool,
}

impl View {
    /// A member by name, this node included.
    pub fn member(&self, name: &str) -> Option<&Member> {
        if self.local.name == name {
            return Some(&self.local);
        }
        self.members.iter().find(|m| m.name == name)
    }

    /// Alive and suspect members, this node included unless it left.
    pub fn live(&self) -> impl Iterator<Item = &Member> {
        std::iter::once(&self.local)
            .chain(&self.members)
            .filter(|m| m.status.is_live())
    }
}

/// Everything the node knows, at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Time since the node started, the clock of `Member::since`.
    pub now: Duration,
    /// Membership as in [`View`].
    pub view: View,
    /// Still waiting for a seed to answer.
    pub joining: bool,
    /// Lifeguard's local health multiplier (0 is healthy).
    pub health_score: u32,
    /// Updates waiting to be disseminated.
    pub pending_broadcasts: usize,
    /// The protocol's counters.
    pub stats: membership::Stats,
    /// The transport's counters.
    pub transport: TransportStats,
    /// Ids of the gossip keys, the primary first; `None` in plaintext mode.
    pub keys: Option<Vec<KeyId>>,
}

// Shared by the owner task and the connection tasks as relaxed atomics (each counter stands alone), so
// connection tasks count without messaging the owner and a handle reads them without waiting for it.
stats::counters! {
    /// The transport's counters, for metrics. Monotonic since start.
    TransportStats;
    /// Datagrams received (before any check).
    datagrams_in,
    /// Datagrams sent.
    datagrams_out,
    /// Datagrams that could not be sent (socket errors).
    datagram_send_errors,
    /// Socket errors while receiving datagrams.
    datagram_recv_errors,
    /// Datagrams over the size limit (`max_packet_size` plus encryption
    /// overhead), dropped before decryption.
    oversized_datagrams,
    /// Datagrams and frames that failed to decrypt (wrong key, tampering,
    /// truncation, plaintext from a peer without encryption), dropped.
    decrypt_failures,
    /// Push-pull frames received whole.
    frames_in,
    /// Push-pull frames sent whole.
    frames_out,
    /// Incoming frames announcing more than the stream cap, dropped unread.
    oversized_frames,
    /// Incoming connections closed before a whole frame arrived, or failing
    /// with a socket error.
    stream_errors,
    /// Incoming connections that did not send a frame header within
    /// `first_frame_timeout`, or the whole frame within `stream_timeout`.
    stream_timeouts,
    /// Incoming connections refused because their source address (or all
    /// sources together) held too many unauthenticated ones.
    streams_rejected,
    /// Outgoing push-pull frames that failed (connect, write or timeout).
    stream_send_failures,
    /// Errors accepting TCP connections.
    accept_errors,
    /// Datagrams and frames, in or out, dropped because the node is cut off
    /// by fault injection ([`GossipHandle::set_isolated`]).
    isolated_drops,
}

impl Counters {
    fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

enum KeyOp {
    Install(Key),
    Use(Key),
    Remove(Key),
    List,
}

enum Command {
    Join {
        seeds: Vec<SocketAddr>,
        reply: oneshot::Sender<()>,
    },
    Leave {
        drain_timeout: Duration,
        reply: oneshot::Sender<LeaveOutcome>,
    },
    Broadcast {
        payload: Bytes,
        reply: oneshot::Sender<Result<(String, u64), membership::BroadcastError>>,
    },
    SetMeta {
        meta: Meta,
        reply: oneshot::Sender<Result<(), MetaTooLarge>>,
    },
    Snapshot {
        reply: oneshot::Sender<Snapshot>,
    },
    Keyring {
        op: KeyOp,
        reply: oneshot::Sender<Result<Vec<KeyId>, KeyringError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Talks to a running gossip task. Cheap to clone; the task stops when
/// [`GossipHandle::shutdown`] is called or every handle is dropped (without
/// leaving the cluster, as a crash would).
#[derive(Clone)]
pub struct GossipHandle {
    name: Arc<str>,
    addr: SocketAddr,
    epoch: Instant,
    /// Commands to the owner task. Bounded: callers wait rather than queue
    /// without limit when the owner is busy.
    commands: mpsc::Sender<Command>,
    /// Kept to hand out subscriptions to the owner's event stream.
    events: broadcast::Sender<Event>,
    /// The latest membership view; the owner task holds the sender.
    view: watch::Receiver<View>,
    counters: Arc<Counters>,
    isolated: Arc<AtomicBool>,
    delay_ms: Arc<AtomicU32>,
}

impl fmt::Debug for GossipHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GossipHandle")
            .field("name", &self.name)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl GossipHandle {
    /// This node's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The gossip address other members reach this node at (UDP and TCP).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// When the node started: `Member::since` and [`Snapshot::now`] count from here.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Fault injection for tests of network cuts: while `isolated`, the
    /// node drops every gossip datagram and push-pull frame it would send or
    /// receive (counted in `isolated_drops`), as if its network were cut. The
    /// mesh data plane is not affected. Takes effect at once.
    pub fn set_isolated(&self, isolated: bool) {
        self.isolated.store(isolated, Ordering::Relaxed);
        warn!(node = %self.name, isolated, "fault injection: gossip traffic {}", if isolated { "cut" } else { "restored" });
    }

    /// Whether [`GossipHandle::set_isolated`] cut the node off.
    pub fn is_isolated(&self) -> bool {
        self.isolated.load(Ordering::Relaxed)
    }

    /// Fault injection for tests of a slow link: every gossip datagram and
    /// push-pull frame the node sends leaves `delay` late, as if its
    /// outbound link were slow; `Duration::ZERO` restores it. Takes effect
    /// at once for what is sent from then on.
    pub fn set_delay(&self, delay: Duration) {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
        if ms > 0 {
            warn!(node = %self.name, delay_ms = ms, "fault injection: outbound gossip traffic delayed");
        } else {
            warn!(node = %self.name, "fault injection: outbound gossip traffic restored");
        }
    }

    /// The delay [`GossipHandle::set_delay`] set.
    pub fn delay(&self) -> Duration {
        Duration::from_millis(u64::from(self.delay_ms.load(Ordering::Relaxed)))
    }

    /// The live membership. `changed()` fires after membership changes (at
    /// once after a quiet spell, at most every 1 ms per member during a burst
    /// of changes) and fails once the task has stopped. `events()` has every
    /// change.
    pub fn view(&self) -> watch::Receiver<View> {
        self.view.clone()
    }

    /// Every event of the state machine from now on, user gossip messages
    /// included. A subscriber more than 1024 events behind misses the oldest
    /// (`RecvError::Lagged`); follow [`GossipHandle::view`] for membership.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The transport's counters, read without waiting for the gossip task.
    pub fn transport_stats(&self) -> TransportStats {
        self.counters.read()
    }

    /// Waits until a seed has answered (at once for a node without seeds).
    pub async fn wait_joined(&self) -> Result<(), Stopped> {
        let mut view = self.view.clone();
        view.wait_for(|v| v.joined).await.map(|_| ()).map_err(|_| Stopped)
    }

    /// Joins (again) through `seeds`, retried in the background until one
    /// answers; see [`GossipHandle::wait_joined`]. The task already joins the
    /// configured seeds at start.
    pub async fn join(&self, seeds: Vec<SocketAddr>) -> Result<(), Stopped> {
        self.request(|reply| Command::Join { seeds, reply }).await
    }

    /// Leaves the cluster gracefully: announces it, then keeps gossiping until
    /// every pending update is disseminated or `drain_timeout` passes. The task
    /// keeps running (answering, not probing) until [`GossipHandle::shutdown`].
    pub async fn leave(&self, drain_timeout: Duration) -> Result<LeaveOutcome, Stopped> {
        self.request(|reply| Command::Leave { drain_timeout, reply }).await
    }

    /// Creates a user gossip message, spread to every live member. Returns its
    /// id `(origin, seq)`.
    pub async fn broadcast(
        &self,
        payload: impl Into<Bytes>,
    ) -> Result<(String, u64), CommandError<membership::BroadcastError>> {
        let payload = payload.into();
        self.request(|reply| Command::Broadcast { payload, reply })
            .await?
            .map_err(CommandError::Rejected)
    }

    /// Replaces this node's metadata; the change is gossiped.
    pub async fn set_meta(&self, meta: Meta) -> Result<(), CommandError<MetaTooLarge>> {
        self.request(|reply| Command::SetMeta { meta, reply })
            .await?
            .map_err(CommandError::Rejected)
    }

    /// Members, counters and keyring state at one instant.
    pub async fn snapshot(&self) -> Result<Snapshot, Stopped> {
        self.request(|reply| Command::Snapshot { reply }).await
    }

    /// Installs a gossip key (base64) for decryption. Returns the key ids,
    /// primary first. Step 1 of a rotation, done on every node.
    pub async fn install_key(&self, key_base64: &str) -> Result<Vec<KeyId>, CommandError<KeyringError>> {
        let key = Key::from_base64(key_base64).map_err(CommandError::Rejected)?;
        self.keyring(KeyOp::Install(key)).await
    }

    /// Makes an installed key the primary (the one that encrypts). Step 2 of a
    /// rotation, once every node has the key installed.
    pub async fn use_key(&self, key_base64: &str) -> Result<Vec<KeyId>, CommandError<KeyringError>> {
        let key = Key::from_base64(key_base64).map_err(CommandError::Rejected)?;
        self.keyring(KeyOp::Use(key)).await
    }

    /// Removes a key; the primary is refused. Step 3 of a rotation, once every
    /// node uses the new primary.
    pub async fn remove_key(&self, key_base64: &str) -> Result<Vec<KeyId>, CommandError<KeyringError>> {
        let key = Key::from_base64(key_base64).map_err(CommandError::Rejected)?;
        self.keyring(KeyOp::Remove(key)).await
    }

    /// The key ids, primary first.
    pub async fn keys(&self) -> Result<Vec<KeyId>, CommandError<KeyringError>> {
        self.keyring(KeyOp::List).await
    }

    /// Stops the gossip task without leaving (others will detect a failure)
    /// and waits until its sockets are closed. Call [`GossipHandle::leave`]
    /// first for a graceful exit.
    pub async fn shutdown(&self) -> Result<(), Stopped> {
        self.request(|reply| Command::Shutdown { reply }).await
    }

    async fn keyring(&self, op: KeyOp) -> Result<Vec<KeyId>, CommandError<KeyringError>> {
        self.request(|reply| Command::Keyring { op, reply })
            .await?
            .map_err(CommandError::Rejected)
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, Stopped> {
        // A oneshot per request carries the answer back from the owner task.
        let (tx, rx) = oneshot::channel();
        self.commands.send(make(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// Binds the sockets, starts the gossip task on the current tokio runtime and
/// joins `config.seeds` (none: a new cluster).
pub async fn spawn(config: GossipConfig) -> Result<GossipHandle, StartError> {
    if config.stream_timeout.is_zero() {
        return Err(StartError::Invalid("stream_timeout must be positive"));
    }
    if config.max_inbound_streams == 0 || config.max_streams_per_peer == 0 || config.max_pending_streams == 0 {
        return Err(StartError::Invalid("the stream limits must be positive"));
    }
    if config.first_frame_timeout.is_zero() {
        return Err(StartError::Invalid("first_frame_timeout must be positive"));
    }
    let keyring = Keyring::from_base64(&config.keys)?;
    config.membership.validate().map_err(NewError::from)?;
    let (udp, listener) = bind(config.bind).await?;
    let bound = udp.local_addr().map_err(|source| StartError::Bind {
        proto: "udp",
        addr: config.bind,
        source,
    })?;
    let addr = match config.advertise {
        Some(a) if a.port() == 0 => SocketAddr::new(a.ip(), bound.port()),
        Some(a) => a,
        None if bound.ip().is_unspecified() => return Err(StartError::UnspecifiedAdvertise(bound)),
        None => bound,
    };

    let epoch = Instant::now();
    // The only randomness the state machine gets: one seed from the OS-seeded
    // generator, logged so that a run's choices can be related to it.
    let seed: u64 = rand::random();
    let max_datagram = config.membership.max_packet_size + if keyring.is_some() { OVERHEAD } else { 0 };
    let mut membership = Membership::new(
        config.membership,
        config.name.clone(),
        addr,
        config.meta,
        seed,
        Duration::ZERO,
    )?;
    membership.join(Duration::ZERO, &config.seeds);

    match &keyring {
        None => warn!(
            node = %config.name,
            "gossip encryption is OFF: no key configured, packets travel in plaintext and anyone who \
             can reach {addr} can join the cluster"
        ),
        Some(r) => {
            info!(node = %config.name, primary = %r.primary(), keys = r.key_ids().len(), "gossip encryption on (AES-256-GCM)")
        }
    }
    info!(node = %config.name, %addr, %bound, seeds = ?config.seeds, seed, "gossip started");

    let (commands_tx, commands) = mpsc::channel(64);
    // Connection readers hand authentic frames, decrypted, to the owner task,
    // the only one that feeds the state machine. Bounded by the shared
    // limit, so a burst of them waits instead of buffering without limit.
    let (frames_tx, frames) = mpsc::channel(config.max_inbound_streams);
    let keys = watch::Sender::new(keyring.clone().map(Arc::new));
    let (events, _) = broadcast::channel(1024);
    let counters = Arc::new(Counters::default());
    let isolated = Arc::new(AtomicBool::new(false));
    let delay_ms = Arc::new(AtomicU32::new(0));
    let mut driver = Driver {
        membership,
        keyring,
        udp: Arc::new(udp),
        listener,
        epoch,
        stream_timeout: config.stream_timeout,
        max_datagram,
        max_frame: membership::MAX_STREAM_MESSAGE + OVERHEAD,
        commands,
        frames,
        frames_tx,
        keys,
        first_frame_timeout: config.first_frame_timeout,
        pending: Arc::new(Pending {
            slots: Arc::new(Semaphore::new(config.max_pending_streams)),
            by_peer: Mutex::default(),
            per_peer: config.max_streams_per_peer,
        }),
        counters: counters.clone(),
        isolated: isolated.clone(),
        delay_ms: delay_ms.clone(),
        events: events.clone(),
        view: watch::Sender::new(empty_view(addr)),
        view_dirty: true,
        view_published: None,
        joined: false,
        left: false,
        leaving: None,
        accept_paused_until: None,
        recv_buf: vec![0; 65_536],
        plain_buf: Vec::new(),
    };
    driver.publish_view(Duration::ZERO);
    let view = driver.view.subscribe();
    let span = tracing::info_span!("gossip", node = %driver.membership.name());
    tokio::spawn(
        async move {
            // `run` consumes the driver: when it returns, the sockets are closed.
            if let Some(reply) = driver.run().await {
                let _ = reply.send(());
            }
        }
        .instrument(span),
    );
    Ok(GossipHandle {
        name: config.name.into(),
        addr,
        epoch,
        commands: commands_tx,
        events,
        view,
        counters,
        isolated,
        delay_ms,
    })
}

async fn send_datagram(udp: &UdpSocket, counters: &Counters, payload: &[u8], to: SocketAddr) {
    match udp.send_to(payload, to).await {
        Ok(_) => Counters::inc(&counters.datagrams_out),
        Err(e) => {
            Counters::inc(&counters.datagram_send_errors);
            debug!(%to, "datagram not sent: {e}");
        }
    }
}

fn empty_view(addr: SocketAddr) -> View {
    View {
        local: Member {
            name: String::new(),
            addr,
            incarnation: 0,
            status: Status::Alive,
            meta: Meta::default(),
            since: Duration::ZERO,
        },
        members: Vec::new(),
        joined: false,
    }
}

/// Binds UDP and TCP on one port number. With port 0 the OS picks a free UDP
/// port; another process may hold that number for TCP, so a few picks are tried.
async fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), StartError> {
    let udp_err = |source| StartError::Bind {
        proto: "udp",
        addr,
        source,
    };
    let attempts = if addr.port() == 0 { 16 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(addr).await.map_err(udp_err)?;
        let port = udp.local_addr().map_err(udp_err)?.port();
        let tcp_addr = SocketAddr::new(addr.ip(), port);
        match TcpListener::bind(tcp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(StartError::Bind {
                    proto: "tcp",
                    addr: tcp_addr,
                    source,
                })
            }
        }
    }
    Err(last.expect("at least one attempt"))
}

/// Connections that have not delivered an authentic frame yet: at most
/// `slots` from all sources together, and at most `per_peer` idle ones (no
/// header yet) from one source address, so a flood of idle or bogus
/// connections costs a bounded number of tasks and buffers and cannot shut
/// the members out. A plain mutex: held only to add or remove one count.
#[derive(Debug)]
struct Pending {
    slots: Arc<Semaphore>,
    by_peer: Mutex<HashMap<IpAddr, usize>>,
    per_peer: usize,
}

/// A connection that has not sent its frame's header yet, counted against
/// its source address until dropped. Members send the header at once, so
/// only idle connections stay counted: co-located members (one address)
/// are not held back by each other.
struct IdleSlot {
    pending: Arc<Pending>,
    peer: IpAddr,
}

impl Pending {
    /// A slot among all pending connections, and one of the source's idle
    /// slots; `None` when either is full.
    fn take(self: &Arc<Self>, peer: IpAddr) -> Option<(tokio::sync::OwnedSemaphorePermit, IdleSlot)> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        let mut by_peer = self.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_peer.entry(peer).or_default();
        if *n >= self.per_peer {
            return None;
        }
        *n += 1;
        Some((
            slot,
            IdleSlot {
                pending: self.clone(),
                peer,
            },
        ))
    }
}

impl Drop for IdleSlot {
    fn drop(&mut self) {
        let mut by_peer = self.pending.by_peer.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = by_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.peer);
            }
        }
    }
}

struct Leaving {
    deadline: Duration,
    waiters: Vec<oneshot::Sender<LeaveOutcome>>,
}

/// The most datagrams (and, separately, frames) read before the timers are
/// looked at again; see `Driver::drain_ready_inputs`.
const MAX_DRAINED_INPUTS: usize = 256;

/// The owner task's state: the only place the state machine and keyring live.
struct Driver {
    membership: Membership,
    keyring: Option<Keyring>,
    /// Shared only with the sends that fault injection delays.
    udp: Arc<UdpSocket>,
    listener: TcpListener,
    epoch: Instant,
    stream_timeout: Duration,
    /// Largest datagram accepted off the wire.
    max_datagram: usize,
    /// Largest frame body accepted off a connection.
    max_frame: usize,
    commands: mpsc::Receiver<Command>,
    frames: mpsc::Receiver<Vec<u8>>,
    /// Cloned into each connection reader. Holding one here also means
    /// `frames.recv()` never reports a closed channel.
    frames_tx: mpsc::Sender<Vec<u8>>,
    /// The keyring as connection readers see it: a snapshot the owner
    /// replaces whenever the keyring changes (a watch: readers only need the
    /// newest one).
    keys: watch::Sender<Option<Arc<Keyring>>>,
    /// Time a connection has to send its frame's header.
    first_frame_timeout: Duration,
    /// Connections that have not delivered an authentic frame yet.
    pending: Arc<Pending>,
    counters: Arc<Counters>,
    /// Fault injection: while set, every datagram and frame in or out is
    /// dropped, as if the node's network were cut.
    isolated: Arc<AtomicBool>,
    /// Fault injection: outbound datagrams and frames leave this many
    /// milliseconds late.
    delay_ms: Arc<AtomicU32>,
    /// Fan-out of state machine events to any number of subscribers; a
    /// broadcast channel because a slow subscriber must never block gossip.
    events: broadcast::Sender<Event>,
    /// The latest view; a watch because followers only need the newest one.
    view: watch::Sender<View>,
    view_dirty: bool,
    /// When the view was last published; see `Driver::view_interval`.
    view_published: Option<Instant>,
    joined: bool,
    left: bool,
    leaving: Option<Leaving>,
    /// After an accept error (e.g. out of file descriptors) accepting pauses
    /// briefly instead of spinning.
    accept_paused_until: Option<Instant>,
    recv_buf: Vec<u8>,
    plain_buf: Vec<u8>,
}

impl Driver {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Runs until a shutdown command (returned, to be answered once the
    /// sockets are closed) or until every handle is dropped.
    async fn run(mut self) -> Option<oneshot::Sender<()>> {
        loop {
            self.drain_ready_inputs();
            let now = self.now();
            if self.membership.poll_timeout().is_some_and(|t| t <= now) {
                self.membership.handle_timeout(now);
            }
            self.flush(now).await;

            let wake = self.next_wake();
            let accepting = self.accept_paused_until.is_none_or(|t| t <= Instant::now());
            tokio::select! {
                r = self.udp.recv_from(&mut self.recv_buf) => self.on_datagram(r),
                Some(body) = self.frames.recv() => self.on_frame(&body),
                r = self.listener.accept(), if accepting => self.on_accept(r),
                cmd = self.commands.recv() => match cmd {
                    None => {
                        info!(node = %self.membership.name(), "every gossip handle dropped; stopping");
                        return None;
                    }
                    Some(Command::Shutdown { reply }) => {
                        info!(node = %self.membership.name(), "gossip shut down");
                        return Some(reply);
                    }
                    Some(cmd) => self.on_command(cmd),
                },
                () = sleep_until(wake) => {}
            }
        }
    }

    /// Hands the state machine every datagram and frame that is already
    /// waiting, before its timers are looked at. A process kept from running
    /// (a host whose CPU is busy, hundreds of nodes on a few cores) wakes up
    /// with acks in its socket buffer and overdue probe deadlines: firing the
    /// deadlines first would count those acks as missing, suspect members
    /// that answered in time, and add the suspicion and refutation traffic
    /// that starves every node further. Bounded, so that a flood cannot keep
    /// timers from ever firing.
    ///
    /// Best effort: tokio reads only sockets its reactor has seen become
    /// readable, which it learns in the same poll that fires the timer that
    /// woke this task.
    fn drain_ready_inputs(&mut self) {
        for _ in 0..MAX_DRAINED_INPUTS {
            match self.udp.try_recv_from(&mut self.recv_buf) {
                Ok(r) => self.on_datagram(Ok(r)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => self.on_datagram(Err(e)),
            }
        }
        for _ in 0..MAX_DRAINED_INPUTS {
            match self.frames.try_recv() {
                Ok(body) => self.on_frame(&body),
                Err(_) => break,
            }
        }
    }

    fn next_wake(&mut self) -> Instant {
        let mut wake = self.membership.poll_timeout().unwrap_or(Duration::from_secs(3600));
        if let Some(l) = &self.leaving {
            wake = wake.min(l.deadline);
        }
        let mut at = self.epoch + wake;
        if self.view_dirty
            && let Some(due) = self.view_due()
        {
            at = at.min(due);
        }
        match self.accept_paused_until {
            Some(t) if t > Instant::now() => at = at.min(t),
            Some(_) => self.accept_paused_until = None,
            None => {}
        }
        at
    }

    /// Sends what the state machine produced, publishes its events, and
    /// finishes a leave once drained.
    async fn flush(&mut self, now: Duration) {
        while let Some(t) = self.membership.poll_transmit() {
            self.transmit(t).await;
        }
        while let Some(ev) = self.membership.poll_event() {
            self.on_event(ev);
        }
        self.check_leave(now);
        if self.view_dirty && self.view_due().is_none() {
            self.publish_view(now);
        }
    }

    fn is_isolated(&self) -> bool {
        let cut = self.isolated.load(Ordering::Relaxed);
        if cut {
            Counters::inc(&self.counters.isolated_drops);
        }
        cut
    }

    async fn transmit(&mut self, t: Transmit) {
        if self.is_isolated() {
            return;
        }
        let payload = match &self.keyring {
            None => t.payload,
            Some(ring) => match ring.seal(&t.payload) {
                Ok(p) => p,
                Err(e) => {
                    warn!(to = %t.to, len = t.payload.len(), "not sent: {e}");
                    return;
                }
            },
        };
        if !t.reliable {
            let delay = self.delay_ms.load(Ordering::Relaxed);
            if delay == 0 {
                send_datagram(&self.udp, &self.counters, &payload, t.to).await;
            } else {
                let (udp, counters) = (self.udp.clone(), self.counters.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(u64::from(delay))).await;
                    send_datagram(&udp, &counters, &payload, t.to).await;
                });
            }
            return;
        }
        let Some(bytes) = frame::encode(&payload) else {
            warn!(to = %t.to, len = payload.len(), "push-pull message too large to frame; not sent");
            return;
        };
        let counters = self.counters.clone();
        let limit = self.stream_timeout;
        let delay = Duration::from_millis(u64::from(self.delay_ms.load(Ordering::Relaxed)));
        // One short-lived task per push-pull message, so that a slow or dead
        // peer never holds up the owner task; the timeout bounds its life.
        tokio::spawn(
            async move {
                if !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                let send = async {
                    let mut stream = TcpStream::connect(t.to).await?;
                    stream.write_all(&bytes).await?;
                    stream.shutdown().await
                };
                match timeout(limit, send).await {
                    Ok(Ok(())) => Counters::inc(&counters.frames_out),
                    Ok(Err(e)) => {
                        Counters::inc(&counters.stream_send_failures);
                        debug!(to = %t.to, "push-pull not sent: {e}");
                    }
                    Err(_) => {
                        Counters::inc(&counters.stream_send_failures);
                        debug!(to = %t.to, "push-pull not sent: timed out");
                    }
                }
            }
            .in_current_span(),
        );
    }

    fn on_event(&mut self, ev: Event) {
        let node = self.membership.name();
        match &ev {
            Event::Joined => {
                self.joined = true;
                self.view_published = None;
                info!(node, "joined the cluster");
            }
            Event::MemberUp(m) => info!(node, member = %m.name, addr = %m.addr, "member up"),
            Event::MemberUpdated(m) => {
                debug!(node, member = %m.name, addr = %m.addr, incarnation = m.incarnation, "member updated")
            }
            Event::MemberSuspect { name, incarnation } => info!(node, member = %name, incarnation, "member suspect"),
            Event::MemberDown { name, left: true } => info!(node, member = %name, "member left"),
            Event::MemberDown { name, left: false } => warn!(node, member = %name, "member failed"),
            Event::MemberReaped { name } => debug!(node, member = %name, "member forgotten"),
            Event::Refuted { incarnation } => info!(node, incarnation, "refuted a suspicion about this node"),
            Event::UserMessage { origin, seq, payload } => {
                debug!(node, origin = %origin, seq, len = payload.len(), "gossip message")
            }
        }
        if !matches!(ev, Event::UserMessage { .. }) {
            self.view_dirty = true;
        }
        // No subscriber is not an error.
        let _ = self.events.send(ev);
    }

    fn check_leave(&mut self, now: Duration) {
        let Some(l) = &self.leaving else { return };
        let pending = self.membership.pending_broadcasts();
        // With no live member left there is nobody to tell.
        let drained = pending == 0 || self.membership.num_live() <= 1;
        if drained || now >= l.deadline {
            let outcome = LeaveOutcome { drained, pending };
            info!(node = %self.membership.name(), drained, pending, "leave finished");
            for w in self.leaving.take().map(|l| l.waiters).unwrap_or_default() {
                let _ = w.send(outcome);
            }
        }
    }

    fn view_now(&self, now: Duration) -> View {
        let mut local = self.membership.local_member(now);
        if self.left {
            local.status = Status::Left;
        }
        let mut members: Vec<Member> = self.membership.members().collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        View {
            local,
            members,
            joined: self.joined,
        }
    }

    /// The shortest time between two publications of the view: 1 ms per
    /// member, at least 100 ms and at most 2 s. Building the view copies and
    /// sorts every member, and each subscriber (the router's table) rebuilds
    /// from it, so publishing after every change would cost O(N) per change:
    /// 1,000 nodes joining would cost each node O(N²) and keep a busy host
    /// from ever catching up. A change after a quiet spell is published at
    /// once; a burst of changes is published once per interval, so this
    /// work stays near a constant share of a core whatever N is.
    fn view_interval(&self) -> Duration {
        let members = u32::try_from(self.membership.num_live()).unwrap_or(u32::MAX);
        (Duration::from_millis(1) * members).clamp(Duration::from_millis(100), Duration::from_secs(2))
    }

    /// When a changed view may next be published, or `None` if it may be now.
    fn view_due(&self) -> Option<Instant> {
        let at = self.view_published? + self.view_interval();
        (at > Instant::now()).then_some(at)
    }

    /// A change to this node itself (joined, leaving, new metadata) is published at the
    /// next flush, whatever the interval: callers wait for it. (Joining
    /// clears `view_published` the same way.)
    fn publish_soon(&mut self) {
        self.view_dirty = true;
        self.view_published = None;
    }

    fn publish_view(&mut self, now: Duration) {
        self.view_dirty = false;
        self.view_published = Some(Instant::now());
        let view = self.view_now(now);
        self.view.send_replace(view);
    }

    fn on_datagram(&mut self, r: io::Result<(usize, SocketAddr)>) {
        let (n, from) = match r {
            Ok(x) => x,
            Err(e) => {
                Counters::inc(&self.counters.datagram_recv_errors);
                debug!("datagram receive error: {e}");
                return;
            }
        };
        Counters::inc(&self.counters.datagrams_in);
        if self.is_isolated() {
            return;
        }
        if n > self.max_datagram {
            Counters::inc(&self.counters.oversized_datagrams);
            debug!(%from, len = n, limit = self.max_datagram, "dropped oversized datagram");
            return;
        }
        let now = self.now();
        match &self.keyring {
            None => self.membership.handle_datagram(now, &self.recv_buf[..n]),
            Some(ring) => match ring.open_into(&self.recv_buf[..n], &mut self.plain_buf) {
                Ok(()) => self.membership.handle_datagram(now, &self.plain_buf),
                Err(e) => self.decrypt_failed("datagram", Some(from), e),
            },
        }
    }

    /// A push-pull frame that a connection reader read and decrypted.
    fn on_frame(&mut self, plain: &[u8]) {
        if self.is_isolated() {
            return;
        }
        let now = self.now();
        self.membership.handle_stream(now, plain);
    }

    fn decrypt_failed(&self, what: &str, from: Option<SocketAddr>, e: OpenError) {
        decrypt_failed(&self.counters, self.membership.name(), what, from, e);
    }

    fn on_accept(&mut self, r: io::Result<(TcpStream, SocketAddr)>) {
        let (mut stream, peer) = match r {
            Ok(x) => x,
            Err(e) => {
                Counters::inc(&self.counters.accept_errors);
                warn!("gossip accept error: {e}; pausing accepts for 100 ms");
                self.accept_paused_until = Some(Instant::now() + Duration::from_millis(100));
                return;
            }
        };
        let Some((slot, idle)) = self.pending.take(peer.ip()) else {
            Counters::inc(&self.counters.streams_rejected);
            debug!(%peer, "push-pull connection refused: too many unauthenticated ones from it or overall");
            return;
        };
        let frames = self.frames_tx.clone();
        let counters = self.counters.clone();
        let keys = self.keys.subscribe();
        let node = self.membership.name().to_owned();
        let (limit, first, deadline) = (self.max_frame, self.first_frame_timeout, self.stream_timeout);
        // One reader per connection so that a slow sender delays only itself.
        tokio::spawn(async move {
            let header = timeout(first, frame::read_header(&mut stream, limit)).await;
            // It spoke: no longer idle.
            drop(idle);
            let body = match header {
                Ok(Ok(len)) => timeout(deadline, frame::read_body(&mut stream, len)).await,
                Ok(Err(e)) => Ok(Err(e)),
                Err(_) => {
                    Counters::inc(&counters.stream_timeouts);
                    debug!(%peer, "push-pull connection closed: no frame header within {first:?}");
                    return;
                }
            };
            let body = match body {
                Ok(Ok(body)) => body,
                Ok(Err(e @ FrameError::TooLarge { .. })) => {
                    Counters::inc(&counters.oversized_frames);
                    debug!(%peer, "push-pull frame dropped: {e}");
                    return;
                }
                Ok(Err(e)) => {
                    Counters::inc(&counters.stream_errors);
                    debug!(%peer, "push-pull frame dropped: {e}");
                    return;
                }
                Err(_) => {
                    Counters::inc(&counters.stream_timeouts);
                    debug!(%peer, "push-pull frame dropped: no complete frame within {deadline:?}");
                    return;
                }
            };
            let ring = keys.borrow().clone();
            let plain = match ring {
                None => body,
                Some(ring) => match ring.open(&body) {
                    Ok(plain) => plain,
                    Err(e) => {
                        decrypt_failed(&counters, &node, "push-pull frame", Some(peer), e);
                        return;
                    }
                },
            };
            // Authentic: it no longer counts as pending, and waits its turn
            // for the owner task under the shared limit.
            drop(slot);
            Counters::inc(&counters.frames_in);
            // Fails only when the owner task has stopped.
            let _ = frames.send(plain).await;
        });
    }

    fn on_command(&mut self, cmd: Command) {
        let now = self.now();
        match cmd {
            Command::Join { seeds, reply } => {
                info!(node = %self.membership.name(), ?seeds, "joining");
                self.membership.join(now, &seeds);
                let _ = reply.send(());
            }
            Command::Leave { drain_timeout, reply } => {
                if !self.left {
                    info!(node = %self.membership.name(), "leaving the cluster");
                    self.membership.leave(now);
                    self.left = true;
                    self.publish_soon();
                    self.leaving = Some(Leaving {
                        deadline: now + drain_timeout,
                        waiters: Vec::new(),
                    });
                }
                match &mut self.leaving {
                    Some(l) => l.waiters.push(reply),
                    // Already left and drained (or timed out): report the state.
                    None => {
                        let pending = self.membership.pending_broadcasts();
                        let _ = reply.send(LeaveOutcome {
                            drained: pending == 0,
                            pending,
                        });
                    }
                }
            }
            Command::Broadcast { payload, reply } => {
                let _ = reply.send(self.membership.broadcast(now, payload));
            }
            Command::SetMeta { meta, reply } => {
                let r = self.membership.set_meta(now, meta);
                if r.is_ok() {
                    self.publish_soon();
                }
                let _ = reply.send(r);
            }
            Command::Snapshot { reply } => {
                let _ = reply.send(Snapshot {
                    now,
                    view: self.view_now(now),
                    joining: self.membership.is_joining(),
                    health_score: self.membership.health_score(),
                    pending_broadcasts: self.membership.pending_broadcasts(),
                    stats: *self.membership.stats(),
                    transport: self.counters.read(),
                    keys: self.keyring.as_ref().map(Keyring::key_ids),
                });
            }
            Command::Keyring { op, reply } => {
                let _ = reply.send(self.keyring_op(op));
            }
            // Handled in `run`, which stops the loop.
            Command::Shutdown { .. } => {}
        }
    }

    fn keyring_op(&mut self, op: KeyOp) -> Result<Vec<KeyId>, KeyringError> {
        let node = self.membership.name();
        let ring = self.keyring.as_mut().ok_or(KeyringError::Plaintext)?;
        match op {
            KeyOp::Install(k) => {
                ring.install(k.clone());
                info!(node, key = %k.id(), "gossip key installed");
            }
            KeyOp::Use(k) => {
                ring.use_key(&k)?;
                info!(node, key = %k.id(), "gossip key is now primary");
            }
            KeyOp::Remove(k) => {
                ring.remove(&k)?;
                info!(node, key = %k.id(), "gossip key removed");
            }
            KeyOp::List => return Ok(ring.key_ids()),
        }
        let ids = ring.key_ids();
        // Connection readers decrypt with the new keys from now on.
        self.keys.send_replace(self.keyring.clone().map(Arc::new));
        Ok(ids)
    }
}

/// Counts a packet or frame that did not decrypt; the first failure is
/// logged as a warning.
fn decrypt_failed(counters: &Counters, node: &str, what: &str, from: Option<SocketAddr>, e: OpenError) {
    let before = counters.decrypt_failures.fetch_add(1, Ordering::Relaxed);
    let from = from.map(|a| a.to_string()).unwrap_or_default();
    // The first failure is worth an operator's attention (a peer with the
    // wrong key, or without encryption); the rest show in the counter.
    if before == 0 {
        warn!(
            node,
            from, "dropped a {what} that does not decrypt ({e}); a peer may use another gossip key or none"
        );
    } else {
        debug!(node, from, "dropped a {what}: {e}");
    }
}
