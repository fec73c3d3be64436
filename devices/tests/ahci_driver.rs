//! The AHCI controller driven as Linux's `ahci` driver drives it, through
//! the PCI bus with guest memory holding the command lists, tables and
//! buffers: discovery by signature, COMRESET and software reset,
//! IDENTIFY, DMA and PIO reads and writes across scattered buffers, TRIM,
//! errors that halt the port until it is restarted, MSI-X delivery, and an
//! ATAPI CD-ROM through PACKET with REQUEST SENSE and UNIT ATTENTION; and
//! the controller's state moving to a second bus as a migration moves it.
//! No KVM needed; `pci_guest.rs` drives the same controller from a guest.

#![allow(clippy::unwrap_used)]

use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};

use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_devices::ahci::{AhciController, SataDrive, ABAR, PORTS_OFFSET};
use virtkit_devices::block::MemoryDisk;
use virtkit_devices::pci::{PciAddress, PciBus, PciLayout};
use vm_memory::{Bytes, GuestAddress};

mod common;
use common::{cfg32, find_cap, mmio32, Recorder};

const MSI_DATA: u32 = 0x45;
const DATA: u64 = 0x10_0000;

// PxIS bits.
const DHRS: u32 = 1;
const PSS: u32 = 2;
const PCS: u32 = 1 << 6;
const TFES: u32 = 1 << 30;

struct Hba {
    bus: PciBus,
    addr: PciAddress,
    mem: GuestMem,
    abar: u64,
    msi: Receiver<(u64, u32)>,
    controller: Arc<Mutex<AhciController>>,
}

fn disk_image(sectors: usize) -> Arc<MemoryDisk> {
    let mut bytes = vec![0u8; sectors * 512];
    for (i, s) in bytes.chunks_mut(512).enumerate() {
        s[..12].copy_from_slice(format!("sector-{i:05}").as_bytes());
    }
    Arc::new(MemoryDisk::new(bytes, false))
}

fn cd_image(blocks: usize) -> Arc<MemoryDisk> {
    let mut bytes = vec![0u8; blocks * 2048];
    for (i, b) in bytes.chunks_mut(2048).enumerate() {
        b[..10].copy_from_slice(format!("cdblk-{i:04}").as_bytes());
    }
    Arc::new(MemoryDisk::new(bytes, true))
}

impl Hba {
    fn new(drives: Vec<SataDrive>) -> Self {
        let mem = memory::create(16 << 20).unwrap();
        let (tx, msi) = channel();
        let controller = Arc::new(Mutex::new(
            AhciController::new(drives, mem.clone(), Arc::new(Recorder(Mutex::new(tx)))).unwrap(),
        ));
        let bus = PciBus::new(PciLayout::for_memory(16 << 20));
        let addr = bus.add(controller.clone()).unwrap();
        assert_eq!(cfg32(&bus, addr, 0), 0x2922_8086, "ICH9 AHCI");
        assert_eq!(cfg32(&bus, addr, 8) >> 8, 0x01_0601, "class: SATA, AHCI");
        let abar = u64::from(cfg32(&bus, addr, 0x10 + 4 * ABAR) & !0xf);
        assert_ne!(abar, 0);
        bus.config_write(addr, 4, &6u16.to_le_bytes());
        // MSI-X vector 0 to APIC 0 with vector MSI_DATA, then enable.
        let cap = find_cap(&bus, addr, 0x11).expect("MSI-X capability");
        let table = cfg32(&bus, addr, cap + 4);
        assert_eq!(table & 7, ABAR as u32, "the table lives in the ABAR");
        let entry = abar + u64::from(table & !7);
        assert!(bus.mmio_write(entry, &0xfee0_0000u32.to_le_bytes()));
        assert!(bus.mmio_write(entry + 8, &MSI_DATA.to_le_bytes()));
        assert!(bus.mmio_write(entry + 12, &0u32.to_le_bytes()));
        bus.config_write(addr, cap + 2, &0x8000u16.to_le_bytes());
        Hba {
            bus,
            addr,
            mem,
            abar,
            msi,
            controller,
        }
    }

    fn reg(&self, off: u64) -> u32 {
        mmio32(&self.bus, self.abar + off)
    }

    fn set(&self, off: u64, v: u32) {
        assert!(self.bus.mmio_write(self.abar + off, &v.to_le_bytes()));
    }

