//! The gRPC server of `rumor.mesh.v1.Mesh/Deliver`: envelopes from peers
//! into the [`Router`].

use std::future::Future;

use proto::Message as _;
use proto::mesh::mesh_server::{Mesh, MeshServer};
use proto::mesh::{CancelReply, CancelRequest, Envelope, WatchRequest};
use tokio::net::TcpListener;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::envelope::grpc_timeout;
use super::router::{EventStream, FROM_HEADER, OWNER_HEADER, Router};
use super::stats::DecoderRefusal;
use crate::worker::ReplyStream;

/// The `Mesh` gRPC service over a [`Router`].
#[derive(Debug, Clone)]
pub struct MeshService {
    router: Router,
}

impl MeshService {
    /// Serves `Deliver` by routing through `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// The tonic service, with the decoder limit set from the config.
    pub fn into_server(self) -> MeshServer<Self> {
        let limit = self.router.config().max_envelope_bytes.saturating_mul(2);
        MeshServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    type DeliverStream = ReplyStream;

    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<ReplyStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let envelope = request.into_inner();
        self.router.accept(envelope, timeout).await.map(Response::new)
    }

    type WatchStream = EventStream;

    async fn watch(&self, request: Request<WatchRequest>) -> Result<Response<EventStream>, Status> {
        let watching = self.router.accept_watch(request.into_inner()).await?;
        let mut response = Response::new(watching.events);
        let meta = response.metadata_mut();
        meta.insert_bin(OWNER_HEADER, MetadataValue::from_bytes(watching.owner.as_bytes()));
        if let Some(from) = &watching.from {
            meta.insert_bin(FROM_HEADER, MetadataValue::from_bytes(&from.encode_to_vec()));
        }
        Ok(response)
    }

    async fn cancel(&self, request: Request<CancelRequest>) -> Result<Response<CancelReply>, Status> {
        let found = self.router.accept_cancel(request.into_inner()).await?;
        Ok(Response::new(CancelReply { found }))
    }
}

/// Serves the mesh on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight replies finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Small reply chunks must not wait for Nagle's algorithm; the builder's
    // `tcp_nodelay` only covers listeners tonic binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &router.config().tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let refusals = router.clone();
    // The mesh is the only service on its port, so it is served without
    // tonic's (axum-based) router.
    builder
        .layer(tower::util::MapResponseLayer::new(move |res| {
            answer_decoder_refusals(res, &refusals)
        }))
        .serve_with_incoming_shutdown(MeshService::new(router).into_server(), incoming, shutdown)
        .await
}

/// Refusals made by tonic's decoder, before `Deliver` runs, are counted and
/// answered like the handler's own: an envelope over the decoder's limit
/// (tonic says `OUT_OF_RANGE`) or one that is not a valid protobuf message
/// (tonic says `INTERNAL`) is the sender's mistake, `INVALID_ARGUMENT`.
fn answer_decoder_refusals(
    mut res: http::Response<tonic::body::Body>,
    router: &Router,
) -> http::Response<tonic::body::Body> {
    let header = |name: &str| res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let (Some(status), message) = (header("grpc-status"), header("grpc-message")) else {
        return res;
    };
    // tonic percent-encodes the message.
    let message = percent_encoding::percent_decode_str(&message.unwrap_or_default())
        .decode_utf8_lossy()
        .into_owned();
    let refusal = match status.as_str() {
        "11" => Some((DecoderRefusal::Oversized, "envelope over the size limit")),
        "13" if message.starts_with("failed to decode") => Some((DecoderRefusal::Undecodable, "undecodable envelope")),
        _ => None,
    };
    if let Some((kind, what)) = refusal {
        router.count_decoder_refusal(kind);
        let headers = res.headers_mut();
        headers.insert("grpc-status", http::HeaderValue::from_static("3"));
        let text = format!("{what}: {message}");
        let text = percent_encoding::utf8_percent_encode(&text, percent_encoding::CONTROLS).to_string();
        if let Ok(v) = http::HeaderValue::from_str(&text) {
            headers.insert("grpc-message", v);
        }
    }
    res
}
