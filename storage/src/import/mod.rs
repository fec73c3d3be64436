//! The import API: run a DataVolume against a target, as CDI's importer,
//! cloner and upload server do, with progress, phases and cancellation.
//!
//! ```text
//! source ──► counting ──► peel (gz/xz/zst, by magic) ──► matrix check ──┬─► raw: sparse copy ──────────► target
//! (http, registry, upload, pvc, blank)                                  ├─► qcow2: ranged HTTP or scratch ► convert ► target
//!                                                                       └─► tar: checked extraction ────► directory
//! ```
//!
//! A file target is written under a temporary name and renamed at the end;
//! a block target is zeroed first and wiped again on failure; scratch
//! files are removed in every case.

pub(crate) mod chunks;
mod clone;
mod content;
pub(crate) mod error;
mod http;
mod phase;
mod registry;
mod resolve;
mod scratch;
pub(crate) mod target;

use std::cell::{Cell, RefCell};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use virtkit_core::spec::datavolume::{ContentType, DataVolume, VolumeMode};
use virtkit_core::validate::{Report, P};

use crate::archive::{self, ArchiveError};
use crate::format::Format;
use crate::matrix::{seed_matrix, Content, Scratch, Source};
use crate::qcow2::{Qcow2, ReadAt};
use crate::write::{convert_qcow2, copy_stream};
use crate::ImageError;

pub use clone::VolumeLock;
pub use error::{redact_url, ImportError};
pub use http::{HttpOptions, RetryPolicy};
pub use phase::{Phase, Progress};
pub use resolve::{Credentials, Objects, Resolver, DEFAULT_NAMESPACE};
pub use scratch::{ScratchSpace, SCRATCH_PREFIX};

use content::{matrix_format, peel, Stream};
use scratch::ScratchFile;
use target::{PartialDir, RawTarget};

/// Cancels an import from another thread; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<AtomicBool>);

impl CancelHandle {
    /// Not cancelled.
    pub fn new() -> Self {
        Self::default()
    }
    /// Ask the import to stop; it fails with [`ImportError::Cancelled`]
    /// and leaves no target behind.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
    fn flag(&self) -> &AtomicBool {
        &self.0
    }
}

/// CDI's default share of a Filesystem volume kept for the filesystem
/// (later CDI releases; the seed's CDI has none, so virtkit's default is 0).
pub const CDI_DEFAULT_FILESYSTEM_OVERHEAD: f64 = 0.055;

/// How to import.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Where scratch files go; needed only where the support matrix says
    /// so ([`needs_scratch`]).
    pub scratch: Option<ScratchSpace>,
    /// Share of a Filesystem target kept free (0 ≤ x < 1); the raw image
    /// is sized to the rest, aligned down to 512 bytes.
    pub filesystem_overhead: f64,
    /// Timeouts, retries, redirects.
    pub http: HttpOptions,
    /// Registries (`host:port`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Zero a block device for a blank import (off by default, as the
    /// device is not read before the guest writes it).
    pub zero_blank_block: bool,
    /// Cancels the import.
    pub cancel: CancelHandle,
}

/// What a successful import did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ImportOutcome {
    /// `Succeeded`.
    pub phase: Phase,
    /// `http`, `registry`, `upload`, `pvc` or `blank`.
    pub source: &'static str,
    /// Detected content (`qcow2+gz`), if any was read.
    pub format: Option<String>,
    /// The image's virtual size (or bytes of a raw stream, or of archive
    /// content).
    pub virtual_size: u64,
    /// Size of the raw target (the requested size less the filesystem
    /// overhead).
    pub target_size: u64,
    /// Bytes read from the source (compressed, as sent).
    pub source_bytes: u64,
    /// Non-zero bytes written to the target.
    pub data_bytes: u64,
    /// Bytes written to scratch space (0 when none was used).
    pub scratch_bytes: u64,
    /// Why scratch was used.
    pub scratch_reason: Option<String>,
    /// Connections resumed after a drop.
    pub resumes: u32,
    /// Files and directories extracted (archive content).
    pub entries: Option<u64>,
    /// Wall time.
    #[serde(serialize_with = "secs")]
    pub elapsed: Duration,
}

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Whether importing `format` as `content` from `source` needs scratch
/// space, per the seed's support matrix (ST-12): `Ok(None)` no, `Ok(Some(
/// reason))` yes, `Err` the cell is ✗ or not in the table.
pub fn needs_scratch(
    source: Source,
    content: Content,
    format: crate::matrix::MatrixFormat,
    custom_ca: bool,
) -> Result<Option<&'static str>, ImportError> {
    let unsupported = || ImportError::Unsupported {
        origin: source,
        content,
        format: format!("{format:?}").to_lowercase(),
    };
    let cell = seed_matrix(content, source, format).ok_or_else(unsupported)?;
    if !cell.supported {
        return Err(unsupported());
    }
    let needed = match cell.scratch {
        Scratch::Never => false,
        Scratch::Always => true,
        Scratch::IfCustomCa => custom_ca,
    };
    Ok(needed.then(|| {
        crate::matrix::scratch_reason(source, content, custom_ca)
            .unwrap_or("the converter needs random access to this image")
    }))
}

