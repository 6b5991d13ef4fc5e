//! Attributes, docs, visibility and `Send`-ness survive the macro.
#![deny(deprecated)]

use cache_core::cached;

/// Documented.
#[cached(prefix = "old")]
#[deprecated(note = "use new")]
#[allow(dead_code)]
pub async fn old(id: u64) -> u64 {
    id
}

#[cached(prefix = "kept")]
#[must_use = "the value matters"]
pub(crate) async fn kept(id: u64) -> u64 {
    id
}

fn assert_send<T: Send>(t: T) -> T {
    t
}

#[allow(deprecated)]
fn main() {
    let _ = assert_send(old(1));
    let _ = assert_send(kept(1));
}
