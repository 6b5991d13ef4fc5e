//! Compile-time behaviour of `#[cached]` and `#[invalidates]` (trybuild):
//! `ui/pass/*.rs` must compile (and run), `ui/fail/*.rs` must fail with
//! exactly the checked-in `.stderr`.
//!
//! Compiler messages change between Rust releases, so the `.stderr` files are
//! pinned to the toolchain they were generated with (below); on another
//! toolchain only the pass cases run. Regenerate with
//! `TRYBUILD=overwrite cargo test -p cache-core --test ui` and review the diff.

/// The toolchain the `.stderr` files were generated with.
const STDERR_TOOLCHAIN: &str = "rustc 1.95.";

fn rustc_version() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    let version = rustc_version();
    if version.starts_with(STDERR_TOOLCHAIN) {
        t.compile_fail("tests/ui/fail/*.rs");
    } else {
        eprintln!(
            "skipping tests/ui/fail: .stderr files are pinned to {STDERR_TOOLCHAIN}x, this is {version}"
        );
    }
}
