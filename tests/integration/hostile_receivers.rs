//! Hostile receivers against the real sender: a 1 GiB response body, a
//! header flood, a never-ending chunked body, a trickling body, a server that
//! accepts and never reads. Each attempt must end with a recorded outcome and
//! a clear error, keep only a bounded excerpt, and leave the process's memory
//! bounded.
//!
//! The servers are raw `TcpListener`s (the hyper-based `TestReceiver` cannot
//! misbehave at the byte level). They generate their hostile output from one
//! small static buffer, so the only memory that could grow is the sender's.
//!
//! Decision, documented in docs/architecture.md: the status line decides the
//! outcome. A 2xx whose body is huge, endless or slow is a success (the
//! receiver accepted the notification); only the excerpt is kept and the rest
//! is never read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use herald_core::model::{Method, NotificationId, RenderedRequest};
use herald_core::{Decision, Outcome, SecretRef, SecretSource, Tiers, Trigger, Webhooks};
use herald_delivery::{AttemptPlan, Deliverer, HttpSender, SendResult, SenderConfig, SsrfGuard};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const GIB: u64 = 1 << 30;
const EXCERPT: usize = 4096;
/// Generous bound on how much the process may grow while one hostile
/// exchange runs (other tests of this binary run concurrently).
const MEMORY_BUDGET_KIB: u64 = 64 * 1024;

fn sender() -> HttpSender {
    HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        max_response_excerpt: EXCERPT,
        ..SenderConfig::default()
    })
}

/// A field of /proc/self/status in KiB (VmRSS, VmHWM).
fn proc_status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/self/status"))
}

/// What a hostile server did on its one connection.
#[derive(Debug, Default)]
struct ServerLog {
    /// Bytes of hostile output written before the peer went away.
    written: AtomicU64,
    /// Whether the server ran out of things to write (the peer read it all).
    completed: AtomicBool,
}

/// Accept one connection, read the request head and its `Content-Length`
/// body (unless `read_request` is false), then run `behave` on the socket.
async fn hostile<F, Fut>(read_request: bool, behave: F) -> (String, Arc<ServerLog>, JoinHandle<()>)
where
    F: FnOnce(TcpStream, Arc<ServerLog>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let log = Arc::new(ServerLog::default());
    let task_log = log.clone();
    let task = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        if read_request {
            read_request_fully(&mut socket).await;
        }
        behave(socket, task_log).await;
    });
    (url, log, task)
}

async fn read_request_fully(socket: &mut TcpStream) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed before sending its request");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = socket.read(&mut chunk).await.unwrap();
        assert!(n > 0, "client closed mid-request");
        have += n;
    }
}

/// Write `head`, then `total` bytes of filler (or forever), counting what the
/// peer accepted before it went away.
async fn stream_filler(
    mut socket: TcpStream,
    log: Arc<ServerLog>,
    head: String,
    total: Option<u64>,
) {
    static FILLER: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let left = total.map_or(FILLER.len() as u64, |t| {
            t - log.written.load(Ordering::Relaxed)
        });
        if left == 0 {
            log.completed.store(true, Ordering::Relaxed);
            return;
        }
        let n = left.min(FILLER.len() as u64) as usize;
        match socket.write_all(&FILLER[..n]).await {
            Ok(()) => log.written.fetch_add(n as u64, Ordering::Relaxed),
            Err(_) => return,
        };
    }
}

/// Endless chunked body: 4 KiB chunks, never the terminating zero chunk.
async fn stream_chunks(mut socket: TcpStream, log: Arc<ServerLog>) {
    static CHUNK: [u8; 4096] = [b'y'; 4096];
    let head = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-type: text/plain\r\n\r\n";
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    loop {
        let framed = async {
            socket.write_all(b"1000\r\n").await?;
            socket.write_all(&CHUNK).await?;
            socket.write_all(b"\r\n").await
        };
        if framed.await.is_err() {
            return;
        }
        log.written.fetch_add(CHUNK.len() as u64, Ordering::Relaxed);
    }
}

async fn send(s: &HttpSender, url: &str, body: Bytes, timeout: Duration) -> SendResult {
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    s.send("POST", url, &headers, body, timeout).await
}

/// `{}` through a fresh sender.
async fn send_once(url: &str, timeout: Duration) -> SendResult {
    send(&sender(), url, Bytes::from_static(b"{}"), timeout).await
}

