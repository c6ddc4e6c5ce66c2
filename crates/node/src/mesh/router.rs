//! The router: which worker owns a conversation key, and getting the message
//! there and its reply back, re-routing when the owner fails.
//!
//! ```text
//!  gossip view (watch) ──changes──> table task: Ring over live workers,
//!                                   their mesh addresses; prunes channels
//!  send / accept(envelope)
//!     └─ loop until the deadline:
//!          owner = first of ring.owners(key) not in envelope.skip
//!          owner is me ─> local Worker::submit
//!          otherwise   ─> Deliver on the pooled Channel to the owner
//!                         (hops + 1, grpc-timeout = time left)
//!          failed before the first chunk, or owner declared dead:
//!                         skip it, back off, go round again
//!     └─ after the first chunk: a relay task streams the rest, and turns a
//!        failure or the owner's death into an explicit error chunk
//! ```
//!
//! # Re-routing and the skip list
//!
//! The envelope carries the members its senders failed to reach. A receiver
//! routes as if they were absent: when the old owner has died but the
//! receiver has not noticed yet, the receiver still takes the message
//! instead of forwarding it back to the dead owner. Views converge through
//! gossip, after which the receiver owns the key anyway (rendezvous hashing
//! makes the old second choice the new owner).
//!
//! A message is re-routed only while no reply chunk has reached the caller,
//! so the caller never sees two partial replies. Once chunks have flowed, a
//! failure of the owner ends the reply with an error chunk (`UNAVAILABLE`,
//! "reply incomplete"); the caller may resend under the same id.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use std::pin::Pin;

use proto::Message as _;
use proto::mesh::mesh_client::MeshClient;
use proto::mesh::{CancelRequest, ConversationEvent, Envelope, Position, ReplyChunk, WatchRequest};
use proto::rules;
use rumor_ring::{Rejection, Route};
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt as _};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status, Streaming};
use tracing::{Instrument as _, debug};

use super::config::MeshConfig;
use super::envelope::{self, PROTOCOL_VERSION};
use super::pins::Pins;
use super::stats::{Counters, DecoderRefusal, MeshStats, count};
use super::table::Table;
use crate::gossip::View;
use crate::role::Role;
use crate::worker::{ReplyStream, Worker};

/// Routes messages to the owners of their keys. Cheap to clone.
#[derive(Clone)]
pub struct Router {
    inner: Arc<Inner>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field("me", &self.inner.me)
            .field("checksum", &self.table().checksum())
            .finish_non_exhaustive()
    }
}

struct Inner {
    me: String,
    config: MeshConfig,
    worker: Option<Worker>,
    /// The gossip view, watched by calls in progress so that an owner
    /// declared dead mid-call is given up on at once.
    view: watch::Receiver<View>,
    /// The current table. A watch channel rather than a lock: the table task
    /// replaces it whole and readers take the `Arc` without blocking it.
    table: watch::Receiver<Arc<Table>>,
    /// Relay tasks streaming a remote reply to a caller of this node; a
    /// graceful shutdown waits for them.
    relays: AtomicUsize,
    /// One lazily connected channel per peer, keyed by name with the address
    /// it was made for. tonic multiplexes calls over it, so this is the whole
    /// pool. A plain mutex: held only to look up or insert.
    peers: Mutex<HashMap<String, (String, Channel)>>,
    /// Conversations whose messages enter here, pinned to the worker that
    /// holds their records not yet in the event log.
    pins: Pins,
    counters: Counters,
}

/// A conversation's events as a watcher receives them.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<ConversationEvent, Status>> + Send>>;

/// A live subscription to a conversation's events at its owner.
pub struct Watching {
    /// The owner that numbers the events (in the view of the node that
    /// routed the subscription).
    pub owner: String,
    /// The position the events continue from: the owner's last event when
    /// the subscription was made (absent before any event).
    pub from: Option<Position>,
    /// The replay after the position asked for (or a gap), then every new
    /// event, in order.
    pub events: EventStream,
}

