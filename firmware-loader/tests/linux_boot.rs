//! Linux direct boot, against Debian's real cloud kernel and tiny ELF
//! payloads that run for real.
//!
//! - The bzImage of `linux-image-cloud-amd64` is loaded into guest memory:
//!   its protected-mode part lands at 1 MiB byte for byte, the zero page
//!   keeps the kernel's own setup header with the loader's fields filled
//!   in, and the command line, initrd and E820 map are where it says.
//! - The same kernel's `vmlinux` (decompressed from the bzImage's LZ4
//!   payload) is an ELF with a PVH note: it loads through the PVH path
//!   with an `hvm_start_info`.
//! - Two hand-made ELF kernels boot through `load_linux` for real, one at
//!   its 64-bit entry (reading the zero page from `rsi`) and one at its
//!   PVH entry in 32-bit mode (reading `hvm_start_info` from `ebx`); each
//!   prints the command line it was given.
//!
//! The kernel is found through `VIRTKIT_TEST_KERNEL`, else under `/boot`
//! or `/opt/virtkit-test/linux-image/boot` (where `.ci/run` unpacks the
//! package). Guest runs skip, saying why, only where /dev/kvm is absent.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use iced_x86::code_asm::*;
use linux_loader::loader::bootparam::boot_params;
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use virtkit_core::payload::{self, SerialCapture};
use virtkit_core::runtime::memory::{self, layout};
use virtkit_core::runtime::{BootState, VmBuilder, VmConfig, VmExit};
use virtkit_firmware_loader::linux::{
    e820_map, load_linux, KernelFormat, LinuxBoot, LinuxBootError, CMDLINE_ADDR, PVH_MAGIC,
    START_INFO_ADDR, ZERO_PAGE_ADDR,
};
use vm_memory::{ByteValued, Bytes, GuestAddress};

const CMDLINE: &str = "console=ttyS0 root=/dev/vda1 virtkit.test=1";

fn debian_kernel() -> PathBuf {
    if let Some(p) = std::env::var_os("VIRTKIT_TEST_KERNEL") {
        return PathBuf::from(p);
    }
    for dir in ["/boot", "/opt/virtkit-test/linux-image/boot"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut found: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                let n = p.file_name().unwrap().to_string_lossy().into_owned();
                n.starts_with("vmlinuz-") && n.ends_with("-cloud-amd64")
            })
            .collect();
        found.sort();
        if let Some(p) = found.pop() {
            return p;
        }
    }
    panic!(
        "no Debian cloud kernel: .ci/run unpacks linux-image-cloud-amd64 into \
         /opt/virtkit-test/linux-image; or set VIRTKIT_TEST_KERNEL"
    );
}

