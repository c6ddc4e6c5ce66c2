//! The processor contract: what a worker calls to turn one message into a
//! streamed reply, and how a processor learns that nobody waits any more.
//!
//! ```text
//!  worker lane ──process(msg, &mut Replies)──> processor ──send(chunk)──> caller
//!       │                                          ▲
//!       └── caller gone (disconnect, cancel) ──────┤ the processor's future is dropped at once;
//!           or deadline passed                     │ `send` returns `Err(Cancelled)` and
//!                                                  └ `cancelled()` completes for those that look
//! ```
//!
//! A processor is cancelled when the reply's receiver is dropped (the client
//! disconnected, cancelled explicitly, or the router gave up on the call) or
//! when the message's deadline passes. The worker then drops the
//! processor's future, so a processor that awaits a backend request stops it
//! as Rust futures stop: the request future is dropped and its connection
//! closed, which frees the backend's slot. Processors need no code of their
//! own for that; [`Replies::cancelled`] is there for one that wants to clean
//! up first or to notice between chunks.
//!
//! The worker adds the final chunk of every reply itself: `last` when
//! `process` returns `Ok`, an error chunk carrying the [`ProcessError`]
//! otherwise.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proto::bytes::Bytes;
use proto::mesh::conversation_event::Event as EventKind;
use proto::mesh::{Envelope, Error as WireError, EventChunk, ReplyChunk, Usage};
pub use stats::prom::{Histogram, Latencies, seconds as seconds_histogram};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::{Code, Status};

use crate::conversation::Log;

/// A future returned by [`Processor::process`].
pub type ProcessFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ProcessError>> + Send + 'a>>;

/// Turns one message into a streamed reply: the seam where AI backends plug
/// in (crates/processors holds the implementations). The worker calls it for
/// one message of a conversation at a time, in arrival order.
pub trait Processor: Send + Sync + std::fmt::Debug + 'static {
    /// Processes `msg`, sending reply data through `out` in order. The
    /// returned future may be dropped at any await point: that is how the
    /// worker cancels it.
    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a>;

    /// The models this processor answers with, advertised in gossip (the
    /// member's `models` tag) for gateways to list and route by. The first
    /// is the default. Empty for a processor that is not a model.
    fn models(&self) -> Vec<String> {
        Vec::new()
    }

    /// The processor's own figures for the node's `/metrics`, each as
    /// (name, help, value, is a counter), exposed as `rumor_processor_{name}`.
    fn metrics(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        Vec::new()
    }

    /// The processor's latency histograms (in seconds, made with
    /// [`seconds_histogram`]) for the node's `/metrics`, exposed as
    /// `rumor_processor_{name}`.
    fn latencies(&self) -> Latencies {
        Vec::new()
    }
}

/// Why a [`Processor`] failed; sent to the caller as the reply's error chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessError {
    /// A gRPC status code.
    pub code: Code,
    /// A message for the caller.
    pub message: String,
}

impl ProcessError {
    /// An error with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// An `INTERNAL` error with `message`.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::Internal, message)
    }
}

impl From<Cancelled> for ProcessError {
    fn from(_: Cancelled) -> Self {
        Self::new(Code::Cancelled, "the caller has gone")
    }
}

/// The caller of a message has gone: nobody will read more of the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the caller of this message has gone")]
pub struct Cancelled;

/// The whole reply to one message, as the worker reports it to a
/// [`RecordSink`](crate::worker::RecordSink).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalReply {
    /// Every data byte of the reply, in order, up to
    /// [`WorkerConfig::max_recorded_reply_bytes`](crate::worker::WorkerConfig::max_recorded_reply_bytes).
    pub data: Vec<u8>,
    /// The reply was longer than the limit and `data` holds its beginning.
    pub truncated: bool,
    /// Chunks of data sent.
    pub chunks: u64,
    /// Set when processing failed (after `chunks` chunks): a gRPC code and message.
    pub error: Option<(u32, String)>,
    /// What answering cost, when the processor said so.
    pub usage: Option<Usage>,
}

/// Where a [`Processor`] sends reply data. It numbers the chunks and keeps a
/// copy for the de-duplication window (while the reply is small enough) and
/// for the event log.
#[derive(Debug)]
pub struct Replies {
    pub(crate) id: String,
    worker: Arc<str>,
    seq: u64,
    pub(crate) tx: mpsc::Sender<Result<ReplyChunk, Status>>,
    /// The reply so far, for replaying to duplicates; `None` once too large.
    pub(crate) kept: Option<Vec<ReplyChunk>>,
    kept_bytes: usize,
    max_kept_bytes: usize,
    /// The whole reply for the record sink; `None` without one.
    pub(crate) recorded: Option<FinalReply>,
    max_recorded_bytes: usize,
    /// The conversation's events, where every chunk is numbered for watchers.
    log: Arc<Log>,
    /// What the answer cost, when the processor says so.
    pub(crate) usage: Option<Usage>,
    /// How long the reply goes on after its caller has gone, for the client
    /// to come back and watch the rest.
    grace: Duration,
    /// When this reply first found its caller gone.
    gone: OnceLock<Instant>,
}

