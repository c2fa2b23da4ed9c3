//! The guarded HTTP sender against a real receiver on loopback: outcomes,
//! statuses, timeouts, refused connections, redirects, the SSRF guard, and
//! names looked up through a real DNS server on loopback.

use std::net::Ipv4Addr;
use std::time::Duration;

use bytes::Bytes;
use herald_core::Outcome;
use herald_delivery::{DnsConfig, HttpSender, SenderConfig, SsrfGuard};
use herald_tests::{Reply, StubDns, TestReceiver};

fn sender(guard: SsrfGuard) -> HttpSender {
    HttpSender::new(SenderConfig {
        ssrf: guard,
        ..SenderConfig::default()
    })
}

fn loopback_allowed() -> HttpSender {
    sender(SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap())
}

/// Ample for a loopback answer on a loaded machine.
const TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn outcomes_follow_what_the_receiver_did() {
    let rx = TestReceiver::start().await;
    rx.push_replies([
        Reply::ok(),
        Reply::status(503),
        Reply::WithHeaders {
            status: 302,
            headers: vec![("Location".into(), "http://elsewhere.test/".into())],
        },
        Reply::WithHeaders {
            status: 429,
            headers: vec![("Retry-After".into(), "7".into())],
        },
        Reply::slow(200, Duration::from_secs(5)),
    ]);
    let s = loopback_allowed();
    let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
    let body = Bytes::from_static(br#"{"loan":"L-1"}"#);

    let ok = s
        .send("POST", &rx.url("/hook"), &headers, body.clone(), TIMEOUT)
        .await;
    assert_eq!(
        (ok.outcome, ok.http_status, ok.error.as_deref()),
        (Outcome::Success, Some(200), None)
    );

    let e = s
        .send("POST", &rx.url("/hook"), &headers, body.clone(), TIMEOUT)
        .await;
    assert_eq!((e.outcome, e.http_status), (Outcome::HttpError, Some(503)));
    assert_eq!(e.error.as_deref(), Some("http 503"));

    let r = s
        .send("POST", &rx.url("/hook"), &headers, body.clone(), TIMEOUT)
        .await;
    assert_eq!((r.outcome, r.http_status), (Outcome::HttpError, Some(302)));
    assert!(
        r.error
            .as_deref()
            .unwrap()
            .contains("redirect to http://elsewhere.test/ not followed"),
        "{r:?}"
    );

    let t = s
        .send("PUT", &rx.url("/hook"), &headers, body.clone(), TIMEOUT)
        .await;
    assert_eq!(
        (t.outcome, t.retry_after.as_deref()),
        (Outcome::HttpError, Some("7"))
    );

    let slow = s
        .send(
            "PATCH",
            &rx.url("/hook"),
            &headers,
            body.clone(),
            Duration::from_millis(300),
        )
        .await;
    assert_eq!(slow.outcome, Outcome::Timeout, "{slow:?}");
    assert!(
        slow.duration < Duration::from_secs(5),
        "the attempt ended before the receiver answered: {slow:?}"
    );

    // The receiver saw every request exactly once (no redirect followed), with
    // the body and method we sent.
    let got = rx.wait_for(5, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 5);
    assert_eq!(
        got.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(),
        ["POST", "POST", "POST", "PUT", "PATCH"]
    );
    assert!(got.iter().all(|r| r.body == body && r.path == "/hook"));
    assert!(got[0].header("user-agent").unwrap().starts_with("Herald/"));
}

#[tokio::test]
async fn refused_connections_and_bad_urls_are_classified() {
    let s = loopback_allowed();
    // A port with nothing listening: bind, learn the port, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let c = s
        .send(
            "POST",
            &format!("http://127.0.0.1:{port}/"),
            &[],
            Bytes::new(),
            TIMEOUT,
        )
        .await;
    assert_eq!(c.outcome, Outcome::ConnectionError, "{c:?}");
    assert!(
        c.error.as_deref().unwrap().starts_with("connect failed"),
        "{c:?}"
    );

    for (url, msg) in [
        ("ftp://example.com/x", "scheme must be http or https"),
        ("not a url", "invalid url"),
    ] {
        let r = s.send("POST", url, &[], Bytes::new(), TIMEOUT).await;
        assert_eq!(r.outcome, Outcome::Refused);
        assert!(r.error.as_deref().unwrap().contains(msg), "{r:?}");
    }
    let h = s
        .send(
            "POST",
            "http://127.0.0.1:1/",
            &[("bad header".into(), "x".into())],
            Bytes::new(),
            TIMEOUT,
        )
        .await;
    assert_eq!(
        h.error.as_deref(),
        Some("invalid header name \"bad header\"")
    );
}

#[tokio::test]
async fn ssrf_guard_refuses_internal_addresses_before_connecting() {
    let rx = TestReceiver::start().await;
    let s = sender(SsrfGuard::default());
    for url in [
        rx.url("/by-ip"),
        format!("http://localhost:{}/by-name", rx.addr().port()),
    ] {
        let r = s
            .send("POST", &url, &[], Bytes::from_static(b"{}"), TIMEOUT)
            .await;
        assert_eq!(r.outcome, Outcome::Refused, "{url}: {r:?}");
        let err = r.error.unwrap();
        assert!(
            err.contains("ssrf guard refused") && err.contains("loopback"),
            "{err}"
        );
    }
    // Nothing reached the receiver; an allow-listed sender gets through.
    let ok = loopback_allowed()
        .send("POST", &rx.url("/allowed"), &[], Bytes::new(), TIMEOUT)
        .await;
    assert_eq!(ok.outcome, Outcome::Success);
    let got = rx.received();
    assert_eq!(
        got.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/allowed"]
    );
}

/// A sender that looks names up at `dns` and may reach loopback only.
fn resolving_at(dns: &StubDns) -> HttpSender {
    HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        dns: DnsConfig::Servers(vec![dns.addr()]),
        ..SenderConfig::default()
    })
}

