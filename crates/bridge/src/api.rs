//! The bridge's HTTP API (axum, HTTP/1):
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/conversations/{key}/messages?after=&limit=` | [`History`]: stored messages and replies in order, a page at a time |
//! | `POST /v1/forward` | [`SendRequest`] in, [`Forwarded`] out: the message is on the forward topic |
//! | `GET /v1/dead-letters?after=&limit=` | [`DeadLetters`]: records that could not be decoded or stored, oldest first |
//! | `GET /healthz` | 200 while the consume loop runs |
//! | `GET /readyz` | 200 while the consume loop runs and the database answers |
//! | `GET /metrics` | Prometheus text: counters, batch histograms, lag per partition |
//! | `GET /openapi.json` | the OpenAPI document of these routes ([`ROUTES`]) |
//!
//! ```text
//!  GET history ── after = cursor of the last message of the previous page (absent: from the start)
//!              └─ answers up to `limit` messages and `next` when there may be more
//! ```
//!
//! Cursors are opaque strings to clients (today the row's sequence number).
//! Bad parameters get a 400 naming the parameter. The bodies are the types
//! of `rumor.api.v1` (crates/proto) in the proto3 JSON mapping, the same as a
//! node's admin API uses.

use std::future::Future;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use events::codec;
pub use proto::api::{
    DeadLetter, DeadLetters, Forwarded, History, HistoryMessage, MessageKind, SendRequest, StoredError, StoredUsage,
};
use proto::events::ForwardRequest;
use proto::openapi::{Body, PAGE_AFTER, PAGE_LIMIT, Param, Route};
use proto::rules;
use serde::Deserialize;
use stats::prom::{CONTENT_TYPE, Exposition};
use tokio::net::TcpListener;
use tracing::Instrument as _;

use crate::Shared;
use crate::metrics::count;

/// Messages per page when `limit` is absent.
pub const DEFAULT_LIMIT: i64 = 100;
/// The largest `limit`.
pub const MAX_LIMIT: i64 = 1000;

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
        .route("/openapi.json", get(openapi))
        .with_state(shared);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

type Shr = State<Arc<Shared>>;

/// The bridge API's routes, for its OpenAPI document (`GET /openapi.json`).
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/v1/conversations/{key}/messages",
        summary: "A conversation's stored messages and replies, in order, a page at a time",
        params: &[CONVERSATION, PAGE_AFTER, PAGE_LIMIT],
        request: Body::None,
        ok: (200, Body::Json("History")),
        errors: &[400, 503],
    },
    Route {
        method: "post",
        path: "/v1/forward",
        summary: "Inject a message into the mesh through the forward topic",
        params: &[TRACEPARENT],
        request: Body::Json("SendRequest"),
        ok: (202, Body::Json("Forwarded")),
        errors: &[400, 413, 415, 422, 503],
    },
    Route {
        method: "get",
        path: "/v1/dead-letters",
        summary: "Records that could not be decoded or stored, with the reasons",
        params: &[PAGE_AFTER, PAGE_LIMIT],
        request: Body::None,
        ok: (200, Body::Json("DeadLetters")),
        errors: &[400, 503],
    },
    Route {
        method: "get",
        path: "/healthz",
        summary: "200 while the consume loop runs",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[503],
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "200 while the consume loop runs and the database answers",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[503],
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[],
    },
];

const TRACEPARENT: Param = Param {
    name: "traceparent",
    location: "header",
    kind: "string",
    description: "W3C trace context of the caller's span: the message's spans in the mesh join its trace \
                  (one not understood is ignored)",
    values: &[],
};

const CONVERSATION: Param = Param {
    name: "key",
    location: "path",
    kind: "string",
    description: "The conversation key",
    values: &[],
};

async fn openapi() -> Json<serde_json::Value> {
    Json(proto::openapi::document(
        "rumor bridge API",
        "Conversation history from the database, messages injected into the mesh, and dead letters.",
        ROUTES,
    ))
}

/// The forward request an inject becomes, checked by the shared rules. The
/// record's source says the bridge injected it, with the caller's label:
/// `bridge`, or `bridge:<source>`.
fn forward_request(body: SendRequest) -> Result<ForwardRequest, rules::FieldError> {
    rules::key("key", &body.key)?;
    let id = match body.id {
        Some(id) => {
            rules::message_id("id", &id)?;
            id
        }
        None => events::new_message_id(),
    };
    let source = match body.source {
        None => "bridge".to_owned(),
        Some(label) => {
            rules::name("source", &label)?;
            format!("bridge:{label}")
        }
    };
    rules::name("source", &source)?;
    let timeout_ms = match body.timeout_ms {
        None => 0,
        Some(ms) => rules::timeout_ms("timeout_ms", ms)?.as_millis() as u64,
    };
    Ok(ForwardRequest {
        id,
        key: body.key,
        payload: body.payload.into_bytes().into(),
        source,
        created_unix_ms: events::unix_ms(),
        timeout_ms,
        traceparent: String::new(),
    })
}

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
    if let Err(e) = rules::key("key", &key) {
        return bad_request(e.to_string());
    }
    let (after, limit) = match page(&params) {
        Ok(p) => p,
        Err(why) => return bad_request(why),
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
                1 => MessageKind::Inbound,
                2 => MessageKind::Reply,
                _ => MessageKind::Unspecified,
            } as i32,
            payload: String::from_utf8_lossy(&r.payload).into_owned(),
            payload_base64: base64::engine::general_purpose::STANDARD.encode(&r.payload),
            worker: r.worker,
            origin: r.origin,
            source: r.source,
            created_unix_ms: r.created_unix_ms,
            chunks: r.chunks,
            truncated: r.truncated,
            error: r.error_code.map(|code| StoredError {
                code,
                message: r.error_message.unwrap_or_default(),
            }),
            cursor: r.seq.to_string(),
            usage: r.usage.map(|u| StoredUsage {
                prompt_tokens: u.prompt_tokens as u32,
                completion_tokens: u.completion_tokens as u32,
                cached_tokens: u.cached_tokens as u32,
                first_token_ms: u.first_token_ms as u32,
                backend: u.backend,
                model: u.model,
            }),
        })
        .collect();
    Json(History { key, messages, next }).into_response()
}

