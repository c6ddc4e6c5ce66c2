//! `GET /v1/ws`: the WebSocket edge.
//!
//! One task per connection reads the client's frames and writes what is
//! queued for it; every message sent and every conversation watched runs
//! in a task of its own that queues frames for the connection. The queue is
//! counted in bytes: a client that does not read is closed ("slow reader")
//! before the gateway holds more than [`Limits::send_queue_bytes`] for it.
//!
//! A message keeps being processed when its connection closes, for the
//! resume grace, which travels with the message to its owner: a client that
//! reconnects (to this gateway or any other, even when this one died) and
//! watches the conversation from its last position gets the rest of the
//! reply. After the grace, if nobody watches, the owner cancels it.
//!
//! [`Limits::send_queue_bytes`]: crate::Limits::send_queue_bytes

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use proto::bytes::Bytes;
use proto::edge::{self, ErrorCode, client_frame, server_frame};
use proto::rules;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio::task::AbortHandle;

use crate::Shared;
use crate::auth::Credential;
use crate::frames::{self, Encoded, Form};
use crate::http::{TokenQuery, bearer, refuse_connection};
use crate::limits::Permit;
use crate::message::{EdgeError, Outbound, Step, new_id};
use crate::watch::{Item, Subscription};

/// The protocol versions this gateway speaks.
pub const VERSIONS: [u32; 1] = [1];

/// WebSocket close codes.
const POLICY: u16 = 1008;
const GOING_AWAY: u16 = 1001;
const TOO_BIG: u16 = 1009;

pub(crate) async fn upgrade(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    ws: WebSocketUpgrade,
) -> Response {
    let limits = &s.config.limits;
    // Small buffers: an idle connection should cost little. tungstenite
    // grows them for larger frames, up to the frame limit.
    let ws = ws
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(limits.send_queue_bytes + limits.max_frame_bytes)
        .max_message_size(limits.max_frame_bytes)
        .max_frame_size(limits.max_frame_bytes);
    let token = bearer(&headers).or(q.access_token.as_deref());
    let cred = match s.config.auth.authenticate(token) {
        Ok(c) => c,
        Err(e) => {
            s.count(|c| &c.auth_failures);
            // Accepted and closed at once, so that browsers (which cannot
            // read a refused upgrade) see the reason.
            let reason = e.to_string();
            return ws.on_upgrade(move |mut socket| async move {
                let _ = socket.send(close(POLICY, &reason)).await;
            });
        }
    };
    if let Err(why) = s.ready() {
        let e = EdgeError::new(ErrorCode::Unavailable, format!("the gateway is not ready: {why}"));
        return crate::http::error_response(&e);
    }
    let permit = match s.gate.admit(&cred.name) {
        Ok(p) => p,
        Err(refused) => {
            s.count(|c| &c.connections_refused);
            return refuse_connection(&refused);
        }
    };
    s.count(|c| &c.connections);
    ws.on_upgrade(move |socket| run(s, cred, permit, socket))
        .into_response()
}

fn close(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(&reason[..end]),
    }))
}

/// Frames queued for one connection, counted in bytes.
#[derive(Clone)]
pub(crate) struct Outbox {
    tx: mpsc::UnboundedSender<Message>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    slow: Arc<Notify>,
    shared: Arc<Shared>,
}

impl Outbox {
    /// Queues a frame; false when the connection is gone or is being
    /// closed as a slow reader.
    fn push(&self, form: Form, frame: server_frame::Frame) -> bool {
        let frame = edge::ServerFrame { frame: Some(frame) };
        self.push_message(message(frames::encode(form, &frame)))
    }

    fn push_message(&self, m: Message) -> bool {
        if self.tx.is_closed() {
            return false;
        }
        let len = message_len(&m);
        let queued = self.queued.fetch_add(len, Ordering::Relaxed) + len;
        if queued > self.limit {
            self.slow.notify_one();
            return false;
        }
        self.shared.count(|c| &c.frames_out);
        self.tx.send(m).is_ok()
    }

