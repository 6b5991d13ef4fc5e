//! Routes, handlers and the JSON error mapping. Handlers call the
//! repository only; caching happens in its annotations.

use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use cache_core::HealthStatus;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::repo::{CustomerUpdate, MAX_LIST_LIMIT, NewCustomer, RepoError, Segment};
use crate::server::BodyTimedOut;

/// Largest request body accepted (64 KiB); larger ones get 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Default page size of `GET /api/customers`.
const DEFAULT_LIST_LIMIT: u32 = 100;

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/customers", get(list_customers).post(create_customer))
        .route(
            "/api/customers/{id}",
            get(get_customer).put(update_customer),
        )
        .route("/api/customers/{id}/churn-risk", get(churn_risk))
        .route("/admin/cache/stats", get(cache_stats))
        .route("/admin/cache/invalidate", post(invalidate))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(refuse_oversized_bodies))
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(record_request))
        .with_state(state)
}

/// An error answered as `{"error": message}` with `status`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<RepoError> for ApiError {
    fn from(e: RepoError) -> Self {
        match e {
            RepoError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            RepoError::Conflict(msg) => ApiError::new(StatusCode::CONFLICT, msg),
            RepoError::Db(e) => {
                tracing::error!(error = %e, "database error");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database failed; try again",
                )
            }
            RepoError::Outbox(e) => {
                tracing::error!(error = %e, "could not record the invalidation; nothing was changed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the database failed; nothing was changed; try again",
                )
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        if let Some(timeout) = find_source::<BodyTimedOut>(&r) {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string());
        }
        let status = r.status();
        let message = match status {
            StatusCode::PAYLOAD_TOO_LARGE => {
                format!("request body is larger than {BODY_LIMIT} bytes")
            }
            _ => r.body_text(),
        };
        ApiError::new(status, message)
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        ApiError::bad_request(r.body_text())
    }
}

/// The first error of type `E` in the `source()` chain of `error`.
fn find_source<'a, E: std::error::Error + 'static>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a E> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

/// Parses a customer id written in canonical decimal: ASCII digits, no sign,
/// no leading zero (except `0` itself), fitting in `i64`. `+42` and `042`
/// are not other spellings of 42 (they would name the same cache key while
/// looking like different resources).
fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(raw) = path?;
    parse_canonical_id(&raw).ok_or_else(|| {
        let shown: String = raw.chars().take(64).flat_map(char::escape_debug).collect();
        ApiError::bad_request(format!(
            "invalid customer id `{shown}`: ids are non-negative decimal integers without sign or leading zeros"
        ))
    })
}

fn parse_canonical_id(raw: &str) -> Option<i64> {
    let canonical = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    if canonical { raw.parse().ok() } else { None }
}

async fn get_customer(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(path)?;
    let customer = state.repo.get_customer(id).await?;
    Ok(Json(customer).into_response())
}

async fn churn_risk(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(path)?;
    let risk = state.repo.churn_risk(id).await?;
    Ok(Json(risk).into_response())
}

#[derive(Debug, Deserialize)]
struct ListParams {
    segment: Option<Segment>,
    limit: Option<u32>,
}

async fn list_customers(
    State(state): State<AppState>,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = params?;
    let limit = params.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIST_LIMIT}"
        )));
    }
    let customers = state.repo.list_by_segment(params.segment, limit).await?;
    Ok(Json(customers).into_response())
}

async fn create_customer(
    State(state): State<AppState>,
    body: Result<Json<NewCustomer>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(new) = body?;
    new.check_characters().map_err(ApiError::bad_request)?;
    new.validate().map_err(ApiError::unprocessable)?;
    let customer = state.repo.create_customer(&new).await?;
    let location = HeaderValue::from_str(&format!("/api/customers/{}", customer.id))
        .map_err(|_| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "bad location"))?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(customer),
    )
        .into_response())
}

