//! The HTTP API: a user's attributes, health, and metrics. One JSON error shape for every failure.

use std::future::Future;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Serialize;
use squall_operators::{Attributes, UserStore};
use tokio::net::TcpListener;

use crate::version::counters::{Counters, RunStatus};
use crate::version::freshness::{AsOf, BadBound, BoundsQuery, ReadBounds, Unmet};

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
    /// The version's counters.
    pub counters: Counters,
    /// The checkpoint cut the state was recovered from.
    pub recovered_cut: Option<u64>,
    /// The id the process was started with (`--launch-id`).
    pub launch_id: Option<String>,
    /// The version's attribute feeds, if any is on.
    pub feeds: Option<Arc<squall_feeds::Feeds>>,
    /// Its lease on the server that started or adopted it (`--adopt-timeout`): renewed by
    /// `GET /v1/status?launch_id=<launch_id>`.
    pub lease: Option<Arc<crate::version::lease::Lease>>,
    /// Where the other processes of a multi-process version are (queries for their users go there).
    pub routing: Option<Routing>,
    /// Standby replicas per process (`runtime.standbys`): with any, an answer's `as_of.cut` is at
    /// most the cut the replica feed has durably written.
    pub standbys: usize,
}

/// A multi-process version's layout, for forwarding queries to the process that owns a user.
pub struct Routing {
    /// The cluster.
    pub cluster: crate::version::cluster::Cluster,
    /// Worker threads per process.
    pub workers: usize,
    /// Client for forwarded queries.
    pub client: reqwest::Client,
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
    /// The cut the answer reflects and the event-time watermark of the process that answered.
    pub as_of: AsOf,
}

/// What `GET /v1/users/{user_id}/attributes` writes: the JSON of [`UserAttributes`] (same fields
/// in the same order), serialised straight from the user's state (an active process or a
/// standby) with borrowed strings.
#[derive(Serialize)]
pub(crate) struct UserAttributesBody<'a, A: Serialize> {
    pub(crate) user_id: &'a str,
    pub(crate) topology: &'a str,
    pub(crate) version: u32,
    pub(crate) group_id: &'a str,
    pub(crate) attributes: A,
    pub(crate) as_of: AsOf,
}

/// The answer for a user the version holds nothing of: 404.
pub(crate) fn no_attributes(topology: &str, version: u32, user_id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no attributes for user {user_id:?}"))
        .detail(format!("topology {topology} version {version} has consumed no event of this user"))
}

/// The JSON response of a serialised answer body.
pub(crate) fn json_answer(json: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], Bytes::from(json)).into_response()
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

/// The body of every error answer of both HTTP APIs: `{"error": {"status", "message", "detail", "hint"}}`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct ErrorBody<'a> {
    /// What went wrong.
    error: ErrorFields<'a>,
}

/// The fields of an error. Keys in alphabetical order: the body has always been written that way.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorFields<'a> {
    /// What exactly went wrong, when there is more to say.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    detail: Option<&'a str>,
    /// What the caller can do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    hint: Option<&'a str>,
    /// One line: what went wrong.
    message: &'a str,
    /// The HTTP status of the answer.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let error = ErrorFields {
            status: self.status.as_u16(),
            message: &self.message,
            detail: self.detail.as_deref(),
            hint: self.hint.as_deref(),
        };
        (self.status, Json(ErrorBody { error })).into_response()
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
    let route = req.extensions().get::<axum::extract::MatchedPath>().cloned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    let route = route.as_ref().map_or("unmatched", |p| p.as_str());
    crate::version::counters::record_request(route, resp.status(), seconds);
    if seconds >= SLOW_REQUEST.as_secs_f64() {
        tracing::info!(route, status = resp.status().as_u16(), ms = seconds * 1e3, "a slow request");
    }
    resp
}

