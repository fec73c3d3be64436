//! The few platform devices the runtime itself provides: the 16550 serial
//! console (vm-superio) at COM1, and the ACPI PM1a control and reset
//! registers through which a guest powers off or resets.

use std::io::Write;
use std::sync::Arc;

use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use super::bus::BusDevice;
use super::snapshot::Snapshot;
use super::state::{check_state_head, StateError};
use super::VmExit;

/// COM1 base port.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1's IRQ line (GSI).
pub const COM1_IRQ: u32 = 4;
/// ACPI PM1a control register (q35 layout: PM base 0x600 + 4).
pub const PM1A_CNT_PORT: u64 = 0x604;
/// `SLP_EN` in PM1a_CNT: writing it with `SLP_TYP` 0 (S5) powers off.
pub const PM1_SLP_EN: u16 = 1 << 13;
/// Reset control register.
pub const RESET_PORT: u64 = 0xcf9;

/// Raises the serial IRQ through an eventfd registered as a KVM irqfd.
pub struct EventFdTrigger(pub EventFd);

impl Trigger for EventFdTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

/// The COM1 16550 UART; what the guest transmits goes to any `Write`.
pub struct SerialDevice {
    inner: Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>,
}

/// Magic of a [`SerialSnapshot`].
pub const SERIAL_STATE_MAGIC: [u8; 8] = *b"VK16550\0";
/// Bytes the 16550's receive FIFO holds.
pub const SERIAL_FIFO: usize = 64;

/// A 16550's registers and unread input, version 1.
#[derive(Clone, Copy, IntoBytes, FromBytes, Immutable)]
#[repr(C)]
pub struct SerialSnapshot {
    /// [`SERIAL_STATE_MAGIC`].
    pub magic: [u8; 8],
    /// 1.
    pub version: U32,
    /// DLL, DLM, IER, IIR, LCR, LSR, MCR, MSR, SCR.
    pub registers: [u8; 9],
    /// Bytes of `fifo` in use.
    pub fifo_len: u8,
    /// Zero.
    pub reserved: [u8; 2],
    /// Input the guest has not read yet.
    pub fifo: [u8; SERIAL_FIFO],
}

impl SerialDevice {
    /// A UART writing to `out` and interrupting through `irq`.
    pub fn new(irq: EventFd, out: Box<dyn Write + Send>) -> Self {
        SerialDevice {
            inner: Serial::new(EventFdTrigger(irq), out),
        }
    }

    /// Queue bytes for the guest to read (console input).
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> Result<(), String> {
        self.inner
            .enqueue_raw_bytes(bytes)
            .map(|_| ())
            .map_err(|e| format!("{e:?}"))
    }
}

impl Snapshot for SerialDevice {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let st = self.inner.state();
        let mut fifo = [0u8; SERIAL_FIFO];
        let n = st.in_buffer.len().min(SERIAL_FIFO);
        fifo[..n].copy_from_slice(&st.in_buffer[..n]);
        let snap = SerialSnapshot {
            magic: SERIAL_STATE_MAGIC,
            version: U32::new(1),
            registers: [
                st.baud_divisor_low,
                st.baud_divisor_high,
                st.interrupt_enable,
                st.interrupt_identification,
                st.line_control,
                st.line_status,
                st.modem_control,
                st.modem_status,
                st.scratch,
            ],
            fifo_len: n as u8,
            reserved: [0; 2],
            fifo,
        };
        Ok(snap.as_bytes().to_vec())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let size = std::mem::size_of::<SerialSnapshot>();
        check_state_head(state, SERIAL_STATE_MAGIC, 1..=1, size)?;
        let snap = SerialSnapshot::read_from_bytes(state).map_err(|_| StateError::Size {
            got: state.len(),
            expected: size,
        })?;
        let n = usize::from(snap.fifo_len);
        if n > SERIAL_FIFO {
            return Err(StateError::Corrupt(format!(
                "16550 FIFO holds {n} bytes, at most {SERIAL_FIFO}"
            )));
        }
        let [dll, dlm, ier, iir, lcr, lsr, mcr, msr, scr] = snap.registers;
        let st = SerialState {
            baud_divisor_low: dll,
            baud_divisor_high: dlm,
            interrupt_enable: ier,
            interrupt_identification: iir,
            line_control: lcr,
            line_status: lsr,
            modem_control: mcr,
            modem_status: msr,
            scratch: scr,
            in_buffer: snap.fifo[..n].to_vec(),
        };
        let irq = self
            .inner
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| StateError::Corrupt(format!("16550 IRQ eventfd: {e}")))?;
        // The output and the IRQ line move to the rebuilt UART; the
        // checks above mean from_state cannot refuse the state.
        let out = std::mem::replace(self.inner.writer_mut(), Box::new(std::io::sink()));
        self.inner = Serial::from_state(&st, EventFdTrigger(irq), NoEvents, out)
            .map_err(|e| StateError::Corrupt(format!("16550 state: {e:?}")))?;
        Ok(())
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), &mut *data) {
            (Ok(off), [byte]) => *byte = self.inner.read(off),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(off), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.inner.write(off, *byte) {
                // A closed output must not stop the guest.
                log::warn!("serial write failed: {e:?}");
            }
        }
    }
}

