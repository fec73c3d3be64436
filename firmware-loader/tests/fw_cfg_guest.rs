//! fw_cfg seen from inside a running guest, as firmware reads it: a tiny
//! long-mode payload checks the signature through the data port, walks
//! the file directory to `bootorder` (built from the seed's PXE VMI) and
//! prints it, then reads the signature again through the DMA interface.
//! Skips, saying why, only where /dev/kvm is absent.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use virtkit_core::payload::{self, Payload, SerialCapture};
use virtkit_core::runtime::memory;
use virtkit_core::runtime::{VmBuilder, VmConfig, VmExit};
use virtkit_core::spec::vmi::{Disk, Interface, VmiSpec};
use virtkit_firmware_loader::boot_order::{boot_order, BootDevice, Placement};
use virtkit_firmware_loader::fw_cfg::{e820_file, FwCfg, PORT_BASE, PORT_LEN};

const SERIAL: u32 = 0x3f8;
const ENTRY: u64 = 0x2_0000;
const NAME: u64 = 0x2_0100;
const DESC: u64 = 0x2_0200;
const BUF: u64 = 0x2_0300;

fn out_al(a: &mut CodeAssembler) {
    a.mov(dx, SERIAL).unwrap();
    a.out(dx, al).unwrap();
}

fn select(a: &mut CodeAssembler) {
    a.mov(dx, PORT_BASE as u32).unwrap();
    a.out(dx, ax).unwrap();
}

/// `in al` from the data port.
fn data_byte(a: &mut CodeAssembler) {
    a.mov(dx, PORT_BASE as u32 + 1).unwrap();
    a.in_(al, dx).unwrap();
}

fn fw_cfg_payload() -> Payload {
    let mut a = CodeAssembler::new(64).unwrap();
    let mut sig = a.create_label();
    let mut entry = a.create_label();
    let mut found = a.create_label();
    let mut print = a.create_label();
    let mut printed = a.create_label();
    let mut missing = a.create_label();

    // Signature: item 0 through the data port.
    a.xor(eax, eax).unwrap();
    select(&mut a);
    a.mov(ecx, 4u32).unwrap();
    a.set_label(&mut sig).unwrap();
    data_byte(&mut a);
    out_al(&mut a);
    a.dec(ecx).unwrap();
    a.jnz(sig).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a);

    // The name to look for, NUL-terminated.
    a.mov(rax, u64::from_le_bytes(*b"bootorde")).unwrap();
    a.mov(qword_ptr(NAME), rax).unwrap();
    a.mov(word_ptr(NAME + 8), u32::from(b'r')).unwrap();
    // Directory: a big-endian count, then 64-byte entries.
    a.mov(eax, 0x19u32).unwrap();
    select(&mut a);
    a.mov(dx, PORT_BASE as u32 + 1).unwrap();
    a.mov(rdi, ENTRY).unwrap();
    a.mov(ecx, 4u32).unwrap();
    a.rep().insb().unwrap();
    a.mov(ebx, dword_ptr(ENTRY)).unwrap();
    a.bswap(ebx).unwrap();
    a.set_label(&mut entry).unwrap();
    a.test(ebx, ebx).unwrap();
    a.jz(missing).unwrap();
    a.dec(ebx).unwrap();
    a.mov(dx, PORT_BASE as u32 + 1).unwrap();
    a.mov(rdi, ENTRY).unwrap();
    a.mov(ecx, 64u32).unwrap();
    a.rep().insb().unwrap();
    a.mov(rsi, ENTRY + 8).unwrap();
    a.mov(rdi, NAME).unwrap();
    a.mov(ecx, 10u32).unwrap();
    a.repe().cmpsb().unwrap();
    a.jne(entry).unwrap();
    a.set_label(&mut found).unwrap();
    // Select the file (big-endian key) and print it up to its NUL.
    a.movzx(eax, word_ptr(ENTRY + 4)).unwrap();
    a.xchg(al, ah).unwrap();
    select(&mut a);
    a.mov(ebx, dword_ptr(ENTRY)).unwrap();
    a.bswap(ebx).unwrap();
    a.set_label(&mut print).unwrap();
    a.test(ebx, ebx).unwrap();
    a.jz(printed).unwrap();
    a.dec(ebx).unwrap();
    data_byte(&mut a);
    a.test(al, al).unwrap();
    a.jz(printed).unwrap();
    out_al(&mut a);
    a.jmp(print).unwrap();
    a.set_label(&mut missing).unwrap();
    a.mov(al, b'?' as u32).unwrap();
    out_al(&mut a);
    a.set_label(&mut printed).unwrap();
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a);

    // DMA: select item 0 and read 4 bytes into BUF; the device clears
    // the control word when done.
    a.mov(dword_ptr(DESC), 0x0a00_0000u32).unwrap(); // BE: SELECT | READ, key 0
    a.mov(dword_ptr(DESC + 4), 0x0400_0000u32).unwrap(); // BE length 4
    a.mov(rax, BUF.swap_bytes()).unwrap();
    a.mov(qword_ptr(DESC + 8), rax).unwrap();
    a.xor(eax, eax).unwrap();
    a.mov(dx, PORT_BASE as u32 + 4).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(eax, (DESC as u32).swap_bytes()).unwrap();
    a.mov(dx, PORT_BASE as u32 + 8).unwrap();
    a.out(dx, eax).unwrap();
    a.mov(al, byte_ptr(DESC + 3)).unwrap();
    a.add(al, b'0' as i32).unwrap();
    out_al(&mut a);
    a.mov(al, b':' as u32).unwrap();
    out_al(&mut a);
    for i in 0..4 {
        a.mov(al, byte_ptr(BUF + i)).unwrap();
        out_al(&mut a);
    }
    a.mov(al, b'\n' as u32).unwrap();
    out_al(&mut a);
    payload::power_off(&mut a).unwrap();
    payload::long_mode(&mut a, 1 << 20).unwrap()
}

