//! Logging and tracing set-up.
//!
//! Logs: `RUST_LOG` filters (default `info`), JSON lines when stdout is not a
//! terminal (or `LOG_FORMAT=json`), human-readable otherwise. A line written
//! inside a span carries the span's OpenTelemetry `trace_id` and `span_id` (JSON:
//! top-level fields; text: appended as `trace_id=… span_id=…`), so a log line
//! can be found from a trace and the other way round.
//!
//! Traces: every `tracing` span is also an OpenTelemetry span
//! (`tracing-opentelemetry`), and the W3C TraceContext propagator is installed
//! globally (see [`crate::trace_context`]). Spans are exported over OTLP/HTTP only
//! when an endpoint is configured:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | unset: no export | collector base URL; `/v1/traces` is appended |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | unset | full traces URL, wins over the one above |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` (`…_TRACES_PROTOCOL` wins) | `http/protobuf` | or `http/json` |
//! | `OTEL_SERVICE_NAME` | the binary's name | resource `service.name` |
//!
//! (The exporter also honours the other standard `OTEL_EXPORTER_OTLP_*` and
//! `OTEL_BSP_*` variables: headers, timeout, batch sizes.)
//!
//! Without an endpoint nothing is exported and root spans are not sampled, but
//! trace ids still exist and propagate, so logs of one request correlate across
//! services at the cost of a span id per span.
//!
//! [`init`] returns a [`Telemetry`] guard; call [`Telemetry::shutdown`] after the
//! application stopped so the spans of the last requests are exported.

use std::{io::IsTerminal, time::Duration};

use anyhow::Context as _;
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    propagation::TraceContextPropagator,
    runtime,
    trace::{
        Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
        span_processor_with_async_runtime::BatchSpanProcessor,
    },
};
use tracing::{Event, Subscriber};
use tracing_subscriber::{
    EnvFilter,
    fmt::{self, FmtContext, FormatEvent, FormatFields, format::Writer, writer::MakeWriter},
    layer::Layer,
    prelude::*,
    registry::LookupSpan,
};

use crate::config::{ConfigError, Env};

/// How long [`Telemetry::shutdown`] waits for the last spans to be exported.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and how spans are exported (from the standard `OTEL_*` variables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportConfig {
    /// The variable that configured the endpoint (the exporter reads its value).
    pub endpoint_variable: &'static str,
    /// OTLP over HTTP with protobuf (default) or JSON bodies.
    pub protocol: Protocol,
    /// Resource `service.name`: `OTEL_SERVICE_NAME`, else the binary's name.
    pub service_name: String,
}

