//! The picture of a race (`make demo` writes one): answers per 100 ms by outcome, and the
//! coupon's admitted (Redis) and persisted (MySQL) counts over time against its stock, drawn
//! as one SVG with the `plotters` crate.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use coupon_core::domain::CouponId;
use coupon_core::issue::admission::{AdmissionStore, StockShards};
use plotters::prelude::*;
use sqlx::MySqlPool;

/// Width of one bar of the answers panel, and the sampling period of the counts.
pub const BUCKET: Duration = Duration::from_millis(100);

/// The coupon's counts at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Time since the race started.
    pub at: Duration,
    /// Users in the Redis admission set, every shard (count).
    pub admitted: i64,
    /// `coupons.issued_quantity`: rows the consumer persisted (count).
    pub persisted: i64,
}

/// Samples `coupon`'s admitted and persisted counts every [`BUCKET`] from `started` until
/// `stop` fires (or its sender is dropped). A failed read skips that sample.
pub async fn sample_counts(
    pool: MySqlPool,
    admission: AdmissionStore,
    shards: StockShards,
    started: Instant,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Sample> {
    let coupon: CouponId = shards.coupon();
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(BUCKET);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = &mut stop => return samples,
            _ = tick.tick() => {}
        }
        let admitted = admission.admitted_count(shards).await;
        let persisted: Result<i64, _> =
            sqlx::query_scalar("SELECT issued_quantity FROM coupons WHERE id = ?")
                .bind(coupon.get())
                .fetch_one(&pool)
                .await;
        if let (Ok(admitted), Ok(persisted)) = (admitted, persisted) {
            samples.push(Sample {
                at: started.elapsed(),
                admitted,
                persisted,
            });
        }
    }
}

/// The colour of an answer's line: 202 green, sold out red, repeats blue, pending orange,
/// anything else black.
fn colour(label: &str) -> RGBColor {
    match label {
        "202 ACCEPTED" => RGBColor(30, 150, 60),
        "409 SOLD_OUT" => RGBColor(210, 40, 40),
        "409 ALREADY_ISSUED" => RGBColor(40, 90, 200),
        "409 ISSUE_IN_PROGRESS" => RGBColor(230, 140, 0),
        _ => BLACK,
    }
}

/// Draws the race into an SVG at `path`: on top, answers per [`BUCKET`] by outcome (from
/// `answers`, each request's answer time since the race started and its `"<status> <code>"`
/// label); below, admitted and persisted counts over time (`samples`) with the stock as a
/// dashed line.
///
/// # Errors
/// The file cannot be written.
pub fn draw(
    path: &Path,
    title: &str,
    stock: i64,
    answers: &[(Duration, String)],
    samples: &[Sample],
) -> anyhow::Result<()> {
    let last = answers
        .iter()
        .map(|(at, _)| *at)
        .chain(samples.iter().map(|s| s.at))
        .max()
        .unwrap_or(BUCKET);
    let buckets = (last.as_millis() / BUCKET.as_millis()) as usize + 1;
    let mut per_bucket: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (at, label) in answers {
        let bucket = (at.as_millis() / BUCKET.as_millis()) as usize;
        per_bucket
            .entry(label.as_str())
            .or_insert_with(|| vec![0; buckets])[bucket] += 1;
    }
    let end = buckets as f64 * BUCKET.as_secs_f64();
    let peak = per_bucket
        .values()
        .flatten()
        .copied()
        .max()
        .unwrap_or(1)
        .max(1);
    let most = samples
        .iter()
        .map(|s| s.admitted.max(s.persisted))
        .max()
        .unwrap_or(0)
        .max(stock)
        .max(1);

    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE).map_err(plot_error)?;
    let root = root.titled(title, ("sans-serif", 22)).map_err(plot_error)?;
    let (top, bottom) = root.split_vertically(360);

    let mut chart = ChartBuilder::on(&top)
        .caption("answers per 100 ms, by outcome", ("sans-serif", 17))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0..peak + peak / 10 + 1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the race started")
        .y_desc("answers")
        .draw()
        .map_err(plot_error)?;
    for (label, counts) in &per_bucket {
        let style = colour(label).stroke_width(2);
        let points = counts
            .iter()
            .enumerate()
            .map(|(i, &n)| ((i as f64 + 0.5) * BUCKET.as_secs_f64(), n));
        chart
            .draw_series(LineSeries::new(points, style))
            .map_err(plot_error)?
            .label(format!("{label} ({})", counts.iter().sum::<u64>()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(plot_error)?;

    let mut chart = ChartBuilder::on(&bottom)
        .caption(
            "admitted (Redis) and persisted (MySQL) against the stock",
            ("sans-serif", 17),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0.0..end, 0..most + most / 10 + 1)
        .map_err(plot_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the race started")
        .y_desc("coupons")
        .draw()
        .map_err(plot_error)?;
    let stock_style = BLACK.stroke_width(1);
    chart
        .draw_series(DashedLineSeries::new(
            [(0.0, stock), (end, stock)],
            6,
            4,
            stock_style,
        ))
        .map_err(plot_error)?
        .label(format!("stock ({stock})"))
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stock_style));
    type Count = fn(&Sample) -> i64;
    let series: [(&str, RGBColor, Count); 2] = [
        ("admitted", RGBColor(40, 90, 200), |s| s.admitted),
        ("persisted", RGBColor(30, 150, 60), |s| s.persisted),
    ];
    for (name, colour, count) in series {
        let style = colour.stroke_width(2);
        let last = samples.last().map_or(0, count);
        chart
            .draw_series(LineSeries::new(
                samples.iter().map(|s| (s.at.as_secs_f64(), count(s))),
                style,
            ))
            .map_err(plot_error)?
            .label(format!("{name} ({last} at the end)"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(plot_error)?;
    root.present().map_err(plot_error)?;
    Ok(())
}

/// plotters' drawing errors carry the backend's error type; the demo only reports them.
fn plot_error<E: std::error::Error + Send + Sync + 'static>(
    err: DrawingAreaErrorKind<E>,
) -> anyhow::Error {
    anyhow::anyhow!("drawing the race chart: {err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_names_every_outcome_with_its_total_and_the_final_counts() {
        let path = std::env::temp_dir().join(format!("race-chart-{}.svg", std::process::id()));
        let ms = Duration::from_millis;
        let answers = vec![
            (ms(20), "202 ACCEPTED".to_owned()),
            (ms(40), "202 ACCEPTED".to_owned()),
            (ms(130), "409 SOLD_OUT".to_owned()),
            (ms(250), "409 ALREADY_ISSUED".to_owned()),
        ];
        let samples = [
            Sample {
                at: ms(100),
                admitted: 2,
                persisted: 0,
            },
            Sample {
                at: ms(200),
                admitted: 2,
                persisted: 2,
            },
        ];
        draw(&path, "coupon 1", 2, &answers, &samples).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(80)]);
        for text in [
            "202 ACCEPTED (2)",
            "409 SOLD_OUT (1)",
            "409 ALREADY_ISSUED (1)",
            "stock (2)",
            "admitted (2 at the end)",
            "persisted (2 at the end)",
            "coupon 1",
        ] {
            assert!(svg.contains(text), "no {text:?} in the chart");
        }
    }
}
