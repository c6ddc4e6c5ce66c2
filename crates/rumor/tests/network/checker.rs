//! The history checker: a pure function over what the clients saw (the
//! history) and what the bridge stored (the PostgreSQL rows), so that it can
//! be tested on hand-written bad histories without any process.
//!
//! What it checks, for the echo processor (the reply is the message's payload):
//! - every acknowledged message (a reply chunk with `last`) got exactly one
//!   complete reply: chunks numbered 0, 1, 2, ... with no gap, no repeat and
//!   nothing after the last one, no error line besides, and the chunks joined
//!   equal to the payload;
//! - no message is stored twice (one row per conversation, id and kind);
//! - no acknowledged message is missing from PostgreSQL: its inbound row and
//!   its reply row are there, the reply equal to what the client received;
//! - no row is stored that no client sent (a message sent over the client
//!   edge whose acceptance the client never saw is matched to its row by its
//!   payload first: [`resolve_unaccepted`]);
//! - per-conversation order: each conversation has one client that sends its
//!   next message only after the previous one ended, so the acknowledged
//!   messages of a conversation must be stored in the order they were sent,
//!   each one's reply before the next one's message.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// One thing a client saw, with the milliseconds since the load started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    /// A message was sent: its id chosen by the client (admin API), given by
    /// the gateway (the edge's `accepted`), or provisional ([`UNACCEPTED`]).
    Sent {
        id: String,
        conv: String,
        payload: String,
        at_ms: u64,
    },
    /// A reply chunk arrived; `last` marks the acknowledgement. Over the
    /// edge, chunks are numbered as they arrive and `done` is an empty last
    /// chunk.
    Chunk {
        id: String,
        seq: u64,
        data: String,
        worker: String,
        last: bool,
        at_ms: u64,
    },
    /// The reply ended with an explicit error line.
    Failed {
        id: String,
        code: u32,
        name: String,
        at_ms: u64,
    },
    /// No final line arrived: the connection broke or the client timed out.
    /// The message may or may not have been processed.
    Unknown { id: String, why: String, at_ms: u64 },
}

impl Event {
    fn id(&self) -> &str {
        match self {
            Event::Sent { id, .. } | Event::Chunk { id, .. } | Event::Failed { id, .. } | Event::Unknown { id, .. } => {
                id
            }
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Sent {
                conv, payload, at_ms, ..
            } => write!(f, "{at_ms:>7} ms sent {payload:?} on {conv}"),
            Event::Chunk {
                seq,
                data,
                worker,
                last,
                at_ms,
                ..
            } => write!(
                f,
                "{at_ms:>7} ms chunk {seq} {data:?} from {worker}{}",
                if *last { " (last)" } else { "" }
            ),
            Event::Failed { code, name, at_ms, .. } => write!(f, "{at_ms:>7} ms error {name} ({code})"),
            Event::Unknown { why, at_ms, .. } => write!(f, "{at_ms:>7} ms no final line: {why}"),
        }
    }
}

/// What the clients saw of message `id`, one event a line: the evidence
/// printed with a violation.
pub(crate) fn timeline(history: &[Event], id: &str) -> String {
    history
        .iter()
        .filter(|e| e.id() == id)
        .map(|e| format!("      {e}\n"))
        .collect()
}

impl Violation {
    /// The messages the violation is about: one, or both of an order
    /// violation (whose timelines show which worker answered each).
    pub(crate) fn ids(&self) -> Vec<&str> {
        match self {
            Violation::BadReply { id, .. }
            | Violation::StoredTwice { id, .. }
            | Violation::Missing { id, .. }
            | Violation::StoredReplyDiffers { id, .. }
            | Violation::NotInTopic { id, .. }
            | Violation::Phantom { id, .. } => vec![id],
            Violation::OutOfOrder { first, second, .. } => vec![first, second],
        }
    }
}

/// One row of the bridge's `messages` table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// The table's `seq`: the order rows were stored in.
    pub(crate) seq: i64,
    pub(crate) id: String,
    /// 1 inbound, 2 reply.
    pub(crate) kind: i32,
    pub(crate) conv: String,
    pub(crate) payload: String,
    pub(crate) error_code: Option<i32>,
}

pub(crate) const INBOUND: i32 = 1;
pub(crate) const REPLY: i32 = 2;

