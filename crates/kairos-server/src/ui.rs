//! The web UI: one HTML page with its CSS and JavaScript, embedded in the binary (no CDN, works
//! offline), talking to the A1111 API and kairos' endpoints of the same server.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// `GET /`.
pub async fn index() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX).into_response()
}

/// `GET /ui/app.js`, `GET /ui/style.css`.
pub async fn asset(Path(path): Path<String>) -> Response {
    match path.as_str() {
        "app.js" => ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS).into_response(),
        "style.css" => ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE_CSS).into_response(),
        _ => crate::error::ApiError::NoRoute(format!("GET /ui/{path}")).into_response(),
    }
}
