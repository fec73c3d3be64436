//! The headers of UEFI firmware images, checked before an image is mapped:
//! firmware volumes (PI spec vol. 3, `EFI_FIRMWARE_VOLUME_HEADER`) and the
//! authenticated variable store inside a VARS image, whose variable names
//! tell whether Secure Boot keys are enrolled.
//!
//! Written by hand: no maintained crate parses PI firmware volumes; the
//! structures are small and fixed (see DESIGN.md).

/// `_FVH`, the firmware volume signature at offset 0x28.
const FVH_SIGNATURE: &[u8; 4] = b"_FVH";
/// The fixed part of a volume header, up to the block map.
const FVH_FIXED_LEN: usize = 0x38;
/// `EFI_FIRMWARE_FILE_SYSTEM2_GUID` (8c8ce578-8a3d-4f1c-9935-896185c32dd3),
/// the file system of code volumes.
pub const FFS2_GUID: [u8; 16] = guid(
    0x8c8c_e578,
    0x8a3d,
    0x4f1c,
    [0x99, 0x35, 0x89, 0x61, 0x85, 0xc3, 0x2d, 0xd3],
);
/// `EFI_SYSTEM_NV_DATA_FV_GUID` (fff12b8d-7696-4c8b-a985-2747075b4f50),
/// the volume of a variable store.
pub const NV_DATA_GUID: [u8; 16] = guid(
    0xfff1_2b8d,
    0x7696,
    0x4c8b,
    [0xa9, 0x85, 0x27, 0x47, 0x07, 0x5b, 0x4f, 0x50],
);
/// `gEfiAuthenticatedVariableGuid` (aaf32c78-947b-439a-a180-2e144ec37792),
/// the signature of a store of authenticated variables.
pub const AUTH_VARIABLE_GUID: [u8; 16] = guid(
    0xaaf3_2c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);
/// `gEfiVariableGuid` (ddcf3616-3275-4164-98b6-fe85707ffe7d), a store of
/// plain variables.
pub const VARIABLE_GUID: [u8; 16] = guid(
    0xddcf_3616,
    0x3275,
    0x4164,
    [0x98, 0xb6, 0xfe, 0x85, 0x70, 0x7f, 0xfe, 0x7d],
);

/// A GUID in its in-memory (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// Why an image is not a valid firmware image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    /// Shorter than a volume header.
    #[error("at {offset:#x}: {len} bytes left, too short for a firmware volume header")]
    Truncated {
        /// Where the volume should start.
        offset: usize,
        /// Bytes left there.
        len: usize,
    },
    /// No `_FVH` signature.
    #[error("at {offset:#x}: no firmware volume signature (_FVH)")]
    Signature {
        /// Where the volume should start.
        offset: usize,
    },
    /// A field is out of range.
    #[error("the firmware volume at {offset:#x}: {what}")]
    Field {
        /// Where the volume starts.
        offset: usize,
        /// What is wrong.
        what: String,
    },
    /// The 16-bit sum of the header is not zero.
    #[error("the firmware volume at {offset:#x}: header checksum fails (sum {sum:#06x})")]
    Checksum {
        /// Where the volume starts.
        offset: usize,
        /// The sum found.
        sum: u16,
    },
    /// The volume's file system is not the one its role needs.
    #[error("the firmware volume at {offset:#x} has file system {found}, expected {expected}")]
    FileSystem {
        /// Where the volume starts.
        offset: usize,
        /// The GUID found.
        found: String,
        /// The GUID expected.
        expected: String,
    },
    /// The variable store header is malformed.
    #[error("variable store: {0}")]
    VariableStore(String),
}

/// One firmware volume of an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Offset in the image.
    pub offset: usize,
    /// `FvLength`.
    pub len: u64,
    /// `FileSystemGuid`, in memory byte order.
    pub file_system: [u8; 16],
    /// `HeaderLength`.
    pub header_len: u16,
    /// Blocks from the block map: (count, size).
    pub blocks: Vec<(u32, u32)>,
}

