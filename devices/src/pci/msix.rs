//! MSI-X: the capability, the vector table and the pending-bit array, and
//! delivery through an [`MsiSink`] (the VM's [`Interrupts`] in a running
//! VM, a recorder in unit tests).
//!
//! [`Interrupts`]: virtkit_core::runtime::Interrupts

use std::sync::Arc;

use super::config::ConfigSpace;

/// MSI-X capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

/// Where MSI messages go.
pub trait MsiSink: Send + Sync {
    /// Deliver the message `data` written to `address`.
    fn send(&self, address: u64, data: u32);
}

impl MsiSink for virtkit_core::runtime::Interrupts {
    fn send(&self, address: u64, data: u32) {
        if let Err(e) = self.signal_msi(address, data) {
            log::warn!("MSI to {address:#x} failed: {e}");
        }
    }
}

/// An MSI-X vector table with its pending bits.
pub struct MsixTable {
    entries: Vec<[u32; 4]>,
    pending: Vec<u64>,
    enabled: bool,
    function_masked: bool,
    sink: Arc<dyn MsiSink>,
    cap_offset: usize,
}

impl std::fmt::Debug for MsixTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsixTable")
            .field("vectors", &self.entries.len())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl MsixTable {
    /// Add an MSI-X capability for `vectors` vectors to `config`, with the
    /// table at `table_offset` and the PBA at `pba_offset` inside BAR
    /// `bar`. Every vector starts masked, as the PCI spec requires.
    pub fn new(
        config: &mut ConfigSpace,
        vectors: u16,
        bar: u8,
        table_offset: u32,
        pba_offset: u32,
        sink: Arc<dyn MsiSink>,
    ) -> Option<Self> {
        let vectors = vectors.clamp(1, 2048);
        let mut body = Vec::with_capacity(10);
        body.extend_from_slice(&(vectors - 1).to_le_bytes());
        body.extend_from_slice(&(table_offset | u32::from(bar)).to_le_bytes());
        body.extend_from_slice(&(pba_offset | u32::from(bar)).to_le_bytes());
        let cap_offset = config.add_capability(CAP_ID_MSIX, &body, &[0, 0xc0])?;
        Some(MsixTable {
            entries: vec![[0, 0, 0, VECTOR_MASKED]; usize::from(vectors)],
            pending: vec![0; usize::from(vectors).div_ceil(64)],
            enabled: false,
            function_masked: false,
            sink,
            cap_offset,
        })
    }

    /// Size of the table in bytes.
    pub fn table_len(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes.
    pub fn pba_len(&self) -> u64 {
        self.pending.len() as u64 * 8
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Re-read the control bits after a configuration write; delivers
    /// what became unmasked.
    pub fn config_written(&mut self, config: &ConfigSpace) {
        let control = config.read_u16(self.cap_offset + 2);
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        self.deliver_unmasked();
    }

    /// The vector table and pending bits, for migration (the enable and
    /// mask bits live in configuration space).
    pub fn saved(&self) -> (Vec<[u32; 4]>, Vec<u64>) {
        (self.entries.clone(), self.pending.clone())
    }

    /// Load what [`MsixTable::saved`] returned on a table of the same
    /// size, then take the control bits from `config`.
    pub fn restore(
        &mut self,
        entries: &[[u32; 4]],
        pending: &[u64],
        config: &ConfigSpace,
    ) -> Result<(), String> {
        if entries.len() != self.entries.len() || pending.len() != self.pending.len() {
            return Err(format!(
                "MSI-X table of {} vectors and {} pending words; this one has {} and {}",
                entries.len(),
                pending.len(),
                self.entries.len(),
                self.pending.len()
            ));
        }
        self.entries.copy_from_slice(entries);
        self.pending.copy_from_slice(pending);
        self.config_written(config);
        Ok(())
    }

    /// Guest read of the table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        read_words(offset, data, |i| {
            self.entries.get(i / 4).map_or(0, |e| e[i % 4])
        });
    }

    /// Guest write of the table at `offset`.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        let (index, word) = (
            (offset / ENTRY_SIZE) as usize,
            (offset % ENTRY_SIZE) as usize / 4,
        );
        let Some(entry) = self.entries.get_mut(index) else {
            return;
        };
        let byte = (offset % 4) as usize;
        let mut bytes = entry[word].to_le_bytes();
        for (i, v) in data.iter().enumerate().take(4 - byte) {
            bytes[byte + i] = *v;
        }
        entry[word] = u32::from_le_bytes(bytes);
        if data.len() == 8 && word % 2 == 0 {
            // A 64-bit write covers the next word too.
            entry[word + 1] = u32::from_le_bytes([data[4], data[5], data[6], data[7]]);
        }
        self.deliver_unmasked();
    }

    /// Guest read of the pending-bit array at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        read_words(offset, data, |i| {
            self.pending
                .get(i / 2)
                .map_or(0, |w| (w >> (32 * (i % 2))) as u32)
        });
    }

    /// Raise `vector`: delivered now, or left pending while masked.
    /// Returns false when MSI-X is off or the vector does not exist.
    pub fn trigger(&mut self, vector: u16) -> bool {
        let v = usize::from(vector);
        if !self.enabled || v >= self.entries.len() {
            return false;
        }
        if self.function_masked || self.entries[v][3] & VECTOR_MASKED != 0 {
            self.pending[v / 64] |= 1 << (v % 64);
        } else {
            self.send(v);
        }
        true
    }

    fn send(&self, v: usize) {
        let e = self.entries[v];
        self.sink
            .send(u64::from(e[0]) | (u64::from(e[1]) << 32), e[2]);
    }

    fn deliver_unmasked(&mut self) {
        if !self.enabled || self.function_masked {
            return;
        }
        for v in 0..self.entries.len() {
            let bit = 1u64 << (v % 64);
            if self.pending[v / 64] & bit != 0 && self.entries[v][3] & VECTOR_MASKED == 0 {
                self.pending[v / 64] &= !bit;
                self.send(v);
            }
        }
    }
}

