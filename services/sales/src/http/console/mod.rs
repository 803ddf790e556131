//! The staff console at `/console`: server-rendered HTML (maud), no front-end
//! build and no JavaScript needed (the health page refreshes itself with a
//! `<meta http-equiv="refresh">`). Every page reads through the same functions
//! as the JSON API, and every action goes through the same code, as the person
//! signed in: audits name the session's staff account.
//!
//! Sign-in takes a staff account's name and secret ([`crate::staff`]); the
//! session cookie is HttpOnly, SameSite=Strict and `Secure` unless
//! `SALES_CONSOLE_SECURE_COOKIE=false`; every form carries the session's CSRF
//! token; a session idle for `SALES_CONSOLE_IDLE_TIMEOUT_MS` is over; sign-in
//! attempts are rate limited.
//!
//! # Layout
//! - this module: the routes, sign-in and sign-out.
//! - [`pages`]: the review queue, the order page, dead letters, health.
//! - [`session`]: sessions, cookies, CSRF, the sign-in limiter.
//! - [`views`]: the layout, shared pieces and the error pages.

pub mod pages;
pub mod session;
pub mod views;

use std::collections::HashMap;

use axum::{
    Form, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use maud::html;
pub use session::LoginLimiter;
use session::{COOKIE, LOGIN_COOKIE, Session, cookie, same, set_cookie};
use views::{Failure, page, respond};

use crate::{http::AppState, staff::random_token};

/// A submitted form's fields (a missing field is refused by the handler, with a page).
pub type Fields = Result<Form<HashMap<String, String>>, axum::extract::rejection::FormRejection>;

/// The fields of a form, or none if the body was not a form.
pub fn fields(form: Fields) -> HashMap<String, String> {
    form.map(|Form(f)| f).unwrap_or_default()
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/queue") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/queue", get(pages::queue))
        .route("/console/orders/{id}", get(pages::order))
        .route("/console/orders/{id}/approve", post(pages::approve))
        .route("/console/orders/{id}/reject", post(pages::reject))
        .route("/console/dead-letters", get(pages::dead_letters))
        .route("/console/dead-letters/replay", post(pages::replay_all))
        .route("/console/dead-letters/{id}/replay", post(pages::replay_one))
        .route("/console/dead-letters/{id}/discard", post(pages::discard))
        .route("/console/health", get(pages::health))
}

fn login_form(state: &AppState, status: StatusCode, message: Option<(&str, &str)>) -> Response {
    let pairing = random_token(24);
    let body = html! {
        @if let Some((class, text)) = message {
            p class={"flash " (class)} #message { (text) }
        }
        form method="post" action="/console/login" {
            input type="hidden" name="csrf" value=(pairing);
            p { label { "Staff name" br; input type="text" name="name" autocomplete="username" required autofocus; } }
            p { label { "Secret" br; input type="password" name="secret" autocomplete="current-password" required; } }
            p { button type="submit" #sign-in { "Sign in" } }
        }
        p.muted { "Accounts are made by an operator with " code { "sales staff add NAME" } "." }
    };
    let mut response = respond(status, page("Sign in", None, body));
    let cookie = set_cookie(
        LOGIN_COOKIE,
        &pairing,
        "/console/login",
        state.config.console.secure_cookie,
        None,
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn login_page(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let message = if query.contains_key("expired") {
        Some(("err", "Your session expired. Sign in again."))
    } else if query.contains_key("signed-out") {
        Some(("ok", "You are signed out."))
    } else {
        None
    };
    login_form(&state, StatusCode::OK, message)
}

async fn login(State(state): State<AppState>, headers: HeaderMap, form: Fields) -> Response {
    let form = fields(form);
    // The form must come from the page this browser loaded (no sign-in CSRF).
    let paired = match (cookie(&headers, LOGIN_COOKIE), form.get("csrf")) {
        (Some(a), Some(b)) => same(a, b),
        _ => false,
    };
    if !paired {
        return Failure::Csrf.into_response();
    }
    let name = form.get("name").map(|n| n.trim()).unwrap_or_default();
    let secret = form.get("secret").map(String::as_str).unwrap_or_default();
    if !state.login_limiter.allow(name) {
        return login_form(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            Some((
                "err",
                "Too many sign-in attempts. Wait a minute and try again.",
            )),
        );
    }
    let verified = state
        .db
        .guard(async { Ok(state.staff.verify(&state.db.pool, name, secret).await?) })
        .await;
    let who = match verified {
        Ok(Some(who)) => who,
        Ok(None) => {
            tracing::warn!(name, "console sign-in refused");
            return login_form(
                &state,
                StatusCode::UNAUTHORIZED,
                Some(("err", "Wrong staff name or secret.")),
            );
        }
        Err(e) => return Failure::from(e).into_response(),
    };
    let token = match state
        .db
        .guard(async { Ok(session::create(&state.db.pool, who.id).await?) })
        .await
    {
        Ok(token) => token,
        Err(e) => return Failure::from(e).into_response(),
    };
    tracing::info!(staff = who.name, "console sign-in");
    let secure = state.config.console.secure_cookie;
    let mut response = Redirect::to("/console/queue").into_response();
    for cookie in [
        set_cookie(COOKIE, &token, "/console", secure, None),
        set_cookie(LOGIN_COOKIE, "", "/console/login", secure, Some(0)),
    ] {
        if let Ok(value) = cookie.parse() {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

async fn logout(
    State(state): State<AppState>,
    session: Session,
    headers: HeaderMap,
    form: Fields,
) -> Result<Response, Failure> {
    session.check_csrf(fields(form).get("csrf"))?;
    if let Some(token) = cookie(&headers, COOKIE) {
        state
            .db
            .guard(async { Ok(session::delete(&state.db.pool, token).await?) })
            .await?;
    }
    let mut response = Redirect::to("/console/login?signed-out=1").into_response();
    let cookie = set_cookie(
        COOKIE,
        "",
        "/console",
        state.config.console.secure_cookie,
        Some(0),
    );
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    Ok(response)
}
