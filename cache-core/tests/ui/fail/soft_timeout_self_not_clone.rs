// `soft_timeout` finishes loads in the background: `&self` is copied.
use cache_core::cached;

pub struct Repo;

impl Repo {
    #[cached(prefix = "report", key = "{day}", fail_safe = 60, soft_timeout = 1)]
    async fn report(&self, day: u32) -> Result<u32, String> {
        let _ = self;
        Ok(day)
    }
}

fn main() {}
