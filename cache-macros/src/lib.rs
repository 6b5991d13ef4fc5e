//! Procedural macros for [`cache-core`]: `#[cached]` caches the result of
//! an `async fn` (cache-aside, on Redis or in memory), and `#[invalidates]`
//! drops cached entries after an `async fn` that changes their data.
//!
//! Use them through `cache-core`, which re-exports both and hosts the runtime
//! the generated code calls; this crate needs no line in your `Cargo.toml`.
//!
//! ```ignore
//! use cache_core::{cached, invalidates};
//!
//! #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
//! async fn get_customer(db: &Db, id: u64) -> Result<Customer, DbError> {
//!     db.load(id).await // runs on a miss; Ok values are stored, errors never
//! }
//!
//! #[invalidates("customer:{customer.id}")]
//! async fn update_customer(db: &Db, customer: &Customer) -> Result<(), DbError> {
//!     db.save(customer).await // the key is deleted after the body, Ok or Err
//! }
//! ```
//!
//! Every argument of both macros, each with a runnable example, is in the
//! macros guide: the [`macros_guide`] page of `cache-core`'s documentation,
//! also readable as `cache-core/MACROS.md` in the repository. (This crate
//! can't depend on `cache-core`, so its examples are not compiled; the
//! guide's are.)
//!
//! [`cache-core`]: ../cache_core/index.html
//! [`macros_guide`]: ../cache_core/macros_guide/index.html

// Organised by phase, like `serde_derive` and `tracing-attributes`:
// `attr` parses the arguments (custom keywords) and detects duplicates;
// `template` parses key templates (`"{customer.id}"`); `func` recognises the
// function (`async fn`, or `#[async_trait]` output); `ctxt` accumulates
// errors so every one is reported, each on its span; `key` generates the key
// code both macros share; `cached` and `invalidates` validate and expand,
// one module per macro. On any error the macros emit the errors *and* the
// function unchanged, so callers of a mis-annotated function get no
// follow-up errors.

mod attr;
mod cached;
mod ctxt;
mod expand;
mod func;
mod invalidates;
mod key;
mod template;

use proc_macro::TokenStream;

/// Caches the result of an `async fn` (cache-aside).
///
/// ```ignore
/// use cache_core::cached;
///
/// #[cached(prefix = "customer", ttl = 3600, key = "{id}")]
/// async fn get_customer(db: &Db, id: u64) -> Result<Customer, DbError> {
///     db.load(id).await
/// }
/// ```
///
/// A call reads the key from the current cache; a hit returns the stored
/// value without running the body, a miss runs the body and stores its
/// result (`Ok` of a `Result`, `Some` of an `Option`). Concurrent misses of
/// one key run the body once per process.
///
/// The arguments (`prefix`, `ttl`, `key`, `skip`, `cache_none`, `none_ttl`,
/// `unless`, `cache`, `version`, `near`, `crate`, `no_companions`), the
/// generated `<name>_cache_key` companion and the compile-time errors are
/// described, each with a runnable example, in `cache-core`'s
/// [macros guide](../cache_core/macros_guide/index.html#cached).
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::expand(args.into(), &item.into()).into()
}

/// Invalidates cache entries after an `async fn` (a write) completes.
///
/// ```ignore
/// use cache_core::invalidates;
///
/// #[invalidates("customer:{customer.id}", prefix = "search")]
/// async fn update_customer(db: &Db, customer: &Customer) -> Result<(), DbError> {
///     db.save(customer).await
/// }
/// ```
///
/// The invalidation runs after the body, whether it returned `Ok` or `Err`,
/// and also when the future is dropped after the body started.
///
/// The arguments (key templates, `function(arguments)`, `prefix`, `cache`, `outbox`, `fail_closed`,
/// `crate`) are described, each with a runnable example, in `cache-core`'s
/// [macros guide](../cache_core/macros_guide/index.html#invalidates).
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    invalidates::expand(args.into(), &item.into()).into()
}
