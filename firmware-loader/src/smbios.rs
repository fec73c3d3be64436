//! SMBIOS tables (DMTF DSP0134 3.x) describing the VM to its guest: BIOS
//! (type 0), system (1, carrying `firmware.uuid` and `firmware.serial`),
//! chassis (3), one processor per socket (4), the memory array, its
//! device and mapped ranges (16, 17, 19), boot status (32) and the end
//! marker (127).
//!
//! The tables reach the guest two ways, as in QEMU: as the fw_cfg files
//! `etc/smbios/smbios-anchor` and `etc/smbios/smbios-tables` that OVMF
//! and SeaBIOS install, and, for direct kernel boot with no firmware,
//! written into the F segment where Linux's DMI scan finds the anchor.
//!
//! ```
//! use virtkit_firmware_loader::smbios::{SmbiosConfig, SmbiosTables};
//! let uuid = "5d307ca9-b3ef-428c-8861-06e72d69f223".parse().unwrap();
//! let mut config = SmbiosConfig::new(uuid);
//! config.serial = Some("SN-0042".into());
//! let tables = SmbiosTables::build(&config).unwrap();
//! assert_eq!(&tables.anchor_at(0x1000)[..5], b"_SM3_");
//! ```

use uuid::Uuid;
use virtkit_core::runtime::memory::{GuestMem, RamRange};
use virtkit_core::runtime::Topology;
use virtkit_core::spec::vmi::Firmware;
use vm_memory::{Bytes, GuestAddress};

use crate::fw_cfg::{FwCfg, FwCfgError};

/// Where [`SmbiosTables::write`] puts the anchor for direct boot: the
/// start of the F segment, the first place Linux's DMI scan looks.
pub const ANCHOR_ADDR: u64 = 0xf_0000;
/// The end of the area the DMI scan covers.
const SCAN_END: u64 = 0x10_0000;
/// Bytes reserved for the anchor before the tables when written to memory.
const ANCHOR_SLOT: u64 = 0x20;
/// The fw_cfg file holding the entry point.
pub const ANCHOR_FILE: &str = "etc/smbios/smbios-anchor";
/// The fw_cfg file holding the structures.
pub const TABLES_FILE: &str = "etc/smbios/smbios-tables";

/// Namespace for UUIDs derived from a VM's name when `firmware.uuid` is
/// absent (a fixed, random v4 UUID: changing it would change every
/// derived VM UUID).
const VM_UUID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1a_24a1_4061_4f2e_9a6f_3d3c_5b0f_8c1e);

/// Which entry point the tables are announced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EntryPoint {
    /// SMBIOS 3.0 `_SM3_`: 64-bit table address, no structure count.
    #[default]
    V3,
    /// SMBIOS 2.8 `_SM_`/`_DMI_` for guests that predate 3.0 (table
    /// below 4 GiB, at most 65,535 bytes).
    V2,
}

