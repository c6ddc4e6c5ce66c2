//! The OpenAI-compatible chat completions API as a processor: what vLLM,
//! llama.cpp's server, SGLang, TGI, Ollama and OpenAI serve.
//!
//! Each message becomes one `POST {base_url}/chat/completions` with
//! `stream: true`; tokens go to the caller as the server-sent events arrive.
//! A text message (the native protocol) is sent with the conversation's
//! history, kept here per conversation ([`Contexts`]) and laid out so that
//! the prompt's prefix is byte-stable from turn to turn (the backend's prefix
//! cache hits); a `chat` message (the OpenAI-compatible edge) carries its
//! whole message list and is sent as it is.
//!
//! Failures: connect errors, 429 and 5xx are retried with backoff and jitter
//! (honouring `Retry-After`) only while no token has gone to the caller;
//! after the first token a failure ends the reply with an error that says
//! so, and no token is ever sent twice. Timeouts bound the wait for the
//! first token, the gap between tokens and the whole request. Dropping the
//! processor's future (cancel, the caller gone, the deadline) closes the
//! request's connection, which is how the backend learns to free its slot.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes as HBytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use node::{ProcessError, ProcessFuture, Processor, Replies};
use proto::Message as _;
use proto::bytes::Bytes;
use proto::mesh::{ChatMessage, ChatRequest, Envelope, Usage};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::Code;

/// How to reach one backend and how to treat it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Name of the backend, recorded with each reply's usage.
    pub name: String,
    /// The API's base URL, `http://host:port/v1` (https is not supported yet).
    pub base_url: String,
    /// The model to ask for (also what the worker advertises).
    pub model: String,
    /// Sent as `Authorization: Bearer`; `None` sends none.
    pub api_key: Option<String>,
    /// Requests to the backend at once.
    pub max_concurrency: usize,
    /// Messages waiting for a free request slot; more are refused at once
    /// with `RESOURCE_EXHAUSTED` and a retry hint.
    pub max_queue: usize,
    pub first_token_timeout: Duration,
    /// The longest gap between two events of a stream.
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    /// Attempts after the first, before any token went out.
    pub retries: u32,
    /// The first retry's pause; doubled each time, with jitter.
    pub backoff: Duration,
    /// Sent first in every text conversation; empty: none.
    pub system_prompt: String,
    /// Bytes of history kept per conversation (oldest turns dropped first).
    pub context_bytes: usize,
    /// Bytes of history kept in total (least recently used conversations
    /// dropped first).
    pub total_context_bytes: usize,
    /// Tokens per answer; 0: the backend's default.
    pub max_tokens: u32,
    /// The bridge's HTTP address (`host:port`): a conversation that arrives
    /// here with no history (this worker just took over its share of the
    /// ring, or restarted) has its history rebuilt from the bridge's.
    pub history: Option<String>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            name: "openai".into(),
            base_url: "http://127.0.0.1:8081/v1".into(),
            model: "default".into(),
            api_key: None,
            max_concurrency: 4,
            max_queue: 64,
            first_token_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            retries: 3,
            backoff: Duration::from_millis(100),
            system_prompt: String::new(),
            context_bytes: 32 * 1024,
            total_context_bytes: 256 * 1024 * 1024,
            max_tokens: 0,
            history: None,
        }
    }
}

/// The processor. Cheap to share: one per worker.
#[derive(Debug)]
pub struct OpenAi {
    cfg: OpenAiConfig,
    /// Host and port, and the path prefix, of `base_url`.
    authority: String,
    path: String,
    slots: Semaphore,
    waiting: AtomicUsize,
    contexts: Mutex<Contexts>,
    /// Conversations that arrived here with no history (a new owner, or a
    /// restart).
    pub context_misses: AtomicU64,
    /// Of those, the ones whose history was rebuilt from the bridge's.
    pub context_rebuilt: AtomicU64,
    pub retries: AtomicU64,
}

/// Why a base URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(String);

impl OpenAi {
    pub fn new(cfg: OpenAiConfig) -> Result<Self, BadUrl> {
        let rest = cfg
            .base_url
            .strip_prefix("http://")
            .ok_or_else(|| BadUrl(format!("{}: only http:// base URLs are supported", cfg.base_url)))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || !authority.contains(':') {
            return Err(BadUrl(format!("{}: give host:port", cfg.base_url)));
        }
        Ok(Self {
            authority: authority.to_owned(),
            path: path.to_owned(),
            slots: Semaphore::new(cfg.max_concurrency.max(1)),
            waiting: AtomicUsize::new(0),
            contexts: Mutex::new(Contexts::new(cfg.context_bytes, cfg.total_context_bytes)),
            context_misses: AtomicU64::new(0),
            context_rebuilt: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            cfg,
        })
    }

