//! The playground's simulator mode: one deterministic run of the same
//! simulator the benchmarks use, recorded frame by frame as the page asks
//! for it, so that it can be paused, stepped and scrubbed back and forth.
//!
//! The run follows a fixed story: the nodes join through the first one, ten
//! every 100 ms; once every node sees every other, one gossip message starts
//! at `n1`, and a few seconds later a node crashes. Each frame is the
//! cluster as one node (the observer) sees it at that moment.

use std::collections::HashMap;
use std::time::Duration;

use membership::{Config, Status};
use serde::Serialize;
use sim::{Cluster, NetConfig, Rumor};

/// Simulated time between two frames.
pub(crate) const FRAME: Duration = Duration::from_millis(100);
/// Frames recorded at most: ten simulated minutes.
pub(crate) const MAX_FRAMES: usize = 6_000;
/// After the cluster first converged: the gossip message, then the crash.
const MESSAGE_AFTER: Duration = Duration::from_secs(1);
const CRASH_AFTER: Duration = Duration::from_secs(4);
/// The gossip message's id in the simulator.
const MESSAGE: u64 = 1;

/// What the page is told about the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimInfo {
    pub(crate) nodes: usize,
    pub(crate) seed: u64,
    pub(crate) preset: String,
    pub(crate) observer: String,
    pub(crate) frame_ms: u64,
    pub(crate) frames: usize,
    pub(crate) max_frames: usize,
    /// What happened, with the frame it happened in.
    pub(crate) events: Vec<SimNote>,
}

/// Something that happened in the run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SimNote {
    pub(crate) frame: usize,
    pub(crate) t_ms: u64,
    pub(crate) text: String,
}

/// The cluster at one moment, as the observer sees it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Frame {
    pub(crate) frame: usize,
    pub(crate) t_ms: u64,
    /// One character per node, `n0` first: `o` the observer itself, `a`
    /// alive, `s` suspect, `d` dead, `l` left, `u` not known to the
    /// observer; upper case when the node has the gossip message.
    pub(crate) states: String,
    /// Nodes whose process is down (crashed), whatever the observer thinks.
    pub(crate) down: Vec<usize>,
    /// Nodes that have the gossip message.
    pub(crate) receivers: usize,
    /// Every up node sees exactly the up nodes as live.
    pub(crate) converged: bool,
}

/// One simulation and the frames recorded so far.
pub(crate) struct SimRun {
    c: Cluster<Rumor>,
    n: usize,
    seed: u64,
    preset: String,
    observer: usize,
    frames: Vec<Frame>,
    notes: Vec<SimNote>,
    converged_at: Option<Duration>,
    message_sent: bool,
    crashed: Option<usize>,
    crash_seen_dead_everywhere: bool,
}

impl SimRun {
    pub(crate) fn new(n: usize, seed: u64, preset: &str, cfg: Config) -> Self {
        let mut c = Cluster::new(seed, NetConfig::default(), move |spec| Rumor::new(cfg.clone(), spec));
        c.add_node(&[0]);
        let mut run = SimRun {
            c,
            n: n.max(2),
            seed,
            preset: preset.to_owned(),
            observer: 0,
            frames: Vec::new(),
            notes: Vec::new(),
            converged_at: None,
            message_sent: false,
            crashed: None,
            crash_seen_dead_everywhere: false,
        };
        run.note(format!("simulation of {} nodes, seed {seed}, preset {preset}", run.n));
        run.record();
        run
    }

    pub(crate) fn info(&self) -> SimInfo {
        SimInfo {
            nodes: self.n,
            seed: self.seed,
            preset: self.preset.clone(),
            observer: self.c.name(self.observer).to_owned(),
            frame_ms: FRAME.as_millis() as u64,
            frames: self.frames.len(),
            max_frames: MAX_FRAMES,
            events: self.notes.clone(),
        }
    }

    /// Frame `k`, simulating up to it first when it is not recorded yet;
    /// `None` past the last frame.
    pub(crate) fn frame(&mut self, k: usize) -> Option<Frame> {
        if k >= MAX_FRAMES {
            return None;
        }
        while self.frames.len() <= k {
            self.step();
        }
        self.frames.get(k).cloned()
    }

