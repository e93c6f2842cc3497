//! The control plane's documented HTTP handlers: thin, over [`Control`]. Mutations take an
//! [`Authorized`] extractor, deployments a typed [`Group`] path parameter; every failure is an
//! [`ApiError`]. [`super::api`] routes to them and [`super::openapi`] documents them.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::archives::{ArchiveRefusal, ArchiveView, StartArchiveRequest};
use super::binaries::{StoredBinary, UploadError};
use super::diff_runs::PromoteRequest;
use super::routing::{Route, RouteError};
use super::state::Refusal;
use super::views::{DeployRequest, DeploymentDetail, DeploymentView, RollbackResponse};
use super::{CommandError, Control};
use crate::changelog_diff::DiffReport;
use crate::values::GroupId;
use crate::version::freshness::{BoundsQuery, ReadBounds};
use crate::version::http::{ApiError, ProxyError, UserPath};

pub(super) type Shared = Arc<Control>;

/// Proof that the request carries the server's bearer token.
pub struct Authorized;

impl FromRequestParts<Shared> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, control: &Shared) -> Result<Self, ApiError> {
        let hint = "send `Authorization: Bearer <token>`; the CLI reads it from --token or SQUALL_TOKEN";
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this request changes deployments and needs a bearer token",
            )
            .hint(hint));
        };
        let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("");
        // Compare without an early exit, so the time taken does not tell how much of the token matched.
        let expected = control.token().as_bytes();
        let same =
            given.len() == expected.len() && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if !same {
            return Err(ApiError::new(StatusCode::FORBIDDEN, "wrong bearer token").hint(hint));
        }
        Ok(Authorized)
    }
}

/// The `{group_id}` of a path, checked.
pub struct Group(pub GroupId);

impl<S: Send + Sync> FromRequestParts<S> for Group {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let invalid = |detail: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid group id").detail(detail);
        let Path(g) = Path::<String>::from_request_parts(parts, state).await.map_err(|e| invalid(e.body_text()))?;
        g.parse().map(Group).map_err(|e: crate::values::InvalidGroupId| invalid(e.to_string()))
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::Refused(r) => refusal(r),
            CommandError::Archive(r) => archive_refusal(r),
            CommandError::Invalid(m) => ApiError::new(StatusCode::BAD_REQUEST, m),
            e @ (CommandError::InvalidGate(_) | CommandError::Spec(_)) => {
                ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
            }
            CommandError::Kafka(detail) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "cannot read committed offsets").detail(detail)
            }
            CommandError::Io { what, error } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot {what}")).detail(error)
            }
            CommandError::Unavailable(e) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
                .hint("a version creates its changelog topic when it starts; retry once it is running"),
            e @ CommandError::Gate(_) => ApiError::new(StatusCode::CONFLICT, e.to_string())
                .hint("`squall diff <against> <group id>` shows the differing users; nothing was changed"),
            CommandError::Seam(m) => ApiError::new(StatusCode::CONFLICT, "the archive does not reach the offsets Kafka holds")
                .detail(m)
                .hint("keep the archiver running ahead of the topics' retention, or deploy without --backfill; nothing was changed"),
        }
    }
}

impl From<UploadError> for ApiError {
    fn from(e: UploadError) -> ApiError {
        let message = e.to_string();
        match e {
            UploadError::TooLarge { .. } => ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, message)
                .hint("strip its debug information, or start the server with a larger --max-binary-bytes"),
            UploadError::Body(_) => ApiError::new(StatusCode::BAD_REQUEST, message),
            UploadError::DoesNotRun { output } => ApiError::new(StatusCode::BAD_REQUEST, message)
                .detail(output)
                .hint("upload a squall executable built for this server's platform"),
            UploadError::Io { error, .. } => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).detail(error),
        }
    }
}

