//! Helpers shared by the storage tests: scratch directories, the
//! qemu-img oracle, a test CA, an nginx peer and a faulty HTTP server.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether `tool` runs; prints a SKIP line naming the package if not.
pub fn have(tool: &str, package: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !ok {
        eprintln!("SKIP: {tool} is not installed (Debian package {package})");
    }
    ok
}

/// qemu-img, the oracle.
pub fn qemu_img() -> bool {
    have("qemu-img", "qemu-utils")
}

/// A fresh directory for one test, removed with everything in it when
/// the test ends (pass or fail), so that runs do not pile up images in
/// the temporary directory.
pub struct TestDir(PathBuf);

impl std::ops::Deref for TestDir {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl AsRef<std::path::Path> for TestDir {
    fn as_ref(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh directory for one test.
pub fn dir(name: &str) -> TestDir {
    let d = std::env::temp_dir().join(format!("virtkit-storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    TestDir(d)
}

/// Run qemu-img, which must succeed.
pub fn run(args: &[&str]) {
    let out = Command::new("qemu-img").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a shell command, which must succeed.
pub fn sh(cmd: &str) {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A 24 MiB + 2.5 KiB raw image: data regions, holes, an explicitly
/// written zero region, data in the last partial cluster.
pub fn source_raw(d: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let p = d.join("src.raw");
    let f = std::fs::File::create(&p).unwrap();
    let size = (24u64 << 20) + 2560;
    f.set_len(size).unwrap();
    let mut seed = 0x1234_5678u32;
    let mut data = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 17;
                seed ^= seed << 5;
                (seed >> 24) as u8
            })
            .collect()
    };
    f.write_all_at(&data(1 << 20), 0).unwrap();
    f.write_all_at(&data(70_000), 5 << 20).unwrap();
    f.write_all_at(&vec![0u8; 2 << 20], 8 << 20).unwrap();
    f.write_all_at(&data(3 << 20), 13 << 20).unwrap();
    f.write_all_at(&data(2560 + 4096), size - 2560 - 4096)
        .unwrap();
    p
}

/// Byte equality, reporting the first difference.
pub fn assert_same(ours: &Path, oracle: &Path) {
    let a = std::fs::read(ours).unwrap();
    let b = std::fs::read(oracle).unwrap();
    assert_eq!(a.len(), b.len(), "sizes differ");
    if let Some(i) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!("first difference at byte {i}");
    }
}

/// What `qemu-img convert -O raw` makes of `src`, grown to `size` as
/// CDI's resize does.
pub fn oracle(src: &Path, out: &Path, size: u64) -> PathBuf {
    run(&[
        "convert",
        "-O",
        "raw",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    std::fs::OpenOptions::new()
        .write(true)
        .open(out)
        .unwrap()
        .set_len(size)
        .unwrap();
    out.to_path_buf()
}

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until something listens on `port`.
pub fn wait_port(port: u16) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("nothing listens on {port}");
}

/// A CA and a server certificate for `localhost` / 127.0.0.1 it signed.
pub struct TestCa {
    /// The CA certificate (PEM).
    pub ca_pem: String,
    /// The server certificate (PEM).
    pub cert_pem: String,
    /// The server key (PEM).
    pub key_pem: String,
}

impl TestCa {
    /// A new CA and server certificate.
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "virtkit test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestCa {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// A child process killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// nginx on loopback serving `root` over HTTP (`/…`), HTTPS, with basic
/// auth under `/auth/` (user `importer`, password `s3cret-pw`), and a
/// redirect `/moved/X` → `/X`.
pub struct Nginx {
    pub http: u16,
    pub https: u16,
    pub ca: TestCa,
    _peer: Peer,
}

impl Nginx {
    pub fn start(root: &Path, work: &Path) -> Option<Self> {
        if !Path::new("/usr/sbin/nginx").exists() {
            eprintln!("SKIP: nginx is not installed (Debian package nginx-light)");
            return None;
        }
        let ca = TestCa::new();
        std::fs::write(work.join("server.pem"), &ca.cert_pem).unwrap();
        std::fs::write(work.join("server.key"), &ca.key_pem).unwrap();
        std::fs::write(work.join("htpasswd"), "importer:{PLAIN}s3cret-pw\n").unwrap();
        std::fs::create_dir_all(root.join("auth")).unwrap();
        let (http, https) = (free_port(), free_port());
        let w = work.display();
        let conf = format!(
            r#"daemon off;
user root;
worker_processes 1;
pid {w}/nginx.pid;
error_log {w}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {w}/body;
  proxy_temp_path {w}/proxy;
  fastcgi_temp_path {w}/fastcgi;
  uwsgi_temp_path {w}/uwsgi;
  scgi_temp_path {w}/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{http};
    listen 127.0.0.1:{https} ssl;
    ssl_certificate {w}/server.pem;
    ssl_certificate_key {w}/server.key;
    root {root};
    location /auth/ {{
      auth_basic "virtkit";
      auth_basic_user_file {w}/htpasswd;
    }}
    location /moved/ {{
      rewrite ^/moved/(.*)$ /$1 redirect;
    }}
  }}
}}
"#,
            root = root.display()
        );
        std::fs::write(work.join("nginx.conf"), conf).unwrap();
        let child = Command::new("/usr/sbin/nginx")
            .arg("-c")
            .arg(work.join("nginx.conf"))
            .arg("-p")
            .arg(work)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let peer = Peer(child);
        wait_port(http);
        wait_port(https);
        Some(Nginx {
            http,
            https,
            ca,
            _peer: peer,
        })
    }
}

/// How the faulty server misbehaves.
#[derive(Clone, Copy, Debug)]
pub enum Fault {
    /// Close the first `n` responses after `bytes` body bytes; ranges work.
    DropAfter { bytes: usize, times: usize },
    /// Like `DropAfter`, but no `Accept-Ranges` and `Range` is ignored.
    DropNoRanges { bytes: usize },
    /// Answer 503 to the first `n` requests.
    Unavailable { times: usize },
}

/// A hand-written HTTP/1.1 server for one file, with a fault.
pub struct FaultServer {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
}

impl FaultServer {
    pub fn start(body: Vec<u8>, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&requests);
        let body = Arc::new(body);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let body = Arc::clone(&body);
                std::thread::spawn(move || serve(conn, &body, fault, n));
            }
        });
        FaultServer { addr, requests }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://{}/{name}", self.addr)
    }
}

