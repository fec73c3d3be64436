//! virtio-scsi with its units (a disk, a CD-ROM, and a `lun` on a real
//! loop block device where the host allows one), driven through
//! virtio-queue's mock split queues the way the Linux virtio_scsi driver
//! drives them: command requests with a CDB and data-in/data-out buffers,
//! responses with status and sense, a bad target, control requests. No KVM
//! needed.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use virtkit_core::runtime::memory::{self, GuestMem};
use virtkit_core::spec::vmi::{CdromTarget, Disk, DiskBus, DiskTarget};
use virtkit_devices::disks::{build_disks, plan_disk};
use virtkit_devices::virtio::{Activation, VirtioDevice, VirtioInterrupt};
use vm_memory::{Bytes, GuestAddress};

mod common;
use common::DESC_WRITE as WRITE;

const QUEUE_SIZE: u16 = 64;
const CDB_SIZE: usize = 32;
const SENSE_SIZE: usize = 96;
const RESP_LEN: usize = 12 + SENSE_SIZE;

#[derive(Default)]
struct Irqs(Mutex<Vec<u16>>);
impl VirtioInterrupt for Irqs {
    fn queue(&self, index: u16) {
        self.0.lock().unwrap().push(index);
    }
    fn config_changed(&self) {}
}

/// The answer to one command.
#[derive(Debug)]
struct Response {
    response: u8,
    status: u8,
    sense_key: Option<u8>,
    asc: u8,
    resid: u32,
    data_in: Vec<u8>,
}

struct Driver<'a> {
    mem: &'a GuestMem,
    control: MockSplitQueue<'a, GuestMem>,
    requests: MockSplitQueue<'a, GuestMem>,
    next: [u16; 2],
    used: [u16; 2],
    scratch: u64,
}

impl<'a> Driver<'a> {
    fn chain(&mut self, queue: usize, descs: &[(u64, u32, u16)]) -> u32 {
        let q = if queue == 0 {
            &self.control
        } else {
            &self.requests
        };
        let first = self.next[queue];
        self.next[queue] = common::add_chain(q, first, QUEUE_SIZE, descs);
        self.used[queue] += 1;
        first.into()
    }

    fn used_len(&self, queue: usize, dev_used: u16) -> u32 {
        let q = if queue == 0 {
            &self.control
        } else {
            &self.requests
        };
        let used = q.used_addr().0;
        let idx: u16 = self.mem.read_obj(GuestAddress(used + 2)).unwrap();
        assert_eq!(idx, dev_used, "request not completed");
        let slot = u64::from((idx - 1) % QUEUE_SIZE);
        self.mem
            .read_obj(GuestAddress(used + 8 + 8 * slot))
            .unwrap()
    }

    fn alloc(&mut self, len: usize) -> u64 {
        let at = self.scratch;
        self.scratch += (len as u64 + 0xfff) & !0xfff;
        at
    }

    /// Send `cdb` to `target`; `data_out` is written by the driver,
    /// `data_in` bytes are left for the device.
    fn command(
        &mut self,
        dev: &mut dyn VirtioDevice,
        target: u8,
        cdb: &[u8],
        data_out: &[u8],
        data_in: usize,
    ) -> Response {
        let mut req = vec![0u8; 19 + CDB_SIZE];
        req[0] = 1;
        req[1] = target;
        req[2] = 0x40;
        req[19..19 + cdb.len()].copy_from_slice(cdb);
        let req_at = self.alloc(req.len());
        self.mem.write_slice(&req, GuestAddress(req_at)).unwrap();
        let mut descs = vec![(req_at, req.len() as u32, 0)];
        if !data_out.is_empty() {
            let at = self.alloc(data_out.len());
            self.mem.write_slice(data_out, GuestAddress(at)).unwrap();
            descs.push((at, data_out.len() as u32, 0));
        }
        let resp_at = self.alloc(RESP_LEN);
        self.mem
            .write_slice(&[0xee; RESP_LEN], GuestAddress(resp_at))
            .unwrap();
        descs.push((resp_at, RESP_LEN as u32, WRITE));
        let in_at = self.alloc(data_in.max(1));
        if data_in > 0 {
            descs.push((in_at, data_in as u32, WRITE));
        }
        self.chain(1, &descs);
        dev.queue_notify(2);
        let len = self.used_len(1, self.used[1]);
        let mut resp = [0u8; RESP_LEN];
        self.mem
            .read_slice(&mut resp, GuestAddress(resp_at))
            .unwrap();
        let sense_len = u32::from_le_bytes(resp[0..4].try_into().unwrap());
        let got = len as usize - RESP_LEN.min(len as usize);
        let mut data = vec![0u8; got];
        self.mem.read_slice(&mut data, GuestAddress(in_at)).unwrap();
        Response {
            response: resp[11],
            status: resp[10],
            sense_key: (sense_len > 0).then_some(resp[12 + 2]),
            asc: resp[12 + 12],
            resid: u32::from_le_bytes(resp[4..8].try_into().unwrap()),
            data_in: data,
        }
    }
}