fn refusal(r: Refusal) -> ApiError {
    let message = r.to_string();
    match r {
        Refusal::Unknown(_) => ApiError::new(StatusCode::NOT_FOUND, message).hint("`squall list` shows them"),
        Refusal::AlreadyDeployed(d) => ApiError::new(StatusCode::CONFLICT, message)
            .detail(format!("topology {} version {} exists (state {:?})", d.topology, d.version, d.desired))
            .hint("deploy another version number, or `squall rollback`/`squall promote` the existing one"),
        Refusal::StartsFromItself(_) => ApiError::new(StatusCode::BAD_REQUEST, message),
        Refusal::Stopped(_) => ApiError::new(StatusCode::CONFLICT, message)
            .detail("a stopped version cannot answer queries")
            .hint("deploy a new version, or promote one that is running"),
        Refusal::NotServing { state, .. } => ApiError::new(StatusCode::CONFLICT, message)
            .detail(format!("state: {state}"))
            .hint("wait until `squall list` shows it running, then retry"),
        Refusal::AlreadyStopped(_) => ApiError::new(StatusCode::CONFLICT, message),
        Refusal::IsPromoted { .. } => ApiError::new(StatusCode::CONFLICT, message)
            .detail("stopping it would leave the topology without a version that answers queries")
            .hint("promote or roll back to another version first"),
    }
}

fn archive_refusal(r: ArchiveRefusal) -> ApiError {
    let message = r.to_string();
    match r {
        ArchiveRefusal::Unknown(_) => {
            ApiError::new(StatusCode::NOT_FOUND, message).hint("`squall list` shows the archivers the server runs")
        }
        ArchiveRefusal::Duplicate { .. } => ApiError::new(StatusCode::CONFLICT, message)
            .hint("give another --group, or `squall archive stop` the running one first"),
        ArchiveRefusal::SameArchive { .. } => ApiError::new(StatusCode::CONFLICT, message)
            .detail("two archivers writing one archive would write the same files")
            .hint("run one archiver per archive; give it every topic with --topics"),
        ArchiveRefusal::VersionGroup(_) => ApiError::new(StatusCode::CONFLICT, message)
            .detail("an archiver and a version sharing a group would commit over each other's offsets")
            .hint("give the archiver its own --group"),
    }
}

fn bad_query(e: QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid query").detail(e.body_text())
}

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments",
    responses((status = 200, description = "Every deployment", body = [DeploymentView])))]
pub(super) async fn list(State(control): State<Shared>) -> Json<Vec<DeploymentView>> {
    Json(control.list())
}

#[utoipa::path(get, path = "/v1/deployments/{group_id}", tag = "deployments",
    params(("group_id" = GroupId, Path, description = "The deployment, e.g. personalization-v1")),
    responses((status = 200, body = DeploymentDetail, description = "The deployment, its partitions' progress and recent history"),
              (status = 400, description = "Invalid group id"), (status = 404, description = "Unknown group id")))]
pub(super) async fn detail(State(control): State<Shared>, Group(g): Group) -> Result<Json<DeploymentDetail>, ApiError> {
    Ok(Json(control.detail(&g)?))
}

/// `?tail=N`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// Last lines to return (default 200; more than 100000 return 100000).
    #[param(nullable = false, minimum = 0)]
    tail: Option<usize>,
}

#[utoipa::path(get, path = "/v1/deployments/{group_id}/logs", tag = "deployments",
    params(("group_id" = GroupId, Path, description = "The deployment"), LogsQuery),
    responses((status = 200, description = "The end of the version's log", content_type = "text/plain", body = String),
              (status = 400, description = "Invalid group id, or `tail` is not a number of lines"),
              (status = 404, description = "Unknown group id")))]
pub(super) async fn logs(
    State(control): State<Shared>,
    Group(g): Group,
    query: Result<Query<LogsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let text = control.logs(&g, q.tail.unwrap_or(200).min(100_000))?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response())
}

