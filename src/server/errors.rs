//! Errors as OpenAI's API writes them: `{"error": {"message", "type", "param", "code"}}` with the matching HTTP
//! status, for every failure the server answers (bad JSON, a wrong key, an unknown path, a full queue...).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One failed request: the status and the error object's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `not_found_error`, `rate_limit_error`, `server_error`.
    pub kind: &'static str,
    /// The request field at fault, if one is.
    pub param: Option<String>,
    pub code: Option<&'static str>,
}

/// Marks a response whose body is already an OpenAI error, so the outer middleware leaves it alone.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shaped;

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), kind, param: None, code: None }
    }

    /// 400: the request is malformed or out of range.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 400 naming the field at fault.
    pub fn field(param: &str, message: impl Into<String>) -> ApiError {
        ApiError { param: Some(param.to_string()), ..ApiError::invalid(message) }
    }

    pub fn unauthorized() -> ApiError {
        let message = "a valid API key is required: send the header `Authorization: Bearer KEY`";
        ApiError {
            code: Some("invalid_api_key"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, "authentication_error", message)
        }
    }

    pub fn model_not_found(asked: &str, served: &str) -> ApiError {
        let message = format!("the model `{asked}` does not exist: this server serves `{served}`");
        ApiError { code: Some("model_not_found"), ..ApiError::field("model", message) }
    }

    pub fn too_large(limit: usize) -> ApiError {
        let message = format!("the request body is larger than the server's limit of {limit} bytes (--max-body)");
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request_error", message)
    }

    pub fn read_timeout(after: std::time::Duration) -> ApiError {
        let message = format!("the request body did not arrive within {} s", after.as_secs_f64());
        ApiError::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", message)
    }

    pub fn busy(message: impl Into<String>) -> ApiError {
        ApiError {
            code: Some("rate_limit_exceeded"),
            ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", message)
        }
    }

    pub fn shutting_down() -> ApiError {
        ApiError {
            code: Some("server_shutting_down"),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", "the server is shutting down")
        }
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }

    /// The error for a status the router answered by itself (an unknown path, a wrong method...).
    pub fn for_status(status: StatusCode, method: &str, path: &str) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => {
                ApiError::new(status, "not_found_error", format!("no such endpoint: {method} {path}"))
                    .with_code("unknown_url")
            }
            StatusCode::METHOD_NOT_ALLOWED => {
                ApiError::new(status, "invalid_request_error", format!("{path} does not take {method} requests"))
                    .with_code("method_not_allowed")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                ApiError::new(status, "invalid_request_error", "the request body is too large")
            }
            s if s.is_server_error() => ApiError::new(status, "server_error", format!("{method} {path}: {s}")),
            s => ApiError::new(status, "invalid_request_error", format!("{method} {path}: {s}")),
        }
    }

    pub fn with_code(mut self, code: &'static str) -> ApiError {
        self.code = Some(code);
        self
    }

    /// The error object, as the body of a response or an event of a stream.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"error": {
            "message": self.message, "type": self.kind, "param": self.param, "code": self.code,
        }})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.to_json().to_string();
        let mut r = (self.status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r.extensions_mut().insert(Shaped);
        r
    }
}
