//! `POST /v1/fault/isolate`: fault injection for tests of network cuts with
//! real processes.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::api::Isolate;

use super::Shr;

/// Cuts or restores the node's gossip traffic (see
/// [`GossipHandle::set_isolated`](crate::gossip::GossipHandle::set_isolated)).
/// Refused unless the node was started with fault injection enabled.
pub(super) async fn isolate(State(s): Shr, Json(req): Json<Isolate>) -> Response {
    if !s.fault_injection {
        let why = "fault injection is disabled on this node; start it with debug.fault_injection = true\n";
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    s.gossip.set_isolated(req.isolated);
    Json(req).into_response()
}
