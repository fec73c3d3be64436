//! virtio-scsi (virtio 1.x §5.6): a controller whose targets are
//! [`ScsiUnit`]s, one logical unit (LUN 0) per target. KubeVirt's
//! `bus: scsi` disks, its `cdrom`s and its `lun`s sit here. Requests are
//! served on the notifying thread, as virtio-blk's are.
//!
//! Queue 0 is the control queue (task management completes at once: every
//! command has already finished when the driver could abort it; event
//! subscriptions are answered with no events), queue 1 the event queue
//! (buffers are held; no hotplug events are sent), queues 2.. carry
//! commands.

use std::io::{Read, Write};

use virtio_queue::DescriptorChain;
use virtkit_core::runtime::memory::GuestMem;

use super::{
    read_config_bytes, ActivateError, Activation, ActiveQueues, VirtioDevice,
    VIRTIO_F_RING_EVENT_IDX,
};
use crate::scsi::{DataOut, ScsiUnit};

/// Virtio device type of a SCSI host.
pub const DEVICE_TYPE: u16 = 8;
const CONTROL_QUEUE: u16 = 0;
const EVENT_QUEUE: u16 = 1;
const FIRST_REQUEST_QUEUE: u16 = 2;
const DEFAULT_CDB_SIZE: u32 = 32;
const DEFAULT_SENSE_SIZE: u32 = 96;
const SEG_MAX: u32 = 126;
const MAX_SECTORS: u32 = 0x4000; // 8 MiB of 512-byte sectors, ScsiUnit's cap
const CMD_PER_LUN: u32 = 128;
/// Response codes.
const S_OK: u8 = 0;
const S_BAD_TARGET: u8 = 3;
const S_FAILURE: u8 = 9;
/// Control request types.
const T_TMF: u32 = 0;
const T_AN_QUERY: u32 = 1;
const T_AN_SUBSCRIBE: u32 = 2;

/// How a virtio-scsi controller is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiConfig {
    /// Request queues.
    pub queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
}

impl Default for ScsiConfig {
    fn default() -> Self {
        ScsiConfig {
            queues: 1,
            queue_size: 128,
        }
    }
}

/// A virtio-scsi controller.
pub struct VirtioScsi {
    targets: Vec<ScsiUnit>,
    config: ScsiConfig,
    cdb_size: u32,
    sense_size: u32,
    active: Option<ActiveQueues>,
}

impl std::fmt::Debug for VirtioScsi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioScsi")
            .field("targets", &self.targets)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl VirtioScsi {
    /// A controller with `targets` (target `i` is `targets[i]`, LUN 0).
    pub fn new(targets: Vec<ScsiUnit>, config: ScsiConfig) -> Self {
        VirtioScsi {
            targets,
            config: ScsiConfig {
                queues: config.queues.max(1),
                ..config
            },
            cdb_size: DEFAULT_CDB_SIZE,
            sense_size: DEFAULT_SENSE_SIZE,
            active: None,
        }
    }

    /// The unit at `target`, to open or close a CD-ROM tray.
    pub fn target_mut(&mut self, target: usize) -> Option<&mut ScsiUnit> {
        self.targets.get_mut(target)
    }

    fn config_bytes(&self) -> [u8; 36] {
        let mut c = [0u8; 36];
        let words = [
            u32::from(self.config.queues),
            SEG_MAX,
            MAX_SECTORS,
            CMD_PER_LUN,
            0, // event_info_size: no events are sent
            self.sense_size,
            self.cdb_size,
        ];
        for (i, w) in words.iter().enumerate() {
            c[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
        }
        let max_target = self.targets.len().saturating_sub(1) as u16;
        c[30..32].copy_from_slice(&max_target.to_le_bytes());
        c[32..36].copy_from_slice(&0u32.to_le_bytes()); // max_lun
        c
    }

    fn process(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        if index == EVENT_QUEUE {
            // Event buffers wait for events; none are produced.
            return;
        }
        let (targets, cdb, sense) = (
            &self.targets,
            self.cdb_size as usize,
            self.sense_size as usize,
        );
        active.serve(index, "scsi", |memory, chain| {
            if index == CONTROL_QUEUE {
                control(memory, chain)
            } else {
                command(targets, cdb, sense, memory, chain)
            }
        });
    }
}

/// Which target a virtio-scsi LUN field names (single-level LUN 0 only).
fn target_of(lun: &[u8; 8]) -> Option<usize> {
    let unit = (u16::from(lun[2] & 0x3f) << 8) | u16::from(lun[3]);
    (lun[0] == 1 && unit == 0).then_some(usize::from(lun[1]))
}

/// Serve one command; returns the bytes written into the chain.
fn command(
    targets: &[ScsiUnit],
    cdb_size: usize,
    sense_size: usize,
    memory: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
    else {
        log::warn!("virtio-scsi: malformed descriptor chain");
        return 0;
    };
    let resp_len = 12 + sense_size;
    let Ok(mut data_in) = writer.split_at(resp_len) else {
        log::warn!("virtio-scsi: request without room for a response");
        return 0;
    };
    let mut header = vec![0u8; 19 + cdb_size];
    let mut resp = vec![0u8; resp_len];
    if reader.read_exact(&mut header).is_err() {
        resp[11] = S_FAILURE;
    } else {
        let mut lun = [0u8; 8];
        lun.copy_from_slice(&header[..8]);
        match target_of(&lun).and_then(|t| targets.get(t)) {
            None => resp[11] = S_BAD_TARGET,
            Some(unit) => {
                let capacity = data_in.available_bytes();
                let mut out = ReaderOut(&mut reader);
                let outcome = unit.execute(&header[19..], &mut out, capacity);
                let written = match data_in.write_all(&outcome.data_in) {
                    Ok(()) => outcome.data_in.len(),
                    Err(_) => 0,
                };
                let resid = (capacity - written) as u32 + out.0.available_bytes() as u32;
                resp[4..8].copy_from_slice(&resid.to_le_bytes());
                resp[10] = outcome.status;
                resp[11] = S_OK;
                if let Some(sense) = outcome.sense {
                    let fixed = sense.to_fixed();
                    let n = fixed.len().min(sense_size);
                    resp[0..4].copy_from_slice(&(n as u32).to_le_bytes());
                    resp[12..12 + n].copy_from_slice(&fixed[..n]);
                }
            }
        }
    }
    let mut total = data_in.bytes_written() as u32;
    if writer.write_all(&resp).is_ok() {
        total += resp_len as u32;
    }
    total
}

/// A write's data-out, read from the chain as the unit consumes it.
struct ReaderOut<'a, 'b>(
    &'a mut virtio_queue::Reader<'b, vm_memory::bitmap::BS<'b, vm_memory::bitmap::AtomicBitmap>>,
);

impl DataOut for ReaderOut<'_, '_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> std::io::Result<()> {
        Read::read_exact(self.0, buf)
    }
    fn available(&self) -> usize {
        self.0.available_bytes()
    }
}

