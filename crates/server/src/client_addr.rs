//! The client's address: the TCP peer, or, behind trusted proxies, the
//! address they name in `X-Forwarded-For`.
//!
//! Anyone can send an `X-Forwarded-For` header, so it is believed only when
//! the connection comes from a proxy the operator listed in
//! `TRUSTED_PROXIES` (addresses or CIDR blocks). Even then only the part
//! the trusted proxies appended is believed: each proxy appends the address
//! it received the request from, so the list is read from the right,
//! skipping trusted proxies, and the first address that is not one of them
//! is the client. Whatever lies to its left was written by the client (or
//! by proxies nobody vouches for) and is ignored. An entry that is not an
//! address stops the walk at the last address that was one.
//!
//! Used by the pixel's hashed ids ([`crate::pixel_id`]), and meant for any
//! per-client rule that follows (a rate limit), so they all agree on who
//! the client is. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, what a
//! dual-stack socket reports for an IPv4 peer) are treated as the IPv4
//! address they carry, both as peers and in the list.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

/// The header proxies append the client's address to.
pub const FORWARDED_FOR: &str = "x-forwarded-for";

/// Who the client is, given the TCP peer and the request's headers.
#[derive(Clone, Debug, Default)]
pub struct ClientAddrSettings {
    trusted: Vec<IpNet>,
}

impl ClientAddrSettings {
    /// Settings trusting `proxies`.
    pub fn new(proxies: Vec<IpNet>) -> Self {
        ClientAddrSettings { trusted: proxies }
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn is_trusted(&self, addr: IpAddr) -> bool {
        let addr = addr.to_canonical();
        self.trusted.iter().any(|net| net.contains(&addr))
    }

    /// The client's address for a request from `peer` with `headers`.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = peer.to_canonical();
        if !self.is_trusted(peer) {
            return peer;
        }
        // Several headers are one list, in order (RFC 9110, 5.3); the
        // nearest hop is the rightmost entry of the last header.
        let entries = headers
            .get_all(FORWARDED_FOR)
            .iter()
            .rev()
            .flat_map(|value| match value.to_str() {
                Ok(text) => text.rsplit(',').map(Some).collect::<Vec<_>>(),
                Err(_) => vec![None],
            });
        let mut client = peer;
        for entry in entries {
            let Some(addr) = entry.and_then(parse_forwarded_addr) else {
                break;
            };
            client = addr;
            if !self.is_trusted(addr) {
                break;
            }
        }
        client
    }
}

/// One `X-Forwarded-For` entry: an address, possibly with a port
/// (`203.0.113.7:4711`, `[2001:db8::1]:4711`), as some proxies write them.
fn parse_forwarded_addr(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    if let Ok(addr) = entry.parse::<IpAddr>() {
        return Some(addr.to_canonical());
    }
    if let Some(rest) = entry.strip_prefix('[') {
        let (addr, _) = rest.split_once(']')?;
        return addr.parse::<IpAddr>().ok().map(|a| a.to_canonical());
    }
    let (addr, port) = entry.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    addr.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An address (a network of one) or a CIDR block; host bits are cleared.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_net;
    use axum::http::HeaderValue;

    fn settings(list: &[&str]) -> ClientAddrSettings {
        ClientAddrSettings::new(list.iter().map(|s| parse_net(s).unwrap()).collect())
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_forwards() {
        let s = settings(&["10.0.0.0/8"]);
        let spoofed = xff(&["198.51.100.1, 10.0.0.1"]);
        assert_eq!(s.client_ip(ip("203.0.113.9"), &spoofed), ip("203.0.113.9"));
        // No proxies configured: the header never counts.
        let none = settings(&[]);
        assert_eq!(none.client_ip(ip("10.0.0.1"), &spoofed), ip("10.0.0.1"));
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_entry_is_the_client() {
        let s = settings(&["10.0.0.0/8", "2001:db8:ffff::/48"]);
        // The client wrote the first entry itself; the proxy appended the
        // address it saw, which is the one to believe.
        let h = xff(&["192.0.2.66, 203.0.113.7"]);
        assert_eq!(s.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        // Two trusted hops, across two headers.
        let h = xff(&["192.0.2.66, 203.0.113.7", "10.9.9.9"]);
        assert_eq!(s.client_ip(ip("10.1.2.3"), &h), ip("203.0.113.7"));
        // IPv6 proxies and clients.
        let h = xff(&["2001:db8::1, 2001:db8:ffff::5"]);
        assert_eq!(s.client_ip(ip("2001:db8:ffff::9"), &h), ip("2001:db8::1"));
        // A trusted peer without the header is the client itself.
        assert_eq!(
            s.client_ip(ip("10.1.2.3"), &HeaderMap::new()),
            ip("10.1.2.3")
        );
        // Every entry trusted: the leftmost one is as far as we can see.
        let h = xff(&["10.7.7.7, 10.8.8.8"]);
        assert_eq!(s.client_ip(ip("10.1.2.3"), &h), ip("10.7.7.7"));
    }

    #[test]
    fn ports_brackets_and_mapped_addresses_are_understood() {
        let s = settings(&["127.0.0.1", "::1"]);
        let cases = [
            ("203.0.113.7:4711", "203.0.113.7"),
            ("[2001:db8::1]:4711", "2001:db8::1"),
            ("[2001:db8::2]", "2001:db8::2"),
            (" ::ffff:198.51.100.4 ", "198.51.100.4"),
        ];
        for (entry, client) in cases {
            assert_eq!(
                s.client_ip(ip("::1"), &xff(&[entry])),
                ip(client),
                "{entry}"
            );
        }
        // A dual-stack socket's view of a trusted IPv4 proxy.
        let h = xff(&["203.0.113.7"]);
        assert_eq!(s.client_ip(ip("::ffff:127.0.0.1"), &h), ip("203.0.113.7"));
    }

    #[test]
    fn garbage_stops_the_walk_at_the_last_address() {
        let s = settings(&["10.0.0.0/8"]);
        let h = xff(&["203.0.113.7, unknown, 10.2.2.2"]);
        assert_eq!(s.client_ip(ip("10.1.1.1"), &h), ip("10.2.2.2"));
        let h = xff(&["", "not an address"]);
        assert_eq!(s.client_ip(ip("10.1.1.1"), &h), ip("10.1.1.1"));
        let mut h = HeaderMap::new();
        h.append(
            FORWARDED_FOR,
            HeaderValue::from_bytes(b"203.0.113.7, \xff").unwrap(),
        );
        assert_eq!(s.client_ip(ip("10.1.1.1"), &h), ip("10.1.1.1"));
    }

    #[test]
    fn the_setting_takes_addresses_and_cidr_blocks() {
        assert_eq!(parse_net("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_net("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(parse_net("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            parse_net("::ffff:192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
        assert!(parse_net("10.0.0.0/33").is_err());
        assert!(parse_net("localhost").unwrap_err().contains("CIDR"));
        let s = settings(&["192.0.2.0/24"]);
        assert!(s.is_trusted(ip("192.0.2.200")));
        assert!(!s.is_trusted(ip("192.0.3.1")));
    }
}
