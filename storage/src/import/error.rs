//! Why an import failed: one variant per distinct reason (ST-13), each
//! readable on its own. No variant ever carries a credential: URLs are
//! shown without user info or query string ([`redact_url`]).

use crate::matrix::{Content, Source};
use crate::ImageError;

/// An import that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The DataVolume is invalid; every problem with its path.
    #[error("invalid DataVolume:\n{}", .0.join("\n"))]
    Spec(Vec<String>),
    /// A referenced object does not exist (ST-8).
    #[error("{kind} {name:?} not found in namespace {namespace:?}")]
    NotFound {
        /// `Secret`, `ConfigMap` or `PersistentVolumeClaim`.
        kind: &'static str,
        /// Its name.
        name: String,
        /// The DataVolume's namespace.
        namespace: String,
    },
    /// A Secret or CA bundle is unusable (ST-9); names the key only.
    #[error("credentials: {0}")]
    Credentials(String),
    /// The server refused the credentials (HTTP 401/403, registry auth).
    #[error("access denied by {url}: HTTP {status}")]
    Unauthorized {
        /// The URL, redacted.
        url: String,
        /// 401 or 403.
        status: u16,
    },
    /// The TLS handshake failed (unknown CA, wrong host name, …).
    #[error("TLS with {url} failed: {reason}")]
    Tls {
        /// The URL, redacted.
        url: String,
        /// What the TLS stack said.
        reason: String,
    },
    /// The server answered with an error status that retries did not cure.
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        /// The URL, redacted.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The transfer failed (connection refused or dropped, body cut
    /// short) after every retry.
    #[error("transfer from {url} failed after {attempts} attempt(s): {reason}")]
    Transfer {
        /// The URL, redacted.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The source changed between a dropped connection and its resume.
    #[error("{url} changed during the download (ETag/Last-Modified differ); not resuming")]
    SourceChanged {
        /// The URL, redacted.
        url: String,
    },
    /// A ✗ cell of the support matrix (ST-11), refused before any write.
    #[error("{content:?} content of format {format} from a {origin:?} source is not supported")]
    Unsupported {
        /// The matrix column.
        origin: Source,
        /// `kubevirt` or `archive`.
        content: Content,
        /// What was detected, with its compression (`"qcow2+gz"`).
        format: String,
    },
    /// The image itself: corrupt, unsupported feature, too large, …
    #[error(transparent)]
    Image(#[from] ImageError),
    /// A tar entry that would land outside the target directory, or an
    /// otherwise unusable archive.
    #[error("archive: {0}")]
    Archive(String),
    /// The registry or image reference.
    #[error("registry: {0}")]
    Registry(String),
    /// Scratch space is needed but unusable (ST-18), or absent.
    #[error("scratch space: {0}")]
    Scratch(String),
    /// Not enough free scratch space within the wait (ST-19).
    #[error(
        "no scratch space: {needed} bytes needed, {free} free in {dir} after waiting {waited_s} s"
    )]
    NoScratchSpace {
        /// Bytes needed.
        needed: u64,
        /// Bytes free.
        free: u64,
        /// The scratch directory.
        dir: String,
        /// Seconds waited.
        waited_s: u64,
    },
    /// The target: wrong kind, too small a device (ST-21/ST-22), …
    #[error("target: {0}")]
    Target(String),
    /// A clone that cannot start (ST-14/ST-15).
    #[error("clone: {0}")]
    Clone(String),
    /// Cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
}

impl ImportError {
    /// A short machine-readable reason, as a DataVolume condition's
    /// `reason` would carry.
    pub fn reason(&self) -> &'static str {
        match self {
            ImportError::Spec(_) => "InvalidSpec",
            ImportError::NotFound { .. } => "NotFound",
            ImportError::Credentials(_) => "InvalidCredentials",
            ImportError::Unauthorized { .. } => "Unauthorized",
            ImportError::Tls { .. } => "TLSError",
            ImportError::HttpStatus { .. } => "HTTPError",
            ImportError::Transfer { .. } => "TransferFailed",
            ImportError::SourceChanged { .. } => "SourceChanged",
            ImportError::Unsupported { .. } => "Unsupported",
            ImportError::Image(ImageError::Cancelled) | ImportError::Cancelled => "Cancelled",
            ImportError::Image(ImageError::TooLarge { .. }) => "ImageTooLarge",
            ImportError::Image(ImageError::Corrupt(_)) => "CorruptImage",
            ImportError::Image(ImageError::Unsupported(_) | ImageError::UnsupportedFormat(_)) => {
                "UnsupportedFormat"
            }
            ImportError::Image(ImageError::Io(_)) => "IOError",
            ImportError::Image(ImageError::Target(_)) | ImportError::Target(_) => "TargetError",
            ImportError::Archive(_) => "ArchiveError",
            ImportError::Registry(_) => "RegistryError",
            ImportError::Scratch(_) | ImportError::NoScratchSpace { .. } => "ScratchSpace",
            ImportError::Clone(_) => "CloneError",
        }
    }

    /// Whether the caller cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.reason() == "Cancelled"
    }
}

impl From<std::io::Error> for ImportError {
    fn from(e: std::io::Error) -> Self {
        ImportError::Image(ImageError::Io(e))
    }
}

/// `url` without user info and without the query string (which may hold
/// a signature or token): safe for logs and errors.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, url),
    };
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    let mut out = String::new();
    if let Some(s) = scheme {
        out.push_str(s);
        out.push_str("://");
    }
    out.push_str(host);
    out.push_str(path);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_user_info_and_query() {
        assert_eq!(
            redact_url("https://user:hunter2@example.com:8443/a/b.qcow2?X-Sig=abc#f"),
            "https://example.com:8443/a/b.qcow2"
        );
        assert_eq!(redact_url("http://h/x"), "http://h/x");
        assert_eq!(redact_url("h:1"), "h:1");
        assert_eq!(
            redact_url("docker://u:p@reg/img:tag"),
            "docker://reg/img:tag"
        );
    }
}