/// Reports phases and progress to the caller.
struct Reporter<'a> {
    cb: &'a dyn Fn(&Progress),
    phase: Cell<Phase>,
    total: Cell<Option<u64>>,
    message: RefCell<String>,
}

impl Reporter<'_> {
    fn phase(&self, phase: Phase, message: &str) {
        self.phase.set(phase);
        *self.message.borrow_mut() = message.to_string();
        self.done(0);
    }
    fn total(&self, total: Option<u64>) {
        self.total.set(total);
    }
    fn done(&self, done: u64) {
        (self.cb)(&Progress {
            phase: self.phase.get(),
            done,
            total: self.total.get(),
            message: self.message.borrow().clone(),
        });
    }
}

/// Counts bytes read from the source, for progress.
struct Counting<'a> {
    inner: Stream<'a>,
    count: Arc<AtomicU64>,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// One import in progress.
struct Job<'a> {
    dv: &'a DataVolume,
    namespace: String,
    target: &'a Path,
    opts: &'a ImportOptions,
    rep: Reporter<'a>,
    content: Content,
    block: bool,
    /// Size of the raw target.
    size: u64,
    read: Arc<AtomicU64>,
    out: ImportOutcome,
}

/// Run `dv` against `target`: a file path (Filesystem), a block device
/// (`volumeMode: Block`) or a directory (`contentType: archive`).
/// `source.upload` is fed through [`import_reader`] or the upload server.
pub fn import(
    dv: &DataVolume,
    target: &Path,
    resolver: &dyn Resolver,
    opts: &ImportOptions,
    progress: &dyn Fn(&Progress),
) -> Result<ImportOutcome, ImportError> {
    run(dv, target, opts, progress, |job| job.run_source(resolver))
}

/// Run an upload DataVolume (`source.upload`) with its body read from
/// `body` (`len` bytes, if known): always through scratch space, as the
/// matrix requires.
pub fn import_reader(
    dv: &DataVolume,
    target: &Path,
    body: Box<dyn Read + Send>,
    len: Option<u64>,
    opts: &ImportOptions,
    progress: &dyn Fn(&Progress),
) -> Result<ImportOutcome, ImportError> {
    run(dv, target, opts, progress, move |job| {
        if job.dv.spec.source.upload.is_none() {
            return Err(ImportError::Spec(vec![
                "spec.source: an upload body needs source.upload".into(),
            ]));
        }
        job.out.source = "upload";
        job.rep.phase(Phase::UploadReady, "receiving the upload");
        job.rep.total(len);
        job.image(body, Some(Source::Upload), false, Random::None)
    })
}

