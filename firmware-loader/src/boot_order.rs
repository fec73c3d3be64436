//! Boot order: the VMI's `bootOrder` on disks and interfaces, one global
//! order, turned into the fw_cfg `bootorder` file of OpenFirmware device
//! paths that SeaBIOS and OVMF (its QemuBootOrderLib) read.
//!
//! Rules (lifecycle-migration-boot §9): values are ≥ 1 and unique across
//! disks and interfaces; ordered devices come first, lowest first; devices
//! without an order follow in spec order (disks, then interfaces), which
//! is also what firmware does with devices the file does not list; a
//! spec that mixes ordered and unordered devices gets a warning.

use virtkit_core::spec::vmi::VmiSpec;

/// A bootable device of the VMI, as the embedder placed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// `disks[index]`.
    Disk(usize),
    /// `interfaces[index]`.
    Interface(usize),
}

/// Where a device sits, in the terms its OpenFirmware path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// A virtio-blk function in PCI slot `slot`.
    VirtioBlk {
        /// PCI slot on bus 0.
        slot: u8,
    },
    /// Target `target` (LUN 0) of a virtio-scsi controller in `slot`.
    VirtioScsi {
        /// PCI slot of the controller.
        slot: u8,
        /// SCSI target.
        target: u16,
    },
    /// Port `port` of the AHCI controller in `slot`.
    Sata {
        /// PCI slot of the controller.
        slot: u8,
        /// AHCI port.
        port: u8,
    },
    /// A NIC (virtio-net, e1000, …) in `slot`.
    Nic {
        /// PCI slot.
        slot: u8,
    },
}

impl Placement {
    /// The OpenFirmware device path QEMU would give the device on q35.
    pub fn device_path(&self) -> String {
        const ROOT: &str = "/pci@i0cf8";
        match *self {
            Placement::VirtioBlk { slot } => format!("{ROOT}/scsi@{slot:x}/disk@0,0"),
            Placement::VirtioScsi { slot, target } => {
                format!("{ROOT}/scsi@{slot:x}/channel@0/disk@{target:x},0")
            }
            Placement::Sata { slot, port } => {
                format!("{ROOT}/pci8086,2922@{slot:x}/drive@{port:x}/disk@0")
            }
            Placement::Nic { slot } => format!("{ROOT}/ethernet@{slot:x}/ethernet-phy@0"),
        }
    }
}

/// Why no boot order could be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BootOrderError {
    /// A value below 1.
    #[error("{path}.bootOrder: {value} is not a boot order (it must be at least 1)")]
    NotPositive {
        /// Field path of the device.
        path: String,
        /// The value.
        value: i64,
    },
    /// Two devices with the same value.
    #[error("{path}.bootOrder: boot order {value} is already set for {holder}")]
    Duplicate {
        /// Field path of the second device.
        path: String,
        /// The value.
        value: i64,
        /// Field path of the device holding it.
        holder: String,
    },
    /// The embedder did not place a device that has to be listed.
    #[error("{path}: the device is not placed on a bus, so firmware cannot be told to boot it")]
    NotPlaced {
        /// Field path of the device.
        path: String,
    },
    /// Nothing to boot from.
    #[error("the VMI has no disk or interface to boot from")]
    NoBootDevice,
}

/// The order firmware gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOrder {
    /// Devices, first to try first, with their field paths.
    pub devices: Vec<(String, BootDevice)>,
    /// The `bootorder` fw_cfg file: paths separated by newlines, NUL
    /// terminated (as QEMU writes it).
    pub file: Vec<u8>,
    /// Things worth telling the user (a mixed ordered/unordered set).
    pub warnings: Vec<String>,
}

/// Build the boot order of `spec`; `place` says where each device sits
/// (`None`: not on a bus, e.g. a disk with no controller).
pub fn boot_order(
    spec: &VmiSpec,
    place: &dyn Fn(BootDevice) -> Option<Placement>,
) -> Result<BootOrder, BootOrderError> {
    let devices = &spec.domain.devices;
    let candidates: Vec<(String, BootDevice, Option<i64>)> = devices
        .disks
        .iter()
        .enumerate()
        .map(|(i, d)| {
            (
                format!("spec.domain.devices.disks[{i}]"),
                BootDevice::Disk(i),
                d.boot_order,
            )
        })
        .chain(devices.interfaces.iter().enumerate().map(|(i, n)| {
            (
                format!("spec.domain.devices.interfaces[{i}]"),
                BootDevice::Interface(i),
                n.boot_order,
            )
        }))
        .collect();
    if candidates.is_empty() {
        return Err(BootOrderError::NoBootDevice);
    }
    let mut ordered: Vec<(i64, String, BootDevice)> = Vec::new();
    let mut unordered = Vec::new();
    for (path, device, order) in candidates {
        match order {
            Some(value) if value < 1 => return Err(BootOrderError::NotPositive { path, value }),
            Some(value) => {
                if let Some((_, holder, _)) = ordered.iter().find(|(v, _, _)| *v == value) {
                    return Err(BootOrderError::Duplicate {
                        path,
                        value,
                        holder: holder.clone(),
                    });
                }
                ordered.push((value, path, device));
            }
            None => unordered.push((path, device)),
        }
    }
    let mut warnings = Vec::new();
    if !ordered.is_empty() && !unordered.is_empty() {
        let names: Vec<&str> = unordered.iter().map(|(p, _)| p.as_str()).collect();
        warnings.push(format!(
            "{} have no bootOrder while other devices do; they are tried after the ordered ones",
            names.join(", ")
        ));
    }
    ordered.sort_by_key(|(v, _, _)| *v);
    let list: Vec<(String, BootDevice)> = ordered
        .into_iter()
        .map(|(_, p, d)| (p, d))
        .chain(unordered)
        .collect();
    let mut paths = Vec::new();
    for (path, device) in &list {
        match place(*device) {
            Some(p) => paths.push(p.device_path()),
            // An interface that is not a NIC on the bus (e.g. hot-plugged
            // later) only matters when it was asked for explicitly.
            None if explicitly_ordered(spec, *device) => {
                return Err(BootOrderError::NotPlaced { path: path.clone() })
            }
            None => {}
        }
    }
    let mut file = paths.join("\n").into_bytes();
    file.push(0);
    Ok(BootOrder {
        devices: list,
        file,
        warnings,
    })
}

