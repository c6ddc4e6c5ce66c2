//! The discrete-event engine: a virtual clock, a simulated network and N nodes.
//!
//! Everything random (latency jitter, loss, node seeds) comes from one seed, and
//! events at the same instant run in the order they were scheduled, so a run is
//! a pure function of its seed and its operations.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, RngExt, SeedableRng};

use crate::protocol::{NodeSpec, Protocol, SimEvent};

/// The simulated network's behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConfig {
    /// One-way latency of every link.
    pub latency: Duration,
    /// Extra latency drawn uniformly from `[0, jitter)` for each packet.
    pub jitter: Duration,
    /// Probability that a datagram is lost, on every link.
    pub loss: f64,
    /// Whether the loss hits stream (TCP) messages too, as on a network
    /// that drops packets of every kind. TCP still delivers them, but late:
    /// the transport opens a connection per message, so a lost SYN or
    /// SYN-ACK costs the kernel's initial retransmission timeout (1 s,
    /// doubling) and a lost data segment its minimum (200 ms, doubling).
    /// Off (the default): only datagrams are lost, as when only UDP is
    /// dropped, and streams are never late.
    pub stream_loss: bool,
}

impl Default for NetConfig {
    /// A LAN: 0.5 ms latency, 0.5 ms jitter, no loss.
    fn default() -> Self {
        Self {
            latency: Duration::from_micros(500),
            jitter: Duration::from_micros(500),
            loss: 0.0,
            stream_loss: false,
        }
    }
}

/// A CPU that every node shares, as processes on one host do. Each thing a
/// node handles (a datagram, a stream message, a timer) costs CPU time; while a
/// node works, what arrives for it waits in its backlog. When more nodes work
/// at once than there are cores, each gets its share (processor sharing), so
/// with 1,000 nodes on 2 cores every node runs at 1/500 of a core's speed and
/// a probe's ack can sit unread while its deadline passes.
///
/// Without a CPU (the default) handling is instant, as it always was.
#[derive(Debug, Clone, PartialEq)]
pub struct Cpu {
    /// Cores shared by every node.
    pub cores: f64,
    /// CPU time for each datagram or stream message received or sent
    /// (system calls, decryption, decoding).
    pub per_packet: Duration,
    /// CPU time for each kibibyte received or sent.
    pub per_kib: Duration,
    /// CPU time for each timer wake-up.
    pub per_timer: Duration,
    /// CPU time per known member each time a node's view changes: what an
    /// embedding application spends rebuilding its view and whatever it
    /// derives from it (`rumor node` copies the member list and rebuilds
    /// its routing table).
    pub per_view_member: Duration,
    /// A node rebuilds its view at most once per this interval, however
    /// many changes arrive in between (`None`: after every change).
    pub view_every: Option<Duration>,
    /// Cores each node uses for work outside the membership protocol (its
    /// runtime, other servers), taken from the shared cores.
    pub idle: f64,
    /// What a node that was kept waiting handles first.
    pub order: Order,
}

impl Cpu {
    /// `rumor node` processes sharing `cores` on one host, with costs
    /// calibrated on this project's 2-core test machine, where 300 idle
    /// processes use a few hundredths of a percent of a core each and 1,000
    /// processes never converged with the event loop that fired its timers
    /// before reading its socket (`Order::TimersFirst`) and rebuilt its view
    /// after every change (`view_every: None`); the simulator reproduces both
    /// with these figures. The event loop as it is now reads first and
    /// rebuilds its view at most once per millisecond per member (between
    /// 100 ms and 2 s), which this returns for a cluster of `members`.
    pub fn shared_host(cores: f64, members: usize) -> Self {
        let view_every =
            (Duration::from_millis(1) * members as u32).clamp(Duration::from_millis(100), Duration::from_secs(2));
        Self {
            cores,
            per_packet: Duration::from_micros(60),
            per_kib: Duration::from_micros(10),
            per_timer: Duration::from_micros(20),
            per_view_member: Duration::from_nanos(250),
            view_every: Some(view_every),
            idle: 0.0003,
            order: Order::InputsFirst,
        }
    }
}

/// Inputs a node handles before a due timer, when it reads first.
const MAX_DRAINED: u32 = 256;

