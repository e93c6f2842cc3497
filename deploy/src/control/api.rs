//! The control plane's HTTP API: its routes, the status page, the OpenAPI document and the
//! merged metrics of the server and its versions. The handlers are [`super::handlers`].

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use super::handlers::{
    Shared, archive, deploy, detail, diff, list, list_archives, logs, promote, rollback, start_archive, stop,
    stop_archive, upload_binary, user_attributes,
};
use crate::version::http::ApiError;

/// The server's routes.
pub fn router(control: Shared) -> Router {
    Router::new()
        .route("/", get(|| async { axum::response::Html(include_str!("../status.html")) }))
        .route("/healthz", get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], super::openapi::openapi_json()) }),
        )
        .route("/v1/archives", get(list_archives).post(start_archive))
        .route("/v1/archives/{group_id}", get(archive).delete(stop_archive))
        .route("/v1/binaries", post(upload_binary))
        .route("/v1/deployments", get(list).post(deploy))
        .route("/v1/deployments/{group_id}", get(detail))
        .route("/v1/deployments/{group_id}/logs", get(logs))
        .route("/v1/deployments/{group_id}/promote", post(promote))
        .route("/v1/diff", get(diff))
        .route("/v1/deployments/{group_id}/rollback", post(rollback))
        .route("/v1/deployments/{group_id}/stop", post(stop))
        .route("/v1/users/{user_id}/attributes", get(user_attributes))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "no such endpoint").hint("see GET /openapi.json for the API")
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
                .hint("see GET /openapi.json for the API")
        })
        .route_layer(axum::middleware::from_fn(crate::version::http::track_latency))
        .with_state(control)
}

/// The server's own metrics (consumer lag per partition per group) merged with every serving
/// version process's metrics (labelled `topology`, `version`, `group_id` by the process), each
/// series of a version also labelled with its `process` index.
async fn metrics(State(control): State<Shared>) -> Response {
    let own = crate::telemetry::metrics().render();
    let routes = control.routes();
    let mut children: Vec<(String, Vec<(&str, String)>)> = Vec::new();
    for d in routes.registry().deployments.values() {
        for (index, url) in routes.serving(&d.group_id).unwrap_or_default().iter().enumerate() {
            if let Ok(resp) = control.http().get(format!("{url}/metrics")).send().await
                && let Ok(body) = resp.text().await
            {
                // Each version's series carry its topology and version already; add the process.
                children.push((body, vec![("process", index.to_string())]));
            }
        }
    }
    let mut sources: Vec<(&str, Vec<(&str, String)>)> = vec![(own.as_str(), Vec::new())];
    sources.extend(children.iter().map(|(t, l)| (t.as_str(), l.clone())));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], super::promtext::merge(&sources)).into_response()
}
