//! The Intel 6300ESB watchdog (PCI 8086:25ab) as QEMU models it and
//! Linux's `i6300esb` driver drives it: a two-stage timer. Stage 1 runs
//! down from its preload and raises the (unwired) interrupt status;
//! stage 2 then runs down and, unless the guest disabled reboots, fires
//! the configured action: `poweroff`, `reset` (both end the VM with
//! [`VmExit::Watchdog`]) or `shutdown` (an ACPI power-button press).
//!
//! Registers: configuration space 0x60 (config: bit 2 1 MHz clock, bit 5
//! reboot disabled) and 0x68 (lock: bit 0 sticky lock, bit 1 enable, bit
//! 2 free-running); BAR 0 (16 bytes): 0x00/0x04 stage 1/2 preload
//! (20 bits), 0x08 interrupt status, 0x0C reload (bit 8 reload, bit 9
//! timed-out flag). Writing 0x80 then 0x86 to 0x0C unlocks the next
//! preload or reload write.
//!
//! [`VmExit::Watchdog`]: virtkit_core::runtime::VmExit::Watchdog

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtkit_core::runtime::devices::ExitRequest;
use virtkit_core::runtime::VmExit;
use virtkit_core::spec::vmi::WatchdogAction;

use crate::acpi::AcpiEvents;
use crate::pci::config::{ConfigSpace, PciIds};
use crate::pci::{BarSpec, PciDevice};

const CONFIG_REG: usize = 0x60;
const LOCK_REG: usize = 0x68;
const CONFIG_1MHZ: u16 = 1 << 2;
const CONFIG_REBOOT_DISABLED: u16 = 1 << 5;
const LOCK_LOCKED: u8 = 1 << 0;
const LOCK_ENABLE: u8 = 1 << 1;
const LOCK_FREE_RUN: u8 = 1 << 2;
const RELOAD: u32 = 1 << 8;
const TIMED_OUT: u32 = 1 << 9;
const UNLOCK1: u32 = 0x80;
const UNLOCK2: u32 = 0x86;
const PRELOAD_MASK: u32 = 0xf_ffff;
/// One PCI clock, which the timer counts in.
const TICK_NS: u64 = 30;

/// The watchdog's timer and registers, free of threads and clocks so it
/// can be tested on a made-up timeline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EsbTimer {
    preload: [u32; 2],
    stage: u8,
    enabled: bool,
    locked: bool,
    free_run: bool,
    reboot_enabled: bool,
    fast_clock: bool,
    int_status: u32,
    unlock: u8,
    timed_out: bool,
    deadline: Option<Instant>,
    /// Time left in the current stage while the VM is paused: the timer
    /// counts guest time, as QEMU's does, so a paused guest (a
    /// migration's downtime, an operator's pause) is never reset for not
    /// petting it.
    frozen: Option<Duration>,
    /// The VM is paused: the clock stands still.
    paused: bool,
}

/// The timer's state in a migration blob, version 1: the registers and
/// the time left in the current stage.
#[derive(serde::Serialize, serde::Deserialize)]
struct EsbStateV1 {
    preload: [u32; 2],
    stage: u8,
    enabled: bool,
    locked: bool,
    free_run: bool,
    reboot_enabled: bool,
    fast_clock: bool,
    int_status: u32,
    unlock: u8,
    timed_out: bool,
    remaining_ns: Option<u64>,
}

const STATE_MAGIC: [u8; 8] = *b"VKESB\0\0\0";

impl EsbTimer {
    /// A disabled timer, as after power-on.
    pub fn new() -> Self {
        EsbTimer {
            reboot_enabled: true,
            ..Default::default()
        }
    }

    /// When the current stage expires, if running.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// How long stage `stage` (1 or 2) lasts with the current preloads.
    pub fn stage_length(&self, stage: u8) -> Duration {
        let preload = u64::from(self.preload[usize::from(stage.clamp(1, 2) - 1)]);
        let ticks = if self.fast_clock {
            preload << 5
        } else {
            preload << 15
        };
        Duration::from_nanos(ticks * TICK_NS)
    }