/// The order in which a node that was kept from running handles what piled up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Due timers first, then what arrived: an ack already received but not
    /// yet read counts as missing. An event loop that checks its timers
    /// before reading its socket behaves so.
    TimersFirst,
    /// What arrived first, then due timers: an ack that arrived before the
    /// node got to run counts. An event loop that drains its socket before
    /// checking its timers behaves so.
    InputsFirst,
}

/// The address node `index` listens on in its `generation`-th life. Addresses
/// are virtual (no packet leaves the process); they are loopback addresses so
/// they could never be mistaken for real hosts.
pub fn sim_addr(index: usize, generation: u32) -> SocketAddr {
    let port = 1024 + (index % 60_000) as u16;
    let host = 1 + (index / 60_000) as u8 + (generation as u8).wrapping_mul(16);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, generation as u8, host)), port)
}

type Factory<P> = Box<dyn FnMut(&NodeSpec) -> P>;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Duration,
    seq: u64,
    what: What,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    Deliver {
        to: usize,
        life: u32,
        from: SocketAddr,
        payload: Rc<[u8]>,
        reliable: bool,
    },
    Timer {
        node: usize,
        life: u32,
    },
    /// A node that was busy gets the CPU again and handles what waited.
    Run {
        node: usize,
        life: u32,
    },
}

struct Node<P> {
    name: String,
    addr: SocketAddr,
    proto: Option<P>,
    /// Incremented on every restart; packets and timers for an old life are dropped.
    life: u32,
    timer_at: Option<Duration>,
    /// Extra delay before this node handles each packet (a slow node).
    slow: Option<Duration>,
    left: bool,
    bytes_out: u64,
    packets_out: u64,
    /// With a [`Cpu`]: the node works until then.
    busy_until: Duration,
    /// Deliveries that arrived while the node was busy, oldest first.
    backlog: VecDeque<What>,
    /// A timer came due while the node was busy.
    timer_due: bool,
    /// A `Run` is scheduled.
    run_scheduled: bool,
    /// Inputs handled since a timer came due while the node was busy.
    drained: u32,
    /// With a [`Cpu`]: when this node last rebuilt its view, and whether it changed since.
    view_built: Duration,
    view_stale: bool,
}

/// A set of node indices, one bit each: there is one per node, N² bits in all.
#[derive(Debug, Default)]
struct NodeSet {
    words: Vec<u64>,
    len: usize,
}

