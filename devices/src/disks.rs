//! From a VMI's `disks[]` to devices: `disk` on bus `virtio` becomes a
//! virtio-blk device; `disk` on bus `scsi`, every `cdrom` on bus `scsi`
//! and every `lun` become units of one virtio-scsi controller (a CD-ROM is
//! read-only with 2048-byte blocks and honours `tray: open`; a `lun` must
//! be a block device, as the spec requires). `disk` and `cdrom` on bus
//! `sata` (the default for `cdrom`) become ATA and ATAPI drives on the
//! ports of one AHCI controller, in `disks[]` order, at most six.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use virtkit_core::spec::vmi::{Disk, DiskBus};

use crate::ahci::{SataDrive, MAX_PORTS};
use crate::block::{open_disk, BlockBackend, BlockError, DiskOptions};
use crate::scsi::{ScsiUnit, UnitKind};
use crate::virtio::block::{BlockConfig, VirtioBlock};
use crate::virtio::scsi::{ScsiConfig, VirtioScsi};

/// What a `disks[]` entry becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskModel {
    /// A virtio-blk device of its own.
    VirtioBlk,
    /// A unit on the virtio-scsi controller.
    Scsi(UnitKind),
    /// A drive on a port of the AHCI controller: an ATA disk
    /// ([`UnitKind::Disk`]) or an ATAPI CD-ROM.
    Sata(UnitKind),
}

/// A disk and the image behind it, planned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskPlan {
    /// `disks[].name`.
    pub name: String,
    /// The device model.
    pub model: DiskModel,
    /// How its image is opened.
    pub options: DiskOptions,
    /// Guest-visible serial.
    pub serial: String,
    /// The image (file or block device).
    pub image: PathBuf,
}

/// Why a disk cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum DiskPlanError {
    /// The bus needs a controller virtkit does not have.
    #[error("{path}: bus {bus} {why}")]
    BusUnavailable {
        /// Field path of the bus.
        path: String,
        /// The bus.
        bus: String,
        /// Why, and what to use instead.
        why: &'static str,
    },
    /// More `sata` disks than the AHCI controller has ports.
    #[error("{path}: no free SATA port; the AHCI controller has {MAX_PORTS}")]
    NoSataPort {
        /// Field path of the first disk that does not fit.
        path: String,
    },
    /// A `lun` whose volume is not a block device.
    #[error("{path}: a lun disk needs a block device, but {image} is not one")]
    LunNeedsBlockDevice {
        /// Field path of the disk.
        path: String,
        /// The image given.
        image: PathBuf,
    },
    /// The disk entry sets no target (validation normally rejects this).
    #[error("{path}: none of disk, cdrom and lun is set")]
    NoTarget {
        /// Field path of the disk.
        path: String,
    },
    /// Opening the image failed.
    #[error("{path}: {source}")]
    Open {
        /// Field path of the disk.
        path: String,
        /// Why.
        #[source]
        source: BlockError,
    },
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

