//! What every route shares: the error body ([`error`]), the extractors ([`extract`]), bearer
//! tokens ([`auth`]), request ids ([`request_id`]), rate limits ([`rate_limit`]),
//! `Idempotency-Key` handling ([`idempotency`]), the request metrics ([`observe`]) and the
//! OpenAPI document ([`openapi`]). No feature's state lives here.

pub mod auth;
pub mod error;
pub mod extract;
pub mod idempotency;
pub mod observe;
pub mod openapi;
pub mod rate_limit;
pub mod request_id;
