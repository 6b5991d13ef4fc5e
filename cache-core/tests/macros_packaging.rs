//! The macros guide is part of `cache-core`'s documentation: the file it
//! includes must be inside the crate, or a packaged `cache-core` (which
//! holds only its own directory) cannot build.

use std::path::{Component, Path};

#[test]
fn every_included_file_is_inside_the_crate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    let mut includes = 0;
    for (_, rest) in lib
        .match_indices("include_str!(\"")
        .map(|(i, _)| lib.split_at(i + 14))
    {
        let path = &rest[..rest.find('"').expect("a closed string literal")];
        includes += 1;
        let resolved = root.join("src").join(path);
        // Normalise `..` without touching the file system.
        let mut normal = std::path::PathBuf::new();
        for component in resolved.components() {
            match component {
                Component::ParentDir => {
                    normal.pop();
                }
                other => normal.push(other),
            }
        }
        assert!(
            normal.starts_with(root),
            "src/lib.rs includes {path}, outside the crate ({})",
            root.display()
        );
        assert!(
            normal.is_file(),
            "src/lib.rs includes {path}, which is missing"
        );
    }
    assert!(
        includes >= 1,
        "the macros guide is included with include_str!"
    );
}
