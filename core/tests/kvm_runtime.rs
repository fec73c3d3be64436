//! The KVM runtime, for real, with tiny assembled guests. Each test skips
//! (saying why) only where /dev/kvm is absent.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use virtkit_core::payload::{self, SerialCapture, COUNTER_ADDR, TOUCH_BASE};
use virtkit_core::runtime::{
    PlatformState, RunState, RuntimeError, Vm, VmBuilder, VmConfig, VmExit,
};

fn kvm_present() -> bool {
    if std::path::Path::new("/dev/kvm").exists() {
        true
    } else {
        eprintln!("SKIP: /dev/kvm is absent on this host; KVM runtime tests need it");
        false
    }
}

fn config(vcpus: u8, mib: u64) -> VmConfig {
    VmConfig {
        name: "test".into(),
        vcpus,
        memory_bytes: mib << 20,
    }
}

fn counter(vm: &Vm) -> u64 {
    let mut b = [0u8; 8];
    vm.read_memory(COUNTER_ADDR, &mut b).unwrap();
    u64::from_le_bytes(b)
}

fn wait_for_counter(vm: &Vm, above: u64) -> u64 {
    let start = Instant::now();
    loop {
        let c = counter(vm);
        if c > above {
            return c;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "counter stuck at {c}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn prints_on_serial_and_powers_off() {
    if !kvm_present() {
        return;
    }
    let out = SerialCapture::default();
    let vm = VmBuilder::new(config(1, 2))
        .serial_output(Box::new(out.clone()))
        .build()
        .unwrap();
    payload::print_and_power_off("Hello from virtkit\n")
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    let exit = vm.wait().unwrap();
    assert_eq!(exit, VmExit::PowerOff);
    assert_eq!(out.text(), "Hello from virtkit\n");
    assert_eq!(vm.state(), RunState::Exited);
}

#[test]
fn multi_vcpu_vm_runs_and_stops_with_parked_aps() {
    if !kvm_present() {
        return;
    }
    let out = SerialCapture::default();
    let vm = VmBuilder::new(config(4, 2))
        .serial_output(Box::new(out.clone()))
        .build()
        .unwrap();
    payload::print_and_power_off("ok\n")
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    // The APs sit in wait-for-SIPI inside KVM_RUN; power-off must still
    // bring every thread home.
    assert_eq!(vm.wait().unwrap(), VmExit::PowerOff);
    assert_eq!(out.text(), "ok\n");
}

#[test]
fn long_mode_page_toucher_counts_and_writes_pages() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(1, 4)).build().unwrap();
    payload::touch_pages(8, Some(200), 0)
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait().unwrap(), VmExit::PowerOff);
    assert_eq!(counter(&vm), 200);
    // Page k holds the last counter value c with c % 8 == k.
    for k in 0..8u64 {
        let mut b = [0u8; 8];
        vm.read_memory(TOUCH_BASE + k * 4096, &mut b).unwrap();
        let v = u64::from_le_bytes(b);
        assert_eq!(v % 8, k);
        assert!(v > 200 - 8, "page {k} holds {v}");
    }
}

#[test]
fn pause_freezes_and_resume_continues() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(2, 4)).build().unwrap();
    payload::touch_pages(4, None, 0).unwrap().load(&vm).unwrap();
    assert!(matches!(
        vm.pause(),
        Err(RuntimeError::BadState {
            op: "pause",
            state: RunState::Created
        })
    ));
    vm.start().unwrap();
    wait_for_counter(&vm, 10);
    vm.pause().unwrap();
    vm.pause().unwrap(); // idempotent
    assert_eq!(vm.state(), RunState::Paused);
    let a = counter(&vm);
    std::thread::sleep(Duration::from_millis(100));
    let b = counter(&vm);
    assert_eq!(a, b, "a paused guest must not count");
    vm.resume().unwrap();
    wait_for_counter(&vm, b);
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
}

