//! A processor that POSTs each message as JSON to a URL of the operator's
//! and streams back what it answers: the way to plug in a service of one's
//! own without writing Rust.
//!
//! The request body (`Content-Type: application/json`):
//!
//! ```json
//! {"id": "01K…", "key": "conversation", "payload": "text (invalid UTF-8 replaced)",
//!  "payload_base64": "…", "format": "", "model": "", "source": "client",
//!  "origin": "gateway-1", "deadline_unix_ms": 1764…}
//! ```
//!
//! The answer, by its `Content-Type`:
//! - `text/event-stream`: the data of each event is a piece of the reply,
//!   sent on as it arrives; an event named `error` ends the reply with its
//!   data as the error message; `[DONE]` (as OpenAI sends) ends it early.
//! - anything else: the body's bytes are the reply, sent on frame by frame
//!   as they arrive (a chunked response streams).
//!
//! Timeouts, retries and errors follow the same rules as the OpenAI
//! processor: connect errors, 429 and 5xx are retried before anything has
//! been sent on; after that a failure ends the reply with an error that says
//! it is incomplete; nothing is sent twice.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use node::{ProcessError, ProcessFuture, Processor, Replies};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use serde_json::json;
use tokio::time::Instant;
use tonic::Code;
use tracing::Instrument as _;

use crate::backend::{BadUrl, Http, Limits, Stream};
use crate::sse::SseBuffer;

/// Where to POST and how to treat the service.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Name of the service, in errors.
    pub name: String,
    /// `http://host:port/path` or `https://...`.
    pub url: String,
    /// Sent as `Authorization: Bearer`; `None` sends none.
    pub api_key: Option<String>,
    /// For an `https://` URL: the CA certificates (PEM) its certificate
    /// must chain to, such as the system's bundle.
    pub ca_pem: Option<Vec<u8>>,
    /// What the worker advertises in gossip, for routing by model; empty:
    /// nothing (messages that name no model reach it).
    pub model: String,
    /// Requests at once.
    pub max_concurrency: usize,
    /// Messages waiting for a free request slot; more are refused at once
    /// with `RESOURCE_EXHAUSTED` and a retry hint.
    pub max_queue: usize,
    /// To the first byte of the answer.
    pub first_byte_timeout: Duration,
    /// The longest gap between two pieces of the answer.
    pub idle_timeout: Duration,
    pub total_timeout: Duration,
    /// Attempts after the first, before anything went out.
    pub retries: u32,
    /// The first retry's pause; doubled each time, with jitter.
    pub backoff: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: "webhook".into(),
            url: "http://127.0.0.1:8082/".into(),
            api_key: None,
            ca_pem: None,
            model: String::new(),
            max_concurrency: 16,
            max_queue: 256,
            first_byte_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            total_timeout: Duration::from_secs(300),
            retries: 3,
            backoff: Duration::from_millis(100),
        }
    }
}

/// The processor. One per worker.
#[derive(Debug)]
pub struct Webhook {
    cfg: WebhookConfig,
    http: Http,
    requests: AtomicU64,
    failed: AtomicU64,
}

impl Webhook {
    pub fn new(cfg: WebhookConfig) -> Result<Self, BadUrl> {
        let limits = Limits {
            max_concurrency: cfg.max_concurrency,
            max_queue: cfg.max_queue,
            first_token: cfg.first_byte_timeout,
            idle: cfg.idle_timeout,
            total: cfg.total_timeout,
            retries: cfg.retries,
            backoff: cfg.backoff,
        };
        Ok(Self {
            http: Http::new(
                cfg.name.clone(),
                &cfg.url,
                cfg.api_key.clone(),
                limits,
                cfg.ca_pem.as_deref(),
            )?,
            requests: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            cfg,
        })
    }

    async fn run(&self, msg: &Envelope, out: &mut Replies) -> Result<(), ProcessError> {
        use base64::Engine as _;
        let _slot = self.http.admit().await?;
        let body = json!({
            "id": msg.id,
            "key": msg.key,
            "payload": String::from_utf8_lossy(&msg.payload),
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&msg.payload),
            "format": msg.format,
            "model": msg.model,
            "source": msg.source,
            "origin": msg.origin,
            "deadline_unix_ms": msg.deadline_unix_ms,
        });
        let body = serde_json::to_vec(&body).unwrap_or_default();
        let started = Instant::now();
        let total_end = started + self.http.limits.total;
        let resp = self
            .http
            .post(
                "",
                "text/event-stream, text/plain, application/json",
                &body,
                &stats::trace::pass_on(&tracing::Span::current(), &msg.traceparent),
                total_end,
            )
            .await?;
        let sse = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
        let mut stream = Stream::new(&self.http, resp, started, total_end);
        if !sse {
            while let Some(data) = stream.next().await? {
                if !data.is_empty() {
                    stream.first_token();
                    out.send(Bytes::from(data.to_vec())).await?;
                }
            }
            return Ok(());
        }
        let mut events = SseBuffer::default();
        'read: while let Some(data) = stream.next().await? {
            events.push(&data);
            while let Some(event) = events.next_event() {
                if event.kind == "error" {
                    let sent = stream.got_first_token();
                    return Err(self
                        .http
                        .broken(sent, format!("the service sent an error: {}", event.data)));
                }
                if event.data == "[DONE]" {
                    break 'read;
                }
                if !event.data.is_empty() {
                    stream.first_token();
                    out.send(Bytes::from(event.data.into_bytes())).await?;
                }
            }
        }
        Ok(())
    }
}

impl Processor for Webhook {
    fn models(&self) -> Vec<String> {
        if self.cfg.model.is_empty() {
            Vec::new()
        } else {
            vec![self.cfg.model.clone()]
        }
    }

    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            self.requests.fetch_add(1, Ordering::Relaxed);
            let span = tracing::info_span!(
                "backend",
                otel.kind = "client",
                backend = %self.cfg.name,
                error = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let r = self.run(msg, out).instrument(span.clone()).await;
            if let Err(e) = &r {
                crate::failed(&span, e);
                if e.code != Code::Cancelled {
                    self.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            r
        })
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        vec![
            (
                "webhook_requests",
                "Messages posted to the webhook.",
                n(&self.requests),
                true,
            ),
            (
                "webhook_failures",
                "Messages the webhook failed to answer (after retries).",
                n(&self.failed),
                true,
            ),
            (
                "webhook_retries",
                "Requests to the webhook made again after a failure.",
                self.http.retries.load(Ordering::Relaxed),
                true,
            ),
        ]
    }
}
