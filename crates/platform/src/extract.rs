//! Extractors whose rejections are problem+json documents naming the field, so a
//! malformed request gets the same error shape as a semantically invalid one; and
//! the edge where text with control characters (NUL, …) or of unbounded length is
//! turned away, for bodies, path and query parameters alike.

use axum::{
    body::Bytes,
    extract::{
        FromRequest, FromRequestParts, RawPathParams, Request, path::ErrorKind,
        rejection::PathRejection,
    },
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use contracts::common::{MAX_TEXT, forbidden};
use contracts::{FieldError, Problem};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

/// JSON body extractor and responder. Errors: 415 without a JSON content type,
/// 400 for unreadable JSON, 422 naming the field for JSON of the wrong shape,
/// 413 over the body limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T, S> FromRequest<S> for Json<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        if !has_json_content_type(&req) {
            return Err(unsupported_media_type());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            Problem::from_status(rejection.status()).with_detail(rejection.body_text())
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Deserializes `bytes`: 400 for what is not JSON; else 422 naming every field
/// that is missing, of the wrong type or holds a control character (NUL, …) in
/// any string, key or value, at once where they can be found at once.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Problem::bad_request(format!(
            "the body is not valid JSON: {}",
            strip_position(&e.to_string())
        ))
    })?;
    from_json_value(value)
}

/// Most repairs [`from_json_value`] makes to look for further bad fields: each
/// costs a few deserializations of the body, so a body full of bad fields is
/// bounded to about a hundred of them.
const MAX_REPAIRS: usize = 16;

/// [`parse_json`] of a parsed document. No string with a control character other
/// than tab, line feed and carriage return gets through, into any request type:
/// the handlers' own checks are stricter, and PostgreSQL never sees a NUL.
pub fn from_json_value<T: DeserializeOwned>(mut value: Value) -> Result<T, Problem> {
    let mut errors = Vec::new();
    control_characters(&value, &mut Vec::new(), &mut errors);
    // serde stops at the first bad field: record it, put a value of a type that
    // fits in its place (a placeholder) and go again, so one answer names them all.
    let mut placeholders: Vec<Vec<Seg>> = Vec::new();
    for _ in 0..MAX_REPAIRS {
        let (at, message) = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(v) if errors.is_empty() => return Ok(v),
            Ok(_) => break,
            Err(err) => {
                let at: Option<Vec<Seg>> = err.path().iter().map(Seg::from).collect();
                (at, err.into_inner().to_string())
            }
        };
        let Some(mut at) = at else { break };
        let missing = missing_field_name(&message);
        if let Some(name) = &missing {
            at.push(Seg::Key(name.clone()));
        }
        if !placeholders.iter().any(|p| at.starts_with(p)) {
            let message = if missing.is_some() {
                "is required".to_owned()
            } else {
                strip_position(&message)
            };
            errors.push(FieldError::new(render(&at), message));
        }
        if at.is_empty() || !repair::<T>(&mut value, &at) {
            break;
        }
        placeholders.push(at);
    }
    if errors.is_empty() {
        errors.push(FieldError::new("body", "does not have the expected shape"));
    }
    Err(Problem::validation(errors))
}

/// One step of a path into a JSON document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Seg {
    Index(usize),
    Key(String),
}

impl Seg {
    fn from(segment: &serde_path_to_error::Segment) -> Option<Self> {
        use serde_path_to_error::Segment;
        match segment {
            Segment::Seq { index } => Some(Self::Index(*index)),
            Segment::Map { key } => Some(Self::Key(key.clone())),
            Segment::Enum { variant } => Some(Self::Key(variant.clone())),
            Segment::Unknown => None,
        }
    }
}

/// `items[0].product_id`; `body` for the document itself.
fn render(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
        }
    }
    if out.is_empty() { "body".into() } else { out }
}

fn control_characters(value: &Value, path: &mut Vec<Seg>, errors: &mut Vec<FieldError>) {
    let bad = |s: &str| s.chars().find(|c| forbidden(*c, true));
    match value {
        Value::String(s) => {
            if let Some(c) = bad(s) {
                errors.push(FieldError::new(
                    render(path),
                    format!(
                        "must not contain control characters (found U+{:04X})",
                        c as u32
                    ),
                ));
            }
        }
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Seg::Index(i));
                control_characters(item, path, errors);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                path.push(Seg::Key(key.clone()));
                if bad(key).is_some() {
                    errors.push(FieldError::new(
                        render(path),
                        "a member name must not contain control characters",
                    ));
                } else {
                    control_characters(item, path, errors);
                }
                path.pop();
            }
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

