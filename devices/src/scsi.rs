//! SCSI logical units over a [`BlockBackend`]: a direct-access disk (also
//! what KubeVirt's `lun` disks get here) and an MMC CD/DVD-ROM (KubeVirt's
//! `cdrom`: always read-only, 2048-byte blocks, a tray that may be open).
//!
//! The command set is the one Linux and Windows use on such units:
//! TEST UNIT READY, REQUEST SENSE, INQUIRY (standard data and the VPD pages
//! 0x00, 0x80 serial, 0x83 identification), MODE SENSE(6/10), READ
//! CAPACITY(10/16), READ/WRITE(10/12/16), SYNCHRONIZE CACHE, START STOP
//! UNIT, PREVENT ALLOW MEDIUM REMOVAL, REPORT LUNS, and for the CD-ROM
//! READ TOC, GET CONFIGURATION, GET EVENT STATUS NOTIFICATION. Anything
//! else is CHECK CONDITION with ILLEGAL REQUEST / INVALID COMMAND
//! OPERATION CODE, as real units answer.

use std::io;

use crate::block::BlockBackend;

/// SCSI status GOOD.
pub const STATUS_GOOD: u8 = 0x00;
/// SCSI status CHECK CONDITION (sense data follows).
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

/// Sense keys used here.
const NOT_READY: u8 = 0x02;
const MEDIUM_ERROR: u8 = 0x03;
const ILLEGAL_REQUEST: u8 = 0x05;
const DATA_PROTECT: u8 = 0x07;

/// What kind of logical unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// A direct-access block device (peripheral type 0).
    Disk,
    /// An MMC CD/DVD-ROM (peripheral type 5), read-only.
    Cdrom {
        /// Whether the tray is open (no medium visible to the guest).
        tray_open: bool,
    },
}

/// Fixed-format sense data for a failed command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

impl Sense {
    /// The 18-byte fixed-format sense buffer.
    pub fn to_fixed(self) -> [u8; 18] {
        let mut s = [0u8; 18];
        s[0] = 0x70;
        s[2] = self.key;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
}

const INVALID_OPCODE: Sense = Sense {
    key: ILLEGAL_REQUEST,
    asc: 0x20,
    ascq: 0,
};
const INVALID_FIELD_IN_CDB: Sense = Sense {
    key: ILLEGAL_REQUEST,
    asc: 0x24,
    ascq: 0,
};
const LBA_OUT_OF_RANGE: Sense = Sense {
    key: ILLEGAL_REQUEST,
    asc: 0x21,
    ascq: 0,
};
const WRITE_PROTECTED: Sense = Sense {
    key: DATA_PROTECT,
    asc: 0x27,
    ascq: 0,
};
const MEDIUM_NOT_PRESENT_TRAY_OPEN: Sense = Sense {
    key: NOT_READY,
    asc: 0x3a,
    ascq: 0x02,
};
const UNRECOVERED_READ_ERROR: Sense = Sense {
    key: MEDIUM_ERROR,
    asc: 0x11,
    ascq: 0,
};

/// What a command produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// SCSI status byte.
    pub status: u8,
    /// Sense data when the status is CHECK CONDITION.
    pub sense: Option<Sense>,
    /// Data for the initiator (data-in), at most what it asked for.
    pub data_in: Vec<u8>,
}

impl Outcome {
    fn good(data_in: Vec<u8>) -> Self {
        Outcome {
            status: STATUS_GOOD,
            sense: None,
            data_in,
        }
    }

    fn check(sense: Sense) -> Self {
        Outcome {
            status: STATUS_CHECK_CONDITION,
            sense: Some(sense),
            data_in: Vec::new(),
        }
    }
}

/// Where the data-out bytes of a write come from.
pub trait DataOut {
    /// Fill `buf` completely, or fail.
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()>;
    /// Bytes still available.
    fn available(&self) -> usize;
}

impl DataOut for &[u8] {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        io::Read::read_exact(self, buf)
    }
    fn available(&self) -> usize {
        self.len()
    }
}

/// A logical unit over a backend.
pub struct ScsiUnit {
    backend: std::sync::Arc<dyn BlockBackend>,
    kind: UnitKind,
    serial: String,
    block_size: u64,
    /// Largest transfer served in one command (bytes).
    max_transfer: u64,
}

