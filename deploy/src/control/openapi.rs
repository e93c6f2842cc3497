//! The control plane's OpenAPI document (served at `/openapi.json`, kept in `docs/openapi.json`).

use super::api;
use super::binaries::StoredBinary;
use super::registry::{Deployment, Desired};
use super::state::DeploymentState;
use super::views::{DeployRequest, DeploymentDetail, DeploymentView, RollbackResponse, Sample};
use crate::counters::RunStatus;
use crate::kafka::PartitionLag;

/// The server API's OpenAPI document.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "squall", description = "Deploy topology versions side by side, promote, roll back, and query user attributes."),
    paths(api::list, api::detail, api::logs, api::deploy, api::promote, api::rollback, api::stop, api::upload_binary,
          api::user_attributes, api::diff),
    components(schemas(
        DeploymentView, DeploymentDetail, DeploymentState, DeployRequest, RollbackResponse, Sample, Deployment, Desired,
        PartitionLag, RunStatus, StoredBinary, crate::http::UserAttributes,
        super::diffs::PromoteRequest, super::diffs::DiffSummary, crate::diff::DiffReport,
        crate::diff::AttributeAgreement, crate::diff::NotComparable, crate::diff::DifferingValue
    )),
    modifiers(&BearerAuth),
    tags((name = "deployments", description = "Topology versions and their lifecycle"),
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
}
