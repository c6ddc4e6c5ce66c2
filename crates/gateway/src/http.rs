//! The edge's HTTP routes: one message with its reply as JSON or as
//! server-sent events, the cluster's status, health and metrics; and the
//! pieces the other ways in share (credentials, errors, the reply pump).

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router as Routes;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use proto::bytes::Bytes;
use proto::edge::{self, ErrorCode};
use serde::Deserialize;
use stats::prom::{CONTENT_TYPE, Exposition};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::auth::Credential;
use crate::limits::{Permit, Refused};
use crate::message::{EdgeError, Outbound, Step, Steps, new_id};

pub(crate) fn routes(s: Arc<Shared>) -> Routes {
    Routes::new()
        .route("/v1/ws", get(crate::ws::upgrade))
        .route("/v1/conversations/{key}/messages", post(messages))
        .route("/v1/chat/completions", post(crate::openai::completions))
        .route("/v1/models", get(crate::openai::models))
        .route("/v1/cluster", get(cluster))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(s)
}

/// The `access_token` query parameter, for WebSocket clients that cannot
/// set headers (browsers).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenQuery {
    pub(crate) access_token: Option<String>,
}

/// The credential of `Authorization: Bearer <credential>`.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// An error as JSON (`ErrorBody`) with its status and, for the codes
/// that have one, `Retry-After`.
pub(crate) fn error_response(e: &EdgeError) -> Response {
    let body = edge::ErrorBody {
        error: Some(e.frame("", "", "")),
    };
    let mut r = (
        e.http_status(),
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response();
    retry_after(&mut r, e);
    r
}

pub(crate) fn retry_after(r: &mut Response, e: &EdgeError) {
    if e.retry_after_ms > 0
        && let Ok(v) = HeaderValue::from_str(&e.retry_after_ms.div_ceil(1000).to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
}

/// A connection refused at the door: 503 when the gateway is full, 429
/// when the credential is.
pub(crate) fn refuse_connection(refused: &Refused) -> Response {
    error_response(&refused_error(refused))
}

fn refused_error(refused: &Refused) -> EdgeError {
    let code = match refused {
        Refused::Total(_) => ErrorCode::Unavailable,
        Refused::PerCredential(..) => ErrorCode::RateLimited,
    };
    EdgeError::new(code, refused.to_string()).retry_after(std::time::Duration::from_secs(1))
}

/// The request's credential and a connection place for it, or the answer
/// refusing it.
pub(crate) fn admit(s: &Shared, headers: &HeaderMap) -> Result<(Arc<Credential>, Permit), EdgeError> {
    let cred = s.config.auth.authenticate(bearer(headers)).map_err(|e| {
        s.count(|c| &c.auth_failures);
        EdgeError::new(ErrorCode::Unauthenticated, e.to_string())
    })?;
    if let Err(why) = s.ready() {
        return Err(EdgeError::new(
            ErrorCode::Unavailable,
            format!("the gateway is not ready: {why}"),
        ));
    }
    let permit = s.gate.admit(&cred.name).map_err(|refused| {
        s.count(|c| &c.connections_refused);
        refused_error(&refused)
    })?;
    Ok((cred, permit))
}

/// A request body up to the frame limit.
pub(crate) async fn read_body(s: &Shared, body: Body) -> Result<Bytes, EdgeError> {
    let max = s.config.limits.max_frame_bytes;
    axum::body::to_bytes(body, max).await.map_err(|e| {
        s.count(|c| &c.too_large);
        EdgeError::new(
            ErrorCode::TooLarge,
            format!("the body is over {max} bytes or broke off: {e}"),
        )
    })
}

/// Routes a message and streams its steps into a channel from a task of
/// its own. A client that goes away mid-reply drops the reply stream; the
/// owner then goes on for the resume grace `out` carries.
pub(crate) async fn start(
    s: &Arc<Shared>,
    cred: &Credential,
    out: Outbound,
    permit: Permit,
) -> Result<(String, mpsc::Receiver<Step>), EdgeError> {
    let id = new_id();
    s.in_flight.fetch_add(1, Ordering::Relaxed);
    let steps = match s.send(cred, out, &id).await {
        Ok(steps) => steps,
        Err(e) => {
            s.in_flight.fetch_sub(1, Ordering::Relaxed);
            s.count(|c| &c.replies_failed);
            return Err(e);
        }
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(pump(s.clone(), steps, tx, permit));
    Ok((id, rx))
}

async fn pump(s: Arc<Shared>, mut steps: Steps, tx: mpsc::Sender<Step>, permit: Permit) {
    let _permit = permit;
    while let Some(step) = steps.next().await {
        let end = step.is_end();
        if end {
            match step {
                Step::Done { .. } => s.count(|c| &c.replies_done),
                _ => s.count(|c| &c.replies_failed),
            }
        }
        if tx.send(step).await.is_err() {
            s.count(|c| &c.orphaned);
            break;
        }
        if end {
            break;
        }
    }
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
}

fn wants_events(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/event-stream"))
}

/// `POST /v1/conversations/{key}/messages`.
async fn messages(State(s): State<Arc<Shared>>, Path(key): Path<String>, headers: HeaderMap, body: Body) -> Response {
    s.count(|c| &c.http_requests);
    match message(&s, key, &headers, body).await {
        Ok(r) => r,
        Err(e) => error_response(&e),
    }
}

async fn message(s: &Arc<Shared>, key: String, headers: &HeaderMap, body: Body) -> Result<Response, EdgeError> {
    let (cred, permit) = admit(s, headers)?;
    let bytes = read_body(s, body).await?;
    let req: edge::SendBody = serde_json::from_slice(&bytes)
        .map_err(|e| EdgeError::new(ErrorCode::InvalidArgument, format!("the body is not a SendBody: {e}")))?;
    let client_id = req.client_id.clone();
    let out = Outbound {
        key: key.clone(),
        client_id: req.client_id,
        payload: Bytes::from(req.text),
        format: "",
        model: req.model,
        timeout_ms: u64::from(req.timeout_ms),
        resume_grace: s.config.resume_grace,
        traceparent: crate::message::traceparent(headers),
        via: "http",
    };
    let events = wants_events(headers);
    let (id, rx) = start(s, &cred, out, permit).await?;
    if events {
        Ok(sse(s, key, client_id, id, rx))
    } else {
        whole(key, client_id, id, rx).await
    }
}

async fn whole(
    key: String,
    client_id: String,
    id: String,
    mut rx: mpsc::Receiver<Step>,
) -> Result<Response, EdgeError> {
    let mut text = String::new();
    while let Some(step) = rx.recv().await {
        match step {
            Step::Chunk { text: t, .. } => text.push_str(&t),
            Step::Done {
                worker,
                replayed,
                usage,
                ..
            } => {
                let reply = edge::Reply {
                    conversation: key,
                    message_id: id,
                    client_id,
                    text,
                    worker,
                    replayed,
                    usage,
                };
                return Ok((
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::to_string(&reply).unwrap_or_default(),
                )
                    .into_response());
            }
            Step::Failed(mut e) => {
                e.message = format!("message {id}: {}", e.message);
                return Err(e);
            }
        }
    }
    Err(EdgeError::new(ErrorCode::Internal, "the reply ended without an end"))
}

fn sse(s: &Shared, key: String, client_id: String, id: String, rx: mpsc::Receiver<Step>) -> Response {
    let json = |name: &'static str, value: String| Ok::<_, Infallible>(SseEvent::default().event(name).data(value));
    let accepted = edge::Accepted {
        conversation: key.clone(),
        client_id: client_id.clone(),
        message_id: id.clone(),
    };
    let first = json("accepted", serde_json::to_string(&accepted).unwrap_or_default());
    let rest = ReceiverStream::new(rx).map(move |step| match step {
        Step::Chunk { text, worker, position } => json(
            "chunk",
            serde_json::to_string(&edge::Chunk {
                conversation: key.clone(),
                client_id: client_id.clone(),
                message_id: id.clone(),
                text,
                worker,
                position,
            })
            .unwrap_or_default(),
        ),
        Step::Done {
            worker,
            replayed,
            usage,
            position,
        } => json(
            "done",
            serde_json::to_string(&edge::Done {
                conversation: key.clone(),
                client_id: client_id.clone(),
                message_id: id.clone(),
                worker,
                replayed,
                usage,
                position,
            })
            .unwrap_or_default(),
        ),
        Step::Failed(e) => json(
            "error",
            serde_json::to_string(&e.frame(&key, &client_id, &id)).unwrap_or_default(),
        ),
    });
    let stream = tokio_stream::once(first).chain(rest);
    let mut r = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(s.config.heartbeat).text("heartbeat"))
        .into_response();
    no_buffering(r.headers_mut());
    r
}

/// Headers that stop proxies from buffering a stream.
pub(crate) fn no_buffering(h: &mut HeaderMap) {
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}

/// `GET /v1/cluster`: what a client shows as status. Any valid credential.
async fn cluster(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.config.auth.authenticate(bearer(&headers)) {
        s.count(|c| &c.auth_failures);
        return error_response(&EdgeError::new(ErrorCode::Unauthenticated, e.to_string()));
    }
    let table = s.router.table();
    let view = s.view.borrow().clone();
    let total: f64 = s.workers().iter().map(|w| f64::from(w.meta.capacity)).sum();
    let members = std::iter::once(&view.local)
        .chain(&view.members)
        .map(|m| {
            let worker = m.meta.has_role("worker") && m.status.is_live() && table.addr(&m.name).is_some();
            edge::ClusterMember {
                name: m.name.clone(),
                status: match m.status {
                    membership::Status::Alive => "alive",
                    membership::Status::Suspect => "suspect",
                    membership::Status::Dead => "dead",
                    membership::Status::Left => "left",
                }
                .into(),
                roles: m.meta.roles.clone(),
                capacity: m.meta.capacity,
                share: if worker && total > 0.0 {
                    f64::from(m.meta.capacity) / total
                } else {
                    0.0
                },
            }
        })
        .collect();
    let body = edge::Cluster {
        gateway: s.name.clone(),
        members,
        ring_checksum: format!("{:016x}", table.checksum()),
        models: s
            .models()
            .into_iter()
            .map(|(name, workers)| edge::ModelInfo { name, workers })
            .collect(),
    };
    (
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::to_string(&body).unwrap_or_default(),
    )
        .into_response()
}

async fn readyz(State(s): State<Arc<Shared>>) -> Response {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n")).into_response(),
    }
}

async fn metrics(State(s): State<Arc<Shared>>) -> Response {
    let mut e = Exposition::new();
    e.counters("rumor_edge_", s.counters.read().fields());
    e.gauge(
        "rumor_edge_connections_held",
        "Connections held now (WebSocket and streaming HTTP).",
        s.gate.held() as i64,
    );
    e.gauge(
        "rumor_edge_in_flight",
        "Messages in flight through the edge now.",
        s.in_flight.load(Ordering::Relaxed) as i64,
    );
    e.gauge(
        "rumor_edge_watched_conversations",
        "Conversations watched through this gateway now (one subscription at the owner each).",
        s.hubs.len() as i64,
    );
    e.histograms("rumor_edge_", s.latency.all());
    e.counters("rumor_mesh_", s.router.stats().fields());
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], e.encode()).into_response()
}
