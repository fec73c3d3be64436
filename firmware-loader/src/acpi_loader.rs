//! The ACPI tables as firmware takes them from fw_cfg: QEMU's
//! "BIOS linker/loader" interface (`hw/acpi/bios-linker-loader.c`), which
//! OVMF's `AcpiPlatformDxe` and SeaBIOS run. Three files:
//!
//! - `etc/acpi/rsdp`: the RSDP, whose pointer the firmware relocates;
//! - `etc/acpi/tables`: every other table, back to back, each pointer
//!   field holding an offset into this file;
//! - `etc/table-loader`: 128-byte commands telling the firmware to
//!   allocate both files, add each file's final address to those pointer
//!   fields, and recompute the checksums the additions change.
//!
//! The tables themselves are [`virtkit_devices::acpi::tables::AcpiTables`], the same
//! set a VM without firmware gets written at fixed addresses; here their
//! pointers are found from the standard layouts (RSDP, RSDT/XSDT, FADT)
//! and turned into relocations.

use virtkit_devices::acpi::tables::AcpiTables;

use crate::fw_cfg::{FwCfg, FwCfgError, FILE_NAME_LEN};

/// The fw_cfg file with the RSDP.
pub const RSDP_FILE: &str = "etc/acpi/rsdp";
/// The fw_cfg file with the other tables.
pub const TABLES_FILE: &str = "etc/acpi/tables";
/// The fw_cfg file with the loader commands.
pub const LOADER_FILE: &str = "etc/table-loader";
/// Bytes per loader command.
pub const COMMAND_LEN: usize = 128;

const ALLOCATE: u32 = 1;
const ADD_POINTER: u32 = 2;
const ADD_CHECKSUM: u32 = 3;

/// Where firmware must place an allocated file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// Anywhere in RAM below 4 GiB.
    High,
    /// The F segment (0xf0000–0xfffff), where OSes scan for the RSDP.
    FSeg,
}

/// One loader command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoaderCommand {
    /// Allocate memory for `file` and copy it there.
    Allocate {
        /// The fw_cfg file.
        file: String,
        /// Alignment in bytes (a power of two).
        align: u32,
        /// Where.
        zone: Zone,
    },
    /// Add `src`'s address to the `size`-byte little-endian value at
    /// `offset` in `dest`.
    AddPointer {
        /// The file holding the pointer.
        dest: String,
        /// The file pointed into.
        src: String,
        /// Offset of the pointer in `dest`.
        offset: u32,
        /// 1, 2, 4 or 8.
        size: u8,
    },
    /// Add to the byte at `offset` in `file` the value that makes
    /// `file[start..start + length]` sum to zero.
    AddChecksum {
        /// The file.
        file: String,
        /// The checksum byte.
        offset: u32,
        /// First byte summed.
        start: u32,
        /// Bytes summed.
        length: u32,
    },
}

/// Why the loader files could not be made or a command not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcpiLoaderError {
    /// The table set has no RSDP.
    #[error("the ACPI table set has no RSDP")]
    NoRsdp,
    /// A pointer field points outside the tables, so it cannot be relocated.
    #[error("{table} at offset {offset} points to {target:#x}, outside the ACPI tables")]
    DanglingPointer {
        /// The table holding it.
        table: String,
        /// Offset of the field in that table.
        offset: usize,
        /// Its value.
        target: u64,
    },
    /// Two tables overlap.
    #[error("ACPI tables {first} and {second} overlap")]
    Overlap {
        /// One table.
        first: String,
        /// The other.
        second: String,
    },
    /// A command that is not one of the three this loader uses, or
    /// is malformed.
    #[error("loader command {index}: {reason}")]
    BadCommand {
        /// Its index.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

/// The three fw_cfg files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiFiles {
    /// `etc/acpi/rsdp`.
    pub rsdp: Vec<u8>,
    /// `etc/acpi/tables`.
    pub tables: Vec<u8>,
    /// The commands `etc/table-loader` holds.
    pub commands: Vec<LoaderCommand>,
}

/// A pointer field: its offset in a table and its width.
fn pointer_fields(signature: &str, table: &[u8]) -> Vec<(usize, u8)> {
    match signature {
        "RSD PTR " => {
            let mut fields = vec![(16, 4)];
            if table.get(15).is_some_and(|rev| *rev >= 2) && table.len() >= 32 {
                fields.push((24, 8));
            }
            fields
        }
        "XSDT" => (36..table.len()).step_by(8).map(|o| (o, 8)).collect(),
        "RSDT" => (36..table.len()).step_by(4).map(|o| (o, 4)).collect(),
        // FIRMWARE_CTRL, DSDT, then X_FIRMWARE_CTRL and X_DSDT (ACPI 2.0+).
        "FACP" => [(36, 4), (40, 4), (132, 8), (140, 8)]
            .into_iter()
            .filter(|(o, w)| o + *w as usize <= table.len())
            .collect(),
        _ => Vec::new(),
    }
}

