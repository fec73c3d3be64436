//! virtio-net (virtio 1.x §5.1) over a [`NetBackend`] per queue pair:
//! MAC, link status, MTU, mergeable receive buffers, checksum and TSO
//! offloads passed through to backends that understand them, and
//! multiqueue with the control queue's `VQ_PAIRS_SET`.
//!
//! Transmit runs on the notifying vCPU thread (a tap write does not
//! block); each pair's receive side runs on its own thread, which waits
//! on the backend and on the driver's kicks (see `DESIGN.md`). Pausing
//! the device stops those threads and parks their queues, so that its
//! state (queue positions, pairs in use) can migrate.

mod backend;
mod rx;

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueT};
use virtkit_core::runtime::memory::GuestMem;

pub use backend::{
    open_tap, persist_tap, Disconnected, NetBackend, Offloads, TapBackend, NET_HDR_LEN,
};
use rx::{RxPath, RxSetup, MAX_FRAME};

use virtkit_core::runtime::StateError;

use super::{
    read_config_bytes, serve_queue, ActivateError, Activation, VirtioDevice, VirtioInterrupt,
    VIRTIO_F_RING_EVENT_IDX,
};

/// Virtio device type of a network device.
pub const DEVICE_TYPE: u16 = 1;
/// Feature: the device completes partial checksums of sent frames.
pub const F_CSUM: u64 = 1 << 0;
/// Feature: the driver completes partial checksums of received frames.
pub const F_GUEST_CSUM: u64 = 1 << 1;
/// Feature: the device reports its MTU.
pub const F_MTU: u64 = 1 << 3;
/// Feature: the device has a MAC address.
pub const F_MAC: u64 = 1 << 5;
/// Feature: the driver takes TCP/IPv4 segments larger than the MTU.
pub const F_GUEST_TSO4: u64 = 1 << 7;
/// Feature: the driver takes TCP/IPv6 segments larger than the MTU.
pub const F_GUEST_TSO6: u64 = 1 << 8;
/// Feature: the driver takes TSO segments with ECN.
pub const F_GUEST_ECN: u64 = 1 << 9;
/// Feature: the device segments TCP/IPv4 frames the driver sends.
pub const F_HOST_TSO4: u64 = 1 << 11;
/// Feature: the device segments TCP/IPv6 frames the driver sends.
pub const F_HOST_TSO6: u64 = 1 << 12;
/// Feature: the device segments frames with ECN.
pub const F_HOST_ECN: u64 = 1 << 13;
/// Feature: a received frame may span several buffers.
pub const F_MRG_RXBUF: u64 = 1 << 15;
/// Feature: the configuration has a link status.
pub const F_STATUS: u64 = 1 << 16;
/// Feature: the device has a control queue.
pub const F_CTRL_VQ: u64 = 1 << 17;
/// Feature: several queue pairs.
pub const F_MQ: u64 = 1 << 22;
/// Link status bit: up.
pub const S_LINK_UP: u16 = 1;
/// Most queue pairs (the transport takes at most 64 queues).
pub const MAX_QUEUE_PAIRS: u16 = 31;
const OFFLOADS: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN;
const CTRL_OK: u8 = 0;
const CTRL_ERR: u8 = 1;
const CTRL_CLASS_MQ: u8 = 4;
const CTRL_MQ_VQ_PAIRS_SET: u8 = 0;

/// How a virtio-net device is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The guest's MAC address.
    pub mac: [u8; 6],
    /// The MTU to report (`F_MTU`), if any.
    pub mtu: Option<u16>,
    /// Size of every queue.
    pub queue_size: u16,
}

impl NetConfig {
    /// A device with `mac`, no MTU advice and 256-entry queues (QEMU's
    /// default).
    pub fn new(mac: [u8; 6]) -> Self {
        NetConfig {
            mac,
            mtu: None,
            queue_size: 256,
        }
    }
}

/// Traffic counters of one device, shared with whoever built it.
#[derive(Debug, Default)]
pub struct NetCounters {
    /// Frames handed to the guest.
    pub rx_frames: AtomicU64,
    /// Their bytes, without the virtio-net header.
    pub rx_bytes: AtomicU64,
    /// Frames that could not be handed to the guest (larger than its
    /// buffers, or shorter than a header).
    pub rx_dropped: AtomicU64,
    /// Frames sent by the guest.
    pub tx_frames: AtomicU64,
    /// Their bytes, without the virtio-net header.
    pub tx_bytes: AtomicU64,
    /// Frames the guest sent that were malformed or that the backend
    /// refused.
    pub tx_dropped: AtomicU64,
}

