//! The bus's part of migration: [`PciBus`] is one [`Snapshot`] holding,
//! per occupied slot, the function's name (the target must hold the same
//! function there), its configuration space and the function's own blob
//! ([`PciDevice::save_state`]), plus the config address latch and the
//! hotplug bitmaps. BAR decoding is rebuilt from the restored
//! configuration space. A migration's lock handover reaches every disk
//! the functions serve ([`PciDevice::disks`](crate::pci::PciDevice::disks)).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use virtkit_core::runtime::{Snapshot, StateError};

use super::{decoded_ranges, lock_dev, PciBus};
use crate::block::{BlockBackend, BlockError};
use crate::pci::config::CONFIG_SPACE_SIZE;
use crate::state::{decode, encode};

const MAGIC: [u8; 8] = *b"VKPCIBUS";

#[derive(Serialize, Deserialize)]
struct BusStateV1 {
    config_address: u32,
    hotplug: [u32; 4],
    slots: Vec<SlotStateV1>,
}

#[derive(Serialize, Deserialize)]
struct SlotStateV1 {
    slot: u8,
    name: String,
    hotplugged: bool,
    config: Vec<u8>,
    device: Vec<u8>,
}

impl Snapshot for PciBus {
    fn pause(&mut self) {
        let mut inner = self.inner();
        inner.paused = true;
        for slot in inner.slots.iter().flatten() {
            lock_dev(&slot.device).pause();
        }
    }

    fn resume(&mut self) -> Result<(), StateError> {
        let mut inner = self.inner();
        inner.paused = false;
        let mut first_error = None;
        for (index, slot) in inner.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            if let Err(e) = lock_dev(&slot.device).resume() {
                // Resume the others anyway: one stuck function must not
                // keep the rest of the bus paused.
                first_error.get_or_insert(in_slot(index, &slot.name, e));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    fn release_locks(&mut self) -> Result<(), StateError> {
        let disks = self.disks();
        for (i, (slot, name, disk)) in disks.iter().enumerate() {
            if let Err(e) = disk.release_lock() {
                // The VM keeps its disks: take back what already let go.
                for (_, _, back) in &disks[..i] {
                    if let Err(e) = back.take_lock() {
                        log::error!("a disk could not take its lock back: {e}");
                    }
                }
                return Err(StateError::Host(format!(
                    "PCI slot {slot} ({name}): cannot flush and hand over its disk: {e}"
                )));
            }
        }
        Ok(())
    }

    fn take_locks(&mut self) -> Result<(), StateError> {
        for (slot, name, disk) in self.disks() {
            disk.take_lock().map_err(|e| {
                let what = format!("PCI slot {slot} ({name}): {e}");
                match e {
                    BlockError::Locked { .. } => StateError::Locked(what),
                    _ => StateError::Host(what),
                }
            })?;
        }
        Ok(())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let inner = self.inner();
        let mut slots = Vec::new();
        for (index, slot) in inner.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            let mut d = lock_dev(&slot.device);
            let mut config = vec![0u8; CONFIG_SPACE_SIZE];
            d.config().read(0, &mut config);
            let device = d.save_state().map_err(|e| in_slot(index, &slot.name, e))?;
            slots.push(SlotStateV1 {
                slot: index as u8,
                name: slot.name.clone(),
                hotplugged: slot.hotplugged,
                config,
                device,
            });
        }
        let state = BusStateV1 {
            config_address: inner.config_address,
            hotplug: inner.hotplug.bitmaps(),
            slots,
        };
        encode(MAGIC, 1, &state)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let (_, state): (u32, BusStateV1) = decode(state, MAGIC, 1..=1)?;
        let mut inner = self.inner();
        // The same functions in the same slots, before anything changes.
        let ours: Vec<(u8, &str)> = inner
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i as u8, s.name.as_str())))
            .collect();
        let theirs: Vec<(u8, &str)> = state
            .slots
            .iter()
            .map(|s| (s.slot, s.name.as_str()))
            .collect();
        if ours != theirs {
            return Err(StateError::Corrupt(format!(
                "the source's PCI functions {theirs:?} are not this bus's {ours:?}"
            )));
        }
        if let Some(s) = state
            .slots
            .iter()
            .find(|s| s.config.len() != CONFIG_SPACE_SIZE)
        {
            return Err(StateError::Corrupt(format!(
                "slot {}: {} bytes of configuration space, expected {CONFIG_SPACE_SIZE}",
                s.slot,
                s.config.len()
            )));
        }
        for saved in &state.slots {
            let Some(slot) = inner.slots[usize::from(saved.slot)].as_mut() else {
                continue;
            };
            {
                let mut d = lock_dev(&slot.device);
                // Only what the guest can write is taken over; the rest
                // (ids, capabilities, BAR sizes) is the device's own.
                d.config_mut().write(0, &saved.config);
                d.config_written(0, CONFIG_SPACE_SIZE);
                d.restore_state(&saved.device)
                    .map_err(|e| in_slot(usize::from(saved.slot), &saved.name, e))?;
                slot.decoded = decoded_ranges(d.config());
            }
            slot.hotplugged = saved.hotplugged;
        }
        inner.config_address = state.config_address;
        inner.hotplug.set_bitmaps(state.hotplug);
        Ok(())
    }
}

impl PciBus {
    /// Every disk the bus's functions serve, with the slot and function.
    fn disks(&self) -> Vec<(usize, String, Arc<dyn BlockBackend>)> {
        let inner = self.inner();
        let mut out = Vec::new();
        for (index, slot) in inner.slots.iter().enumerate() {
            let Some(slot) = slot else { continue };
            for disk in lock_dev(&slot.device).disks() {
                out.push((index, slot.name.clone(), disk));
            }
        }
        out
    }
}

fn in_slot(slot: usize, name: &str, e: StateError) -> StateError {
    match e {
        StateError::Unsupported(what) => {
            StateError::Unsupported(format!("PCI slot {slot}: {what}"))
        }
        StateError::Running(what) => StateError::Running(format!("PCI slot {slot}: {what}")),
        StateError::Host(why) => StateError::Host(format!("PCI slot {slot} ({name}): {why}")),
        StateError::Locked(why) => StateError::Locked(format!("PCI slot {slot} ({name}): {why}")),
        other => StateError::Corrupt(format!("PCI slot {slot} ({name}): {other}")),
    }
}
