//! One message through the edge, whichever way it came in (WebSocket, HTTP,
//! OpenAI-compatible): the checks it passes, its routing, and its reply as
//! [`Step`]s.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use node::mesh;
use node::worker::ReplyStream;
use proto::bytes::Bytes;
use proto::edge::{self, ErrorCode};
use proto::mesh::{Envelope, ReplyChunk};
use proto::rules;
use proto::text::Utf8Chunks;
use tokio_stream::StreamExt as _;
use tonic::Code;
use tracing::Instrument as _;

use crate::Shared;
use crate::auth::Credential;
use crate::stats::Latency;

/// Longest `client_id`, bytes.
pub(crate) const MAX_CLIENT_ID_BYTES: usize = 128;

/// A message on its way in, before its checks.
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) key: String,
    pub(crate) client_id: String,
    pub(crate) payload: Bytes,
    /// `Envelope.format`: empty for text, `chat` for a `ChatRequest`.
    pub(crate) format: &'static str,
    pub(crate) model: String,
    /// 0: the edge's default.
    pub(crate) timeout_ms: u64,
    /// How long the owner goes on when this caller's stream breaks, for
    /// the client to come back and watch the rest (zero: stop at once).
    pub(crate) resume_grace: std::time::Duration,
    /// The client's W3C trace context, when it sent one; empty otherwise.
    pub(crate) traceparent: String,
    /// The route it came by, for its span: `websocket`, `http` or `openai`.
    pub(crate) via: &'static str,
}

/// A refusal or failure as clients see it: a stable code, a text for
/// people, and for some codes when to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EdgeError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_ms: u32,
}

impl EdgeError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: 0,
        }
    }

    pub(crate) fn retry_after(mut self, wait: Duration) -> Self {
        self.retry_after_ms = wait.as_millis().clamp(1, u128::from(u32::MAX)) as u32;
        self
    }

    /// A failure the mesh reported as a gRPC code.
    pub(crate) fn from_code(code: Code, message: impl Into<String>) -> Self {
        let edge_code = match code {
            Code::InvalidArgument | Code::OutOfRange => ErrorCode::InvalidArgument,
            Code::DeadlineExceeded => ErrorCode::DeadlineExceeded,
            Code::Unavailable | Code::Aborted => ErrorCode::Unavailable,
            Code::ResourceExhausted => ErrorCode::Overloaded,
            Code::Cancelled => ErrorCode::Cancelled,
            Code::AlreadyExists => ErrorCode::Duplicate,
            Code::NotFound => ErrorCode::ModelNotFound,
            Code::PermissionDenied => ErrorCode::PermissionDenied,
            Code::Unauthenticated => ErrorCode::Unauthenticated,
            // A processor's own failure: its backend's.
            Code::Unknown => ErrorCode::Backend,
            _ => ErrorCode::Internal,
        };
        let e = Self::new(edge_code, message);
        if edge_code == ErrorCode::Overloaded {
            e.retry_after(Duration::from_secs(1))
        } else {
            e
        }
    }

    /// The HTTP status this error is answered with (docs/protocol.md).
    pub(crate) fn http_status(&self) -> StatusCode {
        match self.code {
            ErrorCode::BadFrame | ErrorCode::InvalidArgument | ErrorCode::UnsupportedVersion => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::ModelNotFound => StatusCode::NOT_FOUND,
            ErrorCode::Duplicate => StatusCode::CONFLICT,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            // An overloaded worker or backend: like a rate limit, retry later.
            ErrorCode::RateLimited | ErrorCode::TooManyInFlight | ErrorCode::Overloaded => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            ErrorCode::Backend => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal | ErrorCode::Unspecified => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The `Error` frame of this error about a message (ids may be empty).
    pub(crate) fn frame(&self, key: &str, client_id: &str, message_id: &str) -> edge::Error {
        edge::Error {
            conversation: key.to_owned(),
            client_id: client_id.to_owned(),
            message_id: message_id.to_owned(),
            code: self.code as i32,
            message: self.message.clone(),
            retry_after_ms: self.retry_after_ms,
        }
    }
}

/// One step of a reply as the edge reports it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Step {
    /// A piece of the reply.
    Chunk {
        text: String,
        worker: String,
        position: Option<edge::Position>,
    },
    /// The reply ended well.
    Done {
        worker: String,
        replayed: bool,
        usage: Option<edge::Usage>,
        position: Option<edge::Position>,
    },
    /// The reply failed (after `Chunk`s or before any).
    Failed(EdgeError),
}