    fn restart(&mut self, stage: u8, now: Instant) {
        self.stage = stage;
        let length = self.stage_length(stage);
        if self.paused {
            self.frozen = Some(length);
        } else {
            self.deadline = Some(now + length);
        }
    }

    /// The guest wrote the config (0x60) and lock (0x68) registers.
    pub fn set_config(&mut self, config: u16, lock: u8, now: Instant) {
        self.fast_clock = config & CONFIG_1MHZ != 0;
        self.reboot_enabled = config & CONFIG_REBOOT_DISABLED == 0;
        if self.locked {
            return;
        }
        self.locked = lock & LOCK_LOCKED != 0;
        self.free_run = lock & LOCK_FREE_RUN != 0;
        let enable = lock & LOCK_ENABLE != 0;
        if enable && !self.enabled {
            self.restart(1, now);
        } else if !enable {
            self.deadline = None;
            self.frozen = None;
        }
        self.enabled = enable;
    }

    /// Whether the lock register is stuck (Linux `nowayout`).
    pub fn locked(&self) -> bool {
        self.locked
    }

    /// Guest read of BAR 0.
    pub fn read(&self, offset: u64) -> u32 {
        match offset {
            0x00 => self.preload[0],
            0x04 => self.preload[1],
            0x08 => self.int_status,
            0x0c if self.timed_out => TIMED_OUT,
            _ => 0,
        }
    }

    /// Guest write of BAR 0.
    pub fn write(&mut self, offset: u64, value: u32, now: Instant) {
        let unlocked = self.unlock == 2;
        match offset {
            0x0c if value == UNLOCK1 && !unlocked => self.unlock = 1,
            0x0c if value == UNLOCK2 && self.unlock == 1 => self.unlock = 2,
            0x0c if unlocked => {
                if value & RELOAD != 0 && self.enabled {
                    self.restart(1, now);
                }
                if value & TIMED_OUT != 0 {
                    self.timed_out = false;
                }
                self.unlock = 0;
            }
            0x00 | 0x04 if unlocked => {
                self.preload[(offset / 4) as usize] = value & PRELOAD_MASK;
                self.unlock = 0;
            }
            0x08 => self.int_status &= !value,
            _ => {}
        }
    }

    /// Stop the clock at `now` (the VM pauses); [`EsbTimer::thaw`] goes on
    /// with the time that was left.
    pub fn freeze(&mut self, now: Instant) {
        self.paused = true;
        if let Some(deadline) = self.deadline.take() {
            self.frozen = Some(deadline.saturating_duration_since(now));
        }
    }

    /// Start the clock again at `now` (the VM resumes).
    pub fn thaw(&mut self, now: Instant) {
        self.paused = false;
        if let Some(left) = self.frozen.take() {
            self.deadline = Some(now + left);
        }
    }

    /// Whether the clock is stopped by [`EsbTimer::freeze`].
    pub fn frozen(&self) -> bool {
        self.paused
    }

    /// Time left in the current stage, whether the clock runs or not.
    pub fn remaining(&self, now: Instant) -> Option<Duration> {
        self.frozen
            .or_else(|| self.deadline.map(|d| d.saturating_duration_since(now)))
    }

    fn saved(&self, now: Instant) -> EsbStateV1 {
        let remaining = self.remaining(now);
        EsbStateV1 {
            preload: self.preload,
            stage: self.stage,
            enabled: self.enabled,
            locked: self.locked,
            free_run: self.free_run,
            reboot_enabled: self.reboot_enabled,
            fast_clock: self.fast_clock,
            int_status: self.int_status,
            unlock: self.unlock,
            timed_out: self.timed_out,
            remaining_ns: remaining.map(|d| d.as_nanos().min(u128::from(u64::MAX)) as u64),
        }
    }