impl std::fmt::Debug for ScsiUnit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiUnit")
            .field("kind", &self.kind)
            .field("serial", &self.serial)
            .field("blocks", &self.blocks())
            .finish()
    }
}

impl ScsiUnit {
    /// A unit of `kind` serving `backend`; `serial` is reported in VPD
    /// page 0x80 (KubeVirt's disk `serial`).
    pub fn new(backend: std::sync::Arc<dyn BlockBackend>, kind: UnitKind, serial: &str) -> Self {
        let block_size = match kind {
            UnitKind::Disk => 512,
            UnitKind::Cdrom { .. } => 2048,
        };
        ScsiUnit {
            backend,
            kind,
            serial: serial.to_string(),
            block_size,
            max_transfer: 8 << 20,
        }
    }

    /// The image the unit serves.
    pub fn backend(&self) -> &std::sync::Arc<dyn BlockBackend> {
        &self.backend
    }

    /// What the unit is.
    pub fn kind(&self) -> UnitKind {
        self.kind
    }

    /// Open or close a CD-ROM's tray (no effect on a disk).
    pub fn set_tray_open(&mut self, open: bool) {
        if let UnitKind::Cdrom { tray_open } = &mut self.kind {
            *tray_open = open;
        }
    }

    fn read_only(&self) -> bool {
        matches!(self.kind, UnitKind::Cdrom { .. }) || self.backend.read_only()
    }

    fn blocks(&self) -> u64 {
        self.backend.size() / self.block_size
    }

    fn medium_present(&self) -> bool {
        !matches!(self.kind, UnitKind::Cdrom { tray_open: true })
    }

    /// Run the command `cdb`; `data_out` holds a write's data, and at
    /// most `allocation` bytes are returned as data-in.
    pub fn execute(&self, cdb: &[u8], data_out: &mut dyn DataOut, allocation: usize) -> Outcome {
        let Some(&opcode) = cdb.first() else {
            return Outcome::check(INVALID_OPCODE);
        };
        let mut out = match self.dispatch(opcode, cdb, data_out) {
            Ok(outcome) => outcome,
            Err(e) => {
                log::warn!("scsi: opcode {opcode:#04x} failed: {e}");
                Outcome::check(UNRECOVERED_READ_ERROR)
            }
        };
        out.data_in.truncate(allocation);
        out
    }

    fn dispatch(&self, opcode: u8, cdb: &[u8], data_out: &mut dyn DataOut) -> io::Result<Outcome> {
        let needs_medium = matches!(
            opcode,
            0x00 | 0x25 | 0x28 | 0x2a | 0x88 | 0x8a | 0xa8 | 0xaa | 0x9e | 0x35 | 0x43
        );
        if needs_medium && !self.medium_present() {
            return Ok(Outcome::check(MEDIUM_NOT_PRESENT_TRAY_OPEN));
        }
        let field = |i: usize| cdb.get(i).copied().unwrap_or(0);
        let be = |from: usize, n: usize| {
            (from..from + n).fold(0u64, |v, i| (v << 8) | u64::from(field(i)))
        };
        Ok(match opcode {
            0x00 => Outcome::good(Vec::new()),           // TEST UNIT READY
            0x03 => Outcome::good(self.request_sense()), // REQUEST SENSE
            0x12 => self.inquiry(field(1) & 1 != 0, field(2)),
            0x1a => Outcome::good(self.mode_sense(false)),
            0x5a => Outcome::good(self.mode_sense(true)),
            0x25 => Outcome::good(self.read_capacity_10()),
            0x9e if field(1) & 0x1f == 0x10 => Outcome::good(self.read_capacity_16()),
            0x28 => self.read(be(2, 4), be(7, 2))?,
            0xa8 => self.read(be(2, 4), be(6, 4))?,
            0x88 => self.read(be(2, 8), be(10, 4))?,
            0x2a => self.write(be(2, 4), be(7, 2), data_out)?,
            0xaa => self.write(be(2, 4), be(6, 4), data_out)?,
            0x8a => self.write(be(2, 8), be(10, 4), data_out)?,
            0x35 | 0x91 => {
                if !self.read_only() {
                    self.backend.flush()?;
                }
                Outcome::good(Vec::new())
            }
            0x1b | 0x1e => Outcome::good(Vec::new()), // START STOP, PREVENT ALLOW
            0xa0 => Outcome::good(report_luns()),
            0x43 if self.is_cdrom() => self.read_toc(field(1) & 2 != 0, field(2) & 0xf),
            0x46 if self.is_cdrom() => Outcome::good(self.get_configuration()),
            0x4a if self.is_cdrom() => Outcome::good(self.event_status()),
            _ => Outcome::check(INVALID_OPCODE),
        })
    }

