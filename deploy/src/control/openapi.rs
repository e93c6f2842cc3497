//! The control plane's OpenAPI document (served at `/openapi.json`, kept in `docs/openapi.json`).

use super::binaries::StoredBinary;
use super::handlers;
use super::monitor::Sample;
use super::registry::{Deployment, Desired};
use super::state::DeploymentState;
use super::views::{DeployRequest, DeploymentDetail, DeploymentView, Executable, RollbackResponse, UserId};
use crate::kafka::PartitionLag;
use crate::values::GroupId;
use crate::version::counters::RunStatus;

/// The server API's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "squall", description = "Deploy topology versions side by side, promote, roll back, and query user attributes."),
    paths(handlers::list, handlers::detail, handlers::logs, handlers::deploy, handlers::promote, handlers::rollback,
          handlers::stop, handlers::upload_binary, handlers::user_attributes, handlers::diff,
          handlers::list_archives, handlers::archive, handlers::start_archive, handlers::stop_archive),
    components(schemas(
        DeploymentView, DeploymentDetail, DeploymentState, DeployRequest, RollbackResponse, Sample, Deployment, Desired,
        PartitionLag, RunStatus, StoredBinary, crate::version::http::UserAttributes,
        crate::version::freshness::AsOf, crate::version::freshness::FreshnessStatus,
        super::diff_runs::PromoteRequest, super::diff_runs::DiffSummary, crate::changelog_diff::DiffReport,
        crate::changelog_diff::AttributeAgreement, crate::changelog_diff::NotComparable, crate::changelog_diff::DifferingValue,
        crate::version::http::ErrorBody, GroupId, UserId, Executable,
        super::archives::ArchiveDeployment, super::archives::ArchiveView, super::archives::ArchiveState,
        super::archives::StartArchiveRequest, super::standbys::StandbyView,
        crate::version::standby::StandbyStatus
    )),
    modifiers(&BearerAuth, &ErrorBodies),
    tags((name = "deployments", description = "Topology versions and their lifecycle"),
         (name = "archives", description = "Archivers of the input topics the server runs"),
         (name = "binaries", description = "Executables that versions with custom code run"),
         (name = "users", description = "Per-user attributes"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// Every answer of status 400 or above is an [`crate::version::http::ApiError`]: its JSON shape is added
/// to each such response of the document here, once.
struct ErrorBodies;

impl utoipa::Modify for ErrorBodies {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr};
        let error = ContentBuilder::new().schema(Some(Ref::from_schema_name("Error"))).build();
        for item in openapi.paths.paths.values_mut() {
            let operations = [&mut item.get, &mut item.post, &mut item.put, &mut item.delete, &mut item.patch];
            for op in operations.into_iter().flatten() {
                for (status, response) in &mut op.responses.responses {
                    if let RefOr::T(response) = response
                        && status.as_str() >= "400"
                        && response.content.is_empty()
                    {
                        response.content.insert("application/json".into(), error.clone());
                    }
                }
            }
        }
    }
}

/// The OpenAPI document as pretty JSON.
pub fn openapi_json() -> String {
    use utoipa::OpenApi as _;
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_in_the_repo_is_current() {
        let kept = include_str!("../../../docs/openapi.json");
        assert!(
            kept.trim_end() == super::openapi_json().trim_end(),
            "docs/openapi.json is stale: run `cargo run -p squall --bin squall -- openapi > docs/openapi.json`"
        );
    }

    #[test]
    fn every_error_answer_is_documented_with_the_error_shape() {
        let doc: serde_json::Value = serde_json::from_str(&super::openapi_json()).expect("JSON");
        let mut errors = 0;
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("operations") {
                for (status, response) in op["responses"].as_object().expect("responses") {
                    assert!(
                        response["description"].as_str().is_some_and(|d| !d.is_empty()),
                        "{method} {path} {status}"
                    );
                    if status.as_str() >= "400" {
                        errors += 1;
                        let schema = &response["content"]["application/json"]["schema"]["$ref"];
                        assert_eq!(schema, "#/components/schemas/Error", "{method} {path} {status}");
                    }
                }
            }
        }
        assert!(errors > 40, "{errors}");
    }
}
