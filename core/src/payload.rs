//! Tiny guest programs for tests and examples, assembled at run time with
//! iced-x86's code assembler. On the test machine each guest instruction
//! costs about a microsecond, so these are a few dozen instructions each.
//!
//! Memory map used by the payloads (all below 1 MiB except touched pages):
//! boot structures (GDT, page tables) 0x500–0xEFFF, [`COUNTER_ADDR`] at
//! 0xF000, code at [`LOAD_ADDR`] (0x10000), stack below 0x80000, touched
//! pages from [`TOUCH_BASE`] (1 MiB).

use iced_x86::code_asm::*;

/// Where payload code is loaded.
pub const LOAD_ADDR: u64 = 0x10000;
/// A u64 counter the counting payloads keep in guest memory.
pub const COUNTER_ADDR: u64 = 0xf000;
/// First page the page-touching payload writes.
pub const TOUCH_BASE: u64 = 0x10_0000;
/// Initial long-mode stack pointer.
pub const STACK_TOP: u64 = 0x8_0000;
/// Port that receives progress reports (the low 32 bits of the counter).
pub const REPORT_PORT: u16 = 0x80;

/// How the payload's vCPU starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Real mode at `cs:ip`.
    Real {
        /// Code segment.
        cs: u16,
        /// Offset.
        ip: u16,
    },
    /// Long mode at `rip` with stack `rsp`.
    Long {
        /// Entry point.
        rip: u64,
        /// Stack.
        rsp: u64,
    },
}

/// Assembled guest code with its load address and entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// Machine code (and data).
    pub code: Vec<u8>,
    /// Guest-physical load address.
    pub load_addr: u64,
    /// Entry state of vCPU 0.
    pub entry: Entry,
    /// Guest memory the payload needs, in bytes.
    pub min_memory: u64,
}

/// A serial-output sink that a test reads while the VM runs: hand a clone
/// to [`VmBuilder::serial_output`](crate::runtime::VmBuilder::serial_output)
/// and read [`SerialCapture::text`].
#[derive(Debug, Clone, Default)]
pub struct SerialCapture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl SerialCapture {
    /// Everything written so far, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned()
    }
}

impl std::io::Write for SerialCapture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The assembler rejected the program (a bug in this module).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload assembly failed: {0}")]
pub struct PayloadError(String);

impl From<IcedError> for PayloadError {
    fn from(e: IcedError) -> Self {
        PayloadError(e.to_string())
    }
}

/// Real mode: print `text` on COM1, then power off through PM1a_CNT.
pub fn print_and_power_off(text: &str) -> Result<Payload, PayloadError> {
    // The string sits at a fixed offset after the code (16-bit code has no
    // label-relative addressing), reached through DS = CS.
    const MSG_OFFSET: u16 = 0x100;
    let mut a = CodeAssembler::new(16)?;
    let mut next = a.create_label();
    let mut done = a.create_label();
    a.mov(si, u32::from(MSG_OFFSET))?;
    a.mov(dx, 0x3f8u32)?;
    a.set_label(&mut next)?;
    a.lodsb()?;
    a.test(al, al)?;
    a.jz(done)?;
    a.out(dx, al)?;
    a.jmp(next)?;
    a.set_label(&mut done)?;
    power_off(&mut a)?;
    let mut code = a.assemble(0)?;
    if code.len() > usize::from(MSG_OFFSET) {
        return Err(PayloadError(format!(
            "code of {} bytes overlaps the message",
            code.len()
        )));
    }
    code.resize(usize::from(MSG_OFFSET), 0x90);
    code.extend(text.bytes().filter(|b| *b != 0));
    code.push(0);
    Ok(Payload {
        min_memory: LOAD_ADDR + code.len() as u64 + 0x1000,
        code,
        load_addr: LOAD_ADDR,
        entry: real_mode_entry(),
    })
}

