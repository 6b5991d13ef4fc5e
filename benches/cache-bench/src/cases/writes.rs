//! A write (delete + prefix invalidation) with many foreign keys in the
//! database.

use std::time::Instant;

use cache_core::Cache;
use redis::aio::MultiplexedConnection;

use crate::measure::{Rounds, percentile_us};

/// What the example service's `PUT` does to the cache (delete the record's
/// key, invalidate a list prefix), timed in an empty namespace and again
/// with 300,000 keys of other applications in the same database: with the
/// default settings (prefix generations) and, for contrast, with SCAN.
/// The foreign keys are removed again at the end of the round.
pub(crate) async fn write_with_foreign_keys(
    rounds: &mut Rounds,
    default: &Cache,
    scanning: &Cache,
    raw: &mut MultiplexedConnection,
) {
    const FOREIGN: usize = 300_000;
    async fn write_p50(cache: &Cache, calls: usize) -> f64 {
        let mut ns = Vec::with_capacity(calls);
        for i in 0..calls {
            let start = Instant::now();
            cache
                .delete(&format!("wcustomer:{}", i % 100))
                .await
                .expect("delete");
            cache.invalidate_prefix("wquery").await.expect("invalidate");
            ns.push(start.elapsed().as_nanos() as u64);
        }
        ns.sort_unstable();
        percentile_us(&ns, 0.5)
    }
    let empty_default = write_p50(default, 500).await;
    let empty_scan = write_p50(scanning, 50).await;
    for chunk in 0..FOREIGN / 1_000 {
        let mut pipe = redis::pipe();
        for i in 0..1_000 {
            pipe.set(format!("other-app:{chunk}:{i}"), i).ignore();
        }
        let () = pipe.query_async(raw).await.expect("fill foreign keys");
    }
    let full_default = write_p50(default, 500).await;
    let full_scan = write_p50(scanning, 5).await;
    let pattern_delete = async |raw: &mut MultiplexedConnection| {
        let mut cursor = 0u64;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg("other-app:*")
                .arg("COUNT")
                .arg(1_000)
                .query_async(raw)
                .await
                .expect("SCAN");
            if !keys.is_empty() {
                let () = redis::cmd("UNLINK")
                    .arg(&keys)
                    .query_async(raw)
                    .await
                    .expect("UNLINK");
            }
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
    };
    pattern_delete(raw).await;
    rounds.ops_per_s.push(1e6 / full_default);
    rounds.p50_us.push(full_default);
    rounds.push_extra("empty_p50_us", empty_default);
    rounds.push_extra("ratio_300k_vs_empty", full_default / empty_default);
    rounds.push_extra("scan_empty_p50_us", empty_scan);
    rounds.push_extra("scan_300k_p50_us", full_scan);
}
