//! PCI expansion ROMs (PCI Firmware 3.0 §5): the NIC option ROM a guest's
//! firmware runs to boot from the network — Debian's `ipxe-qemu`
//! `efi-virtio.rom` (a legacy PXE image and an x64 EFI driver) for
//! virtio-net. The file is checked before a device exposes it behind its
//! ROM BAR ([`virtkit_devices::pci::PciDevice::rom`]): every image has the
//! 0x55AA signature and a `PCIR` structure, lies inside the file, legacy
//! images checksum to zero, EFI images carry the EFI signature, the last
//! one is marked last, and some image names the function's vendor and
//! device ID (directly or in its PCI 3.0 device list).
//!
//! ```no_run
//! use virtkit_firmware_loader::option_rom::{OptionRom, IPXE_VIRTIO_ROM};
//! let rom = OptionRom::load(IPXE_VIRTIO_ROM.as_ref(), 0x1af4, 0x1041).unwrap();
//! assert!(rom.images.iter().any(|i| i.efi_machine == Some(0x8664)));
//! // device = device.with_rom(rom.bytes);
//! ```

use std::path::{Path, PathBuf};

/// Debian's iPXE ROM for virtio-net (`ipxe-qemu`).
pub const IPXE_VIRTIO_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// The largest ROM a 32-bit ROM BAR is given.
pub const MAX_ROM: usize = 16 << 20;
const PCIR: &[u8; 4] = b"PCIR";
const EFI_SIGNATURE: u32 = 0x0ef1;

/// What an image's code is for (PCIR code type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeType {
    /// x86 legacy BIOS (PXE).
    PcBios,
    /// Open Firmware.
    OpenFirmware,
    /// HP PA-RISC.
    Hppa,
    /// A UEFI driver.
    Efi,
    /// Something else.
    Other(u8),
}

/// One image of a ROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RomImage {
    /// Offset in the file.
    pub offset: usize,
    /// Length (the PCIR image length).
    pub len: usize,
    /// What the code is for.
    pub code_type: CodeType,
    /// PCIR vendor ID.
    pub vendor: u16,
    /// PCIR device ID, then the PCI 3.0 device list.
    pub devices: Vec<u16>,
    /// For EFI images: the machine type (0x8664 = x64).
    pub efi_machine: Option<u16>,
}

/// Why a ROM was refused.
#[derive(Debug, thiserror::Error)]
pub enum RomError {
    /// The file could not be read.
    #[error("option ROM {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is empty or larger than a ROM BAR maps.
    #[error("option ROM is {len} bytes; it must be 1 to {MAX_ROM}")]
    Size {
        /// Its length.
        len: usize,
    },
    /// An image does not start with 0x55AA.
    #[error("option ROM image at {offset:#x} has no 55 aa signature")]
    Signature {
        /// Image offset.
        offset: usize,
    },
    /// The PCI data structure is missing or outside the file.
    #[error("option ROM image at {offset:#x} has no PCIR structure")]
    NoPcir {
        /// Image offset.
        offset: usize,
    },
    /// An image's length is zero or runs past the file.
    #[error("option ROM image at {offset:#x} is {len} bytes long but the file ends at {file:#x}")]
    Length {
        /// Image offset.
        offset: usize,
        /// Its declared length.
        len: usize,
        /// File length.
        file: usize,
    },
    /// A legacy image does not checksum to zero.
    #[error("option ROM legacy image at {offset:#x} has a bad checksum")]
    Checksum {
        /// Image offset.
        offset: usize,
    },
    /// An EFI image lacks the EFI signature.
    #[error("option ROM EFI image at {offset:#x} has no EFI signature")]
    EfiSignature {
        /// Image offset.
        offset: usize,
    },
    /// No image carries the last-image flag.
    #[error("option ROM has no image marked last")]
    NoLastImage,
    /// No image is for this function.
    #[error("option ROM is for {offers}, not {vendor:04x}:{device:04x}")]
    WrongDevice {
        /// The function's vendor.
        vendor: u16,
        /// The function's device.
        device: u16,
        /// What the images name.
        offers: String,
    },
}

