//! virtkit-firmware-loader — boot: the fw_cfg device firmware reads and the
//! boot order it gets from a VMI's `bootOrder`s.
//!
//! **Status: partial** (issue 7). Done: [`fw_cfg`] (selector, data and DMA
//! interfaces, file directory, `etc/e820`, firmware-driven kernel/initrd/
//! cmdline items) and [`boot_order`] (the `bootorder` file). Not yet: Linux
//! direct boot with linux-loader, OVMF/Secure Boot flash, SMBIOS, PXE (DHCP
//! boot options, TFTP) — see `docs/SPEC-COVERAGE.md`.

/// The README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod boot_order;
#[doc(hidden)]
pub mod fuzzing;
pub mod fw_cfg;
pub mod linux;
pub mod ovmf;
pub mod pxe;