/// Writes `head` at once, then the body one `z` every 50 ms: `bytes` of
/// them, or forever.
async fn trickle_body(mut socket: TcpStream, head: &'static str, bytes: Option<usize>) {
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let mut sent = 0;
    while bytes.is_none_or(|b| sent < b) {
        if socket.write_all(b"z").await.is_err() {
            return;
        }
        sent += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `exchange` and asserts the process grew by less than the budget.
async fn within_memory_budget<T>(what: &str, exchange: impl Future<Output = T>) -> T {
    let before = proc_status_kib("VmRSS");
    let out = exchange.await;
    let peak = proc_status_kib("VmHWM");
    let after = proc_status_kib("VmRSS");
    let grew = after.saturating_sub(before);
    assert!(
        grew < MEMORY_BUDGET_KIB,
        "{what}: resident memory grew by {grew} KiB (before {before} KiB, after {after} KiB, peak {peak} KiB)"
    );
    // The peak is process-wide and monotonic: it must not have jumped by the
    // size of a hostile body either.
    assert!(
        peak < before + MEMORY_BUDGET_KIB + 256 * 1024,
        "{what}: peak resident memory {peak} KiB (before {before} KiB)"
    );
    out
}

async fn server_done(task: JoinHandle<()>) {
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("hostile server finishes once the sender gives up")
        .unwrap();
}

fn assert_excerpt_bounded(r: &SendResult, filler: char) {
    let excerpt = r.response_excerpt.as_deref().expect("an excerpt is kept");
    assert!(
        !excerpt.is_empty() && excerpt.len() <= EXCERPT,
        "{}",
        excerpt.len()
    );
    assert!(
        excerpt.chars().all(|c| c == filler),
        "excerpt is the body's start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_body_after_200_is_a_success_and_is_never_read() {
    let (url, log, task) = hostile(true, |socket, log| {
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {GIB}\r\n\r\n");
        stream_filler(socket, log, head, Some(GIB))
    })
    .await;
    let s = sender();
    let r = within_memory_budget(
        "1 GiB body after 200",
        send(&s, &url, Bytes::from_static(b"{}"), Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        (r.outcome, r.http_status, r.error.as_deref()),
        (Outcome::Success, Some(200), None),
        "{r:?}"
    );
    assert_excerpt_bounded(&r, 'x');
    server_done(task).await;
    // The sender hung up instead of reading the body: the server could not
    // write anywhere near 1 GiB.
    assert!(
        !log.completed.load(Ordering::Relaxed),
        "the sender read the whole 1 GiB body"
    );
    assert!(log.written.load(Ordering::Relaxed) < GIB / 4, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_gib_body_after_500_is_a_failure_with_a_bounded_excerpt() {
    let (url, log, task) = hostile(true, |socket, log| {
        let head = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {GIB}\r\n\r\n");
        stream_filler(socket, log, head, Some(GIB))
    })
    .await;
    let s = sender();
    let r = within_memory_budget(
        "1 GiB body after 500",
        send(&s, &url, Bytes::from_static(b"{}"), Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::HttpError, Some(500)),
        "{r:?}"
    );
    assert_eq!(r.error.as_deref(), Some("http 500"));
    assert_excerpt_bounded(&r, 'x');
    server_done(task).await;
    assert!(!log.completed.load(Ordering::Relaxed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_chunked_body_is_cut_at_the_excerpt() {
    let (url, log, task) = hostile(true, stream_chunks).await;
    let s = sender();
    let r = within_memory_budget(
        "endless chunked body",
        send(&s, &url, Bytes::from_static(b"{}"), Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::Success, Some(200)),
        "{r:?}"
    );
    assert_excerpt_bounded(&r, 'y');
    server_done(task).await;
    assert!(log.written.load(Ordering::Relaxed) < GIB / 4, "{log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_flood_is_a_connection_failure_with_a_clear_error() {
    // Endless headers: the head never ends.
    let (url, _log, task) = hostile(true, |mut socket, log| async move {
        if socket.write_all(b"HTTP/1.1 200 OK\r\n").await.is_err() {
            return;
        }
        let mut i = 0u64;
        loop {
            let line = format!("x-flood-{i}: {}\r\n", "h".repeat(100));
            if socket.write_all(line.as_bytes()).await.is_err() {
                return;
            }
            log.written.fetch_add(line.len() as u64, Ordering::Relaxed);
            i += 1;
        }
    })
    .await;
    let s = sender();
    let r = within_memory_budget(
        "endless header flood",
        send(&s, &url, Bytes::from_static(b"{}"), Duration::from_secs(10)),
    )
    .await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::ConnectionError, None),
        "{r:?}"
    );
    let error = r.error.as_deref().unwrap();
    assert!(error.starts_with("connection failed: "), "{error}");
    assert_eq!(error, "connection failed: message head is too large");
    server_done(task).await;

    // Many small headers in a complete head: over hyper's header count limit,
    // which it reports as a head that is too large.
    let (url, _log, task) = hostile(true, |mut socket, _log| async move {
        let mut head = String::from("HTTP/1.1 200 OK\r\n");
        for i in 0..500 {
            head.push_str(&format!("x-h{i}: v\r\n"));
        }
        head.push_str("content-length: 0\r\n\r\n");
        let _ = socket.write_all(head.as_bytes()).await;
        let _ = socket.read(&mut [0u8; 1]).await;
    })
    .await;
    let r = send(&s, &url, Bytes::from_static(b"{}"), Duration::from_secs(10)).await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::ConnectionError, None),
        "{r:?}"
    );
    assert_eq!(
        r.error.as_deref(),
        Some("connection failed: message head is too large")
    );
    server_done(task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_reads_times_out() {
    let timeout = Duration::from_millis(500);
    let s = sender();
    // A small body fits in the socket buffers; an 8 MiB one blocks the write.
    for size in [2usize, 8 << 20] {
        let (url, _log, task) = hostile(false, move |socket, _log| async move {
            // Hold the connection open, read nothing, until the peer leaves.
            let mut socket = socket;
            tokio::time::sleep(Duration::from_secs(30)).await;
            let _ = socket.write_all(b"").await;
        })
        .await;
        let r = within_memory_budget(
            "server that never reads",
            send(&s, &url, Bytes::from(vec![b'{'; size]), timeout),
        )
        .await;
        assert_eq!(
            (r.outcome, r.http_status),
            (Outcome::Timeout, None),
            "{size}: {r:?}"
        );
        assert_eq!(
            r.error.as_deref(),
            Some("no complete response within 500ms")
        );
        assert!(r.response_excerpt.is_none());
        task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickling_status_line_times_out() {
    let (url, _log, task) = hostile(true, |mut socket, _log| async move {
        for b in b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n" {
            if socket.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    let r = send_once(&url, Duration::from_millis(500)).await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::Timeout, None),
        "{r:?}"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_2xx_with_a_trickling_body_keeps_its_status() {
    // The head arrives at once; the body then trickles past the timeout. The
    // receiver has accepted the notification: the status decides, and the
    // excerpt holds what arrived before the deadline.
    let (url, _log, task) = hostile(true, |socket, _log| {
        let head = "HTTP/1.1 202 Accepted\r\ncontent-length: 1000\r\n\r\n";
        trickle_body(socket, head, Some(1000))
    })
    .await;
    let r = send_once(&url, Duration::from_secs(3)).await;
    assert_eq!(
        (r.outcome, r.http_status, r.error.as_deref()),
        (Outcome::Success, Some(202), None),
        "{r:?}"
    );
    let excerpt = r.response_excerpt.as_deref().expect("partial excerpt");
    assert!(
        !excerpt.is_empty() && excerpt.len() < 1000 && excerpt.chars().all(|c| c == 'z'),
        "{excerpt}"
    );
    task.abort();

    // The same trickle after a 503 is a failure that keeps its status too.
    let (url, _log, task) = hostile(true, |socket, _log| {
        let head = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 1000\r\n\r\n";
        trickle_body(socket, head, None)
    })
    .await;
    let r = send_once(&url, Duration::from_secs(3)).await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::HttpError, Some(503)),
        "{r:?}"
    );
    assert_eq!(r.error.as_deref(), Some("http 503"));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_after_the_request_is_a_connection_failure() {
    let (url, _log, task) = hostile(true, |socket, _log| async move {
        // SO_LINGER 0: close with RST instead of FIN (a zero linger never
        // blocks the drop, which is what the deprecation warns about).
        #[allow(deprecated)]
        socket.set_linger(Some(Duration::ZERO)).unwrap();
        drop(socket);
    })
    .await;
    let r = send_once(&url, Duration::from_secs(5)).await;
    assert_eq!(
        (r.outcome, r.http_status),
        (Outcome::ConnectionError, None),
        "{r:?}"
    );
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .starts_with("connection failed: "),
        "{r:?}"
    );
    server_done(task).await;
}

/// Through the `Deliverer`: what would be recorded for the 1 GiB body after a
/// 500 is a bounded attempt with a clear error and a scheduled retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_recorded_attempt_is_bounded() {
    let (url, _log, task) = hostile(true, |socket, log| {
        let head = format!("HTTP/1.1 500 Internal Server Error\r\ncontent-length: {GIB}\r\n\r\n");
        stream_filler(socket, log, head, Some(GIB))
    })
    .await;
    let toml = format!(
        r#"
[[webhooks]]
id = "hostile"
events = ["bank.*"]
url = "{url}"
body = '{{"ok": true}}'
timeout = "10s"
"#
    );
    let webhooks = Arc::new(Webhooks::from_toml(&toml).unwrap());
    let secrets: Arc<dyn SecretSource + Send + Sync> =
        Arc::new(HashMap::<SecretRef, String>::new());
    let deliverer = Deliverer::new(sender(), webhooks, secrets, Tiers::default());
    let request = RenderedRequest {
        method: Method::Post,
        url,
        headers: vec![],
        content_type: "application/json".into(),
        body: r#"{"ok": true}"#.into(),
    };
    let plan = AttemptPlan {
        notification_id: NotificationId::derive("test", "e-1", "hostile"),
        webhook_id: "hostile",
        attempt_no: 1,
        step: 1,
        trigger: Trigger::Auto,
        first_failure_at: None,
        request: &request,
    };
    let started = Utc::now();
    let result = within_memory_budget("deliverer, 1 GiB body", deliverer.attempt(&plan)).await;
    let a = &result.attempt;
    assert_eq!((a.outcome, a.http_status), (Outcome::HttpError, Some(500)));
    assert_eq!(a.error.as_deref(), Some("http 500"));
    assert!(a.response_excerpt.as_ref().unwrap().len() <= EXCERPT);
    assert!(a.started_at >= started);
    assert!(
        matches!(result.decision, Decision::Retry { .. }),
        "{:?}",
        result.decision
    );
    server_done(task).await;
}
