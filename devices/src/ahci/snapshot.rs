//! The controller's part of migration: HBA registers, the MSI-X table
//! and each port's registers and drive state, as a versioned blob (see
//! `crate::state`). Configuration space travels with the bus. Commands
//! complete inside the register write that issues them, so there is
//! nothing in flight to carry.

use virtkit_core::runtime::StateError;

use super::port::PortStateV1;
use super::AhciController;
use crate::state::{decode, encode};

const MAGIC: [u8; 8] = *b"VKAHCI\0\0";

#[derive(serde::Serialize, serde::Deserialize)]
struct ControllerStateV1 {
    ghc: u32,
    is: u32,
    msix_entries: Vec<[u32; 4]>,
    msix_pending: Vec<u64>,
    ports: Vec<PortStateV1>,
}

pub(super) fn save(c: &AhciController) -> Result<Vec<u8>, StateError> {
    let (msix_entries, msix_pending) = c.msix.saved();
    encode(
        MAGIC,
        1,
        &ControllerStateV1 {
            ghc: c.ghc,
            is: c.is,
            msix_entries,
            msix_pending,
            ports: c.ports.iter().map(|p| p.saved()).collect(),
        },
    )
}

pub(super) fn restore(c: &mut AhciController, state: &[u8]) -> Result<(), StateError> {
    let (_, s): (u32, ControllerStateV1) = decode(state, MAGIC, 1..=1)?;
    let corrupt = |why: String| StateError::Corrupt(format!("ahci: {why}"));
    if s.ports.len() != c.ports.len() {
        return Err(corrupt(format!(
            "the source had {} ports, this controller {}",
            s.ports.len(),
            c.ports.len()
        )));
    }
    for (i, (port, saved)) in c.ports.iter().zip(&s.ports).enumerate() {
        port.check(saved)
            .map_err(|e| corrupt(format!("port {i}: {e}")))?;
    }
    c.msix
        .restore(&s.msix_entries, &s.msix_pending, &c.config)
        .map_err(corrupt)?;
    for (port, saved) in c.ports.iter_mut().zip(&s.ports) {
        port.restore(saved);
    }
    c.ghc = super::GHC_AE | (s.ghc & super::GHC_IE);
    // Only implemented ports can have their bit in IS.
    c.is = s.is & ((1u32 << c.ports.len()) - 1);
    Ok(())
}
