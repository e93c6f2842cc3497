//! The HTTP API: a user's attributes, health, and metrics. One JSON error shape for every failure.

use std::future::Future;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use squall_operators::{Attributes, UserStore};
use tokio::net::TcpListener;

/// Longest user id the API accepts, in bytes (the decoder's limit for ids).
pub const MAX_USER_ID_BYTES: usize = 256;

/// What the API serves: one topology version.
pub struct Api {
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// Consumer group id.
    pub group_id: String,
    /// The version's state.
    pub store: Arc<UserStore>,
    /// Prometheus metrics of the process.
    pub metrics: PrometheusHandle,
}

/// `GET /v1/users/{user_id}/attributes`.
#[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
pub struct UserAttributes {
    /// The user.
    pub user_id: String,
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// Consumer group id of the version that answered.
    pub group_id: String,
    /// The attributes.
    pub attributes: Attributes,
}

/// The error body: `{"error": {"status", "message", "detail", "hint"}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    detail: Option<String>,
    hint: Option<String>,
}

impl ApiError {
    /// An error with a status and a one-line message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), detail: None, hint: None }
    }

    /// Adds what exactly went wrong.
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds what the caller can do.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        #[derive(Serialize)]
        struct Body<'a> {
            status: u16,
            message: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            detail: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            hint: Option<&'a str>,
        }
        let body = Body {
            status: self.status.as_u16(),
            message: &self.message,
            detail: self.detail.as_deref(),
            hint: self.hint.as_deref(),
        };
        (self.status, Json(serde_json::json!({ "error": body }))).into_response()
    }
}

/// The API's routes.
pub fn router(api: Arc<Api>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/users/{user_id}/attributes", get(attributes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("GET /v1/users/{user_id}/attributes")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").hint("this endpoint answers GET only")
        })
        .with_state(api)
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn metrics(State(api): State<Arc<Api>>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], api.metrics.render())
}

/// Checks a user id from a request: 1..=256 bytes, no control characters.
pub fn check_user_id(user_id: &str) -> Result<(), ApiError> {
    if user_id.is_empty() || user_id.len() > MAX_USER_ID_BYTES {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid user id")
            .detail(format!("a user id has 1..={MAX_USER_ID_BYTES} bytes; this one has {}", user_id.len())));
    }
    if user_id.chars().any(char::is_control) {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid user id").detail("it contains control characters"));
    }
    Ok(())
}

async fn attributes(
    State(api): State<Arc<Api>>,
    user_id: Result<Path<String>, PathRejection>,
) -> Result<Json<UserAttributes>, ApiError> {
    let Path(user_id) = user_id.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid user id")
            .detail(e.body_text())
            .hint("user ids are UTF-8, percent-encoded in the path")
    })?;
    check_user_id(&user_id)?;
    let attributes = api.store.attributes(&user_id).ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, format!("no attributes for user {user_id:?}"))
            .detail(format!("topology {} version {} has consumed no event of this user", api.topology, api.version))
    })?;
    Ok(Json(UserAttributes {
        user_id,
        topology: api.topology.clone(),
        version: api.version,
        group_id: api.group_id.clone(),
        attributes,
    }))
}
