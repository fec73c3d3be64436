//! Boot the way a BIOS walks its boot order, done by the VMM: try each
//! device of the VMI's [`boot_order`](crate::boot_order) in turn — a NIC
//! by [network boot](crate::netboot), a disk by its first sector with the
//! 0x55AA signature — and load the first boot program found at 0x7c00,
//! entered in real mode at 0000:7C00 as BIOS and PXE ROMs do. A device
//! that fails is recorded in the [`BootReport`] and the next one is tried
//! (PXE with no server falls through to the disk after the DHCP timeout).

use virtkit_core::runtime::{BootState, RuntimeError, Vm};
use virtkit_devices::block::BlockBackend;

use crate::netboot::{network_boot, BootReport, FrameLink, NetbootConfig};

/// Where boot programs are loaded.
pub const LOAD_ADDR: u64 = 0x7c00;
/// A boot sector's size and signature.
const SECTOR: usize = 512;
const SIGNATURE: [u8; 2] = [0x55, 0xaa];

/// One device to try.
pub enum BootCandidate<'a> {
    /// A NIC: network boot through its backend.
    Network {
        /// Field path of the interface.
        device: String,
        /// The NIC's frames.
        link: &'a mut dyn FrameLink,
        /// MAC, timeouts and retries.
        config: NetbootConfig,
    },
    /// A disk: its first sector.
    Disk {
        /// Field path of the disk.
        device: String,
        /// The disk as the VM's block device opened it.
        backend: &'a dyn BlockBackend,
    },
}

impl std::fmt::Debug for BootCandidate<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootCandidate::Network { device, config, .. } => f
                .debug_struct("Network")
                .field("device", device)
                .field("config", config)
                .finish_non_exhaustive(),
            BootCandidate::Disk { device, .. } => f
                .debug_struct("Disk")
                .field("device", device)
                .finish_non_exhaustive(),
        }
    }
}

/// The boot program chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootImage {
    /// The device it came from.
    pub device: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// No device gave a boot program.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no bootable device; tried:\n{report}")]
pub struct NoBootableDevice {
    /// What each attempt did.
    pub report: BootReport,
}

/// Why a disk is not bootable.
#[derive(Debug, thiserror::Error)]
enum DiskBootError {
    #[error("reading the first sector: {0}")]
    Read(#[from] std::io::Error),
    #[error("the first sector ends in {0:02x?}, not the boot signature 55 aa")]
    NoSignature([u8; 2]),
}

/// Try `candidates` in order; the first boot program found wins. `report`
/// gets every step, including the failed ones.
pub fn choose(
    candidates: Vec<BootCandidate<'_>>,
    report: &mut BootReport,
) -> Result<BootImage, NoBootableDevice> {
    for candidate in candidates {
        match candidate {
            BootCandidate::Network {
                device,
                link,
                config,
            } => {
                if let Ok(image) = network_boot(link, &config, &device, report) {
                    return Ok(BootImage {
                        device,
                        bytes: image.bytes,
                    });
                }
            }
            BootCandidate::Disk { device, backend } => {
                let sector = report.step(
                    &device,
                    "read",
                    || {
                        let mut sector = vec![0u8; SECTOR];
                        backend.read_at(&mut sector, 0)?;
                        let tail = [sector[510], sector[511]];
                        if tail != SIGNATURE {
                            return Err(DiskBootError::NoSignature(tail));
                        }
                        Ok(sector)
                    },
                    |_| "boot sector with signature 55 aa".to_string(),
                );
                if let Ok(bytes) = sector {
                    return Ok(BootImage { device, bytes });
                }
            }
        }
    }
    Err(NoBootableDevice {
        report: report.clone(),
    })
}

impl BootImage {
    /// Copy the program to 0x7c00 and point vCPU 0 at 0000:7C00 in real
    /// mode.
    pub fn load(&self, vm: &Vm) -> Result<BootState, RuntimeError> {
        vm.write_memory(LOAD_ADDR, &self.bytes)?;
        let state = BootState::RealMode {
            cs: 0,
            ip: LOAD_ADDR as u16,
        };
        vm.set_boot(&state)?;
        Ok(state)
    }
}
