//! A host PCI function on the guest's PCI bus ([`AssignedDevice`]), driven
//! through a [`HostFunction`] (VFIO in production).
//!
//! The guest sees the host function's identity (vendor, device, class,
//! subsystem, revision), its memory BARs at addresses the root bus places,
//! and its MSI-X capability. Command-register writes reach the host
//! function; BAR accesses are forwarded through the function's regions,
//! except the MSI-X table and PBA, which are emulated so that the guest's
//! vectors go through the VM's MSI path: the host function signals an
//! eventfd per vector and a forwarder thread raises the emulated vector
//! (honouring masks and pending bits). Not exposed yet: I/O BARs, INTx,
//! MSI, and capabilities other than MSI-X; BARs are trapped, not mapped.

use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::vfio::{HostFunction, VfioError, CONFIG_REGION};
use crate::pci::config::{BAR0, BAR_COUNT};
use crate::pci::msix::{MsiSink, MsixTable, CAP_ID_MSIX, ENTRY_SIZE};
use crate::pci::{BarKind, BarSpec, ConfigSpace, PciDevice, PciIds};

const COMMAND: usize = 0x04;
const CAP_POINTER: usize = 0x34;
/// Command bits the guest controls on the host function: memory decode
/// and bus mastering. INTx stays disabled (it is not routed).
const COMMAND_FORWARDED: u16 = (1 << 1) | (1 << 2);
const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// How long the forwarder waits before it looks at its stop flag.
const FORWARDER_POLL_MS: i32 = 50;

/// Why a host function cannot be put on the bus.
#[derive(Debug, thiserror::Error)]
pub enum AssignError {
    /// The function reads as all ones (gone, or not reset).
    #[error("host function {0} does not respond (vendor ID reads 0xffff)")]
    NotResponding(String),
    /// Bridges and multi-function headers other than type 0.
    #[error("host function {function} has header type {header_type:#x}; only type-0 endpoints can be assigned")]
    NotAnEndpoint {
        /// The function.
        function: String,
        /// Its header type.
        header_type: u8,
    },
    /// The MSI-X capability points outside its BAR.
    #[error("host function {0}: its MSI-X table or PBA lies outside its BAR")]
    BadMsix(String),
    /// No room for the capability in the emulated configuration space.
    #[error("host function {0}: no room for its MSI-X capability")]
    NoCapabilitySpace(String),
}

struct Msix {
    table: Arc<Mutex<MsixTable>>,
    bar: usize,
    /// Table and PBA as byte ranges inside the BAR (fixed at creation,
    /// so a BAR access finds them without locking the table).
    table_range: std::ops::Range<u64>,
    pba_range: std::ops::Range<u64>,
    vectors: u16,
    forwarder: Option<Forwarder>,
}

struct Forwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A host PCI function assigned to the guest.
pub struct AssignedDevice {
    function: Arc<dyn HostFunction>,
    name: String,
    config: ConfigSpace,
    bars: Vec<(usize, BarSpec)>,
    msix: Option<Msix>,
}

impl std::fmt::Debug for AssignedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssignedDevice")
            .field("function", &self.function.name())
            .field("bars", &self.bars)
            .finish_non_exhaustive()
    }
}

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

