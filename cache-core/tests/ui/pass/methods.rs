//! `&self`, `self` and `self: Arc<Self>` methods, `cache = self.cache`,
//! a struct with a non-Serialize field; `#[invalidates]` on `&mut self`
//! (`#[cached]` rejects it: see ui/fail/mut_self_receiver.rs).
use std::sync::Arc;

use cache_core::{Cache, cached, invalidates};

struct Repo {
    tenant: u32,
    cache: Cache,
    conn: std::sync::Mutex<Vec<u8>>,
}

impl Repo {
    #[cached(prefix = "a", key = "{id}", cache = self.cache)]
    async fn by_ref(&self, id: u64) -> Result<u64, String> {
        self.conn.lock().unwrap().push(1);
        Ok(id)
    }

    #[cached(prefix = "b", cache = self.cache.clone())]
    async fn by_value(self, id: u64) -> u64 {
        self.conn.lock().unwrap().push(2);
        id
    }

    #[cached(prefix = "c", cache = &self.cache)]
    async fn by_arc(self: Arc<Self>, id: u64) -> u64 {
        id + self.conn.lock().unwrap().len() as u64
    }

    #[invalidates("a:{id}", "b:{self.tenant}", cache = self.cache)]
    async fn write(&self, id: u64) {}

    #[invalidates("a:{id}", cache = self.cache.clone())]
    async fn write_mut(&mut self, id: u64) {
        self.conn.get_mut().unwrap().push(3);
    }
}

fn main() {}
