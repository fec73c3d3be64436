//! virtio-blk through the virtio-pci transport, driven the way a guest
//! driver would (common configuration, MSI-X, notify) with virtio-queue's
//! mock split queues standing in for the guest's rings. No KVM needed.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_devices::block::{DiskOptions, RawFile};
use virtkit_devices::pci::{MsiSink, PciDevice};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::{
    VirtioPciDevice, DEVICE_OFFSET, ISR_OFFSET, MSIX_TABLE_OFFSET, NOTIFY_OFFSET,
};
use virtkit_devices::virtio::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use vm_memory::{Bytes, GuestAddress};

mod common;
use common::DESC_WRITE as WRITE;

// Large enough that no test wraps the ring (the mock does not wrap it).
const QUEUE_SIZE: u16 = 64;
const DATA: u64 = 0x10_0000;

#[derive(Default)]
struct Msis(Mutex<Vec<(u64, u32)>>);
impl MsiSink for Msis {
    fn send(&self, address: u64, data: u32) {
        self.0.lock().unwrap().push((address, data));
    }
}

struct Driver<'a> {
    dev: VirtioPciDevice,
    queue: MockSplitQueue<'a, GuestMem>,
    mem: &'a GuestMem,
    next_desc: u16,
    requests: u16,
}

impl<'a> Driver<'a> {
    fn w(&mut self, off: u64, v: &[u8]) {
        self.dev.bar_write(0, off, v);
    }
    fn r32(&mut self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, off, &mut b);
        u32::from_le_bytes(b)
    }
    fn r8(&mut self, off: u64) -> u8 {
        let mut b = [0u8; 1];
        self.dev.bar_read(0, off, &mut b);
        b[0]
    }

    /// Reset, negotiate `features`, set queue 0 up with MSI-X vector 1;
    /// returns whether FEATURES_OK stuck.
    fn init(&mut self, features: u64) -> bool {
        self.w(0x14, &[0]);
        self.w(0x14, &[STATUS_ACKNOWLEDGE]);
        self.w(0x14, &[STATUS_ACKNOWLEDGE | STATUS_DRIVER]);
        for (sel, half) in [(0u32, features as u32), (1, (features >> 32) as u32)] {
            self.w(0x08, &sel.to_le_bytes());
            self.w(0x0c, &half.to_le_bytes());
        }
        self.w(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK],
        );
        if self.r8(0x14) & STATUS_FEATURES_OK == 0 {
            return false;
        }
        // MSI-X: enable in config space, program vector 1, unmask it.
        let cap = find_cap(self.dev.config(), 0x11).unwrap();
        self.dev
            .config_mut()
            .write(cap + 2, &0x8000u16.to_le_bytes());
        self.dev.config_written(cap + 2, 2);
        self.w(MSIX_TABLE_OFFSET + 16, &0xfee0_0000u64.to_le_bytes());
        self.w(MSIX_TABLE_OFFSET + 24, &0x31u32.to_le_bytes());
        self.w(MSIX_TABLE_OFFSET + 28, &0u32.to_le_bytes());
        self.w(0x16, &0u16.to_le_bytes());
        self.w(0x1a, &1u16.to_le_bytes());
        self.w(0x18, &QUEUE_SIZE.to_le_bytes());
        let (d, a, u) = (
            self.queue.desc_table_addr().0,
            self.queue.avail_addr().0,
            self.queue.used_addr().0,
        );
        self.w(0x20, &d.to_le_bytes());
        self.w(0x28, &a.to_le_bytes());
        self.w(0x30, &u.to_le_bytes());
        self.w(0x1c, &1u16.to_le_bytes());
        self.w(
            0x14,
            &[STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK],
        );
        true
    }

    /// Queue a request (header, optional data, status) and notify.
    /// Returns (status, used length).
    fn request(&mut self, kind: u32, sector: u64, data: Option<(&[u8], bool)>) -> (u8, u32) {
        let base = DATA + u64::from(self.requests) * 0x1_0000;
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&kind.to_le_bytes());
        header[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&header, GuestAddress(base)).unwrap();
        let first = self.next_desc;
        let mut descs = vec![(base, 16u32, 0u16)];
        if let Some((bytes, device_writes)) = data {
            self.mem
                .write_slice(bytes, GuestAddress(base + 0x100))
                .unwrap();
            let flags = if device_writes { WRITE } else { 0 };
            descs.push((base + 0x100, bytes.len() as u32, flags));
        }
        let status_addr = base + 0xff00;
        self.mem
            .write_obj(0xffu8, GuestAddress(status_addr))
            .unwrap();
        descs.push((status_addr, 1, WRITE));
        self.next_desc = common::add_chain(&self.queue, first, QUEUE_SIZE, &descs);
        self.requests += 1;
        self.w(NOTIFY_OFFSET, &0u16.to_le_bytes());
        let used = self.queue.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, self.requests, "request {kind} was not completed");
        let slot = u64::from((idx - 1) % QUEUE_SIZE);
        let id: u32 = self
            .mem
            .read_obj(GuestAddress(used + 4 + 8 * slot))
            .unwrap();
        let len: u32 = self
            .mem
            .read_obj(GuestAddress(used + 8 + 8 * slot))
            .unwrap();
        assert_eq!(id, u32::from(first));
        (self.mem.read_obj(GuestAddress(status_addr)).unwrap(), len)
    }

    fn data(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        let base = DATA + u64::from(self.requests - 1) * 0x1_0000 + 0x100;
        self.mem.read_slice(&mut v, GuestAddress(base)).unwrap();
        v
    }
}

