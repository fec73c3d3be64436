//! `VmBuilder` and `Vm`: the lifecycle of one KVM virtual machine.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use kvm_bindings::{
    kvm_mp_state, kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES,
    KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_READONLY,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;
use zerocopy::little_endian::U32;

use super::boot::{self, BootState};
use super::bus::{Bus, SharedDevice};
use super::cpu::{self, CpuConfig, CpuError, CpuidEntry};
use super::devices::{
    ExitRequest, PowerControl, ResetControl, SerialDevice, COM1_IRQ, COM1_PORT, PM1A_CNT_PORT,
    RESET_PORT,
};
use super::feature_words::{self, FeatureWord};
use super::irq::Interrupts;
use super::local_disk::SharedDisk;
use super::memory::{self, GuestMem, HugePageSize, RamRange, PAGE_SIZE};
use super::snapshot::{self, DeviceState, SharedSnapshot, COM1_ID, PLATFORM_ID, PM1A_ID};
use super::state::{PlatformState, VcpuState, VmClockState, MAX_MSRS, SAVED_MSRS};
use super::vcpu::{self, Control, Request};
use super::{kvm_err, RuntimeError, StateError, VmExit};
use crate::spec::vmi::VmiSpec;

/// How long pause/stop wait for every vCPU to acknowledge.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// The sizing a VM is built with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmConfig {
    /// Name, for logs and the demo greeting.
    pub name: String,
    /// vCPU count (1..=254).
    pub vcpus: u8,
    /// Guest RAM in bytes (rounded up to 4 KiB pages when mapped).
    pub memory_bytes: u64,
}

impl VmConfig {
    /// Sizing from a VMI spec: vCPUs = sockets × cores × threads; memory =
    /// `memory.guest`, else `resources.requests.memory`. Validate the spec
    /// first; this only rejects what cannot be built.
    pub fn from_spec(name: &str, spec: &VmiSpec) -> Result<Self, RuntimeError> {
        let d = &spec.domain;
        let vcpus = d.cpu.as_ref().map_or(1, |c| c.vcpu_count());
        let vcpus = u8::try_from(vcpus)
            .ok()
            .filter(|v| (1..=254).contains(v))
            .ok_or_else(|| {
                RuntimeError::InvalidConfig(format!("{vcpus} vCPUs; the runtime supports 1..=254"))
            })?;
        let mem = d
            .memory
            .as_ref()
            .and_then(|m| m.guest.as_ref())
            .or_else(|| d.resources.as_ref().and_then(|r| r.requests.get("memory")))
            .ok_or_else(|| {
                RuntimeError::InvalidConfig("no guest memory size in the spec".into())
            })?;
        let memory_bytes = mem
            .to_bytes()
            .map_err(|e| RuntimeError::InvalidConfig(format!("guest memory: {e}")))?;
        Ok(VmConfig {
            name: name.to_string(),
            vcpus,
            memory_bytes: memory_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        })
    }
}

/// Lifecycle state of a [`Vm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// Built, vCPUs not started.
    Created,
    /// vCPUs running.
    Running,
    /// vCPUs parked at an instruction boundary.
    Paused,
    /// vCPU threads have ended.
    Exited,
}

/// Builds a [`Vm`].
pub struct VmBuilder {
    config: VmConfig,
    serial_out: Box<dyn Write + Send>,
    pio: Vec<(u64, u64, SharedDevice)>,
    mmio: Vec<(u64, u64, SharedDevice)>,
    require_smm: bool,
    kvm_device: Option<std::path::PathBuf>,
    cpu: Option<CpuConfig>,
    pinning: Option<Vec<usize>>,
    hugepages: Option<HugePageSize>,
    transparent_hugepages: bool,
    roms: Vec<(u64, Vec<u8>)>,
}

/// KVM memory slots of read-only regions start here, above any RAM slot.
const ROM_SLOT_BASE: u32 = 16;

impl VmBuilder {
    /// A builder with serial output discarded.
    pub fn new(config: VmConfig) -> Self {
        VmBuilder {
            config,
            serial_out: Box::new(std::io::sink()),
            pio: Vec::new(),
            mmio: Vec::new(),
            require_smm: false,
            kvm_device: None,
            cpu: None,
            pinning: None,
            hugepages: None,
            transparent_hugepages: true,
            roms: Vec::new(),
        }
    }

    /// Map `bytes` read-only at guest-physical `guest_addr` (firmware
    /// code in flash): the guest reads and executes it from memory, and
    /// its writes leave as MMIO exits, served by an MMIO device placed
    /// over the same range or dropped. `guest_addr` and the length must
    /// be page multiples and the range must not touch RAM.
    pub fn rom(mut self, guest_addr: u64, bytes: Vec<u8>) -> Self {
        self.roms.push((guest_addr, bytes));
        self
    }

    /// Open this device node instead of `/dev/kvm`.
    pub fn kvm_device(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.kvm_device = Some(path.into());
        self
    }

    /// Where COM1's output goes.
    pub fn serial_output(mut self, out: Box<dyn Write + Send>) -> Self {
        self.serial_out = out;
        self
    }

    /// Add a port-I/O device at `[base, base + len)`.
    pub fn pio_device(mut self, base: u64, len: u64, dev: SharedDevice) -> Self {
        self.pio.push((base, len, dev));
        self
    }

    /// Add an MMIO device at `[base, base + len)`.
    pub fn mmio_device(mut self, base: u64, len: u64, dev: SharedDevice) -> Self {
        self.mmio.push((base, len, dev));
        self
    }

