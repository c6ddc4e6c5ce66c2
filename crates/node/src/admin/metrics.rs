//! `GET /metrics`: the node's metrics in the Prometheus text format.
//!
//! Every counter's description is the doc comment of its field in the
//! crate that counts it (`membership::Stats`, the transport's, the mesh's,
//! the worker's), so the two cannot drift apart.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use stats::prom::{CONTENT_TYPE, Exposition};

use super::Shr;
use super::cluster::status;

pub(super) async fn metrics(State(s): Shr) -> Response {
    let Ok(snap) = s.gossip.snapshot().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n").into_response();
    };
    let mut e = Exposition::new();
    e.counters("rumor_membership_", snap.stats.fields());
    e.counters("rumor_transport_", snap.transport.fields());
    e.gauge_f64(
        "rumor_transport_fault_delay_seconds",
        "Fault injection: how late this node's outbound gossip traffic leaves; 0 when not slowed.",
        s.gossip.delay().as_secs_f64(),
    );
    e.counters("rumor_mesh_", s.router.stats().fields());
    e.gauge(
        "rumor_mesh_conversations_pinned",
        "Conversations entering here whose next message goes to the worker holding their records not yet in the event log, rather than by the ring.",
        s.router.pinned() as i64,
    );
    if let Some(w) = s.router.worker() {
        e.counters("rumor_worker_", w.stats().fields());
        e.gauge(
            "rumor_worker_in_flight",
            "Messages queued or being processed now.",
            w.in_flight() as i64,
        );
        e.gauge(
            "rumor_worker_capacity",
            "Messages the worker accepts at once.",
            w.capacity() as i64,
        );
        e.gauge(
            "rumor_worker_conversations_unrecorded",
            "Conversations with answered messages whose records are not yet in the event log; the worker keeps taking their messages until they are.",
            w.conversations_unrecorded() as i64,
        );
        let r = w.remembered();
        e.gauge(
            "rumor_worker_dedup_window_messages",
            "Completed messages the de-duplication window remembers (at most worker.dedup_window).",
            r.messages as i64,
        );
        e.gauge(
            "rumor_worker_dedup_window_reply_bytes",
            "Data bytes of the replies the de-duplication window keeps to replay to duplicates.",
            r.reply_bytes as i64,
        );
        e.gauge(
            "rumor_worker_event_log_conversations",
            "Conversations with an event log (for watchers) at this worker.",
            r.conversations as i64,
        );
        e.gauge(
            "rumor_worker_event_log_bytes",
            "Bytes the conversations' event logs hold, a fixed overhead per log included (at most 64 MiB; the least recently used are forgotten first).",
            r.log_bytes as i64,
        );
        e.histograms("rumor_worker_", w.latencies());
        e.histograms("rumor_processor_", w.processor().latencies());
        let sink = w.sink().map(|s| s.metrics()).unwrap_or_default();
        let processor = w.processor().metrics();
        for (prefix, figures) in [("rumor_events_", sink), ("rumor_processor_", processor)] {
            for (name, help, value, is_counter) in figures {
                if is_counter {
                    e.counter(&format!("{prefix}{name}"), help, value);
                } else {
                    e.gauge(&format!("{prefix}{name}"), help, value as i64);
                }
            }
        }
    }
    for source in &s.counters {
        let (prefix, fields) = source.counters();
        e.counters(prefix, fields);
    }
    e.counter(
        "rumor_dead_letters",
        "Records this node set aside because they could never be delivered (GET /v1/dead-letters lists them).",
        s.dead_letters.total(),
    );
    let mut by_status = [0usize; 4];
    for m in std::iter::once(&snap.view.local).chain(&snap.view.members) {
        by_status[m.status as usize] += 1;
    }
    e.gauges(
        "rumor_members",
        "Members this node knows, by status (itself included).",
        membership::Status::ALL
            .into_iter()
            .map(|st| ([("status", status(st).short_name())], by_status[st as usize] as i64)),
    );
    e.gauge(
        "rumor_health_score",
        "Lifeguard local health multiplier (0 is healthy).",
        i64::from(snap.health_score),
    );
    e.gauge(
        "rumor_pending_broadcasts",
        "Gossip updates waiting to be disseminated.",
        snap.pending_broadcasts as i64,
    );
    e.gauge(
        "rumor_ring_workers",
        "Workers on this node's ring.",
        s.router.table().ring().len() as i64,
    );
    e.gauge(
        "rumor_mesh_pooled_peers",
        "Peers with a pooled mesh channel.",
        s.router.pooled_peers().len() as i64,
    );
    e.gauge(
        "rumor_gossip_keys",
        "Gossip keys installed (0 in plaintext mode).",
        snap.keys.map_or(0, |k| k.len()) as i64,
    );
    e.gauge("rumor_ready", "1 when ready for traffic.", i64::from(s.ready().is_ok()));
    e.gauge_f64(
        "rumor_uptime_seconds",
        "Seconds since the node started.",
        s.started.elapsed().as_secs_f64(),
    );
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], e.encode()).into_response()
}
