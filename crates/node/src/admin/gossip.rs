//! `POST /v1/gossip` and `GET /v1/gossip/{origin}/{seq}`: create a gossip
//! message, and ask a node when it received one (`rumor gossip` polls every
//! member to time the epidemic).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use membership::Event;
use proto::api::{GossipCreated, GossipReceipt, GossipRequest};
use tokio::sync::broadcast::error::RecvError;

use super::{Shared, Shr};
use crate::mesh;

/// Gossip message receipts remembered.
const MAX_RECEIPTS: usize = 4096;

/// When this node received each recent gossip message, the oldest forgotten
/// first. A plain mutex: held only to insert or look up.
#[derive(Debug, Default)]
pub(super) struct Receipts(Mutex<ReceiptTable>);

#[derive(Debug, Default)]
struct ReceiptTable {
    at: HashMap<(String, u64), u64>,
    order: VecDeque<(String, u64)>,
}

impl Receipts {
    /// Notes the first time `(origin, seq)` was seen.
    fn record(&self, origin: String, seq: u64, unix_ms: u64) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let id = (origin, seq);
        if t.at.contains_key(&id) {
            return;
        }
        if t.order.len() >= MAX_RECEIPTS
            && let Some(old) = t.order.pop_front()
        {
            t.at.remove(&old);
        }
        t.order.push_back(id.clone());
        t.at.insert(id, unix_ms);
    }

    fn get(&self, origin: String, seq: u64) -> Option<u64> {
        let t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        t.at.get(&(origin, seq)).copied()
    }
}

/// Records every gossip message the node receives, in a task that ends with
/// the gossip task or when the node's state is dropped.
pub(super) fn record_receipts(shared: &Arc<Shared>) {
    let mut events = shared.gossip.events();
    let weak = Arc::downgrade(shared);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::UserMessage { origin, seq, .. }) => {
                    let Some(s) = weak.upgrade() else { return };
                    s.receipts.record(origin, seq, now_ms());
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    });
}

fn now_ms() -> u64 {
    mesh::unix_ms(SystemTime::now())
}

pub(super) async fn create(State(s): Shr, Json(req): Json<GossipRequest>) -> Response {
    let created = now_ms();
    match s.gossip.broadcast(Bytes::from(req.payload)).await {
        Ok((origin, seq)) => {
            s.receipts.record(origin.clone(), seq, created);
            Json(GossipCreated {
                origin,
                seq,
                created_unix_ms: created,
            })
            .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

pub(super) async fn receipt(State(s): Shr, Path((origin, seq)): Path<(String, u64)>) -> Response {
    match s.receipts.get(origin, seq) {
        Some(received_unix_ms) => Json(GossipReceipt {
            node: s.gossip.name().to_owned(),
            received_unix_ms,
        })
        .into_response(),
        None => (StatusCode::NOT_FOUND, "not received\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_keep_the_first_time_and_forget_the_oldest() {
        let r = Receipts::default();
        r.record("a".into(), 1, 10);
        r.record("a".into(), 1, 20);
        assert_eq!(r.get("a".into(), 1), Some(10));
        for i in 0..MAX_RECEIPTS as u64 {
            r.record("b".into(), i, i);
        }
        assert_eq!(r.get("a".into(), 1), None);
        assert_eq!(r.0.lock().unwrap().at.len(), MAX_RECEIPTS);
    }
}
