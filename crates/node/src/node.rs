//! One mesh node assembled from a plain config: gossip, the router, a worker
//! when the node holds the worker role, the mesh gRPC server and the admin
//! HTTP endpoint, with a graceful shutdown that leaves the cluster and drains.
//!
//! The binary reads the config file and the environment and fills in a
//! [`NodeConfig`]; tests build one directly with [`NodeConfig::new`].

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use crate::admin::{self, Shared};
use crate::dead_letters::DeadLetters;
use crate::gossip::{self, GossipConfig, GossipHandle};
use crate::mesh::Router;
use crate::mesh::{self, MeshConfig};
use crate::processor::Processor;
use crate::role::{Role, Roles};
use crate::worker::{RecordSink, Worker, WorkerConfig};

/// Everything one node needs to start. A plain struct: the binary fills it in.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Gossip settings; `gossip.name` is the node's name. The metadata's
    /// roles, capacity and `mesh`/`admin` services are set by [`Node::start`]
    /// from the fields below (other services and tags are kept).
    pub gossip: GossipConfig,
    /// The roles the node holds; gossip advertises them.
    pub roles: Roles,
    /// Address of the mesh gRPC server. Port 0 picks a free port.
    pub mesh_bind: SocketAddr,
    /// Address of the admin HTTP endpoint. Port 0 picks a free port.
    pub admin_bind: SocketAddr,
    /// Data-plane settings.
    pub mesh: MeshConfig,
    /// Worker settings (used with the worker role); `capacity` is advertised.
    pub worker: WorkerConfig,
    /// What the worker calls for each message (with the worker role);
    /// crates/processors holds the implementations. Default: none, and a
    /// node with the worker role then refuses to start.
    pub processor: Option<Arc<dyn Processor>>,
    /// Where the worker reports each message it processes and its final
    /// reply (the event log). Default none.
    pub record_sink: Option<Arc<dyn RecordSink>>,
    /// Longest time a graceful shutdown waits for the leave to spread and for
    /// in-flight messages to finish. Default 5 s.
    pub drain_timeout: Duration,
    /// What the node's readiness (`/readyz`) depends on besides joining and
    /// draining: the forward role's consumer, for example. Default none.
    pub readiness: Vec<Arc<dyn Readiness>>,
    /// Counters of parts of the process besides the node's own (the
    /// forward role's, for example), exported on `/metrics`. Default none.
    pub counters: Vec<Arc<dyn CounterSource>>,
    /// Where records that can never be delivered are set aside (shared with
    /// the event-log seams the binary plugs in); the admin API lists them.
    pub dead_letters: Arc<DeadLetters>,
    /// Allow the admin endpoint's fault injection (`POST /v1/fault/isolate`
    /// cuts the node's gossip traffic), for tests of network cuts with real
    /// processes. Default false.
    pub fault_injection: bool,
}

impl NodeConfig {
    /// A node named `name` on 127.0.0.1 with free ports, no roles, no seeds,
    /// no keys and LAN protocol defaults.
    pub fn new(name: impl Into<String>) -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        Self {
            gossip: GossipConfig::new(name, loopback),
            roles: Roles::NONE,
            mesh_bind: loopback,
            admin_bind: loopback,
            mesh: MeshConfig::default(),
            worker: WorkerConfig::default(),
            processor: None,
            record_sink: None,
            readiness: Vec::new(),
            counters: Vec::new(),
            dead_letters: Arc::default(),
            drain_timeout: Duration::from_secs(5),
            fault_injection: false,
        }
    }

    /// True when the node holds `role`.
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.has(role)
    }
}

/// A part of the process the node's readiness depends on. `ready` is called
/// on every `/readyz` and metrics scrape, so it must not block.
pub trait Readiness: Send + Sync + std::fmt::Debug + 'static {
    /// `Err(why)` while the part cannot do its work.
    fn ready(&self) -> Result<(), String>;
}

/// Counters of a part of the process, for the node's `/metrics`. `counters`
/// is called on every scrape, so it must not block.
pub trait CounterSource: Send + Sync + std::fmt::Debug + 'static {
    /// The metric name prefix (`rumor_forward_`, say), and each counter's
    /// name (without `_total`), description and value.
    fn counters(&self) -> (&'static str, Vec<(&'static str, &'static str, u64)>);
}

/// Why [`Node::start`] did not start. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A socket could not be bound.
    #[error("binding the {what} address {addr}: {source}")]
    Bind {
        /// `mesh` or `admin`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// A service is bound to an unspecified address (`0.0.0.0`) and the
    /// gossip config advertises no address to take the host from.
    #[error("the {what} address {addr} is unspecified; set an advertised gossip address")]
    NothingToAdvertise {
        /// `mesh` or `admin`.
        what: &'static str,
        /// The bound address.
        addr: SocketAddr,
    },
    /// The node holds the worker role but was given no processor.
    #[error("the worker role needs a processor")]
    NoProcessor,
    /// The mesh settings break a constraint.
    #[error("mesh config: {0}")]
    Mesh(#[from] mesh::MeshConfigError),
    /// The gossip layer did not start.
    #[error("gossip: {0}")]
    Gossip(#[from] gossip::StartError),
}

/// Where a running node listens (the advertised addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addrs {
    /// Gossip (UDP and TCP).
    pub gossip: SocketAddr,
    /// Mesh gRPC.
    pub mesh: SocketAddr,
    /// Admin HTTP.
    pub admin: SocketAddr,
}

/// How a graceful shutdown went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// The leave notice reached the cluster (or nobody was left to tell).
    pub left: bool,
    /// Every in-flight message finished and both servers stopped in time.
    pub drained: bool,
    /// Messages the worker still held when the drain timeout ended.
    pub abandoned: usize,
}

