//! Procedural macros for [`cache-core`]: `#[cached]` and `#[invalidates]`.
//!
//! Use them through `cache-core`, which re-exports both
//! (`use cache_core::{cached, invalidates};`) and hosts the runtime the
//! generated code calls (`::cache_core::__private`, or the path given with
//! `crate = ...`). This crate can't depend on `cache-core`, so the examples
//! here are not compiled; the guide in `cache-core` (`cache-core/MACROS.md`,
//! included in its documentation) has the same examples as runnable
//! doctests (one per argument).
//!
//! The crate is organised by phase, like `serde_derive` and
//! `tracing-attributes`:
//!
//! | module | phase |
//! |---|---|
//! | `attr` | argument parsing (custom keywords), duplicate detection |
//! | `template` | key template parsing (`"{customer.id}"`) |
//! | `func` | what the function looks like (`async fn`, or `#[async_trait]` output) |
//! | `ctxt` | error accumulation: every error is reported, each on its span |
//! | `key` | key code generation shared by both macros |
//! | `cached`, `invalidates` | validation and expansion, one module per macro |
//!
//! On any error the macros emit the errors *and* the function unchanged, so
//! callers of a mis-annotated function get no follow-up errors.
//!
//! [`cache-core`]: ../cache_core/index.html

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
/// A call computes the key, reads it from the current [`Cache`]; on a hit it
/// returns the stored value without running the body; on a miss it runs the
/// body and stores the result. Concurrent callers of one missing key run the
/// body once per process (single-flight); the others wait for that result.
/// With no cache installed, the function simply runs (a warning is logged
/// once).
///
/// # What is stored
///
/// Chosen from the **last path segment of the written return type**:
///
/// | return type | stored | passed through, never stored |
/// |---|---|---|
/// | `Result<T, E>` (also `io::Result<T>`, `anyhow::Result<T>`) | `Ok(T)` | `Err(E)` |
/// | `Option<T>` | `Some(T)` | `None` (stored too with `cache_none`) |
/// | anything else `T` | `T` | |
///
/// The stored payload (`T`) must implement `Serialize + DeserializeOwned`;
/// otherwise compilation fails on the return type. The decision is
/// syntactic: a type alias such as `type Answer = Option<u32>` hides the
/// `Option` and the whole value is stored; spell out `Option<..>` or
/// `Result<..>` to get their behaviour.
///
/// # Arguments
///
/// ## `prefix = "..."` (required)
///
/// The first segment of every key: `"customer"` gives keys `customer:…`
/// (stored as `{namespace}:customer:…`). Non-empty; no `*`, `?`, `[`, `]`,
/// `:`, `\`, braces or whitespace. Statistics are kept per prefix, and
/// `#[invalidates(prefix = "...")]` drops a whole prefix.
///
/// ```ignore
/// #[cached(prefix = "settings")]
/// async fn settings() -> Settings { load_settings().await }
/// ```
///
/// ## `ttl = <seconds>` or `ttl = <Duration expression>`
///
/// How long an entry lives. An integer literal is whole seconds (at least 1);
/// any other expression must have type `std::time::Duration` and is evaluated
/// on each call (so it can be computed, e.g. "until midnight"). Without `ttl`
/// the cache's default TTL applies.
///
/// ```ignore
/// #[cached(prefix = "rates", ttl = 600)]
/// async fn rates() -> Rates { fetch_rates().await }
///
/// #[cached(prefix = "report", ttl = until_midnight())]
/// async fn daily_report() -> Report { build_report().await }
/// ```
///
/// ## `key = "template"`
///
/// The key after the prefix, built from arguments and field paths:
/// `"{id}"`, `"{customer.id}"`, `"{tenant}:{page}"`, `"{pair.0}"`. Each
/// placeholder must name an argument (checked at compile time). Values are
/// written with their `Display` implementation and **escaped**: `*`, `?`,
/// `[`, `]`, `:`, `\`, `%` and control characters in a value are
/// percent-escaped (`*` → `%2A`), so user data can never widen an
/// invalidation pattern or add a segment. Literal text is copied verbatim
/// (`:` is allowed; `*`, `?`, `[`, `]`, `\` are not); write `{{` and `}}`
/// for braces.
///
/// Without `key`, the key is a stable 128-bit hash (32 hex digits) of the
/// arguments, excluding `self`, `_` arguments and those in `skip(..)`:
/// `stable_hash((stable_hash(a), stable_hash(b), ..))`, where
/// `cache_core::keys::stable_hash` is XXH3-128 over the bincode encoding.
/// Every hashed argument must implement `Serialize` (a compile error on
/// the argument says so otherwise). The hash is the same on every machine,
/// process and Rust version, as long as the arguments serialize the same
/// way (a `HashMap` argument doesn't: use a `BTreeMap`).
///
/// ```ignore
/// #[cached(prefix = "customer", key = "{id}")]
/// async fn customer(db: &Db, id: u64) -> Option<Customer> { db.find(id).await }
///
/// #[cached(prefix = "order", key = "{customer.id}:{n}")]
/// async fn order(customer: &Customer, n: u32) -> Option<Order> { ... }
/// ```
///
/// ## `skip(a, b)`
///
/// Leaves arguments out of the default hashed key (database handles,
/// loggers, anything not `Serialize`). `self` is always left out. `skip`
/// has no meaning together with `key` and is rejected there.
///
/// ```ignore
/// #[cached(prefix = "search", ttl = 600, skip(db))]
/// async fn search(db: &Db, q: &str, page: u32) -> Vec<Customer> { ... }
/// ```
///
/// ## `cache_none` and `none_ttl = <seconds or Duration>`
///
/// For `Option<T>` results: also store `None` (negative caching, against
/// cache penetration by lookups of missing ids), optionally with its own,
/// usually shorter, TTL. `none_ttl` requires `cache_none`.
///
/// ```ignore
/// #[cached(prefix = "user", ttl = 3600, key = "{id}", cache_none, none_ttl = 60)]
/// async fn user(id: u64) -> Option<User> { ... }
/// ```
///
/// ## `unless = <bool expression over result>`
///
/// Doesn't store the value when the expression is true. In the expression,
/// `result` is a reference to the value that would be stored (`&T` for
/// `Result<T, E>` and `Option<T>`; with `cache_none`, `&Option<T>`). The
/// expression is a `move` closure body: besides `result` it may use `self`
/// (in `&self` methods) and other `Copy` arguments.
///
/// ```ignore
/// #[cached(prefix = "search", skip(db), unless = result.is_empty())]
/// async fn search(db: &Db, q: &str) -> Result<Vec<Hit>, DbError> { ... }
/// ```
///
/// ## `cache = <expression of type Cache or &Cache>`
///
/// Uses this cache instead of the current one (the scoped cache, else the
/// installed one). Evaluated at each call, inside the function, so it may use
/// `self` and the arguments.
///
/// ```ignore
/// impl Repo {
///     #[cached(prefix = "churn", ttl = 1800, key = "{id}", cache = self.cache)]
///     async fn churn_risk(&self, id: u64) -> Result<f64, DbError> { ... }
/// }
/// ```
///
/// ## `version = N`
///
/// Adds `vN:` to the key (`customer:v2:42`); bump it when the cached type's
/// shape changes so old entries are never decoded as the new type.
///
/// ```ignore
/// #[cached(prefix = "customer", key = "{id}", version = 2)]
/// async fn customer(id: u64) -> Option<CustomerV2> { ... }
/// ```
///
/// ## `crate = path`
///
/// The path of `cache-core` when it is renamed or re-exported (serde's
/// `crate = ...`); the default is `::cache_core`. A string (`crate =
/// "my_cache"`) is accepted too.
///
/// ```ignore
/// use ::cache_core as my_cache;
///
/// #[cached(prefix = "customer", crate = my_cache)]
/// async fn customer(id: u64) -> Option<Customer> { ... }
/// ```
///
/// ## `no_companions`
///
/// Don't generate the `_cache_key` companion (below). Needed on methods of
/// **trait** impls written with native `async fn` (an impl of a trait can't
/// have extra associated functions); `#[async_trait]` impls need nothing.
/// Without it, besides "method `item_cache_key` is not a member of trait",
/// the compiler reports a hidden item named
/// `item_in_a_trait_impl_needs_cached_no_companions`, which says the fix.
///
/// ```ignore
/// impl Store for Repo {
///     #[cached(prefix = "item", key = "{id}", no_companions)]
///     async fn item(&self, id: u64) -> Option<Item> { ... }
/// }
/// ```
///
/// # Companion: the key function
///
/// Next to the function, `#[cached]` generates
/// `<vis> fn <name>_cache_key(<key arguments>) -> String` returning the
/// logical key `"prefix:rest"`, so that tests and invalidation code can name
/// entries. Arguments of reference type are taken as they are (`q: &str`),
/// others by reference (`id: &u64`):
///
/// ```ignore
/// assert_eq!(get_customer_cache_key(&42), "customer:42");
/// cache.delete(&get_customer_cache_key(&42)).await?;
/// ```
///
/// Beside it, `<vis> const <NAME>_CACHE_PREFIX: &str` holds the prefix
/// (`#[invalidates(name(..))]` uses it).
///
/// For a method, it is an associated function without `self`
/// (`Repo::churn_risk_cache_key(&id)`). With a template it takes the
/// arguments the template names; with a hashed key, the hashed arguments.
///
/// To run the **uncached body**, wrap the call in `cache_core::uncached`:
/// every `#[cached]` function in that future runs its body, reading and
/// storing nothing (`uncached(get_customer(&db, 42)).await`). That is why no
/// separate "uncached" companion is generated.
///
/// # Signature, methods, traits
///
/// The function keeps its signature, visibility, attributes, docs, generics,
/// where clauses and `Send`-ness. On methods, `self` is never part of the
/// key, and a method taking `&mut self` (or `self: Pin<&mut Self>`) is a
/// compile error: a hit skips the body, and with it the body's changes to
/// `self`. Generic functions, `impl Trait` arguments and reference arguments
/// work. A function with type parameters keeps one entry per
/// instantiation: its keys are `prefix:<types>:<rest>`, `<types>` being 16
/// hex digits hashing the parameters' `type_name`s (stable for a build), and
/// its companion takes the same type parameters
/// (`view_cache_key::<Summary>(&id)`). Inside an `#[async_trait]` impl, the macro recognises the future
/// `async-trait` produced and caches that. The body's future must be `Send`.
///
/// # Compile-time errors
///
/// All argument errors are reported at once, each on its own span: unknown or
/// duplicate arguments, a missing or malformed prefix, a bad `ttl` literal, a
/// placeholder naming no argument, a `&mut` or pattern argument in the key, a
/// `&mut self` receiver, a non-`Serialize` argument in the default key (the
/// error names it and the `skip(..)` that leaves it out), a return payload that isn't
/// `Serialize + DeserializeOwned`, a non-`async` function.
///
/// [`Cache`]: ../cache_core/struct.Cache.html
#[proc_macro_attribute]
pub fn cached(args: TokenStream, item: TokenStream) -> TokenStream {
    cached::expand(args.into(), &item.into()).into()
}