    /// The guest CPU: topology, model and feature policies (default: one
    /// socket of single-threaded cores, the host model). Its topology must
    /// give the configured vCPU count.
    pub fn cpu(mut self, cpu: CpuConfig) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Pin vCPU `i` to host CPU `cpus[i]` (dedicated CPU placement; see
    /// [`pinning::DedicatedCpus`](super::pinning::DedicatedCpus)).
    pub fn vcpu_pinning(mut self, cpus: Vec<usize>) -> Self {
        self.pinning = Some(cpus);
        self
    }

    /// Whether ordinary (not hugetlb) guest RAM asks for transparent huge
    /// pages (`MADV_HUGEPAGE`); on by default, like QEMU and
    /// cloud-hypervisor. Off keeps 4 KiB pages, so a guest that touches
    /// one byte of a 2 MiB block costs 4 KiB of host memory, not 2 MiB.
    pub fn transparent_hugepages(mut self, on: bool) -> Self {
        self.transparent_hugepages = on;
        self
    }

    /// Back guest RAM with hugepages of `size` (KubeVirt
    /// `memory.hugepages.pageSize`); the memory size must be a multiple
    /// of the page size and the host pool must hold enough free pages.
    pub fn hugepages(mut self, size: Option<HugePageSize>) -> Self {
        self.hugepages = size;
        self
    }

    /// Fail the build unless the host can run SMM (Secure Boot needs it).
    pub fn require_smm(mut self, yes: bool) -> Self {
        self.require_smm = yes;
        self
    }

    /// Create the VM: KVM fd, irqchip, guest memory, vCPUs, devices.
    pub fn build(self) -> Result<Vm, RuntimeError> {
        let cfg = self.config;
        if cfg.vcpus == 0 || cfg.vcpus > 254 {
            return Err(RuntimeError::InvalidConfig(format!(
                "{} vCPUs; the runtime supports 1..=254",
                cfg.vcpus
            )));
        }
        let kvm = match &self.kvm_device {
            None => Kvm::new(),
            Some(path) => {
                let path =
                    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
                        RuntimeError::InvalidConfig(format!(
                            "KVM device path {path:?} holds a NUL byte"
                        ))
                    })?;
                Kvm::new_with_path(&path)
            }
        }
        .map_err(RuntimeError::KvmUnavailable)?;
        if self.require_smm && !kvm.check_extension(Cap::X86Smm) {
            return Err(RuntimeError::MissingCapability {
                capability: "KVM_CAP_X86_SMM",
                needed_for: "Secure Boot requires SMM",
            });
        }
        let memory = match self.hugepages {
            Some(size) => memory::create_hugepages(cfg.memory_bytes, size)?,
            None => {
                let memory = memory::create(cfg.memory_bytes)?;
                if self.transparent_hugepages {
                    memory::advise_transparent_hugepages(&memory);
                }
                memory
            }
        };
        let vm_fd = kvm.create_vm().map_err(kvm_err("KVM_CREATE_VM"))?;
        vm_fd
            .set_tss_address(0xfffb_d000)
            .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
        vm_fd
            .create_irq_chip()
            .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
        let pit = kvm_bindings::kvm_pit_config::default();
        vm_fd.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
        let ranges = memory::layout(cfg.memory_bytes);
        for (slot, region) in memory.iter().enumerate() {
            register_slot(&vm_fd, slot as u32, region, false)?;
        }

        let roms = map_roms(&kvm, &vm_fd, &ranges, self.roms)?;

        let ctl = Arc::new(Control::new(usize::from(cfg.vcpus)));
        let c = ctl.clone();
        let request: ExitRequest = Arc::new(move |e| c.request_exit(e));
        let serial_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| RuntimeError::Host {
            what: "serial IRQ eventfd",
            source,
        })?;
        vm_fd
            .register_irqfd(&serial_irq, COM1_IRQ)
            .map_err(kvm_err("KVM_IRQFD"))?;
        let serial = Arc::new(Mutex::new(SerialDevice::new(serial_irq, self.serial_out)));
        let power = Arc::new(Mutex::new(PowerControl::new(request.clone())));
        let mut pio = Bus::new();
        pio.insert(COM1_PORT, 8, serial.clone())?;
        pio.insert(PM1A_CNT_PORT, 2, power.clone())?;
        let device_states: Vec<(String, SharedSnapshot)> = vec![
            (COM1_ID.to_string(), serial.clone()),
            (PM1A_ID.to_string(), power),
        ];
        pio.insert(
            RESET_PORT,
            1,
            Arc::new(Mutex::new(ResetControl::new(request))),
        )?;
        for (base, len, dev) in self.pio {
            pio.insert(base, len, dev)?;
        }
        let mut mmio = Bus::new();
        for (base, len, dev) in self.mmio {
            mmio.insert(base, len, dev)?;
        }

        let supported = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let host_msrs = kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?;
        let msr_list: Vec<u32> = SAVED_MSRS
            .iter()
            .copied()
            .filter(|m| host_msrs.as_slice().contains(m))
            .take(MAX_MSRS)
            .collect();
        if let Some(p) = &self.pinning {
            if p.len() != usize::from(cfg.vcpus) {
                return Err(RuntimeError::InvalidConfig(format!(
                    "{} host CPUs given to pin {} vCPUs",
                    p.len(),
                    cfg.vcpus
                )));
            }
        }
        let cpu = self
            .cpu
            .unwrap_or_else(|| CpuConfig::flat(u32::from(cfg.vcpus)));
        if cpu.topology.vcpus() != u32::from(cfg.vcpus) {
            return Err(RuntimeError::Cpu(CpuError::Topology {
                topology: cpu.topology,
                vcpus: u32::from(cfg.vcpus),
            }));
        }
        let host: Vec<CpuidEntry> = supported.as_slice().iter().map(cpu::from_kvm).collect();
        let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
        let mut guest_features = Vec::new();
        for index in 0..u32::from(cfg.vcpus) {
            let guest = cpu.guest_cpuid(&host, index)?;
            if index == 0 {
                // Every vCPU has the same features; only topology differs.
                guest_features = feature_words::feature_words(&guest);
            }
            let fd = vm_fd
                .create_vcpu(u64::from(cpu.topology.apic_id(index)))
                .map_err(kvm_err("KVM_CREATE_VCPU"))?;
            let cpuid = cpu::to_kvm(&guest, supported.as_slice())?;
            fd.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
            vcpus.push(Arc::new(Mutex::new(fd)));
        }
        vcpu::install_kick_handler()?;
        let slots = memory.num_regions();
        let cpuid_signature = cpuid_signature(supported.as_slice());
        let cfg_vcpus = cfg.vcpus;
        Ok(Vm {
            config: cfg,
            _kvm: kvm,
            vm_fd: Arc::new(vm_fd),
            memory,
            ranges,
            _roms: roms,
            vcpus,
            pio: Mutex::new(Arc::new(pio)),
            mmio: Mutex::new(Arc::new(mmio)),
            ctl,
            handles: Mutex::new(Vec::new()),
            state: Mutex::new(RunState::Created),
            serial,
            device_states: Mutex::new(device_states),
            migrating_disks: Mutex::new(Vec::new()),
            dirty_logging: Mutex::new(vec![false; slots]),
            msr_list,
            cpuid_signature,
            guest_features,
            pinning: self.pinning,
            tids: Arc::new(Mutex::new(vec![0; usize::from(cfg_vcpus)])),
        })
    }
}

