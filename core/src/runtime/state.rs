//! vCPU and VM clock state as versioned, serde-free binary structs
//! (zerocopy), the form migration carries on the wire.
//!
//! Format rule: a struct starts with an 8-byte magic and a little-endian
//! `u32` version. Version 1 is below; a later release adds fields only by
//! defining a new version and keeps reading version 1. All KVM structs are
//! x86-64 native (little-endian) layouts from kvm-bindings.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_lapic_state, kvm_msr_entry, kvm_pit_state2, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
};
use zerocopy::little_endian::U32;
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes};

/// Magic of a [`VcpuState`].
pub const VCPU_STATE_MAGIC: [u8; 8] = *b"VKVCPU\0\0";
/// Magic of a [`VmClockState`].
pub const CLOCK_STATE_MAGIC: [u8; 8] = *b"VKCLOCK\0";
/// Magic of a [`PlatformState`].
pub const PLATFORM_STATE_MAGIC: [u8; 8] = *b"VKPLATF\0";
/// The version this build writes.
pub const STATE_VERSION: u32 = 1;
/// MSR slots in a [`VcpuState`].
pub const MAX_MSRS: usize = 48;

/// MSRs saved with each vCPU (those the host supports).
pub const SAVED_MSRS: &[u32] = &[
    0x10,        // TSC
    0x1b,        // APIC_BASE
    0x3b,        // TSC_ADJUST
    0x174,       // SYSENTER_CS
    0x175,       // SYSENTER_ESP
    0x176,       // SYSENTER_EIP
    0x1a0,       // MISC_ENABLE
    0x277,       // PAT
    0x2ff,       // MTRRdefType
    0x6e0,       // TSC_DEADLINE
    0xc000_0081, // STAR
    0xc000_0082, // LSTAR
    0xc000_0083, // CSTAR
    0xc000_0084, // SYSCALL_MASK
    0xc000_0102, // KERNEL_GS_BASE
    0xc000_0103, // TSC_AUX
    0x4b56_4d00, // KVM_WALL_CLOCK_NEW
    0x4b56_4d01, // KVM_SYSTEM_TIME_NEW
    0x4b56_4d02, // KVM_ASYNC_PF_EN
    0x4b56_4d03, // KVM_STEAL_TIME
    0x4b56_4d04, // KVM_PV_EOI_EN
];

/// Why saved state was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// Too few bytes.
    #[error("state is {got} bytes, expected {expected}")]
    Size {
        /// Bytes given.
        got: usize,
        /// Bytes needed.
        expected: usize,
    },
    /// Not a state blob of this kind.
    #[error("bad magic {0:?}")]
    Magic([u8; 8]),
    /// A version this build cannot read.
    #[error("unsupported state version {0}")]
    Version(u32),
    /// Inconsistent content.
    #[error("corrupt state: {0}")]
    Corrupt(String),
    /// The device cannot save or load its state (yet), so a VM holding it
    /// cannot migrate.
    #[error("{0} cannot save or load its state")]
    Unsupported(String),
    /// The device still works on its own (its workers were not paused),
    /// so its state would be stale the moment it was taken.
    #[error("{0} is still running: pause the VM before saving its state")]
    Running(String),
    /// The host refused what the device needs to run again (a thread, a
    /// descriptor).
    #[error("{0}")]
    Host(String),
    /// Another process holds a host lock the device needs (a disk
    /// image's): the migration peer has not let go of it yet, or a third
    /// party uses the resource.
    #[error("{0}")]
    Locked(String),
}

/// Everything KVM holds for one vCPU, version 1.
#[derive(IntoBytes, FromBytes, Immutable)]
#[repr(C)]
pub struct VcpuState {
    /// [`VCPU_STATE_MAGIC`].
    pub magic: [u8; 8],
    /// [`STATE_VERSION`].
    pub version: U32,
    /// vCPU index.
    pub vcpu_id: U32,
    /// `KVM_MP_STATE_*`.
    pub mp_state: U32,
    /// Valid entries in `msrs`.
    pub msr_count: U32,
    /// General-purpose registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Pending exceptions, interrupts, NMIs, SMM state.
    pub events: kvm_vcpu_events,
    /// MSR values.
    pub msrs: [kvm_msr_entry; MAX_MSRS],
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// FPU, SSE, AVX state.
    pub xsave: kvm_xsave,
}

