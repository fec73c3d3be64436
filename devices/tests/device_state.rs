//! The PCI bus's part of migration, without KVM: a bus whose guest moved
//! a BAR and started a virtio-blk driver is saved and loaded into a
//! second bus holding the same functions, which then decodes and serves
//! as the first did; buses that differ, and functions that cannot carry
//! their state, are refused with the slot named. A paused bus parks its
//! virtio-net receive threads, and the network device moves too.

#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_core::runtime::{Snapshot, StateError};
use virtkit_devices::block::{DiskOptions, RawFile};
use virtkit_devices::pci::config::ConfigSpace;
use virtkit_devices::pci::{BarSpec, MsiSink, PciAddress, PciBus, PciDevice, PciIds, PciLayout};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::net::{NetConfig, VirtioNet, F_MAC, NET_HDR_LEN};
use virtkit_devices::virtio::pci::{
    driver_init_queue0, driver_init_queues, QueueRings, VirtioPciDevice,
};
use vm_memory::{Bytes, GuestAddress};

mod common;
use common::net::backend;
use common::{add_chain, cfg32, mmio32, DESC_WRITE};

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

fn net(mem: &GuestMem, backend: Arc<common::net::SocketBackend>) -> Arc<Mutex<VirtioPciDevice>> {
    let dev = VirtioNet::new(NetConfig::new([2, 0, 0, 0, 0, 9]), vec![backend]).unwrap();
    Arc::new(Mutex::new(
        VirtioPciDevice::new(Box::new(dev), mem.clone(), Arc::new(NoMsi)).unwrap(),
    ))
}

fn used_idx(mem: &GuestMem, used_ring: u64) -> u16 {
    mem.read_obj(GuestAddress(used_ring + 2)).unwrap()
}

fn wait_used(mem: &GuestMem, used_ring: u64, count: u16) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while used_idx(mem, used_ring) < count {
        assert!(std::time::Instant::now() < deadline, "never {count} used");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; NET_HDR_LEN];
    v.extend_from_slice(payload);
    v
}

