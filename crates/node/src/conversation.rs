//! What happened in each conversation, as its owner numbers it: the one
//! place that orders a conversation's events, and where watchers subscribe.
//!
//! ```text
//!  worker: message accepted ─┐
//!          reply chunk ──────┼─> Log (per conversation): epoch, next seq,
//!          reply ended ──────┘    bounded buffer ──> broadcast ──> watchers (Watch RPC)
//! ```
//!
//! Events are numbered 1, 2, 3, ... within an *epoch*, a name of the owner
//! and the moment it began numbering the conversation. When a conversation
//! moves to another owner (the ring changed) or its owner restarts, the new
//! owner starts a new epoch; a watcher that resumes from a position of
//! another epoch, or from one the buffer no longer holds, gets a gap event
//! saying so before the events that follow. Never a silent hole.
//!
//! Memory is bounded twice: each conversation keeps its newest events up to
//! [`LogLimits::events`] and [`LogLimits::bytes`], and all conversations
//! together up to [`LogLimits::total_bytes`], each log counted with a fixed
//! overhead so that many small conversations are bounded too; the
//! conversations used least recently are forgotten first (a watcher resuming
//! in one gets a gap). A log makes its channel to watchers only when one
//! subscribes, and drops it when the last one has gone.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use proto::mesh::conversation_event::Event as Kind;
use proto::mesh::{ConversationEvent, EventGap, Position};
use tokio::sync::broadcast;
use tokio_stream::Stream;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

/// How much the logs keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogLimits {
    /// Newest events kept per conversation. Default 256.
    pub events: usize,
    /// Newest bytes of events kept per conversation. Default 256 KiB.
    pub bytes: usize,
    /// Bytes of events kept over all conversations. Default 64 MiB.
    pub total_bytes: usize,
}

