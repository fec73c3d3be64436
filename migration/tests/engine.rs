//! Precopy migration between two real KVM VMs in one process, over a unix
//! socketpair, while the guest counts and rewrites pages; and every way it
//! can fail, each leaving the source running and the target empty.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use virtkit_core::payload::{self, COUNTER_ADDR};
use virtkit_core::runtime::{RunState, Vm, VmBuilder, VmConfig};
use virtkit_devices::block::{
    open_disk, BlockBackend, BlockError, DiskOptions, RawFile, TrackedDisk,
};
use virtkit_devices::pci::{MsiSink, PciBus, PciLayout};
use virtkit_devices::virtio::block::{BlockConfig, VirtioBlock};
use virtkit_devices::virtio::pci::VirtioPciDevice;
use virtkit_migration::destination::{receive, Received};
use virtkit_migration::protocol::{self, Kind};
use virtkit_migration::source::{migrate, CancelHandle};
use virtkit_migration::transport::MigrationStream;
use virtkit_migration::{MigrationError, MigrationOptions, MigrationPhase, NonConvergencePolicy};

const SECRET: &[u8] = b"shared out of band";

fn kvm_present() -> bool {
    let ok = std::path::Path::new("/dev/kvm").exists();
    if !ok {
        eprintln!("SKIP: /dev/kvm is absent; migration tests need KVM");
    }
    ok
}

