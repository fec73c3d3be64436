//! Linux direct boot: load a bzImage or an ELF `vmlinux` with linux-loader,
//! lay out the command line and initrd, write the zero page (or PVH's
//! `hvm_start_info`) with the E820 map of the VM's RAM, and say how vCPU 0
//! starts.
//!
//! The guest-physical layout below 1 MiB (the long-mode tables of
//! `virtkit_core::runtime::boot` sit at 0x500 and 0x9000..0xf000):
//!
//! | address | what |
//! |---|---|
//! | 0x6000 | PVH `hvm_start_info`, then its module list and memory map |
//! | 0x7000 | zero page (`struct boot_params`) |
//! | 0x8ff0 | initial stack (grows down into 0x8000) |
//! | 0x20000 | command line (up to 64 KiB) |
//! | 0x100000 | the kernel (bzImage protected-mode part, or ELF segments) |
//!
//! The initrd goes as high as the kernel allows (`initrd_addr_max`) in RAM
//! below the 32-bit MMIO hole, page-aligned, as QEMU places it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use linux_loader::loader::bootparam::{boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult};
use vm_memory::{Bytes, GuestAddress};

use virtkit_core::runtime::boot::BootState;
use virtkit_core::runtime::memory::{GuestMem, RamRange, PAGE_SIZE};

/// Where PVH's `hvm_start_info` is written.
pub const START_INFO_ADDR: u64 = 0x6000;
const MODLIST_ADDR: u64 = 0x6100;
const MEMMAP_ADDR: u64 = 0x6200;
const MEMMAP_MAX_ENTRIES: usize = 128;
/// Where the zero page (`struct boot_params`) is written.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack pointer of vCPU 0.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Where the command line is written.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Longest command line (with its NUL) that fits before the kernel area.
pub const CMDLINE_MAX: usize = 0x10000;
/// Kernels load here (the start of "high memory" in the boot protocol).
pub const KERNEL_START: u64 = 0x10_0000;
/// Conventional memory usable below the EBDA.
const EBDA_START: u64 = 0x9_fc00;

/// E820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// E820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

/// `boot_params.hdr.header`: "HdrS".
const HDRS_MAGIC: u32 = 0x5372_6448;
/// `hvm_start_info.magic`.
pub const PVH_MAGIC: u32 = 0x336e_c578;
/// Lowest boot protocol accepted: 2.06 (`cmdline_size`, relocatable).
const MIN_PROTOCOL: u16 = 0x0206;
/// `loadflags`: the protected-mode part loads at 1 MiB.
const LOADED_HIGH: u8 = 0x01;
/// `loadflags`: `heap_end_ptr` is valid.
const CAN_USE_HEAP: u8 = 0x80;
/// `xloadflags`: the kernel has a 64-bit entry at load address + 0x200.
const XLF_KERNEL_64: u16 = 0x1;
/// `type_of_loader`: "undefined" (no registered ID).
const LOADER_UNDEFINED: u8 = 0xff;

