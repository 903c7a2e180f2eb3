//! Every metric that a Grafana panel or a Prometheus alert rule queries is one the services
//! export: coupon-api runs in this process with its exporter on a real port, coupon-consumer
//! runs as its own binary with its own exporter; both are scraped over HTTP after a small
//! drop, the text format is parsed, and the names are compared with the metric names
//! promql-parser finds in `monitoring/grafana/dashboards/*.json` and `monitoring/alerts.yml`.
//! The catalogue `monitoring/METRICS.md` is checked the same way, per service.
//!
//! Both services, and the monitoring that spans them: the test lives with the other
//! cross-service test (`race.rs`), not in either service's crate.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use clap::Parser;
use coupon_api::config::ApiConfig;
use coupon_api::startup::Application;
use coupon_core::config::StoreConfig;
use coupon_core::testing;
use promql_parser::label::{MatchOp, METRIC_NAME};
use promql_parser::parser::{self, AggregateExpr, Expr};
use promql_parser::util::{walk_expr, ExprVisitor};
use secrecy::ExposeSecret;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

#[derive(Parser)]
struct ApiCli {
    #[command(flatten)]
    api: ApiConfig,
}

/// The consumer binary, killed when the test ends however it ends.
struct ConsumerProcess(Child);

impl Drop for ConsumerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The coupon-consumer binary, built by the cargo running this test, in the test's profile.
/// Each service installs its Prometheus exporter for the whole process, so the consumer
/// cannot share this one with coupon-api; and cargo builds only the binaries of the package
/// under test, so `CARGO_BIN_EXE_coupon-consumer` does not exist here.
fn consumer_binary() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    // target/<profile dir>/deps/<this test>; the dev profile's directory is `debug`.
    let profile = test
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .file_name()
        .unwrap();
    let profile = if profile == "debug" {
        "dev".into()
    } else {
        profile.to_owned()
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .args(["build", "--locked", "--quiet", "--message-format=json"])
        .args([
            "-p",
            "coupon-consumer",
            "--bin",
            "coupon-consumer",
            "--profile",
        ])
        .arg(profile)
        .current_dir(repo_root())
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(output.status.success(), "building coupon-consumer failed");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find_map(|message| Some(PathBuf::from(message["executable"].as_str()?)))
        .expect("cargo names the coupon-consumer executable")
}

fn start_consumer(binary: &Path, stores: &StoreConfig, metrics_port: u16) -> ConsumerProcess {
    let child = Command::new(binary)
        .env("DATABASE_URL", stores.mysql.url.expose_secret())
        .env("REDIS_URL", stores.redis.url.expose_secret())
        .env("REDIS_KEY_PREFIX", &stores.redis.key_prefix)
        .env("KAFKA_BROKERS", &stores.kafka.brokers)
        .env("KAFKA_ISSUE_TOPIC", &stores.kafka.issue_topic)
        .env("KAFKA_DEAD_LETTER_TOPIC", &stores.kafka.dead_letter_topic)
        .env("KAFKA_PAYMENTS_TOPIC", &stores.kafka.payments_topic)
        .env("KAFKA_EVENTS_TOPIC", &stores.kafka.events_topic)
        .env(
            "KAFKA_ISSUE_PARTITIONS",
            stores.kafka.issue_partitions.to_string(),
        )
        .env(
            "KAFKA_CONSUMER_GROUP",
            format!("metrics-{}", stores.redis.key_prefix),
        )
        .env("METRICS_LISTEN", format!("127.0.0.1:{metrics_port}"))
        .env("METRICS_SAMPLE_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("starting the coupon-consumer binary");
    ConsumerProcess(child)
}

/// Metric names in a Prometheus text exposition, with the `_bucket`/`_sum`/`_count` series of
/// histograms folded into the histogram's name (from the `# TYPE` lines).
fn exported_names(text: &str) -> BTreeSet<String> {
    let histograms: BTreeSet<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" histogram"))
        .collect();
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let name = l.split(['{', ' ']).next().unwrap();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| histograms.contains(base))
                })
                .unwrap_or(name)
                .to_owned()
        })
        .collect()
}