impl NodeSet {
    fn contains(&self, i: usize) -> bool {
        self.words.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    /// Adds `i`; false if it was there.
    fn insert(&mut self, i: usize) -> bool {
        if self.words.len() <= i / 64 {
            self.words.resize(i / 64 + 1, 0);
        }
        let (w, bit) = (&mut self.words[i / 64], 1 << (i % 64));
        let new = *w & bit == 0;
        *w |= bit;
        self.len += usize::from(new);
        new
    }

    /// Removes `i`; false if it was not there.
    fn remove(&mut self, i: usize) -> bool {
        let Some(w) = self.words.get_mut(i / 64) else {
            return false;
        };
        let bit = 1 << (i % 64);
        let was = *w & bit != 0;
        *w &= !bit;
        self.len -= usize::from(was);
        was
    }

    fn len(&self) -> usize {
        self.len
    }

    fn clear(&mut self) {
        self.words.fill(0);
        self.len = 0;
    }
}

/// Figures gathered while the simulation runs, indexed by node.
#[derive(Debug, Default)]
pub struct Observations {
    /// `view[o]` holds the nodes observer `o` sees as live.
    view: Vec<NodeSet>,
    /// Sum of the sizes of `view`, kept so that most convergence checks are O(1).
    view_entries: usize,
    /// `down_view[o]` holds the nodes observer `o` has declared down and not seen up since.
    down_view: Vec<HashSet<usize>>,
    /// For each subject, how many observers currently see it as down.
    down_believers: Vec<usize>,
    /// Times a member that was up was declared down by at least one other member.
    pub false_positive_episodes: u64,
    /// Individual (observer, subject) declarations of an up member as down.
    pub false_positive_declarations: u64,
    /// False-positive episodes by subject.
    pub false_positives_of: Vec<u64>,
    /// For each subject: first suspicion and first/last down declaration since `watch`.
    watches: HashMap<usize, Watch>,
    /// Message id -> (sent at, receivers).
    messages: HashMap<u64, (Duration, usize)>,
    /// Message id -> time every live node had it.
    pub message_complete: HashMap<u64, Duration>,
    /// (message id, node) -> when that node first had it.
    message_received: HashMap<(u64, usize), Duration>,
}

/// Detection figures for one watched subject.
#[derive(Debug, Clone, Default)]
pub struct Watch {
    /// When the watch started.
    pub since: Duration,
    /// First time any node suspected the subject.
    pub first_suspect: Option<Duration>,
    /// First time any node declared it down.
    pub first_down: Option<Duration>,
    /// Observers that have declared it down since the watch started.
    pub down_by: HashSet<usize>,
    /// Observers that see it as up since the watch started.
    pub up_by: HashSet<usize>,
    /// Time the last live node declared it down (filled by `Cluster::watch_status`).
    pub all_down: Option<Duration>,
    /// Time every live node saw it up.
    pub all_up: Option<Duration>,
}

/// A simulated cluster running protocol `P`.
pub struct Cluster<P: Protocol> {
    now: Duration,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node<P>>,
    by_name: HashMap<String, usize>,
    by_addr: HashMap<SocketAddr, usize>,
    net: NetConfig,
    link_loss: HashMap<(usize, usize), f64>,
    link_latency: HashMap<(usize, usize), Duration>,
    /// Blocked directed links `(from, to)`.
    blocked: HashSet<(usize, usize)>,
    rng: SmallRng,
    seed: u64,
    factory: Factory<P>,
    /// Nodes running and not left.
    up_count: usize,
    /// Measurements.
    pub obs: Observations,
    /// Events processed, for performance reporting.
    pub events_processed: u64,
    cpu: Option<Cpu>,
    /// When each piece of work in progress ends, to count nodes that share the CPU.
    working: BinaryHeap<Reverse<Duration>>,
    /// CPU time spent by every node together.
    cpu_used: Duration,
}

impl<P: Protocol> std::fmt::Debug for Cluster<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("now", &self.now)
            .field("nodes", &self.nodes.len())
            .finish()
    }
}

impl<P: Protocol> Cluster<P> {
    /// An empty cluster. `factory` creates a node's protocol state machine.
    pub fn new(seed: u64, net: NetConfig, factory: impl FnMut(&NodeSpec) -> P + 'static) -> Self {
        Self {
            now: Duration::ZERO,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_name: HashMap::new(),
            by_addr: HashMap::new(),
            net,
            link_loss: HashMap::new(),
            link_latency: HashMap::new(),
            blocked: HashSet::new(),
            rng: SmallRng::seed_from_u64(seed),
            seed,
            factory: Box::new(factory),
            up_count: 0,
            obs: Observations::default(),
            events_processed: 0,
            cpu: None,
            working: BinaryHeap::new(),
            cpu_used: Duration::ZERO,
        }
    }

    /// Makes every node share `cpu` from now on (`None`: handling is instant).
    pub fn set_cpu(&mut self, cpu: Option<Cpu>) {
        self.cpu = cpu;
    }

    /// CPU time every node has spent together (zero without a [`Cpu`]).
    pub fn cpu_used(&self) -> Duration {
        self.cpu_used
    }

    /// Nodes kept waiting for the CPU right now, and the most inputs any one has waiting.
    pub fn cpu_backlog(&self) -> (usize, usize) {
        let waiting = self.nodes.iter().filter(|n| n.busy_until > self.now).count();
        let deepest = self.nodes.iter().map(|n| n.backlog.len()).max().unwrap_or(0);
        (waiting, deepest)
    }

    /// The seed this run replays from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Simulated time.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Number of nodes ever added (up or not).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Number of nodes running and not left.
    pub fn up_count(&self) -> usize {
        self.up_count
    }