/// Invalidates cache entries after an `async fn` (a write) completes.
///
/// ```ignore
/// use cache_core::invalidates;
///
/// impl Repo {
///     #[invalidates("customer:{customer.id}", "churn:{customer.id}", prefix = "query")]
///     async fn update_customer(&self, customer: &Customer) -> Result<(), DbError> { ... }
/// }
/// ```
///
/// The keys are computed from the arguments before the body runs; the
/// invalidation runs after the body, **whether it returned `Ok` or `Err`**
/// (an extra invalidation costs one miss; a missing one serves stale data),
/// and also when the future is dropped after the body started (a drop guard
/// spawns it on the tokio runtime). The function's result is returned
/// unchanged. With no cache installed nothing happens.
///
/// # Arguments
///
/// ## `"prefix:template"` (any number)
///
/// A full logical key: a literal prefix, `:`, then a key template over the
/// function's own arguments (and `self` in methods), as in
/// `#[cached(key = ..)]`. Substituted values are escaped exactly as in
/// `#[cached]`, so an argument holding `"*"` deletes only the key for `"*"`,
/// never a whole prefix. For a `#[cached(version = N)]` function, include
/// the version: `"customer:v2:{id}"`.
///
/// ```ignore
/// #[invalidates("customer:{id}", "churn:{id}")]
/// async fn delete_customer(db: &Db, id: u64) -> Result<(), DbError> { ... }
/// ```
///
/// ## `function(arguments)` (any number)
///
/// The key a `#[cached]` function stores under for these arguments, as its
/// `_cache_key` companion computes it: `get_customer(customer.id)`, or
/// `Self::view::<Summary>(id)` for one instantiation of a generic method.
/// The arguments are expressions over this function's arguments, passed by
/// reference; a wrong name, argument count or type is a compile error.
/// `name(..)` drops every entry of `name` (its prefix, `<NAME>_CACHE_PREFIX`).
///
/// ```ignore
/// #[invalidates(get_customer(customer.id), Self::view::<Summary>(customer.id))]
/// async fn update_customer(&self, customer: &Customer) -> Result<(), DbError> { ... }
/// ```
///
/// ## `prefix = "..."` (any number)
///
/// Drops every key of the prefix (for list and search results that any
/// write may change).
///
/// ```ignore
/// #[invalidates(prefix = "search", prefix = "query")]
/// async fn reindex(db: &Db) -> Result<(), DbError> { ... }
/// ```
///
/// ## `cache = <expression of type Cache or &Cache>`
///
/// Invalidates in this cache instead of the current one.
///
/// ```ignore
/// #[invalidates("customer:{id}", cache = self.cache)]
/// async fn touch(&self, id: u64) -> Result<(), DbError> { ... }
/// ```
///
/// ## `crate = path`
///
/// The path of `cache-core` when it is renamed (default `::cache_core`).
///
/// ```ignore
/// #[invalidates("customer:{id}", crate = my_cache)]
/// async fn touch(id: u64) { ... }
/// ```
#[proc_macro_attribute]
pub fn invalidates(args: TokenStream, item: TokenStream) -> TokenStream {
    invalidates::expand(args.into(), &item.into()).into()
}
