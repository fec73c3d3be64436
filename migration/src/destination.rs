//! The destination side: check the Hello, build a matching VM, verify the
//! secret, load memory and state, confirm, and resume only on Commit. Any
//! failure drops the half-built VM: nothing is left behind.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use hmac::Mac;
use virtkit_core::runtime::feature_words::{self, FeatureWord};
use virtkit_core::runtime::local_disk::SharedDisk;
use virtkit_core::runtime::{DeviceState, RuntimeError, VcpuState, Vm, VmClockState, VmConfig};
use vm_memory::{GuestAddress, GuestMemoryBackend, ReadVolatile, VolatileMemoryError};
use zerocopy::little_endian::U64;
use zerocopy::IntoBytes;

use crate::model::MigrationError;
use crate::protocol::{
    self, Frame, Incoming, Kind, PageSink, ProtocolError, MIN_READABLE_VERSION, PAGE_SIZE,
    PROTOCOL_VERSION,
};
use crate::source::{auth_mac, memory_checksum, read_peer, read_peer_into, unexpected};
use crate::transport::MigrationStream;

/// What the source asked the destination to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLayout {
    /// vCPUs.
    pub vcpus: u8,
    /// Guest RAM bytes.
    pub memory_bytes: u64,
    /// RAM ranges `(gpa, len)`.
    pub ranges: Vec<(u64, u64)>,
    /// The source's CPUID signature.
    pub cpuid_signature: u64,
    /// The stream's version.
    pub version: u32,
    /// Ids of the source's devices with state, which the target VM must
    /// register too (empty for a version-1 stream).
    pub devices: Vec<String>,
    /// The CPU features the guest was given on the source, which the
    /// target VM's vCPUs must all offer (empty before version 3).
    pub features: Vec<FeatureWord>,
    /// Disks whose contents follow (`BlockMigration`), `(id, size)`: the
    /// target VM registers a disk of each size under each id
    /// (`Vm::add_migrating_disk`), typically a fresh sparse file that
    /// the embedder deletes again if the migration fails.
    pub disks: Vec<(String, u64)>,
}

impl TargetLayout {
    /// A `VmConfig` for a VM of this layout.
    pub fn vm_config(&self, name: &str) -> VmConfig {
        VmConfig {
            name: name.to_string(),
            vcpus: self.vcpus,
            memory_bytes: self.memory_bytes,
        }
    }
}

/// Receive-side statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReceiveStats {
    /// Bytes read.
    pub bytes_received: u64,
    /// Pages with bytes.
    pub pages: u64,
    /// Zero-page markers.
    pub zero_pages: u64,
    /// Bytes of migrating disks received as data.
    pub disk_bytes: u64,
    /// Passes seen.
    pub iterations: u32,
    /// Checksum of RAM before resume (0 if not asked for).
    pub checksum: u64,
    /// From Complete to running.
    #[serde(serialize_with = "crate::model::secs")]
    pub resume_time: Duration,
}

/// A guest that arrived and is running.
pub struct Received {
    /// The VM, started.
    pub vm: Vm,
    /// Numbers.
    pub stats: ReceiveStats,
}

/// Writes pages into the target VM. Over a socket (`socket`, the same
/// connection the frames are read from, nothing buffered in between) a
/// frame's pages are read straight into guest RAM; other streams go
/// through `buf`. A fresh VM's RAM is already zero, so a zero-page run
/// only needs clearing where data was written before (`written`, one bit
/// per page per range); skipping the rest saves allocating and clearing
/// memory the guest never used.
struct VmSink<'a> {
    vm: &'a Vm,
    ranges: Vec<(u64, u64)>,
    written: Vec<Vec<u64>>,
    socket: Option<OwnedFd>,
    /// Bytes read through `socket` (the counting reader does not see them).
    socket_bytes: u64,
    buf: Vec<u8>,
}

