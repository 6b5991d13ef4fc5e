//! The macros guide (`cache-core/MACROS.md`, cache-core's `macros_guide`
//! page) is the one reference for the macros' arguments: every argument the
//! parser accepts must have a section there, and this crate's short docs,
//! which list the arguments' names, must name each of them too.

use std::path::Path;

/// The string literals of `const NAME: &[&str] = &[...];` in `src`.
fn listed(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("const {name}: &[&str] = &["))
        .unwrap_or_else(|| panic!("src/attr.rs defines {name}"));
    let body = &src[start..];
    let body = &body[body.find("= &[").unwrap() + 4..body.find("];").unwrap()];
    body.split(',')
        .map(|s| s.trim().trim_matches('"').to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The `## ...` section of the guide that starts with `heading`, up to the
/// next `## ` heading.
fn section<'a>(guide: &'a str, heading: &str) -> &'a str {
    let start = guide
        .find(&format!("\n## {heading}\n"))
        .unwrap_or_else(|| panic!("MACROS.md has a `## {heading}` section"));
    let rest = &guide[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    &rest[..end]
}

#[test]
fn every_argument_has_a_section_with_an_example_in_the_guide() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let attr = read(&root.join("src/attr.rs"));
    let guide = read(&root.join("../cache-core/MACROS.md"));
    let docs = read(&root.join("src/lib.rs"));

    for (list, heading) in [
        ("CACHED_ARGS", "`#[cached]`"),
        ("INVALIDATES_ARGS", "`#[invalidates]`"),
    ] {
        let section = section(&guide, heading);
        let args = listed(&attr, list);
        assert!(args.len() >= 3, "{list}: {args:?}");
        for arg in args {
            // A `### ` heading naming the argument, followed by an example.
            let heading_at = section
                .match_indices("\n### ")
                .map(|(i, _)| &section[i + 5..])
                .find(|h| {
                    let line = &h[..h.find('\n').unwrap_or(h.len())];
                    line.contains(&format!("`{arg}`"))
                        || line.contains(&format!("`{arg} "))
                        || line.contains(&format!("`{arg}("))
                })
                .unwrap_or_else(|| {
                    panic!("MACROS.md: no `### ` heading for {heading}'s argument `{arg}`")
                });
            let body = &heading_at[..heading_at.find("\n### ").unwrap_or(heading_at.len())];
            assert!(
                body.contains("```rust"),
                "MACROS.md: the section of {heading}'s `{arg}` has no example"
            );
            assert!(
                docs.contains(&format!("`{arg}`")),
                "src/lib.rs: the docs of {heading} don't name `{arg}`"
            );
        }
    }
}