fn counter(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_memory(COUNTER_ADDR, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn wait_counter(vm: &Vm, above: u64) -> u64 {
    let t = Instant::now();
    loop {
        let c = counter(vm);
        if c > above {
            return c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "counter stuck at {c}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A running source VM whose guest rewrites `pages` pages in a loop.
fn source(pages: u32) -> Vm {
    source_from(source_builder(), pages)
}

/// How [`source`] builds its VM: 2 vCPUs, 8 MiB.
fn source_builder() -> VmBuilder {
    VmBuilder::new(VmConfig {
        name: "src".into(),
        vcpus: 2,
        memory_bytes: 8 << 20,
    })
}

/// [`source`] from `builder`.
fn source_from(builder: VmBuilder, pages: u32) -> Vm {
    let vm = builder.build().unwrap();
    payload::touch_pages(pages, None, 0)
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    wait_counter(&vm, 100);
    vm
}

fn spawn_target(
    stream: UnixStream,
    secret: &'static [u8],
) -> JoinHandle<Result<Received, MigrationError>> {
    spawn_target_on(Box::new(stream), secret)
}

fn spawn_target_on(
    stream: Box<dyn MigrationStream>,
    secret: &'static [u8],
) -> JoinHandle<Result<Received, MigrationError>> {
    std::thread::spawn(move || {
        receive(stream, secret, |layout| {
            VmBuilder::new(layout.vm_config("dst")).build()
        })
    })
}

fn opts() -> MigrationOptions {
    MigrationOptions {
        bandwidth_bytes_per_sec: 0,
        max_downtime: Duration::from_millis(50),
        secret: SECRET.to_vec(),
        verify_checksum: true,
        ..MigrationOptions::default()
    }
}

/// Migrate `src` to a fresh target expecting failure; check that the
/// target discarded everything and the source runs on. Returns the
/// source's error and the target's.
fn failed_migration(
    src: &Vm,
    target_secret: &'static [u8],
    o: &MigrationOptions,
    cancel: &CancelHandle,
    progress: &dyn Fn(&virtkit_migration::source::Progress),
) -> (MigrationError, MigrationError) {
    let (a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, target_secret);
    let e = migrate(src, Box::new(a), o, cancel, progress).unwrap_err();
    let Err(target_error) = target.join().unwrap() else {
        panic!("the target must discard: {e}");
    };
    assert_source_unharmed(src);
    (e, target_error)
}

fn assert_source_unharmed(vm: &Vm) {
    assert_eq!(vm.state(), RunState::Running);
    let c = counter(vm);
    wait_counter(vm, c);
}

/// A connection that does not expose its socket, so pages travel through
/// `Read`/`Write` and a buffer on both sides (what a TLS stream or a
/// user's own transport gets).
struct NotASocket(UnixStream);

impl Read for NotASocket {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(b)
    }
}

impl Write for NotASocket {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl MigrationStream for NotASocket {
    fn shutdown(&self) -> std::io::Result<()> {
        self.0.shutdown(std::net::Shutdown::Both)
    }
    fn try_clone_stream(&self) -> std::io::Result<Box<dyn MigrationStream>> {
        Ok(Box::new(NotASocket(self.0.try_clone()?)))
    }
}

#[test]
fn guest_moves_and_continues_its_count_with_identical_memory() {
    if !kvm_present() {
        return;
    }
    let (a, b) = UnixStream::pair().unwrap();
    migrate_and_check(Box::new(a), Box::new(b));
}

#[test]
fn a_stream_that_is_not_a_socket_moves_pages_through_buffers() {
    if !kvm_present() {
        return;
    }
    let (a, b) = UnixStream::pair().unwrap();
    assert!(NotASocket(a.try_clone().unwrap()).as_socket().is_none());
    migrate_and_check(Box::new(NotASocket(a)), Box::new(NotASocket(b)));
}

/// Migrate a guest rewriting 256 pages over `a` (source end) and `b`, and
/// check the memory checksums, the phases, the counts and that the guest
/// counts on where it was paused.
fn migrate_and_check(a: Box<dyn MigrationStream>, b: Box<dyn MigrationStream>) {
    let src = source(256);
    let target = spawn_target_on(b, SECRET);
    let phases = std::sync::Mutex::new(Vec::new());
    let stats = migrate(&src, a, &opts(), &CancelHandle::new(), &|p| {
        let mut v = phases.lock().unwrap();
        if v.last() != Some(&p.phase) {
            v.push(p.phase);
        }
    })
    .unwrap();
    let got = target.join().unwrap().unwrap();
    // The source let go; its last count is where the guest was paused.
    assert_eq!(src.state(), RunState::Exited);
    let paused_at = counter(&src);
    // Memory at the pause on the source == memory before resume on the target.
    assert!(stats.checksum.is_some());
    assert_eq!(stats.checksum, Some(got.stats.checksum));
    // The guest continues from where it was.
    let later = wait_counter(&got.vm, paused_at + 50);
    assert!(later > paused_at + 50);
    assert_eq!(
        *phases.lock().unwrap(),
        vec![
            MigrationPhase::PreparingTarget,
            MigrationPhase::TargetReady,
            MigrationPhase::Running,
            MigrationPhase::Succeeded
        ]
    );
    assert!(stats.iterations >= 2, "{stats:?}");
    assert!(
        stats.zero_pages > 1000,
        "zero pages are sent as markers: {stats:?}"
    );
    assert!(stats.pages_sent >= 256);
    assert!(stats.downtime.total >= stats.downtime.final_copy);
    assert_eq!(
        got.stats.pages + got.stats.zero_pages,
        stats.pages_sent + stats.zero_pages
    );
    got.vm.stop().unwrap();
}

#[test]
fn wrong_secret_is_refused_before_any_page() {
    if !kvm_present() {
        return;
    }
    let src = source(16);
    let (e, t) = failed_migration(
        &src,
        b"another secret",
        &opts(),
        &CancelHandle::new(),
        &|_| {},
    );
    assert!(
        matches!(&e, MigrationError::Rejected(r) if r.contains("authentication failed")),
        "{e}"
    );
    assert!(matches!(t, MigrationError::Rejected(_)), "{t}");
}

#[test]
fn wrong_version_is_refused() {
    if !kvm_present() {
        return;
    }
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let mut hello = protocol::hello_payload(1, 8 << 20, 0, &[(0, 8 << 20)], &[], &[], &[]);
    hello[8..12].copy_from_slice(&99u32.to_le_bytes());
    protocol::write_frame(&mut a, Kind::Hello, &[&hello]).unwrap();
    match protocol::read_frame(&mut a).unwrap() {
        protocol::Frame::Reject(r) => assert!(r.contains("version 99"), "{r}"),
        f => panic!("{f:?}"),
    }
    assert!(matches!(
        target.join().unwrap(),
        Err(MigrationError::Rejected(_))
    ));
}

/// The devices with state every VM has.
fn standard_devices() -> Vec<String> {
    use virtkit_core::runtime::snapshot::{COM1_ID, PLATFORM_ID, PM1A_ID};
    [PLATFORM_ID, COM1_ID, PM1A_ID].map(String::from).to_vec()
}

/// Play the source's side of the handshake by hand with `hello`, up to
/// the target's Accept.
fn handshake(a: &mut UnixStream, hello: &[u8]) {
    assert_eq!(hello_and_auth(a, hello), protocol::Frame::Accept);
}

/// Send `hello` and the right Auth; the target's answer.
fn hello_and_auth(a: &mut UnixStream, hello: &[u8]) -> protocol::Frame {
    protocol::write_frame(a, Kind::Hello, &[hello]).unwrap();
    let nonce = match protocol::read_frame(a).unwrap() {
        protocol::Frame::Challenge(n) => n,
        f => panic!("{f:?}"),
    };
    use hmac::Mac;
    let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(SECRET).unwrap();
    mac.update(b"virtkit-migration-v1");
    mac.update(&nonce);
    mac.update(hello);
    protocol::write_frame(a, Kind::Auth, &[&mac.finalize().into_bytes()]).unwrap();
    protocol::read_frame(a).unwrap()
}

#[test]
fn a_version_1_stream_is_still_read() {
    if !kvm_present() {
        return;
    }
    // What the previous release sends: a Hello of version 1 (no device
    // ids), memory, vCPU states and the clock, no DeviceState frames.
    let src = VmBuilder::new(VmConfig {
        name: "v1".into(),
        vcpus: 1,
        memory_bytes: 8 << 20,
    })
    .build()
    .unwrap();
    payload::touch_pages(16, None, 0)
        .unwrap()
        .load(&src)
        .unwrap();
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let mut hello = protocol::hello_payload(1, 8 << 20, 0, &[(0, 8 << 20)], &[], &[], &[]);
    hello[8..12].copy_from_slice(&1u32.to_le_bytes());
    hello.truncate(hello.len() - 8); // no feature words or disks before version 3
    handshake(&mut a, &hello);
    let mut ram = vec![0u8; 8 << 20];
    src.read_memory(0, &mut ram).unwrap();
    for (i, chunk) in ram.chunks(1024 * 4096).enumerate() {
        let mut head = Vec::new();
        head.extend_from_slice(&(i as u64 * 1024 * 4096).to_le_bytes());
        head.extend_from_slice(&1024u32.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes());
        protocol::write_frame(&mut a, Kind::Pages, &[&head, chunk]).unwrap();
    }
    for v in src.save_vcpus().unwrap() {
        protocol::write_frame(&mut a, Kind::VcpuState, &[v.to_bytes()]).unwrap();
    }
    let clock = src.save_clock().unwrap();
    protocol::write_frame(
        &mut a,
        Kind::Clock,
        &[zerocopy::IntoBytes::as_bytes(&clock)],
    )
    .unwrap();
    protocol::write_frame(&mut a, Kind::Complete, &[&0u64.to_le_bytes()]).unwrap();
    assert!(matches!(
        protocol::read_frame(&mut a).unwrap(),
        protocol::Frame::Confirm { .. }
    ));
    protocol::write_frame(&mut a, Kind::Commit, &[]).unwrap();
    let got = target.join().unwrap().unwrap();
    wait_counter(&got.vm, 100);
    got.vm.stop().unwrap();

    // A DeviceState frame has no place in a version-1 stream.
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    handshake(&mut a, &hello);
    let head = protocol::device_state_head("com1");
    protocol::write_frame(&mut a, Kind::DeviceState, &[&head, b"x"]).unwrap();
    let e = target.join().unwrap().err().unwrap();
    assert!(e.to_string().contains("DeviceState"), "{e}");
}

/// A feature this host gives guests that a CPU config can take away.
fn a_host_feature() -> &'static str {
    let host = virtkit_core::runtime::cpu::host_cpu_info().unwrap();
    ["sse4.2", "popcnt", "pcid", "x2apic", "avx", "movbe", "aes"]
        .into_iter()
        .find(|f| host.features.contains(f))
        .expect("the host offers none of the usual features")
}

fn without(feature: &str) -> virtkit_core::runtime::CpuConfig {
    virtkit_core::runtime::CpuConfig {
        features: vec![(
            feature.to_string(),
            virtkit_core::spec::vmi::CpuFeaturePolicy::Disable,
        )],
        ..virtkit_core::runtime::CpuConfig::flat(2)
    }
}

#[test]
fn a_target_without_a_cpu_feature_the_guest_uses_is_refused_naming_it() {
    if !kvm_present() {
        return;
    }
    let feature = a_host_feature();
    let src = source(16);
    let (a, b) = UnixStream::pair().unwrap();
    let target = std::thread::spawn(move || {
        receive(Box::new(b), SECRET, |layout| {
            VmBuilder::new(layout.vm_config("dst"))
                .cpu(without(feature))
                .build()
        })
    });
    let e = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
    assert!(
        matches!(&e, MigrationError::Rejected(m) if m.contains("lack CPU features") && m.contains(feature)),
        "{e}"
    );
    assert!(target.join().unwrap().is_err());
    assert_source_unharmed(&src);
    src.stop().unwrap();

    // The other way round the target offers more than the guest uses,
    // which is no obstacle: the guest moves and counts on.
    let src = source_from(source_builder().cpu(without(feature)), 16);
    let (a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap();
    let got = target.join().unwrap().unwrap();
    let c = counter(&got.vm);
    wait_counter(&got.vm, c);
    got.vm.stop().unwrap();
}

#[test]
fn a_version_2_hello_is_checked_by_its_cpuid_hash() {
    if !kvm_present() {
        return;
    }
    let probe = VmBuilder::new(VmConfig {
        name: "probe".into(),
        vcpus: 1,
        memory_bytes: 8 << 20,
    })
    .build()
    .unwrap();
    let v2_hello = |hash: u64| {
        let mut h = protocol::hello_payload(
            1,
            8 << 20,
            hash,
            &[(0, 8 << 20)],
            &standard_devices(),
            &[],
            &[],
        );
        h[8..12].copy_from_slice(&2u32.to_le_bytes());
        h.truncate(h.len() - 8);
        h
    };
    // The same host's hash is accepted…
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    handshake(&mut a, &v2_hello(probe.cpuid_signature()));
    protocol::write_frame(&mut a, Kind::Cancel, &[b"test over"]).unwrap();
    assert!(target.join().unwrap().is_err());
    // …another host's is refused, as version 2 targets refused it.
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    match hello_and_auth(&mut a, &v2_hello(probe.cpuid_signature() ^ 1)) {
        protocol::Frame::Reject(r) => assert!(r.contains("CPUID signatures"), "{r}"),
        f => panic!("{f:?}"),
    }
    assert!(target.join().unwrap().is_err());
}

#[test]
fn a_ticking_guest_keeps_its_interrupt_controllers_and_timer() {
    if !kvm_present() {
        return;
    }
    // The guest counts PIT interrupts through the PIC: it only goes on
    // counting on the target if their state moved with it.
    let src = VmBuilder::new(VmConfig {
        name: "ticks".into(),
        vcpus: 1,
        memory_bytes: 8 << 20,
    })
    .build()
    .unwrap();
    payload::pit_ticks(1193).unwrap().load(&src).unwrap();
    src.serial_input(b"unread").unwrap();
    src.start().unwrap();
    wait_counter(&src, 20);
    let (a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let stats = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap();
    let got = target.join().unwrap().unwrap();
    assert_eq!(stats.checksum, Some(got.stats.checksum));
    let paused_at = counter(&src);
    let later = wait_counter(&got.vm, paused_at + 20);
    assert!(later > paused_at + 20);
    got.vm.pause().unwrap();
    let com1 = got
        .vm
        .save_devices()
        .unwrap()
        .into_iter()
        .find(|d| d.id == "com1")
        .unwrap();
    assert!(com1.state.windows(6).any(|w| w == b"unread"));
    got.vm.stop().unwrap();
}

#[test]
fn a_target_with_other_devices_is_refused_before_any_page() {
    if !kvm_present() {
        return;
    }
    struct Nothing;
    impl virtkit_core::runtime::Snapshot for Nothing {
        fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
            Ok(Vec::new())
        }
        fn restore_state(&mut self, _: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
            Ok(())
        }
    }
    let src = source(16);
    let (a, b) = UnixStream::pair().unwrap();
    let target = std::thread::spawn(move || {
        receive(Box::new(b), SECRET, |layout| {
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            vm.add_device_state("disk/0", Arc::new(std::sync::Mutex::new(Nothing)))?;
            Ok(vm)
        })
    });
    let e = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
    assert!(
        matches!(&e, MigrationError::Rejected(r) if r.contains("no state for disk/0")),
        "{e}"
    );
    assert!(target.join().unwrap().is_err());
    assert_source_unharmed(&src);
    src.stop().unwrap();
}

/// A device whose blob is one byte; restoring refuses anything but 1.
struct Picky(u8);
impl virtkit_core::runtime::Snapshot for Picky {
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        Ok(vec![self.0])
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        match state {
            [1] => Ok(()),
            _ => Err(virtkit_core::runtime::StateError::Corrupt(
                "picky wants 1".into(),
            )),
        }
    }
}

#[test]
fn a_device_state_the_target_refuses_cancels_and_the_source_runs_on() {
    if !kvm_present() {
        return;
    }
    for (sent, ok) in [(1u8, true), (7, false)] {
        let src = source(16);
        src.add_device_state("picky", Arc::new(std::sync::Mutex::new(Picky(sent))))
            .unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let target = std::thread::spawn(move || {
            receive(Box::new(b), SECRET, |layout| {
                assert!(layout.devices.iter().any(|d| d == "picky"));
                let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
                vm.add_device_state("picky", Arc::new(std::sync::Mutex::new(Picky(0))))?;
                Ok(vm)
            })
        });
        let r = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {});
        let t = target.join().unwrap();
        if ok {
            r.unwrap();
            t.unwrap().vm.stop().unwrap();
            continue;
        }
        let e = r.unwrap_err();
        assert!(
            matches!(&e, MigrationError::PeerCancelled(m) if m.contains("picky wants 1")),
            "{e}"
        );
        assert!(t.is_err());
        assert_source_unharmed(&src);
        src.stop().unwrap();
    }
}

/// A device that works on a thread of its own, as a NIC's receive side
/// or a disk's I/O thread does: it does `work(n)` for a rising count `n`,
/// and stops while the VM is paused. Its state is the count.
struct Stamper {
    work: Arc<dyn Fn(u64) + Send + Sync>,
    count: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

const STAMP_ADDR: u64 = 0x70_0000;

impl Stamper {
    /// Stamps the count into one guest word.
    fn new(vm: &Vm) -> Self {
        let memory = vm.memory().clone();
        Self::doing(move |n| {
            use vm_memory::Bytes;
            memory
                .write_obj(n, vm_memory::GuestAddress(STAMP_ADDR))
                .unwrap();
        })
    }

    fn doing(work: impl Fn(u64) + Send + Sync + 'static) -> Self {
        Stamper {
            work: Arc::new(work),
            count: Arc::default(),
            stop: Arc::default(),
            thread: None,
        }
    }

    fn start(&mut self) {
        if self.thread.is_some() {
            return;
        }
        let (work, count, stop) = (self.work.clone(), self.count.clone(), self.stop.clone());
        stop.store(false, Ordering::SeqCst);
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                work(count.fetch_add(1, Ordering::SeqCst) + 1);
                std::thread::yield_now();
            }
        }));
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Stamper {
    fn drop(&mut self) {
        self.halt();
    }
}

impl virtkit_core::runtime::Snapshot for Stamper {
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        Ok(self.count.load(Ordering::SeqCst).to_le_bytes().to_vec())
    }
    fn restore_state(&mut self, state: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        let bytes: [u8; 8] = state
            .try_into()
            .map_err(|_| virtkit_core::runtime::StateError::Corrupt("8 bytes".into()))?;
        self.count
            .store(u64::from_le_bytes(bytes), Ordering::SeqCst);
        Ok(())
    }
    fn pause(&mut self) {
        self.halt();
    }
    fn resume(&mut self) -> Result<(), virtkit_core::runtime::StateError> {
        self.start();
        Ok(())
    }
}

fn stamp(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_memory(STAMP_ADDR, &mut b).unwrap();
    u64::from_le_bytes(b)
}

#[test]
fn a_device_writing_guest_memory_on_its_own_holds_still_from_the_pause() {
    if !kvm_present() {
        return;
    }
    let src = source(16);
    let stamper = Arc::new(std::sync::Mutex::new(Stamper::new(&src)));
    stamper.lock().unwrap().start();
    src.add_device_state("stamper", stamper.clone()).unwrap();
    let count = stamper.lock().unwrap().count.clone();
    let wait_count = |above: u64| {
        let t = Instant::now();
        while count.load(Ordering::SeqCst) <= above {
            assert!(t.elapsed() < Duration::from_secs(10), "the stamper stopped");
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_count(1000);

    // A target that refuses the state: the source resumes, and so does
    // its device.
    let (a, b) = UnixStream::pair().unwrap();
    let target = std::thread::spawn(move || {
        receive(Box::new(b), SECRET, |layout| {
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            vm.add_device_state("stamper", Arc::new(std::sync::Mutex::new(Picky(0))))?;
            Ok(vm)
        })
    });
    migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
    assert!(target.join().unwrap().is_err());
    assert_source_unharmed(&src);
    wait_count(count.load(Ordering::SeqCst) + 1000);

    // A real target. The device stopped at the pause, so the final pass
    // carried its last write, which is the count it saved: the word on
    // the target equals that count exactly (a device still writing after
    // the final pass would leave the target behind its own state).
    let (a, b) = UnixStream::pair().unwrap();
    let target = std::thread::spawn(move || {
        let mut device = None;
        let r = receive(Box::new(b), SECRET, |layout| {
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            let d = Arc::new(std::sync::Mutex::new(Stamper::new(&vm)));
            vm.add_device_state("stamper", d.clone())?;
            device = Some(d);
            Ok(vm)
        });
        (r, device)
    });
    let stats = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap();
    let (got, device) = target.join().unwrap();
    let got = got.unwrap();
    assert_eq!(stats.checksum, Some(got.stats.checksum));
    let saved = count.load(Ordering::SeqCst);
    assert!(saved > 2000);
    assert_eq!(stamp(&got.vm), saved, "the target's memory");
    let restored = device.unwrap().lock().unwrap().count.load(Ordering::SeqCst);
    assert_eq!(restored, saved, "the target's device");
    assert_eq!(stamp(&src), saved, "nothing wrote after the pause");
    got.vm.stop().unwrap();
}

struct NoMsi;
impl MsiSink for NoMsi {
    fn send(&self, _: u64, _: u32) {}
}

/// A PCI bus with one virtio-blk device over `image`, and the disk.
fn disk_bus(
    vm: &Vm,
    image: &std::path::Path,
    options: DiskOptions,
) -> (Arc<std::sync::Mutex<PciBus>>, Arc<dyn BlockBackend>) {
    let disk: Arc<dyn BlockBackend> = open_disk(image, options).unwrap().into();
    let blk = VirtioBlock::new(disk.clone(), BlockConfig::default());
    let dev = VirtioPciDevice::new(Box::new(blk), vm.memory().clone(), Arc::new(NoMsi)).unwrap();
    let bus = PciBus::new(PciLayout::for_memory(8 << 20));
    bus.add_at(3, Arc::new(std::sync::Mutex::new(dev))).unwrap();
    (Arc::new(std::sync::Mutex::new(bus)), disk)
}

fn is_locked(image: &std::path::Path) -> bool {
    matches!(
        open_disk(image, DiskOptions::default()),
        Err(BlockError::Locked { .. })
    )
}

const INCOMING: DiskOptions = DiskOptions {
    read_only: false,
    shareable: false,
    incoming: true,
};

/// A source with a disk on "shared storage" (a file both VMs open),
/// which it has written to.
fn source_with_disk(image: &std::path::Path) -> (Vm, Arc<dyn BlockBackend>) {
    std::fs::write(image, vec![0u8; 1 << 20]).unwrap();
    let src = source(16);
    let (bus, disk) = disk_bus(&src, image, DiskOptions::default());
    src.add_device_state("pci", bus).unwrap();
    disk.write_at(b"written on the source", 0).unwrap();
    (src, disk)
}

#[test]
fn a_disk_on_shared_storage_changes_hands_at_the_switchover() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.raw");
    let (src, src_disk) = source_with_disk(&image);
    assert!(is_locked(&image), "an ordinary open is refused");
    let (a, b) = UnixStream::pair().unwrap();
    let target_image = image.clone();
    let target = std::thread::spawn(move || {
        let mut disk = None;
        let r = receive(Box::new(b), SECRET, |layout| {
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            // Opened while the source still runs and holds the lock.
            let (bus, d) = disk_bus(&vm, &target_image, INCOMING);
            vm.add_device_state("pci", bus)?;
            disk = Some(d);
            Ok(vm)
        });
        (r, disk)
    });
    migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap();
    let (got, disk) = target.join().unwrap();
    let (got, disk) = (got.unwrap(), disk.unwrap());
    // The target holds the image now: it reads what the source wrote and
    // writes; the source may not, and neither may anyone else.
    let mut buf = [0u8; 21];
    disk.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"written on the source");
    disk.write_at(b"written on the target", 512).unwrap();
    assert!(src_disk.write_at(b"late", 0).is_err());
    assert!(is_locked(&image));
    // The lock goes with the target VM.
    got.vm.stop().unwrap();
    drop((got, disk));
    assert!(!is_locked(&image), "the target VM let go when dropped");
}

/// A device with no state; its host lock cannot be taken (it is in use
/// elsewhere) when `refuse` is set.
#[derive(Default)]
struct NoState {
    refuse: bool,
}

impl virtkit_core::runtime::Snapshot for NoState {
    fn save_state(&mut self) -> Result<Vec<u8>, virtkit_core::runtime::StateError> {
        Ok(Vec::new())
    }
    fn restore_state(&mut self, _: &[u8]) -> Result<(), virtkit_core::runtime::StateError> {
        Ok(())
    }
    fn take_locks(&mut self) -> Result<(), virtkit_core::runtime::StateError> {
        if self.refuse {
            Err(virtkit_core::runtime::StateError::Locked(
                "its image is in use by another VM".into(),
            ))
        } else {
            Ok(())
        }
    }
}

#[test]
fn a_target_that_cannot_take_every_lock_cancels_and_the_source_takes_its_disk_back() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("shared.raw");
    let (src, src_disk) = source_with_disk(&image);
    let taker = NoState { refuse: false };
    src.add_device_state("lock-taker", Arc::new(std::sync::Mutex::new(taker)))
        .unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let target_image = image.clone();
    let target = std::thread::spawn(move || {
        receive(Box::new(b), SECRET, |layout| {
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            // The disk's lock is taken first, then the refusing device
            // fails: the target must let go of the disk again.
            let (bus, _) = disk_bus(&vm, &target_image, INCOMING);
            vm.add_device_state("pci", bus)?;
            let taker = NoState { refuse: true };
            vm.add_device_state("lock-taker", Arc::new(std::sync::Mutex::new(taker)))?;
            Ok(vm)
        })
    });
    let t = Instant::now();
    let e = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
    assert!(
        matches!(&e, MigrationError::PeerCancelled(m) if m.contains("lock-taker") && m.contains("in use")),
        "{e}"
    );
    assert!(
        t.elapsed() < virtkit_migration::LOCK_RECLAIM_TIMEOUT,
        "the target let go at once"
    );
    assert!(target.join().unwrap().is_err());
    assert_source_unharmed(&src);
    // The source holds its disk again and writes to it.
    src_disk.write_at(b"the source goes on", 0).unwrap();
    assert!(is_locked(&image));
    src.stop().unwrap();
}

