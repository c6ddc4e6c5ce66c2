//! How rumor counts: one place for the counters of every crate and for
//! their Prometheus exposition.
//!
//! - [`snapshot!`] declares a struct of `u64` counters whose doc comments
//!   are their metric descriptions, listed by `fields()`; the pure
//!   `membership` crate uses it for its `Stats`.
//! - [`counters!`] adds relaxed atomics that `read()` into such a struct;
//!   the node, the event log and the bridge count with it.
//! - With the `prometheus` feature, [`prom::Exposition`] writes any of
//!   them, gauges and histograms in the Prometheus text format through
//!   `prometheus-client`.
//! - [`trace`] reads and writes W3C `traceparent` texts; with the `otel`
//!   feature it links `tracing` spans across processes through them.
//!
//! ```
//! stats::counters! {
//!     /// What the example did.
//!     ExampleStats;
//!     /// Things done.
//!     done,
//! }
//!
//! let c = Counters::default();
//! c.done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//! assert_eq!(c.read().done, 1);
//! assert_eq!(c.read().fields(), vec![("done", "Things done.", 1)]);
//! ```

#[cfg(feature = "prometheus")]
pub mod prom;
pub mod trace;

/// Declares a `pub` struct of `u64` counters with a `fields()` listing
/// (name, description from the doc comment, value) for metrics exporters.
#[macro_export]
macro_rules! snapshot {
    ($(#[doc = $sdoc:literal])* $stats:ident; $($(#[doc = $doc:literal])* $name:ident,)*) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl $stats {
            /// Every counter as `(name, description, value)`, for metrics
            /// exporters; the description is the field's doc comment.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), $crate::__doc_text!($($doc),*), self.$name),)*]
            }
        }
    };
}

/// The text of doc comment lines: each starts with the space after `///`.
#[doc(hidden)]
#[macro_export]
macro_rules! __doc_text {
    ($first:literal $(, $rest:literal)*) => {
        $crate::__trim_start(concat!($first $(, $rest)*))
    };
    () => {
        ""
    };
}

#[doc(hidden)]
pub const fn __trim_start(s: &'static str) -> &'static str {
    let mut bytes = s.as_bytes();
    while let [b' ', rest @ ..] = bytes {
        bytes = rest;
    }
    // Only leading ASCII spaces were removed, so `bytes` is still UTF-8.
    match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(_) => s,
    }
}

/// Declares a [`snapshot!`] struct and a crate-private `Counters` of relaxed
/// atomics that `read()`s into it. Each counter stands alone, so relaxed
/// ordering is enough: tasks count without coordinating and readers get a
/// snapshot that may mix instants.
#[macro_export]
macro_rules! counters {
    ($(#[doc = $sdoc:literal])* $stats:ident; $($(#[doc = $doc:literal])* $name:ident,)*) => {
        $crate::snapshot! {
            $(#[doc = $sdoc])* $stats; $($(#[doc = $doc])* $name,)*
        }

        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $name: ::std::sync::atomic::AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn read(&self) -> $stats {
                $stats { $($name: self.$name.load(::std::sync::atomic::Ordering::Relaxed),)* }
            }
        }
    };
}