fn image(dir: &Path, name: &str, blocks: usize, block: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    let mut bytes = vec![0u8; blocks * block];
    for (i, b) in bytes.chunks_mut(block).enumerate() {
        b[..8].copy_from_slice(format!("blk{i:05}").as_bytes());
    }
    std::fs::write(&p, bytes).unwrap();
    p
}

fn disk_entry(name: &str) -> Disk {
    Disk {
        name: name.into(),
        ..Disk::default()
    }
}

/// A loop device over `file`, detached on drop; `None` (with a SKIP
/// line) where the host has no loop devices.
struct Loop(String);
impl Loop {
    fn attach(file: &Path) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(file)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "SKIP (lun part): losetup failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        Some(Loop(
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        ))
    }
}
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn disk_cdrom_and_lun_answer_scsi_commands_through_the_queues() {
    let dir = tempfile::tempdir().unwrap();
    let data = image(dir.path(), "data.raw", 64, 512);
    let iso = image(dir.path(), "cd.iso", 16, 2048);
    let lun_file = image(dir.path(), "lun.raw", 32, 512);
    let lun_dev = Loop::attach(&lun_file);

    let mut d = disk_entry("data");
    d.disk = Some(DiskTarget {
        bus: Some(DiskBus::Scsi),
        ..DiskTarget::default()
    });
    d.serial = Some("DATA-1".into());
    let mut cd = disk_entry("cd");
    cd.cdrom = Some(CdromTarget {
        bus: Some(DiskBus::Scsi),
        ..CdromTarget::default()
    });
    let mut plans = vec![
        plan_disk(0, &d, &data).unwrap(),
        plan_disk(1, &cd, &iso).unwrap(),
    ];
    if let Some(l) = &lun_dev {
        let mut lun = disk_entry("lun");
        lun.lun = Some(DiskTarget::default());
        plans.push(plan_disk(2, &lun, Path::new(&l.0)).unwrap());
    }
    let built = build_disks(&plans).unwrap();
    assert!(built.virtio_blk.is_empty());
    let mut dev = built.scsi.unwrap();

    let mem = memory::create(16 << 20).unwrap();
    let control = MockSplitQueue::create(&mem, GuestAddress(0x1000), QUEUE_SIZE);
    let event = MockSplitQueue::create(&mem, GuestAddress(0x10_000), QUEUE_SIZE);
    let requests = MockSplitQueue::create(&mem, GuestAddress(0x20_000), QUEUE_SIZE);
    let irqs = Arc::new(Irqs::default());
    let queues: Vec<Queue> = vec![
        control.create_queue().unwrap(),
        event.create_queue().unwrap(),
        requests.create_queue().unwrap(),
    ];
    assert_eq!(dev.queue_max_sizes().len(), 3);
    // Config: one request queue, sense 96, cdb 32, max_target = units - 1.
    let mut cfg = [0u8; 36];
    dev.read_config(0, &mut cfg);
    assert_eq!(u32::from_le_bytes(cfg[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_le_bytes(cfg[20..24].try_into().unwrap()), 96);
    assert_eq!(u32::from_le_bytes(cfg[24..28].try_into().unwrap()), 32);
    assert_eq!(
        u16::from_le_bytes(cfg[30..32].try_into().unwrap()) as usize,
        plans.len() - 1
    );
    dev.activate(Activation {
        memory: mem.clone(),
        queues,
        features: 0,
        interrupt: irqs.clone(),
    })
    .unwrap();
    let mut drv = Driver {
        mem: &mem,
        control,
        requests,
        next: [0, 0],
        used: [0, 0],
        scratch: 0x100_000,
    };

    // Target 0: the disk.
    let inq = drv.command(&mut dev, 0, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!((inq.response, inq.status, inq.data_in[0]), (0, 0, 0x00));
    let serial = drv.command(&mut dev, 0, &[0x12, 1, 0x80, 0, 64, 0], &[], 64);
    assert_eq!(&serial.data_in[4..10], b"DATA-1");
    assert_eq!(serial.resid, 64 - 10);
    let cap = drv.command(&mut dev, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(cap.data_in, [0, 0, 0, 63, 0, 0, 2, 0]);
    let payload = vec![0x5au8; 1024];
    let w = drv.command(
        &mut dev,
        0,
        &[0x2a, 0, 0, 0, 0, 10, 0, 0, 2, 0],
        &payload,
        0,
    );
    assert_eq!((w.response, w.status), (0, 0));
    let r = drv.command(&mut dev, 0, &[0x28, 0, 0, 0, 0, 9, 0, 0, 3, 0], &[], 1536);
    assert_eq!(&r.data_in[..8], b"blk00009");
    assert_eq!(&r.data_in[512..], &payload[..]);
    let file = std::fs::read(&data).unwrap();
    assert_eq!(&file[10 * 512..12 * 512], &payload[..], "reached the image");
    let past = drv.command(&mut dev, 0, &[0x28, 0, 0, 0, 0, 64, 0, 0, 1, 0], &[], 512);
    assert_eq!((past.status, past.sense_key, past.asc), (2, Some(5), 0x21));

    // Target 1: the CD-ROM.
    let inq = drv.command(&mut dev, 1, &[0x12, 0, 0, 0, 36, 0], &[], 36);
    assert_eq!((inq.data_in[0], inq.data_in[1]), (0x05, 0x80));
    let cap = drv.command(&mut dev, 1, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    assert_eq!(cap.data_in, [0, 0, 0, 15, 0, 0, 8, 0]);
    let r = drv.command(&mut dev, 1, &[0x28, 0, 0, 0, 0, 3, 0, 0, 1, 0], &[], 2048);
    assert_eq!(&r.data_in[..8], b"blk00003");
    let w = drv.command(
        &mut dev,
        1,
        &[0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0],
        &[0; 2048],
        0,
    );
    assert_eq!(
        (w.status, w.sense_key, w.asc),
        (2, Some(7), 0x27),
        "write-protected"
    );
    let toc = drv.command(&mut dev, 1, &[0x43, 0, 0, 0, 0, 0, 0, 0, 20, 0], &[], 20);
    assert_eq!(toc.data_in[2..4], [1, 1]);
    dev.target_mut(1).unwrap().set_tray_open(true);
    let tur = drv.command(&mut dev, 1, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(
        (tur.status, tur.sense_key, tur.asc),
        (2, Some(2), 0x3a),
        "no medium"
    );

    // Target 2: the lun on a block device.
    if lun_dev.is_some() {
        let cap = drv.command(&mut dev, 2, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
        assert_eq!(cap.data_in, [0, 0, 0, 31, 0, 0, 2, 0]);
        let r = drv.command(&mut dev, 2, &[0x28, 0, 0, 0, 0, 31, 0, 0, 1, 0], &[], 512);
        assert_eq!(&r.data_in[..8], b"blk00031");
    }

    // A target that does not exist.
    let bad = drv.command(&mut dev, 9, &[0, 0, 0, 0, 0, 0], &[], 0);
    assert_eq!(bad.response, 3, "VIRTIO_SCSI_S_BAD_TARGET");

    // Control queue: a TMF abort completes; an event query finds none.
    let mut tmf = vec![0u8; 24];
    tmf[4..8].copy_from_slice(&0u32.to_le_bytes());
    tmf[8] = 1;
    let tmf_at = drv.alloc(24);
    mem.write_slice(&tmf, GuestAddress(tmf_at)).unwrap();
    let resp_at = drv.alloc(1);
    mem.write_obj(0xffu8, GuestAddress(resp_at)).unwrap();
    drv.chain(0, &[(tmf_at, 24, 0), (resp_at, 1, WRITE)]);
    dev.queue_notify(0);
    assert_eq!(drv.used_len(0, 1), 1);
    assert_eq!(mem.read_obj::<u8>(GuestAddress(resp_at)).unwrap(), 0);
    let mut an = vec![0u8; 16];
    an[0] = 1; // AN query
    let an_at = drv.alloc(16);
    mem.write_slice(&an, GuestAddress(an_at)).unwrap();
    let an_resp = drv.alloc(5);
    mem.write_slice(&[0xff; 5], GuestAddress(an_resp)).unwrap();
    drv.chain(0, &[(an_at, 16, 0), (an_resp, 5, WRITE)]);
    dev.queue_notify(0);
    assert_eq!(drv.used_len(0, 2), 5);
    let mut got = [0u8; 5];
    mem.read_slice(&mut got, GuestAddress(an_resp)).unwrap();
    assert_eq!(got, [0, 0, 0, 0, 0]);

    let irqs = irqs.0.lock().unwrap();
    assert!(irqs.contains(&2) && irqs.contains(&0), "{irqs:?}");
}