    fn error(&self, form: Form, e: &EdgeError, key: &str, client_id: &str, message_id: &str) -> bool {
        self.push(form, server_frame::Frame::Error(e.frame(key, client_id, message_id)))
    }
}

fn message(e: Encoded) -> Message {
    match e {
        Encoded::Text(t) => Message::Text(Utf8Bytes::from(t)),
        Encoded::Binary(b) => Message::Binary(Bytes::from(b)),
    }
}

fn message_len(m: &Message) -> usize {
    match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) => b.len(),
        _ => 0,
    }
}

/// A message sent on this connection that has not ended.
#[derive(Debug, Default)]
struct Flight {
    /// The worker answering, once a chunk named it.
    worker: Option<String>,
    /// The routing task, until an owner took the message: aborting it stops
    /// the message before it reaches anyone.
    routing: Option<AbortHandle>,
}

type Flights = Arc<Mutex<HashMap<String, Flight>>>;

fn lock(f: &Flights) -> std::sync::MutexGuard<'_, HashMap<String, Flight>> {
    f.lock().unwrap_or_else(|e| e.into_inner())
}

struct Conn {
    s: Arc<Shared>,
    cred: Arc<Credential>,
    out: Outbox,
    flights: Flights,
    watches: HashMap<String, AbortHandle>,
}

