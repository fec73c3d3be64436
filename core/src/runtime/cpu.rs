//! The guest CPU: topology (sockets × cores × threads) in CPUID and APIC
//! IDs, named CPU models, and KubeVirt feature policies (`force`,
//! `require`, `optional`, `disable`, `forbid`) applied to what KVM
//! supports. The CPUID work is plain data in, data out, so it is tested
//! without KVM; [`host_cpu_info`] reads the host's supported set.

use std::fmt;

use crate::spec::vmi::{Cpu, CpuFeaturePolicy};

/// A CPUID register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reg {
    /// EAX.
    Eax,
    /// EBX.
    Ebx,
    /// ECX.
    Ecx,
    /// EDX.
    Edx,
}

/// One CPUID leaf/subleaf as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuidEntry {
    /// Leaf (EAX input).
    pub function: u32,
    /// Subleaf (ECX input).
    pub index: u32,
    /// Output registers.
    pub eax: u32,
    /// EBX.
    pub ebx: u32,
    /// ECX.
    pub ecx: u32,
    /// EDX.
    pub edx: u32,
}

impl CpuidEntry {
    fn reg_mut(&mut self, r: Reg) -> &mut u32 {
        match r {
            Reg::Eax => &mut self.eax,
            Reg::Ebx => &mut self.ebx,
            Reg::Ecx => &mut self.ecx,
            Reg::Edx => &mut self.edx,
        }
    }

    pub(crate) fn reg(&self, r: Reg) -> u32 {
        match r {
            Reg::Eax => self.eax,
            Reg::Ebx => self.ebx,
            Reg::Ecx => self.ecx,
            Reg::Edx => self.edx,
        }
    }
}

/// Where a named feature lives in CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureBit {
    /// Name as libvirt and QEMU spell it.
    pub name: &'static str,
    /// Leaf.
    pub leaf: u32,
    /// Subleaf.
    pub subleaf: u32,
    /// Register.
    pub reg: Reg,
    /// Bit.
    pub bit: u8,
}

const fn f(name: &'static str, leaf: u32, reg: Reg, bit: u8) -> FeatureBit {
    FeatureBit {
        name,
        leaf,
        subleaf: 0,
        reg,
        bit,
    }
}

