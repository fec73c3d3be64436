//! Initial vCPU state for tiny guests: real mode at a segment:offset, or
//! 64-bit long mode with identity-mapped page tables and a GDT that the
//! runtime writes into guest memory.

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use super::memory::GuestMem;
use super::RuntimeError;

/// Where the GDT is written for long mode.
pub const GDT_ADDR: u64 = 0x500;
/// PML4 of the identity map.
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT of the identity map.
pub const PDPT_ADDR: u64 = 0xa000;
/// First of four page directories (2 MiB pages, 4 GiB mapped).
pub const PD_ADDR: u64 = 0xb000;
/// First byte after the boot structures; payloads load at or above this.
pub const BOOT_STRUCTURES_END: u64 = 0xf000;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// How vCPU 0 starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootState {
    /// 16-bit real mode at `cs:ip` (linear address `cs * 16 + ip`).
    RealMode {
        /// Code segment.
        cs: u16,
        /// Instruction pointer.
        ip: u16,
    },
    /// 64-bit long mode at `rip` with stack `rsp`; guest memory below
    /// 4 GiB is identity-mapped with 2 MiB pages.
    LongMode {
        /// Entry point.
        rip: u64,
        /// Initial stack pointer.
        rsp: u64,
    },
    /// The Linux 64-bit boot protocol: long mode as [`BootState::LongMode`]
    /// with `rsi` holding the guest-physical address of the zero page
    /// (`struct boot_params`).
    Linux64 {
        /// 64-bit entry point (`startup_64`, load address + 0x200 for a
        /// bzImage).
        rip: u64,
        /// Initial stack pointer.
        rsp: u64,
        /// Address of the zero page, passed in `rsi`.
        boot_params: u64,
    },
    /// The PVH boot protocol: 32-bit protected mode with flat 4 GiB code
    /// and data segments, paging off, `ebx` holding the address of the
    /// `hvm_start_info` structure.
    Pvh {
        /// 32-bit entry point from the kernel's `XEN_ELFNOTE_PHYS32_ENTRY`.
        eip: u32,
        /// Address of `hvm_start_info`, passed in `ebx`.
        start_info: u32,
    },
    /// The architectural reset state: real mode with CS base 0xffff0000
    /// and IP 0xfff0, so the first instruction is fetched from the reset
    /// vector at 0xfffffff0 (firmware in flash).
    Reset,
}

fn segment(selector: u16, base: u64, limit: u32, type_: u8, l: u8, db: u8, g: u8) -> kvm_segment {
    kvm_segment {
        base,
        limit,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db,
        s: 1,
        l,
        g,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Write a GDT of null, `code` and a flat data descriptor at [`GDT_ADDR`]
/// and load CS (64-bit when `long`) and the data segments from it.
fn load_flat_gdt(
    write: &impl Fn(u64, &[u8]) -> Result<(), RuntimeError>,
    sregs: &mut kvm_sregs,
    code: u64,
    long: bool,
) -> Result<(), RuntimeError> {
    let gdt: [u64; 3] = [0, code, 0x00cf_9300_0000_ffff];
    let bytes: Vec<u8> = gdt.iter().flat_map(|e| e.to_le_bytes()).collect();
    write(GDT_ADDR, &bytes)?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (bytes.len() - 1) as u16;
    // KVM takes the byte-granular limit: 4 GiB - 1, not 0xfffff pages (a
    // 32-bit guest faults on its first fetch otherwise).
    let (l, db) = if long { (1, 0) } else { (0, 1) };
    sregs.cs = segment(0x8, 0, 0xffff_ffff, 0xb, l, db, 1);
    let data = segment(0x10, 0, 0xffff_ffff, 0x3, 0, 1, 1);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    Ok(())
}

/// Apply `boot` to the given register sets, writing long-mode tables into
/// `mem` when needed.
pub fn apply(
    boot: &BootState,
    mem: &GuestMem,
    regs: &mut kvm_regs,
    sregs: &mut kvm_sregs,
) -> Result<(), RuntimeError> {
    let write = |addr: u64, bytes: &[u8]| {
        mem.write_slice(bytes, GuestAddress(addr)).map_err(|e| {
            RuntimeError::GuestMemory(format!("writing boot structures at {addr:#x}: {e}"))
        })
    };
    *regs = kvm_regs {
        rflags: 0x2,
        ..Default::default()
    };
    match *boot {
        BootState::RealMode { cs, ip } => {
            sregs.cs.selector = cs;
            sregs.cs.base = u64::from(cs) << 4;
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.ss,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                s.selector = cs;
                s.base = u64::from(cs) << 4;
            }
            regs.rip = u64::from(ip);
            regs.rsp = 0xfffe;
        }
        BootState::LongMode { rip, rsp } => {
            // GDT: null, 64-bit code, data.
            load_flat_gdt(&write, sregs, 0x00af_9b00_0000_ffff, true)?;
            write(PML4_ADDR, &(PDPT_ADDR | 0x3).to_le_bytes())?;
            let mut pdpt = Vec::with_capacity(32);
            for i in 0..4u64 {
                pdpt.extend_from_slice(&((PD_ADDR + i * 0x1000) | 0x3).to_le_bytes());
            }
            write(PDPT_ADDR, &pdpt)?;
            let mut pd = Vec::with_capacity(4 * 4096);
            for i in 0..2048u64 {
                // Present | writable | 2 MiB page.
                pd.extend_from_slice(&((i << 21) | 0x83).to_le_bytes());
            }
            write(PD_ADDR, &pd)?;
            sregs.cr3 = PML4_ADDR;
            sregs.cr4 |= CR4_PAE;
            sregs.cr0 |= CR0_PE | CR0_PG | CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
            regs.rip = rip;
            regs.rsp = rsp;
        }
        BootState::Linux64 {
            rip,
            rsp,
            boot_params,
        } => {
            apply(&BootState::LongMode { rip, rsp }, mem, regs, sregs)?;
            regs.rsi = boot_params;
        }
        BootState::Pvh { eip, start_info } => {
            // GDT: null, 32-bit flat code, flat data (PVH's required state).
            load_flat_gdt(&write, sregs, 0x00cf_9b00_0000_ffff, false)?;
            sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_ET) & !CR0_PG;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = u64::from(eip);
            regs.rbx = u64::from(start_info);
        }
        BootState::Reset => {
            // KVM creates vCPUs in this state; it is restated so a VM whose
            // boot state was set before still starts at the reset vector.
            sregs.cs.selector = 0xf000;
            sregs.cs.base = 0xffff_0000;
            sregs.cs.limit = 0xffff;
            for s in [
                &mut sregs.ds,
                &mut sregs.es,
                &mut sregs.ss,
                &mut sregs.fs,
                &mut sregs.gs,
            ] {
                s.selector = 0;
                s.base = 0;
                s.limit = 0xffff;
            }
            sregs.cr0 = 0x6000_0010;
            sregs.cr4 = 0;
            sregs.efer = 0;
            regs.rip = 0xfff0;
            regs.rdx = 0x600;
        }
    }
    Ok(())
}