impl Default for LogLimits {
    fn default() -> Self {
        Self {
            events: 256,
            bytes: 256 * 1024,
            total_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Events a slow watcher may fall behind before it is told of a gap.
const WATCHER_BACKLOG: usize = 1024;

/// One conversation's numbered events. Shared by the worker's lane (which
/// appends) and the watchers' subscriptions; a plain mutex, held only to
/// append or copy.
#[derive(Debug)]
pub struct Log {
    key: String,
    epoch: String,
    limits: LogLimits,
    inner: Mutex<Inner>,
    /// The bytes of all logs of its [`Logs`].
    total: Arc<AtomicU64>,
}

#[derive(Debug)]
struct Inner {
    next_seq: u64,
    buffer: VecDeque<Arc<ConversationEvent>>,
    /// Bytes of the events in `buffer`.
    bytes: usize,
    /// The channel to watchers, while there are any.
    live: Option<broadcast::Sender<Arc<ConversationEvent>>>,
    /// Still counted in the total of its [`Logs`] (not yet forgotten).
    counted: bool,
}

/// What a subscription starts with: events to replay, then the live ones.
#[derive(Debug)]
pub struct Subscription {
    /// The conversation key.
    pub key: String,
    /// A gap first when the position asked for cannot be replayed, then the
    /// buffered events after it.
    pub replay: Vec<Arc<ConversationEvent>>,
    /// Events from now on.
    pub live: broadcast::Receiver<Arc<ConversationEvent>>,
    /// The position the events continue from (absent before any event).
    pub from: Option<Position>,
}

impl Subscription {
    /// The events as one stream: the replay, then the live events. A
    /// watcher that falls more than a backlog behind the live events gets a
    /// gap (`lagged`) in place of those it missed, and goes on.
    pub fn into_stream(self) -> Events {
        let last = self
            .replay
            .iter()
            .rev()
            .find_map(|e| e.position.clone())
            .or_else(|| self.from.clone());
        Events {
            key: self.key,
            replay: self.replay.into(),
            live: BroadcastStream::new(self.live),
            last,
        }
    }
}

/// A watcher's events; see [`Subscription::into_stream`].
#[derive(Debug)]
pub struct Events {
    key: String,
    replay: VecDeque<Arc<ConversationEvent>>,
    live: BroadcastStream<Arc<ConversationEvent>>,
    last: Option<Position>,
}

impl Stream for Events {
    type Item = ConversationEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ConversationEvent>> {
        if let Some(e) = self.replay.pop_front() {
            return Poll::Ready(Some((*e).clone()));
        }
        loop {
            let e = match Pin::new(&mut self.live).poll_next(cx) {
                Poll::Ready(Some(Ok(e))) => e,
                Poll::Ready(Some(Err(BroadcastStreamRecvError::Lagged(missed)))) => {
                    return Poll::Ready(Some(self.lagged(missed)));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            if let Some(p) = &e.position {
                // The replay and the live receiver overlap by the events
                // appended while the subscription was made: skip those.
                if self.last.as_ref().is_some_and(|l| l.epoch == p.epoch && l.seq >= p.seq) {
                    continue;
                }
                self.last = Some(p.clone());
            }
            return Poll::Ready(Some((*e).clone()));
        }
    }
}

impl Events {
    /// The gap in place of `missed` live events a slow watcher fell behind by.
    fn lagged(&mut self, missed: u64) -> ConversationEvent {
        let after = self.last.clone();
        let resume = after.as_ref().map(|p| Position {
            epoch: p.epoch.clone(),
            seq: p.seq + missed + 1,
        });
        if let Some(r) = &resume {
            self.last = Some(Position {
                epoch: r.epoch.clone(),
                seq: r.seq - 1,
            });
        }
        ConversationEvent {
            key: self.key.clone(),
            position: None,
            event: Some(Kind::Gap(EventGap {
                after,
                resume,
                reason: "lagged".into(),
            })),
        }
    }
}

fn event_bytes(e: &ConversationEvent) -> usize {
    use proto::Message as _;
    e.encoded_len() + 64
}

/// What a log costs beyond its events: its key, epoch, map entry and locks.
fn overhead(key: &str) -> u64 {
    256 + 2 * key.len() as u64
}

impl Log {
    fn new(key: &str, owner: &str, limits: LogLimits, total: Arc<AtomicU64>) -> Self {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        total.fetch_add(overhead(key), Ordering::Relaxed);
        Self {
            key: key.to_owned(),
            epoch: format!("{owner}@{started}"),
            limits,
            inner: Mutex::new(Inner {
                next_seq: 1,
                buffer: VecDeque::new(),
                bytes: 0,
                live: None,
                counted: true,
            }),
            total,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// This log's epoch.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Watchers subscribed now.
    pub fn watchers(&self) -> usize {
        self.lock().live.as_ref().map_or(0, broadcast::Sender::receiver_count)
    }

    /// Numbers `event`, keeps it, and hands it to the watchers; returns its
    /// position.
    pub fn append(&self, event: Kind) -> Position {
        let mut inner = self.lock();
        let before = inner.bytes;
        let position = Position {
            epoch: self.epoch.clone(),
            seq: inner.next_seq,
        };
        inner.next_seq += 1;
        let e = Arc::new(ConversationEvent {
            key: self.key.clone(),
            position: Some(position.clone()),
            event: Some(event),
        });
        inner.bytes += event_bytes(&e);
        inner.buffer.push_back(e.clone());
        while inner.buffer.len() > self.limits.events || (inner.bytes > self.limits.bytes && inner.buffer.len() > 1) {
            if let Some(old) = inner.buffer.pop_front() {
                inner.bytes -= event_bytes(&old);
            }
        }
        if inner.counted {
            self.total.fetch_add(inner.bytes as u64, Ordering::Relaxed);
            self.total.fetch_sub(before as u64, Ordering::Relaxed);
        }
        if let Some(live) = &inner.live {
            if live.receiver_count() == 0 {
                // The last watcher has gone: free the channel's slots.
                inner.live = None;
            } else {
                let _ = live.send(e);
            }
        }
        position
    }

    /// Subscribes after position `after`: see [`Subscription`].
    pub fn subscribe(&self, after: Option<&Position>) -> Subscription {
        let mut inner = self.lock();
        // Taken under the lock, so that no event falls between the replay
        // and the live receiver.
        let live = inner
            .live
            .get_or_insert_with(|| broadcast::channel(WATCHER_BACKLOG).0)
            .subscribe();
        let last = inner.next_seq - 1;
        let from = (last > 0).then(|| Position {
            epoch: self.epoch.clone(),
            seq: last,
        });
        let first = inner
            .buffer
            .front()
            .and_then(|e| e.position.as_ref())
            .map_or(inner.next_seq, |p| p.seq);
        let mut replay = Vec::new();
        let Some(after) = after else {
            return Subscription {
                key: self.key.clone(),
                replay,
                live,
                from,
            };
        };
        // An empty epoch asks for everything the buffer holds: a gap only
        // when the buffer no longer begins at the first event.
        let (start, gap) = if after.epoch.is_empty() {
            (first, (first > 1).then_some("evicted"))
        } else if after.epoch == self.epoch {
            if after.seq + 1 >= first {
                (after.seq + 1, None)
            } else {
                (first, Some("evicted"))
            }
        } else {
            (first, Some("epoch"))
        };
        if let Some(reason) = gap {
            replay.push(Arc::new(ConversationEvent {
                key: self.key.clone(),
                position: None,
                event: Some(Kind::Gap(EventGap {
                    after: Some(after.clone()),
                    resume: Some(Position {
                        epoch: self.epoch.clone(),
                        seq: start,
                    }),
                    reason: reason.to_owned(),
                })),
            }));
        }
        replay.extend(
            inner
                .buffer
                .iter()
                .filter(|e| e.position.as_ref().is_some_and(|p| p.seq >= start))
                .cloned(),
        );
        Subscription {
            key: self.key.clone(),
            replay,
            live,
            from,
        }
    }

    /// Bytes this log holds, its overhead included.
    #[cfg(test)]
    fn held_bytes(&self) -> u64 {
        overhead(&self.key) + self.lock().bytes as u64
    }

    /// Takes this log out of its total, when it is forgotten.
    fn uncount(&self) {
        let mut inner = self.lock();
        if inner.counted {
            inner.counted = false;
            self.total
                .fetch_sub(overhead(&self.key) + inner.bytes as u64, Ordering::Relaxed);
        }
    }
}

/// The logs of every conversation this worker owns or recently owned.
#[derive(Debug)]
pub struct Logs {
    owner: String,
    limits: LogLimits,
    /// By conversation key, with when each was last used (a counter), for
    /// forgetting the least recently used. A plain mutex: held to look up or
    /// insert.
    map: Mutex<HashMap<String, (Arc<Log>, u64)>>,
    clock: AtomicU64,
    /// The bytes of all logs in `map`.
    total: Arc<AtomicU64>,
}

impl Logs {
    /// Logs numbered by `owner` (the worker's node name).
    pub fn new(owner: &str, limits: LogLimits) -> Self {
        Self {
            owner: owner.to_owned(),
            limits,
            map: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            total: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The log of conversation `key`, begun now if there is none.
    pub fn get(&self, key: &str) -> Arc<Log> {
        let now = self.clock.fetch_add(1, Ordering::Relaxed);
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((log, used)) = map.get_mut(key) {
            *used = now;
            return log.clone();
        }
        let log = Arc::new(Log::new(key, &self.owner, self.limits, self.total.clone()));
        map.insert(key.to_owned(), (log.clone(), now));
        self.trim(&mut map);
        log
    }

    /// Forgets the least recently used logs when all of them together hold
    /// more than the total budget, down to 90% of it, so that the sort is
    /// paid once per tenth of the budget. A log with watchers is kept.
    fn trim(&self, map: &mut HashMap<String, (Arc<Log>, u64)>) {
        let budget = self.limits.total_bytes as u64;
        let total = self.total.load(Ordering::Relaxed);
        if total <= budget {
            return;
        }
        let mut by_age: Vec<(u64, String)> = map
            .iter()
            .filter(|(_, (l, _))| l.watchers() == 0)
            .map(|(k, (_, used))| (*used, k.clone()))
            .collect();
        by_age.sort_unstable();
        let goal = budget - budget / 10;
        for (_, key) in by_age {
            if self.total.load(Ordering::Relaxed) <= goal {
                break;
            }
            if let Some((log, _)) = map.remove(&key) {
                log.uncount();
            }
        }
    }

    /// Bytes all logs hold now, their overheads included.
    pub fn bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Conversations with a log now.
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when no conversation has a log.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use proto::mesh::{EventChunk, EventMessage};

    use super::*;

    fn chunk(text: &str) -> Kind {
        Kind::Chunk(EventChunk {
            id: "m".into(),
            data: text.to_owned().into(),
            worker: "w".into(),
        })
    }

    fn seqs(events: &[Arc<ConversationEvent>]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| e.position.as_ref().map(|p| p.seq))
            .collect()
    }

    #[test]
    fn a_watcher_resumes_after_its_last_position_with_nothing_missed_or_repeated() {
        let log = Log::new("k", "w", LogLimits::default(), Arc::default());
        log.append(Kind::Message(EventMessage::default()));
        let p2 = log.append(chunk("a"));
        log.append(chunk("b"));
        let sub = log.subscribe(Some(&p2));
        assert_eq!(seqs(&sub.replay), [3]);
        let mut live = sub.live;
        let p4 = log.append(chunk("c"));
        assert_eq!(live.try_recv().unwrap().position.as_ref(), Some(&p4));
    }

    #[test]
    fn a_position_the_buffer_no_longer_holds_gets_a_gap_first() {
        let limits = LogLimits {
            events: 3,
            ..LogLimits::default()
        };
        let log = Log::new("k", "w", limits, Arc::default());
        let first = log.append(chunk("1"));
        for i in 2..=6 {
            log.append(chunk(&i.to_string()));
        }
        let sub = log.subscribe(Some(&first));
        let Some(Kind::Gap(gap)) = &sub.replay[0].event else {
            panic!("{:?}", sub.replay)
        };
        assert_eq!((gap.reason.as_str(), gap.resume.as_ref().unwrap().seq), ("evicted", 4));
        assert_eq!(seqs(&sub.replay[1..]), [4, 5, 6]);
    }

    #[test]
    fn a_position_of_another_epoch_gets_a_gap_and_every_event_of_this_one() {
        let log = Log::new("k", "w2", LogLimits::default(), Arc::default());
        log.append(chunk("x"));
        let old = Position {
            epoch: "w1@1".into(),
            seq: 40,
        };
        let sub = log.subscribe(Some(&old));
        assert!(matches!(&sub.replay[0].event, Some(Kind::Gap(g)) if g.reason == "epoch"));
        assert_eq!(seqs(&sub.replay[1..]), [1]);
    }

    #[test]
    fn the_least_recently_used_conversation_is_forgotten_past_the_total_budget() {
        let logs = Logs::new(
            "w",
            LogLimits {
                total_bytes: 1000,
                ..LogLimits::default()
            },
        );
        for k in 0..20 {
            logs.get(&format!("c{k}")).append(chunk(&"x".repeat(100)));
        }
        assert!(logs.len() < 20, "{}", logs.len());
        // The newest is kept.
        assert_eq!(logs.get("c19").subscribe(None).from.map(|p| p.seq), Some(1));
    }

    #[test]
    fn a_hundred_thousand_small_conversations_stay_within_the_total_budget() {
        let budget = 1 << 20;
        let logs = Logs::new(
            "w",
            LogLimits {
                total_bytes: budget,
                ..LogLimits::default()
            },
        );
        let mut watched = logs.get("watched").subscribe(None).into_stream();
        for k in 0..100_000 {
            logs.get(&format!("conversation-{k}")).append(chunk("hi"));
            assert!(logs.bytes() <= budget as u64 + 1024, "{k}: {}", logs.bytes());
        }
        assert!((1000..100_000).contains(&logs.len()), "{}", logs.len());
        // The running total is the sum of what the logs held.
        let map = logs.map.lock().unwrap();
        assert_eq!(logs.bytes(), map.values().map(|(l, _)| l.held_bytes()).sum::<u64>());
        // A watched conversation is never forgotten, and hears what follows.
        let log = map.get("watched").expect("kept while watched").0.clone();
        drop(map);
        log.append(chunk("still here"));
        let e = tokio_stream::StreamExt::next(&mut watched);
        let e = futures_lite_poll(e).expect("the event");
        assert!(matches!(e.event, Some(Kind::Chunk(_))));
    }

    /// Polls a future once (the event is already there).
    fn futures_lite_poll<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("not ready"),
        }
    }
}
