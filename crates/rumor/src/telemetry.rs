//! What a process tells its operator: logs on stderr, and traces over OTLP
//! when configured.
//!
//! Logs: `RUMOR_LOG` (see [`init`]).
//!
//! Traces: a node, the bridge and `rumor up` export their spans over
//! OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set, with the standard
//! OpenTelemetry settings: `OTEL_SERVICE_NAME` (default `rumor`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` and its argument (default:
//! follow the parent's decision, else sample), `OTEL_BSP_SCHEDULE_DELAY` and
//! the other batch settings, `OTEL_EXPORTER_OTLP_TIMEOUT`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off.
//!
//! Only the spans that follow a message are exported (see [`TRACED`]), and
//! warnings and errors inside them as span events; the long-lived spans that
//! name a node or a lane in the logs are not. The trace context crosses
//! processes in the mesh envelope and the event-log records (see
//! `stats::trace`).

use anyhow::Context as _;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::{Level, Metadata};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{FilterFn, LevelFilter, Targets};
use tracing_subscriber::prelude::*;

/// rumor's own crates, whose level a plain `RUMOR_LOG=debug` sets.
const OWN_CRATES: [&str; 12] = [
    "rumor",
    "server",
    "node",
    "gateway",
    "rumor_ring",
    "membership",
    "events",
    "bridge",
    "processors",
    "sim",
    "proto",
    "stats",
];

/// The spans a trace holds, one per step of a message: `edge` (a gateway's
/// client edge), `inject` (the bridge's API), `message` (routing, at each
/// node on the way), `process` (the worker), `backend` (the model call) and
/// `store` (the bridge's database write of each record).
pub(crate) const TRACED: [&str; 6] = ["edge", "inject", "message", "process", "backend", "store"];

/// The exporter, to flush at exit.
#[derive(Debug)]
pub(crate) struct Traces(SdkTracerProvider);

impl Traces {
    /// Exports the spans still buffered and stops, waiting at most 5 s:
    /// the batch processor's own shutdown waits for its export however long
    /// that takes (the collector may be unreachable), so it runs on a
    /// thread of its own, left behind when it takes longer. Call before the
    /// runtime stops: the export runs on it.
    pub(crate) fn shutdown(self) {
        let (done, wait) = std::sync::mpsc::channel();
        let provider = self.0;
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match wait.recv_timeout(std::time::Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("rumor: traces: the last spans were not all exported: {e}"),
            Err(_) => eprintln!("rumor: traces: the last spans were not exported within 5 s; exiting without them"),
        }
    }
}

/// Logs to stderr, each line with its spans (node name, message id,
/// conversation key). `RUMOR_LOG` is a level for rumor's own crates (error,
/// warn, info, debug, trace; default warn, other crates stay at warn), or
/// per-target directives such as `node=debug,sqlx=info`, with every target
/// they do not name at warn unless they give a bare level too.
///
/// With `serves` (a process that serves messages) and an OTLP endpoint
/// configured, spans are exported too; call inside the tokio runtime, whose
/// tasks export them.
pub(crate) fn init(serves: bool) -> anyhow::Result<Option<Traces>> {
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(log_filter(&std::env::var("RUMOR_LOG").unwrap_or_default())?);
    let provider = if serves {
        exporter(&|k| std::env::var(k).ok())?
    } else {
        None
    };
    let traces = provider.as_ref().map(|p| {
        // Lean spans: their name and fields say where they are, so no source
        // location, thread or target attributes; no busy and idle times
        // (attributes summed at every poll of the message's futures); and no
        // OpenTelemetry context switched at every poll, which only other
        // OpenTelemetry instrumentation would read (rumor passes contexts on
        // explicitly, through `stats::trace`).
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("rumor"))
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_filter(FilterFn::new(traced))
    });
    tracing_subscriber::registry().with(logs).with(traces).init();
    Ok(provider.map(Traces))
}

/// What the trace layer sees: the message spans of rumor's own crates, and
/// warnings and errors (recorded as events of the span they happen in).
fn traced(meta: &Metadata<'_>) -> bool {
    if meta.is_span() {
        TRACED.contains(&meta.name()) && OWN_CRATES.iter().any(|c| meta.target().split("::").next() == Some(c))
    } else {
        *meta.level() <= Level::WARN
    }
}

fn log_filter(spec: &str) -> anyhow::Result<Targets> {
    Ok(match spec.trim() {
        "" => Targets::new().with_default(LevelFilter::WARN),
        s => match s.parse::<LevelFilter>() {
            Ok(level) => Targets::new()
                .with_default(LevelFilter::WARN)
                .with_targets(OWN_CRATES.map(|c| (c, level))),
            Err(_) => {
                let targets = s.parse::<Targets>().map_err(|e| {
                    anyhow::anyhow!("RUMOR_LOG: {s:?} is neither a level nor target=level directives: {e}")
                })?;
                match targets.default_level() {
                    Some(_) => targets,
                    None => targets.with_default(LevelFilter::WARN),
                }
            }
        },
    })
}

/// Whether the environment asks for traces: an OTLP endpoint, and not
/// turned off.
fn configured(env: &dyn Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| env(k).is_some_and(|v| !v.trim().is_empty());
    let off = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The OTLP/gRPC exporter and its batch processor on the current tokio
/// runtime, when configured. The exporter reads the endpoint, headers and
/// timeout from the `OTEL_EXPORTER_OTLP_*` variables itself.
fn exporter(env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Option<SdkTracerProvider>> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    if !configured(env) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .context("traces: the OTLP exporter (OTEL_EXPORTER_OTLP_ENDPOINT)")?;
    // Batches are exported by a task on the runtime: the exporter's gRPC
    // client needs it (the SDK's default processor uses a plain thread).
    let batches = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = opentelemetry_sdk::Resource::builder().build();
    // The SDK names a service it was not told about `unknown_service`.
    let named = resource
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|v| !v.as_str().starts_with("unknown_service"));
    let resource = if named {
        resource
    } else {
        opentelemetry_sdk::Resource::builder()
            .with_service_name("rumor")
            .build()
    };
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(batches)
            .with_resource(resource)
            .build(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn traces_are_exported_only_when_an_endpoint_is_set_and_not_turned_off() {
        assert!(!configured(&env(&[])));
        assert!(!configured(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(configured(&env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4317"
        )])));
        assert!(configured(&env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(!configured(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!configured(&env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn log_levels_and_directives_are_read_and_nonsense_is_refused() {
        assert!(log_filter("").is_ok());
        assert!(log_filter("debug").is_ok());
        assert!(log_filter("node=debug,sqlx=info").is_ok());
        let e = log_filter("node=loud").unwrap_err().to_string();
        assert!(e.contains("RUMOR_LOG"), "{e}");
    }
}
