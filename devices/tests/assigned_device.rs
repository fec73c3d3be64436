//! Host PCI functions on the guest's bus (`AssignedDevice` over the
//! `HostFunction` seam), driven the way a guest driver drives them: the
//! host identity and memory BARs appear in configuration space, command
//! writes and BAR accesses reach the function, the MSI-X table is
//! emulated so that the function's eventfd interrupts arrive as the
//! guest's messages (masking and pending bits honoured), and removal
//! stops interrupts and resets the function. The VFIO implementation
//! fails with a clear error on a host without `/dev/vfio`.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use virtkit_core::runtime::{VmBuilder, VmConfig};
use virtkit_devices::host::assigned::AssignedDevice;
use virtkit_devices::host::vfio::{VfioError, VfioFunction};
use virtkit_devices::pci::{PciBus, PciLayout};

mod common;
use common::{
    cfg32, find_cap, mmio32, FakeFunction, Recorder, APERTURE_SIZE, ID_REGISTER, PBA_OFFSET,
    REGS_SIZE, TABLE_OFFSET,
};

#[test]
fn a_host_function_on_the_bus_behaves_as_the_guest_expects() {
    let fake = Arc::new(FakeFunction::t4());
    let (tx, rx) = mpsc::channel();
    let dev = AssignedDevice::new(fake.clone(), Arc::new(Recorder(Mutex::new(tx)))).unwrap();
    let bus = PciBus::new(PciLayout::for_memory(1 << 30));
    let addr = bus.add(Arc::new(Mutex::new(dev))).unwrap();

    // Identity from the host header.
    assert_eq!(cfg32(&bus, addr, 0), 0x1eb8_10de);
    assert_eq!(cfg32(&bus, addr, 0x08), 0x0302_00a1);
    assert_eq!(cfg32(&bus, addr, 0x2c), 0x12a2_10de);
    // Memory BARs placed by the bus; the I/O BAR is not exposed.
    let bar0 = u64::from(cfg32(&bus, addr, 0x10) & !0xf);
    assert_ne!(bar0, 0);
    assert_eq!(bar0 % REGS_SIZE, 0);
    assert_eq!(cfg32(&bus, addr, 0x14), 0, "I/O BAR hidden");
    let bar2 = cfg32(&bus, addr, 0x18);
    assert_eq!(bar2 & 0xf, 0xc, "64-bit prefetchable");
    let bar2 = u64::from(bar2 & !0xf) | (u64::from(cfg32(&bus, addr, 0x1c)) << 32);
    assert_eq!(bar2 % APERTURE_SIZE, 0);
    // BAR sizing as a guest does it.
    bus.config_write(addr, 0x10, &u32::MAX.to_le_bytes());
    assert_eq!(cfg32(&bus, addr, 0x10) & !0xf, !(REGS_SIZE as u32 - 1));
    bus.config_write(addr, 0x10, &(bar0 as u32).to_le_bytes());

    // Memory decode and bus mastering reach the function, INTx stays off.
    bus.config_write(addr, 0x04, &0x0006u16.to_le_bytes());
    assert_eq!(fake.recorded.lock().unwrap().commands.last(), Some(&0x0406));
    // BAR accesses reach its registers.
    assert_eq!(mmio32(&bus, bar0), ID_REGISTER);
    assert!(bus.mmio_write(bar0 + 0x10, &0x1234_5678u32.to_le_bytes()));
    assert_eq!(fake.reg(0x10), 0x1234_5678);

    // MSI-X: the capability the guest finds points at the host's table.
    let cap = find_cap(&bus, addr, 0x11).expect("MSI-X capability");
    assert_eq!(cfg32(&bus, addr, cap + 4), TABLE_OFFSET);
    assert_eq!(cfg32(&bus, addr, cap + 8), PBA_OFFSET);
    let entry = bar0 + u64::from(TABLE_OFFSET) + 16;
    assert!(bus.mmio_write(entry, &0xfee0_0000u32.to_le_bytes()));
    assert!(bus.mmio_write(entry + 8, &0x41u32.to_le_bytes()));
    assert!(bus.mmio_write(entry + 12, &0u32.to_le_bytes())); // unmask
    assert_eq!(mmio32(&bus, entry + 8), 0x41, "the table is emulated");
    assert_eq!(fake.reg(TABLE_OFFSET as usize + 24), 0, "not the host's");
    let control = cfg32(&bus, addr, cap) >> 16;
    bus.config_write(addr, cap + 2, &((control as u16) | 0x8000).to_le_bytes());
    assert_eq!(
        fake.recorded.lock().unwrap().msix.as_ref().map(Vec::len),
        Some(4)
    );

    fake.fire(1);
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (0xfee0_0000, 0x41)
    );
    // Masked: held pending, delivered on unmask.
    assert!(bus.mmio_write(entry + 12, &1u32.to_le_bytes()));
    fake.fire(1);
    let pba = bar0 + u64::from(PBA_OFFSET);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mmio32(&bus, pba) & 0b10 == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending bit never set"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(rx.try_recv().is_err(), "masked vector delivered");
    assert!(bus.mmio_write(entry + 12, &0u32.to_le_bytes()));
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (0xfee0_0000, 0x41)
    );
    assert_eq!(mmio32(&bus, pba) & 0b10, 0);

    // Removal stops interrupts and resets the function.
    bus.remove(addr.device).unwrap();
    let rec = fake.recorded.lock().unwrap();
    assert!(rec.msix.is_none() && rec.msix_disabled == 1);
    assert_eq!(rec.resets, 1);
}

