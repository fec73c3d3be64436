//! A CFI parallel flash with the Intel/Sharp command set (as QEMU's
//! `pflash_cfi01`, which OVMF's flash driver is written against), one byte
//! wide, in uniform erase blocks.
//!
//! Two uses: the VARS store, writable and backed by the VM's own file,
//! every access trapped; and the CODE image, read-only, mapped as guest
//! memory so reads never come here, with this device only catching (and
//! dropping) the guest's writes.

use std::fs::File;
use std::os::unix::fs::FileExt;

use virtkit_core::runtime::BusDevice;

/// Read array (also 0x00).
pub const CMD_READ_ARRAY: u8 = 0xff;
/// Program one byte: the next write is the data.
pub const CMD_PROGRAM: u8 = 0x10;
/// Program one byte (alternate code).
pub const CMD_PROGRAM_ALT: u8 = 0x40;
/// Block erase setup; confirmed by [`CMD_CONFIRM`].
pub const CMD_BLOCK_ERASE: u8 = 0x20;
/// Confirms an erase or a buffered write.
pub const CMD_CONFIRM: u8 = 0xd0;
/// Clear the status register.
pub const CMD_CLEAR_STATUS: u8 = 0x50;
/// Reads return the status register.
pub const CMD_READ_STATUS: u8 = 0x70;
/// Reads return the manufacturer and device IDs.
pub const CMD_READ_ID: u8 = 0x90;
/// Reads return the CFI query table.
pub const CMD_CFI_QUERY: u8 = 0x98;
/// Write to buffer: count, data, confirm.
pub const CMD_WRITE_BUFFER: u8 = 0xe8;

/// Status: the write state machine is ready.
pub const STATUS_READY: u8 = 0x80;
/// Status: an erase failed (here: on a read-only flash) or bad sequence.
pub const STATUS_ERASE_ERROR: u8 = 0x20;
/// Status: a program failed (here: on a read-only flash).
pub const STATUS_PROGRAM_ERROR: u8 = 0x10;
/// Status: the block is locked.
pub const STATUS_LOCKED: u8 = 0x02;

/// Manufacturer ID returned by READ ID (Intel).
pub const MANUFACTURER_ID: u8 = 0x89;
/// Device ID returned by READ ID.
pub const DEVICE_ID: u8 = 0x18;
/// Largest buffered write, in bytes.
const WRITE_BUFFER_LEN: usize = 256;

/// The write state machine. Serialized as is into version 1 of the
/// migration blob: a change here is a new blob version.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Mode {
    ReadArray,
    Status,
    Id,
    Query,
    /// After 0x10/0x40: the next write is data.
    Program,
    /// After 0x20: the next write must be 0xd0.
    EraseSetup,
    /// After 0xe8: the next write is the byte count minus one.
    BufferCount,
    /// Collecting a buffered write.
    BufferData {
        remaining: usize,
        start: u64,
        data: Vec<u8>,
    },
    /// Buffer filled; the next write must be 0xd0.
    BufferConfirm {
        start: u64,
        data: Vec<u8>,
    },
}

/// What a [`Pflash`] has done, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlashStats {
    /// Bytes programmed.
    pub programmed: u64,
    /// Blocks erased.
    pub erased: u64,
    /// Writes dropped because the flash is read-only.
    pub refused: u64,
    /// Writes of the backing file that failed.
    pub io_errors: u64,
}

/// A CFI flash device. Offsets are relative to its base address.
pub struct Pflash {
    data: Vec<u8>,
    block_len: u64,
    backing: Option<File>,
    read_only: bool,
    mode: Mode,
    status: u8,
    dirty: bool,
    stats: FlashStats,
}

