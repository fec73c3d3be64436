//! An AHCI SATA controller (the ICH9 function q35 has, 8086:2922) with
//! ATA disks and ATAPI CD/DVD-ROMs on its six ports: KubeVirt's `sata`
//! bus, the default for `cdrom` and what Windows guests use without
//! virtio drivers.
//!
//! The controller is one PCI function with its registers in BAR 5 (ABAR)
//! and one MSI-X vector. Commands run when the driver sets PxCI, in the
//! vCPU thread that wrote it: a SATA controller is the compatibility path,
//! not the fast one (that is virtio-blk), and running inline keeps the
//! ordering rules of the command list trivially right.
//!
//! ```
//! use std::sync::Arc;
//! use virtkit_devices::ahci::{AhciController, SataDrive};
//! use virtkit_devices::block::MemoryDisk;
//! # struct NoMsi;
//! # impl virtkit_devices::pci::MsiSink for NoMsi { fn send(&self, _: u64, _: u32) {} }
//! let memory = virtkit_core::runtime::memory::create(16 << 20).unwrap();
//! let disk = Arc::new(MemoryDisk::new(vec![0; 1 << 20], false));
//! let cd = Arc::new(MemoryDisk::new(vec![0; 2048 * 16], true));
//! let ahci = AhciController::new(
//!     vec![SataDrive::disk(disk, "SYS-1"), SataDrive::cdrom(cd, "CD-1", false)],
//!     memory,
//!     Arc::new(NoMsi),
//! )
//! .unwrap();
//! assert_eq!(ahci.ports(), 2);
//! ```

mod ata;
mod atapi;
mod port;
mod prdt;
mod snapshot;

use std::sync::Arc;

use virtkit_core::runtime::memory::GuestMem;

use crate::block::BlockBackend;
use crate::pci::config::COMMAND_BUS_MASTER;
use crate::pci::msix::{MsiSink, MsixTable};
use crate::pci::{BarSpec, ConfigSpace, PciDevice, PciIds};
use crate::scsi::{ScsiUnit, UnitKind};
use ata::AtaDisk;
use atapi::AtapiCdrom;
use port::{Drive, Port, PORT_REGS_LEN, SLOTS};

/// Ports the controller has (as ICH9's).
pub const MAX_PORTS: usize = 6;
/// The BAR holding the HBA registers (ABAR).
pub const ABAR: usize = 5;
/// Size of the ABAR.
pub const ABAR_SIZE: u64 = 0x2000;
/// Offset of the first port's registers in the ABAR.
pub const PORTS_OFFSET: u64 = 0x100;
/// MSI-X table offset in the ABAR.
pub const MSIX_TABLE_OFFSET: u64 = 0x1000;
/// MSI-X PBA offset in the ABAR.
pub const MSIX_PBA_OFFSET: u64 = 0x1800;
/// PCI IDs: Intel ICH9 AHCI (the q35 SATA function).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device ID of ICH9's AHCI function.
pub const DEVICE_ID: u16 = 0x2922;

// Generic host control registers.
const CAP: u64 = 0x00;
const GHC: u64 = 0x04;
const IS: u64 = 0x08;
const PI: u64 = 0x0c;
const VS: u64 = 0x10;
const GHC_HR: u32 = 1 << 0;
const GHC_IE: u32 = 1 << 1;
const GHC_AE: u32 = 1 << 31;
/// CAP: 64-bit addressing, command list override, AHCI only, 6 Gb/s
/// interface speed, 32 command slots (NCS), and NP filled in per port
/// count. No NCQ, staggered spin-up, port multipliers or enclosure
/// management.
const CAP_FIXED: u32 = 1 << 31 | 1 << 24 | 1 << 18 | 3 << 20 | (SLOTS - 1) << 8;
/// AHCI 1.3.
const VERSION: u32 = 0x0001_0300;

/// A drive for a SATA port.
pub struct SataDrive(Drive);

impl std::fmt::Debug for SataDrive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl SataDrive {
    /// An ATA disk (KubeVirt `disk` on bus `sata`); `serial` goes to
    /// IDENTIFY DEVICE.
    pub fn disk(backend: Arc<dyn BlockBackend>, serial: &str) -> Self {
        SataDrive(Drive::Disk(AtaDisk::new(backend, serial)))
    }

    /// An ATAPI CD/DVD-ROM (KubeVirt `cdrom`), read-only with 2048-byte
    /// blocks; `tray_open` starts it with no medium visible.
    pub fn cdrom(backend: Arc<dyn BlockBackend>, serial: &str, tray_open: bool) -> Self {
        let unit = ScsiUnit::new(backend, UnitKind::Cdrom { tray_open }, serial);
        SataDrive(Drive::Cdrom(AtapiCdrom::new(unit, serial)))
    }
}

/// Why a controller could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AhciError {
    /// More drives than ports.
    #[error("{drives} SATA drives do not fit the controller's {MAX_PORTS} ports")]
    TooManyDrives {
        /// Drives asked for.
        drives: usize,
    },
    /// The MSI-X capability did not fit configuration space.
    #[error("no room for the MSI-X capability in the AHCI function's configuration space")]
    ConfigSpaceFull,
    /// The port has no drive, or no CD-ROM.
    #[error("SATA port {port} has no CD-ROM")]
    NotACdrom {
        /// The port.
        port: usize,
    },
}

/// The AHCI controller as a PCI function.
pub struct AhciController {
    config: ConfigSpace,
    memory: GuestMem,
    msix: MsixTable,
    ports: Vec<Port>,
    ghc: u32,
    /// Ports whose interrupt the driver has not acknowledged in IS.
    is: u32,
}

