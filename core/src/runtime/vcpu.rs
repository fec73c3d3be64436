//! vCPU threads: run KVM_RUN, dispatch exits onto the buses, park on pause,
//! leave on stop. A stop or pause reaches a vCPU blocked in the guest by a
//! signal that makes KVM_RUN return `EINTR`; the controller repeats the
//! signal until the vCPU acknowledges, so a kick that lands just before
//! KVM_RUN is never lost.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

use super::bus::Bus;
use super::{RuntimeError, VmExit};

/// What the controller wants the vCPUs to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Request {
    Run,
    Pause,
    Stop,
}

pub(crate) struct Inner {
    pub request: Request,
    pub parked: usize,
    pub exited: usize,
    pub exit: Option<VmExit>,
    pub threads: Vec<libc::pthread_t>,
}

/// State shared by the controller and the vCPU threads.
pub(crate) struct Control {
    pub inner: Mutex<Inner>,
    pub cond: Condvar,
    pub vcpus: usize,
}

fn kick_signal() -> i32 {
    SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: the signal only makes KVM_RUN return EINTR.
}

/// Install the no-op kick handler once per process.
pub(crate) fn install_kick_handler() -> Result<(), RuntimeError> {
    static RESULT: OnceLock<i32> = OnceLock::new();
    let errno = *RESULT.get_or_init(|| {
        register_signal_handler(kick_signal(), on_kick)
            .err()
            .map_or(0, |e| e.errno())
    });
    if errno != 0 {
        return Err(RuntimeError::Thread(std::io::Error::from_raw_os_error(
            errno,
        )));
    }
    Ok(())
}

impl Control {
    pub fn new(vcpus: usize) -> Self {
        Control {
            inner: Mutex::new(Inner {
                request: Request::Run,
                parked: 0,
                exited: 0,
                exit: None,
                threads: Vec::new(),
            }),
            cond: Condvar::new(),
            vcpus,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Record why the VM ends (first reason wins) and stop every vCPU.
    pub fn request_exit(&self, exit: VmExit) {
        let mut g = self.lock();
        if g.exit.is_none() {
            g.exit = Some(exit);
        }
        g.request = Request::Stop;
        kick(&g.threads);
        self.cond.notify_all();
    }

    /// Kick the vCPUs until `done` holds, or time out.
    pub fn kick_until(
        &self,
        what: &'static str,
        timeout: Duration,
        done: impl Fn(&Inner) -> bool,
    ) -> Result<(), RuntimeError> {
        let start = Instant::now();
        let mut g = self.lock();
        loop {
            if done(&g) {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(RuntimeError::Timeout {
                    vcpu: g.parked + g.exited,
                    what,
                    millis: timeout.as_millis() as u64,
                });
            }
            kick(&g.threads);
            g = self
                .cond
                .wait_timeout(g, Duration::from_millis(2))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

fn kick(threads: &[libc::pthread_t]) {
    for t in threads {
        // SAFETY: `t` is a vCPU thread of this process that has not been
        // joined (handles are joined only after `threads` is cleared), so
        // the id is valid; the signal has a no-op handler installed.
        unsafe {
            libc::pthread_kill(*t, kick_signal());
        }
    }
}

/// Where a vCPU thread runs and where it reports its thread ID.
pub(crate) struct Placement {
    /// The host CPU to pin to, if dedicated.
    pub cpu: Option<usize>,
    /// Thread IDs of the vCPUs, by index.
    pub tids: Arc<Mutex<Vec<libc::pid_t>>>,
}

/// The body of one vCPU thread.
pub(crate) fn run(
    id: u8,
    vcpu: Arc<Mutex<VcpuFd>>,
    ctl: Arc<Control>,
    pio: Arc<Bus>,
    mmio: Arc<Bus>,
    placement: Placement,
) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if let Some(slot) = placement
        .tids
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get_mut(usize::from(id))
    {
        *slot = tid;
    }
    if let Some(cpu) = placement.cpu {
        if let Err(e) = super::pinning::pin_current_thread(&[cpu]) {
            ctl.request_exit(VmExit::VcpuError {
                vcpu: id,
                message: format!("could not pin to host CPU {cpu}: {e}"),
            });
            let mut g = ctl.lock();
            g.exited += 1;
            ctl.cond.notify_all();
            return;
        }
    }
    loop {
        {
            let mut g = ctl.lock();
            loop {
                match g.request {
                    Request::Run => break,
                    Request::Stop => {
                        g.exited += 1;
                        ctl.cond.notify_all();
                        return;
                    }
                    Request::Pause => {
                        g.parked += 1;
                        ctl.cond.notify_all();
                        while g.request == Request::Pause {
                            g = ctl.cond.wait(g).unwrap_or_else(|p| p.into_inner());
                        }
                        g.parked -= 1;
                    }
                }
            }
        }
        let mut fd = vcpu.lock().unwrap_or_else(|p| p.into_inner());
        let mut port_io = false;
        let exit = match fd.run() {
            // Served below from kvm_run, which says the access size and
            // the repeat count of string I/O (`rep insb`) that
            // VcpuExit's flat slice hides.
            Ok(VcpuExit::IoOut(..) | VcpuExit::IoIn(..)) => {
                port_io = true;
                None
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                None
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                None
            }
            // With the in-kernel irqchip HLT is handled by KVM; a plain
            // HLT exit (no irqchip) just re-enters.
            Ok(VcpuExit::Hlt) => None,
            Ok(VcpuExit::Shutdown) => Some(VmExit::TripleFault { vcpu: id }),
            Ok(VcpuExit::InternalError) => Some(VmExit::InternalError {
                vcpu: id,
                suberror: 0,
            }),
            Ok(VcpuExit::FailEntry(reason, _cpu)) => Some(VmExit::FailEntry { vcpu: id, reason }),
            Ok(other) => Some(VmExit::VcpuError {
                vcpu: id,
                message: format!("unhandled exit {other:?}"),
            }),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => None,
            Err(e) => Some(VmExit::VcpuError {
                vcpu: id,
                message: format!("KVM_RUN failed: {e}"),
            }),
        };
        if port_io {
            serve_port_io(&mut fd, &pio);
        }
        drop(fd);
        if let Some(exit) = exit {
            ctl.request_exit(exit);
        }
    }
}

/// Serve a KVM_EXIT_IO: `count` accesses of `size` bytes each at one port
/// (count > 1 for string I/O such as `rep insb`, which firmware uses to
/// read fw_cfg).
fn serve_port_io(fd: &mut VcpuFd, pio: &Bus) {
    let run = fd.get_kvm_run();
    // SAFETY: the exit reason is KVM_EXIT_IO (the caller matched it), so
    // `io` is the active member of the exit union.
    let io = unsafe { run.__bindgen_anon_1.io };
    let size = usize::from(io.size).max(1);
    let len = size * io.count as usize;
    let base = std::ptr::from_mut(run).cast::<u8>();
    // SAFETY: KVM put the `size * count` data bytes at `data_offset` inside
    // this vCPU's kvm_run mapping (kvm-ioctls builds its own slice the
    // same way); nothing else touches the mapping until the next KVM_RUN,
    // and `run`'s borrow of `fd` covers this use.
    let data = unsafe { std::slice::from_raw_parts_mut(base.add(io.data_offset as usize), len) };
    let port = u64::from(io.port);
    for access in data.chunks_mut(size) {
        if u32::from(io.direction) == kvm_bindings::KVM_EXIT_IO_IN {
            pio.read(port, access);
        } else {
            pio.write(port, access);
        }
    }
}