    /// The timer `s` describes; its clock runs from `now` unless
    /// `frozen`.
    fn from_saved(s: &EsbStateV1, now: Instant, frozen: bool) -> Result<Self, String> {
        if s.preload.iter().any(|p| p & !PRELOAD_MASK != 0) || s.stage > 2 || s.unlock > 2 {
            return Err(format!(
                "preloads {:#x}/{:#x}, stage {}, unlock step {} are out of range",
                s.preload[0], s.preload[1], s.stage, s.unlock
            ));
        }
        let mut timer = EsbTimer {
            preload: s.preload,
            stage: s.stage,
            enabled: s.enabled,
            locked: s.locked,
            free_run: s.free_run,
            reboot_enabled: s.reboot_enabled,
            fast_clock: s.fast_clock,
            int_status: s.int_status & 1,
            unlock: s.unlock,
            timed_out: s.timed_out,
            deadline: None,
            frozen: None,
            paused: true,
        };
        if let Some(ns) = s.remaining_ns {
            // No stage lasts longer than its preload allows.
            let left = Duration::from_nanos(ns).min(timer.stage_length(s.stage.max(1)));
            timer.frozen = Some(left);
        }
        if !frozen {
            timer.thaw(now);
        }
        Ok(timer)
    }

    /// Advance to `now`; true when stage 2 expired with reboots enabled,
    /// that is, when the action must fire.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut fire = false;
        while let Some(deadline) = self.deadline.filter(|d| *d <= now) {
            if self.stage == 1 {
                self.int_status |= 1;
                self.stage = 2;
                self.deadline = Some(deadline + self.stage_length(2));
                continue;
            }
            if self.reboot_enabled {
                fire = true;
                self.timed_out = true;
            }
            if self.free_run && !fire {
                self.deadline = Some(deadline + self.stage_length(1));
                self.stage = 1;
            } else {
                // Fired (or stage 2 passed with reboots off): the timer
                // stops, as the chip does after its reset output.
                self.deadline = None;
                self.enabled = false;
            }
            if fire {
                break;
            }
        }
        fire
    }
}

/// What the watchdog does when it fires.
#[derive(Clone)]
pub struct WatchdogSink {
    /// The configured action.
    pub action: WatchdogAction,
    /// Ends the VM (`poweroff`, `reset`).
    pub exit: ExitRequest,
    /// Presses the power button (`shutdown`).
    pub events: AcpiEvents,
}

impl WatchdogSink {
    fn fire(&self) {
        log::warn!("watchdog expired; action {}", self.action);
        match self.action {
            WatchdogAction::Shutdown => self.events.press_power_button(),
            ref action => (self.exit)(VmExit::Watchdog {
                action: action.clone(),
            }),
        }
    }
}

