//! virtkit-firmware-loader — Boot: Linux direct boot, OVMF/Secure Boot, fw_cfg boot order, PXE (DHCP boot options + TFTP).
//!
//! **Status: not implemented yet.** This crate exists so the workspace has
//! its final shape and dependency direction; it exports nothing. The work
//! is tracked as issue 7; see `docs/SPEC-COVERAGE.md` for what is done.
