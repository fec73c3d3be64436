//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the
//! corpus replay test, so both exercise the same code.

use std::sync::Arc;

use vm_memory::{Bytes, GuestAddress};

use crate::block::MemoryDisk;
use crate::pci::{MsiSink, PciBus, PciDevice, PciLayout};
use crate::virtio::block::{BlockConfig, VirtioBlock};
use crate::virtio::pci::{driver_init_queue0, VirtioPciDevice, NOTIFY_OFFSET};

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _address: u64, _data: u32) {}
}

fn blk_transport(memory: virtkit_core::runtime::memory::GuestMem) -> Option<VirtioPciDevice> {
    let disk = MemoryDisk::new(vec![0x5a; 64 * 512], false);
    let blk = VirtioBlock::new(
        Arc::new(disk),
        BlockConfig {
            serial: "fuzz".into(),
            queues: 2,
            queue_size: 256,
        },
    );
    VirtioPciDevice::new(Box::new(blk), memory, Arc::new(NoMsi)).ok()
}

/// Interpret `data` as guest accesses to a bus holding a virtio-blk
/// device: 8-byte records `[op, slot, offset lo, offset hi, value × 4]`
/// where op picks a config read/write (width 1, 2 or 4) or a BAR read or
/// write. Checks that read-only identity fields never change.
pub fn pci_config(data: &[u8]) {
    let Ok(memory) = virtkit_core::runtime::memory::create(1 << 20) else {
        return;
    };
    let bus = PciBus::new(PciLayout::for_memory(1 << 20));
    let Some(dev) = blk_transport(memory) else {
        return;
    };
    let Ok(at) = bus.add(Arc::new(std::sync::Mutex::new(dev))) else {
        return;
    };
    let bar = bus.layout().mmio32.0;
    for rec in data.chunks_exact(8).take(512) {
        let width = [1usize, 2, 4][usize::from(rec[0] >> 4) % 3];
        let slot = rec[1] % 33;
        let offset = usize::from(u16::from_le_bytes([rec[2], rec[3]]));
        let value = &rec[4..4 + width];
        let mut addr = crate::pci::PciAddress::slot(slot);
        addr.function = rec[1] >> 5;
        match rec[0] & 0x3 {
            0 => bus.config_read(addr, offset, &mut [0u8; 4][..width]),
            1 => bus.config_write(addr, offset, value),
            2 => {
                bus.mmio_read(bar + offset as u64, &mut [0u8; 4][..width]);
            }
            _ => {
                bus.mmio_write(bar + offset as u64, value);
            }
        }
    }
    let mut id = [0u8; 4];
    bus.config_read(at, 0, &mut id);
    assert_eq!(u32::from_le_bytes(id), 0x1042_1af4, "identity changed");
    bus.config_read(crate::pci::PciAddress::slot(0), 0, &mut id);
    assert_eq!(
        u32::from_le_bytes(id),
        0x29c0_8086,
        "host bridge identity changed"
    );
}

/// A paused bus (as a migration target's is) holding a virtio-blk
/// function in slot 3 whose driver is running (queue 0 of 16 entries at
/// 0x1000/0x2000/0x3000), an AHCI controller with a disk and a CD-ROM in
/// slot 4 and an i6300esb watchdog in slot 5, on 1 MiB of guest memory;
/// and the ACPI event registers: what [`device_state`] loads blobs into,
/// and where its seeds come from.
pub fn device_state_target() -> Option<(PciBus, crate::acpi::AcpiEvents)> {
    use crate::ahci::{AhciController, SataDrive};
    use crate::watchdog::{I6300esb, WatchdogSink};
    use virtkit_core::runtime::Snapshot;
    let memory = virtkit_core::runtime::memory::create(1 << 20).ok()?;
    let mut bus = PciBus::new(PciLayout::for_memory(1 << 20));
    let mut dev = blk_transport(memory.clone())?;
    driver_init_queue0(&mut dev, 0, 16, 0x1000, 0x2000, 0x3000);
    bus.add_at(3, Arc::new(std::sync::Mutex::new(dev))).ok()?;
    let ahci = AhciController::new(
        vec![
            SataDrive::disk(Arc::new(MemoryDisk::new(vec![0; 8 * 512], false)), "D"),
            SataDrive::cdrom(Arc::new(MemoryDisk::new(vec![0; 2048], true)), "CD", true),
        ],
        memory,
        Arc::new(NoMsi),
    )
    .ok()?;
    bus.add_at(4, Arc::new(std::sync::Mutex::new(ahci))).ok()?;
    let events = crate::acpi::AcpiEvents::new();
    let watchdog = I6300esb::new(WatchdogSink {
        action: virtkit_core::spec::vmi::WatchdogAction::Poweroff,
        exit: Arc::new(|_| {}),
        events: events.clone(),
    })
    .ok()?;
    bus.add_at(5, Arc::new(std::sync::Mutex::new(watchdog)))
        .ok()?;
    // Paused, so the watchdog's clock stands still and a saved state
    // reads back the same.
    bus.pause();
    Some((bus, events))
}

