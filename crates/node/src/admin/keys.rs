//! `GET /v1/keys` and `POST /v1/keys/{install,use,remove}`: one node's step of
//! a gossip key rotation (`rumor keys --all` walks every member).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use proto::api::{KeyIds, KeyOperation, KeyRequest};

use super::Shr;
use crate::crypto::{KeyId, KeyringError};
use crate::gossip::CommandError;

fn answer(r: Result<Vec<KeyId>, CommandError<KeyringError>>) -> Response {
    match r {
        Ok(ids) => Json(KeyIds {
            keys: ids.iter().map(ToString::to_string).collect(),
        })
        .into_response(),
        Err(CommandError::Rejected(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(CommandError::Stopped) => (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n").into_response(),
    }
}

pub(super) async fn list(State(s): Shr) -> Response {
    answer(s.gossip.keys().await)
}

pub(super) async fn change(State(s): Shr, Path(op): Path<String>, Json(req): Json<KeyRequest>) -> Response {
    let r = match KeyOperation::from_short_name(&op) {
        Some(KeyOperation::Install) => s.gossip.install_key(&req.key).await,
        Some(KeyOperation::Use) => s.gossip.use_key(&req.key).await,
        Some(KeyOperation::Remove) => s.gossip.remove_key(&req.key).await,
        Some(KeyOperation::Unspecified) | None => {
            return (StatusCode::NOT_FOUND, "key operations: install, use, remove\n").into_response();
        }
    };
    if r.is_ok() {
        tracing::info!(op, "gossip keyring changed");
    }
    answer(r)
}
