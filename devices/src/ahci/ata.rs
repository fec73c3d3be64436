//! The ATA side of a SATA port: the command a Register H2D FIS carries,
//! what the device answers, and the ATA/ATAPI-8 command set of a disk
//! (IDENTIFY DEVICE, READ/WRITE DMA and PIO in 28- and 48-bit forms, FLUSH
//! CACHE, DATA SET MANAGEMENT TRIM, READ VERIFY and the power and
//! feature commands drivers send at start-up).

use std::io;
use std::sync::Arc;

use super::prdt::Prdt;
use crate::block::BlockBackend;
use crate::scsi::DataOut;

/// Status register: error.
pub(crate) const STATUS_ERR: u8 = 0x01;
/// Status register: seek complete / service (set with DRDY by convention).
pub(crate) const STATUS_DSC: u8 = 0x10;
/// Status register: device ready.
pub(crate) const STATUS_DRDY: u8 = 0x40;
/// Status register: busy.
pub(crate) const STATUS_BSY: u8 = 0x80;
/// Error register: command aborted.
pub(crate) const ERROR_ABRT: u8 = 0x04;
/// Error register: address not found (out of range).
const ERROR_IDNF: u8 = 0x10;
/// Error register: uncorrectable data.
const ERROR_UNC: u8 = 0x40;

const SECTOR: u64 = 512;
/// 512-byte blocks of TRIM ranges one DATA SET MANAGEMENT may carry (64
/// ranges each).
const TRIM_BLOCKS: u16 = 8;

/// The command fields of a Register H2D FIS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Command {
    pub(crate) command: u8,
    pub(crate) features: u16,
    pub(crate) lba: u64,
    pub(crate) count: u16,
    pub(crate) device: u8,
}

impl Command {
    /// Decode the 20 bytes of a Register H2D FIS (type 0x27).
    pub(crate) fn from_fis(f: &[u8; 20]) -> Self {
        Command {
            command: f[2],
            features: u16::from_le_bytes([f[3], f[11]]),
            lba: u64::from_le_bytes([f[4], f[5], f[6], f[8], f[9], f[10], 0, 0]),
            count: u16::from_le_bytes([f[12], f[13]]),
            device: f[7],
        }
    }

    /// LBA and sector count of a 28-bit command (count 0 means 256).
    fn lba28(&self) -> (u64, u64) {
        let lba = (self.lba & 0xff_ffff) | u64::from(self.device & 0x0f) << 24;
        let count = match self.count & 0xff {
            0 => 256,
            n => u64::from(n),
        };
        (lba, count)
    }

    /// LBA and sector count of a 48-bit command (count 0 means 65536).
    fn lba48(&self) -> (u64, u64) {
        let count = match self.count {
            0 => 65536,
            n => u64::from(n),
        };
        (self.lba, count)
    }
}

/// What the device reports when a command ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Completion {
    pub(crate) status: u8,
    pub(crate) error: u8,
    /// Bytes moved through the PRDT.
    pub(crate) transferred: u32,
    /// The command moved data by PIO (the HBA posts a PIO Setup FIS).
    pub(crate) pio: bool,
    /// Sector count field of the result (CHECK POWER MODE, ATAPI
    /// interrupt reason).
    pub(crate) count: u16,
    /// LBA field of the result (signatures).
    pub(crate) lba: u64,
}

impl Completion {
    pub(crate) fn ok() -> Self {
        Completion {
            status: STATUS_DRDY | STATUS_DSC,
            error: 0,
            transferred: 0,
            pio: false,
            count: 0,
            lba: 0,
        }
    }

    pub(crate) fn error(error: u8) -> Self {
        Completion {
            status: STATUS_DRDY | STATUS_ERR,
            error,
            ..Completion::ok()
        }
    }

    fn moved(bytes: u64, pio: bool) -> Self {
        Completion {
            transferred: bytes as u32,
            pio,
            ..Completion::ok()
        }
    }

    /// Whether the command failed.
    pub(crate) fn failed(&self) -> bool {
        self.status & STATUS_ERR != 0
    }
}

/// Commands every SATA device answers the same way.
pub(crate) fn common_command(cmd: &Command) -> Option<Completion> {
    Some(match cmd.command {
        // CHECK POWER MODE: active or idle.
        0xe5 => Completion {
            count: 0xff,
            ..Completion::ok()
        },
        // SET FEATURES (transfer mode, write cache, …), INITIALIZE DEVICE
        // PARAMETERS, IDLE/STANDBY (IMMEDIATE), SLEEP-less power
        // management and SECURITY FREEZE LOCK change nothing a virtual
        // device keeps.
        0xef | 0x91 | 0xe0..=0xe3 | 0xf5 => Completion::ok(),
        // RECALIBRATE.
        0x10..=0x1f => Completion::ok(),
        _ => return None,
    })
}

