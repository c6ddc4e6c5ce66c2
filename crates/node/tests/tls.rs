//! The mesh data plane over TLS and mutual TLS, with the test certificates in
//! `tests/tls/` (made by `tests/tls/gen.sh`): a CA, a member certificate it
//! signed for 127.0.0.1, and a certificate from an unrelated CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use node::mesh::{self, MeshConfig, PROTOCOL_VERSION};
use node::node::{Node, NodeConfig, NodeError};
use node::tls::MeshTls;
use node::{Role, Roles};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use proto::mesh::mesh_client::MeshClient;
use tokio::time::timeout;
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const LIMIT: Duration = Duration::from_secs(30);

fn file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls").join(name)
}

/// The cluster's own identity: node.pem signed by ca.pem.
fn member_tls() -> MeshTls {
    MeshTls::from_files(&file("node.pem"), &file("node.key"), &file("ca.pem")).unwrap()
}

/// A certificate from another CA, while trusting the cluster's CA.
fn stranger_tls() -> MeshTls {
    MeshTls::from_files(&file("other.pem"), &file("other.key"), &file("ca.pem")).unwrap()
}

fn config(name: &str, worker: bool, tls: MeshTls, seed: Option<&Node>) -> NodeConfig {
    let mut c = NodeConfig::new(name);
    c.gossip.membership = membership::Config::for_tests();
    c.gossip.seeds = seed.map(|s| vec![s.addrs().gossip]).unwrap_or_default();
    if worker {
        c.roles = Roles::of(&[Role::Worker]);
        c.processor = Some(std::sync::Arc::new(processors::Echo::default()));
    } else {
        c.roles = Roles::of(&[Role::Gateway]);
    }
    c.mesh = MeshConfig {
        tls: Some(tls),
        ..MeshConfig::for_tests()
    };
    c
}

/// A gateway and one worker, both started with `tls`, with the worker in the
/// gateway's routing table.
async fn pair(gateway_tls: MeshTls, worker_tls: MeshTls) -> (Node, Node) {
    let gw = Node::start(config("gw", false, gateway_tls, None)).await.unwrap();
    let w = Node::start(config("w", true, worker_tls, Some(&gw))).await.unwrap();
    timeout(LIMIT, async {
        while gw.router().table().owner("k") != Some("w") {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the worker never reached the gateway's ring");
    (gw, w)
}

fn envelope(timeout: Duration) -> Envelope {
    Envelope {
        id: mesh::new_message_id(),
        key: "k".into(),
        payload: Bytes::from_static(b"hello over tls"),
        deadline_unix_ms: mesh::deadline_in(timeout),
        ..Envelope::default()
    }
}

/// Sends through the gateway's router and returns the reply's bytes, or the
/// status it was refused with.
async fn send_via(gw: &Node, timeout_after: Duration) -> Result<Vec<u8>, tonic::Status> {
    let mut stream = gw.router().send(envelope(timeout_after)).await?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        data.extend_from_slice(&chunk.data);
        if let Some(e) = chunk.error {
            return Err(tonic::Status::new(Code::from(e.code as i32), e.message));
        }
        if chunk.last {
            break;
        }
    }
    Ok(data)
}

#[tokio::test]
async fn a_message_crosses_a_mutual_tls_mesh_and_its_reply_streams_back() {
    let (gw, w) = pair(member_tls(), member_tls()).await;
    let reply = timeout(LIMIT, send_via(&gw, Duration::from_secs(5))).await.unwrap();
    assert_eq!(reply.unwrap(), b"hello over tls");
    assert_eq!(gw.router().stats().forwarded, 1);
    gw.shutdown().await;
    w.shutdown().await;
}

#[tokio::test]
async fn a_member_whose_certificate_another_ca_signed_gets_no_messages() {
    let (gw, w) = pair(member_tls(), stranger_tls()).await;
    let refused = timeout(LIMIT, send_via(&gw, Duration::from_millis(800))).await.unwrap();
    let status = refused.expect_err("the gateway must not trust the stranger's certificate");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(gw.router().stats().failed_attempts >= 1);
    assert_eq!(w.router().stats().accepted, 0, "nothing reached the stranger");
    gw.shutdown().await;
    w.shutdown().await;
}

/// A raw gRPC client that trusts the cluster's CA, with or without the
/// member certificate as its own identity.
async fn raw_deliver(node: &Node, with_identity: bool) -> Result<(), tonic::Status> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(file("ca.pem")).unwrap()))
        .domain_name("localhost");
    if with_identity {
        let t = member_tls();
        tls = tls.identity(tonic::transport::Identity::from_pem(t.cert_pem, t.key_pem));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", node.addrs().mesh))
        .unwrap()
        .tls_config(tls)
        .unwrap();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut env = envelope(Duration::from_secs(5));
    env.version = PROTOCOL_VERSION;
    env.hops = 1;
    // A member of the cluster, as a peer node would be.
    env.origin = "gw".into();
    let mut stream = MeshClient::new(channel).deliver(env).await?.into_inner();
    while let Some(chunk) = stream.next().await {
        if chunk?.last {
            return Ok(());
        }
    }
    Err(tonic::Status::internal("reply ended without a last chunk"))
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_when_mutual_tls_is_required() {
    let (gw, w) = pair(member_tls(), member_tls()).await;
    let without = timeout(LIMIT, raw_deliver(&w, false)).await.unwrap();
    assert!(without.is_err(), "a client without a certificate got through");
    let with = timeout(LIMIT, raw_deliver(&w, true)).await.unwrap();
    assert!(with.is_ok(), "{with:?}");
    gw.shutdown().await;
    w.shutdown().await;
}

#[tokio::test]
async fn plain_tls_without_client_certificates_serves_any_client_that_trusts_the_ca() {
    let server_only = MeshTls {
        require_client_cert: false,
        ..member_tls()
    };
    let (gw, w) = pair(server_only.clone(), server_only).await;
    let without = timeout(LIMIT, raw_deliver(&w, false)).await.unwrap();
    assert!(without.is_ok(), "{without:?}");
    gw.shutdown().await;
    w.shutdown().await;
}

#[tokio::test]
async fn a_key_that_is_not_pem_is_refused_at_start_naming_the_setting() {
    let err = MeshTls::from_files(&file("node.pem"), &file("gen.sh"), &file("ca.pem")).unwrap_err();
    assert!(err.to_string().contains("mesh.tls.key"), "{err}");

    // A well-formed key that does not belong to the certificate.
    let mut mismatched = member_tls();
    mismatched.key_pem = std::fs::read(file("other.key")).unwrap();
    match Node::start(config("bad", true, mismatched, None)).await {
        Err(NodeError::Mesh(e)) => assert!(e.to_string().contains("mesh.tls"), "{e}"),
        Err(other) => panic!("unexpected error {other}"),
        Ok(_) => panic!("a node started with a key that does not match its certificate"),
    }
}
