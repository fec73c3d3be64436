//! Our SMBIOS tables read back by `dmidecode --from-dump`, the tool guests
//! use: once as the fw_cfg files a firmware installs, once as written into
//! guest memory for direct boot, with both entry points.
#![allow(clippy::unwrap_used)]

use std::process::Command;

use virtkit_core::runtime::memory::{create, layout};
use virtkit_core::runtime::Topology;
use virtkit_core::spec::vmi::{Bootloader, Efi, Firmware};
use virtkit_firmware_loader::fw_cfg::FwCfg;
use virtkit_firmware_loader::smbios::{
    EntryPoint, SmbiosConfig, SmbiosTables, ANCHOR_ADDR, ANCHOR_FILE, TABLES_FILE,
};
use vm_memory::{Bytes, GuestAddress};

const UUID: &str = "5d307ca9-b3ef-428c-8861-06e72d69f223";

/// What `dmidecode --dump-bin` writes and `--from-dump` reads: the entry
/// point at offset 0, pointing at the tables at offset 32.
fn dump(tables: &SmbiosTables, name: &str) -> std::path::PathBuf {
    let mut bytes = tables.anchor_at(32);
    bytes.resize(32, 0);
    bytes.extend_from_slice(&tables.tables);
    let path =
        std::env::temp_dir().join(format!("virtkit-smbios-{}-{name}.bin", std::process::id()));
    std::fs::write(&path, bytes).unwrap();
    path
}

fn dmidecode(path: &std::path::Path, kind: &str) -> String {
    let out = Command::new("dmidecode")
        .args(["--from-dump"])
        .arg(path)
        .args(["-t", kind])
        .output()
        .expect("dmidecode is needed (.ci/run installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("Invalid") && !stderr.contains("checksum"),
        "{stderr}"
    );
    String::from_utf8(out.stdout).unwrap()
}

fn field<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(name)?.strip_prefix(": "))
        .collect()
}

fn config() -> SmbiosConfig {
    let firmware = Firmware {
        uuid: Some(UUID.into()),
        serial: Some("VIRTKIT-SN-0042".into()),
        bootloader: Some(Bootloader {
            bios: None,
            efi: Some(Efi {
                secure_boot: Some(false),
                persistent: None,
            }),
        }),
    };
    SmbiosConfig::for_vmi(
        "default",
        "vmi-windows",
        Some(&firmware),
        Topology {
            sockets: 2,
            cores: 3,
            threads: 2,
        },
        layout(6 << 30),
    )
    .unwrap()
}

fn check_identity(path: &std::path::Path) {
    let system = dmidecode(path, "system");
    assert_eq!(field(&system, "UUID"), [UUID]);
    assert_eq!(field(&system, "Serial Number"), ["VIRTKIT-SN-0042"]);
    assert_eq!(field(&system, "Manufacturer"), ["KubeVirt"]);
    assert_eq!(field(&system, "Product Name"), ["None"]);
    assert_eq!(field(&system, "Family"), ["KubeVirt"]);
    assert_eq!(field(&system, "Wake-up Type"), ["Power Switch"]);
    assert!(system.contains("No errors detected"), "type 32:\n{system}");

    let bios = dmidecode(path, "bios");
    assert!(bios.contains("System is a virtual machine"), "{bios}");
    assert!(bios.contains("UEFI is supported"), "{bios}");
    assert_eq!(field(&bios, "Vendor"), ["virtkit"]);

    let cpu = dmidecode(path, "processor");
    assert_eq!(field(&cpu, "Socket Designation"), ["CPU 0", "CPU 1"]);
    assert_eq!(field(&cpu, "Core Count"), ["3", "3"]);
    assert_eq!(field(&cpu, "Thread Count"), ["6", "6"]);

    let memory = dmidecode(path, "memory");
    assert_eq!(field(&memory, "Maximum Capacity"), ["6 GB"]);
    assert_eq!(field(&memory, "Size"), ["6 GB"]);
    assert_eq!(field(&memory, "Form Factor"), ["DIMM"]);

    let ranges = dmidecode(path, "19");
    let ram = layout(6 << 30);
    assert_eq!(field(&ranges, "Starting Address").len(), ram.len());
    assert_eq!(
        field(&ranges, "Range Size"),
        ["3 GB", "3 GB"],
        "below and above the hole:\n{ranges}"
    );
}