/// The features virtkit knows by name (leaves 1, 7.0 and 0x80000001).
pub const FEATURES: &[FeatureBit] = &[
    f("fpu", 1, Reg::Edx, 0),
    f("vme", 1, Reg::Edx, 1),
    f("de", 1, Reg::Edx, 2),
    f("pse", 1, Reg::Edx, 3),
    f("tsc", 1, Reg::Edx, 4),
    f("msr", 1, Reg::Edx, 5),
    f("pae", 1, Reg::Edx, 6),
    f("mce", 1, Reg::Edx, 7),
    f("cx8", 1, Reg::Edx, 8),
    f("apic", 1, Reg::Edx, 9),
    f("sep", 1, Reg::Edx, 11),
    f("mtrr", 1, Reg::Edx, 12),
    f("pge", 1, Reg::Edx, 13),
    f("mca", 1, Reg::Edx, 14),
    f("cmov", 1, Reg::Edx, 15),
    f("pat", 1, Reg::Edx, 16),
    f("pse36", 1, Reg::Edx, 17),
    f("clflush", 1, Reg::Edx, 19),
    f("mmx", 1, Reg::Edx, 23),
    f("fxsr", 1, Reg::Edx, 24),
    f("sse", 1, Reg::Edx, 25),
    f("sse2", 1, Reg::Edx, 26),
    f("ss", 1, Reg::Edx, 27),
    f("pni", 1, Reg::Ecx, 0),
    f("pclmuldq", 1, Reg::Ecx, 1),
    f("monitor", 1, Reg::Ecx, 3),
    f("vmx", 1, Reg::Ecx, 5),
    f("ssse3", 1, Reg::Ecx, 9),
    f("fma", 1, Reg::Ecx, 12),
    f("cx16", 1, Reg::Ecx, 13),
    f("pdcm", 1, Reg::Ecx, 15),
    f("pcid", 1, Reg::Ecx, 17),
    f("sse4.1", 1, Reg::Ecx, 19),
    f("sse4.2", 1, Reg::Ecx, 20),
    f("x2apic", 1, Reg::Ecx, 21),
    f("movbe", 1, Reg::Ecx, 22),
    f("popcnt", 1, Reg::Ecx, 23),
    f("tsc-deadline", 1, Reg::Ecx, 24),
    f("aes", 1, Reg::Ecx, 25),
    f("xsave", 1, Reg::Ecx, 26),
    f("avx", 1, Reg::Ecx, 28),
    f("f16c", 1, Reg::Ecx, 29),
    f("rdrand", 1, Reg::Ecx, 30),
    f("hypervisor", 1, Reg::Ecx, 31),
    f("fsgsbase", 7, Reg::Ebx, 0),
    f("bmi1", 7, Reg::Ebx, 3),
    f("hle", 7, Reg::Ebx, 4),
    f("avx2", 7, Reg::Ebx, 5),
    f("smep", 7, Reg::Ebx, 7),
    f("bmi2", 7, Reg::Ebx, 8),
    f("erms", 7, Reg::Ebx, 9),
    f("invpcid", 7, Reg::Ebx, 10),
    f("rtm", 7, Reg::Ebx, 11),
    f("mpx", 7, Reg::Ebx, 14),
    f("avx512f", 7, Reg::Ebx, 16),
    f("avx512dq", 7, Reg::Ebx, 17),
    f("rdseed", 7, Reg::Ebx, 18),
    f("adx", 7, Reg::Ebx, 19),
    f("smap", 7, Reg::Ebx, 20),
    f("clflushopt", 7, Reg::Ebx, 23),
    f("clwb", 7, Reg::Ebx, 24),
    f("avx512cd", 7, Reg::Ebx, 28),
    f("sha-ni", 7, Reg::Ebx, 29),
    f("avx512bw", 7, Reg::Ebx, 30),
    f("avx512vl", 7, Reg::Ebx, 31),
    f("umip", 7, Reg::Ecx, 2),
    f("pku", 7, Reg::Ecx, 3),
    f("vaes", 7, Reg::Ecx, 9),
    f("vpclmulqdq", 7, Reg::Ecx, 10),
    f("rdpid", 7, Reg::Ecx, 22),
    f("md-clear", 7, Reg::Edx, 10),
    f("spec-ctrl", 7, Reg::Edx, 26),
    f("arch-capabilities", 7, Reg::Edx, 29),
    f("ssbd", 7, Reg::Edx, 31),
    f("lahf_lm", 0x8000_0001, Reg::Ecx, 0),
    f("svm", 0x8000_0001, Reg::Ecx, 2),
    f("abm", 0x8000_0001, Reg::Ecx, 5),
    f("sse4a", 0x8000_0001, Reg::Ecx, 6),
    f("3dnowprefetch", 0x8000_0001, Reg::Ecx, 8),
    f("syscall", 0x8000_0001, Reg::Edx, 11),
    f("nx", 0x8000_0001, Reg::Edx, 20),
    f("pdpe1gb", 0x8000_0001, Reg::Edx, 26),
    f("rdtscp", 0x8000_0001, Reg::Edx, 27),
    f("lm", 0x8000_0001, Reg::Edx, 29),
];

const CONROE: &[&str] = &[
    "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr", "pge",
    "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni", "ssse3",
    "syscall", "nx", "lm", "lahf_lm",
];

/// Named models (QEMU's definitions): the named features each sets;
/// every other named feature is cleared.
pub const MODELS: &[(&str, &[&str])] = &[
    ("Conroe", CONROE),
    (
        "Penryn",
        &[
            "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr",
            "pge", "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni",
            "ssse3", "cx16", "sse4.1", "syscall", "nx", "lm", "lahf_lm",
        ],
    ),
    (
        "Nehalem",
        &[
            "fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "sep", "mtrr",
            "pge", "mca", "cmov", "pat", "pse36", "clflush", "mmx", "fxsr", "sse", "sse2", "pni",
            "ssse3", "cx16", "sse4.1", "sse4.2", "popcnt", "syscall", "nx", "lm", "lahf_lm",
        ],
    ),
];