impl VcpuState {
    /// A zeroed state with the header set.
    pub fn new(vcpu_id: u32) -> Box<Self> {
        let mut s = Box::new(Self::new_zeroed());
        s.magic = VCPU_STATE_MAGIC;
        s.version = U32::new(STATE_VERSION);
        s.vcpu_id = U32::new(vcpu_id);
        s
    }

    /// The state as bytes, for the wire or a file.
    pub fn to_bytes(&self) -> &[u8] {
        self.as_bytes()
    }

    /// Read and check a state; never panics on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Box<Self>, StateError> {
        let expected = std::mem::size_of::<Self>();
        if bytes.len() != expected {
            return Err(StateError::Size {
                got: bytes.len(),
                expected,
            });
        }
        let mut s = Self::new(0);
        s.as_mut_bytes().copy_from_slice(bytes);
        if s.magic != VCPU_STATE_MAGIC {
            return Err(StateError::Magic(s.magic));
        }
        if s.version.get() != STATE_VERSION {
            return Err(StateError::Version(s.version.get()));
        }
        if s.msr_count.get() as usize > MAX_MSRS {
            return Err(StateError::Corrupt(format!(
                "{} MSRs, at most {MAX_MSRS}",
                s.msr_count.get()
            )));
        }
        Ok(s)
    }
}

/// The VM-wide KVM clock, version 1.
#[derive(Clone, Copy, IntoBytes, FromBytes, Immutable)]
#[repr(C)]
pub struct VmClockState {
    /// [`CLOCK_STATE_MAGIC`].
    pub magic: [u8; 8],
    /// [`STATE_VERSION`].
    pub version: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// KVM_GET_CLOCK data.
    pub clock: kvm_clock_data,
}

impl VmClockState {
    /// Wrap a clock reading.
    pub fn new(clock: kvm_clock_data) -> Self {
        VmClockState {
            magic: CLOCK_STATE_MAGIC,
            version: U32::new(STATE_VERSION),
            reserved: U32::new(0),
            clock,
        }
    }

    /// Read and check a clock state.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        check_state_head(
            bytes,
            CLOCK_STATE_MAGIC,
            STATE_VERSION..=STATE_VERSION,
            std::mem::size_of::<Self>(),
        )?;
        Self::read_from_bytes(bytes).map_err(|_| StateError::Size {
            got: bytes.len(),
            expected: std::mem::size_of::<Self>(),
        })
    }
}

/// Check the 12-byte head every state blob starts with (an 8-byte magic,
/// then a little-endian `u32` version); returns the version and the rest
/// of the blob. Devices outside this crate use it for their own blobs.
pub fn read_state_head(
    bytes: &[u8],
    magic: [u8; 8],
    readable: std::ops::RangeInclusive<u32>,
) -> Result<(u32, &[u8]), StateError> {
    if bytes.len() < 12 {
        return Err(StateError::Size {
            got: bytes.len(),
            expected: 12,
        });
    }
    let (head, rest) = bytes.split_at(12);
    if head[..8] != magic {
        let mut got = [0u8; 8];
        got.copy_from_slice(&head[..8]);
        return Err(StateError::Magic(got));
    }
    let version = u32::from_le_bytes([head[8], head[9], head[10], head[11]]);
    if !readable.contains(&version) {
        return Err(StateError::Version(version));
    }
    Ok((version, rest))
}

/// [`read_state_head`] for a fixed-size blob of exactly `size` bytes.
pub fn check_state_head(
    bytes: &[u8],
    magic: [u8; 8],
    readable: std::ops::RangeInclusive<u32>,
    size: usize,
) -> Result<u32, StateError> {
    let size_error = StateError::Size {
        got: bytes.len(),
        expected: size,
    };
    if bytes.len() < 12 {
        return Err(size_error);
    }
    let (version, _) = read_state_head(bytes, magic, readable)?;
    if bytes.len() != size {
        return Err(size_error);
    }
    Ok(version)
}

