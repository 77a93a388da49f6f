//! Reading JSON bodies field by field, so that every error names its field (`steps: expected
//! an integer in 1..=1000, got "ten"`) and unknown fields are ignored, as A1111's API does. A
//! `null` field takes its default (A1111's models are `Optional` throughout).

use serde_json::{Map, Value};

use crate::error::ApiError;

/// A JSON object being read; `prefix` names nested objects in errors (`override_settings.`).
pub struct Body<'a> {
    obj: &'a Map<String, Value>,
    prefix: String,
}

/// Parses a request body: not JSON or not an object is [`ApiError::BadJson`].
pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ApiError::BadJson(e.to_string()))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::BadJson(format!("expected a JSON object, got {}", type_name(&other)))),
    }
}

/// `string`, `number`, ... for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.len() > 60 {
        format!("{}...", &text[..text.char_indices().nth(57).map_or(text.len(), |(i, _)| i)])
    } else {
        text
    }
}

impl<'a> Body<'a> {
    /// Reads `obj`; errors name fields as `prefix` + name.
    pub fn new(obj: &'a Map<String, Value>, prefix: &str) -> Self {
        Self { obj, prefix: prefix.to_string() }
    }

    /// The full name of a field, for errors.
    pub fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// The field's value; `None` when absent or null.
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn wrong(&self, field: &str, expected: &str, v: &Value) -> ApiError {
        ApiError::field(self.name(field), format!("expected {expected}, got {} {}", type_name(v), shown(v)))
    }

    /// A string field.
    pub fn string(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.wrong(field, "a string", v)),
        }
    }

    /// A boolean field.
    pub fn bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(field, "true or false", v)),
        }
    }

    /// A number field, finite, within `min..=max`.
    pub fn number(&self, field: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x.is_finite() && x >= min && x <= max {
                    Ok(Some(x))
                } else {
                    Err(ApiError::field(self.name(field), format!("must be in {min}..={max}, got {n}")))
                }
            }
            Some(v) => Err(self.wrong(field, "a number", v)),
        }
    }

    /// An integer field within `min..=max` (a float with no fraction is accepted, as pydantic does).
    pub fn int(&self, field: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                let x =
                    n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9e15).map(|f| f as i64));
                match x {
                    Some(x) if x >= min && x <= max => Ok(Some(x)),
                    _ => {
                        Err(ApiError::field(self.name(field), format!("must be an integer in {min}..={max}, got {n}")))
                    }
                }
            }
            Some(v) => Err(self.wrong(field, &format!("an integer in {min}..={max}"), v)),
        }
    }

    /// An object field.
    pub fn object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(self.wrong(field, "an object", v)),
        }
    }

    /// An array field.
    pub fn array(&self, field: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a)),
            Some(v) => Err(self.wrong(field, "an array", v)),
        }
    }

    /// Fails with [`ApiError::Unsupported`] when `field` is set to something other than what
    /// `is_default` accepts: a field that would change the image and that kairos does not do.
    pub fn refuse_unless(&self, field: &str, is_default: impl Fn(&Value) -> bool, why: &str) -> Result<(), ApiError> {
        match self.get(field) {
            Some(v) if !is_default(v) => {
                Err(ApiError::unsupported(self.name(field), format!("{why}; got {}", shown(v))))
            }
            _ => Ok(()),
        }
    }
}

/// `false`, `0`, `""`, `[]`, `{}`: a field left at its "off" value.
pub fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty() || s == "None",
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

/// A number equal to `x`.
pub fn is_number(x: f64) -> impl Fn(&Value) -> bool {
    move |v| v.as_f64() == Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn errors_name_the_field() {
        let obj = parse_object(br#"{"steps": "ten", "cfg_scale": 1e400, "w": 8.0, "n": null}"#);
        // 1e400 is not a valid f64 for serde_json: the whole body is rejected as JSON.
        assert!(matches!(obj, Err(ApiError::BadJson(_))));
        let obj = json!({"steps": "ten", "w": 8.0, "n": null, "big": 1e30, "o": {"x": 1}});
        let body = Body::new(obj.as_object().unwrap(), "");
        let err = body.int("steps", 1, 1000).unwrap_err().to_string();
        assert_eq!(err, r#"steps: expected an integer in 1..=1000, got a string "ten""#);
        assert_eq!(body.int("w", 1, 10).unwrap(), Some(8));
        assert_eq!(body.int("n", 1, 10).unwrap(), None);
        assert!(body.int("big", 1, 10).unwrap_err().to_string().starts_with("big: must be an integer"));
        let nested = Body::new(body.object("o").unwrap().unwrap(), "o.");
        assert_eq!(nested.string("x").unwrap_err().field_name().as_deref(), Some("o.x"));
        assert!(matches!(parse_object(b"[1]"), Err(ApiError::BadJson(_))));
        assert!(matches!(parse_object(b"{\"a\":"), Err(ApiError::BadJson(_))));
    }
}
