//! Small syntax checks shared by the validators: names, labels, MACs,
//! UUIDs, CIDRs, PCI addresses.

use std::net::{Ipv4Addr, Ipv6Addr};

/// DNS-1123 label: 1–63 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && is_name_chars(s, false)
}

/// A VM or template name: 1–253 of `[a-z0-9-]`, alphanumeric at both ends.
pub fn is_vm_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && is_name_chars(s, false)
}

/// A disk / DataVolume name in the wizard's form: like a VM name, dots allowed.
pub fn is_wizard_disk_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && is_name_chars(s, true)
}

/// DNS-1123 subdomain: dot-separated labels, ≤ 253 in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn is_name_chars(s: &str, dots: bool) -> bool {
    let b = s.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter()
            .all(|&c| alnum(c) || c == b'-' || (dots && c == b'.'))
}

/// Kubernetes label key: `[prefix/]name`, prefix a DNS subdomain, name
/// 1–63 of `[A-Za-z0-9._-]` with alphanumeric ends.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(is_dns_subdomain) && is_label_value(name) && !name.is_empty()
}

/// Kubernetes label value: empty, or 1–63 of `[A-Za-z0-9._-]` with
/// alphanumeric ends.
pub fn is_label_value(s: &str) -> bool {
    if s.is_empty() {
        return true;
    }
    let b = s.as_bytes();
    s.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
}

/// Parse a MAC written with `:` or `-` separators, any case.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let sep = if s.contains(':') { ':' } else { '-' };
    let parts: Vec<&str> = s.split(sep).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut mac = [0u8; 6];
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 {
            return None;
        }
        mac[i] = u8::from_str_radix(p, 16).ok()?;
    }
    Some(mac)
}

/// An RFC 4122 textual UUID (8-4-4-4-12 hex).
pub fn is_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, n)| g.len() == n && g.bytes().all(|c| c.is_ascii_hexdigit()))
}

/// An IPv4 CIDR such as `10.0.2.0/24`.
pub fn parse_ipv4_cidr(s: &str) -> Option<(Ipv4Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 32).then_some(())?;
    Some((a.parse().ok()?, p))
}

/// An IPv6 CIDR such as `fd10:0:2::/120`.
pub fn parse_ipv6_cidr(s: &str) -> Option<(Ipv6Addr, u8)> {
    let (a, p) = s.split_once('/')?;
    let p: u8 = p.parse().ok()?;
    (p <= 128).then_some(())?;
    Some((a.parse().ok()?, p))
}

/// A PCI address `DDDD:BB:DD.F`.
pub fn is_pci_address(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && [0, 1, 2, 3, 5, 6, 8, 9]
            .iter()
            .all(|&i| b[i].is_ascii_hexdigit())
        && (b'0'..=b'7').contains(&b[11])
}

/// A resource name `vendor-domain/NAME`.
pub fn is_qualified_resource_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((domain, name)) => {
            is_dns_subdomain(domain)
                && !name.is_empty()
                && name.len() <= 63
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-' || c == b'.')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_spec() {
        assert!(is_vm_name("a"));
        for bad in ["-a", "a-", "A", "a.b", "a b", ""] {
            assert!(!is_vm_name(bad), "{bad}");
        }
        assert!(is_wizard_disk_name("a.b"));
        assert!(is_vm_name(&"a".repeat(253)));
        assert!(!is_vm_name(&"a".repeat(254)));
        assert!(is_dns_label(&"a".repeat(63)));
        assert!(!is_dns_label(&"a".repeat(64)));
    }

    #[test]
    fn macs_uuids_cidrs() {
        assert_eq!(
            parse_mac("de:ad:00:00:be:af"),
            Some([0xde, 0xad, 0, 0, 0xbe, 0xaf])
        );
        assert_eq!(
            parse_mac("DE-AD-00-00-BE-AF"),
            Some([0xde, 0xad, 0, 0, 0xbe, 0xaf])
        );
        assert_eq!(parse_mac("de:ad:00:00:be"), None);
        assert_eq!(parse_mac("zz:ad:00:00:be:af"), None);
        assert!(is_uuid("5d307ca9-b3ef-428c-8861-06e72d69f223"));
        assert!(!is_uuid("5d307ca9-b3ef-428c-8861"));
        assert!(parse_ipv4_cidr("10.0.2.0/24").is_some());
        assert!(parse_ipv4_cidr("10.0.2.0/33").is_none());
        assert!(parse_ipv6_cidr("fd10:0:2::/120").is_some());
        assert!(is_pci_address("0000:02:00.1"));
        assert!(!is_pci_address("02:00.1"));
        assert!(is_label_key("kubevirt.io/vm"));
        assert!(!is_label_key("-bad"));
        assert!(is_qualified_resource_name("nvidia.com/TU104GL_Tesla_T4"));
        assert!(!is_qualified_resource_name("TU104GL"));
    }
}
