//! `source.blank`: an empty raw image of exactly the requested size, as a
//! sparse file (no blocks allocated), created under a temporary name and
//! renamed into place.

use std::path::Path;

use crate::partial::PartialFile;
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
    PartialFile::create(dst, size)?.commit()
}
