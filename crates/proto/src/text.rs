//! Reply data as text. A reply streams as byte chunks, and a processor may
//! cut a chunk in the middle of a UTF-8 character (the echo processor splits
//! by bytes; a model streams tokens); an API that sends text per chunk must
//! not turn those halves into replacement characters.

/// Turns a stream of byte chunks into text without breaking the characters
/// that are split across chunks: the bytes of an unfinished character are
/// held back until the next chunk. Bytes that are not UTF-8 at all become
/// U+FFFD, as `String::from_utf8_lossy` makes them.
#[derive(Debug, Default, Clone)]
pub struct Utf8Chunks {
    pending: Vec<u8>,
}

impl Utf8Chunks {
    /// The text of `chunk` that is complete so far.
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.pending.extend_from_slice(chunk);
        let mut out = String::new();
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (valid, after) = rest.split_at(e.valid_up_to());
                    // Valid by construction.
                    out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                    match e.error_len() {
                        // An unfinished character at the end: keep it for later.
                        None => {
                            rest = after;
                            break;
                        }
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            rest = &after[bad..];
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// Whatever is held back at the end of the stream (an unfinished
    /// character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_across_chunks_come_out_whole() {
        let text = "héllo 🕴 wörld 𡋒";
        let bytes = text.as_bytes();
        for size in 1..=bytes.len() {
            let mut t = Utf8Chunks::default();
            let mut out = String::new();
            for chunk in bytes.chunks(size) {
                let part = t.push(chunk);
                assert!(!part.contains('\u{fffd}'), "size {size}: {part:?}");
                out.push_str(&part);
            }
            out.push_str(&t.finish());
            assert_eq!(out, text, "size {size}");
        }
    }

    #[test]
    fn bytes_that_are_not_utf8_become_replacement_characters() {
        let mut t = Utf8Chunks::default();
        assert_eq!(t.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(t.push(b"\xf0\x9f"), "");
        assert_eq!(t.finish(), "\u{fffd}");
    }
}