/// Puts the first placeholder that `T` accepts at `at` (it may still fail
/// elsewhere); false when none fits, or `at` is not in the document.
fn repair<T: DeserializeOwned>(value: &mut Value, at: &[Seg]) -> bool {
    let candidates = [
        Value::String(String::new()),
        Value::from(0),
        Value::Bool(false),
        Value::Array(Vec::new()),
        Value::Object(serde_json::Map::new()),
        Value::String("00000000-0000-0000-0000-000000000000".into()),
    ];
    for candidate in candidates {
        let mut attempt = value.clone();
        if !put(&mut attempt, at, candidate) {
            return false;
        }
        // It fits unless `T` still fails right there (errors inside it are
        // placeholders' own, found and skipped in later rounds).
        let fits = match serde_path_to_error::deserialize::<_, T>(attempt.clone()) {
            Ok(_) => true,
            Err(err) => {
                let path: Option<Vec<Seg>> = err.path().iter().map(Seg::from).collect();
                path.as_deref() != Some(at)
            }
        };
        if fits {
            *value = attempt;
            return true;
        }
    }
    false
}

fn put(value: &mut Value, at: &[Seg], new: Value) -> bool {
    let Some((last, parents)) = at.split_last() else {
        return false;
    };
    let mut node = value;
    for seg in parents {
        let next = match seg {
            Seg::Index(i) => node.get_mut(*i),
            Seg::Key(k) => node.get_mut(k.as_str()),
        };
        let Some(next) = next else { return false };
        node = next;
    }
    match (last, node) {
        (Seg::Index(i), Value::Array(items)) if *i < items.len() => items[*i] = new,
        (Seg::Key(k), Value::Object(map)) => {
            map.insert(k.clone(), new);
        }
        _ => return false,
    }
    true
}

fn missing_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    rest.split('`').next().map(str::to_owned)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_owned(),
        None => message.to_owned(),
    }
}

fn has_json_content_type(req: &Request) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// Longest path or query parameter value, in characters.
pub const MAX_PARAM: usize = MAX_TEXT;

/// What is wrong with a path or query parameter's value: a control character
/// (NUL, …) or more than [`MAX_PARAM`] characters.
pub fn param_problem(value: &str) -> Option<String> {
    if let Some(c) = value.chars().find(|c| forbidden(*c, false)) {
        return Some(format!(
            "must not contain control characters (found U+{:04X})",
            c as u32
        ));
    }
    (value.chars().count() > MAX_PARAM).then(|| format!("must be at most {MAX_PARAM} characters"))
}

/// Path extractor answering 400 problem+json, naming the parameter, for a
/// segment that does not parse, holds a control character or is too long.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Ok(raw) = RawPathParams::from_request_parts(parts, state).await {
            let errors: Vec<FieldError> = raw
                .iter()
                .filter_map(|(name, value)| {
                    param_problem(value).map(|message| FieldError::new(name, message))
                })
                .collect();
            if !errors.is_empty() {
                return Err(Problem::new(
                    StatusCode::BAD_REQUEST,
                    "bad-path",
                    "Invalid path parameters",
                )
                .with_errors(errors));
            }
        }
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let name = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::DeserializeError { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                    ErrorKind::ParseError { .. } | ErrorKind::ParseErrorAtIndex { .. } => {
                        raw_names(parts, state).await.into_iter().next()
                    }
                    _ => None,
                };
                let problem = Problem::bad_request(e.body_text());
                Err(match name {
                    Some(name) => problem.with_errors(vec![FieldError::new(name, e.body_text())]),
                    None => problem,
                })
            }
            Err(e) => Err(Problem::from_status(e.status()).with_detail(e.body_text())),
        }
    }
}

async fn raw_names<S: Send + Sync>(parts: &mut Parts, state: &S) -> Vec<String> {
    RawPathParams::from_request_parts(parts, state)
        .await
        .map(|raw| raw.iter().map(|(k, _)| k.to_owned()).collect())
        .unwrap_or_default()
}

/// Query-string extractor answering 400 problem+json naming the parameter: one
/// that does not parse, holds a control character or is too long. An empty value
/// (`cursor=`) is the parameter left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T, S> FromRequestParts<S> for Query<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let query = parts.uri.query().unwrap_or_default();
        let mut kept = form_urlencoded::Serializer::new(String::new());
        let mut errors = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if let Some(message) = param_problem(&name) {
                errors.push(FieldError::new(
                    "query",
                    format!("a parameter name {message}"),
                ));
            } else if let Some(message) = param_problem(&value) {
                errors.push(FieldError::new(name, message));
            } else if !value.is_empty() {
                kept.append_pair(&name, &value);
            }
        }
        if !errors.is_empty() {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad-query",
                "Invalid query parameters",
            )
            .with_errors(errors));
        }
        let kept = kept.finish();
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(kept.as_bytes()));
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => Ok(Query(v)),
            Err(err) => {
                let field = err.path().to_string();
                Err(Problem::bad_query(
                    if field == "." { "query".into() } else { field },
                    err.into_inner().to_string(),
                ))
            }
        }
    }
}

/// A JSON body that may be left out: an empty body (no content type needed) or
/// `null` is `None`; anything else is read as [`Json`] reads it (415 without a
/// JSON content type, 400, 422).
#[derive(Debug, Clone, Default)]
pub struct OptionalJson<T>(pub Option<T>);

