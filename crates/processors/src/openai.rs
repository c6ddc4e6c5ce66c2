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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node::processor::{Histogram, Latencies, seconds_histogram};
use node::{ProcessError, ProcessFuture, Processor, Replies};
use proto::Message as _;
use proto::bytes::Bytes;
use proto::mesh::{ChatMessage, ChatRequest, Envelope, Usage};
use serde_json::{Value, json};
use tokio::time::Instant;
use tonic::Code;
use tracing::Instrument as _;

use crate::backend::{BadUrl, Http, Limits, Stream};
use crate::sse::SseBuffer;

/// How to reach one backend and how to treat it.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Name of the backend, recorded with each reply's usage.
    pub name: String,
    /// The API's base URL, `http://host:port/v1` or `https://host/v1`.
    pub base_url: String,
    /// The model to ask for (also what the worker advertises).
    pub model: String,
    /// Sent as `Authorization: Bearer`; `None` sends none.
    pub api_key: Option<String>,
    /// For an `https://` URL: the CA certificates (PEM) its certificate
    /// must chain to, such as the system's bundle.
    pub ca_pem: Option<Vec<u8>>,
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
            ca_pem: None,
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
    http: Http,
    contexts: Mutex<Contexts>,
    /// Conversations that arrived here with no history (a new owner, or a
    /// restart).
    pub context_misses: AtomicU64,
    /// Of those, the ones whose history was rebuilt from the bridge's.
    pub context_rebuilt: AtomicU64,
    tally: Tally,
    /// Time from the request to the first token, per answer.
    first_token: Histogram,
}

/// What the backend did, for `/metrics`.
#[derive(Debug, Default)]
struct Tally {
    requests: AtomicU64,
    failed: AtomicU64,
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
}

impl OpenAi {
    pub fn new(cfg: OpenAiConfig) -> Result<Self, BadUrl> {
        let limits = Limits {
            max_concurrency: cfg.max_concurrency,
            max_queue: cfg.max_queue,
            first_token: cfg.first_token_timeout,
            idle: cfg.idle_timeout,
            total: cfg.total_timeout,
            retries: cfg.retries,
            backoff: cfg.backoff,
        };
        Ok(Self {
            http: Http::new(
                cfg.name.clone(),
                &cfg.base_url,
                cfg.api_key.clone(),
                limits,
                cfg.ca_pem.as_deref(),
            )?,
            contexts: Mutex::new(Contexts::new(cfg.context_bytes, cfg.total_context_bytes)),
            context_misses: AtomicU64::new(0),
            context_rebuilt: AtomicU64::new(0),
            tally: Tally::default(),
            first_token: seconds_histogram(),
            cfg,
        })
    }