    fn note(&mut self, text: String) {
        self.notes.push(SimNote {
            frame: self.frames.len(),
            t_ms: self.c.now().as_millis() as u64,
            text,
        });
    }

    /// Simulates one frame's time, with the story's next step, and records it.
    fn step(&mut self) {
        let now = self.c.now();
        let joined = self.c.len();
        if joined < self.n {
            let add = (self.n - joined).min(10);
            for _ in 0..add {
                self.c.add_node(&[0]);
            }
            if self.c.len() == self.n {
                self.note(format!("all {} nodes started; they join through n0", self.n));
            }
        }
        if let Some(at) = self.converged_at {
            if !self.message_sent && now >= at + MESSAGE_AFTER {
                self.message_sent = self.c.broadcast(1, MESSAGE, 64);
                if self.message_sent {
                    self.note("n1 creates a gossip message".into());
                }
            }
            if self.crashed.is_none() && now >= at + CRASH_AFTER {
                let victim = self.n / 2;
                self.c.crash(victim);
                self.c.watch(victim);
                self.crashed = Some(victim);
                self.note(format!("n{victim} crashes"));
            }
        }
        self.c.run_for(FRAME);
        if self.converged_at.is_none() && self.c.len() == self.n && self.c.converged() {
            self.converged_at = Some(self.c.now());
            self.note("every node sees every other: converged".into());
        }
        if let Some(v) = self.crashed
            && !self.crash_seen_dead_everywhere
            && self.c.watch_status(v).is_some_and(|w| w.all_down.is_some())
        {
            self.crash_seen_dead_everywhere = true;
            self.note(format!("every node sees n{v} dead"));
        }
        if self.message_sent
            && self.c.message_receivers(MESSAGE) >= self.c.up_count()
            && !self.notes.iter().any(|n| n.text.starts_with("every node has"))
        {
            self.note("every node has the gossip message".into());
        }
        self.record();
    }

    fn record(&mut self) {
        let obs = self.observer;
        let mut seen: HashMap<usize, Status> = HashMap::new();
        if let Some(p) = self.c.protocol(obs) {
            for m in p.inner().members() {
                if let Some(i) = self.index(&m.name) {
                    seen.insert(i, m.status);
                }
            }
        }
        let mut states = String::with_capacity(self.c.len());
        let mut down = Vec::new();
        for i in 0..self.c.len() {
            let c = if i == obs {
                'o'
            } else {
                match seen.get(&i) {
                    Some(Status::Alive) => 'a',
                    Some(Status::Suspect) => 's',
                    Some(Status::Dead) => 'd',
                    Some(Status::Left) => 'l',
                    None => 'u',
                }
            };
            let has = self.c.message_received_at(MESSAGE, i).is_some();
            states.push(if has { c.to_ascii_uppercase() } else { c });
            if !self.c.is_up(i) {
                down.push(i);
            }
        }
        // Nodes not started yet are unknown to everyone.
        for _ in self.c.len()..self.n {
            states.push('u');
        }
        self.frames.push(Frame {
            frame: self.frames.len(),
            t_ms: self.c.now().as_millis() as u64,
            states,
            down,
            receivers: self.c.message_receivers(MESSAGE),
            converged: self.c.converged(),
        });
    }

    /// The index of the simulated node named `name` (`n{index}`).
    fn index(&self, name: &str) -> Option<usize> {
        name.strip_prefix('n')?.parse().ok().filter(|&i| i < self.c.len())
    }
}

/// A question for the simulation's thread.
enum Ask {
    Info(tokio::sync::oneshot::Sender<SimInfo>),
    Frame(usize, tokio::sync::oneshot::Sender<Option<Frame>>),
}

/// A [`SimRun`] on a thread of its own (the simulator's cluster is not
/// `Send`: it is single-threaded by design), asked through a channel.
#[derive(Clone)]
pub(crate) struct SimHandle(std::sync::mpsc::Sender<Ask>);

