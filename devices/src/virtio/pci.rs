//! The virtio-pci modern transport (virtio 1.x §4.1): one 32 KiB memory
//! BAR holding the common configuration, ISR, device configuration and
//! notification regions, and the MSI-X table and PBA; vendor capabilities
//! that point the driver at each region.

use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use virtkit_core::runtime::memory::GuestMem;
use virtkit_core::runtime::StateError;

use super::{
    Activation, VirtioDevice, VirtioInterrupt, NO_VECTOR, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, STATUS_NEEDS_RESET, VIRTIO_F_VERSION_1,
};
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::msix::{MsiSink, MsixTable};
use crate::pci::{BarSpec, PciDevice};

/// Size of the transport's BAR 0.
pub const BAR_SIZE: u64 = 0x8000;
/// Common configuration region offset in BAR 0.
pub const COMMON_OFFSET: u64 = 0x0000;
/// ISR status region offset.
pub const ISR_OFFSET: u64 = 0x1000;
/// Device configuration region offset.
pub const DEVICE_OFFSET: u64 = 0x2000;
/// Notification region offset.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_MULTIPLIER: u32 = 4;
/// MSI-X table offset.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// MSI-X PBA offset.
pub const MSIX_PBA_OFFSET: u64 = 0x6000;
const REGION_LEN: u64 = 0x1000;
const VENDOR_CAP: u8 = 0x09;
const CAP_COMMON: u8 = 1;
const CAP_NOTIFY: u8 = 2;
const CAP_ISR: u8 = 3;
const CAP_DEVICE: u8 = 4;
/// PCI vendor ID of virtio devices.
pub const VIRTIO_VENDOR: u16 = 0x1af4;
/// Modern device IDs are 0x1040 + the virtio device type.
pub const MODERN_DEVICE_BASE: u16 = 0x1040;

/// Interrupt state shared between the transport and the device's workers.
struct Signals {
    msix: Mutex<MsixTable>,
    isr: AtomicU8,
    config_vector: AtomicU16,
    queue_vectors: Vec<AtomicU16>,
}

impl Signals {
    fn raise(&self, vector: u16, isr_bit: u8) {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            self.msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .trigger(vector);
        }
    }
}

impl VirtioInterrupt for Signals {
    fn queue(&self, index: u16) {
        let vector = self
            .queue_vectors
            .get(usize::from(index))
            .map_or(NO_VECTOR, |v| v.load(Ordering::SeqCst));
        self.raise(vector, 1);
    }

    fn config_changed(&self) {
        self.raise(self.config_vector.load(Ordering::SeqCst), 2);
    }
}

/// A [`VirtioDevice`] as a PCI function.
pub struct VirtioPciDevice {
    config: ConfigSpace,
    device: Box<dyn VirtioDevice>,
    name: String,
    memory: GuestMem,
    signals: Arc<Signals>,
    queues: Vec<Queue>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    config_generation: u8,
    active: bool,
    rom: Option<Vec<u8>>,
}

impl std::fmt::Debug for VirtioPciDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciDevice")
            .field("device", &self.name)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why a transport could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// A queue's maximum size is not a power of two in 1..=32768.
    #[error("virtio queue {index} has maximum size {size}; it must be a power of two up to 32768")]
    BadQueueSize {
        /// Queue index.
        index: usize,
        /// The size.
        size: u16,
    },
    /// More queues than MSI-X vectors fit.
    #[error("{queues} virtio queues is more than the transport supports (at most 64)")]
    TooManyQueues {
        /// How many were asked for.
        queues: usize,
    },
}

