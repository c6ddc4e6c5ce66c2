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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use events::TopicPartition;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::Shared;

/// Where one partition was last seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    stored: i64,
    since: Instant,
}

/// The stall rule, without IO: fed what the watch reads, says which
/// partitions stalled.
#[derive(Debug)]
pub(crate) struct StallWatch {
    timeout: Duration,
    parts: BTreeMap<TopicPartition, Seen>,
}

impl StallWatch {
    pub(crate) fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            parts: BTreeMap::new(),
        }
    }

    /// One look at a partition: `stored` is the next offset the database
    /// holds for it (`None`: nothing stored yet), `low` and `high` its
    /// watermarks. True when it has had records waiting, and the same
    /// stored offset, for the timeout.
    pub(crate) fn observe(
        &mut self,
        now: Instant,
        tp: &TopicPartition,
        stored: Option<i64>,
        low: i64,
        high: i64,
    ) -> bool {
        // Records deleted from the log before they were stored are not
        // waiting: only what is still in the log can be stored.
        let stored = stored.map_or(low, |s| s.max(low));
        if high <= stored {
            self.parts.remove(tp);
            return false;
        }
        match self.parts.get_mut(tp) {
            Some(seen) if seen.stored == stored => now.duration_since(seen.since) >= self.timeout,
            _ => {
                self.parts.insert(tp.clone(), Seen { stored, since: now });
                false
            }
        }
    }

    /// Starts every clock again (the database failed, or the loop rejoined).
    pub(crate) fn restart(&mut self) {
        self.parts.clear();
    }

    /// Starts one partition's clock again (its watermarks could not be read).
    pub(crate) fn forget(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
    }
}

/// A partition found stalled, with the stored next offset seen.
pub(crate) type Stalled = Vec<(TopicPartition, Option<i64>)>;

/// `d` times a random factor in [0.5, 1.5).
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d.mul_f64(0.5 + (r % 1_000) as f64 / 1_000.0)
}

/// Runs the watch until shutdown: sends the stalled partitions to the
/// consume loop, which rejoins the group.
pub(crate) async fn run(
    shared: Arc<Shared>,
    topic: String,
    timeout: Duration,
    stalled_tx: mpsc::Sender<Stalled>,
    mut shutdown: watch::Receiver<bool>,
) {
    let every = (timeout / 4).min(Duration::from_secs(15));
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

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn tp() -> TopicPartition {
        TopicPartition::new("m", 0)
    }

    #[test]
    fn records_waiting_with_the_stored_offset_still_for_the_timeout_are_a_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        assert!(!w.observe(t0 + T / 2, &tp(), Some(10), 0, 20));
        assert!(w.observe(t0 + T, &tp(), Some(10), 0, 20));
    }

    #[test]
    fn a_stored_offset_that_moves_however_slowly_is_no_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        for i in 0..10u32 {
            let now = t0 + T / 2 * i;
            assert!(!w.observe(now, &tp(), Some(10 + i64::from(i)), 0, 1_000), "look {i}");
        }
    }

    #[test]
    fn nothing_waiting_is_no_stall_however_long() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(20), 0, 20));
        assert!(!w.observe(t0 + T * 10, &tp(), Some(20), 0, 20));
        // Nothing stored and nothing in the log, or only deleted records.
        assert!(!w.observe(t0, &tp(), None, 0, 0));
        assert!(!w.observe(t0 + T * 10, &tp(), Some(5), 30, 30));
    }

    #[test]
    fn a_partition_nothing_was_stored_for_stalls_from_its_low_watermark() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), None, 3, 9));
        assert!(w.observe(t0 + T, &tp(), None, 3, 9));
    }

    #[test]
    fn records_that_stop_waiting_start_the_clock_again() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        assert!(!w.observe(t0 + T / 2, &tp(), Some(15), 0, 15));
        assert!(!w.observe(t0 + T, &tp(), Some(15), 0, 16));
        assert!(!w.observe(t0 + T + T / 2, &tp(), Some(15), 0, 16));
        assert!(w.observe(t0 + T * 2, &tp(), Some(15), 0, 16));
    }

    #[test]
    fn looks_are_jittered_around_the_interval() {
        let d = Duration::from_secs(10);
        let looks: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(looks.iter().all(|l| *l >= d / 2 && *l < d * 3 / 2));
        assert!(looks.iter().any(|l| *l < d) && looks.iter().any(|l| *l > d));
    }

    #[test]
    fn a_restart_starts_every_clock_again() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        w.restart();
        assert!(!w.observe(t0 + T, &tp(), Some(10), 0, 15));
        assert!(w.observe(t0 + T * 2, &tp(), Some(10), 0, 15));
    }
}