    fn preg(&self, port: u64, off: u64) -> u32 {
        self.reg(PORTS_OFFSET + port * 0x80 + off)
    }

    fn pset(&self, port: u64, off: u64, v: u32) {
        self.set(PORTS_OFFSET + port * 0x80 + off, v)
    }

    fn clb(port: u64) -> u64 {
        0x1_0000 + port * 0x1000
    }

    fn fb(port: u64) -> u64 {
        0x1_0800 + port * 0x1000
    }

    fn table(port: u64, slot: u64) -> u64 {
        0x4_0000 + port * 0x1_0000 + slot * 0x800
    }

    /// What ahci_port_start does: lists, FIS receive, interrupts, start.
    fn start(&self, port: u64) {
        self.pset(port, 0x00, Self::clb(port) as u32);
        self.pset(port, 0x04, 0);
        self.pset(port, 0x08, Self::fb(port) as u32);
        self.pset(port, 0x0c, 0);
        self.pset(port, 0x18, 0x10); // FRE
        self.pset(port, 0x30, u32::MAX); // clear SERR
        self.pset(port, 0x10, u32::MAX); // clear IS
        self.pset(port, 0x14, 0xfdc0_00ff); // all causes
        self.pset(port, 0x18, 0x11); // FRE | ST
        assert_eq!(self.preg(port, 0x18) & 0xc011, 0xc011, "CR and FR follow");
    }

    /// Put a command in `slot` and issue it; returns PxIS (then cleared
    /// along with IS, as the interrupt handler does).
    fn issue(
        &self,
        port: u64,
        slot: u64,
        fis: [u8; 20],
        cdb: Option<[u8; 16]>,
        prd: &[(u64, u32)],
    ) -> u32 {
        let table = Self::table(port, slot);
        let mut flags = 5u32 | (prd.len() as u32) << 16;
        if let Some(cdb) = cdb {
            flags |= 1 << 5;
            self.mem
                .write_slice(&cdb, GuestAddress(table + 0x40))
                .unwrap();
        }
        let mut header = [0u8; 32];
        header[..4].copy_from_slice(&flags.to_le_bytes());
        header[4..8].copy_from_slice(&0xdead_beefu32.to_le_bytes());
        header[8..16].copy_from_slice(&table.to_le_bytes());
        self.mem
            .write_slice(&header, GuestAddress(Self::clb(port) + slot * 32))
            .unwrap();
        self.mem.write_slice(&fis, GuestAddress(table)).unwrap();
        for (i, &(at, len)) in prd.iter().enumerate() {
            let mut e = [0u8; 16];
            e[..8].copy_from_slice(&at.to_le_bytes());
            e[12..].copy_from_slice(&(len - 1).to_le_bytes());
            self.mem
                .write_slice(&e, GuestAddress(table + 0x80 + 16 * i as u64))
                .unwrap();
        }
        self.pset(port, 0x38, 1 << slot);
        let is = self.preg(port, 0x10);
        self.pset(port, 0x10, is);
        self.set(0x08, self.reg(0x08));
        is
    }

    fn prdbc(&self, port: u64, slot: u64) -> u32 {
        self.mem
            .read_obj(GuestAddress(Self::clb(port) + slot * 32 + 4))
            .unwrap()
    }

    fn bytes(&self, at: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem.read_slice(&mut v, GuestAddress(at)).unwrap();
        v
    }

    fn d2h(&self, port: u64) -> Vec<u8> {
        self.bytes(Self::fb(port) + 0x40, 20)
    }

    fn msi_count(&self) -> usize {
        let mut n = 0;
        while let Ok(m) = self.msi.try_recv() {
            assert_eq!(m, (0xfee0_0000, MSI_DATA));
            n += 1;
        }
        n
    }
}

/// A Register H2D FIS with the command bit set.
fn fis(command: u8, lba: u64, count: u16, features: u16) -> [u8; 20] {
    let mut f = [0u8; 20];
    f[0] = 0x27;
    f[1] = 0x80;
    f[2] = command;
    f[3] = features as u8;
    let l = lba.to_le_bytes();
    f[4..7].copy_from_slice(&l[..3]);
    f[7] = 0x40; // LBA mode
    f[8..11].copy_from_slice(&l[3..6]);
    f[11] = (features >> 8) as u8;
    f[12..14].copy_from_slice(&count.to_le_bytes());
    f
}

