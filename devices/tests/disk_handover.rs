//! Shared-storage migration without KVM: a target opens the source's
//! disk images `incoming` (no lock, no writes), the source flushes and
//! lets go at the switchover, and the target takes the locks over; a
//! qcow2 image's metadata is read again, so clusters the source allocated
//! after the target opened the image are seen, and the target's own
//! allocations do not overwrite them. On a bus the handover reaches
//! every disk of virtio-blk, virtio-scsi and AHCI, and a lock held
//! elsewhere is refused with the slot named.
//!
//! `flock` locks belong to an open file description, so two opens in one
//! process conflict exactly as two VMM processes would.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_core::runtime::{Snapshot, StateError};
use virtkit_devices::ahci::{AhciController, SataDrive};
use virtkit_devices::block::{open_disk, BlockBackend, BlockError, DiskOptions, RawFile};
use virtkit_devices::pci::{MsiSink, PciBus, PciLayout};
use virtkit_devices::scsi::{ScsiUnit, UnitKind};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::VirtioPciDevice;
use virtkit_devices::virtio::scsi::{ScsiConfig, VirtioScsi};

const INCOMING: DiskOptions = DiskOptions {
    read_only: false,
    shareable: false,
    incoming: true,
};

fn raw_image(dir: &Path, name: &str, len: usize) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, vec![0u8; len]).unwrap();
    path
}

fn locked(r: Result<(), BlockError>) -> bool {
    matches!(r, Err(BlockError::Locked { .. }))
}

#[test]
fn a_raw_disk_changes_hands_only_when_the_source_lets_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "shared.raw", 64 << 10);
    let source = RawFile::open(&path, DiskOptions::default()).unwrap();
    // A plain open is refused while the source runs; an incoming one is
    // not, but it may neither write nor take the lock yet.
    assert!(matches!(
        RawFile::open(&path, DiskOptions::default()),
        Err(BlockError::Locked { .. })
    ));
    let target = RawFile::open(&path, INCOMING).unwrap();
    let refused = target.write_at(b"early", 0).unwrap_err();
    assert!(refused.to_string().contains("migration"), "{refused}");
    assert!(target.write_zeroes(0, 512, true).is_err());
    assert!(target.discard(0, 512).is_err());
    assert!(locked(target.take_lock()));

    source.write_at(b"last write of the source", 4096).unwrap();
    source.release_lock().unwrap();
    source.release_lock().unwrap(); // idempotent
    assert!(
        source.write_at(b"late", 0).is_err(),
        "a source that let go must not write"
    );

    target.take_lock().unwrap();
    target.take_lock().unwrap(); // idempotent
    let mut buf = [0u8; 24];
    target.read_at(&mut buf, 4096).unwrap();
    assert_eq!(&buf, b"last write of the source");
    target.write_at(b"target", 0).unwrap();
    // Now the target excludes everyone, the source included.
    assert!(locked(source.take_lock()));
    assert!(matches!(
        RawFile::open(&path, DiskOptions::default()),
        Err(BlockError::Locked { .. })
    ));

    // A migration that fails after the handover: the target lets go,
    // the source takes its lock back and writes again.
    target.release_lock().unwrap();
    source.take_lock().unwrap();
    source.write_at(b"source again", 0).unwrap();
    assert!(target.write_at(b"x", 0).is_err());
}

#[test]
fn a_shareable_disk_is_shared_by_both_sides_and_read_only_disks_never_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = raw_image(dir.path(), "shared.raw", 8 << 10);
    let shared = DiskOptions {
        shareable: true,
        ..DiskOptions::default()
    };
    let source = RawFile::open(&path, shared).unwrap();
    let target = RawFile::open(
        &path,
        DiskOptions {
            incoming: true,
            ..shared
        },
    )
    .unwrap();
    // Shared locks coexist: the target may take its own at once.
    target.take_lock().unwrap();
    target.write_at(b"both", 0).unwrap();
    source.write_at(b"both", 512).unwrap();
    // …but an exclusive open is still refused while either holds one.
    source.release_lock().unwrap();
    assert!(matches!(
        RawFile::open(&path, DiskOptions::default()),
        Err(BlockError::Locked { .. })
    ));

    let cd = DiskOptions {
        read_only: true,
        incoming: true,
        ..DiskOptions::default()
    };
    let ro = RawFile::open(&path, cd).unwrap();
    ro.take_lock().unwrap();
    let e = ro.write_at(b"x", 0).unwrap_err();
    assert!(e.to_string().contains("read-only"), "{e}");
}

