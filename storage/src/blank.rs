//! `source.blank`: an empty raw image of exactly the requested size, as a
//! sparse file (no blocks allocated), created under a temporary name and
//! renamed into place.

use std::fs::OpenOptions;
use std::path::Path;

use crate::ImageError;

/// Create a sparse raw image of `size` bytes at `dst` (which must not
/// exist). A `size` of 0 is refused.
pub fn create_blank(dst: &Path, size: u64) -> Result<(), ImageError> {
    if size == 0 {
        return Err(ImageError::Target(
            "a blank image needs a size above 0".into(),
        ));
    }
    if dst.exists() {
        return Err(ImageError::Target(format!(
            "{} already exists",
            dst.display()
        )));
    }
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
    let result = (|| {
        let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.set_len(size)?;
        f.sync_all()?;
        std::fs::rename(&tmp, dst)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(ImageError::Io(e));
    }
    Ok(())
}
