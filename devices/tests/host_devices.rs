//! PCI passthrough bookkeeping on a fake sysfs tree (no VFIO on this
//! host): discovery of `permittedHostDevices` resources, IOMMU-group
//! viability, all-or-nothing allocation to VMs, release, external
//! providers, the IOMMU check and the `modprobe` line.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::{Arc, Mutex};

use virtkit_core::spec::cluster::{PciHostDevice, PermittedHostDevices};
use virtkit_core::spec::vmi::{HostDevice, VmiSpec};
use virtkit_devices::host::passthrough::{
    check_iommu, discover, modprobe_options, ExternalProvider, HostAddress, HostDeviceAllocator,
    PassthroughError,
};
use virtkit_devices::host::sysfs::PciSysfs;

fn put(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A function at `pci` with IDs, class, driver and IOMMU group.
fn function(root: &Path, pci: &str, ids: (&str, &str), driver: Option<&str>, group: Option<u32>) {
    let d = root.join("bus/pci/devices").join(pci);
    put(&d.join("vendor"), &format!("0x{}\n", ids.0));
    put(&d.join("device"), &format!("0x{}\n", ids.1));
    put(&d.join("class"), "0x030200\n");
    if let Some(drv) = driver {
        std::fs::create_dir_all(root.join("bus/pci/drivers").join(drv)).unwrap();
        symlink(format!("../../drivers/{drv}"), d.join("driver")).unwrap();
    }
    if let Some(g) = group {
        let gdir = root.join(format!("kernel/iommu_groups/{g}/devices"));
        std::fs::create_dir_all(&gdir).unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{g}"),
            d.join("iommu_group"),
        )
        .unwrap();
        symlink(&d, gdir.join(pci)).unwrap();
    }
}

/// The seed's host: a T4 on vfio-pci (group 12), a V100 on nouveau, a
/// QAT on vfio-pci; plus a second T4 whose group holds a NIC still on its
/// host driver (not viable).
fn seed_host(root: &Path) -> PciSysfs {
    function(
        root,
        "0000:02:01.0",
        ("10de", "1eb8"),
        Some("vfio-pci"),
        Some(12),
    );
    function(
        root,
        "0000:03:00.0",
        ("10de", "1db6"),
        Some("nouveau"),
        Some(13),
    );
    function(
        root,
        "0000:05:00.0",
        ("8086", "6f54"),
        Some("vfio-pci"),
        Some(15),
    );
    function(
        root,
        "0000:06:00.0",
        ("10DE", "1EB8"),
        Some("vfio-pci"),
        Some(16),
    );
    function(
        root,
        "0000:06:00.1",
        ("8086", "1572"),
        Some("i40e"),
        Some(16),
    );
    PciSysfs::new(root)
}

fn permitted(with_qat: bool) -> PermittedHostDevices {
    let mut list = vec![
        PciHostDevice {
            pci_vendor_selector: "10DE:1DB6".into(),
            resource_name: "nvidia.com/GV100GL_Tesla_V100".into(),
            external_resource_provider: None,
        },
        PciHostDevice {
            pci_vendor_selector: "10DE:1EB8".into(),
            resource_name: "nvidia.com/TU104GL_Tesla_T4".into(),
            external_resource_provider: None,
        },
    ];
    if with_qat {
        list.push(PciHostDevice {
            pci_vendor_selector: "8086:6F54".into(),
            resource_name: "intel.com/qat".into(),
            external_resource_provider: Some(true),
        });
    }
    PermittedHostDevices {
        pci_host_devices: list,
        ..Default::default()
    }
}

fn vm_wanting(names: &[&str]) -> VmiSpec {
    let mut spec = VmiSpec::default();
    spec.domain.devices.host_devices = names
        .iter()
        .enumerate()
        .map(|(i, n)| HostDevice {
            name: format!("hostdevices{i}"),
            device_name: n.to_string(),
        })
        .collect();
    spec
}

fn pci(address: &str) -> HostAddress {
    HostAddress::Pci(address.into())
}

#[derive(Default)]
struct Plugin(Mutex<Vec<String>>);
impl ExternalProvider for Plugin {
    fn allocate(&self, resource: &str, owner: &str) -> Result<String, String> {
        self.0.lock().unwrap().push(format!("{owner}:{resource}"));
        Ok("0000:05:00.0".into())
    }
    fn release(&self, owner: &str) {
        self.0
            .lock()
            .unwrap()
            .retain(|e| !e.starts_with(&format!("{owner}:")));
    }
}

