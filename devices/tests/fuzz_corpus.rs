//! Replays the device fuzz corpora (PCI configuration and BAR accesses,
//! virtqueue descriptor handling) and any committed crashes.

#![allow(clippy::unwrap_used)]

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let n = virtkit_core::fuzzing::replay_corpus(&fuzz, target, f).unwrap();
    assert!(n >= 10, "{target}: only {n} corpus files");
}

#[test]
fn pci_config_corpus() {
    replay("pci_config", virtkit_devices::fuzzing::pci_config);
}

#[test]
fn virtqueue_corpus() {
    replay("virtqueue", virtkit_devices::fuzzing::virtqueue);
}
