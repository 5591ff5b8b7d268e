//! The manifest local mode runs: the same `AspenCluster` YAML file that
//! `kubectl apply` takes, read and validated, and read again whenever its
//! content changes.

use std::path::{Path, PathBuf};

use kube::api::TypeMeta;

use super::LocalError;
use crate::crd::AspenCluster;

/// A manifest is a few kilobytes; a file far larger is not one.
const MAX_MANIFEST_BYTES: u64 = 1024 * 1024;

fn read(path: &Path) -> Result<Vec<u8>, LocalError> {
    let invalid = |message: String| LocalError::Manifest {
        path: path.to_owned(),
        message,
    };
    let length = std::fs::metadata(path)
        .map_err(|e| invalid(e.to_string()))?
        .len();
    if length > MAX_MANIFEST_BYTES {
        return Err(invalid(format!(
            "{length} bytes; a manifest holds one AspenCluster of a few kilobytes"
        )));
    }
    std::fs::read(path).map_err(|e| invalid(e.to_string()))
}

fn parse(path: &Path, bytes: &[u8]) -> Result<AspenCluster, LocalError> {
    let invalid = |message: String| LocalError::Manifest {
        path: path.to_owned(),
        message,
    };
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(format!("not UTF-8: {e}")))?;
    let types: TypeMeta = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if types.api_version != "aspen.dev/v1alpha1" || types.kind != "AspenCluster" {
        return Err(invalid(format!(
            "holds a {} of {}; local mode runs one AspenCluster of aspen.dev/v1alpha1",
            types.kind, types.api_version
        )));
    }
    let cluster: AspenCluster = serde_saphyr::from_str(text).map_err(|e| invalid(e.to_string()))?;
    if cluster.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(invalid("metadata.name is missing".to_owned()));
    }
    cluster
        .spec
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    Ok(cluster)
}

/// The manifest file, watched for changes by content: a poll is one small
/// read, and unlike a modification time it cannot miss two writes within
/// the file system's time resolution.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    last: Vec<u8>,
    /// The last read failed; logged once until a read succeeds.
    unreadable: bool,
}

impl Watched {
    /// Load the manifest and start watching it.
    pub fn open(path: &Path) -> Result<(Self, AspenCluster), LocalError> {
        let bytes = read(path)?;
        let cluster = parse(path, &bytes)?;
        let watched = Watched {
            path: path.to_owned(),
            last: bytes,
            unreadable: false,
        };
        Ok((watched, cluster))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The manifest, when its content changed since the last poll. An
    /// unreadable or invalid file is reported and otherwise ignored: the
    /// cluster keeps running as the last good manifest says.
    pub fn poll(&mut self) -> Option<AspenCluster> {
        let bytes = match read(&self.path) {
            Ok(bytes) => bytes,
            Err(error) => {
                if !self.unreadable {
                    tracing::warn!(%error, "cannot read the manifest; keeping the last one");
                    self.unreadable = true;
                }
                return None;
            }
        };
        self.unreadable = false;
        if bytes == self.last {
            return None;
        }
        self.last = bytes;
        match parse(&self.path, &self.last) {
            Ok(cluster) => Some(cluster),
            Err(error) => {
                tracing::error!(%error, "the changed manifest is invalid; keeping the last one");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(path: &Path) -> Result<AspenCluster, LocalError> {
        Watched::open(path).map(|(_, cluster)| cluster)
    }

    fn manifest(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("cluster.yaml");
        std::fs::write(&path, text).expect("write manifest");
        path
    }

    const BASIC: &str = "apiVersion: aspen.dev/v1alpha1
kind: AspenCluster
metadata:
  name: basic
spec:
  replicas: 3
  storage:
    size: 1Gi
";

    #[test]
    fn the_example_manifests_load() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests/examples");
        for name in ["basic.yaml", "production.yaml", "sidecar.yaml"] {
            let cluster = load(&examples.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(cluster.spec.replicas >= 1, "{name}");
        }
    }

    #[test]
    fn other_kinds_and_invalid_specs_are_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let service = manifest(
            dir.path(),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\n",
        );
        let error = load(&service).expect_err("a Service is not a cluster");
        assert!(error.to_string().contains("Service"), "{error}");
        let zero = manifest(dir.path(), &BASIC.replace("replicas: 3", "replicas: 0"));
        let error = load(&zero).expect_err("zero replicas");
        assert!(error.to_string().contains("spec.replicas"), "{error}");
    }

    #[test]
    fn a_changed_manifest_is_seen_once_and_a_broken_one_ignored() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = manifest(dir.path(), BASIC);
        let (mut watched, cluster) = Watched::open(&path).expect("valid");
        assert_eq!(cluster.spec.replicas, 3);
        assert!(watched.poll().is_none(), "unchanged");
        manifest(dir.path(), &BASIC.replace("replicas: 3", "replicas: 5"));
        let changed = watched.poll().expect("changed");
        assert_eq!(changed.spec.replicas, 5);
        assert!(watched.poll().is_none(), "seen once");
        manifest(dir.path(), "spec: [");
        assert!(watched.poll().is_none(), "broken YAML is ignored");
        std::fs::remove_file(&path).expect("remove");
        assert!(watched.poll().is_none(), "a missing file is ignored");
        manifest(dir.path(), BASIC);
        assert_eq!(watched.poll().map(|c| c.spec.replicas), Some(3));
    }
}
