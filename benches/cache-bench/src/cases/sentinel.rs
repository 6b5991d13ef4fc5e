//! Redis Sentinel: what waiting for a replica (`CACHE_WAIT_REPLICAS=1`)
//! costs an invalidation, and a forced failover: how long the cache takes
//! to follow it and how many invalidations it loses with and without the
//! wait.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cache_core::Cache;
use cache_testkit::RedisSentinel;

use crate::args::Settings;
use crate::measure::{Rounds, percentile_us};

async fn cache(sentinel: &RedisSentinel, namespace: &str, wait: u32) -> Cache {
    Cache::builder()
        .redis_sentinel(sentinel.sentinel_urls(), sentinel.master_name())
        .namespace(namespace)
        .wait_replicas(wait)
        .build()
        .await
        .expect("a cache behind the sentinels")
}

/// Single-task latency (sorted ns) of `delete` of a key that exists, and of
/// `invalidate_prefix`, for `dur` each.
async fn invalidation_latency(cache: &Cache, dur: Duration) -> (Vec<u64>, Vec<u64>) {
    let (mut deletes, mut prefixes) = (Vec::new(), Vec::new());
    let end = Instant::now() + dur;
    let mut i = 0u64;
    while Instant::now() < end {
        let key = format!("wcustomer:{}", i % 1000);
        cache.set(&key, &i, None).await.expect("set");
        let t = Instant::now();
        cache.delete(&key).await.expect("delete");
        deletes.push(t.elapsed().as_nanos() as u64);
        i += 1;
    }
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let t = Instant::now();
        cache.invalidate_prefix("wquery").await.expect("invalidate");
        prefixes.push(t.elapsed().as_nanos() as u64);
    }
    deletes.sort_unstable();
    prefixes.sort_unstable();
    (deletes, prefixes)
}

/// An invalidation's cost with `WAIT 1` against without, behind Sentinel
/// (a primary and one replica on loopback): single-task p50/p99 of a key
/// delete and of a prefix invalidation (a generation write), measured
/// alternately in short phases so both see the same machine.
pub(crate) async fn invalidate_wait_replicas(
    rounds: &mut Rounds,
    sentinel: &RedisSentinel,
    s: Settings,
) {
    let plain = cache(sentinel, "nowait", 0).await;
    let waiting = cache(sentinel, "wait", 1).await;
    let phase = s.latency / 4;
    let (mut plain_del, mut plain_gen, mut wait_del, mut wait_gen) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..4 {
        let (d, g) = invalidation_latency(&plain, phase).await;
        plain_del.extend(d);
        plain_gen.extend(g);
        let (d, g) = invalidation_latency(&waiting, phase).await;
        wait_del.extend(d);
        wait_gen.extend(g);
    }
    for v in [&mut plain_del, &mut plain_gen, &mut wait_del, &mut wait_gen] {
        v.sort_unstable();
    }
    let wait_p50 = percentile_us(&wait_del, 0.5);
    rounds.ops_per_s.push(f64::NAN);
    rounds.p50_us.push(wait_p50);
    rounds.p99_us.push(percentile_us(&wait_del, 0.99));
    rounds.push_extra("no_wait_delete_p50_us", percentile_us(&plain_del, 0.5));
    rounds.push_extra("no_wait_delete_p99_us", percentile_us(&plain_del, 0.99));
    rounds.push_extra("wait_prefix_p50_us", percentile_us(&wait_gen, 0.5));
    rounds.push_extra("no_wait_prefix_p50_us", percentile_us(&plain_gen, 0.5));
    rounds.push_extra(
        "delete_wait_over_no_wait",
        wait_p50 / percentile_us(&plain_del, 0.5),
    );
    let errors: u64 = [&plain, &waiting]
        .iter()
        .map(|c| c.stats().total.errors.values().sum::<u64>())
        .sum();
    rounds.errors += errors;
}