#[test]
fn pause_and_resume_reach_every_device_with_state() {
    if !kvm_present() {
        return;
    }
    use virtkit_core::runtime::{Snapshot, StateError};
    /// Records "pause" and "resume"; its resume fails when told to.
    struct Worker {
        log: Arc<Mutex<Vec<&'static str>>>,
        fail_resume: bool,
    }
    impl Snapshot for Worker {
        fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
            Ok(Vec::new())
        }
        fn restore_state(&mut self, _: &[u8]) -> Result<(), StateError> {
            Ok(())
        }
        fn pause(&mut self) {
            self.log.lock().unwrap().push("pause");
        }
        fn resume(&mut self) -> Result<(), StateError> {
            self.log.lock().unwrap().push("resume");
            if self.fail_resume {
                return Err(StateError::Host("no thread for you".into()));
            }
            Ok(())
        }
    }
    let worker = |fail_resume| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let w = Arc::new(Mutex::new(Worker {
            log: log.clone(),
            fail_resume,
        }));
        (w, log)
    };
    let vm = VmBuilder::new(config(1, 4)).build().unwrap();
    payload::touch_pages(4, None, 0).unwrap().load(&vm).unwrap();
    let (first, first_log) = worker(false);
    vm.add_device_state("first", first).unwrap();
    vm.start().unwrap();
    wait_for_counter(&vm, 10);
    assert!(
        first_log.lock().unwrap().is_empty(),
        "starting is no resume"
    );
    vm.pause().unwrap();
    vm.pause().unwrap(); // idempotent: no second pause
    assert_eq!(*first_log.lock().unwrap(), ["pause"]);
    // A device added to a paused VM starts paused.
    let (second, second_log) = worker(true);
    vm.add_device_state("second", second).unwrap();
    assert_eq!(*second_log.lock().unwrap(), ["pause"]);
    // A device that cannot restart is named, but the guest runs on.
    let e = vm.resume().unwrap_err();
    assert!(
        matches!(&e, RuntimeError::DeviceState { device, source: StateError::Host(_) } if device == "second"),
        "{e}"
    );
    assert_eq!(vm.state(), RunState::Running);
    wait_for_counter(&vm, counter(&vm));
    assert_eq!(*first_log.lock().unwrap(), ["pause", "resume"]);
    assert_eq!(*second_log.lock().unwrap(), ["pause", "resume"]);
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
}

#[test]
fn a_failed_lock_handover_gives_back_what_it_released_and_names_the_device() {
    if !kvm_present() {
        return;
    }
    use virtkit_core::runtime::{Snapshot, StateError};
    /// Records "release" and "take"; fails the one it is told to.
    struct Locker {
        log: Arc<Mutex<Vec<&'static str>>>,
        fail_release: bool,
        fail_take: bool,
    }
    impl Snapshot for Locker {
        fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
            Ok(Vec::new())
        }
        fn restore_state(&mut self, _: &[u8]) -> Result<(), StateError> {
            Ok(())
        }
        fn release_locks(&mut self) -> Result<(), StateError> {
            self.log.lock().unwrap().push("release");
            if self.fail_release {
                return Err(StateError::Host("cannot flush".into()));
            }
            Ok(())
        }
        fn take_locks(&mut self) -> Result<(), StateError> {
            self.log.lock().unwrap().push("take");
            if self.fail_take {
                return Err(StateError::Locked("held elsewhere".into()));
            }
            Ok(())
        }
    }
    let vm = VmBuilder::new(config(1, 4)).build().unwrap();
    let mut logs = Vec::new();
    for (id, fail_release, fail_take) in
        [("a", false, false), ("b", true, true), ("c", false, false)]
    {
        let log = Arc::new(Mutex::new(Vec::new()));
        let locker = Locker {
            log: log.clone(),
            fail_release,
            fail_take,
        };
        vm.add_device_state(id, Arc::new(Mutex::new(locker)))
            .unwrap();
        logs.push(log);
    }
    let taken = |i: usize| logs[i].lock().unwrap().clone();
    // "b" cannot let go: "a", which had, takes its locks back; "c" was
    // never asked.
    let e = vm.release_locks().unwrap_err();
    assert!(
        matches!(&e, RuntimeError::DeviceState { device, source: StateError::Host(_) } if device == "b"),
        "{e}"
    );
    assert_eq!(taken(0), ["release", "take"]);
    assert_eq!(taken(1), ["release"]);
    assert!(taken(2).is_empty());
    // Taking stops at the first lock held elsewhere and names it.
    let e = vm.take_locks().unwrap_err();
    assert!(
        matches!(&e, RuntimeError::DeviceState { device, source: StateError::Locked(_) } if device == "b"),
        "{e}"
    );
    assert!(taken(2).is_empty());
    // Only a VM that is not running hands its locks over.
    payload::touch_pages(4, None, 0).unwrap().load(&vm).unwrap();
    vm.start().unwrap();
    assert!(matches!(
        vm.release_locks(),
        Err(RuntimeError::BadState { .. })
    ));
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
}

