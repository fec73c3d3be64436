//! virtio-net against a real multi-queue tap in a namespace the test
//! creates, the guest's side played through virtio-queue's mock queues:
//! a UDP datagram the "guest" sends with a partial checksum (checksum
//! offload) reaches a host socket; host datagrams arrive in the receive
//! queues with the offload header the guest negotiated; with one queue
//! pair in use every frame lands on pair 0 (the other tap queue is
//! detached), and after `VQ_PAIRS_SET 2` flows spread over both pairs.
//! Needs root and `ip`; skips, saying why, otherwise.

#![allow(clippy::unwrap_used)]

mod common;

#[path = "../../devices/tests/common/queue.rs"]
mod queue;

use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{is_root, out, sh, NetnsGuard};
use etherparse::{PacketBuilder, SlicedPacket, TransportSlice};
use queue::{add_chain, DESC_WRITE};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_devices::virtio::net::{
    NetConfig, VirtioNet, F_CSUM, F_CTRL_VQ, F_GUEST_CSUM, F_MAC, F_MQ, F_MRG_RXBUF, NET_HDR_LEN,
};
use virtkit_devices::virtio::{Activation, VirtioDevice, VirtioInterrupt, VIRTIO_F_RING_EVENT_IDX};
use virtkit_net::{netns, tap};
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 256;
const GUEST_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x42];
const HOST_IP: [u8; 4] = [10, 77, 0, 1];
const GUEST_IP: [u8; 4] = [10, 77, 0, 2];
const TAP: &str = "vkvn0";
const RX_BUFFERS: usize = 120;

struct NoIrqs;
impl VirtioInterrupt for NoIrqs {
    fn queue(&self, _index: u16) {}
    fn config_changed(&self) {}
}

/// The guest driver's queues: rx0, tx0, rx1, tx1, control.
struct Guest<'a> {
    mem: &'a GuestMem,
    queues: Vec<MockSplitQueue<'a, GuestMem>>,
    next_desc: Vec<u16>,
    seen: Vec<u16>,
    rx_bufs: Vec<Vec<u64>>,
    scratch: u64,
}

impl<'a> Guest<'a> {
    fn new(mem: &'a GuestMem, dev: &mut VirtioNet, features: u64) -> Self {
        let queues: Vec<_> = (0..5)
            .map(|i| MockSplitQueue::create(mem, GuestAddress(0x1000 + 0x10_000 * i), QUEUE_SIZE))
            .collect();
        let mut g = Guest {
            mem,
            next_desc: vec![0; 5],
            seen: vec![0; 5],
            rx_bufs: vec![Vec::new(); 5],
            queues,
            scratch: 0x100_0000,
        };
        // Like Linux: fill the receive queues before DRIVER_OK.
        for q in [0, 2] {
            for _ in 0..RX_BUFFERS {
                let at = g.alloc(2048);
                g.post(q, &[(at, 2048, DESC_WRITE)]);
                g.rx_bufs[q].push(at);
            }
        }
        let queues: Vec<Queue> = g
            .queues
            .iter()
            .map(|q| {
                let mut q = q.create_queue::<Queue>().unwrap();
                q.set_event_idx(true);
                q
            })
            .collect();
        dev.activate(Activation {
            memory: mem.clone(),
            queues,
            features: features | VIRTIO_F_RING_EVENT_IDX,
            interrupt: Arc::new(NoIrqs),
        })
        .unwrap();
        g
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.scratch;
        self.scratch += (len as u64 + 0xfff) & !0xfff;
        at
    }

    fn post(&mut self, q: usize, descs: &[(u64, u32, u16)]) {
        self.next_desc[q] = add_chain(&self.queues[q], self.next_desc[q], QUEUE_SIZE, descs);
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .read_obj(GuestAddress(self.queues[q].used_addr().0 + 2))
            .unwrap()
    }

    /// Send `frame` on pair `pair` with virtio-net `header`.
    fn send(&mut self, dev: &mut VirtioNet, pair: usize, header: [u8; NET_HDR_LEN], frame: &[u8]) {
        let mut bytes = header.to_vec();
        bytes.extend_from_slice(frame);
        let at = self.alloc(bytes.len());
        self.mem.write_slice(&bytes, GuestAddress(at)).unwrap();
        self.post(2 * pair + 1, &[(at, bytes.len() as u32, 0)]);
        dev.queue_notify((2 * pair + 1) as u16);
    }

    /// Control command; returns the device's ack.
    fn control(&mut self, dev: &mut VirtioNet, request: &[u8]) -> u8 {
        let at = self.alloc(request.len() + 1);
        self.mem.write_slice(request, GuestAddress(at)).unwrap();
        let ack = at + request.len() as u64;
        self.post(4, &[(at, request.len() as u32, 0), (ack, 1, DESC_WRITE)]);
        dev.queue_notify(4);
        self.mem.read_obj(GuestAddress(ack)).unwrap()
    }

