//! Memory accounting for a VMI (advanced-management §7): what the guest
//! sees, what the host reserves, the VMM's own overhead, the limit, and
//! the QoS class that follows.
//!
//! `memory.guest` above `requests.memory` is overcommit: the guest is
//! offered `guest`, the host reserves the request, and guest RAM is mapped
//! `MAP_NORESERVE` so that only touched pages cost memory. The overhead is
//! virtkit's own, deterministic formula (the seed gives none):
//! 64 MiB for the VMM process and its device threads, 8 MiB per vCPU
//! (thread stacks, KVM's per-vCPU state), and 1/512 of guest memory for
//! page tables and dirty bitmaps (8 bytes per 4 KiB page).

use crate::spec::vmi::VmiSpec;
use crate::Quantity;

/// Bytes per guest page; sizes off this grid are rounded up.
const PAGE: u64 = 4096;
const PROCESS_OVERHEAD: u64 = 64 << 20;
const PER_VCPU_OVERHEAD: u64 = 8 << 20;

/// A pod's Kubernetes quality-of-service class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QosClass {
    /// CPU and memory limits set and equal to the requests.
    Guaranteed,
    /// Some request or limit set.
    Burstable,
    /// Neither.
    BestEffort,
}

/// The numbers a host budget needs for one VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryAccounting {
    /// What the guest sees (bytes, page-rounded).
    pub guest: u64,
    /// What the host sets aside: the request, plus the overhead unless
    /// `overcommitGuestOverhead` is true.
    pub reserved: u64,
    /// The VMM's own memory by the formula above.
    pub overhead: u64,
    /// The memory limit plus the overhead (always added), if limited.
    pub limit: Option<u64>,
    /// The QoS class.
    pub qos: QosClass,
    /// Whether the guest sees more than is reserved for it.
    pub overcommitted: bool,
}

/// Why a VMI's memory cannot be accounted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountingError {
    /// Neither `memory.guest` nor `requests.memory` is set.
    #[error(
        "spec.domain: neither memory.guest nor resources.requests.memory gives the guest's memory"
    )]
    NoMemory,
    /// A quantity that is not a byte count.
    #[error("{path}: {why}")]
    BadQuantity {
        /// Field path.
        path: &'static str,
        /// Why.
        why: String,
    },
}

fn bytes(q: Option<&Quantity>, path: &'static str) -> Result<Option<u64>, AccountingError> {
    q.map(|q| {
        q.to_bytes()
            .map(|b| b.div_ceil(PAGE) * PAGE)
            .map_err(|e| AccountingError::BadQuantity {
                path,
                why: e.to_string(),
            })
    })
    .transpose()
}

