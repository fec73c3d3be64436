//! A qcow2 (v2 and v3) reader: header, L1 and L2 tables, standard,
//! zero-flagged, unallocated and deflate-compressed clusters. Backing
//! files, encryption, external data files, extended L2 entries and zstd
//! compression are rejected with a clear error. Every offset read from the
//! file is checked against the file size before use.

use std::io::Read;

use crate::ImageError;

mod image;
pub use image::{Qcow2Image, Qcow2OpenMode};

const MAGIC: u32 = 0x5146_49fb;
/// Incompatible feature bits this reader cannot honour.
pub(crate) const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_EXTERNAL_DATA: u64 = 1 << 2;
const INCOMPAT_COMPRESSION_TYPE: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
/// Largest L1 table accepted (entries): 32 Mi entries × 8 B = 256 MiB.
const MAX_L1_ENTRIES: u64 = 32 << 20;
/// Host offset bits of L1, L2 and refcount-table entries.
pub(crate) const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1/L2 flag: the cluster's refcount is exactly 1 (writable in place).
pub(crate) const COPIED: u64 = 1 << 63;
/// L2 flag: the cluster is compressed.
pub(crate) const L2_COMPRESSED: u64 = 1 << 62;
/// L2 flag (v3): the cluster reads as zeros.
pub(crate) const L2_ZERO: u64 = 1;

/// Random access to the image bytes (a file, a buffer).
pub trait ReadAt {
    /// Fill `buf` from `offset`; short reads are errors.
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
    /// Total length in bytes.
    fn size(&self) -> std::io::Result<u64>;
    /// How many reads at once pay off: 1 for memory and local files (their
    /// reads already overlap with the writer thread), more for a source
    /// where each read waits on a network round trip.
    fn concurrency(&self) -> usize {
        1
    }
}

impl ReadAt for std::fs::File {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

impl ReadAt for [u8] {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let src = self
            .get(start..start.checked_add(buf.len()).ok_or_else(eof)?)
            .ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len() as u64)
    }
}

fn eof() -> std::io::Error {
    std::io::ErrorKind::UnexpectedEof.into()
}

/// The parsed header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// 2 or 3.
    pub version: u32,
    /// log2 of the cluster size (9..=21).
    pub cluster_bits: u32,
    /// Guest-visible size in bytes.
    pub virtual_size: u64,
    /// L1 entries.
    pub l1_size: u32,
    /// File offset of the L1 table.
    pub l1_table_offset: u64,
    /// File offset of the refcount table.
    pub refcount_table_offset: u64,
    /// Clusters the refcount table occupies.
    pub refcount_table_clusters: u32,
    /// Internal snapshots in the image.
    pub nb_snapshots: u32,
    /// log2 of the refcount width in bits (v2: always 4, i.e. 16 bits).
    pub refcount_order: u32,
    /// Incompatible feature bits (v3; 0 for v2).
    pub incompatible_features: u64,
    /// Autoclear feature bits (v3; 0 for v2).
    pub autoclear_features: u64,
}

impl Header {
    /// Bytes per cluster.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
}

/// Where a guest cluster's data is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cluster {
    /// Reads as zeros (unallocated or zero-flagged).
    Zero,
    /// Stored uncompressed at this file offset.
    Data(u64),
    /// Deflate-compressed: file offset and compressed length.
    Compressed(u64, u64),
}

/// An open qcow2 image.
pub struct Qcow2<'a, R: ReadAt + ?Sized> {
    pub(crate) src: &'a R,
    file_len: u64,
    /// The header.
    pub header: Header,
    pub(crate) l1: Vec<u64>,
}

pub(crate) fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::Corrupt(msg.into())
}

