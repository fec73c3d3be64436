//! Replays the boot fuzz corpora (firmware volumes, TFTP requests) and any committed
//! crashes, and checks that the seeds are what they claim to be.

#![allow(clippy::unwrap_used)]

use virtkit_firmware_loader::ovmf::volume;

fn seed(name: &str) -> Vec<u8> {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/firmware_volume");
    std::fs::read(dir.join(name)).unwrap()
}

#[test]
fn firmware_volume_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "firmware_volume",
        4,
        virtkit_firmware_loader::fuzzing::firmware_volume,
    );
}

#[test]
fn tftp_request_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "tftp_request",
        6,
        virtkit_firmware_loader::fuzzing::tftp_request,
    );
}

#[test]
fn firmware_volume_seeds_reach_the_deep_paths() {
    assert_eq!(
        volume::code_volumes(&seed("code-two-volumes"))
            .unwrap()
            .len(),
        2
    );
    assert!(matches!(
        volume::code_volumes(&seed("code-bad-checksum")),
        Err(volume::VolumeError::Checksum { .. })
    ));
    let store = volume::var_store(&seed("vars-ms-8k")).unwrap();
    assert!(store.authenticated && !store.variables.is_empty());
    assert!(volume::var_store(&seed("vars-plain-4k"))
        .unwrap()
        .variables
        .is_empty());
}

#[test]
fn table_loader_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "table_loader",
        6,
        virtkit_firmware_loader::fuzzing::table_loader,
    );
}

/// The `virtkit-q35` seed is the loader virtkit makes for a 2-vCPU VM;
/// `VIRTKIT_WRITE_SEEDS=1` rewrites it when the tables change.
#[test]
fn table_loader_seed_is_the_current_loader() {
    use virtkit_devices::acpi::tables::{AcpiConfig, AcpiTables};
    let set = AcpiTables::build(&AcpiConfig {
        topology: virtkit_core::runtime::Topology::flat(2),
        pci: virtkit_devices::pci::PciLayout::for_memory(1 << 30),
    });
    let loader = virtkit_firmware_loader::acpi_loader::AcpiFiles::from_tables(&set)
        .unwrap()
        .loader();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/table_loader/virtkit-q35");
    if std::env::var_os("VIRTKIT_WRITE_SEEDS").is_some() {
        std::fs::write(&path, &loader).unwrap();
    }
    assert_eq!(std::fs::read(&path).unwrap(), loader);
    assert_eq!(
        virtkit_firmware_loader::acpi_loader::decode(&loader)
            .unwrap()
            .len(),
        loader.len() / 128
    );
}

#[test]
fn option_rom_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "option_rom",
        6,
        virtkit_firmware_loader::fuzzing::option_rom,
    );
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/option_rom");
    let images = virtkit_firmware_loader::option_rom::parse(
        &std::fs::read(dir.join("legacy-then-efi")).unwrap(),
    )
    .unwrap();
    assert_eq!(images.len(), 2, "the two-image seed parses whole");
}