/// Something the platform devices ask of the VM.
pub type ExitRequest = Arc<dyn Fn(VmExit) + Send + Sync>;

/// ACPI PM1a_CNT at 0x604: a write with `SLP_EN` powers the VM off.
pub struct PowerControl {
    request: ExitRequest,
    value: u16,
}

impl PowerControl {
    /// A PM1a control register that calls `request` on power-off.
    pub fn new(request: ExitRequest) -> Self {
        PowerControl { request, value: 0 }
    }
}

impl BusDevice for PowerControl {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut bytes = self.value.to_le_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(slot) = bytes.get_mut(offset as usize + i) {
                *slot = *b;
            }
        }
        self.value = u16::from_le_bytes(bytes);
        if self.value & PM1_SLP_EN != 0 {
            self.value &= !PM1_SLP_EN;
            (self.request)(VmExit::PowerOff);
        }
    }
}

/// Magic of a PM1a control state.
pub const PM1A_STATE_MAGIC: [u8; 8] = *b"VKPM1A\0\0";

/// PM1a_CNT's value, version 1.
#[derive(Clone, Copy, IntoBytes, FromBytes, Immutable)]
#[repr(C)]
struct Pm1aSnapshot {
    magic: [u8; 8],
    version: U32,
    value: U16,
    reserved: U16,
}

impl Snapshot for PowerControl {
    fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
        let snap = Pm1aSnapshot {
            magic: PM1A_STATE_MAGIC,
            version: U32::new(1),
            value: U16::new(self.value),
            reserved: U16::new(0),
        };
        Ok(snap.as_bytes().to_vec())
    }

    fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
        let size = std::mem::size_of::<Pm1aSnapshot>();
        check_state_head(state, PM1A_STATE_MAGIC, 1..=1, size)?;
        let snap = Pm1aSnapshot::read_from_bytes(state).map_err(|_| StateError::Size {
            got: state.len(),
            expected: size,
        })?;
        self.value = snap.value.get() & !PM1_SLP_EN;
        Ok(())
    }
}

/// The reset control register at 0xCF9: bit 2 requests a reset.
pub struct ResetControl {
    request: ExitRequest,
}

impl ResetControl {
    /// A reset register that calls `request` on reset.
    pub fn new(request: ExitRequest) -> Self {
        ResetControl { request }
    }
}

impl BusDevice for ResetControl {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first().is_some_and(|v| v & 0x4 != 0) {
            (self.request)(VmExit::Reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn power_and_reset_registers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let req: ExitRequest = Arc::new(move |e| s.lock().unwrap().push(e));
        let mut pm = PowerControl::new(req.clone());
        pm.write(0, &[0x00, 0x10]); // SLP_TYP only
        assert!(seen.lock().unwrap().is_empty());
        pm.write(0, &0x2000u16.to_le_bytes());
        let mut rst = ResetControl::new(req);
        rst.write(0, &[0x2]);
        rst.write(0, &[0x6]);
        assert_eq!(*seen.lock().unwrap(), vec![VmExit::PowerOff, VmExit::Reset]);
    }

    #[test]
    fn serial_transmits_to_the_writer() {
        #[derive(Clone, Default)]
        struct Sink(Arc<Mutex<Vec<u8>>>);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::default();
        let mut dev = SerialDevice::new(EventFd::new(0).unwrap(), Box::new(sink.clone()));
        for b in b"hi\n" {
            dev.write(0, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        dev.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "THR empty");
    }
}
