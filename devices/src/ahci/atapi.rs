//! An ATAPI CD/DVD-ROM on a SATA port: the PACKET command carries a SCSI
//! CDB, which the MMC unit of [`crate::scsi`] runs. What ATAPI adds is
//! kept here: IDENTIFY PACKET DEVICE, the sense of the last failed packet
//! (ATAPI has no sense phase: the driver asks with REQUEST SENSE), the
//! sense key in the error register, and UNIT ATTENTION after the medium
//! changed.

use super::ata::{
    common_command, identify_base, identify_bytes, Command, Completion, ERROR_ABRT, STATUS_DRDY,
    STATUS_DSC, STATUS_ERR,
};
use super::prdt::Prdt;
use crate::scsi::{ScsiUnit, Sense, UnitKind, STATUS_GOOD};

/// Interrupt reason in the sector count: I/O (to host) and C/D (command
/// done), as a packet command ends.
const REASON_DONE: u16 = 0x03;
/// LBA mid/high of the ATAPI signature, returned when an ATA-only command
/// reaches a packet device.
pub(crate) const SIGNATURE_LBA: u64 = 0xeb14 << 8;
/// UNIT ATTENTION / NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
const MEDIUM_CHANGED: Sense = Sense {
    key: 0x06,
    asc: 0x28,
    ascq: 0x00,
};

/// A CD-ROM behind the PACKET command.
#[derive(Debug)]
pub(crate) struct AtapiCdrom {
    unit: ScsiUnit,
    serial: String,
    sense: Option<Sense>,
    unit_attention: bool,
}

/// A CD-ROM's migrating state, version 1 of the controller's blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct CdromStateV1 {
    tray_open: bool,
    unit_attention: bool,
    sense: Option<[u8; 3]>,
}

impl AtapiCdrom {
    pub(crate) fn unit(&self) -> &ScsiUnit {
        &self.unit
    }

    pub(crate) fn new(unit: ScsiUnit, serial: &str) -> Self {
        AtapiCdrom {
            unit,
            serial: serial.to_string(),
            sense: None,
            unit_attention: false,
        }
    }

    /// Tray, pending UNIT ATTENTION and sense (key, ASC, ASCQ), for
    /// migration.
    pub(crate) fn saved(&self) -> CdromStateV1 {
        CdromStateV1 {
            tray_open: matches!(self.unit.kind(), UnitKind::Cdrom { tray_open: true }),
            unit_attention: self.unit_attention,
            sense: self.sense.map(|s| [s.key, s.asc, s.ascq]),
        }
    }

    /// Load what [`AtapiCdrom::saved`] returned.
    pub(crate) fn restore(&mut self, s: &CdromStateV1) {
        self.unit.set_tray_open(s.tray_open);
        self.unit_attention = s.unit_attention;
        self.sense = s.sense.map(|[key, asc, ascq]| Sense { key, asc, ascq });
    }

    /// Open or close the tray. Closing it (a medium that may have
    /// changed) makes the next packet report UNIT ATTENTION.
    pub(crate) fn set_tray_open(&mut self, open: bool) {
        let was_open = matches!(self.unit.kind(), UnitKind::Cdrom { tray_open: true });
        self.unit.set_tray_open(open);
        if was_open && !open {
            self.unit_attention = true;
        }
    }

    pub(crate) fn execute(&mut self, cmd: &Command, cdb: &[u8; 16], prdt: &Prdt<'_>) -> Completion {
        match cmd.command {
            0xa0 => self.packet(cdb, prdt),
            0xa1 => match prdt.copy_to_guest(&identify_bytes(self.identify())) {
                Ok(()) => Completion {
                    transferred: 512,
                    pio: true,
                    ..Completion::ok()
                },
                Err(e) => {
                    log::warn!("ahci: IDENTIFY PACKET DEVICE: {e}");
                    Completion::error(ERROR_ABRT)
                }
            },
            // DEVICE RESET: clears the sense; the signature is returned.
            0x08 => {
                self.sense = None;
                Completion {
                    lba: SIGNATURE_LBA,
                    ..Completion::ok()
                }
            }
            // ATA-only commands: abort with the signature so that the
            // driver knows a packet device answered (ATA8-ACS §7.12).
            0xec | 0x20 | 0x24 | 0x25 | 0xc8 | 0x30 | 0x34 | 0x35 | 0xca => Completion {
                lba: SIGNATURE_LBA,
                ..Completion::error(ERROR_ABRT)
            },
            _ => common_command(cmd).unwrap_or(Completion::error(ERROR_ABRT)),
        }
    }

    fn packet(&mut self, cdb: &[u8; 16], prdt: &Prdt<'_>) -> Completion {
        let opcode = cdb[0];
        // REQUEST SENSE answers the last failure once; INQUIRY and GET
        // EVENT STATUS NOTIFICATION never report a unit attention (SPC-4
        // §5.14 and MMC-6 §6.7).
        if opcode == 0x03 {
            if let Some(sense) = self.sense.take() {
                let data = sense.to_fixed();
                let n = usize::from(cdb[4]).min(data.len());
                return match prdt.copy_to_guest(&data[..n]) {
                    Ok(()) => finished(n as u32),
                    Err(_) => self.failed(INVALID_FIELD),
                };
            }
        } else if self.unit_attention && !matches!(opcode, 0x12 | 0x4a) {
            self.unit_attention = false;
            return self.failed(MEDIUM_CHANGED);
        }
        let allocation = usize::try_from(prdt.capacity()).unwrap_or(usize::MAX);
        let outcome = self.unit.execute(cdb, &mut prdt.reader(), allocation);
        if outcome.status != STATUS_GOOD {
            return self.failed(outcome.sense.unwrap_or(INVALID_FIELD));
        }
        match prdt.copy_to_guest(&outcome.data_in) {
            Ok(()) => {
                self.sense = None;
                finished(outcome.data_in.len() as u32)
            }
            Err(_) => self.failed(INVALID_FIELD),
        }
    }

    /// CHECK CONDITION: the sense key goes to the error register and the
    /// sense is kept for REQUEST SENSE.
    fn failed(&mut self, sense: Sense) -> Completion {
        self.sense = Some(sense);
        Completion {
            status: STATUS_DRDY | STATUS_ERR,
            error: sense.key << 4,
            count: REASON_DONE,
            ..Completion::ok()
        }
    }

    fn identify(&self) -> [u16; 256] {
        let mut id = identify_base(&self.serial, "VIRTKIT DVD-ROM");
        // ATAPI, CD-ROM, removable, accelerated DRQ, 12-byte packets.
        id[0] = 0x85c0;
        id[82] = 1 << 4; // PACKET feature set
        id[85] = 1 << 4;
        id
    }
}

const INVALID_FIELD: Sense = Sense {
    key: 0x05,
    asc: 0x24,
    ascq: 0,
};

fn finished(bytes: u32) -> Completion {
    Completion {
        status: STATUS_DRDY | STATUS_DSC,
        transferred: bytes,
        count: REASON_DONE,
        ..Completion::ok()
    }
}
