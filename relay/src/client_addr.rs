//! Whose address a request comes from. The TCP peer, unless the peer is a proxy the operator
//! trusts: then `X-Forwarded-For`, read from the right, past the trusted proxies it lists. A
//! forwarding header from any other peer is ignored, since anyone can write one.

use axum::http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// A `--trusted-proxies` entry: an address or a network (`10.0.0.0/8`).
pub fn parse_proxy(text: &str) -> Result<IpNet, String> {
    let text = text.trim();
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{text:?} is neither an IP address nor a network such as 10.0.0.0/8"))
}

/// The client's address for a request the relay received from `peer`.
pub fn client_ip(trusted: &[IpNet], peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return peer;
    }
    // Each proxy appends the address it received from; the rightmost one not trusted is the
    // client. An entry that is not an address ends the walk at the last proxy read.
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .collect::<Vec<_>>();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        let Some(ip) = parse_hop(hop) else { break };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, possibly with a port (`1.2.3.4:5678`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    let ip = hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))?;
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().unwrap());
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn forwarding_headers_count_only_from_trusted_proxies() {
        let headers = forwarded(&["198.51.100.9"]);
        assert_eq!(client_ip(&[], ip("127.0.0.1"), &headers), ip("127.0.0.1"), "nothing trusted by default");
        let trusted = [parse_proxy("10.0.0.0/8").unwrap(), parse_proxy("127.0.0.1").unwrap()];
        assert_eq!(client_ip(&trusted, ip("192.0.2.1"), &headers), ip("192.0.2.1"), "an untrusted peer's header");
        assert_eq!(client_ip(&trusted, ip("127.0.0.1"), &headers), ip("198.51.100.9"));
        assert_eq!(client_ip(&trusted, ip("127.0.0.1"), &HeaderMap::new()), ip("127.0.0.1"), "no header: the peer");
    }

    #[test]
    fn the_client_is_the_rightmost_address_no_trusted_proxy_wrote() {
        let trusted = [parse_proxy("10.0.0.0/8").unwrap()];
        // The client wrote the first entry itself: only what trusted proxies appended counts.
        let headers = forwarded(&["6.6.6.6, 203.0.113.5", "10.1.1.1"]);
        assert_eq!(client_ip(&trusted, ip("10.0.0.2"), &headers), ip("203.0.113.5"));
        let ported = forwarded(&["203.0.113.5:4711, [2001:db8::1]:443"]);
        assert_eq!(client_ip(&trusted, ip("10.0.0.2"), &ported), ip("2001:db8::1"));
        let junk = forwarded(&["203.0.113.5, unknown, 10.9.9.9"]);
        assert_eq!(client_ip(&trusted, ip("10.0.0.2"), &junk), ip("10.9.9.9"), "stops at what it cannot read");
        let mapped = forwarded(&["::ffff:203.0.113.5"]);
        assert_eq!(client_ip(&trusted, ip("::ffff:10.0.0.2"), &mapped), ip("203.0.113.5"));
    }

    #[test]
    fn proxies_are_addresses_or_networks() {
        assert_eq!(parse_proxy(" 10.0.0.0/8 ").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_proxy("::1").unwrap().to_string(), "::1/128");
        assert!(parse_proxy("proxy.local").unwrap_err().contains("neither an IP address"));
    }
}
