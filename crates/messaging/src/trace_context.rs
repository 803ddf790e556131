//! W3C trace context through the broker: a publish span continues the context
//! stored with the event ([`Envelope::trace`](crate::Envelope::trace)) and sends
//! its own as message attributes; a consumer's span continues the one in the
//! attributes (or, without them, the envelope's).
//!
//! Reads and writes through the global propagator (installed by the services'
//! telemetry); without one, nothing is carried and spans keep their contextual
//! parent. (`platform::trace_context` has the HTTP side; this crate does not
//! depend on the server platform.)

use std::collections::BTreeMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The context carried by a string map (empty if none or invalid).
pub(crate) fn from_map(map: &BTreeMap<String, String>) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&Carrier(map)))
}

/// The context of `span` as a string map (`traceparent`, `tracestate`).
pub(crate) fn span_map(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&span.context(), &mut CarrierMut(&mut map));
    });
    map
}

/// Makes `span` a child of `cx` when `cx` holds a valid span context (before the
/// span is first entered).
pub(crate) fn set_parent(span: &tracing::Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// Whether `cx` holds a valid span context.
pub(crate) fn is_valid(cx: &Context) -> bool {
    cx.span().span_context().is_valid()
}

struct Carrier<'a>(&'a BTreeMap<String, String>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct CarrierMut<'a>(&'a mut BTreeMap<String, String>);

impl Injector for CarrierMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}
