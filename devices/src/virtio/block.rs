//! virtio-blk (virtio 1.x §5.2) over a [`BlockBackend`]: read, write,
//! flush, get-id, discard and write-zeroes, read-only disks, one or more
//! request queues. Requests are served on the thread that notifies (the
//! vCPU), which keeps the device free of its own event loop; see
//! `DESIGN.md`.

use std::io::{self, Read, Write};
use std::sync::Arc;

use virtio_queue::DescriptorChain;
use virtkit_core::runtime::memory::GuestMem;

use super::{
    read_config_bytes, ActivateError, Activation, ActiveQueues, VirtioDevice,
    VIRTIO_F_RING_EVENT_IDX,
};
use crate::block::BlockBackend;

/// Virtio device type of a block device.
pub const DEVICE_TYPE: u16 = 2;
/// Bytes per virtio-blk sector.
pub const SECTOR_SIZE: u64 = 512;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Length of the device ID returned by GET_ID.
pub const ID_LEN: usize = 20;
const SEG_MAX: u32 = 126;
const MAX_DISCARD_SECTORS: u32 = u32::MAX / 512;
const MAX_DISCARD_SEG: u32 = 32;
const CHUNK: usize = 1 << 20;

/// How a virtio-blk device is set up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// The disk's serial number, returned by GET_ID (KubeVirt `serial`;
    /// at most 20 bytes are visible).
    pub serial: String,
    /// Request queues (KubeVirt gives one per vCPU with
    /// `blockMultiQueue`).
    pub queues: u16,
    /// Size of each queue.
    pub queue_size: u16,
}

impl Default for BlockConfig {
    fn default() -> Self {
        BlockConfig {
            serial: String::new(),
            queues: 1,
            queue_size: 256,
        }
    }
}

/// A virtio block device.
pub struct VirtioBlock {
    backend: Arc<dyn BlockBackend>,
    config: BlockConfig,
    active: Option<ActiveQueues>,
}

impl std::fmt::Debug for VirtioBlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("config", &self.config)
            .field("size", &self.backend.size())
            .field("active", &self.active.is_some())
            .finish()
    }
}

impl VirtioBlock {
    /// A block device serving `backend`.
    pub fn new(backend: Arc<dyn BlockBackend>, config: BlockConfig) -> Self {
        let config = BlockConfig {
            queues: config.queues.max(1),
            ..config
        };
        VirtioBlock {
            backend,
            config,
            active: None,
        }
    }

    fn config_bytes(&self) -> [u8; 60] {
        let mut c = [0u8; 60];
        let put = |c: &mut [u8; 60], at: usize, v: &[u8]| c[at..at + v.len()].copy_from_slice(v);
        put(
            &mut c,
            0,
            &(self.backend.size() / SECTOR_SIZE).to_le_bytes(),
        );
        put(&mut c, 12, &SEG_MAX.to_le_bytes());
        put(&mut c, 20, &(SECTOR_SIZE as u32).to_le_bytes());
        put(&mut c, 34, &self.config.queues.to_le_bytes());
        put(&mut c, 36, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(&mut c, 40, &MAX_DISCARD_SEG.to_le_bytes());
        put(&mut c, 44, &1u32.to_le_bytes());
        put(&mut c, 48, &MAX_DISCARD_SECTORS.to_le_bytes());
        put(&mut c, 52, &MAX_DISCARD_SEG.to_le_bytes());
        c[56] = 1; // write_zeroes_may_unmap
        c
    }

    /// Serve every available request of queue `index`.
    fn process(&mut self, index: u16) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let (backend, serial) = (&*self.backend, &self.config.serial);
        active.serve(index, "blk", |memory, chain| {
            serve(backend, serial, memory, chain)
        });
    }
}

/// Serve one request; returns the bytes written into the chain.
fn serve(
    backend: &dyn BlockBackend,
    serial: &str,
    memory: &GuestMem,
    chain: DescriptorChain<&GuestMem>,
) -> u32 {
    let (Ok(mut reader), Ok(mut writer)) = (chain.clone().reader(memory), chain.writer(memory))
    else {
        log::warn!("virtio-blk: malformed descriptor chain");
        return 0;
    };
    let Some(status_at) = writer.available_bytes().checked_sub(1) else {
        log::warn!("virtio-blk: request without a status byte");
        return 0;
    };
    let Ok(mut status_writer) = writer.split_at(status_at) else {
        return 0;
    };
    let mut header = [0u8; 16];
    let status = match reader.read_exact(&mut header) {
        Err(_) => S_IOERR,
        Ok(()) => {
            let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
            let mut sector = [0u8; 8];
            sector.copy_from_slice(&header[8..16]);
            let offset = u64::from_le_bytes(sector).checked_mul(SECTOR_SIZE);
            match execute(backend, serial, kind, offset, &mut reader, &mut writer) {
                Ok(status) => status,
                Err(e) => {
                    log::warn!("virtio-blk: request type {kind} failed: {e}");
                    S_IOERR
                }
            }
        }
    };
    let written = writer.bytes_written() as u32;
    match status_writer.write_all(&[status]) {
        Ok(()) => written + 1,
        Err(_) => written,
    }
}