#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", request_body = DeployRequest,
    security(("bearer" = [])),
    responses((status = 201, body = DeploymentView, description = "Deployed: its processes are starting"),
              (status = 400, description = "Bad topology or arguments, a binary that was not uploaded, or a body that is not JSON"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 409, description = "That version is already deployed, or the `backfill` archive ends before the offsets Kafka still holds"),
              (status = 413, description = "A body larger than 2 MiB"),
              (status = 415, description = "A body that is not `Content-Type: application/json`"),
              (status = 422, description = "JSON that is not a deploy request (a missing, mistyped or unknown field)"),
              (status = 500, description = "The server could not store the deployment"),
              (status = 502, description = "`start_from: group:<id>` names a group not deployed here, or `backfill` is set, and Kafka could not say what it holds")))]
pub(super) async fn deploy(
    State(control): State<Shared>,
    _: Authorized,
    body: Result<Json<DeployRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), "invalid deploy request").detail(e.body_text()))?;
    Ok((StatusCode::CREATED, Json(control.deploy(req).await?)))
}

#[utoipa::path(post, path = "/v1/binaries", tag = "binaries", security(("bearer" = [])),
    request_body(content = super::views::Executable, content_type = "application/octet-stream",
                 description = "The executable: a build of squall with the version's custom code"),
    responses((status = 201, body = StoredBinary, description = "Stored (or already there) under its SHA-256"),
              (status = 400, description = "It does not run: `--version` failed (the detail has its output), or the upload broke off"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 413, description = "Larger than the server's --max-binary-bytes"),
              (status = 500, description = "The server could not store it")))]
pub(super) async fn upload_binary(
    State(control): State<Shared>,
    _: Authorized,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<(StatusCode, Json<StoredBinary>), ApiError> {
    let limit = control.max_binary_bytes();
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(UploadError::TooLarge { limit }.into());
    }
    Ok((StatusCode::CREATED, Json(control.upload_binary(body.into_data_stream()).await?)))
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/promote", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = GroupId, Path, description = "The version to promote")),
    request_body(content = Option<PromoteRequest>,
                 description = "Optional (no body, `null`, or no `Content-Type` promote at once): promote only if the diff against another version clears a bar"),
    responses((status = 200, body = DeploymentView, description = "Promoted: it answers its topology's queries"),
              (status = 400, description = "Invalid group id or gate, a gate version without a changelog, or a body that is not JSON"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 404, description = "Unknown group id (promoted or gate version)"),
              (status = 409, description = "Stopped or not serving, or the diff is below the required agreement (nothing changed)"),
              (status = 413, description = "A body larger than 2 MiB"),
              (status = 415, description = "A body whose `Content-Type` is not `application/json`"),
              (status = 422, description = "JSON that is not a promote request (a mistyped or unknown field)"),
              (status = 500, description = "The server could not record the promotion or start the diff"),
              (status = 503, description = "A version of the gate has no changelog topic yet")))]
pub(super) async fn promote(
    State(control): State<Shared>,
    _: Authorized,
    Group(g): Group,
    body: Result<Option<Json<Option<PromoteRequest>>>, JsonRejection>,
) -> Result<Json<DeploymentView>, ApiError> {
    let req = body.map_err(|e| ApiError::new(e.status(), "invalid promote request").detail(e.body_text()))?;
    // No body, and a JSON `null` (as the document allows), promote without a gate.
    let req = req.and_then(|Json(r)| r).unwrap_or_default();
    Ok(Json(control.promote_gated(&g, &req).await?))
}

/// `?a=&b=` and options of `GET /v1/diff`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DiffQuery {
    /// Group id of one version (e.g. the promoted one).
    a: GroupId,
    /// Group id of the other version.
    b: GroupId,
    /// Wait up to this many milliseconds (default 10000, at most 600000) for the diff to catch
    /// up with both changelogs as they are when asked; `caught_up` says whether it did.
    #[param(nullable = false, minimum = 0, maximum = 600_000)]
    wait_ms: Option<u64>,
    /// Differing values listed (default 20, at most 1000; smallest user ids first).
    #[param(nullable = false, minimum = 0, maximum = 1000)]
    sample: Option<usize>,
}