/// Plan `disk`, entry `index` of `domain.devices.disks`, backed by `image`.
pub fn plan_disk(index: usize, disk: &Disk, image: &Path) -> Result<DiskPlan, DiskPlanError> {
    let path = format!("domain.devices.disks[{index}]");
    let shareable = disk.shareable.unwrap_or(false);
    let unavailable = |target: &str, bus: &DiskBus| DiskPlanError::BusUnavailable {
        path: format!("{path}.{target}.bus"),
        bus: bus.to_string(),
        why: "is not one virtkit-devices knows (virtio, sata, scsi)",
    };
    let (model, read_only) = if let Some(t) = &disk.disk {
        let model = match t.bus.clone().unwrap_or(DiskBus::Virtio) {
            DiskBus::Virtio => DiskModel::VirtioBlk,
            DiskBus::Scsi => DiskModel::Scsi(UnitKind::Disk),
            DiskBus::Sata => DiskModel::Sata(UnitKind::Disk),
            other => return Err(unavailable("disk", &other)),
        };
        (model, t.readonly.unwrap_or(false))
    } else if let Some(t) = &disk.cdrom {
        let tray_open = t.tray.as_deref() == Some("open");
        let unit = UnitKind::Cdrom { tray_open };
        let model = match t.bus.clone().unwrap_or(DiskBus::Sata) {
            DiskBus::Sata => DiskModel::Sata(unit),
            DiskBus::Scsi => DiskModel::Scsi(unit),
            other => return Err(unavailable("cdrom", &other)),
        };
        // CD-ROMs are read-only whatever `readonly` says.
        (model, true)
    } else if let Some(t) = &disk.lun {
        if !is_block_device(image) {
            return Err(DiskPlanError::LunNeedsBlockDevice {
                path,
                image: image.to_path_buf(),
            });
        }
        (DiskModel::Scsi(UnitKind::Disk), t.readonly.unwrap_or(false))
    } else {
        return Err(DiskPlanError::NoTarget { path });
    };
    Ok(DiskPlan {
        name: disk.name.clone(),
        model,
        options: DiskOptions {
            read_only,
            shareable,
            incoming: false,
        },
        serial: disk.serial.clone().unwrap_or_default(),
        image: image.to_path_buf(),
    })
}

/// The devices a VM's disks need.
#[derive(Debug, Default)]
pub struct DiskDevices {
    /// One virtio-blk device per `virtio` disk, in `disks[]` order.
    pub virtio_blk: Vec<(String, VirtioBlock)>,
    /// The virtio-scsi controller, when any disk sits on it; target `i`
    /// is `scsi_targets[i]`.
    pub scsi: Option<VirtioScsi>,
    /// Names of the disks on the SCSI controller, by target.
    pub scsi_targets: Vec<String>,
    /// Drives for the AHCI controller, port `i` being `sata[i]`; build
    /// it with [`crate::ahci::AhciController::new`] when not empty.
    pub sata: Vec<SataDrive>,
    /// Names of the disks on the AHCI controller, by port.
    pub sata_ports: Vec<String>,
}

