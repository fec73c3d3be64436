//! virtkit-firmware-loader — boot: Linux direct boot, EFI firmware in
//! flash, the fw_cfg device firmware reads, the boot order from a VMI's
//! `bootOrder`s, and PXE served from the host.
//!
//! **Status: partial** (issue 7). Done: [`fw_cfg`] (selector, data and DMA
//! interfaces, file directory, `etc/e820`, firmware-driven kernel/initrd/
//! cmdline items), [`boot_order`] (the `bootorder` file), [`linux`] (direct
//! boot of bzImage and ELF kernels, PVH), [`ovmf`] (firmware descriptors,
//! volume checks, per-VM VARS, CFI flash) and [`pxe`] (DHCP boot options and
//! a TFTP server). Not yet: SMBIOS, the ACPI table-loader files, the iPXE
//! ROM BAR — see `docs/SPEC-COVERAGE.md`.

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod acpi_loader;
pub mod boot_chain;
pub mod boot_order;
#[doc(hidden)]
pub mod fuzzing;
pub mod fw_cfg;
pub mod linux;
pub mod netboot;
pub mod option_rom;
pub mod ovmf;
pub mod pxe;
pub mod smbios;
