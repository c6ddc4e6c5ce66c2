//! `GET /v1/members` and `GET /v1/ring`: the cluster as this node sees it.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
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

/// The query of `GET /v1/members`: `status`, the states to list,
/// comma-separated (`alive`, `suspect`, `dead`, `left`); all when absent.
#[derive(Debug, serde::Deserialize)]
pub(super) struct MembersQuery {
    status: Option<String>,
}

/// The states named by a `status` query, or why it is not one.
fn parse_statuses(list: &str) -> Result<Vec<MemberStatus>, String> {
    list.split(',')
        .map(|name| {
            MemberStatus::from_short_name(name.trim()).ok_or_else(|| {
                format!(
                    "unknown member status {name:?} in `status`: expected a comma-separated list of alive, suspect, \
                     dead, left"
                )
            })
        })
        .collect()
}

/// The view checksum: XXH3-64 over every live member's name, gossip
/// address, status and incarnation, in name order, each field
/// length-prefixed so that no two different views hash the same bytes.
/// Failed and departed members are left out: a node that joined after they
/// went never learns of them, though its view of the live ones agrees.
fn view_checksum(members: &[Member]) -> u64 {
    let live: Vec<&Member> = members.iter().filter(|m| m.status().is_live()).collect();
    let mut bytes = Vec::with_capacity(8 + live.len() * 48);
    bytes.extend_from_slice(&(live.len() as u64).to_le_bytes());
    for m in live {
        for field in [m.name.as_bytes(), m.addr.as_bytes()] {
            bytes.extend_from_slice(&(field.len() as u64).to_le_bytes());
            bytes.extend_from_slice(field);
        }
        bytes.extend_from_slice(&m.status.to_le_bytes());
        bytes.extend_from_slice(&m.incarnation.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64(&bytes)
}

pub(super) async fn members(
    State(s): Shr,
    query: Result<axum::extract::Query<MembersQuery>, axum::extract::rejection::QueryRejection>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let wanted = match query {
        Ok(q) => q.0.status.as_deref().map(parse_statuses).transpose(),
        Err(e) => Err(e.body_text()),
    };
    let wanted = match wanted {
        Ok(wanted) => wanted,
        Err(why) => return (StatusCode::BAD_REQUEST, format!("{why}\n")).into_response(),
    };
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
    let checksum = format!("{:016x}", view_checksum(&members));
    if let Some(wanted) = wanted {
        members.retain(|m| wanted.contains(&m.status()));
    }
    Json(Members {
        node: s.gossip.name().to_owned(),
        joined: view.joined,
        members,
        checksum,
    })
    .into_response()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, status: MemberStatus, incarnation: u64) -> Member {
        Member {
            name: name.into(),
            addr: "10.0.0.1:7946".into(),
            status: status as i32,
            incarnation,
            ..Member::default()
        }
    }

    #[test]
    fn the_view_checksum_changes_with_any_member_state_and_only_with_it() {
        let view = [member("a", MemberStatus::Alive, 1), member("b", MemberStatus::Alive, 3)];
        let base = view_checksum(&view);
        let mut same = view.clone();
        same[0].roles = vec!["worker".into()];
        assert_eq!(
            view_checksum(&same),
            base,
            "roles and services are not the view's state"
        );
        let changes: [fn(&mut Member); 4] = [
            |m| m.status = MemberStatus::Suspect as i32,
            |m| m.incarnation += 1,
            |m| m.addr = "10.0.0.2:7946".into(),
            |m| m.name = "c".into(),
        ];
        for change in changes {
            let mut other = view.clone();
            change(&mut other[1]);
            assert_ne!(view_checksum(&other), base, "{other:?}");
        }
        assert_ne!(view_checksum(&view[..1]), base, "a member fewer");
        // Members that failed or left are not part of it.
        let mut with_dead = view.to_vec();
        with_dead.push(member("c", MemberStatus::Dead, 2));
        with_dead.push(member("d", MemberStatus::Left, 1));
        assert_eq!(view_checksum(&with_dead), base);
        // Length prefixes: moving bytes between name and address changes it.
        let (mut x, mut y) = (
            member("ab", MemberStatus::Alive, 1),
            member("a", MemberStatus::Alive, 1),
        );
        x.addr = "c".into();
        y.addr = "bc".into();
        assert_ne!(view_checksum(&[x]), view_checksum(&[y]));
    }

    #[test]
    fn a_status_filter_names_states_and_refuses_anything_else_by_name() {
        assert_eq!(
            parse_statuses("suspect, dead,left").unwrap(),
            [MemberStatus::Suspect, MemberStatus::Dead, MemberStatus::Left]
        );
        assert_eq!(parse_statuses("alive").unwrap(), [MemberStatus::Alive]);
        for bad in ["", "alive,", "Alive", "unspecified", "zombie"] {
            let why = parse_statuses(bad).unwrap_err();
            assert!(why.contains("alive, suspect, dead, left"), "{bad:?}: {why}");
        }
    }
}
