//! One macro, [`counters!`], used by the node, the event log and the bridge
//! for their metrics, so the three count the same way.
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
//! assert_eq!(c.read().fields(), vec![("done", " Things done.", 1)]);
//! ```

/// Declares a `pub` stats struct of `u64` counters with a `fields()` listing
/// (name, description from the doc comment, value) for metrics exporters, and
/// a crate-private `Counters` of relaxed atomics that `read()`s into it. Each
/// counter stands alone, so relaxed ordering is enough: tasks count without
/// coordinating and readers get a snapshot that may mix instants.
#[macro_export]
macro_rules! counters {
    ($(#[doc = $sdoc:literal])* $stats:ident; $($(#[doc = $doc:literal])* $name:ident,)*) => {
        $(#[doc = $sdoc])*
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct $stats {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl $stats {
            /// Every counter as `(name, description, value)`, for metrics exporters.
            pub fn fields(&self) -> Vec<(&'static str, &'static str, u64)> {
                vec![$((stringify!($name), concat!($($doc),*), self.$name),)*]
            }
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
