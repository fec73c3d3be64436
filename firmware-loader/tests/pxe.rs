//! A real PXE exchange in network namespaces: a client namespace (the
//! seed's PXE NIC, `de:00:00:00:00:de`) runs BusyBox `udhcpc` as a BIOS,
//! a UEFI and an iPXE client against our DHCP server, then fetches its
//! boot file from our TFTP server with tftp-hpa (plain RFC 1350) and curl
//! (blksize and tsize), byte for byte. Paths out of the boot directory and
//! writes are refused. Then dnsmasq, configured the same way, answers the
//! same clients, and the boot fields must match ours.
//!
//! Needs root, `udhcpc`, `tftp`, `curl` and `dnsmasq` (`.ci/run` installs
//! them); skips, saying why, otherwise.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use virtkit_firmware_loader::pxe::{PxeConfig, PxeServer};
use virtkit_net::{netns, Lease4, MacAddr};

const SERVER: &str = "10.9.0.1";
const CLIENT_IP: &str = "10.9.0.2";
const MAC: &str = "de:00:00:00:00:de";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

fn ready() -> bool {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if !root {
        eprintln!("SKIP: needs root for network namespaces");
        return false;
    }
    for tool in ["ip", "udhcpc", "tftp", "curl", "dnsmasq"] {
        if !sh(&format!(
            "command -v {tool} >/dev/null || test -x /usr/sbin/{tool}"
        )) {
            eprintln!("SKIP: {tool} is not installed");
            return false;
        }
    }
    true
}

/// A server and a client namespace joined by a veth pair; removed on drop.
struct Link {
    server_ns: String,
    client_ns: String,
    server_if: String,
}

impl Link {
    fn new() -> Link {
        let id = std::process::id() % 100_000;
        let l = Link {
            server_ns: format!("vk-pxe-s-{id}"),
            client_ns: format!("vk-pxe-c-{id}"),
            server_if: format!("vkpxs{id}"),
        };
        let ok = sh(&format!(
            "ip netns add {s} && ip netns add {c} && \
             ip link add {si} netns {s} type veth peer name eth1 netns {c} && \
             ip -n {c} link set eth1 address {MAC} && \
             ip -n {s} addr add {SERVER}/24 dev {si} && \
             ip -n {s} link set {si} up && ip -n {c} link set eth1 up && \
             ip -n {s} link set lo up && ip -n {c} link set lo up",
            s = l.server_ns,
            c = l.client_ns,
            si = l.server_if,
        ));
        assert!(ok, "creating namespaces and a veth pair");
        l
    }

    /// Give the client the address it leased, so TFTP can run.
    fn configure_client(&self) {
        sh(&format!(
            "ip -n {c} addr flush dev eth1 && ip -n {c} addr add {CLIENT_IP}/24 dev eth1",
            c = self.client_ns
        ));
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        sh(&format!(
            "ip netns del {} 2>/dev/null; ip netns del {} 2>/dev/null",
            self.server_ns, self.client_ns
        ));
    }
}

#[derive(Clone, Copy, Debug)]
enum Client {
    Bios,
    Uefi,
    Ipxe,
}

/// Run udhcpc as `client` once; the environment its script saw at bound.
fn udhcpc(link: &Link, dir: &Path, client: Client) -> BTreeMap<String, String> {
    let script = dir.join("script.sh");
    let out = dir.join("env.txt");
    let _ = std::fs::remove_file(&out);
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = bound ] && env > {}\nexit 0\n",
            out.display()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", script.display()));
    let extra = match client {
        Client::Bios => "-V PXEClient:Arch:00000:UNDI:002001",
        Client::Uefi => "-V PXEClient:Arch:00007:UNDI:003016 -x 0x5d:0007",
        Client::Ipxe => "-V PXEClient:Arch:00007:UNDI:003016 -x 0x5d:0007 -x 0x4d:69505845",
    };
    let ok = sh(&format!(
        "ip netns exec {ns} udhcpc -i eth1 -f -q -n -t 4 -T 1 -s {script} \
         -O bootfile -O tftp {extra} >/dev/null 2>&1",
        ns = link.client_ns,
        script = script.display()
    ));
    assert!(ok, "udhcpc got no lease as a {client:?} client");
    std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The boot-relevant part of what the client saw.
