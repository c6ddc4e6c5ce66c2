//! Server-sent events (the `text/event-stream` format) split out of a byte
//! stream that arrives in pieces of any size: what the OpenAI-compatible and
//! webhook processors read from their backends.

/// One server-sent event: its type (`message` when unnamed) and its data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    pub data: String,
}

/// Server-sent events split out of a byte stream.
#[derive(Debug, Default)]
pub struct SseBuffer {
    buf: Vec<u8>,
}

impl SseBuffer {
    pub fn push(&mut self, b: &[u8]) {
        self.buf.extend_from_slice(b);
    }

    /// The next complete event with data, if any.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            let end = find_blank_line(&self.buf)?;
            let raw: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]);
            let mut kind = "message";
            let mut data: Vec<&str> = Vec::new();
            for line in text.lines().map(|l| l.trim_end_matches('\r')) {
                if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                } else if let Some(k) = line.strip_prefix("event:") {
                    kind = k.trim();
                }
            }
            if !data.is_empty() {
                return Some(Event {
                    kind: kind.to_owned(),
                    data: data.join("\n"),
                });
            }
            // A comment or an event without data: skip it.
        }
    }
}

/// The end of the first event: (where its text ends, where the next begins).
fn find_blank_line(b: &[u8]) -> Option<(usize, usize)> {
    let mut i = 0;
    while i + 1 < b.len() {
        if b[i] == b'\n' && b[i + 1] == b'\n' {
            return Some((i, i + 2));
        }
        if b[i] == b'\n' && b[i + 1] == b'\r' && b.get(i + 2) == Some(&b'\n') {
            return Some((i, i + 3));
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_across_reads_and_comments_skipped() {
        let mut b = SseBuffer::default();
        b.push(b": keep-alive\n\ndata: {\"a\":");
        assert_eq!(b.next_event(), None);
        b.push(b"1}\n\nevent: error\r\ndata: x\r\ndata: y\r\n\r\n");
        let e = b.next_event().unwrap();
        assert_eq!((e.kind.as_str(), e.data.as_str()), ("message", "{\"a\":1}"));
        let e = b.next_event().unwrap();
        assert_eq!((e.kind.as_str(), e.data.as_str()), ("error", "x\ny"));
        assert_eq!(b.next_event(), None);
    }

    fn events(pieces: &[&[u8]]) -> Vec<Event> {
        let mut b = SseBuffer::default();
        let mut out = Vec::new();
        for p in pieces {
            b.push(p);
            while let Some(e) = b.next_event() {
                out.push(e);
            }
        }
        out
    }

    proptest::proptest! {
        /// However the stream is cut, the events are the same (the fuzz
        /// target `backend_events` says the same of any bytes).
        #[test]
        fn events_do_not_depend_on_where_the_stream_is_cut(
            lines in proptest::collection::vec(
                proptest::prop_oneof![
                    "data: [a-z{}\\[\\]\"é]{0,12}",
                    "event: [a-z]{1,6}",
                    ": comment",
                    "",
                    "\\PC{0,10}",
                ],
                0..24,
            ),
            crlf in proptest::bool::ANY,
            cut in 0usize..400,
        ) {
            let nl = if crlf { "\r\n" } else { "\n" };
            let text: String = lines.iter().map(|l| format!("{l}{nl}")).collect();
            let bytes = text.as_bytes();
            let whole = events(&[bytes]);
            let (a, b) = bytes.split_at(cut.min(bytes.len()));
            proptest::prop_assert_eq!(&events(&[a, b]), &whole);
            let ones: Vec<&[u8]> = bytes.chunks(1).collect();
            proptest::prop_assert_eq!(&events(&ones), &whole);
        }
    }
}
