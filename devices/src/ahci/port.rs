//! One AHCI port (AHCI 1.3.1 §3.3): its registers, the command list it
//! walks when the driver sets bits in PxCI, the FISes it posts to the
//! receive area, and the COMRESET and software reset a driver uses to
//! find out what is attached.

use virtkit_core::runtime::memory::GuestMem;
use vm_memory::{Bytes, GuestAddress};

use super::ata::{AtaDisk, Command, Completion, ERROR_ABRT, STATUS_BSY, STATUS_DRDY, STATUS_DSC};
use super::atapi::{AtapiCdrom, CdromStateV1};
use super::prdt::Prdt;

/// Bytes of one port's register block.
pub(crate) const PORT_REGS_LEN: u64 = 0x80;
/// Command slots per port (CAP.NCS + 1).
pub(crate) const SLOTS: u32 = 32;

// Register offsets within a port block.
const CLB: u64 = 0x00;
const CLBU: u64 = 0x04;
const FB: u64 = 0x08;
const FBU: u64 = 0x0c;
const IS: u64 = 0x10;
const IE: u64 = 0x14;
const CMD: u64 = 0x18;
const TFD: u64 = 0x20;
const SIG: u64 = 0x24;
const SSTS: u64 = 0x28;
const SCTL: u64 = 0x2c;
const SERR: u64 = 0x30;
const CI: u64 = 0x38;

// PxCMD bits.
const CMD_ST: u32 = 1 << 0;
/// Spin-up device: read-only 1 without staggered spin-up (CAP.SSS = 0).
const CMD_SUD: u32 = 1 << 1;
const CMD_POD: u32 = 1 << 2;
const CMD_CLO: u32 = 1 << 3;
const CMD_FRE: u32 = 1 << 4;
const CMD_FR: u32 = 1 << 14;
const CMD_CR: u32 = 1 << 15;
const CMD_ATAPI: u32 = 1 << 24;

// PxIS bits.
const IS_DHRS: u32 = 1 << 0;
const IS_PSS: u32 = 1 << 1;
const IS_DPS: u32 = 1 << 5;
const IS_PCS: u32 = 1 << 6;
const IS_PRCS: u32 = 1 << 22;
const IS_HBFS: u32 = 1 << 29;
const IS_TFES: u32 = 1 << 30;
/// PxIS bits the hardware can set (the rest read 0).
const IS_MASK: u32 = 0xfdc0_00ff;

/// PxSERR.DIAG: PhyRdy change (N) and exchanged (X).
const SERR_DIAG_N: u32 = 1 << 16;
const SERR_DIAG_X: u32 = 1 << 26;
/// PxSSTS with a device present: DET 3 (device and PHY), SPD gen 1, IPM
/// active.
const SSTS_PRESENT: u32 = 0x113;

/// PxSIG of an ATA disk and of an ATAPI device.
const SIG_ATA: u32 = 0x0000_0101;
const SIG_ATAPI: u32 = 0xeb14_0101;

/// Offsets in the received-FIS area.
const RFIS_PIO_SETUP: u64 = 0x20;
const RFIS_D2H: u64 = 0x40;

/// Command header flags (DW0).
const HEADER_CFL: u32 = 0x1f;
const HEADER_ATAPI: u32 = 1 << 5;

/// Control register bit of a Register H2D FIS with C = 0: software reset.
const CONTROL_SRST: u8 = 1 << 2;

/// What a port has attached.
#[derive(Debug)]
pub(crate) enum Drive {
    Disk(AtaDisk),
    Cdrom(AtapiCdrom),
}

impl Drive {
    pub(crate) fn backend(&self) -> &std::sync::Arc<dyn crate::block::BlockBackend> {
        match self {
            Drive::Disk(d) => d.backend(),
            Drive::Cdrom(c) => c.unit().backend(),
        }
    }

