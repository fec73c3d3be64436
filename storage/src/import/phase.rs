//! DataVolume phases and progress, as CDI reports them.

use std::fmt;

/// `status.phase` of a DataVolume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Phase {
    /// Accepted, waiting (for scratch space, for instance).
    Pending,
    /// An import (http, registry, blank) is about to start.
    ImportScheduled,
    /// An import is copying.
    ImportInProgress,
    /// A clone is about to start.
    CloneScheduled,
    /// A clone is copying.
    CloneInProgress,
    /// An upload target exists; the server will take data for it.
    UploadScheduled,
    /// The upload server waits for (or is receiving) the data.
    UploadReady,
    /// Done: the target is complete.
    Succeeded,
    /// Stopped with a reason; no target that looks valid was left.
    Failed,
    /// State not known.
    Unknown,
}

impl Phase {
    /// The name CDI writes in `status.phase`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::ImportScheduled => "ImportScheduled",
            Phase::ImportInProgress => "ImportInProgress",
            Phase::CloneScheduled => "CloneScheduled",
            Phase::CloneInProgress => "CloneInProgress",
            Phase::UploadScheduled => "UploadScheduled",
            Phase::UploadReady => "UploadReady",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Unknown => "Unknown",
        }
    }

    /// Whether nothing more will happen.
    pub fn is_final(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One progress report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Progress {
    /// The phase now.
    pub phase: Phase,
    /// Bytes of the source read so far (before decompression), or guest
    /// bytes covered when converting from random access.
    pub done: u64,
    /// The total `done` runs to, when known (a `Content-Length`).
    pub total: Option<u64>,
    /// What is happening, for people (`"downloading to scratch"`, the
    /// failure reason); never a credential.
    pub message: String,
}

impl Progress {
    /// Percent done (0–100), when the total is known.
    pub fn percent(&self) -> Option<f64> {
        match (self.phase, self.total) {
            (Phase::Succeeded, _) => Some(100.0),
            (_, Some(t)) if t > 0 => Some((self.done as f64 * 100.0 / t as f64).min(100.0)),
            _ => None,
        }
    }

    /// The DataVolume `status` this progress corresponds to (`progress`
    /// as CDI writes it: `"45.20%"`, or `"N/A"` when the total is unknown).
    pub fn to_status(&self) -> virtkit_core::spec::datavolume::DataVolumeStatus {
        virtkit_core::spec::datavolume::DataVolumeStatus {
            phase: Some(self.phase.as_str().to_string()),
            progress: Some(match self.percent() {
                Some(p) => format!("{p:.2}%"),
                None => "N/A".to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_strings_as_cdi_writes_them() {
        let p = Progress {
            phase: Phase::ImportInProgress,
            done: 452,
            total: Some(1000),
            message: String::new(),
        };
        let s = p.to_status();
        assert_eq!(s.phase.as_deref(), Some("ImportInProgress"));
        assert_eq!(s.progress.as_deref(), Some("45.20%"));
        let unknown = Progress {
            total: None,
            ..p.clone()
        };
        assert_eq!(unknown.to_status().progress.as_deref(), Some("N/A"));
        let done = Progress {
            phase: Phase::Succeeded,
            ..unknown
        };
        assert_eq!(done.to_status().progress.as_deref(), Some("100.00%"));
        assert!(Phase::Failed.is_final() && !Phase::UploadReady.is_final());
    }
}
