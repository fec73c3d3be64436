//! A blocking `Read` over chunks that an async task sends: how a registry
//! layer stream and an upload body reach the (synchronous) import pipeline
//! without being held in memory. Read it from a plain thread, not from
//! inside an async runtime.
//!
//! The end of the stream is a message of its own ([`ChunkSender::finish`]):
//! a sender dropped without it (an HTTP handler cancelled because its
//! client went away, a panicking task) is a stream broken off, an error,
//! never a short image taken for a whole one.

use std::io::Read;

/// One message: a chunk, the end, or the error that ended the stream.
type Message = std::io::Result<Option<bytes::Bytes>>;

/// The sending half, used from async code.
pub(crate) struct ChunkSender(tokio::sync::mpsc::Sender<Message>);

/// The reader has gone (the import stopped; it reports why).
#[derive(Debug)]
pub(crate) struct ReaderGone;

impl ChunkSender {
    /// Send one chunk.
    pub(crate) async fn send(&self, chunk: bytes::Bytes) -> Result<(), ReaderGone> {
        self.0.send(Ok(Some(chunk))).await.map_err(|_| ReaderGone)
    }

    /// End the stream with an error.
    pub(crate) async fn fail(self, e: std::io::Error) {
        let _ = self.0.send(Err(e)).await;
    }

    /// End the stream with an error, from a plain thread.
    pub(crate) fn fail_blocking(self, e: std::io::Error) {
        let _ = self.0.blocking_send(Err(e));
    }

    /// The stream is complete.
    pub(crate) async fn finish(self) {
        let _ = self.0.send(Ok(None)).await;
    }
}

/// Reads the chunks in order.
pub(crate) struct ChunkReader {
    rx: tokio::sync::mpsc::Receiver<Message>,
    chunk: bytes::Bytes,
    ended: bool,
}

impl ChunkReader {
    /// A bounded channel (`depth` chunks) and its reader.
    pub(crate) fn channel(depth: usize) -> (ChunkSender, Self) {
        let (tx, rx) = tokio::sync::mpsc::channel(depth);
        (
            ChunkSender(tx),
            ChunkReader {
                rx,
                chunk: bytes::Bytes::new(),
                ended: false,
            },
        )
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            if self.ended {
                return Ok(0);
            }
            match self.rx.blocking_recv() {
                Some(Ok(Some(c))) => self.chunk = c,
                Some(Ok(None)) => self.ended = true,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the stream was broken off before its end",
                    ))
                }
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    #[test]
    fn a_finished_stream_reads_whole_and_a_dropped_one_is_an_error() {
        let rt = runtime();
        let (tx, mut reader) = ChunkReader::channel(4);
        rt.block_on(async {
            tx.send(bytes::Bytes::from_static(b"abc")).await.unwrap();
            tx.send(bytes::Bytes::from_static(b"de")).await.unwrap();
            tx.finish().await;
        });
        let mut all = Vec::new();
        reader.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcde");

        let (tx, mut reader) = ChunkReader::channel(4);
        rt.block_on(async {
            tx.send(bytes::Bytes::from_static(b"abc")).await.unwrap();
            drop(tx);
        });
        let e = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);

        let (tx, mut reader) = ChunkReader::channel(4);
        rt.block_on(tx.fail(std::io::Error::other("body: reset")));
        let e = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "body: reset");
    }
}
