//! Interrupt delivery for devices: MSI messages and GSI lines through the
//! VM's in-kernel irqchip. Devices hold an [`Interrupts`] handle (cheap to
//! clone) rather than the VM, so they can live on any thread.

use std::sync::Arc;

use kvm_bindings::kvm_msi;
use kvm_ioctls::VmFd;

use super::{kvm_err, RuntimeError};

/// A handle that injects interrupts into one VM.
#[derive(Clone)]
pub struct Interrupts {
    vm_fd: Arc<VmFd>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts").finish_non_exhaustive()
    }
}

impl Interrupts {
    pub(crate) fn new(vm_fd: Arc<VmFd>) -> Self {
        Interrupts { vm_fd }
    }

    /// Deliver the MSI message `data` written to `address` (what an MSI-X
    /// table entry holds). KVM returns 0 when the guest has the vector
    /// masked at the APIC; that is not an error.
    pub fn signal_msi(&self, address: u64, data: u32) -> Result<(), RuntimeError> {
        let msi = kvm_msi {
            address_lo: address as u32,
            address_hi: (address >> 32) as u32,
            data,
            ..Default::default()
        };
        self.vm_fd
            .signal_msi(msi)
            .map(|_| ())
            .map_err(kvm_err("KVM_SIGNAL_MSI"))
    }

    /// Drive the level of GSI `gsi` (IOAPIC input) high or low.
    pub fn set_irq_line(&self, gsi: u32, active: bool) -> Result<(), RuntimeError> {
        self.vm_fd
            .set_irq_line(gsi, active)
            .map_err(kvm_err("KVM_IRQ_LINE"))
    }

    /// Pulse an edge on GSI `gsi`.
    pub fn pulse_irq_line(&self, gsi: u32) -> Result<(), RuntimeError> {
        self.set_irq_line(gsi, true)?;
        self.set_irq_line(gsi, false)
    }
}
