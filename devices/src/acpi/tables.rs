//! ACPI tables for a virtkit VM, built with rust-vmm's `acpi_tables`:
//! RSDP → XSDT → FADT (→ FACS, DSDT), MADT, MCFG. The DSDT describes the
//! PCI root bridge with its windows, one device per hot-pluggable slot
//! with `_EJ0`/`_RMV`/`_SUN`, the `PCNT` method that turns the PCIU/PCID
//! bitmaps into notifications, `\_GPE._E01` that calls it, and `\_S5`.
//! The registers they name are the ones `pci::hotplug`, `acpi::events`
//! and the runtime's PM1a control and reset ports implement.

use acpi_tables::aml::{
    AddressSpace, AddressSpaceCacheable, And, Arg, Device, EISAName, Equal, Field, FieldAccessType,
    FieldEntry, FieldLockRule, FieldUpdateRule, If, Local, Method, MethodCall, Name, Notify,
    OpRegion, OpRegionSpace, Package, Path, ResourceTemplate, Return, Scope, ShiftLeft, ShiftRight,
    Store, IO, ONE, ZERO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace as GasSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use zerocopy::{Immutable, IntoBytes};

use super::events::{GPE0_LEN, GPE0_PORT, PM1A_EVT_LEN, PM1A_EVT_PORT, SCI_GSI};
use crate::pci::hotplug::{HOTPLUG_LEN, HOTPLUG_PORT};
use crate::pci::{PciLayout, HOST_BRIDGE_SLOT, Q35_LPC_SLOT, SLOT_COUNT};
use virtkit_core::runtime::devices::{PM1A_CNT_PORT, RESET_PORT};
use virtkit_core::runtime::{RuntimeError, Topology, Vm};

/// Where the RSDP goes: the BIOS read-only area that OSes scan.
pub const RSDP_ADDR: u64 = 0xe_0000;
/// End of the area the tables are placed in.
const TABLES_END: u64 = 0x10_0000;
const OEM_ID: [u8; 6] = *b"VIRTKT";
const OEM_TABLE: [u8; 8] = *b"VIRTKIT ";
const LAPIC_ADDR: u32 = 0xfee0_0000;
const IOAPIC_ADDR: u32 = 0xfec0_0000;

/// What the tables describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AcpiConfig {
    /// The guest CPU topology; the MADT lists each vCPU's APIC ID as the
    /// runtime assigns it ([`Topology::apic_id`]).
    pub topology: Topology,
    /// The PCI bus's address layout.
    pub pci: PciLayout,
}

/// One table and where it goes in guest memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedTable {
    /// The signature ("RSD PTR " for the RSDP).
    pub signature: String,
    /// Guest-physical address.
    pub address: u64,
    /// The bytes, checksums filled in.
    pub bytes: Vec<u8>,
}

/// The table set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcpiTables {
    /// RSDP first, then the tables in placement order.
    pub tables: Vec<PlacedTable>,
}

/// MADT interrupt source override (type 2), which acpi_tables lacks.
#[repr(C, packed)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct InterruptSourceOverride {
    kind: u8,
    length: u8,
    bus: u8,
    source: u8,
    gsi: u32,
    flags: u16,
}

impl InterruptSourceOverride {
    fn new(source: u8, gsi: u32, flags: u16) -> Self {
        InterruptSourceOverride {
            kind: 2,
            length: 10,
            bus: 0,
            source,
            gsi,
            flags,
        }
    }
}

impl Aml for InterruptSourceOverride {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

/// Already-encoded AML, so that generated pieces compose without the
/// borrow chains acpi_tables' builders otherwise need.
struct Encoded(Vec<u8>);

impl Aml for Encoded {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(&self.0);
    }
}

fn encode(a: &dyn Aml) -> Encoded {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    Encoded(v)
}

fn io_gas(width: u8, port: u64) -> GAS {
    let access = match width {
        8 => AccessSize::ByteAccess,
        16 => AccessSize::WordAccess,
        _ => AccessSize::DwordAccess,
    };
    GAS::new(GasSpace::SystemIo, width, 0, access, port)
}