/// Why the tables could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SmbiosError {
    /// A string holds a NUL byte or is longer than SMBIOS strings may be.
    #[error("{field}: {reason}")]
    BadString {
        /// The field, as a spec path where there is one.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// `firmware.uuid` is not a UUID.
    #[error("spec.domain.firmware.uuid: {value:?} is not a valid UUID")]
    BadUuid {
        /// The value given.
        value: String,
    },
    /// The structures exceed what the entry point can describe.
    #[error("SMBIOS tables are {len} bytes; the {entry:?} entry point allows {max}")]
    TooLarge {
        /// Their length.
        len: usize,
        /// The most allowed.
        max: usize,
        /// The entry point.
        entry: EntryPoint,
    },
    /// The tables do not fit between the anchor address and 1 MiB.
    #[error("SMBIOS tables ({len} bytes) do not fit at {addr:#x} below 1 MiB")]
    NoRoom {
        /// Where they were to go.
        addr: u64,
        /// Anchor slot plus tables.
        len: usize,
    },
    /// Guest memory could not be written.
    #[error("writing SMBIOS tables at {addr:#x}: {source}")]
    Memory {
        /// Where.
        addr: u64,
        /// The guest-memory error.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// What the tables say. [`SmbiosConfig::new`] fills in KubeVirt's
/// defaults (manufacturer and family `KubeVirt`, product `None`), so a
/// guest sees the same identity under virtkit as under KubeVirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosConfig {
    /// System UUID (type 1).
    pub uuid: Uuid,
    /// System serial number (type 1); absent = empty.
    pub serial: Option<String>,
    /// System and chassis manufacturer.
    pub manufacturer: String,
    /// System product name.
    pub product: String,
    /// System version.
    pub version: String,
    /// System family.
    pub family: String,
    /// System SKU; absent = empty.
    pub sku: Option<String>,
    /// BIOS vendor (type 0).
    pub bios_vendor: String,
    /// BIOS version.
    pub bios_version: String,
    /// BIOS release date, `mm/dd/yyyy`.
    pub bios_date: String,
    /// Set when the firmware is UEFI (type 0 characteristic).
    pub uefi: bool,
    /// Sockets, cores and threads (one type 4 per socket).
    pub topology: Topology,
    /// The guest's RAM ranges (types 16, 17 and 19).
    pub ram: Vec<RamRange>,
    /// The entry point version.
    pub entry_point: EntryPoint,
}

impl SmbiosConfig {
    /// A one-vCPU, RAM-less description with `uuid` and KubeVirt's
    /// default identity strings.
    pub fn new(uuid: Uuid) -> Self {
        SmbiosConfig {
            uuid,
            serial: None,
            manufacturer: "KubeVirt".into(),
            product: "None".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            family: "KubeVirt".into(),
            sku: None,
            bios_vendor: "virtkit".into(),
            bios_version: env!("CARGO_PKG_VERSION").into(),
            bios_date: "01/01/2026".into(),
            uefi: false,
            topology: Topology::flat(1),
            ram: Vec::new(),
            entry_point: EntryPoint::V3,
        }
    }

    /// The description of a VMI: its `firmware` (UUID, serial, EFI or
    /// not), vCPU topology and RAM. The UUID is `firmware.uuid`, or, when
    /// that is absent, one derived from `namespace`/`name` so that it is
    /// the same across restarts and migrations without being stored.
    pub fn for_vmi(
        namespace: &str,
        name: &str,
        firmware: Option<&Firmware>,
        topology: Topology,
        ram: Vec<RamRange>,
    ) -> Result<Self, SmbiosError> {
        let uuid = vm_uuid(namespace, name, firmware.and_then(|f| f.uuid.as_deref()))?;
        let mut config = SmbiosConfig::new(uuid);
        config.serial = firmware.and_then(|f| f.serial.clone());
        config.uefi = firmware
            .and_then(|f| f.bootloader.as_ref())
            .is_some_and(|b| b.efi.is_some());
        config.topology = topology;
        config.ram = ram;
        Ok(config)
    }
}

/// The VM's UUID: `given` parsed, else a name-based (v5) UUID of
/// `namespace/name`.
pub fn vm_uuid(namespace: &str, name: &str, given: Option<&str>) -> Result<Uuid, SmbiosError> {
    match given {
        Some(text) => Uuid::parse_str(text)
            .ok()
            .filter(|_| text.len() == 36)
            .ok_or_else(|| SmbiosError::BadUuid {
                value: text.to_string(),
            }),
        None => Ok(Uuid::new_v5(
            &VM_UUID_NAMESPACE,
            format!("{namespace}/{name}").as_bytes(),
        )),
    }
}

/// SMBIOS' on-the-wire UUID: the first three fields little-endian
/// (DSP0134 7.2.1, since 2.6), the rest as written.
pub fn uuid_wire_bytes(uuid: &Uuid) -> [u8; 16] {
    let (d1, d2, d3, d4) = uuid.as_fields();
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&d1.to_le_bytes());
    out[4..6].copy_from_slice(&d2.to_le_bytes());
    out[6..8].copy_from_slice(&d3.to_le_bytes());
    out[8..].copy_from_slice(d4);
    out
}

/// Built tables: the structures, and what the entry point needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmbiosTables {
    /// The structure table, end marker included.
    pub tables: Vec<u8>,
    /// The system UUID in type 1 (also fw_cfg's UUID item).
    pub uuid: Uuid,
    /// How many structures.
    pub count: u16,
    /// The longest structure, strings included.
    pub max_structure: u16,
    /// The entry point version.
    pub entry_point: EntryPoint,
}

/// One structure being assembled: the formatted area, then its strings.
struct Structure {
    bytes: Vec<u8>,
    strings: Vec<u8>,
    next_string: u8,
}

