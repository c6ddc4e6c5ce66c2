//! The OpenAI-compatible API: `POST /v1/chat/completions` (streaming and
//! not, in OpenAI's formats) and `GET /v1/models`, so that any OpenAI SDK
//! pointed at a gateway works unchanged.
//!
//! rumor adds routing: the conversation key comes from `prompt_cache_key`
//! in the body, else the `x-rumor-conversation` header, else a hash of the
//! first messages (the first system and the first user message), so a
//! client that resends the whole history each turn lands on the same worker
//! every turn. A derived key begins with the credential's prefix.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use proto::Message as _;
use proto::bytes::Bytes;
use proto::edge::ErrorCode;
use proto::mesh::{ChatMessage, ChatRequest};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;

use crate::Shared;
use crate::http::{admit, bearer, no_buffering, read_body, retry_after, start};
use crate::message::{EdgeError, Outbound, Step};

/// The header that names the conversation when the body does not.
pub const CONVERSATION_HEADER: &str = "x-rumor-conversation";

#[derive(Debug, Deserialize)]
struct CompletionRequest {
    #[serde(default)]
    model: String,
    messages: Vec<InMessage>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    max_completion_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    prompt_cache_key: Option<String>,
    #[serde(default)]
    n: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
struct InMessage {
    role: String,
    #[serde(default)]
    content: Option<Content>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    text: Option<String>,
}

impl Content {
    fn text(&self) -> Result<String, EdgeError> {
        match self {
            Content::Text(t) => Ok(t.clone()),
            Content::Parts(parts) => parts
                .iter()
                .map(|p| match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => Ok(t.as_str()),
                    (kind, _) => Err(EdgeError::new(
                        ErrorCode::InvalidArgument,
                        format!("content parts of type {kind:?} are not supported; only text"),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|t| t.concat()),
        }
    }
}

/// An error in OpenAI's shape, with its status.
fn openai_error(e: &EdgeError) -> Response {
    let mut r = (
        e.http_status(),
        [(header::CONTENT_TYPE, "application/json")],
        error_json(e).to_string(),
    )
        .into_response();
    retry_after(&mut r, e);
    r
}

fn error_json(e: &EdgeError) -> Value {
    let kind = match e.http_status().as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    let code = e
        .code
        .as_str_name()
        .trim_start_matches("ERROR_CODE_")
        .to_ascii_lowercase();
    json!({"error": {"message": e.message, "type": kind, "code": code, "param": null}})
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The conversation key of a request; see the module docs.
fn conversation(req: &CompletionRequest, headers: &HeaderMap, prefix: &str, chat: &ChatRequest) -> String {
    if let Some(k) = req.prompt_cache_key.as_deref().filter(|k| !k.is_empty()) {
        return k.to_owned();
    }
    if let Some(k) = headers
        .get(CONVERSATION_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|k| !k.is_empty())
    {
        return k.to_owned();
    }
    let mut h = Sha256::new();
    for role in ["system", "user"] {
        if let Some(m) = chat.messages.iter().find(|m| m.role == role) {
            h.update(role.as_bytes());
            h.update([0]);
            h.update(m.content.as_bytes());
            h.update([0]);
        }
    }
    format!("{prefix}chat-{}", &hex::encode(h.finalize())[..32])
}

/// `POST /v1/chat/completions`.
pub(crate) async fn completions(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Body) -> Response {
    s.count(|c| &c.openai_requests);
    match completion(&s, &headers, body).await {
        Ok(r) => r,
        Err(e) => openai_error(&e),
    }
}

async fn completion(s: &Arc<Shared>, headers: &HeaderMap, body: Body) -> Result<Response, EdgeError> {
    let (cred, permit) = admit(s, headers)?;
    let bytes = read_body(s, body).await?;
    let req: CompletionRequest = serde_json::from_slice(&bytes).map_err(|e| {
        EdgeError::new(
            ErrorCode::InvalidArgument,
            format!("the body is not a chat completion request: {e}"),
        )
    })?;
    if req.messages.is_empty() {
        return Err(EdgeError::new(ErrorCode::InvalidArgument, "`messages` is empty"));
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err(EdgeError::new(ErrorCode::InvalidArgument, "only `n` = 1 is supported"));
    }
    let model = match req.model.as_str() {
        "" | "default" => String::new(),
        m => {
            if !s.models().iter().any(|(name, _)| name == m) {
                return Err(EdgeError::new(
                    ErrorCode::ModelNotFound,
                    format!(
                        "the model {m:?} is not served here; GET /v1/models lists the models served ({})",
                        s.models().into_iter().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
            m.to_owned()
        }
    };
    let messages = req
        .messages
        .iter()
        .map(|m| {
            Ok(ChatMessage {
                role: m.role.clone(),
                content: m.content.as_ref().map(Content::text).transpose()?.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, EdgeError>>()?;
    let chat = ChatRequest {
        messages,
        max_tokens: req.max_completion_tokens.or(req.max_tokens).unwrap_or(0),
        temperature: req.temperature,
        top_p: req.top_p,
        stop: match &req.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        },
        seed: req.seed,
    };
    let key = conversation(&req, headers, &cred.prefix, &chat);
    let out = Outbound {
        key,
        client_id: String::new(),
        payload: Bytes::from(chat.encode_to_vec()),
        format: "chat",
        model: model.clone(),
        timeout_ms: 0,
        resume_grace: std::time::Duration::ZERO,
        traceparent: crate::message::traceparent(headers),
        via: "openai",
    };
    let (id, rx) = start(s, &cred, out, permit).await?;
    let id = format!("chatcmpl-{id}");
    let shown_model = if req.model.is_empty() {
        "default".to_owned()
    } else {
        req.model.clone()
    };
    if req.stream {
        let usage = req.stream_options.is_some_and(|o| o.include_usage);
        Ok(stream(s, id, shown_model, usage, rx))
    } else {
        whole(id, shown_model, rx).await
    }
}

fn usage_json(u: &proto::edge::Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

async fn whole(id: String, model: String, mut rx: mpsc::Receiver<Step>) -> Result<Response, EdgeError> {
    let mut text = String::new();
    while let Some(step) = rx.recv().await {
        match step {
            Step::Chunk { text: t, .. } => text.push_str(&t),
            Step::Done { usage, .. } => {
                let mut body = json!({
                    "id": id,
                    "object": "chat.completion",
                    "created": now_secs(),
                    "model": model,
                    "choices": [{
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                        "logprobs": null,
                    }],
                });
                if let Some(u) = &usage {
                    body["usage"] = usage_json(u);
                }
                return Ok(([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response());
            }
            Step::Failed(e) => return Err(e),
        }
    }
    Err(EdgeError::new(ErrorCode::Internal, "the reply ended without an end"))
}

fn stream(s: &Shared, id: String, model: String, include_usage: bool, rx: mpsc::Receiver<Step>) -> Response {
    let created = now_secs();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}],
        })
    };
    let data = |v: Value| Ok::<_, Infallible>(SseEvent::default().data(v.to_string()));
    let first = data(chunk(json!({"role": "assistant", "content": ""}), None));
    let events = futures_util::StreamExt::flat_map(ReceiverStream::new(rx), move |step| {
        let out: Vec<Result<SseEvent, Infallible>> = match step {
            Step::Chunk { text, .. } => vec![data(chunk(json!({"content": text}), None))],
            Step::Done { usage, .. } => {
                let mut v = vec![data(chunk(json!({}), Some("stop")))];
                if include_usage {
                    let mut last = chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage.as_ref().map_or(Value::Null, usage_json);
                    v.push(data(last));
                }
                v.push(Ok(SseEvent::default().data("[DONE]")));
                v
            }
            Step::Failed(e) => vec![data(error_json(&e))],
        };
        futures_util::stream::iter(out)
    });
    let mut r = Sse::new(tokio_stream::once(first).chain(events))
        .keep_alive(KeepAlive::new().interval(s.config.heartbeat))
        .into_response();
    no_buffering(r.headers_mut());
    r
}

/// `GET /v1/models`: the models the live workers serve.
pub(crate) async fn models(State(s): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Err(e) = s.config.auth.authenticate(bearer(&headers)) {
        s.count(|c| &c.auth_failures);
        return openai_error(&EdgeError::new(ErrorCode::Unauthenticated, e.to_string()));
    }
    let data: Vec<Value> = s
        .models()
        .into_iter()
        .map(|(name, workers)| json!({"id": name, "object": "model", "created": 0, "owned_by": "rumor", "workers": workers}))
        .collect();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json!({"object": "list", "data": data}).to_string(),
    )
        .into_response()
}