/// Walk the capability list for `id`.
fn find_cap(cfg: &virtkit_devices::pci::ConfigSpace, id: u8) -> Option<usize> {
    let mut at = usize::from(cfg.read_u16(0x34) as u8);
    while at != 0 {
        let mut b = [0u8; 2];
        cfg.read(at, &mut b);
        if b[0] == id {
            return Some(at);
        }
        at = usize::from(b[1]);
    }
    None
}

fn disk(dir: &tempfile::TempDir, sectors: usize) -> PathBuf {
    let path = dir.path().join("disk.raw");
    let mut bytes = vec![0u8; sectors * 512];
    for (i, s) in bytes.chunks_mut(512).enumerate() {
        s.fill(b'a' + (i % 26) as u8);
        s[..12].copy_from_slice(format!("sector-{i:05}").as_bytes());
    }
    std::fs::write(&path, bytes).unwrap();
    path
}

fn transport(
    mem: &GuestMem,
    path: &std::path::Path,
    read_only: bool,
    msis: Arc<Msis>,
) -> VirtioPciDevice {
    let backend = RawFile::open(
        path,
        DiskOptions {
            read_only,
            shareable: false,
            incoming: false,
        },
    )
    .unwrap();
    let blk = VirtioBlock::new(
        Arc::new(backend),
        BlockConfig {
            serial: "virtkit-disk-0001".into(),
            ..BlockConfig::default()
        },
    );
    VirtioPciDevice::new(Box::new(blk), mem.clone(), msis).unwrap()
}

#[test]
fn capabilities_describe_the_modern_layout() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dev = transport(&mem, &disk(&dir, 8), false, Arc::new(Msis::default()));
    let cfg = dev.config();
    assert_eq!(cfg.read_u32(0), 0x1042_1af4, "virtio vendor, modern blk");
    assert_eq!(
        cfg.read_u32(8) & 0xff,
        1,
        "modern devices have revision >= 1"
    );
    let mut found = Vec::new();
    let mut at = usize::from(cfg.read_u16(0x34) as u8);
    while at != 0 {
        let mut cap = [0u8; 20];
        cfg.read(at, &mut cap);
        if cap[0] == 0x09 {
            let offset = u32::from_le_bytes(cap[8..12].try_into().unwrap());
            let mult = (cap[3] == 2).then(|| u32::from_le_bytes(cap[16..20].try_into().unwrap()));
            found.push((cap[3], cap[4], u64::from(offset), mult));
        }
        at = usize::from(cap[1]);
    }
    assert_eq!(
        found,
        vec![
            (1, 0, 0, None),
            (3, 0, ISR_OFFSET, None),
            (4, 0, DEVICE_OFFSET, None),
            (2, 0, NOTIFY_OFFSET, Some(4)),
        ]
    );
    assert!(find_cap(cfg, 0x11).is_some(), "MSI-X capability");
}

