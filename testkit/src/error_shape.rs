//! The one error shape of contract §4.1 — `{"error":{"code","message","field"?,"index"?}}` as
//! `application/json` — checked on every kind of answer the kit reads.

use serde_json::{json, Value};

use crate::http::{HttpResponse, RawResponse};
use crate::sse::SseConn;
use crate::wait::SOON;

/// Checks the error shape of a body (JSON; only `error` at the top; only `code`, `message`,
/// `field`, `index` inside; a string code; a human message; a string field; a non-negative integer
/// index); returns the body, or what is wrong.
pub fn check_error_shape(text: &str) -> Result<Value, String> {
    let body: Value = serde_json::from_str(text)
        .map_err(|e| format!("the error body is not JSON ({e}): {text:?}"))?;
    let err = body
        .get("error")
        .and_then(Value::as_object)
        .ok_or_else(|| format!("no `error` object: {body}"))?;
    if body.as_object().map(|o| o.len()) != Some(1) {
        return Err(format!("more than `error` at the top: {body}"));
    }
    if let Some(key) = err
        .keys()
        .find(|k| !["code", "message", "field", "index"].contains(&k.as_str()))
    {
        return Err(format!("unexpected member {key:?} in {body}"));
    }
    if !err.get("code").is_some_and(Value::is_string) {
        return Err(format!("code is not a string: {body}"));
    }
    if err
        .get("message")
        .and_then(Value::as_str)
        .is_none_or(|m| m.trim().is_empty())
    {
        return Err(format!("no human message: {body}"));
    }
    if err.get("field").is_some_and(|f| !f.is_string()) {
        return Err(format!("field is not a string: {body}"));
    }
    if err.get("index").is_some_and(|i| !i.is_u64()) {
        return Err(format!("index is not a non-negative integer: {body}"));
    }
    Ok(body)
}

/// Checks the status, the error shape and that the code is one of `codes`; returns the body, or
/// what is wrong.
pub fn check_error_in(
    status: u16,
    codes: &[&str],
    got_status: u16,
    text: &str,
) -> Result<Value, String> {
    if got_status != status {
        return Err(format!(
            "status {got_status}, expected {status}; body {text}"
        ));
    }
    let body = check_error_shape(text)?;
    if !codes.iter().any(|c| body["error"]["code"] == json!(c)) {
        return Err(format!("code is not one of {codes:?}: {body}"));
    }
    Ok(body)
}

/// [`check_error_in`] with one code.
pub fn check_error(status: u16, code: &str, got_status: u16, text: &str) -> Result<Value, String> {
    check_error_in(status, &[code], got_status, text)
}

/// [`check_error`], panicking.
pub fn expect_error(what: &str, status: u16, code: &str, got_status: u16, text: &str) -> Value {
    check_error(status, code, got_status, text).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// A JSON content type, or what is wrong.
fn check_json_type(content_type: Option<&str>, status: u16, text: &str) -> Result<(), String> {
    let ct = content_type.unwrap_or_default();
    if ct.starts_with("application/json") {
        Ok(())
    } else {
        Err(format!(
            "content type {ct:?}, expected JSON ({status} {text})"
        ))
    }
}

/// [`check_error_in`] on a raw answer, also checking a JSON content type.
pub fn check_raw_error_in(
    resp: &RawResponse,
    status: u16,
    codes: &[&str],
) -> Result<Value, String> {
    let text = resp.text();
    check_json_type(resp.header("content-type"), resp.status(), &text)?;
    check_error_in(status, codes, resp.status(), &text)
}

/// [`check_raw_error_in`] with one code.
pub fn check_raw_error(resp: &RawResponse, status: u16, code: &str) -> Result<Value, String> {
    check_raw_error_in(resp, status, &[code])
}

/// [`check_raw_error`], panicking.
pub fn expect_raw_error(what: &str, resp: &RawResponse, status: u16, code: &str) -> Value {
    check_raw_error(resp, status, code).unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// [`expect_error`] on a reqwest answer, also checking a JSON content type.
pub fn expect_http_error(what: &str, resp: &HttpResponse, status: u16, code: &str) -> Value {
    let text = resp.text();
    check_json_type(resp.header("content-type"), resp.status.as_u16(), &text)
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    expect_error(what, status, code, resp.status.as_u16(), &text)
}

/// Reads a non-`200` SSE answer's body and checks it is the given error.
pub async fn expect_sse_error(what: &str, mut conn: SseConn, status: u16, code: &str) -> Value {
    let got = conn.status();
    let ct = conn.header("content-type").map(ToString::to_string);
    let body = conn
        .body_to_end(SOON)
        .await
        .unwrap_or_else(|e| panic!("{what}: reading the error body: {e}"));
    let text = String::from_utf8_lossy(&body).into_owned();
    check_json_type(ct.as_deref(), got, &text).unwrap_or_else(|e| panic!("{what}: {e}"));
    expect_error(what, status, code, got, &text)
}

/// `error.code` of a JSON error body, if it is one.
pub fn error_code_of(text: &str) -> Option<String> {
    let body = serde_json::from_str::<Value>(text).ok()?;
    crate::http::error_code(&body).map(ToString::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape() {
        let ok = r#"{"error":{"code":"invalid_field","message":"bad","field":"x","index":2}}"#;
        assert!(check_error(400, "invalid_field", 400, ok).is_ok());
        assert!(check_error_in(400, &["a", "invalid_field"], 400, ok).is_ok());
        assert!(check_error(400, "other", 400, ok).is_err());
        assert!(check_error(400, "invalid_field", 431, ok).is_err());
        for bad in [
            "not json",
            r#"{"error":{"code":"c","message":" "}}"#,
            r#"{"error":{"code":"c","message":"m"},"more":1}"#,
            r#"{"error":{"code":"c","message":"m","extra":1}}"#,
            r#"{"error":{"code":1,"message":"m"}}"#,
            r#"{"error":{"code":"c","message":"m","field":3}}"#,
            r#"{"error":{"code":"c","message":"m","index":-1}}"#,
        ] {
            assert!(check_error_shape(bad).is_err(), "{bad}");
        }
        assert_eq!(error_code_of(ok).as_deref(), Some("invalid_field"));
    }
}