fn explicitly_ordered(spec: &VmiSpec, device: BootDevice) -> bool {
    let devices = &spec.domain.devices;
    match device {
        BootDevice::Disk(i) => devices.disks.get(i).is_some_and(|d| d.boot_order.is_some()),
        BootDevice::Interface(i) => devices
            .interfaces
            .get(i)
            .is_some_and(|n| n.boot_order.is_some()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtkit_core::spec::vmi::{Disk, Interface};

    fn spec(disks: &[Option<i64>], nics: &[Option<i64>]) -> VmiSpec {
        let mut s = VmiSpec::default();
        s.domain.devices.disks = disks
            .iter()
            .enumerate()
            .map(|(i, o)| Disk {
                name: format!("d{i}"),
                boot_order: *o,
                ..Disk::default()
            })
            .collect();
        s.domain.devices.interfaces = nics
            .iter()
            .enumerate()
            .map(|(i, o)| Interface {
                name: format!("n{i}"),
                boot_order: *o,
                ..Interface::default()
            })
            .collect();
        s
    }

    /// Disk i is virtio-blk in slot 3 + i; NIC i a NIC in slot 10 + i.
    fn placed(d: BootDevice) -> Option<Placement> {
        Some(match d {
            BootDevice::Disk(i) => Placement::VirtioBlk { slot: 3 + i as u8 },
            BootDevice::Interface(i) => Placement::Nic { slot: 10 + i as u8 },
        })
    }

    #[test]
    fn the_pxe_seed_boots_the_nic_then_the_disk() {
        // The seed: disk `containerdisk` 2, `cloudinitdisk` none; NIC
        // `default` none, `pxe-net` 1.
        let s = spec(&[Some(2), None], &[None, Some(1)]);
        let order = boot_order(&s, &placed).unwrap();
        assert_eq!(
            String::from_utf8(order.file).unwrap(),
            "/pci@i0cf8/ethernet@b/ethernet-phy@0\n/pci@i0cf8/scsi@3/disk@0,0\n\
             /pci@i0cf8/scsi@4/disk@0,0\n/pci@i0cf8/ethernet@a/ethernet-phy@0\0"
        );
        assert_eq!(order.warnings.len(), 1);
        assert!(order.warnings[0].contains("spec.domain.devices.disks[1]"));
    }

    #[test]
    fn without_orders_disks_boot_in_spec_order_and_nothing_is_warned() {
        let order = boot_order(&spec(&[None, None], &[]), &placed).unwrap();
        assert_eq!(order.devices[0].1, BootDevice::Disk(0));
        assert!(order.warnings.is_empty());
    }

    #[test]
    fn bad_orders_are_refused_with_their_paths() {
        let e = boot_order(&spec(&[Some(0)], &[]), &placed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.disks[0].bootOrder: 0 is not a boot order (it must be at least 1)"
        );
        let e = boot_order(&spec(&[Some(1)], &[Some(1)]), &placed).unwrap_err();
        assert_eq!(
            e.to_string(),
            "spec.domain.devices.interfaces[0].bootOrder: boot order 1 is already set for spec.domain.devices.disks[0]"
        );
        assert_eq!(
            boot_order(&spec(&[], &[]), &placed),
            Err(BootOrderError::NoBootDevice)
        );
        let nowhere = |_| None;
        assert!(matches!(
            boot_order(&spec(&[Some(1)], &[]), &nowhere),
            Err(BootOrderError::NotPlaced { .. })
        ));
    }

    #[test]
    fn device_paths_follow_qemu() {
        assert_eq!(
            Placement::VirtioScsi { slot: 5, target: 2 }.device_path(),
            "/pci@i0cf8/scsi@5/channel@0/disk@2,0"
        );
        assert_eq!(
            Placement::Sata {
                slot: 0x1f,
                port: 1
            }
            .device_path(),
            "/pci@i0cf8/pci8086,2922@1f/drive@1/disk@0"
        );
    }
}