    /// Indices of nodes that are running and have not left.
    pub fn up_nodes(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.is_up(i)).collect()
    }

    /// True when node `i` runs and has not left.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].proto.is_some() && !self.nodes[i].left
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s current address.
    pub fn addr(&self, i: usize) -> SocketAddr {
        self.nodes[i].addr
    }

    /// Node `i`'s protocol state, when up.
    pub fn protocol(&self, i: usize) -> Option<&P> {
        self.nodes[i].proto.as_ref()
    }

    /// The network settings, to change loss or latency mid-run.
    pub fn net_mut(&mut self) -> &mut NetConfig {
        &mut self.net
    }

    /// How late TCP delivers one message over a new connection whose
    /// packets are lost with probability `forward` one way and `back` the
    /// other (see [`NetConfig::stream_loss`]). Draws nothing when neither
    /// loses, so loss-free runs keep their random sequence.
    fn tcp_retransmissions(&mut self, forward: f64, back: f64) -> Duration {
        if forward <= 0.0 && back <= 0.0 {
            return Duration::ZERO;
        }
        let mut late = Duration::ZERO;
        // SYN there and SYN-ACK back; Linux gives up after 6 retries.
        let mut rto = Duration::from_secs(1);
        for _ in 0..6 {
            let syn_lost = self.rng.random::<f64>() < forward;
            let syn_ack_lost = self.rng.random::<f64>() < back;
            if !syn_lost && !syn_ack_lost {
                break;
            }
            late += rto;
            rto *= 2;
        }
        // The data segment (its ACK's loss is covered by the next one's).
        let mut rto = Duration::from_millis(200);
        for _ in 0..6 {
            if self.rng.random::<f64>() >= forward {
                break;
            }
            late += rto;
            rto *= 2;
        }
        late
    }

    /// Adds a node and joins it through `seeds` (node indices).
    pub fn add_node(&mut self, seeds: &[usize]) -> usize {
        let index = self.nodes.len();
        let name = format!("n{index}");
        let addr = sim_addr(index, 0);
        self.by_name.insert(name.clone(), index);
        self.nodes.push(Node {
            name,
            addr,
            proto: None,
            life: 0,
            timer_at: None,
            slow: None,
            left: false,
            bytes_out: 0,
            packets_out: 0,
            busy_until: Duration::ZERO,
            backlog: VecDeque::new(),
            timer_due: false,
            run_scheduled: false,
            drained: 0,
            view_built: Duration::ZERO,
            view_stale: false,
        });
        self.obs.view.push(NodeSet::default());
        self.obs.down_view.push(HashSet::new());
        self.obs.down_believers.push(0);
        self.obs.false_positives_of.push(0);
        self.start(index, seeds);
        index
    }

    fn start(&mut self, index: usize, seeds: &[usize]) {
        let node_seed = self.rng.next_u64();
        let node = &mut self.nodes[index];
        node.life += 1;
        node.timer_at = None;
        node.left = false;
        node.backlog.clear();
        node.timer_due = false;
        node.run_scheduled = false;
        node.view_stale = false;
        self.by_addr.insert(node.addr, index);
        let spec = NodeSpec {
            index,
            name: node.name.clone(),
            addr: node.addr,
            seed: node_seed,
            now: self.now,
        };
        let mut proto = (self.factory)(&spec);
        let seed_addrs: Vec<SocketAddr> = seeds
            .iter()
            .filter(|&&s| s != index)
            .map(|&s| self.nodes[s].addr)
            .collect();
        proto.join(self.now, &seed_addrs);
        self.nodes[index].proto = Some(proto);
        self.up_count += 1;
        self.forget_view(index);
        self.after_input(index);
    }

    /// Stops node `i` without a word (kill -9): its state is lost.
    pub fn crash(&mut self, i: usize) {
        if self.is_up(i) {
            self.up_count -= 1;
        }
        self.forget_view(i);
        self.nodes[i].proto = None;
        self.nodes[i].timer_at = None;
        self.nodes[i].backlog.clear();
        self.nodes[i].timer_due = false;
        let addr = self.nodes[i].addr;
        self.by_addr.remove(&addr);
    }

    /// Restarts a crashed node under the same name, optionally at a new address,
    /// and joins it through `seeds`.
    pub fn restart(&mut self, i: usize, new_addr: bool, seeds: &[usize]) {
        if self.nodes[i].proto.is_some() {
            self.crash(i);
        }
        if new_addr {
            let life = self.nodes[i].life;
            self.nodes[i].addr = sim_addr(i, life);
        }
        self.start(i, seeds);
    }

    /// Node `i` leaves gracefully; it keeps running until `shutdown` is called.
    pub fn leave(&mut self, i: usize) {
        let now = self.now;
        if let Some(p) = self.nodes[i].proto.as_mut() {
            p.leave(now);
        }
        if self.is_up(i) {
            self.up_count -= 1;
        }
        self.nodes[i].left = true;
        self.after_input(i);
    }

    /// Drops what observer `i` believed, when it crashes or restarts.
    fn forget_view(&mut self, i: usize) {
        self.obs.view_entries -= self.obs.view[i].len();
        self.obs.view[i].clear();
        for s in std::mem::take(&mut self.obs.down_view[i]) {
            self.obs.down_believers[s] -= 1;
        }
    }

    /// Makes node `i` handle every packet `delay` late (`None` restores it).
    pub fn set_slow(&mut self, i: usize, delay: Option<Duration>) {
        self.nodes[i].slow = delay;
    }

    /// Sets the loss probability of the directed link `from -> to`.
    pub fn set_link_loss(&mut self, from: usize, to: usize, loss: f64) {
        self.link_loss.insert((from, to), loss);
    }

    /// Sets the one-way latency of the directed link `from -> to` (jitter still applies).
    pub fn set_link_latency(&mut self, from: usize, to: usize, latency: Duration) {
        self.link_latency.insert((from, to), latency);
    }

    /// Blocks traffic from every node in `a` to every node in `b`, and back when `two_way`.
    pub fn partition(&mut self, a: &[usize], b: &[usize], two_way: bool) {
        for &x in a {
            for &y in b {
                self.blocked.insert((x, y));
                if two_way {
                    self.blocked.insert((y, x));
                }
            }
        }
    }

    /// Removes every partition.
    pub fn repair(&mut self) {
        self.blocked.clear();
    }

    /// Node `i` starts a user gossip message with id `id`.
    pub fn broadcast(&mut self, i: usize, id: u64, len: usize) -> bool {
        let mut payload = vec![0u8; len.max(8)];
        payload[..8].copy_from_slice(&id.to_le_bytes());
        let now = self.now;
        let ok = self.nodes[i].proto.as_mut().is_some_and(|p| p.broadcast(now, &payload));
        if ok {
            self.obs.messages.insert(id, (now, 1));
            self.obs.message_received.insert((id, i), now);
        }
        self.after_input(i);
        ok
    }

    /// How many nodes have user message `id` (its sender included).
    pub fn message_receivers(&self, id: u64) -> usize {
        self.obs.messages.get(&id).map_or(0, |m| m.1)
    }

    /// When node `i` first had user message `id` (its sender: when it sent
    /// it); `None` if it has not had it yet.
    pub fn message_received_at(&self, id: u64, i: usize) -> Option<Duration> {
        self.obs.message_received.get(&(id, i)).copied()
    }

    /// Starts recording detection figures for node `i`.
    pub fn watch(&mut self, i: usize) {
        self.obs.watches.insert(
            i,
            Watch {
                since: self.now,
                ..Watch::default()
            },
        );
    }

    /// The figures recorded for a watched node, with `all_down` and `all_up`
    /// meaning "every node up now has seen it".
    pub fn watch_status(&self, i: usize) -> Option<&Watch> {
        self.obs.watches.get(&i)
    }

    /// True when every up node sees exactly the up nodes as live.
    pub fn converged(&self) -> bool {
        let n = self.up_count;
        if self.obs.view_entries < n * n.saturating_sub(1) {
            return false;
        }
        let up = self.up_nodes();
        up.iter().all(|&o| {
            let v = &self.obs.view[o];
            v.len() == n - 1 && up.iter().all(|&x| x == o || v.contains(x))
        })
    }

    /// Pairs of up nodes (observer, subject) in which the observer does not
    /// see the subject as live: 0 when converged.
    pub fn unseen(&self) -> usize {
        self.unseen_pairs().len()
    }

    /// The pairs of up nodes (observer, subject) in which the observer does
    /// not see the subject as live.
    pub fn unseen_pairs(&self) -> Vec<(usize, usize)> {
        let up = self.up_nodes();
        let view = |o: usize| &self.obs.view[o];
        up.iter()
            .flat_map(|&o| {
                up.iter()
                    .filter(move |&&s| s != o && !view(o).contains(s))
                    .map(move |&s| (o, s))
            })
            .collect()
    }

    /// How many up nodes see node `i` as live.
    pub fn seen_up_by(&self, i: usize) -> usize {
        self.up_nodes()
            .iter()
            .filter(|&&o| o != i && self.obs.view[o].contains(i))
            .count()
    }

    /// Bytes and packets sent by each node since the last reset.
    pub fn traffic(&self) -> Vec<(u64, u64)> {
        self.nodes.iter().map(|n| (n.bytes_out, n.packets_out)).collect()
    }

    /// Zeroes the traffic counters.
    pub fn reset_traffic(&mut self) {
        for n in &mut self.nodes {
            n.bytes_out = 0;
            n.packets_out = 0;
        }
    }

    /// Runs until simulated time `t`.
    pub fn run_until(&mut self, t: Duration) {
        while let Some(Reverse(s)) = self.queue.peek() {
            if s.at > t {
                break;
            }
            let Reverse(s) = self.queue.pop().expect("peeked");
            self.now = s.at;
            self.process(s.what);
        }
        self.now = self.now.max(t);
    }

    /// Runs for `d` of simulated time.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Runs until `done` holds (checked every `step`) or `limit` passes;
    /// returns the time it first held.
    pub fn run_until_cond(
        &mut self,
        step: Duration,
        limit: Duration,
        mut done: impl FnMut(&Self) -> bool,
    ) -> Option<Duration> {
        let end = self.now + limit;
        loop {
            if done(self) {
                return Some(self.now);
            }
            if self.now >= end {
                return None;
            }
            let t = (self.now + step).min(end);
            self.run_until(t);
        }
    }

    fn schedule(&mut self, at: Duration, what: What) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at,
            seq: self.seq,
            what,
        }));
    }

    fn process(&mut self, what: What) {
        self.events_processed += 1;
        let now = self.now;
        match what {
            What::Timer { node, life } => {
                let n = &mut self.nodes[node];
                if n.life != life || n.timer_at != Some(now) || n.proto.is_none() {
                    return;
                }
                n.timer_at = None;
                if n.busy_until > now || !n.backlog.is_empty() {
                    n.timer_due = true;
                    self.schedule_run(node);
                    return;
                }
                self.fire_timer(node);
            }
            What::Deliver { to, life, .. } => {
                let n = &mut self.nodes[to];
                if n.life != life || n.proto.is_none() {
                    return;
                }
                if n.busy_until > now || !n.backlog.is_empty() {
                    n.backlog.push_back(what);
                    self.schedule_run(to);
                    return;
                }
                self.deliver(what);
            }
            What::Run { node, life } => {
                let n = &mut self.nodes[node];
                if n.life != life {
                    return;
                }
                n.run_scheduled = false;
                let order = self.cpu.as_ref().map_or(Order::InputsFirst, |c| c.order);
                // Reading first is bounded, as in `rumor node`'s event loop:
                // a flood cannot keep the timers from ever firing.
                let timer_first =
                    n.timer_due && (order == Order::TimersFirst || n.backlog.is_empty() || n.drained >= MAX_DRAINED);
                if timer_first {
                    n.timer_due = false;
                    n.drained = 0;
                    self.fire_timer(node);
                } else if let Some(d) = n.backlog.pop_front() {
                    n.drained += u32::from(n.timer_due);
                    self.deliver(d);
                }
                let n = &self.nodes[node];
                if n.timer_due || !n.backlog.is_empty() {
                    self.schedule_run(node);
                }
            }
        }
    }

    /// Schedules node `i` to handle what waits for it once it is free.
    fn schedule_run(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        if n.run_scheduled {
            return;
        }
        n.run_scheduled = true;
        let (at, life) = (n.busy_until.max(self.now), n.life);
        self.schedule(at, What::Run { node: i, life });
    }

    fn fire_timer(&mut self, i: usize) {
        let now = self.now;
        let Some(p) = self.nodes[i].proto.as_mut() else { return };
        p.handle_timeout(now);
        let cost = self.cpu.as_ref().map_or(Duration::ZERO, |c| c.per_timer);
        self.after_work(i, cost);
    }

    fn deliver(&mut self, what: What) {
        let now = self.now;
        let What::Deliver {
            to,
            life,
            from,
            payload,
            reliable,
        } = what
        else {
            return;
        };
        let n = &mut self.nodes[to];
        if n.life != life {
            return;
        }
        let Some(p) = n.proto.as_mut() else { return };
        if reliable {
            p.handle_stream(now, from, &payload);
        } else {
            p.handle_datagram(now, from, &payload);
        }
        let cost = self.cpu.as_ref().map_or(Duration::ZERO, |c| {
            c.per_packet + c.per_kib.mul_f64(payload.len() as f64 / 1024.0)
        });
        self.after_work(to, cost);
    }

    /// Drains a node's outputs after it handled an input.
    fn after_input(&mut self, i: usize) {
        self.after_work(i, Duration::ZERO);
    }

    /// Drains a node's outputs after it handled an input that cost `cost` of
    /// CPU (sending costs more). With a [`Cpu`] the node is busy for that CPU
    /// time stretched by its share of the cores, and what it sent leaves when
    /// it is done.
    fn after_work(&mut self, i: usize, cost: Duration) {
        let now = self.now;
        let mut sends = Vec::new();
        let mut events = Vec::new();
        let Some(p) = self.nodes[i].proto.as_mut() else { return };
        while let Some(t) = p.poll_transmit() {
            sends.push(t);
        }
        while let Some(e) = p.poll_event() {
            events.push(e);
        }
        let next = p.poll_timeout();
        let view_changed = events.iter().any(|e| !matches!(e, SimEvent::Message(_)));
        for e in events {
            self.observe(i, e);
        }
        let done = match &self.cpu {
            None => now,
            Some(cpu) => {
                let out: usize = sends.iter().map(|t| t.payload.len()).sum();
                let mut cost = cost + cpu.per_packet * sends.len() as u32 + cpu.per_kib.mul_f64(out as f64 / 1024.0);
                let known = self.obs.view[i].len() as u32 + 1;
                let n = &mut self.nodes[i];
                n.view_stale |= view_changed;
                if n.view_stale && cpu.view_every.is_none_or(|every| now >= n.view_built + every) {
                    n.view_stale = false;
                    n.view_built = now;
                    cost += cpu.per_view_member * known;
                }
                while self.working.peek().is_some_and(|Reverse(end)| *end <= now) {
                    self.working.pop();
                }
                let cores = (cpu.cores - cpu.idle * self.up_count as f64).max(cpu.cores * 0.05);
                let sharing = (self.working.len() + 1) as f64 / cores;
                let wall = cost.mul_f64(sharing.max(1.0));
                self.cpu_used += cost;
                // A command (join, leave, broadcast) may come while the node works.
                let done = self.nodes[i].busy_until.max(now) + wall;
                if done > now {
                    self.working.push(Reverse(done));
                }
                self.nodes[i].busy_until = done;
                done
            }
        };
        let from = self.nodes[i].addr;
        for t in sends {
            let n = &mut self.nodes[i];
            n.bytes_out += t.payload.len() as u64;
            n.packets_out += 1;
            let Some(&to) = self.by_addr.get(&t.to) else { continue };
            if self.blocked.contains(&(i, to)) {
                continue;
            }
            let loss = self.link_loss.get(&(i, to)).copied().unwrap_or(self.net.loss);
            let mut delay = self.link_latency.get(&(i, to)).copied().unwrap_or(self.net.latency);
            if !t.reliable {
                if loss > 0.0 && self.rng.random::<f64>() < loss {
                    continue;
                }
            } else if self.net.stream_loss {
                let back = self.link_loss.get(&(to, i)).copied().unwrap_or(self.net.loss);
                // The handshake's two more crossings, then its retransmissions.
                delay += 2 * delay + self.tcp_retransmissions(loss, back);
            }
            if !self.net.jitter.is_zero() {
                delay += self.net.jitter.mul_f64(self.rng.random::<f64>());
            }
            if let Some(s) = self.nodes[to].slow {
                delay += s.mul_f64(0.5 + self.rng.random::<f64>());
            }
            let life = self.nodes[to].life;
            let payload: Rc<[u8]> = t.payload.into();
            self.schedule(
                done + delay,
                What::Deliver {
                    to,
                    life,
                    from,
                    payload,
                    reliable: t.reliable,
                },
            );
        }
        if let Some(at) = next
            && !self.nodes[i].timer_due
        {
            let at = at.max(now);
            let n = &mut self.nodes[i];
            // Keep the earliest pending wake-up; a spurious early one is harmless.
            if n.timer_at.is_none_or(|cur| at < cur) {
                n.timer_at = Some(at);
                let life = n.life;
                self.schedule(at, What::Timer { node: i, life });
            }
        }
    }

    fn observe(&mut self, observer: usize, e: SimEvent) {
        let now = self.now;
        match e {
            SimEvent::Up(name) => {
                let Some(&s) = self.by_name.get(&name) else { return };
                if self.obs.view[observer].insert(s) {
                    self.obs.view_entries += 1;
                }
                if self.obs.down_view[observer].remove(&s) {
                    self.obs.down_believers[s] -= 1;
                }
                if let Some(w) = self.obs.watches.get_mut(&s) {
                    w.down_by.remove(&observer);
                    if w.up_by.insert(observer) {
                        self.update_watch_up(s);
                    }
                }
            }
            SimEvent::Suspect(name) => {
                let Some(&s) = self.by_name.get(&name) else { return };
                if let Some(w) = self.obs.watches.get_mut(&s) {
                    w.first_suspect.get_or_insert(now);
                }
            }
            SimEvent::Down(name) => {
                let Some(&s) = self.by_name.get(&name) else { return };
                if !self.obs.view[observer].remove(s) {
                    return;
                }
                self.obs.view_entries -= 1;
                if self.is_up(s) {
                    self.obs.false_positive_declarations += 1;
                    if self.obs.down_believers[s] == 0 {
                        self.obs.false_positive_episodes += 1;
                        self.obs.false_positives_of[s] += 1;
                    }
                }
                if self.obs.down_view[observer].insert(s) {
                    self.obs.down_believers[s] += 1;
                }
                if let Some(w) = self.obs.watches.get_mut(&s) {
                    w.first_down.get_or_insert(now);
                    w.up_by.remove(&observer);
                    if w.down_by.insert(observer) {
                        self.update_watch_down(s);
                    }
                }
            }
            SimEvent::Message(payload) => {
                if payload.len() < 8 {
                    return;
                }
                let id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                let up = self.up_count;
                if let Some((_, count)) = self.obs.messages.get_mut(&id) {
                    self.obs.message_received.entry((id, observer)).or_insert(now);
                    *count += 1;
                    if *count >= up {
                        self.obs.message_complete.entry(id).or_insert(now);
                    }
                }
            }
        }
    }

    fn update_watch_down(&mut self, s: usize) {
        let Some(w) = self.obs.watches.get(&s) else { return };
        if w.all_down.is_some() {
            return;
        }
        // Cheap count first; the exact check only when it could hold.
        if w.down_by.len() + 1 < self.up_count {
            return;
        }
        let all = self.up_nodes().iter().all(|&o| o == s || w.down_by.contains(&o));
        if all {
            let now = self.now;
            if let Some(w) = self.obs.watches.get_mut(&s) {
                w.all_down = Some(now);
            }
        }
    }

    fn update_watch_up(&mut self, s: usize) {
        let Some(w) = self.obs.watches.get(&s) else { return };
        if w.all_up.is_some() {
            return;
        }
        if w.up_by.len() + 1 < self.up_count {
            return;
        }
        if self.up_nodes().iter().all(|&o| o == s || w.up_by.contains(&o)) {
            let now = self.now;
            if let Some(w) = self.obs.watches.get_mut(&s) {
                w.all_up = Some(now);
            }
        }
    }
}
