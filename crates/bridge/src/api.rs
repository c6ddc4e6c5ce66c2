//! The bridge's HTTP API (axum, HTTP/1):
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/conversations/{key}/messages?after=&limit=` | [`History`]: stored messages and replies in order, a page at a time |
//! | `POST /v1/forward` | [`ForwardBody`] in, [`Forwarded`] out: the message is on the forward topic |
//! | `GET /v1/dead-letters?after=&limit=` | [`DeadLetters`]: records that could not be decoded or stored, oldest first |
//! | `GET /healthz` | 200 while the consume loop runs |
//! | `GET /readyz` | 200 while the consume loop runs and the database answers |
//! | `GET /metrics` | Prometheus text: counters, batch histograms, lag per partition |
//!
//! ```text
//!  GET history ── after = cursor of the last message of the previous page (absent: from the start)
//!              └─ answers up to `limit` messages and `next` when there may be more
//! ```
//!
//! Cursors are opaque strings to clients (today the row's sequence number).
//! Bad parameters get a 400 naming the parameter.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use events::codec;
use proto::events::ForwardRequest;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::Shared;
use crate::metrics::{Prom, count};

/// Messages per page when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 1000;
/// The longest conversation key accepted.
pub const MAX_KEY_BYTES: usize = 1024;

/// An explicit failure in a reply reported by the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: i32,
    pub message: String,
}

/// One stored message or reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage {
    /// The message id (a reply has the id of the message it answers).
    pub id: String,
    /// `inbound` or `reply`.
    pub kind: String,
    /// The content as UTF-8 (invalid bytes replaced).
    pub payload: String,
    /// The exact content, base64 (standard, padded).
    pub payload_base64: String,
    pub worker: String,
    pub origin: String,
    pub source: String,
    pub created_unix_ms: i64,
    /// Chunks the reply was streamed in (0 for inbound).
    pub chunks: i64,
    /// The reply was longer than the worker records; `payload` is its beginning.
    #[serde(default)]
    pub truncated: bool,
    /// Set on a failed reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// Pass as `after` to continue after this message.
    pub cursor: String,
}

/// The body of `GET /v1/conversations/{key}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub key: String,
    pub messages: Vec<HistoryMessage>,
    /// Pass as `after` for the next page; absent when this page is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One dead letter: a record of the messages topic the bridge could not
/// decode or store, kept with the reason and its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterBody {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The record's key (the conversation key), base64; absent when it had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    /// Why it could not be decoded or stored.
    pub error: String,
    /// The record's value as read, base64 (standard, padded).
    pub raw_base64: String,
    /// Pass as `after` to continue after this one.
    pub cursor: String,
}

/// The body of `GET /v1/dead-letters`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetters {
    pub dead_letters: Vec<DeadLetterBody>,
    /// Pass as `after` for the next page; absent when this page is the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// The body of `POST /v1/forward`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardBody {
    /// Conversation key.
    pub key: String,
    /// Message content (UTF-8).
    pub payload: String,
    /// Message id; a new one when absent. Resending with the same id is
    /// de-duplicated by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Who injects it; `bridge` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Time the mesh has to answer once routed; the mesh default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// The answer to `POST /v1/forward`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    pub id: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Deserialize)]
struct HistoryParams {
    after: Option<String>,
    limit: Option<String>,
}

/// Serves the API on `listener` until `shutdown` completes.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/conversations/{key}/messages", get(history))
        .route("/v1/forward", post(forward))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

type Shr = State<Arc<Shared>>;

fn bad_request(msg: impl Into<String>) -> Response {
    (StatusCode::BAD_REQUEST, format!("{}\n", msg.into())).into_response()
}

async fn history(
    State(s): Shr,
    Path(key): Path<String>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return bad_request(format!("invalid query string: {}", e.body_text())),
    };
    if key.len() > MAX_KEY_BYTES {
        return bad_request(format!(
            "conversation key is {} bytes; at most {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    let (after, limit) = match page(&params) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = match s.store.history(&key, after, limit).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("reading history: {e}\n")).into_response(),
    };
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.seq.to_string()))
        .flatten();
    let messages = rows
        .into_iter()
        .map(|r| HistoryMessage {
            id: r.message_id,
            kind: match r.kind {
                1 => "inbound".into(),
                2 => "reply".into(),
                k => format!("kind-{k}"),
            },
            payload: String::from_utf8_lossy(&r.payload).into_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&r.payload),
            worker: r.worker,
            origin: r.origin,
            source: r.source,
            created_unix_ms: r.created_unix_ms,
            chunks: r.chunks,
            truncated: r.truncated,
            error: r.error_code.map(|code| ErrorBody {
                code,
                message: r.error_message.unwrap_or_default(),
            }),
            cursor: r.seq.to_string(),
        })
        .collect();
    Json(History { key, messages, next }).into_response()
}

/// The `after` cursor and the `limit` of a paginated request.
fn page(params: &HistoryParams) -> Result<(i64, i64), Response> {
    let after = match params.after.as_deref() {
        None | Some("") => 0,
        Some(c) => match c.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(bad_request(format!(
                    "`after` must be a cursor returned by this API, got {c:?}"
                )));
            }
        },
    };
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(bad_request(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}, got {l:?}"
                )));
            }
        },
    };
    Ok((after, limit))
}

