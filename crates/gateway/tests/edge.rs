//! The client edge end to end over real sockets: in-process nodes (gossip,
//! mesh gRPC, a worker running the echo processor) and gateways serving
//! the edge, driven by WebSocket and HTTP clients.

mod support;

use std::time::Duration;

use futures_util::SinkExt as _;
use serde_json::{Value, json};
use support::*;

#[tokio::test]
async fn a_message_over_a_websocket_streams_accepted_chunks_and_done_in_json_and_in_protobuf() {
    let c = Cluster::start(Setup::default()).await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"hello": {"versions": [1], "client": "test"}})).await;
    let welcome = ws.next().await;
    assert_eq!(welcome["welcome"]["version"], 1, "{welcome}");
    ws.send(json!({"send": {"conversation": "c1", "client_id": "a1", "text": "hello mesh"}}))
        .await;
    let frames = ws.reply("a1").await;
    assert!(
        frames[0]["accepted"]["message_id"]
            .as_str()
            .is_some_and(|id| id.len() == 26)
    );
    let text: String = frames.iter().filter_map(|f| f["chunk"]["text"].as_str()).collect();
    assert_eq!(text, "hello mesh");
    let done = &frames.last().unwrap()["done"];
    assert!(done["worker"].as_str().unwrap().starts_with("worker-"), "{done}");
    // Chunks and done carry their places in the conversation's events.
    let seqs: Vec<u64> = frames
        .iter()
        .filter_map(|f| f.get("chunk").or(f.get("done")))
        .map(|f| f["position"]["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");

    // The same on a binary frame: protobuf in, protobuf out.
    let reply = ws.send_proto("c1", "p1", "in protobuf").await;
    assert_eq!(reply.text, "in protobuf");
    assert!(reply.done);
}

#[tokio::test]
async fn many_conversations_in_flight_on_one_connection_each_get_their_own_reply() {
    let c = Cluster::start(Setup {
        echo_delay: Duration::from_millis(20),
        ..Setup::default()
    })
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    for i in 0..20 {
        ws.send(json!({"send": {"conversation": format!("conv-{}", i % 7), "client_id": format!("m{i}"), "text": format!("message number {i}")}}))
            .await;
    }
    let mut texts = std::collections::BTreeMap::<String, String>::new();
    let mut done = 0;
    while done < 20 {
        let f = ws.next().await;
        if let Some(ch) = f.get("chunk") {
            texts
                .entry(ch["client_id"].as_str().unwrap().to_owned())
                .or_default()
                .push_str(ch["text"].as_str().unwrap());
        } else if f.get("done").is_some() {
            done += 1;
        } else {
            assert!(f.get("accepted").is_some(), "{f}");
        }
    }
    for i in 0..20 {
        assert_eq!(texts[&format!("m{i}")], format!("message number {i}"));
    }
}