fn temp_file(name: &str, bytes: &[u8]) -> (PathBuf, File) {
    let dir = std::env::temp_dir().join(format!("virtkit-linux-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::File::create(&path)
        .unwrap()
        .write_all(bytes)
        .unwrap();
    let f = File::open(&path).unwrap();
    // The open file is all the loader needs; nothing is left behind.
    std::fs::remove_file(&path).unwrap();
    (path, f)
}

fn read_params(mem: &memory::GuestMem) -> boot_params {
    mem.read_obj(GuestAddress(ZERO_PAGE_ADDR)).unwrap()
}

fn c_string(mem: &memory::GuestMem, addr: u64) -> String {
    let mut buf = vec![0u8; 256];
    mem.read_slice(&mut buf, GuestAddress(addr)).unwrap();
    let end = buf.iter().position(|&b| b == 0).unwrap();
    String::from_utf8(buf[..end].to_vec()).unwrap()
}

#[test]
fn debian_bzimage_loads_with_its_own_header_cmdline_initrd_and_e820() {
    let path = debian_kernel();
    let image = std::fs::read(&path).unwrap();
    let mem_bytes = 512 << 20;
    let mem = memory::create(mem_bytes).unwrap();
    let ram = layout(mem_bytes);
    let initrd_bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 + 3) as u8).collect();
    let (_p, mut initrd) = temp_file("initrd", &initrd_bytes);
    let mut kernel = File::open(&path).unwrap();
    let loaded = load_linux(
        &mem,
        &ram,
        LinuxBoot {
            kernel: &mut kernel,
            initrd: Some(&mut initrd),
            cmdline: CMDLINE,
            prefer_pvh: true,
        },
    )
    .unwrap();

    assert_eq!(loaded.format, KernelFormat::BzImage);
    let setup_sects = usize::from(image[0x1f1]);
    let setup_len = (setup_sects + 1) * 512;
    let version = u16::from_le_bytes([image[0x206], image[0x207]]);
    assert_eq!(loaded.protocol, Some(version));
    assert!(version >= 0x020f, "Debian 6.1 speaks 2.15: {version:#x}");

    // The protected-mode part, byte for byte, at 1 MiB.
    let body = &image[setup_len..];
    let mut in_guest = vec![0u8; body.len()];
    mem.read_slice(&mut in_guest, GuestAddress(0x10_0000))
        .unwrap();
    assert!(in_guest == body, "the kernel body differs in guest memory");
    assert_eq!(loaded.kernel, (0x10_0000, 0x10_0000 + body.len() as u64));

    // The zero page: the kernel's header, plus what a loader fills in.
    let p = read_params(&mem);
    let hdr = p.hdr;
    let file_hdr = &image[0x1f1..0x1f1 + std::mem::size_of_val(&hdr)];
    assert_eq!(hdr.as_slice()[..0x10 - 1], file_hdr[..0x10 - 1]);
    assert_eq!({ hdr.header }, 0x5372_6448);
    assert_eq!({ hdr.version }, version);
    assert_eq!({ hdr.type_of_loader }, 0xff);
    assert_eq!(hdr.loadflags & 0x81, 0x81, "LOADED_HIGH and CAN_USE_HEAP");
    assert_eq!({ hdr.code32_start }, 0x10_0000);
    assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
    assert_eq!(c_string(&mem, CMDLINE_ADDR), CMDLINE);
    assert_eq!({ hdr.cmdline_size } as usize, CMDLINE.len());

    // The initrd: page-aligned, under initrd_addr_max and end of RAM,
    // above the kernel, byte for byte.
    let (start, size) = loaded.initrd.unwrap();
    assert_eq!(
        ({ hdr.ramdisk_image }, { hdr.ramdisk_size }),
        (start as u32, size as u32)
    );
    assert_eq!(start % 4096, 0);
    assert_eq!(size, initrd_bytes.len() as u64);
    assert!(start + size <= u64::from(hdr.initrd_addr_max) + 1);
    assert!(start + size <= mem_bytes && start >= loaded.kernel.1);
    assert!(
        mem_bytes - (start + size) < 4096,
        "placed as high as it goes"
    );
    let mut back = vec![0u8; initrd_bytes.len()];
    mem.read_slice(&mut back, GuestAddress(start)).unwrap();
    assert_eq!(back, initrd_bytes);

    // The E820 map is the VM's layout.
    let map = e820_map(&ram);
    assert_eq!(usize::from(p.e820_entries), map.len());
    for (got, want) in p.e820_table.iter().zip(&map) {
        assert_eq!(
            ({ got.addr }, { got.size }, { got.r#type }),
            (want.addr, want.size, want.kind)
        );
    }
    assert_eq!(loaded.e820, map);
    assert_eq!(
        loaded.boot,
        BootState::Linux64 {
            rip: 0x10_0200,
            rsp: 0x8ff0,
            boot_params: ZERO_PAGE_ADDR
        }
    );
}

#[test]
fn a_vm_smaller_than_the_kernels_init_size_is_refused() {
    let path = debian_kernel();
    let mem_bytes = 16 << 20;
    let mem = memory::create(mem_bytes).unwrap();
    let mut kernel = File::open(&path).unwrap();
    let err = load_linux(
        &mem,
        &layout(mem_bytes),
        LinuxBoot::new(&mut kernel, CMDLINE),
    )
    .unwrap_err();
    match &err {
        LinuxBootError::NotEnoughMemory { what, needed, .. } => {
            assert_eq!(*what, "the kernel's init_size");
            assert!(*needed > mem_bytes);
        }
        other => panic!("expected NotEnoughMemory, got {other:?}"),
    }
    assert!(err.to_string().contains("init_size"), "{err}");
}

#[test]
fn garbage_and_overlong_command_lines_are_refused() {
    let mem_bytes = 64 << 20;
    let mem = memory::create(mem_bytes).unwrap();
    let (_p, mut junk) = temp_file("junk", &[0x5a; 8192]);
    let err = load_linux(&mem, &layout(mem_bytes), LinuxBoot::new(&mut junk, "")).unwrap_err();
    assert!(matches!(err, LinuxBootError::UnknownFormat), "{err:?}");

    let mut kernel = File::open(debian_kernel()).unwrap();
    let long = "x".repeat(70_000);
    let mem = memory::create(512 << 20).unwrap();
    let err = load_linux(&mem, &layout(512 << 20), LinuxBoot::new(&mut kernel, &long)).unwrap_err();
    assert!(
        matches!(err, LinuxBootError::CmdlineTooLong { len: 70_001, .. }),
        "{err:?}"
    );
    let err = load_linux(
        &mem,
        &layout(512 << 20),
        LinuxBoot::new(&mut kernel, "a\0b"),
    )
    .unwrap_err();
    assert!(matches!(err, LinuxBootError::CmdlineNul), "{err:?}");
}

/// The `vmlinux` inside a bzImage: its payload is LZ4 in the legacy frame
/// format (magic, then blocks of a 32-bit length and LZ4 data), followed
/// by the 32-bit decompressed size.
fn vmlinux_of(bzimage: &[u8]) -> Vec<u8> {
    let setup_len = (usize::from(bzimage[0x1f1]) + 1) * 512;
    let word = |at: usize| u32::from_le_bytes(bzimage[at..at + 4].try_into().unwrap()) as usize;
    let (offset, length) = (word(0x248), word(0x24c));
    let payload = &bzimage[setup_len + offset..setup_len + offset + length];
    assert_eq!(
        &payload[..4],
        &0x184c_2102u32.to_le_bytes(),
        "LZ4 legacy magic"
    );
    let total = u32::from_le_bytes(payload[length - 4..].try_into().unwrap()) as usize;
    let mut out = Vec::with_capacity(total);
    let mut at = 4;
    let mut block = vec![0u8; 8 << 20];
    while out.len() < total {
        let n = u32::from_le_bytes(payload[at..at + 4].try_into().unwrap()) as usize;
        at += 4;
        if n == 0x184c_2102 {
            continue;
        }
        let got = lz4_flex::block::decompress_into(&payload[at..at + n], &mut block).unwrap();
        out.extend_from_slice(&block[..got]);
        at += n;
    }
    assert_eq!(out.len(), total);
    out
}

#[test]
fn debian_vmlinux_boots_through_its_pvh_note() {
    let image = std::fs::read(debian_kernel()).unwrap();
    let elf = vmlinux_of(&image);
    assert_eq!(&elf[..4], b"\x7fELF");
    let (_p, mut kernel) = temp_file("vmlinux", &elf);
    let mem_bytes = 512 << 20;
    let mem = memory::create(mem_bytes).unwrap();
    let ram = layout(mem_bytes);
    let loaded = load_linux(&mem, &ram, LinuxBoot::new(&mut kernel, CMDLINE)).unwrap();
    assert_eq!(loaded.format, KernelFormat::ElfPvh);
    let BootState::Pvh { eip, start_info } = loaded.boot else {
        panic!("{:?}", loaded.boot)
    };
    assert_eq!(u64::from(start_info), START_INFO_ADDR);
    assert!(
        (loaded.kernel.0..loaded.kernel.1).contains(&u64::from(eip)),
        "the PVH entry {eip:#x} lies in the loaded kernel {:x?}",
        loaded.kernel
    );

    // The first PT_LOAD segment is in guest memory byte for byte.
    let word = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let phoff = word(0x20) as usize;
    let phnum = u16::from_le_bytes([elf[0x38], elf[0x39]]) as usize;
    let first_load = (0..phnum)
        .map(|i| phoff + i * 56)
        .find(|&ph| u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) == 1)
        .unwrap();
    let (offset, paddr, filesz) = (
        word(first_load + 8) as usize,
        word(first_load + 24),
        word(first_load + 32) as usize,
    );
    assert_eq!(paddr, loaded.kernel.0);
    let mut seg = vec![0u8; filesz];
    mem.read_slice(&mut seg, GuestAddress(paddr)).unwrap();
    assert!(seg == elf[offset..offset + filesz], "segment differs");

    let info: hvm_start_info = mem.read_obj(GuestAddress(START_INFO_ADDR)).unwrap();
    assert_eq!({ info.magic }, PVH_MAGIC);
    assert_eq!({ info.version }, 1);
    assert_eq!({ info.nr_modules }, 0);
    assert_eq!(c_string(&mem, info.cmdline_paddr), CMDLINE);
    let map = e820_map(&ram);
    assert_eq!({ info.memmap_entries } as usize, map.len());
    for (i, want) in map.iter().enumerate() {
        let e: hvm_memmap_table_entry = mem
            .read_obj(GuestAddress({ info.memmap_paddr } + 24 * i as u64))
            .unwrap();
        assert_eq!(
            ({ e.addr }, { e.size }, { e.type_ }),
            (want.addr, want.size, want.kind)
        );
    }

    // Without PVH the same ELF starts at e_entry in long mode.
    std::io::Seek::rewind(&mut kernel).unwrap();
    let loaded = load_linux(
        &mem,
        &ram,
        LinuxBoot {
            prefer_pvh: false,
            ..LinuxBoot::new(&mut kernel, CMDLINE)
        },
    )
    .unwrap();
    assert_eq!(loaded.format, KernelFormat::Elf);
    assert_eq!(
        loaded.boot,
        BootState::Linux64 {
            rip: word(0x18),
            rsp: 0x8ff0,
            boot_params: ZERO_PAGE_ADDR
        }
    );
}

/// A minimal ELF64 executable: one PT_LOAD of `code` at `load`, entry
/// `load`, and with `pvh` a PT_NOTE holding XEN_ELFNOTE_PHYS32_ENTRY.
fn tiny_elf(load: u64, code: &[u8], pvh: Option<u32>) -> Vec<u8> {
    let phnum: u16 = if pvh.is_some() { 2 } else { 1 };
    let data_at = 64 + 56 * u64::from(phnum);
    let note: Vec<u8> = match pvh {
        Some(entry) => [4u32, 4, 18]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .chain(*b"Xen\0")
            .chain(entry.to_le_bytes())
            .collect(),
        None => Vec::new(),
    };
    let code_at = data_at + note.len() as u64;
    let mut f = Vec::new();
    f.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
    f.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    f.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    f.extend_from_slice(&1u32.to_le_bytes());
    f.extend_from_slice(&load.to_le_bytes()); // e_entry
    f.extend_from_slice(&64u64.to_le_bytes()); // e_phoff
    f.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    f.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    for v in [64u16, 56, phnum, 64, 0, 0] {
        f.extend_from_slice(&v.to_le_bytes());
    }
    let phdr = |f: &mut Vec<u8>, kind: u32, off: u64, addr: u64, len: u64| {
        f.extend_from_slice(&kind.to_le_bytes());
        f.extend_from_slice(&7u32.to_le_bytes());
        for v in [off, addr, addr, len, len, 0x1000] {
            f.extend_from_slice(&v.to_le_bytes());
        }
    };
    phdr(&mut f, 1, code_at, load, code.len() as u64);
    if pvh.is_some() {
        phdr(&mut f, 4, data_at, 0, note.len() as u64);
    }
    f.extend_from_slice(&note);
    f.extend_from_slice(code);
    f
}

/// Print the NUL-terminated string at `[rsi]` (or `[esi]`) to COM1.
fn print_string(a: &mut CodeAssembler, bits: u32) {
    let mut top = a.create_label();
    let mut done = a.create_label();
    a.set_label(&mut top).unwrap();
    if bits == 64 {
        a.mov(al, byte_ptr(rsi)).unwrap();
    } else {
        a.mov(al, byte_ptr(esi)).unwrap();
    }
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.out(dx, al).unwrap();
    if bits == 64 {
        a.inc(rsi).unwrap();
    } else {
        a.inc(esi).unwrap();
    }
    a.jmp(top).unwrap();
    a.set_label(&mut done).unwrap();
}

fn print_char(a: &mut CodeAssembler, c: u8) {
    a.mov(al, u32::from(c)).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.out(dx, al).unwrap();
}

/// Print a space and the one-digit count at `count`, power off; `bad`
/// prints `?` and powers off.
fn print_count_and_power_off(a: &mut CodeAssembler, count: AsmMemoryOperand, bad: &mut CodeLabel) {
    print_char(a, b' ');
    a.mov(al, count).unwrap();
    a.add(al, b'0' as i32).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.out(dx, al).unwrap();
    payload::power_off(a).unwrap();
    a.set_label(bad).unwrap();
    print_char(a, b'?');
    payload::power_off(a).unwrap();
}

fn boot_for_real(name: &str, elf: &[u8]) -> String {
    let (_p, mut kernel) = temp_file(name, elf);
    let out = SerialCapture::default();
    let mem_bytes = 64 << 20;
    let vm = VmBuilder::new(VmConfig {
        name: "linux-boot".into(),
        vcpus: 1,
        memory_bytes: mem_bytes,
    })
    .serial_output(Box::new(out.clone()))
    .build()
    .unwrap();
    let loaded = load_linux(
        vm.memory(),
        vm.ram_ranges(),
        LinuxBoot::new(&mut kernel, "hello from the loader"),
    )
    .unwrap();
    vm.set_boot(&loaded.boot).unwrap();
    vm.start().unwrap();
    let exit = vm.wait_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(exit, Some(VmExit::PowerOff), "serial: {}", out.text());
    out.text()
}

#[test]
fn a_tiny_elf_kernel_boots_at_its_64_bit_entry_with_the_zero_page_in_rsi() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; the guest run needs it");
        return;
    }
    let mut a = CodeAssembler::new(64).unwrap();
    let mut bad = a.create_label();
    // Check "HdrS" at boot_params + 0x202, print the command line from
    // cmd_line_ptr (+0x228), then the E820 entry count (+0x1e8).
    a.cmp(dword_ptr(rsi + 0x202), 0x5372_6448).unwrap();
    a.jne(bad).unwrap();
    a.mov(rbx, rsi).unwrap();
    a.mov(esi, dword_ptr(rbx + 0x228)).unwrap();
    print_string(&mut a, 64);
    print_count_and_power_off(&mut a, byte_ptr(rbx + 0x1e8), &mut bad);
    let load = 0x20_0000;
    let code = a.assemble(load).unwrap();
    let text = boot_for_real("tiny64", &tiny_elf(load, &code, None));
    // 64 MiB: conventional memory, the BIOS hole, RAM from 1 MiB.
    assert_eq!(text, "hello from the loader 3");
}

