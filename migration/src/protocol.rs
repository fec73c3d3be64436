//! The migration wire protocol, version 3.
//!
//! Every message is a frame: a 16-byte little-endian [`FrameHeader`]
//! (`tag` 0x4B56 "VK", `kind`, reserved, payload `len`) followed by `len`
//! payload bytes. Payload layouts are zerocopy structs with little-endian
//! fields. The reader validates every length against the kind before it
//! allocates or reads, so a hostile stream can make it fail but never make
//! it allocate without bound or write outside guest RAM.
//!
//! Conversation:
//! ```text
//! source                          destination
//!   Hello(version, layout) ─────────▶ checks version and layout
//!                    ◀───────────── Challenge(nonce)
//!   Auth(HMAC(secret, nonce‖hello)) ▶ verifies (constant time)
//!                    ◀───────────── Accept | Reject(reason)
//!   Pages / ZeroPages / IterationDone … (precopy passes)
//!   DeviceState × d, VcpuState × n, Clock, Complete(checksum)
//!                    ◀───────────── Confirm(checksum)   (state loaded)
//!   Commit ─────────────────────────▶ resumes the guest
//! ```
//! Either side may send `Cancel(reason)` at any point before `Commit`.
//!
//! Compatibility rule: a release reads streams of its own version and of
//! the previous one (`MIN_READABLE_VERSION..=PROTOCOL_VERSION`; this one
//! reads all three). Version 2 added the device ids in the Hello and the
//! DeviceState frames; a version-1 stream has neither, and its guest's
//! devices start fresh. Version 3 added the guest's CPU feature words
//! after the device ids, which the target compares with its own vCPUs
//! (naming any feature it lacks); a version-1 or 2 stream is checked by
//! its CPUID hash instead, which only says that the hosts differ.

use std::io::{Read, Write};

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The version this build writes.
pub const PROTOCOL_VERSION: u32 = 3;
/// The oldest version this build reads.
pub const MIN_READABLE_VERSION: u32 = 1;
/// `"VK"` in every frame header.
pub const FRAME_TAG: u16 = 0x4b56;
/// Magic at the start of a Hello.
pub const HELLO_MAGIC: [u8; 8] = *b"VKMIGRT\0";
/// Guest page size on the wire.
pub const PAGE_SIZE: u64 = 4096;
/// Most pages one Pages frame carries (4 MiB).
pub const MAX_PAGES_PER_FRAME: u32 = 1024;
/// Most RAM ranges a Hello may describe.
pub const MAX_RANGES: u32 = 64;
/// Longest reason text.
pub const MAX_TEXT: u64 = 4096;
/// Longest opaque state blob (vCPU, clock or device state).
pub const MAX_STATE: u64 = 1 << 20;
/// Most devices with state a Hello may name.
pub const MAX_DEVICES: u32 = 256;
/// Longest device id.
pub const MAX_DEVICE_ID: usize = 64;
/// Most CPU feature words a Hello may carry.
pub const MAX_FEATURE_WORDS: u32 = 64;
/// Most migrating disks a Hello may name.
pub const MAX_DISKS: u32 = 32;
/// Most bytes one DiskData frame carries (4 MiB).
pub const MAX_DISK_DATA: u64 = 4 << 20;
/// Disk offsets and lengths on the wire are multiples of this.
pub const DISK_SECTOR: u64 = 512;

/// Frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum Kind {
    /// Source → destination: version and VM layout.
    Hello = 1,
    /// Destination → source: a nonce to authenticate.
    Challenge = 2,
    /// Source → destination: HMAC over the nonce and Hello.
    Auth = 3,
    /// Destination → source: go ahead.
    Accept = 4,
    /// Destination → source: refused, with a reason.
    Reject = 5,
    /// Guest pages with their bytes.
    Pages = 6,
    /// A run of all-zero pages (no bytes follow).
    ZeroPages = 7,
    /// End of one precopy pass.
    IterationDone = 8,
    /// One vCPU's saved state.
    VcpuState = 9,
    /// The VM clock.
    Clock = 10,
    /// Source → destination: everything sent.
    Complete = 11,
    /// Destination → source: state loaded, ready to resume.
    Confirm = 12,
    /// Source → destination: the source has let go; resume.
    Commit = 13,
    /// Either way: abandon the migration.
    Cancel = 14,
    /// One device's saved state (version 2).
    DeviceState = 15,
    /// Bytes of a migrating disk (version 3).
    DiskData = 16,
    /// A run of a migrating disk that reads as zeroes (version 3).
    DiskZero = 17,
}

impl Kind {
    fn from_u16(v: u16) -> Option<Kind> {
        use Kind::*;
        Some(match v {
            1 => Hello,
            2 => Challenge,
            3 => Auth,
            4 => Accept,
            5 => Reject,
            6 => Pages,
            7 => ZeroPages,
            8 => IterationDone,
            9 => VcpuState,
            10 => Clock,
            11 => Complete,
            12 => Confirm,
            13 => Commit,
            14 => Cancel,
            15 => DeviceState,
            16 => DiskData,
            17 => DiskZero,
            _ => return None,
        })
    }
}

/// Every frame starts with this.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct FrameHeader {
    /// [`FRAME_TAG`].
    pub tag: U16,
    /// A [`Kind`].
    pub kind: U16,
    /// Zero.
    pub reserved: U32,
    /// Payload bytes that follow.
    pub len: U64,
}

