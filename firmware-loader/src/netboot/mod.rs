//! Network boot done by the VMM (lifecycle-migration-boot §10): PXE ROMs
//! and OVMF's network stack are far too slow under software
//! virtualization, so the VMM speaks for the guest's NIC instead — DHCP
//! from the NIC's MAC through its tap, the server from option 66 or
//! `siaddr`, the file from option 67 or `file`, a TFTP fetch — and hands
//! the boot program to [`crate::boot_chain`] to load at 0x7c00 and run.
//! Timeouts and retries are configurable and every step is recorded in a
//! [`BootReport`].
//!
//! What runs is a self-contained boot program: there is no PXE/UNDI API
//! (`!PXE`, `PXENV+`) for it to call back into, so loaders such as
//! pxelinux or iPXE's `undionly.kpxe` are not supported this way.

pub mod dhcp;
pub mod link;
pub mod tftp;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub use dhcp::Lease;
pub use link::{FrameLink, Ipv4Link, TapLink};

/// How a network boot behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootConfig {
    /// The NIC's MAC, the one DHCP sees.
    pub mac: [u8; 6],
    /// How long to wait for a lease in all (the spec's bounded ~3 s).
    pub dhcp_timeout: Duration,
    /// DISCOVERs sent within that time.
    pub dhcp_attempts: u32,
    /// How long to wait for each TFTP packet.
    pub tftp_timeout: Duration,
    /// Retransmissions before a transfer is given up.
    pub tftp_retries: u32,
    /// The largest boot program accepted: by default what fits between
    /// 0x7c00 and the EBDA at 0x9fc00.
    pub max_file: usize,
}

impl NetbootConfig {
    /// Defaults for `mac`: 3 s and 3 DISCOVERs for DHCP, 1 s × 4 retries
    /// per TFTP packet.
    pub fn new(mac: [u8; 6]) -> Self {
        NetbootConfig {
            mac,
            dhcp_timeout: Duration::from_secs(3),
            dhcp_attempts: 3,
            tftp_timeout: Duration::from_secs(1),
            tftp_retries: 4,
            max_file: (0x9_fc00 - crate::boot_chain::LOAD_ADDR) as usize,
        }
    }
}

/// Why a network boot failed.
#[derive(Debug, thiserror::Error)]
pub enum NetbootError {
    /// The NIC's backend failed.
    #[error("network I/O: {0}")]
    Io(#[from] std::io::Error),
    /// No DHCP server answered.
    #[error("no DHCP offer within {waited:?}")]
    NoOffer {
        /// How long we waited.
        waited: Duration,
    },
    /// The server refused our REQUEST.
    #[error("DHCP server {server} refused the request (NAK)")]
    Refused {
        /// The server.
        server: Ipv4Addr,
    },
    /// The lease names no boot file.
    #[error("DHCP server {server} gave no boot file (option 67 or file)")]
    NoBootFile {
        /// The server.
        server: Ipv4Addr,
    },
    /// The next hop to the TFTP server did not answer ARP.
    #[error("no ARP answer from {next_hop}, the way to the TFTP server")]
    NoRoute {
        /// The next hop.
        next_hop: Ipv4Addr,
    },
    /// The TFTP server went silent.
    #[error("TFTP transfer of {file:?} timed out after {received} bytes")]
    TftpTimeout {
        /// The file.
        file: String,
        /// Bytes received.
        received: usize,
    },
    /// The TFTP server answered with an error.
    #[error("TFTP server refused {file:?}: error {code}: {message}")]
    TftpError {
        /// The file.
        file: String,
        /// The TFTP error code.
        code: u16,
        /// Its message.
        message: String,
    },
    /// The file is larger than a boot program may be.
    #[error("boot file {file:?} is larger than {max} bytes")]
    TooLarge {
        /// The file.
        file: String,
        /// The limit.
        max: usize,
    },
}

/// One step of a boot attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootStep {
    /// The device, as a spec path (`spec.domain.devices.interfaces[0]`).
    pub device: String,
    /// What was done: `dhcp`, `arp`, `tftp`, `read`, `boot`.
    pub action: String,
    /// What came of it.
    pub outcome: Result<String, String>,
    /// How long it took.
    pub elapsed: Duration,
}