/// Serve a read of `data` at byte `offset` from 32-bit words `word(i)`.
fn read_words(offset: u64, data: &mut [u8], word: impl Fn(usize) -> u32) {
    for (i, b) in data.iter_mut().enumerate() {
        let at = offset as usize + i;
        *b = word(at / 4).to_le_bytes()[at % 4];
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::pci::config::PciIds;
    use std::sync::Mutex;

    /// Records delivered messages.
    #[derive(Default)]
    pub(crate) struct Recorder(pub Mutex<Vec<(u64, u32)>>);
    impl MsiSink for Recorder {
        fn send(&self, address: u64, data: u32) {
            self.0.lock().unwrap().push((address, data));
        }
    }

    #[test]
    fn masking_pending_and_delivery() {
        let mut cfg = ConfigSpace::new(PciIds {
            vendor: 1,
            device: 2,
            subsystem_vendor: 0,
            subsystem: 0,
            class: [0; 3],
            revision: 0,
        });
        let rec = Arc::new(Recorder::default());
        let mut t = MsixTable::new(&mut cfg, 3, 0, 0x4000, 0x5000, rec.clone()).unwrap();
        assert_eq!(cfg.read_u16(0x42), 2, "table size - 1");
        assert_eq!(cfg.read_u32(0x44), 0x4000);
        assert!(!t.trigger(0), "MSI-X disabled");
        cfg.write(0x42, &0x8000u16.to_le_bytes());
        t.config_written(&cfg);
        assert!(t.enabled());
        // Program vector 1 with a 64-bit address write, then data.
        t.write_table(16, &0xfee0_1000u64.to_le_bytes());
        t.write_table(24, &0x41u32.to_le_bytes());
        assert!(t.trigger(1), "masked: pending");
        assert!(rec.0.lock().unwrap().is_empty());
        let mut pba = [0u8; 8];
        t.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0b10);
        t.write_table(28, &0u32.to_le_bytes()); // unmask
        assert_eq!(*rec.0.lock().unwrap(), vec![(0xfee0_1000, 0x41)]);
        t.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        // Function mask holds delivery back.
        cfg.write(0x42, &0xc000u16.to_le_bytes());
        t.config_written(&cfg);
        t.trigger(1);
        assert_eq!(rec.0.lock().unwrap().len(), 1);
        cfg.write(0x42, &0x8000u16.to_le_bytes());
        t.config_written(&cfg);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        assert!(!t.trigger(7), "no such vector");
        let mut e = [0u8; 4];
        t.read_table(24, &mut e);
        assert_eq!(u32::from_le_bytes(e), 0x41);
    }
}
