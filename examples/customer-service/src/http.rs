//! Routes, handlers and the JSON error mapping. Handlers call the
//! repository only; caching happens in its annotations.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, middleware};
use cache_core::HealthStatus;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::repo::{CustomerUpdate, MAX_LIST_LIMIT, NewCustomer, RepoError, Segment};

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
        .layer(middleware::map_response(json_errors))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
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
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
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

/// Parses a customer id: a non-negative integer that fits in `i64`.
fn parse_id(path: Result<Path<String>, PathRejection>) -> Result<i64, ApiError> {
    let Path(raw) = path?;
    match raw.parse::<i64>() {
        Ok(id) if id >= 0 => Ok(id),
        Ok(_) => Err(ApiError::bad_request(format!(
            "invalid customer id `{raw}`: ids are non-negative integers"
        ))),
        Err(_) => Err(ApiError::bad_request(format!(
            "invalid customer id `{}`: ids are non-negative integers",
            raw.chars().take(64).collect::<String>()
        ))),
    }
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
    update.validate().map_err(ApiError::unprocessable)?;
    let customer = state.repo.update_customer(id, &update).await?;
    Ok(Json(customer).into_response())
}

async fn cache_stats(State(state): State<AppState>) -> Json<Value> {
    let cache = state.cache();
    let stats = cache.stats();
    let info = cache.backend_info().await;
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
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InvalidateRequest {
    pattern: String,
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => Ok(()),
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
    let db_ok = tokio::time::timeout(
        Duration::from_secs(1),
        sqlx::query("SELECT 1").execute(state.repo.db()),
    )
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
    for (prefix, figures) in state.cache().stats().prefixes {
        metrics::gauge!("cache_hit_ratio", "prefix" => prefix).set(figures.hit_rate);
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
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
