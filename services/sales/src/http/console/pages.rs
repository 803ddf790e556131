//! The console's pages and actions: the review queue, an order's whole picture
//! (reviews, history, the saga as its steps, the delivery, its events) with the
//! two decisions, dead letters with replay and discard, and health.

use std::collections::HashMap;

use axum::{
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
};
use chrono::{DateTime, Utc};
use maud::{Markup, html};
use platform::{
    ApiResult,
    auth::{STAFF_MEMBER_HEADER, Staff},
    extract::{Path, Query},
};
use saga::store::{SagaView, StepKind, StepView};
use uuid::Uuid;

use super::{
    Fields, fields,
    session::Session,
    views::{Failure, age, badge, page, respond, when},
};
use crate::{
    http::{
        AppState, dead_letters,
        reviews::{Decision, ReviewedOrder, decide, queue},
    },
    orders::reviews::{ReviewReason, ReviewStatus},
    reliability,
};

/// `/console/queue`: reviews oldest first, filtered by status and reason, with counts per reason.
pub async fn queue(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let param = |k: &str| query.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
    let status = param("status")
        .and_then(ReviewStatus::parse)
        .unwrap_or(ReviewStatus::Open);
    let reason = param("reason").map(str::to_owned);
    let cursor = param("cursor").map(str::to_owned);
    let page_ = queue::page(
        &state,
        &queue::QueueQuery {
            status: Some(status.as_str().to_owned()),
            reason: reason.clone(),
            limit: Some(20),
            cursor,
        },
    )
    .await?;
    let counts = queue::counts_by_reason(&state, status).await?;
    let now = Utc::now();
    let link = |reason: Option<&str>| {
        let mut url = format!(
            "/console/queue?status={}",
            status.as_str().to_ascii_lowercase()
        );
        if let Some(r) = reason {
            url.push_str(&format!("&reason={r}"));
        }
        url
    };
    let total: i64 = counts.iter().map(|(_, n)| n).sum();
    let body = html! {
        form method="get" action="/console/queue" {
            label { "Status "
                select name="status" {
                    @for s in ReviewStatus::ALL {
                        option value=(s.as_str().to_ascii_lowercase()) selected[s == status] { (s.as_str()) }
                    }
                }
            }
            " "
            label { "Reason "
                select name="reason" {
                    option value="" { "any" }
                    @for r in ReviewReason::ALL {
                        option value=(r.as_str()) selected[reason.as_deref() == Some(r.as_str())] { (r.as_str()) }
                    }
                }
            }
            " " button type="submit" { "Filter" }
        }
        p.counts #counts {
            a href=(link(None)) { "all " (status.as_str()) ": " strong { (total) } }
            @for (r, n) in &counts {
                a href=(link(Some(r))) { (r) ": " strong { (n) } }
            }
        }
        @if page_.items.is_empty() {
            p #empty { "No " (status.as_str().to_ascii_lowercase()) " reviews" @if let Some(r) = &reason { " for " (r) } "." }
        } @else {
            table #queue {
                thead { tr { th { "Opened" } th { "Age" } th { "Reason" } th { "Order" } th { "Customer" } th { "Order status" } th { "Total" } th { "Review" } } }
                tbody {
                    @for e in &page_.items {
                        tr.entry data-order=(e.order.id) {
                            td { (when(e.review.created_at)) }
                            td { (age(now, e.review.created_at)) }
                            td { (badge(e.review.reason.as_str())) }
                            td { a href={"/console/orders/" (e.order.id)} { (e.order.id) } }
                            td { (e.order.customer_id) }
                            td { (badge(e.order.status.as_str())) }
                            td { (count(e.order.item_units, "unit")) " in " (count(e.order.item_lines, "line")) }
                            td { (badge(e.review.status.as_str())) }
                        }
                    }
                }
            }
        }
        @if let Some(next) = &page_.next_cursor {
            p { a #next href={(link(reason.as_deref())) "&cursor=" (next)} { "Next page →" } }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Review queue", Some(&session), body),
    ))
}

/// The order's outbox events, oldest first (read-only here; the outbox module writes them).
struct EventRow {
    id: Uuid,
    event_type: String,
    aggregate_version: i32,
    status: String,
    retry_count: i32,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    sent_at: Option<DateTime<Utc>>,
}

