//! A scriptable DNS server on loopback UDP: it answers A queries from a
//! table, answers nothing at all while silent, and reports every query it
//! saw with the port it came from, so a test can talk back to that port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::Notify;

/// One query the server received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub name: String,
    pub qtype: u16,
    pub from: SocketAddr,
    /// The whole datagram, to build a late answer from.
    pub packet: Vec<u8>,
}

#[derive(Default)]
struct State {
    silent: bool,
    table: HashMap<String, Vec<Ipv4Addr>>,
    queries: Vec<Query>,
}

/// The server; it stops when dropped.
pub struct StubDns {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    seen: Arc<Notify>,
    task: tokio::task::JoinHandle<()>,
}

const A: u16 = 1;
const TTL_SECS: u32 = 60;

impl StubDns {
    pub async fn start() -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = socket.local_addr().expect("local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let seen = Arc::new(Notify::new());
        let task = tokio::spawn(serve(socket, state.clone(), seen.clone()));
        Self {
            addr,
            state,
            seen,
            task,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer `name` (no trailing dot) with these IPv4 addresses.
    pub fn answer(&self, name: &str, ips: &[Ipv4Addr]) {
        let mut s = self.state.lock().unwrap();
        s.table.insert(name.to_ascii_lowercase(), ips.to_vec());
    }

    /// While silent, queries are recorded and never answered.
    pub fn set_silent(&self, silent: bool) {
        self.state.lock().unwrap().silent = silent;
    }

    pub fn queries(&self) -> Vec<Query> {
        self.state.lock().unwrap().queries.clone()
    }

    /// Wait until at least `n` queries arrived (callers bound the wait).
    pub async fn wait_for_queries(&self, n: usize) -> Vec<Query> {
        loop {
            let notified = self.seen.notified();
            let queries = self.queries();
            if queries.len() >= n {
                return queries;
            }
            notified.await;
        }
    }
}

impl Drop for StubDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(socket: UdpSocket, state: Arc<Mutex<State>>, seen: Arc<Notify>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let packet = buf[..n].to_vec();
        let Some((name, qtype, _)) = question(&packet) else {
            continue;
        };
        let reply = {
            let mut s = state.lock().unwrap();
            s.queries.push(Query {
                name: name.clone(),
                qtype,
                from,
                packet: packet.clone(),
            });
            if s.silent {
                None
            } else {
                let ips = s.table.get(&name).cloned();
                Some(answer(&packet, qtype, ips.as_deref()))
            }
        };
        seen.notify_waiters();
        if let Some(reply) = reply.flatten() {
            let _ = socket.send_to(&reply, from).await;
        }
    }
}

/// The first question: its name in lower case, its type, and where it ends.
fn question(packet: &[u8]) -> Option<(String, u16, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = usize::from(*packet.get(at)?);
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(packet.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    let qtype = u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]);
    Some((labels.join("."), qtype, at + 4))
}

/// The answer to `query`: its A records from the table, no records for
/// another type of a known name, NXDOMAIN for an unknown name.
pub fn answer(query: &[u8], qtype: u16, ips: Option<&[Ipv4Addr]>) -> Option<Vec<u8>> {
    let (_, _, end) = question(query)?;
    let records: &[Ipv4Addr] = match (qtype, ips) {
        (A, Some(ips)) => ips,
        _ => &[],
    };
    let mut out = Vec::with_capacity(end + records.len() * 16);
    out.extend_from_slice(&query[..2]); // id
    let rcode = if ips.is_some() { 0 } else { 3 };
    out.extend_from_slice(&[0x81, 0x80 | rcode]); // response, RD, RA
    out.extend_from_slice(&1u16.to_be_bytes()); // questions
    out.extend_from_slice(&(records.len() as u16).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]); // authority, additional
    out.extend_from_slice(&query[12..end]);
    for ip in records {
        out.extend_from_slice(&[0xc0, 0x0c]); // the question's name
        out.extend_from_slice(&A.to_be_bytes());
        out.extend_from_slice(&1u16.to_be_bytes()); // IN
        out.extend_from_slice(&TTL_SECS.to_be_bytes());
        out.extend_from_slice(&4u16.to_be_bytes());
        out.extend_from_slice(&ip.octets());
    }
    Some(out)
}