#[tokio::test]
async fn bad_frames_get_an_error_naming_what_was_wrong_and_the_connection_stays_usable() {
    let c = Cluster::start(Setup::default()).await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    let cases: [(&str, &str); 4] = [
        ("{not json", "not a client frame"),
        (r#"{"shout": {"loud": true}}"#, "no known kind"),
        (r#"{"send": {"conversation": 42}}"#, "invalid type"),
        (r#"{"send": {"conversation": "", "text": "x"}}"#, "conversation"),
    ];
    for (frame, says) in cases {
        ws.send_text(frame).await;
        let e = ws.next().await;
        let code = e["error"]["code"].as_str().unwrap_or_default();
        assert!(
            code == "ERROR_CODE_BAD_FRAME" || code == "ERROR_CODE_INVALID_ARGUMENT",
            "{frame}: {e}"
        );
        assert!(e["error"]["message"].as_str().unwrap().contains(says), "{frame}: {e}");
    }
    ws.send_binary(vec![0xff, 0xff, 0xff, 0xff]).await;
    let e = ws.next_proto().await;
    assert_eq!(e.error_code(), Some(proto::edge::ErrorCode::BadFrame));
    // Still usable, and nothing half-processed reached the mesh.
    assert_eq!(c.mesh_messages(), 0);
    ws.send(json!({"send": {"conversation": "c", "client_id": "ok", "text": "fine"}}))
        .await;
    assert!(ws.reply("ok").await.last().unwrap().get("done").is_some());
}

#[tokio::test]
async fn no_credential_or_a_wrong_one_is_refused_and_nothing_reaches_the_mesh() {
    let c = Cluster::start(Setup::default()).await;
    for token in [None, Some("wrong-key"), Some("a.b.c")] {
        let mut ws = c.ws(0, token).await.unwrap();
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 1008, "{token:?}");
        assert!(reason.starts_with("unauthenticated"), "{reason}");
        let (status, body) = c
            .post(0, "/v1/conversations/c/messages", token, r#"{"text": "hi"}"#)
            .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("ERROR_CODE_UNAUTHENTICATED"), "{body}");
        let (status, body) = c
            .post(
                0,
                "/v1/chat/completions",
                token,
                r#"{"model": "echo", "messages": [{"role": "user", "content": "hi"}]}"#,
            )
            .await;
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("authentication_error"), "{body}");
    }
    assert_eq!(c.mesh_messages(), 0);
    assert!(c.edge(0).stats().auth_failures >= 9);
}

#[tokio::test]
async fn a_credential_is_held_to_its_conversation_prefix_and_to_watching_only() {
    let c = Cluster::start(Setup::default()).await;
    let mut ws = c.ws(0, Some(TENANT_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "t2/x", "client_id": "a", "text": "hi"}}))
        .await;
    let e = ws.next().await;
    assert_eq!(e["error"]["code"], "ERROR_CODE_PERMISSION_DENIED", "{e}");
    ws.send(json!({"watch": {"conversation": "t2/x"}})).await;
    assert_eq!(ws.next().await["error"]["code"], "ERROR_CODE_PERMISSION_DENIED");
    ws.send(json!({"send": {"conversation": "t1/x", "client_id": "b", "text": "mine"}}))
        .await;
    assert!(ws.reply("b").await.last().unwrap().get("done").is_some());
    let (status, _) = c
        .post(
            0,
            "/v1/conversations/t2%2Fx/messages",
            Some(TENANT_KEY),
            r#"{"text": "hi"}"#,
        )
        .await;
    assert_eq!(status, 403);

    let mut watcher = c.ws(0, Some(WATCH_KEY)).await.unwrap();
    watcher
        .send(json!({"send": {"conversation": "any", "client_id": "w", "text": "hi"}}))
        .await;
    assert_eq!(watcher.next().await["error"]["code"], "ERROR_CODE_PERMISSION_DENIED");
    watcher.send(json!({"watch": {"conversation": "any"}})).await;
    assert!(watcher.next().await.get("watching").is_some());
}

