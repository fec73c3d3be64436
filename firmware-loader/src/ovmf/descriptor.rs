//! QEMU firmware descriptors (`docs/interop/firmware.json`): the JSON
//! files under `/usr/share/qemu/firmware` that say which firmware image
//! does what. virtkit picks its EFI firmware the way QEMU and libvirt do:
//! descriptors sorted by file name, the first that fits wins.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where distributions install descriptors.
pub const SYSTEM_DESCRIPTOR_DIR: &str = "/usr/share/qemu/firmware";
/// The machine type virtkit's q35-like machine matches descriptors as.
pub const Q35_MACHINE: &str = "pc-q35-virtkit";

/// One image of a flash mapping.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FlashFile {
    /// Path of the image.
    pub filename: PathBuf,
    /// `raw` or `qcow2`; virtkit maps `raw` only.
    pub format: String,
}

/// `mapping` of a descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Mapping {
    /// `flash`, `kernel` or `memory`.
    pub device: String,
    /// `split` (CODE + VARS, the default) or `combined`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The code image.
    pub executable: Option<FlashFile>,
    /// The variable store template copied for each VM.
    pub nvram_template: Option<FlashFile>,
}

/// One architecture and the machine types (globs) a firmware runs on.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Target {
    /// `x86_64`, `aarch64`, ….
    pub architecture: String,
    /// Machine type globs such as `pc-q35-*`.
    pub machines: Vec<String>,
}

/// A firmware descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct Descriptor {
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// `uefi`, `bios`, ….
    pub interface_types: Vec<String>,
    /// How the firmware is mapped.
    pub mapping: Mapping,
    /// Where it runs.
    pub targets: Vec<Target>,
    /// `secure-boot`, `enrolled-keys`, `requires-smm`, ….
    #[serde(default)]
    pub features: Vec<String>,
}

impl Descriptor {
    /// Whether the descriptor lists `feature`.
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// Whether it runs `machine` on x86-64.
    pub fn runs(&self, machine: &str) -> bool {
        self.targets.iter().any(|t| {
            t.architecture == "x86_64" && t.machines.iter().any(|g| glob_match(g, machine))
        })
    }
}

/// A descriptor and the file it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorFile {
    /// The JSON file.
    pub path: PathBuf,
    /// Its contents.
    pub descriptor: Descriptor,
}

/// Why descriptors could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DescriptorError {
    /// The directory or a file could not be read.
    #[error("reading firmware descriptors at {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a valid descriptor.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// serde_json's error, with line and column.
        #[source]
        source: serde_json::Error,
    },
}

/// Parse one descriptor.
pub fn parse(path: &Path, text: &str) -> Result<Descriptor, DescriptorError> {
    serde_json::from_str(text).map_err(|source| DescriptorError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Every `*.json` descriptor in `dir`, sorted by file name (QEMU's
/// priority order: `40-…` before `60-…`).
pub fn load_dir(dir: &Path) -> Result<Vec<DescriptorFile>, DescriptorError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DescriptorError::Io { path, source }
    };
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).map_err(io(&path))?;
            let descriptor = parse(&path, &text)?;
            Ok(DescriptorFile { path, descriptor })
        })
        .collect()
}

/// What the VM asks of its EFI firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EfiRequest<'a> {
    /// Secure Boot on: the firmware must have it, with keys enrolled so
    /// that it is enforced from the first boot.
    pub secure_boot: bool,
    /// Whether the VM has SMM; firmware that requires it is skipped
    /// otherwise.
    pub smm: bool,
    /// The machine type to match.
    pub machine: &'a str,
}

/// The first descriptor, in order, that is a UEFI split flash image for
/// x86-64 on `req.machine` and fits the request: with Secure Boot,
/// `secure-boot` and `enrolled-keys`; without, no `secure-boot`; never
/// `requires-smm` for a VM without SMM.
pub fn select<'a>(files: &'a [DescriptorFile], req: &EfiRequest<'_>) -> Option<&'a DescriptorFile> {
    files.iter().find(|f| {
        let d = &f.descriptor;
        let m = &d.mapping;
        d.interface_types.iter().any(|t| t == "uefi")
            && m.device == "flash"
            && m.mode.as_deref().is_none_or(|mode| mode == "split")
            && m.executable.as_ref().is_some_and(|e| e.format == "raw")
            && m.nvram_template.as_ref().is_some_and(|v| v.format == "raw")
            && d.runs(req.machine)
            && (req.smm || !d.has("requires-smm"))
            && if req.secure_boot {
                d.has("secure-boot") && d.has("enrolled-keys")
            } else {
                !d.has("secure-boot")
            }
    })
}

/// Shell-style match with `*` (any run) and `?` (one character), as QEMU
/// matches machine types.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("pc-q35-*", Q35_MACHINE));
        assert!(!glob_match("pc-i440fx-*", Q35_MACHINE));
        assert!(glob_match("*", ""));
        assert!(glob_match("a?c*", "abcdef"));
        assert!(!glob_match("a?c", "abcd"));
    }
}
