//! The built-in processor.

use std::time::Duration;

use node::{ProcessFuture, Processor, Replies};
use proto::mesh::Envelope;

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

impl Processor for Echo {
    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            let payload = &msg.payload;
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
