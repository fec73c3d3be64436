//! A running VM's NICs on its PCI bus, with the hotplug rules of the
//! spec (seed 000): only virtio `bridge` interfaces come and go while the
//! VM runs; at most [`HOTPLUG_INTERFACE_LIMIT`] interfaces once hotplug
//! is involved, the ones already attached included (two attached → two
//! more); SR-IOV interfaces are never hot-unplugged. Devices go in and
//! out through the devices crate's ACPI hotplug path.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use virtkit_core::runtime::memory::GuestMem;
use virtkit_devices::pci::{MsiSink, PciAddress, PciBus, PciError};
use virtkit_devices::virtio::net::{NetBackend, NetCounters, NetError, VirtioNet};
use virtkit_devices::virtio::pci::{TransportError, VirtioPciDevice};

use crate::nic::{NicBinding, NicPlan};

/// Interfaces a VM may have once one is hot-plugged (the slots the seed
/// keeps for hotplugged interfaces, the attached ones included).
pub const HOTPLUG_INTERFACE_LIMIT: usize = 4;

/// Why a NIC could not be added or removed.
#[derive(Debug, thiserror::Error)]
pub enum HotplugError {
    /// Only bridge interfaces are hot-plugged or hot-unplugged.
    #[error("interface {name}: a {binding} interface cannot be hot-{action}; only bridge interfaces can")]
    Binding {
        /// Interface name.
        name: String,
        /// Its binding.
        binding: &'static str,
        /// `plugged` or `unplugged`.
        action: &'static str,
    },
    /// SR-IOV interfaces stay until the VM stops (NET-12).
    #[error(
        "interface {name}: SR-IOV interfaces cannot be hot-unplugged; stop the VM to remove it"
    )]
    SriovUnplug {
        /// Interface name.
        name: String,
    },
    /// The hotplug interface budget is spent (NET-13).
    #[error("interface {name}: the VM has {attached} interfaces; at most {limit} are allowed with hotplug (the slots kept for hotplugged interfaces count the attached ones)")]
    InterfaceLimit {
        /// Interface name.
        name: String,
        /// Interfaces attached now.
        attached: usize,
        /// [`HOTPLUG_INTERFACE_LIMIT`].
        limit: usize,
    },
    /// SR-IOV NICs are host functions, not virtio-net.
    #[error("interface {name}: an SR-IOV interface is a host function, not virtio-net; attach the VF and record it with record_assigned")]
    NotEmulated {
        /// Interface name.
        name: String,
    },
    /// An interface of that name is attached already.
    #[error("interface {name} is attached already")]
    Duplicate {
        /// Interface name.
        name: String,
    },
    /// No interface of that name is attached.
    #[error("interface {name} is not attached")]
    NotAttached {
        /// Interface name.
        name: String,
    },
    /// The device could not be built.
    #[error("interface {name}: {source}")]
    Device {
        /// Interface name.
        name: String,
        /// The device's error.
        source: NetError,
    },
    /// The transport could not be built.
    #[error("interface {name}: {source}")]
    Transport {
        /// Interface name.
        name: String,
        /// The transport's error.
        source: TransportError,
    },
    /// The PCI bus refused (no free slot, no BAR space, eject timeout).
    #[error("interface {name}: {source}")]
    Pci {
        /// Interface name.
        name: String,
        /// The bus's error.
        source: PciError,
    },
}

/// One attached NIC.
#[derive(Debug, Clone)]
pub struct AttachedNic {
    /// Its plan.
    pub plan: NicPlan,
    /// Where it sits.
    pub address: PciAddress,
    /// Whether it came by hotplug.
    pub hotplugged: bool,
    /// Traffic counters (virtio NICs).
    pub counters: Option<Arc<NetCounters>>,
}

/// The NICs of one VM on its PCI bus.
pub struct Nics {
    bus: Arc<PciBus>,
    memory: GuestMem,
    msi: Arc<dyn MsiSink>,
    attached: BTreeMap<String, AttachedNic>,
}

impl std::fmt::Debug for Nics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nics")
            .field("attached", &self.attached)
            .finish_non_exhaustive()
    }
}

impl Nics {
    /// NICs of the VM whose bus, memory and MSI sink these are.
    pub fn new(bus: Arc<PciBus>, memory: GuestMem, msi: Arc<dyn MsiSink>) -> Self {
        Nics {
            bus,
            memory,
            msi,
            attached: BTreeMap::new(),
        }
    }

    /// The attached NICs by interface name.
    pub fn attached(&self) -> &BTreeMap<String, AttachedNic> {
        &self.attached
    }