pub(crate) fn be32(b: &[u8], off: usize) -> u32 {
    u32::from_be_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

pub(crate) fn be64(b: &[u8], off: usize) -> u64 {
    (u64::from(be32(b, off)) << 32) | u64::from(be32(b, off + 4))
}

impl<'a, R: ReadAt + ?Sized> Qcow2<'a, R> {
    /// Parse and check the header and the L1 table.
    pub fn open(src: &'a R) -> Result<Self, ImageError> {
        let file_len = src.size().map_err(ImageError::Io)?;
        let mut h = [0u8; 112];
        let n = (file_len.min(112)) as usize;
        src.fill_at(&mut h[..n], 0).map_err(ImageError::Io)?;
        if n < 72 || be32(&h, 0) != MAGIC {
            return Err(bad("not a qcow2 image (bad magic or truncated header)"));
        }
        let version = be32(&h, 4);
        if version != 2 && version != 3 {
            return Err(ImageError::Unsupported(format!("qcow2 version {version}")));
        }
        if be64(&h, 8) != 0 {
            return Err(ImageError::Unsupported(
                "qcow2 image with a backing file (import a flattened image: qemu-img convert)"
                    .into(),
            ));
        }
        let cluster_bits = be32(&h, 20);
        if !(9..=21).contains(&cluster_bits) {
            return Err(bad(format!("cluster_bits {cluster_bits} outside 9..=21")));
        }
        let virtual_size = be64(&h, 24);
        if be32(&h, 32) != 0 {
            return Err(ImageError::Unsupported("encrypted qcow2 image".into()));
        }
        let l1_size = be32(&h, 36);
        let l1_table_offset = be64(&h, 40);
        let (mut incompatible_features, mut autoclear_features, mut refcount_order) = (0, 0, 4);
        if version == 3 {
            if n < 104 {
                return Err(bad("truncated v3 header"));
            }
            let incompat = be64(&h, 72);
            incompatible_features = incompat;
            autoclear_features = be64(&h, 88);
            refcount_order = be32(&h, 96);
            if refcount_order > 6 {
                return Err(bad(format!("refcount_order {refcount_order} above 6")));
            }
            if incompat & INCOMPAT_CORRUPT != 0 {
                return Err(bad("image is marked corrupt"));
            }
            if incompat & INCOMPAT_EXTERNAL_DATA != 0 {
                return Err(ImageError::Unsupported(
                    "qcow2 with an external data file".into(),
                ));
            }
            if incompat & INCOMPAT_EXTENDED_L2 != 0 {
                return Err(ImageError::Unsupported(
                    "qcow2 with extended L2 entries".into(),
                ));
            }
            if incompat & INCOMPAT_COMPRESSION_TYPE != 0 && h.get(104).copied().unwrap_or(0) != 0 {
                return Err(ImageError::Unsupported(
                    "qcow2 with zstd-compressed clusters".into(),
                ));
            }
            if incompat & !(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION_TYPE) != 0 {
                return Err(ImageError::Unsupported(format!(
                    "qcow2 incompatible features {incompat:#x}"
                )));
            }
        }
        let header = Header {
            version,
            cluster_bits,
            virtual_size,
            l1_size,
            l1_table_offset,
            refcount_table_offset: be64(&h, 48),
            refcount_table_clusters: be32(&h, 56),
            nb_snapshots: be32(&h, 60),
            refcount_order,
            incompatible_features,
            autoclear_features,
        };
        let cs = header.cluster_size();
        let l2_entries = cs / 8;
        let clusters = virtual_size.div_ceil(cs);
        let needed = clusters.div_ceil(l2_entries);
        if u64::from(l1_size) < needed || u64::from(l1_size) > MAX_L1_ENTRIES {
            return Err(bad(format!("L1 of {l1_size} entries for {needed} needed")));
        }
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_table_offset % 8 != 0
            || l1_table_offset
                .checked_add(l1_bytes)
                .is_none_or(|e| e > file_len)
        {
            return Err(bad("L1 table lies outside the file"));
        }
        let mut raw = vec![0u8; l1_bytes as usize];
        src.fill_at(&mut raw, l1_table_offset)
            .map_err(ImageError::Io)?;
        let l1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
        Ok(Qcow2 {
            src,
            file_len,
            header,
            l1,
        })
    }

    /// Where guest cluster `index` is.
    pub fn lookup(
        &self,
        index: u64,
        l2_cache: &mut (u64, Vec<u64>),
    ) -> Result<Cluster, ImageError> {
        let cs = self.header.cluster_size();
        let l2_entries = cs / 8;
        let l2_offset = l2_table_of(&self.l1, index, cs)?;
        if l2_offset == 0 {
            return Ok(Cluster::Zero);
        }
        if l2_cache.0 != l2_offset {
            check_l2_table(l2_offset, cs, self.file_len)?;
            let mut raw = vec![0u8; cs as usize];
            self.src
                .fill_at(&mut raw, l2_offset)
                .map_err(ImageError::Io)?;
            l2_cache.1 = raw.chunks_exact(8).map(|c| be64(c, 0)).collect();
            l2_cache.0 = l2_offset;
        }
        let entry = l2_cache.1[(index % l2_entries) as usize];
        decode_l2_entry(entry, &self.header, self.file_len)
    }

    /// Read `buf.len()` bytes of uncompressed cluster data at file offset
    /// `host` (from [`Cluster::Data`]); bytes past the end of the file
    /// read as zeros (an image's last cluster may be short).
    pub fn read_data(&self, host: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let n = buf.len().min(self.file_len.saturating_sub(host) as usize);
        self.src
            .fill_at(&mut buf[..n], host)
            .map_err(ImageError::Io)?;
        buf[n..].fill(0);
        Ok(())
    }

    /// Read guest cluster `index` into `buf` (one cluster). Returns false
    /// for a cluster that reads as zeros (buf untouched).
    pub fn read_cluster(
        &self,
        index: u64,
        buf: &mut [u8],
        l2_cache: &mut (u64, Vec<u64>),
        scratch: &mut Vec<u8>,
    ) -> Result<bool, ImageError> {
        match self.lookup(index, l2_cache)? {
            Cluster::Zero => Ok(false),
            Cluster::Data(off) => {
                self.read_data(off, buf)?;
                Ok(true)
            }
            Cluster::Compressed(off, len) => {
                scratch.resize(len as usize, 0);
                self.src.fill_at(scratch, off).map_err(ImageError::Io)?;
                inflate_cluster(scratch, buf, index)?;
                Ok(true)
            }
        }
    }
}

/// The L2 table offset for guest cluster `index` (0: none), from `l1`.
pub(crate) fn l2_table_of(l1: &[u64], index: u64, cluster_size: u64) -> Result<u64, ImageError> {
    let entry = l1
        .get((index / (cluster_size / 8)) as usize)
        .ok_or_else(|| bad("cluster beyond the L1 table"))?;
    Ok(entry & OFFSET_MASK)
}

/// An L2 table must be cluster-aligned and inside the file.
pub(crate) fn check_l2_table(
    l2_offset: u64,
    cluster_size: u64,
    file_len: u64,
) -> Result<(), ImageError> {
    if l2_offset % cluster_size != 0
        || l2_offset
            .checked_add(cluster_size)
            .is_none_or(|e| e > file_len)
    {
        return Err(bad(format!(
            "L2 table at {l2_offset:#x} lies outside the file"
        )));
    }
    Ok(())
}

/// Where an L2 entry points: the cluster's state, with every offset checked
/// against the file length (`file_len`).
pub(crate) fn decode_l2_entry(
    entry: u64,
    header: &Header,
    file_len: u64,
) -> Result<Cluster, ImageError> {
    let cs = header.cluster_size();
    if entry & L2_COMPRESSED != 0 {
        let (offset, len) = compressed_extent(entry, header);
        let len = len.min(file_len.saturating_sub(offset));
        if offset >= file_len || len == 0 {
            return Err(bad(format!(
                "compressed cluster at {offset:#x} lies outside the file"
            )));
        }
        return Ok(Cluster::Compressed(offset, len));
    }
    let offset = entry & OFFSET_MASK;
    if entry & L2_ZERO != 0 && header.version >= 3 {
        return Ok(Cluster::Zero);
    }
    if offset == 0 {
        return Ok(Cluster::Zero);
    }
    if offset % cs != 0 || offset.checked_add(cs).is_none_or(|e| e > file_len + cs) {
        return Err(bad(format!(
            "data cluster at {offset:#x} lies outside the file"
        )));
    }
    Ok(Cluster::Data(offset))
}

/// A compressed entry's host offset and length as the refcounts see it
/// (not clipped to the file).
pub(crate) fn compressed_extent(entry: u64, header: &Header) -> (u64, u64) {
    let x = 62 - (header.cluster_bits - 8);
    let offset = entry & ((1u64 << x) - 1);
    let sectors = ((entry >> x) & ((1u64 << (header.cluster_bits - 8)) - 1)) + 1;
    (offset, sectors * 512 - (offset & 511))
}

/// Inflate a deflate-compressed cluster into `out` (exactly one cluster).
pub(crate) fn inflate_cluster(
    compressed: &[u8],
    out: &mut [u8],
    index: u64,
) -> Result<(), ImageError> {
    let mut d = flate2::read::DeflateDecoder::new(compressed);
    let mut filled = 0;
    while filled < out.len() {
        match d.read(&mut out[filled..]) {
            Ok(0) => break,
            Ok(k) => filled += k,
            Err(e) => return Err(bad(format!("compressed cluster {index}: {e}"))),
        }
    }
    if filled != out.len() {
        return Err(bad(format!(
            "compressed cluster {index} inflates to {filled} bytes, not {}",
            out.len()
        )));
    }
    Ok(())
}