impl Structure {
    fn new(kind: u8, handle: u16) -> Self {
        let mut bytes = vec![kind, 0];
        bytes.extend_from_slice(&handle.to_le_bytes());
        Structure {
            bytes,
            strings: Vec::new(),
            next_string: 1,
        }
    }

    fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }

    fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }

    /// A string field: its number in the set, or 0 for an empty string.
    fn string(&mut self, s: &str) -> &mut Self {
        if s.is_empty() {
            return self.u8(0);
        }
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        let n = self.next_string;
        self.next_string += 1;
        self.u8(n)
    }

    fn finish(mut self, out: &mut Vec<u8>) -> usize {
        self.bytes[1] = self.bytes.len() as u8;
        let start = out.len();
        out.extend_from_slice(&self.bytes);
        if self.strings.is_empty() {
            out.extend_from_slice(&[0, 0]);
        } else {
            out.extend_from_slice(&self.strings);
            out.push(0);
        }
        out.len() - start
    }
}

/// SMBIOS strings are NUL-terminated and, by DSP0134's recommendation,
/// at most 64 bytes; longer ones are cut by some guests' tools, so they
/// are refused rather than silently truncated.
const MAX_STRING: usize = 64;

fn check_string(field: &str, s: &str) -> Result<(), SmbiosError> {
    let reason = if s.contains('\0') {
        "contains a NUL byte".to_string()
    } else if s.len() > MAX_STRING {
        format!(
            "is {} bytes; SMBIOS strings are at most {MAX_STRING}",
            s.len()
        )
    } else {
        return Ok(());
    };
    Err(SmbiosError::BadString {
        field: field.to_string(),
        reason,
    })
}

const MIB: u64 = 1 << 20;
const KIB: u64 = 1 << 10;