impl<'a> VmSink<'a> {
    fn new(vm: &'a Vm, ranges: Vec<(u64, u64)>, socket: Option<OwnedFd>) -> Self {
        let written = ranges
            .iter()
            .map(|&(_, len)| vec![0u64; (len / PAGE_SIZE).div_ceil(64) as usize])
            .collect();
        VmSink {
            vm,
            ranges,
            written,
            socket,
            socket_bytes: 0,
            buf: Vec::new(),
        }
    }

    /// Range index and first page index of `gpa` (already bounds-checked).
    fn locate(&self, gpa: u64) -> (usize, u64) {
        let i = self
            .ranges
            .iter()
            .position(|&(s, l)| gpa >= s && gpa < s + l)
            .unwrap_or(0);
        (i, (gpa - self.ranges[i].0) / PAGE_SIZE)
    }
}

impl PageSink for VmSink<'_> {
    fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }
    fn fill(&mut self, gpa: u64, len: usize, src: &mut dyn Read) -> Result<(), ProtocolError> {
        let bad = |e: String| ProtocolError::Malformed(format!("pages at {gpa:#x}: {e}"));
        match &mut self.socket {
            Some(socket) => {
                let mut ram = self
                    .vm
                    .memory()
                    .get_slice(GuestAddress(gpa), len)
                    .map_err(|e| bad(e.to_string()))?;
                socket.read_exact_volatile(&mut ram).map_err(|e| match e {
                    VolatileMemoryError::IOError(io) => ProtocolError::Io(io),
                    other => bad(other.to_string()),
                })?;
                self.socket_bytes += len as u64;
            }
            None => {
                self.buf.resize(len, 0);
                src.read_exact(&mut self.buf)?;
                self.vm
                    .write_memory(gpa, &self.buf)
                    .map_err(|e| bad(e.to_string()))?;
            }
        }
        let (r, first) = self.locate(gpa);
        for p in first..first + len as u64 / PAGE_SIZE {
            self.written[r][(p / 64) as usize] |= 1 << (p % 64);
        }
        Ok(())
    }
    fn zero(&mut self, gpa: u64, count: u32) -> Result<(), String> {
        let (r, first) = self.locate(gpa);
        let page = [0u8; PAGE_SIZE as usize];
        for p in first..first + u64::from(count) {
            let (w, bit) = ((p / 64) as usize, 1u64 << (p % 64));
            if self.written[r][w] & bit != 0 {
                self.vm
                    .write_memory(self.ranges[r].0 + p * PAGE_SIZE, &page)
                    .map_err(|e| e.to_string())?;
                self.written[r][w] &= !bit;
            }
        }
        Ok(())
    }
}

/// Counts bytes read, for the statistics.
struct Counting<'a> {
    inner: &'a mut dyn MigrationStream,
    n: u64,
}
impl std::io::Read for Counting<'_> {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(b)?;
        self.n += n as u64;
        Ok(n)
    }
}

fn reject(stream: &mut dyn MigrationStream, reason: String) -> MigrationError {
    let _ = protocol::write_frame(stream, Kind::Reject, &[reason.as_bytes()]);
    let _ = stream.flush();
    MigrationError::Rejected(reason)
}

/// Load devices, vCPUs and clock into the paused target, then compare
/// the memory checksum with the source's (0: not asked for). Returns the
/// target's checksum.
fn load_state(
    vm: &Vm,
    layout: &TargetLayout,
    devices: &[DeviceState],
    vcpus: &[Box<VcpuState>],
    clock: Option<&VmClockState>,
    source_sum: u64,
) -> Result<u64, MigrationError> {
    if vcpus.len() != usize::from(layout.vcpus) {
        return Err(MigrationError::Protocol(ProtocolError::Malformed(format!(
            "{} vCPU states for {} vCPUs",
            vcpus.len(),
            layout.vcpus
        ))));
    }
    if layout.version >= 2 {
        vm.restore_devices(devices)?;
    }
    vm.restore_vcpus(vcpus)?;
    if let Some(c) = clock {
        vm.restore_clock(c)?;
    }
    if source_sum == 0 {
        return Ok(0);
    }
    let target = memory_checksum(vm)?;
    if target != source_sum {
        return Err(MigrationError::ChecksumMismatch { source_sum, target });
    }
    Ok(target)
}