fn boot_fields(env: &BTreeMap<String, String>) -> Vec<(String, String)> {
    [
        "ip",
        "subnet",
        "siaddr",
        "boot_file",
        "bootfile",
        "tftp",
        "serverid",
    ]
    .iter()
    .map(|k| (k.to_string(), env.get(*k).cloned().unwrap_or_default()))
    .collect()
}

fn boot_dir(root: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let dir = root.join("boot");
    std::fs::create_dir_all(dir.join("efi")).unwrap();
    let bios: Vec<u8> = (0..100_003u32).map(|i| (i * 31 + 7) as u8).collect();
    let uefi: Vec<u8> = (0..70_000u32).map(|i| (i ^ (i >> 8)) as u8).collect();
    std::fs::write(dir.join("pxelinux.0"), &bios).unwrap();
    std::fs::write(dir.join("efi/grubx64.efi"), &uefi).unwrap();
    std::fs::write(dir.join("boot.ipxe"), "#!ipxe\nchain efi/grubx64.efi\n").unwrap();
    std::fs::write(root.join("secret"), "outside the boot directory").unwrap();
    std::os::unix::fs::symlink(root.join("secret"), dir.join("escape")).unwrap();
    (dir, bios, uefi)
}

fn tftp_hpa(link: &Link, file: &str, to: &Path) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(to);
    sh(&format!(
        "cd {d} && ip netns exec {ns} timeout 20 tftp -m binary {SERVER} -c get {file} {out} >/dev/null 2>&1",
        d = to.parent().unwrap().display(),
        ns = link.client_ns,
        out = to.display()
    ));
    std::fs::read(to).ok().filter(|b| !b.is_empty())
}