/// Hello payload, followed by `range_count` [`WireRange`]s, then
/// `device_count` device ids, each a length byte and that many ASCII
/// bytes (version 1 streams have none), then (version 3) a `u32` count
/// and that many [`WireFeature`]s.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Hello {
    /// [`HELLO_MAGIC`].
    pub magic: [u8; 8],
    /// Stream version.
    pub version: U32,
    /// vCPU count.
    pub vcpus: U32,
    /// Guest RAM bytes.
    pub memory_bytes: U64,
    /// Hash of the CPUID the guest sees (0 = not checked).
    pub cpuid_hash: U64,
    /// RAM ranges that follow.
    pub range_count: U32,
    /// Device ids that follow the ranges (version 2; zero in version 1).
    pub device_count: U32,
}

/// DeviceState payload head; the id (`id_len` ASCII bytes) and then the
/// device's blob follow.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DeviceStateHeader {
    /// Bytes of the id.
    pub id_len: U32,
    /// Zero.
    pub reserved: U32,
}

/// DiskData payload head; the bytes follow.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DiskDataHeader {
    /// Index of the disk in the Hello.
    pub disk: U32,
    /// Zero.
    pub reserved: U32,
    /// Byte offset in the disk.
    pub offset: U64,
}

/// DiskZero payload.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct DiskZeroRun {
    /// Index of the disk in the Hello.
    pub disk: U32,
    /// Zero.
    pub reserved: U32,
    /// Byte offset in the disk.
    pub offset: U64,
    /// Bytes that read as zero.
    pub len: U64,
}

/// One feature register of the guest's CPUID (version 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct WireFeature {
    /// Leaf.
    pub leaf: U32,
    /// Subleaf.
    pub subleaf: U32,
    /// Register: EAX 0, EBX 1, ECX 2, EDX 3.
    pub reg: U32,
    /// The flags.
    pub value: U32,
}

/// One guest RAM range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct WireRange {
    /// Guest-physical start.
    pub gpa: U64,
    /// Length in bytes.
    pub len: U64,
}

/// Pages / ZeroPages payload header.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct PagesHeader {
    /// Guest-physical address of the first page.
    pub gpa: U64,
    /// Pages in the run.
    pub count: U32,
    /// Zero.
    pub reserved: U32,
}

/// IterationDone payload.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct IterationDone {
    /// Pass number, from 0.
    pub iteration: U32,
    /// Zero.
    pub reserved: U32,
    /// Pages sent in the pass.
    pub pages: U64,
}

/// Complete / Confirm payload.
#[derive(Debug, Clone, Copy, IntoBytes, FromBytes, Immutable, KnownLayout)]
#[repr(C)]
pub struct Checksum {
    /// xxh3 of all guest RAM at the pause (0 = not computed).
    pub xxh3: U64,
}

/// A decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Version and layout.
    Hello {
        /// Stream version.
        version: u32,
        /// vCPU count.
        vcpus: u32,
        /// Guest RAM bytes.
        memory_bytes: u64,
        /// CPUID hash (0 = unchecked).
        cpuid_hash: u64,
        /// RAM ranges.
        ranges: Vec<(u64, u64)>,
        /// Ids of the devices whose state will follow.
        devices: Vec<String>,
        /// The guest's CPU feature words (version 3; empty before).
        features: Vec<WireFeature>,
        /// Disks whose contents follow, `(id, size)` (version 3).
        disks: Vec<(String, u64)>,
        /// The raw payload (authenticated by Auth).
        raw: Vec<u8>,
    },
    /// Nonce.
    Challenge([u8; 32]),
    /// HMAC-SHA256.
    Auth([u8; 32]),
    /// Accepted.
    Accept,
    /// Refused.
    Reject(String),
    /// Pages with bytes (`data.len() == count * 4096`).
    Pages {
        /// First page's address.
        gpa: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// A run of zero pages.
    ZeroPages {
        /// First page's address.
        gpa: u64,
        /// Pages in the run.
        count: u32,
    },
    /// End of a pass.
    IterationDone {
        /// Pass number.
        iteration: u32,
        /// Pages in the pass.
        pages: u64,
    },
    /// A vCPU state blob.
    VcpuState(Vec<u8>),
    /// The clock blob.
    Clock(Vec<u8>),
    /// Bytes of a migrating disk.
    DiskData {
        /// Index in the Hello's disks.
        disk: u32,
        /// Byte offset.
        offset: u64,
        /// The bytes (a multiple of 512).
        data: Vec<u8>,
    },
    /// A run of a migrating disk that reads as zeroes.
    DiskZero {
        /// Index in the Hello's disks.
        disk: u32,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// One device's state.
    DeviceState {
        /// The device's id.
        id: String,
        /// Its blob.
        state: Vec<u8>,
    },
    /// All sent.
    Complete {
        /// Source checksum (0 = none).
        checksum: u64,
    },
    /// Ready to resume.
    Confirm {
        /// Destination checksum (0 = none).
        checksum: u64,
    },
    /// Resume.
    Commit,
    /// Abandon.
    Cancel(String),
}

/// A malformed stream or an I/O failure.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The connection failed or closed.
    #[error("migration stream I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The bytes do not form a valid frame.
    #[error("malformed migration stream: {0}")]
    Malformed(String),
}

pub(crate) fn malformed(msg: impl Into<String>) -> ProtocolError {
    ProtocolError::Malformed(msg.into())
}