impl fmt::Debug for Watching {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watching")
            .field("owner", &self.owner)
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

/// Metadata of a `Watch` response: the owner, and the position the events
/// continue from (protobuf).
pub(crate) const OWNER_HEADER: &str = "rumor-owner-bin";
pub(crate) const FROM_HEADER: &str = "rumor-from-bin";

/// Why one attempt on one owner failed.
enum Attempt {
    /// Before any reply chunk: try the next owner.
    Retry(Status),
    /// Final: give the caller this status.
    Fail(Status),
}

impl Router {
    /// A router for node `me` over its gossip `view`, with `worker` when this
    /// node holds the worker role. It rebuilds its table on every view change
    /// in a task that ends when the view's sender (the gossip task) stops or
    /// the router is dropped.
    pub fn new(me: impl Into<String>, config: MeshConfig, view: watch::Receiver<View>, worker: Option<Worker>) -> Self {
        let initial = Arc::new(Table::from_view(&view.borrow(), &config));
        let (table_tx, table_rx) = watch::channel(initial);
        let inner = Arc::new(Inner {
            me: me.into(),
            config,
            worker,
            view: view.clone(),
            table: table_rx,
            peers: Mutex::new(HashMap::new()),
            relays: AtomicUsize::new(0),
            pins: Pins::default(),
            counters: Counters::default(),
        });
        tokio::spawn(maintain_table(Arc::downgrade(&inner), view, table_tx));
        Self { inner }
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.inner.me
    }

    /// The settings.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// The current routing table.
    pub fn table(&self) -> Arc<Table> {
        self.inner.table.borrow().clone()
    }

    /// The local worker, if this node is one.
    pub fn worker(&self) -> Option<&Worker> {
        self.inner.worker.as_ref()
    }

    /// A snapshot of the data plane's counters (server and router).
    pub fn stats(&self) -> MeshStats {
        self.inner.counters.read()
    }

    /// Counts an envelope tonic's decoder refused before `Deliver` ran.
    pub(crate) fn count_decoder_refusal(&self, kind: DecoderRefusal) {
        let c = &self.inner.counters;
        count(match kind {
            DecoderRefusal::Oversized => &c.oversized,
            DecoderRefusal::Undecodable => &c.malformed,
        });
    }

    /// Remote replies being relayed to callers of this node now.
    pub fn relays(&self) -> usize {
        self.inner.relays.load(Ordering::Relaxed)
    }

    /// Peers with a pooled channel now.
    pub fn pooled_peers(&self) -> Vec<String> {
        let mut names: Vec<String> = self.inner.lock_peers().keys().cloned().collect();
        names.sort();
        names
    }

    /// Sends a message that enters the mesh at this node (the gateway's and
    /// the forward role's entry point) and returns its reply stream.
    ///
    /// The caller fills `id` (see [`new_message_id`](super::new_message_id)), `key`,
    /// `payload` and optionally `deadline_unix_ms`; the router sets the
    /// version, origin, hop count and checksum. The reply stream ends with a
    /// chunk that has `last` or `error` set; an `Err` is an explicit refusal:
    /// `DEADLINE_EXCEEDED` when no owner took the message in time,
    /// `UNAVAILABLE` when the view has no worker, `INVALID_ARGUMENT` for a bad
    /// envelope, `ALREADY_EXISTS` for a duplicate that cannot be replayed.
    pub async fn send(&self, mut envelope: Envelope) -> Result<ReplyStream, Status> {
        let inner = &self.inner;
        envelope.version = PROTOCOL_VERSION;
        envelope.origin = inner.me.clone();
        envelope.hops = 0;
        envelope.skip.clear();
        envelope::check_fields(&envelope, &inner.counters)?;
        envelope::check_size(&envelope, &inner.config, &inner.counters)?;
        let deadline = envelope::deadline_of(&envelope, None, inner.config.default_timeout);
        if envelope.deadline_unix_ms == 0 {
            envelope.deadline_unix_ms = envelope::deadline_in(deadline - Instant::now());
        }
        let span = message_span(&inner.me, &envelope);
        deliver_in(inner, span, envelope, deadline).await
    }