/// Slots a device may be hot-plugged into.
fn hotplug_slots() -> impl Iterator<Item = u8> {
    (0..SLOT_COUNT).filter(|s| *s != HOST_BRIDGE_SLOT && *s != Q35_LPC_SLOT)
}

fn slot_name(slot: u8) -> String {
    format!("SL{slot:02X}")
}

/// The DSDT's AML body (without the table header).
fn dsdt_body(config: &AcpiConfig) -> Vec<u8> {
    let (lo, lo_len) = config.pci.mmio32;
    let (hi, hi_len) = config.pci.mmio64;
    let bus = AddressSpace::<u16>::new_bus_number(0, 0);
    let cf8 = IO::new(0xcf8, 0xcf8, 1, 8);
    let io_low = AddressSpace::<u16>::new_io(0, 0xcf7, None);
    let io_high = AddressSpace::<u16>::new_io(0xd00, 0xffff, None);
    let mem32 = AddressSpace::<u32>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        lo as u32,
        (lo + lo_len - 1) as u32,
        None,
    );
    let mem64 = AddressSpace::<u64>::new_memory(
        AddressSpaceCacheable::NotCacheable,
        true,
        hi,
        hi + hi_len - 1,
        None,
    );
    let crs = ResourceTemplate::new(vec![&bus, &cf8, &io_low, &io_high, &mem32, &mem64]);

    let hotplug_port = HOTPLUG_PORT as u32;
    let hotplug_len = HOTPLUG_LEN as u32;
    let region = OpRegion::new(
        "PCST".into(),
        OpRegionSpace::SystemIO,
        &hotplug_port,
        &hotplug_len,
    );
    let fields = Field::new(
        "PCST".into(),
        FieldAccessType::DWord,
        FieldLockRule::NoLock,
        FieldUpdateRule::WriteAsZeroes,
        vec![
            FieldEntry::Named(*b"PCIU", 32),
            FieldEntry::Named(*b"PCID", 32),
            FieldEntry::Named(*b"B0EJ", 32),
            FieldEntry::Named(*b"PRMV", 32),
            FieldEntry::Named(*b"BSEL", 32),
        ],
    );
    // PCEJ(slot): B0EJ = 1 << slot.
    let eject_bit = ShiftLeft::new(&ZERO, &ONE, &Arg(0));
    let (pciu, pcid, b0ej, prmv) = (
        Path::new("PCIU"),
        Path::new("PCID"),
        Path::new("B0EJ"),
        Path::new("PRMV"),
    );
    let eject_store = Store::new(&b0ej, &eject_bit);
    let pcej = Method::new("PCEJ".into(), 1, true, vec![&eject_store]);

    let mut slots = Vec::new();
    let mut notifies = Vec::new();
    for slot in hotplug_slots() {
        let name = slot_name(slot);
        let adr = u32::from(slot) << 16;
        let sun = u32::from(slot);
        let adr_name = Name::new("_ADR".into(), &adr);
        let sun_name = Name::new("_SUN".into(), &sun);
        let call = MethodCall::new("PCEJ".into(), vec![&sun]);
        let ej0 = Method::new("_EJ0".into(), 1, false, vec![&call]);
        let shifted = ShiftRight::new(&ZERO, &prmv, &sun);
        let bit = And::new(&ZERO, &shifted, &ONE);
        let ret = Return::new(&bit);
        let rmv = Method::new("_RMV".into(), 0, false, vec![&ret]);
        slots.push(encode(&Device::new(
            name.as_str().into(),
            vec![&adr_name, &sun_name, &ej0, &rmv],
        )));
        let mask = 1u32 << slot;
        let path = Path::new(&name);
        for (local, event) in [(0u8, 1u8), (1, 3)] {
            let l = Local(local);
            let test = And::new(&ZERO, &l, &mask);
            let set = Equal::new(&test, &mask);
            let notify = Notify::new(&path, &event);
            notifies.push(encode(&If::new(&set, vec![&notify])));
        }
    }
    let load_up = Store::new(&Local(0), &pciu);
    let load_down = Store::new(&Local(1), &pcid);
    let mut pcnt_body: Vec<&dyn Aml> = vec![&load_up, &load_down];
    pcnt_body.extend(notifies.iter().map(|n| n as &dyn Aml));
    let pcnt = Method::new("PCNT".into(), 0, true, pcnt_body);

    let hid = EISAName::new("PNP0A08");
    let cid = EISAName::new("PNP0A03");
    let zero = 0u32;
    let hid_name = Name::new("_HID".into(), &hid);
    let cid_name = Name::new("_CID".into(), &cid);
    let adr_name = Name::new("_ADR".into(), &zero);
    let seg_name = Name::new("_SEG".into(), &zero);
    let uid_name = Name::new("_UID".into(), &zero);
    let bbn_name = Name::new("_BBN".into(), &zero);
    let crs_name = Name::new("_CRS".into(), &crs);
    let mut pci_children: Vec<&dyn Aml> = vec![
        &hid_name, &cid_name, &adr_name, &seg_name, &uid_name, &bbn_name, &crs_name, &region,
        &fields, &pcej, &pcnt,
    ];
    pci_children.extend(slots.iter().map(|s| s as &dyn Aml));
    let pci0 = Device::new("PCI0".into(), pci_children);
    let sb = Scope::new("\\_SB_".into(), vec![&pci0]);

    let gpe_hid = "ACPI0006";
    let gpe_hid_name = Name::new("_HID".into(), &gpe_hid);
    let call_pcnt = MethodCall::new("\\_SB_.PCI0.PCNT".into(), vec![]);
    let e01 = Method::new("_E01".into(), 0, false, vec![&call_pcnt]);
    let gpe = Scope::new("\\_GPE".into(), vec![&gpe_hid_name, &e01]);

    let s5_package = Package::new(vec![&ZERO, &ZERO, &ZERO, &ZERO]);
    let s5 = Name::new("\\_S5_".into(), &s5_package);

    let mut body = Vec::new();
    sb.to_aml_bytes(&mut body);
    gpe.to_aml_bytes(&mut body);
    s5.to_aml_bytes(&mut body);
    body
}