/// The header of a frame of `kind` with `len` payload bytes.
pub fn frame_header(kind: Kind, len: u64) -> FrameHeader {
    FrameHeader {
        tag: U16::new(FRAME_TAG),
        kind: U16::new(kind as u16),
        reserved: U32::new(0),
        len: U64::new(len),
    }
}

/// Write one frame.
pub fn write_frame(w: &mut dyn Write, kind: Kind, parts: &[&[u8]]) -> std::io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    w.write_all(frame_header(kind, len as u64).as_bytes())?;
    for p in parts {
        w.write_all(p)?;
    }
    Ok(())
}

/// Build a Hello frame's payload (this build's version).
pub fn hello_payload(
    vcpus: u32,
    memory_bytes: u64,
    cpuid_hash: u64,
    ranges: &[(u64, u64)],
    devices: &[String],
    features: &[WireFeature],
    disks: &[(String, u64)],
) -> Vec<u8> {
    let h = Hello {
        magic: HELLO_MAGIC,
        version: U32::new(PROTOCOL_VERSION),
        vcpus: U32::new(vcpus),
        memory_bytes: U64::new(memory_bytes),
        cpuid_hash: U64::new(cpuid_hash),
        range_count: U32::new(ranges.len() as u32),
        device_count: U32::new(devices.len() as u32),
    };
    let mut v = h.as_bytes().to_vec();
    for &(gpa, len) in ranges {
        v.extend_from_slice(
            WireRange {
                gpa: U64::new(gpa),
                len: U64::new(len),
            }
            .as_bytes(),
        );
    }
    for id in devices {
        // Ids are checked where devices register (at most 64 bytes).
        let id = &id.as_bytes()[..id.len().min(MAX_DEVICE_ID)];
        v.push(id.len() as u8);
        v.extend_from_slice(id);
    }
    let features = &features[..features.len().min(MAX_FEATURE_WORDS as usize)];
    v.extend_from_slice(&(features.len() as u32).to_le_bytes());
    for f in features {
        v.extend_from_slice(f.as_bytes());
    }
    let disks = &disks[..disks.len().min(MAX_DISKS as usize)];
    v.extend_from_slice(&(disks.len() as u32).to_le_bytes());
    for (id, size) in disks {
        // Ids are checked where disks register (at most 64 bytes).
        let id = &id.as_bytes()[..id.len().min(MAX_DEVICE_ID)];
        v.extend_from_slice(&size.to_le_bytes());
        v.push(id.len() as u8);
        v.extend_from_slice(id);
    }
    v
}

/// A DeviceState frame's payload head and id, to send before the blob.
pub fn device_state_head(id: &str) -> Vec<u8> {
    let mut v = DeviceStateHeader {
        id_len: U32::new(id.len() as u32),
        reserved: U32::new(0),
    }
    .as_bytes()
    .to_vec();
    v.extend_from_slice(id.as_bytes());
    v
}

/// A device id off the wire: 1 to [`MAX_DEVICE_ID`] printable ASCII
/// bytes (the runtime's own id rules are checked when states load).
fn wire_device_id(bytes: &[u8]) -> Result<String, ProtocolError> {
    if bytes.is_empty() || bytes.len() > MAX_DEVICE_ID || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(malformed(format!(
            "device id of {} bytes is not 1 to {MAX_DEVICE_ID} printable ASCII bytes",
            bytes.len()
        )));
    }
    Ok(String::from_utf8_lossy(bytes).into_owned())
}

fn read_exact_vec(r: &mut dyn Read, len: u64) -> Result<Vec<u8>, ProtocolError> {
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

fn fixed<T: FromBytes>(payload: &[u8], what: &str) -> Result<T, ProtocolError> {
    T::read_from_bytes(payload).map_err(|_| {
        malformed(format!(
            "{what} payload is {} bytes, expected {}",
            payload.len(),
            std::mem::size_of::<T>()
        ))
    })
}

/// Read and validate one frame. Lengths are checked against the kind
/// before any payload is read.
pub fn read_frame(r: &mut dyn Read) -> Result<Frame, ProtocolError> {
    let (kind, len) = read_head(r)?;
    if kind == Kind::Pages {
        let (gpa, count) = read_pages_head(r, len)?;
        let data = read_exact_vec(r, u64::from(count) * PAGE_SIZE)?;
        return Ok(Frame::Pages { gpa, data });
    }
    decode(kind, read_exact_vec(r, len)?)
}

/// What [`read_frame_into`] did with one frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A Pages frame, its bytes now in the sink.
    Pages {
        /// First page's address.
        gpa: u64,
        /// Pages stored.
        count: u32,
    },
    /// A ZeroPages frame, applied to the sink.
    ZeroPages {
        /// First page's address.
        gpa: u64,
        /// Pages in the run.
        count: u32,
    },
    /// Any other frame, for the caller.
    Frame(Frame),
}