impl VirtioPciDevice {
    /// Wrap `device`; `memory` is the guest's memory, `msi` where MSI-X
    /// messages go (the VM's `Interrupts`).
    pub fn new(
        device: Box<dyn VirtioDevice>,
        memory: GuestMem,
        msi: Arc<dyn MsiSink>,
    ) -> Result<Self, TransportError> {
        let max_sizes = device.queue_max_sizes();
        if max_sizes.len() > 64 {
            return Err(TransportError::TooManyQueues {
                queues: max_sizes.len(),
            });
        }
        let mut queues = Vec::with_capacity(max_sizes.len());
        for (index, &size) in max_sizes.iter().enumerate() {
            queues
                .push(Queue::new(size).map_err(|_| TransportError::BadQueueSize { index, size })?);
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: VIRTIO_VENDOR,
            device: MODERN_DEVICE_BASE + device.device_type(),
            subsystem_vendor: VIRTIO_VENDOR,
            subsystem: 0x1100,
            class: device.pci_class(),
            revision: 1,
        });
        for (kind, offset) in [
            (CAP_COMMON, COMMON_OFFSET),
            (CAP_ISR, ISR_OFFSET),
            (CAP_DEVICE, DEVICE_OFFSET),
        ] {
            config.add_capability(VENDOR_CAP, &virtio_cap(16, kind, offset, REGION_LEN), &[]);
        }
        let mut notify = virtio_cap(20, CAP_NOTIFY, NOTIFY_OFFSET, REGION_LEN);
        notify.extend_from_slice(&NOTIFY_MULTIPLIER.to_le_bytes());
        config.add_capability(VENDOR_CAP, &notify, &[]);
        let vectors = max_sizes.len() as u16 + 1;
        // Capacity: four 20-byte vendor caps and MSI-X fit the 192 bytes.
        let msix = MsixTable::new(
            &mut config,
            vectors,
            0,
            MSIX_TABLE_OFFSET as u32,
            MSIX_PBA_OFFSET as u32,
            msi,
        )
        .ok_or(TransportError::TooManyQueues {
            queues: max_sizes.len(),
        })?;
        let signals = Arc::new(Signals {
            msix: Mutex::new(msix),
            isr: AtomicU8::new(0),
            config_vector: AtomicU16::new(NO_VECTOR),
            queue_vectors: max_sizes
                .iter()
                .map(|_| AtomicU16::new(NO_VECTOR))
                .collect(),
        });
        let name = format!("virtio-{}", device.name());
        Ok(VirtioPciDevice {
            config,
            device,
            name,
            memory,
            signals,
            queues,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            status: 0,
            queue_select: 0,
            config_generation: 0,
            active: false,
            rom: None,
        })
    }

    /// Give the function an expansion ROM (an option ROM such as iPXE's
    /// `efi-virtio.rom`), served behind its ROM BAR. Set it before the
    /// device is added to the bus, which places the BAR.
    pub fn with_rom(mut self, rom: Vec<u8>) -> Self {
        self.rom = Some(rom);
        self
    }

    /// The device status byte the driver last set.
    pub fn status(&self) -> u8 {
        self.status
    }

    fn offered(&self) -> u64 {
        self.device.features() | VIRTIO_F_VERSION_1
    }

    fn reset(&mut self) {
        if self.active {
            self.device.reset();
            self.active = false;
        }
        for q in &mut self.queues {
            q.reset();
        }
        for v in &self.signals.queue_vectors {
            v.store(NO_VECTOR, Ordering::SeqCst);
        }
        self.signals
            .config_vector
            .store(NO_VECTOR, Ordering::SeqCst);
        self.signals.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.status = 0;
        self.queue_select = 0;
    }

    fn set_status(&mut self, value: u8) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0 && self.status & STATUS_FEATURES_OK == 0 {
            let acked = self.driver_features;
            if acked & !self.offered() != 0 || acked & VIRTIO_F_VERSION_1 == 0 {
                log::warn!(
                    "{}: driver accepted features {acked:#x} of {:#x}; refusing FEATURES_OK",
                    self.name,
                    self.offered()
                );
                value &= !STATUS_FEATURES_OK;
            }
        }
        self.status = value;
        if value & STATUS_DRIVER_OK != 0 && value & STATUS_FAILED == 0 && !self.active {
            self.activate();
        }
    }

    fn activate(&mut self) {
        for (index, q) in self.queues.iter().enumerate() {
            if q.ready() && !q.is_valid(&self.memory) {
                log::warn!("{}: queue {index} is not valid", self.name);
                self.needs_reset();
                return;
            }
        }
        let event_idx = self.driver_features & super::VIRTIO_F_RING_EVENT_IDX != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, q) in self.queues.iter().enumerate() {
            let mut state = q.state();
            state.event_idx_enabled = event_idx;
            match Queue::try_from(state) {
                Ok(q) => queues.push(q),
                Err(e) => {
                    log::warn!("{}: queue {index}: {e}", self.name);
                    self.needs_reset();
                    return;
                }
            }
        }
        let activation = Activation {
            memory: self.memory.clone(),
            queues,
            features: self.driver_features,
            interrupt: self.signals.clone(),
        };
        match self.device.activate(activation) {
            Ok(()) => self.active = true,
            Err(e) => {
                log::warn!("{}: activation failed: {e}", self.name);
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= STATUS_NEEDS_RESET;
        self.signals.config_changed();
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn common_read(&mut self, offset: u64) -> u64 {
        let q = usize::from(self.queue_select);
        match offset {
            0x00 => u64::from(self.device_feature_select),
            0x04 => match self.device_feature_select {
                0 => self.offered() & 0xffff_ffff,
                1 => self.offered() >> 32,
                _ => 0,
            },
            0x08 => u64::from(self.driver_feature_select),
            0x0c => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            0x10 => u64::from(self.signals.config_vector.load(Ordering::SeqCst)),
            0x12 => self.queues.len() as u64,
            0x14 => u64::from(self.status),
            0x15 => u64::from(self.config_generation),
            0x16 => u64::from(self.queue_select),
            0x18 => self.queues.get(q).map_or(0, |q| u64::from(q.size())),
            0x1a => self
                .signals
                .queue_vectors
                .get(q)
                .map_or(u64::from(NO_VECTOR), |v| {
                    u64::from(v.load(Ordering::SeqCst))
                }),
            0x1c => self.queues.get(q).map_or(0, |q| u64::from(q.ready())),
            0x1e => self.queues.get(q).map_or(0, |_| q as u64),
            0x20 => self.queues.get(q).map_or(0, |q| q.desc_table()),
            0x28 => self.queues.get(q).map_or(0, |q| q.avail_ring()),
            0x30 => self.queues.get(q).map_or(0, |q| q.used_ring()),
            _ => 0,
        }
    }

    fn common_write(&mut self, offset: u64, value: u64, len: usize) {
        let (low, high) = (
            Some(value as u32),
            (len == 8).then_some((value >> 32) as u32),
        );
        // Queue setup is frozen once the driver is running.
        let can_setup = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x00 => self.device_feature_select = value as u32,
            0x08 => self.driver_feature_select = value as u32,
            0x0c if self.status & STATUS_FEATURES_OK == 0 => match self.driver_feature_select {
                0 => {
                    self.driver_features =
                        (self.driver_features & !0xffff_ffff) | (value & 0xffff_ffff)
                }
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32),
                _ => {}
            },
            0x10 => self.set_config_vector(value as u16),
            0x14 => self.set_status(value as u8),
            0x16 => self.queue_select = value as u16,
            0x18 if can_setup => {
                let size = value as u16;
                if let Some(q) = self.selected() {
                    q.set_size(size);
                }
            }
            0x1a => self.set_queue_vector(value as u16),
            0x1c if can_setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(value == 1);
                }
            }
            0x20 | 0x24 if can_setup => {
                let (l, h) = if offset == 0x24 {
                    (None, low)
                } else {
                    (low, high)
                };
                if let Some(q) = self.selected() {
                    q.set_desc_table_address(l, h);
                }
            }
            0x28 | 0x2c if can_setup => {
                let (l, h) = if offset == 0x2c {
                    (None, low)
                } else {
                    (low, high)
                };
                if let Some(q) = self.selected() {
                    q.set_avail_ring_address(l, h);
                }
            }
            0x30 | 0x34 if can_setup => {
                let (l, h) = if offset == 0x34 {
                    (None, low)
                } else {
                    (low, high)
                };
                if let Some(q) = self.selected() {
                    q.set_used_ring_address(l, h);
                }
            }
            _ => {}
        }
    }

    /// A vector the table does not have reads back as NO_VECTOR, telling
    /// the driver the assignment failed.
    fn checked_vector(&self, vector: u16) -> u16 {
        let count = self.signals.queue_vectors.len() as u16 + 1;
        if vector < count {
            vector
        } else {
            NO_VECTOR
        }
    }

    fn set_config_vector(&mut self, vector: u16) {
        let v = self.checked_vector(vector);
        self.signals.config_vector.store(v, Ordering::SeqCst);
    }

    fn set_queue_vector(&mut self, vector: u16) {
        let v = self.checked_vector(vector);
        if let Some(slot) = self
            .signals
            .queue_vectors
            .get(usize::from(self.queue_select))
        {
            slot.store(v, Ordering::SeqCst);
        }
    }
}

