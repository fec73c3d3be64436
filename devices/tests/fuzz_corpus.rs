//! Replays the device fuzz corpora (PCI configuration and BAR accesses,
//! virtqueue descriptor handling, SCSI commands, AHCI command lists,
//! migrated device state) and any committed crashes.

#[test]
fn pci_config_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "pci_config",
        10,
        virtkit_devices::fuzzing::pci_config,
    );
}

#[test]
fn virtqueue_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "virtqueue",
        10,
        virtkit_devices::fuzzing::virtqueue,
    );
}

#[test]
fn scsi_commands_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "scsi_commands",
        10,
        virtkit_devices::fuzzing::scsi_commands,
    );
}

#[test]
fn ahci_commands_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "ahci_commands",
        4,
        virtkit_devices::fuzzing::ahci_commands,
    );
}

#[test]
fn device_state_corpus() {
    virtkit_core::fuzzing::assert_corpus_replays(
        env!("CARGO_MANIFEST_DIR"),
        "device_state",
        10,
        virtkit_devices::fuzzing::device_state,
    );
}
