//! `virtkit-pxe --interface IF --server IP --boot-dir DIR --lease MAC=IP/LEN
//! [--bios FILE] [--uefi FILE] [--ipxe FILE] [--netns NAME]`: serve a boot
//! directory to PXE clients on one link, over DHCP (with boot options per
//! client kind) and TFTP, until interrupted. Try it against a real PXE
//! ROM or `udhcpc` + `tftp` in a namespace:
//!
//! ```text
//! ip netns add pxe; ip link add vpxe type veth peer name eth1 netns pxe
//! ip addr add 10.9.0.1/24 dev vpxe; ip link set vpxe up
//! virtkit-pxe --interface vpxe --server 10.9.0.1 --boot-dir ./boot \
//!     --lease de:00:00:00:00:de=10.9.0.2/24 --bios pxelinux.0
//! ```
//!
//! Exit codes: 0 after a clean stop (stdin closed); 1 when a server could
//! not start (the reason is printed); 2 bad usage.

use std::io::Read;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use virtkit_firmware_loader::pxe::{PxeConfig, PxeServer};
use virtkit_net::{netns, Lease4, MacAddr};

#[derive(Parser)]
#[command(
    version,
    about = "Serve a boot directory to PXE clients over DHCP and TFTP"
)]
struct Args {
    /// The interface the clients are on.
    #[arg(long)]
    interface: String,
    /// This host's address on it (DHCP server, next server, TFTP).
    #[arg(long)]
    server: Ipv4Addr,
    /// The directory served over TFTP.
    #[arg(long)]
    boot_dir: PathBuf,
    /// A client: MAC=IP/PREFIX (repeatable).
    #[arg(long = "lease", required = true)]
    leases: Vec<String>,
    /// Boot file for BIOS PXE ROMs.
    #[arg(long)]
    bios: Option<String>,
    /// Boot file for x86-64 UEFI clients.
    #[arg(long)]
    uefi: Option<String>,
    /// Boot file (script) for iPXE.
    #[arg(long)]
    ipxe: Option<String>,
    /// A named network namespace (`ip netns`) the interface is in.
    #[arg(long)]
    netns: Option<String>,
}

fn lease(text: &str) -> Result<Lease4, String> {
    let (mac, addr) = text
        .split_once('=')
        .ok_or_else(|| format!("--lease {text:?}: expected MAC=IP/PREFIX"))?;
    let mac: MacAddr = mac
        .parse()
        .map_err(|e| format!("--lease {text:?}: MAC: {e}"))?;
    let (ip, len) = addr.split_once('/').unwrap_or((addr, "24"));
    let address: Ipv4Addr = ip
        .parse()
        .map_err(|e| format!("--lease {text:?}: address: {e}"))?;
    let prefix_len: u8 = len
        .parse()
        .ok()
        .filter(|l| (1..=32).contains(l))
        .ok_or_else(|| format!("--lease {text:?}: prefix length {len:?} is not 1–32"))?;
    Ok(Lease4 {
        mac,
        address,
        prefix_len,
        gateway: None,
        dns: vec![],
        search: vec![],
        mtu: None,
        routes: vec![],
        hostname: None,
        lease_secs: 3600,
    })
}

fn main() -> ExitCode {
    let args = Args::parse();
    let leases = match args
        .leases
        .iter()
        .map(|l| lease(l))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(l) => l,
        Err(e) => {
            eprintln!("virtkit-pxe: {e}");
            return ExitCode::from(2);
        }
    };
    if args.bios.is_none() && args.uefi.is_none() && args.ipxe.is_none() {
        eprintln!("virtkit-pxe: name at least one boot file (--bios, --uefi, --ipxe)");
        return ExitCode::from(2);
    }
    let server = match PxeServer::start(PxeConfig {
        interface: args.interface.clone(),
        server: args.server,
        leases,
        boot_dir: args.boot_dir.clone(),
        bios_file: args.bios,
        uefi_file: args.uefi,
        ipxe_file: args.ipxe,
        netns: args.netns.as_deref().map(netns::named),
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("virtkit-pxe: {e}");
            return ExitCode::from(1);
        }
    };
    println!(
        "serving {} on {} ({}); TFTP at {}; close stdin (Ctrl-D) to stop",
        args.boot_dir.display(),
        args.interface,
        args.server,
        server.tftp.local_addr()
    );
    // Run until stdin closes: no signal handling needed, and a test or a
    // supervisor stops it by closing the pipe.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    println!(
        "stopped: {} DHCP replies, {} TFTP transfers, {} refused",
        server.dhcp.answered(),
        server.tftp.completed(),
        server.tftp.refused()
    );
    ExitCode::SUCCESS
}
