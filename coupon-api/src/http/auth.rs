//! Authentication and authorisation at the HTTP boundary.
//!
//! Every non-public route reads a bearer token (`Authorization: Bearer <JWT>`, RFC 6750) and
//! checks it with the deployment's [`TokenVerifier`], which [`crate::startup::router`] puts in
//! each request's extensions. The extractors here are the only place that decides who a
//! request acts for:
//! - [`Principal`]: any valid token (401 `UNAUTHORIZED` otherwise);
//! - [`Admin`]: a token with the `admin` role (403 `FORBIDDEN` otherwise);
//! - [`OrderSide`]: a token with the `service` role (the shop's order or checkout backend) or
//!   the `admin` role: the routes that apply or settle a coupon on an order. A user token is
//!   403 there: the amount of an order and whether it was paid or cancelled are the order
//!   service's facts, not the shopper's;
//! - [`Viewer`]: on a public read, whether the caller is an operator (admin token) who may see
//!   policies the public may not (suspended, not yet open); never a refusal;
//! - [`Principal::act_for`]: the user a user route acts on. A `user` token acts only for its
//!   own subject: a different user id in the path or body is 403 `FORBIDDEN`. An `admin` token
//!   acts for the user the request names. A `service` token acts for nobody there (403).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use coupon_core::auth::{Claims, Role, TokenVerifier};
use coupon_core::domain::UserId;

use crate::http::error::ApiError;

/// The verifier every request sees, as a request extension.
#[derive(Debug, Clone)]
pub struct Authenticator(pub Arc<TokenVerifier>);

/// A caller whose bearer token verified.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's claims.
    pub claims: Claims,
}

impl Principal {
    /// Whether the token carries the `admin` role.
    pub fn is_admin(&self) -> bool {
        self.claims.role == Role::Admin
    }

    /// The user this request acts for, given the user id the request names (path or body).
    ///
    /// # Errors
    /// - 403 `FORBIDDEN`: a `user` token whose subject is not a user id, or that names another
    ///   user; a `service` token;
    /// - 422 `VALIDATION_FAILED`: an `admin` token naming no user (and whose own subject is
    ///   not a user id).
    pub fn act_for(&self, named: Option<UserId>) -> Result<UserId, ApiError> {
        let own = self
            .claims
            .sub
            .parse::<i64>()
            .ok()
            .and_then(|id| UserId::parse(id).ok());
        match (self.claims.role, named, own) {
            (Role::Admin, Some(named), _) => Ok(named),
            (Role::Admin, None, Some(own)) => Ok(own),
            (Role::Admin, None, None) => Err(ApiError::Validation(
                "an admin token must name the user it acts for (user_id)".into(),
            )),
            (Role::User, _, None) => Err(ApiError::Forbidden(
                "the token's subject is not a user id".into(),
            )),
            (Role::User, Some(named), Some(own)) if named != own => Err(ApiError::Forbidden(
                "a user token may act only for its own user id".into(),
            )),
            (Role::User, _, Some(own)) => Ok(own),
            (Role::Service, _, _) => Err(ApiError::Forbidden(
                "a service token may call the order routes (redeem, reserve and their settling) only".into(),
            )),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if let Some(known) = parts.extensions.get::<Principal>() {
            return Ok(known.clone());
        }
        let Some(Authenticator(verifier)) = parts.extensions.get::<Authenticator>() else {
            return Err(ApiError::Internal(anyhow::anyhow!(
                "no Authenticator extension: the router was built without one"
            )));
        };
        let token = bearer_token(parts)?;
        let claims = verifier
            .verify(token)
            .map_err(|e| ApiError::Unauthorized(e.0))?;
        let principal = Self { claims };
        parts.extensions.insert(principal.clone());
        Ok(principal)
    }
}

/// The token of an `Authorization: Bearer …` header.
fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or_else(|| {
        ApiError::Unauthorized("an Authorization: Bearer token is required".into())
    })?;
    let text = header
        .to_str()
        .map_err(|_| ApiError::Unauthorized("the Authorization header is not ASCII".into()))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::Unauthorized(
            "the Authorization header must be `Bearer <token>`".into(),
        )),
    }
}

/// A caller with the `admin` role: policies, topics, codes, stats, reconciliation.
#[derive(Debug, Clone)]
pub struct Admin(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        if !principal.is_admin() {
            return Err(ApiError::Forbidden(
                "this operation needs a token with the admin role".into(),
            ));
        }
        Ok(Self(principal))
    }
}

/// Who reads a public route: an operator (a valid `admin` token) sees every live policy; anyone
/// else (no token, a user or service token, a token that does not verify) sees only what the
/// public may ([`Viewer::Public`]). Never a refusal: the public routes need no token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Viewer {
    /// A valid admin token.
    Operator,
    /// Anyone else.
    Public,
}

impl<S: Send + Sync> FromRequestParts<S> for Viewer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if !parts.headers.contains_key(AUTHORIZATION) {
            return Ok(Self::Public);
        }
        Ok(match Principal::from_request_parts(parts, state).await {
            Ok(principal) if principal.is_admin() => Self::Operator,
            _ => Self::Public,
        })
    }
}

/// A caller that may apply and settle coupons on orders: the `service` role (the shop's order
/// or checkout backend) or `admin`; 403 `FORBIDDEN` for a user token.
#[derive(Debug, Clone)]
pub struct OrderSide(pub Principal);

impl<S: Send + Sync> FromRequestParts<S> for OrderSide {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let principal = Principal::from_request_parts(parts, state).await?;
        match principal.claims.role {
            Role::Service | Role::Admin => Ok(Self(principal)),
            Role::User => Err(ApiError::Forbidden(
                "applying or settling a coupon on an order needs the order service's token (role service)".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn principal(sub: &str, role: Role) -> Principal {
        Principal {
            claims: Claims {
                sub: sub.into(),
                role,
                exp: 0,
                iat: 0,
                nbf: None,
                iss: None,
                aud: None,
            },
        }
    }

    fn user(id: i64) -> UserId {
        UserId::parse(id).unwrap()
    }

    #[test]
    fn a_user_token_acts_only_for_its_subject() {
        let p = principal("7", Role::User);
        assert_eq!(p.act_for(None).unwrap(), user(7));
        assert_eq!(p.act_for(Some(user(7))).unwrap(), user(7));
        assert!(matches!(
            p.act_for(Some(user(8))),
            Err(ApiError::Forbidden(_))
        ));
        let not_a_user = principal("svc-checkout", Role::User);
        assert!(matches!(
            not_a_user.act_for(None),
            Err(ApiError::Forbidden(_))
        ));
        assert!(matches!(
            principal("0", Role::User).act_for(None),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn a_service_token_acts_for_no_user_on_the_user_routes() {
        let p = principal("checkout", Role::Service);
        assert!(matches!(p.act_for(None), Err(ApiError::Forbidden(_))));
        assert!(matches!(
            p.act_for(Some(user(7))),
            Err(ApiError::Forbidden(_))
        ));
    }

    #[test]
    fn an_admin_token_acts_for_the_user_the_request_names() {
        let p = principal("ops", Role::Admin);
        assert_eq!(p.act_for(Some(user(8))).unwrap(), user(8));
        assert!(matches!(p.act_for(None), Err(ApiError::Validation(_))));
    }
}