#[test]
fn requests_through_the_transport() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = disk(&dir, 16);
    let msis = Arc::new(Msis::default());
    let mut d = Driver {
        dev: transport(&mem, &path, false, msis.clone()),
        queue: MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE),
        mem: &mem,
        next_desc: 0,
        requests: 0,
    };
    // Device configuration: capacity in sectors, block size.
    assert_eq!(d.r32(DEVICE_OFFSET), 16);
    assert_eq!(d.r32(DEVICE_OFFSET + 20), 512);
    // Offered features include VERSION_1, FLUSH (9), DISCARD (13),
    // WRITE_ZEROES (14) and not RO (5).
    d.w(0x00, &0u32.to_le_bytes());
    let low = d.r32(0x04);
    d.w(0x00, &1u32.to_le_bytes());
    assert_eq!(d.r32(0x04) & 1, 1, "VERSION_1");
    assert_eq!(low & (1 << 5), 0);
    assert_ne!(low & (1 << 9), 0, "FLUSH");
    // A driver that accepts an unoffered feature does not get FEATURES_OK.
    assert!(!d.init(VIRTIO_F_VERSION_1 | 1 << 1));
    assert!(!d.init(1 << 9), "VERSION_1 is required");
    assert!(d.init(VIRTIO_F_VERSION_1 | 1 << 9 | 1 << 13 | 1 << 14));

    // Read sector 3.
    assert_eq!(d.request(0, 3, Some((&[0u8; 512], true))), (0, 513));
    assert_eq!(&d.data(12), b"sector-00003");
    assert_eq!(
        *msis.0.lock().unwrap(),
        vec![(0xfee0_0000, 0x31)],
        "MSI-X vector 1"
    );
    assert_eq!(d.r8(ISR_OFFSET), 1, "ISR queue bit, cleared by the read");
    assert_eq!(d.r8(ISR_OFFSET), 0);
    // Write sector 5 and see it in the file.
    let mut sector = [b'W'; 512];
    sector[..11].copy_from_slice(b"guest-wrote");
    assert_eq!(d.request(1, 5, Some((&sector, false))), (0, 1));
    let file = std::fs::read(&path).unwrap();
    assert_eq!(&file[5 * 512..6 * 512], &sector[..]);
    // Flush, get-id.
    assert_eq!(d.request(4, 0, None), (0, 1));
    assert_eq!(d.request(8, 0, Some((&[0u8; 20], true))), (0, 21));
    assert_eq!(&d.data(17), b"virtkit-disk-0001");
    // Write-zeroes sectors 6..8, discard sector 8.
    let mut seg = [0u8; 16];
    seg[..8].copy_from_slice(&6u64.to_le_bytes());
    seg[8..12].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(d.request(13, 0, Some((&seg, false))), (0, 1));
    let file = std::fs::read(&path).unwrap();
    assert!(file[6 * 512..8 * 512].iter().all(|b| *b == 0));
    assert_eq!(&file[8 * 512..8 * 512 + 12], b"sector-00008");
    seg[..8].copy_from_slice(&8u64.to_le_bytes());
    seg[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(d.request(11, 0, Some((&seg, false))), (0, 1));
    let file = std::fs::read(&path).unwrap();
    assert!(
        file[8 * 512..9 * 512].iter().all(|b| *b == 0),
        "hole punched"
    );
    // Errors: past the end, a partial sector, an unknown type, a discard
    // with flags.
    assert_eq!(d.request(0, 16, Some((&[0u8; 512], true))).0, 1);
    assert_eq!(d.request(0, 0, Some((&[0u8; 100], true))).0, 1);
    assert_eq!(d.request(99, 0, None).0, 2);
    seg[12..16].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(d.request(11, 0, Some((&seg, false))).0, 2);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 16 * 512);
    // Reset: the device stops serving the queue.
    d.w(0x14, &[0]);
    assert_eq!(d.r8(0x14), 0);
    d.dev.bar_write(0, NOTIFY_OFFSET, &0u16.to_le_bytes());
}

#[test]
fn read_only_disk_refuses_writes() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = disk(&dir, 4);
    let before = std::fs::read(&path).unwrap();
    let mut d = Driver {
        dev: transport(&mem, &path, true, Arc::new(Msis::default())),
        queue: MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE),
        mem: &mem,
        next_desc: 0,
        requests: 0,
    };
    d.w(0x00, &0u32.to_le_bytes());
    assert_ne!(d.r32(0x04) & (1 << 5), 0, "RO feature offered");
    assert!(
        !d.init(VIRTIO_F_VERSION_1 | 1 << 13),
        "no DISCARD on a read-only disk"
    );
    assert!(d.init(VIRTIO_F_VERSION_1 | 1 << 5));
    assert_eq!(d.request(1, 0, Some((&[b'x'; 512], false))).0, 1);
    assert_eq!(d.request(0, 1, Some((&[0u8; 512], true))), (0, 513));
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn with_event_idx_the_device_publishes_where_the_driver_must_kick_next() {
    // A Linux driver with EVENT_IDX kicks only when its avail index
    // passes `avail_event` (after the used ring); a device that never
    // writes it gets one kick and then silence.
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = disk(&dir, 4);
    let mut d = Driver {
        dev: transport(&mem, &path, false, Arc::new(Msis::default())),
        queue: MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE),
        mem: &mem,
        next_desc: 0,
        requests: 0,
    };
    assert!(d.init(VIRTIO_F_VERSION_1 | virtkit_devices::virtio::VIRTIO_F_RING_EVENT_IDX));
    let avail_event = d.queue.used_addr().0 + 4 + 8 * u64::from(QUEUE_SIZE);
    for n in 1..=3u16 {
        assert_eq!(d.request(0, 1, Some((&[0u8; 512], true))), (0, 513));
        let published: u16 = mem.read_obj(GuestAddress(avail_event)).unwrap();
        assert_eq!(published, n, "avail_event after request {n}");
    }
}

