//! `source.http`: HTTP and HTTPS with basic auth from CDI's Secret keys,
//! extra trust roots from the CA ConfigMap (merged with the system's, as
//! CDI does), redirects (credentials are not forwarded to another host),
//! retries with exponential backoff on transient failures, and resume with
//! `Range` + `If-Range` after a dropped connection. A server that supports
//! ranges also serves as random-access storage for qcow2 (no scratch).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use reqwest::blocking::{Client, Response};
use reqwest::header::{ACCEPT_RANGES, CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE};
use reqwest::StatusCode;

use super::error::redact_url;
use super::resolve::Credentials;
use super::{CancelHandle, ImportError};
use crate::qcow2::ReadAt;

/// Retries of transient failures: connection refused or reset, timeouts,
/// HTTP 408/429/5xx, a body cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all (1 = no retry).
    pub attempts: u32,
    /// The first wait; doubled after each failure.
    pub initial_backoff: Duration,
    /// The longest wait.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// How HTTP sources are fetched.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Retries and backoff.
    pub retry: RetryPolicy,
    /// Connecting, TLS included.
    pub connect_timeout: Duration,
    /// The longest silence while reading a body.
    pub read_timeout: Duration,
    /// Follow at most this many redirects.
    pub max_redirects: usize,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            retry: RetryPolicy::default(),
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            max_redirects: 10,
        }
    }
}

/// A client for one URL.
pub(crate) struct HttpSource {
    client: Client,
    url: String,
    shown: String,
    auth: Option<Credentials>,
    retry: RetryPolicy,
    cancel: CancelHandle,
}

/// The TLS failure in an error chain, as text. `io::Error` hides its
/// inner error from `source()`, so those are opened by hand.
pub(crate) fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut stack: Vec<&(dyn std::error::Error + 'static)> = vec![e];
    while let Some(err) = stack.pop() {
        if let Some(t) = err.downcast_ref::<rustls::Error>() {
            return Some(t.to_string());
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                stack.push(inner);
            }
        }
        if let Some(next) = err.source() {
            stack.push(next);
        }
    }
    None
}

/// An error's chain as one line, without the URL reqwest would add.
fn chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

enum Attempt {
    Done(Response),
    Fatal(ImportError),
    Retry(String),
}

impl HttpSource {
    pub(crate) fn new(
        url: &str,
        auth: Option<Credentials>,
        roots: &[Vec<u8>],
        opts: &HttpOptions,
        cancel: CancelHandle,
    ) -> Result<Arc<Self>, ImportError> {
        let shown = redact_url(url);
        let mut certs = Vec::new();
        for der in roots {
            certs.push(reqwest::Certificate::from_der(der).map_err(|e| {
                ImportError::Credentials(format!("CA certificate: {}", e.without_url()))
            })?);
        }
        let mut b = Client::builder()
            .connect_timeout(opts.connect_timeout)
            // Blocking reqwest applies this to each read: an inactivity limit.
            .timeout(opts.read_timeout)
            .redirect(reqwest::redirect::Policy::limited(opts.max_redirects))
            .user_agent(concat!("virtkit-import/", env!("CARGO_PKG_VERSION")));
        if !certs.is_empty() {
            b = b.tls_certs_merge(certs);
        }
        let client = b.build().map_err(|e| ImportError::Transfer {
            url: shown.clone(),
            attempts: 0,
            reason: chain(e),
        })?;
        Ok(Arc::new(HttpSource {
            client,
            url: url.to_string(),
            shown,
            auth,
            retry: opts.retry.clone(),
            cancel,
        }))
    }

    /// The URL, redacted.
    pub(crate) fn shown(&self) -> &str {
        &self.shown
    }

