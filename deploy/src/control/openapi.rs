//! The control plane's OpenAPI document (served at `/openapi.json`, kept in `docs/openapi.json`).

use super::api;
use super::binaries::StoredBinary;
use super::registry::{Deployment, Desired};
use super::state::DeploymentState;
use super::views::{DeployRequest, DeploymentDetail, DeploymentView, RollbackResponse, Sample};
use crate::counters::RunStatus;
use crate::kafka::PartitionLag;
use crate::values::GroupId;

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
        crate::diff::AttributeAgreement, crate::diff::NotComparable, crate::diff::DifferingValue,
        crate::http::ErrorBody, GroupId, UserId, Executable
    )),
    modifiers(&BearerAuth, &ErrorBodies),
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

/// Every answer of status 400 or above is an [`crate::http::ApiError`]: its JSON shape is added
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

/// Control characters (Unicode category Cc, what [`char::is_control`] tests), as a regular
/// expression's character class body: neither group ids nor user ids may contain them.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";

/// A string of `min..=max` characters, none of them a control character.
fn text_without_controls(min: usize, max: usize) -> utoipa::openapi::ObjectBuilder {
    use utoipa::openapi::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(min))
        .max_length(Some(max))
        .pattern(Some(format!("^[^{CONTROL}]{{{min},{max}}}$")))
}

/// The rules of [`GroupId`]'s `FromStr`: the API answers 400 for any other group id.
impl utoipa::PartialSchema for GroupId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        text_without_controls(1, GroupId::MAX_CHARS)
            .description(Some(
                "A deployment's name and Kafka consumer group id, `<topology>-v<version>` for the versions this \
                 server deploys: 1 to 255 characters, no control characters.",
            ))
            .examples([serde_json::json!("personalization-v1")])
            .into()
    }
}

impl utoipa::ToSchema for GroupId {}

/// A user id in a request, as [`crate::http::check_user_id`] takes it.
pub struct UserId;

impl utoipa::PartialSchema for UserId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use crate::http::MAX_USER_ID_BYTES;
        text_without_controls(1, MAX_USER_ID_BYTES)
            .description(Some(format!(
                "A user: 1 to {MAX_USER_ID_BYTES} bytes of UTF-8 (so fewer characters when some take several \
                 bytes), no control characters."
            )))
            .examples([serde_json::json!("u1")])
            .into()
    }
}

impl utoipa::ToSchema for UserId {}

/// The bytes of an uploaded executable.
pub struct Executable;

impl utoipa::PartialSchema for Executable {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .into()
    }
}

impl utoipa::ToSchema for Executable {}

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
    fn the_documented_control_characters_are_what_is_control_tests() {
        let ranges = [(0x00, 0x1F), (0x7F, 0x9F)];
        assert_eq!(super::CONTROL, r"\u0000-\u001F\u007F-\u009F");
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            let listed = ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&u32::from(c)));
            assert_eq!(c.is_control(), listed, "{c:?}");
        }
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
