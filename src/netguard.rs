//! Which addresses a `uri` resource may be fetched from. The server fetches on the task's
//! behalf, from the host's network, so without this a task could read the host's loopback
//! services, a cloud metadata endpoint (169.254.169.254) or the private network (SSRF).
//! Loopback, link-local, private, shared (CGNAT), unspecified, multicast and broadcast
//! addresses are refused unless the operator allow-lists a host or network
//! (`--allow-fetch`). Checked three times: the URL's host when the spec is parsed, every
//! resolved address (and so every redirect's) when it is fetched, and every redirect's
//! literal address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// The operator's allow-list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FetchGuard {
    hosts: Vec<String>,
    nets: Vec<(IpAddr, u8)>,
}

impl FetchGuard {
    /// Entries are host names (`files.internal`), addresses (`127.0.0.1`) or networks
    /// (`10.0.0.0/8`, `fd00::/8`).
    pub fn new(entries: &[String]) -> Result<FetchGuard, String> {
        let mut g = FetchGuard::default();
        for e in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Some((addr, bits)) = e.split_once('/') {
                let ip: IpAddr = addr
                    .parse()
                    .map_err(|_| format!("`{e}` is not a network"))?;
                let max = if ip.is_ipv4() { 32 } else { 128 };
                let bits: u8 = bits
                    .parse()
                    .ok()
                    .filter(|b| *b <= max)
                    .ok_or_else(|| format!("`{e}` has a bad prefix length"))?;
                g.nets.push((ip, bits));
            } else if let Ok(ip) = e.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
                g.nets.push((ip, if ip.is_ipv4() { 32 } else { 128 }));
            } else {
                g.hosts.push(e.to_ascii_lowercase());
            }
        }
        Ok(g)
    }

    fn host_allowed(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.hosts.contains(&host)
    }

    fn ip_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.nets
            .iter()
            .any(|(net, bits)| in_net(ip, canonical(*net), *bits))
    }

    /// Whether a URL host (a name or a literal address, IPv6 with or without brackets) may
    /// be fetched, judged without DNS. Names other than `localhost` pass here and are judged
    /// by their addresses when resolved.
    pub fn check_host(&self, host: &str) -> Result<(), String> {
        if self.host_allowed(host) {
            return Ok(());
        }
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return self.check_ip(ip);
        }
        let lower = host.trim_end_matches('.').to_ascii_lowercase();
        if lower == "localhost" || lower.ends_with(".localhost") {
            return Err(format!("`{host}` is this machine"));
        }
        Ok(())
    }

    pub fn check_ip(&self, ip: IpAddr) -> Result<(), String> {
        if forbidden(ip) && !self.ip_allowed(ip) {
            return Err(format!("{ip} is a loopback, link-local or private address"));
        }
        Ok(())
    }

    /// Checks a name's resolved addresses: all must be allowed (the name itself may be).
    pub fn check_resolved(&self, host: &str, addrs: &[SocketAddr]) -> Result<(), String> {
        if self.host_allowed(host) {
            return Ok(());
        }
        for a in addrs {
            self.check_ip(a.ip())
                .map_err(|e| format!("`{host}` resolves to {e}"))?;
        }
        Ok(())
    }
}

/// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(bits))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(bits))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Addresses that are not the public internet.
pub fn forbidden(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || o[0] == 0
        // Shared address space (carrier-grade NAT), 100.64.0.0/10.
        || (o[0] == 100 && (o[1] & 0xc0) == 64)
        // IETF protocol assignments, 192.0.0.0/24; benchmarking, 198.18.0.0/15; reserved 240/4.
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
        || o[0] >= 240
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        // Unique local fc00::/7 and link-local fe80::/10.
        || (s[0] & 0xfe00) == 0xfc00
        || (s[0] & 0xffc0) == 0xfe80
        // NAT64 well-known prefix 64:ff9b::/96 carries IPv4 addresses.
        || (s[0] == 0x64 && s[1] == 0xff9b && forbidden_v4(Ipv4Addr::new(
            (s[6] >> 8) as u8,
            s[6] as u8,
            (s[7] >> 8) as u8,
            s[7] as u8,
        )))
}

/// A reqwest resolver that refuses names resolving to forbidden addresses, so neither the
/// first request nor a redirect can reach them by name (DNS rebinding included: the
/// addresses checked are the ones connected to).
pub struct GuardedResolver(pub Arc<FetchGuard>);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        Box::pin(async move {
            let host = name.as_str().to_string();
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            guard
                .check_resolved(&host, &addrs)
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let iter: reqwest::dns::Addrs = Box::new(addrs.into_iter());
            Ok(iter)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        for bad in [
            "127.0.0.1",
            "127.9.9.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
        ] {
            assert!(forbidden(ip(bad)), "{bad}");
        }
        for good in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(!forbidden(ip(good)), "{good}");
        }
    }

    #[test]
    fn hosts_are_checked_without_dns() {
        let g = FetchGuard::default();
        assert!(g.check_host("localhost").is_err());
        assert!(g.check_host("api.localhost").is_err());
        assert!(g.check_host("127.0.0.1").is_err());
        assert!(g.check_host("[::1]").is_err());
        assert!(g.check_host("example.com").is_ok());
        assert!(g.check_host("1.1.1.1").is_ok());
    }

    #[test]
    fn the_allow_list_opens_hosts_and_networks() {
        let g = FetchGuard::new(&[
            "127.0.0.1".into(),
            "10.0.0.0/8".into(),
            "Files.Internal".into(),
        ]);
        let g = g.unwrap_or_default();
        assert!(g.check_host("127.0.0.1").is_ok());
        assert!(g.check_host("127.0.0.2").is_err());
        assert!(g.check_ip(ip("10.200.1.1")).is_ok());
        assert!(g.check_ip(ip("::ffff:10.200.1.1")).is_ok());
        assert!(g.check_ip(ip("192.168.0.1")).is_err());
        let addrs = [SocketAddr::new(ip("192.168.0.9"), 80)];
        assert!(g.check_resolved("files.internal", &addrs).is_ok());
        assert!(g.check_resolved("other.internal", &addrs).is_err());
        assert!(FetchGuard::new(&["10.0.0.0/33".into()]).is_err());
        assert!(FetchGuard::new(&["nope/8".into()]).is_err());
    }
}