#[test]
fn discovery_counts_only_vfio_devices_in_viable_groups() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = seed_host(dir.path());
    let resources = discover(&sysfs, &permitted(true)).unwrap();
    let count = |name: &str| {
        resources
            .iter()
            .find(|r| r.name == name)
            .map(|r| (r.devices.len(), r.external))
            .unwrap()
    };
    assert_eq!(
        count("nvidia.com/TU104GL_Tesla_T4"),
        (1, false),
        "the second T4 shares a group with a NIC on i40e"
    );
    assert_eq!(
        count("nvidia.com/GV100GL_Tesla_V100"),
        (0, false),
        "on nouveau, not vfio-pci"
    );
    assert_eq!(count("intel.com/qat"), (0, true));
    let t4 = &resources
        .iter()
        .find(|r| r.name.ends_with("T4"))
        .unwrap()
        .devices[0];
    assert_eq!(
        (t4.pci.as_str(), t4.iommu_group, t4.class.as_str()),
        ("0000:02:01.0", Some(12), "030200")
    );
    let mut bad = permitted(false);
    bad.pci_host_devices[0].pci_vendor_selector = "10DE-1DB6".into();
    let err = discover(&sysfs, &bad).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("permittedHostDevices.pciHostDevices[0].pciVendorSelector"),
        "{err}"
    );
}

