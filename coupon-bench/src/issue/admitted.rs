//! (b) The issue endpoint with every request admitted: coupon-api (release) with the consumer
//! stopped, wrk sending a fresh user id per request to a coupon whose stock never runs out.

use super::figure::{Figure, Issued};
use super::harness::Bench;
use super::wrk::UserPlan;

/// Measures (b) on a new coupon of `stock` units; the consumer must not be running.
///
/// # Errors
/// coupon-api or wrk failed.
pub(super) async fn figure(bench: &Bench, stock: i64) -> anyhow::Result<(Figure, Issued)> {
    let coupon = bench.create_coupon(stock).await?;
    let path = format!("/api/v1/coupons/{coupon}/issues");
    let before = bench.issued().await?;
    let runs = bench
        .figure(
            "(b) issue, all admitted",
            &bench.api_base(),
            &path,
            |i| UserPlan::Fresh {
                start: 1 + i as i64 * 100_000_000,
            },
            Some("issued"),
        )
        .await?;
    // The last run read the counts once they settled.
    let accepted = bench.issued().await? - before;
    Ok((
        Figure::new(
            "(b) issue endpoint, every request admitted",
            runs,
            "consumer stopped during the runs".into(),
        ),
        Issued {
            coupon,
            stock,
            accepted,
        },
    ))
}
