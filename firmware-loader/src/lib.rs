//! virtkit-firmware-loader — boot: Linux direct boot, EFI firmware in
//! flash, the fw_cfg device firmware reads, the boot order from a VMI's
//! `bootOrder`s, and PXE served from the host.
//!
//! **Status: partial** (issue 7). Done: [`fw_cfg`] (selector, data and DMA
//! interfaces, file directory, `etc/e820`, firmware-driven kernel/initrd/
//! cmdline items), [`smbios`] and [`acpi_loader`] (their fw_cfg files),
//! [`boot_order`] (the `bootorder` file), [`linux`] (direct boot of bzImage
//! and ELF kernels, PVH), [`ovmf`] (firmware descriptors, volume checks,
//! per-VM VARS, CFI flash), [`pxe`] (DHCP boot options and a TFTP server),
//! [`netboot`] and [`boot_chain`] (network boot done by the VMM, then the
//! disk) and [`option_rom`] (NIC option ROMs for the ROM BAR). Not yet: the
//! virtio-net device that carries the iPXE ROM — see
//! `docs/SPEC-COVERAGE.md`.

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