impl std::fmt::Display for BootStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (mark, text) = match &self.outcome {
            Ok(t) => ("ok", t),
            Err(t) => ("failed", t),
        };
        write!(
            f,
            "{} {} {mark} after {} ms: {text}",
            self.device,
            self.action,
            self.elapsed.as_millis()
        )
    }
}

/// Every step of a boot, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BootReport {
    /// The steps.
    pub steps: Vec<BootStep>,
}

impl BootReport {
    /// Run `f` as step `action` of `device`, recording its outcome.
    pub fn step<T, E: std::fmt::Display>(
        &mut self,
        device: &str,
        action: &str,
        f: impl FnOnce() -> Result<T, E>,
        describe: impl FnOnce(&T) -> String,
    ) -> Result<T, E> {
        let start = Instant::now();
        let result = f();
        self.steps.push(BootStep {
            device: device.to_string(),
            action: action.to_string(),
            outcome: match &result {
                Ok(v) => Ok(describe(v)),
                Err(e) => Err(e.to_string()),
            },
            elapsed: start.elapsed(),
        });
        result
    }
}

impl std::fmt::Display for BootReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for s in &self.steps {
            writeln!(f, "{s}")?;
        }
        Ok(())
    }
}

/// A boot program fetched over the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetbootImage {
    /// The lease it came with.
    pub lease: Lease,
    /// Its name on the server.
    pub file: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A transaction ID that differs per MAC and per boot.
fn xid(mac: [u8; 6]) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ nanos
}

/// DHCP, ARP and TFTP over `link` as `config.mac`, each step recorded for
/// `device` in `report`.
pub fn network_boot<L: FrameLink>(
    link: L,
    config: &NetbootConfig,
    device: &str,
    report: &mut BootReport,
) -> Result<NetbootImage, NetbootError> {
    let mut net = Ipv4Link::new(link, config.mac);
    let lease = report.step(
        device,
        "dhcp",
        || {
            dhcp::acquire(
                &mut net,
                xid(config.mac),
                config.dhcp_timeout,
                config.dhcp_attempts,
            )
        },
        |l| {
            format!(
                "{} from {}, next server {}, file {:?}",
                l.address, l.server_id, l.next_server, l.boot_file
            )
        },
    )?;
    net.ip = lease.address;
    let file = lease.boot_file.clone().ok_or(NetbootError::NoBootFile {
        server: lease.server_id,
    })?;
    let same_subnet = |a: Ipv4Addr| {
        let m = u32::from(lease.mask);
        u32::from(a) & m == u32::from(lease.address) & m
    };
    let next_hop = match lease.router {
        Some(r) if !same_subnet(lease.next_server) => r,
        _ => lease.next_server,
    };
    let arp_wait = config.tftp_timeout * (config.tftp_retries + 1);
    let next_hop_mac = report.step(
        device,
        "arp",
        || {
            net.resolve(next_hop, Instant::now() + arp_wait)?
                .ok_or(NetbootError::NoRoute { next_hop })
        },
        |mac| format!("{next_hop} is at {}", virtkit_net::MacAddr(*mac)),
    )?;
    let bytes = report.step(
        device,
        "tftp",
        || {
            tftp::fetch(
                &mut net,
                lease.next_server,
                next_hop_mac,
                &file,
                config.tftp_timeout,
                config.tftp_retries,
                config.max_file,
            )
        },
        |b| format!("{file:?} from {}: {} bytes", lease.next_server, b.len()),
    )?;
    Ok(NetbootImage { lease, file, bytes })
}
