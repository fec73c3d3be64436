//! EFI firmware (OVMF): pick the image from QEMU firmware descriptors,
//! check its firmware volumes, give the VM its own copy of the variable
//! store, and map both as CFI flash ending at 4 GiB.
//!
//! The CODE image is mapped read-only as guest memory (the vCPU fetches
//! from it directly) with a read-only [`Pflash`] over it that drops the
//! guest's writes; the VARS copy is a writable [`Pflash`] whose every
//! access traps, written through to the VM's VARS file. The template the
//! copy came from is never opened for writing.

pub mod descriptor;
pub mod pflash;
pub mod volume;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virtkit_core::runtime::VmBuilder;
use virtkit_core::spec::vmi::VmiSpec;

pub use descriptor::{DescriptorFile, EfiRequest};
pub use pflash::Pflash;
use volume::VolumeError;

/// Flash images come in 4 KiB erase blocks.
pub const FLASH_BLOCK: u64 = 4096;
/// The flash window below 4 GiB: CODE and VARS together fit in 16 MiB.
pub const FLASH_WINDOW: u64 = 16 << 20;
/// Flash ends here.
pub const FLASH_END: u64 = 1 << 32;

/// Why EFI firmware could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum OvmfError {
    /// Reading descriptors failed.
    #[error(transparent)]
    Descriptors(#[from] descriptor::DescriptorError),
    /// No descriptor fits.
    #[error("no EFI firmware descriptor in {dir} fits {wanted} on {machine}")]
    NoFirmware {
        /// Where descriptors were looked for.
        dir: PathBuf,
        /// What was wanted, in words.
        wanted: String,
        /// The machine type.
        machine: String,
    },
    /// An image could not be read or the VARS copy written.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An image has an unusable size.
    #[error("{role} image {path}: {reason}")]
    Size {
        /// `CODE` or `VARS`.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An image's firmware volumes are invalid.
    #[error("{role} image {path}: {source}")]
    Volume {
        /// `CODE` or `VARS`.
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// The fault.
        #[source]
        source: VolumeError,
    },
    /// A Secure Boot VM got firmware whose VARS enroll no platform key.
    #[error("Secure Boot VARS template {path} enrolls no platform key (PK)")]
    KeysNotEnrolled {
        /// The template.
        path: PathBuf,
    },
    /// Attaching the flash devices to the VM failed.
    #[error("mapping the firmware flash: {0}")]
    Attach(String),
}

/// The firmware a VM boots, chosen and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    /// The descriptor it came from.
    pub descriptor: PathBuf,
    /// The CODE image.
    pub code: PathBuf,
    /// The VARS template.
    pub vars_template: PathBuf,
    /// Secure Boot is on (keys enrolled).
    pub secure_boot: bool,
    /// The firmware needs SMM (the VM must be built with it).
    pub requires_smm: bool,
}

/// What a VMI's `firmware.bootloader.efi` and `features.smm` ask of the
/// firmware on `machine` (usually [`descriptor::Q35_MACHINE`]), or `None`
/// for BIOS.
pub fn efi_request<'a>(spec: &VmiSpec, machine: &'a str) -> Option<EfiRequest<'a>> {
    let efi = spec
        .domain
        .firmware
        .as_ref()?
        .bootloader
        .as_ref()?
        .efi
        .as_ref()?;
    let smm = spec
        .domain
        .features
        .as_ref()
        .is_some_and(|f| f.smm_enabled());
    Some(EfiRequest {
        secure_boot: efi.secure_boot(),
        smm,
        machine,
    })
}

