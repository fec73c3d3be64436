//! [`PciBus`]: the root bus, its slots, and the bus devices through which
//! the guest reaches it (config ports, ECAM, the MMIO windows, hotplug).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use virtkit_core::runtime::{BusDevice, RuntimeError, SharedDevice, Vm};

use super::alloc::AddressWindow;
use super::config::{ConfigSpace, PciIds, BAR_COUNT, COMMAND_MEMORY, ROM_MIN_SIZE};
use super::hotplug::{HotplugRegisters, HOTPLUG_LEN, HOTPLUG_PORT};
use super::{
    BarKind, BarSpec, PciAddress, PciDevice, PciError, HOST_BRIDGE_SLOT, Q35_LPC_SLOT,
    ROM_BAR_INDEX, SLOT_COUNT,
};
use crate::acpi::AcpiEvents;

mod snapshot;

/// The id the bus's state migrates under (see `Vm::add_device_state`).
pub const PCI_BUS_STATE_ID: &str = "pci0";
/// Config address port (the data port follows at 0xCFC).
pub const CONFIG_ADDRESS_PORT: u64 = 0xcf8;
const CONFIG_ENABLE: u32 = 1 << 31;
const GIB: u64 = 1 << 30;

/// Where the bus's address ranges sit in guest-physical space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PciLayout {
    /// ECAM base (MCFG); bus 0 only, so 1 MiB long.
    pub ecam_base: u64,
    /// The 32-bit MMIO window for BARs.
    pub mmio32: (u64, u64),
    /// The 64-bit MMIO window for BARs (above RAM).
    pub mmio64: (u64, u64),
}

/// Bytes of ECAM space for bus 0.
pub const ECAM_LEN: u64 = 1 << 20;

impl PciLayout {
    /// The q35-like layout for a guest with `memory_bytes` of RAM: BARs in
    /// 3 GiB..3.5 GiB, ECAM at 3.5 GiB, 64-bit BARs from 64 GiB or the
    /// first GiB above RAM, whichever is higher.
    pub fn for_memory(memory_bytes: u64) -> Self {
        let above_hole = memory_bytes.saturating_sub(3 * GIB);
        let ram_end = 4 * GIB + above_hole;
        let high = ram_end.next_multiple_of(GIB).max(64 * GIB);
        PciLayout {
            ecam_base: 0xe000_0000,
            mmio32: (0xc000_0000, 0x2000_0000),
            mmio64: (high, 64 * GIB),
        }
    }
}

/// What a slot holds, for accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotState {
    /// No device; usable.
    Free,
    /// Kept for the platform.
    Reserved(&'static str),
    /// A device.
    Occupied {
        /// Its name.
        name: String,
        /// Whether it was hot-plugged (and so may be ejected).
        hotplugged: bool,
        /// Whether an unplug request waits for the guest.
        unplug_pending: bool,
    },
}

type Device = Arc<Mutex<dyn PciDevice>>;

struct Slot {
    device: Device,
    name: String,
    hotplugged: bool,
    placed: Vec<(BarKind, u64)>,
    /// What the function decodes now: (BAR, base, size), empty while
    /// memory decoding is off. Kept here so an MMIO access finds its
    /// device without locking every device on the bus.
    decoded: Vec<(usize, u64, u64)>,
}

/// The memory ranges `config` decodes: (BAR, base, size).
fn decoded_ranges(config: &ConfigSpace) -> Vec<(usize, u64, u64)> {
    if config.command() & COMMAND_MEMORY == 0 {
        return Vec::new();
    }
    config
        .bar_specs()
        .iter()
        .enumerate()
        .filter_map(|(index, spec)| Some((index, config.bar_address(index)?, spec.as_ref()?.size)))
        .chain(
            config
                .rom_window()
                .map(|(base, size)| (ROM_BAR_INDEX, base, size)),
        )
        .collect()
}