#[test]
fn vfio_attach_says_what_the_host_lacks() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; a VM is needed to attach to");
        return;
    }
    let vm = VmBuilder::new(VmConfig {
        name: "vfio".into(),
        vcpus: 1,
        memory_bytes: 16 << 20,
    })
    .build()
    .unwrap();
    let function = Path::new("/sys/bus/pci/devices/0000:00:00.0");
    let err = VfioFunction::open(&vm, function).unwrap_err();
    if Path::new("/dev/vfio/vfio").exists() {
        // A host with VFIO: a function that does not exist is named.
        let missing = Path::new("/sys/bus/pci/devices/0000:ff:1f.7");
        let err = VfioFunction::open(&vm, missing).unwrap_err();
        assert!(matches!(err, VfioError::NoSuchFunction { .. }), "{err}");
    } else {
        assert!(matches!(err, VfioError::Unavailable { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("/dev/vfio/vfio") && text.contains("vfio-pci"),
            "{text}"
        );
    }
}

#[test]
fn functions_that_cannot_be_assigned_are_refused() {
    struct Gone;
    impl virtkit_devices::host::vfio::HostFunction for Gone {
        fn name(&self) -> &str {
            "0000:3b:00.1"
        }
        fn region(&self, _: u32) -> virtkit_devices::host::vfio::RegionInfo {
            virtkit_devices::host::vfio::RegionInfo {
                size: 0,
                mappable: false,
            }
        }
        fn region_read(&self, _: u32, _: u64, data: &mut [u8]) {
            data.fill(0xff);
        }
        fn region_write(&self, _: u32, _: u64, _: &[u8]) {}
        fn enable_msix(&self, _: &[&vmm_sys_util::eventfd::EventFd]) -> Result<(), VfioError> {
            Ok(())
        }
        fn disable_msix(&self) -> Result<(), VfioError> {
            Ok(())
        }
        fn reset(&self) {}
    }
    let (tx, _rx) = mpsc::channel();
    let sink = Arc::new(Recorder(Mutex::new(tx)));
    let err = AssignedDevice::new(Arc::new(Gone), sink).unwrap_err();
    assert!(err.to_string().contains("0000:3b:00.1"), "{err}");
    assert!(err.to_string().contains("does not respond"), "{err}");
}