/// Run `step` over `len` bytes from disk offset `start` in chunks of at
/// most [`CHUNK`], through one reused buffer.
fn in_chunks(
    len: usize,
    start: u64,
    mut step: impl FnMut(&mut [u8], u64) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(CHUNK)];
    let (mut at, mut left) = (start, len);
    while left > 0 {
        let n = left.min(CHUNK);
        step(&mut buf[..n], at)?;
        at += n as u64;
        left -= n;
    }
    Ok(())
}

fn execute(
    backend: &dyn BlockBackend,
    serial: &str,
    kind: u32,
    offset: Option<u64>,
    reader: &mut virtio_queue::Reader<
        '_,
        vm_memory::bitmap::BS<'_, vm_memory::bitmap::AtomicBitmap>,
    >,
    writer: &mut virtio_queue::Writer<
        '_,
        vm_memory::bitmap::BS<'_, vm_memory::bitmap::AtomicBitmap>,
    >,
) -> io::Result<u8> {
    let in_range = |len: usize| {
        offset
            .and_then(|o| o.checked_add(len as u64))
            .is_some_and(|end| end <= backend.size())
            && len as u64 % SECTOR_SIZE == 0
    };
    let read_only = backend.read_only();
    Ok(match kind {
        T_IN => {
            let len = writer.available_bytes();
            if !in_range(len) {
                return Ok(S_IOERR);
            }
            in_chunks(len, offset.unwrap_or(0), |buf, at| {
                backend.read_at(buf, at)?;
                writer.write_all(buf)
            })?;
            S_OK
        }
        T_OUT if read_only => S_IOERR,
        T_OUT => {
            let len = reader.available_bytes();
            if !in_range(len) {
                return Ok(S_IOERR);
            }
            in_chunks(len, offset.unwrap_or(0), |buf, at| {
                reader.read_exact(buf)?;
                backend.write_at(buf, at)
            })?;
            S_OK
        }
        T_FLUSH => {
            backend.flush()?;
            S_OK
        }
        T_GET_ID => {
            let mut id = [0u8; ID_LEN];
            let n = serial.len().min(ID_LEN);
            id[..n].copy_from_slice(&serial.as_bytes()[..n]);
            let n = writer.available_bytes().min(ID_LEN);
            writer.write_all(&id[..n])?;
            S_OK
        }
        T_DISCARD | T_WRITE_ZEROES if read_only => S_IOERR,
        T_DISCARD | T_WRITE_ZEROES => {
            let segments = reader.available_bytes() / 16;
            if segments == 0 || segments > MAX_DISCARD_SEG as usize {
                return Ok(S_UNSUPP);
            }
            for _ in 0..segments {
                let mut seg = [0u8; 16];
                reader.read_exact(&mut seg)?;
                let sector = u64::from_le_bytes(seg[0..8].try_into().unwrap_or_default());
                let sectors = u32::from_le_bytes(seg[8..12].try_into().unwrap_or_default());
                let flags = u32::from_le_bytes(seg[12..16].try_into().unwrap_or_default());
                let (Some(start), len) = (
                    sector.checked_mul(SECTOR_SIZE),
                    u64::from(sectors) * SECTOR_SIZE,
                ) else {
                    return Ok(S_IOERR);
                };
                if start
                    .checked_add(len)
                    .is_none_or(|end| end > backend.size())
                {
                    return Ok(S_IOERR);
                }
                // Discard takes no flags; write-zeroes only "unmap" (bit 0).
                let allowed = if kind == T_DISCARD { 0 } else { 1 };
                if flags & !allowed != 0 {
                    return Ok(S_UNSUPP);
                }
                if kind == T_DISCARD {
                    backend.discard(start, len)?;
                } else {
                    backend.write_zeroes(start, len, flags & 1 != 0)?;
                }
            }
            S_OK
        }
        _ => S_UNSUPP,
    })
}

impl VirtioDevice for VirtioBlock {
    fn disks(&self) -> Vec<Arc<dyn BlockBackend>> {
        vec![self.backend.clone()]
    }

    fn device_type(&self) -> u16 {
        DEVICE_TYPE
    }

    fn pci_class(&self) -> [u8; 3] {
        [0x01, 0x00, 0x00]
    }

    fn name(&self) -> &str {
        "blk"
    }

    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![self.config.queue_size; usize::from(self.config.queues)]
    }

    fn features(&self) -> u64 {
        let mut f = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | VIRTIO_F_RING_EVENT_IDX;
        if self.backend.read_only() {
            f |= F_RO;
        } else {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        if self.config.queues > 1 {
            f |= F_MQ;
        }
        f
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_bytes(), offset, data);
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        self.active = Some(ActiveQueues::new(activation, 0, "request queue")?);
        Ok(())
    }

    fn queue_notify(&mut self, index: u16) {
        self.process(index);
    }

    fn reset(&mut self) {
        self.active = None;
    }

    // Requests complete within the notify that brings them, so a paused
    // device holds nothing in flight: the queue positions are all.
    fn queue_positions(&self) -> Result<Vec<(u16, u16)>, virtkit_core::runtime::StateError> {
        Ok(self
            .active
            .as_ref()
            .map(|a| a.positions())
            .unwrap_or_default())
    }
}