/// The destination's reader: one frame, with memory frames applied to
/// `sink`. A Pages frame's header is validated (count, length, alignment,
/// inside one RAM range) before the sink reads its bytes straight off `r`
/// into guest RAM: no bounce buffer, no write outside RAM.
pub fn read_frame_into(
    r: &mut dyn Read,
    sink: &mut dyn PageSink,
) -> Result<Incoming, ProtocolError> {
    let (kind, len) = read_head(r)?;
    if kind == Kind::Pages {
        let (gpa, count) = read_pages_head(r, len)?;
        check_pages(sink.ranges(), gpa, count)?;
        sink.fill(gpa, count as usize * PAGE_SIZE as usize, r)?;
        return Ok(Incoming::Pages { gpa, count });
    }
    match decode(kind, read_exact_vec(r, len)?)? {
        Frame::ZeroPages { gpa, count } => {
            check_pages(sink.ranges(), gpa, count)?;
            sink.zero(gpa, count).map_err(malformed)?;
            Ok(Incoming::ZeroPages { gpa, count })
        }
        f => Ok(Incoming::Frame(f)),
    }
}

/// The frame header: tag, kind and the payload length, bounded by the
/// kind's maximum before anything else is read.
fn read_head(r: &mut dyn Read) -> Result<(Kind, u64), ProtocolError> {
    let mut hb = [0u8; std::mem::size_of::<FrameHeader>()];
    r.read_exact(&mut hb)?;
    let h: FrameHeader = fixed(&hb, "frame header")?;
    if h.tag.get() != FRAME_TAG {
        return Err(malformed(format!("bad frame tag {:#06x}", h.tag.get())));
    }
    let kind = Kind::from_u16(h.kind.get())
        .ok_or_else(|| malformed(format!("unknown frame kind {}", h.kind.get())))?;
    let len = h.len.get();
    let max = match kind {
        Kind::Hello => {
            (std::mem::size_of::<Hello>()
                + MAX_RANGES as usize * std::mem::size_of::<WireRange>()
                + MAX_DEVICES as usize * (1 + MAX_DEVICE_ID)
                + 4
                + MAX_FEATURE_WORDS as usize * std::mem::size_of::<WireFeature>()
                + 4
                + MAX_DISKS as usize * (8 + 1 + MAX_DEVICE_ID)) as u64
        }
        Kind::DiskData => std::mem::size_of::<DiskDataHeader>() as u64 + MAX_DISK_DATA,
        Kind::DiskZero => std::mem::size_of::<DiskZeroRun>() as u64,
        Kind::Challenge | Kind::Auth => 32,
        Kind::Accept | Kind::Commit => 0,
        Kind::Reject | Kind::Cancel => MAX_TEXT,
        Kind::Pages => {
            std::mem::size_of::<PagesHeader>() as u64 + u64::from(MAX_PAGES_PER_FRAME) * PAGE_SIZE
        }
        Kind::ZeroPages => std::mem::size_of::<PagesHeader>() as u64,
        Kind::IterationDone => std::mem::size_of::<IterationDone>() as u64,
        Kind::VcpuState | Kind::Clock => MAX_STATE,
        Kind::DeviceState => {
            std::mem::size_of::<DeviceStateHeader>() as u64 + MAX_DEVICE_ID as u64 + MAX_STATE
        }
        Kind::Complete | Kind::Confirm => std::mem::size_of::<Checksum>() as u64,
    };
    if len > max {
        return Err(malformed(format!(
            "{kind:?} frame of {len} bytes exceeds {max}"
        )));
    }
    Ok((kind, len))
}

/// A Pages frame's own header; `len` is the frame's payload length. The
/// page bytes (`count` pages) follow.
fn read_pages_head(r: &mut dyn Read, len: u64) -> Result<(u64, u32), ProtocolError> {
    let n = std::mem::size_of::<PagesHeader>() as u64;
    if len < n {
        return Err(malformed("Pages payload too short"));
    }
    let mut hb = [0u8; std::mem::size_of::<PagesHeader>()];
    r.read_exact(&mut hb)?;
    let ph: PagesHeader = fixed(&hb, "Pages")?;
    let count = ph.count.get();
    if count == 0 || count > MAX_PAGES_PER_FRAME {
        return Err(malformed(format!("Pages frame with {count} pages")));
    }
    if len - n != u64::from(count) * PAGE_SIZE {
        return Err(malformed(format!(
            "Pages frame declares {count} pages but carries {} bytes",
            len - n
        )));
    }
    Ok((ph.gpa.get(), count))
}

/// A version-3 Hello's feature section: a count and that many words;
/// the rest of the payload after them.
fn feature_words(tail: &[u8]) -> Result<(Vec<WireFeature>, &[u8]), ProtocolError> {
    let cut = || malformed("Hello ends inside its CPU feature words");
    let (count, words) = tail.split_first_chunk::<4>().ok_or_else(cut)?;
    let count = u32::from_le_bytes(*count);
    if count > MAX_FEATURE_WORDS {
        return Err(malformed(format!(
            "Hello carries {count} CPU feature words, at most {MAX_FEATURE_WORDS}"
        )));
    }
    let size = std::mem::size_of::<WireFeature>();
    let (words, rest) = words
        .split_at_checked(count as usize * size)
        .ok_or_else(cut)?;
    let words = words
        .chunks_exact(size)
        .map(|c| fixed::<WireFeature>(c, "feature word"))
        .collect::<Result<_, _>>()?;
    Ok((words, rest))
}