/// A broken guarantee, with the evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Violation {
    /// An acknowledged message whose reply is not exactly one complete echo.
    BadReply { id: String, why: String },
    /// A row stored more than once.
    StoredTwice { id: String, kind: i32, count: usize },
    /// An acknowledged message without its row.
    Missing { id: String, kind: i32 },
    /// The stored reply differs from what the client received, or carries an error.
    StoredReplyDiffers {
        id: String,
        stored: String,
        received: String,
    },
    /// A row for a message no client sent.
    Phantom { id: String, kind: i32 },
    /// An acknowledged message without its record in the Kafka topic.
    NotInTopic { id: String, kind: i32 },
    /// Two acknowledged messages of one conversation stored out of send order.
    OutOfOrder {
        conv: String,
        first: String,
        second: String,
        why: String,
    },
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::BadReply { id, why } => write!(f, "acknowledged message {id}: {why}"),
            Violation::StoredTwice { id, kind, count } => {
                write!(f, "message {id} kind {kind} stored {count} times")
            }
            Violation::Missing { id, kind } => {
                write!(f, "acknowledged message {id} has no row of kind {kind} in PostgreSQL")
            }
            Violation::StoredReplyDiffers { id, stored, received } => write!(
                f,
                "message {id}: stored reply {stored:?} differs from the reply received {received:?}"
            ),
            Violation::Phantom { id, kind } => write!(f, "row {id} kind {kind} was never sent by a client"),
            Violation::NotInTopic { id, kind } => {
                write!(
                    f,
                    "acknowledged message {id} has no record of kind {kind} in the Kafka topic"
                )
            }
            Violation::OutOfOrder {
                conv,
                first,
                second,
                why,
            } => write!(f, "conversation {conv}: {first} was sent before {second}, but {why}"),
        }
    }
}

/// What the history holds, for the report.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) sent: usize,
    pub(crate) acknowledged: usize,
    pub(crate) failed: usize,
    pub(crate) unknown: usize,
    /// Acknowledged messages per answering worker.
    pub(crate) by_worker: BTreeMap<String, usize>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sent, {} acknowledged, {} explicit errors, {} without a final line; by worker {:?}",
            self.sent, self.acknowledged, self.failed, self.unknown, self.by_worker
        )
    }
}

/// One record of the messages topic, as read back from Kafka.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TopicRecord {
    pub(crate) id: String,
    /// 1 inbound, 2 reply.
    pub(crate) kind: i32,
    /// The worker that published it.
    pub(crate) worker: String,
}

/// A message's record that is in the topic more than once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Twice {
    pub(crate) id: String,
    pub(crate) kind: i32,
    /// The workers that published the copies, one per copy.
    pub(crate) workers: Vec<String>,
}

impl fmt::Display for Twice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.kind == INBOUND { "inbound" } else { "reply" };
        write!(f, "{} {kind} by {}", self.id, self.workers.join(" and "))
    }
}

/// Checks `history` against the messages topic: every acknowledged message
/// has its inbound and reply records there (while the log is healthy, a
/// worker sends the last chunk only once the log has them; a scenario that
/// takes the log away must not use this check). Returns the records that
/// are there more than once, with who wrote each copy, and the violations.
pub(crate) fn check_topic(history: &[Event], records: &[TopicRecord]) -> (Vec<Twice>, Vec<Violation>) {
    let mut copies: BTreeMap<(&str, i32), Vec<&str>> = BTreeMap::new();
    for r in records {
        copies.entry((&r.id, r.kind)).or_default().push(&r.worker);
    }
    let acknowledged: BTreeSet<&str> = history
        .iter()
        .filter_map(|e| match e {
            Event::Chunk { id, last: true, .. } => Some(id.as_str()),
            _ => None,
        })
        .collect();
    let violations = acknowledged
        .iter()
        .flat_map(|id| [INBOUND, REPLY].map(|kind| (*id, kind)))
        .filter(|key| !copies.contains_key(key))
        .map(|(id, kind)| Violation::NotInTopic {
            id: id.to_owned(),
            kind,
        })
        .collect();
    let twice = copies
        .into_iter()
        .filter(|(_, workers)| workers.len() > 1)
        .map(|((id, kind), workers)| Twice {
            id: id.to_owned(),
            kind,
            workers: workers.into_iter().map(str::to_owned).collect(),
        })
        .collect();
    (twice, violations)
}

/// The id prefix of a message sent through the client edge that the gateway
/// never accepted: such a message has no mesh id in the history.
pub(crate) const UNACCEPTED: &str = "unaccepted:";