impl SmbiosTables {
    /// Build the structures for `config`.
    pub fn build(config: &SmbiosConfig) -> Result<Self, SmbiosError> {
        let serial = config.serial.as_deref().unwrap_or("");
        let sku = config.sku.as_deref().unwrap_or("");
        for (field, s) in [
            ("spec.domain.firmware.serial", serial),
            ("smbios.manufacturer", &config.manufacturer),
            ("smbios.product", &config.product),
            ("smbios.version", &config.version),
            ("smbios.family", &config.family),
            ("smbios.sku", sku),
            ("smbios.biosVendor", &config.bios_vendor),
            ("smbios.biosVersion", &config.bios_version),
            ("smbios.biosDate", &config.bios_date),
        ] {
            check_string(field, s)?;
        }

        let mut out = Vec::new();
        let mut count = 0u16;
        let mut max = 0usize;
        let mut handle = 0u16;
        let mut push = |s: Structure, out: &mut Vec<u8>| {
            max = max.max(s.finish(out));
            count += 1;
        };
        let mut next_handle = || {
            let h = handle;
            handle += 1;
            h
        };

        // Type 0: BIOS information (2.4+ layout).
        let mut s = Structure::new(0, next_handle());
        s.string(&config.bios_vendor)
            .string(&config.bios_version)
            .u16(0xe800) // start segment
            .string(&config.bios_date)
            .u8(0) // 64 KiB ROM
            .u64(1 << 3) // "BIOS characteristics not supported"
            .u8(0)
            // Extension byte 2: bit 3 UEFI, bit 4 virtual machine.
            .u8(if config.uefi { 0x18 } else { 0x10 })
            .u8(0)
            .u8(0)
            .u8(0xff) // no embedded controller
            .u8(0xff);
        push(s, &mut out);

        // Type 1: system information.
        let mut s = Structure::new(1, next_handle());
        s.string(&config.manufacturer)
            .string(&config.product)
            .string(&config.version)
            .string(serial);
        s.bytes.extend_from_slice(&uuid_wire_bytes(&config.uuid));
        s.u8(0x06) // woken by the power switch
            .string(sku)
            .string(&config.family);
        push(s, &mut out);

        // Type 3: chassis (2.7 layout, no contained elements).
        let mut s = Structure::new(3, next_handle());
        s.string(&config.manufacturer)
            .u8(0x01) // other
            .string("")
            .string("")
            .string("")
            .u8(0x03) // boot-up state: safe
            .u8(0x03) // power supply: safe
            .u8(0x03) // thermal: safe
            .u8(0x02) // security: unknown
            .u32(0)
            .u8(0)
            .u8(0)
            .u8(0) // contained element count
            .u8(0) // element record length
            .string("");
        push(s, &mut out);

        // Type 4: one processor per socket (3.0 layout).
        let topo = config.topology;
        let cores = topo.cores.max(1);
        let threads = cores * topo.threads.max(1);
        for socket in 0..topo.sockets.max(1) {
            let clamp8 = |v: u32| if v > 255 { 0xff } else { v as u8 };
            let clamp16 = |v: u32| v.min(0xffff) as u16;
            let mut s = Structure::new(4, next_handle());
            s.string(&format!("CPU {socket}"))
                .u8(0x03) // central processor
                .u8(0xfe) // family: see family 2
                .string(&config.manufacturer)
                .u64(0) // processor ID
                .string("virtkit virtual CPU")
                .u8(0)
                .u16(0)
                .u16(2000) // max speed, MHz
                .u16(2000) // current speed
                .u8(0x41) // populated, enabled
                .u8(0x01) // upgrade: other
                .u16(0xffff)
                .u16(0xffff)
                .u16(0xffff)
                .string("")
                .string("")
                .string("")
                .u8(clamp8(cores))
                .u8(clamp8(cores))
                .u8(clamp8(threads))
                .u16(0x04) // 64-bit capable
                .u16(0x01) // family 2: other
                .u16(clamp16(cores))
                .u16(clamp16(cores))
                .u16(clamp16(threads));
            push(s, &mut out);
        }

        // Types 16, 17, 19: one memory array, one device holding all RAM,
        // one mapped range per RAM range.
        let total: u64 = config.ram.iter().map(|r| r.len).sum();
        let array = next_handle();
        let mut s = Structure::new(16, array);
        let total_kib = total / KIB;
        s.u8(0x01) // location: other
            .u8(0x03) // use: system memory
            .u8(0x06) // multi-bit ECC, as QEMU reports
            .u32(if total_kib < 0x8000_0000 {
                total_kib as u32
            } else {
                0x8000_0000
            })
            .u16(0xfffe) // no error information
            .u16(1)
            .u64(if total_kib < 0x8000_0000 { 0 } else { total });
        push(s, &mut out);

        let mut s = Structure::new(17, next_handle());
        let total_mib = total / MIB;
        s.u16(array)
            .u16(0xfffe)
            .u16(64)
            .u16(64)
            .u16(if total_mib < 0x7fff {
                total_mib as u16
            } else {
                0x7fff
            })
            .u8(0x09) // DIMM
            .u8(0)
            .string("DIMM 0")
            .string("")
            .u8(0x07) // RAM
            .u16(0x02) // type detail: unknown
            .u16(0)
            .string(&config.manufacturer)
            .string("")
            .string("")
            .string("")
            .u8(0)
            .u32(if total_mib < 0x7fff {
                0
            } else {
                total_mib.min(0x7fff_ffff) as u32
            })
            .u16(0)
            .u16(0)
            .u16(0)
            .u16(0);
        push(s, &mut out);

        for range in &config.ram {
            let end = range.guest_addr + range.len - 1;
            let fits = end / KIB < 0xffff_ffff;
            let mut s = Structure::new(19, next_handle());
            if fits {
                s.u32((range.guest_addr / KIB) as u32)
                    .u32((end / KIB) as u32);
            } else {
                s.u32(0xffff_ffff).u32(0xffff_ffff);
            }
            s.u16(array).u8(1);
            if fits {
                s.u64(0).u64(0);
            } else {
                s.u64(range.guest_addr).u64(end);
            }
            push(s, &mut out);
        }

        // Type 32: boot status "no errors detected".
        let mut s = Structure::new(32, next_handle());
        s.bytes.extend_from_slice(&[0; 6]);
        s.u8(0);
        push(s, &mut out);

        push(Structure::new(127, next_handle()), &mut out);

        let max_len = match config.entry_point {
            EntryPoint::V3 => u32::MAX as usize,
            EntryPoint::V2 => u16::MAX as usize,
        };
        if out.len() > max_len {
            return Err(SmbiosError::TooLarge {
                len: out.len(),
                max: max_len,
                entry: config.entry_point,
            });
        }
        Ok(SmbiosTables {
            tables: out,
            uuid: config.uuid,
            count,
            max_structure: max.min(u16::MAX as usize) as u16,
            entry_point: config.entry_point,
        })
    }