fn curl_tftp(link: &Link, file: &str, to: &Path, blksize: u32) -> Option<Vec<u8>> {
    let _ = std::fs::remove_file(to);
    let ok = sh(&format!(
        "ip netns exec {ns} timeout 20 curl -sf --tftp-blksize {blksize} tftp://{SERVER}/{file} -o {out}",
        ns = link.client_ns,
        out = to.display()
    ));
    ok.then(|| std::fs::read(to).unwrap())
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dnsmasq(link: &Link, dir: &Path, boot: &Path) -> Dnsmasq {
    let args = format!(
        "netns exec {ns} dnsmasq --no-daemon --conf-file=/dev/null --port=0 \
         --interface={ifc} --bind-interfaces --except-interface=lo \
         --dhcp-range={CLIENT_IP},{CLIENT_IP},255.255.255.0,1h --dhcp-host={MAC},{CLIENT_IP} \
         --dhcp-option=3 --dhcp-option=6 \
         --dhcp-match=set:efi64,option:client-arch,7 --dhcp-userclass=set:ipxe,iPXE \
         --dhcp-boot=tag:ipxe,boot.ipxe,,{SERVER} \
         --dhcp-boot=tag:efi64,tag:!ipxe,efi/grubx64.efi,,{SERVER} \
         --dhcp-boot=tag:!efi64,tag:!ipxe,pxelinux.0,,{SERVER} \
         --enable-tftp --tftp-root={boot} --dhcp-leasefile={dir}/leases \
         --pid-file={dir}/dnsmasq.pid --user=root",
        ns = link.server_ns,
        ifc = link.server_if,
        boot = boot.display(),
        dir = dir.display()
    );
    let child = Command::new("ip")
        .args(args.split_whitespace())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until its DHCP socket is bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !sh(&format!(
            "ip netns exec {} ss -ulpn | grep -q ':67 '",
            link.server_ns
        ))
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    Dnsmasq(child)
}

#[test]
fn pxe_clients_get_their_boot_file_and_dnsmasq_agrees() {
    if !ready() {
        return;
    }
    let link = Link::new();
    let dir = std::env::temp_dir().join(format!("virtkit-pxe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let (boot, bios, uefi) = boot_dir(&dir);
    let server: Ipv4Addr = SERVER.parse().unwrap();
    let pxe = PxeServer::start(PxeConfig {
        interface: link.server_if.clone(),
        server,
        leases: vec![Lease4 {
            mac: MAC.parse::<MacAddr>().unwrap(),
            address: CLIENT_IP.parse().unwrap(),
            prefix_len: 24,
            gateway: None,
            dns: vec![],
            search: vec![],
            mtu: None,
            routes: vec![],
            hostname: None,
            lease_secs: 3600,
        }],
        boot_dir: boot.clone(),
        bios_file: Some("pxelinux.0".into()),
        uefi_file: Some("efi/grubx64.efi".into()),
        ipxe_file: Some("boot.ipxe".into()),
        netns: Some(netns::named(&link.server_ns)),
    })
    .unwrap();

    let ours: Vec<_> = [Client::Bios, Client::Uefi, Client::Ipxe]
        .into_iter()
        .map(|c| boot_fields(&udhcpc(&link, &dir, c)))
        .collect();
    let field = |i: usize, k: &str| ours[i].iter().find(|(n, _)| n == k).unwrap().1.clone();
    assert_eq!(field(0, "ip"), CLIENT_IP);
    assert_eq!(field(0, "siaddr"), SERVER);
    // Asked for option 67 (-O bootfile), so the file travels there.
    assert_eq!(field(0, "bootfile"), "pxelinux.0");
    assert_eq!(field(1, "bootfile"), "efi/grubx64.efi");
    assert_eq!(field(2, "bootfile"), "boot.ipxe");

    // TFTP: plain RFC 1350 (tftp-hpa) and with options (curl).
    link.configure_client();
    let got = dir.join("got");
    assert_eq!(
        tftp_hpa(&link, "pxelinux.0", &got).as_deref(),
        Some(&bios[..])
    );
    assert_eq!(
        curl_tftp(&link, "efi/grubx64.efi", &got, 1428).as_deref(),
        Some(&uefi[..])
    );
    assert_eq!(
        curl_tftp(&link, "/pxelinux.0", &got, 8192).as_deref(),
        Some(&bios[..])
    );
    let completed = pxe.tftp.completed();
    assert_eq!(completed, 3);
    // Out of the boot directory, a missing file, a write: refused.
    for file in ["../secret", "escape", "nope"] {
        assert_eq!(curl_tftp(&link, file, &got, 512), None, "{file} was served");
        assert_eq!(tftp_hpa(&link, file, &got), None, "{file} was served");
    }
    sh(&format!(
        "cd {d} && echo x > up && ip netns exec {ns} timeout 10 tftp {SERVER} -c put up >/dev/null 2>&1",
        d = dir.display(),
        ns = link.client_ns
    ));
    assert!(!boot.join("up").exists());
    assert_eq!(pxe.tftp.completed(), completed);
    assert!(pxe.tftp.refused() >= 7, "refused {}", pxe.tftp.refused());
    drop(pxe);

    // dnsmasq as the peer: the same boot answers to the same clients.
    sh(&format!("ip -n {} addr flush dev eth1", link.client_ns));
    let peer = dnsmasq(&link, &dir, &boot);
    let theirs: Vec<_> = [Client::Bios, Client::Uefi, Client::Ipxe]
        .into_iter()
        .map(|c| boot_fields(&udhcpc(&link, &dir, c)))
        .collect();
    assert_eq!(ours, theirs, "our boot answers differ from dnsmasq's");
    link.configure_client();
    assert_eq!(
        curl_tftp(&link, "efi/grubx64.efi", &got, 1428).as_deref(),
        Some(&uefi[..])
    );
    drop(peer);
    let _ = std::fs::remove_dir_all(&dir);
}