    fn is_cdrom(&self) -> bool {
        matches!(self.kind, UnitKind::Cdrom { .. })
    }

    fn request_sense(&self) -> Vec<u8> {
        let sense = if self.medium_present() {
            Sense {
                key: 0,
                asc: 0,
                ascq: 0,
            }
        } else {
            MEDIUM_NOT_PRESENT_TRAY_OPEN
        };
        sense.to_fixed().to_vec()
    }

    fn inquiry(&self, evpd: bool, page: u8) -> Outcome {
        let peripheral = match self.kind {
            UnitKind::Disk => 0x00,
            UnitKind::Cdrom { .. } => 0x05,
        };
        if !evpd {
            if page != 0 {
                return Outcome::check(INVALID_FIELD_IN_CDB);
            }
            let mut d = vec![0u8; 36];
            d[0] = peripheral;
            d[1] = if self.is_cdrom() { 0x80 } else { 0 }; // removable
            d[2] = 0x05; // SPC-3
            d[3] = 0x02; // response data format
            d[4] = 31;
            d[7] = 0x02; // CmdQue
            d[8..16].copy_from_slice(b"VIRTKIT ");
            let product: &[u8; 16] = if self.is_cdrom() {
                b"VIRTKIT CD-ROM  "
            } else {
                b"VIRTKIT HARDDISK"
            };
            d[16..32].copy_from_slice(product);
            d[32..36].copy_from_slice(b"0.1 ");
            return Outcome::good(d);
        }
        let body: Vec<u8> = match page {
            0x00 => vec![0x00, 0x80, 0x83],
            0x80 => self.serial.as_bytes().iter().copied().take(252).collect(),
            0x83 => {
                // One ASCII vendor-specific designator: "VIRTKIT <serial>".
                let mut id = b"VIRTKIT ".to_vec();
                id.extend(self.serial.as_bytes().iter().take(200));
                let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
                d.extend(id);
                d
            }
            _ => return Outcome::check(INVALID_FIELD_IN_CDB),
        };
        let mut d = vec![peripheral, page, 0, body.len() as u8];
        d.extend(body);
        Outcome::good(d)
    }

    fn mode_sense(&self, ten: bool) -> Vec<u8> {
        let wp = if self.read_only() { 0x80 } else { 0 };
        if ten {
            vec![0, 6, 0, wp, 0, 0, 0, 0]
        } else {
            vec![3, 0, wp, 0]
        }
    }

    fn read_capacity_10(&self) -> Vec<u8> {
        let last = self.blocks().saturating_sub(1).min(u64::from(u32::MAX)) as u32;
        let mut d = last.to_be_bytes().to_vec();
        d.extend((self.block_size as u32).to_be_bytes());
        d
    }