/// Whether the exposition has a sample of `name` whose labels contain `label`.
fn has_series(text: &str, name: &str, label: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
}

/// Metric names a PromQL expression reads: the metric of every vector and range selector, as
/// promql-parser finds them. Grafana's interval variables become a duration first; its other
/// variables appear only inside label values, which parse as they are.
fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let expr = ["$__rate_interval", "$__interval", "$__range"]
        .iter()
        .fold(expr.to_owned(), |e, variable| e.replace(variable, "5m"));
    let ast = parser::parse(&expr).unwrap_or_else(|e| panic!("not PromQL: {expr}\n{e}"));
    let mut names = MetricNames(BTreeSet::new());
    walk_expr(&mut names, &ast).unwrap();
    names.0
}

/// Collects the metric name of each selector of an expression.
struct MetricNames(BTreeSet<String>);

impl ExprVisitor for MetricNames {
    type Error = std::convert::Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Self::Error> {
        let selector = match expr {
            Expr::VectorSelector(selector) => selector,
            Expr::MatrixSelector(range) => &range.vs,
            // walk_expr does not descend into an aggregation's parameter (`quantile(φ, …)`).
            Expr::Aggregate(AggregateExpr {
                param: Some(param), ..
            }) => {
                walk_expr(self, param)?;
                return Ok(true);
            }
            _ => return Ok(true),
        };
        // `{__name__="x"}` names its metric with a matcher; a selector naming none (or only
        // by regex) could read anything, so no dashboard may have one.
        let name = selector.name.clone().or_else(|| {
            selector
                .matchers
                .find_matchers(METRIC_NAME)
                .into_iter()
                .find(|m| matches!(m.op, MatchOp::Equal))
                .map(|m| m.value)
        });
        let name = name.unwrap_or_else(|| panic!("a selector without a metric name: {expr}"));
        self.0.insert(name);
        Ok(true)
    }
}

/// Every `expr` of the alert rules file (block scalars `|`/`>` or one-line values).
fn rule_expressions(yaml: &str) -> Vec<String> {
    let lines: Vec<&str> = yaml.lines().collect();
    let mut exprs = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((indent, value)) = line.split_once("expr:") else {
            continue;
        };
        if !indent.trim().is_empty() && indent.trim() != "-" {
            continue;
        }
        let value = value.trim();
        if value.starts_with('|') || value.starts_with('>') {
            let width = indent.len();
            let block: Vec<&str> = lines[n + 1..]
                .iter()
                .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() > width)
                .copied()
                .collect();
            exprs.push(block.join("\n"));
        } else {
            exprs.push(value.to_owned());
        }
    }
    exprs
}

/// The series selector of Grafana's `label_values(selector, label)` (the label is not a
/// metric); any other query as it is.
fn label_values_selector(query: &str) -> String {
    query
        .split_once("label_values(")
        .map(|(_, args)| args.rsplit_once(',').map_or(args, |(selector, _)| selector))
        .unwrap_or(query)
        .to_owned()
}

/// Every PromQL expression of a Grafana dashboard: panel targets (rows' nested panels too)
/// and query variables.
fn dashboard_expressions(dashboard: &Value) -> Vec<String> {
    fn walk(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        ("query", Value::String(s)) if s.contains("label_values") => {
                            out.push(label_values_selector(s));
                        }
                        ("query", Value::Object(q)) => {
                            if let Some(Value::String(s)) = q.get("query") {
                                out.push(label_values_selector(s));
                            }
                        }
                        _ => walk(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dashboard, &mut out);
    out
}

/// The metric names of one service's table in `monitoring/METRICS.md` (the section headed
/// `## {service}`), with the gauges apart: those appear with their first sample.
fn catalogue(markdown: &str, service: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let section = markdown
        .split("\n## ")
        .find(|s| s.starts_with(service))
        .unwrap_or_else(|| panic!("METRICS.md has no section {service}"));
    let (mut always, mut gauges) = (BTreeSet::new(), BTreeSet::new());
    for row in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        if cells[2] == "gauge" {
            gauges.insert(name);
        } else {
            always.insert(name);
        }
    }
    (always, gauges)
}