fn run(
    dv: &DataVolume,
    target: &Path,
    opts: &ImportOptions,
    progress: &dyn Fn(&Progress),
    body: impl FnOnce(&mut Job<'_>) -> Result<(), ImportError>,
) -> Result<ImportOutcome, ImportError> {
    let started = Instant::now();
    let rep = Reporter {
        cb: progress,
        phase: Cell::new(Phase::Pending),
        total: Cell::new(None),
        message: RefCell::new(String::new()),
    };
    let result = Job::new(dv, target, opts, rep).and_then(|mut job| {
        body(&mut job)?;
        job.out.elapsed = started.elapsed();
        job.out.source_bytes = job.out.source_bytes.max(job.read.load(Ordering::Relaxed));
        job.rep.phase(Phase::Succeeded, "");
        Ok(job.out)
    });
    let result = result.map_err(lift);
    if let Err(e) = &result {
        progress(&Progress {
            phase: Phase::Failed,
            done: 0,
            total: None,
            message: e.to_string(),
        });
    }
    result
}

/// Errors travel through `std::io::Read` as `io::Error`; take the typed
/// one back out.
fn lift(e: ImportError) -> ImportError {
    match e {
        ImportError::Image(ImageError::Io(io)) => lift_io(io),
        other => other,
    }
}

pub(super) fn lift_io(io: std::io::Error) -> ImportError {
    // An OS error has no inner error to open: keep it whole.
    if io.get_ref().is_none() {
        return ImportError::Image(ImageError::Io(io));
    }
    let kind = io.kind();
    match io.into_inner().map(|inner| inner.downcast::<ImportError>()) {
        Some(Ok(e)) => lift(*e),
        Some(Err(other)) => ImportError::Image(ImageError::Io(std::io::Error::new(kind, other))),
        None => ImportError::Image(ImageError::Io(kind.into())),
    }
}

fn archive_error(e: ArchiveError) -> ImportError {
    match e {
        ArchiveError::Read(io) => match lift_io(io) {
            ImportError::Image(ImageError::Io(io)) => ImportError::Archive(io.to_string()),
            other => other,
        },
        ArchiveError::Entry(e) => ImportError::Archive(e.to_string()),
        ArchiveError::Image(e) => ImportError::Image(e),
    }
}

impl<'a> Job<'a> {
    fn new(
        dv: &'a DataVolume,
        target: &'a Path,
        opts: &'a ImportOptions,
        rep: Reporter<'a>,
    ) -> Result<Self, ImportError> {
        let mut report = Report::default();
        virtkit_core::validate::data_volume_spec(&dv.spec, &P::root("spec"), &mut report);
        let errors: Vec<String> = report.errors().map(|v| v.to_string()).collect();
        if !errors.is_empty() {
            return Err(ImportError::Spec(errors));
        }
        if !(0.0..1.0).contains(&opts.filesystem_overhead) {
            return Err(ImportError::Spec(vec![format!(
                "filesystem overhead {} is not in [0, 1)",
                opts.filesystem_overhead
            )]));
        }
        let requested = dv
            .spec
            .pvc
            .resources
            .requests
            .get("storage")
            .and_then(|q| q.to_bytes().ok())
            .ok_or_else(|| {
                ImportError::Spec(vec![
                    "spec.pvc.resources.requests.storage: not a size in bytes".into(),
                ])
            })?;
        let content = match dv.spec.content_type {
            Some(ContentType::Archive) => Content::Archive,
            _ => Content::Kubevirt,
        };
        let block = matches!(dv.spec.pvc.volume_mode, Some(VolumeMode::Block));
        let size = if block || opts.filesystem_overhead == 0.0 {
            requested
        } else {
            ((requested as f64 * (1.0 - opts.filesystem_overhead)) as u64) / 512 * 512
        };
        rep.phase(Phase::Pending, "");
        Ok(Job {
            dv,
            namespace: dv
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
            target,
            opts,
            rep,
            content,
            block,
            size,
            read: Arc::new(AtomicU64::new(0)),
            out: ImportOutcome {
                phase: Phase::Succeeded,
                source: "",
                format: None,
                virtual_size: 0,
                target_size: size,
                source_bytes: 0,
                data_bytes: 0,
                scratch_bytes: 0,
                scratch_reason: None,
                resumes: 0,
                entries: None,
                elapsed: Duration::ZERO,
            },
        })
    }

    fn cancel(&self) -> Option<&AtomicBool> {
        Some(self.opts.cancel.flag())
    }

    fn run_source(&mut self, resolver: &dyn Resolver) -> Result<(), ImportError> {
        let src = &self.dv.spec.source;
        if let Some(h) = &src.http {
            self.out.source = "http";
            self.rep.phase(Phase::ImportScheduled, "");
            let auth = resolve::credentials(resolver, &self.namespace, &h.secret_ref)?;
            let roots = resolve::trust_roots(resolver, &self.namespace, &h.cert_config_map)?;
            let column = if auth.is_some() {
                Source::HttpBasicAuth
            } else if h.url.starts_with("https://") {
                Source::Https
            } else {
                Source::Http
            };
            let custom_ca = !roots.is_empty();
            let http = http::HttpSource::new(
                &h.url,
                auth,
                &roots,
                &self.opts.http,
                self.opts.cancel.clone(),
            )?;
            self.rep.phase(
                Phase::ImportInProgress,
                &format!("downloading {}", http.shown()),
            );
            let stream = http.stream()?;
            self.rep.total(stream.len);
            let ranged = stream.ranged();
            let resumes = Arc::new(AtomicU64::new(0));
            let reader = ResumeCounter {
                inner: stream,
                resumes: Arc::clone(&resumes),
            };
            let r = match self.content {
                Content::Kubevirt => {
                    let random = ranged.as_ref().map_or(Random::None, |r| Random::Http(r));
                    self.image(Box::new(reader), Some(column), custom_ca, random)
                }
                Content::Archive => self.archive(Box::new(reader), Some(column)),
            };
            self.out.resumes = resumes.load(Ordering::Relaxed) as u32;
            r
        } else if let Some(reg) = &src.registry {
            self.out.source = "registry";
            self.rep.phase(Phase::ImportScheduled, "");
            let auth = resolve::credentials(resolver, &self.namespace, &reg.secret_ref)?;
            let roots = resolve::trust_roots(resolver, &self.namespace, &reg.cert_config_map)?;
            if self.content == Content::Archive {
                return Err(ImportError::Unsupported {
                    origin: Source::Registry,
                    content: Content::Archive,
                    format: "tar".into(),
                });
            }
            self.rep.phase(
                Phase::ImportInProgress,
                &format!("pulling {}", redact_url(&reg.url)),
            );
            let url = reg.url.clone();
            registry::import(self, &url, auth, &roots)
        } else if let Some(pvc) = &src.pvc {
            self.out.source = "pvc";
            let ns = pvc
                .namespace
                .clone()
                .unwrap_or_else(|| self.namespace.clone());
            let path = resolver
                .volume(&ns, &pvc.name)
                .ok_or_else(|| ImportError::NotFound {
                    kind: "PersistentVolumeClaim",
                    name: pvc.name.clone(),
                    namespace: ns.clone(),
                })?;
            clone::clone(self, &path)
        } else if src.blank.is_some() {
            self.out.source = "blank";
            self.rep.phase(Phase::ImportScheduled, "");
            self.rep
                .phase(Phase::ImportInProgress, "creating a blank image");
            self.blank()
        } else if src.upload.is_some() {
            Err(ImportError::Spec(vec![
                "spec.source.upload: the data comes from the upload server or import_reader".into(),
            ]))
        } else {
            Err(ImportError::Spec(vec![format!(
                "spec.source: {} is not supported by virtkit (it is in no support matrix)",
                src.kinds().join(", ")
            )]))
        }
    }

    fn blank(&mut self) -> Result<(), ImportError> {
        let t = if self.block {
            RawTarget::block(self.target, self.size, self.opts.zero_blank_block)?
        } else {
            RawTarget::file(self.target, self.size)?
        };
        self.out.virtual_size = self.size;
        t.commit()
    }

    fn raw_target(&self) -> Result<RawTarget, ImportError> {
        if self.block {
            RawTarget::block(self.target, self.size, true)
        } else {
            RawTarget::file(self.target, self.size)
        }
    }

    fn counted<'s>(&self, stream: Stream<'s>) -> Stream<'s> {
        Box::new(Counting {
            inner: stream,
            count: Arc::clone(&self.read),
        })
    }

    /// A disk image (`contentType: kubevirt`).
    fn image(
        &mut self,
        stream: Stream<'_>,
        column: Option<Source>,
        custom_ca: bool,
        random: Random<'_>,
    ) -> Result<(), ImportError> {
        let peeled = peel(self.counted(stream))?;
        let described = peeled.describe();
        self.out.format = Some(described.clone());
        let mut scratch = None;
        if let Some(col) = column {
            match matrix_format(&peeled.layers, peeled.format) {
                Some(mf) => scratch = needs_scratch(col, self.content, mf, custom_ca)?,
                None if matches!(
                    peeled.format,
                    Format::Vmdk | Format::Vdi | Format::Vhd | Format::Vhdx
                ) => {}
                None => {
                    return Err(ImportError::Unsupported {
                        origin: col,
                        content: self.content,
                        format: described,
                    })
                }
            }
        }
        let plain = peeled.layers.is_empty();
        match peeled.format {
            Format::Raw | Format::Iso => match scratch {
                // Already in scratch (a registry disk): stream it from there.
                Some(_) if plain && matches!(random, Random::Scratch(_)) => {
                    self.copy_raw(peeled.reader)
                }
                Some(reason) => {
                    let sf = self.spool(peeled.reader, reason)?;
                    let len = sf.file.metadata()?.len();
                    self.copy_raw(Box::new(std::io::Read::take(&sf.file, len)))
                }
                None => self.copy_raw(peeled.reader),
            },
            Format::Qcow2 => match (scratch, random) {
                (_, Random::Scratch(f)) if plain => {
                    drop(peeled.reader);
                    self.convert(f)
                }
                (None, Random::Http(r)) if plain => {
                    drop(peeled.reader);
                    self.convert(r)
                }
                (reason, _) => {
                    let reason = reason.unwrap_or(
                        "qcow2 needs random access and this source cannot seek (no HTTP ranges)",
                    );
                    let sf = self.spool(peeled.reader, reason)?;
                    self.convert(&sf.file)
                }
            },
            Format::Tar => Err(ImportError::Unsupported {
                origin: column.unwrap_or(Source::Upload),
                content: Content::Kubevirt,
                format: described,
            }),
            f @ (Format::Vmdk | Format::Vdi | Format::Vhd | Format::Vhdx) => {
                Err(ImageError::UnsupportedFormat(f).into())
            }
            Format::Gzip | Format::Xz | Format::Zstd => Err(ImportError::Image(
                ImageError::Unsupported(format!("compression left after peeling: {described}")),
            )),
        }
    }

    /// Store the decoded stream in scratch space.
    fn spool(&mut self, reader: Stream<'_>, reason: &str) -> Result<ScratchFile, ImportError> {
        let space = self.opts.scratch.as_ref().ok_or_else(|| {
            ImportError::Scratch(format!(
                "this import needs scratch space ({reason}); none was given"
            ))
        })?;
        // A full qcow2 carries metadata beyond its virtual size.
        let limit = self.size + self.size / 16 + (16 << 20);
        let phase = self.rep.phase.get();
        let rep = &self.rep;
        let sf = space.reserve(limit, &self.opts.cancel, &mut |free| {
            rep.phase(
                Phase::Pending,
                &format!("waiting for scratch space: {free} bytes free"),
            );
        })?;
        self.rep
            .phase(phase, &format!("storing in scratch space: {reason}"));
        self.out.scratch_reason = Some(reason.to_string());
        let read = Arc::clone(&self.read);
        let copied = copy_stream(&mut { reader }, &sf.file, limit, self.cancel(), &mut |_| {
            self.rep.done(read.load(Ordering::Relaxed))
        })?;
        sf.file.set_len(copied.len)?;
        self.out.scratch_bytes = copied.len;
        Ok(sf)
    }

    fn copy_raw(&mut self, mut reader: Stream<'_>) -> Result<(), ImportError> {
        let t = self.raw_target()?;
        let read = Arc::clone(&self.read);
        let rep = &self.rep;
        let copied = copy_stream(&mut reader, t.out(), self.size, self.cancel(), &mut |_| {
            rep.done(read.load(Ordering::Relaxed))
        })?;
        self.out.virtual_size = copied.len;
        self.out.data_bytes = copied.data;
        t.commit()
    }

    fn convert<R: ReadAt + Sync + ?Sized>(&mut self, src: &R) -> Result<(), ImportError> {
        let q = Qcow2::open(src)?;
        let vs = q.header.virtual_size;
        self.out.virtual_size = vs;
        if vs > self.size {
            return Err(ImageError::TooLarge {
                virtual_size: vs,
                target_size: self.size,
            }
            .into());
        }
        let t = self.raw_target()?;
        self.rep
            .phase(self.rep.phase.get(), "converting qcow2 to raw");
        self.rep.total(Some(vs));
        let rep = &self.rep;
        self.out.data_bytes = convert_qcow2(&q, t.out(), self.cancel(), &mut |d| rep.done(d))?;
        t.commit()
    }

    /// `contentType: archive`: a tar extracted into a directory.
    fn archive(&mut self, stream: Stream<'_>, column: Option<Source>) -> Result<(), ImportError> {
        if self.block {
            return Err(ImportError::Target(
                "archive content cannot target a Block volume".into(),
            ));
        }
        let peeled = peel(self.counted(stream))?;
        let described = peeled.describe();
        self.out.format = Some(described.clone());
        if peeled.format != Format::Tar {
            return Err(ImportError::Archive(format!(
                "archive content must be a tar, found {described}"
            )));
        }
        if let Some(col) = column {
            if let Some(reason) = needs_scratch(
                col,
                Content::Archive,
                crate::matrix::MatrixFormat::Tar,
                false,
            )? {
                // No ✓ archive cell of the seed's matrix has a star.
                self.out.scratch_reason = Some(reason.to_string());
            }
        }
        let dir = PartialDir::create(self.target)?;
        let mut reader = peeled.reader;
        let done = archive::extract(&mut reader, dir.path(), self.size, self.cancel())
            .map_err(archive_error)?;
        self.out.entries = Some(done.entries);
        self.out.virtual_size = done.bytes;
        self.out.data_bytes = done.bytes;
        dir.commit()
    }
}

