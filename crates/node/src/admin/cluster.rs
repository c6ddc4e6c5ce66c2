//! `GET /v1/members` and `GET /v1/ring`: the cluster as this node sees it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use proto::api::{Member, MemberStatus, Members, Ring, RingWorker};

use super::Shr;

/// Keys sampled to estimate each worker's share of the ring.
pub const OWNERSHIP_SAMPLE: usize = 4096;

/// A member's state on the wire.
pub(crate) fn status(s: membership::Status) -> MemberStatus {
    match s {
        membership::Status::Alive => MemberStatus::Alive,
        membership::Status::Suspect => MemberStatus::Suspect,
        membership::Status::Dead => MemberStatus::Dead,
        membership::Status::Left => MemberStatus::Left,
    }
}

pub(super) async fn members(State(s): Shr) -> Json<Members> {
    let view = s.gossip.view().borrow().clone();
    let mut members: Vec<Member> = std::iter::once(&view.local)
        .chain(&view.members)
        .map(|m| Member {
            name: m.name.clone(),
            addr: m.addr.to_string(),
            status: status(m.status) as i32,
            incarnation: m.incarnation,
            roles: m.meta.roles.clone(),
            capacity: m.meta.capacity,
            services: m.meta.services.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Json(Members {
        node: s.gossip.name().to_owned(),
        joined: view.joined,
        members,
    })
}

pub(super) async fn ring(State(s): Shr) -> Json<Ring> {
    let table = s.router.table();
    let ring = table.ring();
    let mut owned: HashMap<&str, usize> = HashMap::new();
    if !ring.is_empty() {
        for i in 0..OWNERSHIP_SAMPLE {
            if let Some(owner) = ring.owner(format!("sample-{i}").as_bytes()) {
                *owned.entry(owner).or_default() += 1;
            }
        }
    }
    let mut workers: Vec<RingWorker> = ring
        .members()
        .iter()
        .map(|m| RingWorker {
            name: m.name.clone(),
            mesh: table.addr(&m.name).unwrap_or_default().to_owned(),
            capacity: m.weight,
            share: owned.get(m.name.as_str()).copied().unwrap_or(0) as f64 / OWNERSHIP_SAMPLE as f64,
        })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Json(Ring {
        node: s.gossip.name().to_owned(),
        checksum: format!("{:016x}", table.checksum()),
        workers,
        sampled_keys: OWNERSHIP_SAMPLE as u32,
    })
}