    fn signature(&self) -> u32 {
        match self {
            Drive::Disk(_) => SIG_ATA,
            Drive::Cdrom(_) => SIG_ATAPI,
        }
    }
}

/// What is attached to a port, and its own state, in a migration blob.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) enum DriveStateV1 {
    Empty,
    Disk { multiple: u16 },
    Cdrom(CdromStateV1),
}

/// One port's registers and drive, version 1 of the controller's blob.
/// Commands run to completion inside the register write that issues
/// them, so a paused port has nothing in flight: PxCI holds only
/// commands waiting for bus mastering, which run when it is turned on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct PortStateV1 {
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd_status: u8,
    tfd_error: u8,
    sig: u32,
    ssts: u32,
    sctl: u32,
    serr: u32,
    ci: u32,
    halted: bool,
    srst: bool,
    fresh: u32,
    drive: DriveStateV1,
}

/// One port.
#[derive(Debug)]
pub(crate) struct Port {
    pub(crate) drive: Option<Drive>,
    clb: u64,
    fb: u64,
    is: u32,
    ie: u32,
    cmd: u32,
    tfd_status: u8,
    tfd_error: u8,
    sig: u32,
    ssts: u32,
    sctl: u32,
    serr: u32,
    ci: u32,
    /// A failed command stops the list until the driver clears PxCMD.ST.
    halted: bool,
    /// A software reset is asserted (SRST set, not yet cleared).
    srst: bool,
    /// Interrupt causes raised since the controller last looked.
    fresh: u32,
}

impl Port {
    pub(crate) fn new(drive: Option<Drive>) -> Self {
        let mut port = Port {
            drive,
            clb: 0,
            fb: 0,
            is: 0,
            ie: 0,
            cmd: 0,
            tfd_status: 0,
            tfd_error: 0,
            sig: 0,
            ssts: 0,
            sctl: 0,
            serr: 0,
            ci: 0,
            halted: false,
            srst: false,
            fresh: 0,
        };
        port.reset();
        port
    }

    /// Port state after an HBA reset: engines stopped, the link up with
    /// the device's signature where one is attached.
    pub(crate) fn reset(&mut self) {
        let (clb, fb) = (self.clb, self.fb);
        let drive = self.drive.take();
        *self = Port {
            drive,
            clb,
            fb,
            is: 0,
            ie: 0,
            cmd: CMD_SUD | CMD_POD,
            tfd_status: 0x7f,
            tfd_error: 0,
            sig: u32::MAX,
            ssts: 0,
            sctl: 0,
            serr: 0,
            ci: 0,
            halted: false,
            srst: false,
            fresh: 0,
        };
        self.link_up();
    }

    /// The device finished its reset: signature, ready status, link.
    fn link_up(&mut self) {
        if let Some(drive) = &self.drive {
            self.sig = drive.signature();
            self.ssts = SSTS_PRESENT;
            self.tfd_status = STATUS_DRDY | STATUS_DSC;
            self.tfd_error = 1; // diagnostics passed
        }
    }

    /// The port's state, for migration.
    pub(crate) fn saved(&self) -> PortStateV1 {
        PortStateV1 {
            clb: self.clb,
            fb: self.fb,
            is: self.is,
            ie: self.ie,
            cmd: self.cmd,
            tfd_status: self.tfd_status,
            tfd_error: self.tfd_error,
            sig: self.sig,
            ssts: self.ssts,
            sctl: self.sctl,
            serr: self.serr,
            ci: self.ci,
            halted: self.halted,
            srst: self.srst,
            fresh: self.fresh,
            drive: match &self.drive {
                None => DriveStateV1::Empty,
                Some(Drive::Disk(d)) => DriveStateV1::Disk {
                    multiple: d.multiple(),
                },
                Some(Drive::Cdrom(cd)) => DriveStateV1::Cdrom(cd.saved()),
            },
        }
    }