impl Step {
    pub(crate) fn is_end(&self) -> bool {
        !matches!(self, Step::Chunk { .. })
    }
}

pub(crate) fn position(p: Option<proto::mesh::Position>) -> Option<edge::Position> {
    p.map(|p| edge::Position {
        epoch: p.epoch,
        seq: p.seq,
    })
}

pub(crate) fn usage(u: Option<proto::mesh::Usage>) -> Option<edge::Usage> {
    u.map(|u| edge::Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.cached_tokens,
        first_token_ms: u.first_token_ms,
        backend: u.backend,
        model: u.model,
    })
}

/// A reply's steps, read from the mesh's reply stream. Characters split
/// between chunks are joined; the stream always ends with `Done` or
/// `Failed`.
#[derive(Debug)]
pub(crate) struct Steps {
    stream: ReplyStream,
    text: Utf8Chunks,
    pending: std::collections::VecDeque<Step>,
    ended: bool,
    latency: Latency,
    /// When the message was routed into the mesh.
    started: Instant,
    /// Whether the first chunk (or the end) was timed already.
    first_timed: bool,
    /// The message's span at the edge: it ends when the reply does (or the
    /// client stops reading it), when `Steps` is dropped.
    span: stats::trace::EndAtDrop,
}

impl Steps {
    fn new(stream: ReplyStream, latency: Latency, started: Instant, span: tracing::Span) -> Self {
        Self {
            stream,
            text: Utf8Chunks::default(),
            pending: Default::default(),
            ended: false,
            latency,
            started,
            first_timed: false,
            span: stats::trace::EndAtDrop(span),
        }
    }

    /// The next step; `None` after the last.
    pub(crate) async fn next(&mut self) -> Option<Step> {
        if let Some(step) = self.pending.pop_front() {
            return Some(step);
        }
        if self.ended {
            return None;
        }
        loop {
            let chunk = match self.stream.next().await {
                Some(Ok(chunk)) => chunk,
                Some(Err(status)) => {
                    self.ended = true;
                    stats::trace::failed(&self.span.0, status.message());
                    return Some(Step::Failed(EdgeError::from_code(status.code(), status.message())));
                }
                None => {
                    self.ended = true;
                    return Some(Step::Failed(EdgeError::new(
                        ErrorCode::Unavailable,
                        "the reply ended early; reply incomplete",
                    )));
                }
            };
            if let Some(step) = self.step(chunk) {
                return Some(step);
            }
        }
    }

    fn step(&mut self, c: ReplyChunk) -> Option<Step> {
        let mut text = self.text.push(&c.data);
        let end = c.last || c.error.is_some();
        if end {
            text.push_str(&self.text.finish());
            self.ended = true;
        }
        // The first text, or a reply that ended well without any; an error
        // is not a first chunk.
        if !self.first_timed && (!text.is_empty() || (end && c.error.is_none())) {
            self.first_timed = true;
            self.latency.first_chunk.observe(self.started.elapsed().as_secs_f64());
        }
        if end && c.error.is_none() {
            self.latency.reply.observe(self.started.elapsed().as_secs_f64());
        }
        if end {
            self.span.0.record("worker", c.worker.as_str());
            if let Some(e) = &c.error {
                stats::trace::failed(&self.span.0, &e.message);
            }
        }
        let chunk = (!text.is_empty()).then(|| Step::Chunk {
            text,
            worker: c.worker.clone(),
            position: if end { None } else { position(c.position.clone()) },
        });
        if !end {
            return chunk;
        }
        let last = match c.error {
            Some(e) => Step::Failed(EdgeError::from_code(Code::from(e.code as i32), e.message)),
            None => Step::Done {
                worker: c.worker,
                replayed: c.replayed,
                usage: usage(c.usage),
                position: position(c.position),
            },
        };
        match chunk {
            Some(chunk) => {
                self.pending.push_back(last);
                Some(chunk)
            }
            None => Some(last),
        }
    }
}

