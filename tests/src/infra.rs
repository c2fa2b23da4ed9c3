//! Where the real Kafka broker and CQL node are, and what to do when they
//! are not there: skip with a loud message, or fail under
//! `HERALD_REQUIRE_INFRA=1` (which `scripts/test` and CI set).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// Bootstrap servers of the test broker (`HERALD_TEST_KAFKA`, default
/// `127.0.0.1:9092`), or `None` when it is unreachable and not required.
pub fn kafka_bootstrap(test: &str) -> Option<String> {
    let addr = std::env::var("HERALD_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    reachable_or_skip(test, "Kafka", &addr).then_some(addr)
}

/// Address of the test CQL node (`HERALD_TEST_CQL`, default
/// `127.0.0.1:9042`), or `None` when it is unreachable and not required.
pub fn cql_node(test: &str) -> Option<String> {
    let addr = std::env::var("HERALD_TEST_CQL").unwrap_or_else(|_| "127.0.0.1:9042".into());
    reachable_or_skip(test, "Cassandra/ScyllaDB", &addr).then_some(addr)
}

fn reachable_or_skip(test: &str, what: &str, addr: &str) -> bool {
    let reachable = addr
        .parse::<SocketAddr>()
        .is_ok_and(|sa| TcpStream::connect_timeout(&sa, Duration::from_secs(2)).is_ok());
    if reachable {
        return true;
    }
    let required = std::env::var("HERALD_REQUIRE_INFRA").is_ok_and(|v| v == "1");
    assert!(
        !required,
        "{test}: {what} is not reachable at {addr} and HERALD_REQUIRE_INFRA=1; run `scripts/infra up`"
    );
    // Straight to the process's stderr: libtest captures `eprintln!`, and a
    // skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!! SKIPPED {test}: {what} is not reachable at {addr}\n\
         !!!!!!!! start it with `scripts/infra up`, or run everything with `scripts/test`\n"
    );
    false
}

/// A loopback port that was free a moment ago, for a child process that
/// must be told its address up front. (Another process can take it in
/// between; where a process can report its own address, prefer port 0.)
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("local address")
        .port()
}

/// A name unique to this test run, usable as a Kafka topic, a consumer group
/// or a CQL keyspace: `<prefix>_<pid>_<counter>_<random>`, lowercase,
/// `[a-z0-9_]` only.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let clean: String = prefix
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{clean}_{}_{n}_{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}