    /// Subscribes to conversation `key`'s events at its owner: the events
    /// after `after` (or a gap saying what cannot be replayed), then every
    /// new one. The stream ends when the owner stops serving it (it failed,
    /// or left); a watcher then subscribes again from its last position, at
    /// the owner it sees then (see [`Router::owner`]).
    pub async fn watch(&self, key: &str, after: Option<Position>) -> Result<Watching, Status> {
        rules::key("key", key).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.inner
            .watch(WatchRequest {
                version: PROTOCOL_VERSION,
                key: key.to_owned(),
                after,
                hops: 0,
                watcher: self.inner.me.clone(),
            })
            .await
    }

    /// Handles a `Watch` from a peer.
    pub(crate) async fn accept_watch(&self, request: WatchRequest) -> Result<Watching, Status> {
        check_call(request.version, &request.key, request.hops, &self.inner.config)?;
        self.inner.watch(request).await
    }

    /// Stops message `id` of conversation `key` at once, wherever it is
    /// queued or processed: at worker `at` when the caller knows which one
    /// answers (a reply chunk names it), else at the key's owner. `Ok(false)`
    /// when that worker does not hold the message (it ended already).
    pub async fn cancel(&self, key: &str, id: &str, at: Option<&str>) -> Result<bool, Status> {
        rules::key("key", key).map_err(|e| Status::invalid_argument(e.to_string()))?;
        rules::message_id("id", id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let request = CancelRequest {
            version: PROTOCOL_VERSION,
            key: key.to_owned(),
            id: id.to_owned(),
            hops: 0,
        };
        self.inner.cancel(request, at).await
    }

    /// Handles a `Cancel` from a peer.
    pub(crate) async fn accept_cancel(&self, request: CancelRequest) -> Result<bool, Status> {
        check_call(request.version, &request.key, request.hops, &self.inner.config)?;
        rules::message_id("id", &request.id).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.inner.cancel(request, None).await
    }

    /// Conversations whose next message goes to the worker that holds their
    /// records not yet in the event log, rather than by the ring.
    pub fn pinned(&self) -> usize {
        self.inner.pins.len()
    }

    /// The owner of `key` in this node's view now.
    pub fn owner(&self, key: &str) -> Option<String> {
        self.table().owner(key).map(str::to_owned)
    }

    /// The routing table, watched: changes whenever the ring changes.
    pub fn tables(&self) -> watch::Receiver<Arc<Table>> {
        self.inner.table.clone()
    }

    /// Handles an envelope received from a peer: checks it, then routes it
    /// from this node's own view.
    pub(crate) async fn accept(
        &self,
        envelope: Envelope,
        grpc_timeout: Option<Duration>,
    ) -> Result<ReplyStream, Status> {
        let inner = &self.inner;
        envelope::check_envelope(&envelope, &inner.config, &inner.counters)?;
        inner.check_origin(&envelope)?;
        let deadline = envelope::deadline_of(&envelope, grpc_timeout, inner.config.default_timeout);
        if Instant::now() >= deadline {
            count(&inner.counters.expired_on_arrival);
            return Err(Status::deadline_exceeded(format!(
                "message {}: deadline passed before it reached {}",
                envelope.id, inner.me
            )));
        }
        count(&inner.counters.accepted);
        // 0: the sender did not say which table it routed with.
        if envelope.ring_checksum != 0 && envelope.ring_checksum != self.table().checksum() {
            count(&inner.counters.checksum_mismatch);
        }
        let span = message_span(&inner.me, &envelope);
        deliver_in(inner, span, envelope, deadline).await
    }
}

/// The checks every `Watch` and `Cancel` from a peer passes.
fn check_call(version: u32, key: &str, hops: u32, config: &MeshConfig) -> Result<(), Status> {
    if version != PROTOCOL_VERSION {
        return Err(Status::failed_precondition(format!(
            "protocol version {version} is not spoken here (this node speaks {PROTOCOL_VERSION})"
        )));
    }
    rules::key("key", key).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if hops > config.max_hops {
        return Err(Status::invalid_argument(format!(
            "hops {hops} over the limit of {}",
            config.max_hops
        )));
    }
    Ok(())
}

impl Inner {
    async fn watch(&self, mut request: WatchRequest) -> Result<Watching, Status> {
        let table = self.table.borrow().clone();
        match table.route(&request.key, &self.me, request.hops, self.config.max_hops, &[]) {
            Route::Reject(Rejection::NoOwner | Rejection::AllSkipped) => Err(Status::unavailable(format!(
                "conversation {:?}: no live worker in {}'s view",
                request.key, self.me
            ))),
            Route::Reject(Rejection::HopLimit) => Err(Status::aborted(format!(
                "conversation {:?}: hop limit reached at {}; views disagree, retry shortly",
                request.key, self.me
            ))),
            Route::Local => {
                let Some(worker) = &self.worker else {
                    return Err(Status::internal(format!(
                        "{} owns key {:?} in its view but runs no worker",
                        self.me, request.key
                    )));
                };
                let sub = worker.watch(&request.key, request.after.as_ref());
                debug!(key = %request.key, watcher = %request.watcher, "watch");
                Ok(Watching {
                    owner: self.me.clone(),
                    from: sub.from.clone(),
                    events: Box::pin(sub.into_stream().map(Ok)),
                })
            }
            Route::Forward(owner) => {
                let owner = owner.to_owned();
                let addr = table.addr(&owner).unwrap_or_default().to_owned();
                let mut client = MeshClient::new(self.channel(&owner, &addr)?);
                request.hops += 1;
                let response = client.watch(Request::new(request)).await?;
                let meta = response.metadata();
                let header = |name: &str| meta.get_bin(name).and_then(|v| v.to_bytes().ok());
                let from = header(FROM_HEADER).and_then(|b| Position::decode(b).ok());
                let owner = header(OWNER_HEADER)
                    .and_then(|b| String::from_utf8(b.to_vec()).ok())
                    .unwrap_or(owner);
                Ok(Watching {
                    owner,
                    from,
                    events: Box::pin(response.into_inner()),
                })
            }
        }
    }

