//! Connections held per credential and in total, and messages per second
//! per credential.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

use crate::config::Limits;

/// Why a connection was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The gateway holds its most connections (503).
    #[error("the gateway holds its limit of {0} connections; try another gateway or later")]
    Total(usize),
    /// The credential holds its most connections (429).
    #[error("credential {0:?} holds its limit of {1} connections")]
    PerCredential(String, usize),
}

/// Counts connections; a [`Permit`] is one held.
#[derive(Debug)]
pub struct Gate {
    limits: Limits,
    total: AtomicUsize,
    /// Connections per credential name. A plain mutex: held to add or
    /// remove one.
    per_credential: Mutex<HashMap<String, usize>>,
}

/// One connection held; dropping it frees the place.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    credential: String,
}

impl Gate {
    /// A gate for `limits`.
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: AtomicUsize::new(0),
            per_credential: Mutex::new(HashMap::new()),
        })
    }

    /// Connections held now.
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// A place for one more connection of `credential`.
    pub fn admit(self: &Arc<Self>, credential: &str) -> Result<Permit, Refused> {
        let mut per = self.per_credential.lock().unwrap_or_else(|e| e.into_inner());
        if self.total.load(Ordering::Relaxed) >= self.limits.max_connections {
            return Err(Refused::Total(self.limits.max_connections));
        }
        let held = per.entry(credential.to_owned()).or_default();
        if *held >= self.limits.max_connections_per_credential {
            return Err(Refused::PerCredential(
                credential.to_owned(),
                self.limits.max_connections_per_credential,
            ));
        }
        *held += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            gate: self.clone(),
            credential: credential.to_owned(),
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut per = self.gate.per_credential.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = per.get_mut(&self.credential) {
            *n -= 1;
            if *n == 0 {
                per.remove(&self.credential);
            }
        }
        self.gate.total.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Messages per second per credential (the generic cell rate algorithm:
/// a sustained rate with a burst on top).
pub struct Rates {
    limiter: RateLimiter<String, HashMapStateStore<String>, DefaultClock>,
    clock: DefaultClock,
}

impl std::fmt::Debug for Rates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rates").finish_non_exhaustive()
    }
}

impl Rates {
    /// Rates for `limits`.
    pub fn new(limits: &Limits) -> Self {
        let per_second = NonZeroU32::new(limits.messages_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst.max(1)).unwrap_or(NonZeroU32::MIN);
        let clock = DefaultClock::default();
        Self {
            limiter: RateLimiter::new(
                Quota::per_second(per_second).allow_burst(burst),
                HashMapStateStore::default(),
                clock.clone(),
            ),
            clock,
        }
    }

    /// `Err(wait)` when `credential` is over its rate: how long until one
    /// more message is allowed.
    pub fn check(&self, credential: &str) -> Result<(), Duration> {
        // `check_key` takes the key by reference; the store clones it only
        // for a credential it has not seen.
        self.limiter
            .check_key(&credential.to_owned())
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Forgets credentials that are back at full burst, so the store holds
    /// only the active ones.
    pub fn shrink(&self) {
        self.limiter.retain_recent();
        self.limiter.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_counted_per_credential_and_freed_on_drop() {
        let gate = Gate::new(Limits {
            max_connections: 3,
            max_connections_per_credential: 2,
            ..Limits::default()
        });
        let a1 = gate.admit("a").unwrap();
        let _a2 = gate.admit("a").unwrap();
        assert!(matches!(gate.admit("a"), Err(Refused::PerCredential(..))));
        let _b = gate.admit("b").unwrap();
        assert!(matches!(gate.admit("c"), Err(Refused::Total(3))));
        drop(a1);
        assert_eq!(gate.held(), 2);
        assert!(gate.admit("a").is_ok());
    }

    #[test]
    fn a_credential_over_its_rate_is_told_how_long_to_wait() {
        let rates = Rates::new(&Limits {
            messages_per_second: 1,
            burst: 2,
            ..Limits::default()
        });
        assert!(rates.check("a").is_ok());
        assert!(rates.check("a").is_ok());
        let wait = rates.check("a").unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1), "{wait:?}");
        // Another credential has its own budget.
        assert!(rates.check("b").is_ok());
    }
}
