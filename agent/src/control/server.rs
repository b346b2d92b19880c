//! The control API: HTTP/1.1 on a Unix socket only root can open (the
//! socket is mode 0600 in a directory of mode 0700), and optionally on a
//! TCP address where every request needs `Authorization: Bearer <token>`.
//! Requests go to the agent's main loop and the answer comes back; a bad
//! request is a 4xx that says what was wrong and changes nothing.
//!
//! | method and path | does |
//! |---|---|
//! | `GET /v1/status` | [`Status`] as JSON |
//! | `POST /v1/enable?for=15m` | sample until then (on-demand mode) |
//! | `POST /v1/disable` | stop sampling now (on-demand mode) |
//! | `POST /v1/capture?duration=30s[&event=cpu][&pid=P][&container=ID][&pod_uid=U][&pod=NS/NAME][&format=svg]` | record now; the profile file is the body |
//! | `GET /v1/history?last=10m[&pid=P][&container=ID][&pod_uid=U][&pod=NS/NAME]` | the local history's profiles, merged, as gzipped pprof |

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::unix::fs::{FileTypeExt as _, PermissionsExt},
    path::Path,
    sync::Arc,
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Query, Request as HttpRequest, State},
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use tokio::{
    net::{TcpListener, UnixListener},
    sync::{mpsc, oneshot},
    task::JoinHandle,
};

use super::{API_PREFIX, Filter, ProfileFile, Refusal, Request};
use crate::{deliver::OutputFormat, event::Event};

type Requests = mpsc::Sender<Request>;

fn router(requests: Requests) -> Router {
    Router::new()
        .route(&format!("{API_PREFIX}/status"), get(status))
        .route(&format!("{API_PREFIX}/enable"), post(enable))
        .route(&format!("{API_PREFIX}/disable"), post(disable))
        .route(&format!("{API_PREFIX}/capture"), post(capture))
        .route(&format!("{API_PREFIX}/history"), get(history))
        .fallback(|| async { refusal(Refusal::NotFound(not_found())) })
        .with_state(requests)
}

/// Binds the control socket and serves it until the task is aborted.
pub fn serve(path: &Path, requests: Requests) -> anyhow::Result<JoinHandle<()>> {
    let listener = bind(path)?;
    let router = router(requests);
    let path = path.to_owned();
    Ok(tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, socket = %path.display(), "control socket failed");
        }
    }))
}

/// Serves the control API on a TCP address until the task is aborted;
/// requests without the bearer `token` get 401 and reach nothing.
pub async fn serve_tcp(
    address: SocketAddr,
    token: String,
    requests: Requests,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address} (control.listen)"))?;
    let bound = listener.local_addr()?;
    let router = router(requests).layer(middleware::from_fn_with_state(
        Arc::<str>::from(token),
        bearer_only,
    ));
    Ok((
        bound,
        tokio::spawn(async move {
            if let Err(err) = axum::serve(listener, router).await {
                tracing::error!(%err, %bound, "control API on TCP failed");
            }
        }),
    ))
}

/// Lets a request through only with `Authorization: Bearer <token>`.
async fn bearer_only(State(token): State<Arc<str>>, request: HttpRequest, next: Next) -> Response {
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(given) if same_secret(given.trim().as_bytes(), token.as_bytes()) => {
            next.run(request).await
        }
        _ => {
            let message = if given.is_some() {
                "wrong bearer token"
            } else {
                "this API needs `Authorization: Bearer <token>` (hearth ctl --token-file FILE)"
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                Json(serde_json::json!({ "error": message })),
            )
                .into_response()
        }
    }
}

/// Compares two secrets in time that depends on their length only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn not_found() -> String {
    format!(
        "no such endpoint; use {API_PREFIX}/status, {API_PREFIX}/enable, {API_PREFIX}/disable, \
         {API_PREFIX}/capture or {API_PREFIX}/history"
    )
}

/// Creates the socket, root-only, replacing a stale one.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.exists()
    {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating {} for the control socket", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "the control socket path {} already exists and is {}, not a socket; Hearth \
                 only ever removes a stale socket there. Give another --control-socket (or \
                 control.socket), or move that file away yourself",
                path.display(),
                describe_kind(meta.file_type())
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another agent answers on the control socket {}; stop it, or give this one \
                 another --control-socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    // Created with the umask's mode, then narrowed before anyone can
    // matter: the directory is already root-only when it was made here.
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot create the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Removes the control socket at shutdown — only if a socket is still
/// what lies there.
pub fn remove_socket(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|meta| meta.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

/// "a regular file", "a directory", … for messages about a path.
fn describe_kind(kind: std::fs::FileType) -> &'static str {
    if kind.is_file() {
        "a regular file"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symbolic link"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else {
        "not a socket"
    }
}

fn refusal(refusal: Refusal) -> Response {
    let code = match refusal {
        Refusal::BadRequest(_) => StatusCode::BAD_REQUEST,
        Refusal::Conflict(_) => StatusCode::CONFLICT,
        Refusal::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
        Refusal::NotFound(_) => StatusCode::NOT_FOUND,
    };
    let body = serde_json::json!({ "error": refusal.to_string() });
    (code, Json(body)).into_response()
}

fn gone() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(serde_json::json!({ "error": "the agent is shutting down" })),
    )
        .into_response()
}

