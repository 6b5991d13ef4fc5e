//! Arguments named like things the generated code uses.
use cache_core::{Cache, cached, invalidates};

#[cached(prefix = "names", unless = *result == 0)]
#[allow(clippy::too_many_arguments)]
async fn names(key: u32, cache: u32, result: u32, prefix: u32, ttl: u32, body: u32, k: u32) -> u32 {
    let __cache_key = 0;
    let __cache_handle = 0;
    key + cache + result + prefix + ttl + body + k + __cache_key + __cache_handle
}

#[cached(prefix = "names_tpl", key = "{key}/{result}", cache = cache)]
async fn names_tpl(key: &str, cache: &Cache, result: u8) -> String {
    let _ = cache;
    format!("{key}{result}")
}

#[invalidates("names_tpl:{key}/{cache}/{output}")]
async fn guard(key: &str, cache: &str, output: u8) -> u8 {
    let __cache_guard = 1;
    let __cache_output = 2;
    let _ = (key, cache);
    output + __cache_guard + __cache_output
}

fn main() {
    let _ = names(1, 2, 3, 4, 5, 6, 7);
    let _ = names_tpl("a", &Cache::memory(), 1);
    let _ = guard("a", "b", 1);
}