/// Gives back their mesh ids to messages sent through the client edge whose
/// acceptance the client never saw (the connection broke, or the time ran
/// out first). They are in the history under a provisional id starting with
/// [`UNACCEPTED`]; an inbound row carrying such a message's payload
/// (payloads are unique within a load) shows an owner took it after all,
/// and its events are renamed to the row's id. The others stay as they are:
/// never stored, as a message never taken must be.
pub(crate) fn resolve_unaccepted(history: &mut [Event], rows: &[Row]) {
    let by_payload: BTreeMap<&str, &str> = rows
        .iter()
        .filter(|r| r.kind == INBOUND)
        .map(|r| (r.payload.as_str(), r.id.as_str()))
        .collect();
    let mut renamed: BTreeMap<String, String> = BTreeMap::new();
    for e in history.iter() {
        if let Event::Sent { id, payload, .. } = e
            && id.starts_with(UNACCEPTED)
            && let Some(row_id) = by_payload.get(payload.as_str())
        {
            renamed.insert(id.clone(), (*row_id).to_owned());
        }
    }
    for e in history.iter_mut() {
        let (Event::Sent { id, .. } | Event::Chunk { id, .. } | Event::Failed { id, .. } | Event::Unknown { id, .. }) =
            e;
        if let Some(new) = renamed.get(id.as_str()) {
            *id = new.clone();
        }
    }
}

