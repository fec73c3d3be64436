//! virtio-net through virtio-queue's mock split queues, with a backend
//! of the test's own over a Unix datagram socket pair (the seam a VMM
//! plugs its own switch into). The tap backend is tested against a real
//! tap in `virtkit-net`'s `tests/virtio_net_tap.rs`. No KVM needed.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_core::runtime::StateError;
use virtkit_devices::virtio::net::{
    NetBackend, NetConfig, NetCounters, VirtioNet, F_CSUM, F_CTRL_VQ, F_GUEST_CSUM, F_MAC, F_MQ,
    F_MRG_RXBUF, F_MTU, F_STATUS, NET_HDR_LEN,
};
use virtkit_devices::virtio::{Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_RING_EVENT_IDX};
use vm_memory::{Bytes, GuestAddress};

mod common;
use common::net::{backend, SocketBackend};
use common::DESC_WRITE as WRITE;

const QUEUE_SIZE: u16 = 64;
const MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];

#[derive(Default)]
struct Irqs(Mutex<Vec<u16>>);
impl VirtioInterrupt for Irqs {
    fn queue(&self, index: u16) {
        self.0.lock().unwrap().push(index);
    }
    fn config_changed(&self) {}
}

/// The guest driver's side of the queues.
struct Driver<'a> {
    mem: &'a GuestMem,
    queues: Vec<MockSplitQueue<'a, GuestMem>>,
    next: Vec<u16>,
    scratch: u64,
}

impl<'a> Driver<'a> {
    fn new(mem: &'a GuestMem, count: usize) -> Self {
        let queues = (0..count)
            .map(|i| {
                MockSplitQueue::create(mem, GuestAddress(0x1000 + 0x10_000 * i as u64), QUEUE_SIZE)
            })
            .collect();
        Driver {
            mem,
            queues,
            next: vec![0; count],
            scratch: 0x100_0000,
        }
    }

    fn activate(&self, dev: &mut VirtioNet, features: u64, event_idx: bool) -> Arc<Irqs> {
        self.activate_at(dev, features, event_idx, &[])
    }

