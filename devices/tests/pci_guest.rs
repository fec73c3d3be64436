//! The PCI bus and virtio-blk seen from inside a running guest: tiny
//! long-mode payloads scan the bus through 0xCF8/0xCFC, watch a hotplug
//! come and go through the ACPI hotplug registers, and drive a virtio-blk
//! disk through the modern transport. Each test skips, saying why, only
//! where /dev/kvm is absent.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use virtkit_core::payload::{Payload, SerialCapture};
use virtkit_core::runtime::{BusDevice, Vm, VmExit};
use virtkit_core::spec::vmi::WatchdogAction;
use virtkit_devices::acpi::AcpiEvents;
use virtkit_devices::block::{open_disk, BlockBackend, BlockError, DiskOptions, RawFile};
use virtkit_devices::host::assigned::AssignedDevice;
use virtkit_devices::pci::{PciBus, PciLayout, SlotState};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::VirtioPciDevice;
use virtkit_devices::watchdog::{I6300esb, WatchdogSink};

mod common;
use common::guest::{
    config_read, find_function, kvm_present, long_mode, out_al, power_off, print_bytes,
    run_to_power_off, virtio_start_queue, vm, SERIAL, TIMEOUT,
};

/// A test-only port through which the payload tells the host where it is.
const DOORBELL: u64 = 0x510;

struct Doorbell(Sender<u8>);
impl BusDevice for Doorbell {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        let _ = self.0.send(data[0]);
    }
}

fn disk(dir: &Path, name: &str, sectors: usize) -> PathBuf {
    let path = dir.join(name);
    let mut bytes = vec![0u8; sectors * 512];
    for (i, s) in bytes.chunks_mut(512).enumerate() {
        s[..12].copy_from_slice(format!("sector-{i:05}").as_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn blk(vm: &Vm, path: &Path) -> Arc<Mutex<VirtioPciDevice>> {
    let backend: Arc<dyn BlockBackend> = open_disk(path, DiskOptions::default()).unwrap().into();
    let dev = VirtioBlock::new(backend, BlockConfig::default());
    Arc::new(Mutex::new(
        VirtioPciDevice::new(
            Box::new(dev),
            vm.memory().clone(),
            Arc::new(vm.interrupts()),
        )
        .unwrap(),
    ))
}

/// Scan slots 0..32 three times: at boot, after PCIU shows a plug, and
/// after the payload ejected what PCID asked for. Each scan prints one
/// line, `#` for a present device and `.` for an empty slot; between
/// scans the GPE0 status byte is printed as a digit.
fn hotplug_payload() -> Payload {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut scan = a.create_label();
    let mut wait_up = a.create_label();
    let mut wait_down = a.create_label();
    a.call(scan).unwrap();
    a.mov(al, 1u32).unwrap();
    out_al(&mut a, DOORBELL as u32);
    a.set_label(&mut wait_up).unwrap();
    a.mov(dx, 0xae00u32).unwrap();
    a.in_(eax, dx).unwrap();
    a.test(eax, eax).unwrap();
    a.jz(wait_up).unwrap();
    // GPE0 status (bit 1 = PCI hotplug), printed as a digit, then cleared.
    a.mov(dx, 0x620u32).unwrap();
    a.in_(al, dx).unwrap();
    a.mov(cl, al).unwrap();
    a.out(dx, al).unwrap();
    a.mov(al, cl).unwrap();
    a.add(al, b'0' as i32).unwrap();
    out_al(&mut a, SERIAL);
    a.call(scan).unwrap();
    a.mov(al, 2u32).unwrap();
    out_al(&mut a, DOORBELL as u32);
    a.set_label(&mut wait_down).unwrap();
    a.mov(dx, 0xae04u32).unwrap();
    a.in_(eax, dx).unwrap();
    a.test(eax, eax).unwrap();
    a.jz(wait_down).unwrap();
    a.mov(dx, 0xae08u32).unwrap();
    a.out(dx, eax).unwrap();
    a.call(scan).unwrap();
    power_off(&mut a);

    let mut next = a.create_label();
    let mut present = a.create_label();
    a.set_label(&mut scan).unwrap();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut next).unwrap();
    config_read(&mut a, 0);
    a.mov(cl, b'#' as u32).unwrap();
    a.cmp(eax, -1).unwrap();
    a.jne(present).unwrap();
    a.mov(cl, b'.' as u32).unwrap();
    a.set_label(&mut present).unwrap();
    a.mov(al, cl).unwrap();
    out_al(&mut a, SERIAL);
    a.inc(ebx).unwrap();
    a.cmp(ebx, 32).unwrap();
    a.jb(next).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a, SERIAL);
    a.ret().unwrap();
    long_mode(&mut a)
}

#[test]
fn guest_sees_a_hotplugged_device_appear_and_go() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = SerialCapture::default();
    let vm = vm(&out);
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    bus.add(blk(&vm, &disk(dir.path(), "cold.raw", 8))).unwrap();
    let events = AcpiEvents::new();
    events.attach(&vm).unwrap();
    bus.attach(&vm, &events).unwrap();
    let (tx, rx) = channel();
    vm.add_pio_device(DOORBELL, 1, Arc::new(Mutex::new(Doorbell(tx))))
        .unwrap();
    hotplug_payload().load(&vm).unwrap();
    vm.start().unwrap();

    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 1, "first scan done");
    let hot = blk(&vm, &disk(dir.path(), "hot.raw", 8));
    let at = bus.hotplug(hot, None).unwrap();
    assert_eq!(at.device, 2);
    assert_eq!(rx.recv_timeout(TIMEOUT).unwrap(), 2, "second scan done");
    bus.request_unplug(2).unwrap();
    bus.wait_ejected(2, TIMEOUT).unwrap();
    assert_eq!(bus.slots()[2], SlotState::Free);
    assert_eq!(vm.wait_timeout(TIMEOUT).unwrap(), Some(VmExit::PowerOff));

    let (before, after) = (".".repeat(30), ".".repeat(29));
    assert_eq!(
        out.text(),
        format!("##{before}\n2###{after}\n##{before}\n"),
        "boot scan, GPE status 2 then the scan after the plug, the scan after the eject"
    );
    // Nothing of the hot disk stays open: it can be locked exclusively.
    RawFile::open(&dir.path().join("hot.raw"), DiskOptions::default()).unwrap();
}

