//! Every validation rule shows its error path: each case mutates a valid
//! document and expects an error at an exact path whose message contains a
//! given text. Also: seed fixtures parse, validate and round-trip; one spec
//! with many faults reports all of them in one pass.

// Test helpers may unwrap: a failure there is the test failing.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use virtkit_core::document::{parse_all, parse_one, parse_value, Mode};
use virtkit_core::validate::{validate_document, Report, Severity};

const BASE_VM: &str = r##"
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: base}
spec:
  running: false
  template:
    metadata: {labels: {kubevirt.io/vm: base}}
    spec:
      domain:
        cpu: {cores: 1}
        resources: {requests: {memory: 64Mi}}
        devices:
          disks:
          - {name: root, disk: {bus: virtio}}
          - {name: ci, disk: {bus: virtio}}
          interfaces:
          - name: default
            masquerade: {}
            ports: [{name: http, port: 80}]
          - {name: br, bridge: {}, macAddress: "02:00:00:00:00:01"}
      networks:
      - {name: default, pod: {}}
      - {name: br, multus: {networkName: br-net}}
      volumes:
      - {name: root, containerDisk: {image: quay.io/demo}}
      - {name: ci, cloudInitNoCloud: {userData: "#cloud-config\n"}}
"##;

fn base(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

/// Set `value` at a JSON pointer, creating objects on the way.
fn set(v: &mut Value, pointer: &str, value: Value) {
    let mut cur = v;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        let last = i == parts.len() - 1;
        if let Ok(idx) = p.parse::<usize>() {
            if last {
                let arr = cur.as_array_mut().expect("array");
                if idx == arr.len() {
                    arr.push(value);
                } else {
                    arr[idx] = value;
                }
                return;
            }
            cur = &mut cur[idx];
        } else {
            if last {
                cur[*p] = value;
                return;
            }
            if cur.get(*p).is_none() {
                cur[*p] = json!({});
            }
            cur = &mut cur[*p];
        }
    }
}

fn report(v: Value) -> Report {
    let doc = parse_value(v, 0, Mode::Strict).expect("parses");
    validate_document(&doc)
}