/// Why a device could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetError {
    /// No backend, or more pairs than the transport can carry.
    #[error(
        "a virtio-net device takes 1 to {MAX_QUEUE_PAIRS} queue pairs (one backend each), not {0}"
    )]
    QueuePairs(usize),
}

/// A virtio network device.
pub struct VirtioNet {
    config: NetConfig,
    backends: Vec<Arc<dyn NetBackend>>,
    counters: Arc<NetCounters>,
    active: Option<Active>,
    /// The VM is paused: receive threads stay stopped.
    paused: bool,
    /// Pairs in use carried by a migration, for the activation that
    /// follows its restore.
    restored_pairs: Option<usize>,
}

impl std::fmt::Debug for VirtioNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioNet")
            .field("config", &self.config)
            .field("queue_pairs", &self.backends.len())
            .field("active", &self.active.is_some())
            .finish()
    }
}

/// The device once the driver set DRIVER_OK.
struct Active {
    memory: GuestMem,
    interrupt: Arc<dyn VirtioInterrupt>,
    /// Transmit queue of each pair (index 2·pair + 1).
    tx: Vec<Queue>,
    /// Receive side of each pair whose queue is ready.
    rx: Vec<Option<RxPath>>,
    /// The control queue and its index.
    ctrl: Option<(u16, Queue)>,
    /// Queue pairs the driver uses (`VQ_PAIRS_SET`).
    pairs_in_use: usize,
    /// Every queue's `(next_avail, next_used)` at activation: where the
    /// queues the device does not serve stay.
    initial: Vec<(u16, u16)>,
    /// Scratch buffer for one frame being sent.
    frame: Vec<u8>,
}

impl VirtioNet {
    /// A device with one queue pair per backend (several make it
    /// multiqueue: open the tap with `IFF_MULTI_QUEUE`, one descriptor
    /// per pair).
    pub fn new(config: NetConfig, backends: Vec<Arc<dyn NetBackend>>) -> Result<Self, NetError> {
        if backends.is_empty() || backends.len() > usize::from(MAX_QUEUE_PAIRS) {
            return Err(NetError::QueuePairs(backends.len()));
        }
        Ok(VirtioNet {
            config,
            backends,
            counters: Arc::default(),
            active: None,
            paused: false,
            restored_pairs: None,
        })
    }

    /// The device's traffic counters (they stay valid after the device
    /// moves into its transport).
    pub fn counters(&self) -> Arc<NetCounters> {
        self.counters.clone()
    }

    fn pairs(&self) -> u16 {
        self.backends.len() as u16
    }

    fn config_bytes(&self) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0..6].copy_from_slice(&self.config.mac);
        c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
        c[8..10].copy_from_slice(&self.pairs().to_le_bytes());
        c[10..12].copy_from_slice(&self.config.mtu.unwrap_or(0).to_le_bytes());
        c
    }

    /// Use the first `pairs` queue pairs and stop the rest; wake the
    /// receive threads so that they poll their backend again.
    fn enable_pairs(&mut self, pairs: usize) {
        if let Some(active) = self.active.as_mut() {
            active.pairs_in_use = pairs;
        }
        for (i, backend) in self.backends.iter().enumerate() {
            if let Err(e) = backend.set_enabled(i < pairs) {
                log::warn!("virtio-net: queue pair {i}: {e}");
            }
            if let Some(Some(worker)) = self.active.as_ref().and_then(|a| a.rx.get(i)) {
                worker.kick();
            }
        }
    }

    fn transmit(&mut self, pair: usize) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (Some(queue), Some(backend)) = (active.tx.get_mut(pair), self.backends.get(pair))
        else {
            return;
        };
        let (counters, frame) = (&self.counters, &mut active.frame);
        let index = (2 * pair + 1) as u16;
        serve_queue(
            queue,
            &active.memory,
            &*active.interrupt,
            index,
            "net",
            |memory, chain| {
                send_one(&**backend, counters, frame, memory, chain);
                0
            },
        );
    }

    fn control(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let Some((index, queue)) = active.ctrl.as_mut() else {
            return;
        };
        let pairs = self.backends.len();
        let mut requested = None;
        serve_queue(
            queue,
            &active.memory,
            &*active.interrupt,
            *index,
            "net",
            |memory, chain| {
                let (Ok(mut reader), Ok(mut writer)) =
                    (chain.clone().reader(memory), chain.writer(memory))
                else {
                    return 0;
                };
                let mut command = [0u8; 4];
                let ack = match reader.read(&mut command) {
                    Ok(4) if command[..2] == [CTRL_CLASS_MQ, CTRL_MQ_VQ_PAIRS_SET] => {
                        let n = usize::from(u16::from_le_bytes([command[2], command[3]]));
                        if (1..=pairs).contains(&n) {
                            requested = Some(n);
                            CTRL_OK
                        } else {
                            CTRL_ERR
                        }
                    }
                    _ => CTRL_ERR,
                };
                use std::io::Write;
                match writer.write_all(&[ack]) {
                    Ok(()) => 1,
                    Err(_) => 0,
                }
            },
        );
        if let Some(n) = requested {
            self.enable_pairs(n);
        }
    }
}