/// A local disk of `size` bytes at `path` (a sparse file), tracked.
fn local_disk(path: &std::path::Path, size: u64) -> Arc<TrackedDisk> {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
    let raw: Arc<dyn BlockBackend> = Arc::new(RawFile::open(path, DiskOptions::default()).unwrap());
    Arc::new(TrackedDisk::new(raw))
}

const LOCAL_DISK: u64 = 8 << 20;

#[test]
fn a_local_disk_the_guest_writes_while_it_moves_arrives_byte_identical() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src_path, dst_path) = (dir.path().join("src.img"), dir.path().join("dst.img"));
    let src = source(16);
    let disk = local_disk(&src_path, LOCAL_DISK);
    // Some data before the migration; the rest of the disk is a hole.
    for at in [0u64, 3 << 20, LOCAL_DISK - 4096] {
        BlockBackend::write_at(&*disk, &[0xc3; 4096], at).unwrap();
    }
    src.add_migrating_disk("disk0", disk.clone()).unwrap();
    // An I/O thread writes 4 KiB blocks of its count all over the disk
    // until the VM pauses, as a guest's disk traffic would.
    let writer = {
        let disk = disk.clone();
        Stamper::doing(move |n| {
            let block = (n * 7919) % (LOCAL_DISK / 4096);
            let bytes: Vec<u8> = n.to_le_bytes().repeat(512);
            BlockBackend::write_at(&*disk, &bytes, block * 4096).unwrap();
        })
    };
    let writer = Arc::new(std::sync::Mutex::new(writer));
    writer.lock().unwrap().start();
    src.add_device_state("disk-writer", writer.clone()).unwrap();
    let count = writer.lock().unwrap().count.clone();
    while count.load(Ordering::SeqCst) < 200 {
        std::thread::yield_now();
    }
    let before = count.load(Ordering::SeqCst);

    let (a, b) = UnixStream::pair().unwrap();
    let target_path = dst_path.clone();
    let target = std::thread::spawn(move || {
        receive(Box::new(b), SECRET, |layout| {
            assert_eq!(layout.disks, [("disk0".to_string(), LOCAL_DISK)]);
            let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
            vm.add_migrating_disk("disk0", local_disk(&target_path, LOCAL_DISK))?;
            vm.add_device_state(
                "disk-writer",
                Arc::new(std::sync::Mutex::new(NoState::default())),
            )?;
            Ok(vm)
        })
    });
    // Each pass also writes a block right after the engine took the
    // disk's dirty set (progress is reported then): the last such write
    // travels only in the final pass, made while the VM is paused.
    let progress_disk = disk.clone();
    let progress = move |p: &virtkit_migration::source::Progress| {
        if p.phase == MigrationPhase::Running && p.iteration > 0 {
            let bytes = [p.iteration as u8; 4096];
            BlockBackend::write_at(&*progress_disk, &bytes, 5 << 20).unwrap();
        }
    };
    let stats = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &progress).unwrap();
    let got = target.join().unwrap().unwrap();
    let at_pause = count.load(Ordering::SeqCst);
    assert!(
        at_pause > before,
        "the disk was written during the migration"
    );
    assert!(stats.disk_bytes_sent >= 3 * 4096);
    assert_eq!(got.stats.disk_bytes, stats.disk_bytes_sent);
    // Compare what the files hold: the target's disk equals the source's
    // as it was when the guest paused, and no write was lost.
    let (ours, theirs) = (
        std::fs::read(&src_path).unwrap(),
        std::fs::read(&dst_path).unwrap(),
    );
    assert_eq!(ours.len(), theirs.len());
    let differ = ours
        .chunks(4096)
        .zip(theirs.chunks(4096))
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differ, 0, "4 KiB blocks that differ");
    let last = at_pause;
    let block = ((last * 7919) % (LOCAL_DISK / 4096)) as usize * 4096;
    assert_eq!(
        theirs[block..block + 8],
        last.to_le_bytes(),
        "the last write arrived"
    );
    got.vm.stop().unwrap();
}

