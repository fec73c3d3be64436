//! The CPU features a guest was given, as the registers of its CPUID that
//! hold feature flags: what a migration target compares with its own
//! vCPUs, so that a guest never wakes on a CPU without an instruction it
//! already found (it probed CPUID at boot and will not look again). A
//! missing flag is named as libvirt names it ([`FEATURES`]), or by its
//! place in CPUID when virtkit has no name for it.

use super::cpu::{CpuidEntry, Reg, FEATURES};

/// One feature register of a guest's CPUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureWord {
    /// Leaf.
    pub leaf: u32,
    /// Subleaf.
    pub subleaf: u32,
    /// Register.
    pub reg: Reg,
    /// Its value, with the flags that the guest's own state sets masked
    /// out (see [`FEATURE_REGISTERS`]).
    pub value: u32,
}

/// The registers compared, each with the flags it may carry: leaves 1,
/// 7.0 and 0x80000001 (the named features), and the XSAVE leaves
/// 0xD.0 EAX (state components the guest may enable in XCR0) and 0xD.1
/// EAX (XSAVEOPT, XSAVEC, XGETBV1, XSAVES). Flags that mirror the guest's
/// control registers (OSXSAVE, 1 ECX bit 27; OSPKE, 7.0 ECX bit 4) and
/// the APIC-id and topology fields of leaf 1 are not features.
pub const FEATURE_REGISTERS: &[(u32, u32, Reg, u32)] = &[
    (1, 0, Reg::Ecx, !(1 << 27)),
    (1, 0, Reg::Edx, u32::MAX),
    (7, 0, Reg::Ebx, u32::MAX),
    (7, 0, Reg::Ecx, !(1 << 4)),
    (7, 0, Reg::Edx, u32::MAX),
    (0xd, 0, Reg::Eax, u32::MAX),
    (0xd, 1, Reg::Eax, u32::MAX),
    (0x8000_0001, 0, Reg::Ecx, u32::MAX),
    (0x8000_0001, 0, Reg::Edx, u32::MAX),
];

/// Names of the flags of leaf 0xD that [`FEATURES`] does not list.
const XSAVE_NAMES: &[(u32, u32, u8, &str)] = &[
    (0xd, 0, 0, "xsave-x87"),
    (0xd, 0, 1, "xsave-sse"),
    (0xd, 0, 2, "xsave-avx"),
    (0xd, 0, 3, "xsave-mpx-bndregs"),
    (0xd, 0, 4, "xsave-mpx-bndcsr"),
    (0xd, 0, 5, "xsave-avx512-opmask"),
    (0xd, 0, 6, "xsave-avx512-zmm-hi256"),
    (0xd, 0, 7, "xsave-avx512-hi16-zmm"),
    (0xd, 0, 9, "xsave-pkru"),
    (0xd, 0, 17, "xsave-amx-tilecfg"),
    (0xd, 0, 18, "xsave-amx-tiledata"),
    (0xd, 1, 0, "xsaveopt"),
    (0xd, 1, 1, "xsavec"),
    (0xd, 1, 2, "xgetbv1"),
    (0xd, 1, 3, "xsaves"),
];

/// The feature words of `cpuid` (a vCPU's), in [`FEATURE_REGISTERS`]
/// order; a leaf the CPUID lacks reads as no features.
pub fn feature_words(cpuid: &[CpuidEntry]) -> Vec<FeatureWord> {
    FEATURE_REGISTERS
        .iter()
        .map(|&(leaf, subleaf, reg, mask)| FeatureWord {
            leaf,
            subleaf,
            reg,
            value: cpuid
                .iter()
                .find(|e| e.function == leaf && e.index == subleaf)
                .map_or(0, |e| e.reg(reg) & mask),
        })
        .collect()
}

/// The flags set in `source` that `target` lacks, by name, in source
/// order. A register the target does not list at all lacks every flag.
pub fn missing_features(source: &[FeatureWord], target: &[FeatureWord]) -> Vec<String> {
    let mut missing = Vec::new();
    for s in source {
        let theirs = target
            .iter()
            .find(|t| t.leaf == s.leaf && t.subleaf == s.subleaf && t.reg == s.reg)
            .map_or(0, |t| t.value);
        let lacking = s.value & !theirs;
        for bit in (0..32u8).filter(|b| lacking & (1 << b) != 0) {
            missing.push(feature_name(s.leaf, s.subleaf, s.reg, bit));
        }
    }
    missing
}

