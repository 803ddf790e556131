//! Makes a service's OpenAPI document say what the common stack really answers,
//! so that each handler's annotation lists only its own outcomes:
//!
//! - every error body (the `Problem` schema) is `application/problem+json`, as served;
//! - the statuses the stack adds are documented wherever they can occur: 400 (a body
//!   that is not JSON, a path or query parameter that does not parse, holds a
//!   control character or is too long), 413 (over the body limit), 415 (a body
//!   without a JSON content type), 422 (a body of the wrong shape), 401/403 on the
//!   operations that need a credential (the 401 with `WWW-Authenticate`), and 503
//!   everywhere (over the request timeout, or the database unavailable);
//! - `Retry-After` is documented on every 429 and 503;
//! - query parameters are never `null` (an absent one is left out).
//!
//! It works on the JSON form of the document: generic rewriting is shorter there
//! than on utoipa's typed model, and the result is read back into it.

use serde_json::{Map, Value, json};
use utoipa::openapi::OpenApi;

use contracts::problem::PROBLEM_JSON;

const PROBLEM_REF: &str = "#/components/schemas/Problem";

/// A service's complete document: its own operations (`api`), the health and metrics
/// routes every service serves, rewritten by [`finish`].
pub fn service_document(api: OpenApi) -> OpenApi {
    let mut doc = api;
    doc.merge(<crate::health::HealthApi as utoipa::OpenApi>::openapi());
    doc.merge(<crate::metrics::MetricsApi as utoipa::OpenApi>::openapi());
    finish(&mut doc);
    doc
}

/// Rewrites `doc` as described in the module docs. Call it on the complete
/// document (after merging the health and metrics routes).
pub fn finish(doc: &mut OpenApi) {
    let Ok(mut value) = serde_json::to_value(&*doc) else {
        return;
    };
    if let Some(paths) = value.get_mut("paths").and_then(Value::as_object_mut) {
        for item in paths.values_mut() {
            let Some(item) = item.as_object_mut() else {
                continue;
            };
            for (method, operation) in item.iter_mut() {
                if matches!(
                    method.as_str(),
                    "get" | "put" | "post" | "delete" | "patch" | "head" | "options"
                ) {
                    finish_operation(operation);
                }
            }
        }
    }
    match serde_json::from_value(value) {
        Ok(finished) => *doc = finished,
        Err(e) => tracing::error!(error = %e, "the finished OpenAPI document does not read back"),
    }
}

fn finish_operation(operation: &mut Value) {
    let has_body = operation.get("requestBody").is_some();
    let mut has_params = false;
    if let Some(params) = operation
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
    {
        for param in params.iter_mut() {
            let place = param.get("in").and_then(Value::as_str).unwrap_or("");
            if matches!(place, "path" | "query") {
                has_params = true;
            }
            if place == "query"
                && let Some(schema) = param.get_mut("schema")
            {
                drop_null(schema);
            }
        }
    }
    let secured = operation
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|o| !o.is_empty()))
        });
    let responses = operation
        .as_object_mut()
        .map(|o| o.entry("responses").or_insert_with(|| json!({})));
    let Some(responses) = responses.and_then(Value::as_object_mut) else {
        return;
    };
    for response in responses.values_mut() {
        problem_media_type(response);
    }
    if has_body || has_params {
        add(
            responses,
            "400",
            "Unreadable: a body that is not JSON, or a path or query parameter that does not \
             parse, holds a control character or is longer than 200 characters (named in `errors`)",
        );
    }
    if has_body {
        add(responses, "413", "The body is larger than the body limit");
        add(
            responses,
            "415",
            "The body is not sent as `Content-Type: application/json`",
        );
        add(
            responses,
            "422",
            "Invalid fields: missing, of the wrong type, out of bounds, or holding control \
             characters (each named in `errors`)",
        );
    }
    if secured {
        add(
            responses,
            "401",
            "No credential (`WWW-Authenticate: Bearer`)",
        );
        add(responses, "403", "A credential that does not grant this");
        if let Some(unauthorized) = responses.get_mut("401").and_then(Value::as_object_mut) {
            header(
                unauthorized,
                "WWW-Authenticate",
                json!({"type": "string", "enum": ["Bearer"]}),
                "The accepted scheme",
            );
        }
    }
    add(
        responses,
        "503",
        "Over the request timeout, or a dependency (the database) unavailable; nothing changed",
    );
    for status in ["429", "503"] {
        if let Some(response) = responses.get_mut(status).and_then(Value::as_object_mut) {
            header(
                response,
                "Retry-After",
                json!({"type": "integer", "minimum": 1}),
                "Seconds to wait before retrying",
            );
        }
    }
}

