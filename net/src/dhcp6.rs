//! A stateful DHCPv6 server for the one guest on a link (the masquerade
//! bridge): it hands out the guest's fixed address (fd10:0:2::2 by
//! default) in an IA_NA with DNS servers and the domain search list.
//! Packets by `dhcproto`; [`answer6`] is a pure function and
//! [`Dhcp6Server`] the socket loop (port 547 on the interface, joined to
//! ff02::1:2, replies to the client's link-local address).

use std::net::{Ipv6Addr, SocketAddrV6};
use std::path::PathBuf;

use dhcproto::v6::{self, DhcpOption, IAAddr, Message, MessageType, IANA};
use dhcproto::{Decodable, Decoder, Encodable, Encoder};

use crate::mac::MacAddr;
use crate::responder::Responder;

/// The All_DHCP_Relay_Agents_and_Servers group.
const SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);

/// What the guest is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease6 {
    /// Its address.
    pub address: Ipv6Addr,
    /// DNS servers (option 23).
    pub dns: Vec<Ipv6Addr>,
    /// Search domains (option 24).
    pub search: Vec<String>,
    /// Preferred and valid lifetimes in seconds.
    pub lifetime_secs: u32,
}

/// The server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dhcp6Config {
    /// The interface served.
    pub interface: String,
    /// The server's MAC, for its DUID-LL.
    pub server_mac: MacAddr,
    /// When set, only a client whose DUID-LL/LLT carries this MAC is
    /// answered (a DUID of another type is answered: it carries no MAC).
    pub client_mac: Option<MacAddr>,
    /// The lease.
    pub lease: Lease6,
}