fn bytes_of(a: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    a.to_aml_bytes(&mut v);
    v
}

impl AcpiTables {
    /// Build the table set for `config`.
    pub fn build(config: &AcpiConfig) -> Self {
        let mut dsdt = Sdt::new(*b"DSDT", 36, 2, OEM_ID, OEM_TABLE, 1);
        dsdt.append_slice(&dsdt_body(config));
        let dsdt = dsdt.as_slice().to_vec();

        let facs = bytes_of(&acpi_tables::facs::FACS::new());

        let mut madt = MADT::new(
            OEM_ID,
            OEM_TABLE,
            1,
            LocalInterruptController::Address(LAPIC_ADDR),
        );
        for index in 0..config.topology.vcpus() {
            let apic = config.topology.apic_id(index) as u8;
            madt.add_structure(ProcessorLocalApic::new(
                index as u8,
                apic,
                EnabledStatus::Enabled,
            ));
        }
        madt.add_structure(IoApic::new(0, IOAPIC_ADDR, 0));
        // ISA IRQ 0 is wired to GSI 2; the SCI is level-triggered, active high.
        madt.add_structure(InterruptSourceOverride::new(0, 2, 0));
        madt.add_structure(InterruptSourceOverride::new(
            SCI_GSI as u8,
            SCI_GSI,
            0b1101, // active high, level
        ));
        let madt = bytes_of(&madt);

        let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE, 1);
        mcfg.add_ecam(config.pci.ecam_base, 0, 0, 0);
        let mcfg = bytes_of(&mcfg);

        // Placement: RSDP, XSDT, FADT, FACS (64-byte aligned), MADT, MCFG,
        // DSDT, each 64-byte aligned.
        let align = |a: u64| a.next_multiple_of(64);
        let xsdt_addr = align(RSDP_ADDR + 36);
        let xsdt_len = 36 + 8 * 3;
        let fadt_addr = align(xsdt_addr + xsdt_len);
        let fadt_len = 276u64;
        let facs_addr = align(fadt_addr + fadt_len);
        let madt_addr = align(facs_addr + facs.len() as u64);
        let mcfg_addr = align(madt_addr + madt.len() as u64);
        let dsdt_addr = align(mcfg_addr + mcfg.len() as u64);

