//! The SSRF guard: which addresses a webhook may reach. On by default:
//! loopback, private, link-local (cloud metadata included), shared,
//! multicast and reserved ranges are refused unless allow-listed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Decides whether Herald may connect to an address.
#[derive(Debug, Clone, Default)]
pub struct SsrfGuard {
    /// Ranges allowed even though they are internal, e.g. `127.0.0.0/8` for
    /// a receiver on the same host.
    allow: Vec<IpNet>,
    /// Turn the guard off entirely. Only for tests and demos.
    disabled: bool,
}

/// Why an address was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "ssrf guard refused {addr}: {reason} address (allow-list it in delivery.ssrf.allow to permit)"
)]
pub struct SsrfRefused {
    pub addr: IpAddr,
    pub reason: &'static str,
}

impl SsrfGuard {
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self {
            allow,
            disabled: false,
        }
    }

    /// A guard that allows everything.
    pub fn disabled() -> Self {
        Self {
            allow: Vec::new(),
            disabled: true,
        }
    }

    /// Parse allow-list entries such as `127.0.0.0/8` or `10.1.2.3`.
    pub fn from_allow_list<S: AsRef<str>>(entries: &[S]) -> Result<Self, String> {
        let allow = entries
            .iter()
            .map(|e| {
                let e = e.as_ref().trim();
                e.parse::<IpNet>()
                    .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        format!(
                            "invalid ssrf allow-list entry {e:?}: expected an address or CIDR range"
                        )
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self::new(allow))
    }

    pub fn check(&self, addr: IpAddr) -> Result<(), SsrfRefused> {
        if self.disabled || self.allow.iter().any(|net| net.contains(&addr)) {
            return Ok(());
        }
        match forbidden_reason(addr) {
            Some(reason) => Err(SsrfRefused { addr, reason }),
            None => Ok(()),
        }
    }
}

fn forbidden_reason(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => v4_reason(v4),
        IpAddr::V6(v6) => {
            // An IPv4 address smuggled inside IPv6 is judged as IPv4.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_reason(v4);
            }
            v6_reason(v6)
        }
    }
}

fn v4_reason(ip: Ipv4Addr) -> Option<&'static str> {
    let o = ip.octets();
    Some(match o {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() || o[0] == 0 => "unspecified",
        _ if ip.is_private() => "private",
        // 169.254.0.0/16 holds the cloud metadata endpoint 169.254.169.254.
        _ if ip.is_link_local() => "link-local",
        [100, b, ..] if (64..128).contains(&b) => "shared (carrier-grade NAT)",
        [192, 0, 0, _] => "IETF protocol assignment",
        [192, 0, 2, _] | [198, 51, 100, _] | [203, 0, 113, _] => "documentation (TEST-NET)",
        [192, 88, 99, _] => "6to4 relay",
        [198, b, ..] if b == 18 || b == 19 => "benchmarking",
        _ if ip.is_multicast() => "multicast",
        _ if ip.is_broadcast() || o[0] >= 240 => "reserved",
        _ => return None,
    })
}

fn v6_reason(ip: Ipv6Addr) -> Option<&'static str> {
    let seg = ip.segments();
    Some(match seg {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_unspecified() => "unspecified",
        _ if ip.is_multicast() => "multicast",
        [s, ..] if s & 0xfe00 == 0xfc00 => "unique local (private)",
        [s, ..] if s & 0xffc0 == 0xfe80 => "link-local",
        [s, ..] if s & 0xffc0 == 0xfec0 => "site-local (deprecated)",
        // Translation and tunnelling prefixes can reach any IPv4 address,
        // internal ones included: NAT64 (64:ff9b::/96 and the local-use
        // 64:ff9b:1::/48), 6to4 (2002::/16), Teredo (2001::/32) and
        // IPv4-translated addresses (::ffff:0:0:0/96).
        [0x64, 0xff9b, ..] => "NAT64",
        [0x2002, ..] => "6to4",
        [0x2001, 0, ..] => "Teredo",
        [0, 0, 0, 0, 0xffff, 0, _, _] => "IPv4-translated",
        [0x2001, 0xdb8, ..] => "documentation",
        [0x100, 0, 0, 0, ..] => "discard-only",
        // IPv4-compatible (deprecated) addresses.
        [0, 0, 0, 0, 0, 0, _, _] => "IPv4-compatible",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_ranges_are_refused_by_default() {
        let guard = SsrfGuard::default();
        for (addr, reason) in [
            ("127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast"),
            ("255.255.255.255", "reserved"),
            ("::1", "loopback"),
            ("fd00:ec2::254", "unique local (private)"),
            ("fe80::1", "link-local"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("64:ff9b::a00:1", "NAT64"),
            ("64:ff9b:1::a00:1", "NAT64"),
            ("192.0.2.10", "documentation (TEST-NET)"),
            ("198.51.100.7", "documentation (TEST-NET)"),
            ("203.0.113.1", "documentation (TEST-NET)"),
            ("192.88.99.1", "6to4 relay"),
            ("2002:a00:1::1", "6to4"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("::ffff:0:a00:1", "IPv4-translated"),
            ("fec0::1", "site-local (deprecated)"),
            ("2001:db8::1", "documentation"),
            ("100::1", "discard-only"),
        ] {
            let err = guard.check(addr.parse().unwrap()).unwrap_err();
            assert_eq!(err.reason, reason, "{addr}");
            assert!(
                err.to_string().contains(addr.trim_start_matches("::ffff:")),
                "{err}"
            );
        }
    }

    #[test]
    fn public_addresses_pass_and_allow_list_opens_ranges() {
        let guard = SsrfGuard::default();
        for addr in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "2001:4860:4860::8888",
        ] {
            assert!(guard.check(addr.parse().unwrap()).is_ok(), "{addr}");
        }
        let guard = SsrfGuard::from_allow_list(&["127.0.0.0/8", "10.9.9.9"]).unwrap();
        assert!(guard.check("127.0.0.2".parse().unwrap()).is_ok());
        assert!(guard.check("10.9.9.9".parse().unwrap()).is_ok());
        assert!(guard.check("10.9.9.10".parse().unwrap()).is_err());
        assert!(
            SsrfGuard::disabled()
                .check("127.0.0.1".parse().unwrap())
                .is_ok()
        );
        let err = SsrfGuard::from_allow_list(&["localhost"]).unwrap_err();
        assert!(err.contains("\"localhost\""), "{err}");
    }
}
