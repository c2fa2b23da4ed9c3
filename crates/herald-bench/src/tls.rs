//! The `tls` scenario: Herald's sender to a loopback TLS receiver whose
//! certificate a throw-away private CA signed, as a webhook with
//! `roots = "custom"` sends, with and without a client certificate the
//! receiver requires (mutual TLS). Each kind runs twice: over pooled
//! keep-alive connections (the steady-state rate), and with the receiver
//! answering `Connection: close`, so every request is a new TCP connection
//! and a full handshake (the handshake rate). HTTP/1.1 throughout, like
//! the baseline, so the ratios isolate TLS.

use std::sync::Arc;

use herald_core::SecretValue;
use herald_core::TlsMaterial;
use herald_core::webhook::Roots;
use herald_tests::pki::TestCa;

use crate::measure::receiver_with;
use crate::{Opts, load};

pub struct Figures {
    pub kind: &'static str,
    pub rate: f64,
}

pub async fn run(opts: &Opts) -> anyhow::Result<Vec<Figures>> {
    let ca = TestCa::new("herald-bench CA");
    let server = ca.server(&["127.0.0.1"]);
    let client = ca.client("herald-bench");
    let mut out = Vec::new();
    for (mutual, close, kind) in [
        (false, false, "pooled"),
        (true, false, "pooled, mutual"),
        (false, true, "new connection each"),
        (true, true, "new connection each, mutual"),
    ] {
        let mut config = TestCa::server_config(&server, mutual.then_some(&ca));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rx = receiver_with(false, Some(acceptor), close).await?;
        let material = TlsMaterial {
            roots: Roots::Custom,
            ca_pem: Some(SecretValue::new(ca.pem())),
            client: mutual.then(|| {
                (
                    SecretValue::new(client.cert_pem.clone()),
                    SecretValue::new(client.key_pem.clone()),
                )
            }),
            server_name: None,
        };
        let url = format!("https://{}/hook", rx.addr);
        let rate = load(&rx, &url, Some(material), opts).await?;
        out.push(Figures { kind, rate });
    }
    Ok(out)
}
