//! The VirtualMachineInstanceMigration model: options, phases as KubeVirt
//! reports them, statistics and errors.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use virtkit_core::spec::cluster::EffectiveMigrationConfig;
use virtkit_core::spec::vm::MigrationState;

/// What to do when the guest dirties memory faster than the link drains it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NonConvergencePolicy {
    /// Give up with [`MigrationError::NotConverging`]; the source runs on.
    Abort,
    /// Pause anyway and send what is left: the migration completes, with a
    /// downtime above the target.
    ForceSwitchover,
}

/// Tunables of one migration.
#[derive(Debug, Clone)]
pub struct MigrationOptions {
    /// Bytes per second; 0 = unlimited (`bandwidthPerMigration`).
    pub bandwidth_bytes_per_sec: u64,
    /// Pause when the rest can be sent within this.
    pub max_downtime: Duration,
    /// Seconds per GiB of guest memory before cancel (`completionTimeoutPerGiB`).
    pub completion_timeout_per_gib: u64,
    /// Cancel when the remaining data has not shrunk for this long.
    pub progress_timeout: Duration,
    /// Precopy passes before the non-convergence policy applies.
    pub max_iterations: u32,
    /// See [`NonConvergencePolicy`].
    pub on_non_convergence: NonConvergencePolicy,
    /// Shared secret; both sides must hold the same bytes.
    pub secret: Vec<u8>,
    /// Hash all guest RAM at the pause and compare on the destination
    /// (costs downtime: about 50 ms per GiB).
    pub verify_checksum: bool,
}

impl MigrationOptions {
    /// Options from cluster limits (`liveMigrationConfig` or
    /// `kubevirt-config`), with a 100 ms downtime target.
    pub fn from_config(c: &EffectiveMigrationConfig, secret: Vec<u8>) -> Self {
        MigrationOptions {
            bandwidth_bytes_per_sec: c.bandwidth_bytes_per_sec,
            max_downtime: Duration::from_millis(100),
            completion_timeout_per_gib: c.completion_timeout_per_gib,
            progress_timeout: Duration::from_secs(c.progress_timeout),
            max_iterations: 30,
            on_non_convergence: NonConvergencePolicy::Abort,
            secret,
            verify_checksum: false,
        }
    }
}

impl Default for MigrationOptions {
    /// KubeVirt's defaults (64Mi/s, 800 s/GiB, 150 s), no secret.
    fn default() -> Self {
        let cfg = virtkit_core::spec::cluster::MigrationConfig::default().effective();
        match cfg {
            Some(c) => Self::from_config(&c, Vec::new()),
            None => MigrationOptions {
                bandwidth_bytes_per_sec: 64 << 20,
                max_downtime: Duration::from_millis(100),
                completion_timeout_per_gib: 800,
                progress_timeout: Duration::from_secs(150),
                max_iterations: 30,
                on_non_convergence: NonConvergencePolicy::Abort,
                secret: Vec::new(),
                verify_checksum: false,
            },
        }
    }
}

/// VirtualMachineInstanceMigration phases, as KubeVirt reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum MigrationPhase {
    /// Created, waiting for a limiter slot.
    Pending,
    /// Connecting to the target.
    Scheduling,
    /// Connected.
    Scheduled,
    /// Handshake: target checking version, layout and secret.
    PreparingTarget,
    /// Target accepted.
    TargetReady,
    /// Memory being copied.
    Running,
    /// Guest resumed on the target.
    Succeeded,
    /// Ended without moving the guest; the source runs on.
    Failed,
}

/// Serialize a duration as fractional seconds.
pub fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Where the downtime went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Downtime {
    /// Stopping the vCPUs.
    #[serde(serialize_with = "secs")]
    pub pause: Duration,
    /// The final memory pass.
    #[serde(serialize_with = "secs")]
    pub final_copy: Duration,
    /// vCPU and clock state, checksum, and the target's confirm.
    #[serde(serialize_with = "secs")]
    pub state_transfer: Duration,
    /// From pause to the commit.
    #[serde(serialize_with = "secs")]
    pub total: Duration,
}

/// Statistics of one migration (source side).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct MigrationStats {
    /// Bytes written to the connection.
    pub bytes_sent: u64,
    /// Pages sent with their bytes.
    pub pages_sent: u64,
    /// Pages sent as zero markers.
    pub zero_pages: u64,
    /// Bytes of migrating disks sent as data (`BlockMigration`; runs
    /// that read as zero go as markers).
    pub disk_bytes_sent: u64,
    /// Precopy passes, including the final one.
    pub iterations: u32,
    /// Pages dirtied per second in the last pass.
    pub dirty_rate_pages_per_sec: f64,
    /// Measured throughput, bytes per second.
    pub bandwidth_bytes_per_sec: f64,
    /// Wall time from start to end.
    #[serde(serialize_with = "secs")]
    pub total_time: Duration,
    /// Downtime split.
    pub downtime: Downtime,
    /// Guest RAM hash at the pause, if computed.
    pub checksum: Option<u64>,
}

/// A finished migration, as the VMI status would show it.
#[derive(Debug, Clone, Serialize)]
pub struct MigrationRecord {
    /// Migration UID.
    pub uid: String,
    /// Final phase.
    pub phase: MigrationPhase,
    /// RFC 3339.
    pub start_timestamp: String,
    /// RFC 3339.
    pub end_timestamp: String,
    /// Why it failed.
    pub failure: Option<String>,
    /// Numbers.
    pub stats: MigrationStats,
    /// `host:port` of the target.
    pub target_address: String,
}