struct Inner {
    slots: Vec<Option<Slot>>,
    reserved: [Option<&'static str>; SLOT_COUNT as usize],
    low: AddressWindow,
    high: AddressWindow,
    config_address: u32,
    hotplug: HotplugRegisters,
    /// The VM is paused (see `Snapshot::pause`): a device placed now
    /// starts paused too.
    paused: bool,
}

/// The PCI root bus. Cheap to clone; clones share the bus.
#[derive(Clone)]
pub struct PciBus {
    shared: Arc<(Mutex<Inner>, Condvar)>,
    layout: PciLayout,
}

impl std::fmt::Debug for PciBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PciBus")
            .field("layout", &self.layout)
            .field("slots", &self.slots())
            .finish()
    }
}

fn lock_dev(d: &Device) -> MutexGuard<'_, dyn PciDevice + 'static> {
    d.lock().unwrap_or_else(|p| p.into_inner())
}

impl PciBus {
    /// A bus with the q35 host bridge in slot 0 and slot 31 reserved.
    pub fn new(layout: PciLayout) -> Self {
        let mut reserved = [None; SLOT_COUNT as usize];
        reserved[usize::from(HOST_BRIDGE_SLOT)] = Some("host bridge");
        reserved[usize::from(Q35_LPC_SLOT)] = Some("q35 LPC/SMBus/SATA controller");
        let mut slots: Vec<Option<Slot>> = (0..SLOT_COUNT).map(|_| None).collect();
        slots[usize::from(HOST_BRIDGE_SLOT)] = Some(Slot {
            device: Arc::new(Mutex::new(HostBridge::new())),
            name: "host bridge".into(),
            hotplugged: false,
            placed: Vec::new(),
            decoded: Vec::new(),
        });
        PciBus {
            shared: Arc::new((
                Mutex::new(Inner {
                    slots,
                    reserved,
                    low: AddressWindow::new(layout.mmio32.0, layout.mmio32.1),
                    high: AddressWindow::new(layout.mmio64.0, layout.mmio64.1),
                    config_address: 0,
                    hotplug: HotplugRegisters::default(),
                    paused: false,
                }),
                Condvar::new(),
            )),
            layout,
        }
    }

