//! Name resolution for the sender: an in-process, asynchronous resolver
//! (hickory) whose lookups end when the attempt's deadline drops them, and
//! whose answers pass the SSRF guard before the connector may dial them.
//!
//! The system resolver (`getaddrinfo`) cannot be cancelled: a lookup that
//! hangs keeps a blocking thread until the C library gives up, whatever the
//! attempt's timeout says. Here a lookup is a future like the rest of the
//! attempt, so the one deadline of [`crate::HttpSender::send`] covers
//! resolving, connecting and the response head, and nothing outlives it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::{ResolverBuilder, TokioResolver};
use hyper_util::client::legacy::connect::dns::Name;
use tower_service::Service;
use tracing::warn;

use crate::ssrf::SsrfGuard;

/// Where names are looked up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum DnsConfig {
    /// `/etc/resolv.conf` (name servers, search domains, `ndots`, timeouts)
    /// and `/etc/hosts`, as the C library would use them.
    #[default]
    System,
    /// These name servers (UDP, then TCP), with `/etc/hosts` first.
    Servers(Vec<SocketAddr>),
}

/// Names cached by their TTL: a webhook's host is looked up once per TTL,
/// not once per attempt. Every cached answer is checked again on each use.
const CACHE_ENTRIES: u64 = 4096;

/// Resolves names and returns only addresses the SSRF guard accepts, so the
/// connector dials exactly what was checked.
#[derive(Clone)]
pub(crate) struct GuardedResolver {
    /// A resolver that could not be built fails every lookup with why.
    resolver: Result<Arc<TokioResolver>, Arc<str>>,
    guard: Arc<SsrfGuard>,
}

impl GuardedResolver {
    pub(crate) fn new(config: &DnsConfig, guard: Arc<SsrfGuard>) -> Self {
        let resolver = builder(config).build().map(Arc::new).map_err(|e| {
            warn!(error = %e, "cannot build the DNS resolver; every name lookup fails");
            Arc::from(e.to_string())
        });
        Self { resolver, guard }
    }
}

fn builder(config: &DnsConfig) -> ResolverBuilder<TokioRuntimeProvider> {
    let servers = match config {
        DnsConfig::System => match TokioResolver::builder_tokio() {
            Ok(builder) => return with_options(builder),
            Err(e) => {
                // Without a resolv.conf only /etc/hosts and IP literals
                // resolve; every other name fails its attempt, recorded.
                warn!(error = %e, "cannot read the system DNS configuration; only /etc/hosts names resolve");
                Vec::new()
            }
        },
        DnsConfig::Servers(servers) => servers
            .iter()
            .map(|addr| {
                let mut server = NameServerConfig::udp_and_tcp(addr.ip());
                for connection in &mut server.connections {
                    connection.port = addr.port();
                }
                server
            })
            .collect(),
    };
    with_options(TokioResolver::builder_with_config(
        ResolverConfig::from_name_servers(servers),
        TokioRuntimeProvider::default(),
    ))
}

fn with_options(
    mut builder: ResolverBuilder<TokioRuntimeProvider>,
) -> ResolverBuilder<TokioRuntimeProvider> {
    let options = builder.options_mut();
    // Both families, as getaddrinfo answers; the connector races them.
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    options.use_hosts_file = ResolveHosts::Always;
    options.cache_size = CACHE_ENTRIES;
    builder
}

impl Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, io::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let resolver = this
                .resolver
                .map_err(|e| io::Error::other(format!("dns: {e}")))?;
            let answer = resolver
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| io::Error::other(format!("dns: {e}")))?;
            let addrs: Vec<SocketAddr> = answer.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            // One forbidden answer refuses the name: DNS rebinding tricks mix
            // a public and an internal address.
            for addr in &addrs {
                this.guard.check(addr.ip()).map_err(io::Error::other)?;
            }
            Ok(addrs.into_iter())
        })
    }
}
