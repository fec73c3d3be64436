//! The SCI and its sources, q35 (ICH9) layout: PM1a event block at
//! 0x600 (status, enable), GPE0 at 0x620 (8 status bytes, 8 enable bytes).
//! Status bits are write-one-to-clear; the SCI (GSI 9, level) is high
//! while any enabled status bit is set.

use std::sync::{Arc, Mutex, MutexGuard};

use virtkit_core::runtime::{BusDevice, RuntimeError, Vm};

/// I/O port of the PM1a event block.
pub const PM1A_EVT_PORT: u64 = 0x600;
/// Length of the PM1a event block (status u16, enable u16).
pub const PM1A_EVT_LEN: u64 = 4;
/// PM1 status/enable bit of the power button.
pub const PM1_PWRBTN: u16 = 1 << 8;
/// I/O port of the ICH9 GPE0 block (PM base 0x600 + 0x20).
pub const GPE0_PORT: u64 = 0x620;
/// Length of the GPE0 block: 8 status bytes, then 8 enable bytes.
pub const GPE0_LEN: u64 = 16;
/// The SCI's GSI on q35.
pub const SCI_GSI: u32 = 9;

/// A level-triggered interrupt line (the SCI).
pub trait IrqLine: Send + Sync {
    /// Drive the line high or low.
    fn set_level(&self, high: bool);
}

/// GSI `gsi` of a VM.
#[derive(Debug, Clone)]
pub struct GsiLine {
    /// The VM's interrupt handle.
    pub interrupts: virtkit_core::runtime::Interrupts,
    /// The GSI.
    pub gsi: u32,
}

impl IrqLine for GsiLine {
    fn set_level(&self, high: bool) {
        if let Err(e) = self.interrupts.set_irq_line(self.gsi, high) {
            log::warn!("GSI {} level change failed: {e}", self.gsi);
        }
    }
}

#[derive(Default)]
struct State {
    pm1_status: u16,
    pm1_enable: u16,
    gpe_status: [u8; 8],
    gpe_enable: [u8; 8],
    sci: Option<Arc<dyn IrqLine>>,
}

impl State {
    fn update_sci(&self) {
        let gpe = self
            .gpe_status
            .iter()
            .zip(&self.gpe_enable)
            .any(|(s, e)| s & e != 0);
        let active = gpe || self.pm1_status & self.pm1_enable != 0;
        if let Some(line) = &self.sci {
            line.set_level(active);
        }
    }
}

/// The id the event registers' state migrates under.
pub const ACPI_EVENTS_STATE_ID: &str = "acpi-events";

#[derive(serde::Serialize, serde::Deserialize)]
struct EventsStateV1 {
    pm1_status: u16,
    pm1_enable: u16,
    gpe_status: [u8; 8],
    gpe_enable: [u8; 8],
}

const EVENTS_MAGIC: [u8; 8] = *b"VKACPIEV";

impl virtkit_core::runtime::Snapshot for AcpiEvents {
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        let s = self.lock();
        let state = EventsStateV1 {
            pm1_status: s.pm1_status,
            pm1_enable: s.pm1_enable,
            gpe_status: s.gpe_status,
            gpe_enable: s.gpe_enable,
        };
        crate::state::encode(EVENTS_MAGIC, 1, &state)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        let (_, v): (u32, EventsStateV1) = crate::state::decode(state, EVENTS_MAGIC, 1..=1)?;
        let mut s = self.lock();
        (s.pm1_status, s.pm1_enable, s.gpe_status, s.gpe_enable) =
            (v.pm1_status, v.pm1_enable, v.gpe_status, v.gpe_enable);
        // The SCI line's level follows the registers.
        s.update_sci();
        Ok(())
    }
}

/// The SCI sources of one VM. Cheap to clone; clones share the state.
#[derive(Clone, Default)]
pub struct AcpiEvents {
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for AcpiEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.lock();
        f.debug_struct("AcpiEvents")
            .field("pm1_status", &s.pm1_status)
            .field("gpe_status", &s.gpe_status)
            .finish_non_exhaustive()
    }
}

impl AcpiEvents {
    /// Event registers with no SCI wired yet (see [`AcpiEvents::attach`]).
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raise the SCI through `line` from now on.
    pub fn set_sci(&self, line: Arc<dyn IrqLine>) {
        let mut s = self.lock();
        s.sci = Some(line);
        s.update_sci();
    }

