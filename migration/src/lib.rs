//! virtkit-migration: precopy live migration of a virtkit `Vm` to another
//! process or host.
//!
//! - [`protocol`]: the versioned wire format (see `DESIGN.md`), and the
//!   destination's stream parser, which needs no KVM.
//! - [`transport`]: TCP (bindable to a migration-network address) and unix
//!   sockets behind [`transport::MigrationStream`].
//! - [`source::migrate`] / [`destination::receive`] (feature `kvm`): the
//!   engine; [`guest_io`]: its copy-free path between guest RAM and a
//!   socket.
//! - [`model`]: options, KubeVirt phases, statistics, errors.
//! - [`limiter`]: `parallelMigrationsPerCluster` /
//!   `parallelOutboundMigrationsPerNode` queueing.

pub mod fuzzing;
pub mod limiter;
pub mod model;
pub mod protocol;
pub mod transport;

#[cfg(feature = "kvm")]
pub mod destination;
#[cfg(feature = "kvm")]
pub mod guest_io;
#[cfg(feature = "kvm")]
pub mod source;

pub use model::{
    MigrationError, MigrationOptions, MigrationPhase, MigrationStats, NonConvergencePolicy,
};
#[cfg(feature = "kvm")]
pub use source::LOCK_RECLAIM_TIMEOUT;