    /// The address layout.
    pub fn layout(&self) -> PciLayout {
        self.layout
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.shared.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Map the bus into `vm` (before it starts): config ports 0xCF8–0xCFF
    /// (taking over 0xCF9 reset and forwarding byte accesses to it), ECAM,
    /// both MMIO windows and the hotplug block, whose events go out as
    /// GPE0 bit 1 of `events` (attach those to the VM too). The bus's
    /// state migrates with the VM as [`PCI_BUS_STATE_ID`].
    pub fn attach(&self, vm: &Vm, events: &AcpiEvents) -> Result<(), RuntimeError> {
        let reset = vm.remove_pio_device(CONFIG_ADDRESS_PORT + 1)?;
        let port = |kind| -> SharedDevice {
            Arc::new(Mutex::new(BusWindow {
                bus: self.clone(),
                kind,
            }))
        };
        vm.add_pio_device(CONFIG_ADDRESS_PORT, 8, port(Window::ConfigPorts { reset }))?;
        vm.add_mmio_device(self.layout.ecam_base, ECAM_LEN, port(Window::Ecam))?;
        let (base, len) = self.layout.mmio32;
        vm.add_mmio_device(base, len, port(Window::Mmio { base }))?;
        let (base, len) = self.layout.mmio64;
        vm.add_mmio_device(base, len, port(Window::Mmio { base }))?;
        vm.add_pio_device(HOTPLUG_PORT, HOTPLUG_LEN, port(Window::Hotplug))?;
        self.inner().hotplug.set_events(events.clone());
        vm.add_device_state(PCI_BUS_STATE_ID, Arc::new(Mutex::new(self.clone())))?;
        Ok(())
    }

    /// Every slot's state, by slot number.
    pub fn slots(&self) -> Vec<SlotState> {
        let inner = self.inner();
        (0..SLOT_COUNT).map(|s| slot_state(&inner, s)).collect()
    }

    /// Slots a device could still be added to.
    pub fn free_slots(&self) -> usize {
        self.slots()
            .iter()
            .filter(|s| **s == SlotState::Free)
            .count()
    }

    /// Cold-plug `device` in the first free slot (before the guest runs).
    pub fn add(&self, device: Device) -> Result<PciAddress, PciError> {
        self.place(device, None, false)
    }

    /// Cold-plug `device` in `slot`.
    pub fn add_at(&self, slot: u8, device: Device) -> Result<PciAddress, PciError> {
        self.place(device, Some(slot), false)
    }

    /// Hot-plug `device` into a running guest: placed in the first free
    /// slot (or `slot`), then announced through PCIU and the SCI.
    pub fn hotplug(&self, device: Device, slot: Option<u8>) -> Result<PciAddress, PciError> {
        self.place(device, slot, true)
    }

    fn place(&self, device: Device, slot: Option<u8>, hot: bool) -> Result<PciAddress, PciError> {
        let mut inner = self.inner();
        let slot = match slot {
            Some(s) => {
                match slot_state(&inner, existing(s)?) {
                    SlotState::Free => {}
                    SlotState::Reserved(what) => {
                        return Err(PciError::SlotReserved { slot: s, what })
                    }
                    SlotState::Occupied { name, .. } => {
                        return Err(PciError::SlotOccupied {
                            slot: s,
                            device: name,
                        })
                    }
                }
                s
            }
            None => (0..SLOT_COUNT)
                .find(|&s| slot_state(&inner, s) == SlotState::Free)
                .ok_or_else(|| {
                    let reserved = inner.reserved.iter().flatten().count() as u8;
                    PciError::NoFreeSlot {
                        total: SLOT_COUNT,
                        reserved,
                        usable: SLOT_COUNT - reserved,
                    }
                })?,
        };
        let (name, mut bars, rom_len) = {
            let d = lock_dev(&device);
            (d.name().to_string(), d.bars(), d.rom().map(<[u8]>::len))
        };
        // The expansion ROM is placed like a 32-bit BAR.
        if let Some(len) = rom_len {
            let size = (len as u64).max(ROM_MIN_SIZE).next_power_of_two();
            bars.push((ROM_BAR_INDEX, BarSpec::memory32(size)));
        }
        let mut placed: Vec<(BarKind, u64)> = Vec::new();
        let mut addresses = Vec::new();
        for (index, spec) in bars {
            let window = match spec.kind {
                BarKind::Memory32 => &mut inner.low,
                BarKind::Memory64 { .. } => &mut inner.high,
            };
            match (index < BAR_COUNT || index == ROM_BAR_INDEX)
                .then(|| window.allocate(spec.size))
                .flatten()
            {
                Some(addr) => {
                    placed.push((spec.kind, addr));
                    addresses.push((index, spec, addr));
                }
                None => {
                    for (kind, addr) in placed {
                        free_bar(&mut inner, kind, addr);
                    }
                    return Err(PciError::NoBarSpace {
                        device: name,
                        bar: index,
                        size: spec.size,
                        window: match spec.kind {
                            BarKind::Memory32 => "32-bit",
                            BarKind::Memory64 { .. } => "64-bit",
                        },
                    });
                }
            }
        }
        let decoded = {
            let mut d = lock_dev(&device);
            for (index, spec, addr) in addresses {
                if index == ROM_BAR_INDEX {
                    d.config_mut().set_rom_bar(spec.size, addr);
                } else {
                    d.config_mut().set_bar(index, spec, addr);
                }
            }
            if inner.paused {
                d.pause();
            }
            decoded_ranges(d.config())
        };
        inner.slots[usize::from(slot)] = Some(Slot {
            device,
            name,
            hotplugged: hot,
            placed,
            decoded,
        });
        if hot {
            inner.hotplug.plugged(slot);
        }
        Ok(PciAddress::slot(slot))
    }

    /// Ask the guest to release the hot-plugged device in `slot` (PCID and
    /// the SCI). The device leaves when the guest ejects it; see
    /// [`PciBus::wait_ejected`].
    pub fn request_unplug(&self, slot: u8) -> Result<(), PciError> {
        let mut inner = self.inner();
        match slot_state(&inner, existing(slot)?) {
            SlotState::Occupied {
                hotplugged: true, ..
            } => {
                inner.hotplug.request_unplug(slot);
                Ok(())
            }
            SlotState::Occupied { name, .. } => Err(PciError::NotRemovable { slot, device: name }),
            _ => Err(PciError::SlotEmpty { slot }),
        }
    }

    /// Wait until the guest has ejected the device in `slot`.
    pub fn wait_ejected(&self, slot: u8, timeout: Duration) -> Result<(), PciError> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.inner();
        while inner
            .slots
            .get(usize::from(slot))
            .is_some_and(Option::is_some)
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(PciError::EjectTimeout {
                    slot,
                    millis: timeout.as_millis() as u64,
                });
            }
            inner = self
                .shared
                .1
                .wait_timeout(inner, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        Ok(())
    }

