//! The stall watch: a partition whose records wait while no bridge of the
//! group stores any makes the consume loop leave the consumer group and
//! join it again.
//!
//! ```text
//!  about every stall_timeout / 4 (at most 15 s, jittered):
//!      partitions of the topic (broker metadata), stored next offsets
//!      (database, this group), low and high watermarks (broker)
//!     per partition: waiting = high > max(stored, low)
//!         not waiting, or stored moved ──> its clock starts again
//!         waiting, stored still for stall_timeout ──> stalled
//!     any stalled ──> (partition, stored offset seen) to the consume loop;
//!                     every clock starts again
//!  consume loop: writes its batch; if it stored any of them since, the
//!      signal is stale and dropped; otherwise it forgets its partitions
//!      and rejoins the group as a new member, or, when rejoins in a row
//!      have not helped, reads every partition alone (crate::consume)
//! ```
//!
//! The rule itself is [`events::stall`], shared with the forward role.
//!
//! Why: the database, not the group coordinator, is where the bridge's
//! progress is, so it is where a stall shows whatever its cause. The cause
//! seen: tansu 0.6's coordinator, after an outage during which a bridge's
//! JoinGroup requests timed out, kept one partition assigned to a member id
//! no consumer held, and never rebalanced it (docs/benchmarks/network.md).
//! A new member's JoinGroup makes the coordinator form the group again.
//!
//! Nothing is counted against a partition while this bridge's database
//! reads or writes fail (the loop is retrying them), while the broker does
//! not answer, or while the stored offset moves, however slowly. The
//! jitter spreads the looks of bridges that share a group, so the first
//! one's rejoin usually repairs the group before the others fire.

use std::sync::Arc;
use std::time::Duration;

pub(crate) use events::stall::Stalled;
use tokio::sync::{mpsc, watch};

use crate::Shared;

/// Runs the watch until shutdown: sends the stalled partitions, with the
/// stored offsets seen, to the consume loop, which rejoins the group.
pub(crate) async fn run(
    shared: Arc<Shared>,
    topic: String,
    timeout: Duration,
    stalled_tx: mpsc::Sender<Stalled>,
    mut shutdown: watch::Receiver<bool>,
) {
    // While this bridge's database fails the loop is retrying it, and
    // stored offsets that stand still say nothing about the group.
    let reader = shared.watermarks.clone();
    let stored = move |_| {
        let shared = shared.clone();
        async move {
            if shared.db_failing().is_some() {
                return None;
            }
            shared.store.offsets(&shared.group).await.ok()
        }
    };
    let looks = events::stall::watch(reader, topic, timeout, stored, |_| false, stalled_tx);
    tokio::select! {
        () = looks => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
}