/// Sends a request to the main loop and waits for its answer.
async fn ask<T>(
    requests: &Requests,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Option<T> {
    let (reply, answer) = oneshot::channel();
    requests.send(make(reply)).await.ok()?;
    answer.await.ok()
}

async fn status(State(requests): State<Requests>) -> Response {
    match ask(&requests, Request::Status).await {
        Some(status) => Json(status).into_response(),
        None => gone(),
    }
}

/// Query parameters, refusing any the endpoint does not know.
struct Params {
    values: HashMap<String, String>,
}

impl Params {
    fn new(values: HashMap<String, String>, known: &[&str]) -> Result<Self, Refusal> {
        if let Some(unknown) = values.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(Refusal::BadRequest(format!(
                "unknown parameter `{unknown}`; this endpoint takes {}",
                known.join(", ")
            )));
        }
        Ok(Self { values })
    }

    fn duration(&self, name: &str, max: Option<Duration>) -> Result<Duration, Refusal> {
        let text = self
            .values
            .get(name)
            .ok_or_else(|| Refusal::BadRequest(format!("`{name}` is required, e.g. {name}=30s")))?;
        let duration = humantime::parse_duration(text).map_err(|err| {
            Refusal::BadRequest(format!(
                "`{name}={text}` is not a duration ({err}); write e.g. 30s, 15m or 1h"
            ))
        })?;
        if duration.is_zero() {
            return Err(Refusal::BadRequest(format!(
                "`{name}` must be longer than zero"
            )));
        }
        if let Some(max) = max.filter(|max| duration > *max) {
            return Err(Refusal::BadRequest(format!(
                "`{name}={text}` is longer than this agent allows ({})",
                humantime::format_duration(max)
            )));
        }
        Ok(duration)
    }

    fn filter(&self) -> Result<Filter, Refusal> {
        let pid = match self.values.get("pid") {
            Some(text) => {
                Some(text.parse::<u32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                    Refusal::BadRequest(format!("`pid={text}` is not a process id"))
                })?)
            }
            None => None,
        };
        let text = |key: &str| self.values.get(key).cloned().filter(|v| !v.is_empty());
        Ok(Filter {
            pid,
            container: text("container"),
            pod_uid: text("pod_uid"),
            pod: text("pod"),
        })
    }

    /// `event=NAME`; CPU when absent.
    fn event(&self) -> Result<Event, Refusal> {
        match self.values.get("event") {
            None => Ok(Event::Cpu),
            Some(text) => text
                .parse()
                .map_err(|err| Refusal::BadRequest(format!("`event={text}`: {err}"))),
        }
    }

    fn format(&self) -> Result<OutputFormat, Refusal> {
        match self.values.get("format").map(String::as_str) {
            None | Some("svg") => Ok(OutputFormat::Svg),
            Some("pprof") => Ok(OutputFormat::Pprof),
            Some("folded") => Ok(OutputFormat::Folded),
            Some(other) => Err(Refusal::BadRequest(format!(
                "`format={other}` is not one of svg, pprof, folded"
            ))),
        }
    }
}

async fn enable(
    State(requests): State<Requests>,
    Query(values): Query<HashMap<String, String>>,
) -> Response {
    let duration = match Params::new(values, &["for"]).and_then(|p| p.duration("for", None)) {
        Ok(duration) => duration,
        Err(err) => return refusal(err),
    };
    answer_status(ask(&requests, |reply| Request::Enable { duration, reply }).await)
}

async fn disable(State(requests): State<Requests>) -> Response {
    answer_status(ask(&requests, Request::Disable).await)
}

fn answer_status(answer: Option<Result<super::Status, Refusal>>) -> Response {
    match answer {
        Some(Ok(status)) => Json(status).into_response(),
        Some(Err(err)) => refusal(err),
        None => gone(),
    }
}

async fn capture(
    State(requests): State<Requests>,
    Query(values): Query<HashMap<String, String>>,
) -> Response {
    let known = [
        "duration",
        "event",
        "pid",
        "container",
        "pod_uid",
        "pod",
        "format",
    ];
    let parsed = Params::new(values, &known).and_then(|p| {
        Ok((
            p.event()?,
            p.duration("duration", None)?,
            p.filter()?,
            p.format()?,
        ))
    });
    let (event, duration, filter, format) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return refusal(err),
    };
    let answer = ask(&requests, |reply| Request::Capture {
        event,
        duration,
        filter,
        format,
        reply,
    })
    .await;
    answer_file(answer)
}

async fn history(
    State(requests): State<Requests>,
    Query(values): Query<HashMap<String, String>>,
) -> Response {
    let known = ["last", "event", "pid", "container", "pod_uid", "pod"];
    let parsed = Params::new(values, &known)
        .and_then(|p| Ok((p.event()?, p.duration("last", None)?, p.filter()?)));
    let (event, last, filter) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => return refusal(err),
    };
    answer_file(
        ask(&requests, |reply| Request::History {
            event,
            last,
            filter,
            reply,
        })
        .await,
    )
}

fn answer_file(answer: Option<Result<ProfileFile, Refusal>>) -> Response {
    match answer {
        Some(Ok(file)) => {
            let content_type = match file.format {
                OutputFormat::Svg => "image/svg+xml",
                OutputFormat::Pprof => "application/octet-stream",
                OutputFormat::Folded => "text/plain; charset=utf-8",
            };
            ([(header::CONTENT_TYPE, content_type)], file.bytes).into_response()
        }
        Some(Err(err)) => refusal(err),
        None => gone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_match_only_when_equal() {
        assert!(same_secret(b"0123456789abcdef", b"0123456789abcdef"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcdeg"));
        assert!(!same_secret(b"0123456789abcdef", b"0123456789abcde"));
    }
}
