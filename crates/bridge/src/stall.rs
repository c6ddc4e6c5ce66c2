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
//!      and rejoins the group as a new member
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
use std::time::{Duration, Instant};

use events::TopicPartition;
use events::stall::{StallWatch, jittered, look_interval};
use tokio::sync::{mpsc, watch};

use crate::Shared;

/// A partition found stalled, with the stored next offset seen.
pub(crate) type Stalled = Vec<(TopicPartition, Option<i64>)>;

/// Runs the watch until shutdown: sends the stalled partitions to the
/// consume loop, which rejoins the group.
pub(crate) async fn run(
    shared: Arc<Shared>,
    topic: String,
    timeout: Duration,
    stalled_tx: mpsc::Sender<Stalled>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = look_interval(timeout);
    let mut w = StallWatch::new(timeout);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(jittered(every)) => {}
            _ = async { drop(shutdown.wait_for(|s| *s).await) } => return,
        }
        if shared.db_failing().is_some() {
            w.restart();
            continue;
        }
        // A broker that does not answer holds nothing up that a rejoin
        // could free; its clocks start again once it answers.
        let Ok(parts) = shared.watermarks.partitions(&topic).await else {
            w.restart();
            continue;
        };
        let Ok(stored) = shared.store.offsets(&shared.group).await else {
            w.restart();
            continue;
        };
        let mut stalled = Vec::new();
        for tp in parts {
            let Ok((low, high)) = shared.watermarks.watermarks(&tp).await else {
                w.forget(&tp);
                continue;
            };
            let seen = stored.get(&tp).copied();
            if w.observe(Instant::now(), &tp, seen, low, high) {
                stalled.push((tp, seen));
            }
        }
        if !stalled.is_empty() {
            w.restart();
            match stalled_tx.try_send(stalled) {
                // Full: the loop has not taken the last signal yet.
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}