#[test]
fn vcpu_state_restored_into_a_second_vm_continues_the_count() {
    if !kvm_present() {
        return;
    }
    let a = VmBuilder::new(config(1, 4)).build().unwrap();
    payload::touch_pages(16, None, 0).unwrap().load(&a).unwrap();
    a.start().unwrap();
    wait_for_counter(&a, 50);
    a.pause().unwrap();
    let saved_count = counter(&a);
    let states = a.save_vcpus().unwrap();
    let clock = a.save_clock().unwrap();
    // Through bytes, as migration would carry them.
    let wire: Vec<Vec<u8>> = states.iter().map(|s| s.to_bytes().to_vec()).collect();
    let mut ram = vec![0u8; a.config().memory_bytes as usize];
    a.read_memory(0, &mut ram).unwrap();

    let b = VmBuilder::new(config(1, 4)).build().unwrap();
    b.write_memory(0, &ram).unwrap();
    let restored: Vec<_> = wire
        .iter()
        .map(|w| virtkit_core::runtime::VcpuState::from_bytes(w).unwrap())
        .collect();
    b.restore_vcpus(&restored).unwrap();
    b.restore_clock(&clock).unwrap();
    assert_eq!(counter(&b), saved_count);
    b.start().unwrap();
    let later = wait_for_counter(&b, saved_count + 20);
    assert!(later > saved_count + 20);
    b.pause().unwrap();
    // The second VM continued from the saved count: every page holds a
    // value consistent with one counter sequence.
    let now = counter(&b);
    for k in 0..16u64 {
        let mut buf = [0u8; 8];
        b.read_memory(TOUCH_BASE + k * 4096, &mut buf).unwrap();
        let v = u64::from_le_bytes(buf);
        assert_eq!(v % 16, k);
        assert!(v <= now);
    }
    // The source is unharmed and resumes too.
    a.resume().unwrap();
    wait_for_counter(&a, saved_count);
    a.stop().unwrap();
    b.stop().unwrap();
}

/// A VM that counts PIT ticks (the guest programmed the PIC and PIT),
/// paused after `ticks` ticks, with its RAM, vCPU and clock state.
fn ticking_source(
    ticks: u64,
) -> (
    Vm,
    Vec<u8>,
    Vec<Box<virtkit_core::runtime::VcpuState>>,
    virtkit_core::runtime::VmClockState,
) {
    // 1193 ≈ 1 kHz.
    let a = VmBuilder::new(config(1, 2)).build().unwrap();
    payload::pit_ticks(1193).unwrap().load(&a).unwrap();
    a.start().unwrap();
    wait_for_counter(&a, ticks);
    a.pause().unwrap();
    let mut ram = vec![0u8; a.config().memory_bytes as usize];
    a.read_memory(0, &mut ram).unwrap();
    let vcpus = a.save_vcpus().unwrap();
    let clock = a.save_clock().unwrap();
    (a, ram, vcpus, clock)
}

/// A fresh VM holding `ram` and the vCPU and clock state, not started.
fn copy_of(
    ram: &[u8],
    vcpus: &[Box<virtkit_core::runtime::VcpuState>],
    clock: &virtkit_core::runtime::VmClockState,
) -> Vm {
    let b = VmBuilder::new(config(1, 2)).build().unwrap();
    b.write_memory(0, ram).unwrap();
    b.restore_vcpus(vcpus).unwrap();
    b.restore_clock(clock).unwrap();
    b
}

#[test]
fn device_state_carries_the_interrupt_controllers_and_timer_to_a_second_vm() {
    if !kvm_present() {
        return;
    }
    let (a, ram, vcpus, clock) = ticking_source(20);
    let devices = a.save_devices().unwrap();
    let ids: Vec<&str> = devices.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["platform", "com1", "acpi-pm1a"]);
    assert_eq!(a.device_state_ids(), ids);
    let saved = counter(&a);

    // Control: without the device state the PIT on the copy was never
    // programmed, so the guest halts for good and the count stays put.
    let bare = copy_of(&ram, &vcpus, &clock);
    bare.start().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(counter(&bare), saved, "a fresh PIT must not tick");
    bare.stop().unwrap();

    // With it, the ticks go on from the saved count.
    let b = copy_of(&ram, &vcpus, &clock);
    b.restore_devices(&devices).unwrap();
    // What was loaded reads back the same (the PIT's load time aside,
    // which KVM stamps anew when a count is loaded).
    let back = b.save_devices().unwrap();
    for (x, y) in devices.iter().zip(&back).skip(1) {
        assert_eq!(x, y);
    }
    use zerocopy::IntoBytes;
    let (sent, got) = (
        PlatformState::from_bytes(&devices[0].state).unwrap(),
        PlatformState::from_bytes(&back[0].state).unwrap(),
    );
    assert_eq!(sent.pic_master.as_bytes(), got.pic_master.as_bytes());
    assert_eq!(sent.ioapic.as_bytes(), got.ioapic.as_bytes());
    assert_eq!(sent.pit.channels[0].mode, 2, "the guest's rate generator");
    assert_eq!(got.pit.channels[0].mode, 2);
    assert_eq!(got.pit.channels[0].count, 1193);
    b.start().unwrap();
    let later = wait_for_counter(&b, saved + 20);
    assert!(later > saved + 20);
    b.stop().unwrap();
    a.resume().unwrap();
    wait_for_counter(&a, saved);
    a.stop().unwrap();
}