/// Serve one control request.
fn control(memory: &GuestMem, chain: DescriptorChain<&GuestMem>) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
    else {
        return 0;
    };
    let mut kind = [0u8; 4];
    if reader.read_exact(&mut kind).is_err() {
        return 0;
    }
    let resp: Vec<u8> = match u32::from_le_bytes(kind) {
        // Every command completes before the driver could abort it.
        T_TMF => vec![S_OK],
        // No asynchronous events are supported: event_actual = 0.
        T_AN_QUERY | T_AN_SUBSCRIBE => vec![0, 0, 0, 0, S_OK],
        other => {
            log::warn!("virtio-scsi: unknown control request {other}");
            vec![S_FAILURE]
        }
    };
    let n = resp.len().min(writer.available_bytes());
    match writer.write_all(&resp[..n]) {
        Ok(()) => n as u32,
        Err(_) => 0,
    }
}

impl VirtioDevice for VirtioScsi {
    fn disks(&self) -> Vec<std::sync::Arc<dyn crate::block::BlockBackend>> {
        self.targets.iter().map(|t| t.backend().clone()).collect()
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> [u8; 3] {
        [0x01, 0x00, 0x00]
    }

    fn name(&self) -> &str {
        "scsi"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; usize::from(FIRST_REQUEST_QUEUE + self.config.queues)]
    }

    fn features(&self) -> u64 {
        VIRTIO_F_RING_EVENT_IDX
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The driver may set sense_size (20) and cdb_size (24).
        if data.len() != 4 {
            return;
        }
        let v = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        match offset {
            20 => self.sense_size = v.clamp(18, 252),
            24 => self.cdb_size = v.clamp(16, 252),
            _ => {}
        }
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(
            activation,
            usize::from(FIRST_REQUEST_QUEUE),
            "first request queue",
        )?);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        self.process(index);
    }

    fn reset(&mut self) {
        self.active = None;
        self.cdb_size = DEFAULT_CDB_SIZE;
        self.sense_size = DEFAULT_SENSE_SIZE;
    }

    // Commands complete within the notify that brings them (sense goes
    // back in each response), so the queue positions and the two sizes
    // the driver may set are all the state there is.
    fn queue_positions(&self) -> Result<Vec<(u16, u16)>, virtkit_core::runtime::StateError> {
        Ok(self
            .active
            .as_ref()
            .map(|a| a.positions())
            .unwrap_or_default())
    }

    fn config_state(&self) -> Vec<u8> {
        [self.cdb_size, self.sense_size]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect()
    }

    fn restore_config_state(
        &mut self,
        state: &[u8],
    ) -> Result<(), virtkit_core::runtime::StateError> {
        let [a, b, c, d, e, f, g, h] = state else {
            return Err(virtkit_core::runtime::StateError::Corrupt(format!(
                "virtio-scsi configuration state is {} bytes, expected 8",
                state.len()
            )));
        };
        // The same bounds as a driver's write.
        self.cdb_size = u32::from_le_bytes([*a, *b, *c, *d]).clamp(16, 252);
        self.sense_size = u32::from_le_bytes([*e, *f, *g, *h]).clamp(18, 252);
        Ok(())
    }
}
