use cache_core::{cached, invalidates};

#[cached(prefix = "orders", key = "{tenant}:{page}")]
async fn list_orders(tenant: u32, page: u32) -> Vec<u32> {
    vec![tenant, page]
}

// `..` means every entry of the function: it can't follow other arguments.
#[invalidates(list_orders(tenant, ..))]
async fn refresh(tenant: u32) {
    let _ = tenant;
}

fn main() {}
