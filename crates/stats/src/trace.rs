//! W3C trace context across processes: the `traceparent` text that the
//! mesh envelope, the event-log records and HTTP headers carry, so that one
//! message's spans (edge, routing at each node, the worker, the backend
//! call, the bridge's database write) form one trace.
//!
//! [`TraceParent`] parses and writes the text (version `00`; a later version
//! is read as the spec says, by its first four fields). With the `otel`
//! feature, [`traceparent`] reads it off a `tracing` span and [`follow`]
//! makes a span the child of one received; both do nothing when no
//! OpenTelemetry layer is installed. [`pass_on`] is what to send on: the
//! span's own context, or, in a process that does not trace, the one it
//! received, so that one untraced hop does not break a trace. [`EndAtDrop`]
//! gives a span that outlives its last poll its true end time.
//!
//! ```
//! use stats::trace::TraceParent;
//!
//! let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
//! let tp: TraceParent = text.parse().unwrap();
//! assert!(tp.sampled());
//! assert_eq!(tp.to_string(), text);
//! assert!("00-00000000000000000000000000000000-00f067aa0ba902b7-01".parse::<TraceParent>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

/// The fields of a `traceparent`: `00-{trace id}-{parent id}-{flags}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// 16 bytes, not all zero.
    pub trace_id: [u8; 16],
    /// The id of the span the receiver's span is a child of; 8 bytes, not all zero.
    pub parent_id: [u8; 8],
    /// Trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sender recorded its span (the "sampled" flag).
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// Why a `traceparent` was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadTraceParent(&'static str);

impl fmt::Display for BadTraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a W3C traceparent: {}", self.0)
    }
}

impl std::error::Error for BadTraceParent {}

/// The length of a version-00 `traceparent`.
const LEN: usize = 55;

