//! The PCI bus's part of migration, without KVM: a bus whose guest moved
//! a BAR and started a virtio-blk driver is saved and loaded into a
//! second bus holding the same functions, which then decodes and serves
//! as the first did; buses that differ, and functions that cannot carry
//! their state, are refused with the slot named.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_core::runtime::{Snapshot, StateError};
use virtkit_devices::block::{DiskOptions, RawFile};
use virtkit_devices::pci::config::ConfigSpace;
use virtkit_devices::pci::{BarSpec, MsiSink, PciAddress, PciBus, PciDevice, PciIds, PciLayout};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::{driver_init_queue0, VirtioPciDevice};

mod common;
use common::{cfg32, mmio32};

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _: u64, _: u32) {}
}

fn blk(mem: &GuestMem, dir: &tempfile::TempDir, name: &str) -> Arc<Mutex<VirtioPciDevice>> {
    let path = dir.path().join(name);
    std::fs::write(&path, vec![0u8; 8 * 512]).unwrap();
    let backend = RawFile::open(&path, DiskOptions::default()).unwrap();
    let dev = VirtioBlock::new(Arc::new(backend), BlockConfig::default());
    Arc::new(Mutex::new(
        VirtioPciDevice::new(Box::new(dev), mem.clone(), Arc::new(NoMsi)).unwrap(),
    ))
}

const SLOT: u8 = 3;
const MOVED_BAR: u32 = 0xc100_0000;

#[test]
fn a_bus_moves_with_its_bars_and_running_drivers() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let layout = PciLayout::for_memory(4 << 20);
    let mut source = PciBus::new(layout);
    let addr = source.add_at(SLOT, blk(&mem, &dir, "a.raw")).unwrap();
    assert_eq!(addr, PciAddress::slot(SLOT));
    // The guest moves BAR 0 and turns on memory decoding and bus
    // mastering, then starts the driver through the new address.
    source.config_write(addr, 0x10, &MOVED_BAR.to_le_bytes());
    source.config_write(addr, 0x04, &0x0006u16.to_le_bytes());
    {
        let dev = source.device(SLOT).unwrap();
        let mut dev = dev.lock().unwrap();
        driver_init_queue0(&mut *dev, 0, 16, 0x1000, 0x2000, 0x3000);
    }
    let status = mmio32(&source, u64::from(MOVED_BAR) + 0x14) & 0xff;
    assert_eq!(status & 0x04, 0x04, "DRIVER_OK");
    let saved = source.save_state().unwrap();

    let mut target = PciBus::new(layout);
    target.add_at(SLOT, blk(&mem, &dir, "b.raw")).unwrap();
    let mut probe = [0u8; 4];
    assert!(
        !target.mmio_read(u64::from(MOVED_BAR) + 0x14, &mut probe),
        "before the state, nothing sits at the moved BAR"
    );
    target.restore_state(&saved).unwrap();
    assert_eq!(cfg32(&target, addr, 0x10) & !0xf, MOVED_BAR);
    assert_eq!(mmio32(&target, u64::from(MOVED_BAR) + 0x14) & 0xff, status);
    assert_eq!(target.save_state().unwrap(), saved);

    // A bus with the function in another slot, or another function, or
    // an extra one, is refused before anything changes.
    for arrange in [&[4u8][..], &[SLOT, 5]] {
        let mut other = PciBus::new(layout);
        for (i, &s) in arrange.iter().enumerate() {
            other
                .add_at(s, blk(&mem, &dir, &format!("o{s}{i}.raw")))
                .unwrap();
        }
        let e = other.restore_state(&saved).unwrap_err();
        assert!(e.to_string().contains("PCI functions"), "{e}");
    }
    assert!(matches!(
        target.restore_state(&saved[..saved.len() - 2]),
        Err(StateError::Corrupt(_))
    ));
}

/// A function that never opted in to migration.
struct Legacy(ConfigSpace);
impl PciDevice for Legacy {
    fn name(&self) -> &str {
        "legacy-nic"
    }
    fn bars(&self) -> Vec<(usize, BarSpec)> {
        vec![(0, BarSpec::memory32(0x1000))]
    }
    fn config(&self) -> &ConfigSpace {
        &self.0
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.0
    }
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
}

#[test]
fn a_function_without_state_support_stops_the_save_with_its_slot() {
    let mut bus = PciBus::new(PciLayout::for_memory(4 << 20));
    bus.add_at(
        6,
        Arc::new(Mutex::new(Legacy(ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x100e,
            subsystem_vendor: 0,
            subsystem: 0,
            class: [2, 0, 0],
            revision: 0,
        })))),
    )
    .unwrap();
    match bus.save_state() {
        Err(StateError::Unsupported(what)) => {
            assert!(
                what.contains("slot 6") && what.contains("legacy-nic"),
                "{what}"
            )
        }
        r => panic!("{:?}", r.map(|v| v.len())),
    }
}