/// `mov dx, 0x604; mov ax, SLP_EN; out dx, ax`, then halt forever. The
/// same instructions work in 16- and 64-bit code; payloads written
/// elsewhere (device tests) end with it too.
pub fn power_off(a: &mut CodeAssembler) -> Result<(), PayloadError> {
    let mut hang = a.create_label();
    a.mov(dx, 0x604u32)?;
    a.mov(ax, 0x2000u32)?;
    a.out(dx, ax)?;
    a.set_label(&mut hang)?;
    a.hlt()?;
    a.jmp(hang)?;
    Ok(())
}

/// Real mode: spin forever without touching memory or ports.
pub fn spin() -> Result<Payload, PayloadError> {
    let mut a = CodeAssembler::new(16)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.pause()?;
    a.jmp(top)?;
    real_mode(&mut a)
}

/// Real mode: `cli; hlt` forever — an idle guest. With the in-kernel
/// irqchip the vCPU sleeps inside KVM and uses no host CPU.
pub fn halt() -> Result<Payload, PayloadError> {
    let mut a = CodeAssembler::new(16)?;
    let mut top = a.create_label();
    a.set_label(&mut top)?;
    a.cli()?;
    a.hlt()?;
    a.jmp(top)?;
    real_mode(&mut a)
}

/// Offset of [`pit_ticks`]'s interrupt handler in its code segment.
const TICK_HANDLER: u16 = 0x100;
/// The vector [`pit_ticks`] gives IRQ 0 (the master PIC's base).
pub const TICK_VECTOR: u8 = 0x20;

/// Real mode: program the 8259 PICs (master base [`TICK_VECTOR`], only
/// IRQ 0 unmasked) and the 8254 PIT's channel 0 as a rate generator with
/// `divisor` (1.193182 MHz / divisor ticks a second), then `sti; hlt`
/// forever. Each tick's handler adds one to the u64 at [`COUNTER_ADDR`]
/// and acknowledges the PIC. The guest only counts while the PIC, the PIT
/// and the local APIC hold the state it programmed: a migration that
/// leaves any of them behind stops the count.
pub fn pit_ticks(divisor: u16) -> Result<Payload, PayloadError> {
    let mut a = CodeAssembler::new(16)?;
    let mut idle = a.create_label();
    a.cli()?;
    a.xor(ax, ax)?;
    a.mov(ds, ax)?;
    // IVT entry of TICK_VECTOR: offset, then segment.
    let ivt = u32::from(TICK_VECTOR) * 4;
    a.mov(word_ptr(ivt), u32::from(TICK_HANDLER))?;
    a.mov(word_ptr(ivt + 2), (LOAD_ADDR >> 4) as u32)?;
    // ICW1..ICW4 to both PICs, then the masks.
    for (port, value) in [
        (0x20, 0x11),
        (0xa0, 0x11),
        (0x21, u32::from(TICK_VECTOR)),
        (0xa1, u32::from(TICK_VECTOR) + 8),
        (0x21, 0x04),
        (0xa1, 0x02),
        (0x21, 0x01),
        (0xa1, 0x01),
        (0x21, 0xfe),
        (0xa1, 0xff),
    ] {
        a.mov(al, value)?;
        a.out(port, al)?;
    }
    // Channel 0, lobyte/hibyte, mode 2.
    a.mov(al, 0x34u32)?;
    a.out(0x43, al)?;
    a.mov(al, u32::from(divisor & 0xff))?;
    a.out(0x40, al)?;
    a.mov(al, u32::from(divisor >> 8))?;
    a.out(0x40, al)?;
    a.sti()?;
    a.set_label(&mut idle)?;
    a.hlt()?;
    a.jmp(idle)?;
    let mut code = a.assemble(0)?;
    if code.len() > usize::from(TICK_HANDLER) {
        return Err(PayloadError(format!(
            "tick setup is {} bytes; the handler is placed at {TICK_HANDLER:#x}",
            code.len()
        )));
    }
    code.resize(usize::from(TICK_HANDLER), 0x90);
    let mut h = CodeAssembler::new(16)?;
    h.push(ax)?;
    h.add(dword_ptr(COUNTER_ADDR as u32), 1)?;
    h.adc(dword_ptr(COUNTER_ADDR as u32 + 4), 0)?;
    h.mov(al, 0x20u32)?;
    h.out(0x20, al)?;
    h.pop(ax)?;
    h.iret()?;
    code.extend(h.assemble(u64::from(TICK_HANDLER))?);
    Ok(Payload {
        code,
        load_addr: LOAD_ADDR,
        entry: real_mode_entry(),
        min_memory: LOAD_ADDR + 0x1_0000,
    })
}