async fn scrape(client: &reqwest::Client, port: u16) -> Option<String> {
    let response = client
        .get(format!("http://127.0.0.1:{port}/metrics"))
        .send()
        .await
        .ok()?;
    response.status().is_success().then_some(())?;
    response.text().await.ok()
}

#[test]
fn the_promql_reader_finds_metric_names_and_nothing_else() {
    let names = promql_metric_names(
        r#"histogram_quantile(0.99, sum by (le, route) (rate(http_request_duration_seconds_bucket{route!~"/health|/ready", x="a{b}"}[$__rate_interval]))) > 0.25
           and on (instance) sum without (partition) (coupon_consumer_lag_messages{coupon_id=~"$coupon_id"} offset 5m) / 1e3
           unless max(coupon_policy_admitted) - ignoring(job) group_left(le) up == bool 0
           or quantile(scalar(coupon_policy_stock), max_over_time({__name__="coupon_policy_issued"}[$__range:1m]))"#,
    );
    let expected: BTreeSet<String> = [
        "http_request_duration_seconds_bucket",
        "coupon_consumer_lag_messages",
        "coupon_policy_admitted",
        "up",
        "coupon_policy_stock",
        "coupon_policy_issued",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(names, expected);
    assert_eq!(
        label_values_selector("label_values(coupon_policy_stock{job=\"x\"}, coupon_id)"),
        "coupon_policy_stock{job=\"x\"}"
    );
    assert_eq!(
        rule_expressions("  - alert: A\n    expr: |\n      up == 0\n      or x\n    for: 1m\n  - record: b\n    expr: sum(y)\n"),
        vec!["      up == 0\n      or x".to_owned(), "sum(y)".to_owned()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_a_dashboard_or_alert_queries_is_exported() {
    let consumer_binary = tokio::task::spawn_blocking(consumer_binary).await.unwrap();
    let stores = testing::isolated_stores();
    let (api_metrics, consumer_metrics) = (free_port(), free_port());
    let mut api = ApiCli::parse_from([
        "coupon-api",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        &format!("127.0.0.1:{api_metrics}"),
    ])
    .api;
    api.stores = stores.clone();
    api.auth.jwt_secret = Some(testing::JWT_SECRET.into());
    api.auth.allow_development_secret = true;
    let app = Application::build(api)
        .await
        .expect("coupon-api (is `make up` running?)");
    let base = format!("http://{}", app.local_addr().unwrap());
    let stop = CancellationToken::new();
    let api_stop = stop.clone();
    let api_task = tokio::spawn(app.run_until_stopped(async move { api_stop.cancelled().await }));
    // The API created the database and topics; the consumer binary joins them.
    let _consumer = start_consumer(&consumer_binary, &stores, consumer_metrics);
    let client = reqwest::Client::new();
    let root = repo_root();
    let markdown = std::fs::read_to_string(root.join("monitoring/METRICS.md")).unwrap();

    // Before any traffic: every counter and histogram of each service's catalogue is there.
    let api_text = scrape(&client, api_metrics).await.unwrap();
    let consumer_text = testing::eventually("the consumer's exporter", WAIT, || {
        scrape(&client, consumer_metrics)
    })
    .await;
    for (service, text) in [
        ("coupon-api", &api_text),
        ("coupon-consumer", &consumer_text),
    ] {
        let (always, _) = catalogue(&markdown, service);
        let exported = exported_names(text);
        let missing: Vec<_> = always.difference(&exported).collect();
        assert!(
            missing.is_empty(),
            "{service} does not export {missing:?} at start-up"
        );
    }

    // A small drop: 3 users admitted, 1 repeat.
    let now = chrono::Utc::now();
    let created: Value = client
        .post(format!("{base}/api/v1/coupons"))
        .bearer_auth(testing::admin_token())
        .json(&json!({
            "title": "metrics", "coupon_type": "FIRST_COME_FIRST_SERVED", "total_quantity": 5,
            "discount_type": "FIXED", "discount_value": 1000,
            "issue_starts_at": now - chrono::Duration::minutes(1),
            "issue_ends_at": now + chrono::Duration::hours(1), "valid_days": 7,
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let coupon = created["id"].as_i64().unwrap();
    for user in [1, 2, 3, 3] {
        client
            .post(format!("{base}/api/v1/coupons/{coupon}/issues"))
            .bearer_auth(testing::user_token(user))
            .send()
            .await
            .unwrap();
    }
    // Persisted, sampled (every 200 ms) and the lag reported (librdkafka statistics, 5 s).
    let coupon_label = format!("coupon_id=\"{coupon}\"");
    let consumer_text = testing::eventually("the consumer's gauges", WAIT, || async {
        let text = scrape(&client, consumer_metrics).await?;
        let ready = text.contains(&format!("coupon_policy_issued{{{coupon_label}}} 3"))
            && has_series(
                &text,
                "coupon_consumer_lag_messages",
                &stores.kafka.issue_topic,
            );
        ready.then_some(text)
    })
    .await;
    let api_text = scrape(&client, api_metrics).await.unwrap();
    assert!(
        api_text.contains("coupon_issue_requests_total{outcome=\"issued\"} 3"),
        "three admitted:\n{api_text}"
    );
    assert!(api_text.contains("coupon_issue_requests_total{outcome=\"duplicate\"} 1"));
    for gauge in ["stock 5", "admitted 3", "remaining 2"] {
        assert!(
            consumer_text.contains(&format!(
                "coupon_policy_{}{{{coupon_label}}} {}",
                gauge.split(' ').next().unwrap(),
                gauge.split(' ').nth(1).unwrap()
            )),
            "coupon_policy_{gauge}:\n{consumer_text}"
        );
    }

    // The whole catalogue, gauges included, per service.
    let api_names = exported_names(&api_text);
    let consumer_names = exported_names(&consumer_text);
    for (service, names) in [
        ("coupon-api", &api_names),
        ("coupon-consumer", &consumer_names),
    ] {
        let (always, gauges) = catalogue(&markdown, service);
        let missing: Vec<_> = always
            .union(&gauges)
            .filter(|n| !names.contains(*n))
            .collect();
        assert!(missing.is_empty(), "{service} does not export {missing:?}");
    }

    // What the dashboards and rules query.
    let mut queried: Vec<(String, String)> = Vec::new();
    let rules = std::fs::read_to_string(root.join("monitoring/alerts.yml")).unwrap();
    for expr in rule_expressions(&rules) {
        queried.extend(
            promql_metric_names(&expr)
                .into_iter()
                .map(|n| ("alerts.yml".to_owned(), n)),
        );
    }
    let mut dashboards = 0;
    for entry in std::fs::read_dir(root.join("monitoring/grafana/dashboards")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            dashboards += 1;
            let dashboard: Value =
                serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            for expr in dashboard_expressions(&dashboard) {
                queried.extend(
                    promql_metric_names(&expr)
                        .into_iter()
                        .map(|n| (file.clone(), n)),
                );
            }
        }
    }
    assert!(dashboards >= 2, "the issue and the service dashboards");
    assert!(
        queried.len() > 20,
        "the reader found the queries: {queried:?}"
    );
    // Prometheus' own series: the scrape health and the alert state.
    let prometheus_own = ["up", "ALERTS", "ALERTS_FOR_STATE"];
    let unknown: BTreeSet<_> = queried
        .iter()
        .filter(|(_, name)| {
            !prometheus_own.contains(&name.as_str())
                && !api_names.contains(name)
                && !consumer_names.contains(name)
                && !["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    name.strip_suffix(suffix).is_some_and(|base| {
                        api_names.contains(base) || consumer_names.contains(base)
                    })
                })
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "queried but exported by neither service: {unknown:?}"
    );

    stop.cancel();
    api_task.await.unwrap().unwrap();
}