impl std::fmt::Debug for AhciController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AhciController")
            .field("ports", &self.ports)
            .field("ghc", &self.ghc)
            .finish_non_exhaustive()
    }
}

impl AhciController {
    /// A controller with `drives` on ports 0, 1, …; `memory` is the
    /// guest's memory and `msi` where its MSI-X message goes.
    pub fn new(
        drives: Vec<SataDrive>,
        memory: GuestMem,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Self, AhciError> {
        if drives.len() > MAX_PORTS {
            return Err(AhciError::TooManyDrives {
                drives: drives.len(),
            });
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: VENDOR_ID,
            device: DEVICE_ID,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            class: [0x01, 0x06, 0x01], // mass storage, SATA, AHCI 1.0
            revision: 0x02,
        });
        let msix = MsixTable::new(
            &mut config,
            1,
            ABAR as u8,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
            msi,
        )
        .ok_or(AhciError::ConfigSpaceFull)?;
        let mut ports: Vec<Port> = drives.into_iter().map(|d| Port::new(Some(d.0))).collect();
        if ports.is_empty() {
            ports.push(Port::new(None));
        }
        Ok(AhciController {
            config,
            memory,
            msix,
            ports,
            ghc: GHC_AE,
            is: 0,
        })
    }

    /// Ports the controller implements (at least one, empty or not).
    pub fn ports(&self) -> usize {
        self.ports.len()
    }

    /// Open or close the tray of the CD-ROM on `port`. After it closes,
    /// the drive reports UNIT ATTENTION (medium may have changed) once.
    pub fn set_tray_open(&mut self, port: usize, open: bool) -> Result<(), AhciError> {
        match self.ports.get_mut(port).and_then(|p| p.drive.as_mut()) {
            Some(Drive::Cdrom(cd)) => {
                cd.set_tray_open(open);
                Ok(())
            }
            _ => Err(AhciError::NotACdrom { port }),
        }
    }

    fn cap(&self) -> u32 {
        CAP_FIXED | (self.ports.len() as u32 - 1)
    }

    fn read_register(&self, offset: u64) -> u32 {
        match offset {
            CAP => self.cap(),
            GHC => self.ghc,
            IS => self.is,
            PI => (1u32 << self.ports.len()) - 1,
            VS => VERSION,
            o if o >= PORTS_OFFSET => {
                let index = ((o - PORTS_OFFSET) / PORT_REGS_LEN) as usize;
                self.ports
                    .get(index)
                    .map_or(0, |p| p.read((o - PORTS_OFFSET) % PORT_REGS_LEN))
            }
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        let dma = self.config.command() & COMMAND_BUS_MASTER != 0;
        match offset {
            GHC if value & GHC_HR != 0 => {
                for p in &mut self.ports {
                    p.reset();
                }
                self.ghc = GHC_AE;
                self.is = 0;
            }
            GHC => {
                let enabling = value & GHC_IE != 0 && self.ghc & GHC_IE == 0;
                self.ghc = GHC_AE | (value & GHC_IE);
                if enabling && self.is != 0 {
                    self.msix.trigger(0);
                }
            }
            IS => {
                self.is &= !value;
                // A port whose causes are still pending sets its bit again.
                self.deliver();
            }
            o if o >= PORTS_OFFSET => {
                let index = ((o - PORTS_OFFSET) / PORT_REGS_LEN) as usize;
                let memory = &self.memory;
                if let Some(p) = self.ports.get_mut(index) {
                    p.write((o - PORTS_OFFSET) % PORT_REGS_LEN, value, memory, dma);
                }
                self.deliver();
            }
            _ => {}
        }
    }

    /// Fold the ports' pending causes into IS and send the message for
    /// what was newly raised.
    fn deliver(&mut self) {
        let mut news = false;
        for (i, p) in self.ports.iter_mut().enumerate() {
            news |= p.take_interrupt();
            if p.interrupt_pending() {
                self.is |= 1 << i;
            }
        }
        if news && self.ghc & GHC_IE != 0 {
            self.msix.trigger(0);
        }
    }
}

impl PciDevice for AhciController {
    fn disks(&self) -> Vec<Arc<dyn BlockBackend>> {
        self.ports
            .iter()
            .filter_map(|p| p.drive.as_ref().map(|d| d.backend().clone()))
            .collect()
    }

    fn name(&self) -> &str {
        "ahci"
    }

    fn bars(&self) -> Vec<(usize, BarSpec)> {
        vec![(ABAR, BarSpec::memory32(ABAR_SIZE))]
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, _offset: usize, _len: usize) {
        self.msix.config_written(&self.config);
        // Commands queued while bus mastering was off run once it is on.
        if self.config.command() & COMMAND_BUS_MASTER != 0 {
            for p in &mut self.ports {
                p.run(&self.memory);
            }
            self.deliver();
        }
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => self.msix.read_pba(o - MSIX_PBA_OFFSET, data),
            o => {
                // Registers are 32 bits wide; narrower reads take a part.
                let value = self.read_register(o & !3).to_le_bytes();
                let start = (o & 3) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = value.get(start + i).copied().unwrap_or(0);
                }
            }
        }
    }

    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        snapshot::save(self)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        snapshot::restore(self, state)
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.write_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => {}
            o if o & 3 == 0 && data.len() >= 4 => {
                let value = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
                self.write_register(o, value);
                if data.len() == 8 {
                    let high = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
                    self.write_register(o + 4, high);
                }
            }
            o => log::warn!(
                "ahci: {}-byte write at {o:#x} ignored; registers take dwords",
                data.len()
            ),
        }
    }
}