    fn contexts(&self) -> std::sync::MutexGuard<'_, Contexts> {
        self.contexts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The messages to send for `msg`, and for a text message the user
    /// turn to remember once answered.
    async fn messages(&self, msg: &Envelope) -> Result<(Vec<ChatMessage>, Option<String>), ProcessError> {
        if msg.format == "chat" {
            let chat = ChatRequest::decode(msg.payload.clone()).map_err(|e| {
                ProcessError::new(
                    Code::InvalidArgument,
                    format!("a chat message that does not decode: {e}"),
                )
            })?;
            return Ok((chat.messages, None));
        }
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let mut messages = Vec::new();
        if !self.cfg.system_prompt.is_empty() {
            messages.push(ChatMessage {
                role: "system".into(),
                content: self.cfg.system_prompt.clone(),
            });
        }
        let known = self.contexts().history(&msg.key);
        match known {
            Some(h) => messages.extend(h),
            None => {
                self.context_misses.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = self.stored_history(&msg.key, &msg.id).await {
                    self.context_rebuilt.fetch_add(1, Ordering::Relaxed);
                    let mut c = self.contexts();
                    for pair in h.chunks(2) {
                        if let [u, a] = pair {
                            c.remember(&msg.key, u.content.clone(), a.content.clone());
                        }
                    }
                    messages.extend(c.history(&msg.key).unwrap_or_default());
                }
            }
        }
        messages.push(ChatMessage {
            role: "user".into(),
            content: text.clone(),
        });
        Ok((messages, Some(text)))
    }

