//! `GET /openapi.json`: an OpenAPI 3.1 description of kairos' own endpoints and the A1111
//! endpoints it serves.

use axum::Json;
use serde_json::Value;

const DOCUMENT: &str = include_str!("../assets/openapi.json");

/// `GET /openapi.json`.
pub async fn document() -> Json<Value> {
    Json(serde_json::from_str(DOCUMENT).unwrap_or(Value::Null))
}