impl std::fmt::Debug for Pflash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pflash")
            .field("len", &self.data.len())
            .field("block_len", &self.block_len)
            .field("read_only", &self.read_only)
            .field("mode", &self.mode)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Pflash {
    /// A read-only flash holding `data` (firmware code): commands are
    /// accepted, programs and erases fail with an error status and change
    /// nothing.
    pub fn read_only(data: Vec<u8>, block_len: u64) -> Self {
        Self::new(data, block_len, None, true)
    }

    /// A writable flash over `data`, whose programs and erases are also
    /// written through to `backing` at the same offsets.
    pub fn writable(data: Vec<u8>, block_len: u64, backing: Option<File>) -> Self {
        Self::new(data, block_len, backing, false)
    }

    fn new(data: Vec<u8>, block_len: u64, backing: Option<File>, read_only: bool) -> Self {
        Pflash {
            data,
            block_len: block_len.max(1),
            backing,
            read_only,
            mode: Mode::ReadArray,
            status: STATUS_READY,
            dirty: false,
            stats: FlashStats::default(),
        }
    }

    /// The flash contents.
    pub fn contents(&self) -> &[u8] {
        &self.data
    }

    /// Counters of what the guest did.
    pub fn stats(&self) -> FlashStats {
        self.stats
    }

    fn len(&self) -> u64 {
        self.data.len() as u64
    }

    /// Store `bytes` at `offset` and write them through to the file.
    fn store(&mut self, offset: u64, bytes: &[u8]) {
        let Some(end) = offset
            .checked_add(bytes.len() as u64)
            .filter(|&e| e <= self.len())
        else {
            self.status |= STATUS_PROGRAM_ERROR;
            return;
        };
        self.data[offset as usize..end as usize].copy_from_slice(bytes);
        if let Some(f) = &self.backing {
            if let Err(e) = f.write_all_at(bytes, offset) {
                log::error!(
                    "flash: writing {} bytes at {offset:#x} of the backing file: {e}",
                    bytes.len()
                );
                self.stats.io_errors += 1;
                self.status |= STATUS_PROGRAM_ERROR;
            }
        }
        self.dirty = true;
    }

    /// Make what was written durable; done when the guest returns to read
    /// array mode, the end of each of OVMF's flash operations.
    fn sync(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Some(f) = &self.backing {
            if let Err(e) = f.sync_data() {
                log::error!("flash: syncing the backing file: {e}");
                self.stats.io_errors += 1;
            }
        }
    }

    fn program(&mut self, offset: u64, bytes: &[u8]) {
        if self.read_only {
            self.stats.refused += 1;
            self.status |= STATUS_PROGRAM_ERROR | STATUS_LOCKED;
            return;
        }
        self.store(offset, bytes);
        self.stats.programmed += bytes.len() as u64;
    }

    fn erase(&mut self, offset: u64) {
        if self.read_only {
            self.stats.refused += 1;
            self.status |= STATUS_ERASE_ERROR | STATUS_LOCKED;
            return;
        }
        let start = offset - offset % self.block_len;
        let len = self.block_len.min(self.len().saturating_sub(start));
        let ones = vec![0xffu8; len as usize];
        self.store(start, &ones);
        self.stats.erased += 1;
    }

    /// A command byte written in a mode that takes one.
    fn command(&mut self, offset: u64, cmd: u8) {
        self.mode = match cmd {
            CMD_READ_ARRAY | 0x00 => {
                self.sync();
                Mode::ReadArray
            }
            CMD_PROGRAM | CMD_PROGRAM_ALT => Mode::Program,
            CMD_BLOCK_ERASE => Mode::EraseSetup,
            CMD_CLEAR_STATUS => {
                // As pflash_cfi01: the register reads 0x00 afterwards and
                // the flash returns to read array. OVMF's probe tells a
                // flash from RAM and ROM by exactly this.
                self.status = 0;
                Mode::ReadArray
            }
            CMD_READ_STATUS => Mode::Status,
            CMD_READ_ID => Mode::Id,
            CMD_CFI_QUERY => Mode::Query,
            CMD_WRITE_BUFFER => {
                self.status |= STATUS_READY;
                Mode::BufferCount
            }
            other => {
                log::debug!("flash: unknown command {other:#04x} at {offset:#x}");
                self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                Mode::ReadArray
            }
        };
    }

    /// Byte `offset` of the CFI query table (one byte wide).
    fn query(&self, offset: u64) -> u8 {
        let blocks = self.len().div_ceil(self.block_len).max(1) - 1;
        let size_log2 = 63 - self.len().max(1).leading_zeros() as u64;
        match offset {
            0x10 => b'Q',
            0x11 => b'R',
            0x12 => b'Y',
            0x13 => 0x01, // primary command set: Intel/Sharp extended
            0x15 => 0x31, // extended table address
            0x1b => 0x45,
            0x1c => 0x55,
            0x1f => 0x07, // typical byte program: 2^7 us
            0x20 => 0x07,
            0x21 => 0x0a, // typical block erase: 2^10 ms
            0x23..=0x25 => 0x04,
            0x27 => size_log2 as u8,
            0x2a => WRITE_BUFFER_LEN.trailing_zeros() as u8,
            0x2c => 1, // one erase block region
            0x2d => blocks as u8,
            0x2e => (blocks >> 8) as u8,
            0x2f => (self.block_len >> 8) as u8,
            0x30 => (self.block_len >> 16) as u8,
            0x31 => b'P',
            0x32 => b'R',
            0x33 => b'I',
            0x34 => b'1',
            0x35 => b'0',
            _ => 0,
        }
    }
}

