//! `RedisSentinel`: real sentinels, a forced failover, observed through clients.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use cache_testkit::RedisSentinel;

fn connect(addr: SocketAddr) -> redis::Connection {
    let client = redis::Client::open(format!("redis://{addr}")).unwrap();
    let conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    conn
}

fn role(addr: SocketAddr) -> String {
    let reply: Vec<redis::Value> = redis::cmd("ROLE").query(&mut connect(addr)).unwrap();
    match &reply[0] {
        redis::Value::BulkString(bytes) => String::from_utf8_lossy(bytes).into_owned(),
        other => format!("{other:?}"),
    }
}

#[test]
fn fixture_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<RedisSentinel>();
}

#[test]
fn a_forced_failover_promotes_the_replica_with_the_data() {
    let t = Instant::now();
    let sentinel = RedisSentinel::start();
    eprintln!("sentinel start took {:?}", t.elapsed());
    assert_eq!(sentinel.master_name(), "mymaster");
    let urls = sentinel.sentinel_urls();
    assert_eq!(urls.len(), 3);
    for (url, addr) in urls.iter().zip(sentinel.sentinel_addrs()) {
        assert!(addr.ip().is_loopback());
        assert_eq!(url, &format!("redis://{addr}"));
        let pong: String = redis::cmd("PING").query(&mut connect(addr)).unwrap();
        assert_eq!(pong, "PONG");
    }

    let old = sentinel.primary_addr();
    assert_eq!(old, sentinel.servers()[0].addr());
    assert_eq!(sentinel.primary_url(), format!("redis://{old}"));
    assert_eq!(role(old), "master");
    assert_eq!(role(sentinel.servers()[1].addr()), "slave");
    let mut primary = connect(old);
    let () = redis::cmd("SET")
        .arg("k")
        .arg("before failover")
        .query(&mut primary)
        .unwrap();
    // The write reaches the replica before the failover.
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut primary)
        .unwrap();
    assert_eq!(acked, 1);

    let t = Instant::now();
    let new = sentinel.failover();
    eprintln!("failover took {:?}", t.elapsed());
    assert_ne!(new, old);
    assert_ne!(new.port(), old.port());
    assert_eq!(new, sentinel.servers()[1].addr());
    assert_eq!(sentinel.primary_addr(), new);
    assert_eq!(role(new), "master");
    assert_eq!(role(old), "slave");

    let mut promoted = connect(new);
    let v: String = redis::cmd("GET").arg("k").query(&mut promoted).unwrap();
    assert_eq!(v, "before failover");
    let () = redis::cmd("SET")
        .arg("k")
        .arg("after failover")
        .query(&mut promoted)
        .unwrap();
    let acked: i64 = redis::cmd("WAIT")
        .arg(1)
        .arg(2000)
        .query(&mut promoted)
        .unwrap();
    assert_eq!(acked, 1, "the old primary now replicates the new one");
    let v: String = redis::cmd("GET").arg("k").query(&mut connect(old)).unwrap();
    assert_eq!(v, "after failover");
    let refused = redis::cmd("SET")
        .arg("k")
        .arg("x")
        .query::<()>(&mut connect(old));
    let refused = refused.expect_err("the old primary is a read-only replica now");
    assert_eq!(
        refused.kind(),
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
        "{refused}"
    );
}

#[test]
fn a_named_master_and_everything_is_killed_on_drop() {
    let sentinel = RedisSentinel::start_named("orders");
    assert_eq!(sentinel.master_name(), "orders");
    let mut conn = connect(sentinel.sentinel_addrs()[0]);
    let addr: (String, u16) = redis::cmd("SENTINEL")
        .arg("GET-MASTER-ADDR-BY-NAME")
        .arg("orders")
        .query(&mut conn)
        .unwrap();
    assert_eq!(
        addr,
        ("127.0.0.1".to_owned(), sentinel.primary_addr().port())
    );

    let mut addrs = sentinel.sentinel_addrs();
    addrs.extend(sentinel.servers().iter().map(|s| s.addr()));
    drop(sentinel);
    for addr in addrs {
        assert!(TcpStream::connect(addr).is_err(), "{addr} still listens");
    }
}

#[test]
fn stopping_the_primary_makes_the_sentinels_fail_over_on_their_own() {
    let mut sentinel = RedisSentinel::start();
    let old = sentinel.primary_addr();
    let t = Instant::now();
    sentinel
        .servers_mut()
        .iter_mut()
        .find(|s| s.addr() == old)
        .unwrap()
        .stop();
    let deadline = Instant::now() + Duration::from_secs(15);
    while sentinel.primary_addr() == old {
        assert!(Instant::now() < deadline, "no failover after 15 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!("automatic failover took {:?}", t.elapsed());
    let new = sentinel.primary_addr();
    assert_eq!(new, sentinel.servers()[1].addr());
    let deadline = Instant::now() + Duration::from_secs(5);
    while role(new) != "master" {
        assert!(Instant::now() < deadline, "{new} was not promoted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn passwords_and_tls_secure_every_process_and_survive_a_failover() {
    let sentinel = RedisSentinel::builder()
        .password("datapw")
        .sentinel_password("sentpw")
        .tls()
        .start();
    assert!(sentinel.sentinel_urls()[0].starts_with("rediss://127.0.0.1:"));
    assert!(
        sentinel.authed_sentinel_urls()[0].starts_with("rediss://:sentpw@127.0.0.1:"),
        "{:?}",
        sentinel.authed_sentinel_urls()
    );
    assert_eq!(sentinel.password(), Some("datapw"));
    assert_eq!(sentinel.sentinel_password(), Some("sentpw"));
    // Nothing answers in plain text, and the data servers want the password.
    let old = sentinel.primary_addr();
    assert!(
        redis::Client::open(format!("redis://{old}"))
            .unwrap()
            .get_connection_with_timeout(Duration::from_millis(500))
            .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c))
            .is_err()
    );
    let server = sentinel.servers().iter().find(|s| s.addr() == old).unwrap();
    let mut conn = server.client().get_connection().unwrap();
    let pong: String = redis::cmd("PING").query(&mut conn).unwrap();
    assert_eq!(pong, "PONG");
    let new = sentinel.failover();
    assert_ne!(new, old);
    assert_eq!(sentinel.primary_addr(), new);
    assert!(sentinel.tls_ca_file().exists());
}
