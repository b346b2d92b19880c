//! `hearth ctl`: talks to a running agent over its control socket, or
//! over TCP with a bearer token.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt, Empty};
use hyper::{Method, body::Bytes};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};

use super::{API_PREFIX, Status};
use crate::{
    cli::{CtlArgs, CtlCommand, CtlFilter},
    deliver::OutputFormat,
    record::OutputFile,
};

/// An answer from the agent: status code and body.
struct Answer {
    status: u16,
    body: Bytes,
}

impl Answer {
    /// The body, or the agent's error message as an error.
    fn ok(self) -> anyhow::Result<Bytes> {
        if (200..300).contains(&self.status) {
            return Ok(self.body);
        }
        let message = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned());
        bail!("the agent refused ({}): {message}", self.status)
    }
}

/// Where the agent's control API is.
enum Target {
    Socket(PathBuf),
    Tcp { url: url::Url, token: String },
}

impl Target {
    fn of(args: &CtlArgs) -> anyhow::Result<Self> {
        let Some(url) = &args.url else {
            return Ok(Self::Socket(args.socket.clone()));
        };
        if url.scheme() != "http" {
            bail!("--url {url}: the control API on TCP speaks plain http://");
        }
        let token_file = args
            .token_file
            .as_deref()
            .context("--url needs --token-file (the agent's control.token_file)")?;
        Ok(Self::Tcp {
            url: url.clone(),
            token: super::read_token(token_file)?,
        })
    }
}

async fn call(target: &Target, method: Method, path_and_query: &str) -> anyhow::Result<Answer> {
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(format!("{API_PREFIX}{path_and_query}"));
    let answer = match target {
        Target::Socket(socket) => {
            let stream = connect_socket(socket).await?;
            request = request.header(hyper::header::HOST, "hearth");
            exchange(stream, request.body(Empty::<Bytes>::new())?).await
        }
        Target::Tcp { url, token } => {
            let host = url.host_str().context("--url has no host")?;
            let port = url.port_or_known_default().unwrap_or(80);
            let stream = TcpStream::connect((host, port)).await.with_context(|| {
                format!("no agent answers on {url}: is control.listen set on it, and reachable?")
            })?;
            request = request
                .header(hyper::header::HOST, format!("{host}:{port}"))
                .header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
            exchange(stream, request.body(Empty::<Bytes>::new())?).await
        }
    };
    answer.context("talking to the agent's control API")
}

async fn connect_socket(socket: &Path) -> anyhow::Result<UnixStream> {
    UnixStream::connect(socket)
        .await
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                anyhow::anyhow!(
                    "no agent answers on {}: start `hearth run` (its control socket is \
                     control.socket / --control-socket), or pass the right --socket",
                    socket.display()
                )
            }
            std::io::ErrorKind::PermissionDenied => anyhow::anyhow!(
                "permission denied on {}: the control socket is root-only; run hearth ctl as root",
                socket.display()
            ),
            _ => anyhow::Error::new(err).context(format!(
                "connecting to the control socket {}",
                socket.display()
            )),
        })
}

/// One HTTP/1.1 request and its answer on `stream`.
async fn exchange<S>(stream: S, request: hyper::Request<Empty<Bytes>>) -> anyhow::Result<Answer>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("speaking HTTP")?;
    tokio::spawn(connection);
    let response = sender
        .send_request(request)
        .await
        .context("sending the request")?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the answer")?
        .to_bytes();
    Ok(Answer { status, body })
}

/// Query text: `key=value` pairs joined by `&`, values percent-encoded.
fn query(pairs: &[(&str, Option<String>)]) -> String {
    let encoded: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", encode(v))))
        .collect();
    encoded.join("&")
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_status(status: &Status, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    let state = if status.enabled {
        "enabled"
    } else {
        "disabled"
    };
    let until = match status.expires_in_seconds {
        Some(s) => format!(
            " for {}",
            humantime::format_duration(std::time::Duration::from_secs(s.ceil() as u64))
        ),
        None => String::new(),
    };
    println!("{state}{until} ({} mode)", status.mode);
    println!(
        "sampling {} CPUs at {} Hz; events: {}",
        status.attached_cpus,
        status.frequency_hz,
        status.events.join(", ")
    );
    println!(
        "{} samples so far; {} captures running; history: {} profiles, {} bytes",
        status.samples, status.captures_running, status.history_profiles, status.history_bytes
    );
    Ok(())
}

/// The query pairs of a filter.
fn filter_pairs(filter: CtlFilter) -> [(&'static str, Option<String>); 4] {
    [
        ("pid", filter.pid.map(|p| p.to_string())),
        ("container", filter.container),
        ("pod_uid", filter.pod_uid),
        ("pod", filter.pod),
    ]
}

/// Asks the agent for a profile file and writes it to `output`.
async fn fetch_to_file(
    socket: &Target,
    method: Method,
    path: &str,
    output: &Path,
) -> anyhow::Result<()> {
    let body = call(socket, method, path).await?.ok()?;
    OutputFile::prepare(output)?.commit(|out| out.write_all(&body))?;
    eprintln!(
        "hearth ctl: wrote {} ({} bytes)",
        output.display(),
        body.len()
    );
    Ok(())
}

pub async fn run(args: CtlArgs) -> anyhow::Result<()> {
    let socket = Target::of(&args)?;
    match args.command {
        CtlCommand::Status { json } => {
            let body = call(&socket, Method::GET, "/status").await?.ok()?;
            let status: Status = serde_json::from_slice(&body).context("reading the status")?;
            print_status(&status, json)
        }
        CtlCommand::Enable { duration } => {
            let q = query(&[("for", Some(duration.to_string()))]);
            let body = call(&socket, Method::POST, &format!("/enable?{q}"))
                .await?
                .ok()?;
            print_status(&serde_json::from_slice(&body)?, false)
        }
        CtlCommand::Disable => {
            let body = call(&socket, Method::POST, "/disable").await?.ok()?;
            print_status(&serde_json::from_slice(&body)?, false)
        }
        CtlCommand::Capture {
            duration,
            event,
            filter,
            output,
        } => {
            let format = OutputFormat::from_path(&output)?;
            // Proven writable before the agent spends the time.
            drop(OutputFile::prepare(&output)?);
            let mut pairs = vec![
                ("duration", Some(duration.to_string())),
                ("event", Some(event.name().to_owned())),
            ];
            pairs.extend(filter_pairs(filter));
            pairs.push(("format", Some(format.name().to_owned())));
            let path = format!("/capture?{}", query(&pairs));
            fetch_to_file(&socket, Method::POST, &path, &output).await
        }
        CtlCommand::History {
            last,
            event,
            filter,
            output,
        } => {
            if OutputFormat::from_path(&output)? != OutputFormat::Pprof {
                bail!(
                    "history is gzipped pprof: name the output .pb.gz or .pprof \
                     (open it with go tool pprof or Pyroscope)"
                );
            }
            drop(OutputFile::prepare(&output)?);
            let mut pairs = vec![
                ("last", Some(last.to_string())),
                ("event", Some(event.name().to_owned())),
            ];
            pairs.extend(filter_pairs(filter));
            let path = format!("/history?{}", query(&pairs));
            fetch_to_file(&socket, Method::GET, &path, &output).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_skip_absent_values_and_encode_the_rest() {
        let q = query(&[
            ("duration", Some("30s".into())),
            ("pid", None),
            ("container", Some("a b/c".into())),
        ]);
        assert_eq!(q, "duration=30s&container=a%20b%2Fc");
    }
}
