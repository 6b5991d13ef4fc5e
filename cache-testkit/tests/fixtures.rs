//! The real-Redis fixtures, observed only through redis clients.

use std::time::{Duration, Instant};

use cache_testkit::{RedisCluster, RedisServer};
use redis::AsyncCommands;

/// Opens a fresh connection and sends PING; any failure (including a 2 s
/// timeout) becomes an error string.
async fn ping(url: &str) -> Result<String, String> {
    let client = redis::Client::open(url).map_err(|e| e.to_string())?;
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(Duration::from_secs(2), attempt).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".to_owned()),
    }
}

#[test]
fn fixtures_are_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RedisServer>();
    check::<RedisCluster>();
}

#[tokio::test]
async fn start_stop_restart() {
    let t = Instant::now();
    let mut server = RedisServer::start();
    eprintln!("start took {:?}", t.elapsed());
    let port = server.port();
    assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
    assert_eq!(server.authed_url(), server.url());
    assert!(server.addr().ip().is_loopback());
    assert!(server.is_running());
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");

    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = conn.set("k", "v").await.unwrap();
    assert_eq!(
        conn.get::<_, Option<String>>("k").await.unwrap().as_deref(),
        Some("v")
    );
    let save: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(save, ["save", ""], "persistence must be off");

    let t = Instant::now();
    server.stop();
    eprintln!("stop took {:?}", t.elapsed());
    assert!(!server.is_running());
    assert_eq!(server.pid(), None);
    let t = Instant::now();
    let err = ping(&server.url()).await.unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "a stopped server refuses at once: {err}"
    );
    assert!(
        conn.get::<_, Option<String>>("k").await.is_err(),
        "old connection is dead"
    );
    server.stop(); // idempotent

    let t = Instant::now();
    server.restart();
    eprintln!("restart took {:?}", t.elapsed());
    assert_eq!(server.port(), port);
    assert!(server.is_running());
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    assert_eq!(
        conn.get::<_, Option<String>>("k").await.unwrap(),
        None,
        "no persistence"
    );

    // restart() of a running server stops it first.
    let pid = server.pid();
    server.restart();
    assert_ne!(server.pid(), pid);
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn pause_makes_requests_hang_and_resume_answers_them() {
    let mut server = RedisServer::start();
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = conn.set("k", "v").await.unwrap();

    server.pause();
    assert!(server.is_paused());
    assert!(server.is_running(), "a paused server is still alive");
    let t = Instant::now();
    let hung = tokio::time::timeout(
        Duration::from_millis(200),
        conn.get::<_, Option<String>>("k"),
    )
    .await;
    assert!(
        hung.is_err(),
        "GET must time out while paused, got {hung:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(1));

    server.resume();
    assert!(!server.is_paused());
    let got =
        tokio::time::timeout(Duration::from_secs(2), conn.get::<_, Option<String>>("k")).await;
    assert_eq!(
        got.unwrap().unwrap().as_deref(),
        Some("v"),
        "same connection works after resume"
    );
    assert_eq!(ping(&server.url()).await.unwrap(), "PONG");
}

#[tokio::test]
async fn requirepass_is_enforced() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    assert_eq!(server.password(), Some("secret"));
    assert_eq!(
        server.authed_url(),
        format!("redis://:secret@127.0.0.1:{}", server.port())
    );
    assert!(
        !format!("{server:?}").contains("secret"),
        "Debug redacts the password"
    );

    let err = ping(&server.url()).await.unwrap_err();
    assert!(
        err.contains("NOAUTH") || err.to_lowercase().contains("auth"),
        "unexpected error: {err}"
    );
    let wrong = format!("redis://:nope@127.0.0.1:{}", server.port());
    assert!(ping(&wrong).await.is_err());
    assert_eq!(ping(&server.authed_url()).await.unwrap(), "PONG");
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = conn.set("k", 1).await.unwrap();
}