/// A request that takes at least this long is logged (its latency is in the histogram either way).
pub const SLOW_REQUEST: std::time::Duration = std::time::Duration::from_millis(50);

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
    api.counters.export();
    let mut text = api.metrics.render();
    api.counters.render_freshness(&mut text, &[("topology", &api.topology), ("version", &api.version.to_string())]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// `?launch_id=`: the server that started or adopted the process renews its lease by naming it.
#[derive(serde::Deserialize)]
struct StatusQuery {
    launch_id: Option<String>,
}

async fn status(State(api): State<Arc<Api>>, query: Result<Query<StatusQuery>, QueryRejection>) -> Json<RunStatus> {
    let given = query.ok().and_then(|Query(q)| q.launch_id);
    if let (Some(lease), Some(given)) = (&api.lease, &given)
        && api.launch_id.as_ref() == Some(given)
    {
        lease.renew();
    }
    Json(RunStatus {
        group_id: api.group_id.clone(),
        recovered_cut: api.recovered_cut,
        launch_id: api.launch_id.clone(),
        feeds: api.feeds.as_ref().map(|f| f.statuses()).unwrap_or_default(),
        pid: Some(std::process::id()),
        ..api.counters.status()
    })
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

/// The `{user_id}` of a path, checked with [`check_user_id`].
pub struct UserPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for UserPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Path(user_id) = Path::<String>::from_request_parts(parts, state).await.map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid user id")
                .detail(e.body_text())
                .hint("user ids are UTF-8, percent-encoded in the path")
        })?;
        check_user_id(&user_id)?;
        Ok(UserPath(user_id))
    }
}

/// The `?min_cut=` and `?max_staleness_ms=` of an attribute read of a version's process or
/// standby, checked for form (400 if not).
pub struct Bounds(pub ReadBounds);

impl<S: Send + Sync> FromRequestParts<S> for Bounds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        let Query(query) = Query::<BoundsQuery>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(e.body_text()))?;
        read_bounds(&query).map(Bounds)
    }
}

/// The `?min_cut=` and `?max_staleness_ms=` of an attribute read, checked for form (400 if not).
pub fn read_bounds(query: &BoundsQuery) -> Result<ReadBounds, ApiError> {
    query.bounds().map_err(bad_bound)
}

/// A malformed bound: 400.
pub(crate) fn bad_bound(e: BadBound) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid read bound")
        .detail(e.to_string())
        .hint("min_cut: a cut from an earlier answer's as_of.cut; max_staleness_ms: 1..=86400000")
}

/// An answer that cannot meet its bounds: 503 with `Retry-After`.
pub(crate) fn unmet(u: Unmet, epoch_ms: u64) -> Response {
    let retry = u.retry_after_s();
    let e = match u {
        Unmet::Cut { wanted, has, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("min_cut = {wanted} is not reached"))
                .detail(format!("this process has applied cut {has} ({epoch_ms} ms epochs)"))
        }
        Unmet::Staleness { wanted_ms, has_ms, cut, .. } => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("max_staleness_ms = {wanted_ms} is not met"))
                .detail(format!("the cut this process has ({cut}) ended {has_ms} ms ago"))
        }
    };
    let mut resp = e.hint(format!("retry after {retry} s")).into_response();
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry));
    resp
}

