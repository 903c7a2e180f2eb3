//! Clearing the pending marks of acknowledged admissions in batches.
//!
//! Once the broker acknowledged an issue message, the admission is durable and its pending mark
//! (`coupon:{id}:pending`, see [`coupon_core::issue::admission`]) can go, so a repeat click on
//! any instance hears `ALREADY_ISSUED` instead of `ISSUE_IN_PROGRESS`. The 202 does not wait
//! for it. One `HDEL` per acknowledged request cost a Redis round trip and a task each on the
//! hot path; instead the issue path hands the (coupon, user) pair to one background task, which
//! takes whatever queued while its previous `HDEL` was in flight and clears it with one `HDEL`
//! per coupon (group commit: at low load a batch is one mark, during a drop hundreds).
//!
//! Clearing unconditionally is safe: an acknowledged admission stays in the admission set, so
//! no other pending mark of that user can appear under the same coupon. A mark left by a
//! failed `HDEL` (or by a stop before the queue drained) is cleared by coupon-consumer once
//! the row is persisted, and by reconciliation.

use std::collections::HashMap;

use coupon_core::domain::UserId;
use coupon_core::issue::admission::AdmissionStore;
use coupon_core::issue::admission::StockShards;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::tasks::Tasks;

/// Most marks one batch takes off the queue (one `HDEL` per coupon among them).
const BATCH_MAX: usize = 4_096;

/// The issue path's handle on the settle queue; cheap to clone.
#[derive(Clone)]
pub struct Settler {
    queue: mpsc::UnboundedSender<(StockShards, UserId)>,
}

impl Settler {
    /// Starts the background task clearing marks through `admission`, owned by `tasks`; it
    /// stops when the service stops ([`Tasks::stopping`], after clearing what was already
    /// queued) or every handle is dropped.
    pub fn start(admission: AdmissionStore, tasks: &Tasks) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tasks.spawn(run(admission, rx, tasks.stopping()));
        Self { queue }
    }

    /// Queues the clearing of `user`'s pending mark on `coupon` (never blocks; the queue is
    /// bounded in practice by the requests in flight, since each one queues at most one mark).
    pub fn settle(&self, coupon: StockShards, user: UserId) {
        // A send fails only after the task stopped (shutdown): coupon-consumer clears the mark.
        let _ = self.queue.send((coupon, user));
    }
}

async fn run(
    admission: AdmissionStore,
    mut rx: mpsc::UnboundedReceiver<(StockShards, UserId)>,
    stop: CancellationToken,
) {
    let mut batch = Vec::with_capacity(BATCH_MAX);
    loop {
        let taken = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH_MAX) => n,
            () = stop.cancelled() => {
                // Clear what already queued, then stop.
                while rx.try_recv().map(|mark| batch.push(mark)).is_ok() && batch.len() < BATCH_MAX {}
                batch.len()
            }
        };
        if taken == 0 {
            return;
        }
        clear(&admission, &mut batch).await;
        if stop.is_cancelled() {
            return;
        }
    }
}

/// Clears `batch` (emptied), one `HDEL` per coupon.
async fn clear(admission: &AdmissionStore, batch: &mut Vec<(StockShards, UserId)>) {
    let mut by_coupon: HashMap<StockShards, Vec<UserId>> = HashMap::new();
    for (coupon, user) in batch.drain(..) {
        by_coupon.entry(coupon).or_default().push(user);
    }
    for (coupon, users) in by_coupon {
        if let Err(err) = admission.settle(coupon, &users).await {
            tracing::debug!(%err, coupon_id = %coupon.coupon(), marks = users.len(), "pending marks not cleared");
        }
    }
}