/// Open every planned disk and build its device. Nothing is kept open
/// when one fails.
pub fn build_disks(plans: &[DiskPlan]) -> Result<DiskDevices, DiskPlanError> {
    let mut out = DiskDevices::default();
    let mut units = Vec::new();
    let sata = plans
        .iter()
        .enumerate()
        .filter(|(_, p)| matches!(p.model, DiskModel::Sata(_)));
    if let Some((index, _)) = sata.clone().nth(MAX_PORTS) {
        return Err(DiskPlanError::NoSataPort {
            path: format!("domain.devices.disks[{index}]"),
        });
    }
    for (index, plan) in plans.iter().enumerate() {
        let backend: Arc<dyn BlockBackend> = open_disk(&plan.image, plan.options)
            .map_err(|source| DiskPlanError::Open {
                path: format!("domain.devices.disks[{index}]"),
                source,
            })?
            .into();
        match plan.model {
            DiskModel::VirtioBlk => out.virtio_blk.push((
                plan.name.clone(),
                VirtioBlock::new(
                    backend,
                    BlockConfig {
                        serial: plan.serial.clone(),
                        ..BlockConfig::default()
                    },
                ),
            )),
            DiskModel::Scsi(kind) => {
                units.push(ScsiUnit::new(backend, kind, &plan.serial));
                out.scsi_targets.push(plan.name.clone());
            }
            DiskModel::Sata(UnitKind::Disk) => {
                out.sata.push(SataDrive::disk(backend, &plan.serial));
                out.sata_ports.push(plan.name.clone());
            }
            DiskModel::Sata(UnitKind::Cdrom { tray_open }) => {
                out.sata
                    .push(SataDrive::cdrom(backend, &plan.serial, tray_open));
                out.sata_ports.push(plan.name.clone());
            }
        }
    }
    if !units.is_empty() {
        out.scsi = Some(VirtioScsi::new(units, ScsiConfig::default()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtkit_core::spec::vmi::{CdromTarget, DiskTarget};

    fn disk(name: &str) -> Disk {
        Disk {
            name: name.into(),
            ..Disk::default()
        }
    }

    #[test]
    fn models_follow_the_disk_type_and_bus() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.raw");
        std::fs::write(&img, vec![0u8; 8192]).unwrap();
        let mut d = disk("root");
        d.disk = Some(DiskTarget {
            bus: Some(DiskBus::Virtio),
            ..DiskTarget::default()
        });
        d.serial = Some("S1".into());
        let p = plan_disk(0, &d, &img).unwrap();
        assert_eq!(p.model, DiskModel::VirtioBlk);
        assert_eq!(p.serial, "S1");
        d.disk.as_mut().unwrap().bus = Some(DiskBus::Scsi);
        d.disk.as_mut().unwrap().readonly = Some(true);
        let p = plan_disk(0, &d, &img).unwrap();
        assert_eq!(p.model, DiskModel::Scsi(UnitKind::Disk));
        assert!(p.options.read_only);

        let mut cd = disk("cd");
        cd.cdrom = Some(CdromTarget {
            bus: Some(DiskBus::Scsi),
            readonly: Some(false),
            tray: Some("open".into()),
        });
        let p = plan_disk(1, &cd, &img).unwrap();
        assert_eq!(
            p.model,
            DiskModel::Scsi(UnitKind::Cdrom { tray_open: true })
        );
        assert!(p.options.read_only, "a CD-ROM is read-only regardless");

        cd.cdrom.as_mut().unwrap().bus = None;
        assert_eq!(
            plan_disk(1, &cd, &img).unwrap().model,
            DiskModel::Sata(UnitKind::Cdrom { tray_open: true }),
            "a cdrom sits on sata unless told otherwise"
        );
        d.disk.as_mut().unwrap().bus = Some(DiskBus::Sata);
        assert_eq!(
            plan_disk(0, &d, &img).unwrap().model,
            DiskModel::Sata(UnitKind::Disk)
        );

        let mut lun = disk("lun");
        lun.lun = Some(DiskTarget::default());
        let e = plan_disk(2, &lun, &img).unwrap_err();
        assert!(
            matches!(e, DiskPlanError::LunNeedsBlockDevice { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("disks[2]"), "{e}");
        assert!(matches!(
            plan_disk(3, &disk("x"), &img),
            Err(DiskPlanError::NoTarget { .. })
        ));
    }

    #[test]
    fn build_puts_scsi_disks_on_one_controller() {
        let dir = tempfile::tempdir().unwrap();
        let img = |n: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, vec![0u8; 8192]).unwrap();
            p
        };
        let plan = |name: &str, model: DiskModel, image: PathBuf| DiskPlan {
            name: name.into(),
            model,
            options: DiskOptions {
                read_only: true,
                shareable: false,
                incoming: false,
            },
            serial: String::new(),
            image,
        };
        let plans = vec![
            plan("root", DiskModel::VirtioBlk, img("a")),
            plan(
                "cd",
                DiskModel::Scsi(UnitKind::Cdrom { tray_open: false }),
                img("b"),
            ),
            plan("data", DiskModel::Scsi(UnitKind::Disk), img("c")),
        ];
        let devices = build_disks(&plans).unwrap();
        assert_eq!(devices.virtio_blk.len(), 1);
        assert_eq!(devices.scsi_targets, ["cd", "data"]);
        assert!(devices.scsi.is_some());
        let missing = vec![plan("gone", DiskModel::VirtioBlk, dir.path().join("nope"))];
        assert!(matches!(
            build_disks(&missing),
            Err(DiskPlanError::Open { .. })
        ));
    }
}
