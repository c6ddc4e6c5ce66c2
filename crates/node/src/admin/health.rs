//! `GET /healthz`, `GET /readyz`, and `GET /v1/dead-letters`: whether the
//! node works, and what it could not deliver.

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

/// The query of `GET /v1/dead-letters`.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Page {
    after: Option<u64>,
    limit: Option<usize>,
}

/// What this node set aside, oldest first, a page at a time.
pub(super) async fn dead_letters(
    State(s): Shr,
    page: Result<axum::extract::Query<Page>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Page { after, limit } = match page {
        Ok(axum::extract::Query(p)) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{}\n", e.body_text())).into_response(),
    };
    let limit = limit.unwrap_or(100).clamp(1, 1000);
    let dead_letters = s.dead_letters.page(after.unwrap_or(0), limit);
    let next = (dead_letters.len() == limit)
        .then(|| dead_letters.last().map(|d| d.cursor.clone()))
        .flatten();
    axum::Json(proto::api::DeadLetters { dead_letters, next }).into_response()
}
