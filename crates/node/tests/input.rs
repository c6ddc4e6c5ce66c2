//! Input from outside, at a node's two doors: the admin API's send route and
//! the mesh's gRPC `Deliver`. Every field is checked once by the shared rules
//! (`proto::rules`); a bad one gets a 400 or `INVALID_ARGUMENT` that names
//! it, nothing panics, and the node keeps serving.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use node::mesh::{MeshConfig, PROTOCOL_VERSION};
use node::{Node, NodeConfig, Role, Roles};
use proto::mesh::Envelope;
use proto::mesh::mesh_client::MeshClient;
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tonic::Code;

const LIMIT: Duration = Duration::from_secs(30);

/// One node that is both gateway and worker (echo), alone in its cluster.
async fn node() -> Node {
    let mut c = NodeConfig::new("solo");
    c.gossip.membership = membership::Config::for_tests();
    c.roles = Roles::of(&[Role::Gateway, Role::Worker]);
    c.processor = Some(Arc::new(processors::Echo::default()));
    c.mesh = MeshConfig::for_tests();
    let n = Node::start(c).await.unwrap();
    timeout(LIMIT, async {
        while n.router().table().ring().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the node sees itself as a worker");
    n
}

/// A gateway alone and a worker (echo) joined to it, with the worker on the
/// gateway's ring: what the gateway takes, it forwards.
async fn pair() -> (Node, Node) {
    let mut g = NodeConfig::new("gw");
    g.gossip.membership = membership::Config::for_tests();
    g.roles = Roles::of(&[Role::Gateway]);
    g.mesh = MeshConfig::for_tests();
    let gw = Node::start(g).await.unwrap();
    let mut w = NodeConfig::new("w");
    w.gossip.membership = membership::Config::for_tests();
    w.gossip.seeds = vec![gw.addrs().gossip];
    w.roles = Roles::of(&[Role::Worker]);
    w.processor = Some(Arc::new(processors::Echo::default()));
    w.mesh = MeshConfig::for_tests();
    let w = Node::start(w).await.unwrap();
    timeout(LIMIT, async {
        while gw.router().table().ring().is_empty() || w.router().table().ring().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the gateway sees the worker");
    (gw, w)
}

/// A plain HTTP/1.1 POST with a JSON body; returns (status, body).
async fn post(n: &Node, path: &str, body: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(n.addrs().admin).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method("POST")
        .uri(path)
        .header("host", "node")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let resp = timeout(LIMIT, send.send_request(req))
        .await
        .expect("an answer in time")
        .expect("an answer, not a dropped connection");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn mesh_client(n: &Node) -> MeshClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", n.addrs().mesh))
        .unwrap()
        .connect()
        .await
        .unwrap();
    MeshClient::new(channel)
}

fn peer_envelope(id: &str, key: &str) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        id: id.into(),
        key: key.into(),
        payload: Bytes::from_static(b"hello"),
        hops: 1,
        origin: "solo".into(),
        ..Default::default()
    }
}

/// The whole reply to a `Deliver`, or its refusal.
async fn deliver(n: &Node, env: Envelope) -> Result<String, tonic::Status> {
    let mut stream = mesh_client(n).await.deliver(env).await?.into_inner();
    let mut data = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        data.push_str(&String::from_utf8_lossy(&chunk.data));
        if let Some(e) = chunk.error {
            return Err(tonic::Status::new(Code::from(e.code as i32), e.message));
        }
        if chunk.last {
            return Ok(data);
        }
    }
    Err(tonic::Status::unknown("the reply ended without a last chunk"))
}

async fn still_serves(n: &Node) {
    let (status, body) = post(n, "/v1/send", r#"{"key":"after","payload":"still here"}"#).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"last\":true"), "{body}");
}

#[tokio::test]
async fn admin_send_refuses_timeouts_it_cannot_honour_with_a_400_naming_the_field() {
    let n = node().await;
    for timeout_ms in ["0", "360000000000000", "9223372036854775807", "18446744073709551615"] {
        let body = format!(r#"{{"key":"k","payload":"x","timeout_ms":{timeout_ms}}}"#);
        let (status, text) = post(&n, "/v1/send", &body).await;
        assert_eq!(status, 400, "timeout_ms {timeout_ms}: {text}");
        assert!(text.contains("timeout_ms"), "timeout_ms {timeout_ms}: {text}");
    }
    // The longest allowed timeout works.
    let (status, text) = post(&n, "/v1/send", r#"{"key":"k","payload":"x","timeout_ms":3600000}"#).await;
    assert_eq!(status, 200, "{text}");
    still_serves(&n).await;
}

#[tokio::test]
async fn admin_send_refuses_keys_ids_and_sources_the_store_cannot_keep() {
    let n = node().await;
    let long_key = "k".repeat(3000);
    for (body, field) in [
        (r#"{"key":"a\u0000b","payload":"x"}"#.to_owned(), "key"),
        (format!(r#"{{"key":"{long_key}","payload":"x"}}"#), "key"),
        (r#"{"key":"","payload":"x"}"#.to_owned(), "key"),
        (r#"{"key":"k","payload":"x","id":"not-an-id"}"#.to_owned(), "id"),
        (r#"{"key":"k","payload":"x","source":"bridge"}"#.to_owned(), "source"),
    ] {
        let (status, text) = post(&n, "/v1/send", &body).await;
        assert_eq!(status, 400, "{field}: {text}");
        assert!(text.contains(&format!("`{field}`")), "{field}: {text}");
    }
    still_serves(&n).await;
}

#[tokio::test]
async fn a_peer_envelope_with_a_far_deadline_and_no_grpc_timeout_is_answered() {
    let (gw, _w) = pair().await;
    for deadline in [u64::MAX, u64::MAX / 2, 1 << 60] {
        let mut env = peer_envelope(&node::mesh::new_message_id(), "far");
        env.hops = 0;
        env.origin = "gw".into();
        env.deadline_unix_ms = deadline;
        // The gateway forwards it to the worker, with the time left clamped.
        assert_eq!(deliver(&gw, env).await.expect("answered"), "hello");
    }
    still_serves(&gw).await;
}

#[tokio::test]
async fn a_peer_envelope_with_fields_the_store_cannot_keep_gets_invalid_argument_naming_them() {
    let n = node().await;
    let good = node::mesh::new_message_id;
    let mut no_origin = peer_envelope(&good(), "k");
    no_origin.origin.clear();
    let mut bad_source = peer_envelope(&good(), "k");
    bad_source.source = "a\0b".into();
    for (env, field) in [
        (peer_envelope(&good(), "a\0b"), "key"),
        (peer_envelope(&good(), &"k".repeat(3000)), "key"),
        (peer_envelope("not-an-id", "k"), "id"),
        (no_origin, "origin"),
        (bad_source, "source"),
    ] {
        let status = deliver(&n, env).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(status.message().contains(&format!("`{field}`")), "{field}: {status:?}");
    }
    still_serves(&n).await;
}

#[tokio::test]
async fn only_envelopes_routed_with_another_table_count_as_checksum_mismatches() {
    let n = node().await;
    let ours = n.router().table().checksum();
    let mut same = peer_envelope(&node::mesh::new_message_id(), "k1");
    same.ring_checksum = ours;
    deliver(&n, same).await.unwrap();
    // A sender that does not say which table it routed with (checksum 0)
    // is not a disagreement.
    deliver(&n, peer_envelope(&node::mesh::new_message_id(), "k2"))
        .await
        .unwrap();
    assert_eq!(n.router().stats().checksum_mismatch, 0);
    let mut other = peer_envelope(&node::mesh::new_message_id(), "k3");
    other.ring_checksum = ours ^ 1;
    deliver(&n, other).await.unwrap();
    assert_eq!(n.router().stats().checksum_mismatch, 1);
}

#[tokio::test]
async fn the_node_not_the_caller_says_where_a_message_came_from() {
    let (gw, w) = pair().await;
    // An origin that is no member of the cluster.
    let mut stranger = peer_envelope(&node::mesh::new_message_id(), "k");
    stranger.origin = "intruder".into();
    let status = deliver(&w, stranger).await.expect_err("refused");
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(status.message().contains("`origin`"), "{status:?}");
    // A member that is not a forward node cannot say the bridge injected it.
    let mut posing = peer_envelope(&node::mesh::new_message_id(), "k");
    posing.origin = "gw".into();
    posing.source = "bridge".into();
    let status = deliver(&w, posing).await.expect_err("refused");
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("`source`"), "{status:?}");
    // As the gateway sends it, with no source, it is answered.
    let mut honest = peer_envelope(&node::mesh::new_message_id(), "k");
    honest.origin = "gw".into();
    assert_eq!(deliver(&w, honest).await.unwrap(), "hello");
    assert_eq!(w.router().stats().unknown_origin, 2);
    drop(gw);
}

/// Sends raw bytes as a `Deliver` request, as a broken or hostile client
/// would; tonic's own codec could not produce them.
mod raw {
    use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

    #[derive(Debug, Default, Clone)]
    pub(super) struct RawCodec;

    #[derive(Debug, Default)]
    pub(super) struct RawEncoder;

    #[derive(Debug, Default)]
    pub(super) struct ChunkDecoder;

    impl Codec for RawCodec {
        type Encode = Vec<u8>;
        type Decode = proto::mesh::ReplyChunk;
        type Encoder = RawEncoder;
        type Decoder = ChunkDecoder;

        fn encoder(&mut self) -> Self::Encoder {
            RawEncoder
        }

        fn decoder(&mut self) -> Self::Decoder {
            ChunkDecoder
        }
    }

    impl Encoder for RawEncoder {
        type Item = Vec<u8>;
        type Error = tonic::Status;

        fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
            use bytes::BufMut as _;
            dst.put_slice(&item);
            Ok(())
        }
    }

    impl Decoder for ChunkDecoder {
        type Item = proto::mesh::ReplyChunk;
        type Error = tonic::Status;

        fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, tonic::Status> {
            use proto::Message as _;
            proto::mesh::ReplyChunk::decode(src)
                .map(Some)
                .map_err(|e| tonic::Status::internal(e.to_string()))
        }
    }
}

#[tokio::test]
async fn bytes_that_are_no_envelope_get_invalid_argument_and_are_counted() {
    let n = node().await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", n.addrs().mesh))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/rumor.mesh.v1.Mesh/Deliver");
    let garbage = vec![0xff; 64];
    let status = grpc
        .server_streaming(tonic::Request::new(garbage), path, raw::RawCodec)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("undecodable"), "{status:?}");
    assert_eq!(n.router().stats().malformed, 1);
    still_serves(&n).await;
}

#[tokio::test]
async fn a_node_whose_gossip_task_ends_unbidden_turns_unready_and_says_why() {
    let n = node().await;
    let admin = node::client::AdminClient::new(n.addrs().admin.to_string());
    assert!(admin.ready().await.unwrap());
    n.gossip().shutdown().await.unwrap();
    let why = timeout(LIMIT, n.failed()).await.expect("the failure is noticed");
    assert!(why.contains("gossip"), "{why}");
    assert!(!admin.ready().await.unwrap(), "not ready once failed");
}
