//! The processor contract, driven through a real worker: a processor stops
//! the moment its caller goes away or its deadline passes, and a cancelled
//! message is neither finished nor remembered.
//!
//! These tests run on tokio's paused clock: time moves only when every task
//! waits, so "stopped within 10 ms" is a statement about the code (no
//! polling interval, no timer in the way), not about this machine's load.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::worker::{ReplyStream, Worker, WorkerConfig};
use node::{ProcessFuture, Processor, Replies};
use processors::Echo;
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::Code;

/// Sends one chunk, then waits forever; notes when its future is dropped.
#[derive(Debug, Default)]
struct Probe {
    started: Notify,
    stopped: Mutex<Option<Instant>>,
    stop_noticed: Notify,
    runs: Mutex<Vec<String>>,
}

struct Guard(Arc<Probe>);

impl Drop for Guard {
    fn drop(&mut self) {
        *self.0.stopped.lock().unwrap() = Some(Instant::now());
        self.0.stop_noticed.notify_one();
    }
}

#[derive(Debug)]
struct Hanging(Arc<Probe>);

impl Processor for Hanging {
    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            let _guard = Guard(self.0.clone());
            self.0.runs.lock().unwrap().push(msg.id.clone());
            out.send(Bytes::from_static(b"first")).await?;
            self.0.started.notify_one();
            std::future::pending::<()>().await;
            Ok(())
        })
    }
}

impl Probe {
    async fn stopped_at(&self) -> Instant {
        loop {
            if let Some(t) = *self.stopped.lock().unwrap() {
                return t;
            }
            self.stop_noticed.notified().await;
        }
    }
}

fn envelope(id: &str, key: &str) -> Envelope {
    Envelope {
        id: id.into(),
        key: key.into(),
        payload: Bytes::from_static(b"hello"),
        ..Default::default()
    }
}

fn hanging_worker() -> (Arc<Probe>, Worker) {
    let probe = Arc::new(Probe::default());
    let worker = Worker::new("w", WorkerConfig::default(), Arc::new(Hanging(probe.clone())));
    (probe, worker)
}

async fn first_data(reply: &mut ReplyStream) -> Bytes {
    reply.next().await.expect("a chunk").expect("not refused").data
}

async fn idle(worker: &Worker) {
    while worker.in_flight() > 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_message_stops_its_processor_within_10_ms() {
    let (probe, worker) = hanging_worker();
    let mut reply = worker
        .submit(envelope("m1", "conv"), Instant::now() + Duration::from_secs(60))
        .unwrap();
    assert_eq!(first_data(&mut reply).await, "first");
    let cancelled_at = Instant::now();
    drop(reply);
    let stopped = probe.stopped_at().await - cancelled_at;
    assert!(
        stopped <= Duration::from_millis(10),
        "the processor ran on for {stopped:?}"
    );
    idle(&worker).await;
    assert_eq!(worker.stats().cancelled, 1);
    assert_eq!(worker.stats().completed + worker.stats().failed, 0);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_message_is_forgotten_so_a_retry_is_processed_afresh() {
    let (probe, worker) = hanging_worker();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut reply = worker.submit(envelope("m1", "conv"), deadline).unwrap();
    first_data(&mut reply).await;
    drop(reply);
    probe.stopped_at().await;
    idle(&worker).await;
    let mut again = worker.submit(envelope("m1", "conv"), deadline).unwrap();
    let chunk = again.next().await.unwrap().unwrap();
    assert!(!chunk.replayed, "a cancelled reply must not be replayed as if complete");
    assert_eq!(*probe.runs.lock().unwrap(), ["m1", "m1"]);
}

#[tokio::test(start_paused = true)]
async fn a_queued_message_whose_caller_left_is_never_processed() {
    let (probe, worker) = hanging_worker();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut first = worker.submit(envelope("m1", "conv"), deadline).unwrap();
    let queued = worker.submit(envelope("m2", "conv"), deadline).unwrap();
    first_data(&mut first).await;
    // m2 waits behind m1 in its conversation's lane; its caller leaves.
    drop(queued);
    drop(first);
    idle(&worker).await;
    assert_eq!(*probe.runs.lock().unwrap(), ["m1"]);
    assert_eq!(worker.stats().cancelled, 2);
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_a_processor_and_ends_the_reply_with_deadline_exceeded() {
    let (probe, worker) = hanging_worker();
    let start = Instant::now();
    let mut reply = worker
        .submit(envelope("m1", "conv"), start + Duration::from_secs(2))
        .unwrap();
    assert_eq!(first_data(&mut reply).await, "first");
    let end = reply.next().await.unwrap().unwrap();
    let error = end.error.expect("an error chunk ends the reply");
    assert_eq!(error.code, Code::DeadlineExceeded as u32, "{error:?}");
    assert_eq!(probe.stopped_at().await - start, Duration::from_secs(2));
}

#[tokio::test(start_paused = true)]
async fn the_echo_processor_stops_between_chunks_when_its_caller_goes() {
    let echo = Echo {
        chunks: 5,
        delay: Duration::from_secs(1),
    };
    let worker = Worker::new("w", WorkerConfig::default(), Arc::new(echo));
    let start = Instant::now();
    let mut reply = worker
        .submit(envelope("m1", "conv"), start + Duration::from_secs(60))
        .unwrap();
    assert_eq!(first_data(&mut reply).await, "h");
    drop(reply);
    idle(&worker).await;
    assert!(
        Instant::now() - start < Duration::from_secs(2),
        "it waited for its next chunk"
    );
    assert_eq!(worker.stats().cancelled, 1);
}