#[test]
fn device_states_that_do_not_match_the_vm_are_refused_whole() {
    if !kvm_present() {
        return;
    }
    use virtkit_core::runtime::{DeviceState, Snapshot, StateError};
    let a = VmBuilder::new(config(1, 2)).build().unwrap();
    // The guest has not read these bytes: they travel in the 16550's FIFO.
    a.serial_input(b"typed ahead").unwrap();
    let mut states = a.save_devices().unwrap();

    // A device the target lacks, and one the source lacked.
    struct Flag(Arc<Mutex<Vec<u8>>>);
    impl Snapshot for Flag {
        fn save_state(&mut self) -> Result<Vec<u8>, StateError> {
            Ok(self.0.lock().unwrap().clone())
        }
        fn restore_state(&mut self, state: &[u8]) -> Result<(), StateError> {
            if state.first() != Some(&1) {
                return Err(StateError::Corrupt("not a flag".into()));
            }
            *self.0.lock().unwrap() = state.to_vec();
            Ok(())
        }
    }
    let b = VmBuilder::new(config(1, 2)).build().unwrap();
    let flag = Arc::new(Mutex::new(vec![0u8]));
    b.add_device_state("disk/0", Arc::new(Mutex::new(Flag(flag.clone()))))
        .unwrap();
    assert!(b
        .add_device_state("disk/0", Arc::new(Mutex::new(Flag(flag.clone()))))
        .is_err());
    assert!(b
        .add_device_state("platform", Arc::new(Mutex::new(Flag(flag.clone()))))
        .is_err());
    assert!(b
        .add_device_state("bad id", Arc::new(Mutex::new(Flag(flag.clone()))))
        .is_err());
    states.push(DeviceState {
        id: "nic/1".into(),
        state: vec![1],
    });
    let before = b.save_devices().unwrap();
    match b.restore_devices(&states) {
        Err(RuntimeError::DeviceMismatch {
            missing,
            unexpected,
        }) => {
            assert_eq!(missing, ["disk/0"]);
            assert_eq!(unexpected, ["nic/1"]);
        }
        r => panic!("{r:?}"),
    }
    assert_eq!(b.save_devices().unwrap(), before, "nothing was loaded");

    // Matching ids, but a blob the device refuses: a typed error naming it.
    states.last_mut().unwrap().id = "disk/0".into();
    states.last_mut().unwrap().state = vec![9];
    let e = b.restore_devices(&states).unwrap_err();
    assert!(
        matches!(&e, RuntimeError::DeviceState { device, .. } if device == "disk/0"),
        "{e}"
    );
    // A corrupt 16550 blob is refused too.
    let mut bad = states.clone();
    bad[1].state.truncate(10);
    let e = b.restore_devices(&bad).unwrap_err();
    assert!(e.to_string().contains("com1"), "{e}");

    states.last_mut().unwrap().state = vec![1, 2];
    b.restore_devices(&states).unwrap();
    assert_eq!(*flag.lock().unwrap(), [1, 2]);
    // The unread input arrived with the 16550.
    let com1 = |vm: &Vm| {
        vm.save_devices()
            .unwrap()
            .into_iter()
            .find(|d| d.id == "com1")
            .unwrap()
            .state
    };
    assert_eq!(com1(&b), com1(&a));
    assert!(com1(&b).windows(11).any(|w| w == b"typed ahead"));
    assert!(b.remove_device_state("disk/0"));
    assert!(!b.remove_device_state("disk/0"));
}