/// Why a kernel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LinuxBootError {
    /// The kernel or initrd file could not be read.
    #[error("reading {what}: {source}")]
    Io {
        /// Which file.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Neither a bzImage nor an ELF image.
    #[error("the kernel is neither a bzImage (no \"HdrS\" at 0x202) nor an ELF image")]
    UnknownFormat,
    /// linux-loader refused the image.
    #[error("loading the {format} kernel: {source}")]
    Load {
        /// bzImage or ELF.
        format: &'static str,
        /// linux-loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// A bzImage older than boot protocol 2.06 or without a 64-bit entry.
    #[error("the bzImage speaks boot protocol {major}.{minor:02}; 2.06 or later with a 64-bit entry is needed")]
    OldProtocol {
        /// Major version.
        major: u8,
        /// Minor version.
        minor: u8,
    },
    /// The command line does not fit.
    #[error("the command line is {len} bytes; the kernel accepts at most {max}")]
    CmdlineTooLong {
        /// Its length with the NUL.
        len: usize,
        /// The most the kernel (or the layout) takes.
        max: usize,
    },
    /// The command line holds a NUL byte.
    #[error("the command line holds a NUL byte")]
    CmdlineNul,
    /// RAM is too small for the kernel to run or for the initrd.
    #[error("{what} needs {needed:#x} bytes of RAM below {limit:#x}; the VM has {have:#x}")]
    NotEnoughMemory {
        /// What did not fit.
        what: &'static str,
        /// Bytes needed.
        needed: u64,
        /// Bytes available.
        have: u64,
        /// The address everything must stay under.
        limit: u64,
    },
    /// Writing boot structures into guest memory failed.
    #[error("writing {what} at {addr:#x}: {source}")]
    GuestMemory {
        /// What was written.
        what: &'static str,
        /// Where.
        addr: u64,
        /// The error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// One entry of the E820 map given to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct E820Entry {
    /// Start address.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The E820 map of a VM with `ram`: conventional memory up to the EBDA,
/// the BIOS area reserved, then RAM from 1 MiB and above 4 GiB.
pub fn e820_map(ram: &[RamRange]) -> Vec<E820Entry> {
    let mut map = Vec::new();
    for r in ram {
        let end = r.guest_addr + r.len;
        if r.guest_addr == 0 {
            map.push(E820Entry {
                addr: 0,
                size: end.min(EBDA_START),
                kind: E820_RAM,
            });
            if end > KERNEL_START {
                map.push(E820Entry {
                    addr: EBDA_START,
                    size: KERNEL_START - EBDA_START,
                    kind: E820_RESERVED,
                });
                map.push(E820Entry {
                    addr: KERNEL_START,
                    size: end - KERNEL_START,
                    kind: E820_RAM,
                });
            }
        } else {
            map.push(E820Entry {
                addr: r.guest_addr,
                size: r.len,
                kind: E820_RAM,
            });
        }
    }
    map
}

/// The kind of image that was loaded and the protocol it is started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelFormat {
    /// A bzImage, started at its 64-bit entry with a zero page.
    BzImage,
    /// An ELF image without a PVH note, started at `e_entry` in long mode
    /// with a zero page.
    Elf,
    /// An ELF image with a PVH note, started at the PVH entry in 32-bit
    /// protected mode with `hvm_start_info`.
    ElfPvh,
}

/// What [`load_linux`] did: where everything went and how vCPU 0 starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The image kind and boot protocol.
    pub format: KernelFormat,
    /// Guest-physical start and end of the loaded kernel image.
    pub kernel: (u64, u64),
    /// Guest-physical start and length of the initrd, if any.
    pub initrd: Option<(u64, u64)>,
    /// Address of the command line.
    pub cmdline_addr: u64,
    /// Address of the zero page or of `hvm_start_info`.
    pub boot_info_addr: u64,
    /// The memory map handed to the kernel.
    pub e820: Vec<E820Entry>,
    /// The boot protocol version of a bzImage (`0x020f` is 2.15).
    pub protocol: Option<u16>,
    /// The state to give vCPU 0 ([`virtkit_core::runtime::Vm::set_boot`]).
    pub boot: BootState,
}

/// A kernel to boot directly.
#[derive(Debug)]
pub struct LinuxBoot<'a> {
    /// The kernel: a bzImage or an ELF `vmlinux`.
    pub kernel: &'a mut File,
    /// An initrd to place in guest memory.
    pub initrd: Option<&'a mut File>,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// Use the PVH entry of an ELF kernel that has one (the default); when
    /// false, an ELF kernel is started at `e_entry` in long mode.
    pub prefer_pvh: bool,
}

impl<'a> LinuxBoot<'a> {
    /// A kernel with no initrd, preferring PVH.
    pub fn new(kernel: &'a mut File, cmdline: &'a str) -> Self {
        LinuxBoot {
            kernel,
            initrd: None,
            cmdline,
            prefer_pvh: true,
        }
    }
}

fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> LinuxBootError {
    move |source| LinuxBootError::Io { what, source }
}

fn write_at(
    mem: &GuestMem,
    what: &'static str,
    addr: u64,
    bytes: &[u8],
) -> Result<(), LinuxBootError> {
    mem.write_slice(bytes, GuestAddress(addr))
        .map_err(|source| LinuxBootError::GuestMemory { what, addr, source })
}

