//! The operator files in `ops/` against the service binary: every metric the
//! Grafana dashboard and the Prometheus alert rules query is one that
//! `/metrics` exports (with the labels they select on), and the cache's
//! series exist from start-up, before any request, so `rate()` and absence
//! alerts work; with Redis, an outage moves the breaker and fallback
//! gauges the alerts read, and recovery moves them back.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cache_testkit::RedisServer;
use common::{Service, get, raw};
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const OPS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/ops");

/// Labels Prometheus adds at scrape time; the service does not export them.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

/// The service binary on a free port with an in-memory database and cache,
/// and a short header timeout so that the test can have a connection cut off
/// quickly (`env` can change it).
async fn start_with(env: &[(&str, &str)]) -> Service {
    let env: Vec<(&str, &str)> = [("HTTP_HEADER_TIMEOUT_MS", "200")]
        .into_iter()
        .chain(env.iter().copied())
        .collect();
    Service::start(&env).await
}

async fn start() -> Service {
    start_with(&[]).await
}

/// The status of `GET path`.
async fn status(service: &Service, path: &str) -> u16 {
    get(service.addr, path).await.status
}

async fn scrape(service: &Service) -> Exported {
    let reply = get(service.addr, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Exported::parse(&reply.text())
}

/// The labels of one series.
type Labels = BTreeMap<String, String>;

/// The series of a Prometheus text exposition: name -> (labels, value).
#[derive(Debug, Default)]
struct Exported(BTreeMap<String, Vec<(Labels, f64)>>);

impl Exported {
    fn parse(text: &str) -> Exported {
        let mut out = Exported::default();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap_or(line.len());
            let name = &line[..name_end];
            let (labels, rest) = if line[name_end..].starts_with('{') {
                parse_labels(&line[name_end + 1..])
                    .unwrap_or_else(|| panic!("unparsable labels: {line}"))
            } else {
                (BTreeMap::new(), &line[name_end..])
            };
            let value = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("no value: {line}"));
            out.0
                .entry(name.to_owned())
                .or_default()
                .push((labels, value));
        }
        out
    }

    /// The value of the series `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        self.0
            .get(name)?
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| *v)
    }
}

/// Parses `a="x",b="y"}` (after the `{`); the labels and what follows `}`.
fn parse_labels(mut s: &str) -> Option<(Labels, &str)> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((labels, rest));
        }
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next()? {
                (_, '\\') => value.push(chars.next()?.1),
                (i, '"') => break i,
                (_, c) => value.push(c),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        s = &rest[end + 1..];
    }
}

/// A metric a query selects: its name and its label matchers
/// (`(label, operator, value)`).
#[derive(Debug)]
struct Selector {
    name: String,
    matchers: Vec<(String, String, String)>,
}

/// The `cache_*` and `http_*` metrics a PromQL expression selects.
fn selectors(expr: &str) -> Vec<Selector> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            if b == b'\\' {
                i += 1;
            } else if b == b'"' {
                in_string = false;
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if !ident(b) || (i > 0 && (ident(bytes[i - 1]) || bytes[i - 1] == b'$')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && ident(bytes[i]) {
            i += 1;
        }
        let name = &expr[start..i];
        if !(name.starts_with("cache_") || name.starts_with("http_")) {
            continue;
        }
        let mut matchers = Vec::new();
        if expr[i..].starts_with('{') {
            let close = expr[i..].find('}').expect("unclosed selector") + i;
            for part in split_matchers(&expr[i + 1..close]) {
                let op_at = part.find(['=', '!']).expect("matcher without operator");
                let label = part[..op_at].trim().to_owned();
                let rest = &part[op_at..];
                let op_len =
                    if rest.starts_with("=~") || rest.starts_with("!=") || rest.starts_with("!~") {
                        2
                    } else {
                        1
                    };
                let value = rest[op_len..].trim().trim_matches('"').to_owned();
                matchers.push((label, rest[..op_len].to_owned(), value));
            }
            i = close + 1;
        }
        out.push(Selector {
            name: name.to_owned(),
            matchers,
        });
    }
    out
}