#[tokio::test]
async fn jwts_are_checked_for_signature_expiry_not_before_and_audience() {
    let c = Cluster::start(Setup::default()).await;
    let now = unix_now();
    let good = json!({"sub": "u1", "aud": AUDIENCE, "exp": now + 600, "rumor_prefix": "u1/"});
    for token in [jwt_hs256(&good), jwt_rs256(&good)] {
        let (status, body) = c
            .post(
                0,
                "/v1/conversations/u1%2Fa/messages",
                Some(&token),
                r#"{"text": "hi"}"#,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        // The claim's prefix holds.
        let (status, _) = c
            .post(
                0,
                "/v1/conversations/u2%2Fa/messages",
                Some(&token),
                r#"{"text": "hi"}"#,
            )
            .await;
        assert_eq!(status, 403);
    }
    let bad = [
        ("expired", json!({"sub": "u1", "aud": AUDIENCE, "exp": now - 600})),
        (
            "not yet valid",
            json!({"sub": "u1", "aud": AUDIENCE, "exp": now + 600, "nbf": now + 300}),
        ),
        (
            "another audience",
            json!({"sub": "u1", "aud": "elsewhere", "exp": now + 600}),
        ),
        ("no expiry", json!({"sub": "u1", "aud": AUDIENCE})),
    ];
    for (why, claims) in bad {
        let (status, body) = c
            .post(
                0,
                "/v1/conversations/u1%2Fa/messages",
                Some(&jwt_hs256(&claims)),
                r#"{"text": "hi"}"#,
            )
            .await;
        assert_eq!(status, 401, "{why}: {body}");
    }
    // Signed with another secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&[7u8; 32]).unwrap(),
    )
    .unwrap();
    let (status, _) = c
        .post(
            0,
            "/v1/conversations/u1%2Fa/messages",
            Some(&forged),
            r#"{"text": "hi"}"#,
        )
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn http_answers_the_whole_reply_as_json_or_streams_it_as_server_sent_events() {
    let c = Cluster::start(Setup::default()).await;
    let (status, body) = c
        .post(
            0,
            "/v1/conversations/h1/messages",
            Some(APP_KEY),
            r#"{"text": "whole reply", "client_id": "x"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reply["text"], "whole reply");
    assert_eq!(reply["client_id"], "x");

    let (status, headers, body) = c
        .post_sse(
            0,
            "/v1/conversations/h1/messages",
            Some(APP_KEY),
            r#"{"text": "streamed"}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").unwrap(), "text/event-stream");
    assert_eq!(headers.get("cache-control").unwrap(), "no-cache");
    assert_eq!(headers.get("x-accel-buffering").unwrap(), "no");
    let events = sse_events(&body);
    assert_eq!(events.first().unwrap().0, "accepted");
    assert_eq!(events.last().unwrap().0, "done");
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "chunk")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "streamed");
}

#[tokio::test]
async fn the_openai_api_routes_turns_of_one_conversation_to_one_worker() {
    let c = Cluster::start(Setup {
        workers: 3,
        ..Setup::default()
    })
    .await;
    let (status, body) = c.get(0, "/v1/models", Some(APP_KEY)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""id":"echo""#), "{body}");
    let turn = |history: Vec<Value>| json!({"model": "echo", "messages": history}).to_string();
    let mut history = vec![
        json!({"role": "system", "content": "be brief"}),
        json!({"role": "user", "content": "first question"}),
    ];
    let before = c.per_worker();
    for i in 0..4 {
        let (status, body) = c
            .post(0, "/v1/chat/completions", Some(APP_KEY), &turn(history.clone()))
            .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let answer = v["choices"][0]["message"]["content"].as_str().unwrap().to_owned();
        assert_eq!(
            answer,
            if i == 0 {
                "first question".to_owned()
            } else {
                format!("question {i}")
            }
        );
        history.push(json!({"role": "assistant", "content": answer}));
        history.push(json!({"role": "user", "content": format!("question {}", i + 1)}));
    }
    // Every turn went to one worker.
    let grew: Vec<u64> = c.per_worker().iter().zip(&before).map(|(a, b)| a - b).collect();
    assert_eq!(grew.iter().filter(|&&n| n > 0).count(), 1, "{grew:?}");
    assert_eq!(grew.iter().sum::<u64>(), 4, "{grew:?}");
    // An unknown model is refused in OpenAI's shape.
    let (status, body) = c
        .post(
            0,
            "/v1/chat/completions",
            Some(APP_KEY),
            r#"{"model": "gpt-nothing", "messages": [{"role": "user", "content": "hi"}]}"#,
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("model_not_found"), "{body}");
    // Streaming, in the chunk format, ending with [DONE].
    let (status, _, body) = c
        .post_sse(
            0,
            "/v1/chat/completions",
            Some(APP_KEY),
            r#"{"model": "echo", "stream": true, "messages": [{"role": "user", "content": "stream me"}]}"#,
        )
        .await;
    assert_eq!(status, 200);
    let data: Vec<String> = sse_events(&body).into_iter().map(|(_, d)| d).collect();
    assert_eq!(data.last().unwrap(), "[DONE]");
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|v| v["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, "stream me");
}

fn limited(f: impl FnOnce(&mut gateway::Limits)) -> Setup {
    let mut limits = gateway::Limits::default();
    f(&mut limits);
    Setup {
        limits,
        ..Setup::default()
    }
}

#[tokio::test]
async fn frames_and_texts_over_their_size_are_refused_clearly() {
    let c = Cluster::start(limited(|l| {
        l.max_frame_bytes = 4096;
        l.max_text_bytes = 100;
    }))
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "s", "client_id": "big", "text": "x".repeat(200)}}))
        .await;
    let e = ws.next().await;
    assert_eq!(e["error"]["code"], "ERROR_CODE_TOO_LARGE", "{e}");
    assert_eq!(e["error"]["client_id"], "big");
    // The connection stays usable after an error frame.
    ws.send(json!({"send": {"conversation": "s", "client_id": "small", "text": "fits"}}))
        .await;
    assert!(ws.reply("small").await.last().unwrap().get("done").is_some());
    // A frame over the frame limit closes with 1009.
    ws.send(json!({"send": {"conversation": "s", "client_id": "huge", "text": "x".repeat(5000)}}))
        .await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1009, "{reason}");
    // HTTP: 413 for a body over the frame limit, and for a text over its own.
    let (status, body) = c
        .post(
            0,
            "/v1/conversations/s/messages",
            Some(APP_KEY),
            &json!({"text": "x".repeat(5000)}).to_string(),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = c
        .post(
            0,
            "/v1/conversations/s/messages",
            Some(APP_KEY),
            &json!({"text": "x".repeat(200)}).to_string(),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("ERROR_CODE_TOO_LARGE"), "{body}");
    assert_eq!(c.mesh_messages(), 1);
}