    /// The entry point for tables at guest address `table_addr`, checksums
    /// filled in. Address 0 is what the fw_cfg anchor file carries: the
    /// firmware places the tables and patches it.
    pub fn anchor_at(&self, table_addr: u64) -> Vec<u8> {
        match self.entry_point {
            EntryPoint::V3 => {
                let mut ep = Vec::with_capacity(0x18);
                ep.extend_from_slice(b"_SM3_");
                ep.push(0); // checksum
                ep.extend_from_slice(&[0x18, 3, 0, 0, 0x01, 0]);
                ep.extend_from_slice(&(self.tables.len() as u32).to_le_bytes());
                ep.extend_from_slice(&table_addr.to_le_bytes());
                ep[5] = checksum(&ep);
                ep
            }
            EntryPoint::V2 => {
                let mut ep = Vec::with_capacity(0x1f);
                ep.extend_from_slice(b"_SM_");
                ep.extend_from_slice(&[0, 0x1f, 2, 8]);
                ep.extend_from_slice(&self.max_structure.to_le_bytes());
                ep.extend_from_slice(&[0; 6]); // revision, formatted area
                ep.extend_from_slice(b"_DMI_");
                ep.push(0); // intermediate checksum
                ep.extend_from_slice(&(self.tables.len() as u16).to_le_bytes());
                ep.extend_from_slice(&(table_addr as u32).to_le_bytes());
                ep.extend_from_slice(&self.count.to_le_bytes());
                ep.push(0x28);
                ep[0x15] = checksum(&ep[0x10..]);
                ep[4] = checksum(&ep);
                ep
            }
        }
    }

    /// Add the anchor and table files to `fw_cfg`, and the UUID item
    /// (RFC 4122 byte order) that SeaBIOS also reads.
    pub fn add_to(&self, fw_cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        fw_cfg.add_file(ANCHOR_FILE, self.anchor_at(0))?;
        fw_cfg.add_file(TABLES_FILE, self.tables.clone())?;
        fw_cfg.set_item(crate::fw_cfg::KEY_UUID, self.uuid.as_bytes().to_vec());
        Ok(())
    }

    /// Write the anchor at `anchor_addr` and the tables right after it,
    /// for a guest that boots without firmware. Both must end below
    /// 1 MiB, where the DMI scan looks (use [`ANCHOR_ADDR`]).
    pub fn write(&self, memory: &GuestMem, anchor_addr: u64) -> Result<(), SmbiosError> {
        let table_addr = anchor_addr + ANCHOR_SLOT;
        let len = ANCHOR_SLOT as usize + self.tables.len();
        if anchor_addr % 16 != 0 || table_addr + self.tables.len() as u64 > SCAN_END {
            return Err(SmbiosError::NoRoom {
                addr: anchor_addr,
                len,
            });
        }
        let memory_error = |source| SmbiosError::Memory {
            addr: anchor_addr,
            source,
        };
        memory
            .write_slice(&self.tables, GuestAddress(table_addr))
            .map_err(memory_error)?;
        memory
            .write_slice(&self.anchor_at(table_addr), GuestAddress(anchor_addr))
            .map_err(memory_error)
    }
}

