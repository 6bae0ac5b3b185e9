//! Distributed tracing: ALB takes part in W3C Trace Context and exports its own spans.
//!
//! Every request gets a span of ALB's own: its parent is the caller's span (from an
//! incoming `traceparent`), or it starts a new trace, sampled with probability `sample`
//! (a caller's sampling decision is followed, as OpenTelemetry's parent-based sampler
//! does). The request goes to the backend with `traceparent` naming ALB's span as the
//! parent, so the backend's spans hang under ALB's and ALB's time shows in the trace.
//! `tracestate` passes through untouched, and is dropped when the `traceparent` it belonged
//! to was invalid (the specification's rule).
//!
//! With `otlp_endpoint`, sampled spans are exported over OTLP/HTTP (protobuf) by the
//! OpenTelemetry SDK's batch processor, on its own thread: the request path only records
//! the span. A span carries the OpenTelemetry HTTP server conventions
//! (`http.request.method`, `url.path`, `http.response.status_code`, ...) plus ALB's
//! `alb.backend`, `alb.strategy`, `alb.decision_id`, `alb.decision.why`, `alb.route` and
//! `alb.pool`, and it ends when
//! the response body has been sent.

pub mod context;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use axum::body::Body;
use futures_util::future::Either;
use http::{header, Request, Response};
use opentelemetry::{
    trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
        TraceState, Tracer as _, TracerProvider as _,
    },
    KeyValue,
};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider, Span};
use serde::Serialize;
use tower::{Layer, Service};

use crate::{
    decision::Outcome,
    guarded_body::GuardedBody,
    headers::{TRACEPARENT, TRACESTATE},
};
use context::{random_id, TraceParent};

/// Tracing settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceConfig {
    /// Probability that a request without a sampled parent starts a recorded trace.
    pub sample: f64,
    /// Where spans go (OTLP/HTTP: `http://127.0.0.1:4318/v1/traces`, or the base URL
    /// `http://127.0.0.1:4318`, to which `/v1/traces` is added); `None`: spans are
    /// propagated, not exported.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
}

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the OTLP exporter for {endpoint}: {source}")]
pub struct ExportError {
    endpoint: String,
    #[source]
    source: opentelemetry_otlp::ExporterBuildError,
}

/// Adds trace context (and span export) to a service; [`TraceLayer::off`] passes through.
#[derive(Debug, Clone)]
pub struct TraceLayer {
    shared: Option<Arc<Tracing>>,
    scheme: &'static str,
}

#[derive(Debug)]
struct Tracing {
    sample: f64,
    export: Option<(SdkTracerProvider, SdkTracer)>,
}

/// How long a replaced exporter (a reload) keeps taking spans before it is shut down:
/// requests still in flight end their spans on it meanwhile.
const RETIRED_EXPORTER_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for Tracing {
    fn drop(&mut self) {
        // Shutting down waits for the last export: never on a request or reload task.
        if let Some((provider, _)) = self.export.take() {
            let _ = std::thread::Builder::new()
                .name("alb-otlp-retire".to_owned())
                .spawn(move || {
                    std::thread::sleep(RETIRED_EXPORTER_GRACE);
                    let _ = provider.shutdown();
                });
        }
    }
}

// === impl TraceLayer ===

impl TraceLayer {
    /// Tracing as `config` says; starts the exporter's thread if there is an endpoint.
    pub fn new(config: &TraceConfig) -> Result<Self, ExportError> {
        let export = match &config.otlp_endpoint {
            None => None,
            Some(endpoint) => {
                use opentelemetry_otlp::WithExportConfig;
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(traces_url(endpoint))
                    .build()
                    .map_err(|source| ExportError {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
                let resource = opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service_name.clone())
                    .build();
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                        config.sample,
                    ))))
                    .with_resource(resource)
                    .build();
                let tracer = provider.tracer("alb");
                Some((provider, tracer))
            }
        };
        Ok(TraceLayer {
            shared: Some(Arc::new(Tracing {
                sample: config.sample,
                export,
            })),
            scheme: "http",
        })
    }

    /// Exports the spans the batch holds now (blocks, at most the exporter's timeout: for
    /// shutdown).
    pub fn flush(&self) {
        if let Some((provider, _)) = self.shared.as_ref().and_then(|t| t.export.as_ref()) {
            let _ = provider.force_flush();
        }
    }

    /// No tracing: `traceparent` passes through untouched.
    pub fn off() -> Self {
        TraceLayer {
            shared: None,
            scheme: "http",
        }
    }

    /// The same tracing for requests that arrived over `scheme` (`url.scheme`).
    pub fn for_scheme(&self, scheme: &'static str) -> Self {
        TraceLayer {
            shared: self.shared.clone(),
            scheme,
        }
    }
}

impl<S> Layer<S> for TraceLayer {
    type Service = Trace<S>;

    fn layer(&self, inner: S) -> Trace<S> {
        Trace {
            inner,
            shared: self.shared.clone(),
            scheme: self.scheme,
        }
    }
}

/// The service of [`TraceLayer`].
#[derive(Debug, Clone)]
pub struct Trace<S> {
    inner: S,
    shared: Option<Arc<Tracing>>,
    scheme: &'static str,
}

