//! Helpers shared by the engine's test binaries.

use std::path::{Path, PathBuf};

/// A model folder in `dir` holding the tiny MusicGen and CLIP under the
/// names the engines look for by default.
pub fn tiny_models(dir: &Path) -> PathBuf {
    let root = dir.join("models");
    std::fs::create_dir_all(&root).unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::os::unix::fs::symlink(fixtures.join("musicgen-tiny"), root.join("musicgen-small"))
        .unwrap();
    std::os::unix::fs::symlink(
        fixtures.join("clip-tiny"),
        root.join("clip-vit-base-patch32"),
    )
    .unwrap();
    root
}
