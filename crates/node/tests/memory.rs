//! What a worker's memory of completed messages costs, counted by the
//! allocator (exact and repeatable, unlike resident memory).
//!
//! A worker remembers its last `dedup_window` completed messages, each with
//! its reply, so that a retry is answered without processing the message
//! twice. A payload that arrives over gRPC is a slice of the buffer its frame
//! was read into; were the remembered reply a slice of it too, every
//! remembered message would keep a whole receive buffer alive.

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use node::worker::{Worker, WorkerConfig};
use processors::Echo;
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};
use tokio::time::Instant;
use tokio_stream::StreamExt;

#[global_allocator]
static ALLOCATOR: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

/// Bytes allocated and not yet freed, over the whole process.
fn held() -> i64 {
    // A realloc counts its growth in `bytes_allocated` (its shrinking in
    // `bytes_deallocated`) as well as in `bytes_reallocated`.
    let s = ALLOCATOR.stats();
    s.bytes_allocated as i64 - s.bytes_deallocated as i64
}

/// The size of the buffer tonic reads a request into (its default).
const FRAME: usize = 8 * 1024;

/// Sends `n` messages of `key_count` conversations through `worker`, each
/// payload a 24-byte slice of a receive buffer of its own, and waits for
/// every reply.
async fn send(worker: &Worker, from: usize, n: usize, key_count: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    for i in from..from + n {
        let frame = Bytes::from(vec![b'x'; FRAME]);
        let env = Envelope {
            id: format!("01JD{i:022}"),
            key: format!("conversation-{}", i % key_count),
            payload: frame.slice(100..124),
            ..Default::default()
        };
        drop(frame);
        let mut reply = worker.submit(env, deadline).expect("accepted");
        while let Some(chunk) = reply.next().await {
            chunk.expect("a reply chunk");
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_remembered_message_costs_its_own_bytes_not_the_buffer_it_arrived_in() {
    const WINDOW: usize = 4000;
    const CONVERSATIONS: usize = 16;
    let base = held();
    let config = WorkerConfig {
        dedup_window: WINDOW,
        ..WorkerConfig::default()
    };
    let worker = Worker::new("w", config, Arc::new(Echo::default()));
    // Every conversation's log fills (256 events each) and the window fills
    // once; from then on both only replace what they hold.
    send(&worker, 0, WINDOW, CONVERSATIONS).await;
    let full = held() - base;
    send(&worker, WINDOW, WINDOW, CONVERSATIONS).await;
    let again = held() - base;
    assert_eq!(worker.remembered().messages, WINDOW);
    // Replacing every remembered message adds nothing: bounded.
    let drift = (again - full) as f64 / full as f64;
    assert!(
        drift.abs() < 0.05,
        "held {full} bytes, then {again} after the window turned over once"
    );

    // The cost of the window alone: the same worker with a window of one
    // holds the same logs.
    let small = Worker::new(
        "w",
        WorkerConfig {
            dedup_window: 1,
            ..WorkerConfig::default()
        },
        Arc::new(Echo::default()),
    );
    let before_small = held();
    send(&small, 0, WINDOW, CONVERSATIONS).await;
    let small_held = held() - before_small;
    let per_message = (full - small_held) as f64 / WINDOW as f64;
    // What the logs hold: 256 events in each conversation (a message,
    // three chunks and an end for each message).
    let per_event = small_held as f64 / (CONVERSATIONS * 256) as f64;
    eprintln!(
        "worker memory: {full} bytes held with a window of {WINDOW} messages, {small_held} with a window of 1: \
         {per_message:.0} bytes per remembered message, {per_event:.0} bytes per event in the logs (24-byte echo \
         replies in 3 chunks; each message arrived in a buffer of {FRAME} bytes)"
    );
    // 1,421 bytes measured (three chunks, each with its ids and position);
    // 7,884 when the reply kept its receive buffer alive.
    assert!(
        per_message < 2048.0,
        "a remembered message costs {per_message:.0} bytes: does the window keep the buffers its replies came from?"
    );
    // 321 bytes measured; 1,933 when the events kept their buffers.
    assert!(
        per_event < 512.0,
        "an event in the logs costs {per_event:.0} bytes: do the logs keep the buffers their events came from?"
    );
    drop(worker);
}