impl Shared {
    /// Checks a message against the credential and the limits, then routes
    /// it under id `id`. `Err` is a refusal: nothing reached the mesh, or no
    /// owner took the message.
    pub(crate) async fn send(&self, cred: &Credential, out: Outbound, id: &str) -> Result<Steps, EdgeError> {
        self.check(cred, &out)?;
        let timeout = if out.timeout_ms == 0 {
            self.config.default_timeout
        } else {
            rules::timeout_ms("timeout_ms", out.timeout_ms)
                .map_err(|e| EdgeError::new(ErrorCode::InvalidArgument, e.to_string()))?
        };
        if let Err(wait) = self.rates.check(&cred.name) {
            self.count(|c| &c.rate_limited);
            return Err(EdgeError::new(
                ErrorCode::RateLimited,
                format!(
                    "credential {:?} is over its {} messages per second",
                    cred.name, self.config.limits.messages_per_second
                ),
            )
            .retry_after(wait));
        }
        // The message's span at the edge: the root of its trace, or the
        // child of the client's span when the client sent its trace context.
        let span = tracing::info_span!(
            "edge",
            otel.kind = "server",
            node = %self.name,
            id,
            key = %out.key,
            via = out.via,
            worker = tracing::field::Empty,
            error = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        );
        let envelope = Envelope {
            traceparent: stats::trace::adopt(&span, &out.traceparent),
            id: id.to_owned(),
            key: out.key,
            payload: out.payload,
            deadline_unix_ms: mesh::deadline_in(timeout),
            format: out.format.to_owned(),
            model: out.model,
            resume_grace_ms: u32::try_from(out.resume_grace.as_millis()).unwrap_or(u32::MAX),
            ..Default::default()
        };
        self.count(|c| &c.messages);
        let started = Instant::now();
        match self.router.send(envelope).instrument(span.clone()).await {
            Ok(stream) => Ok(Steps::new(stream, self.latency.clone(), started, span)),
            Err(status) => {
                stats::trace::failed(&span, status.message());
                Err(EdgeError::from_code(status.code(), status.message()))
            }
        }
    }

    fn check(&self, cred: &Credential, out: &Outbound) -> Result<(), EdgeError> {
        let invalid = |e: rules::FieldError| EdgeError::new(ErrorCode::InvalidArgument, e.to_string());
        rules::key("conversation", &out.key).map_err(invalid)?;
        cred.may_send(&out.key)
            .map_err(|why| EdgeError::new(ErrorCode::PermissionDenied, why))?;
        if out.client_id.len() > MAX_CLIENT_ID_BYTES {
            return Err(EdgeError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "`client_id` is {} bytes; at most {MAX_CLIENT_ID_BYTES}",
                    out.client_id.len()
                ),
            ));
        }
        let max = self.config.limits.max_text_bytes;
        if out.payload.len() > max {
            self.count(|c| &c.too_large);
            return Err(EdgeError::new(
                ErrorCode::TooLarge,
                format!("the message is {} bytes; at most {max}", out.payload.len()),
            ));
        }
        Ok(())
    }
}

/// The client's W3C trace context from a request's `traceparent` header;
/// empty when absent or not text. [`Shared::send`] ignores one it does not
/// understand, as the spec asks.
pub(crate) fn traceparent(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

/// A fresh message id.
pub(crate) fn new_id() -> String {
    mesh::new_message_id()
}
