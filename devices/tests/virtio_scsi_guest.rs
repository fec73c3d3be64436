//! virtio-scsi seen from inside a running guest: a tiny long-mode payload
//! finds the controller, sets up its first request queue through the
//! modern transport and sends SCSI commands to a disk (target 0), a
//! CD-ROM (target 1) and a target that does not exist. Skips, saying why,
//! only where /dev/kvm is absent.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::*;
use virtkit_core::payload::{Payload, SerialCapture};
use virtkit_devices::block::{open_disk, BlockBackend, DiskOptions};
use virtkit_devices::pci::{PciBus, PciLayout};
use virtkit_devices::scsi::{ScsiUnit, UnitKind};
use virtkit_devices::virtio::pci::VirtioPciDevice;
use virtkit_devices::virtio::scsi::{ScsiConfig, VirtioScsi};

mod common;
use common::guest::{
    find_function, kvm_present, labelled_image, long_mode, out_al, power_off, print_bytes,
    run_to_power_off, virtio_start_queue, vm, SERIAL,
};

const DESC: u64 = 0x2_0000;
const AVAIL: u64 = 0x2_1000;
const USED: u64 = 0x2_2000;
const REQUEST: u64 = 0x2_3000;
const RESPONSE: u64 = 0x2_4000;
const DATA: u64 = 0x2_5000;
const REQUEST_QUEUE: u32 = 2;

/// Descriptor `i`: `len` bytes at `addr`, `flags`, `next`.
fn desc(a: &mut CodeAssembler, i: u64, addr: u64, len: u32, flags: u32, next: u32) {
    a.mov(rax, addr).unwrap();
    a.mov(qword_ptr(DESC + 16 * i), rax).unwrap();
    a.mov(dword_ptr(DESC + 16 * i + 8), len).unwrap();
    a.mov(word_ptr(DESC + 16 * i + 12), flags).unwrap();
    a.mov(word_ptr(DESC + 16 * i + 14), next).unwrap();
}

/// Send request number `n` (1-based): `cdb` to `target`, with `data_len`
/// bytes of data-in (0: none), and wait for the used ring to reach `n`.
/// Prints the virtio response code and SCSI status as digits.
fn request(a: &mut CodeAssembler, n: u32, target: u8, cdb: &[u8], data_len: u32) {
    let mut wait = a.create_label();
    // virtio_scsi_cmd_req: lun[8] (1, target, LUN 0), tag, attr, prio,
    // crn, cdb[32].
    a.mov(rdi, REQUEST).unwrap();
    a.xor(eax, eax).unwrap();
    a.mov(ecx, 51u32).unwrap();
    a.rep().stosb().unwrap();
    a.mov(word_ptr(REQUEST), 1u32 | u32::from(target) << 8)
        .unwrap();
    for (i, b) in cdb.iter().enumerate() {
        a.mov(byte_ptr(REQUEST + 19 + i as u64), u32::from(*b))
            .unwrap();
    }
    a.mov(byte_ptr(RESPONSE + 11), 0xffu32).unwrap();
    desc(a, 0, REQUEST, 51, 1, 1);
    let response_flags = if data_len > 0 { 3 } else { 2 };
    desc(a, 1, RESPONSE, 108, response_flags, 2);
    desc(a, 2, DATA, data_len.max(1), 2, 0);
    a.mov(word_ptr(AVAIL + 4 + 2 * u64::from(n - 1)), 0u32)
        .unwrap();
    a.mov(word_ptr(AVAIL + 2), n).unwrap();
    a.mov(
        word_ptr(rsi + 0x3000 + 4 * u64::from(REQUEST_QUEUE)),
        REQUEST_QUEUE,
    )
    .unwrap();
    a.set_label(&mut wait).unwrap();
    a.cmp(word_ptr(USED + 2), n as i32).unwrap();
    a.jb(wait).unwrap();
    // response (offset 11) and status (offset 10).
    for offset in [11, 10] {
        a.mov(al, byte_ptr(RESPONSE + offset)).unwrap();
        a.add(al, b'0' as i32).unwrap();
        out_al(a, SERIAL);
    }
}

fn colon(a: &mut CodeAssembler) {
    a.mov(al, b':' as u32).unwrap();
    out_al(a, SERIAL);
}

fn virtio_scsi_payload() -> Payload {
    let mut a = CodeAssembler::new(64).unwrap();
    find_function(&mut a, 0x1048_1af4);
    virtio_start_queue(&mut a, REQUEST_QUEUE, [DESC, AVAIL, USED]);

    // READ(10) of disk block 1, READ(10) of CD block 1, and TEST UNIT
    // READY to target 5, which does not exist.
    request(&mut a, 1, 0, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], 512);
    colon(&mut a);
    print_bytes(&mut a, DATA, 12);
    request(&mut a, 2, 1, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0], 2048);
    colon(&mut a);
    print_bytes(&mut a, DATA, 11);
    request(&mut a, 3, 5, &[0x00, 0, 0, 0, 0, 0], 0);
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a, SERIAL);
    power_off(&mut a);
    long_mode(&mut a)
}

fn image(path: &Path, blocks: usize, block: usize, tag: &str) -> Arc<dyn BlockBackend> {
    labelled_image(path, blocks, block, tag);
    let options = DiskOptions {
        read_only: true,
        shareable: false,
        incoming: false,
    };
    open_disk(path, options).unwrap().into()
}

#[test]
fn guest_reads_a_disk_and_a_cdrom_through_virtio_scsi() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = image(&dir.path().join("disk.raw"), 16, 512, "sector");
    let cd = image(&dir.path().join("cd.iso"), 4, 2048, "cdblk");
    let out = SerialCapture::default();
    let vm = vm(&out);
    let scsi = VirtioScsi::new(
        vec![
            ScsiUnit::new(disk, UnitKind::Disk, "D0"),
            ScsiUnit::new(cd, UnitKind::Cdrom { tray_open: false }, "CD1"),
        ],
        ScsiConfig::default(),
    );
    let transport = VirtioPciDevice::new(
        Box::new(scsi),
        vm.memory().clone(),
        Arc::new(vm.interrupts()),
    )
    .unwrap();
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    bus.add(Arc::new(Mutex::new(transport))).unwrap();
    run_to_power_off(&vm, &bus, &virtio_scsi_payload());
    // Response OK (0) and GOOD (0) twice with the blocks' data; then
    // response BAD_TARGET (3) for the missing target.
    assert_eq!(
        out.text(),
        "00:sector-00001\n00:cdblk-00001\n30\n",
        "response and status digits, then the data"
    );
}
