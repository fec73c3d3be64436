//! Device state for migration (and snapshots): the seam through which
//! the devices a VM holds hand their state over while it is paused.
//!
//! Each device registered with [`Vm::add_device_state`](super::Vm::add_device_state)
//! has a stable id and implements [`Snapshot`]. [`Vm::save_devices`](super::Vm::save_devices)
//! collects one [`DeviceState`] blob per id; [`Vm::restore_devices`](super::Vm::restore_devices)
//! hands each blob to the device of the same id on the target and
//! refuses a set of ids that does not match its own, so a guest never
//! resumes with a device that silently started fresh.
//!
//! A blob's layout belongs to its device. The convention (kept by every
//! device in virtkit) is the head of [`super::state`]: an 8-byte magic and
//! a little-endian `u32` version, checked with
//! [`check_state_head`](super::state::check_state_head), so a release can
//! keep reading the previous release's blobs.

use std::sync::{Arc, Mutex};

use super::state::StateError;

/// Id of the in-kernel PICs, IOAPIC and PIT.
pub const PLATFORM_ID: &str = "platform";
/// Id of the COM1 16550.
pub const COM1_ID: &str = "com1";
/// Id of the ACPI PM1a control register.
pub const PM1A_ID: &str = "acpi-pm1a";
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 64;

/// A device whose state can be saved on one VM and loaded into the same
/// kind of device on another. Both calls happen while the VM is paused
/// (no vCPU is inside the device).
pub trait Snapshot: Send {
    /// The device's state now, as a versioned blob the device defines.
    fn save_state(&mut self) -> Result<Vec<u8>, StateError>;
    /// Load a blob that [`Snapshot::save_state`] of the same kind of
    /// device wrote (this release's version or the previous one). On
    /// error the device must be left as it was.
    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError>;
    /// The VM is pausing: stop changing guest memory and raising
    /// interrupts on your own (worker threads that receive frames or
    /// finish I/O), so that a paused VM's memory holds still and a
    /// migration's final pass sees every write. Called after the vCPUs
    /// are parked. A device whose work happens only inside vCPU exits
    /// has nothing to do (the default).
    fn pause(&mut self) {}
    /// The VM is resuming: start what [`Snapshot::pause`] stopped (or,
    /// after [`Snapshot::restore_state`] on a paused VM, what the state
    /// says should run). Called before the vCPUs run again.
    fn resume(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// A migration's switchover, on the paused source once the state is
    /// saved: flush what the device holds on the host and let go of its
    /// host locks (a disk image's), so that the target, which opened the
    /// same shared storage without them, can take them. The device must
    /// not write those resources again until [`Snapshot::take_locks`].
    /// Idempotent. The default has no host locks.
    fn release_locks(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// Take the host locks: on a target before it confirms a migration,
    /// and on a source whose migration failed after
    /// [`Snapshot::release_locks`]. A lock held elsewhere is
    /// [`StateError::Locked`]. Idempotent: what is held stays held.
    fn take_locks(&mut self) -> Result<(), StateError> {
        Ok(())
    }
}

/// A shared handle to a device with state.
pub type SharedSnapshot = Arc<Mutex<dyn Snapshot>>;

/// One device's saved state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// The id the device was registered under.
    pub id: String,
    /// Its blob.
    pub state: Vec<u8>,
}

/// Check a device id: 1 to [`MAX_DEVICE_ID`] bytes of ASCII letters,
/// digits and `.`, `_`, `-`, `:`, `/` (so a PCI address or a KubeVirt
/// device name fits, and an id is printable in any error).
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_DEVICE_ID {
        return Err(format!(
            "device id {id:?} must be 1 to {MAX_DEVICE_ID} bytes long"
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/')))
    {
        return Err(format!(
            "device id {id:?} holds {c:?}; ids use ASCII letters, digits and . _ - : /"
        ));
    }
    Ok(())
}

/// Compare the ids a target has with the ids the source sent: what the
/// target lacks a state for, and what it has no device for.
pub fn id_mismatch<'a>(
    ours: impl IntoIterator<Item = &'a str>,
    theirs: impl IntoIterator<Item = &'a str>,
) -> Option<(Vec<String>, Vec<String>)> {
    let ours: std::collections::BTreeSet<&str> = ours.into_iter().collect();
    let theirs: std::collections::BTreeSet<&str> = theirs.into_iter().collect();
    let missing: Vec<String> = ours.difference(&theirs).map(|s| s.to_string()).collect();
    let unexpected: Vec<String> = theirs.difference(&ours).map(|s| s.to_string()).collect();
    (!missing.is_empty() || !unexpected.is_empty()).then_some((missing, unexpected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked() {
        for ok in ["platform", "com1", "pci/0000:00:03.0", "virtio-net_1"] {
            check_device_id(ok).unwrap();
        }
        for bad in ["", "a b", "é", "x\n", &"a".repeat(65)] {
            assert!(check_device_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mismatch_names_both_sides() {
        assert_eq!(id_mismatch(["a", "b"], ["b", "a"]), None);
        assert_eq!(
            id_mismatch(["a", "b"], ["b", "c"]),
            Some((vec!["a".to_string()], vec!["c".to_string()]))
        );
    }
}