    fn body(&self, msg: &Envelope, messages: &[ChatMessage]) -> Vec<u8> {
        let mut body = json!({
            "model": if msg.model.is_empty() { &self.cfg.model } else { &msg.model },
            "messages": messages.iter().map(|m| json!({"role": m.role, "content": m.content})).collect::<Vec<_>>(),
            "stream": true,
            "stream_options": {"include_usage": true},
            // llama.cpp's server: keep this prompt's prefix in the slot.
            "cache_prompt": true,
        });
        if msg.format == "chat"
            && let Ok(chat) = ChatRequest::decode(msg.payload.clone())
        {
            if chat.max_tokens > 0 {
                body["max_tokens"] = json!(chat.max_tokens);
            }
            if let Some(t) = chat.temperature {
                body["temperature"] = json!(t);
            }
            if let Some(p) = chat.top_p {
                body["top_p"] = json!(p);
            }
            if !chat.stop.is_empty() {
                body["stop"] = json!(chat.stop);
            }
            if let Some(s) = chat.seed {
                body["seed"] = json!(s);
            }
        } else if self.cfg.max_tokens > 0 {
            body["max_tokens"] = json!(self.cfg.max_tokens);
        }
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// One attempt: the response head, or why it failed and whether to retry.
    async fn request(&self, body: &[u8]) -> Result<Response<Incoming>, Attempt> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .map_err(|e| Attempt::retry(format!("connecting to {}: {e}", self.authority)))?;
        let _ = stream.set_nodelay(true);
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Attempt::retry(format!("HTTP handshake with {}: {e}", self.authority)))?;
        // The connection lives as long as its response body is read;
        // dropping the body (a cancelled message) ends it.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::post(format!("{}/chat/completions", self.path))
            .header("host", &self.authority)
            .header("content-type", "application/json")
            .header("accept", "text/event-stream");
        if let Some(key) = &self.cfg.api_key {
            req = req.header("authorization", format!("Bearer {key}"));
        }
        let req = req
            .body(Full::new(HBytes::copy_from_slice(body)))
            .map_err(|e| Attempt::fail(Code::Internal, format!("building the request: {e}")))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| Attempt::retry(format!("request to {}: {e}", self.authority)))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map(|s| Duration::from_secs_f64(s.clamp(0.0, 60.0)));
        let text = tokio::time::timeout(Duration::from_secs(2), resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| {
                String::from_utf8_lossy(&b.to_bytes())
                    .chars()
                    .take(300)
                    .collect::<String>()
            })
            .unwrap_or_default();
        let why = format!("backend {} answered {status}: {text}", self.cfg.name);
        if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
            Err(Attempt {
                retry: true,
                retry_after,
                code: if status == StatusCode::TOO_MANY_REQUESTS {
                    Code::ResourceExhausted
                } else {
                    Code::Unavailable
                },
                why,
            })
        } else if status == StatusCode::NOT_FOUND {
            Err(Attempt::fail(Code::NotFound, why))
        } else {
            Err(Attempt::fail(Code::FailedPrecondition, why))
        }
    }

    async fn run(&self, msg: &Envelope, out: &mut Replies) -> Result<(), ProcessError> {
        // A bounded queue in front of the backend's request slots.
        if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.cfg.max_queue + self.cfg.max_concurrency {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return Err(ProcessError::new(
                Code::ResourceExhausted,
                format!(
                    "backend {} is overloaded ({} requests running, {} waiting); retry in about a second",
                    self.cfg.name, self.cfg.max_concurrency, self.cfg.max_queue
                ),
            ));
        }
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        let _waiting = Waiting(&self.waiting);
        let _slot = self
            .slots
            .acquire()
            .await
            .map_err(|_| ProcessError::new(Code::Unavailable, "the backend is closed"))?;
        let (messages, user_turn) = self.messages(msg).await?;
        let body = self.body(msg, &messages);
        let started = Instant::now();
        let total_end = started + self.cfg.total_timeout;
        let mut attempt = 0;
        let mut answer = String::new();
        let resp = loop {
            let r = tokio::time::timeout_at(total_end, self.request(&body)).await;
            let e = match r {
                Ok(Ok(resp)) => break resp,
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(ProcessError::new(
                        Code::DeadlineExceeded,
                        "the backend's total timeout passed",
                    ));
                }
            };
            if !e.retry || attempt >= self.cfg.retries {
                let why = if attempt > 0 {
                    format!("{} (after {} attempts)", e.why, attempt + 1)
                } else {
                    e.why
                };
                return Err(ProcessError::new(e.code, why));
            }
            attempt += 1;
            self.retries.fetch_add(1, Ordering::Relaxed);
            let pause = e
                .retry_after
                .unwrap_or_else(|| jittered(self.cfg.backoff * 2u32.pow(attempt - 1)));
            tokio::time::sleep_until((Instant::now() + pause).min(total_end)).await;
        };
        let mut body = resp.into_body();
        let mut events = SseBuffer::default();
        let mut usage = Usage {
            backend: self.cfg.name.clone(),
            model: if msg.model.is_empty() {
                self.cfg.model.clone()
            } else {
                msg.model.clone()
            },
            ..Usage::default()
        };
        let mut first_token: Option<Instant> = None;
        let mut done = false;
        while !done {
            let limit = match first_token {
                None => started + self.cfg.first_token_timeout,
                Some(_) => Instant::now() + self.cfg.idle_timeout,
            }
            .min(total_end);
            let frame = match tokio::time::timeout_at(limit, body.frame()).await {
                Ok(Some(Ok(f))) => f,
                Ok(Some(Err(e))) => return Err(self.broken(&answer, format!("the stream broke: {e}"))),
                Ok(None) => break,
                Err(_) => {
                    let what = if first_token.is_none() {
                        "no first token within the timeout"
                    } else {
                        "the stream stalled"
                    };
                    return Err(self.timed_out(&answer, what));
                }
            };
            let Ok(data) = frame.into_data() else { continue };
            events.push(&data);
            while let Some(event) = events.next_event() {
                if event == "[DONE]" {
                    done = true;
                    break;
                }
                let v: Value = serde_json::from_str(&event)
                    .map_err(|e| self.broken(&answer, format!("an event that is not JSON ({e}): {event:.80}")))?;
                if let Some(err) = v.get("error") {
                    return Err(self.broken(&answer, format!("the backend sent an error: {err}")));
                }
                read_usage(&v, &mut usage);
                let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                if !delta.is_empty() {
                    if first_token.is_none() {
                        first_token = Some(Instant::now());
                        usage.first_token_ms = u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX);
                    }
                    answer.push_str(delta);
                    out.send(Bytes::copy_from_slice(delta.as_bytes())).await?;
                }
            }
        }
        out.set_usage(usage);
        if let Some(turn) = user_turn {
            self.contexts().remember(&msg.key, turn, answer);
        }
        Ok(())
    }

    /// The conversation's turns from the bridge's history, oldest first, as
    /// user/assistant pairs of the messages that were answered (not `id`,
    /// the message being answered now). `None` when there is no bridge, it
    /// does not answer, or it holds nothing.
    async fn stored_history(&self, key: &str, id: &str) -> Option<Vec<ChatMessage>> {
        let bridge = self.cfg.history.as_ref()?;
        let client = node::client::AdminClient::new(bridge.clone()).with_timeout(Duration::from_secs(2));
        let path_key = percent_encoding::utf8_percent_encode(key, percent_encoding::NON_ALPHANUMERIC);
        // The newest page is enough: history is bounded by bytes anyway.
        let page: proto::api::History = client
            .get_json(&format!("/v1/conversations/{path_key}/messages?limit=1000"))
            .await
            .ok()?;
        let mut inbound: HashMap<String, String> = HashMap::new();
        let mut turns = Vec::new();
        for m in page.messages {
            if m.id == id {
                continue;
            }
            if m.kind == proto::api::MessageKind::Reply as i32 {
                if m.error.is_none()
                    && let Some(user) = inbound.remove(&m.id)
                {
                    turns.push(ChatMessage {
                        role: "user".into(),
                        content: user,
                    });
                    turns.push(ChatMessage {
                        role: "assistant".into(),
                        content: m.payload,
                    });
                }
            } else {
                inbound.insert(m.id, m.payload);
            }
        }
        (!turns.is_empty()).then_some(turns)
    }

    fn broken(&self, answer: &str, why: String) -> ProcessError {
        if answer.is_empty() {
            ProcessError::new(Code::Unavailable, format!("backend {}: {why}", self.cfg.name))
        } else {
            ProcessError::new(
                Code::Aborted,
                format!(
                    "backend {}: {why}, after part of the answer was sent; the answer is incomplete",
                    self.cfg.name
                ),
            )
        }
    }

    fn timed_out(&self, answer: &str, what: &str) -> ProcessError {
        let tail = if answer.is_empty() {
            ""
        } else {
            "; the answer sent so far is incomplete"
        };
        ProcessError::new(
            Code::DeadlineExceeded,
            format!("backend {}: {what}{tail}", self.cfg.name),
        )
    }

    /// Conversations with history held now, and their bytes.
    pub fn context_usage(&self) -> (usize, usize) {
        let c = self.contexts();
        (c.map.len(), c.bytes)
    }
}

