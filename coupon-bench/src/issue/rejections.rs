//! (c) The rejection path, with coupon-api and the consumer running: a 1,000-unit coupon sold
//! out (measured after the consumer's sold-out broadcast, so the API's copy of the holders
//! answers), then two coupons whose 10,000 users all hold one and ask again: admitted by
//! another instance (the admission script answers), then by the measured one (its memory of
//! its admissions answers).

use std::time::Duration;

use coupon_core::domain::CouponId;

use super::figure::{Figure, Issued};
use super::harness::{wait_for, Bench};
use super::wrk::UserPlan;

/// Stock of the sold-out coupon (count).
const SOLD_OUT_STOCK: i64 = 1_000;

/// Users of the repeat figures, each holding one coupon before the runs (count).
const REPEAT_USERS: i64 = 10_000;

/// The three (c) figures and the coupons they issued.
pub(super) struct Rejection {
    pub(super) sold_out: Figure,
    pub(super) repeat: Figure,
    pub(super) repeat_here: Figure,
    /// The sold-out coupon, then the two repeat coupons.
    pub(super) issued: [Issued; 3],
}

/// Measures the three figures; the repeat coupons have `stock` units.
///
/// # Errors
/// A store or service failed, or the sold-out coupon was not persisted in time.
pub(super) async fn figures(bench: &Bench, stock: i64) -> anyhow::Result<Rejection> {
    let base = bench.api_base();
    let sold_out = bench.create_coupon(SOLD_OUT_STOCK).await?;
    let sold_out_accepted = bench.issue_users(sold_out, 1..=SOLD_OUT_STOCK).await?;
    wait_for(
        "the sold-out coupon persisted",
        Duration::from_secs(300),
        || async { (bench.issued_quantity(sold_out).await.ok()? == SOLD_OUT_STOCK).then_some(()) },
    )
    .await?;
    // The sold-out broadcast follows the batch that filled the stock.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let sold_out_runs = bench
        .figure(
            "(c) sold out",
            &base,
            &format!("/api/v1/coupons/{sold_out}/issues"),
            |i| UserPlan::Fresh {
                start: 1_000_000 + i as i64 * 100_000_000,
            },
            Some("sold_out"),
        )
        .await?;
    // Repeat users, twice: admitted by another instance (this one asks the admission script,
    // which answers ALREADY_ISSUED), then admitted by this instance (which remembers them).
    let base = &base;
    let repeat_figure = |name: &'static str, coupon: CouponId| async move {
        let path = format!("/api/v1/coupons/{coupon}/issues");
        let users = |_| UserPlan::Cycle {
            start: 1,
            count: REPEAT_USERS,
        };
        bench
            .figure(name, base, &path, users, Some("duplicate"))
            .await
    };
    let repeat = bench.create_coupon(stock).await?;
    let repeat_accepted = bench.admit_elsewhere(repeat, 1..=REPEAT_USERS).await?;
    let repeat_runs = repeat_figure("(c) repeat users, admitted elsewhere", repeat).await?;
    let repeat_here = bench.create_coupon(stock).await?;
    let repeat_here_accepted = bench.issue_users(repeat_here, 1..=REPEAT_USERS).await?;
    let repeat_here_runs = repeat_figure("(c) repeat users, admitted here", repeat_here).await?;
    Ok(Rejection {
        sold_out: Figure::new(
            "(c) sold-out coupon (holders copied after the sell-out broadcast)",
            sold_out_runs,
            "1,000 in stock, all issued; a new user per request".into(),
        ),
        repeat: Figure::new(
            "(c) repeat users admitted by another instance (admission script)",
            repeat_runs,
            format!("{REPEAT_USERS} users each holding one, asking again"),
        ),
        repeat_here: Figure::new(
            "(c) repeat users admitted by this instance (its memory)",
            repeat_here_runs,
            format!("{REPEAT_USERS} users each holding one, asking again"),
        ),
        issued: [
            Issued {
                coupon: sold_out,
                stock: SOLD_OUT_STOCK,
                accepted: sold_out_accepted,
            },
            Issued {
                coupon: repeat,
                stock,
                accepted: repeat_accepted,
            },
            Issued {
                coupon: repeat_here,
                stock,
                accepted: repeat_here_accepted,
            },
        ],
    })
}