    fn attempt(&self, range: Option<(u64, Option<u64>)>, if_range: Option<&str>) -> Attempt {
        let mut req = self.client.get(&self.url);
        if let Some(c) = &self.auth {
            req = req.basic_auth(&c.user, Some(&c.password));
        }
        if let Some((start, end)) = range {
            let v = match end {
                Some(e) => format!("bytes={start}-{e}"),
                None => format!("bytes={start}-"),
            };
            req = req.header(RANGE, v);
            if let Some(v) = if_range {
                req = req.header(IF_RANGE, v);
            }
        }
        match req.send() {
            Ok(resp) => {
                let status = resp.status();
                if status.is_success() {
                    Attempt::Done(resp)
                } else if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    Attempt::Fatal(ImportError::Unauthorized {
                        url: self.shown.clone(),
                        status: status.as_u16(),
                    })
                } else if status == StatusCode::REQUEST_TIMEOUT
                    || status == StatusCode::TOO_MANY_REQUESTS
                    || status.is_server_error()
                {
                    Attempt::Retry(format!("HTTP {}", status.as_u16()))
                } else {
                    Attempt::Fatal(ImportError::HttpStatus {
                        url: self.shown.clone(),
                        status: status.as_u16(),
                    })
                }
            }
            Err(e) => match tls_failure(&e) {
                Some(reason) => Attempt::Fatal(ImportError::Tls {
                    url: self.shown.clone(),
                    reason,
                }),
                None if e.is_redirect() => Attempt::Fatal(ImportError::Transfer {
                    url: self.shown.clone(),
                    attempts: 1,
                    reason: chain(e),
                }),
                None => Attempt::Retry(chain(e)),
            },
        }
    }

    /// Wait before retry `failures` (1-based); false when cancelled.
    fn pause(&self, failures: u32) -> bool {
        let until = std::time::Instant::now() + self.retry.backoff(failures);
        while std::time::Instant::now() < until {
            if self.cancel.is_cancelled() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        !self.cancel.is_cancelled()
    }

    /// GET with retries.
    fn get(
        &self,
        range: Option<(u64, Option<u64>)>,
        if_range: Option<&str>,
    ) -> Result<Response, ImportError> {
        let mut last = String::new();
        for n in 1..=self.retry.attempts.max(1) {
            if self.cancel.is_cancelled() {
                return Err(ImportError::Cancelled);
            }
            match self.attempt(range, if_range) {
                Attempt::Done(r) => return Ok(r),
                Attempt::Fatal(e) => return Err(e),
                Attempt::Retry(reason) => {
                    log::warn!("GET {} attempt {n}: {reason}", self.shown);
                    last = reason;
                    if n < self.retry.attempts && !self.pause(n) {
                        return Err(ImportError::Cancelled);
                    }
                }
            }
        }
        Err(ImportError::Transfer {
            url: self.shown.clone(),
            attempts: self.retry.attempts.max(1),
            reason: last,
        })
    }

    /// Open the body as a stream that resumes after drops.
    pub(crate) fn stream(self: &Arc<Self>) -> Result<HttpStream, ImportError> {
        let resp = self.get(None, None)?;
        let len = resp.content_length();
        let ranges = resp
            .headers()
            .get(ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
        let validator = resp
            .headers()
            .get(ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| resp.headers().get(LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(HttpStream {
            source: Arc::clone(self),
            resp: Some(resp),
            pos: 0,
            len,
            ranges,
            validator,
            failures: 0,
            resumes: 0,
        })
    }
}

/// The body of a GET, resumed with `Range` where the server allows it.
pub(crate) struct HttpStream {
    source: Arc<HttpSource>,
    resp: Option<Response>,
    pos: u64,
    /// `Content-Length`, if sent.
    pub len: Option<u64>,
    /// `Accept-Ranges: bytes`.
    pub ranges: bool,
    validator: Option<String>,
    failures: u32,
    /// Connections resumed so far.
    pub resumes: u32,
}

impl HttpStream {
    /// A random-access view of the same URL, if the server does ranges and
    /// told the length.
    pub(crate) fn ranged(&self) -> Option<HttpRanged> {
        match (self.ranges, self.len) {
            (true, Some(len)) => Some(HttpRanged {
                source: Arc::clone(&self.source),
                len,
                validator: self.validator.clone(),
            }),
            _ => None,
        }
    }

    fn fail(&self, reason: String) -> std::io::Error {
        std::io::Error::other(ImportError::Transfer {
            url: self.source.shown.clone(),
            attempts: self.failures,
            reason,
        })
    }

    /// After a drop at `pos`: reconnect from there, or say why not.
    fn resume(&mut self, reason: String) -> std::io::Result<()> {
        self.resp = None;
        self.failures += 1;
        log::warn!(
            "GET {}: dropped at byte {} ({reason})",
            self.source.shown,
            self.pos
        );
        if !self.ranges || self.failures >= self.source.retry.attempts {
            return Err(self.fail(reason));
        }
        if !self.source.pause(self.failures) {
            return Err(std::io::Error::other(ImportError::Cancelled));
        }
        let resp = self
            .source
            .get(Some((self.pos, None)), self.validator.as_deref())
            .map_err(std::io::Error::other)?;
        let start = resp
            .headers()
            .get(CONTENT_RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("bytes "))
            .and_then(|v| v.split('-').next())
            .and_then(|v| v.parse::<u64>().ok());
        if resp.status() != StatusCode::PARTIAL_CONTENT || start != Some(self.pos) {
            // If-Range failed: the server sent the whole (new) file.
            return Err(std::io::Error::other(ImportError::SourceChanged {
                url: self.source.shown.clone(),
            }));
        }
        self.resumes += 1;
        self.resp = Some(resp);
        Ok(())
    }
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if self.source.cancel.is_cancelled() {
                return Err(std::io::Error::other(ImportError::Cancelled));
            }
            let Some(resp) = self.resp.as_mut() else {
                return Ok(0);
            };
            match resp.read(buf) {
                Ok(0) => match self.len {
                    Some(len) if self.pos < len => {
                        self.resume(format!("body ended at byte {} of {len}", self.pos))?;
                    }
                    _ => {
                        self.resp = None;
                        return Ok(0);
                    }
                },
                Ok(n) => {
                    self.pos += n as u64;
                    self.failures = 0;
                    return Ok(n);
                }
                Err(e) => self.resume(e.to_string())?,
            }
        }
    }
}

/// Random access to an HTTP resource through `Range` requests.
pub(crate) struct HttpRanged {
    source: Arc<HttpSource>,
    len: u64,
    validator: Option<String>,
}

impl ReadAt for HttpRanged {
    fn fill_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let end = offset + buf.len() as u64 - 1;
        if end >= self.len {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
        }
        let mut failures = 0;
        loop {
            let mut resp = self
                .source
                .get(Some((offset, Some(end))), self.validator.as_deref())
                .map_err(std::io::Error::other)?;
            if resp.status() != StatusCode::PARTIAL_CONTENT {
                return Err(std::io::Error::other(ImportError::SourceChanged {
                    url: self.source.shown.clone(),
                }));
            }
            match resp.read_exact(buf) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    if failures >= self.source.retry.attempts {
                        return Err(std::io::Error::other(ImportError::Transfer {
                            url: self.source.shown.clone(),
                            attempts: failures,
                            reason: e.to_string(),
                        }));
                    }
                    if !self.source.pause(failures) {
                        return Err(std::io::Error::other(ImportError::Cancelled));
                    }
                }
            }
        }
    }

    /// Several range requests in flight, each on its own connection.
    fn concurrency(&self) -> usize {
        4
    }

    fn size(&self) -> std::io::Result<u64> {
        Ok(self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let r = RetryPolicy {
            attempts: 9,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(700),
        };
        let waits: Vec<u128> = (1..6).map(|n| r.backoff(n).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 400, 700, 700]);
    }
}
