//! The receive side of one queue pair: a thread that waits for a frame
//! from the backend and buffers from the driver, and copies one into the
//! other. It owns its receive queue outright; the vCPU only wakes it
//! (`kick`) when the driver posts buffers.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtkit_core::runtime::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use super::backend::{NetBackend, NET_HDR_LEN};
use super::NetCounters;
use crate::virtio::VirtioInterrupt;

/// The largest frame a backend hands over: a 64 KiB GSO frame, its
/// Ethernet and VLAN headers, and the virtio-net header.
pub(crate) const MAX_FRAME: usize = NET_HDR_LEN + 65_550;

const TOKEN_FRAME: u64 = 0;
const TOKEN_KICK: u64 = 1;
const TOKEN_STOP: u64 = 2;

/// What the receive thread needs.
pub(crate) struct RxSetup {
    pub memory: GuestMem,
    pub queue: Queue,
    pub index: u16,
    pub backend: Arc<dyn NetBackend>,
    pub interrupt: Arc<dyn VirtioInterrupt>,
    pub counters: Arc<NetCounters>,
    /// MRG_RXBUF: a frame may span several chains.
    pub mergeable: bool,
}

/// A running receive thread; dropping it stops and joins the thread.
pub(crate) struct RxWorker {
    kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl RxWorker {
    /// Start the thread for `setup`.
    pub(crate) fn start(setup: RxSetup) -> io::Result<Self> {
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (kick.as_raw_fd(), TOKEN_KICK),
            (stop.as_raw_fd(), TOKEN_STOP),
            (setup.backend.ready_fd().as_raw_fd(), TOKEN_FRAME),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let (k, s) = (kick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("virtio-net-rx{}", setup.index / 2))
            .spawn(move || Receiver::new(setup).run(&epoll, &k, &s))?;
        Ok(RxWorker {
            kick,
            stop,
            thread: Some(thread),
        })
    }

    /// The driver posted buffers.
    pub(crate) fn kick(&self) {
        if let Err(e) = self.kick.write(1) {
            log::warn!("virtio-net: could not wake the receive thread: {e}");
        }
    }
}

impl Drop for RxWorker {
    fn drop(&mut self) {
        if let Err(e) = self.stop.write(1) {
            log::warn!("virtio-net: could not stop the receive thread: {e}");
            return;
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::warn!("virtio-net: the receive thread panicked");
            }
        }
    }
}

/// Whether a frame went into the queue.
enum Delivery {
    /// Delivered, or dropped for good (too big for the driver's buffers).
    Done,
    /// The driver has not posted enough buffers yet.
    NeedBuffers,
}

struct Receiver {
    setup: RxSetup,
    buf: Vec<u8>,
    /// Length of a frame read from the backend but not yet delivered.
    pending: Option<usize>,
}

impl Receiver {
    fn new(setup: RxSetup) -> Self {
        Receiver {
            setup,
            buf: vec![0; MAX_FRAME],
            pending: None,
        }
    }

