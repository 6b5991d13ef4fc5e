//! `#[cached]` and `#[invalidates]` as users write them: every argument,
//! generic functions, methods, the memory backend's typed values, and the
//! macros over a real redis-server. One test binary (one link) for all.

mod cached;
mod generic;
mod invalidates;
mod redis;
mod typed_memory;