impl Tracing {
    /// ALB's span for a request whose caller sent `parent`: its ids and sampling decision,
    /// and the recording span when it is sampled and exported.
    fn start<B>(
        &self,
        parent: Option<TraceParent>,
        request: &Request<B>,
        scheme: &'static str,
    ) -> (TraceParent, Option<Span>) {
        let Some((_, tracer)) = &self.export else {
            let (trace_id, sampled) = match parent {
                Some(p) => (p.trace_id, p.sampled()),
                None => (random_id(), rand::random::<f64>() < self.sample),
            };
            let own = TraceParent {
                trace_id,
                parent_id: random_id(),
                flags: u8::from(sampled),
            };
            return (own, None);
        };
        let parent_cx = match parent {
            Some(p) => opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(p.trace_id),
                SpanId::from_bytes(p.parent_id),
                TraceFlags::new(p.flags),
                true,
                request
                    .headers()
                    .get(&TRACESTATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<TraceState>().ok())
                    .unwrap_or_default(),
            )),
            None => opentelemetry::Context::new(),
        };
        let path = request.uri().path().to_owned();
        let mut attributes = vec![
            KeyValue::new("http.request.method", request.method().as_str().to_owned()),
            KeyValue::new("url.path", path),
            KeyValue::new(
                "network.protocol.version",
                protocol_version(request.version()),
            ),
        ];
        if let Some(host) = request
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| request.uri().authority().map(|a| a.as_str()))
        {
            // The server the client addressed: ALB (the backend is `alb.backend`).
            if let Ok(authority) = host.parse::<http::uri::Authority>() {
                let name = authority
                    .host()
                    .trim_start_matches('[')
                    .trim_end_matches(']');
                attributes.push(KeyValue::new("server.address", name.to_owned()));
            }
        }
        attributes.push(KeyValue::new("url.scheme", scheme));
        if let Some(query) = request.uri().query() {
            attributes.push(KeyValue::new("url.query", query.to_owned()));
        }
        if let Some(agent) = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            attributes.push(KeyValue::new("user_agent.original", agent.to_owned()));
        }
        let span = tracer
            .span_builder(request.method().as_str().to_owned())
            .with_kind(SpanKind::Server)
            .with_start_time(SystemTime::now())
            .with_attributes(attributes)
            .start_with_context(tracer, &parent_cx);
        let context = span.span_context();
        let own = TraceParent {
            trace_id: context.trace_id().to_bytes(),
            parent_id: context.span_id().to_bytes(),
            flags: u8::from(context.is_sampled()),
        };
        (own, context.is_sampled().then_some(span))
    }
}

/// The traces URL: `endpoint` itself when it has a path, else `endpoint/v1/traces` (the
/// OTLP convention for a base URL, as `OTEL_EXPORTER_OTLP_ENDPOINT` is read).
pub fn traces_url(endpoint: &str) -> String {
    let path = endpoint
        .parse::<http::Uri>()
        .ok()
        .map(|u| u.path().to_owned())
        .unwrap_or_default();
    if path.is_empty() || path == "/" {
        format!("{}/v1/traces", endpoint.trim_end_matches('/'))
    } else {
        endpoint.to_owned()
    }
}

fn protocol_version(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        _ => "1.1",
    }
}

impl<S> Service<Request<Body>> for Trace<S>
where
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Either<S::Future, TraceFuture<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let Some(tracing) = &self.shared else {
            return Either::Left(self.inner.call(request));
        };
        let headers = request.headers();
        let mut incoming = headers.get_all(&TRACEPARENT).iter();
        // Two traceparent headers are as invalid as a malformed one.
        let parent = match (incoming.next(), incoming.next()) {
            (Some(value), None) => TraceParent::parse(value),
            _ => None,
        };
        let (own, span) = tracing.start(parent, &request, self.scheme);
        let headers = request.headers_mut();
        if parent.is_none() {
            headers.remove(&TRACESTATE);
        }
        headers.insert(
            TRACEPARENT.clone(),
            TraceParent::header(own.trace_id, own.parent_id, own.sampled()),
        );
        match span {
            None => Either::Left(self.inner.call(request)),
            Some(span) => Either::Right(TraceFuture {
                inner: self.inner.call(request),
                span: Some(span),
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a recorded [`Trace`]: notes the answer on the span, which ends with
    /// the response body.
    pub struct TraceFuture<F> {
        #[pin]
        inner: F,
        span: Option<Span>,
    }
}

impl<F> std::future::Future for TraceFuture<F>
where
    F: std::future::Future<Output = Result<Response<Body>, Infallible>>,
{
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(response) = std::task::ready!(this.inner.poll(cx));
        let Some(mut span) = this.span.take() else {
            return Poll::Ready(Ok(response));
        };
        let status = response.status();
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        ));
        if status.is_server_error() {
            span.set_status(Status::error(status.to_string()));
        }
        if let Some(outcome) = response.extensions().get::<Outcome>() {
            span.set_attribute(KeyValue::new("alb.strategy", outcome.strategy.as_str()));
            span.set_attribute(KeyValue::new("alb.decision_id", outcome.decision_id as i64));
            if let Some(route) = &outcome.route {
                span.set_attribute(KeyValue::new("alb.route", route.to_string()));
            }
            if let Some(pool) = &outcome.pool {
                span.set_attribute(KeyValue::new("alb.pool", pool.to_string()));
            }
            if let Some(why) = &outcome.why {
                span.set_attribute(KeyValue::new("alb.decision.why", why.clone()));
            }
            if let Some(backend) = &outcome.backend {
                span.set_attribute(KeyValue::new("alb.backend", backend.name().to_owned()));
            }
            span.set_attribute(KeyValue::new("alb.retried", outcome.retried));
        }
        let ending = SpanEnd(Some(span));
        Poll::Ready(Ok(
            response.map(|body| Body::new(GuardedBody::new(body, ending)))
        ))
    }
}

/// Ends the span when dropped: at the response body's end, or when the client went away.
struct SpanEnd(Option<Span>);

impl Drop for SpanEnd {
    fn drop(&mut self) {
        if let Some(mut span) = self.0.take() {
            span.end();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::traces_url;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
        assert_eq!(traces_url("http://c:4318/custom"), "http://c:4318/custom");
    }
}