#[test]
fn dmidecode_reads_uuid_serial_cpus_and_memory_for_both_entry_points() {
    let mut config = config();
    for entry in [EntryPoint::V3, EntryPoint::V2] {
        config.entry_point = entry;
        let tables = SmbiosTables::build(&config).unwrap();
        let path = dump(&tables, &format!("{entry:?}"));
        let header = Command::new("dmidecode")
            .arg("--from-dump")
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&header.stdout);
        let expect = match entry {
            EntryPoint::V3 => "SMBIOS 3.0.0 present.",
            EntryPoint::V2 => "SMBIOS 2.8 present.",
        };
        assert!(text.contains(expect), "{entry:?}:\n{text}");
        assert!(
            text.contains(&format!("{} structures occupying", tables.count))
                || entry == EntryPoint::V3,
            "{text}"
        );
        check_identity(&path);
        if std::env::var_os("VIRTKIT_KEEP_SMBIOS").is_none() {
            std::fs::remove_file(path).unwrap();
        }
    }
}

#[test]
fn the_fw_cfg_files_are_what_a_firmware_installs() {
    let config = config();
    let tables = SmbiosTables::build(&config).unwrap();
    let mut fw_cfg = FwCfg::new(create(1 << 20).unwrap());
    tables.add_to(&mut fw_cfg).unwrap();
    assert_eq!(fw_cfg.file(TABLES_FILE).unwrap(), tables.tables);
    let anchor = fw_cfg.file(ANCHOR_FILE).unwrap().to_vec();
    assert_eq!(&anchor[..5], b"_SM3_");
    assert_eq!(u64::from_le_bytes(anchor[16..24].try_into().unwrap()), 0);

    // Install them as OVMF does: tables somewhere, anchor patched.
    let mut image = anchor;
    image[16..24].copy_from_slice(&32u64.to_le_bytes());
    image[5] = 0;
    image[5] = 0u8.wrapping_sub(image.iter().fold(0u8, |a, b| a.wrapping_add(*b)));
    image.resize(32, 0);
    image.extend_from_slice(fw_cfg.file(TABLES_FILE).unwrap());
    let path =
        std::env::temp_dir().join(format!("virtkit-smbios-{}-fwcfg.bin", std::process::id()));
    std::fs::write(&path, image).unwrap();
    check_identity(&path);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn direct_boot_tables_are_found_where_linux_scans() {
    let tables = SmbiosTables::build(&config()).unwrap();
    let memory = create(2 << 20).unwrap();
    tables.write(&memory, ANCHOR_ADDR).unwrap();
    // Scan the F segment on 16-byte boundaries, as Linux's dmi_scan does.
    let mut segment = vec![0u8; 0x1_0000];
    memory
        .read_slice(&mut segment, GuestAddress(0xf_0000))
        .unwrap();
    let at = (0..segment.len())
        .step_by(16)
        .find(|&o| segment[o..].starts_with(b"_SM3_"))
        .expect("anchor in the F segment");
    let anchor = &segment[at..at + 0x18];
    let table_addr = u64::from_le_bytes(anchor[16..24].try_into().unwrap());
    let len = u32::from_le_bytes(anchor[12..16].try_into().unwrap()) as usize;
    let mut found = vec![0u8; len];
    memory
        .read_slice(&mut found, GuestAddress(table_addr))
        .unwrap();
    let rebuilt = SmbiosTables {
        tables: found,
        ..tables.clone()
    };
    let path = dump(&rebuilt, "memory");
    check_identity(&path);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn large_memory_and_topologies_use_the_extended_fields() {
    let mut config = config();
    config.ram = layout(100 << 30);
    config.topology = Topology {
        sockets: 1,
        cores: 300,
        threads: 1,
    };
    let tables = SmbiosTables::build(&config).unwrap();
    let path = dump(&tables, "large");
    let memory = dmidecode(&path, "memory");
    assert_eq!(field(&memory, "Maximum Capacity"), ["100 GB"]);
    assert_eq!(field(&memory, "Size"), ["100 GB"]);
    let cpu = dmidecode(&path, "processor");
    assert_eq!(field(&cpu, "Core Count"), ["300"]);
    let ranges = dmidecode(&path, "19");
    assert_eq!(field(&ranges, "Range Size"), ["3 GB", "97 GB"], "{ranges}");
    std::fs::remove_file(path).unwrap();
}