    /// Whether [`Port::restore`] can load `s`: the same kind of drive
    /// (or none) and values a driver could have set.
    pub(crate) fn check(&self, s: &PortStateV1) -> Result<(), String> {
        match (&self.drive, &s.drive) {
            (None, DriveStateV1::Empty) | (Some(Drive::Cdrom(_)), DriveStateV1::Cdrom(_)) => Ok(()),
            (Some(Drive::Disk(_)), DriveStateV1::Disk { multiple }) => {
                if super::ata::valid_multiple(*multiple) {
                    Ok(())
                } else {
                    Err(format!("{multiple} sectors per multiple block"))
                }
            }
            (ours, theirs) => {
                let ours = match ours {
                    None => "nothing",
                    Some(Drive::Disk(_)) => "a disk",
                    Some(Drive::Cdrom(_)) => "a CD-ROM",
                };
                let theirs = match theirs {
                    DriveStateV1::Empty => "nothing",
                    DriveStateV1::Disk { .. } => "a disk",
                    DriveStateV1::Cdrom(_) => "a CD-ROM",
                };
                Err(format!(
                    "the source had {theirs} where this port has {ours}"
                ))
            }
        }
    }

    /// Load what [`Port::saved`] returned, once [`Port::check`] passed.
    pub(crate) fn restore(&mut self, s: &PortStateV1) {
        match (&mut self.drive, &s.drive) {
            (Some(Drive::Disk(d)), DriveStateV1::Disk { multiple }) => d.set_multiple(*multiple),
            (Some(Drive::Cdrom(cd)), DriveStateV1::Cdrom(state)) => cd.restore(state),
            _ => {}
        }
        self.clb = s.clb;
        self.fb = s.fb;
        self.is = s.is & IS_MASK;
        self.ie = s.ie & IS_MASK;
        self.cmd = s.cmd;
        self.tfd_status = s.tfd_status;
        self.tfd_error = s.tfd_error;
        self.sig = s.sig;
        self.ssts = s.ssts;
        self.sctl = s.sctl;
        self.serr = s.serr;
        self.ci = s.ci;
        self.halted = s.halted;
        self.srst = s.srst;
        self.fresh = s.fresh & IS_MASK;
    }

    /// Pending interrupt causes the driver enabled.
    pub(crate) fn interrupt_pending(&self) -> bool {
        self.is & self.ie != 0
    }

    pub(crate) fn read(&self, offset: u64) -> u32 {
        match offset {
            CLB => self.clb as u32,
            CLBU => (self.clb >> 32) as u32,
            FB => self.fb as u32,
            FBU => (self.fb >> 32) as u32,
            IS => self.is,
            IE => self.ie,
            CMD => self.cmd,
            TFD => u32::from(self.tfd_error) << 8 | u32::from(self.tfd_status),
            SIG => self.sig,
            SSTS => self.ssts,
            SCTL => self.sctl,
            SERR => self.serr,
            CI => self.ci,
            _ => 0,
        }
    }

    /// Set interrupt causes in PxIS.
    fn raise(&mut self, causes: u32) {
        self.is |= causes;
        self.fresh |= causes;
    }

    /// Whether an enabled interrupt cause was raised since the last call:
    /// each one is a message to the guest (MSI-X is edge-triggered).
    pub(crate) fn take_interrupt(&mut self) -> bool {
        std::mem::take(&mut self.fresh) & self.ie != 0
    }

    /// A register write; `dma` says whether the function may master the
    /// bus, that is, run commands.
    pub(crate) fn write(&mut self, offset: u64, value: u32, memory: &GuestMem, dma: bool) {
        match offset {
            CLB => self.clb = (self.clb & !0xffff_ffff) | u64::from(value & !0x3ff),
            CLBU => self.clb = (self.clb & 0xffff_ffff) | u64::from(value) << 32,
            FB => self.fb = (self.fb & !0xffff_ffff) | u64::from(value & !0xff),
            FBU => self.fb = (self.fb & 0xffff_ffff) | u64::from(value) << 32,
            IS => self.is &= !value,
            IE => {
                // Causes already pending that become enabled are news.
                self.fresh |= self.is & value & !self.ie;
                self.ie = value & IS_MASK;
            }
            CMD => self.write_cmd(value),
            SCTL => self.write_sctl(value, memory),
            SERR => self.serr &= !value,
            CI if self.cmd & CMD_ST != 0 => self.ci |= value,
            _ => {}
        }
        if dma {
            self.run(memory);
        }
    }

