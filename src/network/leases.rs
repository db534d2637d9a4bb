//! dnsmasq's lease file: `<expiry> <mac> <ip> <hostname|*> <client-id|*>` per IPv4 lease;
//! after a `duid <server-duid>` line, IPv6 leases as `<expiry> <iaid> <ip> <hostname|*> <duid>`.

use std::net::IpAddr;

use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    /// Seconds since the epoch; 0 = infinite.
    pub expiry: u64,
    pub mac: Option<String>,
    pub ip: IpAddr,
    pub prefix: u8,
    pub hostname: Option<String>,
    pub client_id: Option<String>,
    pub ipv6: bool,
}

/// Parse a lease file; `prefix_of` gives the prefix of the subnet an address belongs to.
pub fn parse(text: &str, prefix_of: impl Fn(IpAddr) -> u8) -> Vec<Lease> {
    let opt = |s: &str| (s != "*").then(|| s.to_string());
    let mut out = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.first() == Some(&"duid") || f.len() < 4 {
            continue;
        }
        let (Ok(expiry), Ok(ip)) = (f[0].parse::<u64>(), f[2].parse::<IpAddr>()) else { continue };
        let ipv6 = ip.is_ipv6();
        out.push(Lease {
            expiry,
            mac: (!ipv6).then(|| f[1].to_lowercase()),
            ip,
            prefix: prefix_of(ip),
            hostname: opt(f[3]),
            client_id: f.get(4).and_then(|s| opt(s)),
            ipv6,
        });
    }
    out
}

/// `YYYY-MM-DD HH:MM:SS` in UTC, as virsh prints expiry times.
pub fn format_time(epoch: u64) -> String {
    if epoch == 0 {
        return "never".into();
    }
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_v4_and_v6_leases() {
        let text = "1763835600 52:54:00:aa:bb:cc 192.168.122.10 vm1 01:52:54:00:aa:bb:cc\n\
                    1763835700 52:54:00:aa:bb:cd 192.168.122.11 * *\n\
                    duid 00:01:00:01:2c:aa:bb:cc\n\
                    1763835800 1234 2001:db8::10 vm1 00:04:aa\n";
        let l = parse(text, |ip| if ip.is_ipv4() { 24 } else { 64 });
        assert_eq!(l.len(), 3);
        assert_eq!(
            (l[0].mac.as_deref(), l[0].hostname.as_deref(), l[0].prefix),
            (Some("52:54:00:aa:bb:cc"), Some("vm1"), 24)
        );
        assert_eq!((l[1].hostname.clone(), l[1].client_id.clone()), (None, None));
        assert!(l[2].ipv6 && l[2].mac.is_none() && l[2].prefix == 64);
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(format_time(0), "never");
        assert_eq!(format_time(1_763_835_600), "2025-11-22 18:20:00");
        assert_eq!(format_time(951_782_400), "2000-02-29 00:00:00");
    }
}
