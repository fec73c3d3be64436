//! virtkit-net — Host networking: masquerade, Linux bridge with VLAN and MAC-spoof check, SR-IOV, DHCP, MAC pool, NIC hotplug, interface status.
//!
//! **Status: not implemented yet.** This crate exists so the workspace has
//! its final shape and dependency direction; it exports nothing. The work
//! is tracked as issue 5; see `docs/SPEC-COVERAGE.md` for what is done.
