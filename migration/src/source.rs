//! The source side: handshake, precopy passes over KVM's dirty log, then
//! pause, final pass, vCPU and clock state, and the completion handshake.
//! Any failure resumes the source exactly as it was.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use virtkit_core::runtime::feature_words;
use virtkit_core::runtime::local_disk::{SharedDisk, DISK_CHUNK};
use virtkit_core::runtime::{dirty_pages, RunState, RuntimeError, StateError, Vm};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::guest_io::{is_zero_in_place, send_all};
use crate::model::{
    MigrationError, MigrationOptions, MigrationPhase, MigrationStats, NonConvergencePolicy,
};
use crate::protocol::{self, Frame, Kind, PagesHeader, MAX_PAGES_PER_FRAME, PAGE_SIZE};
use crate::transport::MigrationStream;

/// Domain separation for the authentication MAC.
pub(crate) const AUTH_CONTEXT: &[u8] = b"virtkit-migration-v1";

/// How long a source whose migration failed after it handed its disk
/// locks over waits for the target to let go of them: the target drops
/// its half-built VM (and with it the locks) when the connection ends,
/// which may take a moment after the source sees the failure.
pub const LOCK_RECLAIM_TIMEOUT: Duration = Duration::from_secs(10);

/// What the source changed and must undo when the migration fails.
#[derive(Default)]
struct Undo {
    /// The VM was paused here.
    paused: bool,
    /// Its devices handed their host locks over.
    locks_released: bool,
}

/// Cancels a running migration from another thread: the source resumes as
/// if nothing happened, the target discards everything.
#[derive(Clone, Default)]
pub struct CancelHandle {
    flag: Arc<AtomicBool>,
    stream: Arc<Mutex<Option<Box<dyn MigrationStream>>>>,
}

impl CancelHandle {
    /// A handle not yet attached to a migration.
    pub fn new() -> Self {
        Self::default()
    }

    /// Cancel now. Blocked transfers fail at once.
    pub fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        if let Some(s) = self
            .stream
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            let _ = s.shutdown();
        }
    }

    /// Whether cancel was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    fn attach(&self, s: Box<dyn MigrationStream>) {
        *self.stream.lock().unwrap_or_else(|p| p.into_inner()) = Some(s);
        if self.is_cancelled() {
            self.cancel();
        }
    }
}

/// A progress report.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// Current phase.
    pub phase: MigrationPhase,
    /// Precopy pass.
    pub iteration: u32,
    /// Pages still dirty at the start of this pass.
    pub remaining_pages: u64,
    /// Bytes of migrating disks still dirty at the start of this pass
    /// (whole 64 KiB chunks; `BlockMigration`).
    pub remaining_disk_bytes: u64,
    /// Bytes written so far.
    pub bytes_sent: u64,
}

/// The HMAC the source proves the secret with.
pub(crate) fn auth_mac(
    secret: &[u8],
    nonce: &[u8; 32],
    hello: &[u8],
) -> Result<Hmac<Sha256>, MigrationError> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .map_err(|e| MigrationError::Precondition(format!("unusable secret: {e}")))?;
    mac.update(AUTH_CONTEXT);
    mac.update(nonce);
    mac.update(hello);
    Ok(mac)
}

/// xxh3 of all guest RAM, range by range.
pub fn memory_checksum(vm: &Vm) -> Result<u64, MigrationError> {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 1 << 20];
    for r in vm.ram_ranges() {
        let mut off = 0;
        while off < r.len {
            let n = (r.len - off).min(buf.len() as u64) as usize;
            vm.read_memory(r.guest_addr + off, &mut buf[..n])?;
            h.update(&buf[..n]);
            off += n as u64;
        }
    }
    Ok(h.digest())
}

struct Sender<'a> {
    vm: &'a Vm,
    stream: Box<dyn MigrationStream>,
    opts: &'a MigrationOptions,
    cancel: &'a CancelHandle,
    stats: MigrationStats,
    started: Instant,
    /// Pages copied out of RAM, for streams that are not sockets.
    buf: Vec<u8>,
    /// Per page of the chunk being sent: all zero?
    zero: Vec<bool>,
}