fn virtio_cap(cap_len: u8, kind: u8, offset: u64, len: u64) -> Vec<u8> {
    let mut body = vec![cap_len, kind, 0, 0, 0, 0];
    body.extend_from_slice(&(offset as u32).to_le_bytes());
    body.extend_from_slice(&(len as u32).to_le_bytes());
    body
}

fn to_u64(data: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data.len().min(8);
    b[..n].copy_from_slice(&data[..n]);
    u64::from_le_bytes(b)
}

impl PciDevice for VirtioPciDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn bars(&self) -> Vec<(usize, BarSpec)> {
        vec![(0, BarSpec::memory32(BAR_SIZE))]
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, _offset: usize, _len: usize) {
        let config = &self.config;
        self.signals
            .msix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .config_written(config);
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < ISR_OFFSET => {
                let v = self.common_read(o).to_le_bytes();
                let n = data.len().min(8);
                data[..n].copy_from_slice(&v[..n]);
            }
            o if o < DEVICE_OFFSET => {
                data.fill(0);
                if o == ISR_OFFSET {
                    // Reading ISR acknowledges it.
                    data[0] = self.signals.isr.swap(0, Ordering::SeqCst);
                }
            }
            o if o < NOTIFY_OFFSET => self.device.read_config(o - DEVICE_OFFSET, data),
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .signals
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_table(o - MSIX_TABLE_OFFSET, data),
            o if o >= MSIX_PBA_OFFSET => self
                .signals
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .read_pba(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < ISR_OFFSET => self.common_write(o, to_u64(data), data.len()),
            o if (DEVICE_OFFSET..NOTIFY_OFFSET).contains(&o) => {
                self.device.write_config(o - DEVICE_OFFSET, data);
                self.config_generation = self.config_generation.wrapping_add(1);
            }
            o if (NOTIFY_OFFSET..NOTIFY_OFFSET + REGION_LEN).contains(&o) => {
                let index = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as u16;
                if self.active && usize::from(index) < self.queues.len() {
                    self.device.queue_notify(index);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => self
                .signals
                .msix
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_table(o - MSIX_TABLE_OFFSET, data),
            _ => {}
        }
    }

    fn rom(&self) -> Option<&[u8]> {
        self.rom.as_deref()
    }

    fn removed(&mut self) {
        self.reset();
    }

    fn pause(&mut self) {
        self.device.pause();
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.device.resume()
    }

    fn disks(&self) -> Vec<Arc<dyn crate::block::BlockBackend>> {
        self.device.disks()
    }

    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let positions = if self.active {
            self.device.queue_positions()?
        } else {
            self.queues
                .iter()
                .map(|q| (q.next_avail(), q.next_used()))
                .collect()
        };
        if positions.len() != self.queues.len() {
            return Err(StateError::Corrupt(format!(
                "{} reports {} queue positions for {} queues",
                self.name,
                positions.len(),
                self.queues.len()
            )));
        }
        let queues = self
            .queues
            .iter()
            .zip(&self.signals.queue_vectors)
            .zip(positions)
            .map(|((q, vector), (next_avail, next_used))| QueueStateV1 {
                vector: vector.load(Ordering::SeqCst),
                size: q.size(),
                ready: q.ready(),
                desc: q.desc_table(),
                avail: q.avail_ring(),
                used: q.used_ring(),
                next_avail,
                next_used,
            })
            .collect();
        let (msix_entries, msix_pending) = self
            .signals
            .msix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saved();
        let state = TransportStateV1 {
            device_type: self.device.device_type(),
            device_feature_select: self.device_feature_select,
            driver_feature_select: self.driver_feature_select,
            driver_features: self.driver_features,
            status: self.status,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            isr: self.signals.isr.load(Ordering::SeqCst),
            config_vector: self.signals.config_vector.load(Ordering::SeqCst),
            active: self.active,
            queues,
            msix_entries,
            msix_pending,
            device: self.device.config_state(),
        };
        crate::state::encode(TRANSPORT_MAGIC, 1, &state)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (_, s): (u32, TransportStateV1) = crate::state::decode(state, TRANSPORT_MAGIC, 1..=1)?;
        let name = self.name.clone();
        let corrupt = move |why: String| StateError::Corrupt(format!("{name}: {why}"));
        if s.device_type != self.device.device_type() || s.queues.len() != self.queues.len() {
            return Err(corrupt(format!(
                "state of virtio device type {} with {} queues, this is type {} with {}",
                s.device_type,
                s.queues.len(),
                self.device.device_type(),
                self.queues.len()
            )));
        }
        if let Some((i, q)) = s
            .queues
            .iter()
            .enumerate()
            .find(|(i, q)| q.size > self.queues[*i].max_size() || !q.size.is_power_of_two())
        {
            return Err(corrupt(format!("queue {i} has size {}", q.size)));
        }
        self.reset();
        self.device.restore_config_state(&s.device)?;
        self.signals
            .msix
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .restore(&s.msix_entries, &s.msix_pending, &self.config)
            .map_err(&corrupt)?;
        for ((q, vector), saved) in self
            .queues
            .iter_mut()
            .zip(&self.signals.queue_vectors)
            .zip(&s.queues)
        {
            vector.store(saved.vector, Ordering::SeqCst);
            q.set_size(saved.size);
            q.set_desc_table_address(Some(saved.desc as u32), Some((saved.desc >> 32) as u32));
            q.set_avail_ring_address(Some(saved.avail as u32), Some((saved.avail >> 32) as u32));
            q.set_used_ring_address(Some(saved.used as u32), Some((saved.used >> 32) as u32));
            q.set_next_avail(saved.next_avail);
            q.set_next_used(saved.next_used);
            q.set_ready(saved.ready);
        }
        self.device_feature_select = s.device_feature_select;
        self.driver_feature_select = s.driver_feature_select;
        self.driver_features = s.driver_features;
        self.queue_select = s.queue_select;
        self.config_generation = s.config_generation;
        self.signals.isr.store(s.isr, Ordering::SeqCst);
        self.signals
            .config_vector
            .store(s.config_vector, Ordering::SeqCst);
        self.status = s.status;
        if s.active {
            // Hand the queues, at their saved positions, to the device.
            self.activate();
            if !self.active {
                return Err(corrupt(
                    "its queues could not be started on the target".into(),
                ));
            }
        }
        Ok(())
    }
}

