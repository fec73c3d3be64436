//! A qcow2 image opened for random reads and writes, as a VM disk uses it.
//!
//! Writes allocate clusters at the end of the file (data first, then its
//! refcount, then the L2 entry that makes it visible), so a crash leaves at
//! worst a leaked cluster, never an entry pointing at unwritten data.
//! Refcounts are kept eagerly (no lazy-refcount dirty bit); refcount blocks
//! and the refcount table grow as the file does. A partial write into a
//! compressed cluster rewrites it uncompressed; discard and whole-cluster
//! zeroing unmap clusters and drop their refcounts.
//!
//! Writable images must have 16-bit refcounts (QEMU's default), no internal
//! snapshots (so every cluster has refcount 1 and is written in place) and
//! a clean dirty bit; anything else opens read-only or not at all, with an
//! error that says why.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{
    bad, be64, check_l2_table, compressed_extent, decode_l2_entry, inflate_cluster, l2_table_of,
    Cluster, Header, Qcow2, COPIED, INCOMPAT_DIRTY, L2_COMPRESSED, OFFSET_MASK,
};
use crate::ImageError;

/// L2 tables kept in memory at once (each is one cluster).
const L2_CACHE_TABLES: usize = 64;
/// Header offset of `refcount_table_offset` (u64) and, right after it,
/// `refcount_table_clusters` (u32).
const HEADER_REFCOUNT_TABLE: u64 = 48;
/// Header offset of the v3 autoclear feature bits.
const HEADER_AUTOCLEAR: u64 = 88;

/// How an image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qcow2OpenMode {
    /// Reads only; any valid image.
    ReadOnly,
    /// Reads and writes; needs 16-bit refcounts, no snapshots, clean.
    ReadWrite,
}

/// An open qcow2 image with random-access reads and writes of guest bytes.
#[derive(Debug)]
pub struct Qcow2Image {
    file: File,
    header: Header,
    writable: bool,
    l1: Vec<u64>,
    l2_cache: HashMap<u64, Vec<u64>>,
    refcount_table: Vec<u64>,
    /// The next free host offset: the file end rounded up to a cluster.
    end: u64,
    scratch: Vec<u8>,
}

/// Where a guest cluster's L2 entry lives.
#[derive(Debug, Clone, Copy)]
struct Slot {
    l2_offset: u64,
    index: usize,
    entry: u64,
}

impl Qcow2Image {
    /// Open `file` (opened for writing too when `mode` is `ReadWrite`).
    pub fn open(file: File, mode: Qcow2OpenMode) -> Result<Self, ImageError> {
        let (header, l1) = {
            let parsed = Qcow2::open(&file)?;
            (parsed.header.clone(), parsed.l1.clone())
        };
        let writable = mode == Qcow2OpenMode::ReadWrite;
        if writable {
            check_writable(&header)?;
        }
        let cs = header.cluster_size();
        let file_len = file.metadata().map_err(ImageError::Io)?.len();
        let table_bytes = u64::from(header.refcount_table_clusters) * cs;
        let table_off = header.refcount_table_offset;
        if writable
            && (table_off % cs != 0
                || table_bytes == 0
                || table_off
                    .checked_add(table_bytes)
                    .is_none_or(|e| e > file_len))
        {
            return Err(bad("refcount table lies outside the file"));
        }
        let refcount_table = if writable {
            let mut raw = vec![0u8; table_bytes as usize];
            file.read_exact_at(&mut raw, table_off)
                .map_err(ImageError::Io)?;
            let table: Vec<u64> = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
            if table
                .iter()
                .any(|&e| e & !OFFSET_MASK != 0 || e % cs != 0 || e >= file_len)
            {
                return Err(bad("refcount table entry outside the file"));
            }
            table
        } else {
            Vec::new()
        };
        let image = Qcow2Image {
            file,
            end: file_len.div_ceil(cs) * cs,
            header,
            writable,
            l1,
            l2_cache: HashMap::new(),
            refcount_table,
            scratch: Vec::new(),
        };
        if writable && image.header.autoclear_features != 0 {
            // A writer that does not maintain the autoclear extensions
            // (dirty bitmaps) must clear their bits so readers drop them.
            image.write_meta(HEADER_AUTOCLEAR, &0u64.to_be_bytes())?;
        }
        Ok(image)
    }