/// The target VM's migrating disks in the order of the source's Hello,
/// or why they do not match (ids and sizes must be equal).
fn target_disks(vm: &Vm, theirs: &[(String, u64)]) -> Result<Vec<(String, SharedDisk)>, String> {
    let ours = vm.migrating_disks();
    let ours_sized: Vec<(String, u64)> =
        ours.iter().map(|(id, d)| (id.clone(), d.size())).collect();
    let mut sorted_ours = ours_sized.clone();
    let mut sorted_theirs = theirs.to_vec();
    sorted_ours.sort();
    sorted_theirs.sort();
    if sorted_ours != sorted_theirs {
        return Err(format!(
            "migrating disks differ: the source sends {theirs:?} (id, bytes), the target has {ours_sized:?}"
        ));
    }
    Ok(theirs
        .iter()
        .filter_map(|(id, _)| ours.iter().find(|(o, _)| o == id).cloned())
        .collect())
}

/// Disk `index` of the Hello, if `[offset, offset + len)` lies inside it.
fn disk_for(
    disks: &[(String, SharedDisk)],
    index: u32,
    offset: u64,
    len: u64,
) -> Result<(String, SharedDisk), MigrationError> {
    let (id, d) = disks.get(index as usize).ok_or_else(|| {
        MigrationError::Protocol(ProtocolError::Malformed(format!(
            "disk {index} is not one of the {} the Hello named",
            disks.len()
        )))
    })?;
    if offset.checked_add(len).is_none_or(|end| end > d.size()) {
        return Err(MigrationError::Protocol(ProtocolError::Malformed(format!(
            "disk {id}: run {offset}+{len} is past its end ({})",
            d.size()
        ))));
    }
    Ok((id.clone(), d.clone()))
}

/// Send Confirm with the target's checksum and wait for the source's
/// Commit.
fn confirm_and_wait_commit(rd: &mut Counting<'_>, checksum: u64) -> Result<(), MigrationError> {
    let confirm = protocol::Checksum {
        xxh3: U64::new(checksum),
    };
    protocol::write_frame(rd.inner, Kind::Confirm, &[confirm.as_bytes()])
        .map_err(MigrationError::Connection)?;
    rd.inner.flush().map_err(MigrationError::Connection)?;
    match read_peer(rd)? {
        Frame::Commit => Ok(()),
        f => Err(unexpected("Commit", &f)),
    }
}

/// Receive a migration on `stream`. `build` makes the VM once the Hello
/// has been checked; it must have the layout asked for (the VM is checked
/// against it). On success the guest runs on the returned VM.
pub fn receive(
    mut stream: Box<dyn MigrationStream>,
    secret: &[u8],
    build: impl FnOnce(&TargetLayout) -> Result<Vm, RuntimeError>,
) -> Result<Received, MigrationError> {
    let result = receive_inner(&mut *stream, secret, build);
    if let Err(e) = &result {
        log::warn!("incoming migration failed: {e}");
        let _ = stream.shutdown();
    }
    result
}