#[test]
fn a_target_with_other_local_disks_is_refused_before_any_page() {
    if !kvm_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let src = source(16);
    let disk = local_disk(&dir.path().join("s.img"), LOCAL_DISK);
    src.add_migrating_disk("disk0", disk.clone()).unwrap();
    assert!(
        src.add_migrating_disk("disk0", disk).is_err(),
        "an id is registered once"
    );
    for (id, size) in [("disk0", LOCAL_DISK / 2), ("disk1", LOCAL_DISK)] {
        let (a, b) = UnixStream::pair().unwrap();
        let path = dir.path().join("t.img");
        let target = std::thread::spawn(move || {
            receive(Box::new(b), SECRET, |layout| {
                let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
                vm.add_migrating_disk(id, local_disk(&path, size))?;
                Ok(vm)
            })
        });
        let e = migrate(&src, Box::new(a), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
        assert!(
            matches!(&e, MigrationError::Rejected(m) if m.contains("migrating disks differ") && m.contains(id)),
            "{e}"
        );
        assert!(target.join().unwrap().is_err());
        assert_source_unharmed(&src);
    }
    src.stop().unwrap();
}

#[test]
fn corrupt_stream_after_handshake_is_an_error_not_a_crash() {
    if !kvm_present() {
        return;
    }
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let hello = protocol::hello_payload(
        1,
        8 << 20,
        0,
        &[(0, 8 << 20)],
        &standard_devices(),
        &[],
        &[],
    );
    handshake(&mut a, &hello);
    // Pages far outside guest RAM.
    let mut hdr = Vec::new();
    hdr.extend_from_slice(&(1u64 << 40).to_le_bytes());
    hdr.extend_from_slice(&1u32.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    protocol::write_frame(&mut a, Kind::Pages, &[&hdr, &[7u8; 4096]]).unwrap();
    let e = target.join().unwrap().err().unwrap();
    assert!(e.to_string().contains("outside guest RAM"), "{e}");
    // A truncated frame: the target reports the connection, never panics.
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    a.write_all(&[0x56, 0x4b, 1, 0, 0, 0, 0, 0, 200, 0])
        .unwrap();
    drop(a);
    assert!(matches!(
        target.join().unwrap(),
        Err(MigrationError::Connection(_))
    ));
    // More device states than the Hello named are refused as they come.
    let (mut a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let hello = protocol::hello_payload(
        1,
        8 << 20,
        0,
        &[(0, 8 << 20)],
        &standard_devices(),
        &[],
        &[],
    );
    handshake(&mut a, &hello);
    let head = protocol::device_state_head("com1");
    for _ in 0..=standard_devices().len() {
        if protocol::write_frame(&mut a, Kind::DeviceState, &[&head, &[0; 64]]).is_err() {
            break;
        }
    }
    let e = target.join().unwrap().err().unwrap();
    assert!(e.to_string().contains("expected Complete"), "{e}");
}

#[test]
fn cancel_during_precopy_leaves_the_source_running() {
    if !kvm_present() {
        return;
    }
    let src = source(256);
    let cancel = CancelHandle::new();
    let c2 = cancel.clone();
    let o = MigrationOptions {
        bandwidth_bytes_per_sec: 1 << 20,
        ..opts()
    };
    let canceller = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        c2.cancel();
    });
    let (e, _) = failed_migration(&src, SECRET, &o, &cancel, &|_| {});
    canceller.join().unwrap();
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
}

/// A stream whose link drops when the source starts writing a frame of
/// kind `at` (the header is written on its own, so it can be seen whole).
struct Breaking {
    inner: UnixStream,
    at: Kind,
    broken: Arc<AtomicBool>,
}
impl Read for Breaking {
    fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(b)
    }
}
impl Write for Breaking {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let header_of_kind =
            b.len() == 16 && b[0..2] == [0x56, 0x4b] && b[2..4] == (self.at as u16).to_le_bytes();
        if header_of_kind || self.broken.load(Ordering::SeqCst) {
            self.broken.store(true, Ordering::SeqCst);
            let _ = self.inner.shutdown(std::net::Shutdown::Both);
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "link dropped",
            ));
        }
        self.inner.write(b)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}
