//! The guest's side of its NIC, driven by the VMM: Ethernet frames go out
//! through the NIC's backend (a tap) exactly as the guest would send them,
//! from the NIC's MAC, and come back the same way. Above that, just enough
//! IPv4 for DHCP and TFTP: UDP out, UDP in, ARP answered for our address
//! and asked for the next hop. Headers are built and parsed with
//! `etherparse`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use etherparse::{
    ArpEthIpv4Packet, ArpOperation, ArpPacket, EtherType, NetSlice, PacketBuilder, SlicedPacket,
    TransportSlice,
};

/// Where frames go and come from.
pub trait FrameLink: Send {
    /// Send one Ethernet frame.
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()>;
    /// Receive one frame into `buf`, waiting until `deadline`; `None` when
    /// it passes first.
    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<Option<usize>>;
}

impl<T: FrameLink + ?Sized> FrameLink for &mut T {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        (**self).send(frame)
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<Option<usize>> {
        (**self).recv(buf, deadline)
    }
}

/// A tap opened without a virtio-net header: each read or write is one
/// frame.
#[derive(Debug)]
pub struct TapLink(File);

impl TapLink {
    /// Attach to tap `name` in the calling thread's network namespace.
    pub fn open(name: &str) -> std::io::Result<Self> {
        virtkit_net::tap::open(name, false, false).map(TapLink)
    }
}

impl FrameLink for TapLink {
    fn send(&mut self, frame: &[u8]) -> std::io::Result<()> {
        self.0.write_all(frame)
    }

    fn recv(&mut self, buf: &mut [u8], deadline: Instant) -> std::io::Result<Option<usize>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            let mut pfd = libc::pollfd {
                fd: self.0.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd for the duration of the call.
            let n = unsafe { libc::poll(&mut pfd, 1, ms) };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n > 0 {
                return self.0.read(buf).map(Some);
            }
        }
    }
}

/// A UDP datagram received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// Sender's MAC (the last hop).
    pub from_mac: [u8; 6],
    /// Sender's address.
    pub from: Ipv4Addr,
    /// Sender's port.
    pub from_port: u16,
    /// Our port it was sent to.
    pub to_port: u16,
    /// The payload.
    pub payload: Vec<u8>,
}

/// IPv4 over a [`FrameLink`] for one MAC.
pub struct Ipv4Link<L: FrameLink> {
    link: L,
    /// Our MAC.
    pub mac: [u8; 6],
    /// Our address once leased (`0.0.0.0` before).
    pub ip: Ipv4Addr,
    neighbours: Vec<(Ipv4Addr, [u8; 6])>,
    buf: Vec<u8>,
}

impl<L: FrameLink> std::fmt::Debug for Ipv4Link<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipv4Link")
            .field("mac", &self.mac)
            .field("ip", &self.ip)
            .finish_non_exhaustive()
    }
}

/// The broadcast MAC.
pub const BROADCAST_MAC: [u8; 6] = [0xff; 6];

impl<L: FrameLink> Ipv4Link<L> {
    /// Speak as `mac` over `link`.
    pub fn new(link: L, mac: [u8; 6]) -> Self {
        Ipv4Link {
            link,
            mac,
            ip: Ipv4Addr::UNSPECIFIED,
            neighbours: Vec::new(),
            buf: vec![0; 65536],
        }
    }

    /// Send a UDP datagram to `dst_mac`/`dst`.
    pub fn send_udp(
        &mut self,
        dst_mac: [u8; 6],
        dst: Ipv4Addr,
        src_port: u16,
        dst_port: u16,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let builder = PacketBuilder::ethernet2(self.mac, dst_mac)
            .ipv4(self.ip.octets(), dst.octets(), 64)
            .udp(src_port, dst_port);
        let mut frame = Vec::with_capacity(builder.size(payload.len()));
        builder
            .write(&mut frame, payload)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        self.link.send(&frame)
    }