    async fn cancel(&self, mut request: CancelRequest, at: Option<&str>) -> Result<bool, Status> {
        let table = self.table.borrow().clone();
        let local = match at {
            Some(at) => at == self.me,
            None => matches!(
                table.route(&request.key, &self.me, request.hops, self.config.max_hops, &[]),
                Route::Local
            ),
        };
        // A worker may hold a message it does not own (it took it when the
        // owner failed): it stops it wherever it is asked.
        if let Some(worker) = &self.worker
            && worker.cancel(&request.key, &request.id)
        {
            return Ok(true);
        }
        if local || request.hops >= self.config.max_hops {
            return Ok(false);
        }
        let target = match at.filter(|at| table.addr(at).is_some()) {
            Some(at) => at.to_owned(),
            None => match table.route(&request.key, &self.me, request.hops, self.config.max_hops, &[]) {
                Route::Forward(owner) => owner.to_owned(),
                Route::Local => return Ok(false),
                Route::Reject(_) => {
                    return Err(Status::unavailable(format!(
                        "conversation {:?}: no owner to cancel message {} at, in {}'s view",
                        request.key, request.id, self.me
                    )));
                }
            },
        };
        if target == self.me {
            return Ok(false);
        }
        let addr = table.addr(&target).unwrap_or_default().to_owned();
        let mut client = MeshClient::new(self.channel(&target, &addr)?);
        request.hops += 1;
        Ok(client.cancel(Request::new(request)).await?.into_inner().found)
    }

