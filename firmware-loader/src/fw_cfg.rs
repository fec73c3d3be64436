//! QEMU's firmware configuration device, which SeaBIOS and OVMF read:
//! a 16-bit selector at port 0x510, a byte-wide data port at 0x511, and
//! the DMA interface at 0x514 (QEMU `docs/specs/fw_cfg.rst`). Items are
//! numbered; named files (`bootorder`, `etc/e820`, …) get numbers from
//! 0x20 on and are listed in the file directory, item 0x19.
//!
//! ```
//! use virtkit_firmware_loader::fw_cfg::FwCfg;
//! let memory = virtkit_core::runtime::memory::create(1 << 20).unwrap();
//! let mut fw_cfg = FwCfg::new(memory);
//! fw_cfg.add_file("bootorder", b"/pci@i0cf8/scsi@3/disk@0,0\0".to_vec()).unwrap();
//! assert_eq!(fw_cfg.file_names(), ["bootorder"]);
//! ```

use std::collections::BTreeMap;

use virtkit_core::runtime::memory::GuestMem;
use virtkit_core::runtime::BusDevice;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// First I/O port of the device (the selector).
pub const PORT_BASE: u64 = 0x510;
/// Ports the device decodes: selector, data, and the 64-bit DMA address.
pub const PORT_LEN: u64 = 0x0c;
const SELECTOR: u64 = 0;
const DATA: u64 = 1;
const DMA_HIGH: u64 = 4;
const DMA_LOW: u64 = 8;

/// Item: the signature `QEMU`.
pub const KEY_SIGNATURE: u16 = 0x00;
/// Item: the interface ID (bit 0 traditional ports, bit 1 DMA).
pub const KEY_ID: u16 = 0x01;
/// Item: the VM's UUID (16 bytes).
pub const KEY_UUID: u16 = 0x02;
/// Item: RAM size in bytes below 4 GiB and above (u64).
pub const KEY_RAM_SIZE: u16 = 0x03;
/// Item: vCPUs at boot (u16).
pub const KEY_NB_CPUS: u16 = 0x05;
/// Item: kernel size (u32) for firmware-driven direct boot.
pub const KEY_KERNEL_SIZE: u16 = 0x08;
/// Item: initrd size (u32).
pub const KEY_INITRD_SIZE: u16 = 0x0b;
/// Item: the most vCPUs (u16).
pub const KEY_MAX_CPUS: u16 = 0x0f;
/// Item: kernel bytes.
pub const KEY_KERNEL_DATA: u16 = 0x11;
/// Item: initrd bytes.
pub const KEY_INITRD_DATA: u16 = 0x12;
/// Item: command line size including its NUL (u32).
pub const KEY_CMDLINE_SIZE: u16 = 0x14;
/// Item: command line bytes, NUL-terminated.
pub const KEY_CMDLINE_DATA: u16 = 0x15;
/// Item: the file directory.
pub const KEY_FILE_DIR: u16 = 0x19;
/// First item number given to files.
pub const FIRST_FILE_KEY: u16 = 0x20;
/// Longest file name, with its NUL.
pub const FILE_NAME_LEN: usize = 56;
/// What a read of the DMA address register returns ("QEMU CFG").
pub const DMA_SIGNATURE: u64 = 0x5145_4d55_2043_4647;

const DMA_ERROR: u32 = 1 << 0;
const DMA_READ: u32 = 1 << 1;
const DMA_SKIP: u32 = 1 << 2;
const DMA_SELECT: u32 = 1 << 3;
const DMA_WRITE: u32 = 1 << 4;

/// Why an item could not be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FwCfgError {
    /// A file name longer than the directory holds.
    #[error("fw_cfg file name {name:?} is longer than {max} bytes")]
    NameTooLong {
        /// The name.
        name: String,
        /// The limit (without the NUL).
        max: usize,
    },
    /// A file of that name exists.
    #[error("fw_cfg already has a file named {0:?}")]
    Duplicate(String),
    /// No more item numbers.
    #[error("fw_cfg has no item numbers left for file {0:?}")]
    Full(String),
    /// The kernel, initrd or command line does not fit a 32-bit size.
    #[error("fw_cfg item {what} is {len} bytes; the size field holds at most 4 GiB - 1")]
    TooLarge {
        /// Which item.
        what: &'static str,
        /// Its length.
        len: usize,
    },
}

/// The device: items by number, the files' names, the cursor.
pub struct FwCfg {
    memory: GuestMem,
    items: BTreeMap<u16, Vec<u8>>,
    files: Vec<(String, u16)>,
    selected: u16,
    offset: usize,
    dma_high: u32,
}

