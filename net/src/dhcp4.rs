//! A DHCPv4 server for guest NICs: each known MAC gets its one fixed
//! lease (the masquerade binding's 10.0.2.2, say) with gateway, DNS
//! servers and search domains, MTU, classless static routes and hostname.
//! Unknown clients are not answered, so the server can sit on a bridge
//! shared with other hosts.
//!
//! Packets are read and written by `dhcproto`; the answer is a pure
//! function ([`answer`]) so that it is tested without a network, and
//! [`Dhcp4Server`] is the socket loop around it, bound to one interface
//! (`SO_BINDTODEVICE`) in a chosen network namespace.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;

use dhcproto::v4::{
    self, Decodable, Decoder, DhcpOption, Encodable, Encoder, Message, MessageType, Opcode,
};

use crate::mac::MacAddr;
use crate::responder::Responder;

/// A route handed to the guest (option 121).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route4 {
    /// Destination network.
    pub destination: Ipv4Addr,
    /// Its prefix length (0–32).
    pub prefix_len: u8,
    /// The next hop.
    pub gateway: Ipv4Addr,
}

/// What one guest NIC is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease4 {
    /// The NIC's MAC.
    pub mac: MacAddr,
    /// Its address.
    pub address: Ipv4Addr,
    /// The subnet's prefix length (1–32).
    pub prefix_len: u8,
    /// Default gateway (option 3, and the default route in option 121
    /// when routes are given, as RFC 3442 asks).
    pub gateway: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    pub dns: Vec<Ipv4Addr>,
    /// Search domains (option 119; the first also as option 15).
    pub search: Vec<String>,
    /// Interface MTU (option 26).
    pub mtu: Option<u16>,
    /// Classless static routes (option 121).
    pub routes: Vec<Route4>,
    /// Host name (option 12).
    pub hostname: Option<String>,
    /// Lease time in seconds (option 51); renewal at half, rebinding at
    /// seven eighths.
    pub lease_secs: u32,
}

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp4Config {
    /// The server's own address on the link (option 54).
    pub server: Ipv4Addr,
    /// The interface it serves (bound with `SO_BINDTODEVICE`).
    pub interface: String,
    /// One lease per known MAC.
    pub leases: Vec<Lease4>,
    /// Network boot answers (PXE), for every client of this server.
    pub boot: Option<BootOptions>,
}

/// What a network-booting client is told: the TFTP server (`siaddr`, the
/// "next server") and a boot file chosen by what the client is, as
/// dnsmasq's `dhcp-boot` with `dhcp-match` tags does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOptions {
    /// The TFTP server, sent as `siaddr`.
    pub next_server: Ipv4Addr,
    /// Boot file for BIOS PXE ROMs (client architecture 0, or none).
    pub bios_file: Option<String>,
    /// Boot file for x86-64 UEFI clients (architectures 7 and 9).
    pub uefi_file: Option<String>,
    /// Boot file for iPXE (user class `iPXE`), usually a script; it wins
    /// over the others so that iPXE, once chain-loaded, does not load
    /// itself again.
    pub ipxe_file: Option<String>,
}

/// What a DHCP client is, from its client architecture (option 93, RFC
/// 4578) and user class (option 77).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootClient {
    /// A BIOS PXE ROM, or a client that names no architecture.
    Bios,
    /// x86-64 UEFI (architecture 7, or 9 as some firmware sends).
    Uefi,
    /// iPXE.
    Ipxe,
    /// Another architecture: no boot file is given.
    Other(u16),
}

/// Classify a request for [`BootOptions`]: iPXE by its user class, else
/// by its architecture.
pub fn boot_client(req: &Message) -> BootClient {
    let ipxe = match req.opts().get(v4::OptionCode::UserClass) {
        Some(DhcpOption::UserClass(data)) => user_classes(data).iter().any(|c| c == b"iPXE"),
        _ => false,
    };
    if ipxe {
        BootClient::Ipxe
    } else {
        arch_client(req)
    }
}

