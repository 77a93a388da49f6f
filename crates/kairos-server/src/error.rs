//! The error type of `kairos-server` and its one mapping to HTTP: every failure is a status and a
//! JSON body `{"error": KIND, "field": NAME|null, "detail": MESSAGE}` (A1111's handler writes
//! `error` and `detail` too), never a dropped connection or a panic.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kairos_pipeline::PipelineError;

/// Errors of a request, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A field with a wrong type, range or value (400), or unparseable JSON (the field is
    /// `null` then).
    #[error("{field}: {message}")]
    BadField {
        /// The JSON field (dotted for nested ones, e.g. `override_settings.sd_vae`).
        field: String,
        /// What is wrong and what is accepted.
        message: String,
    },
    /// A body that is not JSON, or not an object (400).
    #[error("invalid JSON body: {0}")]
    BadJson(String),
    /// A field that would change the image and that kairos does not implement (422): never
    /// silently dropped.
    #[error("{field}: not supported by kairos ({message})")]
    Unsupported {
        /// The field.
        field: String,
        /// Why, and what to send instead.
        message: String,
    },
    /// A model, VAE or LoRA name that is not in the server's folders (404).
    #[error("{field}: {what} `{name}` not found; available: {available}")]
    NotFound {
        /// The field that named it.
        field: String,
        /// `model`, `VAE`, `LoRA`.
        what: &'static str,
        /// The name given.
        name: String,
        /// The names that exist (possibly shortened).
        available: String,
    },
    /// The queue is full (503, with `Retry-After`).
    #[error("the queue is full ({capacity} jobs waiting); retry in {retry_after} s")]
    QueueFull {
        /// The queue's capacity.
        capacity: usize,
        /// Seconds until a slot is likely free.
        retry_after: u64,
    },
    /// Missing or wrong credentials (401).
    #[error("authentication required")]
    Unauthorized,
    /// No such route (404).
    #[error("no route {0}")]
    NoRoute(String),
    /// The body is larger than the server accepts (413).
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The pipeline rejected the request (400) or failed (500).
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// The worker is gone or a model failed to load (500).
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// A [`ApiError::BadField`].
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadField { field: field.into(), message: message.into() }
    }

    /// An [`ApiError::Unsupported`].
    pub fn unsupported(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Unsupported { field: field.into(), message: message.into() }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadField { .. } | Self::BadJson(_) => StatusCode::BAD_REQUEST,
            Self::Unsupported { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound { .. } | Self::NoRoute(_) => StatusCode::NOT_FOUND,
            Self::QueueFull { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Pipeline(e) if is_request_error(e) => StatusCode::BAD_REQUEST,
            Self::Pipeline(_) | Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::BadField { .. } => "BadField",
            Self::BadJson(_) => "BadJson",
            Self::Unsupported { .. } => "Unsupported",
            Self::NotFound { .. } => "NotFound",
            Self::QueueFull { .. } => "QueueFull",
            Self::Unauthorized => "Unauthorized",
            Self::NoRoute(_) => "NoRoute",
            Self::TooLarge { .. } => "TooLarge",
            Self::Pipeline(_) => "Pipeline",
            Self::Internal(_) => "Internal",
        }
    }

    /// The field the error is about, if any.
    pub fn field_name(&self) -> Option<String> {
        match self {
            Self::BadField { field, .. } | Self::Unsupported { field, .. } | Self::NotFound { field, .. } => {
                Some(field.clone())
            }
            Self::Pipeline(e) => pipeline_field(e).map(str::to_string),
            _ => None,
        }
    }
}

/// Pipeline errors caused by the request's values rather than by the server.
fn is_request_error(e: &PipelineError) -> bool {
    matches!(
        e,
        PipelineError::BadImageSize { .. }
            | PipelineError::InvalidOption { .. }
            | PipelineError::Schedule(_)
            | PipelineError::Prompt(_)
            | PipelineError::VaeMismatch { .. }
            | PipelineError::Lora(_)
    )
}

/// The request field a pipeline error is about, in the A1111 request's names.
fn pipeline_field(e: &PipelineError) -> Option<&'static str> {
    match e {
        PipelineError::BadImageSize { side, .. } => Some(side),
        PipelineError::InvalidOption { name: "strength", .. } => Some("denoising_strength"),
        PipelineError::InvalidOption { name: "init_image" | "image", .. } => Some("init_images"),
        PipelineError::InvalidOption { name: "batch_count", .. } => Some("n_iter"),
        PipelineError::InvalidOption { name, .. } => Some(name),
        PipelineError::Schedule(_) => Some("scheduler"),
        PipelineError::Prompt(_) => Some("prompt"),
        PipelineError::VaeMismatch { .. } => Some("sd_vae"),
        PipelineError::Lora(_) => Some("prompt"),
        _ => None,
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = serde_json::json!({
            "error": self.kind(),
            "field": self.field_name(),
            "detail": self.to_string(),
            "errors": self.to_string(),
        });
        let mut response = (status, axum::Json(body)).into_response();
        match &self {
            Self::QueueFull { retry_after, .. } => {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
            }
            Self::Unauthorized => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"kairos\""));
            }
            _ => {}
        }
        response
    }
}