impl<T, S> FromRequest<S> for OptionalJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let json = has_json_content_type(&req);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            Problem::from_status(rejection.status()).with_detail(rejection.body_text())
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(None));
        }
        if !json {
            return Err(unsupported_media_type());
        }
        parse_json::<Option<T>>(&bytes).map(Self)
    }
}

fn unsupported_media_type() -> Problem {
    Problem::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        "Unsupported media type",
    )
    .with_detail("expected a request body with Content-Type: application/json")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: i32,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let p = parse_json::<Body>(br#"{"name":"a","items":[{"quantity":"x"}]}"#)
            .expect_err("wrong type");
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "items[0].quantity");
    }

    #[test]
    fn missing_fields_are_named() {
        let p = parse_json::<Body>(br#"{"items":[]}"#).expect_err("missing");
        assert_eq!(p.errors[0].field, "name");
    }

    #[test]
    fn syntax_errors_are_400() {
        let p = parse_json::<Body>(b"{not json").expect_err("syntax");
        assert_eq!(p.status, 400);
        assert_eq!(parse_json::<Body>(b"").expect_err("empty").status, 400);
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Order {
        customer: String,
        id: uuid::Uuid,
        items: Vec<Item>,
        address: Address,
        #[serde(default)]
        note: Option<String>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Address {
        city: String,
        zip: String,
    }

    fn fields_of(p: &Problem) -> Vec<&str> {
        p.errors.iter().map(|e| e.field.as_str()).collect()
    }

    #[test]
    fn every_missing_field_is_named_at_once() {
        let p = parse_json::<Order>(b"{}").expect_err("missing");
        assert_eq!(p.status, 422);
        assert_eq!(fields_of(&p), ["customer", "id", "items", "address"]);
        assert!(p.errors.iter().all(|e| e.message == "is required"));
        let p = parse_json::<Order>(
            br#"{"customer":"c","id":"00000000-0000-0000-0000-000000000001","items":[{}],"address":{"city":1}}"#,
        )
        .expect_err("nested");
        let mut fields = fields_of(&p);
        fields.sort_unstable();
        assert_eq!(fields, ["address.city", "address.zip", "items[0].quantity"]);
    }

    #[test]
    fn wrong_types_are_all_named() {
        let p = parse_json::<Order>(
            br#"{"customer":5,"id":"nope","items":[{"quantity":"x"},{"quantity":1}],"address":{"city":"a","zip":"b"},"note":7}"#,
        )
        .expect_err("types");
        assert_eq!(
            fields_of(&p),
            ["customer", "id", "items[0].quantity", "note"]
        );
    }

    #[test]
    fn control_characters_never_get_through() {
        let p = parse_json::<Body>(br#"{"name":"a\u0000b","items":[],"extra":{"k\u0001":1}}"#)
            .expect_err("nul");
        assert_eq!(p.status, 422);
        assert_eq!(fields_of(&p), ["extra.k\u{1}", "name"]);
        assert!(p.errors[1].message.contains("U+0000"));
        // Line breaks and tabs are for the handlers' own rules to judge.
        let ok = parse_json::<Body>(br#"{"name":"a\nb\tc","items":[]}"#).expect("multi-line");
        assert_eq!(ok.name, "a\nb\tc");
    }

    #[test]
    fn a_body_of_the_wrong_kind_is_named_body() {
        let p = parse_json::<Body>(br#""text""#).expect_err("a string");
        assert_eq!(fields_of(&p), ["body"]);
        assert!(parse_json::<Option<Body>>(b"null").expect("null").is_none());
    }

    #[test]
    fn parameters_with_control_characters_or_too_long_are_refused() {
        assert!(param_problem("a\u{0}b").is_some());
        assert!(param_problem(&"x".repeat(MAX_PARAM + 1)).is_some());
        assert_eq!(param_problem("SKU-1 ü"), None);
    }

    async fn query<T: DeserializeOwned>(q: &str) -> Result<T, Problem> {
        let (mut parts, ()) = axum::http::Request::builder()
            .uri(format!("/x?{q}"))
            .body(())
            .unwrap()
            .into_parts();
        Query::<T>::from_request_parts(&mut parts, &())
            .await
            .map(|Query(v)| v)
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Filter {
        customer: Option<String>,
        limit: Option<i64>,
    }

    #[tokio::test]
    async fn query_parameters_are_checked_and_empty_ones_absent() {
        let f: Filter = query("customer=&limit=").await.unwrap();
        assert!(f.customer.is_none() && f.limit.is_none());
        let p = query::<Filter>("customer=a%00b").await.unwrap_err();
        assert_eq!((p.status, fields_of(&p)), (400, vec!["customer"]));
        let p = query::<Filter>("limit=x").await.unwrap_err();
        assert_eq!((p.status, fields_of(&p)), (400, vec!["limit"]));
    }
}
