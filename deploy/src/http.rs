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
    /// The version's enrichment service (for its counters).
    pub enricher: squall_enrichment::Enricher,
    /// The checkpoint cut the state was recovered from.
    pub recovered_cut: Option<u64>,
    /// Where the other processes of a multi-process version are (queries for their users go there).
    pub routing: Option<Routing>,
}

/// A multi-process version's layout, for forwarding queries to the process that owns a user.
pub struct Routing {
    /// The cluster.
    pub cluster: crate::cluster::Cluster,
    /// Worker threads per process.
    pub workers: usize,
    /// Client for forwarded queries.
    pub client: reqwest::Client,
}

/// `GET /v1/status` of one `squall run` process: what it has done so far.
#[derive(Serialize, serde::Deserialize, Debug, Default, Clone, PartialEq, utoipa::ToSchema)]
pub struct RunStatus {
    /// Consumer group id.
    pub group_id: String,
    /// Events applied to attributes.
    pub applied: u64,
    /// Events dropped as resends.
    pub duplicates: u64,
    /// Records sent to a dead-letter topic.
    pub dead_letters: u64,
    /// Users with state in this process.
    pub users: u64,
    /// Enrichment lookups answered from the cache.
    pub cache_hits: u64,
    /// Enrichment lookups that went to the store.
    pub cache_misses: u64,
    /// Failed store requests (retries included).
    pub enrich_errors: u64,
    /// Lookups enriched as `unknown` after the deadline.
    pub enrich_degraded: u64,
    /// The checkpoint cut the state was recovered from at start.
    pub recovered_cut: Option<u64>,
}

/// `GET /v1/users/{user_id}/attributes`.
#[derive(Serialize, serde::Deserialize, Debug, PartialEq, utoipa::ToSchema)]
pub struct UserAttributes {
    /// The user.
    pub user_id: String,
    /// Topology name.
    pub topology: String,
    /// Version number.
    pub version: u32,
    /// Consumer group id of the version that answered.
    pub group_id: String,
    /// The attributes (which ones depends on the version's code; see the README).
    #[schema(value_type = Object)]
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
        .route("/v1/status", get(status))
        .route("/v1/users/{user_id}/attributes", get(attributes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("GET /v1/users/{user_id}/attributes")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed").hint("this endpoint answers GET only")
        })
        .route_layer(axum::middleware::from_fn(track_latency))
        .with_state(api)
}

/// Records every request's latency as `squall_http_request_seconds{route, status}`.
pub async fn track_latency(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    metrics::histogram!("squall_http_request_seconds", "route" => route, "status" => resp.status().as_u16().to_string())
        .record(started.elapsed().as_secs_f64());
    resp
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

async fn status(State(api): State<Arc<Api>>) -> Json<RunStatus> {
    use std::sync::atomic::Ordering::Relaxed;
    let e = api.enricher.stats();
    Json(RunStatus {
        group_id: api.group_id.clone(),
        applied: api.store.applied(),
        duplicates: api.store.duplicates(),
        dead_letters: sum_counter(&api.metrics.render(), "squall_events_dead_lettered_total"),
        users: api.store.users() as u64,
        cache_hits: e.hits.load(Relaxed),
        cache_misses: e.misses.load(Relaxed),
        enrich_errors: e.errors.load(Relaxed),
        enrich_degraded: e.degraded.load(Relaxed),
        recovered_cut: api.recovered_cut,
    })
}

/// The sum of every series of counter `name` in Prometheus text.
pub fn sum_counter(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' ')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
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
) -> Result<Response, ApiError> {
    let Path(user_id) = user_id.map_err(|e| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid user id")
            .detail(e.body_text())
            .hint("user ids are UTF-8, percent-encoded in the path")
    })?;
    check_user_id(&user_id)?;
    if let Some(r) = &api.routing {
        let owner = r.cluster.owner(&user_id, r.workers);
        if owner != r.cluster.process {
            return forward(r, owner, &user_id).await;
        }
    }
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
    })
    .into_response())
}

/// Asks process `owner` for the attributes of a user it owns, and passes its answer on.
async fn forward(r: &Routing, owner: usize, user_id: &str) -> Result<Response, ApiError> {
    let Some(addr) = r.cluster.http.get(owner).cloned().flatten() else {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("user {user_id:?} is kept by process {owner}"),
        )
        .hint("query the squall server, or list every process's HTTP address in the hostfile"));
    };
    let unavailable = |e: String| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("process {owner} ({addr}) did not answer")).detail(e)
    };
    let mut url = reqwest::Url::parse(&format!("http://{addr}/")).map_err(|e| unavailable(e.to_string()))?;
    url.path_segments_mut().map_err(|_| unavailable("bad address".into()))?.pop_if_empty().extend([
        "v1",
        "users",
        user_id,
        "attributes",
    ]);
    let resp = r.client.get(url).send().await.map_err(|e| unavailable(e.to_string()))?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let body = resp.bytes().await.map_err(|e| unavailable(e.to_string()))?;
    Ok((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}
