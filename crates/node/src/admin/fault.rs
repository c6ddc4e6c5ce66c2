//! `POST /v1/fault/isolate` and `POST /v1/fault/delay`: fault injection for
//! tests of network cuts and slow links with real processes, and for the
//! playground.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::api::{Isolate, LinkDelay};
use std::time::Duration;

use super::Shr;

/// Cuts or restores the node's gossip traffic (see
/// [`GossipHandle::set_isolated`](crate::gossip::GossipHandle::set_isolated)).
/// Refused unless the node was started with fault injection enabled.
pub(super) async fn isolate(State(s): Shr, Json(req): Json<Isolate>) -> Response {
    if !s.fault_injection {
        return disabled();
    }
    s.gossip.set_isolated(req.isolated);
    Json(req).into_response()
}

/// The longest delay fault injection takes: each delayed datagram waits in
/// a task of its own, so the delay bounds how many wait at once.
const MAX_DELAY_MS: u32 = 60_000;

/// Delays or restores the node's outbound gossip traffic (see
/// [`GossipHandle::set_delay`](crate::gossip::GossipHandle::set_delay)).
/// Refused unless the node was started with fault injection enabled.
pub(super) async fn delay(State(s): Shr, Json(req): Json<LinkDelay>) -> Response {
    if !s.fault_injection {
        return disabled();
    }
    if req.delay_ms > MAX_DELAY_MS {
        let why = format!("delay_ms: at most {MAX_DELAY_MS} (a minute), got {}\n", req.delay_ms);
        return (StatusCode::UNPROCESSABLE_ENTITY, why).into_response();
    }
    s.gossip.set_delay(Duration::from_millis(u64::from(req.delay_ms)));
    Json(req).into_response()
}

fn disabled() -> Response {
    let why = "fault injection is disabled on this node; start it with debug.fault_injection = true\n";
    (StatusCode::FORBIDDEN, why).into_response()
}