/// Fill an ATA string field: ASCII, space padded, two characters per
/// word with the first in the high byte.
fn ata_string(words: &mut [u16], text: &str) {
    let mut bytes = text.bytes().filter(|b| b.is_ascii_graphic() || *b == b' ');
    for w in words {
        let hi = bytes.next().unwrap_or(b' ');
        let lo = bytes.next().unwrap_or(b' ');
        *w = u16::from_be_bytes([hi, lo]);
    }
}

/// IDENTIFY (PACKET) DEVICE words shared by disks and ATAPI drives, with
/// the serial, firmware revision and model filled in.
pub(crate) fn identify_base(serial: &str, model: &str) -> [u16; 256] {
    let mut id = [0u16; 256];
    ata_string(&mut id[10..20], serial);
    ata_string(&mut id[23..27], env!("CARGO_PKG_VERSION"));
    ata_string(&mut id[27..47], model);
    id[49] = 0x0300; // LBA and DMA
    id[53] = 0x0006; // words 64-70 and 88 are valid
    id[63] = 0x0407; // multiword DMA 0-2, mode 2 selected
    id[64] = 0x0003; // PIO modes 3 and 4
    id[65..69].fill(120); // cycle times (ns)
    id[76] = 0x000e; // SATA gen 1, 2 and 3
    id[80] = 0x01f0; // ATA/ATAPI-4 to ATA8-ACS
    id[84] = 0x4000;
    id[87] = 0x4000;
    id[88] = 0x207f; // UDMA 0-6, mode 5 selected
    id[222] = 0x103f; // serial transport, SATA 1.0a to 3.0
    id
}

/// Serialise IDENTIFY data, closing it with the integrity word (checksum
/// byte so that all 512 bytes sum to zero, signature 0xA5).
pub(crate) fn identify_bytes(mut id: [u16; 256]) -> Vec<u8> {
    id[255] = 0x00a5;
    let sum = id[..255]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .fold(0xa5u8, u8::wrapping_add);
    id[255] |= u16::from(sum.wrapping_neg()) << 8;
    id.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// An ATA disk over a block backend.
pub(crate) struct AtaDisk {
    backend: Arc<dyn BlockBackend>,
    serial: String,
    multiple: u16,
}

impl std::fmt::Debug for AtaDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AtaDisk")
            .field("serial", &self.serial)
            .field("sectors", &self.sectors())
            .finish_non_exhaustive()
    }
}

/// Whether SET MULTIPLE MODE takes `n` sectors per block: 0 (off) or a
/// power of two up to 16.
pub(crate) fn valid_multiple(n: u16) -> bool {
    n <= 16 && (n == 0 || n.is_power_of_two())
}

impl AtaDisk {
    /// Sectors per DRQ block of READ/WRITE MULTIPLE (0: off), for
    /// migration.
    pub(crate) fn multiple(&self) -> u16 {
        self.multiple
    }

    /// Load a migrated [`AtaDisk::multiple`] (the port checked it).
    pub(crate) fn set_multiple(&mut self, n: u16) {
        self.multiple = n;
    }