        let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE, 1)
            .dsdt_64(dsdt_addr)
            .firmware_ctrl_64(facs_addr)
            .flag(Flags::Wbinvd)
            .flag(Flags::ProcC1)
            .flag(Flags::SlpButton)
            .flag(Flags::ResetRegSup)
            .gpe_info(GPE0_PORT as u32, 0, GPE0_LEN as u8, 0, 0);
        fadt.sci_int = (SCI_GSI as u16).into();
        fadt.pm1a_evt_blk = (PM1A_EVT_PORT as u32).into();
        fadt.pm1_evt_len = PM1A_EVT_LEN as u8;
        fadt.pm1a_cnt_blk = (PM1A_CNT_PORT as u32).into();
        fadt.pm1_cnt_len = 2;
        fadt.x_pm1a_evt_blk = io_gas(32, PM1A_EVT_PORT);
        fadt.x_pm1a_cnt_blk = io_gas(16, PM1A_CNT_PORT);
        fadt.x_gpe0_blk = io_gas((GPE0_LEN * 8) as u8, GPE0_PORT);
        fadt.reset_reg = io_gas(8, RESET_PORT);
        fadt.reset_value = 0x6;
        let fadt = bytes_of(&fadt.finalize());

        let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE, 1);
        for addr in [fadt_addr, madt_addr, mcfg_addr] {
            xsdt.add_entry(addr);
        }
        let xsdt = bytes_of(&xsdt);
        let rsdp = Rsdp::new(OEM_ID, xsdt_addr).as_bytes().to_vec();

        let placed = |signature: &str, address, bytes| PlacedTable {
            signature: signature.to_string(),
            address,
            bytes,
        };
        AcpiTables {
            tables: vec![
                placed("RSD PTR ", RSDP_ADDR, rsdp),
                placed("XSDT", xsdt_addr, xsdt),
                placed("FACP", fadt_addr, fadt),
                placed("FACS", facs_addr, facs),
                placed("APIC", madt_addr, madt),
                placed("MCFG", mcfg_addr, mcfg),
                placed("DSDT", dsdt_addr, dsdt),
            ],
        }
    }

    /// The table with `signature`.
    pub fn table(&self, signature: &str) -> Option<&PlacedTable> {
        self.tables.iter().find(|t| t.signature == signature)
    }

    /// Write every table into `vm`'s memory.
    pub fn write(&self, vm: &Vm) -> Result<(), RuntimeError> {
        for t in &self.tables {
            if t.address + t.bytes.len() as u64 > TABLES_END {
                return Err(RuntimeError::InvalidConfig(format!(
                    "ACPI table {} does not fit below 1 MiB",
                    t.signature
                )));
            }
            vm.write_memory(t.address, &t.bytes)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    #[test]
    fn checksums_lengths_and_links() {
        let t = AcpiTables::build(&AcpiConfig {
            topology: Topology::flat(2),
            pci: PciLayout::for_memory(1 << 30),
        });
        let rsdp = t.table("RSD PTR ").unwrap();
        assert_eq!(&rsdp.bytes[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp.bytes[..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&rsdp.bytes), 0, "extended checksum");
        let xsdt_addr = u64::from_le_bytes(rsdp.bytes[24..32].try_into().unwrap());
        assert_eq!(xsdt_addr, t.table("XSDT").unwrap().address);
        for table in t
            .tables
            .iter()
            .filter(|t| t.signature.len() == 4 && t.signature != "FACS")
        {
            let len = u32::from_le_bytes(table.bytes[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.bytes.len(), "{} length", table.signature);
            assert_eq!(sum(&table.bytes), 0, "{} checksum", table.signature);
            assert_eq!(&table.bytes[..4], table.signature.as_bytes());
            assert_eq!(table.address % 64, 0);
        }
        let xsdt = &t.table("XSDT").unwrap().bytes;
        let entries: Vec<u64> = xsdt[36..]
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            entries,
            ["FACP", "APIC", "MCFG"].map(|s| t.table(s).unwrap().address)
        );
        let last = t.tables.last().unwrap();
        assert!(last.address + last.bytes.len() as u64 <= TABLES_END);
    }
}
