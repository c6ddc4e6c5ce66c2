//! The OpenAI-compatible processor against a fault-injecting server of our
//! own (slow first token, stalls, 429 with Retry-After, 500, malformed
//! events, dropped connections), driven through a real worker over real
//! loopback sockets: what a healthy backend cannot show.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use node::worker::{ReplyStream, Worker, WorkerConfig};
use processors::{OpenAi, OpenAiConfig};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use tokio::time::Instant;
use tokio_stream::StreamExt as _;
use tonic::Code;

/// What the fake backend does for each request, in order; the last repeats.
#[derive(Debug, Clone)]
enum Act {
    /// Streams these tokens, `gap` apart, after `first` delay.
    Stream {
        tokens: Vec<&'static str>,
        first: Duration,
        gap: Duration,
    },
    /// Answers with this status and `Retry-After` seconds.
    Status(u16, Option<u32>),
    /// Streams these tokens, then a line that is not JSON.
    Malformed(Vec<&'static str>),
    /// Streams these tokens, then closes the connection mid-stream.
    Drop(Vec<&'static str>),
    /// Streams one token, then nothing, forever.
    Stall,
}

#[derive(Debug, Default)]
struct Fake {
    acts: Mutex<Vec<Act>>,
    requests: AtomicUsize,
    /// Bodies of the requests, as JSON.
    bodies: Mutex<Vec<serde_json::Value>>,
    /// Streams whose client went away before they ended.
    abandoned: AtomicUsize,
}

fn chunk(token: &str) -> String {
    format!(
        "data: {}\n\n",
        serde_json::json!({"choices": [{"index": 0, "delta": {"content": token}}]})
    )
}

/// Counts a stream whose receiver is dropped before its end.
struct Watched(Arc<Fake>, bool);

impl Drop for Watched {
    fn drop(&mut self) {
        if !self.1 {
            self.0.abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn completions(State(f): State<Arc<Fake>>, _h: HeaderMap, body: String) -> Response {
    let n = f.requests.fetch_add(1, Ordering::Relaxed);
    f.bodies
        .lock()
        .unwrap()
        .push(serde_json::from_str(&body).unwrap_or_default());
    let act = {
        let acts = f.acts.lock().unwrap();
        acts.get(n).or(acts.last()).cloned().unwrap()
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(4);
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    match act {
        Act::Status(code, retry) => {
            let mut r = (StatusCode::from_u16(code).unwrap(), "busy").into_response();
            if let Some(s) = retry {
                r.headers_mut().insert("retry-after", s.to_string().parse().unwrap());
            }
            return r;
        }
        Act::Stream { tokens, first, gap } => {
            let f = f.clone();
            tokio::spawn(async move {
                let mut w = Watched(f, false);
                tokio::time::sleep(first).await;
                for (i, t) in tokens.iter().enumerate() {
                    if i > 0 {
                        tokio::time::sleep(gap).await;
                    }
                    if tx.send(Ok(chunk(t))).await.is_err() {
                        return;
                    }
                }
                let usage = serde_json::json!({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": tokens.len()}, "timings": {"cache_n": 7}});
                let _ = tx.send(Ok(format!("data: {usage}\n\n"))).await;
                let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
                w.1 = true;
                // Held until the client is done reading.
                tx.closed().await;
            });
        }
        Act::Malformed(tokens) => {
            tokio::spawn(async move {
                for t in tokens {
                    let _ = tx.send(Ok(chunk(t))).await;
                }
                let _ = tx.send(Ok("data: {not json\n\n".into())).await;
                tx.closed().await;
            });
        }
        Act::Drop(tokens) => {
            tokio::spawn(async move {
                for t in tokens {
                    let _ = tx.send(Ok(chunk(t))).await;
                }
                // The tokens reach the client before the connection breaks.
                tokio::time::sleep(Duration::from_millis(100)).await;
                let _ = tx.send(Err(std::io::Error::other("dropped"))).await;
            });
        }
        Act::Stall => {
            let f = f.clone();
            tokio::spawn(async move {
                let _w = Watched(f, false);
                let _ = tx.send(Ok(chunk("only"))).await;
                tx.closed().await;
            });
        }
    }
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}

async fn fake(acts: Vec<Act>) -> (Arc<Fake>, SocketAddr) {
    let f = Arc::new(Fake {
        acts: Mutex::new(acts),
        ..Fake::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (f, addr)
}

/// The fake behind TLS, with the node crate's test certificate for
/// 127.0.0.1 (signed by its test CA).
async fn fake_https(acts: Vec<Act>) -> (Arc<Fake>, SocketAddr) {
    use tokio_rustls::rustls::pki_types::pem::PemObject as _;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../node/tests/tls");
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(format!("{dir}/node.pem"))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(format!("{dir}/node.key")).unwrap();
    let config = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let f = Arc::new(Fake {
        acts: Mutex::new(acts),
        ..Fake::default()
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(f.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper_util::service::TowerToHyperService::new(app);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    (f, addr)
}

fn config(addr: SocketAddr) -> OpenAiConfig {
    OpenAiConfig {
        name: "fake".into(),
        base_url: format!("http://{addr}/v1"),
        model: "fake-model".into(),
        first_token_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        total_timeout: Duration::from_secs(5),
        retries: 2,
        backoff: Duration::from_millis(10),
        system_prompt: "Be brief.".into(),
        ..OpenAiConfig::default()
    }
}

fn worker(p: OpenAi) -> Worker {
    Worker::new("w", WorkerConfig::default(), Arc::new(p))
}

fn message(id: &str, key: &str, text: &str) -> Envelope {
    Envelope {
        id: id.into(),
        key: key.into(),
        payload: Bytes::copy_from_slice(text.as_bytes()),
        ..Default::default()
    }
}

/// The reply's data, and its error if it ended with one.
async fn collect(mut reply: ReplyStream) -> (String, Option<(Code, String)>, Option<proto::mesh::Usage>) {
    let mut text = String::new();
    while let Some(c) = reply.next().await {
        let c = c.expect("not refused");
        text.push_str(&String::from_utf8_lossy(&c.data));
        if c.last || c.error.is_some() {
            let e = c.error.map(|e| (Code::from(e.code as i32), e.message));
            return (text, e, c.usage);
        }
    }
    panic!("the reply ended without a final chunk");
}

fn send(w: &Worker, id: &str, key: &str, text: &str) -> ReplyStream {
    w.submit(message(id, key, text), Instant::now() + Duration::from_secs(30))
        .unwrap()
}

fn stream(tokens: Vec<&'static str>) -> Act {
    Act::Stream {
        tokens,
        first: Duration::ZERO,
        gap: Duration::ZERO,
    }
}

#[tokio::test]
async fn tokens_stream_through_and_follow_ups_carry_the_conversation_with_a_stable_prefix() {
    let (f, addr) = fake(vec![stream(vec!["Hel", "lo"]), stream(vec!["Fine."])]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let (text, err, usage) = collect(send(&w, "m1", "c1", "hi")).await;
    assert_eq!((text.as_str(), err), ("Hello", None));
    let usage = usage.expect("usage on the final chunk");
    assert_eq!(
        (usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens),
        (11, 2, 7)
    );
    assert_eq!(usage.backend, "fake");
    let (text, _, _) = collect(send(&w, "m2", "c1", "how are you?")).await;
    assert_eq!(text, "Fine.");
    let bodies = f.bodies.lock().unwrap().clone();
    let first = &bodies[0]["messages"];
    let second = &bodies[1]["messages"];
    assert_eq!(first.as_array().unwrap().len(), 2, "{first}");
    // The second prompt begins with the whole first one, byte for byte.
    assert_eq!(&second.as_array().unwrap()[..2], first.as_array().unwrap().as_slice());
    assert_eq!(second[2], serde_json::json!({"role": "assistant", "content": "Hello"}));
    assert_eq!(
        second[3],
        serde_json::json!({"role": "user", "content": "how are you?"})
    );
    assert_eq!(bodies[1]["stream"], true);
    assert_eq!(bodies[1]["model"], "fake-model");
}

#[tokio::test]
async fn a_429_with_retry_after_and_a_500_are_retried_before_the_first_token() {
    let (f, addr) = fake(vec![
        Act::Status(429, Some(0)),
        Act::Status(500, None),
        stream(vec!["ok"]),
    ])
    .await;
    let p = OpenAi::new(config(addr)).unwrap();
    let w = worker(p);
    let (text, err, _) = collect(send(&w, "m1", "c", "hi")).await;
    assert_eq!((text.as_str(), err), ("ok", None));
    assert_eq!(f.requests.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn retries_give_up_with_a_clear_error_and_the_worker_goes_on() {
    let (f, addr) = fake(vec![Act::Status(503, None)]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let (_, err, _) = collect(send(&w, "m1", "c", "hi")).await;
    let (code, why) = err.expect("an error");
    assert_eq!(code, Code::Unavailable);
    assert!(why.contains("503") && why.contains("after 3 attempts"), "{why}");
    assert_eq!(f.requests.load(Ordering::Relaxed), 3);
    // A 4xx other than 429 is not retried.
    let (f, addr) = fake(vec![Act::Status(400, None)]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let (_, err, _) = collect(send(&w, "m2", "c", "hi")).await;
    assert_eq!(err.unwrap().0, Code::FailedPrecondition);
    assert_eq!(f.requests.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_failure_after_the_first_token_ends_the_reply_saying_so_and_sends_nothing_twice() {
    for act in [Act::Malformed(vec!["par", "tial"]), Act::Drop(vec!["par", "tial"])] {
        let (f, addr) = fake(vec![act.clone(), stream(vec!["never"])]).await;
        let w = worker(OpenAi::new(config(addr)).unwrap());
        let (text, err, _) = collect(send(&w, "m1", "c", "hi")).await;
        assert_eq!(text, "partial", "{act:?}");
        let (code, why) = err.expect("an error");
        assert_eq!(code, Code::Aborted, "{act:?}: {why}");
        assert!(why.contains("incomplete"), "{why}");
        // Not retried: the tokens already sent would be sent again.
        assert_eq!(f.requests.load(Ordering::Relaxed), 1, "{act:?}");
    }
}

#[tokio::test]
async fn a_slow_first_token_and_a_stalled_stream_time_out() {
    let slow = Act::Stream {
        tokens: vec!["late"],
        first: Duration::from_secs(3),
        gap: Duration::ZERO,
    };
    let (_, addr) = fake(vec![slow]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let started = std::time::Instant::now();
    let (text, err, _) = collect(send(&w, "m1", "c", "hi")).await;
    let (code, why) = err.unwrap();
    assert_eq!((text.as_str(), code), ("", Code::DeadlineExceeded));
    assert!(why.contains("first token"), "{why}");
    assert!(started.elapsed() < Duration::from_secs(2));

    let (_, addr) = fake(vec![Act::Stall]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let (text, err, _) = collect(send(&w, "m1", "c", "hi")).await;
    let (code, why) = err.unwrap();
    assert_eq!((text.as_str(), code), ("only", Code::DeadlineExceeded));
    assert!(why.contains("stalled") && why.contains("incomplete"), "{why}");
}

#[tokio::test]
async fn a_cancelled_message_closes_its_backend_request() {
    let long = Act::Stream {
        tokens: vec!["a"; 100],
        first: Duration::ZERO,
        gap: Duration::from_millis(50),
    };
    let (f, addr) = fake(vec![long]).await;
    let w = worker(OpenAi::new(config(addr)).unwrap());
    let mut reply = send(&w, "m1", "c", "hi");
    let first = reply.next().await.unwrap().unwrap();
    assert_eq!(first.data, "a");
    drop(reply);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while f.abandoned.load(Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the backend's stream was not closed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(w.stats().cancelled, 1);
}

#[tokio::test]
async fn an_overloaded_backend_refuses_at_once_with_a_retry_hint() {
    let long = Act::Stream {
        tokens: vec!["a"; 20],
        first: Duration::ZERO,
        gap: Duration::from_millis(50),
    };
    let (_, addr) = fake(vec![long]).await;
    let w = worker(
        OpenAi::new(OpenAiConfig {
            max_concurrency: 1,
            max_queue: 1,
            ..config(addr)
        })
        .unwrap(),
    );
    // Three conversations: one runs, one waits, the third is refused.
    let a = send(&w, "m1", "c1", "hi");
    let b = send(&w, "m2", "c2", "hi");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, err, _) = collect(send(&w, "m3", "c3", "hi")).await;
    let (code, why) = err.expect("refused");
    assert_eq!(code, Code::ResourceExhausted);
    assert!(why.contains("retry"), "{why}");
    assert!(collect(a).await.1.is_none());
    assert!(collect(b).await.1.is_none());
}

#[tokio::test]
async fn a_conversation_new_to_this_worker_gets_its_history_from_the_bridge() {
    // The bridge's history API: one answered turn, one that failed, and the
    // message being answered now.
    let history = serde_json::json!({"key": "moved", "messages": [
        {"id": "A", "kind": "MESSAGE_KIND_INBOUND", "payload": "my name is Ada"},
        {"id": "A", "kind": "MESSAGE_KIND_REPLY", "payload": "Hello Ada."},
        {"id": "B", "kind": "MESSAGE_KIND_INBOUND", "payload": "lost"},
        {"id": "B", "kind": "MESSAGE_KIND_REPLY", "payload": "", "error": {"code": 14, "message": "owner died"}},
        {"id": "m1", "kind": "MESSAGE_KIND_INBOUND", "payload": "what is my name?"},
    ]});
    let app = Router::new().route(
        "/v1/conversations/{key}/messages",
        axum::routing::get(move || {
            let h = history.clone();
            async move { axum::Json(h) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bridge = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let (f, addr) = fake(vec![stream(vec!["Ada."])]).await;
    let p = OpenAi::new(OpenAiConfig {
        history: Some(bridge.to_string()),
        ..config(addr)
    })
    .unwrap();
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(p));
    let (text, err, _) = collect(send(&w, "m1", "moved", "what is my name?")).await;
    assert_eq!((text.as_str(), err), ("Ada.", None));
    let sent = f.bodies.lock().unwrap()[0]["messages"].clone();
    assert_eq!(
        sent,
        serde_json::json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "my name is Ada"},
            {"role": "assistant", "content": "Hello Ada."},
            {"role": "user", "content": "what is my name?"},
        ])
    );
}

#[tokio::test]
async fn an_https_backend_is_verified_against_the_configured_cas() {
    let (f, addr) = fake_https(vec![stream(vec!["sec", "ure"])]).await;
    let ca = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../node/tests/tls/ca.pem")).unwrap();
    let https = |ca: &[u8]| OpenAiConfig {
        base_url: format!("https://{addr}/v1"),
        ca_pem: Some(ca.to_vec()),
        retries: 0,
        ..config(addr)
    };
    let w = worker(OpenAi::new(https(&ca)).unwrap());
    let (text, err, _) = collect(send(&w, "m1", "c", "hi")).await;
    assert_eq!((text.as_str(), err), ("secure", None));
    // A CA that did not sign the server's certificate: refused, nothing asked.
    let other = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../node/tests/tls/other-ca.pem")).unwrap();
    let w = worker(OpenAi::new(https(&other)).unwrap());
    let (_, err, _) = collect(send(&w, "m2", "c", "hi")).await;
    let (code, why) = err.expect("refused");
    assert_eq!(code, Code::Unavailable, "{why}");
    assert!(why.contains("TLS"), "{why}");
    assert_eq!(f.requests.load(Ordering::Relaxed), 1);
}
