//! The runtime's layering, checked: no two of cache-core's source files
//! depend on each other, directly or through others. A file depends on
//! another when it names an item there (`crate::…`, `super::…`, `self::…`
//! paths, `use` trees included; names re-exported by `lib.rs` count as the
//! file that defines them). The crate root (which declares modules and
//! re-exports) and test modules are left out. A cycle is how a layer
//! starts reaching back into the one above it; the message names it.
//!
//! Files stay small, too: none is over 650 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MOST_LINES: usize = 650;

/// A module path (`["store", "ops"]`) → the file that holds it.
type Modules = BTreeMap<Vec<String>, PathBuf>;

fn source_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            source_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a file under `src/`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    match parts.last().map(String::as_str) {
        Some("mod") | Some("lib") => {
            parts.pop();
        }
        // `#[path = "private_keys.rs"] mod keys;` inside `__private`.
        Some("private_keys") => parts = vec!["__private".into(), "keys".into()],
        Some("private") => parts = vec!["__private".into()],
        _ => {}
    }
    parts
}

/// The code of a file without comments and without its test module.
fn code(text: &str) -> String {
    let cut = ["#[cfg(test)]", "#[cfg(all(test", "\nmod tests"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min();
    let text = match cut {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("//") { "" } else { line }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every path written after `anchor::` in `code`, with `use` groups
/// expanded: `crate::a::{b, c::d}` gives `a::b` and `a::c::d`.
fn paths_after(code: &str, anchor: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let needle = format!("{anchor}::");
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(at) = code[from..].find(&needle) {
        let start = from + at;
        from = start + needle.len();
        // A whole word only (`super::` not inside `xsuper::`).
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let (tree, _) = parse_tree(&code[from..]);
        out.extend(tree);
    }
    out
}

/// Parses a path tree at the start of `s` (`a::b`, `a::{b, c}`, `{a, b}`).
fn parse_tree(s: &str) -> (Vec<Vec<String>>, usize) {
    let s_trim = s.trim_start();
    let skipped = s.len() - s_trim.len();
    if let Some(rest) = s_trim.strip_prefix('{') {
        let mut out = Vec::new();
        let mut used = 1;
        let mut rest = rest;
        loop {
            let (tree, n) = parse_tree(rest);
            out.extend(tree);
            rest = &rest[n..];
            used += n;
            let trimmed = rest.trim_start();
            used += rest.len() - trimmed.len();
            rest = trimmed;
            if let Some(r) = rest.strip_prefix(',') {
                rest = r;
                used += 1;
                continue;
            }
            if rest.starts_with('}') {
                used += 1;
            }
            break;
        }
        return (out, skipped + used);
    }
    let ident: String = s_trim
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    if ident.is_empty() {
        return (vec![vec![]], skipped);
    }
    let after = &s_trim[ident.len()..];
    if let Some(rest) = after.strip_prefix("::") {
        let (subtrees, n) = parse_tree(rest);
        let out = subtrees
            .into_iter()
            .map(|mut p| {
                p.insert(0, ident.clone());
                p
            })
            .collect();
        return (out, skipped + ident.len() + 2 + n);
    }
    (vec![vec![ident.clone()]], skipped + ident.len())
}

/// The file a path resolves to: the longest prefix that is a module.
fn resolve(path: &[String], modules: &Modules) -> Option<PathBuf> {
    (1..=path.len())
        .rev()
        .find_map(|n| modules.get(&path[..n]).cloned())
}

#[test]
fn no_two_source_files_depend_on_each_other() {
    // `ARCHITECTURE_CHECK_SRC=dir` checks another tree (to see the check
    // fail on one with a cycle).
    let src = match std::env::var_os("ARCHITECTURE_CHECK_SRC") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
    };
    let mut files = Vec::new();
    source_files(&src, &mut files);
    files.sort();
    let modules: Modules = files
        .iter()
        .map(|f| (module_of(&src, f), f.clone()))
        .collect();
    let root = src.join("lib.rs");

    // Names `lib.rs` re-exports, to the file that defines them.
    let root_code = code(&std::fs::read_to_string(&root).unwrap());
    let mut reexports: BTreeMap<String, PathBuf> = BTreeMap::new();
    for line in root_code.split(';') {
        let Some(at) = line.find("pub use ") else {
            continue;
        };
        for path in parse_tree(&line[at + "pub use ".len()..]).0 {
            if let (Some(name), Some(file)) = (path.last(), resolve(&path, &modules)) {
                reexports.insert(name.clone(), file);
            }
        }
    }

    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    let mut too_long = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        if text.lines().count() > MOST_LINES {
            too_long.push(format!(
                "{} ({} lines)",
                file.display(),
                text.lines().count()
            ));
        }
        if *file == root {
            continue;
        }
        let here = module_of(&src, file);
        let is_mod_file = file.ends_with("mod.rs");
        // The module `super::` names: the parent of this file's module.
        let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
        let code = code(&text);
        let mut targets = BTreeSet::new();
        for path in paths_after(&code, "crate") {
            match path.first().and_then(|n| reexports.get(n)) {
                Some(file) if path.len() == 1 || resolve(&path, &modules).is_none() => {
                    targets.insert(file.clone());
                }
                _ => targets.extend(resolve(&path, &modules)),
            }
        }
        for path in paths_after(&code, "super") {
            let full: Vec<String> = parent.iter().cloned().chain(path).collect();
            targets.extend(resolve(&full, &modules));
        }
        for path in paths_after(&code, "self") {
            if !is_mod_file {
                continue;
            }
            let full: Vec<String> = here.iter().cloned().chain(path).collect();
            targets.extend(resolve(&full, &modules));
        }
        targets.remove(file);
        targets.remove(&root);
        edges.insert(file.clone(), targets);
    }

    // Depth-first search for a cycle.
    fn visit(
        node: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        state: &mut BTreeMap<PathBuf, u8>,
        stack: &mut Vec<PathBuf>,
    ) -> Option<Vec<PathBuf>> {
        match state.get(node) {
            Some(2) => return None,
            Some(1) => {
                let at = stack.iter().position(|n| n == node).unwrap();
                let mut cycle = stack[at..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            _ => {}
        }
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, edges, state, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for file in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(file, &edges, &mut state, &mut stack) {
            let names: Vec<String> = cycle
                .iter()
                .map(|f| f.strip_prefix(&src).unwrap().display().to_string())
                .collect();
            panic!(
                "cache-core's source files depend on each other in a cycle: {}",
                names.join(" -> ")
            );
        }
    }
    assert!(
        too_long.is_empty(),
        "files over {MOST_LINES} lines: {too_long:?}"
    );
}

#[test]
fn use_groups_are_expanded() {
    // The parser the check relies on: groups, nesting, `self`.
    let (paths, _) = parse_tree("a::{b, c::{d, e}, self}::ignored");
    assert_eq!(
        paths,
        vec![
            vec!["a".to_owned(), "b".to_owned()],
            vec!["a".to_owned(), "c".to_owned(), "d".to_owned()],
            vec!["a".to_owned(), "c".to_owned(), "e".to_owned()],
            vec!["a".to_owned(), "self".to_owned()],
        ]
    );
    let found = paths_after(
        "use crate::store::{Deadline, ops::Missed}; xcrate::y",
        "crate",
    );
    assert_eq!(found.len(), 2, "{found:?}");
    assert_eq!(found[1], ["store", "ops", "Missed"]);
}