impl MigrationStream for Breaking {
    fn shutdown(&self) -> std::io::Result<()> {
        self.inner.shutdown(std::net::Shutdown::Both)
    }
    fn try_clone_stream(&self) -> std::io::Result<Box<dyn MigrationStream>> {
        Ok(Box::new(Breaking {
            inner: self.inner.try_clone()?,
            at: self.at,
            broken: self.broken.clone(),
        }))
    }
}

/// Migrate `src` over `a`, the link breaking when a frame of kind `at`
/// is written: the source sees the connection fail and runs on, and the
/// target at the other end discards.
fn migrate_breaking_at(
    src: &Vm,
    a: UnixStream,
    at: Kind,
    target: JoinHandle<Result<Received, MigrationError>>,
) {
    let s = Breaking {
        inner: a,
        at,
        broken: Arc::new(AtomicBool::new(false)),
    };
    let e = migrate(src, Box::new(s), &opts(), &CancelHandle::new(), &|_| {}).unwrap_err();
    assert!(matches!(e, MigrationError::Connection(_)), "{at:?}: {e}");
    assert!(
        target.join().unwrap().is_err(),
        "{at:?}: target must discard"
    );
    assert_source_unharmed(src);
}

#[test]
fn connection_dropped_in_each_phase_leaves_the_source_running() {
    if !kvm_present() {
        return;
    }
    // Handshake, precopy, state transfer, and just before the commit.
    for at in [
        Kind::Auth,
        Kind::Pages,
        Kind::DeviceState,
        Kind::VcpuState,
        Kind::Commit,
    ] {
        let src = source(64);
        let (a, b) = UnixStream::pair().unwrap();
        let target = spawn_target(b, SECRET);
        migrate_breaking_at(&src, a, at, target);
        src.stop().unwrap();
    }
}

