//! Extractors whose rejections are problem+json documents, so a malformed request
//! gets the same error shape as a semantically invalid one.

use axum::{
    body::Bytes,
    extract::{FromRequest, FromRequestParts, Request, rejection::PathRejection},
    http::{StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use contracts::{FieldError, Problem};
use serde::{Serialize, de::DeserializeOwned};

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
            return Err(Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            )
            .with_detail("expected a request body with Content-Type: application/json"));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            Problem::from_status(rejection.status()).with_detail(rejection.body_text())
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Deserializes `bytes`, reporting the failing field's path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Problem> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => Ok(value),
        Err(err) => {
            let path = err.path().to_string();
            let inner = err.into_inner();
            if inner.is_data() {
                let field = if path == "." {
                    missing_field_name(&inner.to_string()).unwrap_or_else(|| "body".into())
                } else {
                    path
                };
                Err(Problem::validation(vec![FieldError::new(
                    field,
                    strip_position(&inner.to_string()),
                )]))
            } else {
                Err(Problem::bad_request(format!(
                    "the body is not valid JSON: {inner}"
                )))
            }
        }
    }
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

/// Path extractor answering 400 problem+json for an unparsable segment.
#[derive(Debug, Clone, Copy)]
pub struct Path<T>(pub T);

impl<T, S> FromRequestParts<S> for Path<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                Err(Problem::bad_request(e.body_text()))
            }
            Err(e) => Err(Problem::from_status(e.status()).with_detail(e.body_text())),
        }
    }
}

/// Query-string extractor answering 400 problem+json for bad parameters.
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
        let de = serde_urlencoded_deserializer(query);
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

fn serde_urlencoded_deserializer(query: &str) -> serde_urlencoded::Deserializer<'_> {
    serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()))
}

#[cfg(test)]
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
    }
}