/// A running node. Dropping it without [`Node::shutdown`] stops nothing
/// gracefully: the tasks end when the runtime does, as after a crash.
#[derive(Debug)]
pub struct Node {
    shared: Arc<Shared>,
    addrs: Addrs,
    drain_timeout: Duration,
    /// Tells the mesh and admin servers to stop accepting. A watch rather
    /// than a oneshot: both servers (and in-flight admin streams) observe it.
    stop: watch::Sender<bool>,
    mesh_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
}

impl Node {
    /// Binds the mesh and admin sockets, starts gossip (joining the seeds in
    /// the background), the worker if the node has the worker role, and both
    /// servers. Readiness (`/readyz`) follows the join.
    pub async fn start(mut config: NodeConfig) -> Result<Node, NodeError> {
        config.mesh.check()?;
        let mesh_listener = TcpListener::bind(config.mesh_bind)
            .await
            .map_err(|source| NodeError::Bind {
                what: "mesh",
                addr: config.mesh_bind,
                source,
            })?;
        let admin_listener = TcpListener::bind(config.admin_bind)
            .await
            .map_err(|source| NodeError::Bind {
                what: "admin",
                addr: config.admin_bind,
                source,
            })?;
        let host = config.gossip.advertise.map(|a| a.ip());
        let mesh_addr = advertised("mesh", local_addr(&mesh_listener, config.mesh_bind), host)?;
        let admin_addr = advertised("admin", local_addr(&admin_listener, config.admin_bind), host)?;

        let name = config.gossip.name.clone();
        let is_worker = config.has_role(Role::Worker);
        let processor = match (is_worker, config.processor.take()) {
            (true, None) => return Err(NodeError::NoProcessor),
            (true, p) => p,
            (false, _) => None,
        };
        let meta = &mut config.gossip.meta;
        meta.roles = config.roles.names();
        meta.capacity = if is_worker {
            config.worker.capacity.min(u32::MAX as usize) as u32
        } else {
            0
        };
        if let Some(p) = &processor {
            let models = p.models();
            if !models.is_empty() {
                meta.tags.insert("models".into(), models.join(","));
            }
        }
        meta.services.insert(config.mesh.service.clone(), mesh_addr.to_string());
        meta.services.insert("admin".into(), admin_addr.to_string());

        let gossip = gossip::spawn(config.gossip).await?;
        let worker = processor.map(|processor| {
            let worker = Worker::new(&name, config.worker.clone(), processor);
            match config.record_sink.clone() {
                Some(sink) => worker.with_sink(sink),
                None => worker,
            }
        });
        let router = Router::new(&name, config.mesh.clone(), gossip.view(), worker);
        let addrs = Addrs {
            gossip: gossip.addr(),
            mesh: mesh_addr,
            admin: admin_addr,
        };
        let shared = Shared::new(
            gossip,
            router.clone(),
            config.readiness,
            config.counters,
            config.dead_letters,
            config.fault_injection,
        );
        let (stop, stopped) = watch::channel(false);

        let span = tracing::info_span!("node", name = %name);
        let mesh_task = tokio::spawn({
            let (stopped, shared) = (stopped.clone(), shared.clone());
            async move {
                let why = match mesh::serve(mesh_listener, router, wait_true(stopped.clone())).await {
                    Ok(()) => "the mesh server stopped".to_owned(),
                    Err(e) => format!("the mesh server failed: {e}"),
                };
                if !*stopped.borrow() {
                    shared.fail(why);
                }
            }
            .instrument(span.clone())
        });
        let admin_task = tokio::spawn({
            let (stopped, shared) = (stopped.clone(), shared.clone());
            async move {
                let why = match admin::serve(admin_listener, shared.clone(), wait_true(stopped.clone())).await {
                    Ok(()) => "the admin server stopped".to_owned(),
                    Err(e) => format!("the admin server failed: {e}"),
                };
                if !*stopped.borrow() {
                    shared.fail(why);
                }
            }
            .instrument(span.clone())
        });
        // The gossip task owns the membership: if it ends unbidden, the node
        // is deaf and blind.
        // (A weak reference: this watch must not keep the node, and with it
        // the gossip task, alive.)
        tokio::spawn({
            let (mut view, stopped, shared) = (shared.gossip.view(), stopped, Arc::downgrade(&shared));
            async move {
                while view.changed().await.is_ok() {}
                if let Some(shared) = shared.upgrade()
                    && !*stopped.borrow()
                {
                    shared.fail("the gossip task ended".to_owned());
                }
            }
            .instrument(span)
        });
        tracing::info!(%name, gossip = %addrs.gossip, mesh = %addrs.mesh, admin = %addrs.admin, "node started");
        Ok(Node {
            shared,
            addrs,
            drain_timeout: config.drain_timeout,
            stop,
            mesh_task,
            admin_task,
        })
    }