    fn read_capacity_16(&self) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.blocks().saturating_sub(1).to_be_bytes());
        d[8..12].copy_from_slice(&(self.block_size as u32).to_be_bytes());
        d
    }

    /// The byte range of `blocks` blocks from `lba`, if on the medium and
    /// not larger than one transfer.
    fn extent(&self, lba: u64, blocks: u64) -> Result<(u64, usize), Sense> {
        let end = lba.checked_add(blocks).ok_or(LBA_OUT_OF_RANGE)?;
        if end > self.blocks() {
            return Err(LBA_OUT_OF_RANGE);
        }
        let len = blocks * self.block_size;
        if len > self.max_transfer {
            return Err(INVALID_FIELD_IN_CDB);
        }
        Ok((lba * self.block_size, len as usize))
    }

    fn read(&self, lba: u64, blocks: u64) -> io::Result<Outcome> {
        let (offset, len) = match self.extent(lba, blocks) {
            Ok(e) => e,
            Err(sense) => return Ok(Outcome::check(sense)),
        };
        let mut data = vec![0u8; len];
        self.backend.read_at(&mut data, offset)?;
        Ok(Outcome::good(data))
    }

    fn write(&self, lba: u64, blocks: u64, data_out: &mut dyn DataOut) -> io::Result<Outcome> {
        if self.read_only() {
            return Ok(Outcome::check(WRITE_PROTECTED));
        }
        let (offset, len) = match self.extent(lba, blocks) {
            Ok(e) => e,
            Err(sense) => return Ok(Outcome::check(sense)),
        };
        if data_out.available() < len {
            return Ok(Outcome::check(INVALID_FIELD_IN_CDB));
        }
        let mut data = vec![0u8; len];
        data_out.read_exact(&mut data)?;
        self.backend.write_at(&data, offset)?;
        Ok(Outcome::good(Vec::new()))
    }

    /// READ TOC format 0: track 1 (data) and the lead-out.
    fn read_toc(&self, msf: bool, format: u8) -> Outcome {
        if format != 0 {
            return Outcome::check(INVALID_FIELD_IN_CDB);
        }
        let address = |lba: u64| -> [u8; 4] {
            if msf {
                let frames = lba + 150;
                [
                    0,
                    (frames / 4500) as u8,
                    ((frames / 75) % 60) as u8,
                    (frames % 75) as u8,
                ]
            } else {
                (lba as u32).to_be_bytes()
            }
        };
        let mut d = vec![0, 18, 1, 1];
        d.extend([0, 0x14, 1, 0]);
        d.extend(address(0));
        d.extend([0, 0x16, 0xaa, 0]);
        d.extend(address(self.blocks()));
        Outcome::good(d)
    }

    /// GET CONFIGURATION: the current profile (DVD-ROM above 700 MiB,
    /// CD-ROM below, none with the tray open).
    fn get_configuration(&self) -> Vec<u8> {
        let profile: u16 = if !self.medium_present() {
            0
        } else if self.backend.size() > 700 << 20 {
            0x0010
        } else {
            0x0008
        };
        let mut d = vec![0u8; 8];
        d[3] = 4;
        d[6..8].copy_from_slice(&profile.to_be_bytes());
        d
    }

    /// GET EVENT STATUS NOTIFICATION (polled): media class, no event.
    fn event_status(&self) -> Vec<u8> {
        let status = if self.medium_present() { 0x02 } else { 0x01 };
        vec![0, 6, 0x04, 0x10, 0, status, 0, 0]
    }
}

