//! The gRPC server of `rumor.mesh.v1.Mesh/Deliver`: envelopes from peers
//! into the [`Router`].

use std::future::Future;

use proto::mesh::Envelope;
use proto::mesh::mesh_server::{Mesh, MeshServer};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use super::envelope::grpc_timeout;
use super::router::Router;
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
    // The mesh is the only service on its port, so it is served without
    // tonic's (axum-based) router.
    builder
        .serve_with_incoming_shutdown(MeshService::new(router).into_server(), incoming, shutdown)
        .await
}