fn receive_inner(
    stream: &mut dyn MigrationStream,
    secret: &[u8],
    build: impl FnOnce(&TargetLayout) -> Result<Vm, RuntimeError>,
) -> Result<Received, MigrationError> {
    let mut stats = ReceiveStats::default();
    let mut rd = Counting {
        inner: stream,
        n: 0,
    };
    let read = |rd: &mut Counting<'_>| read_peer(rd);
    let (layout, hello_raw) = match read(&mut rd)? {
        Frame::Hello {
            version,
            vcpus,
            memory_bytes,
            cpuid_hash,
            ranges,
            devices,
            features,
            disks,
            raw,
        } => {
            if !(MIN_READABLE_VERSION..=PROTOCOL_VERSION).contains(&version) {
                return Err(reject(
                    rd.inner,
                    format!("stream version {version} is not readable here (this build reads {MIN_READABLE_VERSION}..={PROTOCOL_VERSION})"),
                ));
            }
            let Some(vcpus) = u8::try_from(vcpus).ok().filter(|v| *v >= 1) else {
                return Err(reject(rd.inner, format!("{vcpus} vCPUs is not supported")));
            };
            let features = match features
                .iter()
                .map(|w| {
                    let reg = feature_words::reg_from_number(w.reg.get())?;
                    Some(FeatureWord {
                        leaf: w.leaf.get(),
                        subleaf: w.subleaf.get(),
                        reg,
                        value: w.value.get(),
                    })
                })
                .collect::<Option<Vec<_>>>()
            {
                Some(f) => f,
                None => {
                    return Err(reject(
                        rd.inner,
                        "a CPU feature word names a register other than EAX..EDX".into(),
                    ))
                }
            };
            (
                TargetLayout {
                    vcpus,
                    memory_bytes,
                    ranges,
                    cpuid_signature: cpuid_hash,
                    version,
                    devices,
                    features,
                    disks,
                },
                raw,
            )
        }
        f => return Err(unexpected("Hello", &f)),
    };
    // Authenticate before building anything.
    let mut nonce = [0u8; 32];
    getrandom::getrandom(&mut nonce).map_err(|e| {
        MigrationError::Connection(std::io::Error::other(format!(
            "no randomness for the nonce: {e}"
        )))
    })?;
    protocol::write_frame(rd.inner, Kind::Challenge, &[&nonce])
        .map_err(MigrationError::Connection)?;
    match read(&mut rd)? {
        Frame::Auth(tag) => {
            if auth_mac(secret, &nonce, &hello_raw)?
                .verify_slice(&tag)
                .is_err()
            {
                return Err(reject(
                    rd.inner,
                    "authentication failed: the secrets differ".into(),
                ));
            }
        }
        f => return Err(unexpected("Auth", &f)),
    }
    let vm = match build(&layout) {
        Ok(vm) => vm,
        Err(e) => return Err(reject(rd.inner, format!("target cannot build the VM: {e}"))),
    };
    let ours: Vec<(u64, u64)> = vm
        .ram_ranges()
        .iter()
        .map(|r| (r.guest_addr, r.len))
        .collect();
    if ours != layout.ranges || u64::from(vm.config().vcpus) != u64::from(layout.vcpus) {
        return Err(reject(
            rd.inner,
            format!(
                "layout mismatch: source has {} vCPUs and RAM {:x?}, target {} and {:x?}",
                layout.vcpus,
                layout.ranges,
                vm.config().vcpus,
                ours
            ),
        ));
    }
    if layout.version >= 3 {
        let missing = feature_words::missing_features(&layout.features, vm.guest_features());
        if !missing.is_empty() {
            return Err(reject(
                rd.inner,
                format!(
                    "the target's vCPUs lack CPU features the guest uses: {} (give the target VM the source's CPU model, or move the guest to a host that has them)",
                    missing.join(", ")
                ),
            ));
        }
    } else if layout.cpuid_signature != 0 && layout.cpuid_signature != vm.cpuid_signature() {
        // Streams before version 3 carry only a hash of the host's CPUID.
        return Err(reject(
            rd.inner,
            "CPU features differ between source and target (CPUID signatures do not match)".into(),
        ));
    }
    if layout.version >= 2 {
        let ours = vm.device_state_ids();
        if let Some((missing, unexpected)) = virtkit_core::runtime::snapshot::id_mismatch(
            ours.iter().map(String::as_str),
            layout.devices.iter().map(String::as_str),
        ) {
            let e = RuntimeError::DeviceMismatch {
                missing,
                unexpected,
            };
            return Err(reject(rd.inner, format!("target devices differ: {e}")));
        }
    } else {
        log::warn!(
            "version-{} stream carries no device state: the guest's devices start fresh",
            layout.version
        );
    }
    let disks = match target_disks(&vm, &layout.disks) {
        Ok(d) => d,
        Err(why) => return Err(reject(rd.inner, why)),
    };
    protocol::write_frame(rd.inner, Kind::Accept, &[]).map_err(MigrationError::Connection)?;
    rd.inner.flush().map_err(MigrationError::Connection)?;

    // Memory and state until Complete; pages go straight into guest RAM.
    let socket = rd
        .inner
        .as_socket()
        .map(|fd| fd.try_clone_to_owned())
        .transpose()
        .map_err(MigrationError::Connection)?;
    let mut sink = VmSink::new(&vm, ours, socket);
    let mut vcpus = Vec::new();
    let mut clock = None;
    let mut devices = Vec::new();
    let applied = loop {
        match read_peer_into(&mut rd, &mut sink)? {
            Incoming::Pages { count, .. } => stats.pages += u64::from(count),
            Incoming::ZeroPages { count, .. } => stats.zero_pages += u64::from(count),
            Incoming::Frame(Frame::IterationDone { .. }) => stats.iterations += 1,
            Incoming::Frame(Frame::VcpuState(bytes)) => {
                if vcpus.len() >= usize::from(layout.vcpus) {
                    return Err(unexpected("Complete", &Frame::VcpuState(Vec::new())));
                }
                vcpus.push(VcpuState::from_bytes(&bytes).map_err(RuntimeError::from)?);
            }
            Incoming::Frame(Frame::DeviceState { id, state }) if layout.version >= 2 => {
                // No more states than the Hello named: memory stays bounded.
                if devices.len() >= layout.devices.len() {
                    let extra = Frame::DeviceState {
                        id,
                        state: Vec::new(),
                    };
                    return Err(unexpected("Complete", &extra));
                }
                devices.push(DeviceState { id, state })
            }
            Incoming::Frame(Frame::DiskData { disk, offset, data }) => {
                let (id, d) = disk_for(&disks, disk, offset, data.len() as u64)?;
                d.write_at(&data, offset)
                    .map_err(|source| MigrationError::Disk { id, source })?;
                stats.disk_bytes += data.len() as u64;
            }
            Incoming::Frame(Frame::DiskZero { disk, offset, len }) => {
                let (id, d) = disk_for(&disks, disk, offset, len)?;
                d.write_zeroes(offset, len)
                    .map_err(|source| MigrationError::Disk { id, source })?;
            }
            Incoming::Frame(Frame::Clock(bytes)) => {
                clock = Some(VmClockState::from_bytes(&bytes).map_err(RuntimeError::from)?)
            }
            Incoming::Frame(Frame::Complete { checksum }) => {
                break Ok::<_, MigrationError>(checksum)
            }
            Incoming::Frame(other) => return Err(unexpected("memory, state or Complete", &other)),
        }
    };
    let socket_bytes = sink.socket_bytes;
    let source_sum = applied?;
    let t0 = Instant::now();
    // Load everything; a failure tells the source why before giving up.
    // The source let go of its disk locks before Complete: take them.
    // Copied disks are made durable before the target confirms.
    let loaded = load_state(&vm, &layout, &devices, &vcpus, clock.as_ref(), source_sum)
        .and_then(|sum| vm.take_locks().map(|()| sum).map_err(MigrationError::from))
        .and_then(|sum| {
            for (id, d) in &disks {
                d.flush().map_err(|source| MigrationError::Disk {
                    id: id.clone(),
                    source,
                })?;
            }
            Ok(sum)
        });
    match loaded {
        Ok(sum) => stats.checksum = sum,
        Err(e) => {
            // Let go first, so the source can take its locks back.
            let _ = vm.release_locks();
            let _ = protocol::write_frame(rd.inner, Kind::Cancel, &[e.to_string().as_bytes()]);
            let _ = rd.inner.flush();
            return Err(e);
        }
    }
    let committed = confirm_and_wait_commit(&mut rd, stats.checksum);
    if let Err(e) = committed {
        let _ = vm.release_locks();
        return Err(e);
    }
    vm.start()?;
    stats.resume_time = t0.elapsed();
    stats.bytes_received = rd.n + socket_bytes;
    Ok(Received { vm, stats })
}
