//! The KVM runtime: build a VM from a validated spec, run its vCPUs on
//! threads that dispatch exits onto PIO/MMIO buses, pause/resume/stop it,
//! track dirty pages and save/restore vCPU state for migration.
//!
//! ```no_run
//! use virtkit_core::runtime::{VmBuilder, VmConfig, BootState};
//! let config = VmConfig { name: "demo".into(), vcpus: 1, memory_bytes: 16 << 20 };
//! let vm = VmBuilder::new(config).serial_output(Box::new(std::io::stdout())).build()?;
//! vm.write_memory(0x10000, &[0xba, 0x04, 0x06, 0xb8, 0x00, 0x20, 0xef])?; // mov dx,0x604; mov ax,0x2000; out dx,ax
//! vm.set_boot(&BootState::RealMode { cs: 0x1000, ip: 0 })?;
//! vm.start()?;
//! let exit = vm.wait();
//! # Ok::<(), virtkit_core::runtime::RuntimeError>(())
//! ```

pub mod boot;
pub mod bus;
pub mod cpu;
pub mod devices;
pub mod feature_words;
pub mod irq;
pub mod local_disk;
pub mod memory;
pub mod pinning;
pub mod snapshot;
pub mod state;
mod vcpu;
mod vm;

pub use boot::BootState;
pub use bus::{Bus, BusDevice, BusError, SharedDevice};
pub use cpu::{CpuConfig, CpuError, HostCpuInfo, Topology};
pub use irq::Interrupts;
pub use snapshot::{DeviceState, SharedSnapshot, Snapshot};
pub use state::{PlatformState, StateError, VcpuState, VmClockState};
pub use vm::{dirty_pages, DirtyBitmap, RunState, Vm, VmBuilder, VmConfig};

use std::fmt;

/// Why the VM stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The guest powered off (ACPI PM1a SLP_EN at port 0x604).
    PowerOff,
    /// The guest asked for a reset (port 0xCF9). The embedding VMM decides
    /// whether to rebuild the VM.
    Reset,
    /// The embedding program called [`Vm::stop`].
    Stopped,
    /// A watchdog expired and its action stops the VM (`poweroff`, or
    /// `reset`, which the embedding VMM carries out by rebuilding the VM).
    Watchdog {
        /// The configured action.
        action: crate::spec::vmi::WatchdogAction,
    },
    /// A vCPU triple-faulted (KVM shutdown exit).
    TripleFault {
        /// Which vCPU.
        vcpu: u8,
    },
    /// KVM reported an internal error (e.g. emulation failure).
    InternalError {
        /// Which vCPU.
        vcpu: u8,
        /// KVM's suberror code.
        suberror: u32,
    },
    /// KVM could not enter the guest.
    FailEntry {
        /// Which vCPU.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit the runtime does not handle, or a failed KVM_RUN.
    VcpuError {
        /// Which vCPU.
        vcpu: u8,
        /// What happened.
        message: String,
    },
}

impl VmExit {
    /// True for exits that mean the guest or VMM failed (a watchdog
    /// expiry means the guest hung).
    pub fn is_failure(&self) -> bool {
        !matches!(self, VmExit::PowerOff | VmExit::Reset | VmExit::Stopped)
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmExit::PowerOff => f.write_str("guest powered off"),
            VmExit::Reset => f.write_str("guest requested a reset"),
            VmExit::Stopped => f.write_str("stopped by the VMM"),
            VmExit::Watchdog { action } => write!(f, "the watchdog expired (action {action})"),
            VmExit::TripleFault { vcpu } => write!(f, "vCPU {vcpu} triple-faulted"),
            VmExit::InternalError { vcpu, suberror } => {
                write!(f, "KVM internal error on vCPU {vcpu} (suberror {suberror})")
            }
            VmExit::FailEntry { vcpu, reason } => {
                write!(f, "KVM could not enter vCPU {vcpu} (reason {reason:#x})")
            }
            VmExit::VcpuError { vcpu, message } => write!(f, "vCPU {vcpu}: {message}"),
        }
    }
}

/// Errors of the runtime. None of them is a panic; all name what failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// `/dev/kvm` is missing or cannot be opened.
    #[error("KVM is not available (/dev/kvm): {0}")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed: {source}")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// The host lacks a capability the VM needs.
    #[error("host KVM lacks {capability}: {needed_for}")]
    MissingCapability {
        /// E.g. `KVM_CAP_X86_SMM`.
        capability: &'static str,
        /// Why the VM needs it.
        needed_for: &'static str,
    },
    /// The VM asks for more memory than the host has.
    #[error(
        "guest memory of {requested} bytes exceeds host memory ({available} bytes of RAM + swap)"
    )]
    InsufficientHostMemory {
        /// Bytes asked for.
        requested: u64,
        /// Bytes the host has.
        available: u64,
    },
    /// The host's hugepage pool cannot back the guest.
    #[error("not enough free {size} hugepages on this host: {needed} needed, {free} free")]
    HugepagesUnavailable {
        /// Page size.
        size: memory::HugePageSize,
        /// Pages the guest needs.
        needed: u64,
        /// Pages free in the pool.
        free: u64,
    },
    /// Guest memory could not be mapped or accessed.
    #[error("guest memory: {0}")]
    GuestMemory(String),
    /// The configuration is unusable.
    #[error("invalid VM configuration: {0}")]
    InvalidConfig(String),
    /// A host resource (eventfd, signal handler) could not be set up.
    #[error("{what}: {source}")]
    Host {
        /// What was being set up.
        what: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A vCPU thread could not be started.
    #[error("could not start vCPU thread: {0}")]
    Thread(#[source] std::io::Error),
    /// An operation not allowed in the current state.
    #[error("cannot {op} a VM that is {state:?}")]
    BadState {
        /// What was asked.
        op: &'static str,
        /// The state it was in.
        state: RunState,
    },
    /// A vCPU did not reach the requested state in time.
    #[error("vCPU {vcpu} did not {what} within {millis} ms")]
    Timeout {
        /// Which vCPU.
        vcpu: usize,
        /// What it did not do.
        what: &'static str,
        /// How long we waited.
        millis: u64,
    },
    /// Saved state could not be used.
    #[error(transparent)]
    State(#[from] StateError),
    /// One device's state could not be saved or loaded.
    #[error("device {device:?}: {source}")]
    DeviceState {
        /// The device's id.
        device: String,
        /// Why.
        #[source]
        source: StateError,
    },
    /// Saved device states do not match this VM's devices.
    #[error(
        "device states do not match this VM's devices: {}",
        describe_mismatch(missing, unexpected)
    )]
    DeviceMismatch {
        /// Devices of this VM with no state given.
        missing: Vec<String>,
        /// States for devices this VM does not have.
        unexpected: Vec<String>,
    },
    /// The guest CPU configuration cannot run here.
    #[error(transparent)]
    Cpu(#[from] cpu::CpuError),
    /// A device range could not be mapped.
    #[error(transparent)]
    Bus(#[from] BusError),
}

fn describe_mismatch(missing: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("no state for {}", missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("no device for {}", unexpected.join(", ")));
    }
    parts.join("; ")
}

pub(crate) fn kvm_err(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RuntimeError {
    move |source| RuntimeError::Kvm { op, source }
}
