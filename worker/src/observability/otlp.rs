//! The OTLP trace exporter, configured only by the standard `OTEL_*` variables.
//!
//! [`settings_from_env`] is a pure function over an environment map, so every rule below is a
//! unit test: no endpoint (or `OTEL_SDK_DISABLED=true`, or `OTEL_TRACES_EXPORTER=none`) means no
//! exporter at all. Headers often carry an API key, so they are held as [`Secret`]s and never
//! printed, not even in errors.
//!
//! | variable | meaning |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | full traces URL, used as is |
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL; `/v1/traces` is appended for HTTP |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` | `http/protobuf` (default) or `grpc` |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]HEADERS` | `key=value,…`, values percent-decoded |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` | export timeout in ms (default 10000) |
//! | `OTEL_EXPORTER_OTLP_[TRACES_]COMPRESSION` | `gzip` or `none` (default) |
//! | `OTEL_PROPAGATORS` | `tracecontext` (default), `baggage`, `none`, comma-separated: without `tracecontext` no `traceparent` is stored with a job nor read from one; `baggage` is accepted but has nothing to carry (a job stores no baggage) |
//! | `OTEL_SERVICE_NAME` | `service.name` (default `lettuce-worker`) |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | `parentbased_always_on` (default) and the other standard samplers |
//! | `OTEL_BSP_*`, `OTEL_RESOURCE_ATTRIBUTES` | read by the SDK itself |
//!
//! The resource also carries `service.version` and `service.instance.id` (the worker id).

use std::collections::HashMap;
use std::time::Duration;

use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};

use crate::config::{Env, Secret};

/// The wire protocol of the exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Which spans are recorded, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerSetting {
    AlwaysOn,
    AlwaysOff,
    TraceIdRatio(f64),
    ParentBasedAlwaysOn,
    ParentBasedAlwaysOff,
    ParentBasedTraceIdRatio(f64),
}

impl SamplerSetting {
    fn sampler(self) -> Sampler {
        match self {
            SamplerSetting::AlwaysOn => Sampler::AlwaysOn,
            SamplerSetting::AlwaysOff => Sampler::AlwaysOff,
            SamplerSetting::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSetting::ParentBasedAlwaysOn => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOn))
            }
            SamplerSetting::ParentBasedAlwaysOff => {
                Sampler::ParentBased(Box::new(Sampler::AlwaysOff))
            }
            SamplerSetting::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// Which `OTEL_PROPAGATORS` are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagators {
    pub tracecontext: bool,
    pub baggage: bool,
}

impl Default for Propagators {
    fn default() -> Self {
        Propagators {
            tracecontext: true,
            baggage: false,
        }
    }
}

/// Export compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
}

/// Everything the exporter needs, resolved from the environment.
#[derive(Debug, Clone)]
pub struct OtlpSettings {
    /// The URL spans are sent to (for HTTP, the full `/v1/traces` URL).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Extra request headers or gRPC metadata; values are secret.
    pub headers: Vec<(String, Secret<String>)>,
    pub timeout: Option<Duration>,
    pub service_name: String,
    pub sampler: SamplerSetting,
    pub compression: Compression,
    pub propagators: Propagators,
}

/// A telemetry variable that does not parse, or an exporter that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("ConfigError: {var}: {problem}")]
    BadVar { var: &'static str, problem: String },
    #[error("OtlpError: the OTLP exporter could not be built: {0}")]
    Exporter(String),
}

fn get<'a>(env: &'a Env, name: &str) -> Option<&'a str> {
    env.get(name).map(|s| s.trim()).filter(|s| !s.is_empty())
}

/// The signal-specific variable when set, else the general one; returns which was used.
fn pick<'a>(
    env: &'a Env,
    traces: &'static str,
    general: &'static str,
) -> Option<(&'static str, &'a str)> {
    get(env, traces)
        .map(|v| (traces, v))
        .or_else(|| get(env, general).map(|v| (general, v)))
}

/// Reads the `OTEL_*` variables. `Ok(None)` means tracing export is off.
pub fn settings_from_env(env: &Env) -> Result<Option<OtlpSettings>, TelemetryError> {
    if get(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    let propagators = propagators_from_env(env)?;
    if let Some(exporter) = get(env, "OTEL_TRACES_EXPORTER") {
        match exporter.to_ascii_lowercase().as_str() {
            "none" => return Ok(None),
            "otlp" => {}
            _ => {
                return Err(TelemetryError::BadVar {
                    var: "OTEL_TRACES_EXPORTER",
                    problem: format!("{exporter:?} is not supported; accepted: otlp, none"),
                });
            }
        }
    }
    let protocol = match pick(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ) {
        None => Protocol::HttpProtobuf,
        Some((_, "http/protobuf")) => Protocol::HttpProtobuf,
        Some((_, "grpc")) => Protocol::Grpc,
        Some((var, other)) => {
            return Err(TelemetryError::BadVar {
                var,
                problem: format!("{other:?} is not supported; accepted: http/protobuf, grpc"),
            });
        }
    };
    let endpoint = if let Some(url) = get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
        url.to_string()
    } else if let Some(base) = get(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
        match protocol {
            Protocol::HttpProtobuf => format!("{}/v1/traces", base.trim_end_matches('/')),
            Protocol::Grpc => base.to_string(),
        }
    } else {
        return Ok(None);
    };
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        let var = if get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some() {
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
        } else {
            "OTEL_EXPORTER_OTLP_ENDPOINT"
        };
        return Err(TelemetryError::BadVar {
            var,
            problem: "must be an http:// or https:// URL".into(),
        });
    }
    let mut headers = Vec::new();
    for var in [
        "OTEL_EXPORTER_OTLP_HEADERS",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    ] {
        if let Some(text) = get(env, var) {
            for (k, v) in parse_headers(var, text)? {
                // The signal-specific list is read last and wins.
                headers
                    .retain(|(name, _): &(String, Secret<String>)| !name.eq_ignore_ascii_case(&k));
                headers.push((k, Secret::new(v)));
            }
        }
    }
    let timeout = match pick(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
        "OTEL_EXPORTER_OTLP_TIMEOUT",
    ) {
        None => None,
        Some((var, v)) => Some(Duration::from_millis(v.parse().map_err(|_| {
            TelemetryError::BadVar {
                var,
                problem: format!("{v:?} is not a whole number of milliseconds"),
            }
        })?)),
    };
    let service_name = get(env, "OTEL_SERVICE_NAME")
        .map(str::to_string)
        .or_else(|| {
            get(env, "OTEL_RESOURCE_ATTRIBUTES").and_then(|attrs| {
                attrs.split(',').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    (k.trim() == "service.name").then(|| v.trim().to_string())
                })
            })
        })
        .unwrap_or_else(|| "lettuce-worker".to_string());
    let compression = match pick(
        env,
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
        "OTEL_EXPORTER_OTLP_COMPRESSION",
    ) {
        None => Compression::None,
        Some((var, v)) => match v.to_ascii_lowercase().as_str() {
            "none" => Compression::None,
            "gzip" => Compression::Gzip,
            _ => {
                return Err(TelemetryError::BadVar {
                    var,
                    problem: format!("{v:?} is not supported; accepted: gzip, none"),
                });
            }
        },
    };
    Ok(Some(OtlpSettings {
        endpoint,
        protocol,
        headers,
        timeout,
        service_name,
        sampler: sampler_from_env(env)?,
        compression,
        propagators,
    }))
}

/// `OTEL_PROPAGATORS`: a comma-separated list of `tracecontext`, `baggage`, `none`.
pub fn propagators_from_env(env: &Env) -> Result<Propagators, TelemetryError> {
    let Some(list) = get(env, "OTEL_PROPAGATORS") else {
        return Ok(Propagators::default());
    };
    let mut p = Propagators {
        tracecontext: false,
        baggage: false,
    };
    for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name.to_ascii_lowercase().as_str() {
            "tracecontext" => p.tracecontext = true,
            "baggage" => p.baggage = true,
            "none" => {}
            _ => {
                return Err(TelemetryError::BadVar {
                    var: "OTEL_PROPAGATORS",
                    problem: format!(
                        "{name:?} is not supported; accepted: tracecontext, baggage, none"
                    ),
                });
            }
        }
    }
    Ok(p)
}

fn sampler_from_env(env: &Env) -> Result<SamplerSetting, TelemetryError> {
    let ratio = || -> Result<f64, TelemetryError> {
        match get(env, "OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => v
                .parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| TelemetryError::BadVar {
                    var: "OTEL_TRACES_SAMPLER_ARG",
                    problem: format!("{v:?} is not a ratio between 0 and 1"),
                }),
        }
    };
    let Some(name) = get(env, "OTEL_TRACES_SAMPLER") else {
        return Ok(SamplerSetting::ParentBasedAlwaysOn);
    };
    Ok(match name.to_ascii_lowercase().as_str() {
        "always_on" => SamplerSetting::AlwaysOn,
        "always_off" => SamplerSetting::AlwaysOff,
        "traceidratio" => SamplerSetting::TraceIdRatio(ratio()?),
        "parentbased_always_on" => SamplerSetting::ParentBasedAlwaysOn,
        "parentbased_always_off" => SamplerSetting::ParentBasedAlwaysOff,
        "parentbased_traceidratio" => SamplerSetting::ParentBasedTraceIdRatio(ratio()?),
        _ => {
            return Err(TelemetryError::BadVar {
                var: "OTEL_TRACES_SAMPLER",
                problem: format!(
                    "{name:?} is not supported; accepted: always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
                ),
            });
        }
    })
}

/// Parses the W3C-baggage-like `key=value,key=value` list. Errors never quote the text, since
/// header values are usually credentials.
fn parse_headers(var: &'static str, text: &str) -> Result<Vec<(String, String)>, TelemetryError> {
    let mut out = Vec::new();
    for (i, pair) in text.split(',').enumerate() {
        if pair.trim().is_empty() {
            continue;
        }
        let Some((k, v)) = pair.split_once('=') else {
            return Err(TelemetryError::BadVar {
                var,
                problem: format!("entry {} is not key=value", i + 1),
            });
        };
        let key = percent_decode(k.trim()).filter(|k| !k.is_empty());
        let value = percent_decode(v.trim());
        match (key, value) {
            (Some(k), Some(v)) => out.push((k, v)),
            _ => {
                return Err(TelemetryError::BadVar {
                    var,
                    problem: format!("entry {} has an empty key or a bad %-escape", i + 1),
                });
            }
        }
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Builds the provider with a batch exporter. Must run inside the Tokio runtime (the gRPC
/// channel binds to it); the batch processor itself runs on its own thread, which is why HTTP
/// uses the blocking reqwest client.
pub fn build_provider(
    settings: &OtlpSettings,
    instance_id: &str,
) -> Result<SdkTracerProvider, TelemetryError> {
    let exporter = match settings.protocol {
        Protocol::HttpProtobuf => {
            let headers: HashMap<String, String> = settings
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), v.expose().clone()))
                .collect();
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(settings.endpoint.clone())
                .with_headers(headers);
            if let Some(t) = settings.timeout {
                b = b.with_timeout(t);
            }
            if settings.compression == Compression::Gzip {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            b.build()
        }
        Protocol::Grpc => {
            let mut headers = axum::http::HeaderMap::new();
            for (k, v) in &settings.headers {
                let key = axum::http::HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| TelemetryError::BadVar {
                        var: "OTEL_EXPORTER_OTLP_HEADERS",
                        problem: format!("{k:?} is not a valid gRPC metadata key"),
                    })?;
                let value = axum::http::HeaderValue::from_str(v.expose()).map_err(|_| {
                    TelemetryError::BadVar {
                        var: "OTEL_EXPORTER_OTLP_HEADERS",
                        problem: format!("the value of {k:?} is not valid gRPC metadata"),
                    }
                })?;
                headers.insert(key, value);
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.endpoint.clone())
                .with_metadata(metadata);
            if let Some(t) = settings.timeout {
                b = b.with_timeout(t);
            }
            if settings.compression == Compression::Gzip {
                b = b.with_compression(opentelemetry_otlp::Compression::Gzip);
            }
            b.build()
        }
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(settings.sampler.sampler())
        .with_resource(
            Resource::builder()
                .with_service_name(settings.service_name.clone())
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.version",
                    crate::VERSION,
                ))
                .with_attribute(opentelemetry::KeyValue::new(
                    "service.instance.id",
                    instance_id.to_string(),
                ))
                .build(),
        )
        .build())
}

#[cfg(test)]
mod tests;
