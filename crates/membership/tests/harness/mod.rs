//! A tiny deterministic network for scenario tests: nodes exchange packets
//! with a fixed latency on a virtual clock; links can be cut.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use membership::{Config, Event, Member, Membership, Meta, Status};

pub const LATENCY: Duration = Duration::from_millis(1);

pub fn addr(i: usize, generation: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, generation, 1 + i as u8], 7946))
}

pub struct Net {
    pub now: Duration,
    pub cfg: Config,
    pub nodes: Vec<Option<Membership>>,
    pub events: Vec<Vec<(Duration, Event)>>,
    by_addr: HashMap<SocketAddr, usize>,
    in_flight: BTreeMap<(Duration, u64), (usize, Vec<u8>, bool)>,
    seq: u64,
    /// Directed links that drop everything.
    pub cut: BTreeSet<(usize, usize)>,
    pub delivered: u64,
    /// Nodes kept from running until then (a busy host): what arrives waits,
    /// and is handled before their timers when they run again.
    stalled: HashMap<usize, Duration>,
}

impl Net {
    /// `n` nodes, all joined through node 0.
    pub fn new(n: usize, cfg: Config) -> Self {
        let mut net = Net {
            now: Duration::ZERO,
            cfg,
            nodes: Vec::new(),
            events: Vec::new(),
            by_addr: HashMap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            cut: BTreeSet::new(),
            delivered: 0,
            stalled: HashMap::new(),
        };
        for i in 0..n {
            net.start(i, addr(i, 0), &[0]);
        }
        net
    }

    pub fn name(i: usize) -> String {
        format!("node-{i}")
    }

    /// Starts (or restarts) node `i` at `at`, joining through `seeds`.
    pub fn start(&mut self, i: usize, at: SocketAddr, seeds: &[usize]) {
        while self.nodes.len() <= i {
            self.nodes.push(None);
            self.events.push(Vec::new());
        }
        self.by_addr.retain(|_, v| *v != i);
        self.by_addr.insert(at, i);
        let mut m = Membership::new(
            self.cfg.clone(),
            Self::name(i),
            at,
            Meta::default(),
            1000 + i as u64,
            self.now,
        )
        .expect("valid config");
        let seeds: Vec<SocketAddr> = seeds
            .iter()
            .filter(|&&s| s != i)
            .filter_map(|&s| self.addr_of(s))
            .collect();
        m.join(self.now, &seeds);
        self.nodes[i] = Some(m);
        self.flush(i);
    }

    pub fn addr_of(&self, i: usize) -> Option<SocketAddr> {
        self.nodes.get(i)?.as_ref().map(|m| m.addr())
    }

    pub fn node(&self, i: usize) -> &Membership {
        self.nodes[i].as_ref().expect("node is up")
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Membership {
        self.nodes[i].as_mut().expect("node is up")
    }

    pub fn crash(&mut self, i: usize) {
        self.nodes[i] = None;
    }

    /// Cuts both directions between `a` and every node in `b`.
    pub fn isolate(&mut self, a: usize, b: &[usize]) {
        for &x in b {
            self.cut.insert((a, x));
            self.cut.insert((x, a));
        }
    }

    pub fn heal(&mut self) {
        self.cut.clear();
    }

    /// Sends raw bytes to node `i` as a datagram.
    pub fn inject(&mut self, i: usize, bytes: &[u8]) {
        let now = self.now;
        self.node_mut(i).handle_datagram(now, bytes);
        self.flush(i);
    }

    /// Drains node `i`'s transmits into the network and records its events.
    pub fn flush(&mut self, i: usize) {
        let now = self.now;
        let Some(m) = self.nodes[i].as_mut() else { return };
        let mut out = Vec::new();
        while let Some(t) = m.poll_transmit() {
            out.push(t);
        }
        while let Some(e) = m.poll_event() {
            self.events[i].push((now, e));
        }
        for t in out {
            let Some(&to) = self.by_addr.get(&t.to) else { continue };
            if self.cut.contains(&(i, to)) {
                continue;
            }
            self.seq += 1;
            self.in_flight
                .insert((now + LATENCY, self.seq), (to, t.payload, t.reliable));
        }
    }

    /// Advances the clock to `t`, delivering packets and firing timers in order.
    pub fn run_until(&mut self, t: Duration) {
        loop {
            let next_packet = self.in_flight.keys().next().map(|k| k.0);
            let next_timer = self
                .nodes
                .iter()
                .enumerate()
                .filter_map(|(i, m)| m.as_ref().and_then(|m| m.poll_timeout()).map(|d| (d, i)))
                .map(|(d, i)| (self.stalled.get(&i).map_or(d, |&until| d.max(until)), i))
                .min();
            let next = match (next_packet, next_timer) {
                (Some(p), Some((d, _))) => p.min(d),
                (Some(p), None) => p,
                (None, Some((d, _))) => d,
                (None, None) => break,
            };
            if next > t {
                break;
            }
            self.now = next.max(self.now);
            if next_packet == Some(next) {
                let (_, (to, bytes, reliable)) = self.in_flight.pop_first().expect("peeked");
                let now = self.now;
                if let Some(&until) = self.stalled.get(&to).filter(|&&until| until > now) {
                    // Waits in the socket buffer; packets sort before timers at the same instant.
                    self.seq += 1;
                    self.in_flight.insert((until, self.seq), (to, bytes, reliable));
                    continue;
                }
                if let Some(m) = self.nodes[to].as_mut() {
                    self.delivered += 1;
                    if reliable {
                        m.handle_stream(now, &bytes);
                    } else {
                        m.handle_datagram(now, &bytes);
                    }
                    self.flush(to);
                }
            } else if let Some((_, i)) = next_timer {
                let now = self.now;
                self.node_mut(i).handle_timeout(now);
                self.flush(i);
            }
        }
        self.now = t;
    }

    /// Node `i` is kept from running for `d` from now.
    pub fn stall(&mut self, i: usize, d: Duration) {
        self.stalled.insert(i, self.now + d);
    }

    /// Node `i` starts a user gossip message.
    pub fn broadcast(&mut self, i: usize, payload: &[u8]) {
        let now = self.now;
        self.node_mut(i)
            .broadcast(now, payload.to_vec().into())
            .expect("broadcast accepted");
        self.flush(i);
    }

    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// What node `i` believes about node `j`.
    pub fn view(&self, i: usize, j: usize) -> Option<Member> {
        self.node(i).member(&Self::name(j))
    }

    pub fn status(&self, i: usize, j: usize) -> Option<Status> {
        self.view(i, j).map(|m| m.status)
    }

    /// True when every up node sees every other up node as alive.
    pub fn all_alive(&self) -> bool {
        let up: Vec<usize> = (0..self.nodes.len()).filter(|&i| self.nodes[i].is_some()).collect();
        up.iter()
            .all(|&i| up.iter().all(|&j| i == j || self.status(i, j) == Some(Status::Alive)))
    }

    pub fn periods(&self, n: u32) -> Duration {
        self.cfg.probe_interval * n
    }

    pub fn saw(&self, i: usize, pred: impl Fn(&Event) -> bool) -> bool {
        self.events[i].iter().any(|(_, e)| pred(e))
    }
}
