//! Building and running the API: a type tests can drive (bind port 0, read the port, stop it).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Router};
use coupon_core::auth::TokenVerifier;
use coupon_core::issue::admission::{
    AdmissionStore, InvalidationBroadcast, PolicyCopies, RedisKeys,
};
use coupon_core::issue::recovery::{IssueLog, RebuildLock};
use coupon_core::store::kafka::IssuePublisher;
use coupon_core::store::Connections;
use coupon_core::telemetry::{self, names};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::util::MapRequestLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::codes::jobs::CodeJobs;
use crate::codes::CodeState;
use crate::config::ApiConfig;
use crate::http::auth::Authenticator;
use crate::http::error::{ApiError, ErrorCode};
use crate::http::idempotency::Idempotency;
use crate::http::rate_limit::RateLimits;
use crate::http::{observe, request_id};
use crate::issue::admitted_here::AdmittedHere;
use crate::issue::breaker::RedisBreaker;
use crate::issue::rebuild::Rebuilds;
use crate::issue::settle::Settler;
use crate::issue::sold_out::SoldOutMarks;
use crate::issue::IssuingState;
use crate::operations::health::ReadinessCache;
use crate::operations::OperationsState;
use crate::orders::OrderState;
use crate::policies::cache::PolicyCache;
use crate::policies::invalidation;
use crate::policies::public_reads::PolicyReads;
use crate::policies::stats::StatsCache;
use crate::policies::PolicyState;
use crate::state::{AppState, Features};
use crate::tasks::Tasks;
use crate::users::UserState;

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
    let routes = routes().layer(middleware::from_fn_with_state(
        idempotency,
        crate::http::idempotency::middleware,
    ));
    // With every limit off (`RATE_LIMITS=off`) the layer would only pass requests on: it is
    // left out, so the issue path pays nothing for it.
    let routes = if rate_limits.any() {
        routes.layer(middleware::from_fn(crate::http::rate_limit::middleware))
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
        .layer(middleware::from_fn(observe::observe))
        .layer(PropagateRequestIdLayer::new(request_id::HEADER))
        .layer(TraceLayer::new_for_http().make_span_with(request_id::span))
        .layer(SetRequestIdLayer::new(request_id::HEADER, MakeRequestUuid))
        .layer(MapRequestLayer::new(request_id::drop_invalid))
        .with_state(state)
}

/// Every feature's routes and the OpenAPI document, with a JSON 404 for anything else.
fn routes() -> Router<AppState> {
    Router::new()
        .merge(crate::policies::router())
        .merge(crate::codes::router())
        .merge(crate::issue::router())
        .merge(crate::orders::router())
        .merge(crate::users::router())
        .merge(crate::operations::router())
        .merge(crate::http::openapi::router())
        .fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
}

/// Who may call, and how often: the token verifier the extractors find as an
/// [`Authenticator`] request extension ([`crate::http::auth`]), and the limits the rate-limit layer
/// finds as a [`RateLimits`] extension ([`crate::http::rate_limit`]). Request extensions are their
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
    ///
    /// # Errors
    /// `IDEMPOTENCY_TTL_SECS` is longer than `u32::MAX` seconds, the range it always had.
    pub fn from_config(config: &ApiConfig) -> anyhow::Result<Self> {
        Ok(Self {
            max_body_bytes: config.max_body_bytes,
            idempotency_ttl: date_span("IDEMPOTENCY_TTL_SECS", config.idempotency_ttl)?,
            request_timeout: config.request_timeout,
            body_read_timeout: config.body_read_timeout,
        })
    }
}

