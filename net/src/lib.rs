//! virtkit-net — host networking for VMs: the masquerade binding (bridge,
//! tap, nftables NAT, DHCPv4/DHCPv6), the Linux bridge binding with the
//! MAC-spoof check, SR-IOV discovery and VF allocation, the MAC address
//! pool, NIC planning from a VMI spec, NIC hotplug with
//! the spec's slot rules, `status.interfaces` reporting with guest-agent
//! merge, and the dedicated migration network's bind address. The
//! guest's virtio-net device lives in `virtkit-devices`; [`tap`] hands it
//! a tap. `docs/SPEC-COVERAGE.md` lists what is done.

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

pub mod bridge;
pub mod dhcp4;
pub mod dhcp6;
pub mod fuzzing;
pub mod hotplug;
mod link;
pub mod mac;
pub mod masquerade;
pub mod migration_net;
pub mod netns;
mod nft;
pub mod nic;
mod responder;
pub mod sriov;
mod state;
pub mod status;
pub mod tap;

pub use bridge::{BridgeBinding, BridgeBindingConfig, BridgeError};
pub use dhcp4::{
    boot_client, BootClient, BootOptions, Dhcp4Config, Dhcp4Error, Dhcp4Server, Lease4, Route4,
};
pub use dhcp6::{Dhcp6Config, Dhcp6Error, Dhcp6Server, Lease6};
pub use hotplug::{AttachedNic, HotplugError, Nics, HOTPLUG_INTERFACE_LIMIT};
pub use mac::{namespace_managed, MacAddr, MacPool, MacPoolError, MacRange};
pub use masquerade::{Masquerade, MasqueradeConfig, MasqueradeError, PortForward, Protocol};
pub use migration_net::{bind_address as migration_bind_address, MigrationNetworkError};
pub use nic::{plan_nics, NicBinding, NicError, NicPlan};
pub use sriov::{
    PhysicalFunction, SriovError, Sysfs, VfAllocator, VfLink, VfSettings, VirtualFunction,
};
pub use status::{
    interface_status, parse_guest_agent_interfaces, GuestAgentInterface, KnownAddresses,
};
