//! W3C trace context (`traceparent`, `tracestate`) across process boundaries:
//! extracted from incoming HTTP headers or string maps (message attributes, an
//! event's stored context) and injected into outgoing ones, through the global
//! propagator that [`crate::telemetry::init`] installs.
//!
//! Without that propagator (unit tests) extraction yields an empty context and
//! injection writes nothing, so every helper here is safe to call anywhere.

use std::collections::{BTreeMap, HashMap};

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::TraceContextExt,
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The OpenTelemetry context of the current `tracing` span.
pub fn current() -> Context {
    tracing::Span::current().context()
}

/// The parent context carried by incoming `headers` (empty if none or invalid).
pub fn from_headers(headers: &HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
}

/// Writes `cx` into outgoing `headers` (`traceparent`, `tracestate`).
pub fn inject_headers(cx: &Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut HeaderInjector(headers));
    });
}

/// Writes the current span's context into outgoing `headers`.
pub fn inject_current_headers(headers: &mut HeaderMap) {
    inject_headers(&current(), headers);
}

/// The parent context carried by a string map (message attributes, an event's
/// stored trace map).
pub fn from_map<M: StringMap + ?Sized>(map: &M) -> Context {
    opentelemetry::global::get_text_map_propagator(|p| p.extract(&MapCarrier(map)))
}

/// `cx` as a string map (`traceparent`, `tracestate` when set); empty without a
/// valid context.
pub fn to_map(cx: &Context) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(cx, &mut MapInjector(&mut map));
    });
    map
}

/// The current span's context as a string map, to store with an event.
pub fn current_map() -> BTreeMap<String, String> {
    to_map(&current())
}

/// Makes `span` a child of the remote context `cx`, if `cx` carries a valid span
/// context; otherwise `span` keeps its contextual parent. Call it before the
/// span is first entered. Returns whether the parent was set.
pub fn set_parent(span: &tracing::Span, cx: Context) -> bool {
    if !cx.span().span_context().is_valid() {
        return false;
    }
    span.set_parent(cx).is_ok()
}

/// A map of strings that trace context can be read from.
pub trait StringMap {
    /// The value of `key`.
    fn get(&self, key: &str) -> Option<&str>;
    /// All keys.
    fn keys(&self) -> Vec<&str>;
}

impl StringMap for BTreeMap<String, String> {
    fn get(&self, key: &str) -> Option<&str> {
        BTreeMap::get(self, key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        BTreeMap::keys(self).map(String::as_str).collect()
    }
}

impl<S: std::hash::BuildHasher> StringMap for HashMap<String, String, S> {
    fn get(&self, key: &str) -> Option<&str> {
        HashMap::get(self, key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        HashMap::keys(self).map(String::as_str).collect()
    }
}

struct MapCarrier<'a, M: ?Sized>(&'a M);

impl<M: StringMap + ?Sized> Extractor for MapCarrier<'_, M> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys()
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    use opentelemetry_sdk::propagation::TraceContextPropagator;

    use super::*;

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn remote() -> Context {
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        ))
    }

    #[test]
    fn round_trips_through_headers_and_maps() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

        let mut headers = HeaderMap::new();
        inject_headers(&remote(), &mut headers);
        assert_eq!(headers["traceparent"], TRACEPARENT);
        assert_eq!(headers["tracestate"], "vendor=x");
        let back = from_headers(&headers);
        assert_eq!(
            back.span().span_context().span_id(),
            remote().span().span_context().span_id()
        );

        let map = to_map(&remote());
        assert_eq!(
            map.get("traceparent").map(String::as_str),
            Some(TRACEPARENT)
        );
        let back = from_map(&map);
        assert_eq!(
            back.span().span_context().trace_id(),
            remote().span().span_context().trace_id()
        );
        let attrs: HashMap<String, String> = map.into_iter().collect();
        assert!(from_map(&attrs).span().span_context().is_remote());

        assert!(to_map(&Context::new()).is_empty());
        assert!(
            !from_headers(&HeaderMap::new())
                .span()
                .span_context()
                .is_valid()
        );
    }

    #[test]
    fn an_invalid_parent_is_not_set() {
        let span = tracing::info_span!("x");
        assert!(!set_parent(&span, Context::new()));
    }
}
