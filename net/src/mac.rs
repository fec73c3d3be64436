//! MAC addresses and a pool of them in the manner of KubeMacPool: a
//! configured range, an address for every VM interface that names none,
//! explicit addresses reserved, no address held twice, state kept in a
//! file so that a restarted (or a second) process hands out no address
//! twice, and release when a VM is deleted.
//!
//! Every operation takes an exclusive `flock` on `<state>.lock`, reads the
//! state file, changes it and writes it back (temporary name, fsync,
//! rename) before it returns: the file is the truth, shared by every
//! process that opens the same path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use virtkit_core::spec::vm::VirtualMachine;

use crate::state::StateFile;

/// A 48-bit Ethernet address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    fn to_u64(self) -> u64 {
        self.0.iter().fold(0, |a, b| (a << 8) | u64::from(*b))
    }

    fn from_u64(v: u64) -> Self {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }

    /// Multicast (group) bit set: never a NIC's own address.
    pub fn is_multicast(self) -> bool {
        self.0[0] & 1 == 1
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl FromStr for MacAddr {
    type Err = MacPoolError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        virtkit_core::validate::syntax::parse_mac(s)
            .map(MacAddr)
            .ok_or_else(|| MacPoolError::BadAddress(s.to_string()))
    }
}

impl serde::Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The label a namespace sets to opt out of (or, in its older form, into)
/// MAC allocation.
pub const NAMESPACE_LABEL: &str = "mutatevirtualmachines.kubemacpool.io";

/// Whether the pool manages VMs of a namespace with these labels: yes
/// unless the label says `ignore` (`allocate`, the older opt-in, and no
/// label at all both mean yes).
pub fn namespace_managed(labels: &BTreeMap<String, String>) -> bool {
    labels.get(NAMESPACE_LABEL).map(String::as_str) != Some("ignore")
}

/// Errors of the MAC pool.
#[derive(Debug, thiserror::Error)]
pub enum MacPoolError {
    /// Not a MAC address.
    #[error("{0:?} is not a MAC address (six hex octets separated by ':' or '-')")]
    BadAddress(String),
    /// A range that is empty, reversed or multicast.
    #[error("MAC range {start}–{end}: {reason}")]
    BadRange {
        /// First address.
        start: MacAddr,
        /// Last address.
        end: MacAddr,
        /// What is wrong.
        reason: &'static str,
    },
    /// The address is held by another interface.
    #[error("{field}: MAC address {mac} is already in use by {holder}")]
    Duplicate {
        /// The field path of the interface asking for it.
        field: String,
        /// The address.
        mac: MacAddr,
        /// Who holds it (`namespace/vm/interface`).
        holder: String,
    },
    /// An explicit address with the group bit set.
    #[error("{field}: MAC address {mac} is a multicast address")]
    Multicast {
        /// The field path.
        field: String,
        /// The address.
        mac: MacAddr,
    },
    /// Every address of the range is held.
    #[error("the MAC range {start}–{end} is exhausted ({held} addresses held)")]
    Exhausted {
        /// First address.
        start: MacAddr,
        /// Last address.
        end: MacAddr,
        /// How many are held.
        held: usize,
    },
    /// The state file belongs to another range.
    #[error("pool state {path} was made for the range {found}, not {wanted}")]
    RangeChanged {
        /// The state file.
        path: String,
        /// Its range.
        found: String,
        /// The range asked for.
        wanted: String,
    },
    /// Reading or writing the state.
    #[error("MAC pool state {path}: {source}")]
    State {
        /// The state file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An inclusive range of unicast addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MacRange {
    /// First address.
    pub start: MacAddr,
    /// Last address.
    pub end: MacAddr,
}

impl MacRange {
    /// KubeMacPool's default range: locally administered `02:…`.
    pub const DEFAULT: MacRange = MacRange {
        start: MacAddr([0x02, 0, 0, 0, 0, 0]),
        end: MacAddr([0x02, 0xff, 0xff, 0xff, 0xff, 0xff]),
    };

