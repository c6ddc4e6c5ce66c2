//! What rumor's workers call for each message: implementations of
//! [`node::Processor`]. A node's config chooses one by name (see [`NAMES`]);
//! the binary builds it and hands it to the node as a value.
//!
//! - [`Echo`]: the built-in processor, which echoes the message back in
//!   chunks, optionally paced like a streaming backend.
//!
//! Every processor honours the cancellation contract of [`node::processor`]:
//! its future may be dropped at any await point when the caller goes away.

mod echo;

pub use echo::Echo;

/// The names a node's config may choose from (`worker.processor`).
pub const NAMES: [&str; 1] = ["echo"];
