//! The AHCI controller seen from inside a running guest: a tiny long-mode
//! payload finds the ICH9 function, walks its capability list to the
//! MSI-X table, points vector 0 at its local APIC, and then drives two
//! ports as a driver does, sleeping in HLT until each command's interrupt
//! arrives: READ DMA EXT and WRITE DMA EXT on a raw disk, and a PACKET
//! READ(10) on an ATAPI CD-ROM. Skips, saying why, only where /dev/kvm is
//! absent.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};

use iced_x86::code_asm::*;
use virtkit_core::payload::{Payload, SerialCapture};
use virtkit_devices::ahci::{AhciController, SataDrive};
use virtkit_devices::block::{open_disk, BlockBackend, DiskOptions};
use virtkit_devices::pci::{PciBus, PciLayout};

mod common;
use common::guest::{
    config_read, find_function, kvm_present, labelled_image, long_mode, out_al, power_off,
    print_bytes, run_to_power_off, vm, SERIAL,
};

const VECTOR: u32 = 0x45;
const APIC: u64 = 0xfee0_0000;
// Guest memory the payload lays out.
const CLB0: u64 = 0x3_0000;
const FB0: u64 = 0x3_0400;
const CLB1: u64 = 0x3_0800;
const FB1: u64 = 0x3_0c00;
const TABLE: u64 = 0x3_1000;
const DATA: u64 = 0x3_2000;
const IDT: u64 = 0x3_4000;
const IDTR: u64 = 0x3_5000;
const INTERRUPTS: u64 = 0x3_5100;

/// eax = configuration dword at offset ecx of slot ebx (clobbers edx,
/// leaves 0xCFC in dx and the address latched for a write back).
fn config_read_ecx(a: &mut CodeAssembler) {
    a.mov(eax, ebx).unwrap();
    a.shl(eax, 11).unwrap();
    a.or(eax, ecx).unwrap();
    a.or(eax, 0x8000_0000u32 as i32).unwrap();
    a.mov(dx, 0xcf8u32).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(dx, 0xcfcu32).unwrap();
    a.in_(eax, dx).unwrap();
}

/// The interrupt handler: acknowledge the port's and the HBA's status,
/// count the interrupt, print `!`, end of interrupt.
fn handler(a: &mut CodeAssembler, label: &mut CodeLabel) {
    a.set_label(label).unwrap();
    a.push(rax).unwrap();
    a.push(rdx).unwrap();
    a.push(rcx).unwrap();
    a.mov(ecx, dword_ptr(rsi + 0x08)).unwrap(); // IS: which ports
    for port in 0..2u64 {
        let is = 0x100 + port * 0x80 + 0x10;
        a.mov(eax, dword_ptr(rsi + is)).unwrap();
        a.mov(dword_ptr(rsi + is), eax).unwrap();
    }
    a.mov(dword_ptr(rsi + 0x08), ecx).unwrap();
    a.inc(dword_ptr(INTERRUPTS)).unwrap();
    a.mov(al, b'!' as u32).unwrap();
    out_al(a, SERIAL);
    a.mov(dword_ptr(r13 + 0xb0), 0u32).unwrap(); // EOI
    a.pop(rcx).unwrap();
    a.pop(rdx).unwrap();
    a.pop(rax).unwrap();
    a.iretq().unwrap();
}

/// Sleep until the handler has counted `n` interrupts.
fn wait_interrupts(a: &mut CodeAssembler, n: u32) {
    let mut again = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut again).unwrap();
    a.cli().unwrap();
    a.cmp(dword_ptr(INTERRUPTS), n as i32).unwrap();
    a.jae(done).unwrap();
    // STI's shadow covers HLT: an interrupt cannot slip in between.
    a.sti().unwrap();
    a.hlt().unwrap();
    a.jmp(again).unwrap();
    a.set_label(&mut done).unwrap();
    a.sti().unwrap();
}