    fn send_arp(
        &mut self,
        operation: ArpOperation,
        target_mac: [u8; 6],
        target: Ipv4Addr,
    ) -> std::io::Result<()> {
        let arp: ArpPacket = ArpEthIpv4Packet {
            operation,
            sender_mac: self.mac,
            sender_ipv4: self.ip.octets(),
            target_mac,
            target_ipv4: target.octets(),
        }
        .into();
        let dst = if operation == ArpOperation::REQUEST {
            BROADCAST_MAC
        } else {
            target_mac
        };
        let mut frame = Vec::with_capacity(64);
        frame.extend_from_slice(&dst);
        frame.extend_from_slice(&self.mac);
        frame.extend_from_slice(&EtherType::ARP.0.to_be_bytes());
        frame.extend_from_slice(&arp.to_bytes());
        frame.resize(60, 0); // the Ethernet minimum, without FCS
        self.link.send(&frame)
    }

    /// The next frame until `deadline`, handled by [`Self::inspect`]:
    /// `None` when the deadline passes, `Some(None)` for a frame that
    /// carried nothing for the caller.
    fn next_event(
        &mut self,
        port: Option<u16>,
        deadline: Instant,
    ) -> std::io::Result<Option<Option<Event>>> {
        let mut buf = std::mem::take(&mut self.buf);
        let event = match self.link.recv(&mut buf, deadline) {
            Ok(Some(n)) => self.inspect(&buf[..n], port).map(Some),
            other => other.map(|_| None),
        };
        self.buf = buf;
        event
    }

    /// Wait until `deadline` for a UDP datagram to `port`, answering ARP
    /// requests for our address meanwhile. Other traffic is dropped.
    pub fn recv_udp(&mut self, port: u16, deadline: Instant) -> std::io::Result<Option<Datagram>> {
        while let Some(event) = self.next_event(Some(port), deadline)? {
            if let Some(Event::Udp(d)) = event {
                return Ok(Some(d));
            }
        }
        Ok(None)
    }

    /// The MAC of `ip`, asked by ARP (three tries within `deadline`).
    pub fn resolve(&mut self, ip: Ipv4Addr, deadline: Instant) -> std::io::Result<Option<[u8; 6]>> {
        if let Some((_, mac)) = self.neighbours.iter().find(|(a, _)| *a == ip) {
            return Ok(Some(*mac));
        }
        let start = Instant::now();
        let step = deadline.saturating_duration_since(start) / 3;
        for attempt in 1..=3u32 {
            self.send_arp(ArpOperation::REQUEST, [0; 6], ip)?;
            let until = (start + step * attempt).min(deadline);
            while let Some(event) = self.next_event(None, until)? {
                if let Some(Event::Neighbour(a, mac)) = event {
                    if a == ip {
                        return Ok(Some(mac));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Handle one frame: answer ARP for us, learn ARP senders, hand back
    /// UDP to `port`.
    fn inspect(&mut self, frame: &[u8], port: Option<u16>) -> std::io::Result<Option<Event>> {
        let Ok(packet) = SlicedPacket::from_ethernet(frame) else {
            return Ok(None);
        };
        let from_mac = match &packet.link {
            Some(etherparse::LinkSlice::Ethernet2(eth)) => eth.source(),
            _ => return Ok(None),
        };
        match (&packet.net, &packet.transport) {
            (Some(NetSlice::Arp(arp)), _) => {
                // Only Ethernet/IPv4 ARP converts.
                let Ok(arp) = arp.to_packet().try_eth_ipv4() else {
                    return Ok(None);
                };
                {
                    let sender = arp.sender_ipv4_addr();
                    if !sender.is_unspecified() {
                        self.neighbours.retain(|(a, _)| *a != sender);
                        self.neighbours.push((sender, arp.sender_mac));
                    }
                    if arp.operation == ArpOperation::REQUEST
                        && !self.ip.is_unspecified()
                        && arp.target_ipv4_addr() == self.ip
                    {
                        self.send_arp(ArpOperation::REPLY, arp.sender_mac, sender)?;
                    }
                    Ok(Some(Event::Neighbour(sender, arp.sender_mac)))
                }
            }
            (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(udp))) => {
                let header = ip.header();
                let to = header.destination_addr();
                let ours = to == self.ip || to.is_broadcast() || self.ip.is_unspecified();
                if !ours || Some(udp.destination_port()) != port {
                    return Ok(None);
                }
                Ok(Some(Event::Udp(Datagram {
                    from_mac,
                    from: header.source_addr(),
                    from_port: udp.source_port(),
                    to_port: udp.destination_port(),
                    payload: udp.payload().to_vec(),
                })))
            }
            _ => Ok(None),
        }
    }
}

enum Event {
    Udp(Datagram),
    Neighbour(Ipv4Addr, [u8; 6]),
}
