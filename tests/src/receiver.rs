//! One fake webhook receiver for every test: a real hyper server on a
//! loopback port, plain or TLS (optionally requiring client certificates),
//! whose replies the test scripts (status, delay, dropped connection), and
//! which records everything it received, with the connection it came on
//! and the client certificate presented there.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer with this status (and an empty body) after `delay`.
    Status { status: u16, delay: Duration },
    /// Answer with a status and extra headers, e.g. `Location` or `Retry-After`.
    WithHeaders {
        status: u16,
        headers: Vec<(String, String)>,
    },
    /// Close the connection without answering.
    Drop,
}

impl Reply {
    pub fn ok() -> Self {
        Reply::Status {
            status: 200,
            delay: Duration::ZERO,
        }
    }
    pub fn status(status: u16) -> Self {
        Reply::Status {
            status,
            delay: Duration::ZERO,
        }
    }
    pub fn slow(status: u16, delay: Duration) -> Self {
        Reply::Status { status, delay }
    }
}

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub at: SystemTime,
    /// The connection it came on, numbered from 1 in accept order.
    pub connection: u64,
    /// The client certificate presented on that connection (DER), if any.
    pub client_certificate: Option<Bytes>,
}

impl Received {
    /// The first value of a header (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A receiver that fails some requests of every notification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Failing {
    /// The first `k` requests of each notification.
    First(usize),
    /// Each request with this probability.
    Share(f64),
}

#[derive(Default)]
struct Script {
    /// Replies used first, in order, one per request.
    queue: VecDeque<Reply>,
    /// The reply once the queue is empty.
    default: Option<Reply>,
    /// Which requests of each `webhook-id` get `status` (after the queue,
    /// before the default).
    failing: Option<(Failing, u16)>,
    seen: std::collections::HashMap<String, usize>,
}

/// A running receiver. Dropping it stops the server.
pub struct TestReceiver {
    addr: SocketAddr,
    script: Arc<Mutex<Script>>,
    received: Arc<Mutex<Vec<Received>>>,
    count: watch::Receiver<usize>,
    task: JoinHandle<()>,
}

impl TestReceiver {
    /// Start a receiver on 127.0.0.1:0 that answers 200 unless scripted.
    pub async fn start() -> Self {
        Self::serve(None).await
    }

