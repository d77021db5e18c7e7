//! The one error type of the FHIR API.
//!
//! Every failure becomes an `OperationOutcome` whose issues say what was wrong and, where an
//! element is to blame, where (`expression`). Internal errors are logged with a correlation id
//! and answered with a 500 that reveals nothing but that id.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::fhir::format::FHIR_JSON;

/// How bad an issue is (`OperationOutcome.issue.severity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Fatal => "fatal",
            Self::Error => "error",
            Self::Warning => "warning",
            Self::Information => "information",
        }
    }
}

/// One entry of an `OperationOutcome`.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    /// A code from http://hl7.org/fhir/issue-type (`invalid`, `structure`, `not-found`, …).
    pub code: &'static str,
    pub diagnostics: String,
    /// FHIRPath of the element at fault, e.g. `Patient.name[0].given[1]`.
    pub expression: Option<String>,
}

impl Issue {
    pub fn error(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn information(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self {
            severity: Severity::Information,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }
}

/// Builds an `OperationOutcome` resource from issues.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    let issues: Vec<Value> = issues
        .iter()
        .map(|issue| {
            let mut v = json!({
                "severity": issue.severity.as_str(),
                "code": issue.code,
                "diagnostics": issue.diagnostics,
            });
            if let Some(expression) = &issue.expression {
                v["expression"] = json!([expression]);
            }
            v
        })
        .collect();
    json!({ "resourceType": "OperationOutcome", "issue": issues })
}

/// Everything a FHIR request can fail with, each mapped to its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum FhirError {
    /// 400: the body or a parameter cannot be used (parse or schema failure).
    #[error("bad request")]
    BadRequest(Vec<Issue>),
    /// 422: the resource is well-formed but breaks a rule of the server.
    #[error("unprocessable entity")]
    Unprocessable(Vec<Issue>),
    /// 404: no such resource type or resource.
    #[error("not found: {0}")]
    NotFound(String),
    /// 410: the resource was deleted.
    #[error("gone: {0}")]
    Gone(String),
    /// 405
    #[error("method not allowed: {0}")]
    MethodNotAllowed(String),
    /// 406
    #[error("not acceptable: {0}")]
    NotAcceptable(String),
    /// 409: the write lost a race, or the id is taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// 412: `If-Match` or a conditional operation's precondition did not hold.
    #[error("precondition failed: {0}")]
    PreconditionFailed(String),
    /// 413
    #[error("payload too large: {0}")]
    PayloadTooLarge(String),
    /// 415
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    /// 401: no access token, or one that is not valid; `challenge` is the
    /// `WWW-Authenticate` header (RFC 6750).
    #[error("unauthorized: {message}")]
    Unauthorized {
        message: String,
        challenge: HeaderValue,
    },
    /// 403: the access token does not allow this.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 500: logged with a correlation id; the client sees only the id.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl FhirError {
    pub fn bad_request(code: &'static str, diagnostics: impl Into<String>) -> Self {
        Self::BadRequest(vec![Issue::error(code, diagnostics)])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Gone(_) => StatusCode::GONE,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The issues of this error's OperationOutcome. An internal error is logged here, with the
    /// correlation id its one issue names.
    pub fn issues(&self) -> Vec<Issue> {
        let one = |code, text: &str| vec![Issue::error(code, text)];
        match self {
            Self::BadRequest(issues) | Self::Unprocessable(issues) => issues.clone(),
            Self::NotFound(what) => one("not-found", what),
            Self::Gone(what) => one("deleted", what),
            Self::MethodNotAllowed(what) => one("not-supported", what),
            Self::NotAcceptable(what) => one("not-supported", what),
            Self::Conflict(what) => one("conflict", what),
            Self::PreconditionFailed(what) => one("conflict", what),
            Self::PayloadTooLarge(what) => one("too-costly", what),
            Self::UnsupportedMediaType(what) => one("not-supported", what),
            Self::Unauthorized { message, .. } => one("login", message),
            Self::Forbidden(what) => one("forbidden", what),
            Self::Internal(error) => {
                let correlation_id = uuid::Uuid::new_v4();
                // The chain may quote database errors; it stays in the log, never in the answer.
                tracing::error!(%correlation_id, error = format!("{error:#}"), "internal error");
                vec![Issue {
                    severity: Severity::Fatal,
                    code: "exception",
                    diagnostics: format!("internal server error (correlation id {correlation_id})"),
                    expression: None,
                }]
            }
        }
    }
}

impl From<sqlx::Error> for FhirError {
    fn from(error: sqlx::Error) -> Self {
        Self::Internal(error.into())
    }
}

impl IntoResponse for FhirError {
    fn into_response(self) -> Response {
        let mut response = outcome_response(self.status(), &self.issues());
        if let Self::Unauthorized { challenge, .. } = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, challenge);
        }
        response
    }
}

/// An `OperationOutcome` response with the given status.
pub fn outcome_response(status: StatusCode, issues: &[Issue]) -> Response {
    let body = serde_json::to_vec(&operation_outcome(issues)).unwrap_or_default();
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
    response
}

pub type FhirResult<T> = Result<T, FhirError>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::validate::SchemaValidator;
    use fhir_models::ResourceType;

    #[test]
    fn operation_outcomes_are_valid_fhir() {
        let outcome = operation_outcome(&[
            Issue::error("invalid", "bad").at("Patient.birthDate"),
            Issue::information("informational", "fine"),
        ]);
        let issues = SchemaValidator::new().check(ResourceType::OperationOutcome, &outcome);
        assert_eq!(issues, vec![]);
    }

    #[test]
    fn internal_errors_reveal_only_a_correlation_id() {
        let error =
            FhirError::Internal(anyhow::anyhow!("password authentication failed for user x"));
        let issues = error.issues();
        assert_eq!(issues.len(), 1);
        assert!(
            issues[0]
                .diagnostics
                .starts_with("internal server error (correlation id ")
        );
        assert!(!issues[0].diagnostics.contains("password"));
    }
}