/// Splits `a="x",b=~"y,z"` at the commas outside quotes.
fn split_matchers(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// Every PromQL expression of the dashboard: panel targets (rows' nested
/// panels too) and template variable queries.
fn dashboard_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{OPS}/grafana-dashboard.json"))
        .expect("ops/grafana-dashboard.json");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    assert!(dashboard["uid"].as_str().is_some_and(|t| !t.is_empty()));
    let mut out = Vec::new();
    let mut ids = BTreeSet::new();
    let mut stack: Vec<&Value> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .collect();
    while let Some(panel) = stack.pop() {
        let title = panel["title"].as_str().expect("every panel has a title");
        let id = panel["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} used twice");
        if let Some(nested) = panel["panels"].as_array() {
            stack.extend(nested);
        }
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} queries nothing");
        for target in targets {
            let expr = target["expr"].as_str().expect("a PromQL expr");
            out.push((format!("panel {title}"), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if var["type"] == "query" {
            let query = var["query"]["query"].as_str().expect("variable query");
            out.push((format!("variable {}", var["name"]), query.to_owned()));
        }
    }
    out
}

/// Every alert of the rules file with its expression (plain or a `|` / `>`
/// block), and checks each has `for`, a severity and a summary.
fn alert_exprs() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!("{OPS}/prometheus-alerts.yml"))
        .expect("ops/prometheus-alerts.yml");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut alerts: Vec<(String, usize)> = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        if let Some(name) = line.trim().strip_prefix("- alert:") {
            alerts.push((name.trim().to_owned(), i));
        }
    }
    assert!(!alerts.is_empty(), "no alerts in {text}");
    for (n, (name, start)) in alerts.iter().enumerate() {
        let end = alerts.get(n + 1).map_or(lines.len(), |(_, e)| *e);
        let body = &lines[*start + 1..end];
        let field = |key: &str| {
            body.iter()
                .position(|l| l.trim_start().starts_with(&format!("{key}:")))
                .map(|at| (at, body[at].trim_start()[key.len() + 1..].trim()))
        };
        let (at, value) = field("expr").unwrap_or_else(|| panic!("alert {name} has no expr"));
        let expr = if matches!(value, "|" | "|-" | ">" | ">-") {
            let indent = body[at].len() - body[at].trim_start().len();
            body[at + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > indent)
                .map(|l| l.trim())
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            value.to_owned()
        };
        assert!(!expr.is_empty(), "alert {name} has an empty expr");
        assert!(field("for").is_some(), "alert {name} has no `for`");
        assert!(field("severity").is_some(), "alert {name} has no severity");
        assert!(field("summary").is_some(), "alert {name} has no summary");
        out.push((format!("alert {name}"), expr));
    }
    out
}