/// Map the read-only regions of [`VmBuilder::rom`] into KVM slots.
fn map_roms(
    kvm: &Kvm,
    vm: &VmFd,
    ram: &[RamRange],
    roms: Vec<(u64, Vec<u8>)>,
) -> Result<Vec<vm_memory::MmapRegion>, RuntimeError> {
    if roms.is_empty() {
        return Ok(Vec::new());
    }
    if !kvm.check_extension(Cap::ReadonlyMem) {
        return Err(RuntimeError::MissingCapability {
            capability: "KVM_CAP_READONLY_MEM",
            needed_for: "firmware mapped read-only",
        });
    }
    let mut mapped: Vec<(u64, u64)> = Vec::new();
    let mut regions = Vec::with_capacity(roms.len());
    for (i, (addr, bytes)) in roms.into_iter().enumerate() {
        let len = bytes.len() as u64;
        let end = addr.checked_add(len);
        let overlaps = |a: u64, l: u64| end.is_some_and(|e| addr < a + l && a < e);
        if len == 0
            || addr % PAGE_SIZE != 0
            || len % PAGE_SIZE != 0
            || end.is_none()
            || ram.iter().any(|r| overlaps(r.guest_addr, r.len))
            || mapped.iter().any(|&(a, l)| overlaps(a, l))
        {
            return Err(RuntimeError::InvalidConfig(format!(
                "read-only region of {len:#x} bytes at {addr:#x}: it must be a non-empty run of \
                 whole pages that touches neither RAM nor another read-only region"
            )));
        }
        let region = vm_memory::MmapRegion::new(bytes.len()).map_err(|e| {
            RuntimeError::GuestMemory(format!("mapping a read-only region of {len:#x} bytes: {e}"))
        })?;
        // SAFETY: the region was just mapped with `bytes.len()` writable
        // bytes and nothing else refers to it yet.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), region.as_ptr(), bytes.len()) };
        let mr = kvm_userspace_memory_region {
            slot: ROM_SLOT_BASE + i as u32,
            guest_phys_addr: addr,
            memory_size: len,
            userspace_addr: region.as_ptr() as u64,
            flags: KVM_MEM_READONLY,
        };
        // SAFETY: `region` is a live mapping of `len` bytes that the `Vm`
        // keeps (in `_roms`) for as long as the VM fd exists.
        unsafe { vm.set_user_memory_region(mr) }
            .map_err(kvm_err("KVM_SET_USER_MEMORY_REGION (read-only)"))?;
        mapped.push((addr, len));
        regions.push(region);
    }
    Ok(regions)
}

/// Lock a mutex, recovering from poisoning (the data are plain values).
fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn cpuid_signature(entries: &[kvm_bindings::kvm_cpuid_entry2]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for e in entries {
        // KVM fills APIC ids from the host CPU that ran the ioctl; they are
        // per-vCPU in the guest anyway, so they are not part of the digest.
        let (mut eax, mut ebx, mut edx) = (e.eax, e.ebx, e.edx);
        match e.function {
            1 => ebx &= 0x0000_ffff,
            0xb | 0x1f => edx = 0,
            0x8000_001e => eax = 0,
            _ => {}
        }
        for word in [e.function, e.index, e.flags, eax, ebx, e.ecx, edx] {
            for b in word.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
        }
    }
    h
}

fn register_slot(
    vm: &VmFd,
    slot: u32,
    region: &vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>,
    dirty_log: bool,
) -> Result<(), RuntimeError> {
    let mr = kvm_userspace_memory_region {
        slot,
        guest_phys_addr: region.start_addr().0,
        memory_size: region.len(),
        userspace_addr: region.as_ptr() as u64,
        flags: if dirty_log {
            KVM_MEM_LOG_DIRTY_PAGES
        } else {
            0
        },
    };
    // SAFETY: the host range [as_ptr, as_ptr + len) is a live mapping owned
    // by `GuestMemoryMmap`, which the `Vm` keeps alive as long as the VM fd.
    unsafe { vm.set_user_memory_region(mr) }.map_err(kvm_err("KVM_SET_USER_MEMORY_REGION"))
}

/// A dirty-page bitmap of one memory slot: bit `i` of word `i / 64` is the
/// page at `guest_addr + i * 4096`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    /// KVM slot number.
    pub slot: u32,
    /// Guest-physical start of the slot.
    pub guest_addr: u64,
    /// Slot length in bytes.
    pub len: u64,
    /// One bit per page.
    pub bits: Vec<u64>,
}

impl DirtyBitmap {
    /// Number of dirty pages.
    pub fn count(&self) -> u64 {
        self.bits.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Guest addresses of dirty pages, in ascending order. Zero words are
    /// skipped and set bits found with `trailing_zeros`, so a mostly clean
    /// bitmap costs one load per 64 pages.
    pub fn pages(&self) -> impl Iterator<Item = u64> + '_ {
        dirty_pages(&self.bits, self.guest_addr)
    }
}