/// Load `data[1..]` as migrated device state: into the PCI bus (and so
/// the virtio-pci transport, the AHCI controller and the watchdog) when
/// `data[0]` is even, else into the ACPI event registers. Whatever loads
/// must save again, and what that saves must load back to the same bytes.
pub fn device_state(data: &[u8]) {
    use virtkit_core::runtime::Snapshot;
    let Some((&which, blob)) = data.split_first() else {
        return;
    };
    let Some((mut bus, mut events)) = device_state_target() else {
        return;
    };
    let target: &mut dyn Snapshot = if which % 2 == 0 {
        &mut bus
    } else {
        &mut events
    };
    if target.restore_state(blob).is_err() {
        return;
    }
    let Ok(again) = target.save_state() else {
        panic!("a state that loaded does not save");
    };
    if target.restore_state(&again).is_err() {
        panic!("a state this build saved does not load");
    }
    assert_eq!(
        target.save_state().ok(),
        Some(again),
        "state does not read back"
    );
}

/// Lay `data` into guest memory (descriptor table at 0, available ring at
/// 0x1000, used ring at 0x2000, buffers anywhere below 64 KiB), start a
/// virtio-blk queue of size `2^(data[0] % 9)` on it and notify twice. The
/// device must neither panic nor loop, whatever the rings say.
pub fn virtqueue(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(memory) = virtkit_core::runtime::memory::create(1 << 20) else {
        return;
    };
    let len = rest.len().min(0x1_0000);
    if memory.write_slice(&rest[..len], GuestAddress(0)).is_err() {
        return;
    }
    let Some(mut dev) = blk_transport(memory) else {
        return;
    };
    let size = 1u16 << (selector % 9);
    driver_init_queue0(&mut dev, 0, size, 0, 0x1000, 0x2000);
    dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
    let mut status = [0u8];
    dev.bar_read(0, 0x14, &mut status);
    std::hint::black_box(status);
}

/// Run arbitrary SCSI commands against a disk and a CD-ROM unit: records
/// of `[unit, cdb × 16, data-out length]` followed by the data-out bytes.
/// Must never panic; data-in never exceeds what was allowed.
pub fn scsi_commands(data: &[u8]) {
    use crate::scsi::{ScsiUnit, UnitKind};
    let disk = ScsiUnit::new(
        Arc::new(MemoryDisk::new(vec![0x11; 64 * 512], false)),
        UnitKind::Disk,
        "fuzz",
    );
    let cdrom = ScsiUnit::new(
        Arc::new(MemoryDisk::new(vec![0x22; 8 * 2048], true)),
        UnitKind::Cdrom { tray_open: false },
        "fuzz-cd",
    );
    let mut rest = data;
    for _ in 0..256 {
        if rest.len() < 18 {
            break;
        }
        let unit = if rest[0] & 1 == 0 { &disk } else { &cdrom };
        let cdb = &rest[1..17];
        let out_len = usize::from(rest[17]) * 16;
        let (out, tail) = rest[18..].split_at(out_len.min(rest.len() - 18));
        let allowed = usize::from(rest[0] >> 1) * 64;
        let outcome = unit.execute(cdb, &mut &out[..], allowed);
        assert!(outcome.data_in.len() <= allowed);
        rest = tail;
    }
}

/// Drive an AHCI controller (a disk on port 0, a CD-ROM on port 1) whose
/// guest memory is arbitrary: `data[0]` register writes of 6 bytes
/// (`[offset lo, offset hi, value × 4]` into the ABAR) follow, and the
/// rest is guest memory from address 0 — command lists, tables, PRDTs and
/// FISes as the fuzzer makes them. Must never panic or run away; the
/// disk's identity and size never change.
pub fn ahci_commands(data: &[u8]) {
    use crate::ahci::{AhciController, SataDrive};
    let Some((&writes, rest)) = data.split_first() else {
        return;
    };
    let (ops, image) = rest.split_at((usize::from(writes) * 6).min(rest.len()));
    let Ok(memory) = virtkit_core::runtime::memory::create(1 << 20) else {
        return;
    };
    let len = image.len().min(1 << 20);
    if memory.write_slice(&image[..len], GuestAddress(0)).is_err() {
        return;
    }
    let disk = Arc::new(MemoryDisk::new(vec![0x33; 64 * 512], false));
    let cd = Arc::new(MemoryDisk::new(vec![0x44; 8 * 2048], true));
    let drives = vec![
        SataDrive::disk(disk.clone(), "fuzz"),
        SataDrive::cdrom(cd, "fuzz-cd", false),
    ];
    let Ok(mut hba) = AhciController::new(drives, memory, Arc::new(NoMsi)) else {
        return;
    };
    hba.config_mut().write(4, &6u16.to_le_bytes());
    hba.config_written(4, 2);
    for op in ops.chunks_exact(6) {
        let offset = u64::from(u16::from_le_bytes([op[0], op[1]]) & 0x1ffc);
        hba.bar_write(crate::ahci::ABAR, offset, &op[2..6]);
        let mut back = [0u8; 4];
        hba.bar_read(crate::ahci::ABAR, offset, &mut back);
    }
    assert_eq!(hba.config().read_u32(0), 0x2922_8086, "identity changed");
    assert_eq!(disk.contents().len(), 64 * 512, "disk size changed");
}