/// Send one chain's frame (header first) to `backend`.
fn send_one(
    backend: &dyn NetBackend,
    counters: &NetCounters,
    frame: &mut Vec<u8>,
    memory: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
) {
    let dropped = || counters.tx_dropped.fetch_add(1, Ordering::Relaxed);
    let Ok(mut reader) = chain.reader(memory) else {
        dropped();
        return;
    };
    let len = reader.available_bytes();
    if !(NET_HDR_LEN..=MAX_FRAME).contains(&len) {
        dropped();
        return;
    }
    frame.resize(len, 0);
    if reader.read_exact(frame).is_err() {
        dropped();
        return;
    }
    match backend.send(frame) {
        Ok(()) => {
            counters.tx_frames.fetch_add(1, Ordering::Relaxed);
            counters
                .tx_bytes
                .fetch_add((len - NET_HDR_LEN) as u64, Ordering::Relaxed);
        }
        Err(e) => {
            log::debug!("virtio-net: send failed: {e}");
            dropped();
        }
    }
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> [u8; 3] {
        [0x02, 0x00, 0x00]
    }

    fn name(&self) -> &str {
        "net"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        let queues = 2 * self.backends.len() + usize::from(self.pairs() > 1);
        vec![self.config.queue_size; queues]
    }

    fn features(&self) -> u64 {
        let mut f = F_MAC | F_STATUS | F_MRG_RXBUF | VIRTIO_F_RING_EVENT_IDX;
        if self.config.mtu.is_some() {
            f |= F_MTU;
        }
        if self.pairs() > 1 {
            f |= F_CTRL_VQ | F_MQ;
        }
        if self.backends.iter().all(|b| b.offloads_supported()) {
            f |= OFFLOADS;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        let restored_pairs = self.restored_pairs.take();
        self.reset();
        let features = activation.features;
        let offloads = Offloads {
            csum: features & F_GUEST_CSUM != 0,
            tso4: features & F_GUEST_TSO4 != 0,
            tso6: features & F_GUEST_TSO6 != 0,
            ecn: features & F_GUEST_ECN != 0,
        };
        // Without MQ only pair 0 exists for the driver, and the control
        // queue (if negotiated) is queue 2.
        let pairs = if features & F_MQ != 0 {
            self.backends.len()
        } else {
            1
        };
        let initial = activation
            .queues
            .iter()
            .map(|q| (q.next_avail(), q.next_used()))
            .collect();
        let mut queues: Vec<Option<Queue>> = activation.queues.into_iter().map(Some).collect();
        let ctrl = if features & F_CTRL_VQ != 0 {
            let index = 2 * pairs;
            queues
                .get_mut(index)
                .and_then(Option::take)
                .filter(|q| q.ready())
                .map(|q| (index as u16, q))
        } else {
            None
        };
        let mut tx = Vec::with_capacity(pairs);
        let mut rx = Vec::with_capacity(pairs);
        let offers_offloads = self.features() & OFFLOADS != 0;
        for (pair, backend) in self.backends.iter().take(pairs).enumerate() {
            if offers_offloads {
                backend.set_offloads(offloads).map_err(|e| {
                    ActivateError::Host(format!("queue pair {pair}: offloads: {e}"))
                })?;
            }
            let rx_queue = queues.get_mut(2 * pair).and_then(Option::take);
            let tx_queue = queues.get_mut(2 * pair + 1).and_then(Option::take);
            let (Some(rx_queue), Some(tx_queue)) = (rx_queue, tx_queue) else {
                return Err(ActivateError::BadQueue {
                    index: 2 * pair,
                    why: "the queue pair is missing".into(),
                });
            };
            if pair == 0 && !(rx_queue.ready() && tx_queue.ready()) {
                return Err(ActivateError::BadQueue {
                    index: 0,
                    why: "the first receive and transmit queues must be enabled".into(),
                });
            }
            rx.push(if rx_queue.ready() {
                let setup = RxSetup {
                    memory: activation.memory.clone(),
                    queue: rx_queue,
                    index: (2 * pair) as u16,
                    backend: backend.clone(),
                    interrupt: activation.interrupt.clone(),
                    counters: self.counters.clone(),
                    mergeable: features & F_MRG_RXBUF != 0,
                };
                Some(RxPath::new(setup, self.paused).map_err(|e| {
                    ActivateError::Host(format!("queue pair {pair}: receive thread: {e}"))
                })?)
            } else {
                None
            });
            tx.push(tx_queue);
        }
        self.active = Some(Active {
            memory: activation.memory,
            interrupt: activation.interrupt,
            tx,
            rx,
            ctrl,
            pairs_in_use: 1,
            initial,
            frame: Vec::with_capacity(MAX_FRAME),
        });
        // The driver starts on one pair until it asks for more; a
        // migrated driver goes on with what it had asked for.
        self.enable_pairs(restored_pairs.unwrap_or(1).clamp(1, pairs));
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        let Some(active) = self.active.as_ref() else {
            return;
        };
        let index = usize::from(index);
        if active
            .ctrl
            .as_ref()
            .is_some_and(|(i, _)| usize::from(*i) == index)
        {
            self.control();
        } else if index % 2 == 1 {
            self.transmit(index / 2);
        } else if let Some(Some(worker)) = active.rx.get(index / 2) {
            worker.kick();
        }
    }

    fn reset(&mut self) {
        // Dropping the workers stops and joins the receive threads.
        self.active = None;
        self.restored_pairs = None;
    }

    fn pause(&mut self) {
        self.paused = true;
        for rx in self
            .active
            .iter_mut()
            .flat_map(|a| a.rx.iter_mut().flatten())
        {
            rx.pause();
        }
    }

    fn resume(&mut self) -> Result<(), StateError> {
        self.paused = false;
        let mut first_error = None;
        for rx in self
            .active
            .iter_mut()
            .flat_map(|a| a.rx.iter_mut().flatten())
        {
            if let Err(e) = rx.resume() {
                first_error.get_or_insert(StateError::Host(format!("virtio-net: {e}")));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    // Transmit and control requests complete within the notify that
    // brings them; the receive side is parked while paused. So the queue
    // positions and the pairs in use are the whole state (a frame the
    // receive side had read but not delivered is dropped, as a link
    // would drop it).
    fn queue_positions(&self) -> Result<Vec<(u16, u16)>, StateError> {
        let Some(active) = self.active.as_ref() else {
            return Ok(Vec::new());
        };
        let mut positions = active.initial.clone();
        let mut set = |index: usize, at: (u16, u16)| {
            if let Some(p) = positions.get_mut(index) {
                *p = at;
            }
        };
        for (pair, rx) in active.rx.iter().enumerate() {
            if let Some(rx) = rx {
                set(2 * pair, rx.position()?);
            }
        }
        for (pair, tx) in active.tx.iter().enumerate() {
            set(2 * pair + 1, (tx.next_avail(), tx.next_used()));
        }
        if let Some((index, ctrl)) = &active.ctrl {
            set(usize::from(*index), (ctrl.next_avail(), ctrl.next_used()));
        }
        Ok(positions)
    }

    /// The pairs in use (little-endian `u16`) while the driver runs.
    fn config_state(&self) -> Vec<u8> {
        self.active
            .as_ref()
            .map(|a| (a.pairs_in_use as u16).to_le_bytes().to_vec())
            .unwrap_or_default()
    }

    fn restore_config_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        self.restored_pairs = match state {
            [] => None,
            [a, b] => {
                let pairs = usize::from(u16::from_le_bytes([*a, *b]));
                if !(1..=self.backends.len()).contains(&pairs) {
                    return Err(StateError::Corrupt(format!(
                        "virtio-net: the driver used {pairs} queue pairs, this device has {}",
                        self.backends.len()
                    )));
                }
                Some(pairs)
            }
            _ => {
                return Err(StateError::Corrupt(format!(
                    "virtio-net configuration state is {} bytes, expected 0 or 2",
                    state.len()
                )))
            }
        };
        Ok(())
    }
}
