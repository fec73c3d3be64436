//! virtkit-storage — CDI-style disk image import: http(s), registry, upload, clone, blank; format detection, qcow2 to raw, scratch space.
//!
//! **Status: not implemented yet.** This crate exists so the workspace has
//! its final shape and dependency direction; it exports nothing. The work
//! is tracked as issue 4; see `docs/SPEC-COVERAGE.md` for what is done.