fn read_le(bytes: &[u8], offset: usize, size: u8) -> u64 {
    bytes[offset..offset + size as usize]
        .iter()
        .rev()
        .fold(0u64, |v, b| (v << 8) | u64::from(*b))
}

fn write_le(bytes: &mut [u8], offset: usize, size: u8, value: u64) {
    for (i, b) in bytes[offset..offset + size as usize].iter_mut().enumerate() {
        *b = (value >> (8 * i)) as u8;
    }
}

impl AcpiFiles {
    /// The files for `set`, whose tables were laid out at fixed addresses:
    /// every table but the RSDP goes into `etc/acpi/tables` at its offset
    /// from the lowest one, and every pointer between them becomes a
    /// relocation.
    pub fn from_tables(set: &AcpiTables) -> Result<Self, AcpiLoaderError> {
        let rsdp = set
            .tables
            .iter()
            .find(|t| t.signature == "RSD PTR ")
            .ok_or(AcpiLoaderError::NoRsdp)?;
        let mut others: Vec<_> = set
            .tables
            .iter()
            .filter(|t| t.signature != "RSD PTR ")
            .collect();
        others.sort_by_key(|t| t.address);
        for pair in others.windows(2) {
            if pair[0].address + pair[0].bytes.len() as u64 > pair[1].address {
                return Err(AcpiLoaderError::Overlap {
                    first: pair[0].signature.clone(),
                    second: pair[1].signature.clone(),
                });
            }
        }
        let base = others.first().map_or(0, |t| t.address);
        let end = others
            .iter()
            .map(|t| t.address + t.bytes.len() as u64)
            .max()
            .unwrap_or(base);

        let mut blob = vec![0u8; (end - base) as usize];
        let mut rsdp_bytes = rsdp.bytes.clone();
        let mut commands = vec![
            LoaderCommand::Allocate {
                file: RSDP_FILE.into(),
                align: 16,
                zone: Zone::FSeg,
            },
            LoaderCommand::Allocate {
                file: TABLES_FILE.into(),
                align: 64,
                zone: Zone::High,
            },
        ];
        let mut checksums = Vec::new();

        let relocate = |file: &str,
                        table: &str,
                        bytes: &mut [u8],
                        at: usize,
                        len: usize,
                        commands: &mut Vec<LoaderCommand>|
         -> Result<(), AcpiLoaderError> {
            for (offset, size) in pointer_fields(table, &bytes[at..at + len]) {
                let target = read_le(bytes, at + offset, size);
                if target == 0 {
                    continue; // an absent optional pointer
                }
                if !(base..end).contains(&target) {
                    return Err(AcpiLoaderError::DanglingPointer {
                        table: table.to_string(),
                        offset,
                        target,
                    });
                }
                write_le(bytes, at + offset, size, target - base);
                commands.push(LoaderCommand::AddPointer {
                    dest: file.into(),
                    src: TABLES_FILE.into(),
                    offset: (at + offset) as u32,
                    size,
                });
            }
            Ok(())
        };

        for t in &others {
            let at = (t.address - base) as usize;
            blob[at..at + t.bytes.len()].copy_from_slice(&t.bytes);
            relocate(
                TABLES_FILE,
                &t.signature,
                &mut blob,
                at,
                t.bytes.len(),
                &mut commands,
            )?;
            // Every table but the FACS has a header checksum at byte 9.
            if t.signature != "FACS" {
                checksums.push(LoaderCommand::AddChecksum {
                    file: TABLES_FILE.into(),
                    offset: (at + 9) as u32,
                    start: at as u32,
                    length: t.bytes.len() as u32,
                });
            }
        }
        let rsdp_len = rsdp_bytes.len();
        relocate(
            RSDP_FILE,
            "RSD PTR ",
            &mut rsdp_bytes,
            0,
            rsdp_len,
            &mut commands,
        )?;
        // The ACPI 1.0 checksum over 20 bytes, then the extended one over
        // the whole structure, which covers the first.
        checksums.push(LoaderCommand::AddChecksum {
            file: RSDP_FILE.into(),
            offset: 8,
            start: 0,
            length: 20,
        });
        if rsdp_bytes.len() >= 36 && rsdp_bytes[15] >= 2 {
            checksums.push(LoaderCommand::AddChecksum {
                file: RSDP_FILE.into(),
                offset: 32,
                start: 0,
                length: 36,
            });
        }
        commands.extend(checksums);
        Ok(AcpiFiles {
            rsdp: rsdp_bytes,
            tables: blob,
            commands,
        })
    }

    /// `etc/table-loader`: the commands, 128 bytes each.
    pub fn loader(&self) -> Vec<u8> {
        self.commands.iter().flat_map(encode).collect()
    }

    /// Add the three files to `fw_cfg`.
    pub fn add_to(&self, fw_cfg: &mut FwCfg) -> Result<(), FwCfgError> {
        fw_cfg.add_file(RSDP_FILE, self.rsdp.clone())?;
        fw_cfg.add_file(TABLES_FILE, self.tables.clone())?;
        fw_cfg.add_file(LOADER_FILE, self.loader()).map(drop)
    }
}