async fn update_customer(
    State(state): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<CustomerUpdate>, JsonRejection>,
) -> Result<Response, ApiError> {
    let id = parse_id(path)?;
    let Json(update) = body?;
    if let Some(body_id) = update.id.filter(|&body_id| body_id != id) {
        return Err(ApiError::bad_request(format!(
            "the body's `id` ({body_id}) differs from the path's ({id}); ids cannot be changed"
        )));
    }
    update.check_characters().map_err(ApiError::bad_request)?;
    update.validate().map_err(ApiError::unprocessable)?;
    let customer = state.repo.update_customer(id, &update).await?;
    Ok(Json(customer).into_response())
}

async fn cache_stats(State(state): State<AppState>) -> Json<Value> {
    let cache = state.cache();
    let stats = cache.stats();
    let info = cache.backend_info().await;
    // Undelivered outbox rows (every namespace); null if the database did
    // not answer within a second.
    let outbox_pending = if state.repo.outbox_enabled() {
        tokio::time::timeout(Duration::from_secs(1), state.repo.db().outbox_pending())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let memory_used_mb = info
        .used_memory_bytes
        .map(|b| (b as f64 / (1024.0 * 1024.0) * 1000.0).round() / 1000.0);
    Json(json!({
        "enabled": stats.enabled,
        "backend": stats.backend,
        "target": stats.target,
        "namespace": stats.namespace,
        "circuit": stats.circuit,
        "fallback_active": stats.fallback_active,
        "hits": stats.total.hits,
        "misses": stats.total.misses,
        "hit_rate": stats.total.hit_rate,
        "sets": stats.total.sets,
        "loads": stats.total.loads,
        "coalesced": stats.total.coalesced,
        "invalidations": stats.total.invalidations,
        "errors": stats.total.errors,
        "total_keys": info.total_keys,
        "memory_used_mb": memory_used_mb,
        "redis_version": info.version,
        "prefixes": stats.prefixes,
        "outbox": {
            "enabled": state.repo.outbox_enabled(),
            "pending": outbox_pending,
        },
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    pattern: String,
}

/// SHA-256 of a bearer token; `Debug` shows neither the token nor the digest.
#[derive(Clone, Copy)]
pub(crate) struct TokenDigest([u8; 32]);

impl std::fmt::Debug for TokenDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenDigest(<redacted>)")
    }
}

pub(crate) fn token_digest(token: &[u8]) -> TokenDigest {
    TokenDigest(Sha256::digest(token).into())
}

/// Whether `given` is the token whose digest is `expected`. The presented
/// token is hashed and the two digests are compared without an early exit,
/// so the time taken depends neither on where the tokens differ nor on
/// whether their lengths match (only on the length of `given`, which the
/// caller knows).
fn token_matches(given: &[u8], expected: &TokenDigest) -> bool {
    let given = token_digest(given);
    let diff = given
        .0
        .iter()
        .zip(&expected.0)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Why an admin request was refused.
#[derive(Debug, Clone, Copy)]
enum AdminRefusal {
    /// `ADMIN_TOKEN` is unset: admin endpoints are off.
    Disabled,
    /// The `Authorization` header is missing or wrong.
    Unauthorized,
}

impl IntoResponse for AdminRefusal {
    fn into_response(self) -> Response {
        match self {
            AdminRefusal::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                "admin endpoints are disabled: set ADMIN_TOKEN to enable them",
            )
            .into_response(),
            AdminRefusal::Unauthorized => {
                let mut response = ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or invalid `Authorization: Bearer <ADMIN_TOKEN>` header",
                )
                .into_response();
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                response
            }
        }
    }
}

fn check_admin(state: &AppState, headers: &HeaderMap) -> Result<(), AdminRefusal> {
    let Some(expected) = &state.admin_token else {
        return Err(AdminRefusal::Disabled);
    };
    // Exactly `Bearer <token>`: no trimming, so `Bearer  token` or a token
    // with a stray space is refused, not silently accepted.
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match given {
        Some(token) if token_matches(token, expected) => Ok(()),
        _ => Err(AdminRefusal::Unauthorized),
    }
}

async fn invalidate(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<InvalidateRequest>, JsonRejection>,
) -> Response {
    if let Err(refused) = check_admin(&state, &headers) {
        return refused.into_response();
    }
    let pattern = match body {
        Ok(Json(req)) => req.pattern,
        Err(e) => return ApiError::from(e).into_response(),
    };
    if pattern.is_empty() || pattern.len() > 512 || pattern.chars().any(char::is_control) {
        return ApiError::unprocessable(
            "`pattern` must be a non-empty glob of at most 512 characters without control characters",
        )
        .into_response();
    }
    match state.cache().delete_pattern(&pattern).await {
        Ok(deleted) => {
            tracing::info!(%pattern, deleted, "admin invalidation");
            Json(json!({ "pattern": pattern, "deleted": deleted })).into_response()
        }
        Err(e) => ApiError::unprocessable(e.to_string()).into_response(),
    }
}

async fn health(State(state): State<AppState>) -> Json<Value> {
    let cache = state.cache().health().await;
    let db_ok = !state.repo.outage().is_down()
        && tokio::time::timeout(Duration::from_secs(1), state.repo.db().ping())
            .await
            .is_ok_and(|r| r.is_ok());
    let status = if db_ok && cache.status != HealthStatus::Degraded {
        "ok"
    } else {
        "degraded"
    };
    Json(json!({
        "status": status,
        "database": if db_ok { "ok" } else { "unavailable" },
        "cache": cache,
    }))
}

async fn metrics(State(state): State<AppState>) -> Response {
    // Gauges (breaker, fallback, hit ratio) are computed from a snapshot.
    state.cache().stats().export_gauges();
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// Refuses a body announced larger than [`BODY_LIMIT`] before reading any
/// of it, so a client announcing gigabytes does not hold the connection.
async fn refuse_oversized_bodies(request: Request, next: Next) -> Response {
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced.is_some_and(|n| n > BODY_LIMIT as u64) {
        let mut response = ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is larger than {BODY_LIMIT} bytes"),
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    next.run(request).await
}

/// Counts requests and times them, by method, route template (never the raw
/// path: one series per route, not per id; `unmatched` for unknown paths)
/// and status, so the number of series stays bounded whatever clients send.
async fn record_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    // Extension methods (any token is one) would each open a new series.
    let method = match *request.method() {
        Method::GET
        | Method::HEAD
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::OPTIONS => request.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

/// Gives every error response that isn't JSON yet (405 from the router,
/// anything from a layer) a `{"error": ...}` body.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .ok()
        .and_then(|b| String::from_utf8(b.to_vec()).ok())
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase()
        });
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json!({ "error": text }).to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison_is_exact() {
        let expected = token_digest(b"t0ken");
        assert!(token_matches(b"t0ken", &expected));
        for given in [
            &b""[..],
            b"t0ke",
            b"t0kenn",
            b"t0ken ",
            b" t0ken",
            b"T0KEN",
            b"t0ke\0",
        ] {
            assert!(!token_matches(given, &expected), "{given:?}");
        }
    }

    #[tokio::test]
    async fn the_admin_token_is_not_in_debug_output() {
        let pool = crate::db::connect("sqlite::memory:").await.unwrap();
        let state = AppState::new(pool, cache_core::Cache::memory())
            .with_admin_token(Some("s3cret-token".into()));
        let shown = format!("{state:?}");
        assert!(!shown.contains("s3cret-token"), "{shown}");
        assert!(shown.contains("TokenDigest(<redacted>)"), "{shown}");
    }

    #[test]
    fn only_canonical_decimal_ids() {
        assert_eq!(parse_canonical_id("0"), Some(0));
        assert_eq!(parse_canonical_id("42"), Some(42));
        assert_eq!(parse_canonical_id("9223372036854775807"), Some(i64::MAX));
        for raw in [
            "",
            "+42",
            "042",
            "00",
            "-0",
            "-1",
            " 42",
            "42 ",
            "4_2",
            "0x2a",
            "\u{664}\u{662}",
            "9223372036854775808",
        ] {
            assert_eq!(parse_canonical_id(raw), None, "{raw:?}");
        }
    }
}