    pub(crate) fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.backend
    }

    pub(crate) fn new(backend: Arc<dyn BlockBackend>, serial: &str) -> Self {
        AtaDisk {
            backend,
            serial: serial.to_string(),
            multiple: 16,
        }
    }

    fn sectors(&self) -> u64 {
        self.backend.size() / SECTOR
    }

    /// Run `cmd`, moving its data through `prdt`.
    pub(crate) fn execute(&mut self, cmd: &Command, prdt: &Prdt<'_>) -> Completion {
        let pio = matches!(
            cmd.command,
            0x20 | 0x24 | 0x29 | 0x30 | 0x34 | 0x39 | 0xc4 | 0xc5
        );
        match cmd.command {
            0xec => match prdt.copy_to_guest(&identify_bytes(self.identify())) {
                Ok(()) => Completion::moved(SECTOR, true),
                Err(e) => transfer_failed(cmd, &e),
            },
            // READ DMA / SECTORS / MULTIPLE, 28- and 48-bit.
            0xc8 | 0x20 | 0xc4 => self.read(cmd, cmd.lba28(), prdt, pio),
            0x25 | 0x24 | 0x29 => self.read(cmd, cmd.lba48(), prdt, pio),
            // WRITE DMA / SECTORS / MULTIPLE, 28- and 48-bit.
            0xca | 0x30 | 0xc5 => self.write(cmd, cmd.lba28(), prdt, pio),
            0x35 | 0x34 | 0x39 => self.write(cmd, cmd.lba48(), prdt, pio),
            // READ VERIFY SECTORS (EXT): nothing to verify beyond range.
            0x40 => self.verify(cmd.lba28()),
            0x42 => self.verify(cmd.lba48()),
            // FLUSH CACHE (EXT).
            0xe7 | 0xea => match self.backend.flush() {
                Ok(()) => Completion::ok(),
                Err(e) => {
                    log::warn!("ahci: flush failed: {e}");
                    Completion::error(ERROR_ABRT)
                }
            },
            0x06 if cmd.features & 1 == 1 => self.trim(cmd, prdt),
            // SET MULTIPLE MODE: 0 disables, else a power of two up to 16.
            0xc6 => {
                let n = cmd.count & 0xff;
                if valid_multiple(n) {
                    self.multiple = n;
                    Completion::ok()
                } else {
                    Completion::error(ERROR_ABRT)
                }
            }
            _ => common_command(cmd).unwrap_or(Completion::error(ERROR_ABRT)),
        }
    }

    fn in_range(&self, (lba, count): (u64, u64)) -> bool {
        lba.checked_add(count)
            .is_some_and(|end| end <= self.sectors())
    }

    fn read(&self, cmd: &Command, range: (u64, u64), prdt: &Prdt<'_>, pio: bool) -> Completion {
        if !self.in_range(range) {
            return Completion::error(ERROR_IDNF);
        }
        let bytes = range.1 * SECTOR;
        let mut buf = vec![0u8; bytes as usize];
        if let Err(e) = self.backend.read_at(&mut buf, range.0 * SECTOR) {
            log::warn!(
                "ahci: read of {} sectors at {} failed: {e}",
                range.1,
                range.0
            );
            return Completion::error(ERROR_UNC);
        }
        match prdt.copy_to_guest(&buf) {
            Ok(()) => Completion::moved(bytes, pio),
            Err(e) => transfer_failed(cmd, &e),
        }
    }

    fn write(&self, cmd: &Command, range: (u64, u64), prdt: &Prdt<'_>, pio: bool) -> Completion {
        if self.backend.read_only() {
            return Completion::error(ERROR_ABRT);
        }
        if !self.in_range(range) {
            return Completion::error(ERROR_IDNF);
        }
        let bytes = range.1 * SECTOR;
        let mut buf = vec![0u8; bytes as usize];
        if let Err(e) = prdt.reader().read_exact(&mut buf) {
            return transfer_failed(cmd, &e);
        }
        match self.backend.write_at(&buf, range.0 * SECTOR) {
            Ok(()) => Completion::moved(bytes, pio),
            Err(e) => {
                log::warn!(
                    "ahci: write of {} sectors at {} failed: {e}",
                    range.1,
                    range.0
                );
                Completion::error(ERROR_ABRT)
            }
        }
    }

    fn verify(&self, range: (u64, u64)) -> Completion {
        if self.in_range(range) {
            Completion::ok()
        } else {
            Completion::error(ERROR_IDNF)
        }
    }

    /// DATA SET MANAGEMENT with TRIM: `count` 512-byte blocks of range
    /// entries (48-bit LBA, 16-bit length; length 0 is unused), at most
    /// the [`TRIM_BLOCKS`] IDENTIFY offers.
    fn trim(&self, cmd: &Command, prdt: &Prdt<'_>) -> Completion {
        let blocks = u64::from(cmd.count);
        if self.backend.read_only() || blocks == 0 || blocks > u64::from(TRIM_BLOCKS) {
            return Completion::error(ERROR_ABRT);
        }
        let mut buf = vec![0u8; (blocks * SECTOR) as usize];
        if let Err(e) = prdt.reader().read_exact(&mut buf) {
            return transfer_failed(cmd, &e);
        }
        for entry in buf.chunks_exact(8) {
            let raw = u64::from_le_bytes([
                entry[0], entry[1], entry[2], entry[3], entry[4], entry[5], entry[6], entry[7],
            ]);
            let (lba, len) = (raw & 0xffff_ffff_ffff, raw >> 48);
            if len == 0 {
                continue;
            }
            if !self.in_range((lba, len)) {
                return Completion::error(ERROR_IDNF);
            }
            if let Err(e) = self.backend.discard(lba * SECTOR, len * SECTOR) {
                log::warn!("ahci: trim of {len} sectors at {lba} failed: {e}");
                return Completion::error(ERROR_ABRT);
            }
        }
        Completion::moved(blocks * SECTOR, false)
    }

    fn identify(&self) -> [u16; 256] {
        let sectors = self.sectors();
        let mut id = identify_base(&self.serial, "VIRTKIT HARDDISK");
        id[0] = 0x0040; // fixed, not removable
        let cylinders = (sectors / (16 * 63)).min(16383) as u16;
        (id[1], id[3], id[6]) = (cylinders, 16, 63);
        (id[54], id[55], id[56]) = (cylinders, 16, 63);
        let chs = u32::from(cylinders) * 16 * 63;
        (id[57], id[58]) = (chs as u16, (chs >> 16) as u16);
        id[47] = 0x8000 | 16; // READ/WRITE MULTIPLE: up to 16 sectors
        id[59] = 0x0100 | self.multiple;
        let lba28 = sectors.min(0x0fff_ffff) as u32;
        (id[60], id[61]) = (lba28 as u16, (lba28 >> 16) as u16);
        id[82] = 1 << 5; // volatile write cache
        id[83] = 0x4000 | 1 << 13 | 1 << 12 | 1 << 10; // FLUSH EXT, FLUSH, LBA48
        id[85] = 1 << 5;
        id[86] = 1 << 13 | 1 << 12 | 1 << 10;
        for (i, w) in id[100..104].iter_mut().enumerate() {
            *w = (sectors >> (16 * i)) as u16;
        }
        id[106] = 0x4000; // one 512-byte logical sector per physical one
        if !self.backend.read_only() {
            id[105] = TRIM_BLOCKS;
            id[169] = 1; // DATA SET MANAGEMENT TRIM
        }
        id[217] = 1; // non-rotating medium
        id
    }
}