/// A `_SECS` setting as a span of calendar time, in whole seconds. At most `u32::MAX` seconds
/// (about 136 years), the range these settings always had, so adding one to the present
/// cannot overflow.
///
/// # Errors
/// `span` is longer than that; `setting` names it.
fn date_span(setting: &str, span: Duration) -> anyhow::Result<chrono::Duration> {
    let secs = u32::try_from(span.as_secs())
        .with_context(|| format!("{setting} may be at most {} seconds", u32::MAX))?;
    Ok(chrono::Duration::seconds(i64::from(secs)))
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

/// Registers the API's series before the first request: the HTTP series of the issue route for
/// every answer it can give, the issue outcomes, the policy cache and Redis series (the Kafka
/// producer's are registered by [`IssuePublisher::sample_gauges`]).
fn register_metrics() {
    coupon_core::issue::admission::register_metrics();
    crate::issue::routes::register_metrics();
    crate::policies::cache::register_metrics();
    crate::http::rate_limit::register_metrics();
    metrics::counter!(names::CODES_GENERATED).increment(0);
    let issue_route = "/api/v1/coupons/{coupon_id}/issues";
    for (status, outcome) in [
        (StatusCode::ACCEPTED, "OK"),
        (StatusCode::CONFLICT, ErrorCode::AlreadyIssued.as_str()),
        (StatusCode::CONFLICT, ErrorCode::SoldOut.as_str()),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable.as_str(),
        ),
    ] {
        let class = observe::STATUS_CLASSES[usize::from(status.as_u16() / 100)];
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
    tasks: Tasks,
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
    /// A duration setting is out of range ([`HttpLimits::from_config`]), a store is
    /// unreachable at start-up or the address cannot be bound.
    pub async fn build(config: ApiConfig) -> anyhow::Result<Self> {
        let stores = &config.stores;
        let limits = HttpLimits::from_config(&config)?;
        let reservation_hold = date_span("RESERVATION_HOLD_SECS", config.reservation_hold)?;
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
            stores.mysql.url(),
            config.database_order_max_connections,
        )
        .await
        .context("connecting the order routes' MySQL pool")?;
        let publisher = IssuePublisher::new(
            &stores.kafka.brokers,
            &stores.kafka.issue_topic,
            stores.kafka.message_timeout,
        )
        .context("creating the Kafka producer")?;
        let keys = RedisKeys::new(stores.redis.key_prefix.clone());
        let redis_for_subscriber = redis.clone();
        let copies = PolicyCopies::new(redis.clone(), keys.clone());
        let broadcast = InvalidationBroadcast::new(redis.clone(), keys.clone());
        let rebuild_lock = RebuildLock::new(redis.clone(), keys.clone());
        let mut admission = AdmissionStore::new(redis, keys.clone());
        if stores.redis.wait_replicas > 0 {
            // A connection of its own: each WAIT blocks the connection it is sent on.
            let waits = stores
                .connect_redis(stores.redis.timeout + stores.redis.wait_timeout)
                .await
                .context("connecting to Redis for the replica acknowledgements")?;
            admission = admission.with_replica_acks(
                waits,
                stores.redis.wait_replicas,
                stores.redis.wait_timeout,
            );
        }
        let policies = PolicyCache::new(
            config.policy_cache_capacity,
            config.policy_cache_ttl,
            copies.clone(),
            pool.clone(),
        );
        let tasks = Tasks::default();
        let sold_out = SoldOutMarks::new(
            config.policy_cache_capacity,
            config.sold_out_holders_max,
            admission.clone(),
            tasks.clone(),
        );
        let code_jobs = CodeJobs::new(pool.clone(), config.code_job_lease, tasks.clone());
        tasks.spawn(code_jobs.clone().resume_abandoned());
        tasks.spawn(
            publisher
                .clone()
                .sample_gauges(issue_topic, tasks.stopping()),
        );
        let breaker = RedisBreaker::new(&config.breaker);
        tasks.spawn(breaker.clone().probe(admission.clone(), tasks.stopping()));
        let rate_limits = RateLimits::new(&config.rate_limits);
        tasks.spawn(rate_limits.clone().retain_recent(tasks.stopping()));
        let rebuilds = Rebuilds::new(
            pool.clone(),
            admission.clone(),
            rebuild_lock,
            policies.clone(),
            IssueLog::new(stores, &config.kafka_consumer_group),
            stores.kafka.message_timeout,
            tasks.clone(),
        );
        let settler = Settler::start(admission.clone(), &tasks);
        let issue = Arc::new(IssuingState {
            pool: pool.clone(),
            admission: admission.clone(),
            publisher: publisher.clone(),
            policies: policies.clone(),
            sold_out: sold_out.clone(),
            admitted_here: AdmittedHere::new(config.admitted_cache_capacity),
            settler,
            breaker: breaker.clone(),
            rebuilds: rebuilds.clone(),
            tasks: tasks.clone(),
        });
        let state = AppState::new(Features {
            policies: Arc::new(PolicyState {
                pool: pool.clone(),
                admission: admission.clone(),
                copies,
                broadcast,
                policies: policies.clone(),
                stats: StatsCache::default(),
                public_reads: PolicyReads::default(),
            }),
            codes: Arc::new(CodeState {
                pool: pool.clone(),
                code_jobs,
                admission: admission.clone(),
                breaker,
                rebuilds: rebuilds.clone(),
                tasks: tasks.clone(),
            }),
            orders: Arc::new(OrderState {
                order_pool: order_pool.clone(),
                reservation_hold,
            }),
            users: Arc::new(UserState { pool: pool.clone() }),
            operations: Arc::new(OperationsState {
                pool: pool.clone(),
                admission,
                publisher,
                rebuilds,
                readiness: ReadinessCache::default(),
                tasks: tasks.clone(),
            }),
            issue,
            pool,
            order_pool,
        });

        let invalidations_ready = CancellationToken::new();
        tasks.spawn(invalidation::run(
            redis_for_subscriber,
            stores.redis.url().to_owned(),
            keys.invalidation_channel(),
            invalidation::Invalidated { policies, sold_out },
            tasks.stopping(),
            invalidations_ready.clone(),
        ));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        Ok(Self {
            listener,
            router: router(
                state.clone(),
                limits,
                Guards {
                    verifier,
                    rate_limits,
                },
            ),
            header_read_timeout: config.header_read_timeout,
            state,
            tasks,
            invalidations_ready,
            grace: config.shutdown_grace,
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

    /// Serves until `shutdown` resolves, then stops accepting and drains in-flight requests,
    /// stops the background loops and waits for every task it spawned ([`Tasks`]: the
    /// settler's final drain, undos being retried, rebuilds, jobs), all within the configured
    /// grace counted from the signal, and flushes the producer (at most 5 s more).
    ///
    /// # Errors
    /// The server failed while serving.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (signalled, signalled_at) = tokio::sync::oneshot::channel();
        let signal = async move {
            shutdown.await;
            let _ = signalled.send(Instant::now());
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
        let deadline = signalled_at.await.unwrap_or_else(|_| Instant::now()) + self.grace;
        let left = self.tasks.shutdown(deadline).await;
        if left > 0 {
            tracing::warn!(
                tasks = left,
                grace = ?self.grace,
                "background tasks did not end within the grace; stopping anyway"
            );
        }
        self.state.issue.publisher.flush(Duration::from_secs(5));
        Ok(())
    }
}