#[tokio::test]
async fn extra_args_apply_maxmemory_noeviction_gives_oom() {
    let server =
        RedisServer::start_with(&["--maxmemory", "1mb", "--maxmemory-policy", "noeviction"]);
    let mut conn = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let value = vec![b'x'; 64 * 1024];
    let mut oom = None;
    for i in 0..64 {
        if let Err(e) = conn.set::<_, _, ()>(format!("big:{i}"), &value).await {
            oom = Some(e.to_string());
            break;
        }
    }
    let oom = oom.expect("1 MB maxmemory must refuse 4 MB of writes");
    assert!(oom.contains("OOM"), "unexpected error: {oom}");
}

#[tokio::test]
async fn drop_kills_the_server_even_when_paused() {
    let mut server = RedisServer::start();
    let url = server.url();
    let pid = server.pid().unwrap();
    let dir = server.dir().to_owned();
    assert!(server.log_path().exists());
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    server.pause();
    drop(server);
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process reaped"
    );
    assert!(!dir.exists(), "temp dir removed");
    assert!(ping(&url).await.is_err());
}

#[tokio::test]
async fn servers_get_distinct_ports() {
    let servers: Vec<RedisServer> = (0..3).map(|_| RedisServer::start()).collect();
    let mut ports: Vec<u16> = servers.iter().map(RedisServer::port).collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 3);
    for s in &servers {
        assert_eq!(ping(&s.url()).await.unwrap(), "PONG");
    }
}

#[tokio::test]
async fn cluster_spreads_keys_degrades_and_recovers() {
    let t = Instant::now();
    let mut cluster = RedisCluster::start(3);
    eprintln!("cluster start took {:?}", t.elapsed());
    assert_eq!(cluster.urls().len(), 3);
    assert!(cluster.is_ok());
    assert_eq!(cluster.cluster_info(0).unwrap()["cluster_state"], "ok");

    let mut conn = cluster.client().get_async_connection().await.unwrap();
    for i in 0..30 {
        let () = conn.set(format!("key:{i}"), i).await.unwrap();
    }
    for i in 0..30 {
        assert_eq!(
            conn.get::<_, Option<i64>>(format!("key:{i}"))
                .await
                .unwrap(),
            Some(i)
        );
    }
    // The keys really are spread over all three masters.
    for node in cluster.nodes() {
        let mut direct = node
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let size: i64 = redis::cmd("DBSIZE").query_async(&mut direct).await.unwrap();
        assert!(size > 0, "node {} holds no keys", node.url());
    }

    let t = Instant::now();
    cluster.stop_node(0);
    assert!(!cluster.nodes()[0].is_running());
    assert!(cluster.cluster_info(0).is_none());
    assert!(
        cluster.wait_until_down(Duration::from_secs(15)),
        "cluster never reported fail"
    );
    eprintln!("cluster_state:fail after {:?}", t.elapsed());
    assert!(!cluster.is_ok());
    // A surviving node refuses commands while the cluster is down.
    let mut direct = cluster.nodes()[1]
        .client()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let err = redis::cmd("GET")
        .arg("key:0")
        .query_async::<Option<i64>>(&mut direct)
        .await
        .unwrap_err();
    assert!(
        err.to_string().to_lowercase().contains("clusterdown"),
        "unexpected error: {err}"
    );
    let via_cluster =
        tokio::time::timeout(Duration::from_secs(10), conn.get::<_, Option<i64>>("key:1")).await;
    assert!(
        !matches!(via_cluster, Ok(Ok(_))),
        "cluster client must fail, got {via_cluster:?}"
    );

    let t = Instant::now();
    cluster.restart_node(0);
    eprintln!("cluster ok again {:?} after restart_node", t.elapsed());
    assert!(cluster.is_ok());
    let mut conn = cluster.client().get_async_connection().await.unwrap();
    for i in 0..30 {
        let () = conn.set(format!("key:{i}"), i * 2).await.unwrap();
        assert_eq!(
            conn.get::<_, Option<i64>>(format!("key:{i}"))
                .await
                .unwrap(),
            Some(i * 2)
        );
    }
}
