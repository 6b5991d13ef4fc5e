//! `&self`, `&mut self` and `self: Arc<Self>` methods, `cache = self.cache`,
//! a struct with a non-Serialize field.
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
    async fn by_mut(&mut self, id: u64) -> u64 {
        self.conn.get_mut().unwrap().push(2);
        id
    }

    #[cached(prefix = "c", cache = &self.cache)]
    async fn by_arc(self: Arc<Self>, id: u64) -> u64 {
        id + self.conn.lock().unwrap().len() as u64
    }

    #[invalidates("a:{id}", "b:{self.tenant}", cache = self.cache)]
    async fn write(&self, id: u64) {}
}

fn main() {}
