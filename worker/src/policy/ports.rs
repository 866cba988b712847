//! Which host ports and host addresses a task's port bindings may take. By default a binding
//! names no address (all interfaces) and an unprivileged port: a task cannot take a
//! privileged port (a system service's), nor a port on one address of the host, such as the
//! loopback where the control plane listens (`127.0.0.1:4222`, nats-server's, which a task
//! could hold while it restarts).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use cube_shared::validate::parse_host_binding;

use super::not_allowed;

/// Host ports from `first` to `last`, both included.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

/// What a worker allows unless told otherwise: every unprivileged port.
pub const UNPRIVILEGED: PortRange = PortRange {
    first: 1024,
    last: 65535,
};

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

impl FromStr for PortRange {
    type Err = String;

    /// `8080` or `30000-32767`.
    fn from_str(s: &str) -> Result<PortRange, String> {
        let port = |p: &str| match p.trim().parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!(
                "`{s}` is not a port (1-65535) or a range of them (e.g. 30000-32767)"
            )),
        };
        let (first, last) = match s.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => (port(s)?, port(s)?),
        };
        if first > last {
            return Err(format!("`{s}`: the range ends before it starts"));
        }
        Ok(PortRange { first, last })
    }
}

/// Why a binding of host `host` (`8080` or `127.0.0.1:8080`, for `container`) is refused,
/// naming the flag that would allow it; `None` if `ports` and `ips` allow it. A binding to all
/// interfaces (no address, `0.0.0.0` or `::`) needs no address allowed.
pub(super) fn refuses(
    container: &str,
    host: &str,
    ports: &[PortRange],
    ips: &[IpAddr],
) -> Option<String> {
    let (ip, port) = match parse_host_binding(host) {
        Ok(binding) => binding,
        Err(e) => return Some(format!("the port binding for {container}: {e}")),
    };
    if let Some(ip) = ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
        if !ip.is_unspecified() && !ips.contains(&ip) {
            return Some(not_allowed(
                &format!("binding {container} to the host address {ip} ({host})"),
                &format!("--allow-host-ips {ip}"),
            ));
        }
    }
    if !ports.iter().any(|r| r.contains(port)) {
        let allowed: Vec<String> = ports.iter().map(PortRange::to_string).collect();
        let allowed = if allowed.is_empty() {
            "none".to_string()
        } else {
            allowed.join(",")
        };
        return Some(not_allowed(
            &format!("binding {container} to host port {port} (allowed: {allowed})"),
            &format!("--allow-host-ports to include {port}"),
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(s: &str) -> PortRange {
        s.parse().unwrap()
    }

    #[test]
    fn ranges_parse_and_print() {
        assert_eq!(
            range("80"),
            PortRange {
                first: 80,
                last: 80
            }
        );
        assert_eq!(range("1024-65535"), UNPRIVILEGED);
        assert_eq!(range(" 30000 - 32767 ").to_string(), "30000-32767");
        assert_eq!(range("443").to_string(), "443");
        for bad in ["", "0", "65536", "80-", "-80", "90-80", "http", "1-2-3"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn by_default_unprivileged_ports_on_all_interfaces() {
        let (ports, ips) = ([UNPRIVILEGED], []);
        for host in ["8080", "1024", "65535", "0.0.0.0:8080", ":::8080"] {
            assert_eq!(refuses("80/tcp", host, &ports, &ips), None, "{host}");
        }
        let why = refuses("80/tcp", "80", &ports, &ips).unwrap();
        assert_eq!(
            why,
            "binding 80/tcp to host port 80 (allowed: 1024-65535) is not allowed on this \
             worker (it would need --allow-host-ports to include 80)"
        );
        assert!(refuses("22/tcp", "1023", &ports, &ips).is_some());
        let why = refuses("4222/tcp", "127.0.0.1:4222", &ports, &ips).unwrap();
        assert!(why.contains("host address 127.0.0.1"), "{why}");
        assert!(
            why.ends_with("(it would need --allow-host-ips 127.0.0.1)"),
            "{why}"
        );
        assert!(refuses("80/tcp", "127.0.0.1:99999", &ports, &ips).is_some());
        assert!(refuses("80/tcp", "::1:8080", &ports, &ips).is_some());
        assert!(refuses("80/tcp", "10.1.2.3:8080", &ports, &ips).is_some());
    }

    #[test]
    fn operators_allow_addresses_and_ranges() {
        let ports = [range("80"), range("30000-32767")];
        let ips: [IpAddr; 1] = ["127.0.0.1".parse().unwrap()];
        assert_eq!(refuses("80/tcp", "127.0.0.1:80", &ports, &ips), None);
        assert_eq!(refuses("80/tcp", "31000", &ports, &ips), None);
        assert!(refuses("80/tcp", "10.1.2.3:80", &ports, &ips).is_some());
        // Narrower than the default: an unprivileged port outside the ranges is refused.
        let why = refuses("80/tcp", "8080", &ports, &ips).unwrap();
        assert!(why.contains("allowed: 80,30000-32767"), "{why}");
        // An allowed address does not widen the ports.
        assert!(refuses("80/tcp", "127.0.0.1:8080", &ports, &ips).is_some());
        assert!(refuses("80/tcp", "8080", &[], &ips)
            .unwrap()
            .contains("none"));
    }
}