#[test]
fn a_connection_lost_while_disks_move_leaves_the_source_its_disks() {
    if !kvm_present() {
        return;
    }
    // A shared disk (its lock is handed over) and a local one (copied);
    // the link breaks while the local disk is copied, and after the
    // target took the shared disk's lock, just before the commit.
    for at in [Kind::DiskData, Kind::Commit] {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared.raw");
        let (src, shared_disk) = source_with_disk(&shared);
        let local = local_disk(&dir.path().join("local.img"), LOCAL_DISK);
        BlockBackend::write_at(&*local, &[1; 4096], 0).unwrap();
        src.add_migrating_disk("disk0", local.clone()).unwrap();
        let (a, b) = UnixStream::pair().unwrap();
        let (target_shared, target_local) = (shared.clone(), dir.path().join("target.img"));
        let target = std::thread::spawn(move || {
            receive(Box::new(b), SECRET, |layout| {
                let vm = VmBuilder::new(layout.vm_config("dst")).build()?;
                let (bus, _) = disk_bus(&vm, &target_shared, INCOMING);
                vm.add_device_state("pci", bus)?;
                vm.add_migrating_disk("disk0", local_disk(&target_local, LOCAL_DISK))?;
                Ok(vm)
            })
        });
        migrate_breaking_at(&src, a, at, target);
        // The source writes both disks again, and holds the shared one.
        shared_disk.write_at(b"still mine", 0).unwrap();
        BlockBackend::write_at(&*local, &[2; 4096], 0).unwrap();
        assert!(is_locked(&shared), "{at:?}");
        src.stop().unwrap();
    }
}