async fn attributes(
    State(api): State<Arc<Api>>,
    UserPath(user_id): UserPath,
    Bounds(bounds): Bounds,
) -> Result<Response, ApiError> {
    if let Some(r) = &api.routing {
        let owner = r.cluster.owner(&user_id, r.workers);
        if owner != r.cluster.process {
            return forward(r, owner, &user_id, &bounds).await;
        }
    }
    let freshness = api.counters.freshness();
    let mut as_of = freshness.as_of();
    if api.standbys > 0 {
        // A standby answering after this process dies has read the replica feed up to what it
        // recorded as written (or holds the cut this process took over at): claim no more, so
        // that answers never go back across a failover.
        as_of.cut = as_of.cut.min(api.feeds.as_ref().and_then(|f| f.claimable()).unwrap_or(0));
    }
    if bounds != ReadBounds::default() {
        match freshness.check(&bounds, &as_of, crate::version::freshness::now_ms()) {
            Err(bad) => return Err(bad_bound(bad)),
            Ok(Err(u)) => return Ok(unmet(u, freshness.epoch_ms())),
            Ok(Ok(())) => {}
        }
    }
    let body = api.store.view(&user_id, |attributes| {
        let mut out = Vec::with_capacity(128 + user_id.len() + attributes.json_len_hint());
        let body = UserAttributesBody {
            user_id: &user_id,
            topology: &api.topology,
            version: api.version,
            group_id: &api.group_id,
            attributes,
            as_of,
        };
        serde_json::to_writer(&mut out, &body).map(|()| out)
    });
    match body {
        Some(Ok(json)) => Ok(json_answer(json)),
        Some(Err(e)) => {
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise the attributes")
                .detail(e.to_string()))
        }
        None => Err(no_attributes(&api.topology, api.version, &user_id)),
    }
}

/// Asks process `owner` for the attributes of a user it owns, and passes its answer on.
async fn forward(r: &Routing, owner: usize, user_id: &str, bounds: &ReadBounds) -> Result<Response, ApiError> {
    let Some(addr) = r.cluster.http.get(owner).cloned().flatten() else {
        return Err(ApiError::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!("user {user_id:?} is kept by process {owner}"),
        )
        .hint("query the squall server, or list every process's HTTP address in the hostfile"));
    };
    proxy_attributes(&r.client, &format!("http://{addr}"), user_id, bounds).await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("process {owner} ({addr}) did not answer")).detail(e.to_string())
    })
}

/// Why a text is not a URL (`url::ParseError`, named through reqwest's re-export of `Url`).
pub type UrlError = <reqwest::Url as std::str::FromStr>::Err;

/// Why a process did not answer a forwarded query.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// `base` is not a URL.
    #[error("{base}: {error}")]
    Url {
        /// The process's address.
        base: String,
        /// Why it is not a URL.
        error: UrlError,
    },
    /// `base` is a URL that cannot take a path (e.g. `mailto:`).
    #[error("{base} cannot have a path")]
    NoPath {
        /// The process's address.
        base: String,
    },
    /// The request or its answer's body failed.
    #[error("{0}")]
    Request(reqwest::Error),
}