impl ExportConfig {
    /// `None` when neither `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` nor
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` is set; errors name a bad variable.
    pub fn from_env(env: &Env, service: &str) -> Result<Option<Self>, ConfigError> {
        let endpoint = ["EXPORTER_OTLP_TRACES_ENDPOINT", "EXPORTER_OTLP_ENDPOINT"]
            .into_iter()
            .find(|key| env.optional(key).is_some());
        let Some(endpoint) = endpoint else {
            return Ok(None);
        };
        env.http_url(endpoint, "")?;
        let endpoint_variable = match endpoint {
            "EXPORTER_OTLP_TRACES_ENDPOINT" => "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            _ => "OTEL_EXPORTER_OTLP_ENDPOINT",
        };
        let protocol_key = ["EXPORTER_OTLP_TRACES_PROTOCOL", "EXPORTER_OTLP_PROTOCOL"]
            .into_iter()
            .find(|key| env.optional(key).is_some());
        let protocol = match protocol_key {
            None => Protocol::HttpBinary,
            Some(key) => match env.string(key, "").trim() {
                "http/protobuf" => Protocol::HttpBinary,
                "http/json" => Protocol::HttpJson,
                other => {
                    return Err(ConfigError {
                        variable: env.name(key),
                        message: format!(
                            "{other:?} is not supported; use http/protobuf or http/json"
                        ),
                    });
                }
            },
        };
        Ok(Some(Self {
            endpoint_variable,
            protocol,
            service_name: env.string("SERVICE_NAME", service),
        }))
    }
}

/// The installed tracing pipeline; [`Telemetry::shutdown`] flushes it.
#[must_use = "call `shutdown().await` after the application stopped, or the last spans are lost"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter (bounded by a few
    /// seconds). Call it once the application has stopped; spans ended later are
    /// dropped.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        // The provider blocks the calling thread until its batch task (on this
        // runtime) has exported: keep that off the runtime's threads.
        let shut =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
        match tokio::time::timeout(SHUTDOWN_TIMEOUT + Duration::from_secs(1), shut).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("telemetry: flushing spans at shutdown failed: {e}"),
            Ok(Err(e)) => eprintln!("telemetry: flushing spans at shutdown failed: {e}"),
            Err(_) => eprintln!("telemetry: flushing spans at shutdown timed out"),
        }
    }
}

/// Installs the global subscriber (logs, and spans as OpenTelemetry spans) and the
/// W3C propagator. Must run inside a tokio runtime when an OTLP endpoint is set.
/// Later calls change nothing (tests call it freely) and return an inert guard.
///
/// Root spans of requests nobody wants to trace: health probes and scrapes
/// (every few seconds per instance, they would bury the orders' traces).
const UNTRACED_ROOTS: [&str; 3] = ["GET /health/live", "GET /health/ready", "GET /metrics"];

/// Samples every root span except [`UNTRACED_ROOTS`]; used under `ParentBased`,
/// so children follow their parent's decision.
#[derive(Clone, Debug)]
struct SkipProbes;

impl ShouldSample for SkipProbes {
    fn should_sample(
        &self,
        _parent: Option<&opentelemetry::Context>,
        _trace_id: opentelemetry::trace::TraceId,
        name: &str,
        _kind: &opentelemetry::trace::SpanKind,
        _attributes: &[opentelemetry::KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let decision = if UNTRACED_ROOTS.contains(&name) {
            SamplingDecision::Drop
        } else {
            SamplingDecision::RecordAndSample
        };
        SamplingResult {
            decision,
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

/// Errs on a bad `OTEL_*` value, naming the variable.
pub fn init(service: &'static str) -> anyhow::Result<Telemetry> {
    let export = ExportConfig::from_env(&Env::from_process("OTEL_"), service)?;
    if tracing::dispatcher::has_been_set() {
        return Ok(Telemetry::default());
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let provider = match &export {
        Some(export) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(export.protocol)
                .build()
                .with_context(|| {
                    format!(
                        "building the OTLP span exporter ({})",
                        export.endpoint_variable
                    )
                })?;
            SdkTracerProvider::builder()
                .with_sampler(Sampler::ParentBased(Box::new(SkipProbes)))
                .with_span_processor(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
                .with_resource(
                    Resource::builder()
                        .with_service_name(export.service_name.clone())
                        .build(),
                )
                .build()
        }
        // No processor: spans only carry ids. Unsampled unless the caller's are.
        None => SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)))
            .with_resource(Resource::builder().with_service_name(service).build())
            .build(),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(service))
        .with_tracked_inactivity(false);

    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info"));
    let json = match std::env::var("LOG_FORMAT").ok().as_deref() {
        Some("json") => true,
        Some("pretty" | "text") => false,
        _ => !std::io::stdout().is_terminal(),
    };
    let ansi = !json && std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let result = tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(log_layer(json, ansi, std::io::stdout))
        .try_init();
    if result.is_err() {
        // Lost a race with another initialisation: that pipeline stays; this
        // provider never gets a span and is shut down with the guard.
        return Ok(Telemetry {
            provider: Some(provider),
        });
    }
    match &export {
        Some(export) => tracing::info!(
            service,
            service_name = %export.service_name,
            endpoint_variable = export.endpoint_variable,
            protocol = ?export.protocol,
            "telemetry initialised; exporting traces over OTLP"
        ),
        None => tracing::info!(service, "telemetry initialised; traces not exported"),
    }
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The log lines: JSON objects or text, with the trace ids of the current span.
fn log_layer<S, W>(json: bool, ansi: bool, writer: W) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    if json {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .map_event_format(|inner| WithTraceIds { inner, json: true })
            .with_writer(writer)
            .boxed()
    } else {
        fmt::layer()
            .with_ansi(ansi)
            .map_event_format(|inner| WithTraceIds {
                inner: inner.with_ansi(ansi),
                json: false,
            })
            .with_writer(writer)
            .boxed()
    }
}

/// The trace and span id of the current OpenTelemetry context, if there is one.
pub fn current_ids() -> Option<(TraceId, SpanId)> {
    let cx = opentelemetry::Context::current();
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
}

/// An event format that adds the current `trace_id` and `span_id` to each line
/// written inside a span: as the first fields of a JSON object, or at the end of
/// a text line.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = current_ids() else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        write_with_ids(&mut writer, &line, self.json, trace_id, span_id)
    }
}

/// Writes `line` (one formatted event, ending in a newline) with the ids added.
fn write_with_ids(
    out: &mut impl std::fmt::Write,
    line: &str,
    json: bool,
    trace_id: TraceId,
    span_id: SpanId,
) -> std::fmt::Result {
    let body = line.strip_suffix('\n').unwrap_or(line);
    if json && let Some(rest) = body.strip_prefix('{') {
        let sep = if rest.starts_with('}') { "" } else { "," };
        writeln!(
            out,
            "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{sep}{rest}"
        )
    } else {
        writeln!(out, "{body} trace_id={trace_id} span_id={span_id}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::{
        collections::HashMap,
        sync::{Arc, Mutex},
    };

    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SpanData, SpanExporter},
    };

    use super::*;

    fn env(vars: &[(&str, &str)]) -> Env {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Env::from_map("OTEL_", map)
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(ExportConfig::from_env(&env(&[]), "sales").unwrap(), None);
        let blank = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]);
        assert_eq!(ExportConfig::from_env(&blank, "sales").unwrap(), None);
    }

    #[test]
    fn endpoint_defaults_to_protobuf_and_the_binary_name() {
        let e = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://jaeger:4318")]);
        let c = ExportConfig::from_env(&e, "sales").unwrap().unwrap();
        assert_eq!(c.protocol, Protocol::HttpBinary);
        assert_eq!(c.service_name, "sales");
        assert_eq!(c.endpoint_variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
    }

    #[test]
    fn signal_specific_variables_win() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://b:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ("OTEL_SERVICE_NAME", "sales-eu"),
        ]);
        let c = ExportConfig::from_env(&e, "sales").unwrap().unwrap();
        assert_eq!(c.endpoint_variable, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        assert_eq!(c.protocol, Protocol::HttpJson);
        assert_eq!(c.service_name, "sales-eu");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let grpc = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]);
        let e = ExportConfig::from_env(&grpc, "sales").unwrap_err();
        assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_PROTOCOL");
        let url = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "jaeger:4318")]);
        let e = ExportConfig::from_env(&url, "sales").unwrap_err();
        assert_eq!(e.variable, "OTEL_EXPORTER_OTLP_ENDPOINT");
    }

    #[test]
    fn probes_and_scrapes_start_no_trace_but_orders_do() {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(Sampler::ParentBased(Box::new(SkipProbes)))
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            for name in ["GET /health/ready", "GET /metrics", "POST /orders"] {
                tracing::info_span!("request", otel.name = name)
                    .in_scope(|| tracing::info_span!("db").in_scope(|| {}));
            }
        });
        let names: Vec<String> = spans
            .0
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.name.to_string())
            .collect();
        assert_eq!(names, ["db", "POST /orders"], "children follow their root");
    }

    /// Keeps exported spans in memory.
    #[derive(Debug, Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// Log output in memory.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// Logs `inside` in a span and `outside` after it, with the given log format;
    /// returns the log text and the exported span.
    fn log_in_a_span(json: bool) -> (String, SpanData) {
        let spans = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(log_layer(json, false, move || writer.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info_span!("work").in_scope(|| tracing::info!(order_id = 7, "inside"));
            tracing::info!("outside");
        });
        let span = spans.0.lock().unwrap().pop().unwrap();
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        (text, span)
    }

    #[test]
    fn log_lines_in_a_span_carry_its_exported_ids() {
        let (text, span) = log_in_a_span(true);
        let trace_id = span.span_context.trace_id().to_string();
        let span_id = span.span_context.span_id().to_string();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["message"], "inside");
        assert_eq!(lines[0]["order_id"], 7);
        assert_eq!(lines[0]["trace_id"], trace_id.as_str());
        assert_eq!(lines[0]["span_id"], span_id.as_str());
        assert!(lines[1].get("trace_id").is_none(), "{text}");

        let (text, span) = log_in_a_span(false);
        let ids = format!(
            " trace_id={} span_id={}",
            span.span_context.trace_id(),
            span.span_context.span_id()
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].contains("inside") && lines[0].ends_with(&ids),
            "{text}"
        );
        assert!(!lines[1].contains("trace_id="), "{text}");
    }

    #[test]
    fn ids_go_first_in_json_and_last_in_text() {
        let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
        let span_id = SpanId::from_hex("00f067aa0ba902b7").unwrap();
        let mut out = String::new();
        write_with_ids(&mut out, "{\"level\":\"INFO\"}\n", true, trace_id, span_id).unwrap();
        assert_eq!(
            out,
            "{\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"span_id\":\"00f067aa0ba902b7\",\"level\":\"INFO\"}\n"
        );
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed["level"], "INFO");
        out.clear();
        write_with_ids(&mut out, "{}\n", true, trace_id, span_id).unwrap();
        assert!(
            serde_json::from_str::<serde_json::Value>(&out).is_ok(),
            "{out}"
        );
        out.clear();
        write_with_ids(
            &mut out,
            "2026 INFO sales: hello\n",
            false,
            trace_id,
            span_id,
        )
        .unwrap();
        assert_eq!(
            out,
            "2026 INFO sales: hello trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7\n"
        );
    }
}