impl std::fmt::Debug for FwCfg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FwCfg")
            .field("files", &self.files)
            .field("selected", &self.selected)
            .finish_non_exhaustive()
    }
}

impl FwCfg {
    /// A device with the signature, the ID (ports and DMA) and an empty
    /// file directory; DMA reaches `memory`.
    pub fn new(memory: GuestMem) -> Self {
        let mut fw_cfg = FwCfg {
            memory,
            items: BTreeMap::new(),
            files: Vec::new(),
            selected: 0,
            offset: 0,
            dma_high: 0,
        };
        fw_cfg.items.insert(KEY_SIGNATURE, b"QEMU".to_vec());
        fw_cfg.items.insert(KEY_ID, 3u32.to_le_bytes().to_vec());
        fw_cfg.rebuild_directory();
        fw_cfg
    }

    /// Set numbered item `key` (the legacy items below 0x20).
    pub fn set_item(&mut self, key: u16, bytes: Vec<u8>) {
        self.items.insert(key, bytes);
    }

    /// The vCPU counts firmware starts APs for.
    pub fn set_cpus(&mut self, vcpus: u16, max: u16) {
        self.set_item(KEY_NB_CPUS, vcpus.to_le_bytes().to_vec());
        self.set_item(KEY_MAX_CPUS, max.to_le_bytes().to_vec());
    }

    /// A kernel, initrd and command line for the firmware to load
    /// (firmware-driven direct boot: OVMF's and SeaBIOS's `-kernel`).
    pub fn set_kernel(
        &mut self,
        kernel: Vec<u8>,
        initrd: Option<Vec<u8>>,
        cmdline: &str,
    ) -> Result<(), FwCfgError> {
        let size = |what, len: usize| {
            u32::try_from(len)
                .map(|n| n.to_le_bytes().to_vec())
                .map_err(|_| FwCfgError::TooLarge { what, len })
        };
        let initrd = initrd.unwrap_or_default();
        let mut line = cmdline.as_bytes().to_vec();
        line.push(0);
        self.set_item(KEY_KERNEL_SIZE, size("kernel", kernel.len())?);
        self.set_item(KEY_INITRD_SIZE, size("initrd", initrd.len())?);
        self.set_item(KEY_CMDLINE_SIZE, size("cmdline", line.len())?);
        self.set_item(KEY_KERNEL_DATA, kernel);
        self.set_item(KEY_INITRD_DATA, initrd);
        self.set_item(KEY_CMDLINE_DATA, line);
        Ok(())
    }

    /// Add file `name` (at most 55 bytes) holding `bytes`.
    pub fn add_file(&mut self, name: &str, bytes: Vec<u8>) -> Result<u16, FwCfgError> {
        if name.len() >= FILE_NAME_LEN {
            return Err(FwCfgError::NameTooLong {
                name: name.to_string(),
                max: FILE_NAME_LEN - 1,
            });
        }
        if self.files.iter().any(|(n, _)| n == name) {
            return Err(FwCfgError::Duplicate(name.to_string()));
        }
        let key = u16::try_from(self.files.len())
            .ok()
            .and_then(|n| FIRST_FILE_KEY.checked_add(n))
            .filter(|k| *k < 0x4000)
            .ok_or_else(|| FwCfgError::Full(name.to_string()))?;
        self.items.insert(key, bytes);
        self.files.push((name.to_string(), key));
        self.rebuild_directory();
        Ok(key)
    }

