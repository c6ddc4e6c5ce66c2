//! SWIM with Lifeguard, as a pure state machine.
//!
//! This crate decides who is in the cluster; it never touches a socket, a
//! clock or a global random source. The caller feeds it packets and the current
//! time, drains the packets, events and next deadline it produces, and so the
//! same code runs in the `node` crate over UDP and TCP and in the `sim` crate's
//! deterministic simulator.
//!
//! What it implements (see `docs/membership.md` for the algorithm in prose):
//! - join through seeds (push-pull with each, retried with backoff), graceful
//!   leave, and rejoin under the same name after a restart (the restarted node
//!   outbids its old record by refuting it);
//! - SWIM failure detection: shuffled round-robin probing, ack timeout, indirect
//!   probes through `k` members, suspicion, incarnations and refutation;
//! - Lifeguard: local health multiplier, dynamic suspicion timeout with
//!   independent confirmations, nacks, and the buddy rule;
//! - dissemination piggybacked on every packet, `lambda * log10(N + 1)`
//!   retransmissions, fewest-sent first, packed into datagrams of at most
//!   `max_packet_size` bytes, plus an optional gossip fan-out;
//! - push-pull anti-entropy with interval scaled by cluster size, an early
//!   push-pull when a view digest carried on pings and acks shows this node's
//!   view has drifted, and reconnection attempts to failed members so that
//!   partitions heal;
//! - versioned node metadata with a size limit, user gossip messages
//!   de-duplicated by id, bounded retention of dead members.
//!
//! ```
//! use std::time::Duration;
//! use membership::{Config, Membership, Meta};
//!
//! let now = Duration::ZERO;
//! let mut node = Membership::new(Config::for_tests(), "a", "127.0.0.1:7946".parse().unwrap(),
//!     Meta::default(), 42, now).unwrap();
//! node.join(now, &[]);
//! assert_eq!(node.poll_event(), Some(membership::Event::Joined));
//! assert!(node.poll_timeout().is_some());
//! ```

mod broadcast;
mod codec;
mod config;
mod member;
mod swim;
mod table;

pub use codec::{DecodeError, PROTOCOL_VERSION, decode_packet};
pub use config::{Config, ConfigError};
pub use member::{Member, Meta, Status};
pub use proto::bytes::Bytes;
pub use swim::{BroadcastError, Event, MAX_STREAM_MESSAGE, Membership, MetaTooLarge, NewError, Stats, Transmit};