fn packet(cdb: &[u8]) -> Option<[u8; 16]> {
    let mut c = [0u8; 16];
    c[..cdb.len()].copy_from_slice(cdb);
    Some(c)
}

fn word(id: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([id[2 * i], id[2 * i + 1]])
}

fn ata_string(id: &[u8], words: std::ops::Range<usize>) -> String {
    let s: Vec<u8> = words.flat_map(|w| word(id, w).to_be_bytes()).collect();
    String::from_utf8(s).unwrap().trim_end().to_string()
}

#[test]
fn the_hba_reports_its_ports_and_the_drives_by_signature() {
    let hba = Hba::new(vec![
        SataDrive::disk(disk_image(64), "DISK-0"),
        SataDrive::cdrom(cd_image(4), "CD-1", false),
    ]);
    let cap = hba.reg(0x00);
    assert_eq!(cap & 0x1f, 1, "two ports");
    assert_eq!((cap >> 8) & 0x1f, 31, "32 command slots");
    assert_ne!(cap & 1 << 31, 0, "64-bit addressing");
    assert_eq!(cap & 1 << 30, 0, "no NCQ offered");
    assert_eq!(hba.reg(0x0c), 0b11, "ports implemented");
    assert_eq!(hba.reg(0x10), 0x0001_0300, "AHCI 1.3");
    assert_ne!(hba.reg(0x04) & 1 << 31, 0, "AHCI enabled");
    assert_eq!(hba.preg(0, 0x24), 0x0000_0101, "ATA signature");
    assert_eq!(hba.preg(1, 0x24), 0xeb14_0101, "ATAPI signature");
    assert_eq!(hba.preg(0, 0x28) & 0xf, 3, "device present, PHY up");
    assert_eq!(hba.preg(0, 0x20) & 0x88, 0, "neither BSY nor DRQ");

    // COMRESET (as sata_link_hardreset does) with FIS receive on: the
    // device posts its signature, and the port reports the link change.
    hba.pset(0, 0x00, Hba::clb(0) as u32);
    hba.pset(0, 0x08, Hba::fb(0) as u32);
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x14, PCS);
    hba.set(0x04, 1 << 1 | 1 << 31); // GHC.IE
    hba.pset(0, 0x2c, 0x301);
    assert_eq!(hba.preg(0, 0x28) & 0xf, 0, "link down in COMRESET");
    assert_eq!(hba.preg(0, 0x20) & 0x80, 0x80, "BSY during reset");
    hba.pset(0, 0x2c, 0x300);
    assert_eq!(hba.preg(0, 0x28) & 0xf, 3);
    let d2h = hba.d2h(0);
    assert_eq!(
        (d2h[0], d2h[12], d2h[4], d2h[5], d2h[6]),
        (0x34, 1, 1, 0, 0)
    );
    assert_ne!(hba.preg(0, 0x10) & PCS, 0);
    assert_ne!(hba.preg(0, 0x30) & 1 << 26, 0, "SERR.DIAG.X");
    assert_eq!(hba.reg(0x08), 1, "port 0 interrupt pending");
    assert_eq!(hba.msi_count(), 1);

    // HBA reset: interrupts off, ports back to their reset state.
    hba.set(0x04, 1);
    assert_eq!(hba.reg(0x04) & 3, 0, "HR self-clears, IE off");
    assert_eq!(hba.preg(0, 0x10), 0);
    assert_eq!(hba.preg(0, 0x18) & 0x11, 0, "engines stopped");
    assert_eq!(hba.preg(1, 0x24), 0xeb14_0101);
}

