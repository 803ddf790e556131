//! The console's layout, shared pieces, and its error pages: every failure is a
//! page that says what happened (sign in, expired session, rejected form, a
//! refused decision), never a bare 500.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use platform::ApiError;

use super::session::Session;

const STYLE: &str = r#"
body{font-family:system-ui,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2330;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#cfe0ff;text-decoration:none}header .who{margin-left:auto}
header form{display:inline}header button{background:none;border:1px solid #cfe0ff;color:#cfe0ff;border-radius:4px;cursor:pointer}
main{padding:1rem 1.4rem;max-width:1200px}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;padding:.35rem .6rem;border-bottom:1px solid #e3e6ea;vertical-align:top}
th{background:#eef1f5;font-weight:600}
.badge{display:inline-block;padding:.05rem .45rem;border-radius:9px;background:#e3e6ea;font-size:.85em}
.OPEN,.PENDING,.RUNNING,.WAITING,.HALF_OPEN,.DEGRADED{background:#fff1c2}.APPROVED,.SUCCEEDED,.COMPLETED,.PUBLISHED,.CLOSED,.HEALTHY,.DONE{background:#cdeccd}
.REJECTED,.FAILED,.OPEN_BREAKER,.EXHAUSTED,.COMPENSATED,.CANCELLED{background:#f6c9c9}.COMPENSATING,.DISCARDED,.RESOLVED,.SKIPPED{background:#dcdcf6}
.flash{padding:.6rem 1rem;border-radius:6px;margin:.6rem 0}.ok{background:#cdeccd}.err{background:#f6c9c9}
.steps{display:flex;align-items:stretch;gap:0;flex-wrap:wrap;margin:.6rem 0}
.step{background:#fff;border:2px solid #aab3c0;border-radius:8px;padding:.5rem .7rem;min-width:11rem}
.step h4{margin:0 0 .3rem}.step.SUCCEEDED{border-color:#4c9a4c}.step.FAILED{border-color:#c24141}.step.RUNNING{border-color:#c9a227}
.arrow{align-self:center;font-size:1.6rem;padding:0 .4rem;color:#7a8494}
.comp{margin-top:.4rem;padding-top:.3rem;border-top:1px dashed #aab3c0;font-size:.9em}
.err-text{color:#a32626;font-size:.9em;white-space:pre-wrap}
form.inline{display:inline}textarea{width:100%;max-width:40rem}
.counts a{margin-right:.8rem}.muted{color:#6b7482}
"#;

/// A whole page: the navigation (with the signed-in person and sign-out) and `body`.
pub fn page(title: &str, who: Option<&Session>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sales console" }
                style { (maud::PreEscaped(STYLE)) }
            }
            body {
                header {
                    strong { "sales console" }
                    @if let Some(s) = who {
                        a href="/console/queue" { "Review queue" }
                        a href="/console/dead-letters" { "Dead letters" }
                        a href="/console/health" { "Health" }
                        span.who {
                            "Signed in as " strong #who { (s.name) } " "
                            form.inline method="post" action="/console/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button type="submit" { "Sign out" }
                            }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// `status`ed HTML.
pub fn respond(status: StatusCode, markup: Markup) -> Response {
    (status, [(header::CACHE_CONTROL, "no-store")], markup).into_response()
}

/// How long ago `t` was, in words a person reads at a glance.
pub fn age(now: DateTime<Utc>, t: DateTime<Utc>) -> String {
    let secs = (now - t).num_seconds().max(0);
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m", secs / 60),
        3600..86400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d {}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// A timestamp as shown.
pub fn when(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// A status as a coloured badge.
pub fn badge(status: &str) -> Markup {
    html! { span class={"badge " (status)} { (status) } }
}

/// A console request that cannot go on.
#[derive(Debug)]
pub enum Failure {
    /// Not signed in (or the session expired): to the sign-in page.
    SignIn { expired: bool },
    /// A form without the session's CSRF token: 403.
    Csrf,
    /// A page that says what went wrong, with the status the API would answer.
    Page {
        status: StatusCode,
        title: String,
        detail: String,
    },
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        let problem = match e {
            ApiError::Problem(p) => p,
            ApiError::Database(e) => platform::db::problem(&e),
        };
        let status = problem.status_code();
        // What a person needs: the detail, and each bad field's message.
        let mut detail: Vec<String> = problem.detail.clone().into_iter().collect();
        detail.extend(
            problem
                .errors
                .iter()
                .map(|e| format!("{}: {}.", e.field, e.message)),
        );
        if detail.is_empty() {
            detail.push(if status.is_server_error() {
                "Something went wrong on the server (it is logged). Try again in a moment.".into()
            } else {
                problem.title.clone()
            });
        }
        Failure::Page {
            status,
            title: problem.title.clone(),
            detail: detail.join(" "),
        }
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::SignIn { expired } => Redirect::to(if expired {
                "/console/login?expired=1"
            } else {
                "/console/login"
            })
            .into_response(),
            Failure::Csrf => respond(
                StatusCode::FORBIDDEN,
                page(
                    "Form refused",
                    None,
                    html! {
                        p.flash.err #failure {
                            "This form was refused: it did not carry this session's security token \
                             (it may come from another site, or from a page older than your session)."
                        }
                        p { a href="/console/queue" { "Back to the console" } " and try again." }
                    },
                ),
            ),
            Failure::Page {
                status,
                title,
                detail,
            } => respond(
                status,
                page(
                    &title,
                    None,
                    html! {
                        p.flash.err #failure { (detail) }
                        p { a href="/console/queue" { "Back to the console" } }
                    },
                ),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        let now = Utc::now();
        assert_eq!(age(now, now - chrono::Duration::seconds(5)), "5s");
        assert_eq!(age(now, now - chrono::Duration::seconds(125)), "2m");
        assert_eq!(age(now, now - chrono::Duration::seconds(3700)), "1h 1m");
        assert_eq!(age(now, now - chrono::Duration::days(2)), "2d 0h");
        assert_eq!(age(now, now + chrono::Duration::seconds(5)), "0s");
    }
}
