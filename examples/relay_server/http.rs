//! The HTTP face of the relay (axum on tokio). Every store call runs on the
//! runtime's blocking pool ([`blocking`]), never on its worker threads: an
//! fsync may take milliseconds, and a worker thread that waits for one stalls
//! every other request scheduled on it.

use std::convert::Infallible;
use std::io::Write;
use std::sync::mpsc::Sender;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::relay::{IndexStart, JobRequest, Relay, RelayError};

/// What every handler shares.
#[derive(Clone)]
struct App {
    relay: Relay,
    /// Ids of jobs for the workers to run.
    queue: Sender<String>,
}

/// Serves the relay on `listen` until the process ends. Prints the bound
/// address first (`listening on http://ADDR`), for whoever picked port 0.
pub(crate) async fn serve(
    relay: Relay,
    queue: Sender<String>,
    listen: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    let router = Router::new()
        .route("/jobs", post(create_job))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/accounts/{account}", get(account))
        .route("/index", post(start_index))
        .with_state(App { relay, queue });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    axum::serve(listener, router).await?;
    Ok(())
}

/// A failed request, as the client sees it: a status and a safe message.
/// Internal details go to the log only.
enum ApiError {
    Relay(RelayError),
    NotFound(&'static str),
    BadBody(String),
    Panicked,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            ApiError::Relay(e) => {
                if let RelayError::Internal(inner) = e {
                    eprintln!("relay: request failed: {inner}");
                }
                e.client_message()
            }
            ApiError::NotFound(what) => (404, *what),
            ApiError::BadBody(why) => (400, why.as_str()),
            ApiError::Panicked => (500, "internal error"),
        };
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(json!({ "error": message }))).into_response()
    }
}

/// Runs `work` (store calls) on the blocking pool.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, RelayError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(work).await {
        Ok(result) => result.map_err(ApiError::Relay),
        Err(_) => Err(ApiError::Panicked),
    }
}

fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn account_of(headers: &HeaderMap) -> String {
    header_text(headers, "x-account")
        .unwrap_or("anonymous")
        .to_owned()
}

/// The JSON body, `{}` if empty.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadBody(format!("the body is not JSON: {e}")))
}

/// `POST /jobs`: 202 with the job's id at once; the work runs in the
/// background. Retries with the same idempotency key get the same job, free.
async fn create_job(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed = json_body(&body)?;
    let text = |field: &str| parsed.get(field).and_then(Value::as_str).map(str::to_owned);
    let kind = text("kind").unwrap_or_else(|| "summarize".to_owned());
    let fail_at = text("fail_at");
    let input = text("input");
    let account = account_of(&headers);
    let key = header_text(&headers, "idempotency-key")
        .or_else(|| header_text(&headers, "x-job-id"))
        .map(str::to_owned);
    let relay = app.relay.clone();
    let created = blocking(move || {
        relay.create_job(&JobRequest {
            account: &account,
            key: key.as_deref(),
            kind: &kind,
            body: &body,
            fail_at: fail_at.as_deref(),
            input: input.as_deref(),
        })
    })
    .await?;
    if created.enqueue {
        // The workers outlive every request; a send fails only at shutdown, and
        // the next start resumes the job.
        let _ = app.queue.send(created.job_id.clone());
    }
    let location = format!("/jobs/{}", created.job_id);
    let body = json!({
        "job_id": created.job_id,
        "charged": created.charged,
        "status_url": location,
        "events_url": format!("{location}/events"),
    });
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(body),
    )
        .into_response())
}

/// `GET /jobs/{id}`: the client view (no internal error text, no metadata).
async fn job(State(app): State<App>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let relay = app.relay.clone();
    match blocking(move || relay.client_view(&id)).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound("no such job")),
    }
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

/// `GET /jobs/{id}/events`: the job's events as SSE, each with its sequence
/// number as `id:`, from after `Last-Event-ID` (or `?after=N`, or the start),
/// stored ones first and then live, each once; the stream ends after the
/// terminal event.
///
/// A blocking-pool thread follows the job and hands events to the response.
/// When the client goes away, that thread stops at the job's next event (or
/// its end): a job stalled forever keeps one thread per abandoned stream.
async fn job_events(
    State(app): State<App>,
    Path(id): Path<String>,
    Query(query): Query<After>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let after = match header_text(&headers, "last-event-id") {
        Some(last) => last
            .trim()
            .parse::<u64>()
            .map_err(|_| ApiError::BadBody("Last-Event-ID is not an event id".to_owned()))?,
        None => query.after.unwrap_or(0),
    };
    let relay = app.relay.clone();
    let Some(mut subscription) = blocking(move || relay.subscribe(&id, after)).await? else {
        return Err(ApiError::NotFound("no such job"));
    };
    let (events, mut received) = tokio::sync::mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        loop {
            match subscription.next_event() {
                Ok(Some(event)) => {
                    if events.blocking_send(event).is_err() {
                        return; // the client went away
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    eprintln!("relay: event stream stopped: {e}");
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::poll_fn(move |cx| {
        received.poll_recv(cx).map(|event| {
            event.map(|event: jobsafe::jobs::Event| {
                Ok::<_, Infallible>(
                    SseEvent::default()
                        .id(event.seq.to_string())
                        .event(event.kind)
                        .data(event.data.to_string()),
                )
            })
        })
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// `GET /accounts/{account}`: the credits it has left.
async fn account(
    State(app): State<App>,
    Path(account): Path<String>,
) -> Result<Response, ApiError> {
    let relay = app.relay.clone();
    let name = account.clone();
    let credits = blocking(move || relay.balance(&name)).await?;
    Ok(Json(json!({ "account": account, "credits": credits })).into_response())
}

/// `POST /index`: starts a re-index of the resource named in the body, or
/// answers 409 with the holder while one runs.
async fn start_index(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let parsed = json_body(&body)?;
    let resource = parsed
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let account = account_of(&headers);
    let actor = header_text(&headers, "x-actor")
        .unwrap_or(&account)
        .to_owned();
    let relay = app.relay.clone();
    let started = blocking(move || relay.start_index(&account, &resource, &actor)).await?;
    match started {
        IndexStart::Started {
            job_id,
            token,
            expires_ms,
        } => {
            let _ = app.queue.send(job_id.clone());
            let location = format!("/jobs/{job_id}");
            let body = json!({
                "job_id": job_id,
                "fencing_token": token,
                "lock_expires_ms": expires_ms,
                "status_url": location,
            });
            Ok((
                StatusCode::ACCEPTED,
                [(header::LOCATION, location)],
                Json(body),
            )
                .into_response())
        }
        IndexStart::Held(holder) => {
            let body = json!({
                "error": "a re-index of this resource is running",
                "holder": {
                    "job_id": holder.metadata.get(crate::relay::meta::JOB),
                    "actor": holder.actor,
                    "started_ms": holder.started_ms,
                    "expires_ms": holder.expires_ms,
                },
            });
            Ok((StatusCode::CONFLICT, Json(body)).into_response())
        }
    }
}
