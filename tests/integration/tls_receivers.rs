//! Webhooks to real TLS receivers on loopback: public roots versus a private
//! CA, mutual TLS with the right, a missing, a foreign and an expired client
//! certificate, the server name, a certificate replaced on disk, and
//! connections never shared across TLS identities. Each failure is recorded
//! as a `tls_error` with its own reason; the receiver gets nothing then.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_core::model::{Method, RenderedRequest};
use herald_core::{Attempt, NotificationId, Outcome, SecretSource, Tiers, Trigger, Webhooks};
use herald_delivery::{
    AttemptPlan, Deliverer, EnvAndFileSecrets, HttpSender, SenderConfig, SsrfGuard,
};
use herald_tests::pki::{Issued, TestCa};
use herald_tests::{TestReceiver, unique_name};

/// A directory of PEM files the webhook definitions refer to.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique_name("herald-tls"));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    /// Write a client certificate and key as `<name>.crt` / `<name>.key`.
    fn client(&self, name: &str, issued: &Issued) {
        self.write(&format!("{name}.crt"), &issued.cert_pem);
        self.write(&format!("{name}.key"), &issued.key_pem);
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `[secrets]` naming every PEM file in `files` by its stem and extension
/// (`ca.pem` is `ca_pem`), then the webhooks.
fn deliverer(files: &Files, webhooks: &str) -> Deliverer {
    let sender = HttpSender::new(SenderConfig {
        ssrf: SsrfGuard::from_allow_list(&["127.0.0.0/8"]).unwrap(),
        ..SenderConfig::default()
    });
    let secrets: Arc<dyn SecretSource + Send + Sync> = Arc::new(EnvAndFileSecrets);
    Deliverer::new(
        sender,
        definitions(files, webhooks),
        secrets,
        Tiers::default(),
    )
}

fn definitions(files: &Files, webhooks: &str) -> Arc<Webhooks> {
    let mut toml = String::from("[secrets]\n");
    for entry in std::fs::read_dir(&files.0).unwrap() {
        let path = entry.unwrap().path();
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace('.', "_");
        toml.push_str(&format!(
            "{name} = {{ file = {:?} }}\n",
            path.display().to_string()
        ));
    }
    toml.push_str(webhooks);
    Arc::new(Webhooks::from_toml(&toml).unwrap_or_else(|e| panic!("{e}\n{toml}")))
}

fn webhook(id: &str, url: &str, tls: &str) -> String {
    format!(
        "\n[[webhooks]]\nid = \"{id}\"\nevents = [\"bank.*\"]\nurl = \"{url}\"\nbody = '{{}}'\ntimeout = \"10s\"\n{tls}\n"
    )
}

async fn attempt(d: &Deliverer, webhook_id: &str, n: u32) -> Attempt {
    let url = d.webhooks().get(webhook_id).unwrap().url.clone();
    let request = RenderedRequest {
        method: Method::Post,
        url,
        headers: vec![],
        content_type: "application/json".into(),
        body: format!(r#"{{"n": {n}}}"#),
    };
    let plan = AttemptPlan {
        notification_id: NotificationId::derive("tls-test", &n.to_string(), webhook_id),
        webhook_id,
        attempt_no: 1,
        step: 1,
        trigger: Trigger::Auto,
        first_failure_at: None,
        request: &request,
    };
    d.attempt(&plan).await.attempt
}

/// The attempt failed the handshake for `reason`, and says so first.
fn assert_tls_error(a: &Attempt, reason: &str) {
    assert_eq!(a.outcome, Outcome::TlsError, "{a:?}");
    let error = a.error.as_deref().unwrap();
    assert!(error.starts_with(&format!("tls {reason}: ")), "{error}");
}

const WAIT: Duration = Duration::from_secs(10);

/// `[webhooks.tls]` trusting only the CA in `ca.pem`.
const CUSTOM_ROOTS: &str = "[webhooks.tls]\nroots = \"custom\"\nca = \"ca_pem\"";

/// [`CUSTOM_ROOTS`] with the client certificate written by
/// [`Files::client`] under `name`.
fn mutual(name: &str) -> String {
    format!("{CUSTOM_ROOTS}\nclient_cert = \"{name}_crt\"\nclient_key = \"{name}_key\"")
}

/// A TLS receiver that requires client certificates signed by a fresh CA,
/// and a directory holding that CA as `ca.pem`.
async fn mutual_receiver() -> (TestCa, TestReceiver, Files) {
    let ca = TestCa::new("Bank Private CA");
    let rx =
        TestReceiver::start_tls(TestCa::server_config(&ca.server(&["127.0.0.1"]), Some(&ca))).await;
    let files = Files::new();
    files.write("ca.pem", &ca.pem());
    (ca, rx, files)
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_where_the_webhook_names_it() {
    let ca = TestCa::new("Bank Private CA");
    let rx = TestReceiver::start_tls(TestCa::server_config(&ca.server(&["127.0.0.1"]), None)).await;
    let files = Files::new();
    files.write("ca.pem", &ca.pem());
    let url = rx.https_url("127.0.0.1", "/hook");
    let d = deliverer(
        &files,
        &[
            webhook("public", &url, ""),
            webhook("custom", &url, CUSTOM_ROOTS),
            webhook(
                "both",
                &url,
                "[webhooks.tls]\nroots = \"both\"\nca = \"ca_pem\"",
            ),
        ]
        .concat(),
    );

    assert_tls_error(&attempt(&d, "public", 1).await, "unknown_ca");
    assert_eq!(attempt(&d, "custom", 2).await.outcome, Outcome::Success);
    assert_eq!(attempt(&d, "both", 3).await.outcome, Outcome::Success);
    let got = rx.wait_for(2, WAIT).await;
    let bodies: Vec<_> = got.iter().map(|r| r.body.clone()).collect();
    assert_eq!(bodies, [&br#"{"n": 2}"#[..], br#"{"n": 3}"#]);
}

#[tokio::test]
async fn the_server_name_is_verified_and_can_be_set() {
    let ca = TestCa::new("Bank Private CA");
    let server = ca.server(&["receiver.bank.test"]);
    let rx = TestReceiver::start_tls(TestCa::server_config(&server, None)).await;
    let files = Files::new();
    files.write("ca.pem", &ca.pem());
    let url = rx.https_url("127.0.0.1", "/hook");
    let tls = CUSTOM_ROOTS;
    let d = deliverer(
        &files,
        &[
            webhook("by-ip", &url, tls),
            webhook(
                "named",
                &url,
                &format!("{tls}\nserver_name = \"receiver.bank.test\""),
            ),
        ]
        .concat(),
    );
    assert_tls_error(&attempt(&d, "by-ip", 1).await, "name_mismatch");
    assert_eq!(attempt(&d, "named", 2).await.outcome, Outcome::Success);
    assert_eq!(rx.wait_for(1, WAIT).await.len(), 1);
}

#[tokio::test]
async fn mutual_tls_delivers_with_the_right_certificate_and_names_every_refusal() {
    let (ca, rx, files) = mutual_receiver().await;
    let other = TestCa::new("Someone Else's CA");
    let herald = ca.client("herald");
    files.client("herald", &herald);
    files.client("foreign", &other.client("herald"));
    files.client("expired", &ca.expired_client("herald"));
    let url = rx.https_url("127.0.0.1", "/hook");
    let tls = |client: &str| match client {
        "" => CUSTOM_ROOTS.to_owned(),
        c => mutual(c),
    };
    let d = deliverer(
        &files,
        &[
            webhook("right", &url, &tls("herald")),
            webhook("missing", &url, &tls("")),
            webhook("foreign", &url, &tls("foreign")),
            webhook("expired", &url, &tls("expired")),
        ]
        .concat(),
    );

    let right = attempt(&d, "right", 1).await;
    assert_eq!(right.outcome, Outcome::Success, "{right:?}");
    assert_tls_error(
        &attempt(&d, "missing", 2).await,
        "client_certificate_required",
    );
    assert_tls_error(
        &attempt(&d, "foreign", 3).await,
        "client_certificate_refused",
    );
    assert_tls_error(
        &attempt(&d, "expired", 4).await,
        "client_certificate_expired",
    );

    // Only the right certificate got through, and it was the one presented.
    let got = rx.wait_for(1, WAIT).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].body.as_ref(), br#"{"n": 1}"#);
    assert_eq!(got[0].client_certificate.as_deref(), Some(&herald.der[..]));
    // No error text carries key material.
    let key_body: String = herald
        .key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for id in ["missing", "foreign", "expired"] {
        let a = attempt(&d, id, 9).await;
        let error = a.error.unwrap();
        assert!(
            !error.contains("PRIVATE KEY") && !error.contains(&key_body[..16]),
            "{error}"
        );
    }
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_is_used_by_the_next_attempt() {
    let (ca, rx, files) = mutual_receiver().await;
    let (old, new) = (ca.client("herald-2026"), ca.client("herald-2027"));
    files.client("herald", &old);
    let url = rx.https_url("127.0.0.1", "/hook");
    let d = deliverer(&files, &webhook("rotated", &url, &mutual("herald")));
    assert_eq!(attempt(&d, "rotated", 1).await.outcome, Outcome::Success);
    files.client("herald", &new);
    assert_eq!(attempt(&d, "rotated", 2).await.outcome, Outcome::Success);
    let got = rx.wait_for(2, WAIT).await;
    let presented: Vec<_> = got.iter().map(|r| r.client_certificate.clone()).collect();
    assert_eq!(
        presented,
        [Some(old.der.clone().into()), Some(new.der.clone().into())]
    );
}

#[tokio::test]
async fn two_identities_to_one_host_never_share_a_connection() {
    let (ca, rx, files) = mutual_receiver().await;
    let (a, b) = (ca.client("team-a"), ca.client("team-b"));
    files.client("a", &a);
    files.client("b", &b);
    let url = rx.https_url("127.0.0.1", "/hook");
    let tls = mutual;
    let d = deliverer(
        &files,
        &[
            webhook("team-a", &url, &tls("a")),
            webhook("team-b", &url, &tls("b")),
        ]
        .concat(),
    );
    // Alternate, one at a time: each identity's idle connection is free for
    // its next request, and the other identity's is there too.
    for n in 0..10 {
        let id = if n % 2 == 0 { "team-a" } else { "team-b" };
        assert_eq!(attempt(&d, id, n).await.outcome, Outcome::Success);
    }
    let got = rx.wait_for(10, WAIT).await;
    let mut by_connection = std::collections::HashMap::new();
    for (n, r) in got.iter().enumerate() {
        let want = if n % 2 == 0 { &a.der } else { &b.der };
        assert_eq!(
            r.client_certificate.as_deref(),
            Some(&want[..]),
            "request {n}"
        );
        let cert = by_connection
            .entry(r.connection)
            .or_insert_with(|| r.client_certificate.clone());
        assert_eq!(
            *cert, r.client_certificate,
            "connection {} mixed identities",
            r.connection
        );
    }
    // Connections were reused within an identity: the test saw sharing
    // where it is allowed.
    assert!(
        by_connection.len() < got.len(),
        "{} connections",
        by_connection.len()
    );
}

#[test]
fn days_left_on_a_client_certificate_are_a_metric_read_at_each_scrape() {
    let ca = TestCa::new("Bank Private CA");
    let files = Files::new();
    files.write("ca.pem", &ca.pem());
    let in_days = |days: i64| {
        let d = chrono::Utc::now().date_naive() + chrono::Duration::days(days);
        use chrono::Datelike;
        (d.year(), d.month() as u8, d.day() as u8)
    };
    files.client("ledger", &ca.client_until("herald", in_days(100)));
    let tls = &mutual("ledger");
    let webhooks = definitions(
        &files,
        &[
            webhook("ledger", "https://ledger.bank.test/", tls),
            webhook("plain", "https://plain.bank.test/", ""),
        ]
        .concat(),
    );
    let metrics = herald_delivery::Metrics::new();
    metrics.watch_client_certificates(webhooks.clone(), Arc::new(EnvAndFileSecrets));
    let days_left = |metrics: &herald_delivery::Metrics| -> Vec<(String, f64)> {
        metrics
            .render()
            .lines()
            .filter_map(|l| {
                l.strip_prefix("herald_delivery_client_certificate_days_left{webhook=\"")
            })
            .map(|l| {
                let (webhook, value) = l.split_once("\"} ").unwrap();
                (webhook.to_owned(), value.parse().unwrap())
            })
            .collect()
    };
    let got = days_left(&metrics);
    assert_eq!(
        got.len(),
        1,
        "only the webhook with a client certificate: {got:?}"
    );
    assert_eq!(got[0].0, "ledger");
    assert!((98.0..=100.0).contains(&got[0].1), "{got:?}");

    // Renewed on disk (here: replaced by one that expired): the next scrape
    // says so, without a restart.
    files.client("ledger", &ca.expired_client("herald"));
    let got = days_left(&metrics);
    assert!(got[0].1 < -300.0, "{got:?}");
    // Unreadable: no sample rather than a stale one.
    std::fs::remove_file(files.0.join("ledger.crt")).unwrap();
    assert!(days_left(&metrics).is_empty());
}
