//! The seed's import support matrix (printed eight times, identically, in
//! seed 003: §2.3.1 … §2.26.5) and its scratch-space reasons (§2.24.3),
//! exactly as written — including where the two disagree (see
//! [`contradictions`]).

/// Where the image comes from (the matrix columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Source {
    /// Plain HTTP.
    Http,
    /// HTTPS.
    Https,
    /// HTTP with basic authentication.
    HttpBasicAuth,
    /// A container registry.
    Registry,
    /// The upload server.
    Upload,
}

/// What the DataVolume holds (`contentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Content {
    /// A disk image (`kubevirt`).
    Kubevirt,
    /// A tar extracted into a filesystem volume (`archive`).
    Archive,
}

/// The file format of the matrix rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MatrixFormat {
    /// qcow2.
    Qcow2,
    /// qcow2, gzip-compressed.
    Qcow2Gz,
    /// qcow2, xz-compressed.
    Qcow2Xz,
    /// Raw (ISO counts as raw).
    Raw,
    /// Raw, gzip-compressed.
    RawGz,
    /// Raw, xz-compressed.
    RawXz,
    /// A tar archive.
    Tar,
}

/// When scratch space is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Scratch {
    /// Never (no star).
    Never,
    /// Always (`*`).
    Always,
    /// Only with a custom CA (`**`).
    IfCustomCa,
}

/// One cell of the matrix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Cell {
    /// ✓ or ✗.
    pub supported: bool,
    /// The star, if supported.
    pub scratch: Scratch,
}

const fn cell(supported: bool, scratch: Scratch) -> Cell {
    Cell { supported, scratch }
}

/// The cell for `content` × `source` × `format`, as the seed prints it.
/// Rows that do not match the content type (a TAR under `kubevirt`, a
/// QCOW2 under `archive`) are not in the table: `None`.
pub fn seed_matrix(content: Content, source: Source, format: MatrixFormat) -> Option<Cell> {
    use MatrixFormat::*;
    use Scratch::*;
    use Source::*;
    let yes = |s| Some(cell(true, s));
    let no = Some(cell(false, Never));
    match (content, format) {
        (Content::Kubevirt, Qcow2) => match source {
            Http | HttpBasicAuth => yes(Never),
            Https => yes(IfCustomCa),
            Registry | Upload => yes(Always),
        },
        (Content::Kubevirt, Qcow2Gz | Qcow2Xz) => match source {
            Registry => no,
            _ => yes(Always),
        },
        (Content::Kubevirt, Raw) => match source {
            Registry | Upload => yes(Always),
            _ => yes(Never),
        },
        (Content::Kubevirt, RawGz | RawXz) => match source {
            Registry => no,
            Upload => yes(Always),
            _ => yes(Never),
        },
        (Content::Archive, Tar) => match source {
            Registry | Upload => no,
            _ => yes(Never),
        },
        _ => None,
    }
}

/// Why an operation needs scratch space (§2.24.3), or `None`.
pub fn scratch_reason(source: Source, content: Content, custom_ca: bool) -> Option<&'static str> {
    match (source, content) {
        (Source::Registry, _) => {
            Some("registry import: download, unpack the layers to find the disk file, then convert")
        }
        (Source::Upload, _) => {
            Some("upload: the converter cannot read stdin, so the body is stored first")
        }
        (Source::Http | Source::Https | Source::HttpBasicAuth, Content::Archive) => {
            Some("HTTP import of an archive: the converter cannot unpack archives")
        }
        (Source::HttpBasicAuth, _) => {
            Some("HTTP import with authentication: the converter cannot authenticate")
        }
        (Source::Https, _) if custom_ca => {
            Some("HTTP import with a custom certificate: the converter cannot use a custom CA")
        }
        _ => None,
    }
}

