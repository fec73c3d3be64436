//! A host PCI function the tests build: a GPU-like endpoint (NVIDIA T4
//! IDs) with a 32-bit register BAR holding its MSI-X table, an I/O BAR
//! (which must not be exposed) and a 64-bit prefetchable BAR. It records
//! what the guest side does to it and lets a test fire its interrupts.
//! Also: descriptor chains for virtio-queue's mock queues, and the
//! configuration and MMIO accessors a test uses as a guest driver would.

#![allow(dead_code, clippy::unwrap_used)]

pub mod guest;
pub mod net;
pub mod queue;

#[allow(unused_imports)]
pub use queue::{add_chain, DESC_NEXT, DESC_WRITE};

use std::sync::Mutex;

use virtkit_devices::host::vfio::{HostFunction, RegionInfo, VfioError, CONFIG_REGION};
use virtkit_devices::pci::{PciAddress, PciBus};
use vmm_sys_util::eventfd::EventFd;

/// Size of BAR 0, the register file.
pub const REGS_SIZE: u64 = 0x1_0000;
/// Size of BAR 2, the 64-bit prefetchable aperture.
pub const APERTURE_SIZE: u64 = 0x10_0000;
/// What register 0 of BAR 0 reads as.
pub const ID_REGISTER: u32 = 0xcafe_f00d;
/// MSI-X vectors.
pub const VECTORS: u16 = 4;
/// MSI-X table and PBA offsets inside BAR 0.
pub const TABLE_OFFSET: u32 = 0x8000;
pub const PBA_OFFSET: u32 = 0x9000;

#[derive(Default)]
pub struct Recorded {
    pub commands: Vec<u16>,
    pub msix: Option<Vec<EventFd>>,
    pub msix_disabled: usize,
    pub resets: usize,
}

pub struct FakeFunction {
    config: Mutex<[u8; 256]>,
    regs: Mutex<Vec<u8>>,
    pub recorded: Mutex<Recorded>,
}

impl FakeFunction {
    pub fn t4() -> Self {
        let mut c = [0u8; 256];
        c[0..2].copy_from_slice(&0x10deu16.to_le_bytes());
        c[2..4].copy_from_slice(&0x1eb8u16.to_le_bytes());
        c[0x06] = 0x10; // capability list
        c[0x08] = 0xa1;
        c[0x09..0x0c].copy_from_slice(&[0x00, 0x02, 0x03]); // 3D controller
        c[0x10..0x14].copy_from_slice(&0u32.to_le_bytes()); // BAR0 mem32
        c[0x14..0x18].copy_from_slice(&1u32.to_le_bytes()); // BAR1 I/O
        c[0x18..0x1c].copy_from_slice(&0xcu32.to_le_bytes()); // BAR2 mem64 pf
        c[0x2c..0x2e].copy_from_slice(&0x10deu16.to_le_bytes());
        c[0x2e..0x30].copy_from_slice(&0x12a2u16.to_le_bytes());
        c[0x34] = 0x60;
        // Power management at 0x60 -> MSI-X at 0x68.
        c[0x60] = 0x01;
        c[0x61] = 0x68;
        c[0x68] = 0x11;
        c[0x69] = 0x00;
        c[0x6a..0x6c].copy_from_slice(&(VECTORS - 1).to_le_bytes());
        c[0x6c..0x70].copy_from_slice(&TABLE_OFFSET.to_le_bytes());
        c[0x70..0x74].copy_from_slice(&PBA_OFFSET.to_le_bytes());
        let mut regs = vec![0u8; REGS_SIZE as usize];
        regs[0..4].copy_from_slice(&ID_REGISTER.to_le_bytes());
        FakeFunction {
            config: Mutex::new(c),
            regs: Mutex::new(regs),
            recorded: Mutex::default(),
        }
    }

    pub fn reg(&self, offset: usize) -> u32 {
        let r = self.regs.lock().unwrap();
        u32::from_le_bytes(r[offset..offset + 4].try_into().unwrap())
    }

    /// The device raises MSI-X vector `v`.
    pub fn fire(&self, v: usize) {
        let rec = self.recorded.lock().unwrap();
        rec.msix.as_ref().expect("MSI-X enabled")[v]
            .write(1)
            .unwrap();
    }
}

impl HostFunction for FakeFunction {
    fn name(&self) -> &str {
        "0000:3b:00.0"
    }

    fn region(&self, index: u32) -> RegionInfo {
        let size = match index {
            0 => REGS_SIZE,
            1 => 0x80,
            2 => APERTURE_SIZE,
            CONFIG_REGION => 256,
            _ => 0,
        };
        RegionInfo {
            size,
            mappable: false,
        }
    }

    fn region_read(&self, index: u32, offset: u64, data: &mut [u8]) {
        let o = offset as usize;
        match index {
            CONFIG_REGION => data.copy_from_slice(&self.config.lock().unwrap()[o..o + data.len()]),
            0 => data.copy_from_slice(&self.regs.lock().unwrap()[o..o + data.len()]),
            _ => data.fill(0xee),
        }
    }

    fn region_write(&self, index: u32, offset: u64, data: &[u8]) {
        let o = offset as usize;
        match index {
            CONFIG_REGION => {
                self.config.lock().unwrap()[o..o + data.len()].copy_from_slice(data);
                if o == 4 && data.len() == 2 {
                    let cmd = u16::from_le_bytes([data[0], data[1]]);
                    self.recorded.lock().unwrap().commands.push(cmd);
                }
            }
            0 => self.regs.lock().unwrap()[o..o + data.len()].copy_from_slice(data),
            _ => {}
        }
    }

    fn enable_msix(&self, vectors: &[&EventFd]) -> Result<(), VfioError> {
        self.recorded.lock().unwrap().msix =
            Some(vectors.iter().map(|e| e.try_clone().unwrap()).collect());
        Ok(())
    }

    fn disable_msix(&self) -> Result<(), VfioError> {
        let mut rec = self.recorded.lock().unwrap();
        rec.msix = None;
        rec.msix_disabled += 1;
        Ok(())
    }

    fn reset(&self) {
        self.recorded.lock().unwrap().resets += 1;
    }
}

/// An MSI sink that hands each message to the test.
pub struct Recorder(pub Mutex<std::sync::mpsc::Sender<(u64, u32)>>);

impl virtkit_devices::pci::MsiSink for Recorder {
    fn send(&self, address: u64, data: u32) {
        let _ = self.0.lock().unwrap().send((address, data));
    }
}

/// Configuration dword at `off` of `addr`.
pub fn cfg32(bus: &PciBus, addr: PciAddress, off: usize) -> u32 {
    let mut b = [0u8; 4];
    bus.config_read(addr, off, &mut b);
    u32::from_le_bytes(b)
}

/// MMIO dword at `at` (something must decode it).
pub fn mmio32(bus: &PciBus, at: u64) -> u32 {
    let mut b = [0u8; 4];
    assert!(bus.mmio_read(at, &mut b), "nothing decodes {at:#x}");
    u32::from_le_bytes(b)
}

/// Offset of capability `id` as the guest walks the list.
pub fn find_cap(bus: &PciBus, addr: PciAddress, id: u8) -> Option<usize> {
    let mut at = (cfg32(bus, addr, 0x34) & 0xfc) as usize;
    while at != 0 {
        let head = cfg32(bus, addr, at);
        if head as u8 == id {
            return Some(at);
        }
        at = ((head >> 8) & 0xfc) as usize;
    }
    None
}