/// Load `boot` into `mem`, whose RAM layout is `ram`, and write the boot
/// structures the kernel's protocol wants. The image format is found from
/// its bytes.
pub fn load_linux(
    mem: &GuestMem,
    ram: &[RamRange],
    boot: LinuxBoot<'_>,
) -> Result<LoadedKernel, LinuxBootError> {
    if boot.cmdline.as_bytes().contains(&0) {
        return Err(LinuxBootError::CmdlineNul);
    }
    let low_end = ram.iter().find(|r| r.guest_addr == 0).map_or(0, |r| r.len);
    let kernel = boot.kernel;
    let mut magic = [0u8; 4];
    kernel.seek(SeekFrom::Start(0)).map_err(io("the kernel"))?;
    kernel.read_exact(&mut magic).map_err(io("the kernel"))?;
    let is_elf = magic == *b"\x7fELF";
    let mut hdrs = [0u8; 4];
    let is_bzimage = !is_elf
        && kernel.seek(SeekFrom::Start(0x202)).is_ok()
        && kernel.read_exact(&mut hdrs).is_ok()
        && u32::from_le_bytes(hdrs) == HDRS_MAGIC;
    if !is_elf && !is_bzimage {
        return Err(LinuxBootError::UnknownFormat);
    }
    kernel.seek(SeekFrom::Start(0)).map_err(io("the kernel"))?;

    let loaded: KernelLoaderResult = if is_elf {
        Elf::load(mem, None, kernel, Some(GuestAddress(KERNEL_START))).map_err(|source| {
            LinuxBootError::Load {
                format: "ELF",
                source,
            }
        })?
    } else {
        BzImage::load(mem, None, kernel, Some(GuestAddress(KERNEL_START))).map_err(|source| {
            LinuxBootError::Load {
                format: "bzImage",
                source,
            }
        })?
    };
    let format = match (is_elf, loaded.pvh_boot_cap) {
        (false, _) => KernelFormat::BzImage,
        (true, PvhBootCapability::PvhEntryPresent(_)) if boot.prefer_pvh => KernelFormat::ElfPvh,
        (true, _) => KernelFormat::Elf,
    };

    // The header's limits, where a bzImage gives them.
    let header = loaded.setup_header;
    if let Some(h) = &header {
        if h.version < MIN_PROTOCOL || h.xloadflags & XLF_KERNEL_64 == 0 {
            return Err(LinuxBootError::OldProtocol {
                major: (h.version >> 8) as u8,
                minor: h.version as u8,
            });
        }
        // The decompressor runs in place and needs `init_size` bytes.
        let needed = KERNEL_START + u64::from(h.init_size);
        if needed > low_end {
            return Err(LinuxBootError::NotEnoughMemory {
                what: "the kernel's init_size",
                needed,
                have: low_end,
                limit: low_end,
            });
        }
    }
    let cmdline_max = header
        .map_or(CMDLINE_MAX, |h| h.cmdline_size as usize + 1)
        .min(CMDLINE_MAX);
    let mut cmdline = boot.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    if cmdline.len() > cmdline_max {
        return Err(LinuxBootError::CmdlineTooLong {
            len: cmdline.len(),
            max: cmdline_max,
        });
    }
    write_at(mem, "the command line", CMDLINE_ADDR, &cmdline)?;

    let kernel_end = loaded.kernel_end;
    let initrd = match boot.initrd {
        Some(file) => {
            let max = header.map_or(u64::from(u32::MAX), |h| u64::from(h.initrd_addr_max));
            Some(load_initrd(mem, file, low_end, max, kernel_end)?)
        }
        None => None,
    };
    let e820 = e820_map(ram);

    let (boot_info_addr, state) = match format {
        KernelFormat::ElfPvh => {
            let PvhBootCapability::PvhEntryPresent(entry) = loaded.pvh_boot_cap else {
                return Err(LinuxBootError::UnknownFormat);
            };
            write_start_info(mem, &e820, initrd)?;
            (
                START_INFO_ADDR,
                BootState::Pvh {
                    eip: entry.0 as u32,
                    start_info: START_INFO_ADDR as u32,
                },
            )
        }
        KernelFormat::Elf | KernelFormat::BzImage => {
            let params = zero_page(header, &e820, initrd, cmdline.len());
            write_at(
                mem,
                "the zero page",
                ZERO_PAGE_ADDR,
                vm_memory::ByteValued::as_slice(&params),
            )?;
            let rip = match format {
                // startup_64 sits 0x200 into the protected-mode part.
                KernelFormat::BzImage => loaded.kernel_load.0 + 0x200,
                _ => elf_entry(kernel)?,
            };
            (
                ZERO_PAGE_ADDR,
                BootState::Linux64 {
                    rip,
                    rsp: BOOT_STACK,
                    boot_params: ZERO_PAGE_ADDR,
                },
            )
        }
    };
    Ok(LoadedKernel {
        format,
        kernel: (loaded.kernel_load.0, kernel_end),
        initrd,
        cmdline_addr: CMDLINE_ADDR,
        boot_info_addr,
        e820,
        protocol: header.map(|h| h.version),
        boot: state,
    })
}

/// `e_entry` of an ELF image (linux-loader reports only the PVH entry).
fn elf_entry(kernel: &mut File) -> Result<u64, LinuxBootError> {
    let mut entry = [0u8; 8];
    kernel
        .seek(SeekFrom::Start(0x18))
        .map_err(io("the kernel"))?;
    kernel.read_exact(&mut entry).map_err(io("the kernel"))?;
    Ok(u64::from_le_bytes(entry))
}

