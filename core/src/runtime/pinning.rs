//! Dedicated CPUs (`dedicatedCpuPlacement`, `isolateEmulatorThread`): a
//! host CPU pool that hands out exclusive CPUs and takes them back when
//! the lease is dropped, and thread pinning with `sched_setaffinity`.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, Mutex};

/// A set of host CPU numbers, written as Linux cpulists ("0-3,8").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSet(BTreeSet<usize>);

/// Why CPUs could not be handed out or pinned.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A cpulist could not be read.
    #[error("bad CPU list {text:?}: {why}")]
    Parse {
        /// The text.
        text: String,
        /// What is wrong.
        why: String,
    },
    /// Not enough free CPUs in the pool.
    #[error("the dedicated CPU pool has {free} free CPUs; {wanted} are needed")]
    Exhausted {
        /// CPUs asked for.
        wanted: usize,
        /// CPUs free.
        free: usize,
    },
    /// sched_setaffinity / sched_getaffinity failed.
    #[error("CPU affinity: {0}")]
    Affinity(#[source] std::io::Error),
}

impl CpuSet {
    /// Parse a cpulist such as `0-3,8,10-11`.
    pub fn parse(text: &str) -> Result<Self, PinError> {
        let bad = |why: &str| PinError::Parse {
            text: text.to_string(),
            why: why.to_string(),
        };
        let mut set = BTreeSet::new();
        for part in text.trim().split(',').filter(|p| !p.is_empty()) {
            let (a, b) = match part.split_once('-') {
                Some((a, b)) => (a, b),
                None => (part, part),
            };
            let a: usize = a.trim().parse().map_err(|_| bad("not a number"))?;
            let b: usize = b.trim().parse().map_err(|_| bad("not a number"))?;
            if a > b || b >= 4096 {
                return Err(bad("a range must go upward and stay below 4096"));
            }
            set.extend(a..=b);
        }
        Ok(CpuSet(set))
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> Vec<usize> {
        self.0.iter().copied().collect()
    }

    /// How many CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<usize> for CpuSet {
    fn from_iter<I: IntoIterator<Item = usize>>(iter: I) -> Self {
        CpuSet(iter.into_iter().collect())
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cpus = self.cpus();
        let mut i = 0;
        let mut first = true;
        while i < cpus.len() {
            let start = cpus[i];
            while i + 1 < cpus.len() && cpus[i + 1] == cpus[i] + 1 {
                i += 1;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if cpus[i] == start {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{}", cpus[i])?;
            }
            i += 1;
        }
        Ok(())
    }
}

/// Exclusive host CPUs for VMs with dedicated placement. Cheap to clone;
/// clones share the pool.
#[derive(Debug, Clone)]
pub struct CpuPool {
    free: Arc<Mutex<BTreeSet<usize>>>,
}

/// CPUs taken from a [`CpuPool`]; they go back when this is dropped.
#[derive(Debug)]
pub struct CpuLease {
    cpus: Vec<usize>,
    pool: CpuPool,
}

impl CpuLease {
    /// The leased CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }
}

impl Drop for CpuLease {
    fn drop(&mut self) {
        self.pool.lock().extend(self.cpus.iter().copied());
    }
}

impl CpuPool {
    /// A pool of `cpus`.
    pub fn new(cpus: &CpuSet) -> Self {
        CpuPool {
            free: Arc::new(Mutex::new(cpus.0.clone())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<usize>> {
        self.free.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// CPUs not leased.
    pub fn free(&self) -> CpuSet {
        CpuSet(self.lock().clone())
    }

    /// Take `n` CPUs (the lowest free ones).
    pub fn allocate(&self, n: usize) -> Result<CpuLease, PinError> {
        let mut free = self.lock();
        if free.len() < n {
            return Err(PinError::Exhausted {
                wanted: n,
                free: free.len(),
            });
        }
        let cpus: Vec<usize> = free.iter().copied().take(n).collect();
        for c in &cpus {
            free.remove(c);
        }
        Ok(CpuLease {
            cpus,
            pool: self.clone(),
        })
    }
}

/// The placement of a VM with dedicated CPUs.
#[derive(Debug)]
pub struct DedicatedCpus {
    /// Host CPU of each vCPU, by vCPU index.
    pub vcpus: Vec<usize>,
    /// The CPU for the VMM's own threads (`isolateEmulatorThread`).
    pub emulator: Option<usize>,
    /// The lease that holds them.
    pub lease: CpuLease,
}

impl DedicatedCpus {
    /// What `domain.cpu` asks for: `None` without `dedicatedCpuPlacement`,
    /// else a lease of one CPU per vCPU (plus one with
    /// `isolateEmulatorThread`).
    pub fn for_spec(
        pool: &CpuPool,
        cpu: Option<&crate::spec::vmi::Cpu>,
        vcpus: usize,
    ) -> Result<Option<Self>, PinError> {
        match cpu {
            Some(c) if c.dedicated_cpu_placement == Some(true) => Ok(Some(Self::allocate(
                pool,
                vcpus,
                c.isolate_emulator_thread == Some(true),
            )?)),
            _ => Ok(None),
        }
    }

    /// Lease one CPU per vCPU, plus one for the emulator threads when
    /// `isolate_emulator_thread`.
    pub fn allocate(
        pool: &CpuPool,
        vcpus: usize,
        isolate_emulator_thread: bool,
    ) -> Result<Self, PinError> {
        let lease = pool.allocate(vcpus + usize::from(isolate_emulator_thread))?;
        let cpus = lease.cpus().to_vec();
        Ok(DedicatedCpus {
            vcpus: cpus[..vcpus].to_vec(),
            emulator: isolate_emulator_thread.then(|| cpus[vcpus]),
            lease,
        })
    }
}

/// Restrict the calling thread to `cpus`.
pub fn pin_current_thread(cpus: &[usize]) -> Result<(), PinError> {
    set_affinity(0, cpus)
}

fn set_affinity(tid: libc::pid_t, cpus: &[usize]) -> Result<(), PinError> {
    // SAFETY: cpu_set_t is plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        if c >= libc::CPU_SETSIZE as usize {
            return Err(PinError::Affinity(std::io::Error::from(
                std::io::ErrorKind::InvalidInput,
            )));
        }
        // SAFETY: c is below CPU_SETSIZE, checked above.
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(PinError::Affinity(std::io::Error::last_os_error()))
    }
}

/// The CPUs thread `tid` (0: the caller) may run on.
pub fn thread_affinity(tid: libc::pid_t) -> Result<CpuSet, PinError> {
    // SAFETY: plain data; zeroed is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return Err(PinError::Affinity(std::io::Error::last_os_error()));
    }
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: c is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse_and_print() {
        let s = CpuSet::parse("0-3,8,10-11").unwrap();
        assert_eq!(s.cpus(), vec![0, 1, 2, 3, 8, 10, 11]);
        assert_eq!(s.to_string(), "0-3,8,10-11");
        assert!(CpuSet::parse("3-1").is_err());
        assert!(CpuSet::parse("a").is_err());
        assert!(CpuSet::parse("0-99999").is_err());
        assert!(CpuSet::parse("").unwrap().is_empty());
    }

    #[test]
    fn pool_grants_exhausts_and_takes_back() {
        let pool = CpuPool::new(&CpuSet::parse("0-63").unwrap());
        let a = DedicatedCpus::allocate(&pool, 4, true).unwrap();
        assert_eq!(a.vcpus, vec![0, 1, 2, 3]);
        assert_eq!(a.emulator, Some(4));
        let b = pool.allocate(59).unwrap();
        assert_eq!(b.cpus().len(), 59);
        let err = pool.allocate(1).unwrap_err();
        assert!(
            matches!(err, PinError::Exhausted { wanted: 1, free: 0 }),
            "{err}"
        );
        drop(a);
        assert_eq!(pool.free().to_string(), "0-4");
        drop(b);
        assert_eq!(pool.free().len(), 64);
        let spec = crate::spec::vmi::Cpu {
            dedicated_cpu_placement: Some(true),
            isolate_emulator_thread: Some(true),
            ..Default::default()
        };
        let d = DedicatedCpus::for_spec(&pool, Some(&spec), 2)
            .unwrap()
            .unwrap();
        assert_eq!((d.vcpus.len(), d.emulator), (2, Some(2)));
        assert!(DedicatedCpus::for_spec(&pool, None, 2).unwrap().is_none());
    }
}