    /// Attempts made again after a failure.
    pub fn retries(&self) -> u64 {
        self.http.retries.load(Ordering::Relaxed)
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

    async fn run(&self, msg: &Envelope, out: &mut Replies) -> Result<(), ProcessError> {
        let _slot = self.http.admit().await?;
        let (messages, user_turn) = self.messages(msg).await?;
        let body = self.body(msg, &messages);
        let started = Instant::now();
        let total_end = started + self.http.limits.total;
        let resp = self
            .http
            .post(
                "/chat/completions",
                "text/event-stream",
                &body,
                &stats::trace::pass_on(&tracing::Span::current(), &msg.traceparent),
                total_end,
            )
            .await?;
        let mut stream = Stream::new(&self.http, resp, started, total_end);
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
        let mut answer = String::new();
        'read: while let Some(data) = stream.next().await? {
            events.push(&data);
            while let Some(event) = events.next_event() {
                if event.data == "[DONE]" {
                    break 'read;
                }
                let sent = stream.got_first_token();
                let v: Value = serde_json::from_str(&event.data).map_err(|e| {
                    self.http
                        .broken(sent, format!("an event that is not JSON ({e}): {:.80}", event.data))
                })?;
                if let Some(err) = v.get("error") {
                    return Err(self.http.broken(sent, format!("the backend sent an error: {err}")));
                }
                read_usage(&v, &mut usage);
                let delta = v["choices"][0]["delta"]["content"].as_str().unwrap_or("");
                if !delta.is_empty() {
                    if !sent {
                        usage.first_token_ms = stream.first_token();
                        // Timed here, so that answers that fail or are
                        // cancelled later count too.
                        self.first_token.observe(f64::from(usage.first_token_ms) / 1e3);
                    }
                    answer.push_str(delta);
                    out.send(Bytes::copy_from_slice(delta.as_bytes())).await?;
                }
            }
        }
        let t = &self.tally;
        t.prompt_tokens.fetch_add(usage.prompt_tokens.into(), Ordering::Relaxed);
        t.completion_tokens
            .fetch_add(usage.completion_tokens.into(), Ordering::Relaxed);
        t.cached_tokens.fetch_add(usage.cached_tokens.into(), Ordering::Relaxed);
        let span = tracing::Span::current();
        span.record("prompt_tokens", usage.prompt_tokens);
        span.record("completion_tokens", usage.completion_tokens);
        span.record("cached_tokens", usage.cached_tokens);
        span.record("first_token_ms", usage.first_token_ms);
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

    /// Conversations with history held now, and their bytes.
    pub fn context_usage(&self) -> (usize, usize) {
        let c = self.contexts();
        (c.map.len(), c.bytes)
    }
}

/// The span of one call to an OpenAI-compatible backend, with what it cost.
fn backend_span(backend: &str, model: &str) -> tracing::Span {
    tracing::info_span!(
        "backend",
        otel.kind = "client",
        backend,
        model,
        prompt_tokens = tracing::field::Empty,
        completion_tokens = tracing::field::Empty,
        cached_tokens = tracing::field::Empty,
        first_token_ms = tracing::field::Empty,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    )
}

impl Processor for OpenAi {
    fn models(&self) -> Vec<String> {
        vec![self.cfg.model.clone()]
    }

    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            self.tally.requests.fetch_add(1, Ordering::Relaxed);
            let span = backend_span(
                &self.cfg.name,
                if msg.model.is_empty() {
                    &self.cfg.model
                } else {
                    &msg.model
                },
            );
            let r = self.run(msg, out).instrument(span.clone()).await;
            if let Err(e) = &r {
                crate::failed(&span, e);
                if e.code != Code::Cancelled {
                    self.tally.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            r
        })
    }

    fn latencies(&self) -> Latencies {
        vec![(
            "first_token_seconds",
            "Time from the request to the backend to its first token, per answer.",
            self.first_token.clone(),
        )]
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let t = &self.tally;
        let (conversations, bytes) = self.context_usage();
        vec![
            (
                "backend_requests",
                "Messages sent to the model backend.",
                n(&t.requests),
                true,
            ),
            (
                "backend_failures",
                "Messages the model backend failed to answer (after retries).",
                n(&t.failed),
                true,
            ),
            (
                "backend_retries",
                "Requests to the model backend made again after a failure.",
                self.retries(),
                true,
            ),
            (
                "prompt_tokens",
                "Prompt tokens the backend reported.",
                n(&t.prompt_tokens),
                true,
            ),
            (
                "completion_tokens",
                "Completion tokens the backend reported.",
                n(&t.completion_tokens),
                true,
            ),
            (
                "cached_tokens",
                "Prompt tokens the backend served from its prefix cache.",
                n(&t.cached_tokens),
                true,
            ),
            (
                "context_misses",
                "Conversations that arrived with no history here (a new owner, or a restart).",
                n(&self.context_misses),
                true,
            ),
            (
                "context_rebuilt",
                "Conversations whose history was rebuilt from the bridge's.",
                n(&self.context_rebuilt),
                true,
            ),
            (
                "context_conversations",
                "Conversations whose history is held now.",
                conversations as u64,
                false,
            ),
            (
                "context_bytes",
                "Bytes of conversation history held now.",
                bytes as u64,
                false,
            ),
        ]
    }
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
}
