//! Reference binaries for virtkit (see `src/bin/`): `virtkit-run` boots a
//! tiny VM from a KubeVirt YAML spec, `virtkit-validate` checks documents.
//! This library target is empty; the binaries are the examples.
