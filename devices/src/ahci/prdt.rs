//! A command's Physical Region Descriptor Table: the guest buffers one
//! command's data moves through, in order (AHCI 1.3.1 §4.2.3.3).

use std::io;

use virtkit_core::runtime::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};

use crate::scsi::DataOut;

/// Bytes per PRDT entry in the command table.
pub(crate) const ENTRY_SIZE: u64 = 16;
/// Most bytes one entry describes (the 22-bit byte count).
const MAX_ENTRY_BYTES: u32 = 4 << 20;

/// One command's buffers.
#[derive(Debug)]
pub(crate) struct Prdt<'m> {
    memory: &'m GuestMem,
    regions: Vec<(u64, u32)>,
    /// Whether an entry asks for a "descriptor processed" interrupt.
    pub(crate) interrupt: bool,
}

impl<'m> Prdt<'m> {
    /// Read `entries` descriptors at `table` in guest memory.
    pub(crate) fn read(memory: &'m GuestMem, table: u64, entries: u16) -> io::Result<Self> {
        let mut raw = vec![0u8; usize::from(entries) * ENTRY_SIZE as usize];
        memory
            .read_slice(&mut raw, GuestAddress(table))
            .map_err(|e| io::Error::other(format!("PRDT at {table:#x}: {e}")))?;
        let mut interrupt = false;
        let regions = raw
            .chunks_exact(ENTRY_SIZE as usize)
            .map(|e| {
                let word = |i: usize| u32::from_le_bytes([e[i], e[i + 1], e[i + 2], e[i + 3]]);
                let address = u64::from(word(0)) | u64::from(word(4)) << 32;
                let dbc = word(12);
                interrupt |= dbc & (1 << 31) != 0;
                // Bit 0 of the byte count is always 1: lengths are even.
                let len = ((dbc & (MAX_ENTRY_BYTES - 1)) | 1) + 1;
                (address & !1, len)
            })
            .collect();
        Ok(Prdt {
            memory,
            regions,
            interrupt,
        })
    }

    /// Bytes the table describes.
    pub(crate) fn capacity(&self) -> u64 {
        self.regions.iter().map(|&(_, len)| u64::from(len)).sum()
    }

    /// Copy `data` into the buffers from their start. Fails when they are
    /// too small or outside guest memory.
    pub(crate) fn copy_to_guest(&self, data: &[u8]) -> io::Result<()> {
        let mut rest = data;
        for &(address, len) in &self.regions {
            if rest.is_empty() {
                break;
            }
            let n = rest.len().min(len as usize);
            self.memory
                .write_slice(&rest[..n], GuestAddress(address))
                .map_err(|e| io::Error::other(format!("PRD buffer at {address:#x}: {e}")))?;
            rest = &rest[n..];
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(overflow(data.len(), self.capacity()))
        }
    }

    /// A reader over the buffers' bytes, from their start.
    pub(crate) fn reader(&self) -> PrdtReader<'_, 'm> {
        PrdtReader {
            prdt: self,
            region: 0,
            within: 0,
        }
    }
}

fn overflow(wanted: usize, capacity: u64) -> io::Error {
    io::Error::other(format!(
        "the command moves {wanted} bytes but its PRDT holds only {capacity}"
    ))
}

/// Reads a command's data-out bytes from its PRDT.
#[derive(Debug)]
pub(crate) struct PrdtReader<'p, 'm> {
    prdt: &'p Prdt<'m>,
    region: usize,
    within: u32,
}

impl DataOut for PrdtReader<'_, '_> {
    fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if (buf.len() as u64) > self.available() as u64 {
            return Err(overflow(buf.len(), self.prdt.capacity()));
        }
        let mut done = 0;
        while done < buf.len() {
            let (address, len) = self.prdt.regions[self.region];
            let n = (buf.len() - done).min((len - self.within) as usize);
            let at = address + u64::from(self.within);
            self.prdt
                .memory
                .read_slice(&mut buf[done..done + n], GuestAddress(at))
                .map_err(|e| io::Error::other(format!("PRD buffer at {at:#x}: {e}")))?;
            done += n;
            self.within += n as u32;
            if self.within == len {
                self.region += 1;
                self.within = 0;
            }
        }
        Ok(())
    }

    fn available(&self) -> usize {
        let consumed: u64 = self.prdt.regions[..self.region]
            .iter()
            .map(|&(_, len)| u64::from(len))
            .sum::<u64>()
            + u64::from(self.within);
        usize::try_from(self.prdt.capacity() - consumed).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(mem: &GuestMem, at: u64, address: u64, len: u32, irq: bool) {
        let mut e = [0u8; 16];
        e[..8].copy_from_slice(&address.to_le_bytes());
        let dbc = (len - 1) | if irq { 1 << 31 } else { 0 };
        e[12..].copy_from_slice(&dbc.to_le_bytes());
        mem.write_slice(&e, GuestAddress(at)).unwrap();
    }

    #[test]
    fn data_is_scattered_and_gathered_across_entries() {
        let mem = virtkit_core::runtime::memory::create(1 << 20).unwrap();
        entry(&mem, 0x1000, 0x8000, 6, false);
        entry(&mem, 0x1010, 0x9000, 10, true);
        let prdt = Prdt::read(&mem, 0x1000, 2).unwrap();
        assert_eq!(prdt.capacity(), 16);
        assert!(prdt.interrupt);
        prdt.copy_to_guest(b"0123456789abcdef").unwrap();
        let mut a = [0u8; 6];
        mem.read_slice(&mut a, GuestAddress(0x8000)).unwrap();
        assert_eq!(&a, b"012345");
        let mut r = prdt.reader();
        let mut b = [0u8; 9];
        r.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"012345678");
        assert_eq!(r.available(), 7);
        let mut c = [0u8; 8];
        assert!(r.read_exact(&mut c).is_err(), "past the end");
        assert!(prdt.copy_to_guest(&[0u8; 17]).is_err());
    }

    #[test]
    fn a_buffer_outside_guest_memory_is_an_error() {
        let mem = virtkit_core::runtime::memory::create(1 << 20).unwrap();
        entry(&mem, 0x1000, 0x1_0000_0000, 512, false);
        let prdt = Prdt::read(&mem, 0x1000, 1).unwrap();
        assert!(prdt.copy_to_guest(&[1u8; 512]).is_err());
        let mut buf = [0u8; 4];
        assert!(prdt.reader().read_exact(&mut buf).is_err());
        assert!(Prdt::read(&mem, 0x1_0000_0000, 1).is_err());
    }
}
