//! The DHCP exchange a PXE ROM makes (RFC 2131 with the PXE options of
//! RFC 4578): DISCOVER as a BIOS PXE client, take the first OFFER,
//! REQUEST it, wait for the ACK. Messages are `dhcproto`'s.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use dhcproto::v4::{
    self, Decodable, Decoder, DhcpOption, Encodable, Encoder, Flags, Message, MessageType,
    OptionCode,
};

use super::link::{FrameLink, Ipv4Link, BROADCAST_MAC};
use super::NetbootError;

/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// What the ACK gave the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// The subnet mask (option 1; /24 when absent).
    pub mask: Ipv4Addr,
    /// The first router (option 3).
    pub router: Option<Ipv4Addr>,
    /// The DHCP server (option 54).
    pub server_id: Ipv4Addr,
    /// Where to fetch the boot file: option 66 when it is an address,
    /// else `siaddr`, else the DHCP server.
    pub next_server: Ipv4Addr,
    /// The boot file: option 67, else the `file` field.
    pub boot_file: Option<String>,
}

/// The PXE client's identity in DISCOVER and REQUEST.
const PXE_CLASS: &[u8] = b"PXEClient:Arch:00000:UNDI:002001";

fn message(mac: [u8; 6], xid: u32, kind: MessageType, extra: &[DhcpOption]) -> Vec<u8> {
    let mut m = Message::default();
    m.set_opcode(v4::Opcode::BootRequest)
        .set_xid(xid)
        .set_flags(Flags::default().set_broadcast())
        .set_chaddr(&mac);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    opts.insert(DhcpOption::MaxMessageSize(1464));
    opts.insert(DhcpOption::ClientSystemArchitecture(0u16.into()));
    opts.insert(DhcpOption::ClientNetworkInterface(1, 2, 1));
    opts.insert(DhcpOption::ClassIdentifier(PXE_CLASS.to_vec()));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::TFTPServerName,
        OptionCode::BootfileName,
    ]));
    for o in extra {
        opts.insert(o.clone());
    }
    let mut bytes = Vec::with_capacity(400);
    // Encoding a message built from valid parts cannot fail; an error
    // would leave `bytes` short and the server would ignore it.
    let _ = m.encode(&mut Encoder::new(&mut bytes));
    bytes
}

fn text(bytes: &[u8]) -> Option<String> {
    let s = String::from_utf8_lossy(bytes)
        .trim_end_matches('\0')
        .to_string();
    (!s.is_empty()).then_some(s)
}

/// Wait for a reply of `xid` with one of `kinds`.
fn reply<L: FrameLink>(
    link: &mut Ipv4Link<L>,
    mac: [u8; 6],
    xid: u32,
    deadline: Instant,
) -> Result<Option<Message>, NetbootError> {
    while let Some(d) = link.recv_udp(CLIENT_PORT, deadline)? {
        let Ok(m) = Message::decode(&mut Decoder::new(&d.payload)) else {
            continue;
        };
        if m.opcode() == v4::Opcode::BootReply
            && m.xid() == xid
            // `chaddr()` panics for an `hlen` over 16 (dhcproto 0.15).
            && (6..=16).contains(&m.hlen())
            && m.chaddr().get(..6) == Some(&mac[..])
        {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Run DISCOVER/OFFER/REQUEST/ACK within `timeout`, sending DISCOVER up
/// to `attempts` times spread over it.
pub fn acquire<L: FrameLink>(
    link: &mut Ipv4Link<L>,
    xid: u32,
    timeout: Duration,
    attempts: u32,
) -> Result<Lease, NetbootError> {
    let mac = link.mac;
    let start = Instant::now();
    let deadline = start + timeout;
    let attempts = attempts.max(1);
    let step = timeout / attempts;
    for attempt in 1..=attempts {
        let discover = message(mac, xid, MessageType::Discover, &[]);
        link.send_udp(
            BROADCAST_MAC,
            Ipv4Addr::BROADCAST,
            CLIENT_PORT,
            SERVER_PORT,
            &discover,
        )?;
        let until = (start + step * attempt).min(deadline);
        let offer = loop {
            match reply(link, mac, xid, until)? {
                Some(m) if m.opts().msg_type() == Some(MessageType::Offer) => break Some(m),
                Some(_) => continue,
                None => break None,
            }
        };
        let Some(offer) = offer else { continue };
        let Some(DhcpOption::ServerIdentifier(server_id)) =
            offer.opts().get(OptionCode::ServerIdentifier).cloned()
        else {
            continue; // RFC 2131: an OFFER must name its server
        };
        let request = message(
            mac,
            xid,
            MessageType::Request,
            &[
                DhcpOption::RequestedIpAddress(offer.yiaddr()),
                DhcpOption::ServerIdentifier(server_id),
            ],
        );
        link.send_udp(
            BROADCAST_MAC,
            Ipv4Addr::BROADCAST,
            CLIENT_PORT,
            SERVER_PORT,
            &request,
        )?;
        while let Some(m) = reply(link, mac, xid, deadline)? {
            match m.opts().msg_type() {
                Some(MessageType::Ack) => return Ok(lease_of(&m, server_id)),
                Some(MessageType::Nak) => return Err(NetbootError::Refused { server: server_id }),
                _ => {}
            }
        }
        break;
    }
    Err(NetbootError::NoOffer { waited: timeout })
}

fn lease_of(ack: &Message, server_id: Ipv4Addr) -> Lease {
    let opts = ack.opts();
    let mask = match opts.get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let router = match opts.get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied(),
        _ => None,
    };
    let option66 = match opts.get(OptionCode::TFTPServerName) {
        Some(DhcpOption::TFTPServerName(b)) => text(b).and_then(|s| s.parse().ok()),
        _ => None,
    };
    let siaddr = Some(ack.siaddr()).filter(|a| !a.is_unspecified());
    let boot_file = match opts.get(OptionCode::BootfileName) {
        Some(DhcpOption::BootfileName(b)) => text(b),
        _ => None,
    }
    .or_else(|| ack.fname().and_then(text));
    Lease {
        address: ack.yiaddr(),
        mask,
        router,
        server_id,
        next_server: option66.or(siaddr).unwrap_or(server_id),
        boot_file,
    }
}