/// Checks `history` against `rows`; returns the summary and every violation found.
pub(crate) fn check(history: &[Event], rows: &[Row]) -> (Summary, Vec<Violation>) {
    let mut summary = Summary::default();
    let mut violations = Vec::new();

    // Each message's fate, and each conversation's messages in send order.
    struct Msg<'a> {
        conv: &'a str,
        payload: &'a str,
        chunks: Vec<(u64, &'a str, bool)>,
        failed: usize,
    }
    let mut msgs: BTreeMap<&str, Msg> = BTreeMap::new();
    let mut sent_order: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for e in history {
        match e {
            Event::Sent { id, conv, payload, .. } => {
                summary.sent += 1;
                msgs.insert(
                    id,
                    Msg {
                        conv,
                        payload,
                        chunks: Vec::new(),
                        failed: 0,
                    },
                );
                sent_order.entry(conv).or_default().push(id);
            }
            Event::Chunk {
                id,
                seq,
                data,
                worker,
                last,
                ..
            } => {
                if let Some(m) = msgs.get_mut(id.as_str()) {
                    m.chunks.push((*seq, data, *last));
                }
                if *last {
                    *summary.by_worker.entry(worker.clone()).or_default() += 1;
                }
            }
            Event::Failed { id, .. } => {
                summary.failed += 1;
                if let Some(m) = msgs.get_mut(id.as_str()) {
                    m.failed += 1;
                }
            }
            Event::Unknown { .. } => summary.unknown += 1,
        }
    }

    // Exactly one complete reply per acknowledged message; the reply received.
    // The reply received, for each acknowledged message (None: malformed).
    let mut acked: BTreeMap<&str, Option<String>> = BTreeMap::new();
    for (id, m) in &msgs {
        let lasts = m.chunks.iter().filter(|c| c.2).count();
        if lasts == 0 {
            continue;
        }
        summary.acknowledged += 1;
        let bad = |why: String| Violation::BadReply {
            id: (*id).to_owned(),
            why,
        };
        let seqs: Vec<u64> = m.chunks.iter().map(|c| c.0).collect();
        let data: String = m.chunks.iter().map(|c| c.1).collect();
        let before = violations.len();
        if lasts > 1 {
            violations.push(bad(format!("{lasts} final chunks")));
        } else if m.failed > 0 {
            violations.push(bad("an error line as well as a final chunk".into()));
        } else if seqs != (0..seqs.len() as u64).collect::<Vec<_>>() {
            violations.push(bad(format!("chunks numbered {seqs:?}")));
        } else if !m.chunks.last().is_some_and(|c| c.2) {
            violations.push(bad("chunks after the final one".into()));
        } else if data != m.payload {
            violations.push(bad(format!("reply {data:?} is not the echo of {:?}", m.payload)));
        }
        acked.insert(id, (violations.len() == before).then_some(data));
    }

    // The rows: each once, every acknowledged one there, none unsent.
    let mut stored: BTreeMap<(&str, &str, i32), Vec<&Row>> = BTreeMap::new();
    for r in rows {
        stored.entry((&r.conv, &r.id, r.kind)).or_default().push(r);
    }
    for ((_, id, kind), rs) in &stored {
        if rs.len() > 1 {
            violations.push(Violation::StoredTwice {
                id: (*id).to_owned(),
                kind: *kind,
                count: rs.len(),
            });
        }
        if !msgs.contains_key(id) {
            violations.push(Violation::Phantom {
                id: (*id).to_owned(),
                kind: *kind,
            });
        }
    }
    let row = |conv: &str, id: &str, kind: i32| stored.get(&(conv, id, kind)).and_then(|rs| rs.first().copied());
    for (id, received) in &acked {
        let conv = msgs[id].conv;
        if row(conv, id, INBOUND).is_none() {
            violations.push(Violation::Missing {
                id: (*id).to_owned(),
                kind: INBOUND,
            });
        }
        match row(conv, id, REPLY) {
            None => violations.push(Violation::Missing {
                id: (*id).to_owned(),
                kind: REPLY,
            }),
            // A malformed reply was reported above; a well-formed one must
            // be what was stored.
            Some(r) if received.as_ref().is_some_and(|d| &r.payload != d) || r.error_code.is_some() => {
                violations.push(Violation::StoredReplyDiffers {
                    id: (*id).to_owned(),
                    stored: format!("{:?} (error {:?})", r.payload, r.error_code),
                    received: received.clone().unwrap_or_default(),
                })
            }
            Some(_) => {}
        }
    }

    // Per-conversation order of the acknowledged messages: message i's reply
    // is stored before message i+1's inbound row.
    for (conv, ids) in &sent_order {
        let done: Vec<&str> = ids.iter().copied().filter(|id| acked.contains_key(id)).collect();
        for pair in done.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            let (Some(a_in), Some(a_reply), Some(b_in)) =
                (row(conv, a, INBOUND), row(conv, a, REPLY), row(conv, b, INBOUND))
            else {
                continue; // reported as missing above
            };
            let why = if a_in.seq > b_in.seq {
                Some(format!("its message is stored after ({} > {})", a_in.seq, b_in.seq))
            } else if a_reply.seq > b_in.seq {
                Some(format!(
                    "its reply is stored after the next message ({} > {})",
                    a_reply.seq, b_in.seq
                ))
            } else {
                None
            };
            if let Some(why) = why {
                violations.push(Violation::OutOfOrder {
                    conv: (*conv).to_owned(),
                    first: a.to_owned(),
                    second: b.to_owned(),
                    why,
                });
            }
        }
    }
    (summary, violations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unaccepted_message_that_was_stored_gets_its_mesh_id_and_one_never_stored_keeps_its_own() {
        let mut history = vec![
            Event::Sent {
                id: format!("{UNACCEPTED}s0-m0"),
                conv: "c".into(),
                payload: "s0-m0".into(),
                at_ms: 0,
            },
            Event::Unknown {
                id: format!("{UNACCEPTED}s0-m0"),
                why: "connection closed".into(),
                at_ms: 5,
            },
            Event::Sent {
                id: format!("{UNACCEPTED}s0-m1"),
                conv: "c".into(),
                payload: "s0-m1".into(),
                at_ms: 6,
            },
        ];
        let rows = vec![Row {
            seq: 1,
            id: "M0".into(),
            kind: INBOUND,
            conv: "c".into(),
            payload: "s0-m0".into(),
            error_code: None,
        }];
        // Before: the row is a phantom.
        let (_, v) = check(&history, &rows);
        assert!(matches!(v.as_slice(), [Violation::Phantom { .. }]), "{v:?}");
        resolve_unaccepted(&mut history, &rows);
        assert_eq!(history[0].id(), "M0");
        assert_eq!(history[1].id(), "M0");
        assert_eq!(history[2].id(), format!("{UNACCEPTED}s0-m1"));
        let (summary, v) = check(&history, &rows);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!((summary.sent, summary.unknown), (2, 1));
    }

    fn sent(id: &str, conv: &str, payload: &str) -> Event {
        Event::Sent {
            id: id.into(),
            conv: conv.into(),
            payload: payload.into(),
            at_ms: 0,
        }
    }

    fn chunk(id: &str, seq: u64, data: &str, last: bool) -> Event {
        Event::Chunk {
            id: id.into(),
            seq,
            data: data.into(),
            worker: "w1".into(),
            last,
            at_ms: 0,
        }
    }

    fn row(seq: i64, id: &str, kind: i32, conv: &str, payload: &str) -> Row {
        Row {
            seq,
            id: id.into(),
            kind,
            conv: conv.into(),
            payload: payload.into(),
            error_code: None,
        }
    }

    /// Two messages of one conversation, answered in two chunks each, stored in order.
    fn good() -> (Vec<Event>, Vec<Row>) {
        let history = vec![
            sent("a", "c", "hello"),
            chunk("a", 0, "hel", false),
            chunk("a", 1, "lo", true),
            sent("b", "c", "world"),
            chunk("b", 0, "wor", false),
            chunk("b", 1, "ld", true),
        ];
        let rows = vec![
            row(1, "a", INBOUND, "c", "hello"),
            row(2, "a", REPLY, "c", "hello"),
            row(3, "b", INBOUND, "c", "world"),
            row(4, "b", REPLY, "c", "world"),
        ];
        (history, rows)
    }

    #[test]
    fn a_clean_history_passes() {
        let (history, rows) = good();
        let (summary, violations) = check(&history, &rows);
        assert_eq!(violations, vec![]);
        assert_eq!((summary.sent, summary.acknowledged), (2, 2));
    }

    #[test]
    fn a_duplicated_or_incomplete_reply_is_reported() {
        let (mut history, rows) = good();
        // The first chunk of `a` delivered twice.
        history.insert(2, chunk("a", 0, "hel", false));
        let (_, v) = check(&history, &rows);
        assert!(matches!(&v[..], [Violation::BadReply { id, .. }] if id == "a"), "{v:?}");

        // `b` acknowledged with a hole in its chunks.
        let (mut history, rows) = good();
        history.remove(4);
        let (_, v) = check(&history, &rows);
        assert!(
            matches!(&v[..], [Violation::BadReply { id, why }] if id == "b" && why.contains("[1]")),
            "{v:?}"
        );
    }

    #[test]
    fn missing_twice_stored_phantom_and_reordered_rows_are_reported() {
        let (history, mut rows) = good();
        rows.remove(3); // b's reply lost
        rows.push(row(5, "a", REPLY, "c", "hello")); // a's reply stored twice
        rows.push(row(6, "z", INBOUND, "c", "?")); // nobody sent z
        let (_, v) = check(&history, &rows);
        assert!(v.contains(&Violation::Missing {
            id: "b".into(),
            kind: REPLY
        }));
        assert!(v.contains(&Violation::StoredTwice {
            id: "a".into(),
            kind: REPLY,
            count: 2
        }));
        assert!(v.contains(&Violation::Phantom {
            id: "z".into(),
            kind: INBOUND
        }));

        // b's message stored before a's reply: the order of the conversation broke.
        let (history, mut rows) = good();
        rows[1].seq = 10;
        let (_, v) = check(&history, &rows);
        assert!(
            matches!(&v[..], [Violation::OutOfOrder { first, second, .. }] if first == "a" && second == "b"),
            "{v:?}"
        );
        // A stored reply that differs from what the client received.
        let (history, mut rows) = good();
        rows[3].payload = "wrong".into();
        let (_, v) = check(&history, &rows);
        assert!(
            matches!(&v[..], [Violation::StoredReplyDiffers { id, .. }] if id == "b"),
            "{v:?}"
        );
    }

    fn record(id: &str, kind: i32, worker: &str) -> TopicRecord {
        TopicRecord {
            id: id.into(),
            kind,
            worker: worker.into(),
        }
    }

    #[test]
    fn the_topic_must_hold_every_acknowledged_message_and_its_copies_are_listed() {
        let (history, _) = good();
        let all: Vec<TopicRecord> = ["a", "b"]
            .iter()
            .flat_map(|id| [record(id, INBOUND, "w1"), record(id, REPLY, "w1")])
            .collect();
        assert_eq!(check_topic(&history, &all), (vec![], vec![]));

        let mut records = all.clone();
        records.retain(|r| !(r.id == "b" && r.kind == REPLY));
        records.push(record("a", REPLY, "w2"));
        let (twice, violations) = check_topic(&history, &records);
        assert_eq!(
            violations,
            vec![Violation::NotInTopic {
                id: "b".into(),
                kind: REPLY
            }]
        );
        assert_eq!(twice.len(), 1);
        assert_eq!(twice[0].to_string(), "a reply by w1 and w2");
    }

    #[test]
    fn unacknowledged_messages_may_be_missing_or_stored() {
        // `b` timed out at the client: whether it is stored is not checked,
        // and it does not take part in the order.
        let (mut history, mut rows) = good();
        history.truncate(4);
        history.push(Event::Unknown {
            id: "b".into(),
            why: "timeout".into(),
            at_ms: 0,
        });
        rows.truncate(2);
        let (summary, v) = check(&history, &rows);
        assert_eq!(v, vec![]);
        assert_eq!((summary.acknowledged, summary.unknown), (1, 1));
    }
}