/// Long mode: forever (or `iterations` times, then power off), increment
/// the u64 at [`COUNTER_ADDR`] and write its new value into page
/// `counter % pages` of the range starting at [`TOUCH_BASE`]. Every
/// `report_every` iterations (a power of two; 0 = never) the low 32 bits
/// of the counter go out on [`REPORT_PORT`].
///
/// The count lives in guest memory, so after a vCPU state save/restore
/// or a migration it continues from where it was.
pub fn touch_pages(
    pages: u32,
    iterations: Option<u64>,
    report_every: u64,
) -> Result<Payload, PayloadError> {
    let pages = pages.max(1);
    let mut a = CodeAssembler::new(64)?;
    let mut top = a.create_label();
    let mut no_report = a.create_label();
    a.set_label(&mut top)?;
    a.mov(rax, qword_ptr(COUNTER_ADDR))?;
    a.inc(rax)?;
    a.mov(qword_ptr(COUNTER_ADDR), rax)?;
    // page index = counter % pages
    a.xor(edx, edx)?;
    a.mov(rcx, u64::from(pages))?;
    a.push(rax)?;
    a.div(rcx)?;
    a.pop(rax)?;
    a.shl(rdx, 12)?;
    a.mov(rbx, TOUCH_BASE)?;
    a.add(rbx, rdx)?;
    a.mov(qword_ptr(rbx), rax)?;
    if report_every > 0 {
        let mask = report_every.next_power_of_two() - 1;
        a.mov(rcx, rax)?;
        a.and(rcx, mask as i32)?;
        a.jnz(no_report)?;
        a.mov(dx, REPORT_PORT as u32)?;
        a.out(dx, eax)?;
    }
    a.set_label(&mut no_report)?;
    if let Some(n) = iterations {
        a.mov(rcx, n)?;
        a.cmp(rax, rcx)?;
        a.jb(top)?;
        power_off(&mut a)?;
    } else {
        a.jmp(top)?;
    }
    long_mode(&mut a, TOUCH_BASE + u64::from(pages) * 4096)
}

/// Assemble 64-bit code at [`LOAD_ADDR`], entered with the stack at
/// [`STACK_TOP`].
/// Assemble 64-bit code at [`LOAD_ADDR`], entered in long mode with the
/// stack at [`STACK_TOP`]; `min_memory` is the guest memory it needs.
pub fn long_mode(a: &mut CodeAssembler, min_memory: u64) -> Result<Payload, PayloadError> {
    Ok(Payload {
        code: a.assemble(LOAD_ADDR)?,
        load_addr: LOAD_ADDR,
        entry: Entry::Long {
            rip: LOAD_ADDR,
            rsp: STACK_TOP,
        },
        min_memory,
    })
}

/// Assemble 16-bit code at [`LOAD_ADDR`] (offset 0 of its segment).
fn real_mode(a: &mut CodeAssembler) -> Result<Payload, PayloadError> {
    Ok(Payload {
        code: a.assemble(0)?,
        load_addr: LOAD_ADDR,
        entry: real_mode_entry(),
        min_memory: LOAD_ADDR + 0x1_0000,
    })
}

/// The real-mode entry for code at [`LOAD_ADDR`] (CS = LOAD_ADDR / 16).
fn real_mode_entry() -> Entry {
    Entry::Real {
        cs: (LOAD_ADDR >> 4) as u16,
        ip: 0,
    }
}

/// Where [`cpuid_dump`] stores its results.
pub const CPUID_OUT: u64 = 0x2_0000;