fn qemu_img(args: &[&str]) -> std::process::Output {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_qcow2_target_reads_the_metadata_again_when_it_takes_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.qcow2");
    let p = path.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "64M"]);
    let source = open_disk(&path, DiskOptions::default()).unwrap();
    let target = open_disk(&path, INCOMING).unwrap();
    assert!(target.write_at(b"early", 0).is_err());

    // The source allocates clusters (and an L2 table) after the target
    // read the header and L1 table.
    let first = [0x5au8; 4096];
    source.write_at(&first, 8 << 20).unwrap();
    source.write_at(&first, 40 << 20).unwrap();
    source.release_lock().unwrap();

    target.take_lock().unwrap();
    let mut buf = [0u8; 4096];
    target.read_at(&mut buf, 40 << 20).unwrap();
    assert!(buf == first, "the target sees what the source wrote last");
    // The target's allocations go past the source's, not over them.
    let second = [0xa5u8; 4096];
    target.write_at(&second, 24 << 20).unwrap();
    target.write_at(&second, 56 << 20).unwrap();
    target.flush().unwrap();
    drop((source, target));

    let check = qemu_img(&["check", p]);
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("No errors"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let raw = dir.path().join("out.raw");
    qemu_img(&["convert", "-O", "raw", p, raw.to_str().unwrap()]);
    let bytes = std::fs::read(&raw).unwrap();
    for (at, want) in [(8, 0x5a), (40, 0x5a), (24, 0xa5), (56, 0xa5)] {
        let at = at << 20;
        assert!(
            bytes[at..at + 4096].iter().all(|b| *b == want),
            "{at:#x} holds {want:#x}"
        );
    }
}

#[test]
fn a_qcow2_image_the_target_could_not_write_is_refused_when_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap.qcow2");
    let p = path.to_str().unwrap();
    qemu_img(&["create", "-q", "-f", "qcow2", p, "1M"]);
    qemu_img(&["snapshot", "-c", "s1", p]);
    let e = open_disk(&path, INCOMING).err().unwrap();
    assert!(
        matches!(e, BlockError::Image { .. }) && e.to_string().contains("snapshot"),
        "{e}"
    );
}

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _: u64, _: u32) {}
}

/// A bus with virtio-blk (slot 3), virtio-scsi with two units (slot 4)
/// and AHCI with a disk and a CD (slot 5), over the images in `dir`.
fn bus(mem: &GuestMem, images: &[PathBuf; 5], options: DiskOptions) -> PciBus {
    let open = |p: &PathBuf, read_only: bool| -> Arc<dyn BlockBackend> {
        open_disk(
            p,
            DiskOptions {
                read_only,
                ..options
            },
        )
        .unwrap()
        .into()
    };
    let msi: Arc<dyn MsiSink> = Arc::new(NoMsi);
    let bus = PciBus::new(PciLayout::for_memory(4 << 20));
    let blk = VirtioBlock::new(open(&images[0], false), BlockConfig::default());
    let scsi = VirtioScsi::new(
        vec![
            ScsiUnit::new(open(&images[1], false), UnitKind::Disk, "s0"),
            ScsiUnit::new(open(&images[2], false), UnitKind::Disk, "s1"),
        ],
        ScsiConfig::default(),
    );
    for (slot, dev) in [
        (3u8, Box::new(blk) as Box<_>),
        (4, Box::new(scsi) as Box<_>),
    ] {
        let dev = VirtioPciDevice::new(dev, mem.clone(), msi.clone()).unwrap();
        bus.add_at(slot, Arc::new(Mutex::new(dev))).unwrap();
    }
    let drives = vec![
        SataDrive::disk(open(&images[3], false), "d0"),
        SataDrive::cdrom(open(&images[4], true), "cd", false),
    ];
    let ahci = AhciController::new(drives, mem.clone(), msi).unwrap();
    bus.add_at(5, Arc::new(Mutex::new(ahci))).unwrap();
    bus
}

#[test]
fn a_bus_hands_every_disk_over_and_names_the_slot_whose_lock_is_held() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let images: [PathBuf; 5] =
        std::array::from_fn(|i| raw_image(dir.path(), &format!("d{i}.img"), 64 << 10));
    let mut source = bus(&mem, &images, DiskOptions::default());
    let mut target = bus(&mem, &images, INCOMING);
    // Every image is busy while the source holds it.
    for p in &images[..4] {
        assert!(RawFile::open(p, DiskOptions::default()).is_err(), "{p:?}");
    }
    let e = target.take_locks().unwrap_err();
    assert!(
        matches!(&e, StateError::Locked(why) if why.contains("PCI slot 3")),
        "{e}"
    );

    source.release_locks().unwrap();
    target.take_locks().unwrap();
    for p in &images[..4] {
        let e = RawFile::open(p, DiskOptions::default()).unwrap_err();
        assert!(matches!(e, BlockError::Locked { .. }), "{p:?}: {e}");
    }
    // The source cannot take them back while the target holds them; the
    // first disk it meets is named with its slot.
    let e = source.take_locks().unwrap_err();
    assert!(
        matches!(&e, StateError::Locked(why) if why.contains("PCI slot 3") && why.contains("d0.img")),
        "{e}"
    );

    // Back to the source (a failed migration): the target lets go, the
    // source takes every lock again, and the images are busy once more.
    target.release_locks().unwrap();
    source.take_locks().unwrap();
    for p in &images[..4] {
        assert!(RawFile::open(p, DiskOptions::default()).is_err(), "{p:?}");
    }

    // A third party that grabs one image while it is between the two
    // sides stops the target, and the error names that slot (AHCI's).
    source.release_locks().unwrap();
    let squatter = RawFile::open(&images[3], DiskOptions::default()).unwrap();
    let e = target.take_locks().unwrap_err();
    assert!(
        matches!(&e, StateError::Locked(why) if why.contains("PCI slot 5") && why.contains("d3.img")),
        "{e}"
    );
    drop(squatter);
    target.take_locks().unwrap();
}
