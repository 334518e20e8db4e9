//! The shared STL models (`../shared/fixtures/stl`, next to the repository).

use std::path::PathBuf;

/// The fixtures directory.
pub fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/fixtures/stl")
}

/// The bytes of fixture `name`, e.g. `torus.STL`.
pub fn stl(name: &str) -> Vec<u8> {
    let path = dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}