#[test]
fn low_bandwidth_for_the_dirty_rate_hits_the_progress_timeout() {
    if !kvm_present() {
        return;
    }
    let src = source(512);
    let o = MigrationOptions {
        bandwidth_bytes_per_sec: 4 << 20,
        max_downtime: Duration::from_millis(1),
        progress_timeout: Duration::from_secs(2),
        max_iterations: 1000,
        ..opts()
    };
    let t = Instant::now();
    let (e, _) = failed_migration(&src, SECRET, &o, &CancelHandle::new(), &|_| {});
    assert!(matches!(e, MigrationError::ProgressTimeout(_)), "{e}");
    assert!(t.elapsed() >= Duration::from_secs(2));
}

#[test]
fn completion_timeout_and_non_convergence_policies() {
    if !kvm_present() {
        return;
    }
    // completionTimeoutPerGiB = 1 s on an 8 MiB guest → 1 s.
    let src = source(512);
    let o = MigrationOptions {
        bandwidth_bytes_per_sec: 4 << 20,
        max_downtime: Duration::from_millis(1),
        completion_timeout_per_gib: 1,
        max_iterations: 1000,
        ..opts()
    };
    let (e, _) = failed_migration(&src, SECRET, &o, &CancelHandle::new(), &|_| {});
    assert!(matches!(e, MigrationError::CompletionTimeout(_)), "{e}");

    // Abort after 2 passes that do not converge. The cap makes each pass
    // last long enough (~0.25 s) for the guest to dirty pages even on a
    // loaded machine; an empty dirty set would legitimately converge.
    let o = MigrationOptions {
        bandwidth_bytes_per_sec: 8 << 20,
        max_downtime: Duration::ZERO,
        max_iterations: 2,
        ..opts()
    };
    let (e, _) = failed_migration(&src, SECRET, &o, &CancelHandle::new(), &|_| {});
    assert!(
        matches!(e, MigrationError::NotConverging { iterations: 2, .. }),
        "{e}"
    );

    // ForceSwitchover completes anyway.
    let (a, b) = UnixStream::pair().unwrap();
    let target = spawn_target(b, SECRET);
    let o = MigrationOptions {
        on_non_convergence: NonConvergencePolicy::ForceSwitchover,
        ..o
    };
    let stats = migrate(&src, Box::new(a), &o, &CancelHandle::new(), &|_| {}).unwrap();
    let got = target.join().unwrap().unwrap();
    assert_eq!(stats.checksum, Some(got.stats.checksum));
    let at = counter(&src);
    wait_counter(&got.vm, at);
}

#[test]
fn cancel_in_each_phase_leaves_the_source_running() {
    if !kvm_present() {
        return;
    }
    for phase in [
        MigrationPhase::PreparingTarget,
        MigrationPhase::TargetReady,
        MigrationPhase::Running,
    ] {
        let src = source(64);
        let cancel = CancelHandle::new();
        let c2 = cancel.clone();
        let (e, _) = failed_migration(&src, SECRET, &opts(), &cancel, &|p| {
            if p.phase == phase {
                c2.cancel();
            }
        });
        assert!(matches!(e, MigrationError::Cancelled), "{phase:?}: {e}");
        src.stop().unwrap();
    }
    // A handle cancelled before the start never touches the target.
    let src = source(16);
    let cancel = CancelHandle::new();
    cancel.cancel();
    let (e, _) = failed_migration(&src, SECRET, &opts(), &cancel, &|_| {});
    assert!(matches!(e, MigrationError::Cancelled), "{e}");
}