async fn events_of(state: &AppState, order_id: Uuid) -> ApiResult<Vec<EventRow>> {
    Ok(sqlx::query_as!(
        EventRow,
        "SELECT id, event_type, aggregate_version, status, retry_count, last_error, created_at, sent_at
         FROM outbox_events WHERE aggregate_id = $1 ORDER BY aggregate_version, created_at",
        order_id
    )
    .fetch_all(&state.db.pool)
    .await?)
}

async fn saga_of(state: &AppState, order_id: Uuid) -> ApiResult<Option<SagaView>> {
    let Some(id) = crate::store::sagas::saga_of(&state.db.pool, order_id).await? else {
        return Ok(None);
    };
    match saga::store::load(&state.db.pool, id).await {
        Ok(view) => Ok(view),
        Err(saga::Error::Database(e)) => Err(e.into()),
        Err(e) => {
            tracing::warn!(order_id = %order_id, error = %e, "the order's saga is unreadable");
            Ok(None)
        }
    }
}

/// One step of the saga as drawn: its action's executions and its compensation's.
struct DrawnStep<'a> {
    name: &'a str,
    actions: Vec<&'a StepView>,
    compensations: Vec<&'a StepView>,
}

/// The steps in the order they first ran.
fn drawn(saga: &SagaView) -> Vec<DrawnStep<'_>> {
    let mut steps: Vec<DrawnStep<'_>> = Vec::new();
    for execution in &saga.steps {
        let i = match steps.iter().position(|s| s.name == execution.step) {
            Some(i) => i,
            None => {
                steps.push(DrawnStep {
                    name: &execution.step,
                    actions: Vec::new(),
                    compensations: Vec::new(),
                });
                steps.len() - 1
            }
        };
        match execution.kind {
            StepKind::Action => steps[i].actions.push(execution),
            StepKind::Compensation => steps[i].compensations.push(execution),
        }
    }
    steps
}