#[test]
fn a_tiny_elf_kernel_boots_at_its_pvh_entry_with_start_info_in_ebx() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; the guest run needs it");
        return;
    }
    let mut a = CodeAssembler::new(32).unwrap();
    let mut bad = a.create_label();
    // 32-bit protected mode, paging off: check the magic, print the
    // command line (cmdline_paddr, +0x18) and the memory map size (+0x30).
    a.cmp(dword_ptr(ebx), PVH_MAGIC).unwrap();
    a.jne(bad).unwrap();
    a.mov(eax, cr0).unwrap();
    a.test(eax, 0x8000_0000u32 as i32).unwrap();
    a.jnz(bad).unwrap();
    a.mov(esi, dword_ptr(ebx + 0x18)).unwrap();
    print_string(&mut a, 32);
    print_count_and_power_off(&mut a, byte_ptr(ebx + 0x30), &mut bad);
    // The 64-bit entry (e_entry) is unused; PVH enters 0x100 bytes in.
    let load = 0x20_0000u64;
    let mut code = vec![0xf4u8; 0x100];
    code.extend(a.assemble(load + 0x100).unwrap());
    let text = boot_for_real(
        "tiny-pvh",
        &tiny_elf(load, &code, Some(load as u32 + 0x100)),
    );
    assert_eq!(text, "hello from the loader 3");
}