    fn write_cmd(&mut self, value: u32) {
        let writable = CMD_ST | CMD_POD | CMD_FRE | CMD_ATAPI | 0xf000_0000;
        let mut cmd = (self.cmd & !writable) | (value & writable) | CMD_SUD;
        if value & CMD_CLO != 0 {
            // Command list override: forget BSY and DRQ.
            self.tfd_status &= !(STATUS_BSY | 0x08);
        }
        if cmd & CMD_ST != 0 {
            cmd |= CMD_CR;
        } else {
            cmd &= !CMD_CR;
            self.ci = 0;
            self.halted = false;
        }
        if cmd & CMD_FRE != 0 {
            cmd |= CMD_FR;
        } else {
            cmd &= !CMD_FR;
        }
        // The interface communication control field reads back as idle.
        self.cmd = cmd & !0xf000_0000;
    }

    /// PxSCTL.DET: 1 holds COMRESET on the link; going back to 0 lets
    /// the device come up and post its signature.
    fn write_sctl(&mut self, value: u32, memory: &GuestMem) {
        let was_resetting = self.sctl & 0xf == 1;
        self.sctl = value & 0xfff;
        match value & 0xf {
            1 => {
                self.ssts = 0;
                self.tfd_status = STATUS_BSY;
            }
            0 if was_resetting => {
                self.link_up();
                if self.drive.is_some() {
                    self.serr |= SERR_DIAG_N | SERR_DIAG_X;
                    self.raise(IS_PCS | IS_PRCS);
                    self.post_signature(memory);
                }
            }
            _ => {}
        }
    }

    /// The D2H FIS a device sends after reset, carrying its signature.
    fn post_signature(&mut self, memory: &GuestMem) {
        let sig = self.sig;
        let done = Completion {
            count: (sig & 0xff) as u16,
            lba: u64::from(sig >> 8),
            error: 1,
            ..Completion::ok()
        };
        if self.post_d2h(memory, &done, false).is_err() {
            self.raise(IS_HBFS);
        }
    }

    /// Walk the command list: every slot set in PxCI, lowest first, while
    /// the engine runs and no command failed.
    pub(crate) fn run(&mut self, memory: &GuestMem) {
        if self.cmd & CMD_ST == 0 {
            return;
        }
        while self.ci != 0 && !self.halted {
            let slot = self.ci.trailing_zeros();
            self.cmd = (self.cmd & !(0x1f << 8)) | slot << 8;
            if let Err(e) = self.execute_slot(memory, slot) {
                log::warn!("ahci: command slot {slot}: {e}");
                self.raise(IS_HBFS);
                self.tfd_status |= 0x01;
                self.halted = true;
            }
            self.ci &= !(1 << slot);
        }
    }