fn saga_graph(saga: &SagaView) -> Markup {
    let steps = drawn(saga);
    html! {
        p { "Saga " code { (saga.id) } " " (badge(saga.status.as_str()))
            @if let Some(s) = &saga.current_step { " at " strong { (s) } }
            @if let Some(s) = &saga.failed_step { " — failed at " strong { (s) } } }
        @if let Some(e) = &saga.error { p.err-text { (e) } }
        @if let Some(e) = &saga.compensation_error { p.err-text { "compensation: " (e) } }
        div.steps #saga-steps {
            @for (i, step) in steps.iter().enumerate() {
                @if i > 0 { span.arrow { "→" } }
                @let last = step.actions.last();
                @let status = last.map(|s| s.status.as_str()).unwrap_or("PENDING");
                div class={"step " (status)} data-step=(step.name) {
                    h4 { (i + 1) ". " (step.name) }
                    div { (badge(status)) " " (step.actions.len()) " attempt" @if step.actions.len() != 1 { "s" } }
                    @if let Some(last) = last {
                        div.muted { (when(last.started_at)) }
                    }
                    @for a in &step.actions {
                        @if let Some(e) = &a.error { div.err-text { "#" (a.attempt) ": " (e) } }
                    }
                    @if !step.compensations.is_empty() {
                        div.comp {
                            "↩ compensation: "
                            @for c in &step.compensations {
                                (badge(c.status.as_str())) " "
                                @if let Some(e) = &c.error { span.err-text { (e) } }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn order_body(
    session: &Session,
    detail: &ReviewedOrder,
    saga: Option<&SagaView>,
    events: &[EventRow],
    flash: Option<(&str, String)>,
) -> Markup {
    let order = &detail.order;
    let open = detail
        .reviews
        .iter()
        .any(|r| r.status == ReviewStatus::Open);
    html! {
        @if let Some((class, text)) = &flash {
            p class={"flash " (class)} #outcome { (text) }
        }
        table {
            tr { th { "Order" } td #order-id { (order.id) } }
            tr { th { "Status" } td #order-status { (badge(order.status.as_str())) } }
            tr { th { "Customer" } td { (order.customer_id) } }
            tr { th { "Flags" } td {
                @if order.requires_manual_review { (badge("OPEN")) " requires manual review " }
                @if order.fallback_used { span.badge { "accepted on the fallback" } }
            } }
            tr { th { "Ship to" } td { (order.shipping_address.recipient) ", " (order.shipping_address.line1) } }
            tr { th { "Placed" } td { (when(order.created_at)) " (version " (order.version) ")" } }
        }
        h2 { "Saga" }
        @match saga {
            Some(saga) => (saga_graph(saga)),
            None => p.muted { "This order has no saga record." },
        }
        h2 { "Items" }
        table #items {
            tr { th { "Product" } th { "Quantity" } }
            @for item in &order.items { tr { td { (item.product_id) } td { (item.quantity) } } }
        }
        h2 { "Reviews" }
        table #reviews {
            tr { th { "Opened" } th { "Reason" } th { "Status" } th { "Decided by" } th { "When" } th { "Resolution" } th { "Note" } }
            @for r in &detail.reviews {
                tr {
                    td { (when(r.created_at)) }
                    td { (badge(r.reason.as_str())) }
                    td { (badge(r.status.as_str())) }
                    td.decided-by { (r.resolved_by.as_deref().unwrap_or("")) }
                    td { (r.resolved_at.map(when).unwrap_or_default()) }
                    td { (r.resolution.as_deref().unwrap_or("")) }
                    td { (r.note.as_deref().unwrap_or("")) }
                }
            }
        }
        @if open {
            h3 { "Decide" }
            form method="post" action={"/console/orders/" (order.id) "/approve"} #decide {
                input type="hidden" name="csrf" value=(session.csrf);
                p { label { "Note (required)" br; textarea name="note" rows="3" required {} } }
                p {
                    button type="submit" #approve { "Approve" } " "
                    button type="submit" #reject formaction={"/console/orders/" (order.id) "/reject"} { "Reject (cancel the order)" }
                }
            }
        } @else {
            p.muted { "No open review: nothing to decide." }
        }
        h2 { "Delivery" }
        table #delivery {
            tr { th { "Delivery" } td { (order.delivery_id.map(|d| d.to_string()).unwrap_or_else(|| "not initiated".into())) } }
            tr { th { "Held" } td { (order.delivery_hold.map(|h| format!("{h:?}")).unwrap_or_else(|| "no".into())) } }
            @if let Some(r) = &detail.delivery_retry {
                tr { th { "Retry" } td { (badge(r.status.as_str())) " " (r.attempts) " attempts; next " (when(r.next_attempt_at))
                    @if let Some(e) = &r.last_error { div.err-text { (e) } } } }
            } @else {
                tr { th { "Retry" } td.muted { "no retry row" } }
            }
        }
        h2 { "Status history" }
        table #history {
            tr { th { "When" } th { "From" } th { "To" } th { "Why" } }
            @for h in &detail.history {
                tr { td { (when(h.changed_at)) } td { (h.from_status.map_or("", |s| s.as_str())) } td { (badge(h.to_status.as_str())) } td { (h.reason.as_deref().unwrap_or("")) } }
            }
        }
        h2 { "Events" }
        table #events {
            tr { th { "Version" } th { "Event" } th { "Status" } th { "Retries" } th { "Created" } th { "Sent" } }
            @for e in events {
                tr data-event=(e.id) {
                    td { (e.aggregate_version) } td { (e.event_type) } td { (badge(&e.status))
                        @if let Some(err) = &e.last_error { div.err-text { (err) } } }
                    td { (e.retry_count) } td { (when(e.created_at)) } td { (e.sent_at.map(when).unwrap_or_default()) }
                }
            }
        }
    }
}

async fn render_order(
    state: &AppState,
    session: &Session,
    id: Uuid,
    status: StatusCode,
    flash: Option<(&str, String)>,
) -> Result<Response, Failure> {
    let (detail, saga, events) = state
        .db
        .guard(async {
            let detail = queue::detail(state, id).await?;
            Ok((
                detail,
                saga_of(state, id).await?,
                events_of(state, id).await?,
            ))
        })
        .await?;
    let body = order_body(session, &detail, saga.as_ref(), &events, flash);
    Ok(respond(
        status,
        page(&format!("Order {id}"), Some(session), body),
    ))
}

/// `/console/orders/{id}`.
pub async fn order(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let flash = match query.get("done").map(String::as_str) {
        Some("approved") => Some(("ok", "Approved: the order proceeds.".to_owned())),
        Some("rejected") => Some(("ok", "Rejected: the order is cancelled.".to_owned())),
        _ => None,
    };
    render_order(&state, &session, id, StatusCode::OK, flash).await
}

#[derive(Clone, Copy)]
enum Verdict {
    Approve,
    Reject,
}

async fn decide(
    state: AppState,
    session: Session,
    id: Uuid,
    form: Fields,
    verdict: Verdict,
) -> Result<Response, Failure> {
    let form = fields(form);
    session.check_csrf(form.get("csrf"))?;
    let decision = Decision {
        note: form.get("note").cloned().unwrap_or_default(),
    };
    let outcome = match decide::note(&decision) {
        Err(e) => Err(e),
        Ok(note) => match verdict {
            Verdict::Approve => decide::approve_order(&state, id, &session.name, &note).await,
            Verdict::Reject => decide::reject_order(&state, id, &session.name, &note).await,
        },
    };
    match outcome {
        Ok(_) => {
            let done = match verdict {
                Verdict::Approve => "approved",
                Verdict::Reject => "rejected",
            };
            Ok(Redirect::to(&format!("/console/orders/{id}?done={done}")).into_response())
        }
        Err(e) => {
            let (status, detail) = match Failure::from(e) {
                Failure::Page { status, detail, .. } => (status, detail),
                other => return Err(other),
            };
            if status == StatusCode::NOT_FOUND {
                return Err(Failure::Page {
                    status,
                    title: "No such order".into(),
                    detail,
                });
            }
            let text = match status {
                StatusCode::CONFLICT => format!(
                    "Refused: {detail} This order was decided already; see who decided below."
                ),
                StatusCode::UNPROCESSABLE_ENTITY => {
                    "Refused: a decision needs a note (1–2000 characters).".to_owned()
                }
                _ => format!("Refused: {detail}"),
            };
            render_order(&state, &session, id, status, Some(("err", text))).await
        }
    }
}

/// `POST /console/orders/{id}/approve` (`csrf`, `note`).
pub async fn approve(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    form: Fields,
) -> Result<Response, Failure> {
    decide(state, session, id, form, Verdict::Approve).await
}

/// `POST /console/orders/{id}/reject` (`csrf`, `note`).
pub async fn reject(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    form: Fields,
) -> Result<Response, Failure> {
    decide(state, session, id, form, Verdict::Reject).await
}

/// The headers the dead-letter actions read their actor from: the session's person.
fn as_person(session: &Session) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&session.name) {
        headers.insert(STAFF_MEMBER_HEADER, value);
    }
    headers
}

/// `/console/dead-letters`.
pub async fn dead_letters(
    State(state): State<AppState>,
    session: Session,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let platform::extract::Json(rows) =
        dead_letters::list_failed(State(state.clone()), Staff).await?;
    let now = Utc::now();
    let flash = query.get("done").map(|d| match d.as_str() {
        "discarded" => "Discarded; the audit records it.".to_owned(),
        n => format!("Replayed {n}: back to PENDING for the relay."),
    });
    let body = html! {
        @if let Some(text) = &flash { p.flash.ok #outcome { (text) } }
        @if rows.is_empty() {
            p #empty { "No dead letters." }
        } @else {
            form method="post" action="/console/dead-letters/replay" {
                input type="hidden" name="csrf" value=(session.csrf);
                button type="submit" #replay-all { "Replay all " (rows.len()) }
            }
            table #dead-letters {
                tr { th { "Event" } th { "Order" } th { "Age" } th { "Retries" } th { "Error" } th { "Actions" } }
                @for e in &rows {
                    tr.dead-letter data-event=(e.id) {
                        td { (e.event_type) " v" (e.aggregate_version) br; code.muted { (e.id) } }
                        td { a href={"/console/orders/" (e.aggregate_id)} { (e.aggregate_id) } }
                        td { (age(now, e.created_at)) }
                        td { (e.retry_count) }
                        td.err-text { (e.last_error.as_deref().unwrap_or("")) }
                        td {
                            form.inline method="post" action={"/console/dead-letters/" (e.id) "/replay"} {
                                input type="hidden" name="csrf" value=(session.csrf);
                                button type="submit" .replay { "Replay" }
                            }
                            form method="post" action={"/console/dead-letters/" (e.id) "/discard"} {
                                input type="hidden" name="csrf" value=(session.csrf);
                                input type="text" name="reason" placeholder="why discard" required;
                                button type="submit" .discard { "Discard" }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(respond(
        StatusCode::OK,
        page("Dead letters", Some(&session), body),
    ))
}

/// `POST /console/dead-letters/replay` (`csrf`).
pub async fn replay_all(
    State(state): State<AppState>,
    session: Session,
    form: Fields,
) -> Result<Response, Failure> {
    session.check_csrf(fields(form).get("csrf"))?;
    let platform::extract::Json(moved) =
        dead_letters::replay_all(State(state), Staff, as_person(&session)).await?;
    Ok(Redirect::to(&format!("/console/dead-letters?done={}", moved.count)).into_response())
}

/// `POST /console/dead-letters/{id}/replay` (`csrf`).
pub async fn replay_one(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    form: Fields,
) -> Result<Response, Failure> {
    session.check_csrf(fields(form).get("csrf"))?;
    let platform::extract::Json(moved) =
        dead_letters::replay_one(State(state), Staff, as_person(&session), Path(id)).await?;
    Ok(Redirect::to(&format!("/console/dead-letters?done={}", moved.count)).into_response())
}

/// `POST /console/dead-letters/{id}/discard` (`csrf`, `reason`).
pub async fn discard(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<Uuid>,
    form: Fields,
) -> Result<Response, Failure> {
    let form = fields(form);
    session.check_csrf(form.get("csrf"))?;
    let body = dead_letters::Discard {
        reason: form.get("reason").cloned().unwrap_or_default(),
    };
    dead_letters::discard_one(
        State(state),
        Staff,
        as_person(&session),
        Path(id),
        platform::extract::Json(body),
    )
    .await?;
    Ok(Redirect::to("/console/dead-letters?done=discarded").into_response())
}

/// `n thing(s)`.
fn count(n: i64, thing: &str) -> String {
    format!("{n} {thing}{}", if n == 1 { "" } else { "s" })
}

fn figure<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(
        || "unknown (database unavailable)".to_owned(),
        |v| v.to_string(),
    )
}

/// `/console/health`: refreshes itself every 10 seconds while open.
pub async fn health(State(state): State<AppState>, session: Session) -> Result<Response, Failure> {
    let m = reliability::snapshot(&state.reliability_sources(), Utc::now()).await;
    let jobs = m
        .reconciliation_jobs_status
        .map(|j| format!("{j:?}").to_ascii_uppercase());
    let body = html! {
        meta http-equiv="refresh" content="10";
        p.muted { "Refreshed every 10 seconds. As of " (when(Utc::now())) "." }
        h2 { "Circuit breakers" }
        table #breakers {
            tr { th { "Breaker" } th { "State" } th { "Successes" } th { "Failures" } th { "Opened" } }
            @for b in &m.breakers {
                tr { td { (b.name) } td { (badge(b.state.as_str())) } td { (b.successes) } td { (b.failures) } td { (b.opened_total) } }
            }
        }
        h2 { "Backlogs" }
        table #figures {
            tr { th { "Outbox pending" } td { (figure(m.outbox_events_pending)) } }
            tr { th { "Oldest pending" } td { (figure(m.oldest_pending_age_seconds.map(|s| format!("{s:.0}s")))) } }
            tr { th { "Dead letters" } td { a href="/console/dead-letters" { (figure(m.failed_event_count)) } } }
            tr { th { "Delivery retries pending" } td { (figure(m.delivery_retries_pending)) } }
            tr { th { "Open reviews" } td { a href="/console/queue" { (figure(m.manual_review_queue_length)) } } }
            tr { th { "Reconciliation" } td { @match &jobs { Some(j) => (badge(j)), None => (figure::<&str>(None)) } } }
        }
        h2 { "Active alerts" }
        @if m.active_alerts.is_empty() {
            p #no-alerts { "None." }
        } @else {
            table #alerts {
                tr { th { "Alert" } th { "Value" } th { "Threshold" } th { "Since" } }
                @for a in &m.active_alerts {
                    tr { td { (a.alert.as_str()) } td { (a.value) } td { (a.threshold) } td { (when(a.since)) } }
                }
            }
        }
    };
    let mut response = respond(StatusCode::OK, page("Health", Some(&session), body));
    // The header too: browsers honour either, the header whatever the markup.
    response
        .headers_mut()
        .insert("refresh", HeaderValue::from_static("10"));
    Ok(response)
}
