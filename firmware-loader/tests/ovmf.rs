//! EFI firmware: selection through Debian's real QEMU firmware
//! descriptors, its real OVMF images checked and rejected when corrupt,
//! per-VM VARS copies, Secure Boot without SMM refused, and a synthetic
//! 4 MiB flash booted from the reset vector: the guest prints from CODE,
//! fails to change CODE, and erases, programs and queries VARS through
//! CFI commands, which reach the VM's VARS file and never the template.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use iced_x86::code_asm::*;
use virtkit_core::document::{parse_one, Mode, Object};
use virtkit_core::payload::{self, SerialCapture};
use virtkit_core::runtime::{BootState, RuntimeError, VmBuilder, VmConfig, VmExit};
use virtkit_core::spec::vmi::VmiSpec;
use virtkit_firmware_loader::ovmf::descriptor::{self, EfiRequest, Q35_MACHINE};
use virtkit_firmware_loader::ovmf::volume::{self, VolumeError};
use virtkit_firmware_loader::ovmf::{efi_request, prepare, select, OvmfError};

const DEBIAN_DESCRIPTORS: &str = "/usr/share/qemu/firmware";

/// A test's directory, removed when the test ends.
struct TempDir(PathBuf);

impl std::ops::Deref for TempDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(name: &str) -> TempDir {
    let d = std::env::temp_dir().join(format!("virtkit-ovmf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TempDir(d)
}

fn debian_ovmf() -> &'static Path {
    let p = Path::new(DEBIAN_DESCRIPTORS);
    assert!(
        p.join("60-edk2-x86_64.json").exists(),
        "Debian's ovmf package is missing; .ci/run installs it"
    );
    p
}

fn request(secure_boot: bool, smm: bool) -> EfiRequest<'static> {
    EfiRequest {
        secure_boot,
        smm,
        machine: Q35_MACHINE,
    }
}

#[test]
fn debian_descriptors_select_as_the_spec_says() {
    let dir = debian_ovmf();
    let files = descriptor::load_dir(dir).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "40-edk2-x86_64-secure-enrolled.json",
            "50-edk2-x86_64-secure.json",
            "60-edk2-x86_64.json"
        ]
    );

    let sb = select(dir, &request(true, true)).unwrap();
    assert!(sb
        .descriptor
        .ends_with("40-edk2-x86_64-secure-enrolled.json"));
    assert_eq!(sb.code, Path::new("/usr/share/OVMF/OVMF_CODE_4M.ms.fd"));
    assert_eq!(
        sb.vars_template,
        Path::new("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    );
    assert!(sb.secure_boot && sb.requires_smm);

    let plain = select(dir, &request(false, false)).unwrap();
    assert!(plain.descriptor.ends_with("60-edk2-x86_64.json"));
    assert_eq!(plain.code, Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd"));
    assert!(!plain.secure_boot && !plain.requires_smm);
    // SMM on but Secure Boot off still takes the plain build.
    assert_eq!(select(dir, &request(false, true)).unwrap(), plain);

    // Secure Boot on a VM without SMM: every Secure Boot build needs it.
    let err = select(dir, &request(true, false)).unwrap_err();
    assert!(matches!(err, OvmfError::NoFirmware { .. }), "{err}");
    assert!(err.to_string().contains("without SMM"), "{err}");

    // Without the enrolled-keys descriptor, nothing enforces Secure Boot.
    let only = temp_dir("descriptors");
    for n in ["50-edk2-x86_64-secure.json", "60-edk2-x86_64.json"] {
        std::fs::copy(dir.join(n), only.join(n)).unwrap();
    }
    assert!(matches!(
        select(&only, &request(true, true)),
        Err(OvmfError::NoFirmware { .. })
    ));
    std::fs::write(only.join("70-broken.json"), "{\"interface-types\": 3}").unwrap();
    let err = select(&only, &request(false, false)).unwrap_err();
    assert!(err.to_string().contains("70-broken.json"), "{err}");
}

#[test]
fn the_vmi_spec_turns_into_a_request() {
    let yaml = |efi: &str, smm: &str| {
        format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: sb}}\n\
             spec:\n  domain:\n    features: {{{smm}}}\n    firmware: {{bootloader: {{efi: {efi}}}}}\n    \
             resources: {{requests: {{memory: 64Mi}}}}\n    devices: {{}}\n"
        )
    };
    let spec = |text: String| -> VmiSpec {
        match parse_one(&text, Mode::Strict).unwrap().object {
            Object::VirtualMachineInstance(vmi) => vmi.spec,
            other => panic!("{other:?}"),
        }
    };
    let s = spec(yaml("{}", "smm: {}"));
    assert_eq!(efi_request(&s, Q35_MACHINE), Some(request(true, true)));
    let s = spec(yaml("{secureBoot: false}", ""));
    assert_eq!(efi_request(&s, Q35_MACHINE), Some(request(false, false)));
    let s = spec(yaml("{}", "smm: {enabled: false}"));
    assert_eq!(efi_request(&s, Q35_MACHINE), Some(request(true, false)));
    assert_eq!(efi_request(&VmiSpec::default(), Q35_MACHINE), None);
}