const TRANSPORT_MAGIC: [u8; 8] = *b"VKVIRTIO";

/// The transport's registers, queues and MSI-X table, version 1.
#[derive(serde::Serialize, serde::Deserialize)]
struct TransportStateV1 {
    device_type: u16,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    queue_select: u16,
    config_generation: u8,
    isr: u8,
    config_vector: u16,
    active: bool,
    queues: Vec<QueueStateV1>,
    msix_entries: Vec<[u32; 4]>,
    msix_pending: Vec<u64>,
    /// [`VirtioDevice::config_state`].
    device: Vec<u8>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct QueueStateV1 {
    vector: u16,
    size: u16,
    ready: bool,
    desc: u64,
    avail: u64,
    used: u64,
    next_avail: u16,
    next_used: u16,
}

/// What a guest driver does to bring up queue 0 of a modern virtio-pci
/// device: reset, ACKNOWLEDGE | DRIVER, offer `features` (VERSION_1 is
/// added), FEATURES_OK, queue 0 of `size` entries at the given ring
/// addresses, enable, DRIVER_OK. For tests, fuzzing and benchmarks that
/// stand in for a guest; returns the device status afterwards.
pub fn driver_init_queue0(
    dev: &mut dyn PciDevice,
    features: u64,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
) -> u8 {
    driver_init_queues(
        dev,
        features,
        &[QueueRings {
            size,
            desc,
            avail,
            used,
        }],
    )
}

/// Where a driver placed one queue's rings, for [`driver_init_queues`].
#[derive(Debug, Clone, Copy)]
pub struct QueueRings {
    /// Entries.
    pub size: u16,
    /// Descriptor table.
    pub desc: u64,
    /// Available ring.
    pub avail: u64,
    /// Used ring.
    pub used: u64,
}

/// [`driver_init_queue0`] for queues 0, 1, … in order (a virtio-net
/// driver needs its receive and transmit queues both).
pub fn driver_init_queues(dev: &mut dyn PciDevice, features: u64, queues: &[QueueRings]) -> u8 {
    let features = features | VIRTIO_F_VERSION_1;
    let mut w = |offset: u64, v: &[u8]| dev.bar_write(0, COMMON_OFFSET + offset, v);
    w(0x14, &[0]);
    w(0x14, &[1]);
    w(0x14, &[3]);
    w(0x08, &0u32.to_le_bytes());
    w(0x0c, &(features as u32).to_le_bytes());
    w(0x08, &1u32.to_le_bytes());
    w(0x0c, &((features >> 32) as u32).to_le_bytes());
    w(0x14, &[0xb]);
    for (index, q) in queues.iter().enumerate() {
        w(0x16, &(index as u16).to_le_bytes());
        w(0x18, &q.size.to_le_bytes());
        w(0x20, &q.desc.to_le_bytes());
        w(0x28, &q.avail.to_le_bytes());
        w(0x30, &q.used.to_le_bytes());
        w(0x1c, &1u16.to_le_bytes());
    }
    w(0x14, &[0xf]);
    let mut status = [0u8];
    dev.bar_read(0, COMMON_OFFSET + 0x14, &mut status);
    status[0]
}
