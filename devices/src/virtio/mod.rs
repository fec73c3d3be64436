//! Virtio devices and their PCI transport. A [`VirtioDevice`] knows its
//! queues and configuration; [`pci::VirtioPciDevice`] makes it a PCI
//! function (virtio 1.x "modern" layout) and hands it the queues when the
//! driver sets DRIVER_OK.

pub mod block;
pub mod net;
pub mod pci;
pub mod scsi;

use std::sync::Arc;

use virtio_queue::Queue;
use virtkit_core::runtime::memory::GuestMem;
use virtkit_core::runtime::StateError;

/// Feature bit: virtio 1.x device (mandatory for the modern transport).
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Feature bit: used/avail event indexes.
pub const VIRTIO_F_RING_EVENT_IDX: u64 = 1 << 29;
/// Device status: the guest noticed the device.
pub const STATUS_ACKNOWLEDGE: u8 = 1;
/// Device status: the guest has a driver.
pub const STATUS_DRIVER: u8 = 2;
/// Device status: the driver is ready.
pub const STATUS_DRIVER_OK: u8 = 4;
/// Device status: feature negotiation is complete.
pub const STATUS_FEATURES_OK: u8 = 8;
/// Device status: the device hit an error and needs a reset.
pub const STATUS_NEEDS_RESET: u8 = 0x40;
/// Device status: the driver gave up.
pub const STATUS_FAILED: u8 = 0x80;
/// "No MSI-X vector" in the common configuration.
pub const NO_VECTOR: u16 = 0xffff;

/// How a device tells the driver that it used buffers or changed its
/// configuration.
pub trait VirtioInterrupt: Send + Sync {
    /// Buffers were used on queue `index`.
    fn queue(&self, index: u16);
    /// The device configuration changed.
    fn config_changed(&self);
}

/// Why a device could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActivateError {
    /// The driver left a queue the device needs unready or invalid.
    #[error("virtio queue {index} is not usable: {why}")]
    BadQueue {
        /// Queue index.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// A host resource could not be set up.
    #[error("{0}")]
    Host(String),
}

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    /// Guest memory.
    pub memory: GuestMem,
    /// Every queue, ready or not, in index order.
    pub queues: Vec<Queue>,
    /// Features both sides agreed on.
    pub features: u64,
    /// Where to signal used buffers.
    pub interrupt: Arc<dyn VirtioInterrupt>,
}

/// A virtio device behind a transport.
pub trait VirtioDevice: Send {
    /// Virtio device ID (1 net, 2 block, ...).
    fn device_type(&self) -> u16;
    /// PCI class code for the transport (base, sub, interface).
    fn pci_class(&self) -> [u8; 3];
    /// A short name for logs.
    fn name(&self) -> &str;
    /// The largest size of each queue; the count is the number of queues.
    fn queue_max_sizes(&self) -> Vec<u16>;
    /// Features the device offers (the transport adds VERSION_1).
    fn features(&self) -> u64;
    /// Driver read of device configuration at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Driver write of device configuration at `offset`.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    /// Start serving the queues.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver notified queue `index`.
    fn queue_notify(&mut self, index: u16);
    /// Stop and forget the queues (driver reset or unplug).
    fn reset(&mut self);
    /// Where each active queue stands, `(next_avail, next_used)` in queue
    /// order, for migration (the VM is paused). Called only while the
    /// device is active; the transport hands them back through
    /// [`VirtioDevice::activate`] on the target. A device with more state
    /// than its queues, or whose queues run on a worker it cannot stop,
    /// keeps the default, which refuses.
    fn queue_positions(&self) -> Result<Vec<(u16, u16)>, StateError> {
        Err(StateError::Unsupported(format!("virtio-{}", self.name())))
    }
    /// The VM is pausing: stop the workers that serve queues on their
    /// own threads, keeping the queues (see
    /// [`Snapshot::pause`](virtkit_core::runtime::Snapshot::pause)); a
    /// device activated while paused starts them only on
    /// [`VirtioDevice::resume`]. The default has no workers.
    fn pause(&mut self) {}
    /// The VM is resuming: start the workers again.
    fn resume(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// The disk images the device serves (see [`crate::pci::PciDevice::disks`]).
    fn disks(&self) -> Vec<Arc<dyn crate::block::BlockBackend>> {
        Vec::new()
    }
    /// What the driver changed in the device configuration (virtio-scsi's
    /// CDB and sense sizes), for migration; empty when nothing can change.
    fn config_state(&self) -> Vec<u8> {
        Vec::new()
    }
    /// Load what [`VirtioDevice::config_state`] returned.
    fn restore_config_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        if state.is_empty() {
            Ok(())
        } else {
            Err(StateError::Corrupt(format!(
                "virtio-{} has no configuration state, got {} bytes",
                self.name(),
                state.len()
            )))
        }
    }
}