#[test]
fn a_disk_identifies_itself_and_moves_data_by_dma_and_pio() {
    let image = disk_image(2048);
    let hba = Hba::new(vec![SataDrive::disk(image.clone(), "SERIAL-42")]);
    hba.start(0);
    hba.set(0x04, 1 << 31 | 1 << 1);

    // IDENTIFY DEVICE is a PIO data-in command: PIO Setup and D2H FISes.
    let is = hba.issue(0, 0, fis(0xec, 0, 0, 0), None, &[(DATA, 512)]);
    assert_eq!(is & (DHRS | PSS | TFES), DHRS | PSS);
    assert_eq!(hba.msi_count(), 1, "one message per command");
    let id = hba.bytes(DATA, 512);
    assert_eq!(ata_string(&id, 10..20), "SERIAL-42");
    assert_eq!(ata_string(&id, 27..47), "VIRTKIT HARDDISK");
    assert_eq!(word(&id, 83) & 1 << 10, 1 << 10, "LBA48");
    assert_eq!(
        u64::from(word(&id, 100)) | u64::from(word(&id, 101)) << 16,
        2048
    );
    assert_eq!(
        id.iter().fold(0u8, |a, b| a.wrapping_add(*b)),
        0,
        "checksum"
    );
    assert_eq!(hba.prdbc(0, 0), 512);
    let setup = hba.bytes(Hba::fb(0) + 0x20, 20);
    assert_eq!(
        (setup[0], setup[15] & 0x89),
        (0x5f, 0),
        "E_Status: done, no error"
    );

    // WRITE DMA EXT of three sectors from three scattered buffers.
    let payload: Vec<u8> = (0..1536u32).map(|i| (i * 7) as u8).collect();
    hba.mem
        .write_slice(&payload[..1024], GuestAddress(DATA + 0x1000))
        .unwrap();
    hba.mem
        .write_slice(&payload[1024..1280], GuestAddress(DATA + 0x3000))
        .unwrap();
    hba.mem
        .write_slice(&payload[1280..], GuestAddress(DATA + 0x5000))
        .unwrap();
    let prd = [
        (DATA + 0x1000, 1024),
        (DATA + 0x3000, 256),
        (DATA + 0x5000, 256),
    ];
    let is = hba.issue(0, 3, fis(0x35, 1000, 3, 0), None, &prd);
    assert_eq!(is & (DHRS | PSS | TFES), DHRS);
    assert_eq!(hba.prdbc(0, 3), 1536);
    assert_eq!(&image.contents()[1000 * 512..1003 * 512], &payload[..]);
    assert_eq!(hba.preg(0, 0x38), 0, "PxCI cleared");
    assert_eq!(hba.preg(0, 0x18) >> 8 & 0x1f, 3, "CCS names the slot");

    // READ DMA EXT back into one buffer; READ SECTORS (PIO, 28-bit) too.
    hba.issue(0, 1, fis(0x25, 1000, 3, 0), None, &[(DATA + 0x8000, 2048)]);
    assert_eq!(hba.bytes(DATA + 0x8000, 1536), payload);
    hba.issue(0, 2, fis(0x20, 7, 1, 0), None, &[(DATA + 0x9000, 512)]);
    assert_eq!(&hba.bytes(DATA + 0x9000, 12), b"sector-00007");

    // FLUSH CACHE EXT, CHECK POWER MODE (count 0xff: active).
    assert_eq!(hba.issue(0, 0, fis(0xea, 0, 0, 0), None, &[]) & TFES, 0);
    hba.issue(0, 0, fis(0xe5, 0, 0, 0), None, &[]);
    assert_eq!(hba.d2h(0)[12], 0xff);

    // DATA SET MANAGEMENT / TRIM: sectors 1000..1002 read as zeroes.
    let mut ranges = [0u8; 512];
    ranges[..8].copy_from_slice(&(1000u64 | 2 << 48).to_le_bytes());
    hba.mem
        .write_slice(&ranges, GuestAddress(DATA + 0xa000))
        .unwrap();
    let is = hba.issue(0, 0, fis(0x06, 0, 1, 1), None, &[(DATA + 0xa000, 512)]);
    assert_eq!(is & TFES, 0);
    assert!(image.contents()[1000 * 512..1002 * 512]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(&image.contents()[1002 * 512..1003 * 512], &payload[1024..]);
    assert_eq!(hba.msi_count(), 6);
}

#[test]
fn a_failed_command_halts_the_port_until_the_driver_restarts_it() {
    let hba = Hba::new(vec![SataDrive::disk(disk_image(16), "D")]);
    hba.start(0);
    // Past the end: IDNF, task file error, the port stops.
    let is = hba.issue(0, 0, fis(0x25, 15, 2, 0), None, &[(DATA, 1024)]);
    assert_ne!(is & TFES, 0);
    let tfd = hba.preg(0, 0x20);
    assert_eq!((tfd & 0xff, tfd >> 8 & 0xff), (0x41, 0x10), "ERR, IDNF");
    let d2h = hba.d2h(0);
    assert_eq!((d2h[2], d2h[3]), (0x41, 0x10));
    // Commands issued now wait in PxCI.
    hba.issue(0, 1, fis(0xe7, 0, 0, 0), None, &[]);
    assert_eq!(hba.preg(0, 0x38), 0b10, "not run while halted");
    // Clearing ST drops them; restarting runs new ones.
    hba.pset(0, 0x18, 0x10);
    assert_eq!(hba.preg(0, 0x38), 0);
    hba.pset(0, 0x18, 0x11);
    let is = hba.issue(0, 1, fis(0x25, 14, 2, 0), None, &[(DATA, 1024)]);
    assert_eq!(is & TFES, 0);
    assert_eq!(&hba.bytes(DATA + 512, 12), b"sector-00015");

    // A PRDT smaller than the transfer aborts instead of writing short.
    let is = hba.issue(0, 0, fis(0x25, 0, 2, 0), None, &[(DATA, 512)]);
    assert_ne!(is & TFES, 0);
    assert_eq!(hba.preg(0, 0x20) >> 8 & 0xff, 0x04, "ABRT");
    // Unknown commands abort too (after a restart).
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x18, 0x11);
    let is = hba.issue(0, 0, fis(0xff, 0, 0, 0), None, &[]);
    assert_ne!(is & TFES, 0);
    // So does a slot holding something other than a Register H2D FIS.
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x18, 0x11);
    let mut not_h2d = fis(0x25, 0, 1, 0);
    not_h2d[0] = 0x34;
    let is = hba.issue(0, 0, not_h2d, None, &[(DATA, 512)]);
    assert_ne!(is & TFES, 0, "a non-H2D FIS is aborted, not dropped");
}

