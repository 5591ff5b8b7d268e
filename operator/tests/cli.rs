//! The `aspen-operator` executable as a user runs it: the CRD it prints is
//! the one `crds/` and the chart ship, and `local` refuses a bad manifest
//! with a message naming the file, before it creates anything.
//!
//! Being an integration test of this package, it also makes `cargo test` and
//! `cargo nextest run` build the `aspen-operator` binary, which the
//! multi-process tests in `tests/` start.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn operator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aspen-operator"))
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate is in the workspace root")
        .to_owned()
}

fn run(command: &mut Command) -> Output {
    command.output().expect("aspen-operator runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn crd_prints_the_definition_that_crds_and_the_chart_ship() {
    let output = run(operator().arg("crd"));
    assert!(output.status.success(), "{}", stderr(&output));
    let printed = String::from_utf8(output.stdout).expect("the CRD is UTF-8");
    for shipped in [
        "crds/aspencluster.yaml",
        "charts/aspen-operator/crds/aspencluster.yaml",
    ] {
        let file = std::fs::read_to_string(repo_root().join(shipped)).expect("the CRD file exists");
        assert!(
            printed == file,
            "{shipped} is stale: run `aspen-operator crd > {shipped}`"
        );
    }
}

/// Runs `aspen-operator local` on a file holding `manifest` (no file for
/// `None`) and returns its stderr, after checking that it failed, named the
/// file, and created no data directory.
fn local_refuses(manifest: Option<&str>) -> String {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("cluster.yaml");
    if let Some(manifest) = manifest {
        std::fs::write(&file, manifest).expect("the manifest is written");
    }
    let data = dir.path().join("data");
    let output = run(operator()
        .arg("local")
        .arg(&file)
        .arg("--data-dir")
        .arg(&data));
    assert!(!output.status.success(), "a bad manifest was accepted");
    assert!(!data.exists(), "a refused manifest left a data directory");
    let message = stderr(&output);
    assert!(
        message.contains(&file.display().to_string()),
        "the error does not name the file: {message}"
    );
    message
}

#[test]
fn local_refuses_a_manifest_that_is_not_an_aspen_cluster() {
    let message = local_refuses(Some(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
    ));
    assert!(message.contains("AspenCluster"), "{message}");
}

#[test]
fn local_refuses_a_spec_the_crd_would_reject() {
    let message = local_refuses(Some(
        "apiVersion: aspen.dev/v1alpha1\nkind: AspenCluster\nmetadata: {name: x}\n\
         spec: {replicas: 12, storage: {size: 1Gi}}\n",
    ));
    assert!(message.contains("spec.replicas"), "{message}");
}

#[test]
fn local_refuses_a_missing_manifest() {
    let message = local_refuses(None);
    assert!(message.contains("No such file"), "{message}");
}