#[test]
fn dirty_log_merges_guest_and_vmm_writes() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(1, 4)).build().unwrap();
    payload::touch_pages(8, Some(64), 0)
        .unwrap()
        .load(&vm)
        .unwrap();
    let _ = vm.take_dirty_pages().unwrap(); // clear the loader's writes
    vm.set_dirty_logging(true).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait().unwrap(), VmExit::PowerOff);
    let maps = vm.take_dirty_pages().unwrap();
    let pages: Vec<u64> = maps
        .iter()
        .flat_map(|m| m.pages().collect::<Vec<_>>())
        .collect();
    for k in 0..8u64 {
        assert!(
            pages.contains(&(TOUCH_BASE + k * 4096)),
            "page {k} not dirty: {pages:x?}"
        );
    }
    assert!(pages.contains(&COUNTER_ADDR));
    assert!(
        !pages.contains(&(TOUCH_BASE + 9 * 4096)),
        "untouched page reported"
    );
    // Logging switched off for slot 0: guest writes are no longer logged.
    vm.set_slot_dirty_logging(0, false).unwrap();
    assert!(vm.set_slot_dirty_logging(7, true).is_err(), "no such slot");
    // A VMM-side write shows up through vm-memory's bitmap.
    vm.write_memory(0x30_0000, &[1, 2, 3]).unwrap();
    let maps = vm.take_dirty_pages().unwrap();
    let pages: Vec<u64> = maps
        .iter()
        .flat_map(|m| m.pages().collect::<Vec<_>>())
        .collect();
    assert_eq!(pages, vec![0x30_0000], "only the VMM write, log was reset");
    assert_eq!(maps.iter().map(|m| m.count()).sum::<u64>(), 1);
}

#[test]
fn triple_fault_is_an_exit_not_a_panic() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(1, 2)).build().unwrap();
    payload::triple_fault().unwrap().load(&vm).unwrap();
    vm.start().unwrap();
    let exit = vm.wait().unwrap();
    assert_eq!(exit, VmExit::TripleFault { vcpu: 0 });
    assert!(exit.is_failure());
}

#[test]
fn a_halted_guest_sleeps_and_still_pauses_and_stops() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(1, 2)).build().unwrap();
    payload::halt().unwrap().load(&vm).unwrap();
    let cpu_before = process_cpu_time();
    vm.start().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let used = process_cpu_time() - cpu_before;
    assert!(
        used < Duration::from_millis(150),
        "an idle guest used {used:?} of CPU in 300 ms"
    );
    vm.pause().unwrap();
    vm.resume().unwrap();
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
}

fn process_cpu_time() -> Duration {
    // utime + stime of this process, in clock ticks (fields 14 and 15).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_comm = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<u64> = after_comm
        .split(' ')
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap())
        .collect();
    Duration::from_millis((f[0] + f[1]) * 10)
}

#[test]
fn stop_ends_a_spinning_guest() {
    if !kvm_present() {
        return;
    }
    let vm = VmBuilder::new(config(2, 2)).build().unwrap();
    payload::spin().unwrap().load(&vm).unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait_timeout(Duration::from_millis(50)).unwrap(), None);
    let t = Instant::now();
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(matches!(vm.start(), Err(RuntimeError::BadState { .. })));
}

#[test]
fn secure_boot_needs_smm_from_the_host() {
    if !kvm_present() {
        return;
    }
    let kvm = kvm_ioctls::Kvm::new().unwrap();
    let has_smm = kvm.check_extension(kvm_ioctls::Cap::X86Smm);
    let r = VmBuilder::new(config(1, 2)).require_smm(true).build();
    if has_smm {
        assert!(r.is_ok());
    } else {
        let e = r.err().unwrap();
        assert!(matches!(
            e,
            RuntimeError::MissingCapability {
                capability: "KVM_CAP_X86_SMM",
                ..
            }
        ));
        assert!(e.to_string().contains("KVM_CAP_X86_SMM"));
    }
}

#[test]
fn cpuid_signature_is_stable_across_vms_on_one_host() {
    if !kvm_present() {
        return;
    }
    // KVM reports host APIC ids in its CPUID; the signature must ignore them.
    let sigs: Vec<u64> = (0..6)
        .map(|_| {
            VmBuilder::new(config(1, 1))
                .build()
                .unwrap()
                .cpuid_signature()
        })
        .collect();
    assert!(sigs.iter().all(|s| *s == sigs[0]), "{sigs:x?}");
    assert_ne!(sigs[0], 0);
}

#[test]
fn missing_kvm_device_is_a_typed_error() {
    // Needs no KVM: the device node does not exist.
    let e = VmBuilder::new(config(1, 2))
        .kvm_device("/nonexistent/kvm")
        .build()
        .err()
        .expect("must fail");
    assert!(matches!(e, RuntimeError::KvmUnavailable(_)), "{e:?}");
    assert!(e.to_string().contains("KVM is not available"), "{e}");
}

#[test]
fn bad_configs_are_typed_errors() {
    if !kvm_present() {
        return;
    }
    assert!(matches!(
        VmBuilder::new(config(0, 2)).build(),
        Err(RuntimeError::InvalidConfig(_))
    ));
    assert!(matches!(
        VmBuilder::new(config(1, 1 << 40)).build(),
        Err(RuntimeError::InsufficientHostMemory { .. })
    ));
    let vm = VmBuilder::new(config(1, 1)).build().unwrap();
    let big = payload::touch_pages(1024, None, 0).unwrap();
    assert!(matches!(big.load(&vm), Err(RuntimeError::InvalidConfig(_))));
}