#[test]
fn a_read_only_disk_refuses_writes_and_trim() {
    let image = Arc::new(MemoryDisk::new(vec![7u8; 8192], true));
    let hba = Hba::new(vec![SataDrive::disk(image.clone(), "RO")]);
    hba.start(0);
    let is = hba.issue(0, 0, fis(0xec, 0, 0, 0), None, &[(DATA, 512)]);
    assert_eq!(is & TFES, 0);
    assert_eq!(word(&hba.bytes(DATA, 512), 169) & 1, 0, "no TRIM offered");
    let is = hba.issue(0, 0, fis(0xca, 0, 1, 0), None, &[(DATA, 512)]);
    assert_ne!(is & TFES, 0);
    assert_eq!(hba.preg(0, 0x20) >> 8 & 0xff, 0x04);
    assert!(image.contents().iter().all(|&b| b == 7));
}

#[test]
fn commands_wait_for_bus_mastering() {
    let hba = Hba::new(vec![SataDrive::disk(disk_image(16), "D")]);
    hba.start(0);
    hba.bus.config_write(hba.addr, 4, &2u16.to_le_bytes()); // memory only
    hba.issue(0, 0, fis(0x25, 3, 1, 0), None, &[(DATA, 512)]);
    assert_eq!(hba.preg(0, 0x38), 1, "no DMA without bus mastering");
    assert_eq!(hba.bytes(DATA, 4), [0; 4]);
    hba.bus.config_write(hba.addr, 4, &6u16.to_le_bytes());
    assert_eq!(hba.preg(0, 0x38), 0);
    assert_eq!(&hba.bytes(DATA, 12), b"sector-00003");
}

#[test]
fn software_reset_returns_the_signature() {
    let hba = Hba::new(vec![SataDrive::cdrom(cd_image(2), "CD", false)]);
    hba.start(0);
    let mut srst = fis(0, 0, 0, 0);
    srst[1] = 0; // control update, not a command
    srst[15] = 0x04;
    hba.issue(0, 0, srst, None, &[]);
    assert_eq!(hba.preg(0, 0x20) & 0x80, 0x80, "BSY while SRST is held");
    srst[15] = 0;
    hba.issue(0, 1, srst, None, &[]);
    let d2h = hba.d2h(0);
    assert_eq!((d2h[4], d2h[5], d2h[6], d2h[12]), (1, 0x14, 0xeb, 1));
    assert_eq!(hba.preg(0, 0x20) & 0x80, 0);
}