/// Format a GUID (in memory byte order) in its registry form.
pub fn guid_string(g: &[u8; 16]) -> String {
    format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{}",
        u32::from_le_bytes([g[0], g[1], g[2], g[3]]),
        u16::from_le_bytes([g[4], g[5]]),
        u16::from_le_bytes([g[6], g[7]]),
        g[8],
        g[9],
        g[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    )
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Parse the volume header at `offset` of `image`: signature, revision 2,
/// header length, checksum, a block map whose blocks add up to the
/// volume's length, and a length that stays inside the image.
pub fn parse_volume(image: &[u8], offset: usize) -> Result<Volume, VolumeError> {
    let rest = image.get(offset..).unwrap_or(&[]);
    if rest.len() < FVH_FIXED_LEN + 8 {
        return Err(VolumeError::Truncated {
            offset,
            len: rest.len(),
        });
    }
    if &rest[0x28..0x2c] != FVH_SIGNATURE {
        return Err(VolumeError::Signature { offset });
    }
    let field = |what: String| VolumeError::Field { offset, what };
    let len = u64_at(rest, 0x20);
    let header_len = u16_at(rest, 0x30);
    let revision = rest[0x37];
    if revision != 2 {
        return Err(field(format!("revision {revision}, expected 2")));
    }
    let hl = usize::from(header_len);
    if hl < FVH_FIXED_LEN + 16 || hl % 2 != 0 || hl > rest.len() {
        return Err(field(format!(
            "header length {header_len} is not an even size between 72 and the image's end"
        )));
    }
    if len < header_len as u64 || len > rest.len() as u64 {
        return Err(field(format!(
            "length {len:#x} runs outside the {:#x} bytes left in the image",
            rest.len()
        )));
    }
    let sum = rest[..hl].chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    if sum != 0 {
        return Err(VolumeError::Checksum { offset, sum });
    }
    let mut blocks = Vec::new();
    let mut covered: u64 = 0;
    let mut at = FVH_FIXED_LEN;
    loop {
        if at + 8 > hl {
            return Err(field(
                "the block map has no (0, 0) terminator inside the header".into(),
            ));
        }
        let (count, size) = (u32_at(rest, at), u32_at(rest, at + 4));
        at += 8;
        if count == 0 && size == 0 {
            break;
        }
        if count == 0 || size == 0 {
            return Err(field(format!("block map entry ({count}, {size}) is empty")));
        }
        covered += u64::from(count) * u64::from(size);
        blocks.push((count, size));
    }
    if covered != len {
        return Err(field(format!(
            "the block map covers {covered:#x} bytes, the volume is {len:#x}"
        )));
    }
    let mut file_system = [0u8; 16];
    file_system.copy_from_slice(&rest[0x10..0x20]);
    Ok(Volume {
        offset,
        len,
        file_system,
        header_len,
        blocks,
    })
}

/// The volumes of a code image, which must tile it exactly, each with the
/// FFS2 file system.
pub fn code_volumes(image: &[u8]) -> Result<Vec<Volume>, VolumeError> {
    let mut out = Vec::new();
    let mut offset = 0;
    while offset < image.len() {
        let v = parse_volume(image, offset)?;
        expect_file_system(&v, &FFS2_GUID)?;
        offset += v.len as usize;
        out.push(v);
    }
    if out.is_empty() {
        return Err(VolumeError::Truncated { offset: 0, len: 0 });
    }
    Ok(out)
}

fn expect_file_system(v: &Volume, want: &[u8; 16]) -> Result<(), VolumeError> {
    if &v.file_system != want {
        return Err(VolumeError::FileSystem {
            offset: v.offset,
            found: guid_string(&v.file_system),
            expected: guid_string(want),
        });
    }
    Ok(())
}

/// One variable of a VARS image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Variable {
    /// Its name (UCS-2).
    pub name: String,
    /// Vendor GUID, in registry form.
    pub vendor: String,
    /// `EFI_VARIABLE_*` attributes.
    pub attributes: u32,
    /// Bytes of data.
    pub data_len: u32,
}

/// What a VARS image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VarStore {
    /// The NV volume.
    pub volume: Volume,
    /// Whether the store holds authenticated variables.
    pub authenticated: bool,
    /// The store's size (`VARIABLE_STORE_HEADER.Size`).
    pub size: u32,
    /// Variables in the added state (`VAR_ADDED`, not deleted).
    pub variables: Vec<Variable>,
}