#[utoipa::path(get, path = "/v1/diff", tag = "deployments",
    params(DiffQuery),
    responses((status = 200, body = DiffReport, description = "The two versions compared over the users both applied the same events for"),
              (status = 400, description = "Invalid query, the same version twice, or a version without a changelog"),
              (status = 404, description = "Unknown group id"),
              (status = 500, description = "The server could not start the diff"),
              (status = 503, description = "A version has no changelog topic yet")))]
pub(super) async fn diff(
    State(control): State<Shared>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Json<DiffReport>, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let wait = q.wait_ms.unwrap_or(10_000);
    if wait > 600_000 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, format!("wait_ms = {wait}: at most 600000 (10 minutes)")));
    }
    let sample = q.sample.unwrap_or(crate::changelog_diff::SAMPLE_SHOWN);
    if sample > crate::changelog_diff::SAMPLE {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("sample = {sample}: at most {}", crate::changelog_diff::SAMPLE),
        ));
    }
    let mut report = control.diff(&q.a, &q.b, std::time::Duration::from_millis(wait)).await?;
    report.sample.truncate(sample);
    Ok(Json(report))
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/rollback", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = GroupId, Path, description = "The older version to return to")),
    responses((status = 200, body = RollbackResponse, description = "Promoted again; the newer running versions of its topology stopped"),
              (status = 400, description = "Invalid group id"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 404, description = "Unknown group id"),
              (status = 409, description = "Stopped or not serving"),
              (status = 500, description = "The server could not record the change")))]
pub(super) async fn rollback(
    State(control): State<Shared>,
    _: Authorized,
    Group(g): Group,
) -> Result<Json<RollbackResponse>, ApiError> {
    Ok(Json(control.rollback(&g).await?))
}

#[utoipa::path(post, path = "/v1/deployments/{group_id}/stop", tag = "deployments", security(("bearer" = [])),
    params(("group_id" = GroupId, Path, description = "The version to stop")),
    responses((status = 200, body = DeploymentView, description = "Stopped: its processes are gone; its offsets and checkpoints stay"),
              (status = 400, description = "Invalid group id"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 404, description = "Unknown group id"),
              (status = 409, description = "Already stopped, or the promoted version"),
              (status = 500, description = "The server could not record the change")))]
pub(super) async fn stop(
    State(control): State<Shared>,
    _: Authorized,
    Group(g): Group,
) -> Result<Json<DeploymentView>, ApiError> {
    Ok(Json(control.stop(&g).await?))
}

/// `?group=` and `?topology=`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UserQuery {
    /// Read this version (group id) instead of the promoted one.
    #[param(nullable = false)]
    group: Option<GroupId>,
    /// The topology whose promoted version answers (needed only when several topologies are deployed).
    #[param(nullable = false)]
    topology: Option<String>,
    /// Answer only from this cut on (an earlier answer's `as_of.cut`, to read your writes);
    /// otherwise 503 with `Retry-After`.
    #[param(value_type = Option<u64>, nullable = false, minimum = 0)]
    min_cut: Option<String>,
    /// Answer only if the cut answered ended at most this many milliseconds ago (1 to 86400000);
    /// otherwise 503 with `Retry-After`.
    #[param(value_type = Option<u64>, nullable = false, minimum = 1, maximum = 86400000)]
    max_staleness_ms: Option<String>,
}

#[utoipa::path(get, path = "/v1/users/{user_id}/attributes", tag = "users",
    params(("user_id" = super::views::UserId, Path, description = "The user, percent-encoded"), UserQuery),
    responses((status = 200, body = crate::version::http::UserAttributes, description = "The user's attributes, as the version that keeps them answers"),
              (status = 400, description = "Invalid user id, query or read bound, or several topologies are promoted and no `topology` is named"),
              (status = 404, description = "Unknown user, group or topology"),
              (status = 500, description = "The version could not serialise the attributes"),
              (status = 502, description = "The version did not answer, or its executable predates `min_cut` and `max_staleness_ms`"),
              (status = 503, description = "No promoted version (of the topology), the version asked for is not serving, or its answer cannot meet `min_cut` or `max_staleness_ms` (with `Retry-After`)",
               headers(("Retry-After" = u64, description = "Seconds until the bound can first be met, when it is a bound")))))]