#[tokio::test]
async fn names_resolve_at_the_configured_server_and_every_answer_passes_the_guard() {
    let rx = TestReceiver::start().await;
    let dns = StubDns::start().await;
    dns.answer("hook.herald.test", &[Ipv4Addr::LOCALHOST]);
    // A rebinding answer: one allowed address next to an internal one.
    dns.answer(
        "mixed.herald.test",
        &[Ipv4Addr::LOCALHOST, Ipv4Addr::new(10, 0, 0, 7)],
    );
    let s = resolving_at(&dns);
    let port = rx.addr().port();
    let send = |host: &str, path: &str| {
        let url = format!("http://{host}:{port}{path}");
        let s = s.clone();
        async move {
            s.send("POST", &url, &[], Bytes::from_static(b"{}"), TIMEOUT)
                .await
        }
    };

    let ok = send("hook.herald.test", "/named").await;
    assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");

    let mixed = send("mixed.herald.test", "/mixed").await;
    assert_eq!(mixed.outcome, Outcome::Refused, "{mixed:?}");
    let err = mixed.error.unwrap();
    assert!(
        err.contains("ssrf guard refused") && err.contains("10.0.0.7"),
        "{err}"
    );

    let unknown = send("nowhere.herald.test", "/unknown").await;
    assert_eq!(unknown.outcome, Outcome::ConnectionError, "{unknown:?}");
    assert!(
        unknown.error.as_deref().unwrap().contains("dns: "),
        "{unknown:?}"
    );

    // The lookups went to the server; only the allowed answer was dialled.
    let asked: Vec<String> = dns.queries().into_iter().map(|q| q.name).collect();
    for name in [
        "hook.herald.test",
        "mixed.herald.test",
        "nowhere.herald.test",
    ] {
        assert!(
            asked.iter().any(|a| a == name),
            "{name} not asked: {asked:?}"
        );
    }
    let got = rx.received();
    assert_eq!(
        got.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["/named"]
    );
}

/// A name server that never answers costs an attempt its timeout and
/// nothing more. The lookup is a future the deadline drops, not a C library
/// call on a blocking thread: here the runtime's only blocking thread is
/// taken for the whole test, and names still resolve, before and after a
/// lookup that hung.
#[test]
fn a_silent_name_server_costs_the_attempt_timeout_and_holds_no_thread() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (taken, is_taken) = tokio::sync::oneshot::channel();
        let blocker = tokio::task::spawn_blocking(move || {
            let _ = taken.send(());
            let _ = held.recv();
        });
        is_taken.await.unwrap();

        let rx = TestReceiver::start().await;
        let dns = StubDns::start().await;
        let s = resolving_at(&dns);
        let url = |path: &str| format!("http://hook.herald.test:{}{path}", rx.addr().port());
        let short = Duration::from_millis(300);

        dns.set_silent(true);
        let hung = s
            .send("POST", &url("/hung"), &[], Bytes::new(), short)
            .await;
        assert_eq!(hung.outcome, Outcome::Timeout, "{hung:?}");
        assert_eq!(
            hung.error.as_deref(),
            Some("no complete response within 300ms")
        );
        let asked = tokio::time::timeout(TIMEOUT, dns.wait_for_queries(1))
            .await
            .expect("the lookup reached the name server");
        assert_eq!(asked[0].name, "hook.herald.test");

        dns.answer("hook.herald.test", &[Ipv4Addr::LOCALHOST]);
        dns.set_silent(false);
        let ok = s
            .send("POST", &url("/answered"), &[], Bytes::new(), TIMEOUT)
            .await;
        assert_eq!(ok.outcome, Outcome::Success, "{ok:?}");
        let got = rx.received();
        assert_eq!(
            got.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
            ["/answered"]
        );

        release.send(()).unwrap();
        blocker.await.unwrap();
    });
}
