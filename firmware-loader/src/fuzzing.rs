//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the
//! corpus replay test, so both exercise the same code.

use crate::ovmf::volume;

/// Parse `data` as a CODE image (volumes tiling it) and as a VARS image
/// (an NV volume and its variable store). Invariants: an accepted code
/// image's volumes tile it exactly; an accepted store's variables lie
/// inside the image.
pub fn firmware_volume(data: &[u8]) {
    if let Ok(vols) = volume::code_volumes(data) {
        let total: u64 = vols.iter().map(|v| v.len).sum();
        assert_eq!(total, data.len() as u64, "volumes must tile the image");
    }
    if let Ok(store) = volume::var_store(data) {
        assert!(store.volume.len == data.len() as u64);
        let names: usize = store.variables.iter().map(|v| v.name.len()).sum();
        assert!(names <= data.len());
    }
}