/// Guest addresses of the pages whose bits are set in `bits` (bit `i` is
/// the page at `base + i * 4096`).
pub fn dirty_pages(bits: &[u64], base: u64) -> impl Iterator<Item = u64> + '_ {
    bits.iter()
        .enumerate()
        .filter(|(_, w)| **w != 0)
        .flat_map(move |(i, &w)| {
            let mut word = w;
            std::iter::from_fn(move || {
                if word == 0 {
                    return None;
                }
                let bit = u64::from(word.trailing_zeros());
                word &= word - 1;
                Some(base + ((i as u64) * 64 + bit) * PAGE_SIZE)
            })
        })
}

/// A running (or runnable) KVM virtual machine.
pub struct Vm {
    config: VmConfig,
    _kvm: Kvm,
    vm_fd: Arc<VmFd>,
    memory: GuestMem,
    ranges: Vec<RamRange>,
    /// Read-only regions; KVM maps them, so they live as long as the VM.
    _roms: Vec<vm_memory::MmapRegion>,
    vcpus: Vec<Arc<Mutex<VcpuFd>>>,
    pio: Mutex<Arc<Bus>>,
    mmio: Mutex<Arc<Bus>>,
    ctl: Arc<Control>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    state: Mutex<RunState>,
    serial: Arc<Mutex<SerialDevice>>,
    /// Devices whose state migrates, by id (the in-kernel platform
    /// devices, [`PLATFORM_ID`], are saved through the VM fd instead).
    device_states: Mutex<Vec<(String, SharedSnapshot)>>,
    /// Disks whose contents migrate (`BlockMigration`), by id.
    migrating_disks: Mutex<Vec<(String, SharedDisk)>>,
    dirty_logging: Mutex<Vec<bool>>,
    msr_list: Vec<u32>,
    cpuid_signature: u64,
    /// The feature words of the guest's CPUID.
    guest_features: Vec<FeatureWord>,
    pinning: Option<Vec<usize>>,
    tids: Arc<Mutex<Vec<libc::pid_t>>>,
}

impl Vm {
    /// The sizing it was built with.
    pub fn config(&self) -> &VmConfig {
        &self.config
    }

    /// A stable 64-bit digest (FNV-1a) of the CPUID the guest sees, minus
    /// the per-vCPU APIC ids: two VMs with equal signatures expose the same
    /// CPU features, so a guest can move between them.
    pub fn cpuid_signature(&self) -> u64 {
        self.cpuid_signature
    }

    /// The CPU features the guest was given (vCPU 0's CPUID feature
    /// registers): a migration target must offer each of them.
    pub fn guest_features(&self) -> &[FeatureWord] {
        &self.guest_features
    }

    /// Guest memory (writes through it are dirty-tracked).
    pub fn memory(&self) -> &GuestMem {
        &self.memory
    }

    /// The guest-physical RAM layout.
    pub fn ram_ranges(&self) -> &[RamRange] {
        &self.ranges
    }