/// Run CPUID in a guest built with `cpu` and return (leaf, sub) → regs.
fn guest_cpuid(
    cpu: virtkit_core::runtime::CpuConfig,
    vcpus: u8,
    queries: &[(u32, u32)],
) -> (Vec<[u32; 4]>, Vec<virtkit_core::runtime::cpu::CpuidEntry>) {
    let vm = VmBuilder::new(config(vcpus, 2)).cpu(cpu).build().unwrap();
    let given = vm.vcpu_cpuid(0).unwrap();
    payload::cpuid_dump(queries).unwrap().load(&vm).unwrap();
    vm.start().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(30)).unwrap(),
        Some(VmExit::PowerOff)
    );
    let mut out = vec![0u8; 16 * queries.len()];
    vm.read_memory(payload::CPUID_OUT, &mut out).unwrap();
    let seen = out
        .chunks(16)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes(c[4 * i..4 * i + 4].try_into().unwrap());
            [w(0), w(1), w(2), w(3)]
        })
        .collect();
    (seen, given)
}

fn leaf(
    entries: &[virtkit_core::runtime::cpu::CpuidEntry],
    function: u32,
) -> virtkit_core::runtime::cpu::CpuidEntry {
    *entries
        .iter()
        .find(|e| e.function == function && e.index == 0)
        .unwrap()
}

#[test]
fn guest_cpuid_follows_topology_model_and_feature_policies() {
    use virtkit_core::runtime::cpu::{host_cpu_info, CpuConfig, CpuModel, Topology, FEATURES};
    use virtkit_core::spec::vmi::CpuFeaturePolicy::*;
    if !kvm_present() {
        return;
    }
    let host = host_cpu_info().unwrap();
    let bit = |name: &str| FEATURES.iter().find(|f| f.name == name).unwrap().bit;
    // A feature KVM lacks here, for `force` and `require`.
    let absent = [
        "avx512f", "avx512bw", "sha-ni", "vaes", "pku", "umip", "rtm",
    ]
    .into_iter()
    .find(|f| !host.features.contains(f));
    let topology = Topology {
        sockets: 1,
        cores: 2,
        threads: 2,
    };
    let mut features = vec![
        ("x2apic".to_string(), Disable),
        ("pcid".to_string(), Optional),
    ];
    if let Some(absent) = absent {
        features.push((absent.to_string(), Force));
    }
    let cpu = CpuConfig {
        topology,
        model: CpuModel::Host,
        features,
    };
    let (r, given) = guest_cpuid(cpu, 4, &[(1, 0), (7, 0), (0xb, 0), (0xb, 1)]);
    // What KVM was given (KVM_GET_CPUID2) follows every policy.
    assert_eq!(leaf(&given, 1).ecx & (1 << 21), 0, "x2apic disabled");
    assert_eq!(
        leaf(&given, 1).ecx & (1 << 17) != 0,
        host.features.contains(&"pcid"),
        "optional pcid follows the host"
    );
    // The guest sees exactly that. (KVM on this machine adds some
    // hardware bits, e.g. SSE, to what it was given; KVM_GET_CPUID2
    // reports them too, so the comparison is with what KVM holds.)
    let l1 = leaf(&given, 1);
    assert_eq!(
        r[0],
        [l1.eax, l1.ebx, l1.ecx, l1.edx],
        "leaf 1 in the guest"
    );
    assert_eq!(r[0][2] & (1 << 21), 0, "the guest sees no x2apic");
    assert_eq!((r[0][1] >> 16) & 0xff, 4, "4 logical CPUs per package");
    assert_eq!(r[0][1] >> 24, 0, "vCPU 0 has APIC ID 0");
    assert_eq!((r[2][0], r[2][1]), (1, 2), "SMT level: shift 1, 2 threads");
    assert_eq!((r[3][0], r[3][1]), (2, 4), "core level: shift 2, 4 CPUs");
    match absent {
        Some(name) => {
            let f = FEATURES.iter().find(|f| f.name == name).unwrap();
            let reg = match f.reg {
                virtkit_core::runtime::cpu::Reg::Eax => 0,
                virtkit_core::runtime::cpu::Reg::Ebx => 1,
                virtkit_core::runtime::cpu::Reg::Ecx => 2,
                virtkit_core::runtime::cpu::Reg::Edx => 3,
            };
            let row = if f.leaf == 1 { 0 } else { 1 };
            assert_ne!(r[row][reg] & (1 << bit(name)), 0, "forced {name} is shown");
            // `require` of what the host lacks refuses to build.
            let need = CpuConfig {
                topology: Topology::flat(1),
                model: CpuModel::Host,
                features: vec![(name.to_string(), Require)],
            };
            let err = VmBuilder::new(config(1, 2)).cpu(need).build().err().unwrap();
            assert!(err.to_string().contains("is required but this host does not support it"), "{err}");
        }
        None => eprintln!("note: this host's KVM offers every candidate feature; force/require of an absent one not exercised"),
    }
    // `forbid` of what the host has refuses to build.
    let forbid = CpuConfig {
        topology: Topology::flat(1),
        model: CpuModel::Host,
        features: vec![("sse2".to_string(), Forbid)],
    };
    let err = VmBuilder::new(config(1, 2))
        .cpu(forbid)
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("is forbidden but this host supports it"),
        "{err}"
    );
    // A topology that does not give the vCPU count.
    let err = VmBuilder::new(config(3, 2))
        .cpu(CpuConfig::flat(2))
        .build()
        .err()
        .unwrap();
    assert!(err.to_string().contains("does not give 3 vCPUs"), "{err}");
    // Conroe: exactly its row of the named features, or a clear refusal
    // where this host's KVM cannot offer them.
    let conroe = CpuConfig {
        topology: Topology::flat(1),
        model: CpuModel::Named("Conroe"),
        features: Vec::new(),
    };
    if !host.models.contains(&"Conroe") {
        let err = VmBuilder::new(config(1, 2))
            .cpu(conroe.clone())
            .build()
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("cannot run CPU model Conroe"),
            "{err}"
        );
    } else {
        let (r, given) = guest_cpuid(conroe, 1, &[(1, 0)]);
        let l1 = leaf(&given, 1);
        assert_ne!(l1.ecx & (1 << bit("ssse3")), 0);
        assert_eq!(l1.ecx & (1 << bit("sse4.1")), 0, "Conroe has no SSE4.1");
        assert_eq!(l1.ecx & (1 << bit("x2apic")), 0);
        assert_ne!(l1.edx & (1 << bit("sse2")), 0);
        assert_ne!(
            r[0][2] & (1 << bit("ssse3")),
            0,
            "the guest sees Conroe's ssse3"
        );
    }
}