    /// Map PM1a_EVT and GPE0 into `vm` (before it starts) and wire the
    /// SCI to GSI 9.
    pub fn attach(&self, vm: &Vm) -> Result<(), RuntimeError> {
        for (port, len, block) in [
            (PM1A_EVT_PORT, PM1A_EVT_LEN, Block::Pm1),
            (GPE0_PORT, GPE0_LEN, Block::Gpe0),
        ] {
            vm.add_pio_device(
                port,
                len,
                Arc::new(Mutex::new(EventBlock {
                    events: self.clone(),
                    block,
                })),
            )?;
        }
        self.set_sci(Arc::new(GsiLine {
            interrupts: vm.interrupts(),
            gsi: SCI_GSI,
        }));
        vm.add_device_state(ACPI_EVENTS_STATE_ID, Arc::new(Mutex::new(self.clone())))?;
        Ok(())
    }

    /// Set GPE0 status bit `bit` (0..64).
    pub fn raise_gpe(&self, bit: u32) {
        let mut s = self.lock();
        if let Some(byte) = s.gpe_status.get_mut((bit / 8) as usize) {
            *byte |= 1 << (bit % 8);
        }
        s.update_sci();
    }

    /// Press the ACPI power button (an orderly shutdown request).
    pub fn press_power_button(&self) {
        let mut s = self.lock();
        s.pm1_status |= PM1_PWRBTN;
        s.update_sci();
    }

    /// GPE0 status bytes.
    pub fn gpe_status(&self) -> [u8; 8] {
        self.lock().gpe_status
    }

    /// PM1 status bits currently set.
    pub fn pm1_status(&self) -> u16 {
        self.lock().pm1_status
    }
}

#[derive(Clone, Copy)]
enum Block {
    Pm1,
    Gpe0,
}

struct EventBlock {
    events: AcpiEvents,
    block: Block,
}

impl BusDevice for EventBlock {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let s = self.events.lock();
        let mut regs = [0u8; 16];
        match self.block {
            Block::Pm1 => {
                regs[..2].copy_from_slice(&s.pm1_status.to_le_bytes());
                regs[2..4].copy_from_slice(&s.pm1_enable.to_le_bytes());
            }
            Block::Gpe0 => {
                regs[..8].copy_from_slice(&s.gpe_status);
                regs[8..].copy_from_slice(&s.gpe_enable);
            }
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = regs.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut s = self.events.lock();
        for (i, v) in data.iter().enumerate() {
            let at = offset as usize + i;
            match (self.block, at) {
                (Block::Pm1, 0 | 1) => s.pm1_status &= !(u16::from(*v) << (8 * at)),
                (Block::Pm1, 2 | 3) => {
                    let shift = 8 * (at - 2);
                    s.pm1_enable = (s.pm1_enable & !(0xff << shift)) | (u16::from(*v) << shift);
                }
                (Block::Gpe0, 0..8) => s.gpe_status[at] &= !v,
                (Block::Gpe0, 8..16) => s.gpe_enable[at - 8] = *v,
                _ => {}
            }
        }
        s.update_sci();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl IrqLine for Level {
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    fn last(l: &Level) -> bool {
        *l.0.lock().unwrap().last().unwrap()
    }

    #[test]
    fn sci_follows_enabled_status_bits_of_both_blocks() {
        let events = AcpiEvents::new();
        let level = Arc::new(Level::default());
        events.set_sci(level.clone());
        let mut pm1 = EventBlock {
            events: events.clone(),
            block: Block::Pm1,
        };
        let mut gpe = EventBlock {
            events: events.clone(),
            block: Block::Gpe0,
        };
        events.raise_gpe(1);
        assert!(!last(&level), "GPE 1 not enabled");
        gpe.write(8, &[0x2]);
        assert!(last(&level));
        events.press_power_button();
        gpe.write(0, &[0x2]); // clear GPE; the power button is not enabled
        assert!(!last(&level));
        pm1.write(2, &PM1_PWRBTN.to_le_bytes());
        assert!(last(&level), "power button enabled and pending");
        let mut sts = [0u8; 2];
        pm1.read(0, &mut sts);
        assert_eq!(u16::from_le_bytes(sts), PM1_PWRBTN);
        pm1.write(0, &PM1_PWRBTN.to_le_bytes());
        assert!(!last(&level));
        assert_eq!(events.pm1_status(), 0);
    }
}