/// Asks the process at `base` (`http://host:port`) for `user_id`'s attributes within `bounds`
/// and passes its answer on, status, body and `Retry-After`; an error says why it did not answer.
pub async fn proxy_attributes(
    client: &reqwest::Client,
    base: &str,
    user_id: &str,
    bounds: &ReadBounds,
) -> Result<Response, ProxyError> {
    let mut url = reqwest::Url::parse(base).map_err(|error| ProxyError::Url { base: base.to_owned(), error })?;
    url.path_segments_mut().map_err(|_| ProxyError::NoPath { base: base.to_owned() })?.pop_if_empty().extend([
        "v1",
        "users",
        user_id,
        "attributes",
    ]);
    let query = BoundsQuery::forward(bounds);
    if let Some(q) = query.strip_prefix('?') {
        url.set_query(Some(q));
    }
    let resp = client.get(url).send().await.map_err(ProxyError::Request)?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
    let retry_after = resp.headers().get(reqwest::header::RETRY_AFTER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body = resp.bytes().await.map_err(ProxyError::Request)?;
    let mut answer = (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
    if let Some(v) = retry_after.and_then(|v| HeaderValue::from_str(&v).ok()) {
        answer.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use squall_enrichment::{EnrichConfig, Enricher, MemoryCatalogue, Symbols};
    use squall_operators::activity::{AdInfo, TrackInfo};
    use squall_operators::{Activity, Plan, What};

    /// A version 2 store with one user who played two genres and saw an ad.
    fn store() -> Arc<UserStore> {
        let symbols = Symbols::default();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../topologies/personalization.toml");
        let v2 = squall_topologies::TopologySpec::load(&path).and_then(|s| s.with_version(2)).expect("version 2");
        let plan = Arc::new(Plan::compile(&v2.attributes, &symbols));
        let store = Arc::new(UserStore::new(Arc::clone(&plan), symbols.clone(), 2));
        let t0 = 1_763_750_000_000;
        let u = symbols.unknown();
        let play = |genre: &str, ms_played| What::Play {
            track_id: "t".into(),
            ms_played,
            track: TrackInfo { genre: symbols.intern(genre), artist: u, duration_ms: None },
        };
        let events = [
            (t0, play("rock", 60_000)),
            (t0 + 86_400_000, play("jazz", 1_000)),
            (t0 + 5, What::Ad { ad_id: "a".into(), ad: AdInfo { category: symbols.intern("travel"), advertiser: u } }),
        ];
        for (i, (ts, what)) in events.into_iter().enumerate() {
            let a = Activity { user: "u\"1".into(), dedup_key: i as u128, ts, event_id: "e".into(), what };
            let shard = store.map_of(&a.user);
            shard.entry(a.user.clone()).or_default().apply(&plan, &a.user, &a, store.symbols());
        }
        store
    }

    async fn serve_store(store: Arc<UserStore>) -> String {
        // Its counters are exported under another label and no worker, so that tests running at
        // the same time do not overwrite each other's series in the process's one recorder.
        serve_counted(store, Default::default(), "uncounted", 0..0).await
    }

    async fn serve_counted(
        store: Arc<UserStore>,
        dead_letters: Arc<crate::version::counters::DeadLetters>,
        label: &str,
        workers: std::ops::Range<usize>,
    ) -> String {
        let catalogue = MemoryCatalogue { tracks: Default::default(), ads: Default::default() };
        let enricher = Enricher::new(
            Arc::new(catalogue),
            store.symbols().clone(),
            EnrichConfig::default(),
            tokio::runtime::Handle::current(),
        );
        let counters = Counters::new(label, workers, Arc::clone(&store), enricher, dead_letters);
        let api = Arc::new(Api {
            topology: "personalization".into(),
            version: 2,
            group_id: "personalization-v2".into(),
            store,
            metrics: crate::telemetry::metrics(),
            counters,
            recovered_cut: None,
            launch_id: Some("0123456789abcdef".into()),
            feeds: None,
            lease: None,
            routing: None,
            standbys: 0,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(serve(listener, router(api), std::future::pending()));
        format!("http://{addr}")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn attributes_answer_the_json_of_user_attributes() {
        let store = store();
        let expected = serde_json::to_string(&UserAttributes {
            user_id: "u\"1".into(),
            topology: "personalization".into(),
            version: 2,
            group_id: "personalization-v2".into(),
            attributes: store.attributes("u\"1").expect("the user has attributes"),
            as_of: AsOf { cut: 0, watermark_ms: None, standby: false },
        })
        .expect("serialises");
        assert!(expected.ends_with(r#","as_of":{"cut":0,"watermark_ms":null,"standby":false}}"#), "{expected}");
        assert!(expected.contains(r#""genre_affinity":{"jazz":1.0,"rock":0.9057236642639067}"#), "{expected}");
        let base = serve_store(store).await;
        let resp = reqwest::get(format!("{base}/v1/users/u%221/attributes")).await.expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(resp.text().await.expect("body"), expected);

        let missing = reqwest::get(format!("{base}/v1/users/nobody/attributes")).await.expect("request");
        assert_eq!(missing.status(), 404);
        assert_eq!(missing.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            missing.text().await.expect("body"),
            r#"{"error":{"detail":"topology personalization version 2 has consumed no event of this user","message":"no attributes for user \"nobody\"","status":404}}"#
        );

        let metrics = reqwest::get(format!("{base}/metrics")).await.expect("request").text().await.expect("body");
        for status in ["200", "404"] {
            let series = format!(
                r#"squall_http_request_seconds_count{{route="/v1/users/{{user_id}}/attributes",status="{status}"}} 1"#
            );
            assert!(metrics.contains(&series), "{series} not in\n{metrics}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_and_metrics_read_the_same_counters() {
        let store = store();
        store.record(1, 3, 1);
        let dead_letters = Arc::new(crate::version::counters::DeadLetters::default());
        dead_letters.record(squall_operators::DlqReason::NotUtf8);
        let base = serve_counted(Arc::clone(&store), Arc::clone(&dead_letters), "personalization-v2", 0..2).await;
        let status: RunStatus =
            reqwest::get(format!("{base}/v1/status")).await.expect("request").json().await.expect("json");
        assert_eq!((status.applied, status.duplicates, status.dead_letters, status.users), (3, 1, 1, 1), "{status:?}");
        assert_eq!(status.launch_id.as_deref(), Some("0123456789abcdef"));
        let metrics = reqwest::get(format!("{base}/metrics")).await.expect("request").text().await.expect("body");
        for series in [
            r#"squall_events_applied_total{worker="1"} 3"#,
            r#"squall_events_duplicate_total{worker="1"} 1"#,
            r#"squall_events_dead_lettered_total{group_id="personalization-v2",reason="not_utf8"} 1"#,
            r#"squall_enrichment_cache_hits_total{group_id="personalization-v2"} 0"#,
        ] {
            assert!(metrics.contains(series), "{series} not in\n{metrics}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_bounds_answer_503_with_retry_after_until_met_and_400_when_malformed() {
        let base = serve_store(store()).await;
        let get = |query: &'static str| {
            let url = format!("{base}/v1/users/u%221/attributes{query}");
            async move {
                let resp = reqwest::get(url).await.expect("request");
                let retry = resp.headers().get(header::RETRY_AFTER).map(|v| v.to_str().expect("ascii").to_owned());
                let status = resp.status().as_u16();
                (status, retry, resp.json::<serde_json::Value>().await.expect("json"))
            }
        };
        // Nothing published: cut 0, which ended in 1970. (No 200 here: the test above counts the
        // route's 200 answers in the process's one recorder.)
        let (status, retry, body) = get("?min_cut=1").await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
        assert_eq!(body["error"]["message"], "min_cut = 1 is not reached");
        assert_eq!(body["error"]["detail"], "this process has applied cut 0 (1000 ms epochs)");
        let (status, retry, body) = get("?max_staleness_ms=86400000").await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")), "{body}");
        assert_eq!(body["error"]["message"], "max_staleness_ms = 86400000 is not met");
        for (query, detail) in [
            ("?min_cut=-1", "min_cut = -1 is negative"),
            ("?min_cut=soon", "min_cut = \"soon\" is not a whole number"),
            ("?max_staleness_ms=0", "max_staleness_ms = 0 is out of range: use 1..=86400000"),
        ] {
            let (status, retry, body) = get(query).await;
            assert_eq!((status, retry, &body["error"]["detail"]), (400, None, &serde_json::json!(detail)), "{query}");
            assert_eq!(body["error"]["message"], "invalid read bound");
        }
    }

    #[test]
    fn errors_keep_their_json() {
        let body = |e: ApiError| {
            let resp = e.into_response();
            let status = resp.status();
            let bytes = futures::executor::block_on(axum::body::to_bytes(resp.into_body(), usize::MAX)).expect("body");
            (status.as_u16(), String::from_utf8(bytes.to_vec()).expect("utf-8"))
        };
        assert_eq!(
            body(ApiError::new(StatusCode::BAD_REQUEST, "invalid user id").detail("d \"q\"").hint("h")),
            (400, r#"{"error":{"detail":"d \"q\"","hint":"h","message":"invalid user id","status":400}}"#.into())
        );
        assert_eq!(
            body(ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")),
            (404, r#"{"error":{"message":"no such endpoint","status":404}}"#.into())
        );
    }
}
