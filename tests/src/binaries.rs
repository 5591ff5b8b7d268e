//! Where the binaries under test are.
//!
//! A test executable lives in `target/<profile>/deps/`; the workspace's
//! binaries are in `target/<profile>/`, one level up. `cargo nextest run
//! --workspace` and `cargo test --workspace` build them before running any
//! test, because Cargo builds a package's binaries for its integration tests
//! and both `aspen-node` and `aspen-operator` have some (`node/tests/`,
//! `operator/tests/`). `cargo test -p aspen-tests` alone does not, so a
//! missing binary fails with the command that builds it. `ASPEN_BIN_DIR` points elsewhere
//! (a release build, say).

use std::path::PathBuf;

/// The environment variable naming another directory of binaries.
pub const BIN_DIR_VAR: &str = "ASPEN_BIN_DIR";

/// The directory holding the binaries under test.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        return PathBuf::from(dir);
    }
    let exe = std::env::current_exe().expect("the test executable has a path");
    let deps = exe.parent().expect("the test executable is in a directory");
    deps.parent()
        .expect("test executables live in target/<profile>/deps")
        .to_owned()
}

/// The path of binary `name`; panics with the command that builds it when
/// it is missing.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found. Build the binaries first: `cargo build -p aspen-node -p aspen-operator` \
         (`cargo nextest run --workspace` and `cargo test --workspace` do it; \
         `cargo test -p aspen-tests` alone does not), or set {BIN_DIR_VAR} to their directory",
        path.display()
    );
    path
}
