//! Watching conversations: one subscription per watched conversation at the
//! conversation's owner, shared by every client of this gateway that
//! watches it (a *hub*), with a small buffer for clients that resume here.
//!
//! ```text
//!  owner (Log: numbers events) ──Watch RPC──> hub (this gateway) ──broadcast──> each watching connection
//!        ▲                                     │ keeps the last events, and its position
//!        └── resubscribes from its last position when the stream breaks or
//!            when the ring names another owner for the key
//! ```
//!
//! The owner stays the one place that orders a conversation: a hub only
//! relays what the owner numbered. When the ring changes, the hub sees the
//! new owner in its own routing table and subscribes there from the last
//! position it relayed; the new owner numbers in a new epoch, so its answer
//! begins with a gap event (`epoch`), and with a bridge configured the hub
//! follows the gap with the conversation's stored messages and replies
//! (`stored` events) since the old epoch began. A client resuming with a
//! position this hub does not hold gets a private subscription from that
//! position instead, so every client is served from exactly where it left
//! off, or told of the gap.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use node::client::AdminClient;
use node::mesh::Router;
use proto::api::{History, MessageKind};
use proto::edge::{self, event};
use proto::mesh::ConversationEvent;
use proto::mesh::conversation_event::Event as MeshKind;
use proto::text::Utf8Chunks;
use tokio::sync::broadcast;
use tokio::task::AbortHandle;
use tokio_stream::StreamExt as _;
use tonic::Code;

use crate::message::{EdgeError, position, usage};

/// What a hub hands its watchers.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// The hub (re)subscribed at the owner; events continue after `from`.
    Watching(Option<edge::Position>),
    /// One event.
    Event(Arc<HubEvent>),
}

/// An event with its encodings, made once for all the hub's watchers.
#[derive(Debug)]
pub(crate) struct HubEvent {
    pub(crate) event: edge::Event,
    pub(crate) encoded: crate::ws::Encodings,
}

impl HubEvent {
    fn new(event: edge::Event) -> Arc<Self> {
        Arc::new(Self {
            event,
            encoded: Default::default(),
        })
    }
}

/// Events a watcher may fall behind its hub before it resubscribes.
const HUB_BACKLOG: usize = 1024;

/// The hubs of this gateway, one per watched conversation.
#[derive(Debug)]
pub(crate) struct Hubs {
    router: Router,
    history: Option<AdminClient>,
    buffer: usize,
    /// A plain mutex: held to look up, insert or remove.
    map: Mutex<HashMap<String, Weak<Hub>>>,
}

/// One watched conversation's subscription at its owner.
#[derive(Debug)]
pub(crate) struct Hub {
    key: String,
    state: Mutex<State>,
    tx: broadcast::Sender<Item>,
    task: Mutex<Option<AbortHandle>>,
    hubs: Weak<Hubs>,
    shared: bool,
}

#[derive(Debug, Default)]
struct State {
    /// The newest events relayed, oldest first.
    buffer: VecDeque<Arc<HubEvent>>,
    /// The last position relayed, or the one the owner said events
    /// continue from.
    last: Option<edge::Position>,
    /// Subscribed at an owner now.
    connected: bool,
}

/// A watcher's start: what to send first, then the live items.
#[derive(Debug)]
pub(crate) struct Subscription {
    /// Kept alive while the watcher is.
    pub(crate) hub: Arc<Hub>,
    /// `Some` when the hub already knows where events continue from.
    pub(crate) watching: Option<Option<edge::Position>>,
    /// Buffered events after the watcher's position.
    pub(crate) replay: Vec<Arc<HubEvent>>,
    pub(crate) live: broadcast::Receiver<Item>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|e| e.into_inner()).take() {
            task.abort();
        }
        if self.shared
            && let Some(hubs) = self.hubs.upgrade()
        {
            let mut map = hubs.lock();
            if map.get(&self.key).is_some_and(|w| w.strong_count() == 0) {
                map.remove(&self.key);
            }
        }
    }
}