    fn execute_slot(&mut self, memory: &GuestMem, slot: u32) -> std::io::Result<()> {
        let gm = |e: vm_memory::GuestMemoryError| std::io::Error::other(e.to_string());
        let header_at = self.clb + u64::from(slot) * 32;
        let mut header = [0u8; 16];
        memory
            .read_slice(&mut header, GuestAddress(header_at))
            .map_err(gm)?;
        let dw =
            |i: usize| u32::from_le_bytes([header[i], header[i + 1], header[i + 2], header[i + 3]]);
        let flags = dw(0);
        let table = u64::from(dw(8) & !0x7f) | u64::from(dw(12)) << 32;
        let mut fis = [0u8; 20];
        memory
            .read_slice(&mut fis, GuestAddress(table))
            .map_err(gm)?;
        let mut cdb = [0u8; 16];
        if flags & HEADER_ATAPI != 0 {
            memory
                .read_slice(&mut cdb, GuestAddress(table + 0x40))
                .map_err(gm)?;
        }
        if fis[0] != 0x27 || flags & HEADER_CFL < 5 {
            // Only Register H2D FISes reach a device; anything else is
            // aborted so that the driver sees an error, not silence.
            log::warn!("ahci: slot {slot} holds FIS type {:#04x}; aborted", fis[0]);
            return self.post_d2h(memory, &Completion::error(ERROR_ABRT), false);
        }
        if fis[1] & 0x80 == 0 {
            // A control register update: the software reset sequence.
            self.control(fis[15], memory);
            return Ok(());
        }
        let prdt = Prdt::read(memory, table + 0x80, (flags >> 16) as u16)?;
        let command = Command::from_fis(&fis);
        let done = match &mut self.drive {
            Some(Drive::Disk(disk)) => disk.execute(&command, &prdt),
            Some(Drive::Cdrom(cd)) => cd.execute(&command, &cdb, &prdt),
            None => return Ok(()),
        };
        // PRDBC: bytes transferred.
        memory
            .write_obj(done.transferred, GuestAddress(header_at + 4))
            .map_err(gm)?;
        self.post_d2h(memory, &done, prdt.interrupt)
    }

    /// Software reset: SRST set, then cleared, and the device answers
    /// with its signature.
    fn control(&mut self, control: u8, memory: &GuestMem) {
        if control & CONTROL_SRST != 0 {
            self.srst = true;
            self.tfd_status = STATUS_BSY;
        } else if self.srst {
            self.srst = false;
            self.link_up();
            if self.drive.is_some() {
                self.post_signature(memory);
            }
        }
    }

    /// Post the command's end: a PIO Setup FIS for PIO data, the D2H
    /// Register FIS, the task file and the interrupt causes.
    fn post_d2h(
        &mut self,
        memory: &GuestMem,
        done: &Completion,
        descriptor_irq: bool,
    ) -> std::io::Result<()> {
        let mut d2h = [0u8; 20];
        d2h[0] = 0x34;
        d2h[1] = 1 << 6;
        d2h[2] = done.status;
        d2h[3] = done.error;
        let lba = done.lba.to_le_bytes();
        d2h[4..7].copy_from_slice(&lba[..3]);
        d2h[8..11].copy_from_slice(&lba[3..6]);
        d2h[12..14].copy_from_slice(&done.count.to_le_bytes());
        if self.cmd & CMD_FRE != 0 {
            let gm = |e: vm_memory::GuestMemoryError| std::io::Error::other(e.to_string());
            if done.pio && !done.failed() {
                let mut setup = [0u8; 20];
                setup[0] = 0x5f;
                setup[1] = 1 << 6 | 1 << 5; // interrupt, device to host
                setup[2] = STATUS_DRDY | STATUS_DSC | 0x08;
                setup[4..14].copy_from_slice(&d2h[4..14]);
                setup[15] = done.status; // E_Status: status after the data
                setup[16..18].copy_from_slice(&(done.transferred as u16).to_le_bytes());
                memory
                    .write_slice(&setup, GuestAddress(self.fb + RFIS_PIO_SETUP))
                    .map_err(gm)?;
                self.raise(IS_PSS);
            }
            memory
                .write_slice(&d2h, GuestAddress(self.fb + RFIS_D2H))
                .map_err(gm)?;
        }
        self.tfd_status = done.status;
        self.tfd_error = done.error;
        self.raise(IS_DHRS);
        if descriptor_irq {
            self.raise(IS_DPS);
        }
        if done.failed() {
            self.raise(IS_TFES);
            self.halted = true;
        }
        Ok(())
    }
}