/// A version-3 Hello's disk section: a count and that many `(size, id)`,
/// nothing after.
fn disk_list(mut tail: &[u8]) -> Result<Vec<(String, u64)>, ProtocolError> {
    let cut = || malformed("Hello ends inside its disks");
    let (count, rest) = tail.split_first_chunk::<4>().ok_or_else(cut)?;
    let count = u32::from_le_bytes(*count);
    if count > MAX_DISKS {
        return Err(malformed(format!(
            "Hello names {count} migrating disks, at most {MAX_DISKS}"
        )));
    }
    tail = rest;
    let mut disks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (size, rest) = tail.split_first_chunk::<8>().ok_or_else(cut)?;
        let (&len, rest) = rest.split_first().ok_or_else(cut)?;
        let (id, rest) = rest.split_at_checked(usize::from(len)).ok_or_else(cut)?;
        let size = u64::from_le_bytes(*size);
        if size % DISK_SECTOR != 0 {
            return Err(malformed(format!(
                "migrating disk of {size} bytes is not a whole number of sectors"
            )));
        }
        disks.push((wire_device_id(id)?, size));
        tail = rest;
    }
    if !tail.is_empty() {
        return Err(malformed(format!(
            "Hello carries {} bytes after its disks",
            tail.len()
        )));
    }
    Ok(disks)
}

/// Decode the payload of any frame but Pages.
fn decode(kind: Kind, payload: Vec<u8>) -> Result<Frame, ProtocolError> {
    Ok(match kind {
        Kind::Hello => {
            let n = std::mem::size_of::<Hello>();
            if payload.len() < n {
                return Err(malformed("Hello payload too short"));
            }
            let hello: Hello = fixed(&payload[..n], "Hello")?;
            if hello.magic != HELLO_MAGIC {
                return Err(malformed(
                    "Hello has the wrong magic: not a virtkit migration stream",
                ));
            }
            let count = hello.range_count.get();
            let rest = &payload[n..];
            let range_bytes = count as usize * std::mem::size_of::<WireRange>();
            if count > MAX_RANGES || rest.len() < range_bytes {
                return Err(malformed(format!(
                    "Hello declares {count} ranges but carries {} bytes of them",
                    rest.len()
                )));
            }
            let (range_part, mut id_part) = rest.split_at(range_bytes);
            let ranges = range_part
                .chunks_exact(std::mem::size_of::<WireRange>())
                .map(|c| fixed::<WireRange>(c, "range").map(|w| (w.gpa.get(), w.len.get())))
                .collect::<Result<Vec<_>, _>>()?;
            let device_count = hello.device_count.get();
            if device_count > MAX_DEVICES {
                return Err(malformed(format!(
                    "Hello names {device_count} devices, at most {MAX_DEVICES}"
                )));
            }
            let mut devices = Vec::with_capacity(device_count as usize);
            for _ in 0..device_count {
                let (&len, tail) = id_part
                    .split_first()
                    .ok_or_else(|| malformed("Hello ends inside its device ids"))?;
                if tail.len() < usize::from(len) {
                    return Err(malformed("Hello ends inside its device ids"));
                }
                let (id, tail) = tail.split_at(usize::from(len));
                devices.push(wire_device_id(id)?);
                id_part = tail;
            }
            let version = hello.version.get();
            let (features, disks) = match version {
                // A later version's tail is its own: the reader refuses
                // the version by name rather than calling it malformed.
                v if v > PROTOCOL_VERSION => (Vec::new(), Vec::new()),
                v if v >= 3 => {
                    let (features, rest) = feature_words(id_part)?;
                    (features, disk_list(rest)?)
                }
                _ if !id_part.is_empty() => {
                    return Err(malformed(format!(
                        "Hello carries {} bytes after its ranges and device ids",
                        id_part.len()
                    )))
                }
                _ => (Vec::new(), Vec::new()),
            };
            Frame::Hello {
                version,
                vcpus: hello.vcpus.get(),
                memory_bytes: hello.memory_bytes.get(),
                cpuid_hash: hello.cpuid_hash.get(),
                ranges,
                devices,
                features,
                disks,
                raw: payload,
            }
        }
        Kind::Challenge => Frame::Challenge(fixed(&payload, "Challenge")?),
        Kind::Auth => Frame::Auth(fixed(&payload, "Auth")?),
        Kind::Accept => Frame::Accept,
        Kind::Commit => Frame::Commit,
        Kind::Reject => Frame::Reject(String::from_utf8_lossy(&payload).into_owned()),
        Kind::Cancel => Frame::Cancel(String::from_utf8_lossy(&payload).into_owned()),
        Kind::Pages => return Err(malformed("Pages frame decoded as a small frame")),
        Kind::ZeroPages => {
            let ph: PagesHeader = fixed(&payload, "ZeroPages")?;
            if ph.count.get() == 0 {
                return Err(malformed("ZeroPages frame with 0 pages"));
            }
            Frame::ZeroPages {
                gpa: ph.gpa.get(),
                count: ph.count.get(),
            }
        }
        Kind::IterationDone => {
            let d: IterationDone = fixed(&payload, "IterationDone")?;
            Frame::IterationDone {
                iteration: d.iteration.get(),
                pages: d.pages.get(),
            }
        }
        Kind::VcpuState => Frame::VcpuState(payload),
        Kind::Clock => Frame::Clock(payload),
        Kind::DeviceState => {
            let n = std::mem::size_of::<DeviceStateHeader>();
            let head: DeviceStateHeader =
                fixed(payload.get(..n).unwrap_or(&payload), "DeviceState")?;
            let id_len = head.id_len.get() as usize;
            let id = payload
                .get(n..n.saturating_add(id_len))
                .ok_or_else(|| malformed("DeviceState ends inside its id"))?;
            let id = wire_device_id(id)?;
            Frame::DeviceState {
                id,
                state: payload[n + id_len..].to_vec(),
            }
        }
        Kind::DiskData => {
            let n = std::mem::size_of::<DiskDataHeader>();
            let head: DiskDataHeader = fixed(payload.get(..n).unwrap_or(&payload), "DiskData")?;
            let data = payload[n..].to_vec();
            let offset = head.offset.get();
            check_disk_run(offset, data.len() as u64)?;
            Frame::DiskData {
                disk: head.disk.get(),
                offset,
                data,
            }
        }
        Kind::DiskZero => {
            let run: DiskZeroRun = fixed(&payload, "DiskZero")?;
            check_disk_run(run.offset.get(), run.len.get())?;
            Frame::DiskZero {
                disk: run.disk.get(),
                offset: run.offset.get(),
                len: run.len.get(),
            }
        }
        Kind::Complete => Frame::Complete {
            checksum: fixed::<Checksum>(&payload, "Complete")?.xxh3.get(),
        },
        Kind::Confirm => Frame::Confirm {
            checksum: fixed::<Checksum>(&payload, "Confirm")?.xxh3.get(),
        },
    })
}