    /// UDP frames to the guest's `port` received on rx queue `q` since
    /// the last call, until `count` arrived or `wait` passed: (virtio-net
    /// header, frame).
    fn udp_frames(
        &mut self,
        q: usize,
        port: u16,
        count: usize,
        wait: Duration,
    ) -> Vec<(Vec<u8>, Vec<u8>)> {
        let deadline = Instant::now() + wait;
        let mut got = Vec::new();
        loop {
            while self.seen[q] < self.used_idx(q) {
                let n = self.seen[q];
                self.seen[q] += 1;
                let elem = self.queues[q].used_addr().0 + 4 + 8 * u64::from(n % QUEUE_SIZE);
                let head: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
                let mut bytes = vec![0u8; len as usize];
                self.mem
                    .read_slice(&mut bytes, GuestAddress(self.rx_bufs[q][head as usize]))
                    .unwrap();
                let frame = bytes.split_off(NET_HDR_LEN);
                let to_port =
                    SlicedPacket::from_ethernet(&frame)
                        .ok()
                        .and_then(|p| match p.transport {
                            Some(TransportSlice::Udp(u)) => Some(u.destination_port()),
                            _ => None,
                        });
                if to_port == Some(port) {
                    got.push((bytes, frame));
                }
            }
            if got.len() >= count || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn host_socket(ns: &Path, port: u16) -> UdpSocket {
    let s = netns::run_in(Some(ns), move || {
        UdpSocket::bind((std::net::Ipv4Addr::from(HOST_IP), port))
    })
    .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// A UDP frame from the guest to the host's `port`, checksum complete.
fn guest_udp(tap_mac: [u8; 6], port: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(GUEST_MAC, tap_mac)
        .ipv4(GUEST_IP, HOST_IP, 64)
        .udp(4000, port)
        .write(&mut frame, payload)
        .unwrap();
    frame
}

/// CPU time (user + system, in clock ticks) of this process's thread
/// named `name`.
fn thread_cpu_ticks(name: &str) -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
            let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
            let fields: Vec<&str> = after_comm.split_whitespace().collect();
            // utime and stime are fields 14 and 15 of stat, 12 and 13 here.
            return fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        }
    }
    panic!("no thread named {name}");
}

fn parse_mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

#[test]
fn frames_cross_a_real_multi_queue_tap_with_offloads_and_queue_pairs() {
    if !is_root() || !sh("command -v ip >/dev/null") {
        eprintln!("SKIP: needs root and ip for a tap in a network namespace");
        return;
    }
    let name = format!("vk-vn-{}", std::process::id() % 100_000);
    let _guard = NetnsGuard(vec![name.clone()]);
    assert!(sh(&format!(
        "ip netns add {name} && ip -n {name} link set lo up && \
         ip netns exec {name} sysctl -q -w net.ipv6.conf.default.disable_ipv6=1"
    )));
    let ns = netns::named(&name);
    let backends = netns::run_in(Some(&ns), || tap::open_backends(TAP, 2)).unwrap();
    assert!(sh(&format!(
        "ip -n {name} addr add 10.77.0.1/24 dev {TAP} && ip -n {name} link set {TAP} up && \
         ip -n {name} neigh add 10.77.0.2 lladdr 02:00:00:00:00:42 dev {TAP} nud permanent"
    )));
    let tap_mac = parse_mac(&out(&format!(
        "cat /sys/class/net/{TAP}/address 2>/dev/null || ip netns exec {name} cat /sys/class/net/{TAP}/address"
    )));
    let mut dev = VirtioNet::new(NetConfig::new(GUEST_MAC), backends).unwrap();
    assert_ne!(
        dev.features() & (F_CSUM | F_GUEST_CSUM),
        0,
        "a tap takes offloads"
    );
    let counters = dev.counters();
    let mem = memory::create(64 << 20).unwrap();
    let mut guest = Guest::new(
        &mem,
        &mut dev,
        F_MAC | F_MRG_RXBUF | F_MQ | F_CTRL_VQ | F_CSUM | F_GUEST_CSUM,
    );

    // Checksum offload out: the UDP checksum holds only the pseudo-header
    // sum and the header asks the host to finish it. Were the header
    // ignored, the host would drop the datagram for its bad checksum.
    let socket = host_socket(&ns, 5000);
    let mut frame = guest_udp(tap_mac, 5000, b"partial checksum");
    let udp_len = (8 + 16) as u32;
    let mut pseudo: u32 = 0x0a4d + 0x0001 + 0x0a4d + 0x0002 + 17 + udp_len;
    while pseudo > 0xffff {
        pseudo = (pseudo & 0xffff) + (pseudo >> 16);
    }
    frame[40..42].copy_from_slice(&(pseudo as u16).to_be_bytes());
    let mut header = [0u8; NET_HDR_LEN];
    header[0] = 1; // NEEDS_CSUM
    header[6..8].copy_from_slice(&34u16.to_le_bytes()); // csum_start: the UDP header
    header[8..10].copy_from_slice(&6u16.to_le_bytes()); // csum_offset: its checksum
    guest.send(&mut dev, 0, header, &frame);
    let mut buf = [0u8; 64];
    let (n, from) = socket.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"partial checksum");
    assert_eq!(from.to_string(), "10.77.0.2:4000");