impl Processor for OpenAi {
    fn models(&self) -> Vec<String> {
        vec![self.cfg.model.clone()]
    }

    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(self.run(msg, out))
    }
}

/// One failed attempt.
#[derive(Debug)]
struct Attempt {
    retry: bool,
    retry_after: Option<Duration>,
    code: Code,
    why: String,
}

impl Attempt {
    fn retry(why: String) -> Self {
        Self {
            retry: true,
            retry_after: None,
            code: Code::Unavailable,
            why,
        }
    }

    fn fail(code: Code, why: String) -> Self {
        Self {
            retry: false,
            retry_after: None,
            code,
            why,
        }
    }
}

/// `d` scaled by a factor in [0.5, 1.5), so that retries spread out.
fn jittered(d: Duration) -> Duration {
    // The clock's nanoseconds are random enough for spreading retries.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.subsec_nanos());
    d.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
}

fn read_usage(v: &Value, u: &mut Usage) {
    let n = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
    if let Some(x) = v.get("usage").filter(|x| x.is_object()) {
        if let Some(p) = n(&x["prompt_tokens"]) {
            u.prompt_tokens = p;
        }
        if let Some(c) = n(&x["completion_tokens"]) {
            u.completion_tokens = c;
        }
        if let Some(c) = n(&x["prompt_tokens_details"]["cached_tokens"]) {
            u.cached_tokens = c;
        }
    }
    // llama.cpp's server reports its prefix cache in `timings`.
    if let Some(t) = v.get("timings").filter(|x| x.is_object())
        && let Some(c) = n(&t["cache_n"])
    {
        u.cached_tokens = c;
    }
}

/// Server-sent events split out of a byte stream: the `data` of each event.
#[derive(Debug, Default)]
struct SseBuffer {
    buf: Vec<u8>,
}

impl SseBuffer {
    fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// The next complete event's data (its `data:` lines joined), if any.
    fn next_event(&mut self) -> Option<String> {
        loop {
            let end = find_blank_line(&self.buf)?;
            let raw: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]);
            let data: Vec<&str> = text
                .lines()
                .filter_map(|l| l.trim_end_matches('\r').strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            if !data.is_empty() {
                return Some(data.join("\n"));
            }
            // A comment or an event without data: skip it.
        }
    }
}

