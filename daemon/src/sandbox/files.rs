//! The files a pod's containers share: `/etc/resolv.conf` from the CRI DNSConfig and
//! `/etc/hosts` with the pod's hostname. Values come from the pod spec, so nothing that could
//! break a line (or the file format) is let through.

use crid_proto::cri::DnsConfig;

/// Why a DNS setting was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilesError {
    #[error("invalid DNS {field} {value:?}")]
    BadDns { field: &'static str, value: String },
    #[error("invalid hostname {0:?}")]
    BadHostname(String),
}

/// Most search domains kept (glibc reads 6; kubelet allows 32 since 1.28).
const MAX_SEARCH: usize = 32;

fn clean<'a>(field: &'static str, value: &'a str) -> Result<&'a str, FilesError> {
    let bad = value.is_empty()
        || value.len() > 253
        || value
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '#' || c == ';');
    if bad {
        return Err(FilesError::BadDns {
            field,
            value: value.to_owned(),
        });
    }
    Ok(value)
}

/// The pod's resolv.conf.
pub fn resolv_conf(dns: &DnsConfig) -> Result<String, FilesError> {
    let mut out = String::new();
    for server in &dns.servers {
        let server = clean("server", server)?;
        if server.parse::<std::net::IpAddr>().is_err() {
            return Err(FilesError::BadDns {
                field: "server",
                value: server.to_owned(),
            });
        }
        out.push_str(&format!("nameserver {server}\n"));
    }
    if dns.searches.len() > MAX_SEARCH {
        return Err(FilesError::BadDns {
            field: "search list",
            value: format!("{} entries (at most {MAX_SEARCH})", dns.searches.len()),
        });
    }
    let searches = dns
        .searches
        .iter()
        .map(|s| clean("search", s))
        .collect::<Result<Vec<_>, _>>()?;
    if !searches.is_empty() {
        out.push_str(&format!("search {}\n", searches.join(" ")));
    }
    let options = dns
        .options
        .iter()
        .map(|s| clean("option", s))
        .collect::<Result<Vec<_>, _>>()?;
    if !options.is_empty() {
        out.push_str(&format!("options {}\n", options.join(" ")));
    }
    Ok(out)
}

/// Checks a pod hostname (RFC 1123 labels, at most 64 bytes as the kernel allows).
pub fn check_hostname(hostname: &str) -> Result<(), FilesError> {
    let ok = !hostname.is_empty()
        && hostname.len() <= 64
        && hostname.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if ok {
        Ok(())
    } else {
        Err(FilesError::BadHostname(hostname.to_owned()))
    }
}

/// The pod's /etc/hosts: localhost entries and the pod's hostname on its IP (or on 127.0.1.1
/// while it has none, as Debian does).
pub fn hosts(hostname: &str, pod_ip: Option<&str>) -> Result<String, FilesError> {
    check_hostname(hostname)?;
    let mut out = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    let address = pod_ip.unwrap_or("127.0.1.1");
    if address.parse::<std::net::IpAddr>().is_err() {
        return Err(FilesError::BadDns {
            field: "pod IP",
            value: address.to_owned(),
        });
    }
    out.push_str(&format!("{address}\t{hostname}\n"));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_resolv_conf() {
        let dns = DnsConfig {
            servers: vec!["10.96.0.10".into(), "fd00::a".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(&dns).expect("valid"),
            "nameserver 10.96.0.10\nnameserver fd00::a\nsearch default.svc.cluster.local svc.cluster.local\noptions ndots:5\n"
        );
        assert_eq!(resolv_conf(&DnsConfig::default()).expect("empty"), "");
    }

    #[test]
    fn refuses_what_would_break_the_file() {
        for (servers, searches, options) in [
            (vec!["10.0.0.1\nnameserver 6.6.6.6"], vec![], vec![]),
            (vec!["not-an-ip"], vec![], vec![]),
            (vec![], vec!["a b"], vec![]),
            (vec![], vec![], vec!["ndots:5\noptions x"]),
        ] {
            let dns = DnsConfig {
                servers: servers.into_iter().map(String::from).collect(),
                searches: searches.into_iter().map(String::from).collect(),
                options: options.into_iter().map(String::from).collect(),
            };
            assert!(resolv_conf(&dns).is_err(), "{dns:?}");
        }
    }

    #[test]
    fn writes_hosts_and_checks_hostnames() {
        assert_eq!(
            hosts("web-0", Some("10.88.0.5")).expect("valid"),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.88.0.5\tweb-0\n"
        );
        assert!(hosts("web-0", None)
            .expect("no ip")
            .contains("127.0.1.1\tweb-0"));
        for bad in ["", "-a", "a-", "a b", "a\nb", &"x".repeat(65), "a..b"] {
            assert!(check_hostname(bad).is_err(), "{bad:?}");
        }
        assert!(hosts("ok", Some("10.0.0.1\n1.2.3.4 evil")).is_err());
    }
}
