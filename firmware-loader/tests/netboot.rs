//! VMM-side network boot against dnsmasq (lifecycle-migration-boot §10):
//! in a namespace, a bridge `br1` with the VM's tap as a port (untagged:
//! this host's kernel has no bridge VLAN filtering, so the spec's PVID-1
//! access port is the plain port) and dnsmasq serving DHCP only to
//! `de:00:00:00:00:de` plus TFTP of a 512-byte program that prints
//! `PXE OK`. The boot order is the seed's: `pxe-net` first, then the disk,
//! whose boot sector prints `DISK OK`. With the file missing, and with
//! dnsmasq stopped (after the bounded DHCP wait), the disk boots instead.
//! Each boot runs for real in a VM; the report records every step.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iced_x86::code_asm::*;
use virtkit_core::payload::SerialCapture;
use virtkit_core::runtime::{VmBuilder, VmConfig, VmExit};
use virtkit_devices::block::{open_disk, BlockBackend, DiskOptions};
use virtkit_firmware_loader::boot_chain::{choose, BootCandidate, BootImage, LOAD_ADDR};
use virtkit_firmware_loader::netboot::{
    network_boot, BootReport, NetbootConfig, NetbootError, TapLink,
};
use virtkit_net::netns;

const MAC: [u8; 6] = [0xde, 0, 0, 0, 0, 0xde];
const SERVER: &str = "10.98.0.1";
const CLIENT_IP: &str = "10.98.0.77";
const TAP: &str = "vkpxetap0";

fn sh(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", cmd])
        .status()
        .is_ok_and(|s| s.success())
}

/// A boot sector for 0000:7C00: print `text` on COM1, power off.
fn boot_sector(text: &str) -> Vec<u8> {
    const MSG: u16 = 0x80;
    let mut a = CodeAssembler::new(16).unwrap();
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.xor(ax, ax).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(si, u32::from(LOAD_ADDR as u16 + MSG)).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.set_label(&mut next).unwrap();
    a.lodsb().unwrap();
    a.test(al, al).unwrap();
    a.jz(done).unwrap();
    a.out(dx, al).unwrap();
    a.jmp(next).unwrap();
    a.set_label(&mut done).unwrap();
    virtkit_core::payload::power_off(&mut a).unwrap();
    let mut code = a.assemble(LOAD_ADDR).unwrap();
    assert!(code.len() <= usize::from(MSG));
    code.resize(usize::from(MSG), 0x90);
    code.extend_from_slice(text.as_bytes());
    code.push(0);
    code.resize(510, 0);
    code.extend_from_slice(&[0x55, 0xaa]);
    code
}

/// Run `image` as the BIOS would hand it over; the serial output.
fn run(image: &BootImage) -> String {
    let out = SerialCapture::default();
    let vm = VmBuilder::new(VmConfig {
        name: "netboot".into(),
        vcpus: 1,
        memory_bytes: 2 << 20,
    })
    .serial_output(Box::new(out.clone()))
    .build()
    .unwrap();
    image.load(&vm).unwrap();
    vm.start().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(60)).unwrap(),
        Some(VmExit::PowerOff)
    );
    out.text()
}

struct Net {
    ns: String,
    dir: PathBuf,
}

impl Net {
    fn new() -> Net {
        let ns = format!("vkboot{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("virtkit-netboot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("tftp")).unwrap();
        assert!(sh(&format!(
            "ip netns add {ns} && ip -n {ns} link set lo up && \
             ip -n {ns} link add br1 type bridge && \
             ip -n {ns} addr add {SERVER}/24 dev br1 && ip -n {ns} link set br1 up && \
             ip -n {ns} tuntap add dev {TAP} mode tap && \
             ip -n {ns} link set {TAP} master br1 && ip -n {ns} link set {TAP} up"
        )));
        Net { ns, dir }
    }

    fn path(&self) -> PathBuf {
        netns::named(&self.ns)
    }

    fn tap(&self) -> TapLink {
        netns::run_in(Some(&self.path()), || TapLink::open(TAP)).unwrap()
    }

