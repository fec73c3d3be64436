//! `contentType: archive`: a tar (optionally compressed) extracted into a
//! filesystem volume. Every entry's path is checked before anything is
//! written: absolute paths, `..` that climbs out, links that point out of
//! the target, and device nodes are refused with an error naming the entry
//! (not skipped silently). The sum of entry sizes is bounded by the
//! target size, which stops tar bombs.

use std::io::Read;
use std::path::{Component, Path};
use std::sync::atomic::AtomicBool;

use crate::write::check_cancel;
use crate::ImageError;

/// Why an entry is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    /// Absolute, or `..` climbing above the target directory.
    #[error("entry {0:?} escapes the target directory")]
    Escapes(String),
    /// A symlink or hard link whose target is outside the directory.
    #[error("link {entry:?} -> {target:?} points outside the target directory")]
    LinkEscapes {
        /// The entry.
        entry: String,
        /// Where it points.
        target: String,
    },
    /// A device node, FIFO or other special file.
    #[error("entry {0:?} is a special file (device, FIFO); not extracted")]
    Special(String),
}

/// Depth of `path` below the root after applying its components, or
/// `None` if it ever climbs above the root or is absolute.
fn depth_after(start: usize, path: &Path) -> Option<usize> {
    let mut depth = start;
    for c in path.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => depth = depth.checked_sub(1)?,
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(depth)
}

/// Check one entry: its path, and for links where they point (a symlink
/// relative to the entry's directory, a hard link relative to the root).
pub fn check_entry(
    path: &Path,
    kind: tar::EntryType,
    link: Option<&Path>,
) -> Result<(), EntryError> {
    let show = |p: &Path| p.display().to_string();
    let depth = depth_after(0, path).ok_or_else(|| EntryError::Escapes(show(path)))?;
    match kind {
        tar::EntryType::Symlink | tar::EntryType::Link => {
            let target = link.unwrap_or(Path::new(""));
            let base = if kind == tar::EntryType::Symlink {
                depth.saturating_sub(1)
            } else {
                0
            };
            if depth_after(base, target).is_none() {
                return Err(EntryError::LinkEscapes {
                    entry: show(path),
                    target: show(target),
                });
            }
        }
        tar::EntryType::Char
        | tar::EntryType::Block
        | tar::EntryType::Fifo
        | tar::EntryType::Continuous => return Err(EntryError::Special(show(path))),
        _ => {}
    }
    Ok(())
}

/// What an extraction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Extracted {
    /// Entries written.
    pub entries: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Extract the tar stream `reader` into directory `dir` (which exists),
/// refusing unsafe entries and content beyond `limit` bytes.
pub fn extract(
    reader: &mut dyn Read,
    dir: &Path,
    limit: u64,
    cancel: Option<&AtomicBool>,
) -> Result<Extracted, ArchiveError> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    let mut done = Extracted::default();
    for entry in archive.entries().map_err(ArchiveError::Read)? {
        check_cancel(cancel).map_err(ArchiveError::Image)?;
        let mut entry = entry.map_err(ArchiveError::Read)?;
        let path = entry.path().map_err(ArchiveError::Read)?.into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader | tar::EntryType::XHeader
        ) {
            continue;
        }
        let link = entry.link_name().map_err(ArchiveError::Read)?;
        check_entry(&path, kind, link.as_deref()).map_err(ArchiveError::Entry)?;
        let size = entry.header().size().map_err(ArchiveError::Read)?;
        done.bytes = done.bytes.saturating_add(size);
        if done.bytes > limit {
            return Err(ArchiveError::Image(ImageError::TooLarge {
                virtual_size: done.bytes,
                target_size: limit,
            }));
        }
        if !entry.unpack_in(dir).map_err(ArchiveError::Read)? {
            // tar's own guard fired (a path through a symlink, say).
            return Err(ArchiveError::Entry(EntryError::Escapes(
                path.display().to_string(),
            )));
        }
        done.entries += 1;
    }
    Ok(done)
}

/// An archive that could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Not a readable tar, or a write failed.
    #[error("tar: {0}")]
    Read(#[source] std::io::Error),
    /// An unsafe entry.
    #[error(transparent)]
    Entry(EntryError),
    /// Too large, or cancelled.
    #[error(transparent)]
    Image(ImageError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use tar::EntryType as T;

    #[test]
    fn entry_paths_and_links() {
        let ok = |p: &str, k, l: Option<&str>| check_entry(Path::new(p), k, l.map(Path::new));
        assert!(ok("a/b/c.img", T::Regular, None).is_ok());
        assert!(ok("./a/../b", T::Regular, None).is_ok());
        assert!(matches!(
            ok("../x", T::Regular, None),
            Err(EntryError::Escapes(_))
        ));
        assert!(matches!(
            ok("a/../../x", T::Regular, None),
            Err(EntryError::Escapes(_))
        ));
        assert!(matches!(
            ok("/etc/passwd", T::Regular, None),
            Err(EntryError::Escapes(_))
        ));
        assert!(ok("a/link", T::Symlink, Some("../b")).is_ok());
        assert!(matches!(
            ok("a/link", T::Symlink, Some("../../b")),
            Err(EntryError::LinkEscapes { .. })
        ));
        assert!(matches!(
            ok("link", T::Symlink, Some("/etc")),
            Err(EntryError::LinkEscapes { .. })
        ));
        assert!(ok("a/hard", T::Link, Some("a/file")).is_ok());
        assert!(matches!(
            ok("hard", T::Link, Some("../x")),
            Err(EntryError::LinkEscapes { .. })
        ));
        assert!(matches!(
            ok("dev", T::Block, None),
            Err(EntryError::Special(_))
        ));
    }
}