#[test]
fn debian_images_are_accepted_and_per_vm_vars_are_copies() {
    let dir = debian_ovmf();
    let plain = select(dir, &request(false, false)).unwrap();
    let work = temp_dir("vars");
    let vars_path = work.join("vm.vars");
    let fw = prepare(&plain, &vars_path, false).unwrap();
    // OVMF_CODE_4M.fd + OVMF_VARS_4M.fd = 4 MiB.
    assert_eq!(fw.code.len(), 3_653_632);
    assert_eq!(fw.vars.len(), 540_672);
    assert_eq!(fw.code.len() + fw.vars.len(), 4 << 20);
    let layout = fw.layout();
    assert_eq!(layout.vars_base, 0xffc0_0000);
    assert_eq!(layout.code_base, 0xffc8_4000);
    let template = std::fs::read(&plain.vars_template).unwrap();
    assert_eq!(std::fs::read(&vars_path).unwrap(), template);
    assert!(fw.store.authenticated);
    assert!(
        !fw.store.keys_enrolled(),
        "the plain template enrolls nothing"
    );
    assert_eq!(volume::code_volumes(&fw.code).unwrap().len(), 2);

    // Persistent: a changed copy is kept; not persistent: fresh each start.
    let mut changed = template.clone();
    changed[0x83000] = 0x00;
    std::fs::write(&vars_path, &changed).unwrap();
    let fw = prepare(&plain, &vars_path, true).unwrap();
    assert_eq!(fw.vars, changed);
    prepare(&plain, &vars_path, false).unwrap();
    assert_eq!(std::fs::read(&vars_path).unwrap(), template);

    // A persistent copy that is not a store is an error, left alone.
    std::fs::write(&vars_path, vec![0u8; template.len()]).unwrap();
    let err = prepare(&plain, &vars_path, true).unwrap_err();
    assert!(
        matches!(err, OvmfError::Volume { role: "VARS", .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&vars_path).unwrap(),
        vec![0u8; template.len()]
    );

    // The Secure Boot template enrolls PK, KEK and db.
    let sb = select(dir, &request(true, true)).unwrap();
    let fw = prepare(&sb, &work.join("sb.vars"), false).unwrap();
    for name in ["PK", "KEK", "db"] {
        assert!(
            fw.store.has(name),
            "{name} missing from {:?}",
            fw.store.variables
        );
    }
    assert_eq!(
        std::fs::read(work.join("sb.vars")).unwrap(),
        std::fs::read(&sb.vars_template).unwrap()
    );
}

#[test]
fn corrupt_and_truncated_images_are_rejected_by_name() {
    let dir = debian_ovmf();
    let mut plain = select(dir, &request(false, false)).unwrap();
    let work = temp_dir("corrupt");
    let code = std::fs::read(&plain.code).unwrap();

    let corrupt = work.join("corrupt.fd");
    let mut bytes = code.clone();
    bytes[0x348000 + 0x32] ^= 0xff; // the second volume's checksum
    std::fs::write(&corrupt, &bytes).unwrap();
    plain.code = corrupt.clone();
    let err = prepare(&plain, &work.join("a.vars"), false).unwrap_err();
    match &err {
        OvmfError::Volume { role, path, source } => {
            assert_eq!((*role, path.as_path()), ("CODE", corrupt.as_path()));
            assert!(matches!(
                source,
                VolumeError::Checksum {
                    offset: 0x348000,
                    ..
                }
            ));
        }
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(
        !work.join("a.vars").exists(),
        "no VARS copy for a rejected image"
    );

    let truncated = work.join("truncated.fd");
    std::fs::write(&truncated, &code[..code.len() - 0x1000]).unwrap();
    plain.code = truncated;
    let err = prepare(&plain, &work.join("a.vars"), false).unwrap_err();
    assert!(
        matches!(
            &err,
            OvmfError::Volume {
                source: VolumeError::Field {
                    offset: 0x348000,
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );

    let odd = work.join("odd.fd");
    std::fs::write(&odd, &code[..1000]).unwrap();
    plain.code = odd;
    let err = prepare(&plain, &work.join("a.vars"), false).unwrap_err();
    assert!(matches!(err, OvmfError::Size { role: "CODE", .. }), "{err}");

    plain.code = work.join("missing.fd");
    let err = prepare(&plain, &work.join("a.vars"), false).unwrap_err();
    assert!(matches!(err, OvmfError::Io { .. }), "{err}");
}

#[test]
fn secure_boot_without_host_smm_fails_before_any_vcpu() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; building a VM needs it");
        return;
    }
    let sb = select(debian_ovmf(), &request(true, true)).unwrap();
    let smm_dir = temp_dir("smm");
    let fw = prepare(&sb, &smm_dir.join("sb.vars"), false).unwrap();
    let builder = VmBuilder::new(VmConfig {
        name: "secure-boot".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
    });
    let (builder, _flash) = fw.attach(builder).unwrap();
    let host_smm = kvm_ioctls::Kvm::new()
        .unwrap()
        .check_extension(kvm_ioctls::Cap::X86Smm);
    match builder.build() {
        Err(RuntimeError::MissingCapability { capability, .. }) => {
            assert!(!host_smm);
            assert_eq!(capability, "KVM_CAP_X86_SMM");
        }
        Ok(_) => assert!(host_smm, "built without SMM"),
        Err(other) => panic!("{other}"),
    }
}

/// A firmware volume header (FFS2, 4 KiB blocks) over `len` bytes.
fn ffs2_image(len: usize) -> Vec<u8> {
    let mut v = vec![0xffu8; len];
    v[..0x48].fill(0);
    v[0x10..0x20].copy_from_slice(&volume::FFS2_GUID);
    v[0x20..0x28].copy_from_slice(&(len as u64).to_le_bytes());
    v[0x28..0x2c].copy_from_slice(b"_FVH");
    v[0x30] = 0x48;
    v[0x37] = 2;
    v[0x38..0x3c].copy_from_slice(&((len / 4096) as u32).to_le_bytes());
    v[0x3d] = 0x10; // 4096
    let sum = v[..0x48].chunks_exact(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    v[0x32..0x34].copy_from_slice(&sum.wrapping_neg().to_le_bytes());
    v
}

const CODE_LEN: usize = 3_653_632;
const VARS_BASE: u32 = 0xffc0_0000;
const VARS_BLOCK: u32 = 0x83000;
/// A byte of CODE the guest tries to change (linear 0xfffff800).
const CODE_PROBE: usize = CODE_LEN - 0x800;

fn out(a: &mut CodeAssembler) {
    a.mov(dx, 0x3f8u32).unwrap();
    a.out(dx, al).unwrap();
}

/// The synthetic CODE: 16-bit code at 0xfffff000 reached from the reset
/// vector, 32-bit code at 0xfffff400, a GDT at 0xfffffc10.
fn synthetic_code() -> Vec<u8> {
    let mut img = ffs2_image(CODE_LEN);
    img[CODE_PROBE] = b'C';

    // Real mode, CS base 0xffff0000: offsets are linear - 0xffff0000.
    let mut a = CodeAssembler::new(16).unwrap();
    a.mov(al, b'R' as u32).unwrap();
    out(&mut a);
    // Program a byte of CODE (the flash refuses), back to read array,
    // and print what the byte holds.
    a.mov(byte_ptr(0xf800u32).cs(), 0x10u32).unwrap();
    a.mov(byte_ptr(0xf800u32).cs(), 0x55u32).unwrap();
    a.mov(byte_ptr(0xf800u32).cs(), 0xffu32).unwrap();
    a.mov(al, byte_ptr(0xf800u32).cs()).unwrap();
    out(&mut a);
    // o32 lgdt cs:[0xfc00]; enter protected mode; far jump to 0xfffff400.
    a.db(&[0x66, 0x2e, 0x0f, 0x01, 0x16, 0x00, 0xfc]).unwrap();
    a.mov(eax, cr0).unwrap();
    a.or(eax, 1).unwrap();
    a.mov(cr0, eax).unwrap();
    a.db(&[0x66, 0xea, 0x00, 0xf4, 0xff, 0xff, 0x08, 0x00])
        .unwrap();
    let real = a.assemble(0xf000).unwrap();
    img[CODE_LEN - 0x1000..CODE_LEN - 0x1000 + real.len()].copy_from_slice(&real);

    // Flat 32-bit: CFI commands to the VARS flash.
    let mut a = CodeAssembler::new(32).unwrap();
    let mut bad = a.create_label();
    a.mov(ax, 0x10u32).unwrap();
    a.mov(ds, ax).unwrap();
    a.mov(es, ax).unwrap();
    a.mov(ss, ax).unwrap();
    a.mov(al, b'P' as u32).unwrap();
    out(&mut a);
    a.mov(ebx, VARS_BASE + VARS_BLOCK).unwrap();
    // Erase the last block; the status must read ready with no error.
    a.mov(byte_ptr(ebx), 0x20u32).unwrap();
    a.mov(byte_ptr(ebx), 0xd0u32).unwrap();
    a.mov(al, byte_ptr(ebx)).unwrap();
    a.cmp(al, 0x80).unwrap();
    a.jne(bad).unwrap();
    a.mov(al, b'S' as u32).unwrap();
    out(&mut a);
    for (i, c) in b"VK".iter().enumerate() {
        a.mov(byte_ptr(ebx + i as i32), 0x10u32).unwrap();
        a.mov(byte_ptr(ebx + i as i32), u32::from(*c)).unwrap();
    }
    a.mov(byte_ptr(ebx), 0xffu32).unwrap();
    for i in 0..2 {
        a.mov(al, byte_ptr(ebx + i)).unwrap();
        out(&mut a);
    }
    // The CFI query table says "QRY".
    a.mov(byte_ptr(ebx), 0x98u32).unwrap();
    for i in 0x10..0x13 {
        a.mov(al, byte_ptr(ebx + i)).unwrap();
        out(&mut a);
    }
    a.mov(byte_ptr(ebx), 0xffu32).unwrap();
    payload::power_off(&mut a).unwrap();
    a.set_label(&mut bad).unwrap();
    a.mov(al, b'?' as u32).unwrap();
    out(&mut a);
    payload::power_off(&mut a).unwrap();
    let prot = a.assemble(0xffff_f400).unwrap();
    img[CODE_LEN - 0xc00..CODE_LEN - 0xc00 + prot.len()].copy_from_slice(&prot);

    // GDTR at 0xfffffc00, GDT at 0xfffffc10: null, flat code, flat data.
    let g = CODE_LEN - 0x400;
    img[g..g + 2].copy_from_slice(&23u16.to_le_bytes());
    img[g + 2..g + 6].copy_from_slice(&0xffff_fc10u32.to_le_bytes());
    for (i, d) in [0u64, 0x00cf_9b00_0000_ffff, 0x00cf_9300_0000_ffff]
        .iter()
        .enumerate()
    {
        img[g + 0x10 + 8 * i..g + 0x18 + 8 * i].copy_from_slice(&d.to_le_bytes());
    }
    // Reset vector (0xfffffff0, IP 0xfff0): jmp near 0xf000.
    let rel = (0xf000i32 - 0xfff3) as i16;
    img[CODE_LEN - 16] = 0xe9;
    img[CODE_LEN - 15..CODE_LEN - 13].copy_from_slice(&rel.to_le_bytes());
    img
}

#[test]
fn a_synthetic_flash_boots_from_the_reset_vector_and_writes_only_its_own_vars() {
    if !Path::new("/dev/kvm").exists() {
        eprintln!("SKIP: /dev/kvm is absent; the guest run needs it");
        return;
    }
    let work = temp_dir("boot");
    let code_path = work.join("CODE.fd");
    std::fs::write(&code_path, synthetic_code()).unwrap();
    let template_path = work.join("VARS-template.fd");
    std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &template_path).unwrap();
    let template = std::fs::read(&template_path).unwrap();
    let descriptors = work.join("firmware");
    std::fs::create_dir_all(&descriptors).unwrap();
    std::fs::write(
        descriptors.join("10-synthetic.json"),
        format!(
            r#"{{"interface-types": ["uefi"],
                "mapping": {{"device": "flash",
                  "executable": {{"filename": "{}", "format": "raw"}},
                  "nvram-template": {{"filename": "{}", "format": "raw"}}}},
                "targets": [{{"architecture": "x86_64", "machines": ["pc-q35-*"]}}],
                "features": ["acpi-s3"]}}"#,
            code_path.display(),
            template_path.display()
        ),
    )
    .unwrap();
    let selection = select(&descriptors, &request(false, false)).unwrap();
    let vars_path = work.join("vm.vars");
    let fw = prepare(&selection, &vars_path, false).unwrap();
    assert_eq!(fw.code.len() + fw.vars.len(), 4 << 20);

    let serial = SerialCapture::default();
    let builder = VmBuilder::new(VmConfig {
        name: "efi".into(),
        vcpus: 1,
        memory_bytes: 64 << 20,
    })
    .serial_output(Box::new(serial.clone()));
    let (builder, flash) = fw.attach(builder).unwrap();
    let vm = builder.build().unwrap();
    vm.set_boot(&BootState::Reset).unwrap();
    vm.start().unwrap();
    let exit = vm.wait_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!(exit, Some(VmExit::PowerOff), "serial: {}", serial.text());
    // Reset vector, CODE unchanged, protected mode, erase status, the two
    // programmed bytes read back, the CFI query.
    assert_eq!(serial.text(), "RCPSVKQRY");

    let code = flash.code.lock().unwrap();
    assert_eq!(code.stats().refused, 1);
    assert_eq!(code.contents()[CODE_PROBE], b'C');
    let vars = flash.vars.lock().unwrap();
    assert_eq!((vars.stats().erased, vars.stats().programmed), (1, 2));

    let on_disk = std::fs::read(&vars_path).unwrap();
    let b = VARS_BLOCK as usize;
    assert_eq!(&on_disk[b..b + 2], b"VK");
    assert!(on_disk[b + 2..b + 0x1000].iter().all(|&x| x == 0xff));
    assert_eq!(on_disk[..b], template[..b], "nothing else changed");
    assert_eq!(
        std::fs::read(&template_path).unwrap(),
        template,
        "template untouched"
    );
    assert_eq!(std::fs::read(&code_path).unwrap()[CODE_PROBE], b'C');
    drop((code, vars));

    // Migration: a target VM with the same firmware and its own VARS
    // file takes the variables the guest set, on disk too.
    use virtkit_core::runtime::Snapshot;
    let target_vars = work.join("target.vars");
    let fw2 = prepare(&selection, &target_vars, false).unwrap();
    let (builder2, flash2) = fw2
        .attach(VmBuilder::new(VmConfig {
            name: "efi-target".into(),
            vcpus: 1,
            memory_bytes: 64 << 20,
        }))
        .unwrap();
    let target = builder2.build().unwrap();
    flash2.register_state(&target).unwrap();
    let ids = target.device_state_ids();
    assert!(ids.iter().any(|i| i == "flash-code") && ids.iter().any(|i| i == "flash-vars"));
    assert_ne!(&flash2.vars.lock().unwrap().contents()[b..b + 2], b"VK");
    let vars_state = flash.vars.lock().unwrap().save_state().unwrap();
    let code_state = flash.code.lock().unwrap().save_state().unwrap();
    flash2
        .code
        .lock()
        .unwrap()
        .restore_state(&code_state)
        .unwrap();
    flash2
        .vars
        .lock()
        .unwrap()
        .restore_state(&vars_state)
        .unwrap();
    assert_eq!(&flash2.vars.lock().unwrap().contents()[b..b + 2], b"VK");
    assert_eq!(
        std::fs::read(&target_vars).unwrap(),
        on_disk,
        "the target's VARS file"
    );
    // Other firmware code on the target is refused; so is a VARS state
    // loaded into the CODE flash.
    let mut other = synthetic_code();
    other[CODE_PROBE] ^= 1;
    let mut other = virtkit_firmware_loader::ovmf::pflash::Pflash::read_only(other, 4096);
    let e = other.restore_state(&code_state).unwrap_err();
    assert!(e.to_string().contains("other firmware code"), "{e}");
    assert!(flash2
        .code
        .lock()
        .unwrap()
        .restore_state(&vars_state)
        .is_err());
    target.stop().unwrap();
}