impl AssignedDevice {
    /// Describe `function` to the guest; its MSI-X vectors will be sent
    /// through `sink` (the VM's [`Interrupts`](virtkit_core::runtime::Interrupts)).
    pub fn new(
        function: Arc<dyn HostFunction>,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Self, AssignError> {
        let name = function.name().to_string();
        let mut host = [0u8; 256];
        function.region_read(CONFIG_REGION, 0, &mut host);
        if u16_at(&host, 0) == 0xffff {
            return Err(AssignError::NotResponding(name));
        }
        let header_type = host[0x0e] & 0x7f;
        if header_type != 0 {
            return Err(AssignError::NotAnEndpoint {
                function: name,
                header_type,
            });
        }
        let mut config = ConfigSpace::new(PciIds {
            vendor: u16_at(&host, 0),
            device: u16_at(&host, 2),
            subsystem_vendor: u16_at(&host, 0x2c),
            subsystem: u16_at(&host, 0x2e),
            class: [host[0x0b], host[0x0a], host[0x09]],
            revision: host[0x08],
        });
        let bars = memory_bars(function.as_ref(), &host);
        let msix = match find_capability(&host, CAP_ID_MSIX) {
            Some(cap) => Some(Self::msix(&name, &host, cap, &bars, &mut config, sink)?),
            None => None,
        };
        Ok(AssignedDevice {
            function,
            name,
            config,
            bars,
            msix,
        })
    }

    fn msix(
        name: &str,
        host: &[u8],
        cap: usize,
        bars: &[(usize, BarSpec)],
        config: &mut ConfigSpace,
        sink: Arc<dyn MsiSink>,
    ) -> Result<Msix, AssignError> {
        let vectors = (u16_at(host, cap + 2) & 0x7ff) + 1;
        let table = u32_at(host, cap + 4);
        let pba = u32_at(host, cap + 8);
        let bar = (table & 7) as usize;
        let (table_offset, pba_offset) = (u64::from(table & !7), u64::from(pba & !7));
        let bar_size = bars
            .iter()
            .find(|(i, _)| *i == bar)
            .map(|(_, s)| s.size)
            .unwrap_or(0);
        let table_end = table_offset + u64::from(vectors) * ENTRY_SIZE;
        let pba_end = pba_offset + u64::from(vectors).div_ceil(64) * 8;
        if (pba & 7) as usize != bar || table_end > bar_size || pba_end > bar_size {
            return Err(AssignError::BadMsix(name.to_string()));
        }
        let table = MsixTable::new(
            config,
            vectors,
            bar as u8,
            table_offset as u32,
            pba_offset as u32,
            sink,
        )
        .ok_or_else(|| AssignError::NoCapabilitySpace(name.to_string()))?;
        Ok(Msix {
            table: Arc::new(Mutex::new(table)),
            bar,
            table_range: table_offset..table_end,
            pba_range: pba_offset..pba_end,
            vectors,
            forwarder: None,
        })
    }

    /// The host function's name.
    pub fn function_name(&self) -> &str {
        &self.name
    }

    fn sync_msix(&mut self) -> Result<(), VfioError> {
        let Some(msix) = self.msix.as_mut() else {
            return Ok(());
        };
        let enabled = {
            let mut table = lock(&msix.table);
            table.config_written(&self.config);
            table.enabled()
        };
        match (enabled, msix.forwarder.is_some()) {
            (true, false) => {
                let fds = (0..msix.vectors)
                    .map(|_| EventFd::new(EFD_NONBLOCK))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| VfioError::Interrupts {
                        function: self.name.clone(),
                        what: format!("eventfd: {e}"),
                    })?;
                self.function.enable_msix(&fds.iter().collect::<Vec<_>>())?;
                msix.forwarder = Some(forward(fds, msix.table.clone()));
            }
            (false, true) => {
                msix.forwarder = None;
                self.function.disable_msix()?;
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether `offset` in `bar` is the emulated MSI-X table or PBA.
    fn msix_region(&self, bar: usize, offset: u64) -> Option<(&Mutex<MsixTable>, MsixRegion)> {
        let msix = self.msix.as_ref()?;
        if msix.bar != bar {
            return None;
        }
        if msix.table_range.contains(&offset) {
            Some((
                &msix.table,
                MsixRegion::Table(offset - msix.table_range.start),
            ))
        } else if msix.pba_range.contains(&offset) {
            Some((&msix.table, MsixRegion::Pba(offset - msix.pba_range.start)))
        } else {
            None
        }
    }
}

enum MsixRegion {
    Table(u64),
    Pba(u64),
}

fn lock(t: &Mutex<MsixTable>) -> MutexGuard<'_, MsixTable> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

/// The memory BARs of a host header whose regions have a size.
fn memory_bars(function: &dyn HostFunction, host: &[u8]) -> Vec<(usize, BarSpec)> {
    let mut bars = Vec::new();
    let mut i = 0;
    while i < BAR_COUNT {
        let raw = u32_at(host, BAR0 + 4 * i);
        let size = function.region(i as u32).size;
        let wide = raw & 1 == 0 && (raw >> 1) & 3 == 2;
        if size != 0 && raw & 1 == 0 {
            let kind = if wide {
                BarKind::Memory64 {
                    prefetchable: raw & 8 != 0,
                }
            } else {
                BarKind::Memory32
            };
            bars.push((i, BarSpec { size, kind }));
        } else if size != 0 {
            log::warn!(
                "{}: I/O BAR {i} is not exposed to the guest",
                function.name()
            );
        }
        i += if wide { 2 } else { 1 };
    }
    bars
}

/// Offset of the first capability with `id` in a host header.
fn find_capability(host: &[u8], id: u8) -> Option<usize> {
    if host[0x06] & 0x10 == 0 {
        return None;
    }
    let mut at = usize::from(host[CAP_POINTER] & 0xfc);
    // A malformed list may loop; 48 capabilities fill 256 bytes.
    for _ in 0..48 {
        if !(0x40..=0xfc).contains(&at) {
            return None;
        }
        if host[at] == id {
            return Some(at);
        }
        at = usize::from(host[at + 1] & 0xfc);
    }
    None
}

/// A thread that raises MSI-X vector `i` whenever `fds[i]` fires.
fn forward(fds: Vec<EventFd>, table: Arc<Mutex<MsixTable>>) -> Forwarder {
    let stop = Arc::new(AtomicBool::new(false));
    let stop_flag = stop.clone();
    let thread = std::thread::Builder::new()
        .name("vfio-msix".into())
        .spawn(move || {
            let mut polls: Vec<libc::pollfd> = fds
                .iter()
                .map(|fd| libc::pollfd {
                    fd: fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                })
                .collect();
            while !stop_flag.load(Ordering::SeqCst) {
                // SAFETY: `polls` is a live array of `polls.len()` pollfd
                // structs whose fds `fds` keeps open.
                let n = unsafe {
                    libc::poll(
                        polls.as_mut_ptr(),
                        polls.len() as libc::nfds_t,
                        FORWARDER_POLL_MS,
                    )
                };
                if n <= 0 {
                    continue;
                }
                for (vector, p) in polls.iter_mut().enumerate() {
                    if p.revents & libc::POLLIN != 0 && fds[vector].read().is_ok() {
                        lock(&table).trigger(vector as u16);
                    }
                    p.revents = 0;
                }
            }
        });
    match thread {
        Ok(t) => Forwarder {
            stop,
            thread: Some(t),
        },
        Err(e) => {
            log::error!("cannot start the MSI-X forwarder: {e}");
            Forwarder { stop, thread: None }
        }
    }
}

impl PciDevice for AssignedDevice {
    fn name(&self) -> &str {
        "vfio-pci"
    }

    fn bars(&self) -> Vec<(usize, BarSpec)> {
        self.bars.clone()
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn config_written(&mut self, offset: usize, len: usize) {
        if offset < COMMAND + 2 && offset + len > COMMAND {
            let command = (self.config.command() & COMMAND_FORWARDED) | COMMAND_INTX_DISABLE;
            self.function
                .region_write(CONFIG_REGION, COMMAND as u64, &command.to_le_bytes());
        }
        if let Err(e) = self.sync_msix() {
            log::error!("{}: {e}", self.name);
        }
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match self.msix_region(bar, offset) {
            Some((table, MsixRegion::Table(at))) => lock(table).read_table(at, data),
            Some((table, MsixRegion::Pba(at))) => lock(table).read_pba(at, data),
            None => self.function.region_read(bar as u32, offset, data),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match self.msix_region(bar, offset) {
            Some((table, MsixRegion::Table(at))) => lock(table).write_table(at, data),
            Some((_, MsixRegion::Pba(_))) => {}
            None => self.function.region_write(bar as u32, offset, data),
        }
    }

    fn removed(&mut self) {
        if let Some(msix) = self.msix.as_mut() {
            if msix.forwarder.take().is_some() {
                if let Err(e) = self.function.disable_msix() {
                    log::warn!("{}: {e}", self.name);
                }
            }
        }
        self.function.reset();
    }
}