/// REPORT LUNS: each target has one unit, LUN 0.
fn report_luns() -> Vec<u8> {
    let mut d = vec![0u8; 16];
    d[3] = 8;
    d
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::block::MemoryDisk;
    use std::sync::Arc;

    fn unit(kind: UnitKind, bytes: usize, read_only: bool) -> ScsiUnit {
        let mut data = vec![0u8; bytes];
        for (i, b) in data.chunks_mut(512).enumerate() {
            b[0] = i as u8;
        }
        ScsiUnit::new(Arc::new(MemoryDisk::new(data, read_only)), kind, "SER123")
    }

    fn run(u: &ScsiUnit, cdb: &[u8]) -> Outcome {
        u.execute(cdb, &mut &[][..], 1 << 20)
    }

    #[test]
    fn disk_identifies_reads_writes_and_checks_ranges() {
        let u = unit(UnitKind::Disk, 64 << 10, false);
        let inq = run(&u, &[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(inq.status, STATUS_GOOD);
        assert_eq!(inq.data_in[0], 0);
        assert_eq!(&inq.data_in[8..16], b"VIRTKIT ");
        let serial = run(&u, &[0x12, 1, 0x80, 0, 255, 0]);
        assert_eq!(&serial.data_in[4..], b"SER123");
        let cap = run(&u, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).data_in;
        assert_eq!(cap, [0, 0, 0, 127, 0, 0, 2, 0]);
        let cap16 = run(&u, &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]).data_in;
        assert_eq!(u64::from_be_bytes(cap16[..8].try_into().unwrap()), 127);
        let read = run(&u, &[0x28, 0, 0, 0, 0, 5, 0, 0, 2, 0]);
        assert_eq!(read.data_in.len(), 1024);
        assert_eq!((read.data_in[0], read.data_in[512]), (5, 6));
        let data = vec![0xabu8; 512];
        let w = u.execute(&[0x2a, 0, 0, 0, 0, 9, 0, 0, 1, 0], &mut &data[..], 0);
        assert_eq!(w.status, STATUS_GOOD);
        let back = run(&u, &[0x88, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 1, 0, 0]);
        assert_eq!(back.data_in, data);
        let past = run(&u, &[0x28, 0, 0, 0, 0, 127, 0, 0, 2, 0]);
        assert_eq!(past.sense, Some(LBA_OUT_OF_RANGE));
        let short = u.execute(&[0x2a, 0, 0, 0, 0, 1, 0, 0, 2, 0], &mut &data[..], 0);
        assert_eq!(
            short.sense,
            Some(INVALID_FIELD_IN_CDB),
            "data-out too short"
        );
        assert_eq!(run(&u, &[0xff]).sense, Some(INVALID_OPCODE));
        assert_eq!(
            run(&u, &[0x43, 0, 0, 0, 0, 0, 0, 0, 12, 0]).sense,
            Some(INVALID_OPCODE)
        );
        assert_eq!(
            run(&u, &[0x1a, 0, 0x3f, 0, 4, 0]).data_in[2],
            0,
            "not write-protected"
        );
    }

    #[test]
    fn cdrom_is_read_only_with_2k_blocks_a_toc_and_a_tray() {
        let mut u = unit(UnitKind::Cdrom { tray_open: false }, 8 * 2048, false);
        let inq = run(&u, &[0x12, 0, 0, 0, 36, 0]);
        assert_eq!((inq.data_in[0], inq.data_in[1]), (5, 0x80));
        assert_eq!(
            run(&u, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).data_in,
            [0, 0, 0, 7, 0, 0, 8, 0]
        );
        let read = run(&u, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]);
        assert_eq!((read.data_in.len(), read.data_in[0]), (2048, 4));
        let w = u.execute(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0], &mut &[0u8; 2048][..], 0);
        assert_eq!(w.sense, Some(WRITE_PROTECTED));
        assert_eq!(run(&u, &[0x1a, 0, 0x3f, 0, 4, 0]).data_in[2], 0x80);
        let toc = run(&u, &[0x43, 0, 0, 0, 0, 0, 0, 0, 20, 0]).data_in;
        assert_eq!(toc.len(), 20);
        assert_eq!(&toc[16..20], &8u32.to_be_bytes(), "lead-out after 8 blocks");
        assert_eq!(
            run(&u, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8, 0]).data_in[7],
            0x08,
            "CD-ROM"
        );
        assert_eq!(run(&u, &[0x00, 0, 0, 0, 0, 0]).status, STATUS_GOOD);
        u.set_tray_open(true);
        assert_eq!(
            run(&u, &[0x00, 0, 0, 0, 0, 0]).sense,
            Some(MEDIUM_NOT_PRESENT_TRAY_OPEN)
        );
        assert_eq!(
            run(&u, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]).status,
            STATUS_CHECK_CONDITION
        );
        assert_eq!(run(&u, &[0x03, 0, 0, 0, 18, 0]).data_in[12], 0x3a);
        assert_eq!(
            run(&u, &[0x12, 0, 0, 0, 36, 0]).status,
            STATUS_GOOD,
            "INQUIRY still works"
        );
    }

    #[test]
    fn allocation_length_truncates_data_in() {
        let u = unit(UnitKind::Disk, 4096, false);
        assert_eq!(
            u.execute(&[0x12, 0, 0, 0, 5, 0], &mut &[][..], 5)
                .data_in
                .len(),
            5
        );
        assert_eq!(u.execute(&[], &mut &[][..], 5).sense, Some(INVALID_OPCODE));
    }
}