/// Put the initrd at the highest page-aligned address that keeps it below
/// both `initrd_addr_max` and the end of low RAM, and above the kernel.
fn load_initrd(
    mem: &GuestMem,
    file: &mut File,
    low_end: u64,
    addr_max: u64,
    kernel_end: u64,
) -> Result<(u64, u64), LinuxBootError> {
    let size = file.seek(SeekFrom::End(0)).map_err(io("the initrd"))?;
    file.seek(SeekFrom::Start(0)).map_err(io("the initrd"))?;
    let limit = low_end.min(addr_max.saturating_add(1));
    let start = limit
        .checked_sub(size)
        .map(|a| a & !(PAGE_SIZE - 1))
        .filter(|&a| a >= kernel_end.div_ceil(PAGE_SIZE) * PAGE_SIZE);
    let Some(start) = start else {
        return Err(LinuxBootError::NotEnoughMemory {
            what: "the initrd",
            needed: kernel_end + size,
            have: low_end,
            limit,
        });
    };
    let len = usize::try_from(size).map_err(|_| LinuxBootError::NotEnoughMemory {
        what: "the initrd",
        needed: size,
        have: low_end,
        limit,
    })?;
    mem.read_exact_volatile_from(GuestAddress(start), file, len)
        .map_err(|source| LinuxBootError::GuestMemory {
            what: "the initrd",
            addr: start,
            source,
        })?;
    Ok((start, size))
}

/// The zero page: the kernel's own setup header (bzImage) with the
/// loader's fields filled in, the command line, initrd and E820 map.
fn zero_page(
    header: Option<setup_header>,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
) -> boot_params {
    let mut params = boot_params::default();
    if let Some(h) = header {
        params.hdr = h;
    } else {
        params.hdr.header = HDRS_MAGIC;
        params.hdr.boot_flag = 0xaa55;
        params.hdr.kernel_alignment = 0x100_0000;
    }
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    params.hdr.loadflags |= LOADED_HIGH | CAN_USE_HEAP;
    // The heap ends at the start of the zero page's own segment page.
    params.hdr.heap_end_ptr = 0xfe00;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = (cmdline_len - 1) as u32;
    if let Some((start, size)) = initrd {
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    for (slot, e) in params.e820_table.iter_mut().zip(e820) {
        slot.addr = e.addr;
        slot.size = e.size;
        slot.r#type = e.kind;
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    params
}

/// PVH's `hvm_start_info` (version 1), its module list (the initrd) and
/// its memory map.
fn write_start_info(
    mem: &GuestMem,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<(), LinuxBootError> {
    let mut info = hvm_start_info {
        magic: PVH_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: MEMMAP_ADDR,
        memmap_entries: e820.len().min(MEMMAP_MAX_ENTRIES) as u32,
        ..Default::default()
    };
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = MODLIST_ADDR;
        let module = hvm_modlist_entry {
            paddr,
            size,
            ..Default::default()
        };
        write_at(
            mem,
            "the PVH module list",
            MODLIST_ADDR,
            vm_memory::ByteValued::as_slice(&module),
        )?;
    }
    for (i, e) in e820.iter().take(MEMMAP_MAX_ENTRIES).enumerate() {
        let entry = hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.kind,
            reserved: 0,
        };
        let addr = MEMMAP_ADDR + (i * std::mem::size_of::<hvm_memmap_table_entry>()) as u64;
        write_at(
            mem,
            "the PVH memory map",
            addr,
            vm_memory::ByteValued::as_slice(&entry),
        )?;
    }
    write_at(
        mem,
        "hvm_start_info",
        START_INFO_ADDR,
        vm_memory::ByteValued::as_slice(&info),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use virtkit_core::runtime::memory::layout;

    #[test]
    fn e820_reserves_the_bios_area_and_keeps_ram_above_4g() {
        let map = e820_map(&layout(4 << 30));
        assert_eq!(
            map,
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x9fc00,
                    size: 0x100000 - 0x9fc00,
                    kind: E820_RESERVED
                },
                E820Entry {
                    addr: 0x100000,
                    size: (3 << 30) - 0x100000,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 4 << 30,
                    size: 1 << 30,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn the_zero_page_carries_cmdline_initrd_and_map() {
        let map = e820_map(&layout(64 << 20));
        let p = zero_page(None, &map, Some((0x300_0000, 0x1234)), 12);
        let (hdr, entries) = (p.hdr, p.e820_entries);
        assert_eq!({ hdr.header }, HDRS_MAGIC);
        assert_eq!({ hdr.cmd_line_ptr }, CMDLINE_ADDR as u32);
        assert_eq!({ hdr.cmdline_size }, 11);
        assert_eq!({ hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ hdr.ramdisk_size }, 0x1234);
        assert_eq!({ hdr.type_of_loader }, LOADER_UNDEFINED);
        assert_eq!(hdr.loadflags & (LOADED_HIGH | CAN_USE_HEAP), 0x81);
        assert_eq!(usize::from(entries), map.len());
        let last = p.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (0x100000, (64 << 20) - 0x100000)
        );
    }
}