/// Cells where the matrix and the §2.24.3 reasons disagree, kept visible
/// as the digest asks (its §11, items 1–3): `(content, source, format,
/// custom_ca)` where the matrix says no scratch but a reason says scratch.
pub fn contradictions() -> Vec<(Content, Source, MatrixFormat, bool)> {
    use MatrixFormat::*;
    let mut v = Vec::new();
    for content in [Content::Kubevirt, Content::Archive] {
        for source in [
            Source::Http,
            Source::Https,
            Source::HttpBasicAuth,
            Source::Registry,
            Source::Upload,
        ] {
            for format in [Qcow2, Qcow2Gz, Qcow2Xz, Raw, RawGz, RawXz, Tar] {
                for custom_ca in [false, true] {
                    let Some(c) = seed_matrix(content, source, format) else {
                        continue;
                    };
                    if !c.supported || (source != Source::Https && custom_ca) {
                        continue;
                    }
                    let matrix_scratch = match c.scratch {
                        Scratch::Never => false,
                        Scratch::Always => true,
                        Scratch::IfCustomCa => custom_ca,
                    };
                    if !matrix_scratch && scratch_reason(source, content, custom_ca).is_some() {
                        v.push((content, source, format, custom_ca));
                    }
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use MatrixFormat::*;
    use Source::*;

    #[test]
    fn the_seed_table_cell_by_cell() {
        let s = |c, src, f| seed_matrix(c, src, f).map(|c| (c.supported, c.scratch));
        let k = Content::Kubevirt;
        // Row "kubevirt (QCOW2)".
        assert_eq!(s(k, Http, Qcow2), Some((true, Scratch::Never)));
        assert_eq!(s(k, Https, Qcow2), Some((true, Scratch::IfCustomCa)));
        assert_eq!(s(k, HttpBasicAuth, Qcow2), Some((true, Scratch::Never)));
        assert_eq!(s(k, Registry, Qcow2), Some((true, Scratch::Always)));
        assert_eq!(s(k, Upload, Qcow2), Some((true, Scratch::Always)));
        for f in [Qcow2Gz, Qcow2Xz] {
            for src in [Http, Https, HttpBasicAuth, Upload] {
                assert_eq!(s(k, src, f), Some((true, Scratch::Always)), "{src:?} {f:?}");
            }
            assert_eq!(s(k, Registry, f), Some((false, Scratch::Never)));
        }
        // Row "kubevirt (RAW)".
        for src in [Http, Https, HttpBasicAuth] {
            for f in [Raw, RawGz, RawXz] {
                assert_eq!(s(k, src, f), Some((true, Scratch::Never)), "{src:?} {f:?}");
            }
        }
        assert_eq!(s(k, Registry, Raw), Some((true, Scratch::Always)));
        assert_eq!(s(k, Registry, RawGz), Some((false, Scratch::Never)));
        assert_eq!(s(k, Registry, RawXz), Some((false, Scratch::Never)));
        for f in [Raw, RawGz, RawXz] {
            assert_eq!(s(k, Upload, f), Some((true, Scratch::Always)));
        }
        // Row "archive".
        let a = Content::Archive;
        for src in [Http, Https, HttpBasicAuth] {
            assert_eq!(s(a, src, Tar), Some((true, Scratch::Never)));
        }
        assert_eq!(s(a, Registry, Tar), Some((false, Scratch::Never)));
        assert_eq!(s(a, Upload, Tar), Some((false, Scratch::Never)));
        // Not in the table.
        assert_eq!(s(k, Http, Tar), None);
        assert_eq!(s(a, Http, Qcow2), None);
    }

    #[test]
    fn scratch_reasons_and_the_seeds_own_contradictions() {
        assert!(scratch_reason(Registry, Content::Kubevirt, false).is_some());
        assert!(scratch_reason(Upload, Content::Kubevirt, false).is_some());
        assert!(scratch_reason(Http, Content::Archive, false).is_some());
        assert!(scratch_reason(HttpBasicAuth, Content::Kubevirt, false).is_some());
        assert!(scratch_reason(Https, Content::Kubevirt, true).is_some());
        assert!(scratch_reason(Https, Content::Kubevirt, false).is_none());
        assert!(scratch_reason(Http, Content::Kubevirt, false).is_none());
        let c = contradictions();
        // Digest §11: (1) basic-auth QCOW2 and RAW without `*`,
        // (2) HTTP TAR without `*`, (3) HTTPS RAW with a custom CA.
        assert!(c.contains(&(Content::Kubevirt, HttpBasicAuth, Qcow2, false)));
        assert!(c.contains(&(Content::Kubevirt, HttpBasicAuth, Raw, false)));
        assert!(c.contains(&(Content::Archive, Http, Tar, false)));
        assert!(c.contains(&(Content::Kubevirt, Https, Raw, true)));
        assert!(
            !c.contains(&(Content::Kubevirt, Https, Qcow2, true)),
            "`**` agrees with the reason"
        );
    }
}