fn transfer_failed(cmd: &Command, e: &io::Error) -> Completion {
    log::warn!("ahci: command {:#04x}: {e}", cmd.command);
    Completion::error(ERROR_ABRT)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn fis_fields_decode_as_ata_lays_them_out() {
        let mut f = [0u8; 20];
        f[0] = 0x27;
        f[1] = 0x80;
        f[2] = 0x25;
        f[3] = 0x11;
        f[4..7].copy_from_slice(&[1, 2, 3]);
        f[7] = 0x40;
        f[8..11].copy_from_slice(&[4, 5, 6]);
        f[11] = 0x22;
        f[12..14].copy_from_slice(&[0x10, 0x01]);
        let c = Command::from_fis(&f);
        assert_eq!(c.command, 0x25);
        assert_eq!(c.features, 0x2211);
        assert_eq!(c.lba, 0x0605_0403_0201);
        assert_eq!(c.count, 0x0110);
        assert_eq!(c.lba48(), (0x0605_0403_0201, 0x110));
        let c28 = Command {
            lba: 0x12_3456,
            device: 0x47,
            count: 0x100,
            ..c
        };
        assert_eq!(c28.lba28(), (0x712_3456, 256), "count 0 is 256 sectors");
        assert_eq!(Command { count: 0, ..c }.lba48().1, 65536);
    }

    #[test]
    fn identify_strings_are_byte_swapped_and_the_checksum_closes() {
        let disk = AtaDisk::new(
            Arc::new(crate::block::MemoryDisk::new(vec![0; 1 << 20], false)),
            "SER-1",
        );
        let bytes = identify_bytes(disk.identify());
        assert_eq!(bytes.len(), 512);
        assert_eq!(
            &bytes[20..26],
            b"ES-R 1",
            "word 10 holds 'SE' high byte first"
        );
        assert_eq!(&bytes[54..70], b"IVTRIK TAHDRIDKS");
        assert_eq!(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(bytes[510], 0xa5);
        let word = |i: usize| u16::from_le_bytes([bytes[2 * i], bytes[2 * i + 1]]);
        assert_eq!(word(100), 2048, "LBA48 capacity in sectors");
        assert_eq!(word(60), 2048);
        assert_eq!(word(169) & 1, 1, "TRIM on a writable disk");
    }
}