impl MigrationRecord {
    /// The VMI `status.migrationState` for this migration.
    pub fn migration_state(&self) -> MigrationState {
        MigrationState {
            completed: Some(self.phase == MigrationPhase::Succeeded),
            failed: Some(self.phase == MigrationPhase::Failed),
            start_timestamp: Some(self.start_timestamp.clone()),
            end_timestamp: Some(self.end_timestamp.clone()),
            migration_uid: Some(self.uid.clone()),
            target_node_address: Some(self.target_address.clone()),
            ..MigrationState::default()
        }
    }
}

/// RFC 3339 time, seconds precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Why a migration failed. In every case the source VM is running again
/// and the target discarded what it received.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    /// The connection failed.
    #[error("connection: {0}")]
    Connection(#[source] std::io::Error),
    /// The peer sent something invalid.
    #[error(transparent)]
    Protocol(#[from] crate::protocol::ProtocolError),
    /// The target refused (version, layout, secret).
    #[error("target refused the migration: {0}")]
    Rejected(String),
    /// The peer cancelled.
    #[error("peer cancelled: {0}")]
    PeerCancelled(String),
    /// Cancelled through the handle.
    #[error("cancelled")]
    Cancelled,
    /// `progressTimeout` passed without the remaining data shrinking.
    #[error("no progress for {0:?} (progressTimeout)")]
    ProgressTimeout(Duration),
    /// `completionTimeoutPerGiB` × GiB passed.
    #[error("not completed within {0:?} (completionTimeoutPerGiB)")]
    CompletionTimeout(Duration),
    /// The guest dirties memory faster than the link drains it.
    #[error("not converging: {dirty_pages} pages still dirty after {iterations} passes at {bandwidth_mib_s:.1} MiB/s")]
    NotConverging {
        /// Passes made.
        iterations: u32,
        /// Pages left.
        dirty_pages: u64,
        /// Measured bandwidth.
        bandwidth_mib_s: f64,
    },
    /// Memory checksums differ.
    #[error("memory checksum mismatch: source {source_sum:#x}, target {target:#x}")]
    ChecksumMismatch {
        /// Source hash.
        source_sum: u64,
        /// Target hash.
        target: u64,
    },
    /// The VM could not be paused, saved, restored or resumed.
    #[cfg(feature = "kvm")]
    #[error("VM: {0}")]
    Vm(#[from] virtkit_core::runtime::RuntimeError),
    /// The VM was not in a state that can migrate.
    #[error("{0}")]
    Precondition(String),
    /// A migrating disk could not be read (source) or written (target).
    #[error("disk {id}: {source}")]
    Disk {
        /// The disk's id.
        id: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The migration failed after the source handed its disk locks over,
    /// and the source, running again, could not take them back within
    /// [`LOCK_RECLAIM_TIMEOUT`](crate::LOCK_RECLAIM_TIMEOUT): the target
    /// (or a third party) still holds them. Writes to those disks fail
    /// until [`Vm::take_locks`](virtkit_core::runtime::Vm::take_locks)
    /// succeeds.
    #[cfg(feature = "kvm")]
    #[error(
        "{cause}; the source runs again, but its disk locks are still held elsewhere: {reclaim}"
    )]
    LocksNotReclaimed {
        /// Why the migration failed.
        cause: Box<MigrationError>,
        /// Why the locks could not be taken back.
        reclaim: virtkit_core::runtime::RuntimeError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(phase: MigrationPhase, failure: Option<&str>) -> MigrationRecord {
        MigrationRecord {
            uid: "mig-1".into(),
            phase,
            start_timestamp: rfc3339(SystemTime::UNIX_EPOCH),
            end_timestamp: rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(90)),
            failure: failure.map(str::to_string),
            stats: MigrationStats {
                downtime: Downtime {
                    pause: Duration::from_millis(1),
                    final_copy: Duration::from_millis(2),
                    state_transfer: Duration::from_millis(3),
                    total: Duration::from_millis(6),
                },
                ..MigrationStats::default()
            },
            target_address: "10.0.0.2:4444".into(),
        }
    }

    #[test]
    fn a_record_becomes_the_vmi_migration_state() {
        let ok = record(MigrationPhase::Succeeded, None).migration_state();
        assert_eq!((ok.completed, ok.failed), (Some(true), Some(false)));
        assert_eq!(ok.start_timestamp.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(ok.end_timestamp.as_deref(), Some("1970-01-01T00:01:30Z"));
        assert_eq!(ok.migration_uid.as_deref(), Some("mig-1"));
        assert_eq!(ok.target_node_address.as_deref(), Some("10.0.0.2:4444"));
        let failed = record(MigrationPhase::Failed, Some("cancelled")).migration_state();
        assert_eq!((failed.completed, failed.failed), (Some(false), Some(true)));
    }

    #[test]
    fn statistics_serialize_the_downtime_split_in_seconds() {
        let v = serde_json::to_value(record(MigrationPhase::Succeeded, None)).unwrap();
        let d = &v["stats"]["downtime"];
        assert_eq!(d["pause"], 0.001);
        assert_eq!(d["final_copy"], 0.002);
        assert_eq!(d["state_transfer"], 0.003);
        assert_eq!(d["total"], 0.006);
        assert_eq!(v["phase"], "Succeeded");
    }
}
