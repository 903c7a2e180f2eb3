//! The router's state: each feature's own state, which its handlers reach through `FromRef`
//! (`State<Arc<IssuingState>>`, …), so a handler sees only what its feature uses.

use std::sync::Arc;

use axum::extract::FromRef;
use sqlx::MySqlPool;

use crate::codes::CodeState;
use crate::issue::IssuingState;
use crate::operations::OperationsState;
use crate::orders::OrderState;
use crate::policies::PolicyState;
use crate::users::UserState;

/// The router's state: one [`Features`] behind an `Arc`, so the per-request clone axum makes is
/// one reference-count increment, and the feature state a handler extracts one more. Fields are
/// reached through `Deref`: `state.issue.admission`, ….
#[derive(Clone)]
pub struct AppState(Arc<Features>);

impl AppState {
    /// Wraps the features' states.
    pub fn new(features: Features) -> Self {
        Self(Arc::new(features))
    }
}

impl std::ops::Deref for AppState {
    type Target = Features;

    fn deref(&self) -> &Features {
        &self.0
    }
}

/// Each feature's state, and the pools the `Idempotency-Key` layer uses.
pub struct Features {
    /// The issue path.
    pub issue: Arc<IssuingState>,
    /// Coupon policies.
    pub policies: Arc<PolicyState>,
    /// Code coupons.
    pub codes: Arc<CodeState>,
    /// The order side (redeem, cancel, holds).
    pub orders: Arc<OrderState>,
    /// A user's own coupons.
    pub users: Arc<UserState>,
    /// Probes and reconciliation.
    pub operations: Arc<OperationsState>,
    /// MySQL pool of the idempotency records of every route but the order routes.
    pub pool: MySqlPool,
    /// MySQL pool of the order routes' idempotency records.
    pub order_pool: MySqlPool,
}

macro_rules! feature_state {
    ($($field:ident: $state:ty),* $(,)?) => {$(
        impl FromRef<AppState> for Arc<$state> {
            fn from_ref(state: &AppState) -> Self {
                Arc::clone(&state.$field)
            }
        }
    )*};
}

feature_state!(
    issue: IssuingState,
    policies: PolicyState,
    codes: CodeState,
    orders: OrderState,
    users: UserState,
    operations: OperationsState,
);
