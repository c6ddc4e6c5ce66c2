//! `POST /v1/send`: a message into the mesh at this node, its reply
//! streamed back as newline-delimited JSON, one [`ReplyLine`] per chunk.

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use proto::api::{ReplyError, ReplyLine, SendRequest};
use proto::mesh::{Envelope, ReplyChunk};
use proto::rules;
use proto::text::Utf8Chunks;
use tokio_stream::StreamExt;

use super::Shr;
use crate::mesh;

/// A reply error on the wire: the gRPC code's number and name.
fn reply_error(code: tonic::Code, message: String) -> ReplyError {
    ReplyError {
        code: code as u32,
        name: format!("{code:?}"),
        message,
    }
}

fn line(l: &ReplyLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// A reply chunk as a line; `text` carries characters split across chunks.
fn chunk_line(c: ReplyChunk, text: &mut Utf8Chunks) -> ReplyLine {
    let mut data = text.push(&c.data);
    if c.last || c.error.is_some() {
        data.push_str(&text.finish());
    }
    ReplyLine {
        id: c.id,
        seq: c.seq,
        worker: c.worker,
        data,
        last: c.last,
        replayed: c.replayed,
        error: c
            .error
            .map(|e| reply_error(tonic::Code::from(e.code as i32), e.message)),
    }
}

fn error_line(id: String, seq: u64, status: &tonic::Status) -> ReplyLine {
    ReplyLine {
        id,
        seq,
        error: Some(reply_error(status.code(), status.message().to_owned())),
        ..Default::default()
    }
}

fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn ndjson(status: StatusCode, body: Body) -> Response {
    (status, [(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

pub(super) async fn send(State(s): Shr, Json(req): Json<SendRequest>) -> Response {
    let id = req.id.unwrap_or_else(mesh::new_message_id);
    let refuse = |why: String| {
        let status = tonic::Status::invalid_argument(why);
        ndjson(
            StatusCode::BAD_REQUEST,
            Body::from(line(&error_line(id.clone(), 0, &status))),
        )
    };
    if req.source.is_some() {
        return refuse("`source` is set by the node a message enters at, not by clients".into());
    }
    // The key and id are checked where every message enters the mesh
    // (`Router::send`); the timeout is this API's own field.
    let timeout = match req.timeout_ms.map(|ms| rules::timeout_ms("timeout_ms", ms)) {
        None => s.router.config().default_timeout,
        Some(Ok(t)) => t,
        Some(Err(e)) => return refuse(e.to_string()),
    };
    let envelope = Envelope {
        id: id.clone(),
        key: req.key,
        payload: Bytes::from(req.payload),
        deadline_unix_ms: mesh::deadline_in(timeout),
        ..Default::default()
    };
    match s.router.send(envelope).await {
        Err(status) => ndjson(
            http_status(status.code()),
            Body::from(line(&error_line(id, 0, &status))),
        ),
        Ok(stream) => {
            // Every item becomes one line; an `Err` item (a refusal after the
            // stream began) becomes the terminal error line. Dropping the
            // body (the client went away) drops the stream, which cancels
            // the message's processing.
            let mut next_seq = 0;
            let mut text = Utf8Chunks::default();
            let lines = stream.map(move |item| {
                let l = match item {
                    Ok(c) => {
                        next_seq = c.seq + 1;
                        chunk_line(c, &mut text)
                    }
                    Err(status) => error_line(id.clone(), next_seq, &status),
                };
                Ok::<_, std::convert::Infallible>(line(&l))
            });
            ndjson(StatusCode::OK, Body::from_stream(lines))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_round_trip_and_know_their_end() {
        let l = ReplyLine {
            id: "x".into(),
            seq: 2,
            worker: "w".into(),
            data: "hi".into(),
            last: true,
            ..Default::default()
        };
        let back: ReplyLine = serde_json::from_slice(&line(&l)).unwrap();
        assert_eq!(back, l);
        assert!(back.is_terminal());
    }
}