#[test]
fn an_atapi_cdrom_answers_packets_with_sense_kept_for_request_sense() {
    let hba = Hba::new(vec![SataDrive::cdrom(cd_image(8), "CD-7", true)]);
    hba.start(0);
    hba.pset(0, 0x18, 0x11 | 1 << 24); // the driver marks the port ATAPI

    // IDENTIFY DEVICE is refused with the signature; IDENTIFY PACKET
    // DEVICE answers.
    let is = hba.issue(0, 0, fis(0xec, 0, 0, 0), None, &[(DATA, 512)]);
    assert_ne!(is & TFES, 0);
    let d2h = hba.d2h(0);
    assert_eq!((d2h[5], d2h[6]), (0x14, 0xeb));
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x18, 0x11);
    let is = hba.issue(0, 0, fis(0xa1, 0, 0, 0), None, &[(DATA, 512)]);
    assert_eq!(is & (TFES | PSS), PSS);
    let id = hba.bytes(DATA, 512);
    assert_eq!(word(&id, 0), 0x85c0, "ATAPI CD-ROM, removable");
    assert_eq!(ata_string(&id, 27..47), "VIRTKIT DVD-ROM");

    // Tray open: TEST UNIT READY fails with NOT READY in the error
    // register; REQUEST SENSE tells why (medium not present, tray open).
    let tur = packet(&[0x00]);
    let is = hba.issue(0, 0, fis(0xa0, 0, 0, 0), tur, &[]);
    assert_ne!(is & TFES, 0);
    assert_eq!(
        hba.preg(0, 0x20) >> 12 & 0xf,
        0x2,
        "sense key in error[7:4]"
    );
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x18, 0x11);
    hba.issue(
        0,
        0,
        fis(0xa0, 0, 0, 1),
        packet(&[0x03, 0, 0, 0, 18]),
        &[(DATA, 18)],
    );
    let sense = hba.bytes(DATA, 18);
    assert_eq!((sense[2], sense[12], sense[13]), (0x02, 0x3a, 0x02));

    // Closing the tray: one UNIT ATTENTION, then the medium reads.
    hba.controller
        .lock()
        .unwrap()
        .set_tray_open(0, false)
        .unwrap();
    let is = hba.issue(0, 0, fis(0xa0, 0, 0, 0), tur, &[]);
    assert_ne!(is & TFES, 0);
    assert_eq!(hba.preg(0, 0x20) >> 12 & 0xf, 0x6, "UNIT ATTENTION");
    hba.pset(0, 0x18, 0x10);
    hba.pset(0, 0x18, 0x11);
    assert_eq!(hba.issue(0, 0, fis(0xa0, 0, 0, 0), tur, &[]) & TFES, 0);

    // READ(10) of blocks 2..4 by DMA (features bit 0), in two buffers.
    let read10 = packet(&[0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0]);
    let prd = [(DATA, 2048), (DATA + 0x4000, 2048)];
    let is = hba.issue(0, 5, fis(0xa0, 0, 0, 1), read10, &prd);
    assert_eq!(is & TFES, 0);
    assert_eq!(hba.prdbc(0, 5), 4096);
    assert_eq!(&hba.bytes(DATA, 10), b"cdblk-0002");
    assert_eq!(&hba.bytes(DATA + 0x4000, 10), b"cdblk-0003");
    let d2h = hba.d2h(0);
    assert_eq!(d2h[12] & 3, 3, "interrupt reason: I/O, C/D");
    // READ CAPACITY: 8 blocks of 2048.
    hba.issue(0, 0, fis(0xa0, 0, 0, 0), packet(&[0x25]), &[(DATA, 8)]);
    assert_eq!(hba.bytes(DATA, 8), [0, 0, 0, 7, 0, 0, 8, 0]);
    // WRITE(10) to a CD-ROM fails with DATA PROTECT.
    let is = hba.issue(
        0,
        0,
        fis(0xa0, 0, 0, 1),
        packet(&[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0]),
        &[(DATA, 2048)],
    );
    assert_ne!(is & TFES, 0);
    assert_eq!(hba.preg(0, 0x20) >> 12 & 0xf, 0x7);
    assert!(matches!(
        hba.controller.lock().unwrap().set_tray_open(1, true),
        Err(virtkit_devices::ahci::AhciError::NotACdrom { port: 1 })
    ));
}

#[test]
fn seven_drives_do_not_fit() {
    let drives = (0..7)
        .map(|i| SataDrive::disk(disk_image(1), &format!("D{i}")))
        .collect();
    let mem = memory::create(1 << 20).unwrap();
    let (tx, _rx) = channel();
    let e = AhciController::new(drives, mem, Arc::new(Recorder(Mutex::new(tx)))).unwrap_err();
    assert!(e.to_string().contains("6 ports"), "{e}");
}