    /// Take the device out of `slot` without asking the guest (the VM is
    /// stopped, or the guest did not answer and the VMM gives up on it).
    pub fn remove(&self, slot: u8) -> Result<(), PciError> {
        let mut inner = self.inner();
        match slot_state(&inner, existing(slot)?) {
            SlotState::Occupied { .. } => {
                remove_slot(&mut inner, slot);
                self.shared.1.notify_all();
                Ok(())
            }
            SlotState::Reserved(what) => Err(PciError::SlotReserved { slot, what }),
            SlotState::Free => Err(PciError::SlotEmpty { slot }),
        }
    }

    /// The device in `slot`, if any.
    pub fn device(&self, slot: u8) -> Option<Device> {
        let inner = self.inner();
        inner
            .slots
            .get(usize::from(slot))?
            .as_ref()
            .map(|s| s.device.clone())
    }

    /// Read configuration space of `addr` (all ones where nothing is).
    pub fn config_read(&self, addr: PciAddress, offset: usize, data: &mut [u8]) {
        match self.function(addr) {
            Some(d) => lock_dev(&d).config().read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// Write configuration space of `addr`.
    pub fn config_write(&self, addr: PciAddress, offset: usize, data: &[u8]) {
        let Some(device) = self.function(addr) else {
            return;
        };
        let decoded = {
            let mut d = lock_dev(&device);
            d.config_mut().write(offset, data);
            d.config_written(offset, data.len());
            decoded_ranges(d.config())
        };
        // The device lock is dropped before the bus lock is taken.
        let mut inner = self.inner();
        if let Some(Some(slot)) = inner.slots.get_mut(usize::from(addr.device)) {
            if Arc::ptr_eq(&slot.device, &device) {
                slot.decoded = decoded;
            }
        }
    }

    /// A guest read at guest-physical `addr` inside a BAR (for VMMs that
    /// route MMIO themselves); false when no enabled BAR decodes it.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.decode(addr, data.len()) {
            Some((dev, ROM_BAR_INDEX, off)) => {
                let d = lock_dev(&dev);
                let rom = d.rom().unwrap_or(&[]);
                for (i, b) in data.iter_mut().enumerate() {
                    *b = usize::try_from(off)
                        .ok()
                        .and_then(|o| rom.get(o + i))
                        .copied()
                        .unwrap_or(0);
                }
                true
            }
            Some((dev, bar, off)) => {
                lock_dev(&dev).bar_read(bar, off, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// A guest write at guest-physical `addr` inside a BAR.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        match self.decode(addr, data.len()) {
            // The ROM is read-only; writes are dropped.
            Some((_, ROM_BAR_INDEX, _)) => true,
            Some((dev, bar, off)) => {
                lock_dev(&dev).bar_write(bar, off, data);
                true
            }
            None => false,
        }
    }

    fn function(&self, addr: PciAddress) -> Option<Device> {
        if addr.bus != 0 || addr.function != 0 {
            return None;
        }
        self.device(addr.device)
    }

    /// The device and BAR that decode `addr` (memory decoding on).
    fn decode(&self, addr: u64, len: usize) -> Option<(Device, usize, u64)> {
        let end = addr.checked_add(len as u64)?;
        let inner = self.inner();
        inner.slots.iter().flatten().find_map(|slot| {
            slot.decoded
                .iter()
                .find(|(_, base, size)| addr >= *base && end <= base + size)
                .map(|(bar, base, _)| (slot.device.clone(), *bar, addr - base))
        })
    }

    fn eject(&self, slots: u32) {
        let mut inner = self.inner();
        for slot in (0..SLOT_COUNT).filter(|s| slots & (1 << s) != 0) {
            remove_slot(&mut inner, slot);
        }
        self.shared.1.notify_all();
    }
}

/// `slot`, or `NoSuchSlot` when the bus has no such slot.
fn existing(slot: u8) -> Result<u8, PciError> {
    if slot < SLOT_COUNT {
        Ok(slot)
    } else {
        Err(PciError::NoSuchSlot {
            slot,
            total: SLOT_COUNT,
        })
    }
}

/// The state of `slot`, which must exist (see [`existing`]).
fn slot_state(inner: &Inner, slot: u8) -> SlotState {
    let entry = &inner.slots[usize::from(slot)];
    if let Some(what) = inner.reserved[usize::from(slot)] {
        return SlotState::Reserved(what);
    }
    match entry {
        Some(s) => SlotState::Occupied {
            name: s.name.clone(),
            hotplugged: s.hotplugged,
            unplug_pending: inner.hotplug.unplug_pending(slot),
        },
        None => SlotState::Free,
    }
}

fn free_bar(inner: &mut Inner, kind: BarKind, addr: u64) {
    match kind {
        BarKind::Memory32 => inner.low.free(addr),
        BarKind::Memory64 { .. } => inner.high.free(addr),
    }
}

fn remove_slot(inner: &mut Inner, slot: u8) {
    if let Some(s) = inner.slots[usize::from(slot)].take() {
        for (kind, addr) in s.placed {
            free_bar(inner, kind, addr);
        }
        lock_dev(&s.device).removed();
        log::info!("{} left PCI slot {slot}", s.name);
    }
    inner.hotplug.removed(slot);
}

/// The host bridge in slot 0 (q35's 82G33 DRAM controller IDs).
struct HostBridge {
    config: ConfigSpace,
}

impl HostBridge {
    fn new() -> Self {
        HostBridge {
            config: ConfigSpace::new(PciIds {
                vendor: 0x8086,
                device: 0x29c0,
                subsystem_vendor: 0x1af4,
                subsystem: 0x1100,
                class: [0x06, 0x00, 0x00],
                revision: 0,
            }),
        }
    }
}

impl PciDevice for HostBridge {
    fn name(&self) -> &str {
        "host bridge"
    }
    fn bars(&self) -> Vec<(usize, BarSpec)> {
        Vec::new()
    }
    fn config(&self) -> &ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: usize, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }
    fn bar_write(&mut self, _bar: usize, _offset: u64, _data: &[u8]) {}
    // Configuration space is all the host bridge has.
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        Ok(Vec::new())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(virtkit_core::runtime::StateError::Corrupt(
                "the host bridge has no state beyond configuration space".into(),
            ))
        }
    }
}

