//! Trace export over OTLP, off by default.
//!
//! On when the standard OpenTelemetry variable `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (the full
//! URL, used as given) or `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL, `/v1/traces` appended) is
//! set, as the OTLP exporter specification has it
//! (<https://opentelemetry.io/docs/specs/otel/protocol/exporter/>). The export is OTLP/HTTP
//! with protobuf bodies (a collector's port 4318), sent in batches from the SDK's own thread,
//! so a slow collector never holds up a request: when its queue (2,048 spans) is full, spans
//! are dropped. `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (for example
//! `parentbased_traceidratio` and `0.01`) sample a drop's requests; the default keeps all.
//!
//! Every `tracing` span that passes `RUST_LOG` becomes an OTLP span with its fields as
//! attributes: coupon-api's `request` span carries `request_id` (the `x-request-id`),
//! coupon-consumer's `issue_batch` the batch size.

use anyhow::Context;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{SpanExporter, WithExportConfig};
use opentelemetry_sdk::trace::{SdkTracerProvider, Tracer};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetryLayer;
use tracing_subscriber::registry::LookupSpan;

/// The traces URL the environment configures, if any (see the module docs).
pub fn endpoint_from_env() -> Option<String> {
    endpoint(|name| std::env::var(name).ok())
}

/// The traces URL that the variables `var` looks up configure: the traces endpoint as given,
/// else the base endpoint with `/v1/traces`; blank values count as unset.
pub fn endpoint(var: impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name| var(name).filter(|v: &String| !v.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        set("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

/// Exports spans to a collector until dropped; dropping it flushes what is queued (waiting at
/// most the exporter's timeout, 10 s) and stops the export thread.
pub struct OtlpExport {
    provider: SdkTracerProvider,
}

impl OtlpExport {
    /// Starts exporting to `traces_url` (for example `http://127.0.0.1:4318/v1/traces`) as
    /// `service` (the resource's `service.name`). Returns the handle and the `tracing` layer
    /// that feeds it.
    ///
    /// # Errors
    /// The exporter cannot be built (an unparsable URL).
    pub fn start<S>(
        service: &'static str,
        traces_url: &str,
    ) -> anyhow::Result<(Self, OpenTelemetryLayer<S, Tracer>)>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let exporter = SpanExporter::builder()
            .with_http()
            .with_endpoint(traces_url)
            .build()
            .with_context(|| format!("building the OTLP exporter for {traces_url}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer(service));
        Ok((Self { provider }, layer))
    }

    /// Sends every span ended so far.
    ///
    /// # Errors
    /// The collector did not take them.
    pub fn flush(&self) -> anyhow::Result<()> {
        self.provider
            .force_flush()
            .context("flushing spans to the OTLP collector")
    }
}

impl Drop for OtlpExport {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown() {
            eprintln!("OTLP export: shutting down: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            set.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn off_unless_an_endpoint_is_set() {
        assert_eq!(endpoint(vars(&[])), None);
        assert_eq!(
            endpoint(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])),
            None
        );
    }

    #[test]
    fn the_base_endpoint_gets_the_traces_path_and_the_traces_endpoint_wins() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")];
        assert_eq!(
            endpoint(vars(&base)).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://traces:4318/custom",
            ),
        ];
        assert_eq!(
            endpoint(vars(&both)).as_deref(),
            Some("http://traces:4318/custom")
        );
    }
}