    fn run(mut self, epoll: &Epoll, kick: &EventFd, stop: &EventFd) {
        let frame_fd = self.setup.backend.ready_fd().as_raw_fd();
        let mut watching_frames = true;
        let mut events = [EpollEvent::default(); 3];
        loop {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("virtio-net: receive thread stops: {e}");
                    return;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    TOKEN_STOP => {
                        let _ = stop.read();
                        return;
                    }
                    TOKEN_KICK => {
                        let _ = kick.read();
                    }
                    _ => {}
                }
            }
            let want_frames = self.pump();
            // While a frame waits for buffers, stop polling the backend:
            // its descriptor stays readable and would spin this loop.
            if want_frames != watching_frames {
                let op = if want_frames {
                    ControlOperation::Add
                } else {
                    ControlOperation::Delete
                };
                if let Err(e) = epoll.ctl(op, frame_fd, EpollEvent::new(EventSet::IN, TOKEN_FRAME))
                {
                    log::warn!("virtio-net: receive thread stops: {e}");
                    return;
                }
                watching_frames = want_frames;
            }
        }
    }

    /// Move frames until the backend is empty or the driver out of
    /// buffers; interrupt once for the lot. Returns whether the backend
    /// should be polled (no frame is stuck waiting for buffers).
    fn pump(&mut self) -> bool {
        let mut delivered = false;
        let want_frames = loop {
            let len = match self.pending {
                Some(len) => len,
                None => match self.setup.backend.receive(&mut self.buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // A hard error (a detached tap queue reports EBADFD
                    // and polls as EPOLLERR for ever): stop polling the
                    // backend until the next kick rather than spin.
                    Err(e) => {
                        log::debug!("virtio-net: receive failed: {e}");
                        break false;
                    }
                },
            };
            if len < NET_HDR_LEN {
                self.pending = None;
                self.setup
                    .counters
                    .rx_dropped
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.pending = Some(len);
            match self.deliver(len) {
                Delivery::Done => {
                    self.pending = None;
                    delivered = true;
                }
                Delivery::NeedBuffers => {
                    if self.arm_kick() {
                        continue;
                    }
                    break false;
                }
            }
        };
        let queue = &mut self.setup.queue;
        if delivered && queue.needs_notification(&self.setup.memory).unwrap_or(true) {
            self.setup.interrupt.queue(self.setup.index);
        }
        want_frames
    }

    /// Ask the driver to kick when it posts more buffers; true when some
    /// arrived meanwhile (try again now).
    fn arm_kick(&mut self) -> bool {
        let (queue, memory) = (&mut self.setup.queue, &self.setup.memory);
        let Ok(avail) = queue.avail_idx(memory, Ordering::Acquire) else {
            return false;
        };
        if queue.event_idx_enabled() {
            // Kick when the avail index passes where it is now (not where
            // we stopped: a mergeable frame may need more than is there).
            let avail_event = queue.used_ring() + 4 + 8 * u64::from(queue.size());
            if memory
                .write_obj(avail.0.to_le(), GuestAddress(avail_event))
                .is_err()
            {
                return false;
            }
        } else if queue.enable_notification(memory).is_err() {
            return false;
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        queue
            .avail_idx(memory, Ordering::Acquire)
            .is_ok_and(|now| now != avail)
    }

    /// Copy the pending frame of `len` bytes (header first) into the
    /// driver's buffers.
    fn deliver(&mut self, len: usize) -> Delivery {
        let RxSetup {
            memory,
            queue,
            counters,
            mergeable,
            ..
        } = &mut self.setup;
        let memory = &*memory;
        // Gather chains until the frame fits (one chain unless mergeable).
        let mut chains = Vec::new();
        let mut room = 0usize;
        while room < len && (chains.is_empty() || *mergeable) {
            let Some(chain) = queue.pop_descriptor_chain(memory) else {
                for _ in 0..chains.len() {
                    queue.go_to_previous_position();
                }
                return Delivery::NeedBuffers;
            };
            let head = chain.head_index();
            match chain.writer(memory) {
                Ok(writer) => {
                    room += writer.available_bytes();
                    chains.push((head, Some(writer)));
                }
                Err(e) => {
                    log::warn!("virtio-net: malformed receive chain {head}: {e}");
                    chains.push((head, None));
                }
            }
        }
        let frame = &mut self.buf[..len];
        let fits = room >= len;
        if fits {
            // num_buffers: how many chains this frame uses.
            frame[10..12].copy_from_slice(&(chains.len() as u16).to_le_bytes());
        } else {
            counters.rx_dropped.fetch_add(1, Ordering::Relaxed);
        }
        let mut rest: &[u8] = frame;
        for (head, writer) in chains {
            let mut written = 0;
            if let (true, Some(mut writer)) = (fits, writer) {
                let n = rest.len().min(writer.available_bytes());
                if writer.write_all(&rest[..n]).is_ok() {
                    written = n as u32;
                }
                rest = &rest[n..];
            }
            if let Err(e) = queue.add_used(memory, head, written) {
                log::warn!("virtio-net: could not return receive chain {head}: {e}");
            }
        }
        if fits {
            counters.rx_frames.fetch_add(1, Ordering::Relaxed);
            counters
                .rx_bytes
                .fetch_add((len - NET_HDR_LEN) as u64, Ordering::Relaxed);
        }
        Delivery::Done
    }
}