/// A `Problem` body is served as `application/problem+json`.
fn problem_media_type(response: &mut Value) {
    let Some(content) = response.get_mut("content").and_then(Value::as_object_mut) else {
        return;
    };
    let is_problem = content
        .get("application/json")
        .and_then(|c| c.pointer("/schema/$ref"))
        .and_then(Value::as_str)
        == Some(PROBLEM_REF);
    if is_problem && let Some(media) = content.remove("application/json") {
        content.insert(PROBLEM_JSON.to_owned(), media);
    }
}

/// Documents `status` with a problem body, or adds the problem body to a status
/// documented with another body (e.g. readiness' own 503 report), and says what
/// it means where the annotation did not.
fn add(responses: &mut Map<String, Value>, status: &str, description: &str) {
    let problem = json!({"schema": {"$ref": PROBLEM_REF}});
    match responses.get_mut(status).and_then(Value::as_object_mut) {
        Some(existing) => {
            if existing.get("description").and_then(Value::as_str) == Some("") {
                existing.insert("description".into(), Value::from(description));
            }
            let content = existing
                .entry("content")
                .or_insert_with(|| json!({}))
                .as_object_mut();
            if let Some(content) = content {
                content.entry(PROBLEM_JSON).or_insert(problem);
            }
        }
        None => {
            responses.insert(
                status.to_owned(),
                json!({"description": description, "content": {PROBLEM_JSON: problem}}),
            );
        }
    }
}

fn header(response: &mut Map<String, Value>, name: &str, schema: Value, description: &str) {
    let headers = response.entry("headers").or_insert_with(|| json!({}));
    if let Some(headers) = headers.as_object_mut() {
        headers
            .entry(name)
            .or_insert_with(|| json!({"schema": schema, "description": description}));
    }
}

/// `type: [T, "null"]` → `type: T`, also inside `oneOf`.
fn drop_null(schema: &mut Value) {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types.remove(0);
            schema["type"] = only;
        }
    }
    if let Some(one_of) = schema.get_mut("oneOf").and_then(Value::as_array_mut) {
        one_of.retain(|s| s.get("type").and_then(Value::as_str) != Some("null"));
        if one_of.len() == 1 {
            let only = one_of.remove(0);
            if let Some(obj) = schema.as_object_mut() {
                obj.remove("oneOf");
                if let Some(only) = only.as_object() {
                    for (k, v) in only {
                        obj.insert(k.clone(), v.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use utoipa::OpenApi as _;

    use super::*;

    #[derive(serde::Deserialize, utoipa::IntoParams)]
    #[into_params(parameter_in = Query)]
    #[allow(dead_code)]
    struct Filter {
        limit: Option<i64>,
    }

    #[utoipa::path(post, path = "/things/{id}", params(("id" = uuid::Uuid, Path), Filter),
        request_body = String, security(("staff" = [])),
        responses((status = 200, body = String), (status = 404, body = contracts::Problem)))]
    #[allow(dead_code)]
    fn thing() {}

    #[utoipa::path(get, path = "/plain", responses((status = 200, body = String)))]
    #[allow(dead_code)]
    fn plain() {}

    #[derive(utoipa::OpenApi)]
    #[openapi(paths(thing, plain))]
    struct Doc;

    #[test]
    fn errors_are_problems_and_the_stacks_statuses_are_documented() {
        let mut doc = Doc::openapi();
        finish(&mut doc);
        let doc = serde_json::to_value(&doc).unwrap();
        let thing = &doc["paths"]["/things/{id}"]["post"];
        let statuses: Vec<&String> = thing["responses"].as_object().unwrap().keys().collect();
        assert_eq!(
            statuses,
            [
                "200", "400", "401", "403", "404", "413", "415", "422", "503"
            ]
        );
        assert!(thing["responses"]["404"]["content"][PROBLEM_JSON].is_object());
        assert!(thing["responses"]["404"]["content"]["application/json"].is_null());
        assert_eq!(
            thing["responses"]["401"]["headers"]["WWW-Authenticate"]["schema"]["enum"][0],
            "Bearer"
        );
        assert!(thing["responses"]["503"]["headers"]["Retry-After"].is_object());
        assert_eq!(thing["parameters"][1]["schema"]["type"], "integer");
        let plain = &doc["paths"]["/plain"]["get"]["responses"];
        let statuses: Vec<&String> = plain.as_object().unwrap().keys().collect();
        assert_eq!(statuses, ["200", "503"]);
    }
}