    fn dnsmasq(&self, boot_file: &str) -> Dnsmasq {
        let args = format!(
            "netns exec {ns} dnsmasq --no-daemon --conf-file=/dev/null --port=0 \
             --interface=br1 --bind-interfaces --except-interface=lo \
             --dhcp-range=10.98.0.50,10.98.0.60,255.255.255.0,1h \
             --dhcp-host=de:00:00:00:00:de,{CLIENT_IP} --dhcp-ignore=tag:!known \
             --dhcp-host=de:00:00:00:00:dd,10.98.0.78,set:big \
             --dhcp-boot=tag:big,big.bin,,{SERVER} --dhcp-boot=tag:!big,{boot_file},,{SERVER} \
             --enable-tftp --tftp-root={dir}/tftp --dhcp-leasefile={dir}/leases \
             --pid-file={dir}/dnsmasq.pid --user=root",
            ns = self.ns,
            dir = self.dir.display()
        );
        let child = Command::new("ip")
            .args(args.split_whitespace())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh(&format!(
            "ip netns exec {} ss -ulpn | grep -q ':67 '",
            self.ns
        )) {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Dnsmasq(child)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        sh(&format!("ip netns del {} 2>/dev/null", self.ns));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct Dnsmasq(Child);

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ready() -> bool {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; the boot programs run in a VM");
        return false;
    }
    true
}

/// The seed's order: `pxe-net` (bootOrder 1), then `containerdisk` (2).
fn boot(tap: &mut TapLink, disk: &dyn BlockBackend, report: &mut BootReport) -> BootImage {
    let mut config = NetbootConfig::new(MAC);
    config.tftp_timeout = Duration::from_millis(500);
    config.tftp_retries = 2;
    choose(
        vec![
            BootCandidate::Network {
                device: "spec.domain.devices.interfaces[1]".into(),
                link: tap,
                config,
            },
            BootCandidate::Disk {
                device: "spec.domain.devices.disks[0]".into(),
                backend: disk,
            },
        ],
        report,
    )
    .unwrap()
}

fn actions(report: &BootReport) -> Vec<(String, String, bool)> {
    report
        .steps
        .iter()
        .map(|s| {
            (
                s.device.rsplit('.').next().unwrap().to_string(),
                s.action.clone(),
                s.outcome.is_ok(),
            )
        })
        .collect()
}

#[test]
fn pxe_boots_from_dnsmasq_and_falls_through_to_the_disk() {
    if !ready() {
        return;
    }
    let net = Net::new();
    std::fs::write(net.dir.join("tftp/pxe-ok.bin"), boot_sector("PXE OK\n")).unwrap();
    let disk_path = net.dir.join("disk.raw");
    let mut disk = boot_sector("DISK OK\n");
    disk.resize(1 << 20, 0);
    std::fs::write(&disk_path, disk).unwrap();
    let disk = open_disk(&disk_path, DiskOptions::default()).unwrap();
    let mut tap = net.tap();

    // dnsmasq serves the program: the NIC boots.
    let server = net.dnsmasq("pxe-ok.bin");
    let mut report = BootReport::default();
    let image = boot(&mut tap, disk.as_ref(), &mut report);
    eprintln!("{report}");
    assert_eq!(
        image.device, "spec.domain.devices.interfaces[1]",
        "{report}"
    );
    assert_eq!(image.bytes.len(), 512);
    assert_eq!(run(&image), "PXE OK\n");
    assert_eq!(
        actions(&report),
        [
            ("interfaces[1]".into(), "dhcp".into(), true),
            ("interfaces[1]".into(), "arp".into(), true),
            ("interfaces[1]".into(), "tftp".into(), true),
        ]
    );
    let dhcp = report.steps[0].outcome.as_ref().unwrap();
    assert!(
        dhcp.contains(CLIENT_IP) && dhcp.contains("pxe-ok.bin"),
        "{dhcp}"
    );
    let leases = std::fs::read_to_string(net.dir.join("leases")).unwrap();
    assert!(
        leases.contains("de:00:00:00:00:de") && leases.contains(CLIENT_IP),
        "{leases}"
    );

    // A program of many blocks (OACK, blksize 1432) comes byte for byte;
    // one over the size limit is refused from its announced tsize.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(net.dir.join("tftp/big.bin"), &big).unwrap();
    let mut config = NetbootConfig::new([0xde, 0, 0, 0, 0, 0xdd]);
    let mut r = BootReport::default();
    let image = network_boot(&mut tap, &config, "big", &mut r).unwrap();
    assert_eq!(image.file, "big.bin");
    assert!(image.bytes == big, "{} bytes differ", image.bytes.len());
    config.max_file = 100_000;
    assert!(matches!(
        network_boot(&mut tap, &config, "big", &mut r),
        Err(NetbootError::TooLarge { max: 100_000, .. })
    ));

    // Another MAC is not served: dnsmasq ignores unknown clients.
    let mut other = NetbootConfig::new([0xde, 0, 0, 0, 0, 0x01]);
    other.dhcp_timeout = Duration::from_secs(1);
    let mut r = BootReport::default();
    assert!(matches!(
        network_boot(&mut tap, &other, "other", &mut r),
        Err(NetbootError::NoOffer { .. })
    ));

    // The boot file is missing: TFTP error, then the disk.
    drop(server);
    let _server = net.dnsmasq("missing.bin");
    let mut report = BootReport::default();
    let image = boot(&mut tap, disk.as_ref(), &mut report);
    eprintln!("{report}");
    assert_eq!(image.device, "spec.domain.devices.disks[0]");
    assert_eq!(run(&image), "DISK OK\n");
    let tftp = &report.steps[2];
    assert_eq!(tftp.action, "tftp");
    let e = tftp.outcome.as_ref().unwrap_err();
    assert!(e.contains("missing.bin") && e.contains("error 1"), "{e}");
    assert_eq!(
        actions(&report).last().unwrap(),
        &("disks[0]".into(), "read".into(), true)
    );
    drop(_server);

    // No server: the bounded DHCP wait, then the disk.
    let mut report = BootReport::default();
    let start = Instant::now();
    let image = boot(&mut tap, disk.as_ref(), &mut report);
    let waited = start.elapsed();
    assert_eq!(run(&image), "DISK OK\n");
    assert_eq!(
        actions(&report),
        [
            ("interfaces[1]".into(), "dhcp".into(), false),
            ("disks[0]".into(), "read".into(), true),
        ]
    );
    assert!(
        (Duration::from_millis(2900)..Duration::from_secs(6)).contains(&waited),
        "DHCP gave up after {waited:?}"
    );
    eprintln!("{report}");
    assert!(report.to_string().contains("no DHCP offer within 3s"));
}

#[test]
fn a_disk_without_the_boot_signature_is_not_booted() {
    let path = std::env::temp_dir().join(format!("virtkit-noboot-{}.raw", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let disk: Arc<dyn BlockBackend> = open_disk(&path, DiskOptions::default()).unwrap().into();
    let mut report = BootReport::default();
    let e = choose(
        vec![BootCandidate::Disk {
            device: "spec.domain.devices.disks[0]".into(),
            backend: disk.as_ref(),
        }],
        &mut report,
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("not the boot signature 55 aa"),
        "{e}"
    );
    std::fs::remove_file(path).unwrap();
}
