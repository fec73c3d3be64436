//! Helpers for tests that run a tiny long-mode payload as the guest
//! driver: the VM, the payload wrapper, port I/O, PCI configuration reads
//! through 0xCF8/0xCFC, finding a function, and powering off.

use std::path::Path;
use std::time::Duration;

use iced_x86::code_asm::*;
use virtkit_core::payload::{self, Payload, SerialCapture};
use virtkit_core::runtime::{Vm, VmBuilder, VmConfig, VmExit};
use virtkit_devices::acpi::AcpiEvents;
use virtkit_devices::pci::PciBus;

/// The COM1 port payloads print to.
pub const SERIAL: u32 = 0x3f8;
/// How long a test waits for its guest.
pub const TIMEOUT: Duration = Duration::from_secs(60);

pub fn kvm_present() -> bool {
    let ok = Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIP: /dev/kvm is absent on this host; guest-side device tests need it");
    }
    ok
}

pub fn vm(out: &SerialCapture) -> Vm {
    VmBuilder::new(VmConfig {
        name: "guest".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
    })
    .serial_output(Box::new(out.clone()))
    .build()
    .unwrap()
}

pub fn long_mode(a: &mut CodeAssembler) -> Payload {
    payload::long_mode(a, 1 << 20).unwrap()
}

/// `mov dx, port; out dx, al`.
pub fn out_al(a: &mut CodeAssembler, port: u32) {
    a.mov(dx, port).unwrap();
    a.out(dx, al).unwrap();
}

/// eax = config dword `reg` of slot ebx (clobbers edx).
pub fn config_read(a: &mut CodeAssembler, reg: u32) {
    a.mov(eax, ebx).unwrap();
    a.shl(eax, 11).unwrap();
    a.or(eax, (0x8000_0000u32 | reg) as i32).unwrap();
    a.mov(dx, 0xcf8u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xcfcu32).unwrap();
    a.in_(eax, dx).unwrap();
}

/// Scan the slots for the function whose vendor/device dword is `id`
/// (printing `?` and powering off when there is none), leave its slot in
/// ebx and BAR 0 in rsi, and turn on memory decoding and bus mastering.
pub fn find_function(a: &mut CodeAssembler, id: u32) {
    let mut find = a.create_label();
    let mut found = a.create_label();
    a.xor(ebx, ebx).unwrap();
    a.set_label(&mut find).unwrap();
    config_read(a, 0);
    a.cmp(eax, id as i32).unwrap();
    a.je(found).unwrap();
    a.inc(ebx).unwrap();
    a.cmp(ebx, 32).unwrap();
    a.jb(find).unwrap();
    a.mov(al, b'?' as u32).unwrap();
    out_al(a, SERIAL);
    power_off(a);
    a.set_label(&mut found).unwrap();
    config_read(a, 0x10);
    a.and(eax, -16).unwrap();
    a.mov(esi, eax).unwrap(); // rsi = BAR 0 (zero-extended)
    config_read(a, 0x04);
    a.mov(eax, 0x6).unwrap(); // memory decode + bus master
    a.out(dx, eax).unwrap();
}

pub fn power_off(a: &mut CodeAssembler) {
    payload::power_off(a).unwrap();
}

/// Print the `n` bytes at `at` on the serial port, then a newline
/// (clobbers rbx, ecx, dx, al).
pub fn print_bytes(a: &mut CodeAssembler, at: u64, n: u32) {
    let mut next = a.create_label();
    a.mov(rbx, at).unwrap();
    a.mov(ecx, n).unwrap();
    a.set_label(&mut next).unwrap();
    a.mov(al, byte_ptr(rbx)).unwrap();
    out_al(a, SERIAL);
    a.inc(rbx).unwrap();
    a.dec(ecx).unwrap();
    a.jnz(next).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    out_al(a, SERIAL);
}

/// Attach the ACPI event block and `bus` to `vm`, load `payload`, run it
/// and expect it to power off within [`TIMEOUT`].
pub fn run_to_power_off(vm: &Vm, bus: &PciBus, payload: &Payload) {
    let events = AcpiEvents::new();
    events.attach(vm).unwrap();
    bus.attach(vm, &events).unwrap();
    payload.load(vm).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait_timeout(TIMEOUT).unwrap(), Some(VmExit::PowerOff));
}

/// Write an image of `blocks` blocks of `block` bytes, each starting with
/// `<tag>-<index, 5 digits>`.
pub fn labelled_image(path: &Path, blocks: usize, block: usize, tag: &str) {
    let mut bytes = vec![0u8; blocks * block];
    for (i, b) in bytes.chunks_mut(block).enumerate() {
        let label = format!("{tag}-{i:05}");
        b[..label.len()].copy_from_slice(label.as_bytes());
    }
    std::fs::write(path, bytes).unwrap();
}

/// Bring up the virtio-pci function whose common configuration is at rsi
/// (modern transport): reset, ACKNOWLEDGE, DRIVER, VERSION_1 only,
/// FEATURES_OK; queue `queue` with 8 entries at `rings` (descriptors,
/// available, used), enabled; DRIVER_OK.
pub fn virtio_start_queue(a: &mut CodeAssembler, queue: u32, rings: [u64; 3]) {
    virtio_negotiate(a, 0);
    virtio_setup_queue(a, queue, rings);
    virtio_driver_ok(a);
}

/// Reset the function at rsi, ACKNOWLEDGE, DRIVER, accept `features_lo`
/// (bits 0–31) and VERSION_1, FEATURES_OK.
pub fn virtio_negotiate(a: &mut CodeAssembler, features_lo: u32) {
    for status in [0u32, 1, 3] {
        a.mov(byte_ptr(rsi + 0x14), status).unwrap();
    }
    a.mov(dword_ptr(rsi + 0x08), 0u32).unwrap();
    a.mov(dword_ptr(rsi + 0x0c), features_lo).unwrap();
    a.mov(dword_ptr(rsi + 0x08), 1u32).unwrap();
    a.mov(dword_ptr(rsi + 0x0c), 1u32).unwrap();
    a.mov(byte_ptr(rsi + 0x14), 0xbu32).unwrap();
}

/// Set queue `queue` up with 8 entries at `rings` (descriptors,
/// available, used) and enable it.
pub fn virtio_setup_queue(a: &mut CodeAssembler, queue: u32, rings: [u64; 3]) {
    a.mov(word_ptr(rsi + 0x16), queue).unwrap();
    a.mov(word_ptr(rsi + 0x18), 8u32).unwrap();
    for (off, addr) in [0x20, 0x28, 0x30].into_iter().zip(rings) {
        a.mov(dword_ptr(rsi + off), addr as u32).unwrap();
        a.mov(dword_ptr(rsi + off + 4), 0u32).unwrap();
    }
    a.mov(word_ptr(rsi + 0x1c), 1u32).unwrap();
}

/// DRIVER_OK.
pub fn virtio_driver_ok(a: &mut CodeAssembler) {
    a.mov(byte_ptr(rsi + 0x14), 0xfu32).unwrap();
}
