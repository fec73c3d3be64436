//! ACPI platform pieces: the fixed-hardware event registers (PM1a status
//! and enable, with the power button) and the GPE0 block, both raising
//! the SCI.

pub mod events;
pub mod tables;

pub use events::{AcpiEvents, GsiLine, IrqLine};
