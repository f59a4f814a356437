//! The HTTP face of the relay (axum on tokio). Every store call goes through
//! jobsafe's async face, which runs it on jobsafe's bounded pool: never on the
//! runtime's worker threads (an fsync may take milliseconds, and a worker
//! thread that waits for one stalls every other request scheduled on it), and
//! never on the runtime's blocking pool, which grows a thread per waiting
//! call. A request that waits for the store, and an event stream that waits
//! for its job's next event, hold no thread at all.
//!
//! Each request passes, in order: [`authenticate`] (the bearer token names
//! the account; 401 otherwise), [`read_body`] (the whole body, within a size
//! cap and a timeout), then its handler. Every header a handler reads is
//! checked first ([`read_header`]): present but not printable ASCII, or too
//! long, is a 400 naming the header. No error text of the store reaches a
//! client: [`ApiError`] answers with messages written here and logs the rest.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::{Stream, StreamExt};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use jobsafe::jobs::Event;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::relay::{Events, IndexStart, JobRequest, Relay, RelayError};
use crate::server::{self, ConnectionLimits, Shutdown};
use crate::tokens::Tokens;

/// The `Retry-After` of a 503 for too many open event streams, in seconds.
const STREAMS_RETRY_AFTER_SECS: u32 = 5;

/// How often an idle event stream sends a comment. Besides keeping proxies
/// from closing it, the write is how the relay learns that a client went
/// away (hyper looks for a close only while it has nothing of the client's
/// left to read): the slot of a client that closed is freed within about two
/// of these. One whose machine vanished without closing is noticed only
/// when the kernel gives up on the connection, or when the comments fill
/// its send buffer and `--write-timeout-ms` passes.
const STREAM_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// The bounds on what clients may ask of the relay.
#[derive(Clone, Debug)]
pub(crate) struct Limits {
    /// Event streams open at once, over all accounts.
    pub(crate) max_streams: usize,
    /// Event streams one account may have open at once. Below `max_streams`,
    /// one account cannot take every slot.
    pub(crate) max_streams_per_account: usize,
    /// Largest request body.
    pub(crate) max_body_bytes: usize,
    /// How long a client has to send a request's body, once its head is read.
    pub(crate) body_timeout: Duration,
    /// Open connections and their header timeout.
    pub(crate) connections: ConnectionLimits,
}

/// What every handler shares.
#[derive(Clone)]
struct App {
    relay: Relay,
    tokens: Arc<Tokens>,
    /// One permit per event stream that may be open.
    streams: Arc<Semaphore>,
    /// The event streams each account has open.
    streams_by_account: Arc<StreamsByAccount>,
    limits: Limits,
    /// Tells event streams to end when the relay stops.
    shutdown: Shutdown,
}

/// The account a request's bearer token names, set by [`authenticate`].
#[derive(Clone, Debug)]
struct Caller(String);

/// A request header the relay reads, and how long it may be.
#[derive(Clone, Copy, Debug)]
struct HeaderRule {
    name: &'static str,
    max_len: usize,
}

const AUTHORIZATION: HeaderRule = HeaderRule {
    name: "Authorization",
    // "Bearer " and the longest token, with room for extra spaces.
    max_len: 512,
};
const IDEMPOTENCY_KEY: HeaderRule = HeaderRule {
    name: "Idempotency-Key",
    max_len: 128,
};
const JOB_KEY: HeaderRule = HeaderRule {
    name: "X-Job-Id",
    max_len: 128,
};
const ACTOR: HeaderRule = HeaderRule {
    name: "X-Actor",
    max_len: 64,
};
const LAST_EVENT_ID: HeaderRule = HeaderRule {
    name: "Last-Event-ID",
    max_len: 20, // u64::MAX has 20 digits
};