    /// The parsed header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Guest-visible size in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.header.virtual_size
    }

    /// Whether writes are allowed.
    pub fn writable(&self) -> bool {
        self.writable
    }

    /// The checks a [`Qcow2OpenMode::ReadWrite`] open makes of the header,
    /// on an image opened read-only: a migration target runs them on an
    /// image it must not write yet but will once the source lets go.
    pub fn check_can_write(&self) -> Result<(), ImageError> {
        check_writable(&self.header)
    }

    /// Fill `buf` with guest bytes from `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), ImageError> {
        self.check_range(offset, buf.len() as u64)?;
        let cs = self.header.cluster_size();
        for piece in pieces(offset, buf.len() as u64, cs) {
            let part = &mut buf[piece.done..piece.done + piece.len];
            match self.lookup(piece.index)?.0 {
                Cluster::Zero => part.fill(0),
                Cluster::Data(host) => self.read_host(part, host + piece.within)?,
                Cluster::Compressed(off, len) => {
                    let mut cluster = vec![0u8; cs as usize];
                    self.inflate(piece.index, off, len, &mut cluster)?;
                    let within = piece.within as usize;
                    part.copy_from_slice(&cluster[within..within + piece.len]);
                }
            }
        }
        Ok(())
    }

    /// Write guest bytes `buf` at `offset`, allocating clusters as needed.
    pub fn write_at(&mut self, buf: &[u8], offset: u64) -> Result<(), ImageError> {
        self.check_writable()?;
        self.check_range(offset, buf.len() as u64)?;
        for piece in pieces(offset, buf.len() as u64, self.header.cluster_size()) {
            let data = &buf[piece.done..piece.done + piece.len];
            self.write_in_cluster(piece.index, piece.within, data)?;
        }
        Ok(())
    }

    /// Make the range read as zeros. Whole clusters are unmapped (they
    /// read as zeros with no backing file); partial ones are written.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let cs = self.header.cluster_size();
        for piece in pieces(offset, len, cs) {
            if piece.len as u64 == cs {
                self.unmap(piece.index)?;
            } else {
                let zeros = vec![0u8; piece.len];
                self.write_in_cluster(piece.index, piece.within, &zeros)?;
            }
        }
        Ok(())
    }

    /// The range's contents are no longer needed: whole clusters are
    /// unmapped and their space freed; partial clusters are left as they
    /// are (discard is advisory).
    pub fn discard(&mut self, offset: u64, len: u64) -> Result<(), ImageError> {
        self.check_writable()?;
        self.check_range(offset, len)?;
        let cs = self.header.cluster_size();
        let first = offset.div_ceil(cs);
        let last = (offset + len) / cs;
        for index in first..last {
            self.unmap(index)?;
        }
        Ok(())
    }

    /// Make every completed write durable.
    pub fn flush(&self) -> Result<(), ImageError> {
        if self.writable {
            self.file.sync_data().map_err(ImageError::Io)?;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), ImageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.header.virtual_size => Ok(()),
            _ => Err(ImageError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "range {offset}+{len} is past the end of the disk ({})",
                    self.header.virtual_size
                ),
            ))),
        }
    }

    fn check_writable(&self) -> Result<(), ImageError> {
        if self.writable {
            Ok(())
        } else {
            Err(ImageError::Io(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "the qcow2 image is open read-only",
            )))
        }
    }

    /// Read host bytes; past the end of the file reads as zeros (the last
    /// data cluster may be short).
    fn read_host(&self, buf: &mut [u8], host: u64) -> Result<(), ImageError> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], host + done as u64) {
                Ok(0) => break,
                Ok(k) => done += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(ImageError::Io(e)),
            }
        }
        buf[done..].fill(0);
        Ok(())
    }

    fn write_meta(&self, host: u64, bytes: &[u8]) -> Result<(), ImageError> {
        self.file.write_all_at(bytes, host).map_err(ImageError::Io)
    }

    fn inflate(
        &mut self,
        index: u64,
        off: u64,
        len: u64,
        out: &mut [u8],
    ) -> Result<(), ImageError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.resize(len as usize, 0);
        let read = self.read_host(&mut scratch, off);
        let result = read.and_then(|()| inflate_cluster(&scratch, out, index));
        self.scratch = scratch;
        result
    }

    /// The cluster state of guest cluster `index` and, where an L2 table
    /// exists for it, where its entry is.
    fn lookup(&mut self, index: u64) -> Result<(Cluster, Option<Slot>), ImageError> {
        let cs = self.header.cluster_size();
        let per_table = cs / 8;
        let l2_offset = l2_table_of(&self.l1, index, cs)?;
        if l2_offset == 0 {
            return Ok((Cluster::Zero, None));
        }
        let table = self.l2_table(l2_offset)?;
        let slot_index = (index % per_table) as usize;
        let entry = table[slot_index];
        let cluster = decode_l2_entry(entry, &self.header, self.end)?;
        Ok((
            cluster,
            Some(Slot {
                l2_offset,
                index: slot_index,
                entry,
            }),
        ))
    }

    fn l2_table(&mut self, l2_offset: u64) -> Result<&Vec<u64>, ImageError> {
        let cs = self.header.cluster_size();
        if !self.l2_cache.contains_key(&l2_offset) {
            check_l2_table(l2_offset, cs, self.end)?;
            let mut raw = vec![0u8; cs as usize];
            self.read_host(&mut raw, l2_offset)?;
            if self.l2_cache.len() >= L2_CACHE_TABLES {
                self.l2_cache.clear();
            }
            self.l2_cache
                .insert(l2_offset, raw.chunks_exact(8).map(|c| be64(c, 0)).collect());
        }
        Ok(&self.l2_cache[&l2_offset])
    }

    fn set_l2_entry(&mut self, slot: Slot, entry: u64) -> Result<(), ImageError> {
        self.write_meta(slot.l2_offset + slot.index as u64 * 8, &entry.to_be_bytes())?;
        if let Some(table) = self.l2_cache.get_mut(&slot.l2_offset) {
            table[slot.index] = entry;
        }
        Ok(())
    }

    /// The L2 slot of guest cluster `index`, allocating its L2 table.
    fn slot_for_write(&mut self, index: u64) -> Result<(Cluster, Slot), ImageError> {
        if let (cluster, Some(slot)) = self.lookup(index)? {
            let l1 = self.l1[(index / (self.header.cluster_size() / 8)) as usize];
            if l1 & COPIED == 0 {
                return Err(ImageError::Unsupported(
                    "qcow2 L2 table shared with a snapshot".into(),
                ));
            }
            return Ok((cluster, slot));
        }
        let cs = self.header.cluster_size();
        let l1_index = (index / (cs / 8)) as usize;
        let table = self.alloc_cluster()?;
        self.write_meta(table, &vec![0u8; cs as usize])?;
        let l1_entry = table | COPIED;
        self.write_meta(
            self.header.l1_table_offset + l1_index as u64 * 8,
            &l1_entry.to_be_bytes(),
        )?;
        self.l1[l1_index] = l1_entry;
        self.l2_cache.insert(table, vec![0; (cs / 8) as usize]);
        Ok((
            Cluster::Zero,
            Slot {
                l2_offset: table,
                index: (index % (cs / 8)) as usize,
                entry: 0,
            },
        ))
    }

    fn write_in_cluster(&mut self, index: u64, within: u64, data: &[u8]) -> Result<(), ImageError> {
        let cs = self.header.cluster_size();
        let (cluster, slot) = self.slot_for_write(index)?;
        match cluster {
            Cluster::Data(host) if slot.entry & COPIED != 0 => self.write_meta(host + within, data),
            Cluster::Zero => {
                // A fresh cluster at the end of the file: the bytes not
                // written are a hole and read as zeros.
                let host = self.alloc_cluster()?;
                self.write_meta(host + within, data)?;
                self.set_l2_entry(slot, host | COPIED)?;
                // A v3 zero entry may still hold a preallocated cluster.
                self.release(slot.entry)
            }
            Cluster::Data(_) | Cluster::Compressed(..) => {
                // Copy on write: compressed, or shared with another user.
                let mut whole = vec![0u8; cs as usize];
                match cluster {
                    Cluster::Compressed(off, len) => self.inflate(index, off, len, &mut whole)?,
                    Cluster::Data(host) => self.read_host(&mut whole, host)?,
                    Cluster::Zero => {}
                }
                whole[within as usize..within as usize + data.len()].copy_from_slice(data);
                let host = self.alloc_cluster()?;
                self.write_meta(host, &whole)?;
                self.set_l2_entry(slot, host | COPIED)?;
                self.release(slot.entry)
            }
        }
    }

    /// Unmap guest cluster `index`: it reads as zeros and its host space
    /// is freed.
    fn unmap(&mut self, index: u64) -> Result<(), ImageError> {
        let (_, slot) = self.lookup(index)?;
        let Some(slot) = slot else {
            return Ok(());
        };
        if slot.entry == 0 {
            return Ok(());
        }
        self.set_l2_entry(slot, 0)?;
        self.release(slot.entry)
    }

    /// Drop the references an old L2 entry held.
    fn release(&mut self, entry: u64) -> Result<(), ImageError> {
        let cs = self.header.cluster_size();
        if entry & L2_COMPRESSED != 0 {
            let (off, len) = compressed_extent(entry, &self.header);
            for cluster in off / cs..=(off + len - 1) / cs {
                self.refcount_add(cluster, -1)?;
            }
        } else if entry & OFFSET_MASK != 0 {
            self.refcount_add((entry & OFFSET_MASK) / cs, -1)?;
        }
        Ok(())
    }

    /// A new cluster at the end of the file, with refcount 1.
    fn alloc_cluster(&mut self) -> Result<u64, ImageError> {
        let cs = self.header.cluster_size();
        let host = self.end;
        self.end += cs;
        self.refcount_add(host / cs, 1)?;
        Ok(host)
    }

    fn refcount_add(&mut self, cluster: u64, delta: i32) -> Result<(), ImageError> {
        let cs = self.header.cluster_size();
        // A hostile entry (a v3 zero entry's unchecked offset) must not
        // make the refcount table grow toward it.
        if cluster > self.end / cs {
            return Err(bad(format!(
                "a reference to cluster {cluster}, past the end of the file"
            )));
        }
        let per_block = cs / 2;
        let block = self.refcount_block(cluster / per_block)?;
        let at = block + (cluster % per_block) * 2;
        let mut raw = [0u8; 2];
        self.file
            .read_exact_at(&mut raw, at)
            .map_err(ImageError::Io)?;
        let value = i32::from(u16::from_be_bytes(raw)) + delta;
        let value = u16::try_from(value).map_err(|_| {
            bad(format!(
                "refcount of cluster {cluster} would become {value}"
            ))
        })?;
        self.write_meta(at, &value.to_be_bytes())
    }

    /// The refcount block for refcount-table index `table_index`,
    /// allocated (and the table grown) when missing.
    fn refcount_block(&mut self, table_index: u64) -> Result<u64, ImageError> {
        if table_index >= self.refcount_table.len() as u64 {
            self.grow_refcount_table(table_index + 1)?;
        }
        let existing = self.refcount_table[table_index as usize];
        if existing != 0 {
            return Ok(existing);
        }
        let cs = self.header.cluster_size();
        let block = self.end;
        self.end += cs;
        self.write_meta(block, &vec![0u8; cs as usize])?;
        self.refcount_table[table_index as usize] = block;
        self.write_meta(
            self.header.refcount_table_offset + table_index * 8,
            &block.to_be_bytes(),
        )?;
        // The block counts itself (it may fall in its own range or in
        // one that needs another block: the recursion ends because each
        // step covers a range the previous did not).
        self.refcount_add(block / cs, 1)?;
        Ok(block)
    }

    /// Move the refcount table to a larger one at the end of the file.
    fn grow_refcount_table(&mut self, min_entries: u64) -> Result<(), ImageError> {
        let cs = self.header.cluster_size();
        let per_cluster = cs / 8;
        let old_clusters = u64::from(self.header.refcount_table_clusters);
        let new_clusters = (old_clusters * 2).max(min_entries.div_ceil(per_cluster) + 1);
        let new_clusters_u32 = u32::try_from(new_clusters)
            .map_err(|_| bad("refcount table would exceed 2^32 clusters"))?;
        let old_offset = self.header.refcount_table_offset;
        let new_offset = self.end;
        self.end += new_clusters * cs;
        let mut table = self.refcount_table.clone();
        table.resize((new_clusters * per_cluster) as usize, 0);
        let raw: Vec<u8> = table.iter().flat_map(|e| e.to_be_bytes()).collect();
        self.write_meta(new_offset, &raw)?;
        self.file.sync_data().map_err(ImageError::Io)?;
        let mut header_bytes = [0u8; 12];
        header_bytes[..8].copy_from_slice(&new_offset.to_be_bytes());
        header_bytes[8..].copy_from_slice(&new_clusters_u32.to_be_bytes());
        self.write_meta(HEADER_REFCOUNT_TABLE, &header_bytes)?;
        self.refcount_table = table;
        self.header.refcount_table_offset = new_offset;
        self.header.refcount_table_clusters = new_clusters_u32;
        for k in 0..new_clusters {
            self.refcount_add(new_offset / cs + k, 1)?;
        }
        for k in 0..old_clusters {
            self.refcount_add(old_offset / cs + k, -1)?;
        }
        Ok(())
    }
}