enum Window {
    ConfigPorts { reset: Option<SharedDevice> },
    Ecam,
    Mmio { base: u64 },
    Hotplug,
}

/// One of the bus's address ranges, as a device on the VM's PIO/MMIO bus.
struct BusWindow {
    bus: PciBus,
    kind: Window,
}

fn ecam_address(offset: u64) -> (PciAddress, usize) {
    (
        PciAddress {
            bus: (offset >> 20) as u8,
            device: ((offset >> 15) & 0x1f) as u8,
            function: ((offset >> 12) & 0x7) as u8,
        },
        (offset & 0xfff) as usize,
    )
}

fn cf8_address(value: u32) -> Option<(PciAddress, usize)> {
    (value & CONFIG_ENABLE != 0).then_some((
        PciAddress {
            bus: (value >> 16) as u8,
            device: ((value >> 11) & 0x1f) as u8,
            function: ((value >> 8) & 0x7) as u8,
        },
        (value & 0xfc) as usize,
    ))
}

fn le_value(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl BusDevice for BusWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match &self.kind {
            Window::ConfigPorts { reset } => match (offset, data.len()) {
                (0, 4) => data.copy_from_slice(&self.bus.inner().config_address.to_le_bytes()),
                (1, 1) => match reset {
                    Some(r) => r.lock().unwrap_or_else(|p| p.into_inner()).read(0, data),
                    None => data.fill(0),
                },
                (4..8, _) => {
                    let address = self.bus.inner().config_address;
                    match cf8_address(address) {
                        Some((addr, reg)) => {
                            self.bus
                                .config_read(addr, reg + (offset as usize - 4), data)
                        }
                        None => data.fill(0xff),
                    }
                }
                _ => data.fill(0xff),
            },
            Window::Ecam => {
                let (addr, reg) = ecam_address(offset);
                self.bus.config_read(addr, reg, data);
            }
            Window::Mmio { base } => {
                self.bus.mmio_read(base + offset, data);
            }
            Window::Hotplug => {
                let v = self.bus.inner().hotplug.read(offset & !3);
                let bytes = v.to_le_bytes();
                for (i, b) in data.iter_mut().enumerate() {
                    *b = bytes.get((offset as usize & 3) + i).copied().unwrap_or(0);
                }
            }
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match &self.kind {
            Window::ConfigPorts { reset } => match (offset, data.len()) {
                (0, 4) => self.bus.inner().config_address = le_value(data),
                (1, 1) => {
                    if let Some(r) = reset {
                        r.lock().unwrap_or_else(|p| p.into_inner()).write(0, data);
                    }
                }
                (4..8, _) => {
                    let address = self.bus.inner().config_address;
                    if let Some((addr, reg)) = cf8_address(address) {
                        self.bus
                            .config_write(addr, reg + (offset as usize - 4), data);
                    }
                }
                _ => {}
            },
            Window::Ecam => {
                let (addr, reg) = ecam_address(offset);
                self.bus.config_write(addr, reg, data);
            }
            Window::Mmio { base } => {
                self.bus.mmio_write(base + offset, data);
            }
            Window::Hotplug => {
                let eject = self.bus.inner().hotplug.write(offset, le_value(data));
                if eject != 0 {
                    self.bus.eject(eject);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A device with one 32-bit BAR that echoes writes.
    pub(crate) struct Echo {
        config: ConfigSpace,
        mem: Vec<u8>,
        removed: Arc<Mutex<bool>>,
    }

    impl Echo {
        pub(crate) fn new(removed: Arc<Mutex<bool>>) -> Self {
            Echo {
                config: ConfigSpace::new(PciIds {
                    vendor: 0x1234,
                    device: 0x11,
                    subsystem_vendor: 0,
                    subsystem: 0,
                    class: [0xff, 0, 0],
                    revision: 0,
                }),
                mem: vec![0; 0x1000],
                removed,
            }
        }
    }

    impl PciDevice for Echo {
        fn name(&self) -> &str {
            "echo"
        }
        fn bars(&self) -> Vec<(usize, BarSpec)> {
            vec![(0, BarSpec::memory32(0x1000))]
        }
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            let o = offset as usize;
            data.copy_from_slice(&self.mem[o..o + data.len()]);
        }
        fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
            let o = offset as usize;
            self.mem[o..o + data.len()].copy_from_slice(data);
        }
        fn removed(&mut self) {
            *self.removed.lock().unwrap() = true;
        }
    }

    /// [`Echo`] with an expansion ROM.
    struct WithRom(Echo, Vec<u8>);

    impl PciDevice for WithRom {
        fn name(&self) -> &str {
            "echo-rom"
        }
        fn bars(&self) -> Vec<(usize, BarSpec)> {
            self.0.bars()
        }
        fn config(&self) -> &ConfigSpace {
            self.0.config()
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            self.0.config_mut()
        }
        fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
            self.0.bar_read(bar, offset, data)
        }
        fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
            self.0.bar_write(bar, offset, data)
        }
        fn rom(&self) -> Option<&[u8]> {
            Some(&self.1)
        }
    }

    #[test]
    fn expansion_rom_is_sized_enabled_and_read_only() {
        use crate::pci::config::ROM_BAR;
        let bus = PciBus::new(PciLayout::for_memory(1 << 30));
        let mut rom: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        rom[..2].copy_from_slice(&[0x55, 0xaa]);
        let device = WithRom(Echo::new(Arc::new(Mutex::new(false))), rom.clone());
        let at = bus.add(Arc::new(Mutex::new(device))).unwrap();
        let read32 = |offset| {
            let mut v = [0u8; 4];
            bus.config_read(at, offset, &mut v);
            u32::from_le_bytes(v)
        };
        let placed = read32(ROM_BAR) & !1;
        assert_ne!(placed, 0, "the bus placed the ROM");
        assert_eq!(u64::from(placed) % 0x2000, 0, "8 KiB aligned");
        // Sizing as firmware does: all ones, read the mask, restore.
        bus.config_write(at, ROM_BAR, &0xffff_f800u32.to_le_bytes());
        assert_eq!(read32(ROM_BAR), 0xffff_e000, "5000 bytes → 8 KiB");
        bus.config_write(at, ROM_BAR, &placed.to_le_bytes());
        bus.config_write(at, 4, &COMMAND_MEMORY.to_le_bytes());
        let mut sig = [0u8; 2];
        assert!(
            !bus.mmio_read(u64::from(placed), &mut sig),
            "not enabled yet"
        );
        bus.config_write(at, ROM_BAR, &(placed | 1).to_le_bytes());
        assert!(bus.mmio_read(u64::from(placed), &mut sig));
        assert_eq!(sig, [0x55, 0xaa]);
        let mut tail = [0xffu8; 8];
        assert!(bus.mmio_read(u64::from(placed) + 4996, &mut tail));
        assert_eq!(
            tail,
            [rom[4996], rom[4997], rom[4998], rom[4999], 0, 0, 0, 0]
        );
        assert!(bus.mmio_write(u64::from(placed), &[0, 0]));
        bus.mmio_read(u64::from(placed), &mut sig);
        assert_eq!(sig, [0x55, 0xaa], "writes to the ROM are dropped");
        // Memory decoding off hides the ROM too.
        bus.config_write(at, 4, &0u16.to_le_bytes());
        assert!(!bus.mmio_read(u64::from(placed), &mut sig));
    }

    fn window(bus: &PciBus, kind: Window) -> BusWindow {
        BusWindow {
            bus: bus.clone(),
            kind,
        }
    }

    fn cf8_read(ports: &mut BusWindow, slot: u8, reg: u32) -> u32 {
        ports.write(
            0,
            &(CONFIG_ENABLE | (u32::from(slot) << 11) | reg).to_le_bytes(),
        );
        let mut v = [0u8; 4];
        ports.read(4, &mut v);
        u32::from_le_bytes(v)
    }

    #[test]
    fn config_access_through_ports_and_ecam() {
        let bus = PciBus::new(PciLayout::for_memory(1 << 30));
        let removed = Arc::new(Mutex::new(false));
        let at = bus
            .add(Arc::new(Mutex::new(Echo::new(removed.clone()))))
            .unwrap();
        assert_eq!(at.to_string(), "0000:00:01.0");
        let mut ports = window(&bus, Window::ConfigPorts { reset: None });
        assert_eq!(cf8_read(&mut ports, 0, 0), 0x29c0_8086, "host bridge");
        assert_eq!(cf8_read(&mut ports, 1, 0), 0x0011_1234);
        assert_eq!(cf8_read(&mut ports, 2, 0), u32::MAX, "empty slot");
        assert_eq!(cf8_read(&mut ports, 1, 0x10), 0xc000_0000, "BAR placed");
        // Byte access at an offset inside the data port.
        ports.write(0, &(CONFIG_ENABLE | (1 << 11)).to_le_bytes());
        let mut b = [0u8; 1];
        ports.read(6, &mut b);
        assert_eq!(b[0], 0x11);
        // Disabled address reads all ones.
        ports.write(0, &(1u32 << 11).to_le_bytes());
        let mut v = [0u8; 4];
        ports.read(4, &mut v);
        assert_eq!(v, [0xff; 4]);
        let mut ecam = window(&bus, Window::Ecam);
        ecam.read(1 << 15, &mut v);
        assert_eq!(u32::from_le_bytes(v), 0x0011_1234);
        ecam.read((1 << 15) | (1 << 12), &mut v);
        assert_eq!(v, [0xff; 4], "function 1 does not exist");
        // BAR decode follows the command register and reprogramming.
        let mut mmio = window(&bus, Window::Mmio { base: 0xc000_0000 });
        mmio.write(0x10, &[7]);
        mmio.read(0x10, &mut b);
        assert_eq!(b[0], 0xff, "memory decoding is off");
        ecam.write((1 << 15) | 4, &COMMAND_MEMORY.to_le_bytes());
        mmio.write(0x10, &[7]);
        mmio.read(0x10, &mut b);
        assert_eq!(b[0], 7);
        ecam.write((1 << 15) | 0x10, &0xc010_0000u32.to_le_bytes());
        mmio.read(0x10_0010, &mut b);
        assert_eq!(b[0], 7, "BAR moved");
        bus.remove(1).unwrap();
        assert!(*removed.lock().unwrap());
        assert_eq!(bus.remove(1), Err(PciError::SlotEmpty { slot: 1 }));
    }

    #[test]
    fn slot_accounting_and_errors() {
        let bus = PciBus::new(PciLayout::for_memory(1 << 30));
        let flag = Arc::new(Mutex::new(false));
        let echo = || -> Device { Arc::new(Mutex::new(Echo::new(flag.clone()))) };
        assert_eq!(bus.free_slots(), 30);
        assert!(matches!(
            bus.add_at(0, echo()),
            Err(PciError::SlotReserved { slot: 0, .. })
        ));
        assert!(matches!(
            bus.add_at(31, echo()),
            Err(PciError::SlotReserved { slot: 31, .. })
        ));
        assert!(matches!(
            bus.add_at(32, echo()),
            Err(PciError::NoSuchSlot { slot: 32, .. })
        ));
        bus.add_at(5, echo()).unwrap();
        assert!(matches!(
            bus.add_at(5, echo()),
            Err(PciError::SlotOccupied { slot: 5, .. })
        ));
        for _ in 0..29 {
            bus.add(echo()).unwrap();
        }
        let err = bus.add(echo()).unwrap_err();
        assert_eq!(
            err,
            PciError::NoFreeSlot {
                total: 32,
                reserved: 2,
                usable: 30
            }
        );
        assert!(err.to_string().contains("all 30 usable slots of 32"));
        assert_eq!(
            bus.request_unplug(5),
            Err(PciError::NotRemovable {
                slot: 5,
                device: "echo".into()
            })
        );
        // A hot-plugged device can be asked out; the guest ejects it.
        bus.remove(7).unwrap();
        let at = bus.hotplug(echo(), None).unwrap();
        assert_eq!(at.device, 7);
        let mut hp = window(&bus, Window::Hotplug);
        let mut v = [0u8; 4];
        hp.read(0, &mut v);
        assert_eq!(u32::from_le_bytes(v), 1 << 7);
        bus.request_unplug(7).unwrap();
        assert!(matches!(
            bus.slots()[7],
            SlotState::Occupied {
                unplug_pending: true,
                ..
            }
        ));
        assert_eq!(
            bus.wait_ejected(7, Duration::from_millis(10)),
            Err(PciError::EjectTimeout {
                slot: 7,
                millis: 10
            })
        );
        let waiter = {
            let bus = bus.clone();
            std::thread::spawn(move || bus.wait_ejected(7, Duration::from_secs(5)))
        };
        hp.read(4, &mut v);
        hp.write(8, &v);
        waiter.join().unwrap().unwrap();
        assert_eq!(bus.slots()[7], SlotState::Free);
    }

    #[test]
    fn bar_space_exhaustion_is_an_error_and_frees_nothing_twice() {
        let layout = PciLayout {
            mmio32: (0xc000_0000, 0x2000),
            ..PciLayout::for_memory(1 << 30)
        };
        let bus = PciBus::new(layout);
        let flag = Arc::new(Mutex::new(false));
        bus.add(Arc::new(Mutex::new(Echo::new(flag.clone()))))
            .unwrap();
        bus.add(Arc::new(Mutex::new(Echo::new(flag.clone()))))
            .unwrap();
        let err = bus
            .add(Arc::new(Mutex::new(Echo::new(flag.clone()))))
            .unwrap_err();
        assert!(matches!(err, PciError::NoBarSpace { bar: 0, .. }), "{err}");
        bus.remove(1).unwrap();
        bus.add(Arc::new(Mutex::new(Echo::new(flag)))).unwrap();
    }

    #[test]
    fn layout_keeps_the_64_bit_window_above_ram() {
        assert_eq!(PciLayout::for_memory(1 << 30).mmio64.0, 64 * GIB);
        let big = PciLayout::for_memory(100 * GIB);
        assert!(big.mmio64.0 >= 4 * GIB + 97 * GIB);
        assert_eq!(big.mmio64.0 % GIB, 0);
    }
}
