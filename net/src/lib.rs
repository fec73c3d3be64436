//! virtkit-net — host networking for VMs: the masquerade binding (bridge,
//! tap, nftables NAT, DHCPv4/DHCPv6), the Linux bridge binding with the
//! MAC-spoof check, SR-IOV discovery and VF allocation, and the MAC
//! address pool.
//!
//! Not here yet: virtio-net, NIC hotplug and interface status reporting;
//! `docs/SPEC-COVERAGE.md` lists what is.

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod bridge;
pub mod dhcp4;
pub mod dhcp6;
mod link;
pub mod mac;
pub mod masquerade;
pub mod netns;
mod nft;
mod responder;
pub mod sriov;
mod state;
pub mod tap;

pub use bridge::{BridgeBinding, BridgeBindingConfig, BridgeError};
pub use dhcp4::{
    boot_client, BootClient, BootOptions, Dhcp4Config, Dhcp4Error, Dhcp4Server, Lease4, Route4,
};
pub use dhcp6::{Dhcp6Config, Dhcp6Error, Dhcp6Server, Lease6};
pub use mac::{namespace_managed, MacAddr, MacPool, MacPoolError, MacRange};
pub use masquerade::{Masquerade, MasqueradeConfig, MasqueradeError, PortForward, Protocol};
pub use sriov::{
    PhysicalFunction, SriovError, Sysfs, VfAllocator, VfLink, VfSettings, VirtualFunction,
};