    /// A checked range.
    pub fn new(start: MacAddr, end: MacAddr) -> Result<Self, MacPoolError> {
        let bad = |reason| Err(MacPoolError::BadRange { start, end, reason });
        if start > end {
            return bad("the start is after the end");
        }
        if start.is_multicast() || end.is_multicast() {
            return bad("the range holds multicast addresses");
        }
        if start.0[0] != end.0[0] {
            // The first octet carries the multicast bit: a range that
            // crosses it would hold group addresses.
            return bad("start and end must share their first octet");
        }
        Ok(MacRange { start, end })
    }

    fn contains(&self, m: MacAddr) -> bool {
        (self.start..=self.end).contains(&m)
    }

    fn len(&self) -> u64 {
        self.end.to_u64() - self.start.to_u64() + 1
    }
}

impl fmt::Display for MacRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}–{}", self.start, self.end)
    }
}

/// The persisted state.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct State {
    range: Option<MacRange>,
    /// Where the next search starts (addresses are handed out in turn, so
    /// a just-released one is not reused at once).
    next: Option<MacAddr>,
    /// address → `namespace/vm/interface`.
    held: BTreeMap<MacAddr, String>,
}

/// A MAC address pool whose state lives in a file.
#[derive(Debug)]
pub struct MacPool {
    range: MacRange,
    state: StateFile,
}

fn owner(namespace: &str, vm: &str, interface: &str) -> String {
    format!("{namespace}/{vm}/{interface}")
}

impl MacPool {
    /// A pool for `range` whose state is the file `path` (created on first
    /// use; its directory must exist). A state file made for another range
    /// is an error rather than silently mixed.
    pub fn open(path: impl Into<PathBuf>, range: MacRange) -> Result<Self, MacPoolError> {
        let pool = MacPool {
            range,
            state: StateFile::new(path),
        };
        let state: State = pool.state.read().map_err(|e| pool.io(e))?;
        match state.range {
            Some(r) if r != range => Err(MacPoolError::RangeChanged {
                path: pool.state.path().display().to_string(),
                found: r.to_string(),
                wanted: range.to_string(),
            }),
            _ => Ok(pool),
        }
    }

    fn io(&self, source: std::io::Error) -> MacPoolError {
        MacPoolError::State {
            path: self.state.path().display().to_string(),
            source,
        }
    }

    /// Run `change` on the state under the lock and save it if it
    /// succeeds; on an error nothing is saved.
    fn with_state<T>(
        &self,
        change: impl FnOnce(&mut State) -> Result<T, MacPoolError>,
    ) -> Result<T, MacPoolError> {
        let range = self.range;
        self.state
            .update(|state: &mut State| {
                let out = change(state)?;
                state.range = Some(range);
                Ok(out)
            })
            .map_err(|e| self.io(e))?
    }

    fn take_next(&self, state: &mut State, who: String) -> Result<MacAddr, MacPoolError> {
        let (first, len) = (self.range.start.to_u64(), self.range.len());
        let from = state
            .next
            .filter(|m| self.range.contains(*m))
            .map_or(0, |m| m.to_u64() - first);
        // A linear probe from the cursor; the held map is the only limit.
        for k in 0..len.min(state.held.len() as u64 + 1) {
            let mac = MacAddr::from_u64(first + (from + k) % len);
            if let std::collections::btree_map::Entry::Vacant(slot) = state.held.entry(mac) {
                slot.insert(who);
                state.next = Some(MacAddr::from_u64(first + (from + k + 1) % len));
                return Ok(mac);
            }
        }
        Err(MacPoolError::Exhausted {
            start: self.range.start,
            end: self.range.end,
            held: state.held.len(),
        })
    }