#[test]
fn dedicated_vcpus_are_pinned_and_the_pool_runs_out() {
    use virtkit_core::runtime::pinning::{thread_affinity, CpuPool, CpuSet, DedicatedCpus};
    if !kvm_present() {
        return;
    }
    let host = thread_affinity(0).unwrap();
    if host.len() < 2 {
        eprintln!("SKIP: dedicated CPUs need 2 host CPUs (one stays for housekeeping); this process may use {host}");
        return;
    }
    // Keep the first CPU for housekeeping; the rest are the pool.
    let cpus = host.cpus();
    let pool = CpuPool::new(&cpus[1..].iter().copied().collect::<CpuSet>());
    let placement = DedicatedCpus::allocate(&pool, 1, false).unwrap();
    let vm = VmBuilder::new(config(1, 2))
        .vcpu_pinning(placement.vcpus.clone())
        .build()
        .unwrap();
    payload::spin().unwrap().load(&vm).unwrap();
    vm.start().unwrap();
    let start = Instant::now();
    let tid = loop {
        let t = vm.vcpu_thread_ids()[0];
        if t != 0 {
            break t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "vCPU thread never started"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    // The thread pins itself first thing; give it the moment it needs.
    let pinned = loop {
        let a = thread_affinity(tid).unwrap();
        if a.len() == 1 || start.elapsed() > Duration::from_secs(10) {
            break a;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(
        pinned.cpus(),
        vec![placement.vcpus[0]],
        "vCPU 0 runs only on its CPU"
    );
    // With every pool CPU leased, a second dedicated VM cannot start.
    let rest = pool.free().len();
    let other = pool.allocate(rest).unwrap();
    let err = DedicatedCpus::allocate(&pool, 1, false).unwrap_err();
    assert!(
        err.to_string().contains("0 free CPUs; 1 are needed"),
        "{err}"
    );
    assert_eq!(vm.stop().unwrap(), VmExit::Stopped);
    drop((placement, other));
    DedicatedCpus::allocate(&pool, 1, false).expect("the CPU came back when the VM stopped");
    // A pinning that does not match the vCPU count is refused.
    let err = VmBuilder::new(config(2, 2))
        .vcpu_pinning(vec![1])
        .build()
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("1 host CPUs given to pin 2 vCPUs"),
        "{err}"
    );
}

/// Puts the 2 MiB pool back to its size when the test ends, pass or fail.
struct PoolGuard {
    path: &'static str,
    original: String,
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path, &self.original);
    }
}

#[test]
fn hugepage_backed_guest_takes_its_pages_from_the_pool() {
    use virtkit_core::runtime::memory::{free_hugepages, HugePageSize};
    if !kvm_present() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIP: resizing the hugepage pool needs root");
        return;
    }
    const NR: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let original = std::fs::read_to_string(NR).unwrap();
    let guard = PoolGuard {
        path: NR,
        original: original.clone(),
    };
    let before = free_hugepages(HugePageSize::Size2M).unwrap();
    let target = original.trim().parse::<u64>().unwrap() + 4;
    std::fs::write(NR, target.to_string()).unwrap();
    let free = free_hugepages(HugePageSize::Size2M).unwrap();
    if free < before + 4 {
        eprintln!("SKIP: the kernel could not reserve 4 more 2 MiB pages (fragmented memory)");
        return;
    }
    let out = SerialCapture::default();
    let vm = VmBuilder::new(config(1, 8))
        .hugepages(Some(HugePageSize::Size2M))
        .serial_output(Box::new(out.clone()))
        .build()
        .unwrap();
    assert_eq!(
        free_hugepages(HugePageSize::Size2M).unwrap(),
        free - 4,
        "the 8 MiB guest holds four 2 MiB pages from the start"
    );
    payload::print_and_power_off("on hugepages\n")
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    assert_eq!(
        vm.wait_timeout(Duration::from_secs(30)).unwrap(),
        Some(VmExit::PowerOff)
    );
    assert_eq!(out.text(), "on hugepages\n");
    drop(vm);
    assert_eq!(
        free_hugepages(HugePageSize::Size2M).unwrap(),
        free,
        "pages returned"
    );
    drop(guard);
    // More pages than the pool has: a typed error before any vCPU.
    let free = free_hugepages(HugePageSize::Size2M).unwrap();
    let err = VmBuilder::new(config(1, (free + 1) * 2))
        .hugepages(Some(HugePageSize::Size2M))
        .build()
        .err()
        .unwrap();
    assert!(
        matches!(err, RuntimeError::HugepagesUnavailable { needed, .. } if needed == free + 1),
        "{err}"
    );
    // 1 GiB pages: none reserved here, so a clear refusal.
    if free_hugepages(HugePageSize::Size1G).unwrap_or(0) == 0 {
        let err = VmBuilder::new(config(1, 1024))
            .hugepages(Some(HugePageSize::Size1G))
            .build()
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("not enough free 1Gi hugepages"),
            "{err}"
        );
    }
}

