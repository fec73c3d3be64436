//! virtkit-devices — Device model: PCI root bus with hotplug, virtio-pci, virtio-net, virtio-blk, i6300esb watchdog, VFIO passthrough, ACPI tables, fw_cfg.
//!
//! **Status: not implemented yet.** This crate exists so the workspace has
//! its final shape and dependency direction; it exports nothing. The work
//! is tracked as issue 8; see `docs/SPEC-COVERAGE.md` for what is done.
