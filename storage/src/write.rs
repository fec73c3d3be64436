//! Sparse writing shared by every path that produces a raw disk: zero
//! 4 KiB blocks are skipped (left as holes in a file target, already zeroed
//! on a block target), adjacent data blocks are coalesced into one write.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};

use crate::qcow2::{Cluster, Qcow2, ReadAt};
use crate::ImageError;

/// Granularity of hole detection.
pub(crate) const BLOCK: usize = 4096;
/// Size of one read/write step.
pub(crate) const CHUNK: usize = 4 << 20;

/// Whether every byte of `b` is zero.
pub(crate) fn is_zero(b: &[u8]) -> bool {
    b.chunks(64).all(|c| c.iter().fold(0u8, |a, x| a | x) == 0)
}

/// Write the non-zero 4 KiB blocks of `data` at offset `at` (clipped to
/// `limit`), coalescing adjacent ones; returns the bytes written.
pub(crate) fn write_nonzero(
    out: &File,
    data: &[u8],
    at: u64,
    limit: u64,
) -> Result<u64, ImageError> {
    let data = &data[..data.len().min(limit.saturating_sub(at) as usize)];
    let mut written = 0u64;
    let mut start: Option<usize> = None;
    let mut flush = |s: usize, e: usize| -> Result<(), ImageError> {
        out.write_all_at(&data[s..e], at + s as u64)
            .map_err(ImageError::Io)?;
        written += (e - s) as u64;
        Ok(())
    };
    for (k, block) in data.chunks(BLOCK).enumerate() {
        match (is_zero(block), start) {
            (false, None) => start = Some(k * BLOCK),
            (true, Some(s)) => {
                flush(s, k * BLOCK)?;
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        flush(s, data.len())?;
    }
    Ok(written)
}

/// Checked between chunks of every long loop.
pub(crate) fn check_cancel(cancel: Option<&AtomicBool>) -> Result<(), ImageError> {
    match cancel {
        Some(c) if c.load(Ordering::SeqCst) => Err(ImageError::Cancelled),
        _ => Ok(()),
    }
}

/// Fill `buf` from `r` as far as it goes; returns the bytes read (less
/// than `buf.len()` only at end of stream).
pub(crate) fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// What a stream copy did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Copied {
    /// Bytes the stream held.
    pub len: u64,
    /// Bytes written (non-zero blocks).
    pub data: u64,
}

/// Filled buffers waiting for the writer thread.
const QUEUED: usize = 2;

/// A buffer of image bytes for guest offset `at`.
struct Filled {
    buf: Vec<u8>,
    len: usize,
    at: u64,
}

/// Hands filled buffers to the writer thread of [`with_writer`]. It is
/// `Sync`: several reading threads may share one.
pub(crate) struct Writer<'p> {
    queue: mpsc::SyncSender<Filled>,
    pool: &'p Mutex<Vec<Vec<u8>>>,
}

impl Writer<'_> {
    /// A [`CHUNK`]-sized buffer, recycled when one is free. At most
    /// (readers + [`QUEUED`] + 1) exist at once.
    pub fn buffer(&self) -> Vec<u8> {
        let free = match self.pool.lock() {
            Ok(mut p) => p.pop(),
            Err(poisoned) => poisoned.into_inner().pop(),
        };
        free.unwrap_or_else(|| vec![0u8; CHUNK])
    }

    /// Queue `buf[..len]` for writing at guest offset `at`. An error means
    /// the writer has stopped; [`with_writer`] reports why.
    pub fn write(&self, buf: Vec<u8>, len: usize, at: u64) -> Result<(), ImageError> {
        self.queue
            .send(Filled { buf, len, at })
            .map_err(|_| ImageError::Io(std::io::Error::other("the image writer stopped")))
    }

    /// Give back a buffer that was not written.
    pub fn recycle(&self, buf: Vec<u8>) {
        recycle(self.pool, buf);
    }
}