/// A checked ROM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionRom {
    /// The file's bytes, to hand to the device.
    pub bytes: Vec<u8>,
    /// Its images, in order.
    pub images: Vec<RomImage>,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parse the images of `bytes`.
pub fn parse(bytes: &[u8]) -> Result<Vec<RomImage>, RomError> {
    if bytes.is_empty() || bytes.len() > MAX_ROM {
        return Err(RomError::Size { len: bytes.len() });
    }
    let mut images = Vec::new();
    let mut offset = 0usize;
    loop {
        let image = bytes.get(offset..).unwrap_or(&[]);
        if image.get(..2) != Some(&[0x55, 0xaa]) {
            return Err(RomError::Signature { offset });
        }
        let pcir = usize::from(u16_at(image, 0x18).ok_or(RomError::NoPcir { offset })?);
        let p = image
            .get(pcir..pcir + 0x18)
            .filter(|p| &p[..4] == PCIR)
            .ok_or(RomError::NoPcir { offset })?;
        let vendor = u16::from_le_bytes([p[4], p[5]]);
        let mut devices = vec![u16::from_le_bytes([p[6], p[7]])];
        let list = usize::from(u16::from_le_bytes([p[8], p[9]]));
        if list != 0 {
            // PCI 3.0: a zero-terminated list of more device IDs.
            let mut at = pcir + list;
            while let Some(id) = u16_at(image, at).filter(|id| *id != 0) {
                devices.push(id);
                at += 2;
                if devices.len() > 256 {
                    break;
                }
            }
        }
        let len = usize::from(u16::from_le_bytes([p[0x10], p[0x11]])) * 512;
        if len == 0 || len > image.len() {
            return Err(RomError::Length {
                offset,
                len,
                file: bytes.len(),
            });
        }
        let code_type = match p[0x14] {
            0 => CodeType::PcBios,
            1 => CodeType::OpenFirmware,
            2 => CodeType::Hppa,
            3 => CodeType::Efi,
            other => CodeType::Other(other),
        };
        let body = &image[..len];
        let mut efi_machine = None;
        match code_type {
            CodeType::PcBios if body.iter().fold(0u8, |a, b| a.wrapping_add(*b)) != 0 => {
                return Err(RomError::Checksum { offset });
            }
            CodeType::Efi => {
                if u32_at(body, 4).map(|v| v & 0xffff) != Some(EFI_SIGNATURE) {
                    return Err(RomError::EfiSignature { offset });
                }
                efi_machine = u16_at(body, 0x0a);
            }
            _ => {}
        }
        let last = p[0x15] & 0x80 != 0;
        images.push(RomImage {
            offset,
            len,
            code_type,
            vendor,
            devices,
            efi_machine,
        });
        if last {
            return Ok(images);
        }
        offset += len;
        if offset >= bytes.len() {
            return Err(RomError::NoLastImage);
        }
    }
}

impl OptionRom {
    /// Check `bytes` as a ROM for function `vendor`:`device`.
    pub fn from_bytes(bytes: Vec<u8>, vendor: u16, device: u16) -> Result<Self, RomError> {
        let images = parse(&bytes)?;
        if !images
            .iter()
            .any(|i| i.vendor == vendor && i.devices.contains(&device))
        {
            let mut offers: Vec<String> = images
                .iter()
                .flat_map(|i| {
                    i.devices
                        .iter()
                        .map(move |d| format!("{:04x}:{d:04x}", i.vendor))
                })
                .collect();
            offers.sort();
            offers.dedup();
            return Err(RomError::WrongDevice {
                vendor,
                device,
                offers: offers.join(", "),
            });
        }
        Ok(OptionRom { bytes, images })
    }

    /// Read and check the ROM at `path` for function `vendor`:`device`.
    pub fn load(path: &Path, vendor: u16, device: u16) -> Result<Self, RomError> {
        let bytes = std::fs::read(path).map_err(|source| RomError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_bytes(bytes, vendor, device)
    }
}
