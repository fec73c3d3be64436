//! Debian's iPXE ROMs for virtio-net checked and exposed behind a
//! virtio-net function's ROM BAR, read back the way firmware reads them;
//! damaged ROMs and ROMs for another device are refused.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use virtkit_devices::pci::config::{COMMAND_MEMORY, ROM_BAR};
use virtkit_devices::pci::{MsiSink, PciBus, PciDevice, PciLayout};
use virtkit_devices::virtio::net::{Disconnected, NetConfig, VirtioNet};
use virtkit_devices::virtio::pci::VirtioPciDevice;
use virtkit_firmware_loader::option_rom::{parse, CodeType, OptionRom, RomError, IPXE_VIRTIO_ROM};

const VIRTIO_NET: (u16, u16) = (0x1af4, 0x1041);

fn ipxe() -> Vec<u8> {
    std::fs::read(IPXE_VIRTIO_ROM).expect("ipxe-qemu is needed (.ci/run installs it)")
}

#[test]
fn debian_ipxe_virtio_rom_is_accepted_for_virtio_net() {
    let rom = OptionRom::load(IPXE_VIRTIO_ROM.as_ref(), VIRTIO_NET.0, VIRTIO_NET.1).unwrap();
    let kinds: Vec<CodeType> = rom.images.iter().map(|i| i.code_type).collect();
    assert_eq!(kinds, [CodeType::PcBios, CodeType::Efi]);
    assert_eq!(rom.images[1].efi_machine, Some(0x8664), "x64 EFI driver");
    assert!(rom
        .images
        .iter()
        .all(|i| i.vendor == 0x1af4 && i.devices.contains(&0x1041)));
    let total: usize = rom.images.iter().map(|i| i.len).sum();
    assert_eq!(total, rom.bytes.len(), "the images tile the file");

    let bios = std::fs::read("/usr/lib/ipxe/qemu/pxe-virtio.rom").unwrap();
    let images = parse(&bios).unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].code_type, CodeType::PcBios);
}

#[test]
fn roms_for_other_devices_or_damaged_are_refused() {
    let e = OptionRom::from_bytes(ipxe(), 0x1af4, 0x1000).unwrap_err();
    assert_eq!(e.to_string(), "option ROM is for 1af4:1041, not 1af4:1000");
    let e1000 = std::fs::read("/usr/lib/ipxe/qemu/efi-e1000.rom").unwrap();
    assert!(matches!(
        OptionRom::from_bytes(e1000, VIRTIO_NET.0, VIRTIO_NET.1),
        Err(RomError::WrongDevice { .. })
    ));

    let mut bad = ipxe();
    bad[100] ^= 0xff;
    assert!(matches!(parse(&bad), Err(RomError::Checksum { offset: 0 })));
    let good = ipxe();
    let second = parse(&good).unwrap()[1].offset;
    let mut bad = good.clone();
    bad[second] = 0;
    assert!(matches!(parse(&bad), Err(RomError::Signature { offset }) if offset == second));
    assert!(matches!(
        parse(&good[..good.len() - 512]),
        Err(RomError::Length { .. })
    ));
    assert!(matches!(parse(&good[..second]), Err(RomError::NoLastImage)));
    assert!(matches!(parse(&[]), Err(RomError::Size { len: 0 })));
    assert!(matches!(
        OptionRom::load("/nonexistent.rom".as_ref(), 0x1af4, 0x1041),
        Err(RomError::Io { .. })
    ));
}

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _address: u64, _data: u32) {}
}

#[test]
fn firmware_reads_the_rom_through_the_virtio_net_rom_bar() {
    let bus = PciBus::new(PciLayout::for_memory(1 << 30));
    let net = VirtioNet::new(
        NetConfig::new([0xde, 0, 0, 0, 0, 0xde]),
        vec![Arc::new(Disconnected::new().unwrap())],
    )
    .unwrap();
    let memory = virtkit_core::runtime::memory::create(16 << 20).unwrap();
    let function = VirtioPciDevice::new(Box::new(net), memory, Arc::new(NoMsi)).unwrap();
    // The ROM is checked against the IDs the function itself presents.
    let ids = function.config().read_u32(0);
    let (vendor, device) = (ids as u16, (ids >> 16) as u16);
    assert_eq!((vendor, device), VIRTIO_NET);
    let rom = OptionRom::from_bytes(ipxe(), vendor, device).unwrap();
    let nic = function.with_rom(rom.bytes.clone());
    let at = bus.add(Arc::new(Mutex::new(nic))).unwrap();
    let mut reg = [0u8; 4];
    bus.config_write(at, ROM_BAR, &0xffff_f800u32.to_le_bytes());
    bus.config_read(at, ROM_BAR, &mut reg);
    let size = !(u32::from_le_bytes(reg) & 0xffff_f800) + 1;
    assert_eq!(size, 256 << 10, "249,344 bytes decode as 256 KiB");
    // Place it where firmware would and enable it with memory decoding.
    let base = bus.layout().mmio32.0 as u32 + (1 << 20);
    bus.config_write(at, ROM_BAR, &(base | 1).to_le_bytes());
    bus.config_write(at, 4, &COMMAND_MEMORY.to_le_bytes());
    let mut image = vec![0u8; rom.bytes.len()];
    for (i, chunk) in image.chunks_mut(4096).enumerate() {
        assert!(bus.mmio_read(u64::from(base) + i as u64 * 4096, chunk));
    }
    assert!(image == rom.bytes, "the ROM reads back byte for byte");
    assert_eq!(parse(&image).unwrap(), rom.images);
}
