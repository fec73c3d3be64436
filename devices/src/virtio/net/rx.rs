//! The receive side of one queue pair: a thread that waits for a frame
//! from the backend and buffers from the driver, and copies one into the
//! other. It owns its receive queue outright; the vCPU only wakes it
//! (`kick`) when the driver posts buffers. While the VM is paused the
//! thread is stopped and its queue parked (`RxPath`), so that a paused
//! guest's memory holds still.

use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtkit_core::runtime::memory::GuestMem;
use virtkit_core::runtime::StateError;
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

/// One queue pair's receive side: a thread serving the queue, or, while
/// the VM is paused, the same queue and any undelivered frame parked
/// here, so that nothing writes guest memory and the queue's position
/// can be read.
pub(crate) struct RxPath {
    index: u16,
    state: RxState,
}

enum RxState {
    Running(RxWorker),
    Parked(Box<Receiver>),
    /// The thread panicked and took the queue with it.
    Lost,
}

impl RxPath {
    /// The receive side of `setup`, started unless `paused`.
    pub(crate) fn new(setup: RxSetup, paused: bool) -> io::Result<Self> {
        let index = setup.index;
        let receiver = Box::new(Receiver::new(setup));
        let state = if paused {
            RxState::Parked(receiver)
        } else {
            RxState::Running(RxWorker::start(receiver)?)
        };
        Ok(RxPath { index, state })
    }

    /// The driver posted buffers.
    pub(crate) fn kick(&self) {
        if let RxState::Running(worker) = &self.state {
            worker.kick();
        }
    }

    /// Stop the thread and keep its queue (and any frame it held).
    pub(crate) fn pause(&mut self) {
        if let RxState::Running(worker) = &mut self.state {
            self.state = match worker.stop() {
                Some(receiver) => RxState::Parked(receiver),
                None => RxState::Lost,
            };
        }
    }

    /// Start a thread on the parked queue again.
    pub(crate) fn resume(&mut self) -> io::Result<()> {
        match std::mem::replace(&mut self.state, RxState::Lost) {
            RxState::Parked(receiver) => {
                self.state = RxState::Running(RxWorker::start(receiver)?);
                Ok(())
            }
            RxState::Running(worker) => {
                self.state = RxState::Running(worker);
                Ok(())
            }
            RxState::Lost => Err(self.lost()),
        }
    }

    /// The queue's `(next_avail, next_used)`, readable only while parked.
    pub(crate) fn position(&self) -> Result<(u16, u16), StateError> {
        match &self.state {
            RxState::Parked(r) => Ok((r.setup.queue.next_avail(), r.setup.queue.next_used())),
            RxState::Running(_) => Err(StateError::Running(format!(
                "virtio-net receive queue {}",
                self.index
            ))),
            RxState::Lost => Err(StateError::Host(self.lost().to_string())),
        }
    }

    fn lost(&self) -> io::Error {
        io::Error::other(format!(
            "virtio-net receive queue {}: its thread panicked",
            self.index
        ))
    }
}

/// A running receive thread; dropping it stops and joins the thread.
struct RxWorker {
    kick: Arc<EventFd>,
    stop: Arc<EventFd>,
    thread: Option<JoinHandle<Box<Receiver>>>,
}

impl RxWorker {
    /// Start a thread serving `receiver`.
    fn start(mut receiver: Box<Receiver>) -> io::Result<Self> {
        let kick = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let stop = Arc::new(EventFd::new(libc::EFD_NONBLOCK)?);
        let epoll = Epoll::new()?;
        for (fd, token) in [
            (kick.as_raw_fd(), TOKEN_KICK),
            (stop.as_raw_fd(), TOKEN_STOP),
            (receiver.setup.backend.ready_fd().as_raw_fd(), TOKEN_FRAME),
        ] {
            epoll.ctl(
                ControlOperation::Add,
                fd,
                EpollEvent::new(EventSet::IN, token),
            )?;
        }
        let (k, s) = (kick.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name(format!("virtio-net-rx{}", receiver.setup.index / 2))
            .spawn(move || {
                receiver.run(&epoll, &k, &s);
                receiver
            })?;
        Ok(RxWorker {
            kick,
            stop,
            thread: Some(thread),
        })
    }

    /// The driver posted buffers.
    fn kick(&self) {
        if let Err(e) = self.kick.write(1) {
            log::warn!("virtio-net: could not wake the receive thread: {e}");
        }
    }

    /// Stop and join the thread; its receiver back, unless it panicked.
    fn stop(&mut self) -> Option<Box<Receiver>> {
        let thread = self.thread.take()?;
        if let Err(e) = self.stop.write(1) {
            // An eventfd write fails only when its counter would
            // overflow; the thread is told to stop either way.
            log::warn!("virtio-net: could not signal the receive thread: {e}");
        }
        match thread.join() {
            Ok(receiver) => Some(receiver),
            Err(_) => {
                log::warn!("virtio-net: the receive thread panicked");
                None
            }
        }
    }
}

impl Drop for RxWorker {
    fn drop(&mut self) {
        self.stop();
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

    fn run(&mut self, epoll: &Epoll, kick: &EventFd, stop: &EventFd) {
        let frame_fd = self.setup.backend.ready_fd().as_raw_fd();
        let mut watching_frames = true;
        let mut events = [EpollEvent::default(); 3];
        // A thread restarted after a pause may find a frame it held, or
        // buffers posted meanwhile, with no event to announce them.
        let mut want_frames = self.pump();
        loop {
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
            want_frames = self.pump();
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