/// Pick firmware from the descriptors in `dir` (usually
/// [`descriptor::SYSTEM_DESCRIPTOR_DIR`]).
pub fn select(dir: &Path, req: &EfiRequest<'_>) -> Result<Selection, OvmfError> {
    let files = descriptor::load_dir(dir)?;
    let chosen = descriptor::select(&files, req).ok_or_else(|| OvmfError::NoFirmware {
        dir: dir.to_path_buf(),
        wanted: format!(
            "UEFI{}{}",
            if req.secure_boot {
                " with Secure Boot and enrolled keys"
            } else {
                " without Secure Boot"
            },
            if req.smm { "" } else { ", without SMM" }
        ),
        machine: req.machine.to_string(),
    })?;
    let d = &chosen.descriptor;
    let (Some(code), Some(vars)) = (&d.mapping.executable, &d.mapping.nvram_template) else {
        // `descriptor::select` only returns split mappings with both.
        return Err(OvmfError::NoFirmware {
            dir: dir.to_path_buf(),
            wanted: "a split flash mapping".into(),
            machine: req.machine.to_string(),
        });
    };
    Ok(Selection {
        descriptor: chosen.path.clone(),
        code: code.filename.clone(),
        vars_template: vars.filename.clone(),
        secure_boot: d.has("secure-boot"),
        requires_smm: d.has("requires-smm"),
    })
}

/// Firmware ready to map: the checked CODE bytes and the VM's own VARS
/// file.
#[derive(Debug)]
pub struct EfiFirmware {
    /// What was selected.
    pub selection: Selection,
    /// The CODE image.
    pub code: Vec<u8>,
    /// The VM's VARS file.
    pub vars_path: PathBuf,
    /// Its contents when prepared.
    pub vars: Vec<u8>,
    /// The variables in it.
    pub store: volume::VarStore,
}

fn read_image(role: &'static str, path: &Path) -> Result<Vec<u8>, OvmfError> {
    let bytes = std::fs::read(path).map_err(|source| OvmfError::Io {
        what: "reading the firmware image",
        path: path.to_path_buf(),
        source,
    })?;
    let size = |reason: String| OvmfError::Size {
        role,
        path: path.to_path_buf(),
        reason,
    };
    if bytes.is_empty() || bytes.len() as u64 % FLASH_BLOCK != 0 {
        return Err(size(format!(
            "{} bytes is not a whole number of 4 KiB blocks",
            bytes.len()
        )));
    }
    if bytes.len() as u64 > FLASH_WINDOW {
        return Err(size(format!(
            "{} bytes is more than the {} MiB flash window",
            bytes.len(),
            FLASH_WINDOW >> 20
        )));
    }
    Ok(bytes)
}

fn check_vars(path: &Path, bytes: &[u8]) -> Result<volume::VarStore, OvmfError> {
    volume::var_store(bytes).map_err(|source| OvmfError::Volume {
        role: "VARS",
        path: path.to_path_buf(),
        source,
    })
}

/// Check the selected images and give the VM its VARS at `vars_path`:
/// with `persistent`, an existing valid copy is kept (NVRAM survives
/// restarts); otherwise, or when there is none, a fresh copy of the
/// template is written (atomically, through a temporary file and a
/// rename). An existing copy that is not a valid store is an error, never
/// overwritten.
pub fn prepare(
    selection: &Selection,
    vars_path: &Path,
    persistent: bool,
) -> Result<EfiFirmware, OvmfError> {
    let code = read_image("CODE", &selection.code)?;
    volume::code_volumes(&code).map_err(|source| OvmfError::Volume {
        role: "CODE",
        path: selection.code.clone(),
        source,
    })?;
    let template = read_image("VARS", &selection.vars_template)?;
    let template_store = check_vars(&selection.vars_template, &template)?;
    if selection.secure_boot && !template_store.keys_enrolled() {
        return Err(OvmfError::KeysNotEnrolled {
            path: selection.vars_template.clone(),
        });
    }
    if code.len() + template.len() > FLASH_WINDOW as usize {
        return Err(OvmfError::Size {
            role: "CODE",
            path: selection.code.clone(),
            reason: format!(
                "CODE and VARS together are {} bytes, more than the {} MiB flash window",
                code.len() + template.len(),
                FLASH_WINDOW >> 20
            ),
        });
    }
    let kept = if persistent && vars_path.exists() {
        let bytes = read_image("VARS", vars_path)?;
        if bytes.len() != template.len() {
            return Err(OvmfError::Size {
                role: "VARS",
                path: vars_path.to_path_buf(),
                reason: format!(
                    "the persistent copy is {} bytes, the firmware's template {}",
                    bytes.len(),
                    template.len()
                ),
            });
        }
        let store = check_vars(vars_path, &bytes)?;
        Some((bytes, store))
    } else {
        None
    };
    let (vars, store) = match kept {
        Some(k) => k,
        None => {
            write_atomically(vars_path, &template)?;
            (template, template_store)
        }
    };
    Ok(EfiFirmware {
        selection: selection.clone(),
        code,
        vars_path: vars_path.to_path_buf(),
        vars,
        store,
    })
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), OvmfError> {
    let io = |what: &'static str, p: &Path| {
        let path = p.to_path_buf();
        move |source| OvmfError::Io { what, path, source }
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io("creating the VARS copy", &tmp))?;
        f.write_all(bytes)
            .map_err(io("writing the VARS copy", &tmp))?;
        f.sync_all().map_err(io("syncing the VARS copy", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("renaming the VARS copy to", path))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Where the two flash devices sit: VARS directly below CODE, CODE ending
/// at 4 GiB, as QEMU's q35 maps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlashLayout {
    /// Base of the VARS flash.
    pub vars_base: u64,
    /// Base of the CODE flash.
    pub code_base: u64,
}

