//! What rumor's workers call for each message: implementations of
//! [`node::Processor`]. A node's config chooses one by name (see [`NAMES`]);
//! the binary builds it and hands it to the node as a value.
//!
//! - [`Echo`]: the built-in processor, which echoes the message back in
//!   chunks, optionally paced like a streaming backend.
//! - [`OpenAi`]: an OpenAI-compatible chat completions backend (vLLM,
//!   llama.cpp's server, SGLang, TGI, Ollama), streamed, with retries,
//!   timeouts and each conversation's history.
//! - [`Webhook`]: POSTs each message as JSON to a URL and streams back its
//!   answer, under the same timeout, retry and error rules.
//!
//! Every processor honours the cancellation contract of [`node::processor`]:
//! its future may be dropped at any await point when the caller goes away.

mod backend;
mod echo;
mod openai;
pub mod sse;
mod webhook;

pub use backend::BadUrl;
pub use echo::Echo;
pub use openai::{OpenAi, OpenAiConfig};
pub use webhook::{Webhook, WebhookConfig};

/// The names a node's config may choose from (`worker.processor`).
pub const NAMES: [&str; 3] = ["echo", "openai", "webhook"];

/// Marks a backend call's span as failed, with why (a cancel is not a failure).
fn failed(span: &tracing::Span, e: &node::ProcessError) {
    if e.code == tonic::Code::Cancelled {
        span.record("error", e.message.as_str());
    } else {
        stats::trace::failed(span, &e.message);
    }
}