pub(super) async fn user_attributes(
    State(control): State<Shared>,
    UserPath(user_id): UserPath,
    query: Result<Query<UserQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = query.map_err(bad_query)?;
    let bounds =
        crate::version::http::read_bounds(&BoundsQuery { min_cut: q.min_cut, max_staleness_ms: q.max_staleness_ms })?;
    let route = control.routes().route(q.group.as_ref(), q.topology.as_deref(), &user_id).map_err(|e| match e {
        RouteError::NotPromoted(t) => {
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("topology {t:?} has no promoted version"))
                .hint("`squall promote <group id>`, or ask a version with ?group=")
        }
        RouteError::UnknownTopology(t) => {
            ApiError::new(StatusCode::NOT_FOUND, format!("no deployment of topology {t:?}"))
                .hint("`squall list` shows them")
        }
        RouteError::NonePromoted => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "no version is promoted")
            .hint("`squall promote <group id>`, or ask a version with ?group=<group id>"),
        RouteError::SeveralPromoted => ApiError::new(StatusCode::BAD_REQUEST, "several topologies are promoted")
            .hint("name one with ?topology=<name>"),
        RouteError::Unknown(g) => refusal(Refusal::Unknown(g)),
        RouteError::NotServing(g) => {
            let state = control.state_of(&g).map(|s| s.as_str()).unwrap_or("unknown");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{g} is not serving"))
                .detail(format!("state: {state}"))
        }
    })?;
    use crate::version::http::proxy_attributes;
    let did_not_answer = |e: crate::version::http::ProxyError| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("{} did not answer", route.group_id)).detail(e.to_string())
    };
    let started = std::time::Instant::now();
    let active = proxy_attributes(control.http(), &route.url, &user_id, &bounds);
    let answer = match &route.standby {
        None => active.await.map_err(did_not_answer)?,
        Some(standby) => match or_if_dead(active, &route).await {
            Some(answer) => answer,
            // The active process died under the query (or before routing saw it): its standby answers.
            None => proxy_attributes(control.http(), standby, &user_id, &bounds).await.map_err(did_not_answer)?,
        },
    };
    if started.elapsed() >= crate::version::http::SLOW_REQUEST {
        tracing::info!(group_id = %route.group_id, url = %route.url, elapsed = ?started.elapsed(), status = answer.status().as_u16(), "a slow answer from a version");
    }
    if bounds == ReadBounds::default() || answer.status() != StatusCode::OK {
        return Ok(answer);
    }
    bounded_answer(answer, &route.group_id).await
}

/// How often a query the active process has not answered yet checks whether it is dying.
const DYING_CHECK: Duration = Duration::from_millis(10);

/// The active process's answer, or `None` when it failed or its process is found exiting while
/// the query waits (then its standby is asked). A `kill -9`ed process's sockets close only once
/// the kernel has freed its memory (about 0.13 ms per MB resident, `benches/teardown.py`), so a
/// query in flight, or sent meanwhile, would wait that long for its error. A process that is
/// exiting never answers again, so its standby's answer (which reflects every cut the active had
/// claimed before the query) cannot be followed by an earlier one from it.
async fn or_if_dead(active: impl Future<Output = Result<Response, ProxyError>>, route: &Route) -> Option<Response> {
    let answered = |answer: Result<Response, ProxyError>| match answer {
        Ok(a) => Some(a),
        Err(e) => {
            tracing::debug!(group_id = %route.group_id, url = %route.url, error = %e, "asking the standby");
            None
        }
    };
    // Without its process id (not on this host) there is nothing to check.
    let Some(pid) = route.pid else { return answered(active.await) };
    tokio::pin!(active);
    let mut check = tokio::time::interval_at(tokio::time::Instant::now() + DYING_CHECK, DYING_CHECK);
    loop {
        tokio::select! {
            answer = &mut active => return answered(answer),
            _ = check.tick() => {
                if crate::version::runfile::exiting(pid) {
                    tracing::debug!(group_id = %route.group_id, url = %route.url, pid, "the active is exiting: asking the standby");
                    return None;
                }
            }
        }
    }
}

