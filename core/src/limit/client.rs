//! Who a caller without an identity is: the client address Envoy saw or a trusted proxy
//! forwarded, and the network it counts as.

/// The client address: the connection's (`source.address` without the port), or, when
/// the policy trusts `n` proxies in front of Envoy, the `x-forwarded-for` entry the first
/// of them saw (the `n`-th from the right). Falls back to the connection's address when
/// the header has fewer entries.
pub fn client_address(source: &[u8], forwarded_for: Option<&[u8]>, trusted_proxies: u32) -> String {
    let text = |b: &[u8]| String::from_utf8_lossy(b).trim().to_string();
    if trusted_proxies > 0
        && let Some(xff) = forwarded_for
    {
        let hops: Vec<&[u8]> = xff.split(|b| *b == b',').collect();
        let n = usize::try_from(trusted_proxies).unwrap_or(usize::MAX);
        if let Some(entry) = hops.len().checked_sub(n).and_then(|i| hops.get(i)) {
            let ip = text(entry);
            if !ip.is_empty() {
                // Some proxies write the peer's port too: a port is not part of who calls.
                return without_port(ip);
            }
        }
    }
    without_port(text(source))
}
/// `[v6]:port` or `v4:port` without the port; anything else as it is.
fn without_port(s: String) -> String {
    if let Some(rest) = s.strip_prefix('[')
        && let Some((ip, _)) = rest.split_once(']')
    {
        return ip.to_string();
    }
    match s.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            ip.to_string()
        }
        _ => s,
    }
}
/// The network a client address counts as: an IPv4 address as its `/ipv4_prefix` (32:
/// itself), an IPv6 one as its `/ipv6_prefix` (64 by default: every address a subscriber
/// can pick from its network is one caller), an IPv4-mapped IPv6 address as IPv4. Text
/// that is no address (a proxy's odd `x-forwarded-for` entry) is kept as it is.
pub fn client_network(address: String, ipv4_prefix: u8, ipv6_prefix: u8) -> String {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    // The common case costs no parsing: an IPv4 address (no `:`) counted as itself.
    if ipv4_prefix >= 32 && !address.contains(':') {
        return address;
    }
    let v4 = |a: Ipv4Addr| {
        let bits = u32::from(ipv4_prefix.min(32));
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        let net = Ipv4Addr::from(u32::from(a) & mask);
        if bits == 32 {
            net.to_string()
        } else {
            format!("{net}/{bits}")
        }
    };
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(a)) => v4(a),
        Ok(IpAddr::V6(a)) => match a.to_ipv4_mapped() {
            Some(mapped) => v4(mapped),
            None => {
                let bits = u32::from(ipv6_prefix.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                let net = Ipv6Addr::from(u128::from(a) & mask);
                format!("{net}/{bits}")
            }
        },
        Err(_) => address,
    }
}