impl VarStore {
    /// Whether a variable `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.variables.iter().any(|v| v.name == name)
    }

    /// Secure Boot is enforced from the first boot when a platform key
    /// (`PK`) is enrolled.
    pub fn keys_enrolled(&self) -> bool {
        self.has("PK")
    }
}

const VARIABLE_STORE_HEADER_LEN: usize = 28;
const VARIABLE_DATA: u16 = 0x55aa;
const VAR_ADDED: u8 = 0x3f;
const AUTH_HEADER_LEN: usize = 60;
const PLAIN_HEADER_LEN: usize = 32;

/// Parse a VARS image: one NV-data volume covering the whole image, then
/// a variable store header (`0x5a` formatted, `0xfe` healthy) and its
/// variables.
pub fn var_store(image: &[u8]) -> Result<VarStore, VolumeError> {
    let volume = parse_volume(image, 0)?;
    expect_file_system(&volume, &NV_DATA_GUID)?;
    if volume.len != image.len() as u64 {
        return Err(VolumeError::Field {
            offset: 0,
            what: format!(
                "the NV volume is {:#x} bytes; the image is {:#x}",
                volume.len,
                image.len()
            ),
        });
    }
    let bad = |what: String| VolumeError::VariableStore(what);
    let start = usize::from(volume.header_len);
    let header = image
        .get(start..start + VARIABLE_STORE_HEADER_LEN)
        .ok_or_else(|| bad("the image ends inside the store header".into()))?;
    let sig: [u8; 16] = header[..16].try_into().unwrap_or([0; 16]);
    let authenticated = match sig {
        AUTH_VARIABLE_GUID => true,
        VARIABLE_GUID => false,
        other => {
            return Err(bad(format!(
                "unknown store signature {}",
                guid_string(&other)
            )))
        }
    };
    let size = u32_at(header, 16);
    let (format, state) = (header[20], header[21]);
    if format != 0x5a || state != 0xfe {
        return Err(bad(format!(
            "format {format:#04x} state {state:#04x}; a healthy store is 0x5a 0xfe"
        )));
    }
    let end = start
        .checked_add(size as usize)
        .filter(|&e| e <= image.len() && size as usize >= VARIABLE_STORE_HEADER_LEN)
        .ok_or_else(|| bad(format!("size {size:#x} runs outside the image")))?;
    let hdr_len = if authenticated {
        AUTH_HEADER_LEN
    } else {
        PLAIN_HEADER_LEN
    };
    // (name size, data size, GUID) offsets inside a variable header.
    let (name_at, data_at, guid_at) = if authenticated {
        (36, 40, 44)
    } else {
        (8, 12, 16)
    };
    let mut variables = Vec::new();
    let mut at = (start + VARIABLE_STORE_HEADER_LEN).next_multiple_of(4);
    while at + hdr_len <= end && u16_at(image, at) == VARIABLE_DATA {
        let state = image[at + 2];
        let attributes = u32_at(image, at + 4);
        let name_len = u32_at(image, at + name_at) as usize;
        let data_len = u32_at(image, at + data_at);
        let vendor: [u8; 16] = image[at + guid_at..at + guid_at + 16]
            .try_into()
            .unwrap_or([0; 16]);
        let name_start = at + hdr_len;
        let next = name_start
            .checked_add(name_len)
            .and_then(|n| n.checked_add(data_len as usize))
            .filter(|&n| n <= end && name_len % 2 == 0)
            .ok_or_else(|| bad(format!("the variable at {at:#x} runs past the store")))?;
        if state == VAR_ADDED {
            let name: Vec<u16> = image[name_start..name_start + name_len]
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            variables.push(Variable {
                name: String::from_utf16_lossy(&name),
                vendor: guid_string(&vendor),
                attributes,
                data_len,
            });
        }
        at = next.next_multiple_of(4);
    }
    Ok(VarStore {
        volume,
        authenticated,
        size,
        variables,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A volume header of `len` bytes in 4 KiB blocks, checksummed.
    fn volume(len: usize, fs: [u8; 16]) -> Vec<u8> {
        let mut v = vec![0xffu8; len];
        v[..0x48].fill(0);
        v[0x10..0x20].copy_from_slice(&fs);
        v[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
        v[0x28..0x2c].copy_from_slice(b"_FVH");
        v[0x30..0x32].copy_from_slice(&0x48u16.to_le_bytes());
        v[0x37] = 2;
        v[0x38..0x3c].copy_from_slice(&((len / 4096) as u32).to_le_bytes());
        v[0x3c..0x40].copy_from_slice(&4096u32.to_le_bytes());
        let sum = v[..0x48].chunks_exact(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        v[0x32..0x34].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        v
    }

    #[test]
    fn guids_print_in_registry_form() {
        assert_eq!(
            guid_string(&NV_DATA_GUID),
            "fff12b8d-7696-4c8b-a985-2747075b4f50"
        );
        assert_eq!(
            guid_string(&FFS2_GUID),
            "8c8ce578-8a3d-4f1c-9935-896185c32dd3"
        );
    }

    #[test]
    fn volumes_tile_a_code_image_and_each_fault_is_named() {
        let mut img = volume(0x4000, FFS2_GUID);
        img.extend(volume(0x2000, FFS2_GUID));
        let vols = code_volumes(&img).unwrap();
        assert_eq!(vols.len(), 2);
        assert_eq!((vols[1].offset, vols[1].len), (0x4000, 0x2000));

        let mut bad = img.clone();
        bad[0x4032] ^= 1;
        assert!(matches!(
            code_volumes(&bad),
            Err(VolumeError::Checksum { offset: 0x4000, .. })
        ));
        assert!(matches!(
            code_volumes(&img[..0x5000]),
            Err(VolumeError::Field { offset: 0x4000, .. })
        ));
        let mut bad = img.clone();
        bad[0x28] = b'x';
        assert_eq!(
            code_volumes(&bad),
            Err(VolumeError::Signature { offset: 0 })
        );
        assert!(matches!(
            code_volumes(&volume(0x2000, NV_DATA_GUID)),
            Err(VolumeError::FileSystem { .. })
        ));
        assert!(matches!(
            code_volumes(&img[..40]),
            Err(VolumeError::Truncated { .. })
        ));
    }

    #[test]
    fn a_var_store_lists_its_added_variables() {
        let mut img = volume(0x4000, NV_DATA_GUID);
        let s = 0x48;
        img[s..s + 16].copy_from_slice(&AUTH_VARIABLE_GUID);
        img[s + 16..s + 20].copy_from_slice(&0x1000u32.to_le_bytes());
        img[s + 20] = 0x5a;
        img[s + 21] = 0xfe;
        img[s + 22..s + 28].fill(0);
        let mut at = (s + 28).next_multiple_of(4);
        for (name, state) in [("PK", VAR_ADDED), ("Old", 0x3c), ("db", VAR_ADDED)] {
            let name: Vec<u8> = name
                .encode_utf16()
                .chain([0])
                .flat_map(u16::to_le_bytes)
                .collect();
            let mut h = vec![0u8; AUTH_HEADER_LEN];
            h[..2].copy_from_slice(&VARIABLE_DATA.to_le_bytes());
            h[2] = state;
            h[4..8].copy_from_slice(&0x27u32.to_le_bytes());
            h[36..40].copy_from_slice(&(name.len() as u32).to_le_bytes());
            h[40..44].copy_from_slice(&3u32.to_le_bytes());
            img[at..at + h.len()].copy_from_slice(&h);
            img[at + h.len()..at + h.len() + name.len()].copy_from_slice(&name);
            at = (at + h.len() + name.len() + 3).next_multiple_of(4);
        }
        let store = var_store(&img).unwrap();
        assert!(store.authenticated);
        let names: Vec<&str> = store.variables.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["PK", "db"]);
        assert!(store.keys_enrolled());
        assert_eq!(store.variables[0].attributes, 0x27);

        img[s + 21] = 0;
        assert!(matches!(
            var_store(&img),
            Err(VolumeError::VariableStore(_))
        ));
    }
}
