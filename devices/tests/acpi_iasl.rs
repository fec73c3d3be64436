//! The ACPI tables, checked by ACPICA's `iasl` (Debian `acpica-tools`,
//! installed by `.ci/run`): every SDT disassembles without checksum or
//! parse complaints, says what the devices implement, and the DSDT's
//! disassembly compiles back without errors.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use virtkit_core::runtime::Topology;
use virtkit_devices::acpi::tables::{AcpiConfig, AcpiTables};
use virtkit_devices::pci::PciLayout;

fn iasl(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("iasl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("iasl (Debian package acpica-tools, installed by .ci/run)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "iasl {args:?} failed:\n{text}");
    text
}

fn disassemble(dir: &Path, tables: &AcpiTables, signature: &str) -> String {
    let t = tables.table(signature).unwrap();
    let name = signature.trim().to_lowercase().replace(' ', "");
    std::fs::write(dir.join(format!("{name}.dat")), &t.bytes).unwrap();
    let log = iasl(dir, &["-d", &format!("{name}.dat")]);
    for complaint in ["Incorrect checksum", "Error", "Invalid"] {
        assert!(
            !log.contains(complaint),
            "{signature}: iasl says {complaint}:\n{log}"
        );
    }
    std::fs::read_to_string(dir.join(format!("{name}.dsl"))).unwrap()
}

/// The value iasl prints for `field` in a disassembled data table.
fn field<'a>(dsl: &'a str, name: &str) -> &'a str {
    dsl.lines()
        .find(|l| l.contains(name))
        .and_then(|l| l.rsplit(" : ").next())
        .unwrap_or_else(|| panic!("no {name} in:\n{dsl}"))
        .trim()
}

#[test]
fn iasl_accepts_every_table_and_reads_back_the_platform() {
    let dir = tempfile::tempdir().unwrap();
    let layout = PciLayout::for_memory(1 << 30);
    let tables = AcpiTables::build(&AcpiConfig {
        topology: Topology {
            sockets: 1,
            cores: 3,
            threads: 2,
        },
        pci: layout,
    });

    // iasl takes no bare RSDP from a file (it is not an SDT); its
    // checksums and XSDT link are checked in `tables::tests`.
    let xsdt = disassemble(dir.path(), &tables, "XSDT");
    for sig in ["FACP", "APIC", "MCFG"] {
        let addr = tables.table(sig).unwrap().address;
        assert!(
            xsdt.contains(&format!("{addr:016X}")),
            "XSDT lacks {sig}:\n{xsdt}"
        );
    }

    let fadt = disassemble(dir.path(), &tables, "FACP");
    assert!(field(&fadt, "SCI Interrupt").ends_with("0009"));
    assert!(field(&fadt, "PM1A Event Block Address").ends_with("00000600"));
    assert!(field(&fadt, "PM1A Control Block Address").ends_with("00000604"));
    assert!(field(&fadt, "GPE0 Block Address").ends_with("00000620"));
    assert!(field(&fadt, "GPE0 Block Length").ends_with("10"));
    assert!(fadt.contains("Value to cause reset : 06"), "{fadt}");
    assert!(fadt.contains("0000000000000CF9"), "reset register at 0xCF9");

    let madt = disassemble(dir.path(), &tables, "APIC");
    assert_eq!(madt.matches("Processor Local APIC").count(), 6);
    // Thread bit 0, core bits 1-2: core 2 thread 1 is APIC ID 5.
    assert!(madt.contains("Local Apic ID : 05"), "{madt}");
    assert!(madt.contains("FEC00000"), "I/O APIC");
    assert_eq!(madt.matches("Interrupt Source Override").count(), 2);

    let mcfg = disassemble(dir.path(), &tables, "MCFG");
    assert!(field(&mcfg, "Base Address").ends_with("00000000E0000000"));

    let dsdt = disassemble(dir.path(), &tables, "DSDT");
    for needle in [
        "Device (PCI0)",
        "EisaId (\"PNP0A08\")",
        "OperationRegion (PCST, SystemIO, 0xAE00, 0x14)",
        "Method (PCNT, 0, Serialized)",
        "Method (_E01, 0, NotSerialized)",
        "\\_SB.PCI0.PCNT ()",
        "Device (SL01)",
        "Device (SL1E)",
        "Method (_EJ0, 1, NotSerialized)",
        "Method (_RMV, 0, NotSerialized)",
        "Notify (SL1E, 0x03)",
        "Name (\\_S5, Package (0x04)",
        "0xC0000000",
    ] {
        assert!(dsdt.contains(needle), "DSDT lacks {needle}:\n{dsdt}");
    }
    assert!(!dsdt.contains("Device (SL1F)"), "slot 31 is reserved");
    assert!(!dsdt.contains("Device (SL00)"), "slot 0 is the host bridge");
    // The disassembly compiles back.
    let log = iasl(dir.path(), &["-p", "recompiled", "dsdt.dsl"]);
    assert!(log.contains("0 Errors"), "{log}");
}
