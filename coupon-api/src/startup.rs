//! Building and running the API: a type tests can drive (bind port 0, read the port, stop it).

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use coupon_core::auth::TokenVerifier;
use coupon_core::issue::admission::{AdmissionStore, RedisKeys};
use coupon_core::issue::recovery::IssueLog;
use coupon_core::store::kafka::IssuePublisher;
use coupon_core::store::Connections;
use coupon_core::telemetry::{self, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::auth::Authenticator;
use crate::breaker::RedisBreaker;
use crate::cache::{AdmittedHere, PolicyCache, SoldOutMarks};
use crate::code_jobs::CodeJobs;
use crate::config::ApiConfig;
use crate::error::{ApiError, ErrorCode, ErrorDetail};
use crate::idempotency::Idempotency;
use crate::invalidation;
use crate::rate_limit::RateLimits;
use crate::rebuild::Rebuilds;
use crate::request_id;
use crate::routes;
use crate::settle::Settler;
use crate::state::{AppState, Shared};
use crate::stats::StatsCache;

/// The whole app with `state`: routes, bearer-token checking, rate limits, `Idempotency-Key`
/// handling, body limit of `max_body_bytes`, the request timeout, request metrics and error
/// logging, each request in a span named by its `x-request-id` ([`request_id`]). Tests can
/// drive it with `tower::ServiceExt::oneshot`, no socket needed.
pub fn router(state: AppState, limits: HttpLimits, guards: Guards) -> Router {
    let HttpLimits {
        max_body_bytes,
        idempotency_ttl,
        request_timeout,
        body_read_timeout,
    } = limits;
    let idempotency = Idempotency {
        pool: state.pool.clone(),
        order_pool: state.order_pool.clone(),
        ttl: idempotency_ttl,
        max_body_bytes,
    };
    let Guards {
        verifier,
        rate_limits,
    } = guards;
    let routes = routes::router().layer(middleware::from_fn_with_state(
        idempotency,
        crate::idempotency::middleware,
    ));
    // With every limit off (`RATE_LIMITS=off`) the layer would only pass requests on: it is
    // left out, so the issue path pays nothing for it.
    let routes = if rate_limits.any() {
        routes.layer(middleware::from_fn(crate::rate_limit::middleware))
    } else {
        routes
    };
    routes
        .layer(Extension(Authenticator(verifier)))
        .layer(Extension(rate_limits))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(RequestBodyTimeoutLayer::new(body_read_timeout))
        .layer(middleware::from_fn(move |request: Request, next: Next| {
            bounded(request_timeout, request, next)
        }))
        .layer(middleware::from_fn(observe))
        .layer(PropagateRequestIdLayer::new(request_id::HEADER))
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(SetRequestIdLayer::new(request_id::HEADER, MakeRequestUuid))
        .layer(MapRequestLayer::new(request_id::drop_invalid))
        .with_state(state)
}

/// Who may call, and how often: the token verifier the extractors find as an
/// [`Authenticator`] request extension ([`crate::auth`]), and the limits the rate-limit layer
/// finds as a [`RateLimits`] extension ([`crate::rate_limit`]). Request extensions are their
/// only home, so a router without them refuses every request that needs them.
#[derive(Clone)]
pub struct Guards {
    /// Checks bearer tokens.
    pub verifier: Arc<TokenVerifier>,
    /// Per-caller and per-address limits of every route but the probes.
    pub rate_limits: RateLimits,
}

/// Bounds on one request, from [`ApiConfig`].
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Largest body read (bytes).
    pub max_body_bytes: usize,
    /// How long an `Idempotency-Key` is remembered.
    pub idempotency_ttl: chrono::Duration,
    /// Longest wait for the response head.
    pub request_timeout: Duration,
    /// Longest wait for the next piece of the body.
    pub body_read_timeout: Duration,
}

impl HttpLimits {
    /// The limits `config` sets.
    pub fn from_config(config: &ApiConfig) -> Self {
        Self {
            max_body_bytes: config.max_body_bytes,
            idempotency_ttl: chrono::Duration::seconds(i64::from(config.idempotency_ttl_secs)),
            request_timeout: config.request_timeout(),
            body_read_timeout: Duration::from_millis(config.body_read_timeout_ms),
        }
    }
}

/// Answers 503 `UNAVAILABLE` when the response head is not ready within `limit`.
async fn bounded(limit: Duration, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            ApiError::unavailable(anyhow::anyhow!("no response within {limit:?}")).into_response()
        }
    }
}

