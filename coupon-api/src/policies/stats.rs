//! Per-coupon stats (`GET /api/v1/coupons/{coupon_id}/stats`), each computed at most once a
//! second per coupon and instance: concurrent pollers share one computation (moka's
//! `try_get_with`), from the `(coupon_id, status)` index and one `SCARD`, so dashboards can
//! poll every second during a drop.

use std::sync::Arc;
use std::time::Duration;

use coupon_core::domain::CouponId;
use coupon_core::issue::admission::AdmissionStore;
use coupon_core::{policies, queries};
use serde::Serialize;
use sqlx::MySqlPool;

use crate::http::error::ApiError;

/// One coupon's stats: `{"coupon_id": 1, "total": 500, "admitted": 500,
/// "issued": 500, "pending": 0, "available": 480, "reserved": 5, "used": 10, "expired": 5,
/// "remaining": 0, "redemption_rate": 0.02}` (counts; `total` and `remaining` are `null` for
/// unlimited coupons; `redemption_rate` = used / issued).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StatsView {
    /// The coupon.
    pub coupon_id: CouponId,
    /// Stock.
    pub total: Option<i64>,
    /// Admitted in Redis (`SCARD`).
    pub admitted: i64,
    /// Persisted rows (`issued_quantity`).
    pub issued: i64,
    /// Admitted, not yet persisted.
    pub pending: i64,
    /// Persisted and usable (`ISSUED`).
    pub available: i64,
    /// Held by a reservation.
    pub reserved: i64,
    /// Used.
    pub used: i64,
    /// Past validity.
    pub expired: i64,
    /// Stock not yet admitted.
    pub remaining: Option<i64>,
    /// `used / issued`, 0 when nothing was issued.
    pub redemption_rate: f64,
}

/// The stats of recent requests, each kept for one second (at most 10,000 coupons).
#[derive(Clone)]
pub struct StatsCache(moka::future::Cache<CouponId, Arc<StatsView>>);

impl Default for StatsCache {
    fn default() -> Self {
        Self(
            moka::future::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(1))
                .build(),
        )
    }
}

impl StatsCache {
    /// `coupon`'s stats, computed unless computed here within the last second.
    ///
    /// # Errors
    /// [`ApiError::CouponNotFound`] when no policy has this id; [`ApiError::Unavailable`] when
    /// MySQL or Redis cannot answer.
    pub async fn get(
        &self,
        pool: &MySqlPool,
        admission: &AdmissionStore,
        id: CouponId,
    ) -> Result<Arc<StatsView>, ApiError> {
        let load = async {
            let policy = policies::find_policy(pool, id)
                .await?
                .ok_or(ApiError::CouponNotFound)?;
            let admitted = admission.admitted_count(policy.stock_shards()).await?;
            let counts = queries::issue_counts(pool, id).await?;
            let issued = policy.issued_quantity;
            Ok::<_, ApiError>(Arc::new(StatsView {
                coupon_id: id,
                total: policy.total_quantity(),
                admitted,
                issued,
                pending: (admitted - issued).max(0),
                available: counts.issued,
                reserved: counts.reserved,
                used: counts.used,
                expired: counts.expired,
                remaining: policy.total_quantity().map(|t| (t - admitted).max(0)),
                redemption_rate: if issued > 0 {
                    counts.used as f64 / issued as f64
                } else {
                    0.0
                },
            }))
        };
        self.0
            .try_get_with(id, load)
            .await
            .map_err(|err| match &*err {
                ApiError::CouponNotFound => ApiError::CouponNotFound,
                other => ApiError::unavailable(anyhow::anyhow!("stats failed: {other:?}")),
            })
    }
}
