//! SR-IOV on a fake sysfs tree the test builds as the kernel lays it out
//! (PCI device directories with `vendor`, `device`, `sriov_totalvfs`,
//! `sriov_numvfs`, `virtfn*` links, `driver` and `iommu_group` links, a
//! `net/<ifname>` directory): discovery, the policy's NIC selector,
//! `numVfs`, the vfio-pci bind, the VF allocator across a restart, and the
//! VF settings message checked byte by byte against an encoding of the
//! kernel's `ifla_vf_*` structures written here independently.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use rtnetlink::packet_core::Emitable;
use virtkit_core::spec::network::{SriovNetworkNodePolicySpec, SriovNetworkSpec};
use virtkit_net::{MacAddr, SriovError, Sysfs, VfAllocator, VfLink, VfSettings};

fn put(p: &Path, text: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A PF at `pf` with netdev `ifname` and `vfs` VFs at `vf_base.0`…,
/// Intel 8086:158b (VF 154c), VFs on iavf, each in its own IOMMU group
/// (`group_base + index`).
fn fake_pf(
    root: &Path,
    pf: &str,
    ifname: &str,
    vf_bus: &str,
    vfs: u32,
    total: u32,
    group_base: u32,
) {
    let devs = root.join("bus/pci/devices");
    let d = devs.join(pf);
    put(&d.join("vendor"), "0x8086\n");
    put(&d.join("device"), "0x158b\n");
    put(&d.join("sriov_totalvfs"), &format!("{total}\n"));
    put(&d.join("sriov_numvfs"), &format!("{vfs}\n"));
    std::fs::create_dir_all(d.join("net").join(ifname)).unwrap();
    std::fs::create_dir_all(root.join("bus/pci/drivers/iavf")).unwrap();
    put(&root.join("bus/pci/drivers/iavf/unbind"), "");
    put(&root.join("bus/pci/drivers_probe"), "");
    for i in 0..vfs {
        let addr = format!("{vf_bus}.{i}");
        let v = devs.join(&addr);
        put(&v.join("vendor"), "0x8086\n");
        put(&v.join("device"), "0x154c\n");
        put(&v.join("driver_override"), "(null)\n");
        symlink("../../drivers/iavf", v.join("driver")).unwrap();
        let group = group_base + i;
        std::fs::create_dir_all(root.join(format!("kernel/iommu_groups/{group}/devices"))).unwrap();
        symlink(
            format!("../../../../kernel/iommu_groups/{group}"),
            v.join("iommu_group"),
        )
        .unwrap();
        symlink(
            format!("../../../../bus/pci/devices/{addr}"),
            root.join(format!("kernel/iommu_groups/{group}/devices/{addr}")),
        )
        .unwrap();
        symlink(format!("../{addr}"), d.join(format!("virtfn{i}"))).unwrap();
    }
}

fn tree(name: &str) -> PathBuf {
    let root = std::env::temp_dir().join(format!("virtkit-sysfs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    fake_pf(&root, "0000:3b:00.0", "ens1f0", "0000:3b:02", 4, 8, 30);
    fake_pf(&root, "0000:5e:00.0", "ens2f0", "0000:5e:02", 2, 64, 50);
    // A device without SR-IOV.
    put(
        &root.join("bus/pci/devices/0000:00:1f.0/vendor"),
        "0x8086\n",
    );
    put(
        &root.join("bus/pci/devices/0000:00:1f.0/device"),
        "0xa1c8\n",
    );
    root
}

fn policy(yaml: &str) -> SriovNetworkNodePolicySpec {
    serde_yaml_ng::from_str(yaml).unwrap()
}

#[test]
fn discovery_selection_numvfs_and_vfio_bind() {
    let root = tree("discover");
    let sys = Sysfs::new(&root);
    let pfs = sys.physical_functions().unwrap();
    assert_eq!(pfs.len(), 2);
    let pf = &pfs[0];
    assert_eq!(
        (
            pf.pci.as_str(),
            pf.netdev.as_deref(),
            pf.vendor.as_str(),
            pf.device.as_str(),
            pf.total_vfs,
            pf.num_vfs
        ),
        ("0000:3b:00.0", Some("ens1f0"), "8086", "158b", 8, 4)
    );
    assert_eq!(pf.vfs.len(), 4);
    let vf = &pf.vfs[2];
    assert_eq!(
        (vf.index, vf.pci.as_str(), vf.device.as_str()),
        (2, "0000:3b:02.2", "154c")
    );
    assert_eq!(
        (vf.driver.as_deref(), vf.iommu_group),
        (Some("iavf"), Some(32))
    );

    // Selectors: pfNames with a VF range; vendor/device; rootDevices.
    let p = policy("resourceName: intel_nics\nnumVfs: 4\nnicSelector: {vendor: \"8086\", pfNames: [\"ens1f0#1-2\"]}\ndeviceType: vfio-pci\n");
    let picked: Vec<String> = sys.select(&p).unwrap().into_iter().map(|v| v.pci).collect();
    assert_eq!(picked, ["0000:3b:02.1", "0000:3b:02.2"]);
    let p = policy("resourceName: r\nnumVfs: 2\nnicSelector: {deviceID: \"158b\", rootDevices: [\"0000:5e:00.0\"]}\n");
    assert_eq!(sys.select(&p).unwrap().len(), 2);
    let p = policy("resourceName: r\nnumVfs: 2\nnicSelector: {vendor: \"15b3\"}\n");
    assert!(sys.select(&p).unwrap().is_empty(), "no Mellanox NIC here");
    let p = policy("resourceName: r\nnumVfs: 9\nnicSelector: {pfNames: [ens1f0]}\n");
    let e = sys.select(&p).unwrap_err();
    assert!(
        e.to_string().contains("spec.numVfs: 9") && e.to_string().contains("sriov_totalvfs 8"),
        "{e}"
    );

    // numVfs: through 0 when it changes; above the total refused.
    sys.set_num_vfs("0000:3b:00.0", 6).unwrap();
    let numvfs = root.join("bus/pci/devices/0000:3b:00.0/sriov_numvfs");
    assert_eq!(std::fs::read_to_string(&numvfs).unwrap(), "6");
    assert!(matches!(
        sys.set_num_vfs("0000:3b:00.0", 9),
        Err(SriovError::Invalid(_))
    ));

    // vfio-pci: driver_override, unbind from iavf, drivers_probe.
    sys.bind_vfio("0000:3b:02.1").unwrap();
    let dev = root.join("bus/pci/devices/0000:3b:02.1");
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).unwrap(),
        "vfio-pci"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bus/pci/drivers/iavf/unbind")).unwrap(),
        "0000:3b:02.1"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bus/pci/drivers_probe")).unwrap(),
        "0000:3b:02.1"
    );
    assert_eq!(sys.iommu_group_devices(31).unwrap(), ["0000:3b:02.1"]);
    // No IOMMU group: a clear error.
    std::fs::remove_file(root.join("bus/pci/devices/0000:3b:02.3/iommu_group")).unwrap();
    let e = sys.bind_vfio("0000:3b:02.3").unwrap_err();
    assert!(e.to_string().contains("no IOMMU group"), "{e}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn the_allocator_never_gives_one_vf_twice_and_survives_a_restart() {
    let root = tree("alloc");
    let sys = Sysfs::new(&root);
    let p = policy("resourceName: r\nnumVfs: 2\nnicSelector: {pfNames: [ens2f0]}\n");
    let vfs = sys.select(&p).unwrap();
    let state = root.join("vf-state.json");
    let a = VfAllocator::open(&state);
    let first = a.allocate("r", &vfs, "ns/vm1/sriov").unwrap();
    assert_eq!(
        a.allocate("r", &vfs, "ns/vm1/sriov").unwrap(),
        first,
        "idempotent"
    );
    let second = a.allocate("r", &vfs, "ns/vm2/sriov").unwrap();
    assert_ne!(first, second);
    drop(a);
    // A restart: the same file, the same holders.
    let a = VfAllocator::open(&state);
    assert_eq!(a.holder(&first).unwrap().as_deref(), Some("ns/vm1/sriov"));
    let e = a.allocate("r", &vfs, "ns/vm3/sriov").unwrap_err();
    assert!(matches!(e, SriovError::Exhausted { total: 2, .. }), "{e}");
    assert_eq!(a.release("ns/vm1/sriov").unwrap(), 1);
    assert_eq!(a.allocate("r", &vfs, "ns/vm3/sriov").unwrap(), first);
    let _ = std::fs::remove_dir_all(&root);
}

/// One netlink attribute: length, type, payload, padding to 4.
fn nla(kind: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
    v.extend_from_slice(&kind.to_ne_bytes());
    v.extend_from_slice(payload);
    while v.len() % 4 != 0 {
        v.push(0);
    }
    v
}

fn u32s(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_ne_bytes()).collect()
}

#[test]
fn vf_settings_from_a_sriov_network_and_their_netlink_bytes() {
    let net: SriovNetworkSpec = serde_yaml_ng::from_str(
        "resourceName: intel_nics\nvlan: 100\nvlanQoS: 5\nspoofChk: \"on\"\ntrust: \"off\"\nlinkState: enable\nminTxRate: 100\nmaxTxRate: 1000\n",
    )
    .unwrap();
    let mac: MacAddr = "02:00:00:00:0d:01".parse().unwrap();
    let s = VfSettings::from_network(&net, Some(mac)).unwrap();
    assert_eq!(s.vlan, Some((100, 5)));
    assert_eq!(s.link_state, Some(VfLink::Enable));
    let msg = s.message(7, 3);
    let mut bytes = vec![0u8; msg.buffer_len()];
    msg.emit(&mut bytes);

    // struct ifinfomsg: family, pad, type, index 7, flags, change.
    let mut want = vec![0u8, 0, 0, 0];
    want.extend_from_slice(&7i32.to_ne_bytes());
    want.extend_from_slice(&[0; 8]);
    let mut mac32 = [0u8; 32];
    mac32[..6].copy_from_slice(&mac.0);
    let mut vf_mac = 3u32.to_ne_bytes().to_vec();
    vf_mac.extend_from_slice(&mac32);
    let vf_info = [
        nla(1, &vf_mac),                // IFLA_VF_MAC {vf, mac[32]}
        nla(2, &u32s(&[3, 100, 5])),    // IFLA_VF_VLAN {vf, vlan, qos}
        nla(6, &u32s(&[3, 100, 1000])), // IFLA_VF_RATE {vf, min, max}
        nla(4, &u32s(&[3, 1])),         // IFLA_VF_SPOOFCHK
        nla(5, &u32s(&[3, 1])),         // IFLA_VF_LINK_STATE enable
        nla(9, &u32s(&[3, 0])),         // IFLA_VF_TRUST off
    ]
    .concat();
    want.extend(nla(22, &nla(1, &vf_info))); // IFLA_VFINFO_LIST { IFLA_VF_INFO }
    assert_eq!(bytes, want);

    // NET-10: a boolean where the quoted "on"/"off" belongs, and bad ranges.
    let bad: SriovNetworkSpec =
        serde_yaml_ng::from_str("resourceName: r\nspoofChk: true\n").unwrap();
    let e = VfSettings::from_network(&bad, None).unwrap_err();
    assert!(
        e.to_string().contains("spec.spoofChk") && e.to_string().contains("quoted"),
        "{e}"
    );
    let bad: SriovNetworkSpec =
        serde_yaml_ng::from_str("resourceName: r\nminTxRate: 500\nmaxTxRate: 100\n").unwrap();
    assert!(VfSettings::from_network(&bad, None)
        .unwrap_err()
        .to_string()
        .contains("minTxRate"));
    let bad: SriovNetworkSpec = serde_yaml_ng::from_str("resourceName: r\nvlan: 4096\n").unwrap();
    assert!(VfSettings::from_network(&bad, None).is_err());

    // Applying to an interface that is not a PF: a typed error naming it.
    let e = s.apply(None, "lo", 0).unwrap_err();
    assert!(e.to_string().contains("VF settings on lo"), "{e}");
}
