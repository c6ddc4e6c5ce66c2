//! The built-in processor.

use std::time::Duration;

use node::{ProcessFuture, Processor, Replies};
use proto::Message as _;
use proto::bytes::Bytes;
use proto::mesh::{ChatRequest, Envelope};

/// Echoes the payload back in up to `chunks` pieces, optionally pausing
/// before each one to imitate a streaming backend.
#[derive(Debug, Clone)]
pub struct Echo {
    /// Pieces to split the payload into (at least 1; fewer if it is shorter).
    pub chunks: usize,
    /// Pause before each piece.
    pub delay: Duration,
}

impl Default for Echo {
    fn default() -> Self {
        Self {
            chunks: 3,
            delay: Duration::ZERO,
        }
    }
}

/// What echo answers: the text of a text message, or the last user message
/// of a chat.
fn echoed(msg: &Envelope) -> Bytes {
    if msg.format == "chat"
        && let Ok(chat) = ChatRequest::decode(msg.payload.clone())
    {
        let last = chat.messages.into_iter().rev().find(|m| m.role == "user");
        return Bytes::from(last.map(|m| m.content).unwrap_or_default());
    }
    msg.payload.clone()
}

impl Processor for Echo {
    fn models(&self) -> Vec<String> {
        vec!["echo".into()]
    }

    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            let payload = &echoed(msg);
            let size = payload.len().div_ceil(self.chunks.max(1)).max(1);
            let mut start = 0;
            while start < payload.len() {
                if !self.delay.is_zero() {
                    tokio::time::sleep(self.delay).await;
                }
                let end = (start + size).min(payload.len());
                out.send(payload.slice(start..end)).await?;
                start = end;
            }
            Ok(())
        })
    }
}