    /// Activate with the queues at `positions` (`(next_avail,
    /// next_used)` by queue; missing ones start at 0), as a transport
    /// restoring a migrated device does.
    fn activate_at(
        &self,
        dev: &mut VirtioNet,
        features: u64,
        event_idx: bool,
        positions: &[(u16, u16)],
    ) -> Arc<Irqs> {
        let irqs = Arc::new(Irqs::default());
        let queues: Vec<Queue> = self
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let mut q = q.create_queue::<Queue>().unwrap();
                q.set_event_idx(event_idx);
                if let Some(&(avail, used)) = positions.get(i) {
                    q.set_next_avail(avail);
                    q.set_next_used(used);
                }
                q
            })
            .collect();
        dev.activate(Activation {
            memory: self.mem.clone(),
            queues,
            features,
            interrupt: irqs.clone(),
        })
        .unwrap();
        irqs
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.scratch;
        self.scratch += (len as u64 + 0xfff) & !0xfff;
        at
    }

    /// Post one chain of `descs` (address, length, flags) on `queue`.
    fn post(&mut self, queue: usize, descs: &[(u64, u32, u16)]) {
        self.next[queue] =
            common::add_chain(&self.queues[queue], self.next[queue], QUEUE_SIZE, descs);
    }

    /// Post a receive buffer of `len` bytes; returns its address.
    fn post_rx(&mut self, queue: usize, len: usize) -> u64 {
        let at = self.alloc(len);
        self.post(queue, &[(at, len as u32, WRITE)]);
        at
    }

    /// Post a frame to send (header, then the frame in two pieces).
    fn post_tx(&mut self, queue: usize, header: [u8; NET_HDR_LEN], frame: &[u8]) {
        let h = self.alloc(NET_HDR_LEN);
        self.mem.write_slice(&header, GuestAddress(h)).unwrap();
        let half = frame.len() / 2;
        let (a, b) = (self.alloc(half), self.alloc(frame.len() - half));
        self.mem
            .write_slice(&frame[..half], GuestAddress(a))
            .unwrap();
        self.mem
            .write_slice(&frame[half..], GuestAddress(b))
            .unwrap();
        self.post(
            queue,
            &[
                (h, NET_HDR_LEN as u32, 0),
                (a, half as u32, 0),
                (b, (frame.len() - half) as u32, 0),
            ],
        );
    }

    fn used_idx(&self, queue: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.queues[queue].used_addr().0 + 2))
            .unwrap()
    }

    /// Used element `n` of `queue`: (descriptor head, length).
    fn used(&self, queue: usize, n: u16) -> (u32, u32) {
        let at = self.queues[queue].used_addr().0 + 4 + 8 * u64::from(n % QUEUE_SIZE);
        (
            self.mem.read_obj(GuestAddress(at)).unwrap(),
            self.mem.read_obj(GuestAddress(at + 4)).unwrap(),
        )
    }

    /// Wait (the receive side runs on its own thread) until `queue` has
    /// `count` used elements.
    fn wait_used(&self, queue: usize, count: u16) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.used_idx(queue) < count {
            assert!(
                Instant::now() < deadline,
                "queue {queue} never reached {count} used, at {}",
                self.used_idx(queue)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn read(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
        .collect()
}

fn with_header(frame: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; NET_HDR_LEN];
    v.extend_from_slice(frame);
    v
}

fn counter(c: &NetCounters, pick: fn(&NetCounters) -> &std::sync::atomic::AtomicU64) -> u64 {
    pick(c).load(Ordering::SeqCst)
}

#[test]
fn configuration_and_features() {
    let (b, _peer) = backend(false);
    let mut config = NetConfig::new(MAC);
    config.mtu = Some(1400);
    let dev = VirtioNet::new(config, vec![b]).unwrap();
    let mut cfg = [0u8; 12];
    dev.read_config(0, &mut cfg);
    assert_eq!(&cfg[0..6], &MAC);
    assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "link up");
    assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1, "one pair");
    assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1400, "MTU");
    let f = dev.features();
    for (bit, name) in [
        (F_MAC, "MAC"),
        (F_STATUS, "STATUS"),
        (F_MTU, "MTU"),
        (F_MRG_RXBUF, "MRG_RXBUF"),
    ] {
        assert_ne!(f & bit, 0, "{name} offered");
    }
    assert_eq!(
        f & (F_CSUM | F_GUEST_CSUM),
        0,
        "no offloads without backend support"
    );
    assert_eq!(
        f & (F_MQ | F_CTRL_VQ),
        0,
        "one pair: no MQ, no control queue"
    );
    assert_eq!(dev.queue_max_sizes(), vec![256, 256]);
    assert_eq!(dev.pci_class(), [0x02, 0, 0]);

    let pairs: Vec<Arc<dyn NetBackend>> = (0..3)
        .map(|_| backend(true).0 as Arc<dyn NetBackend>)
        .collect();
    let dev = VirtioNet::new(NetConfig::new(MAC), pairs).unwrap();
    let f = dev.features();
    assert_ne!(f & F_CSUM, 0);
    assert_ne!(f & F_MQ, 0);
    assert_ne!(f & F_CTRL_VQ, 0);
    assert_eq!(
        dev.queue_max_sizes().len(),
        7,
        "3 pairs and the control queue"
    );
    dev.read_config(8, &mut cfg[..2]);
    assert_eq!(u16::from_le_bytes([cfg[0], cfg[1]]), 3);
    assert!(VirtioNet::new(NetConfig::new(MAC), vec![]).is_err());
}

#[test]
fn transmit_sends_each_chain_as_one_frame() {
    let (b, peer) = backend(false);
    let mut dev = VirtioNet::new(NetConfig::new(MAC), vec![b]).unwrap();
    let counters = dev.counters();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 2);
    let irqs = drv.activate(&mut dev, F_MAC, false);

    let sent = frame(1514, 1);
    let mut header = [0u8; NET_HDR_LEN];
    header[0] = 0; // no checksum to complete
    drv.post_tx(1, header, &sent);
    dev.queue_notify(1);
    assert_eq!(drv.used_idx(1), 1);
    assert_eq!(
        drv.used(1, 0),
        (0, 0),
        "a sent chain is returned with nothing written"
    );
    let mut got = vec![0u8; 4096];
    let n = peer.recv(&mut got).unwrap();
    assert_eq!(&got[..n], &with_header(&sent)[..]);
    assert_eq!(*irqs.0.lock().unwrap(), vec![1]);

    // A chain shorter than the header is returned and counted, not sent.
    let at = drv.alloc(8);
    drv.post(1, &[(at, 8, 0)]);
    dev.queue_notify(1);
    assert_eq!(drv.used_idx(1), 2);
    peer.set_nonblocking(true).unwrap();
    assert_eq!(
        peer.recv(&mut got).unwrap_err().kind(),
        io::ErrorKind::WouldBlock
    );
    assert_eq!(counter(&counters, |c| &c.tx_frames), 1);
    assert_eq!(counter(&counters, |c| &c.tx_bytes), 1514);
    assert_eq!(counter(&counters, |c| &c.tx_dropped), 1);
}