/// Account `spec`'s memory.
pub fn memory_accounting(spec: &VmiSpec) -> Result<MemoryAccounting, AccountingError> {
    let d = &spec.domain;
    let resources = d.resources.clone().unwrap_or_default();
    let request = bytes(
        resources.requests.get("memory"),
        "spec.domain.resources.requests.memory",
    )?;
    let limit = bytes(
        resources.limits.get("memory"),
        "spec.domain.resources.limits.memory",
    )?;
    let guest = bytes(
        d.memory.as_ref().and_then(|m| m.guest.as_ref()),
        "spec.domain.memory.guest",
    )?;
    // Kubernetes: a request left out defaults to the limit.
    let request = request.or(limit);
    let guest = guest.or(request).ok_or(AccountingError::NoMemory)?;
    let vcpus = d.cpu.as_ref().map_or(1, |c| c.vcpu_count());
    let overhead = PROCESS_OVERHEAD + vcpus.saturating_mul(PER_VCPU_OVERHEAD) + guest / 512;
    let base = request.unwrap_or(guest);
    let reserved = if resources.overcommit_guest_overhead == Some(true) {
        base
    } else {
        base + overhead
    };
    let qos = {
        let set = |k: &str| (resources.requests.get(k), resources.limits.get(k));
        let (cpu, mem) = (set("cpu"), set("memory"));
        let equal = |(r, l): (Option<&Quantity>, Option<&Quantity>)| {
            l.is_some() && r.is_none_or(|r| Some(r) == l)
        };
        if equal(cpu) && equal(mem) {
            QosClass::Guaranteed
        } else if resources.requests.is_empty() && resources.limits.is_empty() {
            QosClass::BestEffort
        } else {
            QosClass::Burstable
        }
    };
    Ok(MemoryAccounting {
        guest,
        reserved,
        overhead,
        limit: limit.map(|l| l + overhead),
        qos,
        overcommitted: guest > base,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::spec::vmi::{Memory, ResourceRequirements};

    fn q(text: &str) -> Quantity {
        text.parse().unwrap()
    }

    fn spec(requests: &[(&str, &str)], limits: &[(&str, &str)], guest: Option<&str>) -> VmiSpec {
        let mut s = VmiSpec::default();
        let list = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), q(v))).collect();
        s.domain.resources = Some(ResourceRequirements {
            requests: list(requests),
            limits: list(limits),
            overcommit_guest_overhead: None,
        });
        s.domain.memory = guest.map(|g| Memory {
            guest: Some(q(g)),
            ..Memory::default()
        });
        s
    }

    #[test]
    fn the_seed_overcommits_2048m_on_a_1024m_request() {
        let mut s = spec(&[("memory", "1024M")], &[], Some("2048M"));
        let a = memory_accounting(&s).unwrap();
        let overhead = (64 << 20) + (8 << 20) + 2_048_000_000 / 512;
        assert_eq!(a.guest, 2_048_000_000);
        assert_eq!(a.overhead, overhead);
        assert_eq!(
            a.reserved,
            1_024_000_000 + overhead,
            "flag off: overhead added"
        );
        assert!(a.overcommitted);
        assert_eq!(a.limit, None);
        assert_eq!(a.qos, QosClass::Burstable);
        s.domain
            .resources
            .as_mut()
            .unwrap()
            .overcommit_guest_overhead = Some(true);
        let a = memory_accounting(&s).unwrap();
        assert_eq!(a.reserved, 1_024_000_000, "flag on: the request alone");
        // 1024M is not 1024Mi.
        let mi = memory_accounting(&spec(&[("memory", "1024Mi")], &[], None)).unwrap();
        assert_eq!(mi.guest, 1 << 30);
        assert_ne!(mi.guest, 1_024_000_000);
    }

    #[test]
    fn limits_carry_the_overhead_both_ways_and_set_the_qos() {
        for flag in [None, Some(true)] {
            let mut s = spec(
                &[("memory", "1Gi"), ("cpu", "2")],
                &[("memory", "1Gi"), ("cpu", "2")],
                None,
            );
            s.domain
                .resources
                .as_mut()
                .unwrap()
                .overcommit_guest_overhead = flag;
            let a = memory_accounting(&s).unwrap();
            assert_eq!(a.limit, Some((1 << 30) + a.overhead));
            assert_eq!(a.qos, QosClass::Guaranteed);
            assert!(!a.overcommitted);
        }
        // Limits alone: requests default to them.
        let a = memory_accounting(&spec(&[], &[("memory", "1Gi"), ("cpu", "1")], None)).unwrap();
        assert_eq!((a.guest, a.qos), (1 << 30, QosClass::Guaranteed));
        let a = memory_accounting(&spec(&[], &[], Some("64Mi"))).unwrap();
        assert_eq!(a.qos, QosClass::BestEffort);
        // Off the page grid: rounded up.
        let a = memory_accounting(&spec(&[("memory", "1000")], &[], None)).unwrap();
        assert_eq!(a.guest, 4096);
        assert_eq!(
            memory_accounting(&VmiSpec::default()),
            Err(AccountingError::NoMemory)
        );
    }
}
