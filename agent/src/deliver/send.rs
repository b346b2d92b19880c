//! What the exporters share about talking to a backend: the outcome of a
//! send, which failures are worth retrying, and an HTTP client with the
//! configured headers, deadline and trust roots.

use std::{collections::BTreeMap, path::Path, time::Duration};

/// Why a send did not deliver.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SendError {
    /// The backend is away or overloaded: keep the payload and try again.
    #[error("{reason} (will retry)")]
    Retryable {
        reason: String,
        /// How long the backend asked us to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// The backend refused this payload; sending it again cannot help.
    #[error("{0} (payload dropped)")]
    Rejected(String),
}

impl SendError {
    pub fn retryable(reason: impl std::fmt::Display) -> Self {
        Self::Retryable {
            reason: reason.to_string(),
            retry_after: None,
        }
    }
}

/// Could not set up an exporter from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot read the CA file {path}: {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid {what}: {reason}")]
    Invalid { what: String, reason: String },
}

pub fn read_ca(path: &Path) -> Result<Vec<u8>, SetupError> {
    std::fs::read(path).map_err(|source| SetupError::CaFile {
        path: path.display().to_string(),
        source,
    })
}

/// HTTP status codes OTLP/HTTP (and Pyroscope) clients retry.
fn http_status_is_retryable(status: u16) -> bool {
    matches!(status, 408 | 429 | 502 | 503 | 504)
}

/// An HTTP client for one backend.
pub fn http_client(
    headers: &BTreeMap<String, String>,
    timeout: Duration,
    ca_file: Option<&Path>,
) -> Result<reqwest::Client, SetupError> {
    let invalid = |what: &str, reason: String| SetupError::Invalid {
        what: what.to_owned(),
        reason,
    };
    let mut default_headers = reqwest::header::HeaderMap::new();
    for (name, value) in headers {
        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| invalid(&format!("header name {name:?}"), e.to_string()))?;
        let value = reqwest::header::HeaderValue::from_str(value)
            .map_err(|e| invalid(&format!("value of header {name}"), e.to_string()))?;
        default_headers.insert(name, value);
    }
    let mut builder = reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .default_headers(default_headers)
        .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = ca_file {
        let pem = read_ca(path)?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| invalid(&format!("CA file {}", path.display()), e.to_string()))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| invalid("HTTP client", e.to_string()))
}

/// Posts `body`; maps the answer to delivered, retry, or rejected.
pub async fn post(
    client: &reqwest::Client,
    url: &url::Url,
    body: Vec<u8>,
    headers: &[(&'static str, &'static str)],
) -> Result<reqwest::Response, SendError> {
    let mut request = client.post(url.clone()).body(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.map_err(|err| {
        // Connection refused, DNS, TLS, timeouts: the backend may come back.
        SendError::retryable(format!("POST {url}: {}", crate::error_chain(&err)))
    })?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
        .map(Duration::from_secs);
    let text = response.text().await.unwrap_or_default();
    let reason = format!(
        "POST {url}: HTTP {status}: {}",
        text.chars().take(300).collect::<String>()
    );
    if http_status_is_retryable(status.as_u16()) {
        Err(SendError::Retryable {
            reason,
            retry_after,
        })
    } else {
        Err(SendError::Rejected(reason))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_and_unavailability_are_retried_client_errors_are_not() {
        for status in [429, 502, 503, 504] {
            assert!(http_status_is_retryable(status), "{status}");
        }
        for status in [400, 401, 403, 404, 413, 500] {
            assert!(!http_status_is_retryable(status), "{status}");
        }
    }

    #[test]
    fn bad_headers_and_missing_ca_files_are_setup_errors() {
        let headers = BTreeMap::from([("bad header".to_owned(), "v".to_owned())]);
        assert!(http_client(&headers, Duration::from_secs(1), None).is_err());
        let err = http_client(
            &BTreeMap::new(),
            Duration::from_secs(1),
            Some(Path::new("/nonexistent/ca.pem")),
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