/// The `after` cursor and the `limit` of a paginated request.
fn page(params: &HistoryParams) -> Result<(i64, i64), String> {
    let after = match params.after.as_deref() {
        None | Some("") => 0,
        Some(c) => match c.parse::<i64>() {
            Ok(n) if n >= 0 => n,
            _ => {
                return Err(format!("`after` must be a cursor returned by this API, got {c:?}"));
            }
        },
    };
    let limit = match params.limit.as_deref() {
        None | Some("") => DEFAULT_LIMIT,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(format!(
                    "`limit` must be a whole number from 1 to {MAX_LIMIT}, got {l:?}"
                ));
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
        Err(why) => return bad_request(why),
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
        .map(|(id, d)| DeadLetter {
            topic: d.topic,
            partition: d.partition,
            offset: d.offset,
            key_base64: d.key.map(|k| b64.encode(k)),
            error: d.error,
            raw_base64: b64.encode(&d.raw),
            cursor: id.to_string(),
            ..Default::default()
        })
        .collect();
    Json(DeadLetters { dead_letters, next }).into_response()
}

async fn forward(State(s): Shr, headers: HeaderMap, body: Result<Json<SendRequest>, JsonRejection>) -> Response {
    let body = match body {
        Ok(Json(b)) => b,
        // The same statuses as a node's admin API for the same faults:
        // 400 bad JSON, 413 too large, 415 not JSON, 422 wrong field types.
        Err(e) => return (e.status(), format!("invalid forward request: {}\n", e.body_text())).into_response(),
    };
    let mut req = match forward_request(body) {
        Ok(req) => req,
        Err(e) => return bad_request(e.to_string()),
    };
    // The inject's span starts the message's trace (or joins the caller's),
    // and the request carries it through the forward topic into the mesh.
    let received = headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "inject",
        otel.kind = "server",
        id = %req.id,
        key = %req.key,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    req.traceparent = stats::trace::adopt(&span, received);
    let id = req.id.clone();
    let rec = codec::forward_request(&s.topics.forward, &req);
    match s.producer.send(&rec, s.forward_timeout).instrument(span.clone()).await {
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
            stats::trace::failed(&span, &e.to_string());
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
    if let Some(why) = s.db_failing() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("database failing: {why}\n"));
    }
    match s.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("database unreachable: {e}\n")),
    }
}

async fn metrics(State(s): Shr) -> Response {
    let mut e = Exposition::new();
    e.counters("rumor_bridge_", s.counters.read().fields());
    e.metric(
        "rumor_bridge_batch_records",
        "Records per committed batch.",
        s.batch_records.clone(),
    );
    e.metric(
        "rumor_bridge_batch_seconds",
        "Time to write a committed batch, retries included.",
        s.batch_seconds.clone(),
    );
    let positions = s.positions.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut lag = Vec::new();
    for (tp, next) in &positions {
        if let Ok((_, high)) = s.watermarks.watermarks(tp).await {
            lag.push((partition_labels(tp), (high - next).max(0)));
        }
    }
    e.gauges(
        "rumor_bridge_consumer_lag",
        "Records in the partition not stored yet (high watermark minus stored next offset).",
        lag,
    );
    e.gauges(
        "rumor_bridge_stored_offset",
        "Next offset to store, per assigned partition.",
        positions.iter().map(|(tp, next)| (partition_labels(tp), *next)),
    );
    e.gauge(
        "rumor_bridge_assigned_partitions",
        "Partitions of the messages topic assigned to this bridge.",
        positions.len() as i64,
    );
    e.gauge(
        "rumor_bridge_reading_alone",
        "1 while this bridge reads every partition without the consumer group (its group handed out nothing however often it rejoined).",
        i64::from(s.reading_alone.load(std::sync::atomic::Ordering::Relaxed)),
    );
    let ready = stopped(&s).is_none() && s.db_failing().is_none();
    e.gauge(
        "rumor_bridge_ready",
        "1 while the consume loop runs and its database writes succeed.",
        i64::from(ready),
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], e.encode()).into_response()
}

fn partition_labels(tp: &events::TopicPartition) -> [(&'static str, String); 2] {
    [("topic", tp.topic.clone()), ("partition", tp.partition.to_string())]
}