impl Replies {
    pub(crate) fn new(
        id: String,
        worker: Arc<str>,
        tx: mpsc::Sender<Result<ReplyChunk, Status>>,
        max_kept_bytes: usize,
        record: Option<usize>,
        log: Arc<Log>,
        grace: Duration,
    ) -> Self {
        Self {
            id,
            worker,
            seq: 0,
            tx,
            kept: Some(Vec::new()),
            kept_bytes: 0,
            max_kept_bytes,
            recorded: record.map(|_| FinalReply::default()),
            max_recorded_bytes: record.unwrap_or(0),
            log,
            usage: None,
            grace,
            gone: OnceLock::new(),
        }
    }

    /// The id of the message being answered.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sends one chunk of reply data to the caller and to the
    /// conversation's watchers, waiting while the caller's buffer is full.
    /// `Err(Cancelled)` when nobody reads any more (the caller has gone and
    /// nobody watches): stop then (the worker is about to drop the
    /// processor anyway).
    pub async fn send(&mut self, data: Bytes) -> Result<(), Cancelled> {
        if self.is_cancelled() {
            return Err(Cancelled);
        }
        // The chunk outlives this message in the de-duplication window and
        // the event log. Data a processor hands over is often a slice of a
        // larger buffer (a message decoded from a gRPC frame, a body read
        // from a backend), and a slice keeps all of its buffer alive: a
        // few-byte chunk would pin a receive buffer of 8 KiB or more for as
        // long as it is remembered. One copy of its own, shared by the
        // caller's chunk, the log and the window, keeps only its bytes.
        let data = Bytes::copy_from_slice(&data);
        let position = self.log.append(EventKind::Chunk(EventChunk {
            id: self.id.clone(),
            data: data.clone(),
            worker: self.worker.to_string(),
        }));
        let chunk = ReplyChunk {
            id: self.id.clone(),
            seq: self.seq,
            data,
            worker: self.worker.to_string(),
            position: Some(position),
            ..Default::default()
        };
        self.keep(&chunk);
        if self.tx.send(Ok(chunk)).await.is_err() && self.is_cancelled() {
            return Err(Cancelled);
        }
        Ok(())
    }

    /// Says what the answer cost (tokens, cache, time to first token); it
    /// travels on the reply's final chunk and in the conversation's events.
    pub fn set_usage(&mut self, usage: Usage) {
        self.usage = Some(usage);
    }

    /// True once nobody reads the reply: the caller has gone and nobody
    /// watches the conversation.
    pub fn is_cancelled(&self) -> bool {
        if !self.tx.is_closed() || self.log.watchers() > 0 {
            return false;
        }
        let gone = *self.gone.get_or_init(Instant::now);
        gone.elapsed() >= self.grace
    }

    /// Completes when nobody reads the reply any more; for a processor that
    /// waits on a backend between chunks and wants to notice.
    pub async fn cancelled(&self) {
        abandoned(&self.tx, &self.log, self.grace).await;
    }

    pub(crate) fn keep(&mut self, chunk: &ReplyChunk) {
        self.seq += 1;
        if let Some(r) = &mut self.recorded
            && !chunk.data.is_empty()
        {
            r.chunks += 1;
            let room = self.max_recorded_bytes.saturating_sub(r.data.len());
            r.truncated |= chunk.data.len() > room;
            r.data.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
        }
        if let Some(kept) = &mut self.kept {
            self.kept_bytes += chunk.data.len() + 32;
            if self.kept_bytes > self.max_kept_bytes {
                self.kept = None;
            } else {
                kept.push(chunk.clone());
            }
        }
    }

    /// The chunk that ends the reply: `last`, or the error.
    pub(crate) fn terminal(&self, error: Option<WireError>) -> ReplyChunk {
        ReplyChunk {
            id: self.id.clone(),
            seq: self.seq,
            last: error.is_none(),
            error,
            worker: self.worker.to_string(),
            usage: self.usage.clone(),
            ..Default::default()
        }
    }
}

/// Completes when nobody reads a reply any more: its caller has gone, the
/// resume grace since has passed, and no watcher follows the conversation.
/// A caller that disconnects while the conversation is watched (the client
/// resumed on another connection, say) does not stop the message; the last
/// watcher leaving then does.
pub(crate) async fn abandoned(caller: &mpsc::Sender<Result<ReplyChunk, Status>>, log: &Log, grace: Duration) {
    caller.closed().await;
    let gone = Instant::now();
    loop {
        let waited = gone.elapsed();
        if waited >= grace && log.watchers() == 0 {
            return;
        }
        let rest = grace.saturating_sub(waited);
        let step = if rest.is_zero() {
            Duration::from_millis(200)
        } else {
            rest.min(Duration::from_millis(200))
        };
        tokio::time::sleep(step).await;
    }
}