/// Bits the hypervisor always shows the guest, whatever the model.
const ALWAYS: &[&str] = &["hypervisor"];

/// Why a CPU configuration cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CpuError {
    /// A feature name virtkit does not know.
    #[error("spec.domain.cpu.features[{index}].name: unknown CPU feature {name:?}")]
    UnknownFeature {
        /// Index in `features`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A policy outside the five (KubeVirt's wording).
    #[error("spec.domain.cpu.features[{index}].policy: CPU feature {name} uses policy {policy} that is not supported.")]
    UnknownPolicy {
        /// Index in `features`.
        index: usize,
        /// The feature.
        name: String,
        /// The policy given.
        policy: String,
    },
    /// A model name virtkit does not know.
    #[error("spec.domain.cpu.model: unknown CPU model {0:?} (known: host-model, host-passthrough, Conroe, Penryn, Nehalem)")]
    UnknownModel(String),
    /// The host cannot provide features the model needs.
    #[error("spec.domain.cpu.model: this host cannot run CPU model {model}: it lacks {missing:?}")]
    ModelUnsupported {
        /// Model.
        model: String,
        /// Features the host lacks.
        missing: Vec<String>,
    },
    /// A `require`d feature the host lacks.
    #[error("spec.domain.cpu.features[{index}]: CPU feature {name} is required but this host does not support it")]
    Required {
        /// Index in `features`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A `forbid`den feature the host has.
    #[error("spec.domain.cpu.features[{index}]: CPU feature {name} is forbidden but this host supports it")]
    Forbidden {
        /// Index in `features`.
        index: usize,
        /// The name.
        name: String,
    },
    /// sockets × cores × threads does not match the vCPU count, or is 0.
    #[error("CPU topology {topology} does not give {vcpus} vCPUs")]
    Topology {
        /// The topology.
        topology: Topology,
        /// vCPUs asked for.
        vcpus: u32,
    },
}

/// sockets × cores × threads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// Sockets.
    pub sockets: u32,
    /// Cores per socket.
    pub cores: u32,
    /// Threads per core.
    pub threads: u32,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sockets × {} cores × {} threads",
            self.sockets, self.cores, self.threads
        )
    }
}

fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

impl Topology {
    /// One socket with `vcpus` single-threaded cores.
    pub fn flat(vcpus: u32) -> Self {
        Topology {
            sockets: 1,
            cores: vcpus.max(1),
            threads: 1,
        }
    }

    /// vCPUs in all.
    pub fn vcpus(&self) -> u32 {
        self.sockets * self.cores * self.threads
    }

    fn thread_bits(&self) -> u32 {
        bits_for(self.threads)
    }

    fn core_bits(&self) -> u32 {
        bits_for(self.cores)
    }

    /// The (x2)APIC ID of vCPU `index`: socket, core and thread packed in
    /// bit fields as real hardware does (so IDs skip values when a count
    /// is not a power of two).
    pub fn apic_id(&self, index: u32) -> u32 {
        let thread = index % self.threads;
        let core = (index / self.threads) % self.cores;
        let socket = index / (self.threads * self.cores);
        (socket << (self.core_bits() + self.thread_bits())) | (core << self.thread_bits()) | thread
    }
}

/// The model a guest gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuModel {
    /// What KVM supports on this host (`host-model`, `host-passthrough`,
    /// or no model given).
    Host,
    /// A named model from [`MODELS`].
    Named(&'static str),
}

/// Topology, model and feature policies of a guest CPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuConfig {
    /// Topology.
    pub topology: Topology,
    /// Model.
    pub model: CpuModel,
    /// `(feature, policy)` in spec order.
    pub features: Vec<(String, CpuFeaturePolicy)>,
}