/// Find the virtio-blk function, enable it, set queue 0 up at 0x20000,
/// write `written-by-guest` into sector 2, read sector 1 back and print
/// its first 12 bytes and both status bytes.
fn virtio_blk_payload() -> Payload {
    const DESC: u64 = 0x2_0000;
    const AVAIL: u64 = 0x2_1000;
    const USED: u64 = 0x2_2000;
    const HEADER: u64 = 0x2_3000;
    const DATA: u64 = 0x2_4000;
    const STATUS: u64 = 0x2_5000;
    let mut a = CodeAssembler::new(64).unwrap();
    let mut wait1 = a.create_label();
    let mut wait2 = a.create_label();
    find_function(&mut a, 0x1042_1af4);
    virtio_start_queue(&mut a, 0, [DESC, AVAIL, USED]);
    // Descriptors: header -> data -> status.
    let desc = |a: &mut CodeAssembler, i: u64, addr: u64, len: u32, flags: u32, next: u32| {
        a.mov(rax, addr).unwrap();
        a.mov(qword_ptr(DESC + 16 * i), rax).unwrap();
        a.mov(dword_ptr(DESC + 16 * i + 8), len).unwrap();
        a.mov(word_ptr(DESC + 16 * i + 12), flags).unwrap();
        a.mov(word_ptr(DESC + 16 * i + 14), next).unwrap();
    };
    desc(&mut a, 0, HEADER, 16, 1, 1);
    desc(&mut a, 1, DATA, 512, 1, 2);
    desc(&mut a, 2, STATUS, 1, 2, 0);
    // Request 1: OUT sector 2 with "written-by-guest" then 'G's.
    a.mov(rdi, DATA).unwrap();
    a.mov(al, b'G' as u32).unwrap();
    a.mov(ecx, 512u32).unwrap();
    a.rep().stosb().unwrap();
    a.mov(rax, u64::from_le_bytes(*b"written-")).unwrap();
    a.mov(qword_ptr(DATA), rax).unwrap();
    a.mov(rax, u64::from_le_bytes(*b"by-guest")).unwrap();
    a.mov(qword_ptr(DATA + 8), rax).unwrap();
    a.mov(dword_ptr(HEADER), 1u32).unwrap();
    a.mov(dword_ptr(HEADER + 4), 0u32).unwrap();
    a.mov(qword_ptr(HEADER + 8), 2).unwrap();
    a.mov(byte_ptr(STATUS), 0xffu32).unwrap();
    a.mov(word_ptr(AVAIL + 4), 0u32).unwrap();
    a.mov(word_ptr(AVAIL + 2), 1u32).unwrap();
    a.mov(word_ptr(rsi + 0x3000), 0u32).unwrap();
    a.set_label(&mut wait1).unwrap();
    a.cmp(word_ptr(USED + 2), 1).unwrap();
    a.jb(wait1).unwrap();
    a.mov(al, byte_ptr(STATUS)).unwrap();
    a.add(al, b'0' as i32).unwrap();
    out_al(&mut a, SERIAL);
    // Request 2: IN sector 1, the data descriptor now device-writable.
    a.mov(dword_ptr(HEADER), 0u32).unwrap();
    a.mov(qword_ptr(HEADER + 8), 1).unwrap();
    a.mov(word_ptr(DESC + 16 + 12), 3u32).unwrap();
    a.mov(byte_ptr(STATUS), 0xffu32).unwrap();
    a.mov(word_ptr(AVAIL + 6), 0u32).unwrap();
    a.mov(word_ptr(AVAIL + 2), 2u32).unwrap();
    a.mov(word_ptr(rsi + 0x3000), 0u32).unwrap();
    a.set_label(&mut wait2).unwrap();
    a.cmp(word_ptr(USED + 2), 2).unwrap();
    a.jb(wait2).unwrap();
    a.mov(al, byte_ptr(STATUS)).unwrap();
    a.add(al, b'0' as i32).unwrap();
    out_al(&mut a, SERIAL);
    a.mov(al, b':' as u32).unwrap();
    out_al(&mut a, SERIAL);
    print_bytes(&mut a, DATA, 12);
    power_off(&mut a);
    long_mode(&mut a)
}

