//! `GET /healthz` and `GET /readyz`.

use axum::extract::State;
use axum::http::StatusCode;

use super::Shr;

/// 200 while the gossip task runs.
pub(super) async fn healthz(State(s): Shr) -> (StatusCode, &'static str) {
    match s.gossip.snapshot().await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n"),
    }
}

/// 200 when the node should get traffic; 503 with the reason otherwise.
pub(super) async fn readyz(State(s): Shr) -> (StatusCode, String) {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}
