//! Trace export over OTLP/HTTP (issue 17 item 2), against a collector stand-in on a real socket:
//! a span with a `request_id` field reaches `POST /v1/traces` as a protobuf body that carries
//! the span's name, the id and the service name.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use coupon_core::telemetry::otlp::OtlpExport;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tracing_subscriber::layer::SubscriberExt;

/// One request the stand-in received: its request line, headers (lower-cased) and body.
struct Received {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Accepts connections on `listener` and answers every HTTP/1.1 request 200 with an empty
/// body (an OTLP collector's answer to a fully accepted export), sending each to `received`.
async fn collector(listener: TcpListener, received: mpsc::UnboundedSender<Received>) {
    loop {
        let (socket, _) = listener.accept().await.unwrap();
        let received = received.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(socket);
            loop {
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).await.unwrap_or(0) == 0 {
                    return;
                }
                let mut headers = Vec::new();
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).await.unwrap();
                    let line = line.trim_end();
                    if line.is_empty() {
                        break;
                    }
                    let (name, value) = line.split_once(':').unwrap();
                    headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                }
                let length: usize = headers
                    .iter()
                    .find(|(name, _)| name == "content-length")
                    .map_or(0, |(_, value)| value.parse().unwrap());
                let mut body = vec![0; length];
                reader.read_exact(&mut body).await.unwrap();
                reader
                    .get_mut()
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await
                    .unwrap();
                let request_line = request_line.trim_end().to_owned();
                let _ = received.send(Received {
                    request_line,
                    headers,
                    body,
                });
            }
        });
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_span_with_its_request_id_is_exported_to_the_collector() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    let (tx, mut rx) = mpsc::unbounded_channel();
    tokio::spawn(collector(listener, tx));

    // The export's HTTP client blocks, so it is driven from a blocking thread, as the
    // services' batch-export thread drives it.
    let export = tokio::task::spawn_blocking(move || {
        let (export, layer) = OtlpExport::start("coupon-otlp-test", &url).unwrap();
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request", request_id = "otlp-req-7");
            let _entered = span.enter();
            tracing::info!("inside the request");
        });
        export.flush().unwrap();
        export
    })
    .await
    .unwrap();

    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the collector got nothing within 10 s")
        .unwrap();
    assert_eq!(got.request_line, "POST /v1/traces HTTP/1.1");
    assert!(
        got.headers
            .iter()
            .any(|(name, value)| name == "content-type" && value == "application/x-protobuf"),
        "{:?}",
        got.headers
    );
    for needle in ["request", "request_id", "otlp-req-7", "coupon-otlp-test"] {
        assert!(
            contains(&got.body, needle.as_bytes()),
            "body lacks {needle}"
        );
    }
    tokio::task::spawn_blocking(move || drop(export))
        .await
        .unwrap();
}