/// A driver that has set queue 0 up on a writable `path` and started.
fn started_driver<'a>(mem: &'a GuestMem, path: &std::path::Path) -> Driver<'a> {
    let mut d = Driver {
        dev: transport(mem, path, false, Arc::new(Msis::default())),
        queue: MockSplitQueue::create(mem, GuestAddress(0x1000), QUEUE_SIZE),
        mem,
        next_desc: 0,
        requests: 0,
    };
    assert!(d.init(VIRTIO_F_VERSION_1));
    d
}

/// Configuration space as the bus carries it across a migration.
fn copy_config(from: &VirtioPciDevice, to: &mut VirtioPciDevice) {
    let mut cfg = vec![0u8; virtkit_devices::pci::config::CONFIG_SPACE_SIZE];
    from.config().read(0, &mut cfg);
    to.config_mut().write(0, &cfg);
    to.config_written(0, cfg.len());
}

#[test]
fn a_transport_saved_mid_stream_serves_on_from_a_second_device() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = disk(&dir, 16);
    let mut d = started_driver(&mem, &path);
    for sector in [1, 2] {
        assert_eq!(d.request(0, sector, Some((&[0u8; 512], true))).0, 0);
    }
    let saved = d.dev.save_state().unwrap();
    // The source holds its disk's lock; the targets get copies.
    let copy = |name: &str| {
        let p = dir.path().join(name);
        std::fs::copy(&path, &p).unwrap();
        p
    };

    // Control: a fresh device given only configuration space does not
    // know the driver started it, so it serves nothing.
    let mut bare = transport(&mem, &copy("bare.raw"), false, Arc::new(Msis::default()));
    copy_config(&d.dev, &mut bare);
    assert_eq!(bare.status(), 0);

    // The target: same disk, same (migrated) memory, the saved state.
    let target_msis = Arc::new(Msis::default());
    let mut target = transport(&mem, &copy("target.raw"), false, target_msis.clone());
    copy_config(&d.dev, &mut target);
    target.restore_state(&saved).unwrap();
    assert_eq!(target.status(), d.dev.status());
    assert_eq!(target.save_state().unwrap(), saved, "state reads back");
    d.dev = target;
    // The third request lands in used slot 2 (checked by `request`) and
    // reads the right sector: the queue went on where it stood.
    assert_eq!(d.request(0, 3, Some((&[0u8; 512], true))).0, 0);
    assert_eq!(&d.data(12), b"sector-00003");
    // Its interrupt used the MSI-X entry the driver wrote on the source.
    assert_eq!(
        target_msis.0.lock().unwrap().last(),
        Some(&(0xfee0_0000, 0x31))
    );
}

#[test]
fn transport_state_that_does_not_fit_is_refused() {
    let mem = memory::create(4 << 20).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = disk(&dir, 16);
    let mut d = started_driver(&mem, &path);
    let saved = d.dev.save_state().unwrap();
    let copy = dir.path().join("target.raw");
    std::fs::copy(&path, &copy).unwrap();
    let mut target = transport(&mem, &copy, false, Arc::new(Msis::default()));
    for bad in [
        &saved[..saved.len() - 3],
        &saved[..5],
        b"VKVIRTIO\x09\0\0\0".as_slice(),
    ] {
        assert!(target.restore_state(bad).is_err());
        assert_eq!(target.status(), 0);
    }
    // A virtio-scsi state does not load into virtio-blk.
    let scsi = virtkit_devices::virtio::scsi::VirtioScsi::new(
        Vec::new(),
        virtkit_devices::virtio::scsi::ScsiConfig::default(),
    );
    let mut scsi =
        VirtioPciDevice::new(Box::new(scsi), mem.clone(), Arc::new(Msis::default())).unwrap();
    let e = target
        .restore_state(&scsi.save_state().unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("device type 8"), "{e}");
}