fn serve(mut conn: TcpStream, body: &[u8], fault: Fault, n: usize) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut range_start = None;
    let mut range_end: Option<usize> = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("range: bytes=") {
            let mut it = v.split('-');
            range_start = it.next().and_then(|s| s.parse::<usize>().ok());
            range_end = it.next().and_then(|s| s.parse::<usize>().ok());
        }
    }
    let ranges = !matches!(fault, Fault::DropNoRanges { .. });
    if let Fault::Unavailable { times } = fault {
        if n < times {
            let _ = conn.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            return;
        }
    }
    let start = if ranges { range_start.unwrap_or(0) } else { 0 };
    let end = match (ranges, range_end) {
        (true, Some(e)) => (e + 1).min(body.len()),
        _ => body.len(),
    };
    let part = &body[start.min(end)..end];
    let head = if ranges && range_start.is_some() {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nAccept-Ranges: bytes\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n",
            part.len(),
            end.saturating_sub(1),
            body.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n{}ETag: \"v1\"\r\nConnection: close\r\n\r\n",
            part.len(),
            if ranges {
                "Accept-Ranges: bytes\r\n"
            } else {
                ""
            }
        )
    };
    let _ = conn.write_all(head.as_bytes());
    let cut = match fault {
        Fault::DropAfter { bytes, times } if n < times => Some(bytes),
        Fault::DropNoRanges { bytes } => Some(bytes),
        _ => None,
    };
    let send = cut.map_or(part.len(), |c| c.min(part.len()));
    let _ = conn.write_all(&part[..send]);
    let _ = conn.flush();
    // Dropping the connection here cuts the body short.
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let mut sink = Vec::new();
    let _ = reader.read_to_end(&mut sink);
}

/// A DataVolume from YAML.
pub fn dv(yaml: &str) -> virtkit_core::spec::datavolume::DataVolume {
    serde_yaml_ng::from_str(yaml).unwrap()
}

/// An http DataVolume for `url` with `size` and extras under `http:`.
pub fn http_dv(url: &str, size: &str, extra: &str) -> virtkit_core::spec::datavolume::DataVolume {
    dv(&format!(
        "apiVersion: cdi.kubevirt.io/v1beta1\nkind: DataVolume\nmetadata: {{name: d, namespace: ns}}\nspec:\n  source:\n    http:\n      url: \"{url}\"\n{extra}  pvc:\n    accessModes: [ReadWriteOnce]\n    resources: {{requests: {{storage: {size}}}}}\n"
    ))
}

/// Files in `d` whose names start with `.` (partial targets, scratch).
pub fn leftovers(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// A resolver holding one credentials Secret and one CA ConfigMap in
/// namespace `ns`, with CDI's key names.
pub fn credential_objects(
    secret: &str,
    user: &str,
    password: &str,
    config_map: &str,
    ca_pem: &str,
) -> virtkit_storage::import::Objects {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let mut o = virtkit_storage::import::Objects::new();
    let mut s = virtkit_core::spec::cluster::Secret::default();
    s.metadata.name = Some(secret.into());
    s.metadata.namespace = Some("ns".into());
    s.data.insert("accessKeyId".into(), b64(user));
    s.data.insert("secretKey".into(), b64(password));
    o.add_secret(s);
    let mut cm = virtkit_core::spec::cluster::ConfigMap::default();
    cm.metadata.name = Some(config_map.into());
    cm.metadata.namespace = Some("ns".into());
    cm.data.insert("ca.pem".into(), ca_pem.into());
    o.add_config_map(cm);
    o
}

/// `raw` converted to qcow2 (v3) at `out` by qemu-img; returns `out`.
pub fn qcow2_of(raw: &Path, out: &Path) -> PathBuf {
    run(&[
        "convert",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    out.to_path_buf()
}

/// Unmounts a test mount even when an assertion fails first.
pub struct Mount(pub std::path::PathBuf);

impl Mount {
    pub fn tmpfs(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("SKIP: cannot mount a tmpfs (needs root)");
        }
        ok.then(|| Mount(at.to_path_buf()))
    }

    pub fn entries(&self) -> Vec<String> {
        std::fs::read_dir(&self.0)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}