impl Sender<'_> {
    fn check_cancel(&self) -> Result<(), MigrationError> {
        if self.cancel.is_cancelled() {
            Err(MigrationError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn io(&self, e: std::io::Error) -> MigrationError {
        if self.cancel.is_cancelled() {
            MigrationError::Cancelled
        } else {
            MigrationError::Connection(e)
        }
    }

    fn frame(&mut self, kind: Kind, parts: &[&[u8]]) -> Result<(), MigrationError> {
        self.check_cancel()?;
        let len: usize = parts.iter().map(|p| p.len()).sum::<usize>() + 16;
        protocol::write_frame(&mut self.stream, kind, parts).map_err(|e| self.io(e))?;
        self.stats.bytes_sent += len as u64;
        self.throttle();
        Ok(())
    }

    /// Sleep as needed to stay under the bandwidth cap.
    fn throttle(&self) {
        let cap = self.opts.bandwidth_bytes_per_sec;
        if cap == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.stats.bytes_sent as f64 / cap as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep(due - elapsed);
        }
    }

    fn read(&mut self) -> Result<Frame, MigrationError> {
        match read_peer(&mut self.stream) {
            Err(MigrationError::Connection(e)) => Err(self.io(e)),
            other => other,
        }
    }

    /// Send the pages `[gpa, gpa + count * 4096)`, zero pages as markers,
    /// in frames of at most [`MAX_PAGES_PER_FRAME`] pages.
    fn send_run(&mut self, gpa: u64, count: u64) -> Result<(), MigrationError> {
        let mut done = 0;
        while done < count {
            let n = (count - done).min(u64::from(MAX_PAGES_PER_FRAME));
            self.send_chunk(gpa + done * PAGE_SIZE, n as usize)?;
            done += n;
        }
        Ok(())
    }

    /// Send at most one frame's worth of pages. Over a socket, pages are
    /// scanned for zeros where they lie and sent from guest RAM; other
    /// streams get a copy through `self.buf`.
    fn send_chunk(&mut self, base: u64, n: usize) -> Result<(), MigrationError> {
        let page = PAGE_SIZE as usize;
        let in_place = self.stream.as_socket().is_some();
        let memory = self.vm.memory();
        let guest = if in_place {
            Some(
                memory
                    .get_slice(GuestAddress(base), n * page)
                    .map_err(|e| guest_memory_error(base, n, e))?,
            )
        } else {
            self.buf.resize(n * page, 0);
            self.vm.read_memory(base, &mut self.buf)?;
            None
        };
        let page_slice = |i: usize| guest.as_ref().and_then(|g| g.subslice(i * page, page).ok());
        self.zero.clear();
        for i in 0..n {
            self.zero.push(match page_slice(i) {
                Some(p) => is_zero_in_place(&p),
                None => is_zero(&self.buf[i * page..(i + 1) * page]),
            });
        }
        // One frame per run of zero or of non-zero pages.
        let mut i = 0usize;
        while i < n {
            let zero = self.zero[i];
            let j = (i + 1..n).find(|&j| self.zero[j] != zero).unwrap_or(n);
            let h = PagesHeader {
                gpa: U64::new(base + (i * page) as u64),
                count: U32::new((j - i) as u32),
                reserved: U32::new(0),
            };
            if zero {
                self.frame(Kind::ZeroPages, &[h.as_bytes()])?;
                self.stats.zero_pages += (j - i) as u64;
            } else {
                match &guest {
                    Some(g) => {
                        let data = g
                            .subslice(i * page, (j - i) * page)
                            .map_err(|e| guest_memory_error(base, n, e.into()))?;
                        self.pages_in_place(&h, &data)?;
                    }
                    None => {
                        let data = std::mem::take(&mut self.buf);
                        let r = self.frame(Kind::Pages, &[h.as_bytes(), &data[i * page..j * page]]);
                        self.buf = data;
                        r?;
                    }
                }
                self.stats.pages_sent += (j - i) as u64;
            }
            i = j;
        }
        Ok(())
    }

    /// A Pages frame whose bytes go from guest RAM to the socket.
    fn pages_in_place<B: vm_memory::bitmap::BitmapSlice>(
        &mut self,
        h: &PagesHeader,
        data: &vm_memory::VolatileSlice<'_, B>,
    ) -> Result<(), MigrationError> {
        self.check_cancel()?;
        let payload = (std::mem::size_of::<PagesHeader>() + data.len()) as u64;
        let mut head = [0u8; 32];
        head[..16].copy_from_slice(protocol::frame_header(Kind::Pages, payload).as_bytes());
        head[16..].copy_from_slice(h.as_bytes());
        let Some(fd) = self.stream.as_socket() else {
            return Err(MigrationError::Precondition(
                "the stream stopped being a socket".into(),
            ));
        };
        send_all(fd, &head, data).map_err(|e| self.io(e))?;
        self.stats.bytes_sent += 16 + payload;
        self.throttle();
        Ok(())
    }

    /// Send a range whose touched pages are marked in `bits`: untouched runs
    /// as zero markers, touched runs read and sent.
    fn send_range_by_residency(
        &mut self,
        gpa: u64,
        pages: u64,
        bits: &[u64],
    ) -> Result<(), MigrationError> {
        let touched = |p: u64| {
            bits.get((p / 64) as usize)
                .is_some_and(|w| w & (1 << (p % 64)) != 0)
        };
        let mut p = 0;
        while p < pages {
            let t = touched(p);
            let mut q = p + 1;
            while q < pages && touched(q) == t && (t || q - p < u64::from(u32::MAX)) {
                q += 1;
            }
            let at = gpa + p * PAGE_SIZE;
            if t {
                self.send_run(at, q - p)?;
            } else {
                let h = PagesHeader {
                    gpa: U64::new(at),
                    count: U32::new((q - p) as u32),
                    reserved: U32::new(0),
                };
                self.frame(Kind::ZeroPages, &[h.as_bytes()])?;
                self.stats.zero_pages += q - p;
            }
            p = q;
        }
        Ok(())
    }

    /// Send every page whose bit is set, coalescing adjacent pages.
    fn send_bitmaps(
        &mut self,
        maps: &[virtkit_core::runtime::DirtyBitmap],
    ) -> Result<u64, MigrationError> {
        let mut total = 0;
        for m in maps {
            let mut run: Option<(u64, u64)> = None;
            for page in dirty_pages(&m.bits, m.guest_addr) {
                total += 1;
                run = match run {
                    Some((start, n)) if start + n * PAGE_SIZE == page => Some((start, n + 1)),
                    Some((start, n)) => {
                        self.send_run(start, n)?;
                        Some((page, 1))
                    }
                    None => Some((page, 1)),
                };
            }
            if let Some((start, n)) = run {
                self.send_run(start, n)?;
            }
        }
        Ok(total)
    }

    /// Send `[offset, offset + len)` of disk `index`, read 1 MiB at a
    /// time; each run of all-zero 64 KiB chunks goes as a DiskZero marker.
    fn send_disk_range(
        &mut self,
        index: u32,
        (id, disk): &(String, SharedDisk),
        offset: u64,
        len: u64,
    ) -> Result<(), MigrationError> {
        const PIECE: u64 = 1 << 20;
        let mut buf = std::mem::take(&mut self.buf);
        let r = (|| {
            let mut at = offset;
            while at < offset + len {
                let n = (offset + len - at).min(PIECE);
                buf.resize(n as usize, 0);
                disk.read_at(&mut buf, at)
                    .map_err(|source| MigrationError::Disk {
                        id: id.clone(),
                        source,
                    })?;
                let mut i = 0usize;
                while i < buf.len() {
                    let piece = |i: usize| &buf[i..(i + DISK_CHUNK as usize).min(buf.len())];
                    let zero = is_zero(piece(i));
                    let mut j = (i + DISK_CHUNK as usize).min(buf.len());
                    while j < buf.len() && is_zero(piece(j)) == zero {
                        j = (j + DISK_CHUNK as usize).min(buf.len());
                    }
                    let start = at + i as u64;
                    if zero {
                        let run = protocol::DiskZeroRun {
                            disk: U32::new(index),
                            reserved: U32::new(0),
                            offset: U64::new(start),
                            len: U64::new((j - i) as u64),
                        };
                        self.frame(Kind::DiskZero, &[run.as_bytes()])?;
                    } else {
                        let head = protocol::DiskDataHeader {
                            disk: U32::new(index),
                            reserved: U32::new(0),
                            offset: U64::new(start),
                        };
                        self.frame(Kind::DiskData, &[head.as_bytes(), &buf[i..j]])?;
                        self.stats.disk_bytes_sent += (j - i) as u64;
                    }
                    i = j;
                }
                at += n;
            }
            Ok(())
        })();
        self.buf = buf;
        r
    }

    /// Send the chunks marked in `dirty[i]` of each disk, adjacent
    /// chunks together.
    fn send_disk_chunks(
        &mut self,
        disks: &[(String, SharedDisk)],
        dirty: &[Vec<u64>],
    ) -> Result<(), MigrationError> {
        for (index, (d, bits)) in disks.iter().zip(dirty).enumerate() {
            let size = d.1.size();
            let mut run: Option<(u64, u64)> = None;
            // The set bits, as `dirty_pages` walks them, are chunk indices.
            for c in dirty_pages(bits, 0).map(|p| p / PAGE_SIZE) {
                let (start, end) = (c * DISK_CHUNK, ((c + 1) * DISK_CHUNK).min(size));
                run = match run {
                    Some((s, e)) if e == start => Some((s, end)),
                    Some((s, e)) => {
                        self.send_disk_range(index as u32, d, s, e - s)?;
                        Some((start, end))
                    }
                    None => Some((start, end)),
                };
            }
            if let Some((s, e)) = run {
                self.send_disk_range(index as u32, d, s, e - s)?;
            }
        }
        Ok(())
    }
}

fn count_chunks(dirty: &[Vec<u64>]) -> u64 {
    dirty
        .iter()
        .flatten()
        .map(|w| u64::from(w.count_ones()))
        .sum()
}

/// True when every byte is zero. The inner OR-fold over 64-byte chunks
/// vectorizes; the outer `all` stops at the first non-zero chunk.
pub fn is_zero(page: &[u8]) -> bool {
    page.chunks(64)
        .all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

/// Migrate the running `vm` over `stream`. On success the source VM has
/// been stopped (the target runs the guest); on any error it is running
/// again, unharmed, and the target has been told to discard everything.
pub fn migrate(
    vm: &Vm,
    stream: Box<dyn MigrationStream>,
    opts: &MigrationOptions,
    cancel: &CancelHandle,
    progress: &dyn Fn(&Progress),
) -> Result<MigrationStats, MigrationError> {
    if vm.state() != RunState::Running {
        return Err(MigrationError::Precondition(format!(
            "only a running VM can migrate; this one is {:?}",
            vm.state()
        )));
    }
    cancel.attach(
        stream
            .try_clone_stream()
            .map_err(MigrationError::Connection)?,
    );
    let mut s = Sender {
        vm,
        stream,
        opts,
        cancel,
        stats: MigrationStats::default(),
        started: Instant::now(),
        buf: Vec::new(),
        zero: Vec::with_capacity(MAX_PAGES_PER_FRAME as usize),
    };
    let mut undo = Undo::default();
    let mut result = run(&mut s, progress, &mut undo);
    for (_, disk) in vm.migrating_disks() {
        disk.stop_tracking();
    }
    if let Err(e) = &result {
        // Leave the source exactly as it was.
        let reclaim = if undo.locks_released {
            take_locks_back(vm).err()
        } else {
            None
        };
        if undo.paused {
            if let Err(r) = vm.resume() {
                log::error!("migration failed; the source resumed, but {r}");
            }
        }
        if let Err(d) = vm.set_dirty_logging(false) {
            log::warn!("could not turn dirty logging off: {d}");
        }
        if !matches!(
            e,
            MigrationError::Connection(_) | MigrationError::PeerCancelled(_)
        ) {
            let reason = e.to_string();
            let _ = protocol::write_frame(&mut s.stream, Kind::Cancel, &[reason.as_bytes()]);
            let _ = s.stream.flush();
        }
        let _ = s.stream.shutdown();
        progress(&Progress {
            phase: MigrationPhase::Failed,
            iteration: s.stats.iterations,
            remaining_pages: 0,
            remaining_disk_bytes: 0,
            bytes_sent: s.stats.bytes_sent,
        });
        if let Some(reclaim) = reclaim {
            log::error!("the source runs again without its disk locks: {reclaim}");
            result = result.map_err(|cause| MigrationError::LocksNotReclaimed {
                cause: Box::new(cause),
                reclaim,
            });
        }
    }
    result.map(|()| s.stats)
}

/// Take the disk locks back after a failed switchover, waiting up to
/// [`LOCK_RECLAIM_TIMEOUT`] for the target to let go of them.
fn take_locks_back(vm: &Vm) -> Result<(), RuntimeError> {
    let deadline = Instant::now() + LOCK_RECLAIM_TIMEOUT;
    loop {
        match vm.take_locks() {
            Err(RuntimeError::DeviceState {
                source: StateError::Locked(_),
                ..
            }) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            other => return other,
        }
    }
}

fn run(
    s: &mut Sender<'_>,
    progress: &dyn Fn(&Progress),
    undo: &mut Undo,
) -> Result<(), MigrationError> {
    let vm = s.vm;
    let report = |s: &Sender<'_>, phase, iteration, remaining_pages, remaining_disk_bytes| {
        progress(&Progress {
            phase,
            iteration,
            remaining_pages,
            remaining_disk_bytes,
            bytes_sent: s.stats.bytes_sent,
        })
    };
    // Handshake.
    report(s, MigrationPhase::PreparingTarget, 0, 0, 0);
    let disks = vm.migrating_disks();
    if let Some((id, d)) = disks
        .iter()
        .find(|(_, d)| d.size() % protocol::DISK_SECTOR != 0)
    {
        return Err(MigrationError::Precondition(format!(
            "migrating disk {id} is {} bytes, not a whole number of 512-byte sectors",
            d.size()
        )));
    }
    let disk_sizes: Vec<(String, u64)> =
        disks.iter().map(|(id, d)| (id.clone(), d.size())).collect();
    let ranges: Vec<(u64, u64)> = vm
        .ram_ranges()
        .iter()
        .map(|r| (r.guest_addr, r.len))
        .collect();
    let features: Vec<protocol::WireFeature> = vm
        .guest_features()
        .iter()
        .map(|w| protocol::WireFeature {
            leaf: U32::new(w.leaf),
            subleaf: U32::new(w.subleaf),
            reg: U32::new(feature_words::reg_number(w.reg)),
            value: U32::new(w.value),
        })
        .collect();
    let hello = protocol::hello_payload(
        u32::from(vm.config().vcpus),
        vm.config().memory_bytes,
        vm.cpuid_signature(),
        &ranges,
        &vm.device_state_ids(),
        &features,
        &disk_sizes,
    );
    s.frame(Kind::Hello, &[&hello])?;
    let nonce = match s.read()? {
        Frame::Challenge(n) => n,
        Frame::Reject(r) => return Err(MigrationError::Rejected(r)),
        f => return Err(unexpected("Challenge", &f)),
    };
    let mac = auth_mac(&s.opts.secret, &nonce, &hello)?
        .finalize()
        .into_bytes();
    s.frame(Kind::Auth, &[&mac])?;
    match s.read()? {
        Frame::Accept => {}
        Frame::Reject(r) => return Err(MigrationError::Rejected(r)),
        f => return Err(unexpected("Accept", &f)),
    }
    report(s, MigrationPhase::TargetReady, 0, 0, 0);

    // Precopy. Disks count toward the completion timeout, as the spec
    // says of BlockMigration.
    let memory: u64 = ranges.iter().map(|r| r.1).sum();
    let disk_bytes: u64 = disk_sizes.iter().map(|d| d.1).sum();
    let completion = Duration::from_secs(
        s.opts
            .completion_timeout_per_gib
            .saturating_mul((memory + disk_bytes).div_ceil(1 << 30).max(1)),
    );
    vm.set_dirty_logging(true)?;
    let _ = vm.take_dirty_pages()?; // start clean: pass 0 sends everything
    for (_, d) in &disks {
        d.start_tracking();
    }
    report(
        s,
        MigrationPhase::Running,
        0,
        memory / PAGE_SIZE,
        disk_bytes,
    );
    let mut pass_start = Instant::now();
    // Never-touched memory is zero: send markers without reading it (reading
    // would fault in every page). Logging is already on, so a page touched
    // after this snapshot is in the next pass's dirty set.
    let touched = vm.touched_pages();
    for (i, &(gpa, len)) in ranges.iter().enumerate() {
        match touched.as_ref().and_then(|t| t.get(i)) {
            Some(bits) => s.send_range_by_residency(gpa, len / PAGE_SIZE, bits)?,
            None => s.send_run(gpa, len / PAGE_SIZE)?,
        }
    }
    for (index, disk) in disks.iter().enumerate() {
        s.send_disk_range(index as u32, disk, 0, disk.1.size())?;
    }
    s.frame(
        Kind::IterationDone,
        &[iteration_done(0, memory / PAGE_SIZE).as_slice()],
    )?;
    s.stats.iterations = 1;
    let mut best_remaining = u64::MAX;
    let mut last_progress = Instant::now();
    let (maps, disk_dirty) = loop {
        let maps = vm.take_dirty_pages()?;
        let disk_dirty: Vec<Vec<u64>> = disks.iter().map(|(_, d)| d.take_dirty()).collect();
        let dirty: u64 = maps.iter().map(|m| m.count()).sum();
        let dirty_disk = count_chunks(&disk_dirty) * DISK_CHUNK;
        let pass_time = pass_start.elapsed().as_secs_f64().max(1e-6);
        s.stats.dirty_rate_pages_per_sec = dirty as f64 / pass_time;
        let elapsed = s.started.elapsed().as_secs_f64().max(1e-6);
        s.stats.bandwidth_bytes_per_sec = s.stats.bytes_sent as f64 / elapsed;
        report(
            s,
            MigrationPhase::Running,
            s.stats.iterations,
            dirty,
            dirty_disk,
        );
        let remaining_bytes = dirty * (PAGE_SIZE + 16) + dirty_disk;
        let eta = remaining_bytes as f64 / s.stats.bandwidth_bytes_per_sec;
        if eta <= s.opts.max_downtime.as_secs_f64() {
            break (maps, disk_dirty);
        }
        if remaining_bytes < best_remaining {
            best_remaining = remaining_bytes;
            last_progress = Instant::now();
        } else if last_progress.elapsed() > s.opts.progress_timeout {
            return Err(MigrationError::ProgressTimeout(s.opts.progress_timeout));
        }
        if s.started.elapsed() > completion {
            return Err(MigrationError::CompletionTimeout(completion));
        }
        if s.stats.iterations >= s.opts.max_iterations {
            match s.opts.on_non_convergence {
                NonConvergencePolicy::ForceSwitchover => break (maps, disk_dirty),
                NonConvergencePolicy::Abort => {
                    return Err(MigrationError::NotConverging {
                        iterations: s.stats.iterations,
                        dirty_pages: dirty,
                        bandwidth_mib_s: s.stats.bandwidth_bytes_per_sec / f64::from(1 << 20),
                    })
                }
            }
        }
        pass_start = Instant::now();
        let sent = s.send_bitmaps(&maps)?;
        s.send_disk_chunks(&disks, &disk_dirty)?;
        s.frame(
            Kind::IterationDone,
            &[iteration_done(s.stats.iterations, sent).as_slice()],
        )?;
        s.stats.iterations += 1;
    };

    // Switchover: pause, final pass, state.
    let t0 = Instant::now();
    vm.pause()?;
    undo.paused = true;
    let t1 = Instant::now();
    // Pages dirtied since `maps` was taken, plus `maps` itself.
    let rest = vm.take_dirty_pages()?;
    let mut sent = s.send_bitmaps(&maps)?;
    sent += s.send_bitmaps(&rest)?;
    // Disk chunks likewise: the last set, then what was written since.
    let disk_rest: Vec<Vec<u64>> = disks.iter().map(|(_, d)| d.take_dirty()).collect();
    s.send_disk_chunks(&disks, &disk_dirty)?;
    s.send_disk_chunks(&disks, &disk_rest)?;
    s.frame(
        Kind::IterationDone,
        &[iteration_done(s.stats.iterations, sent).as_slice()],
    )?;
    s.stats.iterations += 1;
    let t2 = Instant::now();
    let checksum = if s.opts.verify_checksum {
        memory_checksum(vm)?
    } else {
        0
    };
    for device in vm.save_devices()? {
        let head = protocol::device_state_head(&device.id);
        s.frame(Kind::DeviceState, &[&head, &device.state])?;
    }
    for state in vm.save_vcpus()? {
        s.frame(Kind::VcpuState, &[state.to_bytes()])?;
    }
    let clock = vm.save_clock()?;
    s.frame(Kind::Clock, &[zerocopy::IntoBytes::as_bytes(&clock)])?;
    // Shared storage: flush and hand the disk locks over; the target
    // takes them before it confirms.
    undo.locks_released = true;
    vm.release_locks()?;
    s.frame(Kind::Complete, &[&checksum.to_le_bytes()])?;
    s.stream.flush().map_err(|e| s.io(e))?;
    match s.read()? {
        Frame::Confirm { checksum: theirs } => {
            if checksum != 0 && theirs != checksum {
                return Err(MigrationError::ChecksumMismatch {
                    source_sum: checksum,
                    target: theirs,
                });
            }
        }
        f => return Err(unexpected("Confirm", &f)),
    }
    // Point of no return: the target holds everything and waits for Commit.
    s.check_cancel()?;
    protocol::write_frame(&mut s.stream, Kind::Commit, &[]).map_err(|e| s.io(e))?;
    s.stream.flush().map_err(|e| s.io(e))?;
    let t3 = Instant::now();
    let _ = vm.set_dirty_logging(false);
    let _ = vm.stop();
    s.stats.checksum = (checksum != 0).then_some(checksum);
    s.stats.downtime = crate::model::Downtime {
        pause: t1 - t0,
        final_copy: t2 - t1,
        state_transfer: t3 - t2,
        total: t3 - t0,
    };
    s.stats.total_time = s.started.elapsed();
    report(s, MigrationPhase::Succeeded, s.stats.iterations, 0, 0);
    Ok(())
}

fn guest_memory_error(base: u64, pages: usize, e: vm_memory::GuestMemoryError) -> MigrationError {
    MigrationError::Vm(virtkit_core::runtime::RuntimeError::GuestMemory(format!(
        "{pages} pages at {base:#x}: {e}"
    )))
}

fn iteration_done(iteration: u32, pages: u64) -> Vec<u8> {
    protocol::IterationDone {
        iteration: U32::new(iteration),
        reserved: U32::new(0),
        pages: U64::new(pages),
    }
    .as_bytes()
    .to_vec()
}

/// Read the peer's next frame; its Cancel becomes `PeerCancelled`, a
/// failed read `Connection`.
pub(crate) fn read_peer(r: &mut dyn std::io::Read) -> Result<Frame, MigrationError> {
    peer_frame(protocol::read_frame(r))
}

/// [`read_peer`] on the destination, with memory frames applied to `sink`.
pub(crate) fn read_peer_into(
    r: &mut dyn std::io::Read,
    sink: &mut dyn protocol::PageSink,
) -> Result<protocol::Incoming, MigrationError> {
    match protocol::read_frame_into(r, sink) {
        Ok(protocol::Incoming::Frame(f)) => peer_frame(Ok(f)).map(protocol::Incoming::Frame),
        Ok(memory) => Ok(memory),
        Err(e) => peer_frame(Err(e)).map(protocol::Incoming::Frame),
    }
}

fn peer_frame(r: Result<Frame, protocol::ProtocolError>) -> Result<Frame, MigrationError> {
    match r {
        Ok(Frame::Cancel(reason)) => Err(MigrationError::PeerCancelled(reason)),
        Ok(f) => Ok(f),
        Err(protocol::ProtocolError::Io(e)) => Err(MigrationError::Connection(e)),
        Err(e) => Err(e.into()),
    }
}

pub(crate) fn unexpected(wanted: &str, got: &Frame) -> MigrationError {
    let name = format!("{got:?}");
    let name = name
        .split([' ', '(', '{'])
        .next()
        .unwrap_or("?")
        .to_string();
    MigrationError::Protocol(protocol::ProtocolError::Malformed(format!(
        "expected {wanted}, got {name}"
    )))
}