/// Serves the relay on `listen` until `stop` completes, then stops as
/// [`server::serve`] says: open event streams end, in-flight requests finish.
/// Prints the bound address first (`listening on http://ADDR`), for whoever
/// picked port 0.
pub(crate) async fn serve(
    relay: Relay,
    tokens: Tokens,
    listen: &str,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error>> {
    let (shutdown, trigger) = Shutdown::new();
    let app = App {
        relay,
        tokens: Arc::new(tokens),
        streams: Arc::new(Semaphore::new(limits.max_streams)),
        streams_by_account: Arc::default(),
        limits,
        shutdown: shutdown.clone(),
    };
    let connections = app.limits.connections.clone();
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    std::io::stdout().flush()?;
    tokio::spawn(async move {
        stop.await;
        trigger.stop();
    });
    server::serve(listener, router(app), &connections, shutdown).await?;
    Ok(())
}

/// The routes, behind authentication and then body reading (the layer added
/// last runs first): no body is read for a client without a valid token.
fn router(app: App) -> Router {
    Router::new()
        .route("/jobs", post(create_job))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/events", get(job_events))
        .route("/accounts/{account}", get(account))
        .route("/index", post(start_index))
        .layer(middleware::from_fn_with_state(app.clone(), read_body))
        .layer(middleware::from_fn_with_state(app.clone(), authenticate))
        .with_state(app)
}

/// A failed request, as the client sees it: a status and a message written
/// here. Internal details go to the log only.
enum ApiError {
    Relay(RelayError),
    NotFound(&'static str),
    BadRequest(String),
    /// A header is present but not printable ASCII, or too long.
    InvalidHeader(HeaderRule),
    /// No valid bearer token.
    Unauthorized,
    BodyTooLarge,
    BodyTimedOut,
    BodyUnreadable,
    TooManyStreams,
    /// The caller's account has as many streams open as it may.
    TooManyAccountStreams,
    Panicked,
}

impl ApiError {
    /// The status and the message the client gets.
    fn status_and_message(&self) -> (StatusCode, String) {
        let status = |code| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        match self {
            ApiError::Relay(e) => {
                let (code, message) = e.client_message();
                (status(code), message.to_owned())
            }
            ApiError::NotFound(what) => (StatusCode::NOT_FOUND, (*what).to_owned()),
            ApiError::BadRequest(why) => (StatusCode::BAD_REQUEST, why.clone()),
            ApiError::InvalidHeader(rule) => (
                StatusCode::BAD_REQUEST,
                format!(
                    "invalid {} header: one value of 1 to {} printable ASCII characters",
                    rule.name, rule.max_len
                ),
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "a valid token is required: Authorization: Bearer TOKEN".to_owned(),
            ),
            ApiError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is too large".to_owned(),
            ),
            ApiError::BodyTimedOut => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time".to_owned(),
            ),
            ApiError::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                "the request body could not be read".to_owned(),
            ),
            ApiError::TooManyStreams => (
                StatusCode::SERVICE_UNAVAILABLE,
                "too many open event streams: try again later, or poll the job".to_owned(),
            ),
            ApiError::TooManyAccountStreams => (
                StatusCode::TOO_MANY_REQUESTS,
                "your account has too many open event streams: close one, or poll the job"
                    .to_owned(),
            ),
            ApiError::Panicked => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error".to_owned(),
            ),
        }
    }

    /// Logs what the client is not told.
    fn log(&self) {
        match self {
            ApiError::Relay(RelayError::Internal(e)) => eprintln!("relay: request failed: {e}"),
            ApiError::Relay(RelayError::Refused(e)) => eprintln!("relay: request refused: {e}"),
            ApiError::Relay(RelayError::OtherJob) => {
                eprintln!("relay: request failed: a reservation belongs to another job");
            }
            ApiError::Panicked => eprintln!("relay: a request's work panicked"),
            _ => {}
        }
    }

    /// The headers the answer needs besides its status.
    fn extra_header(&self) -> Option<(header::HeaderName, HeaderValue)> {
        match self {
            ApiError::Unauthorized => {
                Some((header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer")))
            }
            ApiError::TooManyStreams | ApiError::TooManyAccountStreams => Some((
                header::RETRY_AFTER,
                HeaderValue::from(STREAMS_RETRY_AFTER_SECS),
            )),
            // The rest of the body may still be on its way: the connection
            // cannot carry another request.
            ApiError::BodyTooLarge | ApiError::BodyTimedOut | ApiError::BodyUnreadable => {
                Some((header::CONNECTION, HeaderValue::from_static("close")))
            }
            _ => None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.log();
        let (status, message) = self.status_and_message();
        let mut response = (status, Json(json!({ "error": message }))).into_response();
        if let Some((name, value)) = self.extra_header() {
            response.headers_mut().insert(name, value);
        }
        response
    }
}

/// Runs a request's work on the relay (its store calls awaited on jobsafe's
/// pool) as a task of its own, so that it runs to its end even if the client
/// goes away meanwhile: a request dropped between two of its writes would
/// leave a charge without its job, or an index lock without its job, until a
/// retry or the lock's lease. A panic in it is a 500, not a dropped
/// connection.
async fn to_completion<T: Send + 'static>(
    work: impl Future<Output = Result<T, RelayError>> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::spawn(work).await {
        Ok(result) => result.map_err(ApiError::Relay),
        Err(_) => Err(ApiError::Panicked),
    }
}

/// The header `rule` names, if present: refused unless it is given once, as
/// 1 to `rule.max_len` printable ASCII characters. A header the relay cannot
/// read as sent is an error, never taken for absent: an idempotency key
/// ignored that way would charge every retry again.
fn read_header<'a>(headers: &'a HeaderMap, rule: &HeaderRule) -> Result<Option<&'a str>, ApiError> {
    let mut values = headers.get_all(rule.name).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    let printable = bytes.iter().all(|b| *b == b' ' || b.is_ascii_graphic());
    let fits = (1..=rule.max_len).contains(&bytes.len());
    match value.to_str() {
        Ok(text) if printable && fits && values.next().is_none() => Ok(Some(text)),
        _ => Err(ApiError::InvalidHeader(*rule)),
    }
}

