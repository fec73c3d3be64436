//! A target that appears under its final name only when complete: written
//! as `.<name>.virtkit-partial-<pid>` in the target's directory, fsynced,
//! then renamed. Dropped uncommitted (error, cancel, panic), it removes
//! itself, so a failed import never leaves a file that looks valid.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use crate::ImageError;

/// The temporary file behind a target under construction.
pub(crate) struct PartialFile {
    tmp: Option<PathBuf>,
    dst: PathBuf,
    file: File,
}

impl PartialFile {
    /// Create the temporary file beside `dst`, sized `size` (a hole).
    pub(crate) fn create(dst: &Path, size: u64) -> Result<Self, ImageError> {
        let dir = dst
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dst
            .file_name()
            .ok_or_else(|| ImageError::Target(format!("{} is not a file path", dst.display())))?;
        let tmp = dir.join(format!(
            ".{}.virtkit-partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(ImageError::Io)?;
        let partial = PartialFile {
            tmp: Some(tmp),
            dst: dst.to_path_buf(),
            file,
        };
        partial.file.set_len(size).map_err(ImageError::Io)?;
        Ok(partial)
    }

    /// The file to write into.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    /// Flush to disk and move into place under the final name.
    pub(crate) fn commit(mut self) -> Result<(), ImageError> {
        self.file.sync_all().map_err(ImageError::Io)?;
        if let Some(tmp) = &self.tmp {
            std::fs::rename(tmp, &self.dst).map_err(ImageError::Io)?;
        }
        self.tmp = None;
        Ok(())
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