    /// The same over TLS: `config` holds the server's certificate, and a
    /// client certificate verifier when the receiver requires one. A
    /// failed handshake records nothing.
    pub async fn start_tls(config: rustls::ServerConfig) -> Self {
        Self::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind test receiver");
        let addr = listener.local_addr().expect("receiver address");
        let script = Arc::new(Mutex::new(Script::default()));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (count_tx, count) = watch::channel(0usize);
        let count_tx = Arc::new(count_tx);
        let (s, r) = (script.clone(), received.clone());
        let task = tokio::spawn(async move {
            let mut accepted = 0u64;
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accepted += 1;
                let (s, r, c, tls) = (s.clone(), r.clone(), count_tx.clone(), tls.clone());
                let connection = accepted;
                tokio::spawn(async move {
                    let Some(tls) = tls else {
                        let on = On {
                            connection,
                            client_certificate: None,
                        };
                        return serve_connection(TokioIo::new(stream), on, s, r, c).await;
                    };
                    let Ok(stream) = tls.accept(stream).await else {
                        return;
                    };
                    let client_certificate = stream
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| Bytes::copy_from_slice(c.as_ref()));
                    let on = On {
                        connection,
                        client_certificate,
                    };
                    serve_connection(TokioIo::new(stream), on, s, r, c).await;
                });
            }
        });
        Self {
            addr,
            script,
            received,
            count,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `https://<host>:<port><path>`, for a receiver started with TLS.
    pub fn https_url(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    /// Queue replies for the next requests, in order.
    pub fn push_replies(&self, replies: impl IntoIterator<Item = Reply>) {
        self.script.lock().unwrap().queue.extend(replies);
    }

    /// Answer the first `k` requests of every notification (by its
    /// `webhook-id` header) with `status`, and later ones as by default:
    /// a receiver that locks or deduplicates and accepts a retry.
    pub fn fail_first(&self, k: usize, status: u16) {
        self.fail(Failing::First(k), status);
    }

    /// Answer the requests `failing` picks with `status`, the others as
    /// by default.
    pub fn fail(&self, failing: Failing, status: u16) {
        self.script.lock().unwrap().failing = Some((failing, status));
    }

    /// The reply for every request once the queue is used up.
    pub fn set_default(&self, reply: Reply) {
        self.script.lock().unwrap().default = Some(reply);
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Wait until at least `n` requests arrived, or panic after `timeout`.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let mut count = self.count.clone();
        let deadline = Instant::now() + timeout;
        // `wait_for` returns a guard on the watch value: turn it into a bool at
        // once, or `handle` (which takes `received`, then the watch's lock)
        // would deadlock with `received()` below.
        let reached = tokio::time::timeout_at(deadline.into(), count.wait_for(|c| *c >= n))
            .await
            .is_ok();
        let got = self.received();
        assert!(
            reached,
            "receiver got {} of {n} requests within {timeout:?}",
            got.len()
        );
        got
    }
}

impl Drop for TestReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a request came from: its connection and that connection's client
/// certificate.
#[derive(Clone)]
struct On {
    connection: u64,
    client_certificate: Option<Bytes>,
}

async fn serve_connection<I>(
    io: TokioIo<I>,
    on: On,
    script: Arc<Mutex<Script>>,
    received: Arc<Mutex<Vec<Received>>>,
    count: Arc<watch::Sender<usize>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        handle(
            req,
            on.clone(),
            script.clone(),
            received.clone(),
            count.clone(),
        )
    });
    let _ = auto::Builder::new(TokioExecutor::new())
        .serve_connection(io, service)
        .await;
}

async fn handle(
    req: Request<Incoming>,
    on: On,
    script: Arc<Mutex<Script>>,
    received: Arc<Mutex<Vec<Received>>>,
    count: Arc<watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, std::io::Error> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    let record = Received {
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body,
        at: SystemTime::now(),
        connection: on.connection,
        client_certificate: on.client_certificate,
    };
    // Choose the reply and record the request under one lock, so the n-th
    // recorded request is the one that got the n-th scripted reply.
    let (reply, len) = {
        let mut s = script.lock().unwrap();
        let reply = match s.queue.pop_front() {
            Some(reply) => reply,
            None => {
                let failing = s.failing.and_then(|(failing, status)| {
                    let id = record.header("webhook-id")?.to_owned();
                    let seen = s.seen.entry(id).or_default();
                    *seen += 1;
                    let fails = match failing {
                        Failing::First(k) => *seen <= k,
                        Failing::Share(p) => rand::random::<f64>() < p,
                    };
                    fails.then(|| Reply::status(status))
                });
                failing
                    .or_else(|| s.default.clone())
                    .unwrap_or_else(Reply::ok)
            }
        };
        let mut r = received.lock().unwrap();
        r.push(record);
        (reply, r.len())
    };
    // Never hold `received` while taking the watch's lock.
    count.send_replace(len);
    match reply {
        Reply::Status { status, delay } => {
            tokio::time::sleep(delay).await;
            Ok(response(status, Vec::new()))
        }
        Reply::WithHeaders { status, headers } => Ok(response(status, headers)),
        // An error from the service makes hyper close the connection unanswered.
        Reply::Drop => Err(std::io::Error::other("scripted drop")),
    }
}

fn response(status: u16, headers: Vec<(String, String)>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for (n, v) in headers {
        if let (Ok(n), Ok(v)) = (n.parse::<hyper::header::HeaderName>(), v.parse()) {
            resp.headers_mut().append(n, v);
        }
    }
    resp
}