/// The byte that makes `bytes` (with it in place of a zero) sum to 0.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SmbiosConfig {
        let mut c = SmbiosConfig::new("5d307ca9-b3ef-428c-8861-06e72d69f223".parse().unwrap());
        c.serial = Some("SN-0042".into());
        c.topology = Topology {
            sockets: 2,
            cores: 2,
            threads: 2,
        };
        c.ram = virtkit_core::runtime::memory::layout(6 << 30);
        c
    }

    /// Walk the structures: (type, formatted length, strings).
    fn walk(mut t: &[u8]) -> Vec<(u8, usize, Vec<String>)> {
        let mut out = Vec::new();
        while !t.is_empty() {
            let (kind, len) = (t[0], t[1] as usize);
            let rest = &t[len..];
            let end = rest.windows(2).position(|w| w == [0, 0]).unwrap();
            let strings = rest[..end]
                .split(|b| *b == 0)
                .filter(|s| !s.is_empty())
                .map(|s| String::from_utf8(s.to_vec()).unwrap())
                .collect();
            out.push((kind, len, strings));
            t = &rest[end + 2..];
        }
        out
    }

    #[test]
    fn structures_are_well_formed_and_complete() {
        let t = SmbiosTables::build(&config()).unwrap();
        let s = walk(&t.tables);
        let kinds: Vec<u8> = s.iter().map(|s| s.0).collect();
        assert_eq!(kinds, [0, 1, 3, 4, 4, 16, 17, 19, 19, 32, 127]);
        assert_eq!(t.count as usize, s.len());
        let lengths: Vec<usize> = s.iter().map(|s| s.1).collect();
        assert_eq!(
            lengths,
            [0x18, 0x1b, 0x16, 0x30, 0x30, 0x17, 0x28, 0x1f, 0x1f, 0x0b, 4]
        );
        assert_eq!(s[1].2, ["KubeVirt", "None", "0.1.0", "SN-0042", "KubeVirt"]);
        // Type 1's UUID: first three fields little-endian.
        let start = t.tables.windows(2).position(|w| w == [1, 0x1b]).unwrap();
        assert_eq!(
            t.tables[start + 8..start + 24],
            [
                0xa9, 0x7c, 0x30, 0x5d, 0xef, 0xb3, 0x8c, 0x42, 0x88, 0x61, 0x06, 0xe7, 0x2d, 0x69,
                0xf2, 0x23
            ]
        );
    }

    #[test]
    fn anchors_checksum_to_zero() {
        let mut c = config();
        for entry in [EntryPoint::V3, EntryPoint::V2] {
            c.entry_point = entry;
            let t = SmbiosTables::build(&c).unwrap();
            let ep = t.anchor_at(0xf_0020);
            assert_eq!(checksum(&ep), 0, "{entry:?}");
            if entry == EntryPoint::V2 {
                assert_eq!(checksum(&ep[0x10..]), 0);
                assert_eq!(ep.len(), 0x1f);
            } else {
                assert_eq!(ep.len(), 0x18);
            }
        }
    }

    #[test]
    fn uuid_is_given_or_derived_from_the_name() {
        let given = vm_uuid("ns", "vm", Some("5D307CA9-B3EF-428C-8861-06E72D69F223")).unwrap();
        assert_eq!(given.to_string(), "5d307ca9-b3ef-428c-8861-06e72d69f223");
        let a = vm_uuid("ns", "vm", None).unwrap();
        assert_eq!(a, vm_uuid("ns", "vm", None).unwrap(), "stable");
        assert_ne!(a, vm_uuid("ns", "vm2", None).unwrap());
        assert_ne!(a, vm_uuid("other", "vm", None).unwrap());
        assert_eq!(a.get_version_num(), 5);
        for bad in [
            "",
            "5d307ca9b3ef428c886106e72d69f223",
            "not-a-uuid",
            "{5d307ca9-b3ef-428c-8861-06e72d69f223}",
        ] {
            assert!(
                matches!(vm_uuid("ns", "vm", Some(bad)), Err(SmbiosError::BadUuid { value }) if value == bad),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn bad_strings_are_refused_with_their_field() {
        let mut c = config();
        c.serial = Some("a\0b".into());
        let e = SmbiosTables::build(&c).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("spec.domain.firmware.serial: contains a NUL"),
            "{e}"
        );
        c.serial = Some("x".repeat(65));
        assert!(matches!(
            SmbiosTables::build(&c),
            Err(SmbiosError::BadString { field, .. }) if field == "spec.domain.firmware.serial"
        ));
    }

    #[test]
    fn memory_placement_stays_below_one_mib() {
        let t = SmbiosTables::build(&config()).unwrap();
        let memory = virtkit_core::runtime::memory::create(2 << 20).unwrap();
        t.write(&memory, ANCHOR_ADDR).unwrap();
        let mut ep = [0u8; 0x18];
        memory
            .read_slice(&mut ep, GuestAddress(ANCHOR_ADDR))
            .unwrap();
        assert_eq!(&ep[..5], b"_SM3_");
        let table_addr = u64::from_le_bytes(ep[0x10..0x18].try_into().unwrap());
        let mut tables = vec![0u8; t.tables.len()];
        memory
            .read_slice(&mut tables, GuestAddress(table_addr))
            .unwrap();
        assert_eq!(tables, t.tables);
        assert!(matches!(
            t.write(&memory, SCAN_END - 0x100),
            Err(SmbiosError::NoRoom { .. })
        ));
    }
}
