//! virtio-net seen from inside a running guest: a tiny long-mode driver
//! finds the function (1af4:1041), reads its MAC from the device
//! configuration, sets up a receive and a transmit queue through the
//! modern transport, sends a frame and prints the payload of the frame
//! the "network" (a datagram socket on the test's side of the backend
//! seam) answers with. Skips, saying why, only where /dev/kvm is absent.

#![allow(clippy::unwrap_used)]

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixDatagram;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use iced_x86::code_asm::*;
use virtkit_core::payload::{Payload, SerialCapture};
use virtkit_devices::pci::{PciBus, PciLayout};
use virtkit_devices::virtio::net::{NetBackend, NetConfig, VirtioNet, F_MAC, NET_HDR_LEN};
use virtkit_devices::virtio::pci::VirtioPciDevice;

mod common;
use common::guest::{
    find_function, kvm_present, long_mode, power_off, print_bytes, run_to_power_off,
    virtio_driver_ok, virtio_negotiate, virtio_setup_queue, vm,
};

const MAC: [u8; 6] = [0x02, 0x56, 0x4b, 0x00, 0x00, 0x07];
const ETHERTYPE: [u8; 2] = [0x88, 0xb5]; // local experimental
const GUEST_SAYS: &[u8; 20] = b"hello from the guest";
const HOST_SAYS: &[u8; 20] = b"hello from the host!";

