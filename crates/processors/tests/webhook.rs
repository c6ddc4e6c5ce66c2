//! The webhook processor against a service of our own over real loopback
//! sockets, driven through a real worker: plain and streamed answers, the
//! JSON it posts, retries before anything was sent, an error event after,
//! a stall, and a cancel that closes the request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use node::Processor as _;
use node::worker::{ReplyStream, Worker, WorkerConfig};
use processors::{Webhook, WebhookConfig};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// What the service answers, per request in order; the last repeats.
#[derive(Debug, Clone)]
enum Act {
    /// A plain body sent in these pieces, `gap` apart.
    Plain(Vec<&'static str>, Duration),
    /// Server-sent events with these data, then an `error` event if given.
    Events(Vec<&'static str>, Option<&'static str>),
    Status(u16),
    /// One piece, then nothing until the client goes away.
    Stall,
}

#[derive(Debug, Default)]
struct Service {
    acts: Mutex<Vec<Act>>,
    requests: AtomicUsize,
    bodies: Mutex<Vec<serde_json::Value>>,
    /// Streams whose client went away before they ended.
    abandoned: AtomicUsize,
}

async fn hook(State(s): State<Arc<Service>>, body: String) -> Response {
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    s.bodies
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or_default());
    let act = {
        let acts = s.acts.lock().unwrap();
        acts.get(n).or(acts.last()).cloned().unwrap()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    let content_type = match act {
        Act::Status(code) => return (StatusCode::from_u16(code).unwrap(), "not now").into_response(),
        Act::Plain(pieces, gap) => {
            tokio::spawn(async move {
                for p in pieces {
                    let _ = tx.send(Ok(p.to_owned())).await;
                    tokio::time::sleep(gap).await;
                }
            });
            "text/plain"
        }
        Act::Events(data, error) => {
            tokio::spawn(async move {
                for d in data {
                    let _ = tx.send(Ok(format!("data: {d}\n\n"))).await;
                }
                if let Some(e) = error {
                    let _ = tx.send(Ok(format!("event: error\ndata: {e}\n\n"))).await;
                }
            });
            "text/event-stream"
        }
        Act::Stall => {
            let s = s.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ok("first".into())).await;
                tx.closed().await;
                s.abandoned.fetch_add(1, Ordering::Relaxed);
            });
            "text/plain"
        }
    };
    Response::builder()
        .header("content-type", content_type)
        .body(body)
        .unwrap()
}

async fn service(acts: Vec<Act>) -> (Arc<Service>, SocketAddr) {
    let s = Arc::new(Service {
        acts: Mutex::new(acts),
        ..Service::default()
    });
    let app = Router::new().route("/hook", post(hook)).with_state(s.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (s, addr)
}

fn webhook(addr: SocketAddr) -> Webhook {
    Webhook::new(WebhookConfig {
        url: format!("http://{addr}/hook"),
        model: "my-service".into(),
        first_byte_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(5),
        retries: 2,
        backoff: Duration::from_millis(10),
        ..WebhookConfig::default()
    })
    .unwrap()
}

fn send(w: &Worker, id: &str, text: &str) -> ReplyStream {
    let msg = Envelope {
        id: id.into(),
        key: "conversation-1".into(),
        payload: Bytes::copy_from_slice(text.as_bytes()),
        source: "client".into(),
        ..Default::default()
    };
    w.submit(msg, Instant::now() + Duration::from_secs(30)).unwrap()
}

/// The reply's pieces, and its error if it ended with one.
async fn collect(mut reply: ReplyStream) -> (Vec<String>, Option<(Code, String)>) {
    let mut pieces = Vec::new();
    while let Some(c) = reply.next().await {
        let c = c.expect("not refused");
        if !c.data.is_empty() {
            pieces.push(String::from_utf8_lossy(&c.data).into_owned());
        }
        if c.last || c.error.is_some() {
            return (pieces, c.error.map(|e| (Code::from(e.code as i32), e.message)));
        }
    }
    panic!("the reply ended without a final chunk");
}

#[tokio::test]
async fn a_plain_answer_streams_back_as_it_arrives_and_the_message_is_posted_as_json() {
    let (s, addr) = service(vec![Act::Plain(vec!["Hello, ", "world"], Duration::from_millis(50))]).await;
    let p = webhook(addr);
    assert_eq!(p.models(), ["my-service"]);
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(p));
    let (pieces, err) = collect(send(&w, "m1", "hi there")).await;
    assert_eq!(err, None);
    assert_eq!(pieces, ["Hello, ", "world"], "two pieces, as the service sent them");
    let body = s.bodies.lock().unwrap()[0].clone();
    assert_eq!(body["id"], "m1");
    assert_eq!(body["key"], "conversation-1");
    assert_eq!(body["payload"], "hi there");
    assert_eq!(body["payload_base64"], "aGkgdGhlcmU=");
    assert_eq!(body["source"], "client");
}

#[tokio::test]
async fn server_sent_events_are_pieces_of_the_reply_and_failures_before_them_are_retried() {
    let (s, addr) = service(vec![
        Act::Status(503),
        Act::Status(429),
        Act::Events(vec!["a", "b", "[DONE]"], None),
    ])
    .await;
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(webhook(addr)));
    let (pieces, err) = collect(send(&w, "m1", "x")).await;
    assert_eq!((pieces, err), (vec!["a".to_owned(), "b".to_owned()], None));
    assert_eq!(s.requests.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn an_error_event_after_part_of_the_reply_ends_it_as_incomplete_and_is_not_retried() {
    let (s, addr) = service(vec![Act::Events(vec!["part"], Some("the service broke"))]).await;
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(webhook(addr)));
    let (pieces, err) = collect(send(&w, "m1", "x")).await;
    assert_eq!(pieces, ["part"]);
    let (code, message) = err.expect("an error");
    assert_eq!(code, Code::Aborted, "{message}");
    assert!(
        message.contains("the service broke") && message.contains("incomplete"),
        "{message}"
    );
    assert_eq!(s.requests.load(Ordering::Relaxed), 1, "nothing is sent twice");
}

#[tokio::test]
async fn a_4xx_is_refused_at_once_and_a_stall_times_out() {
    let (s, addr) = service(vec![Act::Status(400), Act::Stall]).await;
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(webhook(addr)));
    let (_, err) = collect(send(&w, "m1", "x")).await;
    let (code, message) = err.expect("an error");
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("400") && message.contains("not now"), "{message}");
    let (pieces, err) = collect(send(&w, "m2", "x")).await;
    assert_eq!(pieces, ["first"]);
    let (code, message) = err.expect("an error");
    assert_eq!(code, Code::DeadlineExceeded, "{message}");
    assert!(message.contains("stalled"), "{message}");
    assert_eq!(s.requests.load(Ordering::Relaxed), 2);
    // The stalled request's connection was closed.
    let until = Instant::now() + Duration::from_secs(5);
    while s.abandoned.load(Ordering::Relaxed) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.abandoned.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_cancelled_message_closes_its_request() {
    let (s, addr) = service(vec![Act::Stall]).await;
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(webhook(addr)));
    let mut reply = send(&w, "m1", "x");
    let first = reply.next().await.unwrap().unwrap();
    assert_eq!(&first.data[..], b"first");
    assert!(w.cancel("conversation-1", "m1"));
    let until = Instant::now() + Duration::from_secs(5);
    while s.abandoned.load(Ordering::Relaxed) == 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(s.abandoned.load(Ordering::Relaxed), 1, "the service saw its client go");
}