impl BusDevice for Pflash {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let at = offset + i as u64;
            *b = match &self.mode {
                Mode::ReadArray => self.data.get(at as usize).copied().unwrap_or(0xff),
                // ID and query tables repeat every 256 bytes, so they read
                // the same from any block (as pflash_cfi01).
                Mode::Id => match at & 0xff {
                    0 => MANUFACTURER_ID,
                    1 => DEVICE_ID,
                    // Block lock status: unlocked.
                    _ => 0,
                },
                Mode::Query => self.query(at & 0xff),
                // Status reads, also while a command waits for its next
                // write.
                _ => self.status,
            };
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(&first) = data.first() else { return };
        match std::mem::replace(&mut self.mode, Mode::ReadArray) {
            Mode::Program => {
                self.program(offset, data);
                self.status |= STATUS_READY;
                self.mode = Mode::Status;
            }
            Mode::EraseSetup => {
                if first == CMD_CONFIRM {
                    self.erase(offset);
                } else {
                    // A bad sequence: QEMU and real parts set both bits.
                    self.status |= STATUS_ERASE_ERROR | STATUS_PROGRAM_ERROR;
                }
                self.status |= STATUS_READY;
                self.mode = Mode::Status;
            }
            Mode::BufferCount => {
                let count = usize::from(first) + 1;
                self.mode = Mode::BufferData {
                    remaining: count,
                    // Set by the first data write, whose address starts
                    // the buffer.
                    start: u64::MAX,
                    data: Vec::with_capacity(count),
                };
            }
            Mode::BufferData {
                remaining,
                start,
                data: mut buf,
            } => {
                let start = if start == u64::MAX { offset } else { start };
                let contiguous = offset == start + buf.len() as u64;
                if !contiguous || data.len() > remaining {
                    self.status |= STATUS_PROGRAM_ERROR;
                    self.mode = Mode::Status;
                    return;
                }
                buf.extend_from_slice(data);
                let remaining = remaining - data.len();
                self.mode = if remaining == 0 {
                    Mode::BufferConfirm { start, data: buf }
                } else {
                    Mode::BufferData {
                        remaining,
                        start,
                        data: buf,
                    }
                };
            }
            Mode::BufferConfirm { start, data: buf } => {
                if first == CMD_CONFIRM {
                    self.program(start, &buf);
                } else {
                    self.status |= STATUS_PROGRAM_ERROR;
                }
                self.status |= STATUS_READY;
                self.mode = Mode::Status;
            }
            Mode::ReadArray | Mode::Status | Mode::Id | Mode::Query => self.command(offset, first),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn read(f: &mut Pflash, at: u64) -> u8 {
        let mut b = [0u8];
        f.read(at, &mut b);
        b[0]
    }

    #[test]
    fn ovmf_probe_sees_a_flash() {
        // QemuFlashDetected: a byte that is not 0x00, CLEAR STATUS, read it
        // back (array mode, unchanged), then READ STATUS reads 0x00.
        let mut f = Pflash::writable(vec![0x5a; 0x2000], 0x1000, None);
        f.write(0x10, &[CMD_CLEAR_STATUS]);
        assert_eq!(read(&mut f, 0x10), 0x5a);
        f.write(0x10, &[CMD_READ_STATUS]);
        assert_eq!(read(&mut f, 0x10), 0x00, "CLEARED_ARRAY_STATUS");
        f.write(0x10, &[CMD_READ_ARRAY]);
        assert_eq!(read(&mut f, 0x10), 0x5a);
    }

    #[test]
    fn program_erase_and_buffered_write() {
        let mut f = Pflash::writable(vec![0xff; 0x3000], 0x1000, None);
        f.write(0x1234, &[CMD_PROGRAM]);
        f.write(0x1234, &[0x42]);
        assert_eq!(read(&mut f, 0x1234), STATUS_READY, "status after a program");
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(read(&mut f, 0x1234), 0x42);

        f.write(0x1000, &[CMD_BLOCK_ERASE]);
        f.write(0x1800, &[CMD_CONFIRM]);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(read(&mut f, 0x1234), 0xff);

        f.write(0x2000, &[CMD_WRITE_BUFFER]);
        f.write(0x2000, &[2]); // three bytes
        f.write(0x2000, &[1, 2]);
        f.write(0x2002, &[3]);
        f.write(0x2000, &[CMD_CONFIRM]);
        f.write(0, &[CMD_READ_ARRAY]);
        assert_eq!(&f.contents()[0x2000..0x2004], &[1, 2, 3, 0xff]);
        assert_eq!(f.stats().programmed, 4);
        assert_eq!(f.stats().erased, 1);
    }

    #[test]
    fn a_bad_erase_sequence_sets_error_bits() {
        let mut f = Pflash::writable(vec![0; 0x1000], 0x1000, None);
        f.write(0, &[CMD_BLOCK_ERASE]);
        f.write(0, &[0x00]);
        assert_eq!(read(&mut f, 0) & 0x30, 0x30);
        assert_eq!(f.contents()[0], 0);
    }

    #[test]
    fn read_only_flash_refuses_and_reports() {
        let mut f = Pflash::read_only(vec![0x11; 0x2000], 0x1000);
        f.write(0x10, &[CMD_PROGRAM]);
        f.write(0x10, &[0x00]);
        assert_ne!(read(&mut f, 0) & STATUS_PROGRAM_ERROR, 0);
        f.write(0, &[CMD_BLOCK_ERASE]);
        f.write(0, &[CMD_CONFIRM]);
        f.write(0, &[CMD_READ_ARRAY]);
        assert!(f.contents().iter().all(|&b| b == 0x11));
        assert_eq!(f.stats().refused, 2);
    }

    #[test]
    fn cfi_query_describes_the_geometry() {
        let mut f = Pflash::writable(vec![0xff; 0x84000], 0x1000, None);
        f.write(0x55, &[CMD_CFI_QUERY]);
        let q: Vec<u8> = (0x10..0x13).map(|a| read(&mut f, a)).collect();
        assert_eq!(q, b"QRY");
        let blocks = u16::from_le_bytes([read(&mut f, 0x2d), read(&mut f, 0x2e)]);
        assert_eq!(blocks, 0x84 - 1);
        assert_eq!(
            u16::from_le_bytes([read(&mut f, 0x2f), read(&mut f, 0x30)]),
            0x10
        );
        f.write(0, &[CMD_READ_ID]);
        assert_eq!(
            (read(&mut f, 0), read(&mut f, 1)),
            (MANUFACTURER_ID, DEVICE_ID)
        );
    }
}

const STATE_MAGIC: [u8; 8] = *b"VKPFLASH";

/// A flash's migration blob, version 1: the write state machine, and the
/// contents of a writable flash (EFI variables the guest set since it
/// booted); a read-only flash sends a hash of its contents instead, so a
/// target running other firmware code is refused.
#[derive(serde::Serialize, serde::Deserialize)]
struct PflashStateV1 {
    read_only: bool,
    len: u64,
    mode: Mode,
    status: u8,
    contents: Option<Vec<u8>>,
    code_hash: u64,
}

impl Pflash {
    fn code_hash(&self) -> u64 {
        xxhash_rust::xxh3::xxh3_64(&self.data)
    }

