//! A blocking `Read` over chunks that an async task sends: how a registry
//! layer stream and an upload body reach the (synchronous) import pipeline
//! without being held in memory. Read it from a plain thread, not from
//! inside an async runtime.

use std::io::Read;

/// One chunk, or the error that ended the stream.
pub(crate) type Chunk = std::io::Result<bytes::Bytes>;

/// Reads the chunks in order; end of stream when the sender is dropped.
pub(crate) struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Chunk>,
    chunk: bytes::Bytes,
}

impl ChunkReader {
    /// A bounded channel (`depth` chunks) and its reader.
    pub(crate) fn channel(depth: usize) -> (tokio::sync::mpsc::Sender<Chunk>, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth);
        (
            tx,
            ChunkReader {
                rx,
                chunk: bytes::Bytes::new(),
            },
        )
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(Ok(c)) => self.chunk = c,
                Some(Err(e)) => return Err(e),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}