#[tokio::test]
async fn cache_series_exist_from_start_up() {
    let service = start().await;
    // The very first request: nothing has touched the cache yet.
    let metrics = scrape(&service).await;
    for prefix in ["customer", "churn", "query"] {
        for name in [
            "cache_hits_total",
            "cache_misses_total",
            "cache_sets_total",
            "cache_loads_total",
            "cache_coalesced_total",
            "cache_lease_waits_total",
            "cache_stale_sets_prevented_total",
            "cache_fallback_hits_total",
            "cache_decode_failures_total",
            "cache_invalidations_total",
            "cache_hit_ratio",
        ] {
            assert_eq!(
                metrics.value(name, &[("prefix", prefix)]),
                Some(0.0),
                "{name}{{prefix=\"{prefix}\"}} is not exported at 0: {metrics:?}"
            );
        }
        for kind in ["timeout", "connection", "circuit_open", "auth"] {
            assert_eq!(
                metrics.value("cache_errors_total", &[("prefix", prefix), ("kind", kind)]),
                Some(0.0),
                "cache_errors_total{{prefix=\"{prefix}\",kind=\"{kind}\"}} is missing"
            );
        }
    }
    // In memory there is no breaker, and nothing falls back.
    assert_eq!(metrics.value("cache_circuit_state", &[]), Some(0.0));
    assert_eq!(metrics.value("cache_fallback_active", &[]), Some(0.0));

    // Then the figures move: a miss, then a hit.
    assert_eq!(status(&service, "/api/customers/7").await, 200);
    assert_eq!(status(&service, "/api/customers/7").await, 200);
    let metrics = scrape(&service).await;
    let customer = [("prefix", "customer")];
    assert_eq!(metrics.value("cache_hits_total", &customer), Some(1.0));
    assert_eq!(metrics.value("cache_misses_total", &customer), Some(1.0));
    assert_eq!(metrics.value("cache_loads_total", &customer), Some(1.0));
    assert_eq!(metrics.value("cache_hit_ratio", &customer), Some(0.5));
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_exported() {
    let service = start().await;
    // Traffic for the series that exist only once something happened: a
    // request of each kind, a refused head, a connection cut off.
    assert_eq!(status(&service, "/api/customers/1").await, 200);
    assert_eq!(status(&service, "/api/customers/1/churn-risk").await, 200);
    assert_eq!(
        status(&service, "/api/customers?segment=smb&limit=2").await,
        200
    );
    assert_eq!(
        raw(service.addr, b"NOT HTTP AT ALL\r\n\r\n")
            .await
            .expect("a reply")
            .status,
        400
    );
    let mut silent = TcpStream::connect(service.addr).await.expect("connect");
    let mut sink = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut sink))
        .await
        .expect("the silent connection is cut off")
        .ok();
    get(service.addr, "/health").await;
    let metrics = scrape(&service).await;

    let mut queries = dashboard_exprs();
    queries.extend(alert_exprs());
    let mut used = BTreeSet::new();
    for (place, expr) in &queries {
        let selected = selectors(expr);
        assert!(
            !selected.is_empty(),
            "{place} queries no cache_/http_ metric: {expr}"
        );
        for Selector { name, matchers } in selected {
            let series = metrics.0.get(&name).unwrap_or_else(|| {
                panic!(
                    "{place} uses {name}, which /metrics does not export; exported: {:?}",
                    metrics.0.keys().collect::<Vec<_>>()
                )
            });
            for (label, op, value) in &matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                assert!(
                    series.iter().any(|(labels, _)| labels.contains_key(label)),
                    "{place} selects {name} by `{label}`, a label it does not have"
                );
                if op == "=" {
                    assert!(
                        series
                            .iter()
                            .any(|(labels, _)| labels.get(label) == Some(value)),
                        "{place} selects {name}{{{label}=\"{value}\"}}, which is not exported"
                    );
                }
            }
            used.insert(name);
        }
    }
    // The files cover the cache's state, its failures and the HTTP side.
    for name in [
        "cache_circuit_state",
        "cache_fallback_active",
        "cache_hit_ratio",
        "cache_hits_total",
        "cache_misses_total",
        "cache_errors_total",
        "cache_fallback_hits_total",
        "cache_coalesced_total",
        "cache_lease_waits_total",
        "cache_stale_sets_prevented_total",
        "http_requests_total",
        "http_request_duration_seconds_bucket",
    ] {
        assert!(
            used.contains(name),
            "neither the dashboard nor the alerts use {name}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_shows_on_metrics_and_recovery_clears_it() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let service = start_with(&[
        ("REDIS_URL", url.as_str()),
        ("CACHE_TIMEOUT_MS", "100"),
        ("CACHE_CB_FAILURES", "1"),
    ])
    .await;
    assert_eq!(status(&service, "/api/customers/1").await, 200);
    let metrics = scrape(&service).await;
    assert_eq!(metrics.value("cache_circuit_state", &[]), Some(0.0));
    assert_eq!(metrics.value("cache_fallback_active", &[]), Some(0.0));

    // Redis goes away: the request still answers, from the database; the
    // breaker opens and the value lands in the in-memory fallback.
    redis.stop();
    assert_eq!(status(&service, "/api/customers/2").await, 200);
    let metrics = scrape(&service).await;
    assert_eq!(
        metrics.value("cache_circuit_state", &[]),
        Some(2.0),
        "{metrics:?}"
    );
    assert_eq!(metrics.value("cache_fallback_active", &[]), Some(1.0));
    let errors = metrics
        .value(
            "cache_errors_total",
            &[("prefix", "customer"), ("kind", "connection")],
        )
        .unwrap_or(0.0);
    assert!(errors >= 1.0, "no connection error counted: {metrics:?}");
    // Served from the fallback meanwhile.
    assert_eq!(status(&service, "/api/customers/2").await, 200);
    let metrics = scrape(&service).await;
    assert_eq!(
        metrics.value("cache_fallback_hits_total", &[("prefix", "customer")]),
        Some(1.0)
    );

    // Back: the breaker closes and the fallback is emptied.
    redis.restart();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(&service).await;
        if metrics.value("cache_circuit_state", &[]) == Some(0.0)
            && metrics.value("cache_fallback_active", &[]) == Some(0.0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gauges did not recover: {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn the_alert_rules_cover_breaker_errors_and_hit_ratio() {
    let alerts = alert_exprs();
    let find = |name: &str| {
        alerts
            .iter()
            .find(|(place, _)| place == &format!("alert {name}"))
            .map(|(_, expr)| expr.clone())
            .unwrap_or_else(|| panic!("no alert {name}"))
    };
    assert!(find("CacheCircuitOpen").contains("cache_circuit_state) == 2"));
    assert!(find("CacheErrorRate").contains("cache_errors_total"));
    assert!(find("CacheHitRatioDrop").contains("cache_hits_total"));
    assert!(find("HttpServerErrorRate").contains("status=~\"5..\""));
    // The breaker alert waits a minute: a blip is not an alert.
    let text = std::fs::read_to_string(format!("{OPS}/prometheus-alerts.yml")).unwrap();
    let breaker = text
        .split("- alert:")
        .find(|a| a.trim_start().starts_with("CacheCircuitOpen"))
        .unwrap();
    assert!(breaker.contains("for: 1m"), "{breaker}");
}
