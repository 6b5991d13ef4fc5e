//! `Postgres`: a real PostgreSQL started by the fixture, checked with `psql`.

use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use cache_testkit::Postgres;

/// Runs `sql` through `psql` against `url`; the unaligned, tuples-only output.
fn psql(url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([url, "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql is installed with the postgresql package");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[test]
fn fixture_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Postgres>();
}

#[test]
fn starts_answers_sql_and_is_gone_after_drop() {
    let t = Instant::now();
    let pg = Postgres::start();
    eprintln!("postgres start took {:?}", t.elapsed());
    let port = pg.port();
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{port}/postgres")
    );
    assert!(pg.addr().ip().is_loopback());
    assert_eq!((pg.user(), pg.database()), ("postgres", "postgres"));
    assert!(pg.pid().is_some());

    assert_eq!(psql(&pg.url(), "select 1"), "1");
    psql(
        &pg.url(),
        "create table outbox (id bigserial primary key, body text not null)",
    );
    psql(&pg.url(), "insert into outbox (body) values ('a'), ('b')");
    assert_eq!(psql(&pg.url(), "select count(*) from outbox"), "2");
    assert_eq!(
        psql(&pg.url(), "show listen_addresses"),
        "127.0.0.1",
        "loopback only"
    );

    let dir = pg.dir().to_owned();
    assert!(dir.join("data").join("PG_VERSION").exists());
    let t = Instant::now();
    drop(pg);
    eprintln!("postgres drop took {:?}", t.elapsed());
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err(), "killed");
    assert!(!dir.exists(), "directory removed");
}

#[test]
fn two_clusters_run_side_by_side() {
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(Postgres::start);
        let b = s.spawn(Postgres::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_ne!(a.port(), b.port());
    psql(&a.url(), "create table only_in_a (x int)");
    assert_eq!(
        psql(
            &b.url(),
            "select count(*) from pg_tables where tablename = 'only_in_a'"
        ),
        "0"
    );
}
