//! `()`, plain values, `io::Result`-style aliases with one argument.
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

fn main() {
    let _ = (warm(), plain(1), alias(1), early_return(1));
}