/// Random access to the image besides its stream, if any.
#[derive(Clone, Copy)]
pub(crate) enum Random<'r> {
    /// Only the stream.
    None,
    /// The same bytes through HTTP ranges.
    Http(&'r (dyn ReadAt + Sync)),
    /// The stream is this whole scratch file.
    Scratch(&'r std::fs::File),
}

/// Counts an HTTP stream's resumes for the outcome.
struct ResumeCounter {
    inner: http::HttpStream,
    resumes: Arc<AtomicU64>,
}

impl Read for ResumeCounter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.resumes
            .store(u64::from(self.inner.resumes), Ordering::Relaxed);
        Ok(n)
    }
}

/// Write `[0, len)` of `src` into `out`, reading only the data extents
/// (SEEK_DATA/SEEK_HOLE) of a file and skipping zero blocks: the copy
/// keeps the source's holes.
pub(crate) fn copy_extents(
    src: &std::fs::File,
    len: u64,
    out: &std::fs::File,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ImportError> {
    use std::os::fd::AsRawFd;
    let fd = src.as_raw_fd();
    let seek = |off: u64, whence| -> Option<u64> {
        // SAFETY: lseek on an open fd has no memory effects.
        let r = unsafe { libc::lseek(fd, off as libc::off_t, whence) };
        (r >= 0).then_some(r as u64)
    };
    // Extents are read here and written by the writer thread.
    let ((), data) = crate::write::with_writer(out, len, |w| {
        let mut off = 0u64;
        while off < len {
            crate::write::check_cancel(cancel)?;
            // No SEEK_DATA support (a block device): everything is data.
            let start = match seek(off, libc::SEEK_DATA) {
                Some(s) => s,
                None if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO) => len,
                None => off,
            };
            if start >= len {
                break;
            }
            let mut end = seek(start, libc::SEEK_HOLE).unwrap_or(len).min(len);
            if end <= start {
                end = len;
            }
            let mut pos = start;
            while pos < end {
                crate::write::check_cancel(cancel)?;
                let mut buf = w.buffer();
                let n = (end - pos).min(buf.len() as u64) as usize;
                if let Err(e) = src.read_exact_at(&mut buf[..n], pos) {
                    w.recycle(buf);
                    return Err(ImageError::Io(e));
                }
                w.write(buf, n, pos)?;
                pos += n as u64;
                progress(pos);
            }
            off = end;
        }
        Ok(())
    })?;
    progress(len);
    Ok(data)
}