/// The end of the first event: (where its text ends, where the next begins).
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            return Some((i, i + 2));
        }
        if b[i] == b'\n' && b[i + 1] == b'\r' && b.get(i + 2) == Some(&b'\n') {
            return Some((i, i + 3));
        }
        i += 1;
    }
    None
}

/// Each text conversation's history at this worker: its turns, oldest
/// first, bounded per conversation and in total (least recently used
/// conversations go first).
#[derive(Debug)]
struct Contexts {
    map: HashMap<String, Conversation>,
    /// Conversations by last use, oldest first; stale entries are skipped.
    order: VecDeque<(String, u64)>,
    tick: u64,
    bytes: usize,
    per_conversation: usize,
    total: usize,
}

#[derive(Debug, Default)]
struct Conversation {
    turns: VecDeque<ChatMessage>,
    bytes: usize,
    used: u64,
}

impl Contexts {
    fn new(per_conversation: usize, total: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            tick: 0,
            bytes: 0,
            per_conversation,
            total,
        }
    }

    fn history(&mut self, key: &str) -> Option<Vec<ChatMessage>> {
        self.tick += 1;
        let c = self.map.get_mut(key)?;
        c.used = self.tick;
        self.order.push_back((key.to_owned(), self.tick));
        Some(c.turns.iter().cloned().collect())
    }

    /// Adds a user turn and its answer. Old turns leave in pairs, so the
    /// history keeps its shape and its prefix stays the same bytes.
    fn remember(&mut self, key: &str, user: String, answer: String) {
        self.tick += 1;
        let c = self.map.entry(key.to_owned()).or_default();
        for (role, content) in [("user", user), ("assistant", answer)] {
            c.bytes += content.len();
            self.bytes += content.len();
            c.turns.push_back(ChatMessage {
                role: role.into(),
                content,
            });
        }
        while c.bytes > self.per_conversation && !c.turns.is_empty() {
            for _ in 0..2 {
                if let Some(t) = c.turns.pop_front() {
                    c.bytes -= t.content.len();
                    self.bytes -= t.content.len();
                }
            }
        }
        c.used = self.tick;
        self.order.push_back((key.to_owned(), self.tick));
        while self.bytes > self.total {
            let Some((k, used)) = self.order.pop_front() else { break };
            if self.map.get(&k).is_some_and(|c| c.used == used)
                && let Some(c) = self.map.remove(&k)
            {
                self.bytes -= c.bytes;
            }
        }
        // Stale entries of the order list are dropped now and then.
        if self.order.len() > 4 * self.map.len() + 64 {
            let map = &self.map;
            self.order
                .retain(|(k, used)| map.get(k).is_some_and(|c| c.used == *used));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_across_reads_and_comments_skipped() {
        let mut s = SseBuffer::default();
        s.push(b": keep-alive\n\ndata: {\"a\"");
        assert_eq!(s.next_event(), None);
        s.push(b":1}\n\ndata: [DONE]\r\n\r\n");
        assert_eq!(s.next_event().as_deref(), Some("{\"a\":1}"));
        assert_eq!(s.next_event().as_deref(), Some("[DONE]"));
        assert_eq!(s.next_event(), None);
    }

    #[test]
    fn history_is_bounded_per_conversation_and_in_total_oldest_first() {
        let mut c = Contexts::new(100, 250);
        c.remember("a", "x".repeat(30), "y".repeat(30));
        c.remember("a", "x".repeat(30), "y".repeat(30));
        // 120 bytes in "a": its oldest turn pair left.
        let h = c.history("a").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].role, "user");
        c.remember("b", "x".repeat(40), "y".repeat(40));
        c.remember("c", "x".repeat(40), "y".repeat(40));
        c.remember("d", "x".repeat(40), "y".repeat(40));
        // 60 + 3 * 80 = 300 > 250: the least recently used ("a") left.
        assert!(c.history("a").is_none());
        assert!(c.bytes <= 250);
        assert!(c.history("d").is_some());
    }

    #[test]
    fn base_urls_must_be_http_with_a_port() {
        let cfg = |u: &str| OpenAiConfig {
            base_url: u.into(),
            ..OpenAiConfig::default()
        };
        let ok = OpenAi::new(cfg("http://127.0.0.1:8081/v1/")).unwrap();
        assert_eq!((ok.authority.as_str(), ok.path.as_str()), ("127.0.0.1:8081", "/v1"));
        assert!(OpenAi::new(cfg("https://api.openai.com/v1")).is_err());
        assert!(OpenAi::new(cfg("http://localhost/v1")).is_err());
    }
}