    fn check_mode(&self, mode: &Mode) -> Result<(), String> {
        let fits = |start: u64, data: &[u8], remaining: usize| {
            data.len() + remaining <= WRITE_BUFFER_LEN
                && (start == u64::MAX
                    || start.saturating_add(WRITE_BUFFER_LEN as u64) <= self.len())
        };
        match mode {
            Mode::BufferData {
                remaining,
                start,
                data,
            } if !fits(*start, data, *remaining) => Err(format!(
                "a buffered write of {} + {remaining} bytes at {start:#x}",
                data.len()
            )),
            Mode::BufferConfirm { start, data } if !fits(*start, data, 0) || *start == u64::MAX => {
                Err(format!(
                    "a buffered write of {} bytes at {start:#x}",
                    data.len()
                ))
            }
            _ => Ok(()),
        }
    }
}

impl virtkit_core::runtime::Snapshot for Pflash {
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        let state = PflashStateV1 {
            read_only: self.read_only,
            len: self.len(),
            mode: self.mode.clone(),
            status: self.status,
            contents: (!self.read_only).then(|| self.data.clone()),
            code_hash: if self.read_only { self.code_hash() } else { 0 },
        };
        virtkit_devices::state::encode(STATE_MAGIC, 1, &state)
    }

    /// Load the state; a writable flash takes the source's contents and
    /// writes them through to its own backing file (the target's VARS).
    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        use virtkit_core::runtime::StateError;
        let (_, s): (u32, PflashStateV1) =
            virtkit_devices::state::decode(state, STATE_MAGIC, 1..=1)?;
        let corrupt = |why: String| StateError::Corrupt(format!("flash: {why}"));
        if s.read_only != self.read_only || s.len != self.len() {
            return Err(corrupt(format!(
                "the source's flash is {} bytes{}, this one {} bytes{}",
                s.len,
                if s.read_only { ", read-only" } else { "" },
                self.len(),
                if self.read_only { ", read-only" } else { "" }
            )));
        }
        self.check_mode(&s.mode).map_err(corrupt)?;
        match (&s.contents, self.read_only) {
            (None, true) if s.code_hash == self.code_hash() => {}
            (None, true) => {
                return Err(corrupt(
                    "the source runs other firmware code than this VM".into(),
                ))
            }
            (Some(contents), false) if contents.len() as u64 == self.len() => {
                if contents != &self.data {
                    let errors = self.stats.io_errors;
                    self.store(0, contents);
                    self.sync();
                    if self.stats.io_errors > errors {
                        return Err(StateError::Host(
                            "flash: the VARS file could not take the source's variables".into(),
                        ));
                    }
                }
            }
            _ => return Err(corrupt("contents do not match the flash's kind".into())),
        }
        self.mode = s.mode;
        self.status = s.status;
        Ok(())
    }
}
