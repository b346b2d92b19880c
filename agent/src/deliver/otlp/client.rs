//! Sends encoded `ExportProfilesServiceRequest`s over OTLP/gRPC (tonic)
//! or OTLP/HTTP with protobuf bodies (reqwest).

use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use tonic::{
    Code, Status,
    codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
    metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use super::proto::{ExportProfilesServiceResponse, GRPC_EXPORT_PATH, HTTP_EXPORT_PATH};
use crate::{
    config::{Compression, OtlpConfig, OtlpProtocol},
    deliver::send::{SendError, SetupError, http_client, post, read_ca},
};

pub struct OtlpClient {
    transport: Transport,
    timeout: Duration,
    gzip: bool,
}

enum Transport {
    Grpc {
        channel: Channel,
        metadata: MetadataMap,
    },
    Http {
        client: reqwest::Client,
        url: url::Url,
    },
}

impl OtlpClient {
    /// Sets up the client; nothing connects until the first send.
    pub fn new(config: &OtlpConfig) -> Result<Self, SetupError> {
        let invalid = |what: &str, reason: String| SetupError::Invalid {
            what: what.to_owned(),
            reason,
        };
        let transport = match config.protocol {
            OtlpProtocol::Grpc => {
                let mut endpoint = Endpoint::from_shared(config.endpoint.to_string())
                    .map_err(|e| invalid("otlp.endpoint", e.to_string()))?
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout);
                if config.endpoint.scheme() == "https" {
                    let mut tls = ClientTlsConfig::new().with_native_roots();
                    if let Some(path) = &config.ca_file {
                        tls = tls.ca_certificate(Certificate::from_pem(read_ca(path)?));
                    }
                    endpoint = endpoint
                        .tls_config(tls)
                        .map_err(|e| invalid("otlp TLS settings", e.to_string()))?;
                }
                let mut metadata = MetadataMap::new();
                for (name, value) in &config.headers {
                    let key = AsciiMetadataKey::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|e| {
                            invalid(&format!("otlp header name {name:?}"), e.to_string())
                        })?;
                    let value = AsciiMetadataValue::try_from(value.as_str()).map_err(|e| {
                        invalid(&format!("value of otlp header {name}"), e.to_string())
                    })?;
                    metadata.insert(key, value);
                }
                Transport::Grpc {
                    channel: endpoint.connect_lazy(),
                    metadata,
                }
            }
            OtlpProtocol::Http => {
                let mut base = config.endpoint.clone();
                if !base.path().ends_with('/') {
                    base.set_path(&format!("{}/", base.path()));
                }
                let url = base
                    .join(HTTP_EXPORT_PATH)
                    .map_err(|e| invalid("otlp.endpoint", e.to_string()))?;
                let client =
                    http_client(&config.headers, config.timeout, config.ca_file.as_deref())?;
                Transport::Http { client, url }
            }
        };
        Ok(Self {
            transport,
            timeout: config.timeout,
            gzip: config.compression == Compression::Gzip,
        })
    }

    /// Sends one encoded request.
    pub async fn send(&self, request: Bytes) -> Result<(), SendError> {
        let response = match &self.transport {
            Transport::Grpc { channel, metadata } => {
                self.send_grpc(channel, metadata, request).await?
            }
            Transport::Http { client, url } => {
                let (body, encoding) = if self.gzip {
                    (gzip(&request), &[("content-encoding", "gzip")][..])
                } else {
                    (request.to_vec(), &[][..])
                };
                let mut headers = vec![("content-type", "application/x-protobuf")];
                headers.extend_from_slice(encoding);
                let response = post(client, url, body, &headers).await?;
                let bytes = response.bytes().await.unwrap_or_default();
                ExportProfilesServiceResponse::decode(bytes).unwrap_or_default()
            }
        };
        if let Some(partial) = response.partial_success
            && partial.rejected_profiles > 0
        {
            tracing::warn!(
                rejected = partial.rejected_profiles,
                message = %partial.error_message,
                "the OTLP receiver rejected some profiles"
            );
        }
        Ok(())
    }

    async fn send_grpc(
        &self,
        channel: &Channel,
        metadata: &MetadataMap,
        request: Bytes,
    ) -> Result<ExportProfilesServiceResponse, SendError> {
        let mut grpc = tonic::client::Grpc::new(channel.clone());
        if self.gzip {
            grpc = grpc
                .send_compressed(CompressionEncoding::Gzip)
                .accept_compressed(CompressionEncoding::Gzip);
        }
        grpc.ready()
            .await
            .map_err(|e| SendError::retryable(format!("OTLP gRPC: {e}")))?;
        let mut message = tonic::Request::new(request);
        *message.metadata_mut() = metadata.clone();
        message.set_timeout(self.timeout);
        let path = PathAndQuery::from_static(GRPC_EXPORT_PATH);
        match grpc.unary(message, path, PassThrough).await {
            Ok(response) => Ok(response.into_inner()),
            Err(status) => Err(grpc_error(&status)),
        }
    }
}

/// OTLP's list of retryable gRPC codes.
fn grpc_error(status: &Status) -> SendError {
    let reason = format!("OTLP gRPC: {:?}: {}", status.code(), status.message());
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss
        | Code::ResourceExhausted => SendError::retryable(reason),
        _ => SendError::Rejected(reason),
    }
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    // The fastest level: an agent compresses a request every interval.
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).expect("writing to memory");
    encoder.finish().expect("writing to memory")
}

/// Sends already-encoded request bytes as they are (queued payloads are
/// never decoded again), and decodes the response.
#[derive(Clone, Copy)]
struct PassThrough;

impl Codec for PassThrough {
    type Encode = Bytes;
    type Decode = ExportProfilesServiceResponse;
    type Encoder = PassThrough;
    type Decoder = PassThrough;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PassThrough {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for PassThrough {
    type Item = ExportProfilesServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        ExportProfilesServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| Status::internal(format!("undecodable OTLP response: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_grpc_codes_follow_otlp() {
        let retry = |code| {
            matches!(
                grpc_error(&Status::new(code, "x")),
                SendError::Retryable { .. }
            )
        };
        assert!(
            retry(Code::Unavailable)
                && retry(Code::DeadlineExceeded)
                && retry(Code::ResourceExhausted)
        );
        assert!(
            !retry(Code::InvalidArgument)
                && !retry(Code::Unauthenticated)
                && !retry(Code::Unimplemented)
        );
    }

    #[test]
    fn http_endpoint_gets_the_profiles_path() {
        for (endpoint, url) in [
            (
                "http://collector:4318",
                "http://collector:4318/v1development/profiles",
            ),
            ("http://gw/otlp", "http://gw/otlp/v1development/profiles"),
        ] {
            let config = OtlpConfig {
                endpoint: endpoint.parse().unwrap(),
                protocol: OtlpProtocol::Http,
                headers: Default::default(),
                compression: Compression::Gzip,
                timeout: Duration::from_secs(1),
                ca_file: None,
            };
            let client = OtlpClient::new(&config).unwrap();
            let Transport::Http { url: got, .. } = &client.transport else {
                panic!("http transport expected");
            };
            assert_eq!(got.as_str(), url);
        }
    }
}