#[test]
fn receive_without_mergeable_buffers_uses_one_chain_per_frame() {
    let (b, peer) = backend(false);
    let mut dev = VirtioNet::new(NetConfig::new(MAC), vec![b]).unwrap();
    let counters = dev.counters();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 2);
    let irqs = drv.activate(&mut dev, F_MAC, false);

    let buf = drv.post_rx(0, 1526);
    dev.queue_notify(0);
    let sent = frame(1000, 9);
    peer.send(&with_header(&sent)).unwrap();
    drv.wait_used(0, 1);
    assert_eq!(drv.used(0, 0).1 as usize, NET_HDR_LEN + 1000);
    let got = drv.read(buf, NET_HDR_LEN + 1000);
    assert_eq!(&got[NET_HDR_LEN..], &sent[..]);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 1, "num_buffers");
    assert_eq!(*irqs.0.lock().unwrap(), vec![0]);

    // Too big for the driver's buffer: dropped, the buffer returned empty.
    drv.post_rx(0, 200);
    dev.queue_notify(0);
    peer.send(&with_header(&frame(500, 3))).unwrap();
    drv.wait_used(0, 2);
    assert_eq!(drv.used(0, 1).1, 0);
    assert_eq!(counter(&counters, |c| &c.rx_frames), 1);
    assert_eq!(counter(&counters, |c| &c.rx_bytes), 1000);
    assert_eq!(counter(&counters, |c| &c.rx_dropped), 1);
}

#[test]
fn a_mergeable_frame_spans_buffers_and_waits_until_there_are_enough() {
    let (b, peer) = backend(false);
    let mut dev = VirtioNet::new(NetConfig::new(MAC), vec![b]).unwrap();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 2);
    // With EVENT_IDX, as Linux negotiates it.
    drv.activate(
        &mut dev,
        F_MAC | F_MRG_RXBUF | VIRTIO_F_RING_EVENT_IDX,
        true,
    );

    // A frame arrives before the driver posted anything; then 512 bytes
    // of buffers for a 1012-byte frame: nothing is delivered yet.
    let sent = frame(1000, 5);
    peer.send(&with_header(&sent)).unwrap();
    let mut bufs = vec![drv.post_rx(0, 256), drv.post_rx(0, 256)];
    dev.queue_notify(0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drv.used_idx(0), 0, "half a frame is never delivered");
    // The device asked to be kicked once the avail index passes 2.
    let avail_event: u16 = mem
        .read_obj(GuestAddress(
            drv.queues[0].used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE),
        ))
        .unwrap();
    assert_eq!(avail_event, 2);

    bufs.push(drv.post_rx(0, 256));
    bufs.push(drv.post_rx(0, 256));
    bufs.push(drv.post_rx(0, 256));
    dev.queue_notify(0);
    drv.wait_used(0, 4);
    let mut got = Vec::new();
    for (i, at) in bufs.iter().take(4).enumerate() {
        let (head, len) = drv.used(0, i as u16);
        assert_eq!(head, i as u32, "chains used in order");
        got.extend(drv.read(*at, len as usize));
    }
    assert_eq!(got.len(), NET_HDR_LEN + 1000);
    assert_eq!(u16::from_le_bytes([got[10], got[11]]), 4, "num_buffers");
    assert_eq!(&got[NET_HDR_LEN..], &sent[..]);

    // The fifth buffer takes the next small frame whole.
    let small = frame(60, 2);
    peer.send(&with_header(&small)).unwrap();
    drv.wait_used(0, 5);
    assert_eq!(drv.read(bufs[4] + NET_HDR_LEN as u64, 60), small);
}