/// Build command slot 0 of the list at `clb`: a Register H2D FIS for
/// `command` at `lba` (one block), one PRD of `bytes` at `buffer`, and
/// for a packet command the CDB.
fn command(
    a: &mut CodeAssembler,
    clb: u64,
    command: u8,
    lba: u8,
    buffer: u64,
    bytes: u32,
    cdb: Option<[u8; 12]>,
) {
    let flags = 5u32 | 1 << 16 | if cdb.is_some() { 1 << 5 } else { 0 };
    a.mov(dword_ptr(clb), flags).unwrap();
    a.mov(dword_ptr(clb + 4), 0u32).unwrap();
    a.mov(dword_ptr(clb + 8), TABLE as u32).unwrap();
    a.mov(dword_ptr(clb + 12), 0u32).unwrap();
    let features = u32::from(cdb.is_some()); // packet data by DMA
    let fis = [
        0x27 | 0x80 << 8 | u32::from(command) << 16 | features << 24,
        u32::from(lba) | 0x40 << 24,
        0,
        1,
        0,
    ];
    for (i, dw) in fis.iter().enumerate() {
        a.mov(dword_ptr(TABLE + 4 * i as u64), *dw).unwrap();
    }
    if let Some(cdb) = cdb {
        for (i, dw) in cdb.chunks(4).enumerate() {
            let v = u32::from_le_bytes([dw[0], dw[1], dw[2], dw[3]]);
            a.mov(dword_ptr(TABLE + 0x40 + 4 * i as u64), v).unwrap();
        }
    }
    a.mov(dword_ptr(TABLE + 0x80), buffer as u32).unwrap();
    a.mov(dword_ptr(TABLE + 0x84), 0u32).unwrap();
    a.mov(dword_ptr(TABLE + 0x8c), bytes - 1).unwrap();
}

fn ahci_payload() -> Payload {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut isr = a.create_label();
    let mut walk = a.create_label();
    let mut found = a.create_label();

    find_function(&mut a, 0x2922_8086);
    config_read(&mut a, 0x24);
    a.and(eax, -16).unwrap();
    a.mov(esi, eax).unwrap(); // rsi = ABAR (BAR 5)

    // Walk the capabilities to MSI-X (ID 0x11); r12 = its offset.
    a.mov(ecx, 0x34u32).unwrap();
    config_read_ecx(&mut a);
    a.and(eax, 0xfc).unwrap();
    a.set_label(&mut walk).unwrap();
    a.mov(ecx, eax).unwrap();
    config_read_ecx(&mut a);
    a.cmp(al, 0x11).unwrap();
    a.je(found).unwrap();
    a.shr(eax, 8).unwrap();
    a.and(eax, 0xfc).unwrap();
    a.jmp(walk).unwrap();
    a.set_label(&mut found).unwrap();
    a.mov(r12d, ecx).unwrap();
    // The table: BAR 5 + offset. Entry 0 -> APIC 0, VECTOR, unmasked.
    a.add(ecx, 4).unwrap();
    config_read_ecx(&mut a);
    a.and(eax, -8).unwrap();
    a.lea(rdi, qword_ptr(rsi + rax)).unwrap();
    a.mov(dword_ptr(rdi), APIC as u32).unwrap();
    a.mov(dword_ptr(rdi + 4), 0u32).unwrap();
    a.mov(dword_ptr(rdi + 8), VECTOR).unwrap();
    a.mov(dword_ptr(rdi + 12), 0u32).unwrap();
    // MSI-X enable: bit 15 of message control (bit 31 of the dword).
    a.mov(ecx, r12d).unwrap();
    config_read_ecx(&mut a);
    a.or(eax, 0x8000_0000u32 as i32).unwrap();
    a.out(dx, eax).unwrap();

    // Interrupts: mask the 8259s and LINT0, enable the local APIC (r13,
    // which the handler uses too), and install VECTOR's gate.
    a.mov(r13, APIC).unwrap();
    a.mov(al, 0xffu32).unwrap();
    out_al(&mut a, 0x21);
    out_al(&mut a, 0xa1);
    a.mov(dword_ptr(r13 + 0x350), 0x1_0000u32).unwrap();
    a.mov(dword_ptr(r13 + 0x80), 0u32).unwrap();
    a.mov(dword_ptr(r13 + 0xf0), 0x1ffu32).unwrap();
    let gate = IDT + 16 * u64::from(VECTOR);
    a.lea(rax, ptr(isr)).unwrap();
    a.mov(word_ptr(gate), ax).unwrap();
    a.mov(word_ptr(gate + 2), 0x8u32).unwrap();
    a.mov(word_ptr(gate + 4), 0x8e00u32).unwrap();
    a.shr(rax, 16).unwrap();
    a.mov(word_ptr(gate + 6), ax).unwrap();
    a.shr(rax, 16).unwrap();
    a.mov(dword_ptr(gate + 8), eax).unwrap();
    a.mov(dword_ptr(gate + 12), 0u32).unwrap();
    a.mov(word_ptr(IDTR), 0xfffu32).unwrap();
    a.mov(rax, IDT).unwrap();
    a.mov(qword_ptr(IDTR + 2), rax).unwrap();
    a.lidt(ptr(IDTR)).unwrap();
    a.mov(dword_ptr(INTERRUPTS), 0u32).unwrap();
    a.sti().unwrap();

    // HBA: interrupts on. Ports 0 and 1: lists, FIS areas, causes (D2H,
    // PIO setup, task file error), then FRE and ST.
    a.mov(dword_ptr(rsi + 0x04), 0x8000_0002u32).unwrap();
    for (port, clb, fb) in [(0u64, CLB0, FB0), (1, CLB1, FB1)] {
        let p = 0x100 + port * 0x80;
        a.mov(dword_ptr(rsi + p), clb as u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x04), 0u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x08), fb as u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x0c), 0u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x14), 0x4000_0003u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x18), 0x10u32).unwrap();
        a.mov(dword_ptr(rsi + p + 0x18), 0x11u32).unwrap();
    }

    // 1: READ DMA EXT, sector 1 of the disk.
    command(&mut a, CLB0, 0x25, 1, DATA, 512, None);
    a.mov(dword_ptr(rsi + 0x138), 1u32).unwrap();
    wait_interrupts(&mut a, 1);
    print_bytes(&mut a, DATA, 12);
    // 2: WRITE DMA EXT, sector 2: "written-by-guest" then 'G's.
    a.mov(rdi, DATA + 0x1000).unwrap();
    a.mov(al, b'G' as u32).unwrap();
    a.mov(ecx, 512u32).unwrap();
    a.rep().stosb().unwrap();
    a.mov(rax, u64::from_le_bytes(*b"written-")).unwrap();
    a.mov(qword_ptr(DATA + 0x1000), rax).unwrap();
    a.mov(rax, u64::from_le_bytes(*b"by-guest")).unwrap();
    a.mov(qword_ptr(DATA + 0x1008), rax).unwrap();
    command(&mut a, CLB0, 0x35, 2, DATA + 0x1000, 512, None);
    a.mov(dword_ptr(rsi + 0x138), 1u32).unwrap();
    wait_interrupts(&mut a, 2);
    // Port 0's task file status after the write, as a hex digit pair.
    a.mov(eax, dword_ptr(rsi + 0x120)).unwrap();
    a.shr(al, 4).unwrap();
    a.add(al, b'0' as i32).unwrap();
    out_al(&mut a, SERIAL);
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a, SERIAL);
    // 3: PACKET READ(10) of CD block 1 on port 1.
    let read10 = [0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0];
    command(&mut a, CLB1, 0xa0, 0, DATA, 2048, Some(read10));
    a.mov(dword_ptr(rsi + 0x1b8), 1u32).unwrap();
    wait_interrupts(&mut a, 3);
    print_bytes(&mut a, DATA, 11);
    power_off(&mut a);

    handler(&mut a, &mut isr);
    long_mode(&mut a)
}