/// The part of a byte range that falls in one cluster.
#[derive(Debug, Clone, Copy)]
struct Piece {
    /// Guest cluster index.
    index: u64,
    /// Offset inside the cluster.
    within: u64,
    /// Bytes of the range before this piece.
    done: usize,
    /// Bytes in this piece.
    len: usize,
}

/// Split `len` bytes from `offset` at cluster boundaries.
fn pieces(offset: u64, len: u64, cluster_size: u64) -> impl Iterator<Item = Piece> {
    let mut done = 0u64;
    std::iter::from_fn(move || {
        if done >= len {
            return None;
        }
        let pos = offset + done;
        let within = pos % cluster_size;
        let n = (cluster_size - within).min(len - done);
        let piece = Piece {
            index: pos / cluster_size,
            within,
            done: done as usize,
            len: n as usize,
        };
        done += n;
        Some(piece)
    })
}

/// Why an image cannot be written, if it cannot.
fn check_writable(header: &Header) -> Result<(), ImageError> {
    if header.nb_snapshots != 0 {
        return Err(ImageError::Unsupported(format!(
            "writing a qcow2 image with {} internal snapshot(s) (open it read-only, or `qemu-img snapshot -d` them)",
            header.nb_snapshots
        )));
    }
    if header.refcount_order != 4 {
        return Err(ImageError::Unsupported(format!(
            "writing a qcow2 image with {}-bit refcounts (only 16-bit, QEMU's default, are written)",
            1u32 << header.refcount_order
        )));
    }
    if header.incompatible_features & INCOMPAT_DIRTY != 0 {
        return Err(ImageError::Unsupported(
            "writing a qcow2 image whose dirty bit is set (repair it first: `qemu-img check -r all`)"
                .into(),
        ));
    }
    Ok(())
}
