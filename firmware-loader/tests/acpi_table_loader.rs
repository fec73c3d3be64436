//! The ACPI fw_cfg files run through a firmware-side loader written here
//! from QEMU's description of the interface (allocate, add pointer, add
//! checksum, in order): wherever the firmware puts the files, the RSDP
//! must lead to the same tables with valid checksums, and at the original
//! addresses the bytes must be exactly those a firmware-less VM gets.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;

use virtkit_core::runtime::memory::create;
use virtkit_core::runtime::Topology;
use virtkit_devices::acpi::tables::{AcpiConfig, AcpiTables, PlacedTable, RSDP_ADDR};
use virtkit_devices::pci::PciLayout;
use virtkit_firmware_loader::acpi_loader::{
    decode, encode, AcpiFiles, AcpiLoaderError, LoaderCommand, Zone, COMMAND_LEN, LOADER_FILE,
    RSDP_FILE, TABLES_FILE,
};
use virtkit_firmware_loader::fw_cfg::FwCfg;

fn tables() -> AcpiTables {
    AcpiTables::build(&AcpiConfig {
        topology: Topology::flat(2),
        pci: PciLayout::for_memory(1 << 30),
    })
}

/// Files placed by the firmware: name → (address, bytes).
type Placed = BTreeMap<String, (u64, Vec<u8>)>;

/// Run `etc/table-loader` as a firmware does, with the addresses the
/// firmware picks for each zone.
fn run_loader(fw_cfg: &FwCfg, high: u64, fseg: u64) -> Placed {
    let commands = decode(fw_cfg.file(LOADER_FILE).unwrap()).unwrap();
    let mut placed = Placed::new();
    for c in commands {
        match c {
            LoaderCommand::Allocate { file, align, zone } => {
                let addr = match zone {
                    Zone::High => high,
                    Zone::FSeg => fseg,
                };
                assert_eq!(addr % u64::from(align), 0, "{file} alignment");
                if zone == Zone::FSeg {
                    // The read-only BIOS area the OS scans for the RSDP.
                    assert!((0xe_0000..0x10_0000).contains(&addr));
                }
                placed.insert(file.clone(), (addr, fw_cfg.file(&file).unwrap().to_vec()));
            }
            LoaderCommand::AddPointer {
                dest,
                src,
                offset,
                size,
            } => {
                let src_addr = placed[&src].0;
                let bytes = &mut placed.get_mut(&dest).unwrap().1;
                let o = offset as usize;
                let mut v = [0u8; 8];
                v[..size as usize].copy_from_slice(&bytes[o..o + size as usize]);
                let value = u64::from_le_bytes(v) + src_addr;
                bytes[o..o + size as usize].copy_from_slice(&value.to_le_bytes()[..size as usize]);
            }
            LoaderCommand::AddChecksum {
                file,
                offset,
                start,
                length,
            } => {
                let bytes = &mut placed.get_mut(&file).unwrap().1;
                let sum = bytes[start as usize..(start + length) as usize]
                    .iter()
                    .fold(0u8, |a, b| a.wrapping_add(*b));
                bytes[offset as usize] = bytes[offset as usize].wrapping_sub(sum);
            }
        }
    }
    placed
}

fn read(placed: &Placed, addr: u64, len: usize) -> &[u8] {
    for (a, bytes) in placed.values() {
        if (*a..*a + bytes.len() as u64).contains(&addr) {
            let o = (addr - a) as usize;
            return &bytes[o..o + len];
        }
    }
    panic!("{addr:#x} is in no loaded file");
}

fn sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
}

fn le(bytes: &[u8]) -> u64 {
    let mut v = [0u8; 8];
    v[..bytes.len()].copy_from_slice(bytes);
    u64::from_le_bytes(v)
}

/// Follow the RSDP to every table, checking checksums; signature → address.
fn walk(placed: &Placed, rsdp_addr: u64) -> BTreeMap<String, u64> {
    let rsdp = read(placed, rsdp_addr, 36);
    assert_eq!(&rsdp[..8], b"RSD PTR ");
    assert_eq!(sum(&rsdp[..20]), 0, "RSDP 1.0 checksum");
    assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
    let mut found = BTreeMap::new();
    let table = |addr: u64| {
        let header = read(placed, addr, 36);
        let len = le(&header[4..8]) as usize;
        let bytes = read(placed, addr, len);
        let signature = String::from_utf8(bytes[..4].to_vec()).unwrap();
        assert_eq!(sum(bytes), 0, "{signature} checksum");
        (signature, bytes)
    };
    let xsdt_addr = le(&rsdp[24..32]);
    let (sig, xsdt) = table(xsdt_addr);
    assert_eq!(sig, "XSDT");
    found.insert(sig, xsdt_addr);
    for entry in xsdt[36..].chunks(8) {
        let addr = le(entry);
        let (sig, bytes) = table(addr);
        if sig == "FACP" {
            let dsdt = le(&bytes[140..148]);
            assert_eq!(table(dsdt).0, "DSDT");
            found.insert("DSDT".into(), dsdt);
            let facs = le(&bytes[132..140]);
            assert_eq!(read(placed, facs, 4), b"FACS");
            found.insert("FACS".into(), facs);
        }
        found.insert(sig, addr);
    }
    found
}

fn fw_cfg_with(files: &AcpiFiles) -> FwCfg {
    let mut fw_cfg = FwCfg::new(create(1 << 20).unwrap());
    files.add_to(&mut fw_cfg).unwrap();
    fw_cfg
}