/// Errors of the DHCPv6 server.
#[derive(Debug, thiserror::Error)]
pub enum Dhcp6Error {
    /// Not a DHCPv6 client message.
    #[error("not a DHCPv6 client message: {0}")]
    Malformed(String),
    /// A search domain that is not a DNS name.
    #[error("DHCPv6 lease: search domain {0:?} is not a DNS name")]
    BadDomain(String),
    /// The socket.
    #[error("DHCPv6 server on {interface}: {source}")]
    Socket {
        /// The interface.
        interface: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn duid_ll(mac: MacAddr) -> Vec<u8> {
    let mut d = vec![0, 3, 0, 1]; // DUID-LL, hardware type Ethernet
    d.extend_from_slice(&mac.0);
    d
}

/// The MAC inside a DUID-LLT (type 1) or DUID-LL (type 3) of Ethernet.
fn duid_mac(duid: &[u8]) -> Option<MacAddr> {
    let mac = match duid {
        [0, 1, 0, 1, _, _, _, _, rest @ ..] | [0, 3, 0, 1, rest @ ..] => rest,
        _ => return None,
    };
    let m: [u8; 6] = mac.try_into().ok()?;
    Some(MacAddr(m))
}

/// The answer to one client message, or `None` (another client, a
/// message for another server, one a server does not answer).
pub fn answer6(
    config: &Dhcp6Config,
    packet: &[u8],
) -> Result<Option<(Vec<u8>, MessageType)>, Dhcp6Error> {
    // dhcproto 0.15 subtracts fixed sizes from option lengths it has not
    // checked (StatusCode, VendorClass, ...): a build with overflow checks
    // panics there (found by the `dhcp_message` fuzz target). Such a
    // packet is malformed; it must not take the server thread down.
    let decoded = std::panic::catch_unwind(|| Message::decode(&mut Decoder::new(packet)))
        .map_err(|_| Dhcp6Error::Malformed("the packet's options do not add up".into()))?;
    let req = decoded.map_err(|e| Dhcp6Error::Malformed(e.to_string()))?;
    let client = match req.opts().get(v6::OptionCode::ClientId) {
        Some(DhcpOption::ClientId(id)) => id.clone(),
        _ => return Err(Dhcp6Error::Malformed("no client identifier".into())),
    };
    if let (Some(want), Some(got)) = (config.client_mac, duid_mac(&client)) {
        if want != got {
            return Ok(None);
        }
    }
    let ours = duid_ll(config.server_mac);
    let addressed_to = match req.opts().get(v6::OptionCode::ServerId) {
        Some(DhcpOption::ServerId(id)) => Some(id.clone()),
        _ => None,
    };
    let kind = req.msg_type();
    let reply_kind = match kind {
        MessageType::Solicit => MessageType::Advertise,
        MessageType::Request | MessageType::Renew | MessageType::Release | MessageType::Decline => {
            if addressed_to.as_deref() != Some(&ours[..]) {
                return Ok(None);
            }
            MessageType::Reply
        }
        MessageType::Rebind | MessageType::Confirm | MessageType::InformationRequest => {
            MessageType::Reply
        }
        _ => return Ok(None),
    };
    let mut reply = Message::new_with_id(reply_kind, req.xid());
    let opts = reply.opts_mut();
    opts.insert(DhcpOption::ClientId(client));
    opts.insert(DhcpOption::ServerId(ours));
    let wants_address = matches!(
        kind,
        MessageType::Solicit | MessageType::Request | MessageType::Renew | MessageType::Rebind
    );
    if wants_address {
        let iaid = match req.opts().get(v6::OptionCode::IANA) {
            Some(DhcpOption::IANA(ia)) => ia.id,
            _ => 0,
        };
        let l = &config.lease;
        let mut ia_opts = v6::DhcpOptions::new();
        ia_opts.insert(DhcpOption::IAAddr(IAAddr {
            addr: l.address,
            preferred_life: l.lifetime_secs,
            valid_life: l.lifetime_secs,
            opts: v6::DhcpOptions::new(),
        }));
        reply.opts_mut().insert(DhcpOption::IANA(IANA {
            id: iaid,
            t1: l.lifetime_secs / 2,
            t2: (u64::from(l.lifetime_secs) * 4 / 5) as u32,
            opts: ia_opts,
        }));
    }
    if !matches!(kind, MessageType::Release | MessageType::Decline) {
        let l = &config.lease;
        if !l.dns.is_empty() {
            reply
                .opts_mut()
                .insert(DhcpOption::DomainNameServers(l.dns.clone()));
        }
        if !l.search.is_empty() {
            let names = l
                .search
                .iter()
                .map(|d| {
                    let fqdn = if d.ends_with('.') {
                        d.clone()
                    } else {
                        format!("{d}.")
                    };
                    dhcproto::Name::from_utf8(&fqdn).map_err(|_| Dhcp6Error::BadDomain(d.clone()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            reply.opts_mut().insert(DhcpOption::DomainSearchList(names));
        }
    }
    let mut bytes = Vec::new();
    reply
        .encode(&mut Encoder::new(&mut bytes))
        .map_err(|e| Dhcp6Error::Malformed(e.to_string()))?;
    Ok(Some((bytes, reply_kind)))
}

/// A running DHCPv6 server; stopped when dropped.
#[derive(Debug)]
pub struct Dhcp6Server(Responder);

fn socket(interface: &str) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let index = nix_index(interface)?;
    let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind_device(Some(interface.as_bytes()))?;
    s.bind(&SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 547, 0, 0).into())?;
    s.join_multicast_v6(&SERVERS, index)?;
    Ok(s.into())
}

fn nix_index(interface: &str) -> std::io::Result<u32> {
    let name = std::ffi::CString::new(interface)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: if_nametoindex reads a NUL-terminated string valid for the
    // call.
    let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if i == 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(i)
}

impl Dhcp6Server {
    /// Serve `config` on its interface inside the namespace at `netns`
    /// (`None`: this process's).
    pub fn start(config: Dhcp6Config, netns: Option<PathBuf>) -> Result<Self, Dhcp6Error> {
        for d in &config.lease.search {
            let fqdn = format!("{}.", d.trim_end_matches('.'));
            dhcproto::Name::from_utf8(&fqdn).map_err(|_| Dhcp6Error::BadDomain(d.clone()))?;
        }
        let interface_name = config.interface.clone();
        let interface = config.interface.clone();
        let sock = crate::netns::run_in(netns.as_deref(), move || socket(&interface)).map_err(
            |source| Dhcp6Error::Socket {
                interface: config.interface.clone(),
                source,
            },
        )?;
        let what = format!("DHCPv6 on {}", config.interface);
        let responder = Responder::start(sock, what.clone(), move |packet, from| {
            match answer6(&config, packet) {
                Ok(Some((bytes, _kind))) => Some((bytes, from)),
                Ok(None) => None,
                Err(e) => {
                    log::debug!("{what}: {e}");
                    None
                }
            }
        })
        .map_err(|source| Dhcp6Error::Socket {
            interface: interface_name,
            source,
        })?;
        Ok(Dhcp6Server(responder))
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

    fn config() -> Dhcp6Config {
        Dhcp6Config {
            interface: "k6t-x".into(),
            server_mac: MacAddr([2, 0, 0, 0, 0, 0xfe]),
            client_mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            lease: Lease6 {
                address: "fd10:0:2::2".parse().unwrap(),
                dns: vec!["fd10:0:2::1".parse().unwrap()],
                search: vec!["cluster.local".into()],
                lifetime_secs: 3600,
            },
        }
    }

    fn msg(kind: MessageType, client_mac: [u8; 6], server: Option<Vec<u8>>) -> Vec<u8> {
        let mut m = Message::new_with_id(kind, [1, 2, 3]);
        let mut duid = vec![0, 3, 0, 1];
        duid.extend_from_slice(&client_mac);
        m.opts_mut().insert(DhcpOption::ClientId(duid));
        if let Some(s) = server {
            m.opts_mut().insert(DhcpOption::ServerId(s));
        }
        m.opts_mut().insert(DhcpOption::IANA(IANA {
            id: 7,
            t1: 0,
            t2: 0,
            opts: v6::DhcpOptions::new(),
        }));
        let mut b = Vec::new();
        m.encode(&mut Encoder::new(&mut b)).unwrap();
        b
    }

    #[test]
    fn solicit_request_and_strangers() {
        let c = config();
        let guest = [2, 0, 0, 0, 0, 1];
        let (adv, kind) = answer6(&c, &msg(MessageType::Solicit, guest, None))
            .unwrap()
            .unwrap();
        assert_eq!(kind, MessageType::Advertise);
        let m = Message::decode(&mut Decoder::new(&adv)).unwrap();
        let Some(DhcpOption::IANA(ia)) = m.opts().get(v6::OptionCode::IANA) else {
            panic!("no IA_NA")
        };
        assert_eq!(ia.id, 7);
        let Some(DhcpOption::IAAddr(a)) = ia.opts.get(v6::OptionCode::IAAddr) else {
            panic!("no address")
        };
        assert_eq!(a.addr.to_string(), "fd10:0:2::2");
        let ours = duid_ll(c.server_mac);
        let (_, kind) = answer6(&c, &msg(MessageType::Request, guest, Some(ours)))
            .unwrap()
            .unwrap();
        assert_eq!(kind, MessageType::Reply);
        assert!(answer6(
            &c,
            &msg(
                MessageType::Request,
                guest,
                Some(vec![0, 3, 0, 1, 9, 9, 9, 9, 9, 9])
            )
        )
        .unwrap()
        .is_none());
        assert!(
            answer6(&c, &msg(MessageType::Solicit, [2, 0, 0, 0, 0, 2], None))
                .unwrap()
                .is_none()
        );
        assert!(answer6(&c, b"\x01").is_err());
    }
}