fn feature(name: &str) -> Option<&'static FeatureBit> {
    FEATURES.iter().find(|f| f.name == name)
}

impl CpuConfig {
    /// A host-model CPU with `vcpus` cores in one socket.
    pub fn flat(vcpus: u32) -> Self {
        CpuConfig {
            topology: Topology::flat(vcpus),
            model: CpuModel::Host,
            features: Vec::new(),
        }
    }

    /// From `domain.cpu` (absent: one vCPU, host model). Unknown model
    /// and feature names are errors with their field path.
    pub fn from_spec(cpu: Option<&Cpu>) -> Result<Self, CpuError> {
        let Some(cpu) = cpu else {
            return Ok(Self::flat(1));
        };
        let count = |v: Option<i64>| v.filter(|v| *v > 0).unwrap_or(1) as u32;
        let topology = Topology {
            sockets: count(cpu.sockets),
            cores: count(cpu.cores),
            threads: count(cpu.threads),
        };
        let model = match cpu.model.as_deref() {
            None | Some("") | Some("host-model") | Some("host-passthrough") => CpuModel::Host,
            Some(name) => CpuModel::Named(
                MODELS
                    .iter()
                    .find(|(m, _)| *m == name)
                    .map(|(m, _)| *m)
                    .ok_or_else(|| CpuError::UnknownModel(name.to_string()))?,
            ),
        };
        let mut features = Vec::new();
        for (index, feat) in cpu.features.iter().enumerate() {
            if feature(&feat.name).is_none() {
                return Err(CpuError::UnknownFeature {
                    index,
                    name: feat.name.clone(),
                });
            }
            let policy = feat.policy.clone().unwrap_or(CpuFeaturePolicy::Require);
            if let CpuFeaturePolicy::Unknown(p) = &policy {
                return Err(CpuError::UnknownPolicy {
                    index,
                    name: feat.name.clone(),
                    policy: p.clone(),
                });
            }
            features.push((feat.name.clone(), policy));
        }
        Ok(CpuConfig {
            topology,
            model,
            features,
        })
    }

    /// The CPUID of vCPU `index`, from KVM's `supported` entries.
    pub fn guest_cpuid(
        &self,
        supported: &[CpuidEntry],
        index: u32,
    ) -> Result<Vec<CpuidEntry>, CpuError> {
        let mut cpuid = supported.to_vec();
        let has = |cpuid: &[CpuidEntry], fb: &FeatureBit| {
            cpuid
                .iter()
                .find(|e| e.function == fb.leaf && e.index == fb.subleaf)
                .is_some_and(|e| e.reg(fb.reg) & (1 << fb.bit) != 0)
        };
        if let CpuModel::Named(model) = self.model {
            let wanted = MODELS
                .iter()
                .find(|(m, _)| *m == model)
                .map_or(&[][..], |(_, f)| *f);
            let missing: Vec<String> = wanted
                .iter()
                .filter_map(|n| feature(n))
                .filter(|fb| !has(supported, fb))
                .map(|fb| fb.name.to_string())
                .collect();
            if !missing.is_empty() {
                return Err(CpuError::ModelUnsupported {
                    model: model.to_string(),
                    missing,
                });
            }
            for fb in FEATURES {
                if !wanted.contains(&fb.name) && !ALWAYS.contains(&fb.name) {
                    set_bit(&mut cpuid, fb, false);
                }
            }
        }
        for (index, (name, policy)) in self.features.iter().enumerate() {
            let Some(fb) = feature(name) else {
                return Err(CpuError::UnknownFeature {
                    index,
                    name: name.clone(),
                });
            };
            let host = has(supported, fb);
            match policy {
                CpuFeaturePolicy::Force => set_bit(&mut cpuid, fb, true),
                CpuFeaturePolicy::Require if !host => {
                    return Err(CpuError::Required {
                        index,
                        name: name.clone(),
                    })
                }
                CpuFeaturePolicy::Require => set_bit(&mut cpuid, fb, true),
                CpuFeaturePolicy::Optional => set_bit(&mut cpuid, fb, host),
                CpuFeaturePolicy::Disable => set_bit(&mut cpuid, fb, false),
                CpuFeaturePolicy::Forbid if host => {
                    return Err(CpuError::Forbidden {
                        index,
                        name: name.clone(),
                    })
                }
                CpuFeaturePolicy::Forbid => set_bit(&mut cpuid, fb, false),
                CpuFeaturePolicy::Unknown(p) => {
                    return Err(CpuError::UnknownPolicy {
                        index,
                        name: name.clone(),
                        policy: p.clone(),
                    })
                }
            }
        }
        self.apply_topology(&mut cpuid, index);
        Ok(cpuid)
    }