    // Checksum offload in: the guest took GUEST_CSUM, so the host hands
    // over the datagram with its checksum left for the guest.
    let sender = host_socket(&ns, 6000);
    sender
        .send_to(b"to the guest", (std::net::Ipv4Addr::from(GUEST_IP), 4000))
        .unwrap();
    let got = guest.udp_frames(0, 4000, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1, "one datagram on rx0");
    let (hdr, frame) = &got[0];
    assert_eq!(
        hdr[0] & 1,
        1,
        "NEEDS_CSUM: the guest completes the checksum"
    );
    assert_eq!(u16::from_le_bytes([hdr[6], hdr[7]]), 34);
    assert_eq!(u16::from_le_bytes([hdr[8], hdr[9]]), 6);
    assert_eq!(u16::from_le_bytes([hdr[10], hdr[11]]), 1, "num_buffers");
    assert!(frame.ends_with(b"to the guest"));

    // One pair in use: the second tap queue is detached, so every flow
    // lands on rx0.
    let flows: Vec<UdpSocket> = (0..32).map(|i| host_socket(&ns, 7000 + i)).collect();
    for s in &flows {
        s.send_to(b"flow", (std::net::Ipv4Addr::from(GUEST_IP), 4001))
            .unwrap();
    }
    assert_eq!(
        guest.udp_frames(0, 4001, 32, Duration::from_secs(3)).len(),
        32
    );
    assert!(guest
        .udp_frames(2, 4001, 1, Duration::from_millis(200))
        .is_empty());
    // The detached queue polls as an error; its receive thread must wait,
    // not spin on it.
    let before = thread_cpu_ticks("virtio-net-rx1");
    std::thread::sleep(Duration::from_millis(500));
    let spent = thread_cpu_ticks("virtio-net-rx1") - before;
    assert!(
        spent <= 5,
        "the idle receive thread of pair 1 used {spent} ticks in 0.5 s"
    );

    // Two pairs: flows spread over both queues, and pair 1 sends too.
    assert_eq!(guest.control(&mut dev, &[4, 0, 2, 0]), 0, "VQ_PAIRS_SET 2");
    for s in &flows {
        s.send_to(b"flow", (std::net::Ipv4Addr::from(GUEST_IP), 4002))
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    let (mut on0, mut on1) = (0, 0);
    while on0 + on1 < 32 && Instant::now() < deadline {
        on0 += guest.udp_frames(0, 4002, 0, Duration::ZERO).len();
        on1 += guest.udp_frames(2, 4002, 0, Duration::ZERO).len();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(on0 + on1, 32, "every datagram arrived once");
    assert!(
        on0 > 0 && on1 > 0,
        "flows spread over both pairs: {on0} + {on1}"
    );
    let socket2 = host_socket(&ns, 5001);
    guest.send(
        &mut dev,
        1,
        [0; NET_HDR_LEN],
        &guest_udp(tap_mac, 5001, b"from pair 1"),
    );
    let n = socket2.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"from pair 1");

    // A driver that did not take GUEST_CSUM gets complete checksums.
    dev.reset();
    let mem2 = memory::create(64 << 20).unwrap();
    let mut guest = Guest::new(&mem2, &mut dev, F_MAC | F_MRG_RXBUF);
    sender
        .send_to(b"checksummed", (std::net::Ipv4Addr::from(GUEST_IP), 4003))
        .unwrap();
    let got = guest.udp_frames(0, 4003, 1, Duration::from_secs(3));
    assert_eq!(got.len(), 1);
    let (hdr, frame) = &got[0];
    assert_eq!(hdr[0] & 1, 0, "no NEEDS_CSUM");
    let p = SlicedPacket::from_ethernet(frame).unwrap();
    let (Some(etherparse::NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) =
        (p.net, p.transport)
    else {
        panic!("not UDP over IPv4");
    };
    let expect = udp
        .to_header()
        .calc_checksum_ipv4(&ip.header().to_header(), udp.payload())
        .unwrap();
    assert_eq!(udp.checksum(), expect, "a complete, valid UDP checksum");
    assert!(counters.tx_frames.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    drop(dev);
}