#[tokio::test]
async fn in_flight_messages_per_connection_are_bounded() {
    let c = Cluster::start(Setup {
        echo_delay: Duration::from_millis(100),
        ..limited(|l| l.max_in_flight = 2)
    })
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    for i in 0..3 {
        ws.send(json!({"send": {"conversation": format!("f{i}"), "client_id": format!("m{i}"), "text": "slow reply"}}))
            .await;
    }
    let e = ws.reply("m2").await;
    assert_eq!(e[0]["error"]["code"], "ERROR_CODE_TOO_MANY_IN_FLIGHT", "{e:?}");
    for id in ["m0", "m1"] {
        assert!(ws.reply(id).await.last().unwrap().get("done").is_some());
    }
    // Once they are done there is room again.
    ws.send(json!({"send": {"conversation": "f3", "client_id": "m3", "text": "again"}}))
        .await;
    assert!(ws.reply("m3").await.last().unwrap().get("done").is_some());
}

#[tokio::test]
async fn a_credential_over_its_rate_is_told_when_to_retry() {
    let c = Cluster::start(limited(|l| {
        l.messages_per_second = 1;
        l.burst = 3;
    }))
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    for i in 0..4 {
        ws.send(json!({"send": {"conversation": "r", "client_id": format!("m{i}"), "text": "hi"}}))
            .await;
    }
    let e = ws.reply("m3").await;
    assert_eq!(e[0]["error"]["code"], "ERROR_CODE_RATE_LIMITED", "{e:?}");
    let retry = e[0]["error"]["retry_after_ms"].as_u64().unwrap();
    assert!(retry > 0 && retry <= 1000, "{retry}");
    // The same credential is limited on HTTP too, with Retry-After.
    let (status, headers, body) = http(
        c.edge_addr(0),
        "POST",
        "/v1/conversations/r/messages",
        Some(APP_KEY),
        Some(r#"{"text": "hi"}"#),
        None,
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(c.mesh_messages(), 3);
    assert_eq!(c.edge(0).stats().rate_limited, 2);
}

#[tokio::test]
async fn connections_are_bounded_per_credential_and_in_total() {
    let c = Cluster::start(limited(|l| {
        l.max_connections_per_credential = 2;
        l.max_connections = 3;
    }))
    .await;
    let _a = c.ws(0, Some(APP_KEY)).await.unwrap();
    let _b = c.ws(0, Some(APP_KEY)).await.unwrap();
    match c.ws(0, Some(APP_KEY)).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("a third connection of one credential: {:?}", other.map(drop)),
    }
    let _t = c.ws(0, Some(TENANT_KEY)).await.unwrap();
    match c.ws(0, Some(WATCH_KEY)).await {
        Err(tungstenite::Error::Http(r)) => assert_eq!(r.status(), 503),
        other => panic!("a connection over the total: {:?}", other.map(drop)),
    }
    drop(_a);
    // The slot is freed when the connection ends.
    tokio::time::timeout(LIMIT, async {
        while c.ws(0, Some(APP_KEY)).await.is_err() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert!(c.edge(0).stats().connections_refused >= 2);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_closed_and_the_gateway_holds_a_bounded_queue() {
    let c = Cluster::start(Setup {
        echo_chunks: 8,
        ..limited(|l| {
            l.send_queue_bytes = 256 * 1024;
            l.burst = 1000;
            l.messages_per_second = 1000;
            l.max_in_flight = 1000;
        })
    })
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    // Each reply comes back twice (as a reply and as watched events): about
    // 16 MB, more than the kernel's socket buffers hold. The client sends
    // and never reads.
    let text = "y".repeat(200_000);
    for i in 0..10 {
        ws.send(json!({"watch": {"conversation": format!("q{i}")}})).await;
    }
    for i in 0..40 {
        let f = json!({"send": {"conversation": format!("q{}", i % 10), "client_id": format!("m{i}"), "text": text}});
        if ws.stream.send(tungstenite::Message::text(f.to_string())).await.is_err() {
            break;
        }
    }
    tokio::time::timeout(LIMIT, async {
        while c.edge(0).stats().slow_readers == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the gateway closes the slow reader");
    // Reading now, the client finds the close and its reason after what
    // was already in its socket.
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("slow reader"), "{reason}");
    tokio::time::timeout(LIMIT, async {
        while c.edge(0).connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the connection is let go");
}

#[tokio::test]
async fn a_cancel_stops_the_processor_at_once() {
    let c = Cluster::start(Setup {
        echo_chunks: 50,
        echo_delay: Duration::from_millis(100),
        ..Setup::default()
    })
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "k", "client_id": "long", "text": "z".repeat(50)}}))
        .await;
    let accepted = ws.next().await;
    let id = accepted["accepted"]["message_id"].as_str().unwrap().to_owned();
    let first = ws.next().await;
    assert!(first.get("chunk").is_some(), "{first}");
    let started = std::time::Instant::now();
    ws.send(json!({"cancel": {"conversation": "k", "message_id": id}}))
        .await;
    let frames = ws.reply("long").await;
    let end = frames.last().unwrap();
    assert_eq!(end["error"]["code"], "ERROR_CODE_CANCELLED", "{end}");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    tokio::time::timeout(LIMIT, async {
        while c.worker_stats().iter().map(|s| s.cancelled).sum::<u64>() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the worker counts the cancel");
    assert_eq!(c.edge(0).stats().cancels, 1);
}

#[tokio::test]
async fn a_disconnect_without_resume_cancels_after_the_grace() {
    let c = Cluster::start(Setup {
        echo_chunks: 50,
        echo_delay: Duration::from_millis(100),
        resume_grace: Duration::from_millis(300),
        ..Setup::default()
    })
    .await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "d", "client_id": "gone", "text": "z".repeat(50)}}))
        .await;
    assert!(ws.next().await.get("accepted").is_some());
    let dropped = std::time::Instant::now();
    drop(ws);
    tokio::time::timeout(LIMIT, async {
        while c.worker_stats().iter().map(|s| s.cancelled).sum::<u64>() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the owner cancels the orphaned reply: {:?} {:?}",
            c.worker_stats(),
            c.edge(0).stats()
        )
    });
    let after = dropped.elapsed();
    // Not before the grace, and well before the reply's 5 s would end.
    assert!(
        after >= Duration::from_millis(300) && after < Duration::from_secs(3),
        "{after:?}"
    );
    assert_eq!(c.edge(0).stats().orphaned, 1);
}