impl Hubs {
    pub(crate) fn new(router: Router, history: Option<String>, buffer: usize) -> Arc<Self> {
        Arc::new(Self {
            router,
            history: history.map(|addr| AdminClient::new(addr).with_timeout(Duration::from_secs(5))),
            buffer: buffer.max(1),
            map: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Weak<Hub>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Conversations watched through this gateway now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Starts watching `key` after `after` (absent: from now on).
    pub(crate) fn subscribe(self: &Arc<Self>, key: &str, after: Option<edge::Position>) -> Subscription {
        // The map's lock is not held while a hub may be dropped: a hub's
        // drop takes it.
        let existing = self.lock().get(key).and_then(Weak::upgrade);
        if let Some(hub) = existing {
            let st = hub.lock();
            let sub = match &after {
                None => Some((st.connected.then(|| st.last.clone()), Vec::new())),
                Some(a) if st.connected && st.holds(a) => {
                    let replay = st
                        .buffer
                        .iter()
                        .filter(|e| e.event.position.as_ref().is_some_and(|p| p.seq > a.seq))
                        .cloned()
                        .collect();
                    Some((Some(st.last.clone()), replay))
                }
                // Not held here: a private subscription from there.
                Some(_) => None,
            };
            let live = hub.tx.subscribe();
            drop(st);
            return match sub {
                Some((watching, replay)) => Subscription {
                    watching,
                    replay,
                    live,
                    hub,
                },
                None => self.start(key, after, false),
            };
        }
        let sub = self.start(key, after, true);
        self.lock().insert(key.to_owned(), Arc::downgrade(&sub.hub));
        sub
    }

    fn start(self: &Arc<Self>, key: &str, after: Option<edge::Position>, shared: bool) -> Subscription {
        let (tx, live) = broadcast::channel(HUB_BACKLOG);
        let hub = Arc::new(Hub {
            key: key.to_owned(),
            state: Mutex::new(State::default()),
            tx,
            task: Mutex::new(None),
            hubs: Arc::downgrade(self),
            shared,
        });
        let task = tokio::spawn(upstream(Arc::downgrade(&hub), self.clone(), after));
        *hub.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task.abort_handle());
        Subscription {
            hub,
            watching: None,
            replay: Vec::new(),
            live,
        }
    }
}

impl State {
    /// Can the buffer serve a watcher whose last event was `a`?
    fn holds(&self, a: &edge::Position) -> bool {
        let Some(last) = &self.last else { return false };
        if last.epoch != a.epoch || a.seq > last.seq {
            return false;
        }
        let first = self
            .buffer
            .iter()
            .find_map(|e| e.event.position.as_ref().filter(|p| p.epoch == a.epoch).map(|p| p.seq));
        a.seq == last.seq || first.is_some_and(|f| a.seq + 1 >= f)
    }
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Relays one item: kept (events), and sent to every watcher, under the
    /// lock so that a new watcher's replay and live items neither overlap
    /// nor leave a hole.
    fn relay(&self, item: Item, keep: usize) {
        let mut st = self.lock();
        match &item {
            Item::Watching(from) => {
                st.connected = true;
                if from.is_some() {
                    st.last = from.clone();
                }
            }
            Item::Event(e) => {
                if let Some(p) = &e.event.position {
                    st.last = Some(p.clone());
                    st.buffer.push_back(e.clone());
                    while st.buffer.len() > keep {
                        st.buffer.pop_front();
                    }
                } else if let Some(event::Event::Gap(g)) = &e.event.event {
                    // The events before the gap are of another epoch.
                    st.buffer.clear();
                    if let Some(r) = &g.resume {
                        st.last = Some(edge::Position {
                            epoch: r.epoch.clone(),
                            seq: r.seq.saturating_sub(1),
                        });
                    }
                }
            }
        }
        let _ = self.tx.send(item);
    }

    fn disconnected(&self) {
        self.lock().connected = false;
    }
}

/// The hub's subscription at the owner: subscribes, relays, and
/// resubscribes from the last position when the stream breaks or the ring
/// names another owner. Ends when the hub is dropped (it is aborted).
async fn upstream(hub: Weak<Hub>, hubs: Arc<Hubs>, mut after: Option<edge::Position>) {
    let Some(key) = hub.upgrade().map(|h| h.key.clone()) else {
        return;
    };
    let router = &hubs.router;
    let mut tables = router.tables();
    let mut backoff = Duration::from_millis(50);
    loop {
        let watching = router.watch(&key, after.clone().map(mesh_position)).await;
        let mut w = match watching {
            Ok(w) => w,
            Err(status) => {
                tracing::debug!(%key, %status, "watch: subscribing at the owner failed; retrying");
                if matches!(status.code(), Code::InvalidArgument) {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    r = tables.changed() => if r.is_err() { return },
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        let from = position(w.from.clone());
        if after.is_none() {
            // Resubscribing after a break asks for what followed this.
            after = from.clone().or_else(|| Some(edge::Position::default()));
        }
        let Some(h) = hub.upgrade() else { return };
        h.relay(Item::Watching(from), hubs.buffer);
        drop(h);
        let mut texts: HashMap<String, Utf8Chunks> = HashMap::new();
        loop {
            tokio::select! {
                e = w.events.next() => {
                    let Some(Ok(e)) = e else { break };
                    let gap = matches!(e.event, Some(MeshKind::Gap(_)));
                    let Some(event) = edge_event(e, &mut texts) else { continue };
                    if let Some(p) = &event.position {
                        after = Some(p.clone());
                    } else if let Some(event::Event::Gap(g)) = &event.event
                        && let Some(r) = &g.resume
                    {
                        after = Some(edge::Position { epoch: r.epoch.clone(), seq: r.seq.saturating_sub(1) });
                    }
                    let stored_since = match &event.event {
                        Some(event::Event::Gap(g)) if gap => Some(epoch_start(g.after.as_ref())),
                        _ => None,
                    };
                    let Some(h) = hub.upgrade() else { return };
                    h.relay(Item::Event(HubEvent::new(event)), hubs.buffer);
                    drop(h);
                    if let (Some(since), Some(history)) = (stored_since, &hubs.history) {
                        for stored in stored_events(history, &key, since).await {
                            let Some(h) = hub.upgrade() else { return };
                            h.relay(Item::Event(HubEvent::new(stored)), hubs.buffer);
                        }
                    }
                }
                r = tables.changed() => {
                    if r.is_err() {
                        return;
                    }
                    if router.owner(&key).as_deref() != Some(w.owner.as_str()) {
                        break;
                    }
                }
            }
        }
        if let Some(h) = hub.upgrade() {
            h.disconnected();
        }
        // A short pause so that a failing owner is not hammered.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn mesh_position(p: edge::Position) -> proto::mesh::Position {
    proto::mesh::Position {
        epoch: p.epoch,
        seq: p.seq,
    }
}

/// The unix millisecond an epoch (`owner@ms`) began; 0 when unknown.
fn epoch_start(p: Option<&edge::Position>) -> u64 {
    p.and_then(|p| p.epoch.rsplit_once('@'))
        .and_then(|(_, ms)| ms.parse().ok())
        .unwrap_or(0)
}

/// The text of a payload: UTF-8 text, or the last user message of a chat.
pub(crate) fn payload_text(format: &str, payload: &[u8]) -> String {
    if format == "chat"
        && let Ok(chat) = <proto::mesh::ChatRequest as proto::Message>::decode(payload)
    {
        return chat
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.content.clone())
            .unwrap_or_default();
    }
    String::from_utf8_lossy(payload).into_owned()
}

/// A mesh event as clients see it. Reply text is joined across chunks
/// that split a character; `None` for a chunk that holds only part of one.
fn edge_event(e: ConversationEvent, texts: &mut HashMap<String, Utf8Chunks>) -> Option<edge::Event> {
    let kind = match e.event? {
        MeshKind::Message(m) => event::Event::Message(edge::MessageEvent {
            text: payload_text(&m.format, &m.payload),
            message_id: m.id,
            source: m.source,
            origin: m.origin,
        }),
        MeshKind::Chunk(c) => {
            let text = texts.entry(c.id.clone()).or_default().push(&c.data);
            if text.is_empty() {
                return None;
            }
            event::Event::Chunk(edge::ChunkEvent {
                message_id: c.id,
                text,
                worker: c.worker,
            })
        }
        MeshKind::End(end) => {
            texts.remove(&end.id);
            let (error, error_message) = match end.error {
                Some(err) => {
                    let e = EdgeError::from_code(Code::from(err.code as i32), err.message);
                    (e.code as i32, e.message)
                }
                None => (0, String::new()),
            };
            event::Event::End(edge::EndEvent {
                message_id: end.id,
                worker: end.worker,
                error,
                error_message,
                usage: usage(end.usage),
            })
        }
        MeshKind::Gap(g) => {
            texts.clear();
            event::Event::Gap(edge::Gap {
                after: position(g.after),
                resume: position(g.resume),
                reason: g.reason,
            })
        }
    };
    Some(edge::Event {
        conversation: e.key,
        position: position(e.position),
        event: Some(kind),
    })
}

/// Records the bridge stored for `key` since `since_ms` (every one when 0,
/// up to the newest thousand), as `stored` events. Best effort: a bridge
/// that does not answer adds nothing (the gap was announced).
async fn stored_events(history: &AdminClient, key: &str, since_ms: u64) -> Vec<edge::Event> {
    let path_key = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC).to_string();
    let mut out = VecDeque::new();
    let mut after: Option<String> = None;
    // Pages of the largest size, oldest first; only the newest are kept.
    for _ in 0..50 {
        let mut path = format!("/v1/conversations/{path_key}/messages?limit=1000");
        if let Some(a) = &after {
            path.push_str("&after=");
            path.push_str(&percent_encoding::utf8_percent_encode(a, percent_encoding::NON_ALPHANUMERIC).to_string());
        }
        let page: History = match history.get_json(&path).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(%key, "watch: the bridge's history did not answer: {e}");
                break;
            }
        };
        for m in page.messages {
            if (m.created_unix_ms as u64) < since_ms {
                continue;
            }
            out.push_back(edge::Event {
                conversation: key.to_owned(),
                position: None,
                event: Some(event::Event::Stored(edge::StoredEvent {
                    message_id: m.id,
                    kind: if m.kind == MessageKind::Reply as i32 {
                        "reply"
                    } else {
                        "inbound"
                    }
                    .into(),
                    text: m.payload,
                    worker: m.worker,
                    created_unix_ms: m.created_unix_ms.max(0) as u64,
                })),
            });
            if out.len() > 1000 {
                out.pop_front();
            }
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    out.into()
}
