//! The service binary as users run it: configured through environment
//! variables, on a free loopback port, talked to over raw TCP so that slow,
//! idle and malformed clients can be played exactly. Timeouts are set small
//! through the environment so every test finishes in seconds.

mod common;

use std::time::{Duration, Instant};

use common::{Service, closed_within, command, get, raw, read_reply, request, send_json};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Command;

#[tokio::test]
async fn slow_header_senders_are_disconnected() {
    let service = Service::start(&[
        ("HTTP_HEADER_TIMEOUT_MS", "500"),
        ("HTTP_IDLE_TIMEOUT_MS", "30000"),
    ])
    .await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let addr = service.addr;
        tasks.push(tokio::spawn(async move {
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream.write_all(b"GET /health HTTP/1.1\r\n").await.ok();
            // One header byte every 100 ms: never a complete head.
            for _ in 0..40 {
                if stream.write_all(b"x").await.is_err() {
                    return true;
                }
                if closed_within(&mut stream, Duration::from_millis(100)).await {
                    return true;
                }
            }
            false
        }));
    }
    for task in tasks {
        assert!(
            task.await.unwrap(),
            "a slow header sender is still connected after 4 s"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn idle_connections_are_closed() {
    // A long header timeout and a short idle one: what closes the kept-alive
    // connection below is the idle timeout.
    let service = Service::start(&[
        ("HTTP_HEADER_TIMEOUT_MS", "20000"),
        ("HTTP_IDLE_TIMEOUT_MS", "400"),
    ])
    .await;
    let mut stream = TcpStream::connect(service.addr).await.expect("connect");
    for _ in 0..2 {
        stream
            .write_all(b"GET /api/customers/3 HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        let reply = read_reply(&mut stream, Duration::from_secs(5))
            .await
            .expect("keep-alive reply");
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    let idle_from = Instant::now();
    assert!(
        closed_within(&mut stream, Duration::from_secs(3)).await,
        "an idle keep-alive connection stayed open"
    );
    assert!(idle_from.elapsed() >= Duration::from_millis(300));

    // A connection that never sends anything is closed by the header timeout.
    let service = Service::start(&[
        ("HTTP_HEADER_TIMEOUT_MS", "400"),
        ("HTTP_IDLE_TIMEOUT_MS", "20000"),
    ])
    .await;
    let mut silent = TcpStream::connect(service.addr).await.expect("connect");
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent connection stayed open"
    );
}

#[tokio::test]
async fn slow_and_oversized_bodies_are_answered() {
    let service = Service::start(&[("HTTP_BODY_TIMEOUT_MS", "500")]).await;
    // Announces 1,000 bytes, sends 10.
    let mut stream = TcpStream::connect(service.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/customers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"name\": ",
        )
        .await
        .unwrap();
    let started = Instant::now();
    let reply = read_reply(&mut stream, Duration::from_secs(5))
        .await
        .expect("a slow body is answered, not held");
    reply.assert_error(408);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);

    // Announces 10 GB, sends 10 bytes: refused at once.
    let mut stream = TcpStream::connect(service.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /api/customers HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10737418240\r\n\r\n{\"name\": ",
        )
        .await
        .unwrap();
    let reply = read_reply(&mut stream, Duration::from_secs(2))
        .await
        .expect("a 10 GB announcement is answered at once");
    reply.assert_error(413);
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);

    // A whole body in time still works.
    let created = send_json(
        service.addr,
        "POST",
        "/api/customers",
        &json!({"name": "On Time", "email": "on.time@example.com", "segment": "smb"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
}

#[tokio::test]
async fn clients_that_stop_reading_are_disconnected() {
    let service = Service::start(&[
        ("HTTP_WRITE_TIMEOUT_MS", "500"),
        ("HTTP_IDLE_TIMEOUT_MS", "20000"),
    ])
    .await;
    // ~200 KB per answer, 100 pipelined requests, nothing read: the socket
    // buffers fill and the server's writes stop making progress.
    let mut stream = TcpStream::connect(service.addr).await.expect("connect");
    let one = b"GET /api/customers?limit=1000 HTTP/1.1\r\nhost: x\r\n\r\n";
    stream.write_all(&one.repeat(100)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Now read: a server that gave up sends what it had buffered, then closes;
    // one that is still waiting sends all 100 answers and keeps the
    // connection open (idle timeout 20 s).
    let mut received = 0usize;
    let mut chunk = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed = loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break false,
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => received += n,
        }
    };
    assert!(
        closed,
        "a client that stopped reading kept its connection ({received} bytes sent)"
    );
    assert!(
        received < 100 * 150_000,
        "{received} bytes: every answer was sent"
    );
}

#[tokio::test]
async fn sigterm_closes_idle_connections_and_exits() {
    let mut service = Service::start(&[]).await;
    // One kept-alive connection between requests, one that sent nothing.
    let mut kept = TcpStream::connect(service.addr).await.expect("connect");
    kept.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(
        read_reply(&mut kept, Duration::from_secs(5))
            .await
            .expect("reply")
            .status,
        200
    );
    let mut silent = TcpStream::connect(service.addr).await.expect("connect");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &service.pid().to_string()])
        .status()
        .await
        .expect("kill");
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(5), service.child.wait())
        .await
        .expect("exits within 5 s of SIGTERM")
        .expect("wait");
    assert!(status.success(), "{status:?}: {}", service.output());
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(closed_within(&mut kept, Duration::from_secs(1)).await);
    assert!(closed_within(&mut silent, Duration::from_secs(1)).await);
    assert!(
        TcpStream::connect(service.addr).await.is_err(),
        "still accepting"
    );
}

/// Open descriptors of a process (Linux).
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[tokio::test]
async fn open_connections_are_capped() {
    let service = Service::start(&[
        ("HTTP_MAX_CONNECTIONS", "3"),
        ("HTTP_HEADER_TIMEOUT_MS", "20000"),
        ("HTTP_IDLE_TIMEOUT_MS", "20000"),
    ])
    .await;
    let fds_before = open_fds(service.pid());
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(service.addr).await.expect("connect"));
    }
    // 50 more connections wait in the listen backlog, holding no descriptor.
    let mut waiting = Vec::new();
    for _ in 0..50 {
        waiting.push(TcpStream::connect(service.addr).await.expect("connect"));
    }
    let mut late = TcpStream::connect(service.addr).await.expect("connect");
    late.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(
        read_reply(&mut late, Duration::from_millis(500))
            .await
            .is_none(),
        "a connection beyond HTTP_MAX_CONNECTIONS was served"
    );
    if fds_before > 0 {
        let grown = open_fds(service.pid()).saturating_sub(fds_before);
        assert!(
            grown <= 3 + 1,
            "{grown} descriptors opened for 3 allowed connections"
        );
    }
    // Free every slot: the waiting ones are served in turn (they close at once).
    drop(held);
    drop(waiting);
    let reply = read_reply(&mut late, Duration::from_secs(5))
        .await
        .expect("served once slots are free");
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn header_limits_and_parse_errors_are_json() {
    let service = Service::start(&[]).await;
    let addr = service.addr;
    for size in [20 * 1024, 200 * 1024] {
        let value = "a".repeat(size);
        let head = format!("GET /health HTTP/1.1\r\nhost: x\r\nx-big: {value}\r\n\r\n");
        let reply = raw(addr, head.as_bytes())
            .await
            .unwrap_or_else(|| panic!("no reply to a {size}-byte header"));
        reply.assert_error(431);
    }
    // Just under the default 16 KiB cap: fine.
    let value = "a".repeat(15 * 1024);
    let head =
        format!("GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\nx-big: {value}\r\n\r\n");
    assert_eq!(raw(addr, head.as_bytes()).await.expect("reply").status, 200);
    // A malformed request line.
    raw(addr, b"GET /health HTTP/9\r\n\r\n")
        .await
        .expect("reply")
        .assert_error(400);
    raw(addr, b"G\x01T / HTTP/1.1\r\n\r\n")
        .await
        .expect("reply")
        .assert_error(400);
    // Too many header fields.
    let mut many = String::from("GET /health HTTP/1.1\r\nhost: x\r\n");
    for i in 0..150 {
        many.push_str(&format!("x-h{i}: 1\r\n"));
    }
    many.push_str("\r\n");
    raw(addr, many.as_bytes())
        .await
        .expect("reply")
        .assert_error(431);

    // With a large header cap, an over-long URI is a JSON 414.
    let service = Service::start(&[("HTTP_MAX_HEADER_BYTES", "131072")]).await;
    let head = format!(
        "GET /api/customers/{} HTTP/1.1\r\nhost: x\r\n\r\n",
        "1".repeat(70_000)
    );
    raw(service.addr, head.as_bytes())
        .await
        .expect("reply")
        .assert_error(414);
}