fn recycle(pool: &Mutex<Vec<Vec<u8>>>, buf: Vec<u8>) {
    match pool.lock() {
        Ok(mut p) => p.push(buf),
        Err(poisoned) => poisoned.into_inner().push(buf),
    }
}

/// Run `body` with a [`Writer`] whose thread writes the non-zero blocks of
/// every buffer into `out` (clipped to `limit`). Returns the body's result
/// and the bytes written.
///
/// Reading (from a file, a decompressor, HTTP) happens on the body's
/// threads and writing on this one, so the two overlap; a single writer
/// because writes to one file serialise on its inode lock anyway (two
/// writing threads were measured to spin on it). A writer error wins over
/// the body's, as it is the cause of the body's "writer stopped".
pub(crate) fn with_writer<T>(
    out: &File,
    limit: u64,
    body: impl FnOnce(&Writer<'_>) -> Result<T, ImageError>,
) -> Result<(T, u64), ImageError> {
    let pool = Mutex::new(Vec::new());
    let (queue, filled) = mpsc::sync_channel::<Filled>(QUEUED);
    std::thread::scope(|scope| {
        let pool = &pool;
        let writer = scope.spawn(move || -> Result<u64, ImageError> {
            let mut data = 0;
            for f in filled {
                data += write_nonzero(out, &f.buf[..f.len], f.at, limit)?;
                recycle(pool, f.buf);
            }
            Ok(data)
        });
        let w = Writer { queue, pool };
        let result = body(&w);
        drop(w);
        let data = join(writer)?;
        Ok((result?, data))
    })
}

/// Copy a raw stream into `out` sparsely. More than `limit` bytes is an
/// image larger than its target (or a decompression bomb): an error as
/// soon as the first byte past the limit is seen.
///
/// The calling thread reads (and so decompresses or receives) while the
/// writer thread scans for zeros and writes. The reader stays on the
/// calling thread because a stream need not be `Send`.
pub(crate) fn copy_stream(
    reader: &mut dyn Read,
    out: &File,
    limit: u64,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<Copied, ImageError> {
    let (len, data) = with_writer(out, limit, |w| {
        let mut len = 0u64;
        loop {
            check_cancel(cancel)?;
            let mut buf = w.buffer();
            let n = read_full(reader, &mut buf).map_err(ImageError::Io)?;
            if n == 0 {
                w.recycle(buf);
                return Ok(len);
            }
            if len + n as u64 > limit {
                return Err(ImageError::TooLarge {
                    virtual_size: len + n as u64,
                    target_size: limit,
                });
            }
            w.write(buf, n, len)?;
            len += n as u64;
            progress(len);
        }
    })?;
    Ok(Copied { len, data })
}

/// A worker thread's result; a panic in one (a bug) becomes an error.
fn join<T>(h: std::thread::ScopedJoinHandle<'_, Result<T, ImageError>>) -> Result<T, ImageError> {
    h.join().unwrap_or_else(|_| {
        Err(ImageError::Io(std::io::Error::other(
            "an image conversion thread panicked",
        )))
    })
}

/// Guest bytes handed to a reading thread at a time.
const SEGMENT: u64 = 32 << 20;

/// Write the guest content of an open qcow2 image into `out` (which is
/// zero where nothing is written); returns the data bytes written.
/// `progress(guest bytes covered)`.
///
/// The image is cut into segments that [`ReadAt::concurrency`] reading
/// threads take in turn, each with its own L2 cache; the calling thread is
/// one of them and reports progress. One writer thread writes what they
/// read. The first error stops every thread.
pub(crate) fn convert_qcow2<R: ReadAt + Sync + ?Sized>(
    q: &Qcow2<'_, R>,
    out: &File,
    cancel: Option<&AtomicBool>,
    progress: &mut dyn FnMut(u64),
) -> Result<u64, ImageError> {
    let virtual_size = q.header.virtual_size;
    let cs = q.header.cluster_size();
    let clusters = virtual_size.div_ceil(cs);
    let per_segment = (SEGMENT / cs).max(1);
    let segments = clusters.div_ceil(per_segment);
    let readers = q
        .src
        .concurrency()
        .clamp(1, 8)
        .min(segments.max(1) as usize);
    let next = AtomicU64::new(0);
    let covered = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    let ((), data) = with_writer(out, virtual_size, |w| {
        let read = |report: &mut dyn FnMut(u64)| -> Result<(), ImageError> {
            let mut reader = SegmentReader::new(q, w, cancel);
            while !failed.load(Ordering::Relaxed) {
                let s = next.fetch_add(1, Ordering::Relaxed);
                if s >= segments {
                    break;
                }
                let first = s * per_segment;
                let end = (first + per_segment).min(clusters);
                if let Err(e) = reader.clusters(first, end, &mut |n| {
                    report(covered.fetch_add(n * cs, Ordering::Relaxed) + n * cs)
                }) {
                    failed.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Ok(())
        };
        std::thread::scope(|scope| {
            let helpers: Vec<_> = (1..readers)
                .map(|_| scope.spawn(|| read(&mut |_| {})))
                .collect();
            let mine = read(&mut |c| progress(c.min(virtual_size)));
            // Every helper is joined before an error is returned.
            let theirs: Result<Vec<()>, ImageError> = helpers.into_iter().map(join).collect();
            mine.and(theirs.map(drop))
        })
    })?;
    progress(virtual_size);
    Ok(data)
}

/// One reading thread of [`convert_qcow2`]: it gathers guest-contiguous
/// clusters (data read in runs that are contiguous in the file too,
/// compressed ones inflated in place) into a buffer and hands it to the
/// writer when full or when a zero cluster breaks the run.
struct SegmentReader<'q, 'r, 'w, R: ReadAt + ?Sized> {
    q: &'q Qcow2<'r, R>,
    w: &'q Writer<'w>,
    cancel: Option<&'q AtomicBool>,
    l2: (u64, Vec<u64>),
    scratch: Vec<u8>,
}

impl<'q, 'r, 'w, R: ReadAt + ?Sized> SegmentReader<'q, 'r, 'w, R> {
    fn new(q: &'q Qcow2<'r, R>, w: &'q Writer<'w>, cancel: Option<&'q AtomicBool>) -> Self {
        SegmentReader {
            q,
            w,
            cancel,
            l2: (u64::MAX, Vec::new()),
            scratch: Vec::new(),
        }
    }

    /// Read guest clusters `[first, end)`; `covered(n)` after each run of
    /// `n` clusters.
    fn clusters(
        &mut self,
        first: u64,
        end: u64,
        covered: &mut dyn FnMut(u64),
    ) -> Result<(), ImageError> {
        let q = self.q;
        let cs = q.header.cluster_size();
        let mut buf = self.w.buffer();
        // A cluster larger than a chunk (2 MiB max vs 4 MiB): never, but
        // the buffer must hold one.
        if buf.len() < cs as usize {
            buf.resize(cs as usize, 0);
        }
        let cap = buf.len() as u64;
        let (mut fill, mut at) = (0u64, 0u64);
        let mut i = first;
        let result = (|| {
            while i < end {
                check_cancel(self.cancel)?;
                let cluster = q.lookup(i, &mut self.l2)?;
                let flush_first = matches!(cluster, Cluster::Zero) || fill + cs > cap;
                if flush_first && fill > 0 {
                    let full = std::mem::replace(&mut buf, self.w.buffer());
                    self.w.write(full, fill as usize, at)?;
                    fill = 0;
                }
                if fill == 0 {
                    at = i * cs;
                }
                let slot = fill as usize;
                let run = match cluster {
                    Cluster::Zero => 1,
                    Cluster::Compressed(..) => {
                        let one = &mut buf[slot..slot + cs as usize];
                        q.read_cluster(i, one, &mut self.l2, &mut self.scratch)?;
                        fill += cs;
                        1
                    }
                    Cluster::Data(host) => {
                        // Extend over clusters contiguous in guest and file.
                        let mut n = 1;
                        while fill + (n + 1) * cs <= cap && i + n < end {
                            match q.lookup(i + n, &mut self.l2)? {
                                Cluster::Data(h) if h == host + n * cs => n += 1,
                                _ => break,
                            }
                        }
                        let bytes = (n * cs) as usize;
                        q.read_data(host, &mut buf[slot..slot + bytes])?;
                        fill += n * cs;
                        n
                    }
                };
                i += run;
                covered(run);
            }
            Ok::<(), ImageError>(())
        })();
        if result.is_ok() && fill > 0 {
            return self.w.write(buf, fill as usize, at);
        }
        self.w.recycle(buf);
        result
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("virtkit-write-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&d);
        d
    }

    /// A stream of `chunks` 1 MiB pieces, the odd ones zero, failing after
    /// `fail_after` pieces when set.
    struct Pieces {
        left: usize,
        n: usize,
        fail_after: Option<usize>,
    }

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            if self.fail_after == Some(self.n) {
                return Err(std::io::Error::other("source broke"));
            }
            if self.left == 0 {
                return Ok(0);
            }
            let k = buf.len().min(1 << 20);
            buf[..k].fill(if self.n % 2 == 0 { 0xab } else { 0 });
            self.left -= 1;
            self.n += 1;
            Ok(k)
        }
    }

    #[test]
    fn stream_copy_is_sparse_and_counts_data() {
        let p = temp("sparse");
        let out = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        out.set_len(9 << 20).unwrap();
        let mut src = Pieces {
            left: 9,
            n: 0,
            fail_after: None,
        };
        let mut seen = 0;
        let c = copy_stream(&mut src, &out, 9 << 20, None, &mut |d| seen = d).unwrap();
        assert_eq!((c.len, c.data, seen), (9 << 20, 5 << 20, 9 << 20));
        let mut b = vec![0u8; 1 << 20];
        out.read_exact_at(&mut b, 2 << 20).unwrap();
        assert!(b.iter().all(|&x| x == 0xab));
        out.read_exact_at(&mut b, 3 << 20).unwrap();
        assert!(is_zero(&b));
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_failing_writer_stops_the_copy_with_its_error() {
        let p = temp("readonly");
        std::fs::write(&p, b"").unwrap();
        // Opened read-only: every write fails with EBADF.
        let out = File::open(&p).unwrap();
        let mut src = Pieces {
            left: 64,
            n: 0,
            fail_after: None,
        };
        let e = copy_stream(&mut src, &out, u64::MAX, None, &mut |_| {}).unwrap_err();
        assert!(
            matches!(&e, ImageError::Io(io) if io.raw_os_error() == Some(libc::EBADF)),
            "{e:?}"
        );
        // It stopped early rather than reading the whole source: at most
        // the chunks in flight (the writer's, the queued ones, the one
        // being filled) were read, 1 MiB pieces each.
        let in_flight = (QUEUED + 2) * CHUNK / (1 << 20);
        assert!(
            64 - src.left <= in_flight,
            "read {} pieces, more than the {in_flight} in flight",
            64 - src.left
        );
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn a_failing_source_and_a_limit_are_errors() {
        let p = temp("limit");
        let out = File::options()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&p)
            .unwrap();
        let mut src = Pieces {
            left: 9,
            n: 0,
            fail_after: Some(3),
        };
        let e = copy_stream(&mut src, &out, u64::MAX, None, &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("source broke"), "{e}");
        let mut src = Pieces {
            left: 9,
            n: 0,
            fail_after: None,
        };
        let e = copy_stream(&mut src, &out, 3 << 20, None, &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImageError::TooLarge { target_size, .. } if target_size == 3 << 20));
        let cancel = AtomicBool::new(true);
        let mut src = Pieces {
            left: 9,
            n: 0,
            fail_after: None,
        };
        let e = copy_stream(&mut src, &out, u64::MAX, Some(&cancel), &mut |_| {}).unwrap_err();
        assert!(matches!(e, ImageError::Cancelled));
        std::fs::remove_file(&p).unwrap();
    }
}
