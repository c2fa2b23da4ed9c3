//! A small HTTP server for operational endpoints (`/metrics`, `/healthz`,
//! `/readyz`): GET only, no body read, one plain-text answer per path.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use crate::metrics::Metrics;

/// One answer: status, content type, body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: StatusCode,
    pub content_type: &'static str,
    pub body: String,
}

impl Reply {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Serve `handler` (called with the path of each GET) on `listener` until
/// `shutdown` fires. Connections still open then are closed.
pub async fn serve<H>(listener: TcpListener, handler: H, shutdown: CancellationToken)
where
    H: Fn(&str) -> Reply + Clone + Send + Sync + 'static,
{
    let connections = TaskTracker::new();
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
        let (handler, shutdown) = (handler.clone(), shutdown.clone());
        connections.spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                async move { Ok::<_, Infallible>(respond(&req, &handler)) }
            });
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    connections.close();
    connections.wait().await;
}

fn respond<H: Fn(&str) -> Reply>(req: &Request<Incoming>, handler: &H) -> Response<Full<Bytes>> {
    let reply = if req.method() == Method::GET {
        handler(req.uri().path())
    } else {
        Reply::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
    };
    Response::builder()
        .status(reply.status)
        .header(hyper::header::CONTENT_TYPE, reply.content_type)
        .body(Full::new(Bytes::from(reply.body)))
        .expect("static response parts are valid")
}

/// Liveness and readiness, shared between the pipeline and the endpoints.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
}

impl Health {
    /// Ready: connected, consuming, and the last batch did not have to wait
    /// for the store or the broker.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// The ingest service's endpoints.
pub(crate) fn handler(metrics: Metrics, health: Arc<Health>) -> impl Fn(&str) -> Reply + Clone {
    move |path| match path {
        "/metrics" => Reply {
            status: StatusCode::OK,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics.render(),
        },
        // Liveness: the process answers. Restarting does not fix an outage
        // of the store or the broker, so they do not make it fail.
        "/healthz" => Reply::text(StatusCode::OK, "ok\n"),
        "/readyz" if health.is_ready() => Reply::text(StatusCode::OK, "ready\n"),
        "/readyz" => Reply::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => Reply::text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_flag() {
        let health = Arc::new(Health::default());
        let h = handler(Metrics::new(), health.clone());
        assert_eq!(h("/healthz").status, StatusCode::OK);
        assert_eq!(h("/readyz").status, StatusCode::SERVICE_UNAVAILABLE);
        health.set_ready(true);
        assert_eq!(h("/readyz").status, StatusCode::OK);
        assert_eq!(h("/nope").status, StatusCode::NOT_FOUND);
        assert!(h("/metrics").body.contains("herald_ingest_events_total"));
    }
}