#[test]
fn allocation_is_exclusive_all_or_nothing_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = seed_host(dir.path());
    let plugin = Arc::new(Plugin::default());
    let mut alloc = HostDeviceAllocator::new(
        discover(&sysfs, &permitted(true)).unwrap(),
        Some(plugin.clone()),
    );
    let t4 = "nvidia.com/TU104GL_Tesla_T4";
    let got = alloc
        .allocate("vm1", &vm_wanting(&[t4, "intel.com/qat"]))
        .unwrap();
    assert_eq!(got[0].address, pci("0000:02:01.0"));
    assert_eq!(
        (got[1].resource.as_str(), &got[1].address),
        ("intel.com/qat", &pci("0000:05:00.0"))
    );
    assert_eq!(*plugin.0.lock().unwrap(), ["vm1:intel.com/qat"]);
    assert_eq!(
        alloc.allocatable(),
        [
            ("nvidia.com/GV100GL_Tesla_V100".to_string(), 0),
            (t4.to_string(), 0)
        ]
    );
    // A second VM wanting the T4 fails, and holds nothing afterwards.
    let err = alloc
        .allocate("vm2", &vm_wanting(&["intel.com/qat", t4]))
        .unwrap_err();
    assert!(matches!(err, PassthroughError::Exhausted { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("spec.domain.devices.hostDevices[1].deviceName"),
        "{err}"
    );
    assert_eq!(
        *plugin.0.lock().unwrap(),
        ["vm1:intel.com/qat"],
        "vm2's external device was given back"
    );
    let err = alloc
        .allocate("vm2", &vm_wanting(&["nvidia.com/A100"]))
        .unwrap_err();
    assert!(
        matches!(err, PassthroughError::NotPermitted { .. }),
        "{err}"
    );
    // The first VM stops; the second gets the T4.
    alloc.release("vm1");
    assert!(plugin.0.lock().unwrap().is_empty());
    assert_eq!(
        alloc.allocate("vm2", &vm_wanting(&[t4])).unwrap()[0].address,
        pci("0000:02:01.0")
    );
    // qat leaves the permitted list: no new allocations; the rest stays.
    alloc.update(discover(&sysfs, &permitted(false)).unwrap());
    let err = alloc
        .allocate("vm3", &vm_wanting(&["intel.com/qat"]))
        .unwrap_err();
    assert!(
        matches!(err, PassthroughError::NotPermitted { .. }),
        "{err}"
    );
    // Without a provider, an external resource is a clear error.
    let lone = HostDeviceAllocator::new(discover(&sysfs, &permitted(true)).unwrap(), None);
    let err = lone
        .allocate("vm4", &vm_wanting(&["intel.com/qat"]))
        .unwrap_err();
    assert!(
        err.to_string().contains("no provider is registered"),
        "{err}"
    );
}

#[test]
fn host_preparation_checks() {
    let dir = tempfile::tempdir().unwrap();
    let sysfs = seed_host(dir.path());
    let mut list = permitted(true);
    list.pci_host_devices.push(PciHostDevice {
        pci_vendor_selector: "10de:1eb8".into(),
        resource_name: "nvidia.com/T4-again".into(),
        external_resource_provider: None,
    });
    assert_eq!(
        modprobe_options(&list),
        "options vfio-pci ids=10de:1db6,10de:1eb8,8086:6f54"
    );
    check_iommu("BOOT_IMAGE=/vmlinuz ro intel_iommu=on", &sysfs).unwrap();
    let err = check_iommu("BOOT_IMAGE=/vmlinuz ro", &sysfs).unwrap_err();
    assert!(
        err.to_string()
            .contains("neither intel_iommu=on nor amd_iommu=on"),
        "{err}"
    );
    let empty = tempfile::tempdir().unwrap();
    let err = check_iommu("amd_iommu=on", &PciSysfs::new(empty.path())).unwrap_err();
    assert!(err.to_string().contains("no IOMMU groups"), "{err}");
    // Binding to vfio-pci: driver_override, unbind, drivers_probe.
    sysfs.bind_vfio("0000:03:00.0").unwrap();
    let d = dir.path().join("bus/pci/devices/0000:03:00.0");
    assert_eq!(
        std::fs::read_to_string(d.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bus/pci/drivers/nouveau/unbind")).unwrap(),
        "0000:03:00.0"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bus/pci/drivers_probe")).unwrap(),
        "0000:03:00.0"
    );
}

/// An mdev type `type_id` named `name` under parent `parent`, and an
/// instance `uuid` of it (in IOMMU group `group` where given).
fn mdev(root: &Path, parent: &str, type_id: &str, name: &str, uuid: &str, group: Option<u32>) {
    let types = root
        .join("devices/pci0000:00")
        .join(parent)
        .join("mdev_supported_types");
    put(&types.join(type_id).join("name"), &format!("{name}\n"));
    put(&types.join(type_id).join("device_api"), "vfio-pci\n");
    let instance = root.join("devices/pci0000:00").join(parent).join(uuid);
    std::fs::create_dir_all(&instance).unwrap();
    symlink(types.join(type_id), instance.join("mdev_type")).unwrap();
    if let Some(g) = group {
        let gdir = root.join(format!("kernel/iommu_groups/{g}/devices"));
        std::fs::create_dir_all(&gdir).unwrap();
        symlink(
            format!("../../../kernel/iommu_groups/{g}"),
            instance.join("iommu_group"),
        )
        .unwrap();
    }
    let bus = root.join("bus/mdev/devices");
    std::fs::create_dir_all(&bus).unwrap();
    symlink(&instance, bus.join(uuid)).unwrap();
}

#[test]
fn mediated_devices_are_found_by_type_name_and_handed_out_once() {
    use virtkit_core::spec::cluster::MediatedHostDevice;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let sysfs = seed_host(root);
    let (a, b, c) = (
        "4b20d080-1b54-4048-85b3-a6a62d165c01",
        "4b20d080-1b54-4048-85b3-a6a62d165c02",
        "4b20d080-1b54-4048-85b3-a6a62d165c03",
    );
    mdev(
        root,
        "0000:02:01.0",
        "nvidia-222",
        "GRID T4-1Q",
        a,
        Some(40),
    );
    mdev(root, "0000:02:01.0", "nvidia-222", "GRID T4-1Q", b, None);
    mdev(
        root,
        "0000:02:01.0",
        "nvidia-223",
        "GRID T4-2Q",
        c,
        Some(41),
    );
    let found = sysfs.mediated_devices().unwrap();
    assert_eq!(found.len(), 3);
    assert_eq!(
        (found[0].type_id.as_str(), found[0].type_name.as_str()),
        ("nvidia-222", "GRID T4-1Q")
    );
    assert_eq!(
        (found[0].parent.as_str(), found[0].iommu_group),
        ("0000:02:01.0", Some(40))
    );

    let list = PermittedHostDevices {
        mediated_devices: vec![
            MediatedHostDevice {
                mdev_name_selector: "GRID T4-1Q".into(),
                resource_name: "nvidia.com/GRID_T4-1Q".into(),
                external_resource_provider: None,
            },
            MediatedHostDevice {
                mdev_name_selector: "GRID T4-16Q".into(),
                resource_name: "nvidia.com/GRID_T4-16Q".into(),
                external_resource_provider: None,
            },
        ],
        ..Default::default()
    };
    let alloc = HostDeviceAllocator::new(discover(&sysfs, &list).unwrap(), None);
    assert_eq!(
        alloc.allocatable(),
        [
            ("nvidia.com/GRID_T4-1Q".to_string(), 1),
            ("nvidia.com/GRID_T4-16Q".to_string(), 0)
        ],
        "the instance without an IOMMU group and the other type do not count"
    );
    let mut spec = VmiSpec::default();
    spec.domain.devices.gpus = vec![HostDevice {
        name: "gpu1".into(),
        device_name: "nvidia.com/GRID_T4-1Q".into(),
    }];
    let got = alloc.allocate("vm1", &spec).unwrap();
    assert_eq!(got[0].address, HostAddress::Mediated(a.into()));
    assert_eq!(
        got[0].address.sysfs_dir(&sysfs),
        root.join("bus/mdev/devices").join(a)
    );
    let err = alloc.allocate("vm2", &spec).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("spec.domain.devices.gpus[0].deviceName"),
        "{err}"
    );
    alloc.release("vm1");
    assert_eq!(
        alloc.allocate("vm2", &spec).unwrap()[0].address,
        HostAddress::Mediated(a.into())
    );
}