/// A 200 to a bounded read, passed on only if it says what it reflects: a version pinned to an
/// executable that predates read bounds ignores them, and its answer must not pass for a fresh one.
async fn bounded_answer(answer: Response, group_id: &GroupId) -> Result<Response, ApiError> {
    let (parts, body) = answer.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX).await.map_err(|e| {
        ApiError::new(StatusCode::BAD_GATEWAY, format!("{group_id} did not answer")).detail(e.to_string())
    })?;
    if !bytes.windows(AS_OF.len()).any(|w| w == AS_OF) {
        return Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            format!("{group_id} cannot honour min_cut or max_staleness_ms"),
        )
        .detail("its executable predates read bounds: its answer does not say which cut it reflects")
        .hint("read it without the bounds, or deploy it with this squall"));
    }
    Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
}

/// What every answer of a version that honours read bounds carries.
const AS_OF: &[u8] = b"\"as_of\":";

#[utoipa::path(get, path = "/v1/archives", tag = "archives",
    responses((status = 200, description = "Every archiver the server runs", body = [ArchiveView])))]
pub(super) async fn list_archives(State(control): State<Shared>) -> Json<Vec<ArchiveView>> {
    Json(control.archives())
}

#[utoipa::path(get, path = "/v1/archives/{group_id}", tag = "archives",
    params(("group_id" = GroupId, Path, description = "The archiver's group id, e.g. squall-archive")),
    responses((status = 200, body = ArchiveView, description = "The archiver and its progress"),
              (status = 400, description = "Invalid group id"), (status = 404, description = "Unknown group id")))]
pub(super) async fn archive(State(control): State<Shared>, Group(g): Group) -> Result<Json<ArchiveView>, ApiError> {
    Ok(Json(control.archive(&g)?))
}

#[utoipa::path(post, path = "/v1/archives", tag = "archives", request_body = StartArchiveRequest,
    security(("bearer" = [])),
    responses((status = 201, body = ArchiveView, description = "Started: its process is starting"),
              (status = 400, description = "A bad URL, group id, topic, rows_per_file or max_file_age, or a body that is not JSON"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 409, description = "An archiver with that group id runs already, another one writes that archive, or a version has that group id"),
              (status = 413, description = "A body larger than 2 MiB"),
              (status = 415, description = "A body that is not `Content-Type: application/json`"),
              (status = 422, description = "JSON that is not a start request (a missing or mistyped field)"),
              (status = 500, description = "The server could not record the archiver")))]
pub(super) async fn start_archive(
    State(control): State<Shared>,
    _: Authorized,
    body: Result<Json<StartArchiveRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<ArchiveView>), ApiError> {
    let Json(req) = body.map_err(|e| ApiError::new(e.status(), "invalid archive request").detail(e.body_text()))?;
    Ok((StatusCode::CREATED, Json(control.start_archive(req).await?)))
}

#[utoipa::path(delete, path = "/v1/archives/{group_id}", tag = "archives", security(("bearer" = [])),
    params(("group_id" = GroupId, Path, description = "The archiver's group id")),
    responses((status = 200, body = ArchiveView, description = "Stopped (what it held is stored and committed) and forgotten; the archive stays"),
              (status = 400, description = "Invalid group id"),
              (status = 401, description = "No token"), (status = 403, description = "Wrong token"),
              (status = 404, description = "Unknown group id"),
              (status = 500, description = "The server could not record the change")))]
pub(super) async fn stop_archive(
    State(control): State<Shared>,
    _: Authorized,
    Group(g): Group,
) -> Result<Json<ArchiveView>, ApiError> {
    Ok(Json(control.stop_archive(&g).await?))
}