/// Lets the request through if its bearer token names an account, which the
/// handlers then act for; 401 otherwise.
///
/// A refused request's body is never read, so its connection cannot carry
/// another request: the answer says `Connection: close`, or a client that
/// reuses the connection would write its next request into a closed socket.
async fn authenticate(State(app): State<App>, mut request: Request, next: Next) -> Response {
    match caller_of(&app.tokens, request.headers()) {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(refused) => {
            let mut response = refused.into_response();
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
            response
        }
    }
}

/// The account of the `Authorization: Bearer TOKEN` header.
fn caller_of(tokens: &Tokens, headers: &HeaderMap) -> Result<Caller, ApiError> {
    let authorization = read_header(headers, &AUTHORIZATION)?.ok_or(ApiError::Unauthorized)?;
    let token = bearer_token(authorization).ok_or(ApiError::Unauthorized)?;
    let account = tokens.account_of(token).ok_or(ApiError::Unauthorized)?;
    Ok(Caller(account.to_owned()))
}

/// The token of an `Authorization` value of the Bearer scheme (its name in
/// any case, as HTTP allows).
fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim_start())
}

/// Reads the whole request body before the handler runs, within the size cap
/// (413 beyond it) and the body timeout (408): a client that sends a body
/// slowly, or too much of one, is answered instead of holding a connection
/// and memory.
async fn read_body(
    State(app): State<App>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limited = Limited::new(body, app.limits.max_body_bytes);
    let collected = tokio::time::timeout(app.limits.body_timeout, limited.collect())
        .await
        .map_err(|_| ApiError::BodyTimedOut)?
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                ApiError::BodyTooLarge
            } else {
                ApiError::BodyUnreadable
            }
        })?;
    let request = Request::from_parts(parts, Body::from(collected.to_bytes()));
    Ok(next.run(request).await)
}

/// The JSON body, `{}` if empty.
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