struct Socket(UnixDatagram);
impl NetBackend for Socket {
    fn send(&self, frame: &[u8]) -> io::Result<()> {
        self.0.send(frame).map(|_| ())
    }
    fn receive(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }
    fn ready_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The driver: rx queue 0 and tx queue 1 of 8 entries each.
fn net_payload() -> Payload {
    const RX_DESC: u64 = 0x2_0000;
    const RX_AVAIL: u64 = 0x2_1000;
    const RX_USED: u64 = 0x2_2000;
    const TX_DESC: u64 = 0x2_4000;
    const TX_AVAIL: u64 = 0x2_5000;
    const TX_USED: u64 = 0x2_6000;
    const RX_BUF: u64 = 0x3_0000;
    const TX_BUF: u64 = 0x3_4000;
    const FRAME_LEN: u32 = (NET_HDR_LEN + 14 + GUEST_SAYS.len()) as u32;
    let mut a = CodeAssembler::new(64).unwrap();
    find_function(&mut a, 0x1041_1af4);
    virtio_negotiate(&mut a, F_MAC as u32);
    virtio_setup_queue(&mut a, 0, [RX_DESC, RX_AVAIL, RX_USED]);
    virtio_setup_queue(&mut a, 1, [TX_DESC, TX_AVAIL, TX_USED]);
    virtio_driver_ok(&mut a);

    // One 2 KiB receive buffer, posted and kicked.
    a.mov(rax, RX_BUF).unwrap();
    a.mov(qword_ptr(RX_DESC), rax).unwrap();
    a.mov(dword_ptr(RX_DESC + 8), 2048u32).unwrap();
    a.mov(word_ptr(RX_DESC + 12), 2u32).unwrap(); // device-writable
    a.mov(word_ptr(RX_AVAIL + 4), 0u32).unwrap();
    a.mov(word_ptr(RX_AVAIL + 2), 1u32).unwrap();
    a.mov(word_ptr(rsi + 0x3000), 0u32).unwrap();

    // The frame: zero header, broadcast, our MAC from the device config,
    // the ethertype, the greeting.
    a.mov(rdi, TX_BUF).unwrap();
    a.xor(eax, eax).unwrap();
    a.mov(ecx, FRAME_LEN).unwrap();
    a.rep().stosb().unwrap();
    let eth = TX_BUF + NET_HDR_LEN as u64;
    a.mov(dword_ptr(eth), -1i32).unwrap();
    a.mov(word_ptr(eth + 4), 0xffffu32).unwrap();
    a.mov(eax, dword_ptr(rsi + 0x2000)).unwrap();
    a.mov(dword_ptr(eth + 6), eax).unwrap();
    a.mov(ax, word_ptr(rsi + 0x2004)).unwrap();
    a.mov(word_ptr(eth + 10), ax).unwrap();
    a.mov(word_ptr(eth + 12), u32::from(u16::from_le_bytes(ETHERTYPE)))
        .unwrap();
    for (i, chunk) in GUEST_SAYS.chunks(4).enumerate() {
        let v = u32::from_le_bytes(chunk.try_into().unwrap());
        a.mov(dword_ptr(eth + 14 + 4 * i as u64), v).unwrap();
    }
    a.mov(rax, TX_BUF).unwrap();
    a.mov(qword_ptr(TX_DESC), rax).unwrap();
    a.mov(dword_ptr(TX_DESC + 8), FRAME_LEN).unwrap();
    a.mov(word_ptr(TX_DESC + 12), 0u32).unwrap();
    a.mov(word_ptr(TX_AVAIL + 4), 0u32).unwrap();
    a.mov(word_ptr(TX_AVAIL + 2), 1u32).unwrap();
    a.mov(word_ptr(rsi + 0x3004), 1u32).unwrap();

    let mut sent = a.create_label();
    let mut answered = a.create_label();
    a.set_label(&mut sent).unwrap();
    a.cmp(word_ptr(TX_USED + 2), 1).unwrap();
    a.jb(sent).unwrap();
    a.set_label(&mut answered).unwrap();
    a.pause().unwrap();
    a.cmp(word_ptr(RX_USED + 2), 1).unwrap();
    a.jb(answered).unwrap();
    print_bytes(
        &mut a,
        RX_BUF + NET_HDR_LEN as u64 + 14,
        HOST_SAYS.len() as u32,
    );
    power_off(&mut a);
    long_mode(&mut a)
}

#[test]
fn guest_sends_a_frame_and_receives_the_answer() {
    if !kvm_present() {
        return;
    }
    let out = SerialCapture::default();
    let vm = vm(&out);
    let (ours, network) = UnixDatagram::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let net = VirtioNet::new(NetConfig::new(MAC), vec![Arc::new(Socket(ours))]).unwrap();
    let counters = net.counters();
    let function = VirtioPciDevice::new(
        Box::new(net),
        vm.memory().clone(),
        Arc::new(vm.interrupts()),
    )
    .unwrap();
    let bus = PciBus::new(PciLayout::for_memory(64 << 20));
    bus.add(Arc::new(Mutex::new(function))).unwrap();

    // The network: check the guest's frame, answer it.
    let peer = std::thread::spawn(move || {
        network
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        let mut buf = [0u8; 2048];
        let n = network.recv(&mut buf).unwrap();
        let frame = buf[..n].to_vec();
        let mut answer = vec![0u8; NET_HDR_LEN];
        answer.extend_from_slice(&MAC);
        answer.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        answer.extend_from_slice(&ETHERTYPE);
        answer.extend_from_slice(HOST_SAYS);
        network.send(&answer).unwrap();
        frame
    });
    run_to_power_off(&vm, &bus, &net_payload());
    let frame = peer.join().unwrap();
    let eth = &frame[NET_HDR_LEN..];
    assert_eq!(
        &frame[..NET_HDR_LEN],
        &[0; NET_HDR_LEN],
        "no offload requested"
    );
    assert_eq!(&eth[0..6], &[0xff; 6], "broadcast");
    assert_eq!(
        &eth[6..12],
        &MAC,
        "the guest read its MAC from the device configuration"
    );
    assert_eq!(&eth[12..14], &ETHERTYPE);
    assert_eq!(&eth[14..], GUEST_SAYS);
    assert_eq!(out.text(), "hello from the host!\n");
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        (
            counters.tx_frames.load(SeqCst),
            counters.rx_frames.load(SeqCst)
        ),
        (1, 1)
    );
}