async fn run(s: Arc<Shared>, cred: Arc<Credential>, permit: Permit, mut socket: WebSocket) {
    let _permit = permit;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let out = Outbox {
        tx,
        queued: Arc::default(),
        limit: s.config.limits.send_queue_bytes,
        slow: Arc::default(),
        shared: s.clone(),
    };
    let mut conn = Conn {
        s: s.clone(),
        cred,
        out: out.clone(),
        flights: Arc::default(),
        watches: HashMap::new(),
    };
    let beat = s.config.heartbeat;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    let mut unanswered = 0u32;
    let mut stopping = s.stopping.clone();
    let mut drain_until: Option<tokio::time::Instant> = None;
    let slow_reason = || {
        format!(
            "slow reader: more than {} bytes queued unread",
            s.config.limits.send_queue_bytes
        )
    };
    let closing: Option<(u16, String)> = 'conn: loop {
        tokio::select! {
            biased;
            () = out.slow.notified() => {
                s.count(|c| &c.slow_readers);
                break Some((POLICY, slow_reason()));
            }
            m = rx.recv() => {
                let Some(m) = m else { break None };
                let len = message_len(&m);
                tokio::select! {
                    r = socket.send(m) => if r.is_err() { break None },
                    () = out.slow.notified() => {
                        s.count(|c| &c.slow_readers);
                        break 'conn Some((POLICY, slow_reason()));
                    }
                }
                out.queued.fetch_sub(len, Ordering::Relaxed);
            }
            m = socket.recv() => match m {
                None | Some(Ok(Message::Close(_))) => break None,
                Some(Err(e)) => {
                    // The one read error a client can cause on purpose: a
                    // message over the limit (tungstenite's "Message too
                    // long"). Anything else is a broken connection.
                    if e.to_string().contains("too long") {
                        s.count(|c| &c.too_large);
                        let max = s.config.limits.max_frame_bytes;
                        break Some((TOO_BIG, format!("message too big: the limit is {max} bytes")));
                    }
                    break None;
                }
                Some(Ok(Message::Text(t))) => conn.frame(Form::Json, t.as_bytes()),
                Some(Ok(Message::Binary(b))) => conn.frame(Form::Proto, &b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => unanswered = 0,
            },
            _ = heartbeat.tick() => {
                if unanswered >= 2 {
                    // The client is gone; nobody reads a close frame.
                    break None;
                }
                unanswered += 1;
                if socket.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            r = stopping.changed(), if drain_until.is_none() => {
                if r.is_err() || *stopping.borrow() {
                    drain_until = Some(tokio::time::Instant::now() + s.config.drain_timeout);
                }
            }
            () = sleep_until(drain_until) => {
                break Some((GOING_AWAY, "going away: the gateway is shutting down; reconnect".into()));
            }
        }
        if drain_until.is_some() && lock(&conn.flights).is_empty() {
            break Some((GOING_AWAY, "going away: the gateway is shutting down; reconnect".into()));
        }
    };
    for (_, w) in conn.watches.drain() {
        w.abort();
    }
    // Frames still queued are dropped with the channel; the message tasks
    // see it closed and keep their replies for the resume grace.
    drop(rx);
    if let Some((code, reason)) = closing {
        // The closing handshake: the close frame, then what the client still
        // sends is read and dropped until its own close (or a second), so
        // that closing the socket with unread bytes does not reset the
        // connection and lose the close frame.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            if socket.send(close(code, &reason)).await.is_ok() {
                while let Some(Ok(m)) = socket.recv().await {
                    if matches!(m, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Conn {
    fn frame(&mut self, form: Form, bytes: &[u8]) {
        self.s.count(|c| &c.frames_in);
        let frame = match frames::decode(form, bytes) {
            Ok(f) => f,
            Err(bad) => {
                self.s.count(|c| &c.bad_frames);
                let e = EdgeError::new(ErrorCode::BadFrame, bad.0);
                self.out.error(form, &e, "", "", "");
                return;
            }
        };
        match frame {
            client_frame::Frame::Hello(h) => self.hello(form, &h),
            client_frame::Frame::Send(m) => self.send(form, m),
            client_frame::Frame::Cancel(c) => self.cancel(form, c),
            client_frame::Frame::Watch(w) => self.watch(form, w),
            client_frame::Frame::Unwatch(u) => {
                if let Some(w) = self.watches.remove(&u.conversation) {
                    w.abort();
                }
            }
            client_frame::Frame::Ping(p) => {
                self.out
                    .push(form, server_frame::Frame::Pong(edge::Pong { nonce: p.nonce }));
            }
        }
    }

    fn hello(&self, form: Form, h: &edge::Hello) {
        let version = if h.versions.is_empty() {
            Some(1)
        } else {
            VERSIONS.iter().rev().copied().find(|v| h.versions.contains(v))
        };
        let Some(version) = version else {
            let e = EdgeError::new(
                ErrorCode::UnsupportedVersion,
                format!(
                    "this gateway speaks protocol versions {VERSIONS:?}; the client speaks {:?}",
                    h.versions
                ),
            );
            self.out.error(form, &e, "", "", "");
            return;
        };
        let l = &self.s.config.limits;
        let welcome = edge::Welcome {
            version,
            gateway: self.s.name.clone(),
            limits: Some(edge::Limits {
                max_frame_bytes: l.max_frame_bytes as u32,
                max_text_bytes: l.max_text_bytes as u32,
                max_in_flight: l.max_in_flight as u32,
                messages_per_second: l.messages_per_second,
            }),
        };
        self.out.push(form, server_frame::Frame::Welcome(welcome));
    }

    fn send(&mut self, form: Form, m: edge::Send) {
        let refuse = |e: EdgeError| {
            self.s.count(|c| &c.replies_failed);
            self.out.error(form, &e, &m.conversation, &m.client_id, "");
        };
        if *self.s.stopping.borrow() {
            return refuse(EdgeError::new(
                ErrorCode::Unavailable,
                "the gateway is shutting down; reconnect to another one",
            ));
        }
        let max = self.s.config.limits.max_in_flight;
        let mut flights = lock(&self.flights);
        if flights.len() >= max {
            self.s.count(|c| &c.too_many_in_flight);
            drop(flights);
            return refuse(EdgeError::new(
                ErrorCode::TooManyInFlight,
                format!("{max} messages are in flight on this connection; wait for a reply to end"),
            ));
        }
        let id = new_id();
        flights.insert(id.clone(), Flight::default());
        drop(flights);
        self.s.in_flight.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(deliver(
            self.s.clone(),
            self.cred.clone(),
            self.out.clone(),
            self.flights.clone(),
            form,
            m,
            id.clone(),
        ));
        if let Some(f) = lock(&self.flights).get_mut(&id) {
            f.routing = Some(task.abort_handle());
        }
    }

    fn cancel(&self, form: Form, c: edge::Cancel) {
        self.s.count(|c| &c.cancels);
        if let Err(why) = self.cred.may_send(&c.conversation) {
            let e = EdgeError::new(ErrorCode::PermissionDenied, why);
            self.out.error(form, &e, &c.conversation, "", &c.message_id);
            return;
        }
        let (routing, worker) = match lock(&self.flights).get_mut(&c.message_id) {
            Some(f) => (f.routing.take(), f.worker.clone()),
            None => (None, None),
        };
        if let Some(task) = routing {
            // Not taken by an owner yet: stop routing it. (The owner is told
            // too, in case it took the message this very moment.)
            task.abort();
            let e = EdgeError::new(ErrorCode::Cancelled, "cancelled before an owner took it");
            self.out.error(form, &e, &c.conversation, "", &c.message_id);
        }
        let (router, out) = (self.s.router.clone(), self.out.clone());
        tokio::spawn(async move {
            match router.cancel(&c.conversation, &c.message_id, worker.as_deref()).await {
                Ok(_) => {}
                Err(status) => {
                    let e = EdgeError::from_code(status.code(), status.message());
                    out.error(form, &e, &c.conversation, "", &c.message_id);
                }
            }
        });
    }

    fn watch(&mut self, form: Form, w: edge::Watch) {
        let key = w.conversation.clone();
        let refuse = |e: EdgeError| {
            self.out.error(form, &e, &key, "", "");
        };
        if let Err(e) = rules::key("conversation", &key) {
            return refuse(EdgeError::new(ErrorCode::InvalidArgument, e.to_string()));
        }
        if let Err(why) = self.cred.may_watch(&key) {
            return refuse(EdgeError::new(ErrorCode::PermissionDenied, why));
        }
        let max = self.s.config.limits.max_watches;
        if let Some(old) = self.watches.remove(&key) {
            old.abort();
        } else if self.watches.len() >= max {
            return refuse(EdgeError::new(
                ErrorCode::TooManyInFlight,
                format!("this connection watches {max} conversations, the most it may"),
            ));
        }
        self.s.count(|c| &c.watches);
        let sub = self.s.hubs.subscribe(&key, w.after.clone());
        let task = tokio::spawn(watcher(
            self.s.clone(),
            self.out.clone(),
            form,
            key.clone(),
            w.after,
            sub,
        ));
        self.watches.insert(key, task.abort_handle());
    }
}

/// Routes one message and queues its reply's frames until the reply ends or
/// the connection goes.
async fn deliver(
    s: Arc<Shared>,
    cred: Arc<Credential>,
    out: Outbox,
    flights: Flights,
    form: Form,
    m: edge::Send,
    id: String,
) {
    struct Ended(Arc<Shared>, Flights, String);
    impl Drop for Ended {
        fn drop(&mut self) {
            lock(&self.1).remove(&self.2);
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _ended = Ended(s.clone(), flights.clone(), id.clone());
    let (key, client_id) = (m.conversation, m.client_id);
    let outbound = Outbound {
        key: key.clone(),
        client_id: client_id.clone(),
        payload: Bytes::from(m.text),
        format: "",
        model: m.model,
        timeout_ms: u64::from(m.timeout_ms),
        resume_grace: s.config.resume_grace,
        traceparent: m.traceparent,
        via: "websocket",
    };
    let mut steps = match s.send(&cred, outbound, &id).await {
        Ok(steps) => steps,
        Err(e) => {
            s.count(|c| &c.replies_failed);
            out.error(form, &e, &key, &client_id, &id);
            return;
        }
    };
    if let Some(f) = lock(&flights).get_mut(&id) {
        f.routing = None;
    }
    let accepted = edge::Accepted {
        conversation: key.clone(),
        client_id: client_id.clone(),
        message_id: id.clone(),
    };
    let mut listening = out.push(form, server_frame::Frame::Accepted(accepted));
    while listening {
        let Some(step) = steps.next().await else { return };
        let end = step.is_end();
        let frame = match step {
            Step::Chunk { text, worker, position } => {
                if let Some(f) = lock(&flights).get_mut(&id)
                    && f.worker.is_none()
                {
                    f.worker = Some(worker.clone());
                }
                server_frame::Frame::Chunk(edge::Chunk {
                    conversation: key.clone(),
                    client_id: client_id.clone(),
                    message_id: id.clone(),
                    text,
                    worker,
                    position,
                })
            }
            Step::Done {
                worker,
                replayed,
                usage,
                position,
            } => {
                s.count(|c| &c.replies_done);
                server_frame::Frame::Done(edge::Done {
                    conversation: key.clone(),
                    client_id: client_id.clone(),
                    message_id: id.clone(),
                    worker,
                    replayed,
                    usage,
                    position,
                })
            }
            Step::Failed(e) => {
                s.count(|c| &c.replies_failed);
                server_frame::Frame::Error(e.frame(&key, &client_id, &id))
            }
        };
        listening = out.push(form, frame);
        if end {
            return;
        }
    }
    // The connection is gone. Dropping the reply stream tells the owner;
    // the owner goes on for the resume grace the envelope carries (a client
    // that comes back, here or on another gateway, watches the conversation
    // to get the rest), and cancels it after if nobody watches.
    s.count(|c| &c.orphaned);
}

/// An event frame encoded once per form, shared by every watcher of a hub.
#[derive(Debug, Default)]
pub(crate) struct Encodings {
    json: OnceLock<Message>,
    proto: OnceLock<Message>,
}

impl Encodings {
    fn get(&self, form: Form, event: &edge::Event) -> Message {
        let cell = match form {
            Form::Json => &self.json,
            Form::Proto => &self.proto,
        };
        cell.get_or_init(|| {
            let frame = edge::ServerFrame {
                frame: Some(server_frame::Frame::Event(event.clone())),
            };
            message(frames::encode(form, &frame))
        })
        .clone()
    }
}

/// Queues a watched conversation's events for one connection, in order.
async fn watcher(
    s: Arc<Shared>,
    out: Outbox,
    form: Form,
    key: String,
    mut last: Option<edge::Position>,
    mut sub: Subscription,
) {
    let watching = |from: Option<edge::Position>| {
        server_frame::Frame::Watching(edge::Watching {
            conversation: key.clone(),
            from,
        })
    };
    loop {
        if let Some(from) = sub.watching.take()
            && !out.push(form, watching(from))
        {
            return;
        }
        for e in std::mem::take(&mut sub.replay) {
            if !send_event(&out, form, &e, &mut last) {
                return;
            }
        }
        loop {
            match sub.live.recv().await {
                Ok(Item::Watching(from)) => {
                    if !out.push(form, watching(from)) {
                        return;
                    }
                }
                Ok(Item::Event(e)) => {
                    if !send_event(&out, form, &e, &mut last) {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
        // Fell behind the hub: start again from the last event sent (the
        // hub's buffer, or the owner, has what followed).
        s.count(|c| &c.watch_lagged);
        sub = s.hubs.subscribe(&key, last.clone());
    }
}

/// Queues one event unless the watcher has had it (the replay and the live
/// events may overlap); false when the connection is gone.
fn send_event(out: &Outbox, form: Form, e: &crate::watch::HubEvent, last: &mut Option<edge::Position>) -> bool {
    if let Some(p) = &e.event.position {
        if last.as_ref().is_some_and(|l| l.epoch == p.epoch && l.seq >= p.seq) {
            return true;
        }
        *last = Some(p.clone());
    }
    out.push_message(e.encoded.get(form, &e.event))
}