/// A device's queues once the driver has set them up (DRIVER_OK).
pub(crate) struct ActiveQueues {
    memory: GuestMem,
    queues: Vec<Queue>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl ActiveQueues {
    /// Take `activation`'s queues; queue `required` must be enabled
    /// (`what` names it in the error).
    pub(crate) fn new(
        activation: Activation,
        required: usize,
        what: &str,
    ) -> Result<Self, ActivateError> {
        use virtio_queue::QueueT;
        if !activation.queues.get(required).is_some_and(|q| q.ready()) {
            return Err(ActivateError::BadQueue {
                index: required,
                why: format!("the {what} is not enabled"),
            });
        }
        Ok(ActiveQueues {
            memory: activation.memory,
            queues: activation.queues,
            interrupt: activation.interrupt,
        })
    }

    /// `(next_avail, next_used)` of every queue.
    pub(crate) fn positions(&self) -> Vec<(u16, u16)> {
        use virtio_queue::QueueT;
        self.queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect()
    }

    /// Serve every available chain of queue `index` with `serve`; see
    /// [`serve_queue`].
    pub(crate) fn serve(
        &mut self,
        index: u16,
        device: &str,
        serve: impl FnMut(&GuestMem, virtio_queue::DescriptorChain<&GuestMem>) -> u32,
    ) {
        if let Some(queue) = self.queues.get_mut(usize::from(index)) {
            serve_queue(queue, &self.memory, &*self.interrupt, index, device, serve);
        }
    }
}

/// Serve every available chain of `queue` (number `index`) with `serve`,
/// which returns the bytes it wrote into the chain; return each to the
/// driver and interrupt once if the driver asked to be told.
pub(crate) fn serve_queue(
    queue: &mut Queue,
    memory: &GuestMem,
    interrupt: &dyn VirtioInterrupt,
    index: u16,
    device: &str,
    mut serve: impl FnMut(&GuestMem, virtio_queue::DescriptorChain<&GuestMem>) -> u32,
) {
    use virtio_queue::QueueT;
    if !queue.ready() {
        return;
    }
    let mut used_any = false;
    // With EVENT_IDX the driver kicks only when its avail index passes
    // the `avail_event` we publish, so publish it (enable_notification)
    // after draining, and drain again if chains slipped in meanwhile.
    // Two rounds in a row that pop nothing while the index says there is
    // more mean a broken ring (pop refuses it): stop rather than spin.
    let mut empty_rounds = 0;
    'drain: loop {
        if let Err(e) = queue.disable_notification(memory) {
            log::warn!("virtio-{device}: queue {index}: {e}");
        }
        let mut popped = false;
        while let Some(chain) = queue.pop_descriptor_chain(memory) {
            popped = true;
            let head = chain.head_index();
            let written = serve(memory, chain);
            if let Err(e) = queue.add_used(memory, head, written) {
                log::warn!("virtio-{device}: could not return descriptor {head}: {e}");
                break 'drain;
            }
            used_any = true;
        }
        empty_rounds = if popped { 0 } else { empty_rounds + 1 };
        match queue.enable_notification(memory) {
            Ok(true) if empty_rounds < 2 => continue,
            Ok(_) => break,
            Err(e) => {
                log::warn!("virtio-{device}: queue {index}: {e}");
                break;
            }
        }
    }
    if used_any && queue.needs_notification(memory).unwrap_or(true) {
        interrupt.queue(index);
    }
}

/// Copy device configuration bytes from `config` at `offset` into `data`
/// (past its end reads as zeros).
pub(crate) fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = config.get(offset as usize + i).copied().unwrap_or(0);
    }
}
