//! The OpenAI-compatible processor against a real model: llama.cpp's server
//! with SmolLM2-135M-Instruct, which `scripts/test` starts
//! (`scripts/llama-server`) and names in `RUMOR_TEST_LLAMA` (its base URL,
//! `http://127.0.0.1:PORT/v1`). Real inference, real token streaming, the
//! server's own prefix-cache figures, and its slots freed by a cancel.

use std::sync::Arc;
use std::time::Duration;

use node::worker::{ReplyStream, Worker, WorkerConfig};
use processors::{OpenAi, OpenAiConfig};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;
use tokio_stream::StreamExt as _;

fn base_url() -> String {
    std::env::var("RUMOR_TEST_LLAMA").unwrap_or_else(|_| {
        panic!(
            "RUMOR_TEST_LLAMA is not set: run scripts/test, or start scripts/llama-server 8091 and set \
             RUMOR_TEST_LLAMA=http://127.0.0.1:8091/v1"
        )
    })
}

fn processor(max_tokens: u32) -> OpenAi {
    OpenAi::new(OpenAiConfig {
        name: "llama".into(),
        base_url: base_url(),
        model: "SmolLM2-135M-Instruct".into(),
        // The machine is shared: generous timeouts, the tests time nothing.
        first_token_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_secs(60),
        total_timeout: Duration::from_secs(300),
        system_prompt: "You are a helpful assistant. Answer in one short sentence.".into(),
        max_tokens,
        ..OpenAiConfig::default()
    })
    .unwrap()
}

fn send(w: &Worker, id: &str, key: &str, text: &str) -> ReplyStream {
    let m = Envelope {
        id: id.into(),
        key: key.into(),
        payload: Bytes::copy_from_slice(text.as_bytes()),
        ..Default::default()
    };
    w.submit(m, Instant::now() + Duration::from_secs(300)).unwrap()
}

async fn collect(mut reply: ReplyStream) -> (String, usize, proto::mesh::Usage) {
    let mut text = String::new();
    let mut chunks = 0;
    while let Some(c) = reply.next().await {
        let c = c.expect("not refused");
        if let Some(e) = c.error {
            panic!("the model failed: {} {}", e.code, e.message);
        }
        if !c.data.is_empty() {
            chunks += 1;
            text.push_str(&String::from_utf8_lossy(&c.data));
        }
        if c.last {
            return (text, chunks, c.usage.expect("usage on the final chunk"));
        }
    }
    panic!("the reply ended without a final chunk");
}

/// `GET /slots` of the server: how many slots are processing now.
async fn busy_slots() -> usize {
    let url = base_url();
    let authority = url.trim_start_matches("http://").split('/').next().unwrap().to_owned();
    let mut s = tokio::net::TcpStream::connect(&authority).await.unwrap();
    s.write_all(format!("GET /slots HTTP/1.0\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let slots: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("/slots: {e}: {body}"));
    slots
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["is_processing"] == true)
        .count()
}

#[tokio::test]
async fn a_real_model_streams_tokens_serves_a_follow_up_from_its_prefix_cache_and_frees_a_cancelled_slot() {
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(processor(24)));
    let (text, chunks, first) = collect(send(&w, "m1", "real-1", "What is the capital of France?")).await;
    assert!(!text.trim().is_empty());
    assert!(chunks > 1, "tokens arrive as they are made: {chunks} chunks");
    assert!(first.prompt_tokens > 0 && first.completion_tokens > 0, "{first:?}");
    assert_eq!(first.backend, "llama");
    let (_, _, second) = collect(send(&w, "m2", "real-1", "And of Italy?")).await;
    // The second prompt begins with the whole first exchange, so the
    // server's prefix cache serves that part; its own figures say how much.
    assert!(second.prompt_tokens > first.prompt_tokens, "{first:?} {second:?}");
    assert!(
        second.cached_tokens >= first.prompt_tokens,
        "the earlier turn's tokens come from the cache: {first:?} {second:?}"
    );

    // One test, so that no other request holds a slot while this one
    // watches the slots (nextest runs tests side by side).
    a_cancelled_message_frees_its_slot_on_the_real_server().await;
}

async fn a_cancelled_message_frees_its_slot_on_the_real_server() {
    let w = Worker::new("w", WorkerConfig::default(), Arc::new(processor(2000)));
    let mut reply = send(&w, "c1", "real-cancel", "Count from 1 to 1000, one number per line.");
    let first = reply.next().await.unwrap().unwrap();
    assert!(!first.data.is_empty());
    assert!(busy_slots().await >= 1, "the generation holds a slot");
    drop(reply);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while busy_slots().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the server still generates 10 s after the cancel"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(w.stats().cancelled, 1);
}
