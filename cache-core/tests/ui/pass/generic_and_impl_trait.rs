//! Generic functions, where clauses, `impl Trait` and reference arguments.
use std::fmt::Display;

use cache_core::cached;
use serde::Serialize;
use serde::de::DeserializeOwned;

#[cached(prefix = "show")]
async fn show<T: Serialize + Display + Send + Sync>(value: &T, times: usize) -> String {
    value.to_string().repeat(times)
}

#[cached(prefix = "parse", key = "{s}")]
async fn parse<T>(s: &str) -> Option<T>
where
    T: std::str::FromStr + Serialize + DeserializeOwned + Send,
{
    s.parse().ok()
}

#[cached(prefix = "len")]
async fn len(q: impl AsRef<str> + Serialize + Send, extra: &[u8]) -> usize {
    q.as_ref().len() + extra.len()
}

#[cached(prefix = "first", key = "{items.0}")]
async fn first<'a>(items: (&'a str, u8)) -> String {
    items.0.to_owned()
}

fn main() {
    let _ = show(&1u8, 2);
    let _ = parse::<u32>("1");
    let _ = len("abc", &[1, 2]);
    let _ = first(("a", 1));
    let _: String = show_cache_key(&&1u8, &2);
    let _: String = parse_cache_key::<u32>("1");
    let _: String = len_cache_key(&"abc", &[1u8, 2][..]);
}
