//! virtkit-migration — Precopy live migration: versioned wire protocol, TCP/unix transports, dirty-page iteration, bandwidth cap, timeouts, cancel.
//!
//! **Status: not implemented yet.** This crate exists so the workspace has
//! its final shape and dependency direction; it exports nothing. The work
//! is tracked as issue 6; see `docs/SPEC-COVERAGE.md` for what is done.