/// Records `http_requests_total` (labels `method`, `route`, `status_class`, `outcome`) and
/// `http_request_duration_seconds` (`method`, `route`, `status_class`), and logs the detail of
/// every 5xx (never sent to the client). `route` is the matched route template, never the URL
/// (monitoring/METRICS.md, cardinality rule); `outcome` is the error body's code, `OK` below
/// 400, or `OTHER` for an error answered without one (a replayed idempotent response).
async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    let response = next.run(request).await;
    let status = response.status();
    if let Some(ErrorDetail(detail)) = response.extensions().get::<ErrorDetail>() {
        tracing::error!(%method, %route, status = status.as_u16(), error = %detail, "request failed");
    }
    let outcome = match response.extensions().get::<ErrorCode>() {
        Some(ErrorCode(code)) => code,
        None if status.as_u16() < 400 => "OK",
        None => "OTHER",
    };
    record_request(method, route, status, outcome, started.elapsed());
    response
}

const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The `method` label: the standard methods by name, any other `OTHER` (a client picks the
/// method, so it may not pick label values; monitoring/METRICS.md, cardinality rule).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

/// The `route` label: a `'static` copy of the matched route template, made once per template
/// (the router's fixed set), so recording a request allocates no label.
fn route_label(template: &str) -> &'static str {
    static ROUTES: OnceLock<RwLock<HashSet<&'static str>>> = OnceLock::new();
    let routes = ROUTES.get_or_init(RwLock::default);
    if let Some(known) = routes
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(template)
    {
        return known;
    }
    let mut routes = routes.write().unwrap_or_else(PoisonError::into_inner);
    if let Some(known) = routes.get(template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

fn record_request(
    method: &'static str,
    route: &'static str,
    status: StatusCode,
    outcome: &'static str,
    elapsed: Duration,
) {
    let class = STATUS_CLASSES[usize::from(status.as_u16() / 100).min(5)];
    metrics::histogram!(
        names::HTTP_REQUEST_DURATION,
        "method" => method, "route" => route, "status_class" => class
    )
    .record(elapsed);
    metrics::counter!(
        names::HTTP_REQUESTS,
        "method" => method, "route" => route, "status_class" => class, "outcome" => outcome
    )
    .increment(1);
}

/// Registers the API's series before the first request: the HTTP series of the issue route for
/// every answer it can give, the issue outcomes, the policy cache and Redis series (the Kafka
/// producer's are registered by [`IssuePublisher::sample_gauges`]).
fn register_metrics() {
    coupon_core::issue::admission::register_metrics();
    crate::routes::issues::register_metrics();
    crate::cache::register_metrics();
    crate::rate_limit::register_metrics();
    metrics::counter!(names::CODES_GENERATED).increment(0);
    let issue_route = "/api/v1/coupons/{coupon_id}/issues";
    for (status, outcome) in [
        (StatusCode::ACCEPTED, "OK"),
        (StatusCode::CONFLICT, "ALREADY_ISSUED"),
        (StatusCode::CONFLICT, "SOLD_OUT"),
        (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
    ] {
        let class = STATUS_CLASSES[usize::from(status.as_u16() / 100)];
        let _ = metrics::histogram!(
            names::HTTP_REQUEST_DURATION,
            "method" => "POST", "route" => issue_route, "status_class" => class
        );
        metrics::counter!(
            names::HTTP_REQUESTS,
            "method" => "POST", "route" => issue_route, "status_class" => class, "outcome" => outcome
        )
        .increment(0);
    }
}

/// A built, bound, not yet running API server.
pub struct Application {
    listener: TcpListener,
    router: Router,
    state: AppState,
    background: CancellationToken,
    invalidations_ready: CancellationToken,
    grace: Duration,
    header_read_timeout: Duration,
}

impl Application {
    /// Connects to MySQL (creating the database and applying migrations), Redis and Kafka
    /// (creating topics when configured to), starts the invalidation subscriber and binds the
    /// listener.
    ///
    /// # Errors
    /// A store is unreachable at start-up or the address cannot be bound.
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let stores = &config.stores;
        let verifier = Arc::new(
            TokenVerifier::from_config(&config.auth).context("configuring bearer tokens")?,
        );
        telemetry::install_metrics(config.metrics_listen)?;
        register_metrics();
        let Connections {
            pool,
            redis,
            issue_topic,
        } = coupon_core::store::connect(stores).await?;
        let order_pool = coupon_core::store::db::connect(
            stores.database_url(),
            config.database_order_max_connections,
        )
        .await
        .context("connecting the order routes' MySQL pool")?;
        let publisher = IssuePublisher::new(
            &stores.kafka_brokers,
            &stores.kafka_issue_topic,
            stores.kafka_message_timeout(),
        )
        .context("creating the Kafka producer")?;
        let keys = RedisKeys::new(stores.redis_key_prefix.clone());
        let redis_for_subscriber = redis.clone();
        let mut admission = AdmissionStore::new(redis, keys.clone());
        if stores.redis_wait_replicas > 0 {
            // A connection of its own: each WAIT blocks the connection it is sent on.
            let waits = stores
                .connect_redis(stores.redis_timeout() + stores.redis_wait_timeout())
                .await
                .context("connecting to Redis for the replica acknowledgements")?;
            admission = admission.with_replica_acks(
                waits,
                stores.redis_wait_replicas,
                stores.redis_wait_timeout(),
            );
        }
        let policies = PolicyCache::new(
            config.policy_cache_capacity,
            config.policy_cache_ttl(),
            admission.clone(),
            pool.clone(),
        );
        let sold_out = SoldOutMarks::new(
            config.policy_cache_capacity,
            config.sold_out_holders_max,
            admission.clone(),
        );
        let background = CancellationToken::new();
        let code_jobs = CodeJobs::new(pool.clone(), config.code_job_lease(), background.clone());
        tokio::spawn(code_jobs.clone().resume_abandoned());
        tokio::spawn(
            publisher
                .clone()
                .sample_gauges(issue_topic, background.clone()),
        );
        let breaker = RedisBreaker::new(&config.breaker);
        tokio::spawn(breaker.clone().probe(admission.clone(), background.clone()));
        let rate_limits = RateLimits::new(&config.rate_limits);
        tokio::spawn(rate_limits.clone().retain_recent(background.clone()));
        let rebuilds = Rebuilds::new(
            pool.clone(),
            admission.clone(),
            policies.clone(),
            IssueLog::new(stores, &config.kafka_consumer_group),
            stores.kafka_message_timeout(),
        );
        let settler = Settler::start(admission.clone(), background.clone());
        let state = AppState::new(Shared {
            pool,
            order_pool,
            admission,
            publisher,
            policies: policies.clone(),
            sold_out: sold_out.clone(),
            admitted_here: AdmittedHere::new(config.admitted_cache_capacity),
            reservation_hold: chrono::Duration::seconds(i64::from(config.reservation_hold_secs)),
            stats: StatsCache::default(),
            public_reads: crate::public_reads::PublicReads::default(),
            code_jobs,
            breaker,
            rebuilds,
            settler,
        });

        let invalidations_ready = CancellationToken::new();
        tokio::spawn(invalidation::run(
            redis_for_subscriber,
            stores.redis_url().to_owned(),
            keys.invalidation_channel(),
            invalidation::Invalidated { policies, sold_out },
            background.clone(),
            invalidations_ready.clone(),
        ));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            router: router(
                state.clone(),
                HttpLimits::from_config(&config),
                Guards {
                    verifier,
                    rate_limits,
                },
            ),
            header_read_timeout: Duration::from_millis(config.header_read_timeout_ms),
            state,
            background,
            invalidations_ready,
            grace: config.shutdown_grace(),
        })
    }

    /// The bound address (port 0 in the config becomes the real port here).
    ///
    /// # Errors
    /// The socket has no local address (cannot happen once bound).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Handles on the shared state, for tests that inspect the cache or stores.
    pub fn state(&self) -> AppState {
        self.state.clone()
    }

    /// Resolves once the invalidation subscription is active.
    pub async fn invalidations_subscribed(&self) {
        self.invalidations_ready.cancelled().await;
    }

    /// Serves until `shutdown` resolves, then stops accepting, drains in-flight requests for at
    /// most the configured grace, stops the subscriber and flushes the producer.
    ///
    /// # Errors
    /// The server failed while serving.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: draining in-flight requests");
        };
        crate::serve::serve(
            self.listener,
            self.router,
            self.header_read_timeout,
            self.grace,
            signal,
        )
        .await?;
        self.background.cancel();
        self.state.publisher.flush(Duration::from_secs(5));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_outside_the_standard_ones_is_labelled_other() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "OTHER");
    }

    #[test]
    fn a_route_template_is_copied_once() {
        let first = route_label("/api/v1/coupons/{coupon_id}/issues");
        let again = route_label(&String::from("/api/v1/coupons/{coupon_id}/issues"));
        assert_eq!(first, "/api/v1/coupons/{coupon_id}/issues");
        assert!(std::ptr::eq(first, again));
    }
}