/// Deletes `keys` through `cache` one after another until `stop`; returns
/// those whose delete returned.
async fn invalidate_until(
    cache: Cache,
    keys: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> Vec<String> {
    let mut done = Vec::new();
    for key in keys.iter() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        cache.delete(key).await.expect("delete");
        done.push(key.clone());
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    done
}

/// The keys of `done` (in `namespace`) that are still on `primary`: their
/// invalidation was lost.
fn lost(primary: std::net::SocketAddr, namespace: &str, done: &[String]) -> usize {
    let mut conn = redis::Client::open(format!("redis://{primary}"))
        .expect("client")
        .get_connection()
        .expect("connection");
    let mut pipe = redis::pipe();
    for key in done {
        pipe.cmd("EXISTS").arg(format!("{namespace}:{key}"));
    }
    let found: Vec<bool> = pipe.query(&mut conn).expect("EXISTS");
    found.into_iter().filter(|present| *present).count()
}

/// A forced failover (`SENTINEL FAILOVER`) while two caches delete keys
/// one after another, one with `WAIT 1` and one without: how long after a
/// sentinel announced the new primary (`+switch-master`) the cache sent its
/// calls there, how long from asking for the failover, and how many
/// acknowledged deletes the new primary does not have, and how long after
/// following the cache with `WAIT` had replayed the deletes the old primary
/// did not pass on (until then it serves from its fallback). One failover
/// per round, alternately away from and back to the first primary.
pub(crate) async fn sentinel_failover(rounds: &mut Rounds, sentinel: &Arc<RedisSentinel>) {
    let round = format!("{}", rounds.p50_us.len());
    let (durable_ns, plain_ns) = (format!("fdur{round}"), format!("fplain{round}"));
    let durable = cache(sentinel, &durable_ns, 1).await;
    let plain = cache(sentinel, &plain_ns, 0).await;
    let keys: Arc<Vec<String>> = Arc::new((0..20_000).map(|i| format!("v:{i}")).collect());
    for c in [&durable, &plain] {
        for chunk in keys.chunks(1000) {
            let entries: Vec<(&str, u64)> = chunk.iter().map(|k| (k.as_str(), 1)).collect();
            c.set_many(&entries, None).await.expect("set_many");
        }
    }
    {
        let mut conn = redis::Client::open(sentinel.primary_url())
            .expect("client")
            .get_connection()
            .expect("connection");
        let () = redis::cmd("SET")
            .arg("marker")
            .arg(1)
            .query(&mut conn)
            .expect("SET");
        let _: u32 = redis::cmd("WAIT")
            .arg(1)
            .arg(5000)
            .query(&mut conn)
            .expect("WAIT");
    }
    // Our own subscription tells when the sentinels announced the switch.
    let announced = Arc::new(Mutex::new(None::<Instant>));
    {
        let client = redis::Client::open(sentinel.sentinel_urls()[0].as_str()).expect("client");
        let mut conn = client.get_connection().expect("sentinel connection");
        let record = announced.clone();
        let (ready, wait_ready) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut pubsub = conn.as_pubsub();
            pubsub.subscribe("+switch-master").expect("subscribe");
            let _ = ready.send(());
            if pubsub.get_message().is_ok() {
                *record.lock().expect("lock") = Some(Instant::now());
            }
        });
        wait_ready.recv().expect("subscribed");
    }
    let old = sentinel.primary_addr().to_string();
    let stop = Arc::new(AtomicBool::new(false));
    let waited = tokio::spawn(invalidate_until(
        durable.clone(),
        keys.clone(),
        stop.clone(),
    ));
    let unwaited = tokio::spawn(invalidate_until(plain.clone(), keys.clone(), stop.clone()));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let asked = Instant::now();
    let failover = {
        let sentinel = sentinel.clone();
        tokio::task::spawn_blocking(move || sentinel.failover())
    };
    let followed = loop {
        if let Some(now) = durable.backend_info().await.primary
            && now != old
        {
            break Instant::now();
        }
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the cache never followed"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let new = failover.await.expect("failover");
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (waited, unwaited) = (
        waited.await.expect("invalidator"),
        unwaited.await.expect("invalidator"),
    );
    // Replays of the durable cache land once the old primary replicates
    // the new one (it is the new primary's only replica).
    while durable.stats().fallback_active && followed.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let replayed_ms = followed.elapsed().as_secs_f64() * 1000.0;
    let switch = announced.lock().expect("lock").unwrap_or(followed);
    let lost_waited = lost(new, &durable_ns, &waited);
    let lost_unwaited = lost(new, &plain_ns, &unwaited);
    let follow_ms = followed.saturating_duration_since(switch).as_secs_f64() * 1000.0;
    rounds.p50_us.push(follow_ms * 1000.0);
    rounds.ops_per_s.push(f64::NAN);
    rounds.push_extra(
        "asked_to_followed_ms",
        (followed - asked).as_secs_f64() * 1000.0,
    );
    rounds.push_extra("switch_announced_to_followed_ms", follow_ms);
    rounds.push_extra("wait_replayed_after_followed_ms", replayed_ms);
    rounds.push_extra("wait_deletes", waited.len() as f64);
    rounds.push_extra("wait_deletes_lost", lost_waited as f64);
    rounds.push_extra("no_wait_deletes", unwaited.len() as f64);
    rounds.push_extra("no_wait_deletes_lost", lost_unwaited as f64);
    rounds.errors += lost_waited as u64;
}