/// A flag's name: libvirt's where virtkit knows it, else its place.
pub fn feature_name(leaf: u32, subleaf: u32, reg: Reg, bit: u8) -> String {
    let named = FEATURES
        .iter()
        .find(|f| f.leaf == leaf && f.subleaf == subleaf && f.reg == reg && f.bit == bit)
        .map(|f| f.name)
        .or_else(|| {
            XSAVE_NAMES
                .iter()
                .find(|(l, s, b, _)| *l == leaf && *s == subleaf && *b == bit && reg == Reg::Eax)
                .map(|(.., name)| *name)
        });
    match named {
        Some(name) => name.to_string(),
        None => format!(
            "CPUID {leaf:#x}.{subleaf} {} bit {bit}",
            format!("{reg:?}").to_lowercase()
        ),
    }
}

/// A register as a number on the wire (EAX 0 … EDX 3).
pub fn reg_number(reg: Reg) -> u32 {
    match reg {
        Reg::Eax => 0,
        Reg::Ebx => 1,
        Reg::Ecx => 2,
        Reg::Edx => 3,
    }
}

/// The register a wire number names.
pub fn reg_from_number(n: u32) -> Option<Reg> {
    Some(match n {
        0 => Reg::Eax,
        1 => Reg::Ebx,
        2 => Reg::Ecx,
        3 => Reg::Edx,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, eax: u32, ebx: u32, ecx: u32, edx: u32) -> CpuidEntry {
        CpuidEntry {
            function,
            index,
            eax,
            ebx,
            ecx,
            edx,
        }
    }

    #[test]
    fn words_follow_the_registers_and_mask_what_is_not_a_feature() {
        let cpuid = [
            entry(1, 0, 0x906ea, 0xff00_0800, (1 << 27) | (1 << 28), 1 << 26),
            entry(7, 0, 0, 1 << 5, (1 << 4) | (1 << 1), 0),
        ];
        let w = feature_words(&cpuid);
        assert_eq!(w.len(), FEATURE_REGISTERS.len());
        assert_eq!(w[0].value, 1 << 28, "OSXSAVE mirrors CR4");
        assert_eq!(w[1].value, 1 << 26);
        assert_eq!(w[2].value, 1 << 5);
        assert_eq!(w[3].value, 1 << 1, "OSPKE mirrors CR4");
        assert!(w[5..].iter().all(|w| w.value == 0), "absent leaves");
    }

    #[test]
    fn missing_flags_are_named_or_placed() {
        let source = feature_words(&[
            entry(1, 0, 0, 0, (1 << 28) | (1 << 20), 1 << 26),
            entry(7, 0, 0, (1 << 5) | (1 << 8), 1 << 31, 0),
            entry(0xd, 0, 0b111, 0, 0, 0),
        ]);
        let target = feature_words(&[
            entry(1, 0, 0, 0, 1 << 20, (1 << 26) | (1 << 25)),
            entry(7, 0, 0, 1 << 8, 0, 0),
            entry(0xd, 0, 0b011, 0, 0, 0),
        ]);
        assert_eq!(
            missing_features(&source, &target),
            ["avx", "avx2", "CPUID 0x7.0 ecx bit 31", "xsave-avx"]
        );
        // What the target has beyond the source is no obstacle.
        assert_eq!(missing_features(&target, &source), ["sse"]);
        assert!(missing_features(&source, &source).is_empty());
        // A target that lists no such register lacks all of its flags.
        assert_eq!(missing_features(&source[2..3], &[]), ["avx2", "bmi2"]);
    }

    #[test]
    fn registers_go_over_the_wire_and_back() {
        for r in [Reg::Eax, Reg::Ebx, Reg::Ecx, Reg::Edx] {
            assert_eq!(reg_from_number(reg_number(r)), Some(r));
        }
        assert_eq!(reg_from_number(4), None);
    }
}
