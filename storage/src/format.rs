//! Disk image formats detected by their magic bytes, never by file name.

/// What an image (or a wrapper around one) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Format {
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// gzip-compressed content.
    Gzip,
    /// xz-compressed content.
    Xz,
    /// zstd-compressed content.
    Zstd,
    /// ISO 9660 (raw content).
    Iso,
    /// A tar archive.
    Tar,
    /// VMware VMDK (recognized, not converted).
    Vmdk,
    /// VirtualBox VDI (recognized, not converted).
    Vdi,
    /// Hyper-V VHDX (recognized, not converted).
    Vhdx,
    /// Virtual PC VHD (recognized, not converted).
    Vhd,
    /// Anything else: a raw disk.
    Raw,
}

/// Bytes [`detect`] wants to see (the ISO and tar magics sit deep).
pub const DETECT_LEN: usize = 0x8006;

/// Identify `head` (the first [`DETECT_LEN`] bytes or fewer) and, for VHD,
/// whose footer is at the end, `tail` (the last 512 bytes, if known).
pub fn detect(head: &[u8], tail: Option<&[u8]>) -> Format {
    let at = |off: usize, magic: &[u8]| head.get(off..off + magic.len()) == Some(magic);
    if at(0, b"QFI\xfb") {
        Format::Qcow2
    } else if at(0, &[0x1f, 0x8b]) {
        Format::Gzip
    } else if at(0, &[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else if at(0, &[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if at(0, b"KDMV") || at(0, b"# Disk DescriptorFile") {
        Format::Vmdk
    } else if at(0x40, &0xbeda_107fu32.to_le_bytes()) {
        Format::Vdi
    } else if at(0, b"vhdxfile") {
        Format::Vhdx
    } else if at(0, b"conectix") || tail.is_some_and(|t| t.starts_with(b"conectix")) {
        Format::Vhd
    } else if at(257, b"ustar") {
        Format::Tar
    } else if at(0x8001, b"CD001") {
        Format::Iso
    } else {
        Format::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(off: usize, magic: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; DETECT_LEN];
        v[off..off + magic.len()].copy_from_slice(magic);
        v
    }

    #[test]
    fn magics() {
        assert_eq!(detect(&with(0, b"QFI\xfb"), None), Format::Qcow2);
        assert_eq!(detect(&with(0, &[0x1f, 0x8b, 8]), None), Format::Gzip);
        assert_eq!(detect(&with(0, b"\xfd7zXZ\0"), None), Format::Xz);
        assert_eq!(
            detect(&with(0, &[0x28, 0xb5, 0x2f, 0xfd]), None),
            Format::Zstd
        );
        assert_eq!(detect(&with(0, b"KDMV"), None), Format::Vmdk);
        assert_eq!(
            detect(&with(0x40, &0xbeda_107fu32.to_le_bytes()), None),
            Format::Vdi
        );
        assert_eq!(detect(&with(0, b"vhdxfile"), None), Format::Vhdx);
        assert_eq!(detect(&[0u8; 512], Some(b"conectix\0\0")), Format::Vhd);
        assert_eq!(detect(&with(257, b"ustar"), None), Format::Tar);
        assert_eq!(detect(&with(0x8001, b"CD001"), None), Format::Iso);
        assert_eq!(detect(&[0u8; 10], None), Format::Raw);
        assert_eq!(detect(&[], None), Format::Raw);
    }
}