#[test]
fn a_paused_bus_parks_network_receive_and_the_nic_moves_with_it() {
    const SIZE: u16 = 16;
    const BUFS: [u64; 2] = [0x10_0000, 0x10_1000];
    let mem = memory::create(4 << 20).unwrap();
    let layout = PciLayout::for_memory(4 << 20);
    let (b, peer) = backend(false);
    let mut source = PciBus::new(layout);
    source.add_at(SLOT, net(&mem, b)).unwrap();
    let rx = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x1000), SIZE);
    let tx = virtio_queue::mock::MockSplitQueue::create(&mem, GuestAddress(0x2_0000), SIZE);
    let rings = |q: &virtio_queue::mock::MockSplitQueue<'_, GuestMem>| QueueRings {
        size: SIZE,
        desc: q.desc_table_addr().0,
        avail: q.avail_addr().0,
        used: q.used_addr().0,
    };
    {
        let dev = source.device(SLOT).unwrap();
        let mut dev = dev.lock().unwrap();
        let status = driver_init_queues(&mut *dev, F_MAC, &[rings(&rx), rings(&tx)]);
        assert_eq!(status & 0x4, 0x4, "DRIVER_OK");
    }
    let used = rx.used_addr().0;
    let next = add_chain(&rx, 0, SIZE, &[(BUFS[0], 1526, DESC_WRITE)]);
    add_chain(&rx, next, SIZE, &[(BUFS[1], 1526, DESC_WRITE)]);
    peer.send(&framed(b"first")).unwrap();
    wait_used(&mem, used, 1);
    match source.save_state() {
        Err(StateError::Running(what)) => assert!(what.contains("PCI slot 3"), "{what}"),
        r => panic!("a running NIC must refuse: {:?}", r.map(|v| v.len())),
    }

    source.pause();
    peer.send(&framed(b"while paused")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(used_idx(&mem, used), 1, "a paused bus's NIC writes nothing");
    let saved = source.save_state().unwrap();

    // The target: guest memory as the migration copied it, the same
    // function in the same slot, its own backend.
    let target_mem = memory::create(4 << 20).unwrap();
    let mut all = vec![0u8; 4 << 20];
    mem.read_slice(&mut all, GuestAddress(0)).unwrap();
    target_mem.write_slice(&all, GuestAddress(0)).unwrap();
    let (b2, peer2) = backend(false);
    let mut target = PciBus::new(layout);
    target.add_at(SLOT, net(&target_mem, b2)).unwrap();
    target.restore_state(&saved).unwrap();
    peer2.send(&framed(b"on the target")).unwrap();
    wait_used(&target_mem, used, 2);
    let mut got = [0u8; 13];
    target_mem
        .read_slice(&mut got, GuestAddress(BUFS[1] + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(&got, b"on the target", "the second buffer, not the first");

    // A cancelled migration: the source resumes and delivers what came
    // while it was paused.
    source.resume().unwrap();
    wait_used(&mem, used, 2);
    let mut got = [0u8; 12];
    mem.read_slice(&mut got, GuestAddress(BUFS[1] + NET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(&got, b"while paused");
}

#[test]
fn a_paused_watchdog_keeps_its_time_left_and_moves_with_it() {
    use std::time::{Duration, Instant};
    use virtkit_core::runtime::VmExit;
    use virtkit_core::spec::vmi::WatchdogAction;
    use virtkit_devices::acpi::AcpiEvents;
    use virtkit_devices::watchdog::{I6300esb, WatchdogSink};

    let fired = |log: &Arc<Mutex<Vec<VmExit>>>| log.lock().unwrap().len();
    let watchdog = |bus: &PciBus| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let l = log.clone();
        let esb = I6300esb::new(WatchdogSink {
            action: WatchdogAction::Poweroff,
            exit: Arc::new(move |e| l.lock().unwrap().push(e)),
            events: AcpiEvents::new(),
        })
        .unwrap();
        let addr = bus.add_at(SLOT, Arc::new(Mutex::new(esb))).unwrap();
        bus.config_write(addr, 0x04, &0x0002u16.to_le_bytes());
        let bar = u64::from(cfg32(bus, addr, 0x10) & !0xf);
        (addr, bar, log)
    };
    let layout = PciLayout::for_memory(4 << 20);
    let mut source = PciBus::new(layout);
    let (addr, bar, source_fired) = watchdog(&source);
    // Both stages ≈ 100 ms at the 1 kHz clock; enable.
    for reg in [0x0u64, 0x4] {
        assert!(source.mmio_write(bar + 0xc, &0x80u32.to_le_bytes()));
        assert!(source.mmio_write(bar + 0xc, &0x86u32.to_le_bytes()));
        assert!(source.mmio_write(bar + reg, &100u32.to_le_bytes()));
    }
    source.config_write(addr, 0x68, &[0x2]);
    let stage = Duration::from_nanos((100 << 15) * 30);

    // Paused for longer than both stages: the guest could not pet it,
    // so it must not fire.
    source.pause();
    std::thread::sleep(stage * 3);
    assert_eq!(fired(&source_fired), 0, "a paused watchdog never fires");
    let saved = source.save_state().unwrap();

    // The target VM is paused while it loads the state; its watchdog
    // waits for the resume, then fires within what was left.
    let mut target = PciBus::new(layout);
    let (_, _, target_fired) = watchdog(&target);
    target.pause();
    target.restore_state(&saved).unwrap();
    std::thread::sleep(stage * 3);
    assert_eq!(fired(&target_fired), 0, "not while the target is paused");
    let resumed = Instant::now();
    target.resume().unwrap();
    while fired(&target_fired) == 0 {
        assert!(resumed.elapsed() < Duration::from_secs(5), "never fired");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        resumed.elapsed() >= stage,
        "it fired after stage 2 too, {:?} after the resume",
        resumed.elapsed()
    );
    assert_eq!(
        *target_fired.lock().unwrap(),
        [VmExit::Watchdog {
            action: WatchdogAction::Poweroff
        }]
    );
    assert_eq!(fired(&source_fired), 0);
}