#[test]
fn the_control_queue_sets_the_number_of_queue_pairs() {
    let pairs: Vec<(Arc<SocketBackend>, UnixDatagram)> = (0..2).map(|_| backend(false)).collect();
    let backends: Vec<Arc<dyn NetBackend>> = pairs
        .iter()
        .map(|(b, _)| b.clone() as Arc<dyn NetBackend>)
        .collect();
    let mut dev = VirtioNet::new(NetConfig::new(MAC), backends).unwrap();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 5);
    drv.activate(&mut dev, F_MAC | F_MQ | F_CTRL_VQ, false);
    // Activation starts the driver on pair 0 alone.
    assert_eq!(*pairs[0].0.enabled.lock().unwrap(), vec![true]);
    assert_eq!(*pairs[1].0.enabled.lock().unwrap(), vec![false]);

    let mut command = |drv: &mut Driver, class: u8, cmd: u8, data: &[u8]| -> u8 {
        let mut req = vec![class, cmd];
        req.extend_from_slice(data);
        let at = drv.alloc(req.len());
        mem.write_slice(&req, GuestAddress(at)).unwrap();
        let ack = drv.alloc(1);
        mem.write_obj(0xeeu8, GuestAddress(ack)).unwrap();
        drv.post(4, &[(at, req.len() as u32, 0), (ack, 1, WRITE)]);
        dev.queue_notify(4);
        mem.read_obj(GuestAddress(ack)).unwrap()
    };
    assert_eq!(
        command(&mut drv, 4, 0, &2u16.to_le_bytes()),
        0,
        "VQ_PAIRS_SET 2"
    );
    assert_eq!(*pairs[1].0.enabled.lock().unwrap(), vec![false, true]);
    assert_eq!(
        command(&mut drv, 4, 0, &3u16.to_le_bytes()),
        1,
        "only 2 pairs"
    );
    assert_eq!(command(&mut drv, 4, 0, &0u16.to_le_bytes()), 1);
    assert_eq!(command(&mut drv, 0, 0, &[1]), 1, "CTRL_RX was not offered");
    assert_eq!(command(&mut drv, 4, 0, &1u16.to_le_bytes()), 0);
    assert_eq!(
        *pairs[1].0.enabled.lock().unwrap(),
        vec![false, true, false]
    );
    assert_eq!(drv.used_idx(4), 5);

    // Both pairs carry frames: pair 1 transmits on queue 3 and receives
    // on queue 2.
    drv.post_tx(3, [0; NET_HDR_LEN], &frame(100, 4));
    dev.queue_notify(3);
    let mut got = [0u8; 256];
    assert_eq!(pairs[1].1.recv(&mut got).unwrap(), NET_HDR_LEN + 100);
    let buf = drv.post_rx(2, 1526);
    dev.queue_notify(2);
    pairs[1].1.send(&with_header(&frame(64, 8))).unwrap();
    drv.wait_used(2, 1);
    assert_eq!(drv.read(buf + NET_HDR_LEN as u64, 64), frame(64, 8));
}

#[test]
fn reset_stops_receiving() {
    let (b, peer) = backend(false);
    let mut dev = VirtioNet::new(NetConfig::new(MAC), vec![b]).unwrap();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 2);
    drv.activate(&mut dev, F_MAC, false);
    drv.post_rx(0, 1526);
    dev.reset();
    peer.send(&with_header(&frame(100, 1))).unwrap();
    dev.queue_notify(0);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(drv.used_idx(0), 0, "a reset device writes nothing");
}

/// Sleep long enough for a running receive thread to have delivered.
fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}

#[test]
fn a_paused_device_writes_nothing_until_it_resumes() {
    let (b, peer) = backend(false);
    let mut dev = VirtioNet::new(NetConfig::new(MAC), vec![b]).unwrap();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 2);
    drv.activate(&mut dev, F_MAC, false);
    let bufs = [drv.post_rx(0, 1526), drv.post_rx(0, 1526)];
    dev.queue_notify(0);
    // A running receive side has no position to give: it could move on
    // the moment it was read.
    assert!(matches!(
        dev.queue_positions(),
        Err(StateError::Running(what)) if what.contains("receive queue 0")
    ));

    dev.pause();
    peer.send(&with_header(&frame(80, 1))).unwrap();
    settle();
    assert_eq!(drv.used_idx(0), 0, "a paused device writes no guest memory");
    assert_eq!(dev.queue_positions().unwrap(), vec![(0, 0), (0, 0)]);
    // The driver cannot kick a paused VM's device, but a kick that comes
    // anyway changes nothing.
    dev.queue_notify(0);
    settle();
    assert_eq!(drv.used_idx(0), 0);

    dev.resume().unwrap();
    drv.wait_used(0, 1);
    assert_eq!(drv.read(bufs[0] + NET_HDR_LEN as u64, 80), frame(80, 1));
    peer.send(&with_header(&frame(90, 2))).unwrap();
    drv.wait_used(0, 2);
    assert_eq!(drv.read(bufs[1] + NET_HDR_LEN as u64, 90), frame(90, 2));

    // Activated while paused (a target restoring into a paused VM): the
    // receive side waits for the resume.
    dev.pause();
    dev.reset();
    let mut fresh = Driver::new(&mem, 2);
    fresh.scratch = drv.scratch;
    fresh.activate(&mut dev, F_MAC, false);
    let buf = fresh.post_rx(0, 1526);
    peer.send(&with_header(&frame(70, 3))).unwrap();
    settle();
    assert_eq!(fresh.used_idx(0), 0);
    dev.resume().unwrap();
    fresh.wait_used(0, 1);
    assert_eq!(fresh.read(buf + NET_HDR_LEN as u64, 70), frame(70, 3));
}

