//! OTLP profiles export: encoding a window as one request over a shared
//! dictionary, and sending it over gRPC or HTTP/protobuf.

mod client;
mod encode;
pub mod proto;

pub use client::OtlpClient;
pub use encode::encode_request;