/// `POST /jobs`: 202 with the job's id at once; the work runs in the
/// background. Retries with the same idempotency key get the same job, free.
async fn create_job(
    State(app): State<App>,
    Extension(Caller(account)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // Both headers are checked, whichever is used.
    let idempotency_key = read_header(&headers, &IDEMPOTENCY_KEY)?;
    let job_key = read_header(&headers, &JOB_KEY)?;
    let key = idempotency_key.or(job_key).map(str::to_owned);
    let parsed = json_body(&body)?;
    let text = |field: &str| parsed.get(field).and_then(Value::as_str).map(str::to_owned);
    let kind = text("kind").unwrap_or_else(|| "summarize".to_owned());
    let fail_at = text("fail_at");
    let input = text("input");
    let relay = app.relay.clone();
    let created = to_completion(async move {
        let request = JobRequest {
            account: &account,
            key: key.as_deref(),
            kind: &kind,
            body: &body,
            fail_at: fail_at.as_deref(),
            input: input.as_deref(),
        };
        relay.create_job(&request).await
    })
    .await?;
    // A job created now wakes the pipeline's runner: nothing to send.
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

/// `GET /jobs/{id}`: the client view (no internal error text, no metadata),
/// for the account that created the job only.
async fn job(
    State(app): State<App>,
    Extension(Caller(account)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = path_segment(id)?;
    let relay = app.relay.clone();
    match to_completion(async move { relay.client_view(&account, &id).await }).await? {
        Some(view) => Ok(Json(view).into_response()),
        None => Err(ApiError::NotFound("no such job")),
    }
}

#[derive(Deserialize)]
struct After {
    after: Option<u64>,
}

/// The path's parameter, or a 400 in the relay's own form (axum's answer
/// would be plain text) when it is not UTF-8 once decoded.
fn path_segment(extracted: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    extracted
        .map(|Path(segment)| segment)
        .map_err(|_| ApiError::BadRequest("the path is not valid: UTF-8 once decoded".into()))
}

/// `GET /jobs/{id}/events`: the job's events as SSE, each with its sequence
/// number as `id:`, from after `Last-Event-ID` (or `?after=N`, or the start),
/// stored ones first and then live, each once; the stream ends after the
/// terminal event, and when the relay stops. For the account that created the
/// job only. A resume point past the last event ends the stream at once if
/// the job's stream has ended, and is a 400 while the job goes on.
///
/// Each open stream holds one of `--max-streams` slots (503 when none is
/// free) and one of its account's `--max-streams-per-account` (429 when
/// none is free), and no thread: it waits for the job's next event as a
/// future. The slots are freed when the stream is dropped, which is as soon
/// as the stream ends or its client goes away (seen at the next write, a
/// keep-alive comment every [`STREAM_KEEP_ALIVE`] at the latest).
async fn job_events(
    State(app): State<App>,
    Extension(Caller(account)): Extension<Caller>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<After>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_segment(id)?;
    let Query(query) = query
        .map_err(|_| ApiError::BadRequest("after: a whole number of events, at least 0".into()))?;
    let after = match read_header(&headers, &LAST_EVENT_ID)? {
        Some(last) => last
            .trim()
            .parse::<u64>()
            .map_err(|_| ApiError::InvalidHeader(LAST_EVENT_ID))?,
        None => query.after.unwrap_or(0),
    };
    let own = StreamsByAccount::open(
        &app.streams_by_account,
        &account,
        app.limits.max_streams_per_account,
    )
    .ok_or(ApiError::TooManyAccountStreams)?;
    let slot = Arc::clone(&app.streams)
        .try_acquire_owned()
        .map_err(|_| ApiError::TooManyStreams)?;
    let slot = (slot, own);
    let relay = app.relay.clone();
    let subscribed = to_completion(async move { relay.subscribe(&account, &id, after).await });
    let Some(events) = subscribed.await? else {
        return Err(ApiError::NotFound("no such job"));
    };
    let stream = sse_events(events, slot).take_until(app.shutdown.stopped());
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(STREAM_KEEP_ALIVE))
        .into_response())
}

/// `events` as SSE events, holding `slot` until the stream is dropped. A
/// failed read of the store ends the stream: the client reconnects with the
/// last id it got, and the read is tried again then.
fn sse_events(
    events: Events,
    slot: (OwnedSemaphorePermit, AccountStream),
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static {
    futures_util::stream::unfold((events, slot), |(mut events, slot)| async move {
        match events.next_event().await {
            Ok(Some(event)) => Some((Ok(sse_event(&event)), (events, slot))),
            Ok(None) => None,
            Err(e) => {
                eprintln!("relay: event stream stopped: {e}");
                None
            }
        }
    })
}

/// Job event `event` as an SSE event: its sequence number as `id:`, its
/// kind as `event:`, its data as JSON.
fn sse_event(event: &Event) -> SseEvent {
    SseEvent::default()
        .id(event.seq.to_string())
        .event(&event.kind)
        .data(event.data.to_string())
}

/// `GET /accounts/{account}`: the credits the caller's own account has left;
/// 404 for any other account.
async fn account(
    State(app): State<App>,
    Extension(Caller(caller)): Extension<Caller>,
    account: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let account = path_segment(account)?;
    if account != caller {
        return Err(ApiError::NotFound("no such account"));
    }
    let relay = app.relay.clone();
    let credits = to_completion(async move { relay.balance(&caller).await }).await?;
    Ok(Json(json!({ "account": account, "credits": credits })).into_response())
}

/// `POST /index`: starts a re-index of the resource named in the body, or
/// answers 409 with the holder while one runs.
async fn start_index(
    State(app): State<App>,
    Extension(Caller(account)): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = read_header(&headers, &ACTOR)?
        .unwrap_or(&account)
        .to_owned();
    let parsed = json_body(&body)?;
    let resource = parsed
        .get("resource")
        .and_then(Value::as_str)
        .unwrap_or("default")
        .to_owned();
    let relay = app.relay.clone();
    let started =
        to_completion(async move { relay.start_index(&account, &resource, &actor).await }).await?;
    match started {
        IndexStart::Started {
            job_id,
            token,
            expires_ms,
        } => {
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

/// The event streams each account has open, so that one account cannot take
/// every one of `--max-streams` and lock the others out of their own jobs'
/// streams.
#[derive(Debug, Default)]
struct StreamsByAccount(parking_lot::Mutex<HashMap<String, usize>>);

/// One open stream of an account, counted until dropped.
#[derive(Debug)]
struct AccountStream {
    counts: Arc<StreamsByAccount>,
    account: String,
}

impl StreamsByAccount {
    /// Counts a stream of `account`, unless it has `cap` open.
    fn open(this: &Arc<Self>, account: &str, cap: usize) -> Option<AccountStream> {
        let mut counts = this.0.lock();
        let open = counts.entry(account.to_owned()).or_default();
        if *open >= cap {
            return None;
        }
        *open += 1;
        Some(AccountStream {
            counts: Arc::clone(this),
            account: account.to_owned(),
        })
    }
}

impl Drop for AccountStream {
    fn drop(&mut self) {
        let mut counts = self.counts.0.lock();
        if let Some(open) = counts.get_mut(&self.account) {
            *open -= 1;
            if *open == 0 {
                counts.remove(&self.account);
            }
        }
    }
}