#[test]
fn relocated_anywhere_the_rsdp_leads_to_every_table() {
    let set = tables();
    let files = AcpiFiles::from_tables(&set).unwrap();
    let fw_cfg = fw_cfg_with(&files);
    let high = 0x3ffd_0000;
    let placed = run_loader(&fw_cfg, high, 0xf_5a80);
    let found = walk(&placed, 0xf_5a80);
    let names: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(names, ["APIC", "DSDT", "FACP", "FACS", "MCFG", "XSDT"]);
    let base = set.table("XSDT").unwrap().address;
    for (sig, addr) in &found {
        assert_eq!(
            addr - high,
            set.table(sig).unwrap().address - base,
            "{sig} keeps its offset in etc/acpi/tables"
        );
    }
    // Only pointers and checksums differ from the fixed-address tables.
    let dsdt = set.table("DSDT").unwrap();
    let relocated = read(&placed, found["DSDT"], dsdt.bytes.len());
    assert_eq!(relocated, dsdt.bytes, "the DSDT holds no pointers");
}

#[test]
fn at_the_original_addresses_the_bytes_are_the_fixed_layouts() {
    let set = tables();
    let files = AcpiFiles::from_tables(&set).unwrap();
    let fw_cfg = fw_cfg_with(&files);
    let base = set.table("XSDT").unwrap().address;
    let placed = run_loader(&fw_cfg, base, RSDP_ADDR);
    for t in &set.tables {
        assert_eq!(
            read(&placed, t.address, t.bytes.len()),
            t.bytes,
            "{}",
            t.signature
        );
    }
}

#[test]
fn the_loader_file_round_trips_and_orders_pointers_before_checksums() {
    let files = AcpiFiles::from_tables(&tables()).unwrap();
    let loader = files.loader();
    assert_eq!(loader.len(), files.commands.len() * COMMAND_LEN);
    assert_eq!(decode(&loader).unwrap(), files.commands);
    let first_checksum = files
        .commands
        .iter()
        .position(|c| matches!(c, LoaderCommand::AddChecksum { .. }))
        .unwrap();
    assert!(files.commands[first_checksum..]
        .iter()
        .all(|c| matches!(c, LoaderCommand::AddChecksum { .. })));
    // XSDT entries (3), FADT X_DSDT and X_FIRMWARE_CTRL, the RSDP's XSDT.
    let pointers = files
        .commands
        .iter()
        .filter(|c| matches!(c, LoaderCommand::AddPointer { .. }))
        .count();
    assert_eq!(pointers, 3 + 2 + 1);
    assert_eq!(
        files.commands[..2],
        [
            LoaderCommand::Allocate {
                file: RSDP_FILE.into(),
                align: 16,
                zone: Zone::FSeg
            },
            LoaderCommand::Allocate {
                file: TABLES_FILE.into(),
                align: 64,
                zone: Zone::High
            }
        ]
    );
    // The layout QEMU documents: command, then the 56-byte names.
    let entry = encode(&files.commands[2]);
    assert_eq!(entry[0], 2);
    assert!(entry[4..].starts_with(b"etc/acpi/"));
}

#[test]
fn malformed_loaders_and_tables_are_refused() {
    let files = AcpiFiles::from_tables(&tables()).unwrap();
    let mut loader = files.loader();
    assert!(matches!(
        decode(&loader[..100]),
        Err(AcpiLoaderError::BadCommand { .. })
    ));
    loader[COMMAND_LEN] = 9;
    let e = decode(&loader).unwrap_err();
    assert_eq!(e.to_string(), "loader command 1: unknown command 9");
    let mut loader = files.loader();
    loader[4 + 56] = 3; // alignment 3
    assert!(decode(&loader)
        .unwrap_err()
        .to_string()
        .contains("power of two"));

    let mut set = tables();
    let xsdt = set
        .tables
        .iter_mut()
        .find(|t| t.signature == "XSDT")
        .unwrap();
    xsdt.bytes[36..44].copy_from_slice(&0xdead_0000u64.to_le_bytes());
    assert_eq!(
        AcpiFiles::from_tables(&set),
        Err(AcpiLoaderError::DanglingPointer {
            table: "XSDT".into(),
            offset: 36,
            target: 0xdead_0000
        })
    );

    let mut set = tables();
    set.tables.retain(|t| t.signature != "RSD PTR ");
    assert_eq!(AcpiFiles::from_tables(&set), Err(AcpiLoaderError::NoRsdp));

    let mut set = tables();
    let madt_addr = set.table("APIC").unwrap().address;
    set.tables.push(PlacedTable {
        signature: "SSDT".into(),
        address: madt_addr + 4,
        bytes: vec![0; 36],
    });
    assert!(matches!(
        AcpiFiles::from_tables(&set),
        Err(AcpiLoaderError::Overlap { .. })
    ));
}

#[test]
fn fixed_acpi_tables_leave_the_f_segment_to_smbios() {
    // Direct boot writes both: ACPI from 0xe0000, SMBIOS from 0xf0000.
    let set = AcpiTables::build(&AcpiConfig {
        topology: Topology::flat(64),
        pci: PciLayout::for_memory(64 << 30),
    });
    let end = set
        .tables
        .iter()
        .map(|t| t.address + t.bytes.len() as u64)
        .max()
        .unwrap();
    assert!(
        end <= virtkit_firmware_loader::smbios::ANCHOR_ADDR,
        "ACPI tables end at {end:#x}"
    );
}