/// Classify a request by its client architecture (option 93) alone.
fn arch_client(req: &Message) -> BootClient {
    match req.opts().get(v4::OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => match u16::from(*arch) {
            0 => BootClient::Bios,
            7 | 9 => BootClient::Uefi,
            other => BootClient::Other(other),
        },
        _ => BootClient::Bios,
    }
}

/// The classes of option 77: RFC 3004's length-prefixed list, or (as
/// iPXE sends it) one bare string.
fn user_classes(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let len = usize::from(data[at]);
        match data.get(at + 1..at + 1 + len) {
            Some(c) if len > 0 => out.push(c.to_vec()),
            _ => return vec![data.to_vec()],
        }
        at += 1 + len;
    }
    out
}

impl BootOptions {
    /// The boot file for `client`, if it gets one.
    pub fn file_for(&self, client: BootClient) -> Option<&str> {
        match client {
            BootClient::Ipxe => self.ipxe_file.as_deref(),
            BootClient::Bios => self.bios_file.as_deref(),
            BootClient::Uefi => self.uefi_file.as_deref(),
            BootClient::Other(_) => None,
        }
    }
}

/// Errors of the DHCPv4 server.
#[derive(Debug, thiserror::Error)]
pub enum Dhcp4Error {
    /// A packet that is not a DHCP request.
    #[error("not a DHCPv4 request: {0}")]
    Malformed(String),
    /// A lease that cannot be encoded (a bad prefix, a bad domain name).
    #[error("lease for {mac}: {reason}")]
    BadLease {
        /// The lease's MAC.
        mac: MacAddr,
        /// What is wrong.
        reason: String,
    },
    /// The socket.
    #[error("DHCPv4 server on {interface}: {source}")]
    Socket {
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// An answer and where it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The encoded reply.
    pub bytes: Vec<u8>,
    /// `OFFER`, `ACK` or `NAK`.
    pub kind: MessageType,
    /// The destination: the client's address when it has one (renewal),
    /// else the broadcast address.
    pub to: SocketAddrV4,
}

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

fn mask(prefix_len: u8) -> Ipv4Addr {
    Ipv4Addr::from(
        u32::MAX
            .checked_shl(32 - u32::from(prefix_len))
            .unwrap_or(0),
    )
}

fn check(lease: &Lease4) -> Result<(), Dhcp4Error> {
    let bad = |reason: String| Dhcp4Error::BadLease {
        mac: lease.mac,
        reason,
    };
    if !(1..=32).contains(&lease.prefix_len) {
        return Err(bad(format!(
            "prefix length {} is not 1–32",
            lease.prefix_len
        )));
    }
    if let Some(r) = lease.routes.iter().find(|r| r.prefix_len > 32) {
        return Err(bad(format!(
            "route prefix length {} is over 32",
            r.prefix_len
        )));
    }
    Ok(())
}

/// Refuse options whose length `dhcproto` 0.15 only checks with
/// `debug_assert!` (a debug build panics on them, found by the
/// `dhcp_message` fuzz target; a release build misreads them), and option
/// overload, which no client we serve sends.
fn check_option_lengths(packet: &[u8]) -> Result<(), Dhcp4Error> {
    /// Fixed header (236 bytes) and the magic cookie.
    const OPTIONS_AT: usize = 240;
    let bad = |code: u8, len: usize| {
        Err(Dhcp4Error::Malformed(format!(
            "option {code} has a bad length {len}"
        )))
    };
    let mut at = OPTIONS_AT;
    while let Some(&code) = packet.get(at) {
        match code {
            0 => {
                at += 1;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some(&len) = packet.get(at + 1) else {
            break;
        };
        let len = usize::from(len);
        let ok = match code {
            // Option overload moves options into sname/file.
            52 => {
                return Err(Dhcp4Error::Malformed(
                    "option overload is not supported".into(),
                ))
            }
            80 => len == 0,
            81 => len >= 3,
            94 => len == 3,
            151 => len >= 1,
            152..=155 => len == 4,
            _ => true,
        };
        if !ok {
            return bad(code, len);
        }
        at += 2 + len;
    }
    Ok(())
}

/// The answer to one request `packet`, or `None` when the server stays
/// silent (an unknown client, a request meant for another server, a
/// RELEASE or DECLINE).
pub fn answer(config: &Dhcp4Config, packet: &[u8]) -> Result<Option<Reply>, Dhcp4Error> {
    check_option_lengths(packet)?;
    let req = Message::decode(&mut Decoder::new(packet))
        .map_err(|e| Dhcp4Error::Malformed(e.to_string()))?;
    // `chaddr()` slices by `hlen`, which the sender chose: over 16 it
    // panics (dhcproto 0.15), so check it first.
    if req.opcode() != Opcode::BootRequest || !(6..=16).contains(&req.hlen()) {
        return Err(Dhcp4Error::Malformed(
            "not a BOOTREQUEST with an Ethernet address".into(),
        ));
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&req.chaddr()[..6]);
    let mac = MacAddr(mac);
    let Some(lease) = config.leases.iter().find(|l| l.mac == mac) else {
        log::debug!("DHCPv4: no lease for {mac}; not answering");
        return Ok(None);
    };
    check(lease)?;
    let Some(kind) = req.opts().msg_type() else {
        return Err(Dhcp4Error::Malformed("no message type (option 53)".into()));
    };
    let requested = match req.opts().get(v4::OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    };
    let server_id = match req.opts().get(v4::OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    };
    let reply_kind = match kind {
        MessageType::Discover => MessageType::Offer,
        MessageType::Request => {
            if server_id.is_some_and(|s| s != config.server) {
                return Ok(None); // The client took another server's offer.
            }
            let asked = requested.unwrap_or(req.ciaddr());
            if asked == lease.address {
                MessageType::Ack
            } else {
                MessageType::Nak
            }
        }
        MessageType::Inform => MessageType::Ack,
        _ => return Ok(None),
    };
    let mut reply = Message::default();
    reply
        .set_opcode(Opcode::BootReply)
        .set_xid(req.xid())
        .set_flags(req.flags())
        .set_chaddr(req.chaddr())
        .set_giaddr(req.giaddr());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::MessageType(reply_kind));
    opts.insert(DhcpOption::ServerIdentifier(config.server));
    if reply_kind != MessageType::Nak {
        if kind != MessageType::Inform {
            reply.set_yiaddr(lease.address);
        } else {
            reply.set_ciaddr(req.ciaddr());
        }
        add_options(&mut reply, lease, kind != MessageType::Inform)?;
        if let Some(boot) = &config.boot {
            add_boot_options(&mut reply, &req, boot);
        }
    }
    let mut bytes = Vec::new();
    reply
        .encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| Dhcp4Error::BadLease {
            mac,
            reason: e.to_string(),
        })?;
    let to = if req.ciaddr().is_unspecified() || reply_kind == MessageType::Nak {
        SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
    } else {
        SocketAddrV4::new(req.ciaddr(), CLIENT_PORT)
    };
    Ok(Some(Reply {
        bytes,
        kind: reply_kind,
        to,
    }))
}

fn add_options(
    reply: &mut Message,
    lease: &Lease4,
    with_lease_time: bool,
) -> Result<(), Dhcp4Error> {
    let bad = |reason: String| Dhcp4Error::BadLease {
        mac: lease.mac,
        reason,
    };
    let opts = reply.opts_mut();
    if with_lease_time {
        opts.insert(DhcpOption::AddressLeaseTime(lease.lease_secs));
        opts.insert(DhcpOption::Renewal(lease.lease_secs / 2));
        opts.insert(DhcpOption::Rebinding(
            (u64::from(lease.lease_secs) * 7 / 8) as u32,
        ));
    }
    opts.insert(DhcpOption::SubnetMask(mask(lease.prefix_len)));
    if let Some(gw) = lease.gateway {
        opts.insert(DhcpOption::Router(vec![gw]));
    }
    if !lease.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(lease.dns.clone()));
    }
    if let Some(first) = lease.search.first() {
        opts.insert(DhcpOption::DomainName(first.clone()));
        let names = lease
            .search
            .iter()
            .map(|d| {
                let fqdn = if d.ends_with('.') {
                    d.clone()
                } else {
                    format!("{d}.")
                };
                dhcproto::Name::from_utf8(&fqdn)
                    .map_err(|e| bad(format!("search domain {d:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        opts.insert(DhcpOption::DomainSearch(names));
    }
    if let Some(mtu) = lease.mtu {
        opts.insert(DhcpOption::InterfaceMtu(mtu));
    }
    if let Some(h) = &lease.hostname {
        opts.insert(DhcpOption::Hostname(h.clone()));
    }
    if !lease.routes.is_empty() {
        let mut routes = Vec::new();
        for r in &lease.routes {
            let net = ipnet::Ipv4Net::new(r.destination, r.prefix_len)
                .map_err(|e| bad(format!("route {}/{}: {e}", r.destination, r.prefix_len)))?;
            routes.push((net.trunc(), r.gateway));
        }
        // RFC 3442: a client given option 121 ignores option 3, so the
        // default route travels in 121 too.
        if let Some(gw) = lease.gateway {
            if !lease.routes.iter().any(|r| r.prefix_len == 0) {
                let default = ipnet::Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
                    .map_err(|e| bad(e.to_string()))?;
                routes.push((default, gw));
            }
        }
        opts.insert(DhcpOption::ClasslessStaticRoute(routes));
    }
    Ok(())
}

/// `siaddr` (the next server) and the boot file: in option 67 when the
/// client asks for it in option 55, else in the BOOTP `file` field, as
/// dnsmasq answers (the PXE test compares the two). PXE clients get
/// option 60 `PXEClient` back, as the PXE specification asks of a boot
/// server.
fn add_boot_options(reply: &mut Message, req: &Message, boot: &BootOptions) {
    let client = boot_client(req);
    // iPXE with no script of its own is answered by its architecture.
    let file = boot.file_for(client).or_else(|| {
        boot.file_for(arch_client(req))
            .filter(|_| client == BootClient::Ipxe)
    });
    let Some(file) = file else {
        log::debug!("DHCPv4: no boot file for a {client:?} client");
        return;
    };
    reply.set_siaddr(boot.next_server);
    let asked = match req.opts().get(v4::OptionCode::ParameterRequestList) {
        Some(DhcpOption::ParameterRequestList(list)) => {
            list.contains(&v4::OptionCode::BootfileName)
        }
        _ => false,
    };
    if asked {
        reply
            .opts_mut()
            .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    } else {
        reply.set_fname_str(file);
    }
    let pxe = matches!(
        req.opts().get(v4::OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(id)) if id.starts_with(b"PXEClient")
    );
    if pxe {
        reply
            .opts_mut()
            .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
    }
}

/// A running DHCPv4 server; stopped when dropped.
#[derive(Debug)]
pub struct Dhcp4Server(Responder);

fn socket(interface: &str) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Several servers (one per guest NIC) share port 67, one per device.
    s.set_reuse_address(true)?;
    s.set_broadcast(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, SERVER_PORT).into())?;
    Ok(s.into())
}

impl Dhcp4Server {
    /// Serve `config` on its interface, inside the network namespace at
    /// `netns` (`None`: this process's). Leases are checked first.
    pub fn start(config: Dhcp4Config, netns: Option<PathBuf>) -> Result<Self, Dhcp4Error> {
        for l in &config.leases {
            check(l)?;
        }
        let interface = config.interface.clone();
        let name = config.interface.clone();
        let fail = |source| Dhcp4Error::Socket {
            interface: name.clone(),
            source,
        };
        let sock =
            crate::netns::run_in(netns.as_deref(), move || socket(&interface)).map_err(fail)?;
        let what = format!("DHCPv4 on {}", config.interface);
        let responder = Responder::start(sock, what.clone(), move |packet, _from| {
            match answer(&config, packet) {
                Ok(Some(reply)) => Some((reply.bytes, reply.to.into())),
                Ok(None) => None,
                Err(e) => {
                    log::debug!("{what}: {e}");
                    None
                }
            }
        })
        .map_err(fail)?;
        Ok(Dhcp4Server(responder))
    }

    /// Replies sent so far.
    pub fn answered(&self) -> u64 {
        self.0.answered()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const GUEST: MacAddr = MacAddr([2, 0, 0, 0, 0xaa, 1]);

    fn config() -> Dhcp4Config {
        Dhcp4Config {
            boot: None,
            server: Ipv4Addr::new(10, 0, 2, 1),
            interface: "k6t-eth0".into(),
            leases: vec![Lease4 {
                mac: GUEST,
                address: Ipv4Addr::new(10, 0, 2, 2),
                prefix_len: 24,
                gateway: Some(Ipv4Addr::new(10, 0, 2, 1)),
                dns: vec![Ipv4Addr::new(10, 96, 0, 10)],
                search: vec!["cluster.local".into()],
                mtu: Some(1450),
                routes: vec![],
                hostname: Some("vm".into()),
                lease_secs: 3600,
            }],
        }
    }

    fn request(mac: MacAddr, kind: MessageType, extra: &[DhcpOption], ciaddr: Ipv4Addr) -> Vec<u8> {
        let mut m = Message::default();
        m.set_opcode(Opcode::BootRequest)
            .set_xid(0x1234_5678)
            .set_chaddr(&mac.0)
            .set_ciaddr(ciaddr);
        m.opts_mut().insert(DhcpOption::MessageType(kind));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    fn decode(r: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&r.bytes)).unwrap()
    }

    fn file(m: &Message) -> &str {
        m.fname_str()
            .map_or("", |f| f.unwrap())
            .trim_end_matches('\0')
    }

    #[test]
    fn boot_files_follow_architecture_and_user_class() {
        let mut c = config();
        c.boot = Some(BootOptions {
            next_server: Ipv4Addr::new(10, 0, 2, 1),
            bios_file: Some("pxelinux.0".into()),
            uefi_file: Some("grubx64.efi".into()),
            ipxe_file: Some("boot.ipxe".into()),
        });
        let none = Ipv4Addr::UNSPECIFIED;
        let arch = |a: u16| DhcpOption::ClientSystemArchitecture(a.into());
        let prl = DhcpOption::ParameterRequestList(vec![
            v4::OptionCode::TFTPServerName,
            v4::OptionCode::BootfileName,
        ]);
        let pxe = DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003016".to_vec());
        let offer_from = |c: &Dhcp4Config, extra: &[DhcpOption]| {
            decode(
                &answer(c, &request(GUEST, MessageType::Discover, extra, none))
                    .unwrap()
                    .unwrap(),
            )
        };
        let offer = |extra: &[DhcpOption]| offer_from(&c, extra);
        // Asked for option 67: there, and the file field stays empty.
        let m = offer(&[arch(7), prl.clone(), pxe]);
        assert_eq!(m.siaddr(), Ipv4Addr::new(10, 0, 2, 1));
        assert_eq!(file(&m), "");
        assert_eq!(
            m.opts().get(v4::OptionCode::BootfileName),
            Some(&DhcpOption::BootfileName(b"grubx64.efi".to_vec()))
        );
        assert_eq!(
            m.opts().get(v4::OptionCode::ClassIdentifier),
            Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
        );
        // BIOS (architecture 0 or none); options 66/67 only when asked.
        let m = offer(&[arch(0)]);
        assert_eq!(file(&m), "pxelinux.0");
        assert!(m.opts().get(v4::OptionCode::BootfileName).is_none());
        assert_eq!(file(&offer(&[])), "pxelinux.0");
        // iPXE by user class, bare or RFC 3004 encoded.
        for class in [b"iPXE".to_vec(), b"\x04iPXE".to_vec()] {
            let m = offer(&[arch(7), DhcpOption::UserClass(class)]);
            assert_eq!(file(&m), "boot.ipxe");
        }
        // ARM64 UEFI (11) gets no boot file.
        let m = offer(&[arch(11)]);
        assert!(m.fname().is_none() && m.siaddr().is_unspecified());
        // iPXE with no script of its own: by architecture.
        let mut c = c.clone();
        c.boot.as_mut().unwrap().ipxe_file = None;
        let m = offer_from(&c, &[arch(7), DhcpOption::UserClass(b"iPXE".to_vec())]);
        assert_eq!(file(&m), "grubx64.efi");
    }

    #[test]
    fn discover_request_and_renewal() {
        let c = config();
        let none = Ipv4Addr::UNSPECIFIED;
        let offer = answer(&c, &request(GUEST, MessageType::Discover, &[], none))
            .unwrap()
            .unwrap();
        assert_eq!(offer.kind, MessageType::Offer);
        assert_eq!(offer.to, SocketAddrV4::new(Ipv4Addr::BROADCAST, 68));
        let m = decode(&offer);
        assert_eq!(
            (m.xid(), m.yiaddr()),
            (0x1234_5678, Ipv4Addr::new(10, 0, 2, 2))
        );
        assert_eq!(
            m.opts().get(v4::OptionCode::SubnetMask),
            Some(&DhcpOption::SubnetMask([255, 255, 255, 0].into()))
        );
        assert_eq!(
            m.opts().get(v4::OptionCode::InterfaceMtu),
            Some(&DhcpOption::InterfaceMtu(1450))
        );
        assert_eq!(
            m.opts().get(v4::OptionCode::Renewal),
            Some(&DhcpOption::Renewal(1800))
        );
        // No routes: no option 121, the router option carries the gateway.
        assert!(m.opts().get(v4::OptionCode::ClasslessStaticRoute).is_none());

        let ours = [
            DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 2)),
            DhcpOption::ServerIdentifier(c.server),
        ];
        let ack = answer(&c, &request(GUEST, MessageType::Request, &ours, none))
            .unwrap()
            .unwrap();
        assert_eq!(ack.kind, MessageType::Ack);
        // Renewal: unicast to the client's address.
        let renew = answer(
            &c,
            &request(GUEST, MessageType::Request, &[], Ipv4Addr::new(10, 0, 2, 2)),
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            (renew.kind, renew.to),
            (
                MessageType::Ack,
                SocketAddrV4::new(Ipv4Addr::new(10, 0, 2, 2), 68)
            )
        );
    }

    #[test]
    fn wrong_address_other_server_unknown_client_and_junk() {
        let c = config();
        let none = Ipv4Addr::UNSPECIFIED;
        let wrong = [DhcpOption::RequestedIpAddress(Ipv4Addr::new(10, 0, 2, 9))];
        let nak = answer(&c, &request(GUEST, MessageType::Request, &wrong, none))
            .unwrap()
            .unwrap();
        assert_eq!(nak.kind, MessageType::Nak);
        assert!(decode(&nak).yiaddr().is_unspecified());
        let elsewhere = [DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 0, 2, 254))];
        assert!(
            answer(&c, &request(GUEST, MessageType::Request, &elsewhere, none))
                .unwrap()
                .is_none()
        );
        let stranger = MacAddr([2, 0, 0, 0, 0xbb, 1]);
        assert!(
            answer(&c, &request(stranger, MessageType::Discover, &[], none))
                .unwrap()
                .is_none()
        );
        assert!(answer(&c, &request(GUEST, MessageType::Release, &[], none))
            .unwrap()
            .is_none());
        assert!(matches!(answer(&c, b"junk"), Err(Dhcp4Error::Malformed(_))));
        let mut bad = config();
        bad.leases[0].prefix_len = 33;
        let e = answer(&bad, &request(GUEST, MessageType::Discover, &[], none)).unwrap_err();
        assert!(e.to_string().contains("prefix length 33"), "{e}");
        assert!(Dhcp4Server::start(bad, None).is_err());
    }

    #[test]
    fn inform_gets_options_without_an_address() {
        let c = config();
        let r = answer(
            &c,
            &request(GUEST, MessageType::Inform, &[], Ipv4Addr::new(10, 0, 2, 2)),
        )
        .unwrap()
        .unwrap();
        let m = decode(&r);
        assert_eq!(r.kind, MessageType::Ack);
        assert!(m.yiaddr().is_unspecified());
        assert!(m.opts().get(v4::OptionCode::AddressLeaseTime).is_none());
        assert!(m.opts().get(v4::OptionCode::DomainNameServer).is_some());
    }
}