/// Long mode: run CPUID for each `(leaf, subleaf)` and store EAX, EBX,
/// ECX, EDX (16 bytes per query) from [`CPUID_OUT`] on, then power off.
pub fn cpuid_dump(queries: &[(u32, u32)]) -> Result<Payload, PayloadError> {
    let mut a = CodeAssembler::new(64)?;
    for (i, &(leaf, sub)) in queries.iter().enumerate() {
        let at = CPUID_OUT + 16 * i as u64;
        a.mov(eax, leaf)?;
        a.mov(ecx, sub)?;
        a.cpuid()?;
        a.mov(dword_ptr(at), eax)?;
        a.mov(dword_ptr(at + 4), ebx)?;
        a.mov(dword_ptr(at + 8), ecx)?;
        a.mov(dword_ptr(at + 12), edx)?;
    }
    power_off(&mut a)?;
    long_mode(&mut a, CPUID_OUT + 16 * queries.len() as u64)
}

/// Long mode: load an empty IDT and execute `ud2`, so the #UD cannot be
/// delivered and the vCPU triple-faults.
pub fn triple_fault() -> Result<Payload, PayloadError> {
    let mut a = CodeAssembler::new(64)?;
    let mut idtr = a.create_label();
    a.lidt(ptr(idtr))?;
    a.ud2()?;
    a.set_label(&mut idtr)?;
    a.db(&[0u8; 10])?;
    long_mode(&mut a, LOAD_ADDR + 0x1000)
}

#[cfg(feature = "kvm")]
impl Payload {
    /// Write the code into `vm`'s memory and set vCPU 0's entry state
    /// (building page tables and a GDT for long mode).
    pub fn load(&self, vm: &crate::runtime::Vm) -> Result<(), crate::runtime::RuntimeError> {
        use crate::runtime::{BootState, RuntimeError};
        if vm.config().memory_bytes < self.min_memory {
            return Err(RuntimeError::InvalidConfig(format!(
                "payload needs {} bytes of guest memory, the VM has {}",
                self.min_memory,
                vm.config().memory_bytes
            )));
        }
        vm.write_memory(self.load_addr, &self.code)?;
        let boot = match self.entry {
            Entry::Real { cs: seg, ip: off } => BootState::RealMode { cs: seg, ip: off },
            Entry::Long {
                rip: entry,
                rsp: stack,
            } => BootState::LongMode {
                rip: entry,
                rsp: stack,
            },
        };
        vm.set_boot(&boot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic};

    fn mnemonics(bits: u32, code: &[u8], ip: u64) -> Vec<Mnemonic> {
        let mut d = Decoder::with_ip(bits, code, ip, DecoderOptions::NONE);
        let mut v = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            v.push(i.mnemonic());
            if i.mnemonic() == Mnemonic::Jmp && v.len() > 3 {
                break;
            }
        }
        v
    }

    #[test]
    fn print_payload_outputs_to_com1_and_ends_with_poweroff() {
        let p = print_and_power_off("hi").unwrap();
        assert!(p.code.ends_with(b"hi\0"));
        let m = mnemonics(16, &p.code, 0);
        assert_eq!(
            &m[..4],
            &[
                Mnemonic::Mov,
                Mnemonic::Mov,
                Mnemonic::Lodsb,
                Mnemonic::Test
            ]
        );
        assert!(m.contains(&Mnemonic::Out));
        assert_eq!(p.entry, Entry::Real { cs: 0x1000, ip: 0 });
    }

    #[test]
    fn touch_payload_is_long_mode_and_sized() {
        let p = touch_pages(16, Some(100), 8).unwrap();
        assert_eq!(
            p.entry,
            Entry::Long {
                rip: LOAD_ADDR,
                rsp: STACK_TOP
            }
        );
        assert_eq!(p.min_memory, TOUCH_BASE + 16 * 4096);
        let m = mnemonics(64, &p.code, LOAD_ADDR);
        assert_eq!(m[0], Mnemonic::Mov);
        assert!(m.contains(&Mnemonic::Div));
        assert!(triple_fault().unwrap().code.len() > 4);
        assert!(spin().unwrap().code.len() >= 3);
    }
}