impl FromStr for TraceParent {
    type Err = BadTraceParent;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() < LEN {
            return Err(BadTraceParent("shorter than 55 characters"));
        }
        let version = hex::<1>(&b[0..2]).ok_or(BadTraceParent("the version is not two lowercase hex digits"))?[0];
        if version == 0xff {
            return Err(BadTraceParent("version ff is invalid"));
        }
        // Version 00 is exactly 55 characters; a later one may append
        // fields after another dash, which a version-00 reader skips.
        if (version == 0 && b.len() != LEN) || (b.len() > LEN && b[LEN] != b'-') {
            return Err(BadTraceParent("characters after the flags"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(BadTraceParent("the fields are not separated by dashes"));
        }
        let trace_id = hex::<16>(&b[3..35]).ok_or(BadTraceParent("the trace id is not 32 lowercase hex digits"))?;
        let parent_id = hex::<8>(&b[36..52]).ok_or(BadTraceParent("the parent id is not 16 lowercase hex digits"))?;
        let flags = hex::<1>(&b[53..55]).ok_or(BadTraceParent("the flags are not two lowercase hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(BadTraceParent("the trace id is all zeros"));
        }
        if parent_id == [0; 8] {
            return Err(BadTraceParent("the parent id is all zeros"));
        }
        Ok(TraceParent {
            trace_id,
            parent_id,
            // A version-00 reader keeps only the flags it knows.
            flags: if version == 0 { flags } else { flags & 1 },
        })
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

/// `2 * N` lowercase hex digits as `N` bytes.
fn hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    if digits.len() != 2 * N {
        return None;
    }
    let mut out = [0; N];
    for (o, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(feature = "otel")]
mod otel {
    use super::TraceParent;
    use opentelemetry::Context;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The `traceparent` naming `span` as the parent, or empty when `span`
    /// is not traced (no OpenTelemetry layer, or the span is disabled).
    pub fn traceparent(span: &tracing::Span) -> String {
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return String::new();
        }
        TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
        .to_string()
    }

    /// Makes `span` (just created, not yet entered) the child of the span
    /// `traceparent` names, in another process. Returns whether it did: not
    /// when `traceparent` is empty or not understood (a trace context that
    /// is not understood is ignored, as the W3C spec asks, and the span
    /// keeps its local parent), nor when `span` is not traced.
    pub fn follow(span: &tracing::Span, traceparent: &str) -> bool {
        if traceparent.is_empty() {
            return false;
        }
        let Ok(tp) = traceparent.parse::<TraceParent>() else {
            tracing::debug!(traceparent, "ignoring a trace context that is not understood");
            return false;
        };
        let remote = SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.parent_id),
            TraceFlags::new(tp.flags),
            true,
            TraceState::default(),
        );
        span.set_parent(Context::new().with_remote_span_context(remote)).is_ok()
    }

    /// The trace context to send on for work done under `span`: `span`'s
    /// own when it is traced; otherwise the one `received`, when it is
    /// understood, so that a process that does not trace passes a trace
    /// through instead of breaking it.
    /// What is passed on is always the plain version-00 text, however long
    /// the received one was.
    pub fn pass_on(span: &tracing::Span, received: &str) -> String {
        let mine = traceparent(span);
        if !mine.is_empty() {
            return mine;
        }
        received
            .parse::<TraceParent>()
            .map(|tp| tp.to_string())
            .unwrap_or_default()
    }

    /// Makes `span` (just created) the child of `received`, as [`follow`],
    /// and returns what to pass on for work done under it, as [`pass_on`]:
    /// the two in the order they need, since reading a span's context
    /// starts it, after which its parent cannot change.
    pub fn adopt(span: &tracing::Span, received: &str) -> String {
        follow(span, received);
        pass_on(span, received)
    }

    /// Marks `span` failed: why in its `error` field (which it must declare,
    /// as `error = tracing::field::Empty`), and the OpenTelemetry status.
    pub fn failed(span: &tracing::Span, why: &str) {
        span.record("error", why);
        span.record("otel.status_code", "error");
    }

    /// Ends span `.0` when dropped. An exported span ends when it was last
    /// exited (left after a poll), so a span that goes on after its last
    /// poll (waiting for a reply to be read, or for records to be
    /// acknowledged) is entered and left once more when it is done.
    #[derive(Debug)]
    pub struct EndAtDrop(pub tracing::Span);

    impl Drop for EndAtDrop {
        fn drop(&mut self) {
            let _entered = self.0.enter();
        }
    }
}

#[cfg(feature = "otel")]
pub use otel::{EndAtDrop, adopt, failed, follow, pass_on, traceparent};

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specs_example_reads_and_writes_back_the_same() {
        let tp: TraceParent = EXAMPLE.parse().unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn what_the_spec_calls_invalid_is_refused_with_a_reason() {
        let bad = [
            ("", "shorter"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", "shorter"),
            ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version ff"),
            ("0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "version"),
            ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", "trace id"),
            ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "all zeros"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", "all zeros"),
            ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x", "flags"),
            ("00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "dashes"),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                "after the flags",
            ),
            (
                "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                "after the flags",
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01é",
                "after the flags",
            ),
        ];
        for (text, why) in bad {
            let e = text.parse::<TraceParent>().unwrap_err().to_string();
            assert!(e.contains(why), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let tp: TraceParent = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-what-comes-next"
            .parse()
            .unwrap();
        assert_eq!(tp.flags, 1, "only the flags version 00 knows");
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn any_text_either_parses_to_what_it_writes_back_or_is_refused() {
        // A cheap sweep over every one-character change of the example; the
        // fuzz target covers arbitrary input.
        let alphabet = b"0af-g F\xc3";
        for i in 0..EXAMPLE.len() {
            for &c in alphabet {
                let mut b = EXAMPLE.as_bytes().to_vec();
                b[i] = c;
                let Ok(text) = String::from_utf8(b) else { continue };
                if let Ok(tp) = text.parse::<TraceParent>() {
                    assert_eq!(tp.to_string().parse::<TraceParent>(), Ok(tp), "{text:?}");
                    if text.starts_with("00-") {
                        assert_eq!(tp.to_string(), text, "a valid version-00 text writes back as read");
                    }
                }
            }
        }
    }
}