/// The flash devices of an attached firmware, kept by the embedder for
/// statistics and to reach the VARS contents.
#[derive(Debug, Clone)]
pub struct AttachedFlash {
    /// The read-only CODE flash (sees only the guest's writes).
    pub code: Arc<Mutex<Pflash>>,
    /// The VM's VARS flash.
    pub vars: Arc<Mutex<Pflash>>,
}

/// Id of the CODE flash's migration state.
pub const FLASH_CODE_STATE_ID: &str = "flash-code";
/// Id of the VARS flash's migration state.
pub const FLASH_VARS_STATE_ID: &str = "flash-vars";

impl AttachedFlash {
    /// Register both flashes' state with `vm`, so that a migration
    /// carries the EFI variables the guest set (and refuses a target with
    /// other firmware code).
    pub fn register_state(
        &self,
        vm: &virtkit_core::runtime::Vm,
    ) -> Result<(), virtkit_core::runtime::RuntimeError> {
        vm.add_device_state(FLASH_CODE_STATE_ID, self.code.clone())?;
        vm.add_device_state(FLASH_VARS_STATE_ID, self.vars.clone())
    }
}

impl EfiFirmware {
    /// The flash layout of these images.
    pub fn layout(&self) -> FlashLayout {
        let code_base = FLASH_END - self.code.len() as u64;
        FlashLayout {
            vars_base: code_base - self.vars.len() as u64,
            code_base,
        }
    }

    /// Map the firmware into a VM being built: CODE as read-only memory
    /// with a read-only flash catching writes, VARS as a writable flash
    /// over the VM's VARS file; SMM is required when the firmware needs
    /// it (so building fails where the host has none). vCPU 0 should start
    /// at [`virtkit_core::runtime::BootState::Reset`]. Returns the builder
    /// and the two flash devices.
    pub fn attach(&self, builder: VmBuilder) -> Result<(VmBuilder, AttachedFlash), OvmfError> {
        let l = self.layout();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.vars_path)
            .map_err(|source| OvmfError::Io {
                what: "opening the VM's VARS",
                path: self.vars_path.clone(),
                source,
            })?;
        let vars = Arc::new(Mutex::new(Pflash::writable(
            self.vars.clone(),
            FLASH_BLOCK,
            Some(file),
        )));
        let code = Arc::new(Mutex::new(Pflash::read_only(
            self.code.clone(),
            FLASH_BLOCK,
        )));
        let builder = builder
            .rom(l.code_base, self.code.clone())
            .mmio_device(l.code_base, self.code.len() as u64, code.clone())
            .mmio_device(l.vars_base, self.vars.len() as u64, vars.clone())
            .require_smm(self.selection.requires_smm);
        Ok((builder, AttachedFlash { code, vars }))
    }
}