/// Reads event frames until `end` says so; returns them.
async fn events_until(ws: &mut Ws, mut end: impl FnMut(&Value) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let f = ws.next().await;
        let Some(e) = f.get("event") else { continue };
        let stop = end(e);
        events.push(e.clone());
        if stop {
            return events;
        }
    }
}

fn chunk_text(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["chunk"]["text"].as_str()).collect()
}

#[tokio::test]
async fn a_client_that_reconnects_within_the_grace_resumes_the_reply_without_a_hole() {
    let c = Cluster::start(Setup {
        echo_chunks: 10,
        echo_delay: Duration::from_millis(100),
        resume_grace: Duration::from_secs(10),
        ..Setup::default()
    })
    .await;
    let text = "abcdefghij".repeat(3);
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "res", "client_id": "r", "text": text}}))
        .await;
    let mut seen = String::new();
    let mut last = Value::Null;
    while seen.len() < 9 {
        let f = ws.next().await;
        if let Some(ch) = f.get("chunk") {
            seen.push_str(ch["text"].as_str().unwrap());
            last = ch["position"].clone();
        }
    }
    drop(ws);
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"watch": {"conversation": "res", "after": last}})).await;
    let events = events_until(&mut ws, |e| e.get("end").is_some()).await;
    assert!(events.iter().all(|e| e.get("gap").is_none()), "{events:?}");
    seen.push_str(&chunk_text(&events));
    assert_eq!(seen, text);
    let seqs: Vec<u64> = events
        .iter()
        .map(|e| e["position"]["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    let first: u64 = last["seq"].as_str().unwrap().parse().unwrap();
    assert_eq!(seqs[0], first + 1, "{events:?}");
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
    assert_eq!(c.worker_stats().iter().map(|s| s.cancelled).sum::<u64>(), 0);
}

#[tokio::test]
async fn a_watcher_on_another_gateway_sees_messages_sent_on_the_first_and_injected_through_the_bridge() {
    let c = Cluster::start(Setup {
        gateways: 2,
        bridge: true,
        ..Setup::default()
    })
    .await;
    c.converge().await;
    let mut watcher = c.ws(1, Some(WATCH_KEY)).await.unwrap();
    watcher.send(json!({"watch": {"conversation": "shared"}})).await;
    let w = watcher.next().await;
    assert!(w.get("watching").is_some(), "{w}");

    let mut sender = c.ws(0, Some(APP_KEY)).await.unwrap();
    sender
        .send(json!({"send": {"conversation": "shared", "client_id": "s1", "text": "from gateway one"}}))
        .await;
    assert!(sender.reply("s1").await.last().unwrap().get("done").is_some());
    let events = events_until(&mut watcher, |e| e.get("end").is_some()).await;
    assert_eq!(events[0]["message"]["text"], "from gateway one", "{events:?}");
    assert_eq!(chunk_text(&events), "from gateway one");

    let bridge = c.bridge.as_ref().unwrap().addr();
    let (status, _, body) = http(
        bridge,
        "POST",
        "/v1/forward",
        None,
        Some(r#"{"key": "shared", "payload": "from outside", "source": "crm"}"#),
        None,
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let injected = events_until(&mut watcher, |e| e.get("end").is_some()).await;
    assert_eq!(injected[0]["message"]["text"], "from outside", "{injected:?}");
    assert_eq!(injected[0]["message"]["source"], "bridge:crm", "{injected:?}");
    assert_eq!(chunk_text(&injected), "from outside");
    // One order for everything: sequence numbers continue across both.
    let seqs: Vec<u64> = events
        .iter()
        .chain(&injected)
        .map(|e| e["position"]["seq"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
}

#[tokio::test]
async fn a_position_the_owner_cannot_continue_gets_a_gap_then_the_stored_history() {
    let c = Cluster::start(Setup {
        bridge: true,
        ..Setup::default()
    })
    .await;
    c.converge().await;
    let mut ws = c.ws(0, Some(APP_KEY)).await.unwrap();
    ws.send(json!({"send": {"conversation": "hist", "client_id": "h", "text": "remember me"}}))
        .await;
    assert!(ws.reply("h").await.last().unwrap().get("done").is_some());
    // The bridge has stored the message and its reply.
    let bridge = c.bridge.as_ref().unwrap().addr();
    tokio::time::timeout(LIMIT, async {
        loop {
            let (_, _, body) = http(bridge, "GET", "/v1/conversations/hist/messages", None, None, None).await;
            if body.contains("\"reply\"") || body.matches("remember me").count() >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the bridge stores the conversation");
    // A position from an epoch the owner never had (its previous life).
    ws.send(json!({"watch": {"conversation": "hist", "after": {"epoch": "stale-epoch", "seq": "7"}}}))
        .await;
    let mut events = Vec::new();
    while events.iter().filter(|e: &&Value| e.get("stored").is_some()).count() < 2 {
        let f = ws.next().await;
        if let Some(e) = f.get("event") {
            events.push(e.clone());
        }
    }
    assert_eq!(events[0]["gap"]["reason"], "epoch", "{events:?}");
    let stored: Vec<&Value> = events.iter().filter_map(|e| e.get("stored")).collect();
    assert!(
        stored
            .iter()
            .any(|s| s["kind"] == "inbound" && s["text"] == "remember me"),
        "{stored:?}"
    );
    assert!(
        stored
            .iter()
            .any(|s| s["kind"] == "reply" && s["text"] == "remember me"),
        "{stored:?}"
    );
    // Then what the owner still buffers of its own epoch, in order, and
    // live events after it.
    let replay = events_until(&mut ws, |e| e.get("end").is_some()).await;
    assert_eq!(replay[0]["message"]["text"], "remember me", "{replay:?}");
    assert_eq!(replay[0]["position"]["seq"], "1", "{replay:?}");
    ws.send(json!({"send": {"conversation": "hist", "client_id": "h2", "text": "and now"}}))
        .await;
    let live = events_until(&mut ws, |e| e.get("end").is_some()).await;
    assert_eq!(live[0]["message"]["text"], "and now", "{live:?}");
    assert_eq!(live[0]["position"]["seq"], "6", "{live:?}");
}