    /// Add a virtio NIC before the guest runs (any binding but SR-IOV);
    /// `rom` is an option ROM for its ROM BAR (iPXE for a NIC that boots).
    pub fn cold_plug(
        &mut self,
        plan: &NicPlan,
        backends: Vec<Arc<dyn NetBackend>>,
        rom: Option<Vec<u8>>,
    ) -> Result<PciAddress, HotplugError> {
        self.place(plan, backends, rom, false)
    }

    /// Record an SR-IOV NIC that the embedder placed at `address` as an
    /// assigned host function, so that its unplug is refused by name.
    pub fn record_assigned(
        &mut self,
        plan: &NicPlan,
        address: PciAddress,
    ) -> Result<(), HotplugError> {
        self.check_new(plan)?;
        self.attached.insert(
            plan.name.clone(),
            AttachedNic {
                plan: plan.clone(),
                address,
                hotplugged: false,
                counters: None,
            },
        );
        Ok(())
    }

    /// Hot-plug a bridge NIC into the running guest.
    pub fn hotplug(
        &mut self,
        plan: &NicPlan,
        backends: Vec<Arc<dyn NetBackend>>,
    ) -> Result<PciAddress, HotplugError> {
        if !matches!(plan.binding, NicBinding::Bridge { .. }) {
            return Err(HotplugError::Binding {
                name: plan.name.clone(),
                binding: plan.binding.kind(),
                action: "plugged",
            });
        }
        if self.attached.len() >= HOTPLUG_INTERFACE_LIMIT {
            return Err(HotplugError::InterfaceLimit {
                name: plan.name.clone(),
                attached: self.attached.len(),
                limit: HOTPLUG_INTERFACE_LIMIT,
            });
        }
        self.place(plan, backends, None, true)
    }

    /// Ask the guest to release interface `name` and wait up to `timeout`
    /// for it to eject the device (`state: absent`). On a timeout the
    /// NIC stays attached and the request stays pending.
    pub fn hot_unplug(&mut self, name: &str, timeout: Duration) -> Result<(), HotplugError> {
        let nic = self
            .attached
            .get(name)
            .ok_or_else(|| HotplugError::NotAttached { name: name.into() })?;
        match nic.plan.binding {
            NicBinding::Sriov { .. } => {
                return Err(HotplugError::SriovUnplug { name: name.into() })
            }
            NicBinding::Masquerade { .. } => {
                return Err(HotplugError::Binding {
                    name: name.into(),
                    binding: "masquerade",
                    action: "unplugged",
                })
            }
            NicBinding::Bridge { .. } => {}
        }
        let slot = nic.address.device;
        let pci = |source| HotplugError::Pci {
            name: name.into(),
            source,
        };
        self.bus.request_unplug(slot).map_err(pci)?;
        self.bus.wait_ejected(slot, timeout).map_err(pci)?;
        self.attached.remove(name);
        Ok(())
    }

    fn check_new(&self, plan: &NicPlan) -> Result<(), HotplugError> {
        if self.attached.contains_key(&plan.name) {
            return Err(HotplugError::Duplicate {
                name: plan.name.clone(),
            });
        }
        Ok(())
    }

    fn place(
        &mut self,
        plan: &NicPlan,
        backends: Vec<Arc<dyn NetBackend>>,
        rom: Option<Vec<u8>>,
        hot: bool,
    ) -> Result<PciAddress, HotplugError> {
        self.check_new(plan)?;
        let name = plan.name.clone();
        if !plan.is_emulated() {
            return Err(HotplugError::NotEmulated { name });
        }
        let net =
            VirtioNet::new(plan.net_config(), backends).map_err(|source| HotplugError::Device {
                name: name.clone(),
                source,
            })?;
        let counters = net.counters();
        let mut function =
            VirtioPciDevice::new(Box::new(net), self.memory.clone(), self.msi.clone()).map_err(
                |source| HotplugError::Transport {
                    name: name.clone(),
                    source,
                },
            )?;
        if let Some(rom) = rom {
            function = function.with_rom(rom);
        }
        let device = Arc::new(Mutex::new(function));
        let placed = if hot {
            self.bus.hotplug(device, None)
        } else {
            self.bus.add(device)
        };
        let address = placed.map_err(|source| HotplugError::Pci {
            name: name.clone(),
            source,
        })?;
        self.attached.insert(
            name,
            AttachedNic {
                plan: plan.clone(),
                address,
                hotplugged: hot,
                counters: Some(counters),
            },
        );
        Ok(address)
    }
}
