//! What every Herald process is operated through, in one place:
//!
//! - [`serve`]: the one HTTP accept loop, for the notification API and the
//!   ops endpoints alike: a connection cap, a header-read timeout, and a
//!   graceful close of every connection on shutdown;
//! - [`endpoints`]: `/metrics`, `/healthz` and `/readyz`;
//! - [`Registrar`] and [`render`]: metrics declared into a registry, and
//!   the registry in the Prometheus text format;
//! - [`Backoff`]: when to retry an operation on the infrastructure (the
//!   store, the broker); *whether* is the error's to say.

mod backoff;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use crate::backoff::Backoff;

/// A response with its whole body.
pub type Reply = Response<Full<Bytes>>;

/// The content type of the Prometheus text exposition.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; further clients wait in the listen
    /// backlog rather than take memory and tasks.
    pub max_connections: usize,
    /// How long a client may take to send a request head (HTTP/1): a
    /// client that trickles its head is cut off.
    pub header_read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
        }
    }
}

/// Serve `handler` on `listener` (HTTP/1 and HTTP/2) until `shutdown`
/// fires; then every open connection is closed gracefully, and this returns
/// once they are.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    limits: Limits,
    handler: H,
    shutdown: CancellationToken,
) where
    H: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: the next accept may work.
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let slot = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
        };
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        connections.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let reply = handler(req);
                async move { Ok::<_, Infallible>(reply.await) }
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = shutdown.cancelled() => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        });
    }
    connections.close();
    connections.wait().await;
}

/// Liveness and readiness, shared between a service and its endpoints.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Ready: connected and working (consuming; not draining; for ingest,
    /// the last batch did not have to wait for the store or the broker).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The ops endpoints of a service: `GET /metrics` (what `metrics` renders),
/// `GET /healthz` (the process answers) and `GET /readyz` (from `health`).
/// Any other method is `405` with `Allow: GET`; any other path `404`.
pub fn endpoints<M>(
    metrics: M,
    health: Arc<Health>,
) -> impl Fn(Request<Incoming>) -> std::future::Ready<Reply> + Clone + Send + Sync + 'static
where
    M: Fn() -> String + Clone + Send + Sync + 'static,
{
    move |req| std::future::ready(ops_reply(req.method(), req.uri().path(), &metrics, &health))
}

fn ops_reply(method: &Method, path: &str, metrics: &impl Fn() -> String, health: &Health) -> Reply {
    if method != Method::GET {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        r.headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
        return r;
    }
    match path {
        "/metrics" => {
            let mut r = Response::new(Full::new(Bytes::from(metrics())));
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static(METRICS_CONTENT_TYPE),
            );
            r
        }
        // Liveness: the process answers. Restarting does not fix an outage
        // of the store or the broker, so they do not make it fail.
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if health.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Reports `herald_store_requests_total{statement}` at every scrape from
/// `sample`: the store's own request counts
/// (`NotificationStore::requests`), under one name in every service.
/// Registering twice in one registry is a no-op.
pub fn watch_store_requests(
    registry: &Registry,
    sample: impl Fn() -> Vec<(&'static str, u64)> + Send + Sync + 'static,
) {
    let counters = IntCounterVec::new(
        Opts::new(
            "herald_store_requests_total",
            "Requests this process has sent to the notification store's database (CQL statements), by statement.",
        ),
        &["statement"],
    )
    .expect("valid metric");
    let sampled = Sampled {
        counters,
        sample: Box::new(sample),
    };
    if registry.register(Box::new(sampled)).is_err() {
        debug!("store requests already reported by this registry");
    }
}

/// Counters whose totals are kept elsewhere and read when scraped.
struct Sampled {
    counters: IntCounterVec,
    sample: Box<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>,
}

impl Collector for Sampled {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.counters.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.counters.reset();
        for (label, total) in (self.sample)() {
            self.counters.with_label_values(&[label]).inc_by(total);
        }
        self.counters.collect()
    }
}

/// Declares metrics into one registry. A name or label set that is not
/// valid, or a name declared twice, is a programming error: it panics at
/// start-up, where every metric is declared.
#[derive(Clone, Copy)]
pub struct Registrar<'a>(pub &'a Registry);

impl Registrar<'_> {
    fn add<C: Collector + Clone + 'static>(&self, c: C) -> C {
        self.0.register(Box::new(c.clone())).expect("unique metric");
        c
    }

    pub fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn gauge(&self, name: &str, help: &str) -> IntGauge {
        self.add(IntGauge::new(name, help).expect("valid metric"))
    }

    pub fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(Histogram::with_opts(opts).expect("valid metric"))
    }

    pub fn histograms(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.add(HistogramVec::new(opts, labels).expect("valid metric"))
    }
}

/// Every metric of `registry`, in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut buf)
        .expect("text encoding");
    String::from_utf8(buf).expect("prometheus text is utf-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_by_method_path_and_readiness() {
        let health = Health::default();
        let metrics = || "m 1\n".to_owned();
        let status = |m: &Method, p: &str, h: &Health| ops_reply(m, p, &metrics, h).status();
        assert_eq!(status(&Method::GET, "/healthz", &health), StatusCode::OK);
        assert_eq!(
            status(&Method::GET, "/readyz", &health),
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.set_ready(true);
        assert_eq!(status(&Method::GET, "/readyz", &health), StatusCode::OK);
        assert_eq!(
            status(&Method::GET, "/nope", &health),
            StatusCode::NOT_FOUND
        );
        let post = ops_reply(&Method::POST, "/metrics", &metrics, &health);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET");
        let m = ops_reply(&Method::GET, "/metrics", &metrics, &health);
        assert_eq!(m.headers()[header::CONTENT_TYPE], METRICS_CONTENT_TYPE);
    }
}