    /// File names, in directory order (sorted, as QEMU lists them).
    pub fn file_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.files.iter().map(|(n, _)| n.clone()).collect();
        names.sort();
        names
    }

    /// The contents of file `name`.
    pub fn file(&self, name: &str) -> Option<&[u8]> {
        let (_, key) = self.files.iter().find(|(n, _)| n == name)?;
        self.items.get(key).map(Vec::as_slice)
    }

    /// Directory: count (u32 BE), then per file its size (u32 BE),
    /// selector (u16 BE), two reserved bytes and a 56-byte name.
    fn rebuild_directory(&mut self) {
        let mut files = self.files.clone();
        files.sort();
        let mut dir = (files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &files {
            let size = self.items.get(key).map_or(0, Vec::len) as u32;
            dir.extend_from_slice(&size.to_be_bytes());
            dir.extend_from_slice(&key.to_be_bytes());
            dir.extend_from_slice(&[0, 0]);
            let mut n = [0u8; FILE_NAME_LEN];
            n[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend_from_slice(&n);
        }
        self.items.insert(KEY_FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.selected = key;
        self.offset = 0;
    }

    fn read_byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.selected)
            .and_then(|item| item.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }

    /// Copy `length` bytes of the selected item from the cursor to guest
    /// `address` (zeroes past the item's end, as QEMU gives). The whole
    /// target must be guest memory; nothing is allocated beyond the item.
    fn dma_read(&mut self, address: u64, length: usize) -> bool {
        if !self
            .memory
            .check_range(GuestAddress(address), length, Permissions::Write)
        {
            return false;
        }
        let item = self
            .items
            .get(&self.selected)
            .map_or(&[][..], Vec::as_slice);
        let start = self.offset.min(item.len());
        let data = &item[start..start.saturating_add(length).min(item.len())];
        self.offset = self.offset.saturating_add(length);
        let zeroes = [0u8; 4096];
        let mut at = address + data.len() as u64;
        let mut ok = self.memory.write_slice(data, GuestAddress(address)).is_ok();
        let mut left = length - data.len();
        while ok && left > 0 {
            let n = left.min(zeroes.len());
            ok = self
                .memory
                .write_slice(&zeroes[..n], GuestAddress(at))
                .is_ok();
            at += n as u64;
            left -= n;
        }
        ok
    }

    /// Run the DMA request whose descriptor is at `at`; the control word
    /// is cleared when done, or left with the error bit.
    fn dma(&mut self, at: u64) {
        let mut desc = [0u8; 16];
        if self.memory.read_slice(&mut desc, GuestAddress(at)).is_err() {
            log::warn!("fw_cfg: DMA descriptor at {at:#x} is outside guest memory");
            return;
        }
        let control = u32::from_be_bytes([desc[0], desc[1], desc[2], desc[3]]);
        let length = u32::from_be_bytes([desc[4], desc[5], desc[6], desc[7]]);
        let address = u64::from_be_bytes([
            desc[8], desc[9], desc[10], desc[11], desc[12], desc[13], desc[14], desc[15],
        ]);
        if control & DMA_SELECT != 0 {
            self.select((control >> 16) as u16);
        }
        let ok = if control & DMA_READ != 0 {
            self.dma_read(address, length as usize)
        } else if control & DMA_SKIP != 0 {
            self.offset = self.offset.saturating_add(length as usize);
            true
        } else {
            // Writes are not accepted (no writable items), as in QEMU
            // without a writable file.
            control & DMA_WRITE == 0
        };
        let status: u32 = if ok { 0 } else { DMA_ERROR };
        if self
            .memory
            .write_slice(&status.to_be_bytes(), GuestAddress(at))
            .is_err()
        {
            log::warn!("fw_cfg: cannot complete the DMA descriptor at {at:#x}");
        }
    }
}

impl BusDevice for FwCfg {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            DATA => {
                for b in data.iter_mut() {
                    *b = self.read_byte();
                }
            }
            o if (DMA_HIGH..DMA_HIGH + 8).contains(&o) => {
                let sig = DMA_SIGNATURE.to_be_bytes();
                let start = (o - DMA_HIGH) as usize;
                for (i, b) in data.iter_mut().enumerate() {
                    *b = sig.get(start + i).copied().unwrap_or(0);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (SELECTOR, 2) => self.select(u16::from_le_bytes([data[0], data[1]])),
            (DMA_HIGH, 4) => {
                self.dma_high = u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            }
            (DMA_LOW, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let at = u64::from(self.dma_high) << 32 | u64::from(low);
                self.dma_high = 0;
                self.dma(at);
            }
            (DMA_HIGH, 8) => {
                let mut b = [0u8; 8];
                b.copy_from_slice(data);
                self.dma(u64::from_be_bytes(b));
            }
            _ => {}
        }
    }
}

/// The `etc/e820` file for `ranges` of RAM: 20-byte entries (address,
/// length as u64 LE, type 1 = RAM as u32 LE).
pub fn e820_file(ranges: &[virtkit_core::runtime::memory::RamRange]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ranges.len() * 20);
    for r in ranges {
        out.extend_from_slice(&r.guest_addr.to_le_bytes());
        out.extend_from_slice(&r.len.to_le_bytes());
        out.extend_from_slice(&1u32.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn device() -> FwCfg {
        FwCfg::new(virtkit_core::runtime::memory::create(1 << 20).unwrap())
    }

    fn read_item(d: &mut FwCfg, key: u16, len: usize) -> Vec<u8> {
        d.write(SELECTOR, &key.to_le_bytes());
        let mut v = vec![0u8; len];
        for b in &mut v {
            let mut one = [0u8];
            d.read(DATA, &mut one);
            *b = one[0];
        }
        v
    }

    #[test]
    fn signature_id_and_directory_through_the_ports() {
        let mut d = device();
        d.add_file("etc/e820", vec![1; 40]).unwrap();
        d.add_file("bootorder", b"/a\n/b\0".to_vec()).unwrap();
        assert_eq!(read_item(&mut d, KEY_SIGNATURE, 4), b"QEMU");
        assert_eq!(read_item(&mut d, KEY_ID, 4), [3, 0, 0, 0]);
        let dir = read_item(&mut d, KEY_FILE_DIR, 4 + 2 * 64);
        assert_eq!(&dir[..4], &[0, 0, 0, 2]);
        // Sorted: bootorder (key 0x21) before etc/e820 (key 0x20).
        assert_eq!(&dir[4..8], &[0, 0, 0, 6]);
        assert_eq!(&dir[8..10], &[0, 0x21]);
        assert_eq!(&dir[12..21], b"bootorder");
        assert_eq!(&dir[68..72], &[0, 0, 0, 40]);
        assert_eq!(&dir[72..74], &[0, 0x20]);
        assert_eq!(
            read_item(&mut d, 0x21, 8),
            b"/a\n/b\0\0\0",
            "zeroes past the end"
        );
        assert_eq!(
            read_item(&mut d, 0x1234, 2),
            [0, 0],
            "unknown items read as zero"
        );
        let mut sig = [0u8; 8];
        d.read(DMA_HIGH, &mut sig);
        assert_eq!(&sig, b"QEMU CFG");
    }

    #[test]
    fn dma_selects_reads_and_skips() {
        let mut d = device();
        let key = d.add_file("bootorder", b"0123456789".to_vec()).unwrap();
        let desc = |d: &FwCfg, at: u64, control: u32, len: u32, to: u64| {
            let mut b = control.to_be_bytes().to_vec();
            b.extend_from_slice(&len.to_be_bytes());
            b.extend_from_slice(&to.to_be_bytes());
            d.memory.write_slice(&b, GuestAddress(at)).unwrap();
        };
        desc(
            &d,
            0x1000,
            u32::from(key) << 16 | DMA_SELECT | DMA_SKIP,
            2,
            0,
        );
        d.write(DMA_HIGH, &0u32.to_be_bytes());
        d.write(DMA_LOW, &0x1000u32.to_be_bytes());
        desc(&d, 0x1000, DMA_READ, 12, 0x2000);
        d.write(DMA_HIGH, &0x1000u64.to_be_bytes());
        let mut got = [0u8; 12];
        d.memory.read_slice(&mut got, GuestAddress(0x2000)).unwrap();
        assert_eq!(&got, b"23456789\0\0\0\0");
        let control: u32 = d.memory.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(control, 0, "done, no error");
        // A huge length is refused without allocating it.
        desc(&d, 0x1000, DMA_READ, u32::MAX, 0x2000);
        d.write(DMA_HIGH, &0x1000u64.to_be_bytes());
        let control: u32 = d.memory.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(u32::from_be(control), DMA_ERROR);
        // A target outside guest memory sets the error bit.
        desc(&d, 0x1000, DMA_READ, 4, 0x10_0000_0000);
        d.write(DMA_HIGH, &0x1000u64.to_be_bytes());
        let control: u32 = d.memory.read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(u32::from_be(control), DMA_ERROR);
    }

    #[test]
    fn names_and_sizes_are_checked() {
        let mut d = device();
        assert!(matches!(
            d.add_file(&"x".repeat(56), vec![]),
            Err(FwCfgError::NameTooLong { .. })
        ));
        d.add_file("a", vec![]).unwrap();
        assert_eq!(
            d.add_file("a", vec![]),
            Err(FwCfgError::Duplicate("a".into()))
        );
        d.set_kernel(vec![1, 2, 3], None, "console=ttyS0").unwrap();
        assert_eq!(read_item(&mut d, KEY_KERNEL_SIZE, 4), [3, 0, 0, 0]);
        assert_eq!(read_item(&mut d, KEY_CMDLINE_SIZE, 4), [14, 0, 0, 0]);
        assert_eq!(read_item(&mut d, KEY_CMDLINE_DATA, 14), b"console=ttyS0\0");
    }
}
