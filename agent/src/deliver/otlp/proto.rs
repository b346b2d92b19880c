//! The OTLP profiles revision Hearth speaks, named in this one place:
//! v1.10 (package `v1development`, v1.11 on the wire), which Grafana
//! Pyroscope >= 2.0 and current OpenTelemetry Collectors read.

pub use opentelemetry_proto::tonic::{
    collector::profiles::v1development::{
        ExportProfilesPartialSuccess, ExportProfilesServiceRequest, ExportProfilesServiceResponse,
    },
    common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value},
    profiles::v1development::{
        Function, KeyValueAndUnit, Line, Link, Location, Mapping, Profile, ProfilesDictionary,
        ResourceProfiles, Sample, ScopeProfiles, Stack, ValueType,
    },
    resource::v1::Resource,
};

/// gRPC method of `ProfilesService/Export`.
pub const GRPC_EXPORT_PATH: &str =
    "/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export";
/// Path appended to the endpoint for OTLP/HTTP.
pub const HTTP_EXPORT_PATH: &str = "v1development/profiles";