/// The seed's PXE VMI: disks `containerdisk` (2) and `cloudinitdisk`,
/// interfaces `default` and `pxe-net` (1).
fn pxe_vmi() -> VmiSpec {
    let mut s = VmiSpec::default();
    s.domain.devices.disks = vec![
        Disk {
            name: "containerdisk".into(),
            boot_order: Some(2),
            ..Disk::default()
        },
        Disk {
            name: "cloudinitdisk".into(),
            ..Disk::default()
        },
    ];
    s.domain.devices.interfaces = vec![
        Interface {
            name: "default".into(),
            ..Interface::default()
        },
        Interface {
            name: "pxe-net".into(),
            boot_order: Some(1),
            ..Interface::default()
        },
    ];
    s
}

#[test]
fn guest_reads_the_boot_order_through_fw_cfg() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent on this host; the fw_cfg guest test needs it");
        return;
    }
    let out = SerialCapture::default();
    let vm = VmBuilder::new(VmConfig {
        name: "fw-cfg".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
    })
    .serial_output(Box::new(out.clone()))
    .build()
    .unwrap();
    // Disks on virtio-blk in slots 3 and 4, NICs in slots 1 and 2.
    let place = |d: BootDevice| {
        Some(match d {
            BootDevice::Disk(i) => Placement::VirtioBlk { slot: 3 + i as u8 },
            BootDevice::Interface(i) => Placement::Nic { slot: 1 + i as u8 },
        })
    };
    let order = boot_order(&pxe_vmi(), &place).unwrap();
    let mut fw_cfg = FwCfg::new(vm.memory().clone());
    fw_cfg
        .add_file("etc/e820", e820_file(&memory::layout(64 << 20)))
        .unwrap();
    fw_cfg.add_file("bootorder", order.file.clone()).unwrap();
    vm.add_pio_device(PORT_BASE, PORT_LEN, Arc::new(Mutex::new(fw_cfg)))
        .unwrap();
    fw_cfg_payload().load(&vm).unwrap();
    vm.start().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(60)).unwrap(),
        Some(VmExit::PowerOff)
    );
    assert_eq!(
        out.text(),
        "QEMU\n\
         /pci@i0cf8/ethernet@2/ethernet-phy@0\n\
         /pci@i0cf8/scsi@3/disk@0,0\n\
         /pci@i0cf8/scsi@4/disk@0,0\n\
         /pci@i0cf8/ethernet@1/ethernet-phy@0\n\
         0:QEMU\n",
        "signature, the boot order (pxe-net, containerdisk, then the unordered), DMA"
    );
}