    /// Current lifecycle state.
    pub fn state(&self) -> RunState {
        *self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, s: RunState) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = s;
    }

    fn expect_state(
        &self,
        op: &'static str,
        allowed: &[RunState],
    ) -> Result<RunState, RuntimeError> {
        let s = self.state();
        if allowed.contains(&s) {
            Ok(s)
        } else {
            Err(RuntimeError::BadState { op, state: s })
        }
    }

    /// Write bytes into guest memory.
    pub fn write_memory(&self, addr: u64, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.memory
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|e| {
                RuntimeError::GuestMemory(format!(
                    "write of {} bytes at {addr:#x}: {e}",
                    bytes.len()
                ))
            })
    }

    /// Read bytes from guest memory.
    pub fn read_memory(&self, addr: u64, buf: &mut [u8]) -> Result<(), RuntimeError> {
        self.memory
            .read_slice(buf, GuestAddress(addr))
            .map_err(|e| {
                RuntimeError::GuestMemory(format!("read of {} bytes at {addr:#x}: {e}", buf.len()))
            })
    }

    /// Queue bytes on COM1 for the guest to read.
    pub fn serial_input(&self, bytes: &[u8]) -> Result<(), RuntimeError> {
        self.serial
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .enqueue_input(bytes)
            .map_err(RuntimeError::InvalidConfig)
    }

    /// Set vCPU 0's entry state (before [`Vm::start`]).
    pub fn set_boot(&self, boot: &BootState) -> Result<(), RuntimeError> {
        self.expect_state("set the boot state of", &[RunState::Created])?;
        let fd = self.vcpus[0].lock().unwrap_or_else(|p| p.into_inner());
        let mut regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
        let mut sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        boot::apply(boot, &self.memory, &mut regs, &mut sregs)?;
        fd.set_sregs(&sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
        fd.set_regs(&regs).map_err(kvm_err("KVM_SET_REGS"))?;
        Ok(())
    }

    /// Add a port-I/O device at `[base, base + len)` to a VM that has not
    /// started yet (devices that need the VM's memory or [`Vm::interrupts`]
    /// are made after [`VmBuilder::build`]).
    pub fn add_pio_device(
        &self,
        base: u64,
        len: u64,
        dev: SharedDevice,
    ) -> Result<(), RuntimeError> {
        self.add_device(&self.pio, base, len, dev)
    }

    /// Add an MMIO device at `[base, base + len)` to a VM that has not
    /// started yet.
    pub fn add_mmio_device(
        &self,
        base: u64,
        len: u64,
        dev: SharedDevice,
    ) -> Result<(), RuntimeError> {
        self.add_device(&self.mmio, base, len, dev)
    }

    fn add_device(
        &self,
        bus: &Mutex<Arc<Bus>>,
        base: u64,
        len: u64,
        dev: SharedDevice,
    ) -> Result<(), RuntimeError> {
        self.expect_state("add a device to", &[RunState::Created])?;
        Arc::make_mut(&mut lock(bus)).insert(base, len, dev)?;
        Ok(())
    }

    /// Unmap the port-I/O device at `base` from a VM that has not started
    /// yet, returning it (a device that takes over a range can forward to
    /// what was there, as the PCI config port does for 0xCF9 reset).
    pub fn remove_pio_device(&self, base: u64) -> Result<Option<SharedDevice>, RuntimeError> {
        self.expect_state("remove a device from", &[RunState::Created])?;
        Ok(Arc::make_mut(&mut lock(&self.pio))
            .remove(base)
            .map(|(_, dev)| dev))
    }

    /// A callback through which devices end the VM with an exit reason
    /// (a watchdog's `poweroff`); the first reason given wins.
    pub fn exit_requester(&self) -> ExitRequest {
        let ctl = self.ctl.clone();
        Arc::new(move |e| ctl.request_exit(e))
    }

    /// The CPUID vCPU `index` was given (KVM_GET_CPUID2).
    pub fn vcpu_cpuid(&self, index: usize) -> Result<Vec<CpuidEntry>, RuntimeError> {
        let fd = self
            .vcpus
            .get(index)
            .ok_or_else(|| RuntimeError::InvalidConfig(format!("the VM has no vCPU {index}")))?;
        let fd = fd.lock().unwrap_or_else(|p| p.into_inner());
        let cpuid = fd
            .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_CPUID2"))?;
        Ok(cpuid.as_slice().iter().map(cpu::from_kvm).collect())
    }

    /// Linux thread IDs of the vCPU threads, by index (0 until started).
    pub fn vcpu_thread_ids(&self) -> Vec<libc::pid_t> {
        lock(&self.tids).clone()
    }

    /// Create an in-kernel KVM device (`KVM_CREATE_DEVICE`), e.g. the
    /// `KVM_DEV_TYPE_VFIO` pseudo-device that VFIO passthrough registers
    /// its groups with.
    pub fn create_kvm_device(
        &self,
        device: &mut kvm_bindings::kvm_create_device,
    ) -> Result<kvm_ioctls::DeviceFd, RuntimeError> {
        self.vm_fd
            .create_device(device)
            .map_err(kvm_err("KVM_CREATE_DEVICE"))
    }

    /// A handle through which devices raise interrupts in this VM.
    pub fn interrupts(&self) -> Interrupts {
        Interrupts::new(self.vm_fd.clone())
    }

    /// Start the vCPU threads.
    pub fn start(&self) -> Result<(), RuntimeError> {
        self.expect_state("start", &[RunState::Created])?;
        let mut handles = self.handles.lock().unwrap_or_else(|p| p.into_inner());
        let mut threads = Vec::new();
        for (id, vcpu) in self.vcpus.iter().enumerate() {
            let (vcpu, ctl, pio, mmio) = (
                vcpu.clone(),
                self.ctl.clone(),
                lock(&self.pio).clone(),
                lock(&self.mmio).clone(),
            );
            let placement = vcpu::Placement {
                cpu: self.pinning.as_ref().and_then(|p| p.get(id).copied()),
                tids: self.tids.clone(),
            };
            let id = id as u8;
            let h = std::thread::Builder::new()
                .name(format!("{}-vcpu{id}", self.config.name))
                .spawn(move || vcpu::run(id, vcpu, ctl, pio, mmio, placement))
                .map_err(RuntimeError::Thread);
            match h {
                Ok(h) => {
                    use std::os::unix::thread::JoinHandleExt;
                    threads.push(h.as_pthread_t());
                    handles.push(h);
                }
                Err(e) => {
                    drop(handles);
                    self.ctl.lock().threads = threads;
                    self.ctl.request_exit(VmExit::Stopped);
                    let _ = self.join_all();
                    return Err(e);
                }
            }
        }
        self.ctl.lock().threads = threads;
        self.set_state(RunState::Running);
        Ok(())
    }

    /// Park every vCPU at an instruction boundary, then pause every
    /// device with state ([`Snapshot::pause`]), so that guest memory
    /// holds still. Idempotent.
    pub fn pause(&self) -> Result<(), RuntimeError> {
        if self.expect_state("pause", &[RunState::Running, RunState::Paused])? == RunState::Paused {
            return Ok(());
        }
        {
            let mut g = self.ctl.lock();
            if g.request == Request::Stop {
                return Err(RuntimeError::BadState {
                    op: "pause",
                    state: RunState::Exited,
                });
            }
            g.request = Request::Pause;
        }
        let n = self.ctl.vcpus;
        self.ctl
            .kick_until("pause", ACK_TIMEOUT, |g| g.parked + g.exited == n)?;
        // Under the registry's lock, so a device added meanwhile sees
        // the state it must follow (see `add_device_state`).
        let devices = lock(&self.device_states);
        for (_, dev) in devices.iter() {
            lock(dev).pause();
        }
        self.set_state(RunState::Paused);
        Ok(())
    }

    /// Resume every device ([`Snapshot::resume`]), then let the paused
    /// vCPUs run again. The vCPUs run even when a device could not
    /// restart (a VM is never left paused by a failed resume); that
    /// device is named in the error.
    pub fn resume(&self) -> Result<(), RuntimeError> {
        self.expect_state("resume", &[RunState::Paused])?;
        let mut failed = None;
        let devices = lock(&self.device_states);
        for (id, dev) in devices.iter() {
            if let Err(source) = lock(dev).resume() {
                log::warn!("{id}: could not resume: {source}");
                failed.get_or_insert(RuntimeError::DeviceState {
                    device: id.clone(),
                    source,
                });
            }
        }
        {
            let mut g = self.ctl.lock();
            if g.request == Request::Pause {
                g.request = Request::Run;
            }
            self.ctl.cond.notify_all();
        }
        self.set_state(RunState::Running);
        failed.map_or(Ok(()), Err)
    }

    /// Hand the host locks of every device with state to a migration
    /// target ([`Snapshot::release_locks`]): flush, then let go. The VM
    /// must be paused (or not started). When a device fails, those that
    /// already let go take their locks back and the error names it.
    pub fn release_locks(&self) -> Result<(), RuntimeError> {
        self.expect_state(
            "release the locks of",
            &[RunState::Paused, RunState::Created],
        )?;
        let devices = lock(&self.device_states);
        for (i, (id, dev)) in devices.iter().enumerate() {
            if let Err(source) = lock(dev).release_locks() {
                for (back, dev) in &devices[..i] {
                    if let Err(e) = lock(dev).take_locks() {
                        log::error!("{back}: could not take its locks back: {e}");
                    }
                }
                return Err(RuntimeError::DeviceState {
                    device: id.clone(),
                    source,
                });
            }
        }
        Ok(())
    }

    /// Take the host locks of every device with state
    /// ([`Snapshot::take_locks`]): a migration target does so before it
    /// confirms, a source whose migration failed after
    /// [`Vm::release_locks`] before it resumes. The first device whose
    /// lock is held elsewhere is named in the error; the locks taken
    /// before it stay held, so calling again (once the other side let
    /// go) completes the set.
    pub fn take_locks(&self) -> Result<(), RuntimeError> {
        let devices = lock(&self.device_states);
        for (id, dev) in devices.iter() {
            lock(dev)
                .take_locks()
                .map_err(|source| RuntimeError::DeviceState {
                    device: id.clone(),
                    source,
                })?;
        }
        Ok(())
    }

    /// Stop the VM (if still running) and return why it ended.
    pub fn stop(&self) -> Result<VmExit, RuntimeError> {
        if self.state() == RunState::Created {
            self.set_state(RunState::Exited);
            return Ok(VmExit::Stopped);
        }
        self.ctl.request_exit(VmExit::Stopped);
        self.join_all()
    }

    /// Block until the VM ends (power-off, reset, fault or [`Vm::stop`]).
    pub fn wait(&self) -> Result<VmExit, RuntimeError> {
        loop {
            if let Some(exit) = self.wait_timeout(Duration::from_secs(3600))? {
                return Ok(exit);
            }
        }
    }

    /// Like [`Vm::wait`] with a deadline; `None` if still running.
    pub fn wait_timeout(&self, timeout: Duration) -> Result<Option<VmExit>, RuntimeError> {
        self.expect_state(
            "wait for",
            &[RunState::Running, RunState::Paused, RunState::Exited],
        )?;
        {
            let g = self.ctl.lock();
            let (g, _) = self
                .ctl
                .cond
                .wait_timeout_while(g, timeout, |g| g.exit.is_none())
                .unwrap_or_else(|p| p.into_inner());
            if g.exit.is_none() {
                return Ok(None);
            }
        }
        self.join_all().map(Some)
    }

    fn join_all(&self) -> Result<VmExit, RuntimeError> {
        let n = self.ctl.vcpus;
        let started = self.handles.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.ctl
            .kick_until("stop", ACK_TIMEOUT, |g| g.exited >= started.min(n))?;
        // No kicks after this point: the thread ids become invalid on join.
        self.ctl.lock().threads.clear();
        for h in self
            .handles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = h.join();
        }
        self.set_state(RunState::Exited);
        Ok(self.ctl.lock().exit.clone().unwrap_or(VmExit::Stopped))
    }

    /// Turn KVM dirty logging on or off for every memory slot.
    pub fn set_dirty_logging(&self, enabled: bool) -> Result<(), RuntimeError> {
        let mut flags = self.dirty_logging.lock().unwrap_or_else(|p| p.into_inner());
        for (slot, region) in self.memory.iter().enumerate() {
            if flags[slot] != enabled {
                register_slot(&self.vm_fd, slot as u32, region, enabled)?;
                flags[slot] = enabled;
            }
        }
        Ok(())
    }

    /// Turn KVM dirty logging on or off for one slot.
    pub fn set_slot_dirty_logging(&self, slot: usize, enabled: bool) -> Result<(), RuntimeError> {
        let mut flags = self.dirty_logging.lock().unwrap_or_else(|p| p.into_inner());
        let region = self
            .memory
            .iter()
            .nth(slot)
            .ok_or_else(|| RuntimeError::InvalidConfig(format!("no memory slot {slot}")))?;
        register_slot(&self.vm_fd, slot as u32, region, enabled)?;
        flags[slot] = enabled;
        Ok(())
    }

    /// Pages written since the last call, per slot: KVM's dirty log (guest
    /// writes, for slots with logging on) merged with vm-memory's bitmap
    /// (VMM writes). Both are reset.
    pub fn take_dirty_pages(&self) -> Result<Vec<DirtyBitmap>, RuntimeError> {
        let flags = self
            .dirty_logging
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut out = Vec::new();
        for (slot, region) in self.memory.iter().enumerate() {
            let len = region.len();
            let words = (len / PAGE_SIZE).div_ceil(64) as usize;
            let mut bits = if flags[slot] {
                self.vm_fd
                    .get_dirty_log(slot as u32, len as usize)
                    .map_err(kvm_err("KVM_GET_DIRTY_LOG"))?
            } else {
                vec![0u64; words]
            };
            bits.resize(words, 0);
            // VMM-side writes: vm-memory's bitmap has the same layout (one
            // bit per 4 KiB page in u64 words); swap it to zero atomically.
            let vmm_bits = std::ops::Deref::deref(region).bitmap().get_and_reset();
            for (w, v) in bits.iter_mut().zip(vmm_bits) {
                *w |= v;
            }
            out.push(DirtyBitmap {
                slot: slot as u32,
                guest_addr: region.start_addr().0,
                len,
                bits,
            });
        }
        Ok(out)
    }

    /// Pages of guest RAM that were ever touched, per RAM range (bit `i` of
    /// word `i / 64` = page `i` of the range), from `/proc/self/pagemap`:
    /// a page that is neither present nor swapped out has never been
    /// written and reads as zero. `None` where pagemap is unreadable.
    /// Migration's first pass uses it to skip reading untouched memory.
    pub fn touched_pages(&self) -> Option<Vec<Vec<u64>>> {
        use std::os::unix::fs::FileExt;
        let f = std::fs::File::open("/proc/self/pagemap").ok()?;
        let host_page = 4096u64;
        let mut out = Vec::new();
        for region in self.memory.iter() {
            let pages = region.len() / PAGE_SIZE;
            let mut bits = vec![0u64; pages.div_ceil(64) as usize];
            let start = region.as_ptr() as u64 / host_page;
            let mut buf = vec![0u8; 8 * 4096];
            let mut done = 0u64;
            while done < pages {
                let n = (pages - done).min(4096);
                let bytes = &mut buf[..(n * 8) as usize];
                f.read_exact_at(bytes, (start + done) * 8).ok()?;
                for (i, e) in bytes.chunks_exact(8).enumerate() {
                    let entry = u64::from_le_bytes(e.try_into().ok()?);
                    // Bit 63: present; bit 62: swapped.
                    if entry & (3 << 62) != 0 {
                        let p = done + i as u64;
                        bits[(p / 64) as usize] |= 1 << (p % 64);
                    }
                }
                done += n;
            }
            out.push(bits);
        }
        Some(out)
    }

    /// Save every vCPU's state. The VM must be paused (or not started).
    pub fn save_vcpus(&self) -> Result<Vec<Box<VcpuState>>, RuntimeError> {
        self.expect_state("save the vCPUs of", &[RunState::Paused, RunState::Created])?;
        self.vcpus
            .iter()
            .enumerate()
            .map(|(id, v)| {
                save_vcpu(
                    id as u32,
                    &v.lock().unwrap_or_else(|p| p.into_inner()),
                    &self.msr_list,
                )
            })
            .collect()
    }

    /// Load vCPU states saved by [`Vm::save_vcpus`] (same vCPU count).
    pub fn restore_vcpus(&self, states: &[Box<VcpuState>]) -> Result<(), RuntimeError> {
        self.expect_state(
            "restore the vCPUs of",
            &[RunState::Paused, RunState::Created],
        )?;
        if states.len() != self.vcpus.len() {
            return Err(RuntimeError::InvalidConfig(format!(
                "{} vCPU states for a VM with {} vCPUs",
                states.len(),
                self.vcpus.len()
            )));
        }
        for (v, s) in self.vcpus.iter().zip(states) {
            restore_vcpu(&v.lock().unwrap_or_else(|p| p.into_inner()), s)?;
        }
        Ok(())
    }

    /// Register a device whose state migrates with the guest under `id`
    /// (see [`snapshot`](super::snapshot)). A target VM registers the
    /// same devices under the same ids; a device that leaves (hot-unplug)
    /// is removed with [`Vm::remove_device_state`].
    pub fn add_device_state(&self, id: &str, device: SharedSnapshot) -> Result<(), RuntimeError> {
        snapshot::check_device_id(id).map_err(RuntimeError::InvalidConfig)?;
        let mut devices = lock(&self.device_states);
        if id == PLATFORM_ID || devices.iter().any(|(d, _)| d == id) {
            return Err(RuntimeError::InvalidConfig(format!(
                "a device with state is registered as {id:?} already"
            )));
        }
        if self.state() == RunState::Paused {
            lock(&device).pause();
        }
        devices.push((id.to_string(), device));
        Ok(())
    }

    /// Register a disk only this host holds, whose contents a migration
    /// copies (`BlockMigration`; see [`local_disk`](super::local_disk)).
    /// A target VM registers a disk of the same size under the same id.
    pub fn add_migrating_disk(&self, id: &str, disk: SharedDisk) -> Result<(), RuntimeError> {
        snapshot::check_device_id(id).map_err(RuntimeError::InvalidConfig)?;
        let mut disks = lock(&self.migrating_disks);
        if disks.iter().any(|(d, _)| d == id) {
            return Err(RuntimeError::InvalidConfig(format!(
                "a migrating disk is registered as {id:?} already"
            )));
        }
        disks.push((id.to_string(), disk));
        Ok(())
    }

    /// The disks whose contents migrate, in registration order.
    pub fn migrating_disks(&self) -> Vec<(String, SharedDisk)> {
        lock(&self.migrating_disks).clone()
    }

    /// Stop migrating the state of the device registered as `id`;
    /// whether it was registered.
    pub fn remove_device_state(&self, id: &str) -> bool {
        let mut devices = lock(&self.device_states);
        let before = devices.len();
        devices.retain(|(d, _)| d != id);
        devices.len() != before
    }

    /// The ids of every device whose state migrates, [`PLATFORM_ID`]
    /// first.
    pub fn device_state_ids(&self) -> Vec<String> {
        std::iter::once(PLATFORM_ID.to_string())
            .chain(lock(&self.device_states).iter().map(|(id, _)| id.clone()))
            .collect()
    }

    /// Save every device's state: the in-kernel PICs, IOAPIC and PIT
    /// first, then each registered device. The VM must be paused (or not
    /// started).
    pub fn save_devices(&self) -> Result<Vec<DeviceState>, RuntimeError> {
        self.expect_state(
            "save the devices of",
            &[RunState::Paused, RunState::Created],
        )?;
        let mut out = vec![DeviceState {
            id: PLATFORM_ID.to_string(),
            state: zerocopy::IntoBytes::as_bytes(&self.save_platform()?).to_vec(),
        }];
        for (id, dev) in lock(&self.device_states).iter() {
            let state = lock(dev)
                .save_state()
                .map_err(|source| RuntimeError::DeviceState {
                    device: id.clone(),
                    source,
                })?;
            out.push(DeviceState {
                id: id.clone(),
                state,
            });
        }
        Ok(out)
    }

    /// Load device states saved by [`Vm::save_devices`] on a VM with the
    /// same devices. The ids must match this VM's exactly: a device
    /// without a state, or a state without a device, is an error before
    /// anything is loaded. The VM must be paused (or not started).
    pub fn restore_devices(&self, states: &[DeviceState]) -> Result<(), RuntimeError> {
        self.expect_state(
            "restore the devices of",
            &[RunState::Paused, RunState::Created],
        )?;
        let devices = lock(&self.device_states);
        let ours = std::iter::once(PLATFORM_ID).chain(devices.iter().map(|(id, _)| id.as_str()));
        let theirs = states.iter().map(|s| s.id.as_str());
        if let Some((missing, unexpected)) = snapshot::id_mismatch(ours, theirs) {
            return Err(RuntimeError::DeviceMismatch {
                missing,
                unexpected,
            });
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = states.iter().find(|s| !seen.insert(s.id.as_str())) {
            return Err(RuntimeError::DeviceState {
                device: dup.id.clone(),
                source: StateError::Corrupt("state given twice".into()),
            });
        }
        // Check the platform blob before any device changes.
        let platform = states
            .iter()
            .find(|s| s.id == PLATFORM_ID)
            .map(|s| PlatformState::from_bytes(&s.state))
            .transpose()
            .map_err(|source| RuntimeError::DeviceState {
                device: PLATFORM_ID.to_string(),
                source,
            })?;
        for s in states.iter().filter(|s| s.id != PLATFORM_ID) {
            if let Some((_, dev)) = devices.iter().find(|(id, _)| *id == s.id) {
                lock(dev)
                    .restore_state(&s.state)
                    .map_err(|source| RuntimeError::DeviceState {
                        device: s.id.clone(),
                        source,
                    })?;
            }
        }
        if let Some(p) = platform {
            self.restore_platform(&p)?;
        }
        Ok(())
    }

    fn save_platform(&self) -> Result<PlatformState, RuntimeError> {
        let mut s = PlatformState::new();
        for (chip, id) in [
            (&mut s.pic_master, 0),
            (&mut s.pic_slave, 1),
            (&mut s.ioapic, 2),
        ] {
            chip.chip_id = id;
            self.vm_fd
                .get_irqchip(chip)
                .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
        }
        s.pit = self.vm_fd.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?;
        Ok(s)
    }

    fn restore_platform(&self, s: &PlatformState) -> Result<(), RuntimeError> {
        for chip in [&s.pic_master, &s.pic_slave, &s.ioapic] {
            self.vm_fd
                .set_irqchip(chip)
                .map_err(kvm_err("KVM_SET_IRQCHIP"))?;
        }
        self.vm_fd.set_pit2(&s.pit).map_err(kvm_err("KVM_SET_PIT2"))
    }

    /// Save the KVM clock.
    pub fn save_clock(&self) -> Result<VmClockState, RuntimeError> {
        let c = self.vm_fd.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?;
        Ok(VmClockState::new(c))
    }

    /// Restore the KVM clock.
    pub fn restore_clock(&self, c: &VmClockState) -> Result<(), RuntimeError> {
        let mut data = c.clock;
        // Only the value is restored; KVM rejects host-specific flags.
        data.flags = 0;
        self.vm_fd
            .set_clock(&data)
            .map_err(kvm_err("KVM_SET_CLOCK"))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if matches!(self.state(), RunState::Running | RunState::Paused) {
            self.ctl.request_exit(VmExit::Stopped);
            if let Err(e) = self.join_all() {
                log::error!("VM {}: vCPU threads did not stop: {e}", self.config.name);
            }
        }
    }
}