/// Every register of `port` (offsets 0..0x40), as a driver reads them.
fn port_registers(hba: &Hba, port: u64) -> Vec<u32> {
    (0..0x40).step_by(4).map(|o| hba.preg(port, o)).collect()
}

#[test]
fn the_controller_moves_with_its_ports_and_drives_to_a_second_bus() {
    use virtkit_core::runtime::{Snapshot, StateError};
    let image = disk_image(64);
    let drives = || {
        vec![
            SataDrive::disk(image.clone(), "SYS-1"),
            SataDrive::cdrom(cd_image(8), "CD-1", true),
        ]
    };
    let src = Hba::new(drives());
    src.start(0);
    src.start(1);
    src.set(0x04, 1 << 31 | 1 << 1);
    src.pset(1, 0x18, 0x11 | 1 << 24);
    // The driver sets 4 sectors per multiple block; the host closes the
    // CD's tray, so the next packet reports UNIT ATTENTION.
    assert_eq!(src.issue(0, 0, fis(0xc6, 0, 4, 0), None, &[]) & TFES, 0);
    src.controller
        .lock()
        .unwrap()
        .set_tray_open(1, false)
        .unwrap();
    let msis = src.msi_count();
    assert!(msis >= 1);
    let saved = src.bus.clone().save_state().unwrap();

    // The target: the guest's memory as the migration copied it, the
    // same drives (shared storage), the bus's state.
    let dst = Hba::new(drives());
    let mut all = vec![0u8; 16 << 20];
    src.mem.read_slice(&mut all, GuestAddress(0)).unwrap();
    dst.mem.write_slice(&all, GuestAddress(0)).unwrap();
    dst.bus.clone().restore_state(&saved).unwrap();
    for port in 0..2 {
        assert_eq!(port_registers(&dst, port), port_registers(&src, port));
    }
    assert_eq!(
        (dst.reg(0x04), dst.reg(0x08)),
        (src.reg(0x04), src.reg(0x08))
    );
    // The driver goes on: IDENTIFY shows its multiple setting, reads go
    // through the same command list, and the CD-ROM reports the tray.
    assert_eq!(
        dst.issue(0, 2, fis(0xec, 0, 0, 0), None, &[(DATA, 512)]) & TFES,
        0
    );
    assert_eq!(word(&dst.bytes(DATA, 512), 59), 0x0104);
    dst.issue(0, 3, fis(0x25, 9, 1, 0), None, &[(DATA + 0x1000, 512)]);
    assert_eq!(&dst.bytes(DATA + 0x1000, 12), b"sector-00009");
    let tur = packet(&[0x00]);
    assert_ne!(dst.issue(1, 0, fis(0xa0, 0, 0, 0), tur, &[]) & TFES, 0);
    assert_eq!(dst.preg(1, 0x20) >> 12 & 0xf, 0x6, "UNIT ATTENTION");
    dst.pset(1, 0x18, 0x10);
    dst.pset(1, 0x18, 0x11);
    assert_eq!(
        dst.issue(1, 0, fis(0xa0, 0, 0, 0), tur, &[]) & TFES,
        0,
        "tray closed"
    );
    assert!(dst.msi_count() >= 3);

    // Control: a controller without the state knows nothing of what the
    // driver and the host set: multiple is back to 16 and the CD's tray
    // is open.
    let bare = Hba::new(drives());
    bare.start(0);
    bare.start(1);
    bare.pset(1, 0x18, 0x11 | 1 << 24);
    bare.issue(0, 0, fis(0xec, 0, 0, 0), None, &[(DATA, 512)]);
    assert_eq!(word(&bare.bytes(DATA, 512), 59), 0x0110);
    bare.issue(1, 0, fis(0xa0, 0, 0, 0), tur, &[]);
    assert_eq!(bare.preg(1, 0x20) >> 12 & 0xf, 0x2, "NOT READY");

    // Controllers with other drives refuse, naming the port.
    for other in [
        vec![SataDrive::disk(image.clone(), "SYS-1")],
        vec![
            SataDrive::disk(image.clone(), "SYS-1"),
            SataDrive::disk(disk_image(8), "DATA-1"),
        ],
    ] {
        let hba = Hba::new(other);
        match hba.bus.clone().restore_state(&saved) {
            Err(StateError::Corrupt(why)) => assert!(why.contains("ahci"), "{why}"),
            r => panic!("{r:?}"),
        }
    }
}