    /// Give every interface of `vm` an address: those without
    /// `macAddress` get the next free one (written into the spec), those
    /// with one have it reserved. All or nothing: a duplicate leaves the
    /// pool and the spec as they were. Calling it again for the same VM
    /// changes nothing.
    pub fn assign(&self, vm: &mut VirtualMachine) -> Result<(), MacPoolError> {
        let namespace = vm
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = vm.metadata.name.clone().unwrap_or_default();
        let interfaces = &mut vm.spec.template.spec.domain.devices.interfaces;
        let chosen = self.with_state(|state| {
            let mut chosen = Vec::new();
            for (i, iface) in interfaces.iter().enumerate() {
                let who = owner(&namespace, &name, &iface.name);
                let field = format!("spec.template.spec.domain.devices.interfaces[{i}].macAddress");
                let mac = match &iface.mac_address {
                    Some(text) => {
                        let mac: MacAddr = text.parse()?;
                        if mac.is_multicast() {
                            return Err(MacPoolError::Multicast { field, mac });
                        }
                        match state.held.get(&mac) {
                            Some(holder) if *holder != who => {
                                return Err(MacPoolError::Duplicate {
                                    field,
                                    mac,
                                    holder: holder.clone(),
                                })
                            }
                            _ => {
                                state.held.insert(mac, who);
                            }
                        }
                        mac
                    }
                    None => match state.held.iter().find(|(_, h)| **h == who) {
                        Some((mac, _)) => *mac,
                        None => self.take_next(state, who)?,
                    },
                };
                chosen.push(mac);
            }
            Ok(chosen)
        })?;
        for (iface, mac) in interfaces.iter_mut().zip(chosen) {
            iface.mac_address = Some(mac.to_string());
        }
        Ok(())
    }

    /// Release every address held by VM `namespace/vm` (it was deleted);
    /// returns how many were released.
    pub fn release_vm(&self, namespace: &str, vm: &str) -> Result<usize, MacPoolError> {
        let prefix = format!("{namespace}/{vm}/");
        self.with_state(|state| {
            let before = state.held.len();
            state.held.retain(|_, who| !who.starts_with(&prefix));
            Ok(before - state.held.len())
        })
    }

    /// Who holds `mac`, if anyone.
    pub fn holder(&self, mac: MacAddr) -> Result<Option<String>, MacPoolError> {
        Ok(self.held()?.get(&mac).cloned())
    }

    /// Every held address and its holder.
    pub fn held(&self) -> Result<BTreeMap<MacAddr, String>, MacPoolError> {
        let state: State = self.state.read().map_err(|e| self.io(e))?;
        Ok(state.held)
    }

    /// The state file.
    pub fn path(&self) -> &Path {
        self.state.path()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn vm(name: &str, macs: &[Option<&str>]) -> VirtualMachine {
        let ifaces: String = macs
            .iter()
            .enumerate()
            .map(|(i, m)| match m {
                Some(m) => format!("      - {{name: nic{i}, bridge: {{}}, macAddress: \"{m}\"}}\n"),
                None => format!("      - {{name: nic{i}, bridge: {{}}}}\n"),
            })
            .collect();
        let nets: String = (0..macs.len())
            .map(|i| format!("    - {{name: nic{i}, multus: {{networkName: br}}}}\n"))
            .collect();
        serde_yaml_ng::from_str(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachine\nmetadata: {{name: {name}, namespace: ns}}\nspec:\n  running: true\n  template:\n    spec:\n      domain:\n        devices:\n          interfaces:\n{}\n      networks:\n{}",
            ifaces.replace("      - ", "          - "),
            nets.replace("    - ", "      - ")
        ))
        .unwrap()
    }

    fn macs(v: &VirtualMachine) -> Vec<String> {
        v.spec
            .template
            .spec
            .domain
            .devices
            .interfaces
            .iter()
            .map(|i| i.mac_address.clone().unwrap())
            .collect()
    }