fn assert_error(v: Value, path: &str, contains: &str) {
    let r = report(v);
    let hit = r
        .errors()
        .find(|e| e.path == path && e.message.contains(contains));
    assert!(
        hit.is_some(),
        "expected error at {path:?} containing {contains:?}; got:\n{}",
        r.violations
            .iter()
            .map(|v| v.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn base_documents_are_valid() {
    let r = report(base(BASE_VM));
    assert!(r.is_valid(), "{:#?}", r);
}

const T: &str = "/spec/template/spec";
const TP: &str = "spec.template.spec";

#[test]
fn vm_rules_each_report_their_path() {
    type Case = (String, Value, String, &'static str);
    let cases: Vec<Case> = vec![
        ("/apiVersion".into(), json!("kubevirt/v1alpha3"), "apiVersion".into(), "accepted: kubevirt.io/v1"),
        ("/apiVersion".into(), json!("v1"), "apiVersion".into(), "unsupported apiVersion"),
        ("/metadata/name".into(), json!("Bad_Name"), "metadata.name".into(), "not a valid name"),
        ("/metadata/name".into(), json!("a".repeat(254)), "metadata.name".into(), "not a valid name"),
        ("/spec/runStrategy".into(), json!("Always"), "spec.runStrategy".into(), "mutually exclusive"),
        (format!("{T}/domain/cpu/cores"), json!(0), format!("{TP}.domain.cpu.cores"), ">= 1"),
        (format!("{T}/domain/cpu/sockets"), json!(-1), format!("{TP}.domain.cpu.sockets"), ">= 1"),
        (format!("{T}/domain/cpu/threads"), json!(0), format!("{TP}.domain.cpu.threads"), ">= 1"),
        (format!("{T}/domain/resources/requests"), json!({}), format!("{TP}.domain.resources.requests.memory"), "guest memory is required"),
        (format!("{T}/domain/resources/requests/memory"), json!("0"), format!("{TP}.domain.resources.requests.memory"), "greater than 0"),
        (format!("{T}/domain/memory/guest"), json!("-1Gi"), format!("{TP}.domain.memory.guest"), "greater than 0"),
        (format!("{T}/domain/resources/limits/memory"), json!("100Mi"), format!("{TP}.domain.resources.limits.memory"), "at least 100Mi above"),
        (format!("{T}/domain/resources/limits/memory"), json!("32Mi"), format!("{TP}.domain.resources.limits.memory"), "smaller than the request"),
        (format!("{T}/domain/memory/hugepages/pageSize"), json!("4Ki"), format!("{TP}.domain.memory.hugepages.pageSize"), "not supported"),
        (format!("{T}/domain/memory/hugepages/pageSize"), json!("1Gi"), format!("{TP}.domain.resources.requests.memory"), "not a multiple of the page size"),
        (format!("{T}/domain/memory/hugepages/pageSize"), json!("64Mi"), format!("{TP}.domain.memory.hugepages.pageSize"), "not supported"),
        (format!("{T}/domain/memory/hugepages/pageSize"), json!("2 Mi"), format!("{TP}.domain.memory.hugepages.pageSize"), "invalid page size"),
        (format!("{T}/domain/firmware/bootloader/efi"), json!({}), format!("{TP}.domain"), "SecureBoot requires SMM"),
        (format!("{T}/domain/firmware/bootloader"), json!({"bios": {}, "efi": {"secureBoot": false}}), format!("{TP}.domain.firmware.bootloader"), "mutually exclusive"),
        (format!("{T}/domain/firmware/uuid"), json!("not-a-uuid"), format!("{TP}.domain.firmware.uuid"), "not a valid UUID"),
        (format!("{T}/domain/machine/type"), json!("pc-i440fx"), format!("{TP}.domain.machine.type"), "unsupported machine type"),
        (format!("{T}/domain/cpu/features"), json!([{"name": "apic", "policy": "sometimes"}]), format!("{TP}.domain.cpu.features[0].policy"), "CPU feature apic uses policy sometimes that is not supported"),
        (format!("{T}/domain/cpu/features"), json!([{"name": "apic"}, {"name": "apic"}]), format!("{TP}.domain.cpu.features[1].name"), "duplicate CPU feature"),
        (format!("{T}/domain/cpu/isolateEmulatorThread"), json!(true), format!("{TP}.domain.cpu.isolateEmulatorThread"), "only set in combination with DedicatedCPUPlacement"),
        (format!("{T}/domain/cpu/dedicatedCpuPlacement"), json!(true), "".into(), ""),
        (format!("{T}/domain/clock/timer/rtc/tickPolicy"), json!("sometimes"), format!("{TP}.domain.clock.timer.rtc.tickPolicy"), "unknown tick policy"),
        (format!("{T}/domain/features/hyperv/spinlocks/spinlocks"), json!(100), format!("{TP}.domain.features.hyperv.spinlocks.spinlocks"), ">= 4096"),
        (format!("{T}/domain/devices/disks/0/name"), json!("nosuch"), format!("{TP}.domain.devices.disks[0].name"), "no volume of the same name"),
        (format!("{T}/domain/devices/disks/1/name"), json!("root"), format!("{TP}.domain.devices.disks[1].name"), "duplicate disk name"),
        (format!("{T}/domain/devices/disks/0/cdrom"), json!({}), format!("{TP}.domain.devices.disks[0]"), "only one of disk, cdrom and lun"),
        (format!("{T}/domain/devices/disks/0/disk/bus"), json!("ide"), format!("{TP}.domain.devices.disks[0].disk.bus"), "unsupported bus"),
        (format!("{T}/domain/devices/disks/0/bootOrder"), json!(0), format!("{TP}.domain.devices.disks[0].bootOrder"), "must have a boot order > 0"),
        (format!("{T}/domain/devices/interfaces/1/bootOrder"), json!(-3), format!("{TP}.domain.devices.interfaces[1].bootOrder"), "must have a boot order > 0"),
        (format!("{T}/volumes/0/name"), json!("Root.Disk"), format!("{TP}.volumes[0].name"), "not a valid volume name"),
        (format!("{T}/volumes/0/containerDisk/image"), json!(""), format!("{TP}.volumes[0].containerDisk.image"), "image is required"),
        (format!("{T}/volumes/0/persistentVolumeClaim"), json!({"claimName": "x"}), format!("{TP}.volumes[0]"), "exactly one source, found containerDisk, persistentVolumeClaim"),
        (format!("{T}/volumes/0"), json!({"name": "root"}), format!("{TP}.volumes[0]"), "exactly one source"),
        (format!("{T}/volumes/0"), json!({"name": "root", "emptyDisk": {"capacity": "0"}}), format!("{TP}.volumes[0].emptyDisk.capacity"), "greater than 0"),
        (format!("{T}/volumes/0"), json!({"name": "root", "ephemeral": {}}), format!("{TP}.volumes[0].ephemeral.persistentVolumeClaim.claimName"), "backed by a PersistentVolumeClaim"),
        (format!("{T}/volumes/0"), json!({"name": "root", "dataVolume": {"name": ""}}), format!("{TP}.volumes[0].dataVolume.name"), "name is required"),
        (format!("{T}/volumes/1/cloudInitNoCloud/userData"), json!("x".repeat(2049)), format!("{TP}.volumes[1].cloudInitNoCloud.userData"), "the limit is 2048"),
        (format!("{T}/volumes/1/cloudInitNoCloud/userDataBase64"), json!("%%%"), format!("{TP}.volumes[1].cloudInitNoCloud.userDataBase64"), "not valid base64"),
        (format!("{T}/volumes/1/cloudInitNoCloud/userDataBase64"), json!("I2Nsb3VkLWNvbmZpZwo="), format!("{TP}.volumes[1].cloudInitNoCloud"), "only one of userData"),
        (format!("{T}/domain/devices/disks/1/name"), json!("root2"), format!("{TP}.volumes[1].name"), "cloud-init volume \"ci\" is not used by any disk"),
        (format!("{T}/domain/devices/interfaces/0/ports/0/port"), json!(70000), format!("{TP}.domain.devices.interfaces[0].ports[0].port"), "out of range 1..65535"),
        (format!("{T}/domain/devices/interfaces/0/ports/0/port"), json!(0), format!("{TP}.domain.devices.interfaces[0].ports[0].port"), "out of range"),
        (format!("{T}/domain/devices/interfaces/0/ports/0/port"), json!(49152), format!("{TP}.domain.devices.interfaces[0].ports[0].port"), "reserved"),
        (format!("{T}/domain/devices/interfaces/0/ports/0/port"), json!(49153), format!("{TP}.domain.devices.interfaces[0].ports[0].port"), "reserved"),
        (format!("{T}/domain/devices/interfaces/0/ports/0/protocol"), json!("SCTP"), format!("{TP}.domain.devices.interfaces[0].ports[0].protocol"), "allowed: TCP, UDP"),
        (format!("{T}/domain/devices/interfaces/0/ports/1"), json!({"name": "http", "port": 81}), format!("{TP}.domain.devices.interfaces[0].ports[1].name"), "duplicate port name"),
        (format!("{T}/domain/devices/interfaces/1/ports"), json!([{"port": 22}]), format!("{TP}.domain.devices.interfaces[1].ports"), "only supported with the masquerade"),
        (format!("{T}/domain/devices/interfaces/1/name"), json!("nonet"), format!("{TP}.domain.devices.interfaces[1].name"), "no network of the same name"),
        (format!("{T}/networks/1/name"), json!("orphan"), format!("{TP}.networks[1].name"), "not used by any interface"),
        (format!("{T}/domain/devices/interfaces/1"), json!({"name": "br", "masquerade": {}}), format!("{TP}.domain.devices.interfaces[1].masquerade"), "only allowed on the pod network"),
        (format!("{T}/domain/devices/interfaces/1/masquerade"), json!({}), format!("{TP}.domain.devices.interfaces[1]"), "only one binding"),
        (format!("{T}/networks/1/pod"), json!({}), format!("{TP}.networks[1]"), "only one of pod and multus"),
        (format!("{T}/networks/1"), json!({"name": "br", "pod": {}}), format!("{TP}.networks"), "at most one pod network"),
        (format!("{T}/networks/0/pod/vmNetworkCIDR"), json!("10.0.2.0/40"), format!("{TP}.networks[0].pod.vmNetworkCIDR"), "not an IPv4 CIDR"),
        (format!("{T}/networks/0/pod/vmIPv6NetworkCIDR"), json!("fd10::/200"), format!("{TP}.networks[0].pod.vmIPv6NetworkCIDR"), "not an IPv6 CIDR"),
        (format!("{T}/networks/1/multus/networkName"), json!(""), format!("{TP}.networks[1].multus.networkName"), "required"),
        (format!("{T}/domain/devices/interfaces/1/macAddress"), json!("02:00:00:00:00"), format!("{TP}.domain.devices.interfaces[1].macAddress"), "not a MAC address"),
        (format!("{T}/domain/devices/interfaces/1/macAddress"), json!("01:00:5e:00:00:01"), format!("{TP}.domain.devices.interfaces[1].macAddress"), "multicast"),
        (format!("{T}/domain/devices/interfaces/0/macAddress"), json!("02-00-00-00-00-01"), format!("{TP}.domain.devices.interfaces[1].macAddress"), "already used by interfaces[0]"),
        (format!("{T}/domain/devices/interfaces/1/model"), json!("rtl9999"), format!("{TP}.domain.devices.interfaces[1].model"), "unknown model"),
        (format!("{T}/domain/devices/interfaces/0/state"), json!("absent"), format!("{TP}.domain.devices.interfaces[0].state"), "only bridge interfaces"),
        (format!("{T}/domain/devices/interfaces/1"), json!({"name": "br", "sriov": {}, "state": "absent"}), format!("{TP}.domain.devices.interfaces[1].state"), "SR-IOV interfaces cannot be hot-unplugged"),
        (format!("{T}/domain/devices/watchdog"), json!({"name": "w", "i6300esb": {"action": "explode"}}), format!("{TP}.domain.devices.watchdog.i6300esb.action"), "unknown watchdog action"),
        (format!("{T}/domain/devices/watchdog"), json!({"name": ""}), format!("{TP}.domain.devices.watchdog"), "i6300esb"),
        (format!("{T}/domain/devices/watchdog"), json!({"name": "", "i6300esb": {}}), format!("{TP}.domain.devices.watchdog.name"), "required"),
        (format!("{T}/domain/devices/hostDevices"), json!([{"name": "a", "deviceName": "x/y"}, {"name": "a", "deviceName": ""}]), format!("{TP}.domain.devices.hostDevices[1].name"), "duplicate"),
        (format!("{T}/domain/devices/gpus"), json!([{"name": "g", "deviceName": ""}]), format!("{TP}.domain.devices.gpus[0].deviceName"), "required"),
        (format!("{T}/terminationGracePeriodSeconds"), json!(-1), format!("{TP}.terminationGracePeriodSeconds"), ">= 0"),
        (format!("{T}/evictionStrategy"), json!("LiveMigration"), format!("{TP}.evictionStrategy"), "allowed: LiveMigrate"),
        (format!("{T}/nodeSelector"), json!({"bad key!": "v"}), format!("{TP}.nodeSelector.bad key!"), "not a valid label key"),
        (format!("{T}/affinity/nodeAffinity/preferredDuringSchedulingIgnoredDuringExecution"), json!([{"weight": 101, "preference": {"matchExpressions": [{"key": "k", "operator": "In", "values": ["v"]}]}}]), format!("{TP}.affinity.nodeAffinity.preferredDuringSchedulingIgnoredDuringExecution[0].weight"), "out of range 1..100"),
        (format!("{T}/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution"), json!({"nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Exists", "values": ["v"]}]}]}), format!("{TP}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0].matchExpressions[0].values"), "takes no values"),
        (format!("{T}/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution"), json!([{"labelSelector": {"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]}, "topologyKey": ""}]), format!("{TP}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].topologyKey"), "required"),
        (format!("{T}/affinity/podAffinity/requiredDuringSchedulingIgnoredDuringExecution"), json!([{"labelSelector": {"matchExpressions": [{"key": "k", "operator": "Gt", "values": ["1"]}]}, "topologyKey": "h"}]), format!("{TP}.affinity.podAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector.matchExpressions[0].operator"), "unknown operator"),
        (format!("{T}/tolerations"), json!([{"key": "k", "operator": "Exists", "value": "v"}]), format!("{TP}.tolerations[0].value"), "must be empty"),
        (format!("{T}/tolerations"), json!([{"key": "k", "effect": "Sometimes"}]), format!("{TP}.tolerations[0].effect"), "unknown effect"),
        ("/spec/template/metadata/annotations".into(), json!({"sidecar.istio.io/inject": "true"}), "".into(), ""),
        ("/spec/dataVolumeTemplates".into(), json!([{"metadata": {"name": "d"}, "spec": {"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}, {"metadata": {"name": "d"}, "spec": {"source": {"blank": {}}, "pvc": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}}]), "spec.dataVolumeTemplates[1].metadata.name".into(), "duplicate DataVolume template name"),
    ];
    for (pointer, value, path, contains) in cases {
        let mut v = base(BASE_VM);
        set(&mut v, &pointer, value.clone());
        if path.is_empty() {
            // A mutation that is valid on its own (used to prove a rule's
            // precondition does not fire by itself).
            let r = report(v);
            assert!(r.is_valid(), "{pointer} = {value}: {r:#?}");
            continue;
        }
        assert_error(v, &path, contains);
    }
}

#[test]
fn unknown_run_strategy() {
    let mut v = base(BASE_VM);
    v["spec"].as_object_mut().unwrap().remove("running");
    set(&mut v, "/spec/runStrategy", json!("Sometimes"));
    assert_error(v, "spec.runStrategy", "unknown run strategy");
}

#[test]
fn duplicate_boot_order_across_disks_and_interfaces() {
    let mut v = base(BASE_VM);
    set(
        &mut v,
        &format!("{T}/domain/devices/disks/0/bootOrder"),
        json!(1),
    );
    set(
        &mut v,
        &format!("{T}/domain/devices/disks/1/bootOrder"),
        json!(2),
    );
    set(
        &mut v,
        &format!("{T}/domain/devices/interfaces/1/bootOrder"),
        json!(1),
    );
    assert_error(
        v,
        &format!("{TP}.domain.devices.interfaces[1].bootOrder"),
        &format!("Boot order for {TP}.domain.devices.interfaces[1].bootOrder already set for a different device ({TP}.domain.devices.disks[0])"),
    );
}

#[test]
fn istio_mesh_ports_are_refused_only_in_the_mesh() {
    let mut v = base(BASE_VM);
    set(
        &mut v,
        &format!("{T}/domain/devices/interfaces/0/ports/0/port"),
        json!(15000),
    );
    assert!(report(v.clone()).is_valid(), "not in the mesh");
    set(
        &mut v,
        "/spec/template/metadata/annotations",
        json!({"sidecar.istio.io/inject": "true"}),
    );
    assert_error(
        v,
        &format!("{TP}.domain.devices.interfaces[0].ports[0].port"),
        "Istio sidecar",
    );
}

#[test]
fn dedicated_cpus_need_whole_equal_cpu_requests() {
    let mut v = base(BASE_VM);
    set(
        &mut v,
        &format!("{T}/domain/cpu/dedicatedCpuPlacement"),
        json!(true),
    );
    set(
        &mut v,
        &format!("{T}/domain/resources/requests/cpu"),
        json!("1500m"),
    );
    set(
        &mut v,
        &format!("{T}/domain/resources/limits/cpu"),
        json!("2"),
    );
    set(
        &mut v,
        &format!("{T}/domain/resources/limits/memory"),
        json!("1Gi"),
    );
    let r = report(v);
    assert!(
        r.has_path(&format!("{TP}.domain.resources.requests.cpu")),
        "{r:#?}"
    );
    assert!(
        r.has_path(&format!("{TP}.domain.resources.limits.cpu")),
        "{r:#?}"
    );
}

#[test]
fn memory_limit_headroom_boundaries() {
    for (req, lim, ok) in [
        ("128Mi", "256Mi", true),
        ("128Mi", "228Mi", true),
        ("128Mi", "227Mi", false),
        ("1G", "1100Mi", true),
    ] {
        let mut v = base(BASE_VM);
        set(
            &mut v,
            &format!("{T}/domain/resources/requests/memory"),
            json!(req),
        );
        set(
            &mut v,
            &format!("{T}/domain/resources/limits/memory"),
            json!(lim),
        );
        assert_eq!(report(v).is_valid(), ok, "{req}/{lim}");
    }
}

#[test]
fn hugepages_table() {
    for (mem, page, ok) in [
        ("4Gi", "1Gi", true),
        ("500Mi", "1Gi", false),
        ("3Mi", "2Mi", false),
        ("8Mi", "2048Ki", true),
        ("1Gi", "1Gi", false),
        ("4Mi", "4Ki", false),
        ("32Gi", "16Gi", false),
    ] {
        let mut v = base(BASE_VM);
        set(
            &mut v,
            &format!("{T}/domain/resources/requests/memory"),
            json!(mem),
        );
        set(
            &mut v,
            &format!("{T}/domain/memory/hugepages/pageSize"),
            json!(page),
        );
        assert_eq!(report(v).is_valid(), ok, "{mem} on {page}");
    }
}

#[test]
fn secure_boot_smm_table() {
    for (efi, smm, ok) in [
        (json!({}), None, false),
        (json!({"secureBoot": false}), None, true),
        (json!({}), Some(json!({})), true),
        (json!({}), Some(json!({"enabled": false})), false),
    ] {
        let mut v = base(BASE_VM);
        set(
            &mut v,
            &format!("{T}/domain/firmware/bootloader/efi"),
            efi.clone(),
        );
        if let Some(s) = smm.clone() {
            set(&mut v, &format!("{T}/domain/features/smm"), s);
        }
        assert_eq!(report(v).is_valid(), ok, "efi {efi} smm {smm:?}");
    }
}

#[test]
fn many_faults_are_reported_in_one_pass() {
    let mut v = base(BASE_VM);
    set(&mut v, &format!("{T}/domain/cpu/cores"), json!(0));
    set(
        &mut v,
        &format!("{T}/domain/devices/disks/0/name"),
        json!("missing"),
    );
    set(
        &mut v,
        &format!("{T}/domain/devices/disks/1/bootOrder"),
        json!(0),
    );
    set(
        &mut v,
        &format!("{T}/domain/devices/interfaces/0/ports/0/port"),
        json!(49152),
    );
    set(
        &mut v,
        &format!("{T}/domain/devices/interfaces/1/macAddress"),
        json!("zz"),
    );
    let r = report(v);
    let paths: Vec<&str> = r.errors().map(|e| e.path.as_str()).collect();
    for p in [
        format!("{TP}.domain.cpu.cores"),
        format!("{TP}.domain.devices.disks[0].name"),
        format!("{TP}.domain.devices.disks[1].bootOrder"),
        format!("{TP}.domain.devices.interfaces[0].ports[0].port"),
        format!("{TP}.domain.devices.interfaces[1].macAddress"),
    ] {
        assert!(paths.contains(&p.as_str()), "{p} missing from {paths:#?}");
    }
}

const BASE_DV: &str = r#"
apiVersion: cdi.kubevirt.io/v1beta1
kind: DataVolume
metadata: {name: dv, namespace: ns}
spec:
  source: {http: {url: "https://example.invalid/disk.qcow2"}}
  pvc:
    accessModes: [ReadWriteOnce]
    resources: {requests: {storage: 2Gi}}
"#;

#[test]
fn datavolume_rules_each_report_their_path() {
    assert!(report(base(BASE_DV)).is_valid());
    let cases: Vec<(&str, Value, &str, &str)> = vec![
        (
            "/spec/source",
            json!({}),
            "spec.source",
            "exactly one source is required",
        ),
        (
            "/spec/source/blank",
            json!({}),
            "spec.source",
            "exactly one source is allowed, found http, blank",
        ),
        (
            "/spec/source/http/url",
            json!(""),
            "spec.source.http.url",
            "url is required",
        ),
        (
            "/spec/source/http/url",
            json!("ftp://x/y"),
            "spec.source.http.url",
            "http or https",
        ),
        (
            "/spec/source",
            json!({"registry": {"url": "quay.io/x"}}),
            "spec.source.registry.url",
            "docker://",
        ),
        (
            "/spec/source",
            json!({"pvc": {"name": ""}}),
            "spec.source.pvc.name",
            "required",
        ),
        (
            "/spec/pvc/resources/requests",
            json!({}),
            "spec.pvc.resources.requests.storage",
            "target size is required",
        ),
        (
            "/spec/pvc/resources/requests/storage",
            json!("0"),
            "spec.pvc.resources.requests.storage",
            "greater than 0",
        ),
        (
            "/spec/pvc/accessModes",
            json!([]),
            "spec.pvc.accessModes",
            "at least one access mode",
        ),
        (
            "/spec/pvc/accessModes",
            json!(["ReadSometimes"]),
            "spec.pvc.accessModes[0]",
            "unknown access mode",
        ),
        (
            "/spec/pvc/volumeMode",
            json!("Blob"),
            "spec.pvc.volumeMode",
            "unknown volume mode",
        ),
        (
            "/spec/contentType",
            json!("iso"),
            "spec.contentType",
            "unknown content type",
        ),
        ("/metadata/name", json!(""), "metadata.name", "required"),
    ];
    for (pointer, value, path, contains) in cases {
        let mut v = base(BASE_DV);
        set(&mut v, pointer, value);
        assert_error(v, path, contains);
    }
    let mut v = base(BASE_DV);
    set(&mut v, "/spec/contentType", json!("archive"));
    set(&mut v, "/spec/pvc/volumeMode", json!("Block"));
    assert_error(
        v,
        "spec.contentType",
        "archive content cannot target a Block volume",
    );
}

#[test]
fn secret_with_bad_base64_names_the_key_never_the_value() {
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": {"name": "endpoint-secret", "namespace": "ns",
                     "labels": {"app": "containerized-data-importer"}},
        "data": {"accessKeyId": "dXNlcg==", "secretKey": "not base64 hunter2!"}});
    let r = report(secret.clone());
    let text = format!("{r:?}");
    assert!(!text.contains("hunter2"), "{text}");
    assert_error(secret, "data.secretKey", "not valid base64");
    let doc = parse_value(
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
               "data": {"accessKeyId": "dXNlcg=="}, "stringData": {"secretKey": "pw"}}),
        0,
        Mode::Strict,
    )
    .unwrap();
    let virtkit_core::document::Object::Secret(s) = &doc.object else {
        panic!("not a Secret")
    };
    assert_eq!(s.value("accessKeyId").unwrap(), Some(b"user".to_vec()));
    assert_eq!(s.value("secretKey").unwrap(), Some(b"pw".to_vec()));
    assert_eq!(s.value("other").unwrap(), None);
    assert!(!format!("{s:?}").contains("dXNlcg"), "Debug shows no value");
}

#[test]
fn network_object_rules() {
    let nad = |config: &str| {
        json!({"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
               "metadata": {"name": "n"}, "spec": {"config": config}})
    };
    assert!(report(nad(
        r#"{"cniVersion":"0.3.1","type":"cnv-bridge","bridge":"br1","vlan":100}"#
    ))
    .is_valid());
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","type":"cnv-bridge","bridge":"br1","vlan":5000}"#),
        "spec.config.plugins[0].vlan",
        "out of range 0..4094",
    );
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","type":"bridge","bridge":"a-very-long-bridge-name"}"#),
        "spec.config.plugins[0].bridge",
        "1-15 bytes",
    );
    assert_error(
        nad(r#"{"cniVersion":"9.9.9","type":"bridge"}"#),
        "spec.config.cniVersion",
        "unsupported cniVersion",
    );
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","type":"bridge","vlan":"ten"}"#),
        "spec.config.vlan",
        "invalid type",
    );
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","plugins":[{"type":"sriov","vlan":1,"spoofchk":"yes"}]}"#),
        "spec.config.plugins[0].spoofchk",
        "\"on\" or \"off\"",
    );
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","type":"bridge","mtu":20}"#),
        "spec.config.plugins[0].mtu",
        "out of range",
    );
    assert_error(nad(""), "spec.config", "required");
    assert_error(
        nad(r#"{"cniVersion":"0.3.1","plugins":[{"type":"flannel"}]}"#),
        "spec.config.plugins[0].type",
        "unsupported plugin type",
    );

    let policy = || -> Value {
        base("apiVersion: sriovnetwork.openshift.io/v1\nkind: SriovNetworkNodePolicy\nmetadata: {name: p}\nspec:\n  resourceName: intelnics\n  numVfs: 4\n  nicSelector: {vendor: \"8086\"}\n  deviceType: vfio-pci\n")
    };
    assert!(report(policy()).is_valid());
    for (pointer, value, path, contains) in [
        (
            "/spec/priority",
            json!(100),
            "spec.priority",
            "out of range 0..99",
        ),
        ("/spec/numVfs", json!(0), "spec.numVfs", "out of range"),
        (
            "/spec/nicSelector/vendor",
            json!("10de"),
            "spec.nicSelector.vendor",
            "allowed: 8086, 15b3",
        ),
        (
            "/spec/nicSelector/deviceID",
            json!("abcd"),
            "spec.nicSelector.deviceID",
            "allowed: 158b, 1015, 1017",
        ),
        (
            "/spec/nicSelector/rootDevices",
            json!(["02:00.1"]),
            "spec.nicSelector.rootDevices[0]",
            "not a PCI address",
        ),
        (
            "/spec/resourceName",
            json!("intel.nics"),
            "spec.resourceName",
            "letters, digits",
        ),
        (
            "/spec/deviceType",
            json!("uio"),
            "spec.deviceType",
            "vfio-pci or netdevice",
        ),
        ("/spec/isRdma", json!(true), "spec.isRdma", "RDMA"),
        ("/spec/mtu", json!(10000), "spec.mtu", "out of range"),
    ] {
        let mut v = policy();
        set(&mut v, pointer, value);
        assert_error(v, path, contains);
    }

    let network = || -> Value {
        base("apiVersion: sriovnetwork.openshift.io/v1\nkind: SriovNetwork\nmetadata: {name: n}\nspec:\n  resourceName: intelnics\n  spoofChk: \"on\"\n")
    };
    assert!(report(network()).is_valid());
    for (pointer, value, path, contains) in [
        (
            "/spec/vlan",
            json!(4096),
            "spec.vlan",
            "out of range 0..4095",
        ),
        (
            "/spec/vlanQoS",
            json!(8),
            "spec.vlanQoS",
            "out of range 0..7",
        ),
        (
            "/spec/spoofChk",
            json!(true),
            "spec.spoofChk",
            "quoted string",
        ),
        (
            "/spec/trust",
            json!("yes"),
            "spec.trust",
            "\"on\" or \"off\"",
        ),
        (
            "/spec/linkState",
            json!("up"),
            "spec.linkState",
            "enable, disable or auto",
        ),
        ("/spec/maxTxRate", json!(-1), "spec.maxTxRate", ">= 0"),
        (
            "/spec/resourceName",
            json!(""),
            "spec.resourceName",
            "required",
        ),
    ] {
        let mut v = network();
        set(&mut v, pointer, value);
        assert_error(v, path, contains);
    }
    let mut v = network();
    set(&mut v, "/spec/minTxRate", json!(200));
    set(&mut v, "/spec/maxTxRate", json!(100));
    assert_error(v, "spec.minTxRate", "above the maximum");
}

#[test]
fn cluster_config_rules() {
    let hc = || -> Value {
        base("apiVersion: hco.kubevirt.io/v1\nkind: HyperConverged\nmetadata: {name: kubevirt-hyperconverged}\nspec: {}\n")
    };
    assert!(report(hc()).is_valid());
    // The seed's troubleshooting case: ca 4h/1h, server.duration default 24h.
    let mut v = hc();
    set(
        &mut v,
        "/spec/certConfig",
        json!({"ca": {"duration": "4h0m0s", "renewBefore": "1h0m0s"}, "server": {"renewBefore": "4h0m0s"}}),
    );
    let r = report(v.clone());
    let errors: Vec<_> = r.errors().collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(
        errors[0].message,
        "spec.certConfig: ca.duration is smaller than server.duration (4h0m0s < 24h0m0s)"
    );
    set(&mut v, "/spec/certConfig/server/duration", json!("4h0m0s"));
    assert!(report(v).is_valid());
    for (pointer, value, path, contains) in [
        (
            "/spec/certConfig/ca/duration",
            json!("9m59s"),
            "spec.certConfig.ca.duration",
            "value is too small",
        ),
        (
            "/spec/certConfig/server/renewBefore",
            json!("1d"),
            "spec.certConfig.server.renewBefore",
            "invalid duration",
        ),
        (
            "/spec/certConfig/ca/renewBefore",
            json!("72h"),
            "spec.certConfig.ca",
            "duration is smaller than renewBefore",
        ),
        (
            "/spec/certConfig/server/renewBefore",
            json!("25h"),
            "spec.certConfig.server",
            "duration is smaller than renewBefore",
        ),
        (
            "/spec/liveMigrationConfig/parallelMigrationsPerCluster",
            json!(0),
            "spec.liveMigrationConfig.parallelMigrationsPerCluster",
            ">= 1",
        ),
        (
            "/spec/liveMigrationConfig/progressTimeout",
            json!(-5),
            "spec.liveMigrationConfig.progressTimeout",
            ">= 1",
        ),
        (
            "/spec/liveMigrationConfig/bandwidthPerMigration",
            json!("-1Mi"),
            "spec.liveMigrationConfig.bandwidthPerMigration",
            ">= 0",
        ),
        (
            "/spec/permittedHostDevices/pciHostDevices",
            json!([{"pciVendorSelector": "10DE-1EB8", "resourceName": "nvidia.com/T4"}]),
            "spec.permittedHostDevices.pciHostDevices[0].pciVendorSelector",
            "VVVV:DDDD",
        ),
        (
            "/spec/permittedHostDevices/pciHostDevices",
            json!([{"pciVendorSelector": "10DE:1EB8", "resourceName": "T4"}]),
            "spec.permittedHostDevices.pciHostDevices[0].resourceName",
            "vendor-domain/NAME",
        ),
        (
            "/spec/permittedHostDevices/pciHostDevices",
            json!([{"pciVendorSelector": "10DE:1EB8", "resourceName": "nvidia.com/T4"}, {"pciVendorSelector": "10de:1eb8", "resourceName": "nvidia.com/T4b"}]),
            "spec.permittedHostDevices.pciHostDevices[1].pciVendorSelector",
            "duplicate selector",
        ),
        (
            "/apiVersion",
            json!("hco.kubevirt.io/v2"),
            "apiVersion",
            "accepted",
        ),
    ] {
        let mut v = hc();
        set(&mut v, pointer, value);
        assert_error(v, path, contains);
    }
    let cm = base("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kubevirt-config}\ndata:\n  feature-gates: LiveMigration\n  migrations: |\n    parallelMigrationsPerCluster: 0\n    bandwidthPerMigration: 64 Mi\n");
    let r = report(cm);
    assert!(r.has_path("data.migrations"), "{r:#?}");
    let vmim = base("apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachineInstanceMigration\nmetadata: {name: m}\nspec: {}\n");
    assert_error(vmim, "spec.vmiName", "required");
    let preset = base("apiVersion: kubevirt.io/v1alpha3\nkind: VirtualMachineInstancePreset\nmetadata: {name: p}\nspec: {}\n");
    assert_error(preset, "spec.selector", "selector");
}

#[test]
fn unknown_and_misplaced_fields() {
    // Seed defect: lower-case `apiversion` gets a hint.
    let text = BASE_VM.replace("apiVersion:", "apiversion: kubevirt.io/v1\napiVersion:");
    let doc = parse_one(&text, Mode::Strict).unwrap();
    let r = validate_document(&doc);
    let e = r
        .errors()
        .find(|e| e.path == "apiversion")
        .expect("reported");
    assert!(
        e.message.contains("did you mean `apiVersion`"),
        "{}",
        e.message
    );

    // Seed defect: evictionStrategy directly under the VM spec.
    let text = BASE_VM.replace(
        "  running: false\n",
        "  running: false\n  evictionStrategy: LiveMigrate\n",
    );
    for mode in [Mode::Strict, Mode::Lenient] {
        let r = validate_document(&parse_one(&text, mode).unwrap());
        let e = r
            .errors()
            .find(|e| e.path == "spec.evictionStrategy")
            .expect("reported");
        assert!(
            e.message.contains("spec.template.spec.evictionStrategy"),
            "{}",
            e.message
        );
    }

    // Seed defect: `domain` under spec.template (overcommit example).
    let text = BASE_VM.replace(
        "    metadata: {labels: {kubevirt.io/vm: base}}\n",
        "    metadata: {labels: {kubevirt.io/vm: base}}\n    domain: {memory: {guest: 2048M}}\n",
    );
    let r = validate_document(&parse_one(&text, Mode::Lenient).unwrap());
    let e = r
        .errors()
        .find(|e| e.path == "spec.template.domain")
        .expect("reported");
    assert!(e.message.contains("spec.template.spec.domain"));

    // A plain unknown field: error in strict mode, kept warning in lenient.
    let text = BASE_VM.replace("cpu: {cores: 1}", "cpu: {cores: 1, turbo: true}");
    let strict = validate_document(&parse_one(&text, Mode::Strict).unwrap());
    let e = strict
        .errors()
        .find(|e| e.path == format!("{TP}.domain.cpu.turbo"))
        .expect("strict error");
    assert_eq!(e.severity, Severity::Error);
    let doc = parse_one(&text, Mode::Lenient).unwrap();
    let lenient = validate_document(&doc);
    assert!(lenient.is_valid(), "{lenient:#?}");
    assert!(lenient
        .warnings()
        .any(|w| w.path == format!("{TP}.domain.cpu.turbo")));
    // ... and it is written back on serialization.
    let out = doc.to_value().unwrap();
    assert_eq!(
        out["spec"]["template"]["spec"]["domain"]["cpu"]["turbo"],
        json!(true)
    );
}

#[test]
fn datavolume_storage_class_misplacement() {
    let text = BASE_DV.replace("  pvc:\n", "  storageClassName: local\n  pvc:\n");
    let strict = validate_document(&parse_one(&text, Mode::Strict).unwrap());
    let e = strict
        .errors()
        .find(|e| e.path == "spec.storageClassName")
        .expect("strict error");
    assert!(e.message.contains("spec.pvc.storageClassName"));
    let doc = parse_one(&text, Mode::Lenient).unwrap();
    let lenient = validate_document(&doc);
    assert!(lenient.is_valid(), "{lenient:#?}");
    let virtkit_core::document::Object::DataVolume(dv) = &doc.object else {
        panic!()
    };
    assert_eq!(dv.spec.pvc.storage_class_name.as_deref(), Some("local"));
}

#[test]
fn type_errors_name_their_path() {
    let text = BASE_VM.replace("cpu: {cores: 1}", "cpu: {cores: many}");
    let err = parse_one(&text, Mode::Strict).unwrap_err();
    assert_eq!(err.path, format!("{TP}.domain.cpu.cores"));
    let text = BASE_VM.replace("memory: 64Mi", "memory: 2GB");
    let err = parse_one(&text, Mode::Strict).unwrap_err();
    assert_eq!(err.path, format!("{TP}.domain.resources.requests.memory"));
    assert!(
        err.message.contains("unknown suffix \"GB\""),
        "{}",
        err.message
    );
    let err = parse_one("kind: Pod\n", Mode::Strict).unwrap_err();
    assert_eq!(err.path, "kind");
    let err = parse_one("kind: VirtualMachineInstanceReplicaSet\n", Mode::Strict).unwrap_err();
    assert!(err.message.contains("not supported"));
    let err = parse_one("- a\n- b\n", Mode::Strict).unwrap_err();
    assert!(err.message.contains("mapping"));
}

fn fixtures(dir: &str) -> Vec<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir);
    let mut v: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.display().to_string(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn seed_fixtures_parse_validate_and_round_trip() {
    let mut count = 0;
    for (name, text) in fixtures("valid") {
        for res in parse_all(&text, Mode::Strict) {
            let doc = res.unwrap_or_else(|e| panic!("{name}: {e}"));
            let r = validate_document(&doc);
            assert!(r.is_valid(), "{name} doc {}: {:#?}", doc.index, r);
            // parse → serialize → parse gives the same value.
            let yaml = doc.to_yaml().unwrap();
            let again =
                parse_one(&yaml, Mode::Strict).unwrap_or_else(|e| panic!("{name}: {e}\n{yaml}"));
            assert_eq!(again.object, doc.object, "{name} doc {}", doc.index);
            // JSON too.
            let json = serde_json::to_string(&doc.to_value().unwrap()).unwrap();
            let again = parse_one(&json, Mode::Strict).unwrap();
            assert_eq!(again.object, doc.object);
            count += 1;
        }
    }
    assert!(count >= 18, "only {count} documents");
}

#[test]
fn kind_list_and_empty_documents() {
    let text = "---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: kubevirt.io/v1\n  kind: VirtualMachineInstanceMigration\n  metadata: {name: a}\n  spec: {vmiName: x}\n- apiVersion: kubevirt.io/v1\n  kind: VirtualMachineInstanceMigration\n  metadata: {name: b}\n  spec: {vmiName: y}\n---\n";
    let docs: Vec<_> = parse_all(text, Mode::Strict)
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1].object.name(), Some("b"));
    assert_eq!(docs[1].index, 1);
}