/// A disk run must be whole sectors, not empty, and not wrap around; the
/// destination checks it against the disk's size.
fn check_disk_run(offset: u64, len: u64) -> Result<(), ProtocolError> {
    if len == 0 || offset % DISK_SECTOR != 0 || len % DISK_SECTOR != 0 {
        return Err(malformed(format!(
            "disk run {offset}+{len} is not whole, non-empty sectors"
        )));
    }
    offset
        .checked_add(len)
        .map(drop)
        .ok_or_else(|| malformed("disk run overflows"))
}

/// Where the destination puts incoming pages. The KVM engine implements it
/// over a `Vm`; the fuzz target over a plain buffer.
pub trait PageSink {
    /// The guest RAM ranges `(gpa, len)`.
    fn ranges(&self) -> &[(u64, u64)];
    /// Read exactly `len` bytes (whole pages) from `src` into RAM at
    /// `gpa`, already checked to lie inside one range. An I/O failure is
    /// [`ProtocolError::Io`].
    fn fill(&mut self, gpa: u64, len: usize, src: &mut dyn Read) -> Result<(), ProtocolError>;
    /// Zero `count` pages at `gpa`, already checked.
    fn zero(&mut self, gpa: u64, count: u32) -> Result<(), String>;
}

/// Check that `[gpa, gpa + count pages)` is page-aligned and inside one
/// RAM range.
pub fn check_pages(ranges: &[(u64, u64)], gpa: u64, count: u32) -> Result<(), ProtocolError> {
    let len = u64::from(count)
        .checked_mul(PAGE_SIZE)
        .ok_or_else(|| malformed("page count overflows"))?;
    let end = gpa
        .checked_add(len)
        .ok_or_else(|| malformed("page run overflows the address space"))?;
    if gpa % PAGE_SIZE != 0 {
        return Err(malformed(format!(
            "page address {gpa:#x} is not page-aligned"
        )));
    }
    if ranges
        .iter()
        .any(|&(s, l)| gpa >= s && end <= s.saturating_add(l))
    {
        Ok(())
    } else {
        Err(malformed(format!(
            "pages {gpa:#x}..{end:#x} lie outside guest RAM"
        )))
    }
}

/// A sink over an in-memory buffer (tests and fuzzing).
pub struct BufferSink {
    ranges: Vec<(u64, u64)>,
    /// One buffer per range.
    pub buffers: Vec<Vec<u8>>,
}

impl BufferSink {
    /// Buffers for the given ranges.
    pub fn new(ranges: &[(u64, u64)]) -> Self {
        BufferSink {
            ranges: ranges.to_vec(),
            buffers: ranges.iter().map(|&(_, l)| vec![0u8; l as usize]).collect(),
        }
    }

    fn locate(&mut self, gpa: u64) -> Result<(&mut Vec<u8>, usize), String> {
        let i = self
            .ranges
            .iter()
            .position(|&(s, l)| gpa >= s && gpa < s + l)
            .ok_or_else(|| format!("{gpa:#x} outside RAM"))?;
        let off = (gpa - self.ranges[i].0) as usize;
        Ok((&mut self.buffers[i], off))
    }
}

impl PageSink for BufferSink {
    fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
    fn fill(&mut self, gpa: u64, len: usize, src: &mut dyn Read) -> Result<(), ProtocolError> {
        let (buf, off) = self.locate(gpa).map_err(malformed)?;
        let dst = buf
            .get_mut(off..off + len)
            .ok_or_else(|| malformed("run past range end"))?;
        src.read_exact(dst)?;
        Ok(())
    }
    fn zero(&mut self, gpa: u64, count: u32) -> Result<(), String> {
        let (buf, off) = self.locate(gpa)?;
        let len = count as usize * PAGE_SIZE as usize;
        buf.get_mut(off..off + len)
            .ok_or("run past range end")?
            .fill(0);
        Ok(())
    }
}