    fn apply_topology(&self, cpuid: &mut Vec<CpuidEntry>, index: u32) {
        // Leaves 0xB/0x1F enumerate levels by subleaf; KVM may list only
        // subleaf 0, so add the SMT, core and terminating levels.
        for leaf in [0xb, 0x1f] {
            if cpuid.iter().any(|e| e.function == leaf) {
                for sub in 0..3 {
                    if !cpuid.iter().any(|e| e.function == leaf && e.index == sub) {
                        cpuid.push(CpuidEntry {
                            function: leaf,
                            index: sub,
                            ..Default::default()
                        });
                    }
                }
            }
        }
        let t = self.topology;
        let apic = t.apic_id(index);
        let per_package = t.cores * t.threads;
        let (smt_shift, core_shift) = (t.thread_bits(), t.thread_bits() + t.core_bits());
        for e in cpuid.iter_mut() {
            match (e.function, e.index) {
                (1, _) => {
                    e.ebx = (e.ebx & 0x0000_ffff)
                        | ((apic & 0xff) << 24)
                        | ((per_package & 0xff) << 16);
                    if per_package > 1 {
                        e.edx |= 1 << 28; // HTT: more than one logical CPU per package
                    }
                }
                (4, _) if e.eax & 0x1f != 0 => {
                    e.eax = (e.eax & 0x03ff_ffff) | ((t.cores - 1) << 26);
                }
                (0xb, sub) | (0x1f, sub) => {
                    let (shift, count, level) = match sub {
                        0 => (smt_shift, t.threads, 1),
                        1 => (core_shift, per_package, 2),
                        _ => (0, 0, 0),
                    };
                    e.eax = shift;
                    e.ebx = count;
                    e.ecx = (level << 8) | (sub & 0xff);
                    e.edx = apic;
                }
                _ => {}
            }
        }
    }
}

fn set_bit(cpuid: &mut [CpuidEntry], fb: &FeatureBit, on: bool) {
    if let Some(e) = cpuid
        .iter_mut()
        .find(|e| e.function == fb.leaf && e.index == fb.subleaf)
    {
        let r = e.reg_mut(fb.reg);
        if on {
            *r |= 1 << fb.bit;
        } else {
            *r &= !(1 << fb.bit);
        }
    }
}

/// What this host's KVM offers guests (the "node labeller" view).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCpuInfo {
    /// Named features KVM supports.
    pub features: Vec<&'static str>,
    /// Named models this host can run.
    pub models: Vec<&'static str>,
}

/// The named features and models in `supported`.
pub fn cpu_info(supported: &[CpuidEntry]) -> HostCpuInfo {
    let features: Vec<&'static str> = FEATURES
        .iter()
        .filter(|fb| {
            supported
                .iter()
                .find(|e| e.function == fb.leaf && e.index == fb.subleaf)
                .is_some_and(|e| e.reg(fb.reg) & (1 << fb.bit) != 0)
        })
        .map(|fb| fb.name)
        .collect();
    let models = MODELS
        .iter()
        .filter(|(_, need)| need.iter().all(|n| features.contains(n)))
        .map(|(m, _)| *m)
        .collect();
    HostCpuInfo { features, models }
}

