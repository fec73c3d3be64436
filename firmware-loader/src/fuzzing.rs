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

/// Parse `data` as the first packet of a TFTP transfer and, when it is an
/// accepted read request, map its file name into the boot directory.
/// Invariants: accepted options are within the RFCs' ranges; an accepted
/// path never climbs out of the directory.
pub fn tftp_request(data: &[u8]) {
    use crate::pxe::tftp::{parse_request, relative_path, BLKSIZE_RANGE, TIMEOUT_RANGE};
    let Ok(req) = parse_request(data) else { return };
    if let Some(b) = req.blksize {
        assert!(BLKSIZE_RANGE.contains(&b));
    }
    if let Some(t) = req.timeout {
        assert!(TIMEOUT_RANGE.contains(&t));
    }
    if let Ok(path) = relative_path(&req.filename) {
        assert!(path.is_relative());
        assert!(path
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_))));
    }
}

/// Parse `data` as `etc/table-loader`. Invariant: accepted commands encode
/// back to bytes that decode to the same commands.
pub fn table_loader(data: &[u8]) {
    use crate::acpi_loader::{decode, encode};
    let Ok(commands) = decode(data) else { return };
    let again: Vec<u8> = commands.iter().flat_map(encode).collect();
    assert_eq!(decode(&again).ok(), Some(commands));
}

/// Parse `data` as a PCI option ROM. Invariant: accepted images lie
/// inside the data, back to back from offset 0.
pub fn option_rom(data: &[u8]) {
    let Ok(images) = crate::option_rom::parse(data) else {
        return;
    };
    let mut next = 0;
    for image in images {
        assert_eq!(image.offset, next);
        assert!(image.len > 0 && image.offset + image.len <= data.len());
        next += image.len;
    }
}