async fn dead_letters(State(s): Shr, params: Result<Query<HistoryParams>, QueryRejection>) -> Response {
    let params = match params {
        Ok(Query(p)) => p,
        Err(e) => return bad_request(format!("invalid query string: {}", e.body_text())),
    };
    let (after, limit) = match page(&params) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let rows = match s.store.dead_letter_page(after, limit).await {
        Ok(r) => r,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, format!("reading dead letters: {e}\n")).into_response(),
    };
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(id, _)| id.to_string()))
        .flatten();
    let b64 = base64::engine::general_purpose::STANDARD;
    let dead_letters = rows
        .into_iter()
        .map(|(id, d)| DeadLetterBody {
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
            key_base64: d.key.map(|k| b64.encode(k)),
            error: d.error,
            raw_base64: b64.encode(&d.raw),
            cursor: id.to_string(),
        })
        .collect();
    Json(DeadLetters { dead_letters, next }).into_response()
}

async fn forward(State(s): Shr, body: Result<Json<ForwardBody>, JsonRejection>) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        Err(e) => return bad_request(format!("invalid forward request: {}", e.body_text())),
    };
    if body.key.is_empty() {
        return bad_request("`key` must not be empty");
    }
    if body.key.len() > MAX_KEY_BYTES {
        return bad_request(format!("`key` is {} bytes; at most {MAX_KEY_BYTES}", body.key.len()));
    }
    let id = match body.id {
        Some(id) if !events::is_message_id(&id) => {
            return bad_request(format!(
                "`id` must be a 26-character message id (Crockford base32, upper case), got {id:?}"
            ));
        }
        Some(id) => id,
        None => events::new_message_id(),
    };
    let req = ForwardRequest {
        id: id.clone(),
        key: body.key,
        payload: body.payload.into_bytes().into(),
        source: body.source.unwrap_or_else(|| "bridge".into()),
        created_unix_ms: events::unix_ms(),
        timeout_ms: body.timeout_ms.unwrap_or(0),
    };
    let rec = codec::forward_request(&s.topics.forward, &req);
    match s.producer.send(&rec, s.forward_timeout).await {
        Ok(d) => {
            count(&s.counters.forwarded, 1);
            (
                StatusCode::ACCEPTED,
                Json(Forwarded {
                    id,
                    topic: s.topics.forward.clone(),
                    partition: d.partition,
                    offset: d.offset,
                }),
            )
                .into_response()
        }
        Err(e) => {
            count(&s.counters.forward_errors, 1);
            tracing::warn!("bridge: forward request {id} not taken by the event log: {e}");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the event log did not take the request: {e}\n"),
            )
                .into_response()
        }
    }
}

fn stopped(s: &Shared) -> Option<String> {
    s.stopped.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

async fn healthz(State(s): Shr) -> (StatusCode, String) {
    match stopped(&s) {
        None => (StatusCode::OK, "ok\n".into()),
        Some(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("consume loop ended: {why}\n")),
    }
}

async fn readyz(State(s): Shr) -> (StatusCode, String) {
    if let Some(why) = stopped(&s) {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("consume loop ended: {why}\n"));
    }
    if let Some(why) = s.db_failing.lock().unwrap_or_else(|e| e.into_inner()).clone() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("database failing: {why}\n"));
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")),
    }
}

async fn metrics(State(s): Shr) -> Response {
    let mut p = Prom::default();
    p.counters("rumor_bridge_", s.counters.read().fields());
    s.batch_records
        .render(&mut p, "rumor_bridge_batch_records", "Records per committed batch.");
    s.batch_seconds.render(
        &mut p,
        "rumor_bridge_batch_seconds",
        "Time to write a committed batch, retries included.",
    );
    let positions = s.positions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    p.header(
        "rumor_bridge_consumer_lag",
        "Records in the partition not stored yet (high watermark minus stored next offset).",
        "gauge",
    );
    for (tp, next) in &positions {
        if let Ok((_, high)) = s.watermarks.watermarks(tp).await {
            let _ = std::fmt::Write::write_fmt(
                &mut p.0,
                format_args!(
                    "rumor_bridge_consumer_lag{{topic=\"{}\",partition=\"{}\"}} {}\n",
                    tp.topic,
                    tp.partition,
                    (high - next).max(0)
                ),
            );
        }
    }
    p.header(
        "rumor_bridge_stored_offset",
        "Next offset to store, per assigned partition.",
        "gauge",
    );
    for (tp, next) in &positions {
        let _ = std::fmt::Write::write_fmt(
            &mut p.0,
            format_args!(
                "rumor_bridge_stored_offset{{topic=\"{}\",partition=\"{}\"}} {next}\n",
                tp.topic, tp.partition
            ),
        );
    }
    p.gauge(
        "rumor_bridge_assigned_partitions",
        "Partitions of the messages topic assigned to this bridge.",
        positions.len(),
    );
    p.gauge(
        "rumor_bridge_ready",
        "1 while the consume loop runs and its database writes succeed.",
        u8::from(stopped(&s).is_none() && s.db_failing.lock().unwrap_or_else(|e| e.into_inner()).is_none()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], p.0).into_response()
}