/// The VM's in-kernel platform devices, version 1: the two 8259 PICs and
/// the IOAPIC (`KVM_GET_IRQCHIP`) and the 8254 PIT (`KVM_GET_PIT2`).
#[derive(Clone, Copy, IntoBytes, FromBytes, Immutable)]
#[repr(C)]
pub struct PlatformState {
    /// [`PLATFORM_STATE_MAGIC`].
    pub magic: [u8; 8],
    /// [`STATE_VERSION`].
    pub version: U32,
    /// Reserved, zero.
    pub reserved: U32,
    /// Master 8259 (chip 0).
    pub pic_master: kvm_irqchip,
    /// Slave 8259 (chip 1).
    pub pic_slave: kvm_irqchip,
    /// IOAPIC (chip 2).
    pub ioapic: kvm_irqchip,
    /// The PIT's three channels and flags.
    pub pit: kvm_pit_state2,
}

impl PlatformState {
    /// A zeroed state with the header set.
    pub fn new() -> Self {
        let mut s = Self::new_zeroed();
        s.magic = PLATFORM_STATE_MAGIC;
        s.version = U32::new(STATE_VERSION);
        s
    }

    /// Read and check a platform state; never panics on any input.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StateError> {
        check_state_head(
            bytes,
            PLATFORM_STATE_MAGIC,
            STATE_VERSION..=STATE_VERSION,
            std::mem::size_of::<Self>(),
        )?;
        let s = Self::read_from_bytes(bytes).map_err(|_| StateError::Size {
            got: bytes.len(),
            expected: std::mem::size_of::<Self>(),
        })?;
        for (chip, want) in [(&s.pic_master, 0), (&s.pic_slave, 1), (&s.ioapic, 2)] {
            if chip.chip_id != want {
                return Err(StateError::Corrupt(format!(
                    "irqchip {want} is labelled chip {}",
                    chip.chip_id
                )));
            }
        }
        Ok(s)
    }
}

impl Default for PlatformState {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejections() {
        let mut s = VcpuState::new(3);
        s.regs.rip = 0x1234;
        s.msr_count = U32::new(1);
        s.msrs[0].index = 0x10;
        s.msrs[0].data = 99;
        let bytes = s.to_bytes().to_vec();
        let back = VcpuState::from_bytes(&bytes).unwrap();
        assert_eq!(back.vcpu_id.get(), 3);
        assert_eq!(back.regs.rip, 0x1234);
        assert_eq!(back.msrs[0].data, 99);

        assert!(matches!(
            VcpuState::from_bytes(&bytes[1..]),
            Err(StateError::Size { .. })
        ));
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(matches!(
            VcpuState::from_bytes(&bad),
            Err(StateError::Magic(_))
        ));
        let mut bad = bytes.clone();
        bad[8] = 9;
        assert!(matches!(
            VcpuState::from_bytes(&bad),
            Err(StateError::Version(9))
        ));
        let mut bad = bytes;
        bad[20..24].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(
            VcpuState::from_bytes(&bad),
            Err(StateError::Corrupt(_))
        ));

        let c = VmClockState::new(kvm_clock_data {
            clock: 42,
            ..Default::default()
        });
        let back = VmClockState::from_bytes(c.as_bytes()).unwrap();
        assert_eq!(back.clock.clock, 42);
        assert!(VmClockState::from_bytes(&[0u8; 3]).is_err());
    }

    #[test]
    fn platform_state_is_checked() {
        let mut p = PlatformState::new();
        p.pic_slave.chip_id = 1;
        p.ioapic.chip_id = 2;
        p.pit.channels[0].count = 1193;
        let bytes = p.as_bytes().to_vec();
        assert_eq!(
            PlatformState::from_bytes(&bytes).unwrap().pit.channels[0].count,
            1193
        );
        assert!(matches!(
            PlatformState::from_bytes(&bytes[..100]),
            Err(StateError::Size { .. })
        ));
        assert!(matches!(
            PlatformState::from_bytes(&bytes[..5]),
            Err(StateError::Size { .. })
        ));
        let mut bad = bytes.clone();
        bad[8] = 2;
        assert!(matches!(
            PlatformState::from_bytes(&bad),
            Err(StateError::Version(2))
        ));
        let mut q = p;
        q.ioapic.chip_id = 0;
        assert!(matches!(
            PlatformState::from_bytes(q.as_bytes()),
            Err(StateError::Corrupt(_))
        ));
        assert!(matches!(
            PlatformState::from_bytes(VmClockState::new(Default::default()).as_bytes()),
            Err(StateError::Magic(_))
        ));
    }
}
