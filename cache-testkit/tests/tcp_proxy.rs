//! `TcpProxy` in front of a real redis-server, observed through clients.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use cache_testkit::{RedisServer, TcpProxy};

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(Duration::from_secs(1))?;
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.set_write_timeout(Some(Duration::from_secs(1)))?;
    Ok(conn)
}

fn ping(conn: &mut redis::Connection) -> redis::RedisResult<String> {
    redis::cmd("PING").query(conn)
}

/// Clients the server itself has, polled until it equals `n` (a reset
/// reaches redis-server asynchronously).
fn wait_for_server_clients(server: &RedisServer, n: usize) {
    let mut direct = connect(&server.client()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut direct).unwrap();
        let clients = list.lines().count();
        if clients == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server has {clients} clients, expected {n}:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn fixture_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TcpProxy>();
}

#[test]
fn a_client_through_the_proxy_fails_after_cut_and_works_after_restore() {
    let server = RedisServer::start();
    let t = Instant::now();
    let proxy = TcpProxy::start(server.addr());
    eprintln!("proxy start took {:?}", t.elapsed());
    assert!(proxy.addr().ip().is_loopback());
    assert_ne!(proxy.port(), server.port());
    assert_eq!(proxy.target(), server.addr());
    let url = proxy.url_for(&server.url());
    assert_eq!(url, format!("redis://127.0.0.1:{}", proxy.port()));

    let client = redis::Client::open(url).unwrap();
    let mut conn = connect(&client).unwrap();
    let () = redis::cmd("SET")
        .arg("k")
        .arg("v")
        .query(&mut conn)
        .unwrap();
    let mut direct = connect(&server.client()).unwrap();
    let v: String = redis::cmd("GET").arg("k").query(&mut direct).unwrap();
    assert_eq!(v, "v", "the write went through the proxy to the server");
    assert_eq!(proxy.open_connections(), 1);
    drop(direct);
    wait_for_server_clients(&server, 2); // the proxied client and the checker

    let t = Instant::now();
    proxy.cut();
    eprintln!("cut took {:?}", t.elapsed());
    assert_eq!(proxy.open_connections(), 0);
    assert!(ping(&mut conn).is_err(), "the open connection is reset");
    let refused = TcpStream::connect(proxy.addr()).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
    assert!(connect(&client).is_err(), "new connections are refused");
    // The server dropped its side too; it still serves direct clients.
    wait_for_server_clients(&server, 1);
    proxy.cut(); // idempotent

    let t = Instant::now();
    proxy.restore();
    eprintln!("restore took {:?}", t.elapsed());
    let mut conn = connect(&client).unwrap();
    assert_eq!(ping(&mut conn).unwrap(), "PONG");
    let v: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
    assert_eq!(v, "v");
    proxy.restore(); // a no-op while forwarding
    assert_eq!(ping(&mut conn).unwrap(), "PONG");
}

#[test]
fn a_blackhole_answers_nothing_and_delivers_after_restore() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());
    let client = redis::Client::open(proxy.url_for(&server.url())).unwrap();
    let mut conn = connect(&client).unwrap();
    assert_eq!(ping(&mut conn).unwrap(), "PONG");

    proxy.blackhole();
    conn.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let t = Instant::now();
    assert!(ping(&mut conn).is_err(), "no answer in a blackhole");
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "a timeout, not a reset"
    );

    // New connections are accepted, and held.
    let mut raw = TcpStream::connect(proxy.addr()).expect("a blackhole accepts");
    raw.write_all(b"PING\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 64];
    let err = raw.read(&mut buf).unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{err:?}"
    );
    assert_eq!(proxy.open_connections(), 2);

    proxy.restore();
    // The held request is delivered and answered.
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let n = raw.read(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"+PONG\r\n");
    let mut conn = connect(&client).unwrap();
    assert_eq!(ping(&mut conn).unwrap(), "PONG");

    // A cut after a blackhole resets what the blackhole held.
    proxy.blackhole();
    proxy.cut();
    assert_eq!(proxy.open_connections(), 0);
    raw.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert!(matches!(raw.read(&mut buf), Ok(0) | Err(_)));
    proxy.restore();
    assert_eq!(ping(&mut connect(&client).unwrap()).unwrap(), "PONG");
}

#[tokio::test]
async fn works_from_async_tests_and_closes_on_drop() {
    let server = RedisServer::start_with(&["--requirepass", "secret"]);
    let proxy = TcpProxy::start(server.addr());
    let url = proxy.url_for(&server.authed_url());
    assert_eq!(url, format!("redis://:secret@127.0.0.1:{}", proxy.port()));
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    proxy.cut();
    let failed = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    .expect("a reset fails at once, it does not hang");
    assert!(failed.is_err());
    proxy.restore();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let pong: String = redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");

    let addr = proxy.addr();
    drop(proxy);
    assert!(
        TcpStream::connect(addr).is_err(),
        "dropped: nothing listens"
    );
    let failed = tokio::time::timeout(
        Duration::from_secs(2),
        redis::cmd("PING").query_async::<String>(&mut conn),
    )
    .await
    .expect("closed on drop");
    assert!(failed.is_err());
}

#[test]
fn url_for_replaces_only_the_targets_address() {
    let server = RedisServer::start();
    let proxy = TcpProxy::start(server.addr());
    let port = server.port();
    let to = proxy.addr();
    assert_eq!(
        proxy.url_for(&format!("rediss://u:p@127.0.0.1:{port}/2?x=1")),
        format!("rediss://u:p@{to}/2?x=1")
    );
    assert_eq!(
        proxy.url_for(&format!("postgres://pg@localhost:{port}/db")),
        format!("postgres://pg@{to}/db")
    );
}