struct Shared {
    timer: Mutex<(EsbTimer, bool)>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, (EsbTimer, bool)> {
        self.timer.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The i6300esb as a PCI function, with a thread that runs its timer.
pub struct I6300esb {
    config: ConfigSpace,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for I6300esb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("I6300esb")
            .field("timer", &self.shared.lock().0)
            .finish_non_exhaustive()
    }
}

impl I6300esb {
    /// A watchdog that calls `sink` when it fires.
    pub fn new(sink: WatchdogSink) -> std::io::Result<Self> {
        let mut config = ConfigSpace::new(PciIds {
            vendor: 0x8086,
            device: 0x25ab,
            subsystem_vendor: 0x1af4,
            subsystem: 0x1100,
            class: [0x08, 0x80, 0x00],
            revision: 0,
        });
        config.set_writable(CONFIG_REG, &[0xff, 0xff]);
        config.set_writable(LOCK_REG, &[0xff]);
        let shared = Arc::new(Shared {
            timer: Mutex::new((EsbTimer::new(), false)),
            wake: Condvar::new(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("i6300esb".into())
            .spawn(move || run_timer(&s, &sink))?;
        Ok(I6300esb {
            config,
            shared,
            thread: Some(thread),
        })
    }

    /// A copy of the timer state.
    pub fn timer(&self) -> EsbTimer {
        self.shared.lock().0.clone()
    }

    fn stop(&mut self) {
        self.shared.lock().1 = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run_timer(shared: &Shared, sink: &WatchdogSink) {
    let mut guard = shared.lock();
    loop {
        if guard.1 {
            return;
        }
        let now = Instant::now();
        if guard.0.poll(now) {
            drop(guard);
            sink.fire();
            guard = shared.lock();
            continue;
        }
        guard = match guard.0.deadline() {
            Some(d) => {
                shared
                    .wake
                    .wait_timeout(guard, d.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared.wake.wait(guard).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

impl Drop for I6300esb {
    fn drop(&mut self) {
        self.stop();
    }
}

fn le32(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = data.len().min(4);
    b[..n].copy_from_slice(&data[..n]);
    u32::from_le_bytes(b)
}

impl PciDevice for I6300esb {
    fn name(&self) -> &str {
        "i6300esb"
    }

    fn bars(&self) -> Vec<(usize, BarSpec)> {
        vec![(0, BarSpec::memory32(16))]
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, _offset: usize, _len: usize) {
        let (config, lock) = (
            self.config.read_u16(CONFIG_REG),
            self.config.read_u32(LOCK_REG) as u8,
        );
        let mut g = self.shared.lock();
        g.0.set_config(config, lock, Instant::now());
        if g.0.locked() {
            // The lock is sticky: the register stops taking writes.
            self.config.set_writable(LOCK_REG, &[0]);
        }
        drop(g);
        self.shared.wake.notify_all();
    }

    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        let v = self.shared.lock().0.read(offset & !3).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = v.get((offset as usize & 3) + i).copied().unwrap_or(0);
        }
    }

    fn bar_write(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        self.shared
            .lock()
            .0
            .write(offset, le32(data), Instant::now());
        self.shared.wake.notify_all();
    }

    fn removed(&mut self) {
        self.stop();
    }

    fn pause(&mut self) {
        self.shared.lock().0.freeze(Instant::now());
    }

    fn resume(&mut self) -> Result<(), virtkit_core::runtime::StateError> {
        self.shared.lock().0.thaw(Instant::now());
        self.shared.wake.notify_all();
        Ok(())
    }

    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        let state = self.shared.lock().0.saved(Instant::now());
        crate::state::encode(STATE_MAGIC, 1, &state)
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        let (_, s): (u32, EsbStateV1) = crate::state::decode(state, STATE_MAGIC, 1..=1)?;
        let mut g = self.shared.lock();
        let timer = EsbTimer::from_saved(&s, Instant::now(), g.0.frozen()).map_err(|why| {
            virtkit_core::runtime::StateError::Corrupt(format!("i6300esb: {why}"))
        })?;
        if timer.locked() {
            self.config.set_writable(LOCK_REG, &[0]);
        }
        g.0 = timer;
        drop(g);
        self.shared.wake.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn armed(t0: Instant, preload: u32) -> EsbTimer {
        let mut t = EsbTimer::new();
        for (reg, v) in [(0x00, preload), (0x04, preload)] {
            t.write(0x0c, UNLOCK1, t0);
            t.write(0x0c, UNLOCK2, t0);
            t.write(reg, v, t0);
        }
        t.set_config(0, LOCK_ENABLE, t0);
        t
    }

    #[test]
    fn two_stages_then_fire() {
        let t0 = Instant::now();
        let mut t = armed(t0, 10);
        let stage = t.stage_length(1);
        assert_eq!(stage, Duration::from_nanos((10 << 15) * 30));
        assert!(!t.poll(t0 + stage - Duration::from_nanos(1)));
        assert!(!t.poll(t0 + stage), "stage 1 ends: interrupt status only");
        assert_eq!(t.read(0x08), 1);
        assert!(t.poll(t0 + stage * 2), "stage 2 ends: fire");
        assert_eq!(t.read(0x0c), TIMED_OUT);
        assert_eq!(t.deadline(), None, "stops after firing");
        assert!(!t.poll(t0 + stage * 10));
        // The guest clears the timed-out flag with an unlocked write.
        t.write(0x0c, UNLOCK1, t0);
        t.write(0x0c, UNLOCK2, t0);
        t.write(0x0c, TIMED_OUT, t0);
        assert_eq!(t.read(0x0c), 0);
    }

    #[test]
    fn reload_needs_the_unlock_sequence() {
        let t0 = Instant::now();
        let mut t = armed(t0, 10);
        let stage = t.stage_length(1);
        let mid = t0 + stage / 2;
        t.write(0x0c, RELOAD, mid);
        assert_eq!(t.deadline(), Some(t0 + stage), "locked: ignored");
        t.write(0x0c, UNLOCK2, mid);
        t.write(0x0c, RELOAD, mid);
        assert_eq!(t.deadline(), Some(t0 + stage), "wrong order: ignored");
        t.write(0x0c, UNLOCK1, mid);
        t.write(0x0c, UNLOCK2, mid);
        t.write(0x0c, RELOAD, mid);
        assert_eq!(t.deadline(), Some(mid + stage), "petted");
        t.write(0x00, 99, mid);
        assert_eq!(t.read(0x00), 10, "unlock is used up by one write");
        assert!(!t.poll(t0 + stage * 2 - Duration::from_nanos(1)));
    }

    #[test]
    fn a_frozen_timer_keeps_its_time_left() {
        let t0 = Instant::now();
        let mut t = armed(t0, 10);
        let stage = t.stage_length(1);
        t.freeze(t0 + stage / 4);
        assert!(!t.poll(t0 + stage * 10), "paused: never fires");
        assert_eq!(t.remaining(t0 + stage * 10), Some(stage * 3 / 4));
        // A stage restarted while paused waits for the thaw too.
        t.write(0x0c, UNLOCK1, t0);
        t.write(0x0c, UNLOCK2, t0);
        t.write(0x0c, RELOAD, t0);
        assert_eq!(t.deadline(), None);
        let t1 = t0 + stage * 20;
        t.thaw(t1);
        assert_eq!(t.deadline(), Some(t1 + stage));
        assert!(!t.poll(t1 + stage * 2 - Duration::from_nanos(1)));
        assert!(t.poll(t1 + stage * 2));
    }

    #[test]
    fn saved_state_loads_with_the_time_left() {
        let t0 = Instant::now();
        let mut t = armed(t0, 10);
        let stage = t.stage_length(1);
        assert!(!t.poll(t0 + stage + stage / 2), "into stage 2");
        t.freeze(t0 + stage + stage / 2);
        let saved = t.saved(t0 + stage * 9);
        assert_eq!(saved.remaining_ns, Some((stage / 2).as_nanos() as u64));
        let t1 = t0 + stage * 30;
        let frozen = EsbTimer::from_saved(&saved, t1, true).unwrap();
        assert_eq!(frozen, t, "the same timer, still paused");
        let mut running = EsbTimer::from_saved(&saved, t1, false).unwrap();
        assert_eq!(running.deadline(), Some(t1 + stage / 2));
        assert_eq!(running.read(0x08), 1, "stage 1's interrupt status");
        assert!(running.poll(t1 + stage / 2), "stage 2 ends: fire");
        // Values no driver could have set are refused.
        for bad in [
            EsbStateV1 {
                stage: 3,
                ..t.saved(t1)
            },
            EsbStateV1 {
                preload: [1 << 20, 0],
                ..t.saved(t1)
            },
        ] {
            assert!(EsbTimer::from_saved(&bad, t1, true).is_err());
        }
    }

    #[test]
    fn reboot_disabled_never_fires_and_lock_is_sticky() {
        let t0 = Instant::now();
        let mut t = armed(t0, 1);
        t.set_config(CONFIG_REBOOT_DISABLED, LOCK_ENABLE | LOCK_LOCKED, t0);
        assert!(!t.poll(t0 + Duration::from_secs(1)));
        assert!(t.locked());
        let mut t = armed(t0, 1);
        t.set_config(0, LOCK_ENABLE | LOCK_LOCKED, t0);
        t.set_config(0, 0, t0);
        assert!(
            t.deadline().is_some(),
            "a locked watchdog cannot be disabled"
        );
        // 1 MHz clock: stages are 1024 times shorter.
        let mut f = armed(t0, 1024);
        f.set_config(CONFIG_1MHZ, LOCK_ENABLE, t0);
        assert_eq!(f.stage_length(1), Duration::from_nanos((1024 << 5) * 30));
        // Free-running with reboots off: stage 1 starts again.
        let mut r = armed(t0, 1);
        r.set_config(CONFIG_REBOOT_DISABLED, LOCK_ENABLE | LOCK_FREE_RUN, t0);
        let s = r.stage_length(1);
        assert!(!r.poll(t0 + s * 2));
        assert_eq!(r.deadline(), Some(t0 + s * 3));
    }
}