    /// Provenance is the node's word, not the caller's: a peer's envelope
    /// must name as its origin a live member of this node's view, and only a
    /// forward node may say where an injected message came from (`source`). Anyone who
    /// can reach the mesh port can still claim to be such a member; run the
    /// mesh with mutual TLS where untrusted hosts can reach it.
    fn check_origin(&self, env: &Envelope) -> Result<(), Status> {
        if env.origin == self.me {
            return Ok(());
        }
        let view = self.view.borrow();
        let Some(origin) = view.member(&env.origin).filter(|m| m.status.is_live()) else {
            count(&self.counters.unknown_origin);
            // Views may lag behind a member that has just joined: the
            // sender waits and tries again rather than skipping this owner.
            return Err(Status::aborted(format!(
                "message {}: `origin` {:?} is not a live member in {}'s view",
                env.id, env.origin, self.me
            )));
        };
        if !env.source.is_empty() && !origin.meta.has_role(Role::Forward.as_str()) {
            count(&self.counters.unknown_origin);
            return Err(Status::permission_denied(format!(
                "message {}: `source` may be set only by a forward node, not by {:?}",
                env.id, env.origin
            )));
        }
        Ok(())
    }

    fn lock_peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Channel)>> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&self, name: &str, addr: &str) -> Result<Channel, Status> {
        let mut peers = self.lock_peers();
        if let Some((a, channel)) = peers.get(name)
            && a == addr
        {
            return Ok(channel.clone());
        }
        let bad_addr = |e: &dyn std::fmt::Display| {
            Status::unavailable(format!("member {name} advertises a bad mesh address {addr:?}: {e}"))
        };
        let scheme = if self.config.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| bad_addr(&e))?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.config.tls {
            let host = addr.rsplit_once(':').map_or(addr, |(host, _port)| host);
            endpoint = endpoint.tls_config(tls.client_config(host)).map_err(|e| bad_addr(&e))?;
        }
        let channel = endpoint.connect_lazy();
        peers.insert(name.to_owned(), (addr.to_owned(), channel.clone()));
        Ok(channel)
    }

    fn drop_channel(&self, name: &str) {
        self.lock_peers().remove(name);
    }

    /// Routes until an owner takes the message or the deadline passes.
    async fn deliver(self: &Arc<Self>, mut env: Envelope, deadline: Instant) -> Result<ReplyStream, Status> {
        let mut backoff = self.config.retry_backoff;
        let mut failures: Vec<String> = Vec::new();
        loop {
            if Instant::now() >= deadline {
                count(&self.counters.deadline_exceeded);
                return Err(Status::deadline_exceeded(format!(
                    "message {}: deadline passed before an owner took it{}",
                    env.id,
                    describe(&failures)
                )));
            }
            let table = self.table.borrow().clone();
            // A worker holding the conversation's records not yet in the log
            // keeps its messages (see `super::pins`), unless it already
            // failed this one or does not serve its model.
            let keep = !env.skip.contains(&self.me)
                && self.worker.as_ref().is_some_and(|w| w.holds_records_of(&env.key))
                && table.serves(&self.me, &env.model);
            let pinned = if keep { None } else { self.pinned_target(&env, &table) };
            let route = if keep {
                count(&self.counters.kept_for_records);
                Some(Route::Local)
            } else if let Some(target) = &pinned {
                count(&self.counters.pinned);
                Some(Route::Forward(target))
            } else {
                table.route_model(
                    &env.key,
                    &env.model,
                    &self.me,
                    env.hops,
                    self.config.max_hops,
                    &env.skip,
                )
            };
            let Some(route) = route else {
                count(&self.counters.no_owner);
                let served: Vec<&str> = table.models().collect();
                return Err(Status::not_found(format!(
                    "message {}: no live worker serves model {:?} in {}'s view (served: {})",
                    env.id,
                    env.model,
                    self.me,
                    if served.is_empty() {
                        "none".to_owned()
                    } else {
                        served.join(", ")
                    }
                )));
            };
            let (target, result) = match route {
                Route::Reject(Rejection::NoOwner) => {
                    count(&self.counters.no_owner);
                    return Err(Status::unavailable(format!(
                        "message {}: no live worker in {}'s view{}",
                        env.id,
                        self.me,
                        describe(&failures)
                    )));
                }
                Route::Reject(Rejection::AllSkipped) => {
                    // Every owner failed once. Dead ones leave the view soon
                    // and busy ones free up, so start the preference order afresh.
                    env.skip.clear();
                    pause(&mut backoff, deadline, &self.config).await;
                    continue;
                }
                Route::Reject(Rejection::HopLimit) => {
                    count(&self.counters.hop_limit_reached);
                    return Err(Status::aborted(format!(
                        "message {}: hop limit of {} reached at {}, which does not own key {:?} in its view; \
                         views disagree, retry shortly",
                        env.id, self.config.max_hops, self.me, env.key
                    )));
                }
                Route::Local => (self.me.clone(), self.deliver_locally(&env, deadline)),
                Route::Forward(owner) => {
                    let target = owner.to_owned();
                    // Every ring member has an address (see `Table::from_view`).
                    let addr = table.addr(&target).unwrap_or_default().to_owned();
                    let result = self.forward(&env, &target, &addr, table.checksum(), deadline).await;
                    (target, result)
                }
            };
            match result {
                Ok(stream) => {
                    if !failures.is_empty() {
                        count(&self.counters.rerouted);
                    }
                    return Ok(stream);
                }
                Err(Attempt::Fail(status)) => return Err(status),
                Err(Attempt::Retry(status)) => {
                    count(&self.counters.failed_attempts);
                    debug!(id = %env.id, %target, %status, "mesh attempt failed; re-routing");
                    failures.push(format!("{target}: {}", status.message()));
                    if keep {
                        // Over capacity or leaving: the conversation goes by
                        // the ring while its records here are not in the log.
                        count(&self.counters.pins_lost);
                    }
                    if pinned.is_some() && status.code() == Code::Aborted {
                        // The pinned worker holds nothing of the conversation
                        // any more (else it would have kept the message) and
                        // could not pass it on: route by the ring.
                        self.pins.unpin(&env.key);
                        continue;
                    }
                    if status.code() == Code::Aborted {
                        // The receiver's view disagreed with ours; it is not
                        // dead, so wait for views to converge instead.
                        pause(&mut backoff, deadline, &self.config).await;
                    } else {
                        env.skip.push(target);
                        if status.code() != Code::ResourceExhausted {
                            pause(&mut backoff, deadline, &self.config).await;
                        }
                    }
                }
            }
        }
    }

    /// Where a message entering at this node goes when its conversation is
    /// pinned (see [`super::pins`]): the pinned worker while it is a live
    /// worker of the message's model that this message has not failed on.
    /// Otherwise the pin is given up.
    fn pinned_target(&self, env: &Envelope, table: &Table) -> Option<String> {
        if env.hops > 0 {
            return None;
        }
        let (target, fresh) = self.pins.get(&env.key, Instant::now())?;
        if target == self.me {
            // This node's own worker: it keeps the message while it holds
            // the records, and answers for itself otherwise.
            self.pins.unpin(&env.key);
            return None;
        }
        if fresh && !env.skip.contains(&target) && table.serves(&target, &env.model) {
            return Some(target);
        }
        self.pins.unpin(&env.key);
        count(&self.counters.pins_lost);
        debug!(id = %env.id, key = %env.key, %target, "pinned worker gone, failed or quiet too long; routing by the ring");
        None
    }

    /// Pins or unpins conversation `key` by the final chunk of a reply to a
    /// message that entered here, as the worker that answered says.
    fn settle_pin(&self, key: &str, end: &ReplyChunk) {
        if end.replayed {
            return;
        }
        if end.records_pending && !end.worker.is_empty() {
            if !self.pins.pin(key, &end.worker, Instant::now()) {
                count(&self.counters.pins_lost);
            }
        } else {
            self.pins.unpin(key);
        }
    }

    fn deliver_locally(&self, env: &Envelope, deadline: Instant) -> Result<ReplyStream, Attempt> {
        let Some(worker) = &self.worker else {
            return Err(Attempt::Fail(Status::internal(format!(
                "{} owns key {:?} in its view but runs no worker",
                self.me, env.key
            ))));
        };
        let local = Envelope {
            traceparent: stats::trace::pass_on(&tracing::Span::current(), &env.traceparent),
            ..env.clone()
        };
        match worker.submit(local, deadline) {
            Ok(stream) => {
                count(&self.counters.local);
                Ok(stream)
            }
            // Over capacity, or leaving: the next owner may take it, if a hop is left.
            Err(s)
                if matches!(s.code(), Code::ResourceExhausted | Code::Unavailable)
                    && env.hops < self.config.max_hops =>
            {
                Err(Attempt::Retry(s))
            }
            Err(s) => Err(Attempt::Fail(s)),
        }
    }

    /// One attempt on a remote owner: until its first reply chunk, any
    /// failure (or the owner's death in the view) may be retried elsewhere.
    async fn forward(
        self: &Arc<Self>,
        env: &Envelope,
        target: &str,
        addr: &str,
        checksum: u64,
        deadline: Instant,
    ) -> Result<ReplyStream, Attempt> {
        let channel = self.channel(target, addr).map_err(Attempt::Retry)?;
        let mut out = env.clone();
        out.hops += 1;
        out.ring_checksum = checksum;
        out.traceparent = stats::trace::pass_on(&tracing::Span::current(), &env.traceparent);
        let mut request = Request::new(out);
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        let mut client = MeshClient::new(channel);
        let mut view = self.view.clone();
        let first = async {
            let mut stream = client.deliver(request).await?.into_inner();
            let first = stream.message().await?;
            Ok::<_, Status>((stream, first))
        };
        let outcome = tokio::select! {
            r = first => r,
            () = declared_dead(&mut view, target) => {
                self.drop_channel(target);
                return Err(Attempt::Retry(Status::unavailable(format!("owner {target} was declared dead"))));
            }
            () = sleep_until(deadline) => {
                count(&self.counters.deadline_exceeded);
                return Err(Attempt::Fail(Status::deadline_exceeded(format!(
                    "message {}: deadline passed waiting for {target}", env.id
                ))));
            }
        };
        match outcome {
            Ok((stream, Some(first))) => {
                count(&self.counters.forwarded);
                // Pins are kept where messages enter the mesh.
                let entry = (env.hops == 0).then(|| env.key.clone());
                Ok(self.relay(stream, first, view, target.to_owned(), entry, deadline))
            }
            Ok((_, None)) => Err(Attempt::Retry(Status::unavailable(format!(
                "owner {target} ended the reply without any chunk"
            )))),
            Err(status) if retryable(&status) && Instant::now() < deadline => {
                if status.code() == Code::Unavailable {
                    self.drop_channel(target);
                }
                Err(Attempt::Retry(status))
            }
            Err(status) => Err(Attempt::Fail(status)),
        }
    }

    /// Streams the rest of a remote reply to the caller. Every way the reply
    /// can break off ends it with an explicit error chunk. For a message
    /// that entered here (`entry`: its key), the worker's final chunk pins
    /// or unpins the conversation.
    fn relay(
        self: &Arc<Self>,
        mut stream: Streaming<ReplyChunk>,
        first: ReplyChunk,
        mut view: watch::Receiver<View>,
        target: String,
        entry: Option<String>,
        deadline: Instant,
    ) -> ReplyStream {
        let (tx, rx) = mpsc::channel(16);
        let inner = self.clone();
        inner.relays.fetch_add(1, Ordering::Relaxed);
        let relay = async move {
            // Counted down however the relay ends.
            let _relaying = Relaying(inner.clone());
            let id = first.id.clone();
            let mut next_seq = first.seq + 1;
            let mut end = is_end(&first);
            let settle = |chunk: &ReplyChunk| {
                if let Some(key) = &entry
                    && is_end(chunk)
                {
                    inner.settle_pin(key, chunk);
                }
            };
            settle(&first);
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            while !end {
                let failure = tokio::select! {
                    m = stream.message() => match m {
                        Ok(Some(chunk)) => {
                            next_seq = chunk.seq + 1;
                            end = is_end(&chunk);
                            settle(&chunk);
                            if tx.send(Ok(chunk)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        Ok(None) => (Code::Unavailable, format!("owner {target} ended the reply early; reply incomplete")),
                        Err(s) => (s.code(), format!("owner {target} failed mid-reply: {}; reply incomplete", s.message())),
                    },
                    () = declared_dead(&mut view, &target) => {
                        (Code::Unavailable, format!("owner {target} was declared dead mid-reply; reply incomplete"))
                    }
                    () = sleep_until(deadline) => {
                        (Code::DeadlineExceeded, format!("deadline passed while {target} was replying; reply incomplete"))
                    }
                    // The caller left: dropping `stream` cancels the call.
                    () = tx.closed() => return,
                };
                count(&inner.counters.replies_cut);
                let _ = tx
                    .send(Ok(envelope::error_chunk(&id, next_seq, failure.0, failure.1)))
                    .await;
                // The call is broken: dropping it cancels it.
                return;
            }
            // Read the call to its end (the trailers) before dropping it. A
            // call dropped after its last chunk but before its trailers is
            // reset, and h2 answers many such resets on one connection with
            // GOAWAY (ENHANCE_YOUR_CALM), failing every call on it.
            let _ =
                tokio::time::timeout_at(deadline, async { while let Ok(Some(_)) = stream.message().await {} }).await;
        };
        tokio::spawn(relay.in_current_span());
        ReceiverStream::new(rx)
    }
}

/// One relay in progress, for [`Router::relays`].
struct Relaying(Arc<Inner>);

impl Drop for Relaying {
    fn drop(&mut self) {
        self.0.relays.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The span of one message's routing at node `me`: its logs name the node,
/// the message and its conversation. In a trace it is the child of the
/// span the envelope's trace context names (the sender's), when there is one.
fn message_span(me: &str, env: &Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "message",
        node = %me,
        id = %env.id,
        key = %env.key,
        hops = env.hops,
        error = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    stats::trace::follow(&span, &env.traceparent);
    span
}

/// Routes `env` under `span`, which says why when no owner took it.
async fn deliver_in(
    inner: &Arc<Inner>,
    span: tracing::Span,
    env: Envelope,
    deadline: Instant,
) -> Result<ReplyStream, Status> {
    let result = inner.deliver(env, deadline).instrument(span.clone()).await;
    if let Err(status) = &result {
        stats::trace::failed(&span, status.message());
    }
    result
}

fn is_end(chunk: &ReplyChunk) -> bool {
    chunk.last || chunk.error.is_some()
}

/// Statuses that mean "this owner could not take it", not "this message is bad".
fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::ResourceExhausted | Code::Unknown | Code::Cancelled | Code::Aborted
    )
}

fn describe(failures: &[String]) -> String {
    if failures.is_empty() {
        String::new()
    } else {
        format!(" (tried {})", failures.join("; "))
    }
}

async fn pause(backoff: &mut Duration, deadline: Instant, config: &MeshConfig) {
    sleep((*backoff).min(deadline.saturating_duration_since(Instant::now()))).await;
    *backoff = (*backoff * 2).min(config.max_retry_backoff);
}

/// Completes once `name` is declared dead (failed) in the view, or is gone
/// from it. A member that left is not dead: it leaves only after finishing
/// what it held, and a reply it still streams is read to its end. Never
/// completes when the gossip task has stopped: then nothing new is known
/// about anyone.
async fn declared_dead(view: &mut watch::Receiver<View>, name: &str) {
    let dead = view
        .wait_for(|v| v.member(name).is_none_or(|m| m.status == membership::Status::Dead))
        .await
        .is_ok();
    if !dead {
        std::future::pending::<()>().await;
    }
}

/// Rebuilds the table on every view change and drops the channels of members
/// that left it (or moved to another address).
async fn maintain_table(inner: Weak<Inner>, mut view: watch::Receiver<View>, table: watch::Sender<Arc<Table>>) {
    while view.changed().await.is_ok() {
        let Some(inner) = inner.upgrade() else { return };
        let next = Table::from_view(&view.borrow_and_update(), &inner.config);
        if next == **table.borrow() {
            continue;
        }
        inner
            .lock_peers()
            .retain(|name, (addr, _)| next.addr(name) == Some(addr.as_str()));
        table.send_replace(Arc::new(next));
    }
}