fn put_name(out: &mut [u8], at: usize, name: &str) {
    // Longer names are cut to the field, leaving its NUL.
    let n = name.len().min(FILE_NAME_LEN - 1);
    out[at..at + n].copy_from_slice(&name.as_bytes()[..n]);
}

/// One command as the firmware reads it.
pub fn encode(command: &LoaderCommand) -> [u8; COMMAND_LEN] {
    let mut out = [0u8; COMMAND_LEN];
    let name = |out: &mut [u8; COMMAND_LEN], at: usize, name: &str| put_name(out, at, name);
    let word = |out: &mut [u8; COMMAND_LEN], at: usize, v: u32| {
        out[at..at + 4].copy_from_slice(&v.to_le_bytes())
    };
    match command {
        LoaderCommand::Allocate { file, align, zone } => {
            word(&mut out, 0, ALLOCATE);
            name(&mut out, 4, file);
            word(&mut out, 4 + FILE_NAME_LEN, *align);
            out[8 + FILE_NAME_LEN] = match zone {
                Zone::High => 1,
                Zone::FSeg => 2,
            };
        }
        LoaderCommand::AddPointer {
            dest,
            src,
            offset,
            size,
        } => {
            word(&mut out, 0, ADD_POINTER);
            name(&mut out, 4, dest);
            name(&mut out, 4 + FILE_NAME_LEN, src);
            word(&mut out, 4 + 2 * FILE_NAME_LEN, *offset);
            out[8 + 2 * FILE_NAME_LEN] = *size;
        }
        LoaderCommand::AddChecksum {
            file,
            offset,
            start,
            length,
        } => {
            word(&mut out, 0, ADD_CHECKSUM);
            name(&mut out, 4, file);
            word(&mut out, 4 + FILE_NAME_LEN, *offset);
            word(&mut out, 8 + FILE_NAME_LEN, *start);
            word(&mut out, 12 + FILE_NAME_LEN, *length);
        }
    }
    out
}

fn name_at(entry: &[u8], at: usize, index: usize) -> Result<String, AcpiLoaderError> {
    let field = &entry[at..at + FILE_NAME_LEN];
    let len = field
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| AcpiLoaderError::BadCommand {
            index,
            reason: "file name is not NUL-terminated".into(),
        })?;
    String::from_utf8(field[..len].to_vec()).map_err(|_| AcpiLoaderError::BadCommand {
        index,
        reason: "file name is not UTF-8".into(),
    })
}

/// Read `etc/table-loader` back into commands (what a firmware does; used
/// by tests and tools that inspect a VM's tables).
pub fn decode(loader: &[u8]) -> Result<Vec<LoaderCommand>, AcpiLoaderError> {
    if loader.len() % COMMAND_LEN != 0 {
        return Err(AcpiLoaderError::BadCommand {
            index: loader.len() / COMMAND_LEN,
            reason: format!("the file is {} bytes, not whole commands", loader.len()),
        });
    }
    let u32_at = |e: &[u8], at: usize| u32::from_le_bytes([e[at], e[at + 1], e[at + 2], e[at + 3]]);
    loader
        .chunks(COMMAND_LEN)
        .enumerate()
        .map(|(index, e)| {
            let bad = |reason: String| AcpiLoaderError::BadCommand { index, reason };
            match u32_at(e, 0) {
                ALLOCATE => Ok(LoaderCommand::Allocate {
                    file: name_at(e, 4, index)?,
                    align: match u32_at(e, 4 + FILE_NAME_LEN) {
                        a if a.is_power_of_two() => a,
                        a => return Err(bad(format!("alignment {a} is not a power of two"))),
                    },
                    zone: match e[8 + FILE_NAME_LEN] {
                        1 => Zone::High,
                        2 => Zone::FSeg,
                        z => return Err(bad(format!("unknown zone {z}"))),
                    },
                }),
                ADD_POINTER => Ok(LoaderCommand::AddPointer {
                    dest: name_at(e, 4, index)?,
                    src: name_at(e, 4 + FILE_NAME_LEN, index)?,
                    offset: u32_at(e, 4 + 2 * FILE_NAME_LEN),
                    size: match e[8 + 2 * FILE_NAME_LEN] {
                        s @ (1 | 2 | 4 | 8) => s,
                        s => return Err(bad(format!("pointer size {s}"))),
                    },
                }),
                ADD_CHECKSUM => Ok(LoaderCommand::AddChecksum {
                    file: name_at(e, 4, index)?,
                    offset: u32_at(e, 4 + FILE_NAME_LEN),
                    start: u32_at(e, 8 + FILE_NAME_LEN),
                    length: u32_at(e, 12 + FILE_NAME_LEN),
                }),
                c => Err(bad(format!("unknown command {c}"))),
            }
        })
        .collect()
}