#[test]
fn guest_drives_sata_disk_and_cdrom_on_msix_interrupts() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (disk, iso) = (dir.path().join("disk.raw"), dir.path().join("cd.iso"));
    labelled_image(&disk, 16, 512, "sector");
    labelled_image(&iso, 4, 2048, "cdblk");
    let out = SerialCapture::default();
    let vm = vm(&out);
    let open = |p: &Path, read_only| -> Arc<dyn BlockBackend> {
        let options = DiskOptions {
            read_only,
            shareable: false,
            incoming: false,
        };
        open_disk(p, options).unwrap().into()
    };
    let ahci = AhciController::new(
        vec![
            SataDrive::disk(open(&disk, false), "DISK"),
            SataDrive::cdrom(open(&iso, true), "CD", false),
        ],
        vm.memory().clone(),
        Arc::new(vm.interrupts()),
    )
    .unwrap();
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    bus.add(Arc::new(Mutex::new(ahci))).unwrap();
    run_to_power_off(&vm, &bus, &ahci_payload());
    // One `!` per command, each printed by the MSI-X handler before the
    // payload (asleep in HLT until then) goes on; status 0x50 is DRDY|DSC.
    assert_eq!(out.text(), "!sector-00001\n!5\n!cdblk-00001\n");
    let written = std::fs::read(&disk).unwrap();
    assert_eq!(&written[1024..1040], b"written-by-guest");
    assert!(written[1040..1536].iter().all(|&b| b == b'G'));
    assert_eq!(&written[1536..1548], b"sector-00003");
}