impl SimHandle {
    /// Starts the thread; the run is created on it.
    pub(crate) fn start(n: usize, seed: u64, preset: String, cfg: Config) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<Ask>();
        std::thread::spawn(move || {
            let mut run = SimRun::new(n, seed, &preset, cfg);
            for ask in rx {
                match ask {
                    Ask::Info(reply) => {
                        let _ = reply.send(run.info());
                    }
                    Ask::Frame(k, reply) => {
                        let _ = reply.send(run.frame(k));
                    }
                }
            }
        });
        SimHandle(tx)
    }

    pub(crate) async fn info(&self) -> Option<SimInfo> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.send(Ask::Info(tx)).ok()?;
        rx.await.ok()
    }

    pub(crate) async fn frame(&self, k: usize) -> Option<Frame> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.0.send(Ask::Frame(k, tx)).ok()?;
        rx.await.ok().flatten()
    }
}

/// The simulator's prediction of a gossip message's spread through a
/// converged cluster of `n` nodes with these settings: for k = 1..=n, the
/// mean time in ms (over `runs` seeds) at which the k-th node had it, the
/// creator being the first at 0.
pub(crate) fn spread_prediction(cfg: &Config, n: usize, runs: u64) -> Vec<f64> {
    let mut sums = vec![0.0; n];
    for seed in 1..=runs {
        let cfg = cfg.clone();
        let mut c = Cluster::new(seed, NetConfig::default(), move |spec| Rumor::new(cfg.clone(), spec));
        for _ in 0..n {
            c.add_node(&[0]);
        }
        c.run_until_cond(FRAME, Duration::from_secs(600), |c| c.converged());
        let t0 = c.now();
        c.broadcast(0, MESSAGE, 64);
        c.run_until_cond(Duration::from_millis(10), Duration::from_secs(60), |c| {
            c.message_receivers(MESSAGE) >= n
        });
        let mut at: Vec<f64> = (0..n)
            .map(|i| {
                c.message_received_at(MESSAGE, i)
                    .map_or(60_000.0, |t| (t - t0).as_secs_f64() * 1e3)
            })
            .collect();
        at.sort_by(f64::total_cmp);
        for (s, a) in sums.iter_mut().zip(at) {
            *s += a;
        }
    }
    sums.into_iter().map(|s| s / runs.max(1) as f64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_converges_spreads_its_message_and_finds_the_crash() {
        let mut run = SimRun::new(20, 7, "lan", Config::lan());
        let mut last = None;
        for k in 0..600 {
            last = run.frame(k);
        }
        let last = last.expect("frame 599");
        let info = run.info();
        let said = |what: &str| info.events.iter().any(|e| e.text.contains(what));
        assert!(said("converged"), "{:?}", info.events);
        assert!(said("every node has the gossip message"), "{:?}", info.events);
        assert!(said("every node sees n10 dead"), "{:?}", info.events);
        assert_eq!(last.states.len(), 20);
        assert_eq!(last.down, vec![10]);
        assert_eq!(
            &last.states[10..11],
            "D",
            "the observer sees the crashed node dead: {}",
            last.states
        );
        assert_eq!(last.receivers, 20);
    }

    #[test]
    fn frames_are_the_same_for_the_same_seed_and_can_be_read_again() {
        let mut a = SimRun::new(30, 3, "lan", Config::lan());
        let mut b = SimRun::new(30, 3, "lan", Config::lan());
        let fa = a.frame(150).unwrap();
        assert_eq!(fa.states, b.frame(150).unwrap().states);
        // Going back reads the recorded frame.
        assert_eq!(a.frame(20).unwrap().t_ms, 2_000);
        assert_eq!(a.frame(150).unwrap().states, fa.states);
        assert!(a.frame(MAX_FRAMES).is_none());
    }

    #[test]
    fn the_prediction_reaches_every_node_in_order() {
        let p = spread_prediction(&Config::lan(), 7, 3);
        assert_eq!(p.len(), 7);
        assert_eq!(p[0], 0.0, "the creator has it at once: {p:?}");
        assert!(p.windows(2).all(|w| w[1] >= w[0]), "{p:?}");
        assert!(p[6] > 0.0 && p[6] < 10_000.0, "everyone within seconds: {p:?}");
    }
}
