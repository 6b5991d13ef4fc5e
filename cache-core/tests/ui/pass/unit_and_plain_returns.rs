//! `()`, plain values, type aliases, early returns and `?`, `_` arguments.
use cache_core::cached;

type MyResult<T> = Result<T, String>;

#[cached(prefix = "warm")]
async fn warm() {}

#[cached(prefix = "plain")]
async fn plain(id: u64) -> (u64, String) {
    (id, id.to_string())
}

#[cached(prefix = "alias", key = "{id}")]
async fn alias(id: u64) -> MyResult<u64> {
    Ok(id)
}

#[cached(prefix = "early", key = "{id}")]
async fn early_return(id: u64) -> Result<u64, String> {
    if id == 0 {
        return Err("zero".into());
    }
    let parsed: u64 = "5".parse().map_err(|_| "bad".to_owned())?;
    Ok(parsed + id)
}

/// Not `Serialize`: fine as a `_` argument, which is never in the key.
struct Handle;

#[cached(prefix = "wild")]
async fn wildcard(_: Handle, id: u64) -> u64 {
    id
}

fn main() {
    let _ = (warm(), plain(1), alias(1), early_return(1), wildcard(Handle, 1));
    assert_eq!(wildcard_cache_key(&1).len(), "wild:".len() + 32);
}
