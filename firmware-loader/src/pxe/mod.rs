//! PXE network boot served by the VMM host: the networking crate's DHCPv4
//! server answering with boot options (next server, a boot file per
//! client kind), and a TFTP server for the boot directory, both bound to
//! the link the guest's NIC is on.

pub mod tftp;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use virtkit_net::{BootOptions, Dhcp4Config, Dhcp4Error, Dhcp4Server, Lease4};

pub use tftp::{TftpError, TftpServer};

/// The TFTP port PXE ROMs use.
pub const TFTP_PORT: u16 = 69;

/// A PXE service for the clients of one link.
#[derive(Debug, Clone)]
pub struct PxeConfig {
    /// The interface the clients are on (a bridge or a veth).
    pub interface: String,
    /// The server's address on it: DHCP server identifier, next server
    /// and TFTP address.
    pub server: Ipv4Addr,
    /// The leases, one per client MAC.
    pub leases: Vec<Lease4>,
    /// The directory served over TFTP.
    pub boot_dir: PathBuf,
    /// Boot file for BIOS PXE ROMs.
    pub bios_file: Option<String>,
    /// Boot file for x86-64 UEFI clients.
    pub uefi_file: Option<String>,
    /// Boot file for iPXE.
    pub ipxe_file: Option<String>,
    /// The network namespace the link is in (`None`: this process's).
    pub netns: Option<PathBuf>,
}

/// Why the PXE service could not start.
#[derive(Debug, thiserror::Error)]
pub enum PxeError {
    /// A boot file is missing from the boot directory.
    #[error("boot file {file:?} is not in {dir}")]
    MissingBootFile {
        /// The file.
        file: String,
        /// The directory.
        dir: PathBuf,
    },
    /// The DHCP server.
    #[error(transparent)]
    Dhcp(#[from] Dhcp4Error),
    /// The TFTP server.
    #[error(transparent)]
    Tftp(#[from] TftpError),
}

/// A running PXE service; both servers stop when it is dropped.
#[derive(Debug)]
pub struct PxeServer {
    /// The DHCP server.
    pub dhcp: Dhcp4Server,
    /// The TFTP server.
    pub tftp: TftpServer,
}

impl PxeServer {
    /// Check that every configured boot file is in the boot directory (and
    /// inside it), then start TFTP and DHCP.
    pub fn start(config: PxeConfig) -> Result<Self, PxeError> {
        for file in [&config.bios_file, &config.uefi_file, &config.ipxe_file]
            .into_iter()
            .flatten()
        {
            check_boot_file(&config.boot_dir, file)?;
        }
        let tftp = TftpServer::start(
            &config.boot_dir,
            SocketAddr::new(config.server.into(), TFTP_PORT),
            config.netns.clone(),
        )?;
        let dhcp = Dhcp4Server::start(
            Dhcp4Config {
                server: config.server,
                interface: config.interface,
                leases: config.leases,
                boot: Some(BootOptions {
                    next_server: config.server,
                    bios_file: config.bios_file,
                    uefi_file: config.uefi_file,
                    ipxe_file: config.ipxe_file,
                }),
            },
            config.netns,
        )?;
        Ok(PxeServer { dhcp, tftp })
    }
}

fn check_boot_file(dir: &Path, file: &str) -> Result<(), PxeError> {
    let missing = || PxeError::MissingBootFile {
        file: file.to_string(),
        dir: dir.to_path_buf(),
    };
    // iPXE scripts may be URLs served elsewhere.
    if file.contains("://") {
        return Ok(());
    }
    let rel = tftp::relative_path(file).map_err(|_| missing())?;
    let (Ok(root), Ok(path)) = (dir.canonicalize(), dir.join(rel).canonicalize()) else {
        return Err(missing());
    };
    if path.starts_with(root) && path.is_file() {
        Ok(())
    } else {
        Err(missing())
    }
}