#[test]
fn a_paused_device_hands_its_queues_and_pairs_to_a_second_device() {
    let backends = |n: usize| -> (Vec<Arc<SocketBackend>>, Vec<UnixDatagram>) {
        (0..n).map(|_| backend(false)).unzip()
    };
    let dyn_backends = |b: &[Arc<SocketBackend>]| -> Vec<Arc<dyn NetBackend>> {
        b.iter().map(|b| b.clone() as Arc<dyn NetBackend>).collect()
    };
    let features = F_MAC | F_MQ | F_CTRL_VQ;
    let (src_b, src_peers) = backends(2);
    let mut src = VirtioNet::new(NetConfig::new(MAC), dyn_backends(&src_b)).unwrap();
    let mem = memory::create(32 << 20).unwrap();
    let mut drv = Driver::new(&mem, 5);
    drv.activate(&mut src, features, false);
    assert_eq!(src.config_state(), 1u16.to_le_bytes(), "one pair at first");

    // The driver turns on both pairs, sends a frame, receives one.
    let req = drv.alloc(4);
    mem.write_slice(&[4, 0, 2, 0], GuestAddress(req)).unwrap();
    let ack = drv.alloc(1);
    drv.post(4, &[(req, 4, 0), (ack, 1, WRITE)]);
    src.queue_notify(4);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(ack)).unwrap(), 0);
    drv.post_tx(1, [0; NET_HDR_LEN], &frame(100, 1));
    src.queue_notify(1);
    let mut got = [0u8; 256];
    assert_eq!(src_peers[0].recv(&mut got).unwrap(), NET_HDR_LEN + 100);
    let bufs = [drv.post_rx(0, 1526), drv.post_rx(0, 1526)];
    src.queue_notify(0);
    src_peers[0].send(&with_header(&frame(60, 2))).unwrap();
    drv.wait_used(0, 1);

    src.pause();
    let positions = src.queue_positions().unwrap();
    assert_eq!(
        positions,
        vec![(1, 1), (1, 1), (0, 0), (0, 0), (1, 1)],
        "rx0 took one buffer, tx0 and the control queue one chain each"
    );
    let config = src.config_state();
    assert_eq!(config, 2u16.to_le_bytes());

    // The target: the same queues at the saved positions, its own
    // backends (the target host's taps), both pairs still in use.
    let (dst_b, dst_peers) = backends(2);
    let mut dst = VirtioNet::new(NetConfig::new(MAC), dyn_backends(&dst_b)).unwrap();
    dst.restore_config_state(&config).unwrap();
    drv.activate_at(&mut dst, features, false, &positions);
    assert_eq!(*dst_b[1].enabled.lock().unwrap(), vec![true]);
    dst_peers[0].send(&with_header(&frame(70, 3))).unwrap();
    drv.wait_used(0, 2);
    let (head, len) = drv.used(0, 1);
    assert_eq!(
        (head, len as usize),
        (1, NET_HDR_LEN + 70),
        "the next buffer"
    );
    assert_eq!(drv.read(bufs[1] + NET_HDR_LEN as u64, 70), frame(70, 3));
    // Transmit goes on from the next chain.
    drv.post_tx(1, [0; NET_HDR_LEN], &frame(50, 4));
    dst.queue_notify(1);
    assert_eq!(dst_peers[0].recv(&mut got).unwrap(), NET_HDR_LEN + 50);
    assert_eq!(&got[NET_HDR_LEN..NET_HDR_LEN + 50], &frame(50, 4)[..]);
    assert_eq!(drv.used_idx(1), 2);

    // Control: without the configuration state a device starts the
    // driver on one pair, though it had asked for two.
    let (bare_b, _bare_peers) = backends(2);
    let mut bare = VirtioNet::new(NetConfig::new(MAC), dyn_backends(&bare_b)).unwrap();
    drv.activate_at(&mut bare, features, false, &positions);
    assert_eq!(*bare_b[1].enabled.lock().unwrap(), vec![false]);

    // States that do not fit this device are refused.
    let mut one = VirtioNet::new(NetConfig::new(MAC), vec![backend(false).0]).unwrap();
    for bad in [&3u16.to_le_bytes()[..], &0u16.to_le_bytes(), &[1]] {
        assert!(matches!(
            one.restore_config_state(bad),
            Err(StateError::Corrupt(_))
        ));
    }
}