/// The destination's stream parser over any bytes: reads frames and
/// applies memory frames to `sink` until the stream ends or a frame is
/// rejected. This is what the fuzz target drives.
pub fn parse_stream(mut r: &[u8], sink: &mut dyn PageSink) -> Result<usize, ProtocolError> {
    let mut frames = 0;
    while !r.is_empty() {
        read_frame_into(&mut r, sink)?;
        frames += 1;
    }
    Ok(frames)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: Kind, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        write_frame(&mut v, kind, &[payload]).unwrap();
        v
    }

    fn pages(gpa: u64, count: u32, fill: u8) -> Vec<u8> {
        let h = PagesHeader {
            gpa: U64::new(gpa),
            count: U32::new(count),
            reserved: U32::new(0),
        };
        let data = vec![fill; count as usize * 4096];
        let mut v = Vec::new();
        write_frame(&mut v, Kind::Pages, &[h.as_bytes(), &data]).unwrap();
        v
    }

    #[test]
    fn round_trip_of_every_frame() {
        let word = WireFeature {
            leaf: U32::new(7),
            subleaf: U32::new(0),
            reg: U32::new(1),
            value: U32::new(1 << 5),
        };
        let hello = hello_payload(
            2,
            64 << 20,
            7,
            &[(0, 64 << 20)],
            &["platform".into()],
            &[word],
            &[("disk0".into(), 1 << 20)],
        );
        let mut stream = frame(Kind::Hello, &hello);
        stream.extend(frame(Kind::Challenge, &[1; 32]));
        stream.extend(frame(Kind::Accept, &[]));
        stream.extend(pages(0x1000, 2, 0xab));
        stream.extend(frame(Kind::Cancel, b"why"));
        let mut r = &stream[..];
        match read_frame(&mut r).unwrap() {
            Frame::Hello {
                version,
                vcpus,
                memory_bytes,
                cpuid_hash,
                ranges,
                devices,
                features,
                disks,
                ..
            } => {
                assert_eq!(
                    (version, vcpus, memory_bytes, cpuid_hash),
                    (PROTOCOL_VERSION, 2, 64 << 20, 7)
                );
                assert_eq!(ranges, vec![(0, 64 << 20)]);
                assert_eq!(devices, ["platform"]);
                assert_eq!(features, [word]);
                assert_eq!(disks, [("disk0".to_string(), 1 << 20)]);
            }
            f => panic!("{f:?}"),
        }
        assert_eq!(read_frame(&mut r).unwrap(), Frame::Challenge([1; 32]));
        assert_eq!(read_frame(&mut r).unwrap(), Frame::Accept);
        match read_frame(&mut r).unwrap() {
            Frame::Pages { gpa, data } => {
                assert_eq!((gpa, data.len(), data[0]), (0x1000, 8192, 0xab))
            }
            f => panic!("{f:?}"),
        }
        assert_eq!(read_frame(&mut r).unwrap(), Frame::Cancel("why".into()));
        assert!(r.is_empty());
    }

    #[test]
    fn hostile_frames_are_errors() {
        // Wrong tag.
        let mut bad = frame(Kind::Accept, &[]);
        bad[0] = 0;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::Malformed(_))
        ));
        // Unknown kind.
        let mut bad = frame(Kind::Accept, &[]);
        bad[2] = 99;
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::Malformed(_))
        ));
        // Huge length is refused before allocation.
        let mut bad = frame(Kind::Pages, &[]);
        bad[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(
            matches!(read_frame(&mut &bad[..]), Err(ProtocolError::Malformed(m)) if m.contains("exceeds"))
        );
        // Truncated payload.
        let good = pages(0, 1, 1);
        assert!(matches!(
            read_frame(&mut &good[..good.len() - 1]),
            Err(ProtocolError::Io(_))
        ));
        // Count disagrees with bytes.
        let mut bad = pages(0, 2, 1);
        bad[16 + 8..16 + 12].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(
            read_frame(&mut &bad[..]),
            Err(ProtocolError::Malformed(_))
        ));
        // Wrong hello magic.
        let mut hello = hello_payload(1, 4096, 0, &[(0, 4096)], &[], &[], &[]);
        hello[0] = b'X';
        assert!(matches!(
            read_frame(&mut &frame(Kind::Hello, &hello)[..]),
            Err(ProtocolError::Malformed(_))
        ));
    }

    #[test]
    fn disk_frames_are_whole_sectors() {
        let head = |disk: u32, offset: u64| {
            DiskDataHeader {
                disk: U32::new(disk),
                reserved: U32::new(0),
                offset: U64::new(offset),
            }
            .as_bytes()
            .to_vec()
        };
        let zero = |offset: u64, len: u64| {
            DiskZeroRun {
                disk: U32::new(1),
                reserved: U32::new(0),
                offset: U64::new(offset),
                len: U64::new(len),
            }
            .as_bytes()
            .to_vec()
        };
        let data = [head(2, 4096), vec![7; 1024]].concat();
        assert_eq!(
            read_frame(&mut &frame(Kind::DiskData, &data)[..]).unwrap(),
            Frame::DiskData {
                disk: 2,
                offset: 4096,
                data: vec![7; 1024]
            }
        );
        assert_eq!(
            read_frame(&mut &frame(Kind::DiskZero, &zero(512, 1 << 30))[..]).unwrap(),
            Frame::DiskZero {
                disk: 1,
                offset: 512,
                len: 1 << 30
            }
        );
        for bad in [
            frame(Kind::DiskData, &head(0, 0)), // no bytes
            frame(Kind::DiskData, &[head(0, 100), vec![0; 512]].concat()), // unaligned
            frame(Kind::DiskData, &[head(0, 0), vec![0; 500]].concat()), // part sector
            frame(Kind::DiskData, &[0; 8]),     // short head
            frame(Kind::DiskZero, &zero(0, 0)),
            frame(Kind::DiskZero, &zero(u64::MAX - 511, 1024)), // wraps
            frame(Kind::DiskZero, &zero(0, 1000)),
        ] {
            assert!(
                matches!(read_frame(&mut &bad[..]), Err(ProtocolError::Malformed(_))),
                "{bad:?}"
            );
        }
        // More than 4 MiB of data is refused from the header alone.
        let mut big = frame(Kind::DiskData, &head(0, 0));
        big[8..16].copy_from_slice(&(16 + MAX_DISK_DATA + 512).to_le_bytes());
        assert!(matches!(
            read_frame(&mut &big[..]),
            Err(ProtocolError::Malformed(m)) if m.contains("exceeds")
        ));
    }

    #[test]
    fn device_state_frames_and_device_ids() {
        let mut head = device_state_head("pci/0000:00:03.0");
        head.extend_from_slice(b"blob");
        let f = frame(Kind::DeviceState, &head);
        assert_eq!(
            read_frame(&mut &f[..]).unwrap(),
            Frame::DeviceState {
                id: "pci/0000:00:03.0".into(),
                state: b"blob".to_vec()
            }
        );
        // An id longer than the payload, empty, or not printable.
        for (id_len, id) in [(99u32, &b"abc"[..]), (0, b""), (3, b"a\nb")] {
            let mut p = id_len.to_le_bytes().to_vec();
            p.extend_from_slice(&[0; 4]);
            p.extend_from_slice(id);
            assert!(
                matches!(
                    read_frame(&mut &frame(Kind::DeviceState, &p)[..]),
                    Err(ProtocolError::Malformed(_))
                ),
                "{id_len} {id:?}"
            );
        }
        assert!(read_frame(&mut &frame(Kind::DeviceState, &[1, 0])[..]).is_err());
        // Hello device ids, feature words and disks: cut short, too
        // many, trailing bytes; in a version-2 Hello, anything after the
        // ids.
        let ok = hello_payload(
            1,
            4096,
            0,
            &[(0, 4096)],
            &["a".into(), "bb".into()],
            &[],
            &[],
        );
        let version_2 = {
            let mut v = ok[..ok.len() - 8].to_vec();
            v[8..12].copy_from_slice(&2u32.to_le_bytes());
            v
        };
        assert!(read_frame(&mut &frame(Kind::Hello, &version_2)[..]).is_ok());
        for bad in [
            ok[..ok.len() - 1].to_vec(),
            [ok.clone(), vec![0]].concat(),
            {
                let mut v = ok.clone();
                v[36..40].copy_from_slice(&(MAX_DEVICES + 1).to_le_bytes());
                v
            },
            {
                let mut v = ok.clone();
                let n = v.len();
                v[n - 8..n - 4].copy_from_slice(&(MAX_FEATURE_WORDS + 1).to_le_bytes());
                v
            },
            {
                // One feature word declared, 15 of its 16 bytes there.
                let mut v = ok[..ok.len() - 4].to_vec();
                let n = v.len();
                v[n - 4..].copy_from_slice(&1u32.to_le_bytes());
                v.extend_from_slice(&[0; 15]);
                v
            },
            {
                let mut v = ok.clone();
                let n = v.len();
                v[n - 4..].copy_from_slice(&(MAX_DISKS + 1).to_le_bytes());
                v
            },
            {
                // A disk of a size that is not whole sectors.
                let mut v = ok[..ok.len() - 4].to_vec();
                v.extend_from_slice(&1u32.to_le_bytes());
                v.extend_from_slice(&1000u64.to_le_bytes());
                v.extend_from_slice(b"\x01d");
                v
            },
            [version_2.clone(), vec![0; 4]].concat(),
        ] {
            assert!(matches!(
                read_frame(&mut &frame(Kind::Hello, &bad)[..]),
                Err(ProtocolError::Malformed(_))
            ));
        }
    }

    #[test]
    fn pages_outside_ram_are_rejected_not_written() {
        let ranges = [(0u64, 16 * 4096u64), (1 << 32, 4 * 4096)];
        let mut sink = BufferSink::new(&ranges);
        let ok = pages(4096, 2, 7);
        parse_stream(&ok, &mut sink).unwrap();
        assert_eq!(sink.buffers[0][4096], 7);
        for (gpa, count) in [
            (15 * 4096, 2),
            (16 * 4096, 1),
            (100, 1),
            ((1 << 32) + 4 * 4096, 1),
            (u64::MAX - 4095, 1),
        ] {
            let mut sink = BufferSink::new(&ranges);
            let f = pages(gpa, count, 9);
            assert!(parse_stream(&f, &mut sink).is_err(), "{gpa:#x}+{count}");
            assert!(sink.buffers.iter().all(|b| b.iter().all(|x| *x == 0)));
        }
        let z = {
            let h = PagesHeader {
                gpa: U64::new(1 << 32),
                count: U32::new(4),
                reserved: U32::new(0),
            };
            frame(Kind::ZeroPages, h.as_bytes())
        };
        let mut sink = BufferSink::new(&ranges);
        sink.buffers[1].fill(5);
        parse_stream(&z, &mut sink).unwrap();
        assert!(sink.buffers[1].iter().all(|x| *x == 0));
    }
}