    /// The node's name.
    pub fn name(&self) -> &str {
        self.shared.gossip.name()
    }

    /// Where the node listens.
    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The gossip handle.
    pub fn gossip(&self) -> &GossipHandle {
        &self.shared.gossip
    }

    /// Completes when a task the node cannot work without (gossip, the mesh
    /// server, the admin server) ended unbidden, with why; readiness is off
    /// from then on. The process should exit so that its supervisor
    /// (systemd) restarts it.
    pub async fn failed(&self) -> String {
        let mut failure = self.shared.failure();
        match failure.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// What this node set aside because it could never be delivered.
    pub fn dead_letters(&self) -> &Arc<DeadLetters> {
        self.shared.dead_letters()
    }

    /// Whether the node should get traffic now, as `/readyz` answers: a
    /// check other servers of the process (the client edge) share.
    pub fn readiness(&self) -> Arc<dyn Fn() -> Result<(), String> + Send + Sync> {
        let shared = self.shared.clone();
        Arc::new(move || shared.ready())
    }

    /// The router (the entry point for messages that enter at this node).
    pub fn router(&self) -> &Router {
        &self.shared.router
    }

    /// Waits until a seed answered, i.e. until the node is ready.
    pub async fn wait_joined(&self) -> Result<(), gossip::Stopped> {
        self.shared.gossip.wait_joined().await
    }

    /// Leaves gracefully, all within the drain timeout: readiness turns off;
    /// a worker refuses new messages and advertises no capacity (routers
    /// take them to the next owner, unprocessed) and finishes the ones it
    /// holds; replies relayed for this node's callers end; then the leave is
    /// gossiped, both servers stop and the gossip task stops. A message is
    /// processed twice only when its owner truly died.
    pub async fn shutdown(self) -> ShutdownReport {
        let deadline = Instant::now() + self.drain_timeout;
        let until_deadline = || deadline.saturating_duration_since(Instant::now());
        self.shared.set_draining();
        let gossip = &self.shared.gossip;
        let mut abandoned = 0;
        if let Some(worker) = self.shared.router.worker() {
            // Take no new conversations: refuse new messages (a router tries
            // the next owner, nothing processed) and advertise no capacity,
            // so routers elsewhere stop choosing this node.
            worker.drain();
            let mut meta = gossip.view().borrow().local.meta.clone();
            meta.capacity = 0;
            let _ = gossip.set_meta(meta).await;
            // Finish what it holds; the replies stream back to their callers.
            while worker.in_flight() > 0 && !until_deadline().is_zero() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            abandoned = worker.in_flight();
        }
        // Replies this node relays for its own callers end too.
        while self.shared.router.relays() > 0 && !until_deadline().is_zero() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Only then leave: a member that left has nothing in flight, so its
        // peers can forget it at once.
        let left = match gossip.leave(until_deadline().max(Duration::from_millis(100)) / 2).await {
            Ok(out) => out.drained,
            Err(gossip::Stopped) => false,
        };
        let _ = self.stop.send(true);
        let mut drained = abandoned == 0;
        for task in [self.mesh_task, self.admin_task] {
            let abort = task.abort_handle();
            if tokio::time::timeout(until_deadline(), task).await.is_err() {
                // Connections still open at the deadline (for example idle
                // pooled channels from peers) are cut.
                abort.abort();
                drained = false;
            }
        }
        let _ = gossip.shutdown().await;
        ShutdownReport {
            left,
            drained,
            abandoned,
        }
    }
}

async fn wait_true(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

fn local_addr(listener: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    listener.local_addr().unwrap_or(fallback)
}

/// The address peers reach a service at: the bound address, with the host of
/// the advertised gossip address when bound to `0.0.0.0` or `::`.
fn advertised(what: &'static str, bound: SocketAddr, host: Option<IpAddr>) -> Result<SocketAddr, NodeError> {
    if !bound.ip().is_unspecified() {
        return Ok(bound);
    }
    match host {
        Some(ip) if !ip.is_unspecified() => Ok(SocketAddr::new(ip, bound.port())),
        _ => Err(NodeError::NothingToAdvertise { what, addr: bound }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_binds_take_the_advertised_gossip_host() {
        let any: SocketAddr = "0.0.0.0:7001".parse().unwrap();
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        assert_eq!(
            advertised("mesh", any, Some(ip)).unwrap(),
            "10.0.0.5:7001".parse().unwrap()
        );
        assert!(advertised("mesh", any, None).is_err());
        let lo: SocketAddr = "127.0.0.1:7001".parse().unwrap();
        assert_eq!(advertised("mesh", lo, None).unwrap(), lo);
    }
}