    fn state(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("virtkit-macpool-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d.join("pool.json")
    }

    fn small() -> MacRange {
        MacRange::new(
            "02:00:00:00:00:00".parse().unwrap(),
            "02:00:00:00:00:03".parse().unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn allocates_reserves_rejects_duplicates_and_survives_a_restart() {
        let path = state("basic");
        let pool = MacPool::open(&path, small()).unwrap();
        let mut a = vm("a", &[None, Some("02:00:00:00:00:01")]);
        pool.assign(&mut a).unwrap();
        assert_eq!(macs(&a), ["02:00:00:00:00:00", "02:00:00:00:00:01"]);
        // Idempotent for the same VM.
        pool.assign(&mut a).unwrap();
        assert_eq!(macs(&a), ["02:00:00:00:00:00", "02:00:00:00:00:01"]);
        // Another VM asking for a held address: all or nothing.
        let mut b = vm("b", &[None, Some("02:00:00:00:00:01")]);
        let e = pool.assign(&mut b).unwrap_err();
        assert!(
            e.to_string().contains("interfaces[1].macAddress")
                && e.to_string().contains("ns/a/nic1"),
            "{e}"
        );
        assert_eq!(pool.held().unwrap().len(), 2, "nothing of b was kept");
        assert!(b.spec.template.spec.domain.devices.interfaces[0]
            .mac_address
            .is_none());

        // A restart (a new pool on the same file) hands out no address twice.
        drop(pool);
        let pool = MacPool::open(&path, small()).unwrap();
        let mut c = vm("c", &[None, None]);
        pool.assign(&mut c).unwrap();
        assert_eq!(macs(&c), ["02:00:00:00:00:02", "02:00:00:00:00:03"]);
        let mut d = vm("d", &[None]);
        assert!(matches!(
            pool.assign(&mut d),
            Err(MacPoolError::Exhausted { held: 4, .. })
        ));
        // Deleting a VM frees its addresses.
        assert_eq!(pool.release_vm("ns", "a").unwrap(), 2);
        pool.assign(&mut d).unwrap();
        assert_eq!(
            pool.holder(macs(&d)[0].parse().unwrap())
                .unwrap()
                .as_deref(),
            Some("ns/d/nic0")
        );
        // A state file of another range is refused.
        let other = MacRange::new(
            "02:00:00:00:01:00".parse().unwrap(),
            "02:00:00:00:01:ff".parse().unwrap(),
        )
        .unwrap();
        assert!(matches!(
            MacPool::open(&path, other),
            Err(MacPoolError::RangeChanged { .. })
        ));
    }

    #[test]
    fn pools_in_parallel_never_hand_out_one_address_twice() {
        let path = state("parallel");
        let range = MacRange::DEFAULT;
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let path = path.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own pool: its own lock fd, as a
                    // second process would.
                    let pool = MacPool::open(&path, range).unwrap();
                    (0..25)
                        .map(|k| {
                            let mut v = vm(&format!("t{t}-{k}"), &[None]);
                            pool.assign(&mut v).unwrap();
                            macs(&v).remove(0)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<String> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort();
        let n = all.len();
        all.dedup();
        assert_eq!((n, all.len()), (100, 100));
    }

    #[test]
    fn bad_ranges_addresses_and_namespace_labels() {
        let m = |s: &str| s.parse::<MacAddr>().unwrap();
        assert!(MacRange::new(m("02:00:00:00:00:09"), m("02:00:00:00:00:01")).is_err());
        assert!(MacRange::new(m("01:00:00:00:00:00"), m("01:00:00:00:00:09")).is_err());
        assert!(MacRange::new(m("02:00:00:00:00:00"), m("04:00:00:00:00:00")).is_err());
        assert!("02:00:00:00:00".parse::<MacAddr>().is_err());
        let pool = MacPool::open(state("bad"), small()).unwrap();
        let mut v = vm("m", &[Some("03:00:00:00:00:01")]);
        assert!(matches!(
            pool.assign(&mut v),
            Err(MacPoolError::Multicast { .. })
        ));
        let mut labels = BTreeMap::new();
        assert!(namespace_managed(&labels));
        labels.insert(NAMESPACE_LABEL.to_string(), "allocate".to_string());
        assert!(namespace_managed(&labels));
        labels.insert(NAMESPACE_LABEL.to_string(), "ignore".to_string());
        assert!(!namespace_managed(&labels));
    }
}
