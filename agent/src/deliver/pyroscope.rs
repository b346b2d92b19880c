//! Grafana Pyroscope's push API: one series per resource, each a gzipped
//! pprof labelled `__name__=process_cpu`, `service_name` and the resource's
//! other attributes (dots turned into underscores, as Pyroscope's label
//! names require).

use bytes::Bytes;
use prost::Message;

use super::{
    resource::ResourceGroup,
    send::{SendError, SetupError, http_client, post},
    write_pprof_with,
};
use crate::{config::PyroscopeConfig, profile::Profile};

/// The push API's messages, generated from `proto/pyroscope/push.proto`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/push.v1.rs"));
}

/// Where the push API lives under Pyroscope's base URL.
pub const PUSH_PATH: &str = "push.v1.PusherService/Push";

/// One resource's profile as a gzipped pprof, with its Pyroscope labels.
#[derive(Clone, Debug)]
pub struct LabelledProfile {
    pub labels: Vec<(String, String)>,
    pub pprof_gz: Bytes,
}

/// Cuts `profile` into one gzipped pprof per resource group.
pub fn labelled_profiles(profile: &Profile, groups: &[ResourceGroup]) -> Vec<LabelledProfile> {
    groups
        .iter()
        .map(|group| {
            // `process_cpu` for CPU (Pyroscope's name for cpu/nanoseconds
            // pprof); `network_tx_bytes` and so on for network events.
            let name = profile.event.series_name().to_owned();
            let mut labels = vec![("__name__".to_owned(), name)];
            labels.extend(
                group
                    .attributes
                    .iter()
                    .map(|(key, value)| (key.replace('.', "_"), value.to_string())),
            );
            let mut pprof = Vec::new();
            let subset = profile.subset(&group.samples);
            write_pprof_with(&subset, flate2::Compression::fast(), &mut pprof)
                .expect("writing to memory");
            LabelledProfile {
                labels,
                pprof_gz: pprof.into(),
            }
        })
        .collect()
}

/// The push request body for a window's profiles.
pub fn encode_push(profiles: &[LabelledProfile], ids: &mut dyn FnMut() -> String) -> Vec<u8> {
    proto::PushRequest {
        series: profiles
            .iter()
            .map(|p| proto::RawProfileSeries {
                labels: p
                    .labels
                    .iter()
                    .map(|(name, value)| proto::LabelPair {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
                samples: vec![proto::RawSample {
                    raw_profile: p.pprof_gz.to_vec(),
                    id: ids(),
                }],
            })
            .collect(),
    }
    .encode_to_vec()
}

pub struct PyroscopeClient {
    client: reqwest::Client,
    url: url::Url,
}

impl PyroscopeClient {
    pub fn new(config: &PyroscopeConfig) -> Result<Self, SetupError> {
        let mut base = config.url.clone();
        if !base.path().ends_with('/') {
            base.set_path(&format!("{}/", base.path()));
        }
        let url = base.join(PUSH_PATH).map_err(|e| SetupError::Invalid {
            what: "pyroscope.url".into(),
            reason: e.to_string(),
        })?;
        let client = http_client(&config.headers, config.timeout, config.ca_file.as_deref())?;
        Ok(Self { client, url })
    }

    /// Pushes one encoded request as a Connect unary call.
    pub async fn send(&self, body: Bytes) -> Result<(), SendError> {
        let headers = [
            ("content-type", "application/proto"),
            ("connect-protocol-version", "1"),
        ];
        post(&self.client, &self.url, body.to_vec(), &headers)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::ServiceNameConfig,
        deliver::{fixtures::small_profile, resource::ResourceNamer},
    };

    #[test]
    fn one_series_per_resource_with_pyroscope_labels() {
        let profile = small_profile();
        let groups =
            ResourceNamer::new(&ServiceNameConfig::default(), "node-1".into()).group(&profile);
        let profiles = labelled_profiles(&profile, &groups);
        let body = encode_push(&profiles, &mut || "id".into());
        let request = proto::PushRequest::decode(body.as_slice()).unwrap();
        assert_eq!(request.series.len(), 2);
        let labels: Vec<(&str, &str)> = request.series[0]
            .labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str()))
            .collect();
        assert_eq!(labels[0], ("__name__", "process_cpu"));
        assert!(labels.contains(&("service_name", "app")), "{labels:?}");
        assert!(labels.contains(&("process_pid", "10")), "{labels:?}");
        let raw = &request.series[0].samples[0].raw_profile;
        assert_eq!(&raw[..2], &[0x1f, 0x8b], "gzipped pprof");
    }

    #[test]
    fn push_path_is_under_the_base_url() {
        let config = |url: &str| PyroscopeConfig {
            url: url.parse().unwrap(),
            headers: Default::default(),
            timeout: std::time::Duration::from_secs(1),
            ca_file: None,
        };
        let client = PyroscopeClient::new(&config("http://pyroscope:4040")).unwrap();
        assert_eq!(
            client.url.as_str(),
            "http://pyroscope:4040/push.v1.PusherService/Push"
        );
        let client = PyroscopeClient::new(&config("http://gw/pyroscope")).unwrap();
        assert_eq!(
            client.url.as_str(),
            "http://gw/pyroscope/push.v1.PusherService/Push"
        );
    }
}