#[tokio::test]
async fn bad_server_settings_name_the_variable() {
    for (var, value) in [
        ("HTTP_MAX_CONNECTIONS", "0"),
        ("HTTP_HEADER_TIMEOUT_MS", "soon"),
        ("HTTP_MAX_HEADER_BYTES", "12"),
    ] {
        let out = tokio::time::timeout(Duration::from_secs(20), command(&[(var, value)]).output())
            .await
            .expect("exits")
            .expect("runs");
        assert!(!out.status.success(), "{var}={value} accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}={value}: {stderr}");
    }
}

#[tokio::test]
async fn admin_token_must_match_exactly() {
    let service = Service::start(&[("ADMIN_TOKEN", "t0ken")]).await;
    let body = br#"{"pattern": "customer:*"}"#;
    for auth in [
        "Bearer  t0ken",
        "Bearer \tt0ken",
        "Bearer t0ke",
        "Bearer t0kenn",
        "bearer t0ken",
        "t0ken",
    ] {
        request(
            service.addr,
            "POST",
            "/admin/cache/invalidate",
            &[
                ("content-type", "application/json"),
                ("authorization", auth),
            ],
            body,
        )
        .await
        .assert_error(401);
    }
    let ok = request(
        service.addr,
        "POST",
        "/admin/cache/invalidate",
        &[
            ("content-type", "application/json"),
            ("authorization", "Bearer t0ken"),
        ],
        body,
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[tokio::test]
async fn ids_are_canonical_decimals_and_names_have_no_control_characters() {
    let service = Service::start(&[]).await;
    let addr = service.addr;
    assert_eq!(get(addr, "/api/customers/42").await.json()["id"], 42);
    for bad in [
        "+42",
        "042",
        "00",
        "0x2a",
        "4%202",
        "%2042",
        "42%20",
        "9223372036854775808",
        "-0",
    ] {
        get(addr, &format!("/api/customers/{bad}"))
            .await
            .assert_error(400);
        get(addr, &format!("/api/customers/{bad}/churn-risk"))
            .await
            .assert_error(400);
        send_json(
            addr,
            "PUT",
            &format!("/api/customers/{bad}"),
            &json!({"name": "X"}),
        )
        .await
        .assert_error(400);
    }
    get(addr, "/api/customers/0").await.assert_error(404);

    for name in [
        "Nul\u{0}Byte",
        "Bell\u{7}",
        "New\nLine",
        "Del\u{7f}",
        "C1\u{85}",
    ] {
        send_json(
            addr,
            "POST",
            "/api/customers",
            &json!({"name": name, "email": "ctl@example.com", "segment": "smb"}),
        )
        .await
        .assert_error(400);
        send_json(addr, "PUT", "/api/customers/5", &json!({"name": name}))
            .await
            .assert_error(400);
    }
    let stored = get(addr, "/api/customers/5").await.json();
    let name = stored["name"].as_str().unwrap_or_default();
    assert!(!name.chars().any(char::is_control), "{stored}");
    // Non-ASCII names that are not control characters are fine.
    let created = send_json(
        addr,
        "POST",
        "/api/customers",
        &json!({"name": "Zoë Ünal-Şahin", "email": "zoe@example.com", "segment": "smb"}),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
}

#[tokio::test]
async fn put_accepts_what_get_returns() {
    let service = Service::start(&[]).await;
    let addr = service.addr;
    let mut customer = get(addr, "/api/customers/7").await.json();
    customer["name"] = json!("Round Trip");
    customer["support_tickets"] = json!(3);
    let put = send_json(addr, "PUT", "/api/customers/7", &customer).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json(), customer);
    assert_eq!(get(addr, "/api/customers/7").await.json(), customer);

    // An id that contradicts the path.
    let mut other = customer.clone();
    other["id"] = json!(8);
    send_json(addr, "PUT", "/api/customers/7", &other)
        .await
        .assert_error(400);
    assert_eq!(get(addr, "/api/customers/8").await.json()["id"], 8);
    // Unknown fields are still refused.
    send_json(
        addr,
        "PUT",
        "/api/customers/7",
        &json!({"name": "X", "nickname": "y"}),
    )
    .await
    .assert_error(422);
}

#[tokio::test]
async fn a_taken_port_names_the_variable_before_touching_the_database() {
    let taken = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = taken.local_addr().unwrap().port().to_string();
    let out = tokio::time::timeout(
        Duration::from_secs(20),
        command(&[("PORT", &port)]).output(),
    )
    .await
    .expect("exits")
    .expect("runs");
    assert!(!out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("PORT"), "{stderr}");
    assert!(stderr.contains(&port), "{stderr}");
    assert!(
        !stdout.contains("database ready") && !stderr.contains("database ready"),
        "claimed the database was ready before failing: {stdout}"
    );
}

#[tokio::test]
async fn the_default_namespace_is_the_service_name() {
    let service = Service::start(&[]).await;
    let stats = get(service.addr, "/admin/cache/stats").await.json();
    assert_eq!(stats["namespace"], "customer-service", "{stats}");
    drop(service);

    let service = Service::start(&[("CACHE_NAMESPACE", "other")]).await;
    let stats = get(service.addr, "/admin/cache/stats").await.json();
    assert_eq!(stats["namespace"], "other", "{stats}");
}

#[tokio::test]
async fn request_metrics_by_route_and_status() {
    let service = Service::start(&[("HTTP_HEADER_TIMEOUT_MS", "300")]).await;
    let addr = service.addr;
    // Connections cut off and heads refused are counted too.
    let mut silent = TcpStream::connect(addr).await.expect("connect");
    assert!(closed_within(&mut silent, Duration::from_secs(3)).await);
    let big = format!(
        "GET /health HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(20_000)
    );
    raw(addr, big.as_bytes())
        .await
        .expect("reply")
        .assert_error(431);
    get(addr, "/api/customers/1").await;
    get(addr, "/api/customers/2").await;
    get(addr, "/api/customers/abc").await;
    get(addr, "/no/such/path").await;
    request(addr, "FROBNICATE", "/api/customers/1", &[], b"").await;
    let text = get(addr, "/metrics").await.text();
    let line = |needles: &[&str]| {
        text.lines()
            .find(|l| needles.iter().all(|n| l.contains(n)))
            .map(str::to_owned)
    };
    let ok = line(&[
        "http_requests_total{",
        "route=\"/api/customers/{id}\"",
        "status=\"200\"",
        "method=\"GET\"",
    ])
    .unwrap_or_else(|| panic!("no request counter: {text}"));
    assert!(ok.ends_with(" 2"), "{ok}");
    let bad = line(&[
        "http_requests_total{",
        "route=\"/api/customers/{id}\"",
        "status=\"400\"",
    ])
    .unwrap_or_else(|| panic!("no 400 counter: {text}"));
    assert!(bad.ends_with(" 1"), "{bad}");
    // Unmatched paths share one label value: no label per path.
    assert!(
        line(&[
            "http_requests_total{",
            "status=\"404\"",
            "route=\"unmatched\""
        ])
        .is_some(),
        "{text}"
    );
    assert!(!text.contains("/no/such/path"), "{text}");
    // Extension methods share one label value too.
    assert!(!text.contains("FROBNICATE"), "{text}");
    assert!(
        line(&["http_requests_total{", "method=\"other\""]).is_some(),
        "{text}"
    );
    let bucket = line(&[
        "http_request_duration_seconds_bucket{",
        "route=\"/api/customers/{id}\"",
        "status=\"200\"",
        "le=\"+Inf\"",
    ])
    .unwrap_or_else(|| panic!("no latency histogram: {text}"));
    assert!(bucket.ends_with(" 2"), "{bucket}");
    let closed = line(&[
        "http_connections_closed_total{",
        "reason=\"header_timeout\"",
    ])
    .unwrap_or_else(|| panic!("no closed-connection counter: {text}"));
    assert!(closed.ends_with(" 1"), "{closed}");
    let refused = line(&["http_parse_errors_total{", "status=\"431\""])
        .unwrap_or_else(|| panic!("no parse-error counter: {text}"));
    assert!(refused.ends_with(" 1"), "{refused}");
    assert!(line(&["http_open_connections "]).is_some(), "{text}");
}