#[test]
fn guest_reads_and_writes_a_virtio_blk_disk() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = disk(dir.path(), "disk.raw", 16);
    run_blk_payload(&path);
    assert_guest_wrote(&std::fs::read(&path).unwrap());
}

#[test]
fn guest_reads_and_writes_a_qcow2_disk() {
    if !kvm_present() || !have_qemu_img() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let raw = disk(dir.path(), "disk.raw", 16);
    let qcow2 = dir.path().join("disk.qcow2");
    qemu_img(
        &["convert", "-O", "qcow2", "-o", "cluster_size=4096"],
        &raw,
        &qcow2,
    );
    run_blk_payload(&qcow2);
    // qemu-img reads back what the guest wrote through our qcow2 code.
    let back = dir.path().join("back.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw"], &qcow2, &back);
    assert_guest_wrote(&std::fs::read(&back).unwrap());
    let check = std::process::Command::new("qemu-img")
        .args(["check", qcow2.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    // qcow2 images are locked like raw ones, and one virtkit cannot write
    // safely is refused for writing with the reason but opens read-only.
    let held = open_disk(&qcow2, DiskOptions::default()).unwrap();
    let again = open_disk(&qcow2, DiskOptions::default()).err().unwrap();
    assert!(matches!(again, BlockError::Locked { .. }), "{again}");
    drop(held);
    let snap = std::process::Command::new("qemu-img")
        .args(["snapshot", "-c", "s1", qcow2.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(snap.success());
    let refused = open_disk(&qcow2, DiskOptions::default()).err().unwrap();
    assert!(
        matches!(refused, BlockError::Image { .. }) && refused.to_string().contains("snapshot"),
        "{refused}"
    );
    let read_only = DiskOptions {
        read_only: true,
        shareable: false,
        incoming: false,
    };
    let ro = open_disk(&qcow2, read_only).unwrap();
    let mut sector = [0u8; 16];
    ro.read_at(&mut sector, 1024).unwrap();
    assert_eq!(&sector, b"written-by-guest");
}

fn have_qemu_img() -> bool {
    let ok = std::process::Command::new("qemu-img")
        .arg("--version")
        .output()
        .is_ok();
    if !ok {
        eprintln!("SKIP: qemu-img (Debian package qemu-utils) is not installed");
    }
    ok
}

fn qemu_img(args: &[&str], from: &Path, to: &Path) {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A VM with the disk at `path` in slot 4 runs the virtio-blk payload:
/// both requests succeed and it prints sector 1.
fn run_blk_payload(path: &Path) {
    let out = SerialCapture::default();
    let vm = vm(&out);
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    // Put it in a slot other than the first, so the payload has to scan.
    bus.add_at(4, blk(&vm, path)).unwrap();
    run_to_power_off(&vm, &bus, &virtio_blk_payload());
    assert_eq!(
        out.text(),
        "00:sector-00001\n",
        "both requests OK, sector 1 read"
    );
}

/// The payload's write of sector 2, and nothing else.
fn assert_guest_wrote(file: &[u8]) {
    assert_eq!(&file[1024..1040], b"written-by-guest");
    assert!(file[1040..1536].iter().all(|b| *b == b'G'));
    assert_eq!(&file[1536..1548], b"sector-00003", "nothing past sector 2");
}

#[test]
fn guest_drives_an_assigned_host_function() {
    if !kvm_present() {
        return;
    }
    let out = SerialCapture::default();
    let vm = vm(&out);
    let fake = Arc::new(common::FakeFunction::t4());
    let dev = AssignedDevice::new(fake.clone(), Arc::new(vm.interrupts())).unwrap();
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    bus.add_at(7, Arc::new(Mutex::new(dev))).unwrap();
    // Find the T4, read its ID register, write it back plus one.
    let mut a = CodeAssembler::new(64).unwrap();
    find_function(&mut a, 0x1eb8_10de);
    a.mov(eax, dword_ptr(rsi)).unwrap();
    a.inc(eax).unwrap();
    a.mov(dword_ptr(rsi + 0x10), eax).unwrap();
    a.mov(al, b'!' as u32).unwrap();
    out_al(&mut a, SERIAL);
    power_off(&mut a);
    run_to_power_off(&vm, &bus, &long_mode(&mut a));
    assert_eq!(out.text(), "!");
    assert_eq!(fake.reg(0x10), common::ID_REGISTER + 1);
    assert_eq!(
        fake.recorded.lock().unwrap().commands.last(),
        Some(&0x0406),
        "memory decode and bus master forwarded, INTx disabled"
    );
}

const FLAG: u64 = 0x3_0000;
const PETS: u64 = 0x3_0008;

/// What the watchdog payload does once it stops petting.
#[derive(Clone, Copy, PartialEq)]
enum Afterwards {
    /// Spin until the watchdog ends the VM.
    Spin,
    /// Wait for the ACPI power button, print `P`, power off.
    AwaitPowerButton,
}

/// Find the i6300esb, give both stages `preload` (≈ `preload` ms each at
/// the 1 kHz clock), enable it and print `A`; then pet it `pets` times
/// (`None`: until the host sets FLAG, then print `D` and power off),
/// counting pets at PETS.
fn watchdog_payload(preload: u32, pets: Option<u32>, afterwards: Afterwards) -> Payload {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut pet = a.create_label();
    let mut delay = a.create_label();
    let mut stop = a.create_label();
    let mut done = a.create_label();
    let mut spin = a.create_label();
    let unlock = |a: &mut CodeAssembler| {
        a.mov(dword_ptr(rsi + 0xc), 0x80u32).unwrap();
        a.mov(dword_ptr(rsi + 0xc), 0x86u32).unwrap();
    };
    find_function(&mut a, 0x25ab_8086);
    config_read(&mut a, 0x60);
    a.xor(eax, eax).unwrap(); // 1 kHz clock, reboots enabled
    a.out(dx, eax).unwrap();
    for reg in [0x0, 0x4] {
        unlock(&mut a);
        a.mov(dword_ptr(rsi + reg), preload).unwrap();
    }
    config_read(&mut a, 0x68);
    a.mov(eax, 0x2).unwrap(); // enable
    a.out(dx, eax).unwrap();
    a.mov(al, b'A' as u32).unwrap();
    out_al(&mut a, SERIAL);
    a.mov(r12d, pets.unwrap_or(u32::MAX)).unwrap();
    a.set_label(&mut pet).unwrap();
    a.cmp(byte_ptr(FLAG), 0).unwrap();
    a.jne(done).unwrap();
    if pets.is_some() {
        a.test(r12d, r12d).unwrap();
        a.jz(stop).unwrap();
        a.dec(r12d).unwrap();
    }
    unlock(&mut a);
    a.mov(dword_ptr(rsi + 0xc), 0x100u32).unwrap();
    a.inc(qword_ptr(PETS)).unwrap();
    a.mov(r13d, 200u32).unwrap();
    a.set_label(&mut delay).unwrap();
    a.pause().unwrap();
    a.dec(r13d).unwrap();
    a.jnz(delay).unwrap();
    a.jmp(pet).unwrap();
    a.set_label(&mut stop).unwrap();
    a.nop().unwrap();
    if afterwards == Afterwards::AwaitPowerButton {
        let mut wait = a.create_label();
        a.set_label(&mut wait).unwrap();
        a.mov(dx, 0x600u32).unwrap();
        a.in_(ax, dx).unwrap();
        a.test(ax, 0x100).unwrap();
        a.jz(wait).unwrap();
        a.mov(al, b'P' as u32).unwrap();
        out_al(&mut a, SERIAL);
        power_off(&mut a);
    }
    a.set_label(&mut spin).unwrap();
    a.pause().unwrap();
    a.jmp(spin).unwrap();
    a.set_label(&mut done).unwrap();
    a.mov(al, b'D' as u32).unwrap();
    out_al(&mut a, SERIAL);
    power_off(&mut a);
    long_mode(&mut a)
}

fn watchdog_vm(
    action: WatchdogAction,
    payload: Payload,
) -> (Vm, SerialCapture, AcpiEvents, PciBus) {
    let out = SerialCapture::default();
    let vm = vm(&out);
    let events = AcpiEvents::new();
    events.attach(&vm).unwrap();
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    let esb = I6300esb::new(WatchdogSink {
        action,
        exit: vm.exit_requester(),
        events: events.clone(),
    })
    .unwrap();
    bus.add_at(3, Arc::new(Mutex::new(esb))).unwrap();
    bus.attach(&vm, &events).unwrap();
    payload.load(&vm).unwrap();
    vm.start().unwrap();
    (vm, out, events, bus)
}

fn pets(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_memory(PETS, &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn watchdog_that_is_not_petted_powers_off_or_resets() {
    if !kvm_present() {
        return;
    }
    for action in [WatchdogAction::Poweroff, WatchdogAction::Reset] {
        let (vm, out, _events, _bus) = watchdog_vm(
            action.clone(),
            watchdog_payload(5, Some(3), Afterwards::Spin),
        );
        assert_eq!(
            vm.wait_timeout(TIMEOUT).unwrap(),
            Some(VmExit::Watchdog {
                action: action.clone()
            })
        );
        assert_eq!(out.text(), "A");
        assert_eq!(pets(&vm), 3);
    }
}

#[test]
fn watchdog_shutdown_presses_the_power_button() {
    if !kvm_present() {
        return;
    }
    let (vm, out, events, _bus) = watchdog_vm(
        WatchdogAction::Shutdown,
        watchdog_payload(5, Some(2), Afterwards::AwaitPowerButton),
    );
    assert_eq!(vm.wait_timeout(TIMEOUT).unwrap(), Some(VmExit::PowerOff));
    assert_eq!(out.text(), "AP", "the guest saw PWRBTN_STS and shut down");
    assert_ne!(events.pm1_status() & 0x100, 0);
}

#[test]
fn watchdog_that_is_petted_never_fires() {
    if !kvm_present() {
        return;
    }
    // Each stage ≈ 98 ms; the guest pets for well over ten times that.
    let (vm, out, _events, bus) = watchdog_vm(
        WatchdogAction::Poweroff,
        watchdog_payload(100, None, Afterwards::Spin),
    );
    let esb = bus.device(3).unwrap();
    let stage = Duration::from_nanos((100 << 15) * 30);
    std::thread::sleep(stage * 15);
    assert_eq!(
        vm.wait_timeout(Duration::ZERO).unwrap(),
        None,
        "still running"
    );
    let petted = pets(&vm);
    assert!(petted > 15, "the guest petted {petted} times");
    vm.write_memory(FLAG, &[1]).unwrap();
    assert_eq!(vm.wait_timeout(TIMEOUT).unwrap(), Some(VmExit::PowerOff));
    assert_eq!(out.text(), "AD");
    drop(esb);
}