const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {kubevirt.io/vm: base}
  ports:
  - {name: http, port: 8080, targetPort: http, nodePort: 30080}
  - {name: alt, port: 8443, targetPort: 443}
  - {name: dns, port: 53, protocol: UDP}
"#;

#[test]
fn service_rules_and_the_ports_that_reach_the_guest() {
    use virtkit_core::document::Object;
    use virtkit_core::validate::service_exposure;

    assert!(report(base(SERVICE)).is_valid());
    let mutate = |pointer: &str, value: Value| {
        let mut v = base(SERVICE);
        set(&mut v, pointer, value);
        v
    };
    assert_error(
        mutate("/spec/type", json!("ExternalName")),
        "spec.type",
        "is not one of",
    );
    assert_error(
        mutate("/spec/ports/0/port", json!(0)),
        "spec.ports[0].port",
        "1–65535",
    );
    assert_error(
        mutate("/spec/ports/1/name", json!("http")),
        "spec.ports[1].name",
        "used twice",
    );
    assert_error(
        mutate("/spec/ports/1/targetPort", json!("Not_A_Name")),
        "spec.ports[1].targetPort",
        "not a port name",
    );
    assert_error(
        mutate("/spec/ports/0/nodePort", json!(80)),
        "spec.ports[0].nodePort",
        "30000–32767",
    );
    assert_error(
        mutate("/spec/type", json!("ClusterIP")),
        "spec.ports[0].nodePort",
        "only allowed for NodePort",
    );
    assert_error(
        mutate("/spec/ports/2/protocol", json!("ICMP")),
        "spec.ports[2].protocol",
        "TCP, UDP or SCTP",
    );
    assert_error(
        mutate("/spec/ports", json!([])),
        "spec.ports",
        "at least one port",
    );

    // Against the base VM: its masquerade interface forwards 80/TCP
    // ("http") only, so 443 and 53/UDP are warned about, not exposed.
    let Object::Service(svc) = parse_one(SERVICE, Mode::Strict).unwrap().object else {
        panic!("a Service")
    };
    let Object::VirtualMachine(vm) = parse_one(BASE_VM, Mode::Strict).unwrap().object else {
        panic!("a VM")
    };
    let meta = vm.spec.template.metadata.clone().unwrap_or_default();
    let labels = &meta.labels;
    let (exposed, r) = service_exposure(&svc, labels, &vm.spec.template.spec);
    assert_eq!(exposed.len(), 1);
    assert_eq!(
        (exposed[0].port, exposed[0].node_port, exposed[0].guest_port),
        (8080, Some(30080), 80)
    );
    let warnings: Vec<String> = r.warnings().map(|w| w.to_string()).collect();
    assert!(r.is_valid(), "warnings only");
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(
        warnings[0].contains("spec.ports[1].targetPort")
            && warnings[0].contains("443/TCP is not forwarded")
            && warnings[0].contains("it forwards 80/TCP"),
        "{warnings:?}"
    );
    assert!(
        warnings[1].contains("spec.ports[2].targetPort") && warnings[1].contains("53/UDP"),
        "{warnings:?}"
    );

    // No declared ports: everything but the reserved ones is forwarded.
    let mut open = vm.spec.template.spec.clone();
    open.domain.devices.interfaces[0].ports.clear();
    let mut svc2 = svc.clone();
    svc2.spec.ports[0].target_port = Some(virtkit_core::spec::service::TargetPort::Number(49152));
    let (exposed, r) = service_exposure(&svc2, labels, &open);
    assert_eq!(
        exposed.iter().map(|e| e.guest_port).collect::<Vec<_>>(),
        [443, 53]
    );
    assert!(r
        .warnings()
        .any(|w| w.to_string().contains("49152/TCP is not forwarded")));

    // A Service that does not select the VM exposes nothing.
    let mut other = svc.clone();
    other.spec.selector.insert("app".into(), "db".into());
    let (exposed, r) = service_exposure(&other, labels, &vm.spec.template.spec);
    assert!(exposed.is_empty());
    assert!(r.warnings().any(|w| w.path == "spec.selector"));
}