fn save_vcpu(id: u32, fd: &VcpuFd, msr_list: &[u32]) -> Result<Box<VcpuState>, RuntimeError> {
    let mut s = VcpuState::new(id);
    s.mp_state = U32::new(
        fd.get_mp_state()
            .map_err(kvm_err("KVM_GET_MP_STATE"))?
            .mp_state,
    );
    s.regs = fd.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    s.sregs = fd.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    s.xsave = fd.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
    s.xcrs = fd.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
    s.lapic = fd.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    s.events = fd
        .get_vcpu_events()
        .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    let entries: Vec<kvm_msr_entry> = msr_list
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|e| RuntimeError::InvalidConfig(format!("MSR list: {e:?}")))?;
    let n = fd.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
    for (slot, e) in s.msrs.iter_mut().zip(msrs.as_slice().iter().take(n)) {
        *slot = *e;
    }
    s.msr_count = U32::new(n.min(MAX_MSRS) as u32);
    Ok(s)
}

fn restore_vcpu(fd: &VcpuFd, s: &VcpuState) -> Result<(), RuntimeError> {
    fd.set_mp_state(kvm_mp_state {
        mp_state: s.mp_state.get(),
    })
    .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    fd.set_regs(&s.regs).map_err(kvm_err("KVM_SET_REGS"))?;
    fd.set_sregs(&s.sregs).map_err(kvm_err("KVM_SET_SREGS"))?;
    // SAFETY: the struct is the 4096-byte legacy layout and KVM_CAP_XSAVE2
    // is not enabled, so KVM reads only that much.
    unsafe { fd.set_xsave(&s.xsave) }.map_err(kvm_err("KVM_SET_XSAVE"))?;
    fd.set_xcrs(&s.xcrs).map_err(kvm_err("KVM_SET_XCRS"))?;
    fd.set_lapic(&s.lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    let n = (s.msr_count.get() as usize).min(MAX_MSRS);
    let msrs = Msrs::from_entries(&s.msrs[..n])
        .map_err(|e| RuntimeError::InvalidConfig(format!("MSR list: {e:?}")))?;
    let written = fd.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if written != n {
        return Err(RuntimeError::InvalidConfig(format!(
            "KVM accepted {written} of {n} MSRs (first rejected index {:#x})",
            s.msrs[written].index
        )));
    }
    fd.set_vcpu_events(&s.events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirty_page_iteration_matches_bits() {
        let bits = vec![0b1011u64, 0, 1 << 63, u64::MAX];
        let pages: Vec<u64> = dirty_pages(&bits, 0x1000_0000).collect();
        let mut expected = vec![
            0x1000_0000,
            0x1000_1000,
            0x1000_3000,
            0x1000_0000 + 191 * 4096,
        ];
        expected.extend((192..256).map(|i| 0x1000_0000 + i * 4096));
        assert_eq!(pages, expected);
        assert_eq!(dirty_pages(&[0, 0], 0).count(), 0);
    }
}