/// KVM's supported CPUID on this host, as [`CpuidEntry`]s.
pub fn host_cpuid() -> Result<Vec<CpuidEntry>, super::RuntimeError> {
    let kvm = kvm_ioctls::Kvm::new().map_err(super::RuntimeError::KvmUnavailable)?;
    let supported = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(super::kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
    Ok(supported.as_slice().iter().map(from_kvm).collect())
}

/// The host's [`HostCpuInfo`].
pub fn host_cpu_info() -> Result<HostCpuInfo, super::RuntimeError> {
    Ok(cpu_info(&host_cpuid()?))
}

/// KVM's form of `entries`, keeping the flags of the entries KVM listed
/// and marking added subleaves as index-significant.
pub(crate) fn to_kvm(
    entries: &[CpuidEntry],
    supported: &[kvm_bindings::kvm_cpuid_entry2],
) -> Result<kvm_bindings::CpuId, super::RuntimeError> {
    let raw: Vec<kvm_bindings::kvm_cpuid_entry2> = entries
        .iter()
        .map(|e| {
            let flags = supported
                .iter()
                .find(|s| s.function == e.function && s.index == e.index)
                .map_or(kvm_bindings::KVM_CPUID_FLAG_SIGNIFCANT_INDEX, |s| s.flags);
            kvm_bindings::kvm_cpuid_entry2 {
                function: e.function,
                index: e.index,
                flags,
                eax: e.eax,
                ebx: e.ebx,
                ecx: e.ecx,
                edx: e.edx,
                ..Default::default()
            }
        })
        .collect();
    kvm_bindings::CpuId::from_entries(&raw).map_err(|e| {
        super::RuntimeError::InvalidConfig(format!("{} CPUID entries: {e:?}", raw.len()))
    })
}

pub(crate) fn from_kvm(e: &kvm_bindings::kvm_cpuid_entry2) -> CpuidEntry {
    CpuidEntry {
        function: e.function,
        index: e.index,
        eax: e.eax,
        ebx: e.ebx,
        ecx: e.ecx,
        edx: e.edx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::vmi::CpuFeature;

    fn entry(function: u32, index: u32, ecx: u32, edx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            eax: 0,
            ebx: 0,
            ecx,
            edx,
        }
    }

    fn host() -> Vec<CpuidEntry> {
        // Everything in leaf 1 and 0x80000001 except avx (1.ecx.28);
        // leaf 7 without avx512f.
        vec![
            entry(1, 0, !(1 << 28), !0),
            CpuidEntry {
                function: 7,
                index: 0,
                ebx: !(1 << 16),
                ..Default::default()
            },
            entry(0x8000_0001, 0, !0, !0),
            entry(0xb, 0, 0, 0),
            entry(0xb, 1, 0, 0),
            CpuidEntry {
                function: 4,
                eax: 0x121,
                ..Default::default()
            },
        ]
    }

    fn get(c: &[CpuidEntry], leaf: u32, sub: u32) -> CpuidEntry {
        *c.iter()
            .find(|e| e.function == leaf && e.index == sub)
            .unwrap()
    }

    fn spec(model: Option<&str>, features: &[(&str, CpuFeaturePolicy)]) -> Cpu {
        Cpu {
            model: model.map(str::to_string),
            features: features
                .iter()
                .map(|(n, p)| CpuFeature {
                    name: n.to_string(),
                    policy: Some(p.clone()),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn policies() {
        use CpuFeaturePolicy::*;
        let cfg = CpuConfig::from_spec(Some(&spec(
            None,
            &[
                ("sse2", Disable),
                ("avx", Force),
                ("pcid", Optional),
                ("avx512f", Optional),
            ],
        )))
        .unwrap();
        let c = cfg.guest_cpuid(&host(), 0).unwrap();
        assert_eq!(get(&c, 1, 0).edx & (1 << 26), 0, "disable clears");
        assert_ne!(
            get(&c, 1, 0).ecx & (1 << 28),
            0,
            "force sets what KVM lacks"
        );
        assert_ne!(
            get(&c, 1, 0).ecx & (1 << 17),
            0,
            "optional keeps what the host has"
        );
        assert_eq!(
            get(&c, 7, 0).ebx & (1 << 16),
            0,
            "optional leaves out what it lacks"
        );
        let req = CpuConfig::from_spec(Some(&spec(None, &[("apic", Require), ("avx", Require)])))
            .unwrap();
        assert_eq!(
            req.guest_cpuid(&host(), 0),
            Err(CpuError::Required {
                index: 1,
                name: "avx".into()
            })
        );
        let forbid =
            CpuConfig::from_spec(Some(&spec(None, &[("avx512f", Forbid), ("vmx", Forbid)])))
                .unwrap();
        let err = forbid.guest_cpuid(&host(), 0).unwrap_err();
        assert_eq!(
            err,
            CpuError::Forbidden {
                index: 1,
                name: "vmx".into()
            }
        );
        assert!(err.to_string().starts_with("spec.domain.cpu.features[1]"));
        let unknown = CpuConfig::from_spec(Some(&spec(
            None,
            &[("apic", Require), ("warp-drive", Require)],
        )));
        assert_eq!(
            unknown,
            Err(CpuError::UnknownFeature {
                index: 1,
                name: "warp-drive".into()
            })
        );
        assert!(matches!(
            CpuConfig::from_spec(Some(&spec(Some("Skylake-9000"), &[]))),
            Err(CpuError::UnknownModel(_))
        ));
    }

    #[test]
    fn named_model_is_its_table_row() {
        let cfg = CpuConfig::from_spec(Some(&spec(Some("Conroe"), &[]))).unwrap();
        let c = cfg.guest_cpuid(&host(), 0).unwrap();
        for fb in FEATURES {
            let e = get(&c, fb.leaf, fb.subleaf);
            let on = e.reg(fb.reg) & (1 << fb.bit) != 0;
            let want = CONROE.contains(&fb.name) || ALWAYS.contains(&fb.name);
            assert_eq!(on, want, "{}", fb.name);
        }
        // A host without ssse3 cannot run Conroe.
        let mut poor = host();
        poor[0].ecx &= !(1 << 9);
        assert_eq!(
            cfg.guest_cpuid(&poor, 0),
            Err(CpuError::ModelUnsupported {
                model: "Conroe".into(),
                missing: vec!["ssse3".into()]
            })
        );
        let info = cpu_info(&poor);
        assert!(!info.models.contains(&"Conroe"));
        assert!(cpu_info(&host()).models.contains(&"Nehalem"));
    }

    #[test]
    fn topology_in_apic_ids_and_leaves() {
        let t = Topology {
            sockets: 2,
            cores: 3,
            threads: 2,
        };
        assert_eq!(t.vcpus(), 12);
        // thread bits 1, core bits 2: socket 1, core 2, thread 1 → 1<<3 | 2<<1 | 1.
        assert_eq!(t.apic_id(11), 0b1101);
        assert_eq!(t.apic_id(2), 0b0010);
        let cfg = CpuConfig {
            topology: t,
            model: CpuModel::Host,
            features: Vec::new(),
        };
        let c = cfg.guest_cpuid(&host(), 11).unwrap();
        assert_eq!(get(&c, 1, 0).ebx >> 24, 0b1101);
        assert_eq!(
            (get(&c, 1, 0).ebx >> 16) & 0xff,
            6,
            "logical CPUs per package"
        );
        assert_eq!((get(&c, 0xb, 0).eax, get(&c, 0xb, 0).ebx), (1, 2));
        assert_eq!((get(&c, 0xb, 1).eax, get(&c, 0xb, 1).ebx), (3, 6));
        assert_eq!(get(&c, 0xb, 1).ecx >> 8, 2, "core level");
        assert_eq!(get(&c, 0xb, 0).edx, 0b1101);
        assert_eq!(get(&c, 4, 0).eax >> 26, 2, "cores per package - 1");
    }
}