/// A port that answers each one-byte read with the next letter and
/// records the width of every access.
struct Letters(Arc<Mutex<Vec<usize>>>, u8);
impl virtkit_core::runtime::BusDevice for Letters {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        self.0.lock().unwrap().push(data.len());
        for b in data {
            *b = b'a' + self.1;
            self.1 += 1;
        }
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

#[test]
fn string_port_io_is_served_one_access_at_a_time() {
    use iced_x86::code_asm::*;
    if !kvm_present() {
        return;
    }
    const BUF: u64 = 0x2_0000;
    let out = SerialCapture::default();
    let vm = VmBuilder::new(config(1, 2))
        .serial_output(Box::new(out.clone()))
        .build()
        .unwrap();
    let widths = Arc::new(Mutex::new(Vec::new()));
    vm.add_pio_device(0x520, 1, Arc::new(Mutex::new(Letters(widths.clone(), 0))))
        .unwrap();
    // `rep insb` of 5 bytes from the one-byte port, then `rep outsb` of
    // them and a newline to COM1.
    let mut a = CodeAssembler::new(64).unwrap();
    a.mov(dx, 0x520u32).unwrap();
    a.mov(rdi, BUF).unwrap();
    a.mov(ecx, 5u32).unwrap();
    a.rep().insb().unwrap();
    a.mov(byte_ptr(BUF + 5), u32::from(b'\n')).unwrap();
    a.mov(dx, 0x3f8u32).unwrap();
    a.mov(rsi, BUF).unwrap();
    a.mov(ecx, 6u32).unwrap();
    a.rep().outsb().unwrap();
    payload::power_off(&mut a).unwrap();
    payload::long_mode(&mut a, 1 << 20)
        .unwrap()
        .load(&vm)
        .unwrap();
    vm.start().unwrap();
    assert_eq!(vm.wait().unwrap(), VmExit::PowerOff);
    assert_eq!(out.text(), "abcde\n");
    assert_eq!(*widths.lock().unwrap(), [1; 5], "five one-byte reads");
}
