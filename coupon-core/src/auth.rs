//! Bearer tokens (JWT, RFC 7519): who a request acts for, and whether it may administer.
//!
//! A token's claims are [`Claims`]: `sub` (the user id, a positive integer, for user tokens;
//! any text for admin tokens), `role` (`user` or `admin`), `exp` and `iat` (Unix seconds),
//! `nbf` when the minter sets it, and `iss`/`aud` when the deployment sets them. Signing and
//! checking use the `jsonwebtoken` crate. HS256 with a shared secret is the default; RS256 or
//! ES256 with a public key let coupon-api check tokens it cannot mint.
//!
//! Checks fail closed: a token naming an audience is refused unless it is the configured one
//! (RFC 7519 §4.1.3: a recipient that does not identify itself with the `aud` must reject
//! it), a token not yet valid (`nbf`) or issued in the future is refused, and a token whose
//! lifetime (`exp - iat`) exceeds [`AuthConfig::jwt_max_lifetime`] is refused.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// Shortest HS256 secret accepted (bytes): RFC 7518 §3.2 requires a key at least as long as
/// the hash output, 256 bits.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// Clock skew (seconds) tolerated on `exp`, `nbf` and `iat` between the minting host and
/// coupon-api.
pub const LEEWAY_SECS: u64 = 5;

/// The secret the local scripts, the README quickstart and the examples use when
/// `JWT_SECRET` is unset. It is public, so a service refuses it unless
/// [`AuthConfig::allow_development_secret`] is set.
pub const LOCAL_DEVELOPMENT_SECRET: &str = "couponrush-local-development-secret";

/// The secret of the test suites (`coupon_core::testing::JWT_SECRET`); public like
/// [`LOCAL_DEVELOPMENT_SECRET`] and refused the same way.
pub const TEST_SECRET: &str = "couponrush-test-secret-32-bytes!";

/// Secrets published in this repository: a service refuses each of them unless
/// [`AuthConfig::allow_development_secret`] is set.
pub const DEVELOPMENT_SECRETS: [&str; 2] = [LOCAL_DEVELOPMENT_SECRET, TEST_SECRET];

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Acts only for the user named by `sub`.
    #[default]
    User,
    /// Manages policies, topics and codes, runs reconciliation, and may act for any user
    /// named in a request's path or body (support tools, a trusted front end).
    Admin,
    /// The shop's order or checkout backend: applies and settles coupons on orders (redeem,
    /// cancel a redemption, reserve, confirm, release) for the user a request names, and
    /// nothing else. `sub` names the service (`checkout`), not a user.
    Service,
}

impl Role {
    /// The claim's value: `user`, `admin` or `service`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::User => "user",
            Self::Admin => "admin",
            Self::Service => "service",
        }
    }
}

/// The claims couponrush reads from a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Subject: the user id (decimal) of a user token.
    pub sub: String,
    /// What the token may do; `user` when absent.
    #[serde(default)]
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Not before, Unix seconds: refused until then (RFC 7519 §4.1.5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// Issuer, checked when [`AuthConfig::jwt_issuer`] is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// Audience: must be [`AuthConfig::jwt_audience`] when that is set, and absent when not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
}

/// Signature algorithms coupon-api accepts (one per deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with the shared secret `JWT_SECRET`.
    #[default]
    #[value(name = "HS256")]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256; coupon-api needs only the public key.
    #[value(name = "RS256")]
    Rs256,
    /// ECDSA P-256 with SHA-256; coupon-api needs only the public key.
    #[value(name = "ES256")]
    Es256,
}

impl JwtAlgorithm {
    fn jsonwebtoken(self) -> Algorithm {
        match self {
            Self::Hs256 => Algorithm::HS256,
            Self::Rs256 => Algorithm::RS256,
            Self::Es256 => Algorithm::ES256,
        }
    }
}

/// How tokens are checked (and, for HS256 or with a private key, minted).
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// Signature algorithm of bearer tokens: HS256 (shared secret), RS256 or ES256 (public key).
    #[arg(long, env = "JWT_ALGORITHM", value_enum, default_value = "HS256")]
    pub jwt_algorithm: JwtAlgorithm,

    /// HS256 secret, at least 32 bytes. Required with HS256; kept secret.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<SecretString>,

    /// PEM file of the public key that checks RS256/ES256 tokens.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// Expected `iss` claim; unset accepts any issuer (HS256 only: required with RS256/ES256).
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Expected `aud` claim; unset accepts tokens without an audience only (HS256 only:
    /// required with RS256/ES256, whose keys belong to a party that also mints for others).
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Longest lifetime (seconds) a token may claim, `exp - iat`; a longer-lived token is
    /// refused, so a leaked token is worth a bounded time.
    #[arg(
        id = "jwt_max_lifetime_secs",
        long = "jwt-max-lifetime-secs",
        value_name = "JWT_MAX_LIFETIME_SECS",
        env = "JWT_MAX_LIFETIME_SECS",
        default_value = "86400",
        value_parser = crate::config::parse_secs
    )]
    pub jwt_max_lifetime: Duration,

    /// Accept a secret published in this repository ([`DEVELOPMENT_SECRETS`]) as
    /// `JWT_SECRET`. For local development, tests and benchmarks only: anyone can mint tokens
    /// with such a secret. Without it, a service refuses to start with one.
    #[arg(long, env = "ALLOW_DEVELOPMENT_SECRET", default_value_t = false, action = clap::ArgAction::Set)]
    pub allow_development_secret: bool,
}

/// Why a token was refused. Every case is a 401 at the HTTP boundary.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// Checks tokens against one key and one algorithm.
#[derive(Clone)]
pub struct TokenVerifier {
    key: DecodingKey,
    validation: Validation,
    max_lifetime_secs: u64,
}

impl std::fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenVerifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl TokenVerifier {
    /// The verifier `config` describes.
    ///
    /// # Errors
    /// HS256 without a secret, with one shorter than [`MIN_HS256_SECRET_BYTES`], or with one
    /// of [`DEVELOPMENT_SECRETS`] while [`AuthConfig::allow_development_secret`] is off;
    /// RS256/ES256 without a readable PEM public key, an issuer or an audience.
    pub fn from_config(config: &AuthConfig) -> anyhow::Result<Self> {
        let key = match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = hs256_secret(config)?;
                let published = DEVELOPMENT_SECRETS
                    .iter()
                    .any(|known| known.as_bytes() == secret);
                anyhow::ensure!(
                    !published || config.allow_development_secret,
                    "JWT_SECRET is a development secret published with couponrush: anyone can \
                     mint tokens with it. Set a secret of your own (at least \
                     {MIN_HS256_SECRET_BYTES} bytes), or ALLOW_DEVELOPMENT_SECRET=true on a \
                     development machine"
                );
                DecodingKey::from_secret(secret)
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                anyhow::ensure!(
                    config.jwt_issuer.is_some() && config.jwt_audience.is_some(),
                    "JWT_ISSUER and JWT_AUDIENCE must be set with RS256/ES256: the key \
                     belongs to a party that also mints tokens for other applications"
                );
                let pem = public_key_pem(config)?;
                if config.jwt_algorithm == JwtAlgorithm::Rs256 {
                    DecodingKey::from_rsa_pem(&pem)
                        .context("JWT_PUBLIC_KEY_FILE is not an RSA public key in PEM")?
                } else {
                    DecodingKey::from_ec_pem(&pem)
                        .context("JWT_PUBLIC_KEY_FILE is not an EC public key in PEM")?
                }
            }
        };
        let mut validation = Validation::new(config.jwt_algorithm.jsonwebtoken());
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &config.jwt_issuer {
            Some(issuer) => {
                validation.set_issuer(&[issuer]);
                validation.required_spec_claims.insert("iss".into());
            }
            None => validation.iss = None,
        }
        match &config.jwt_audience {
            Some(audience) => {
                validation.set_audience(&[audience]);
                validation.required_spec_claims.insert("aud".into());
            }
            // Checked in `verify`: a token naming any audience is refused.
            None => validation.validate_aud = false,
        }
        Ok(Self {
            key,
            validation,
            max_lifetime_secs: config.jwt_max_lifetime.as_secs(),
        })
    }

    /// The claims of a valid `token` (the text after `Bearer `).
    ///
    /// # Errors
    /// [`TokenError`] with a message safe to show: malformed, wrongly signed, expired, not yet
    /// valid, issued in the future, living longer than the configured maximum, or for another
    /// issuer or audience.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims = self.decode(token)?;
        let refuse = |message: &str| Err(TokenError(message.to_owned()));
        if self.validation.aud.is_none() && claims.aud.is_some() {
            return refuse(
                "the bearer token has an audience and this service accepts tokens without one",
            );
        }
        if claims.iat > unix_now() + LEEWAY_SECS {
            return refuse("the bearer token is issued in the future (iat)");
        }
        if claims.exp.saturating_sub(claims.iat) > self.max_lifetime_secs {
            return refuse("the bearer token lives longer than this service accepts (exp - iat)");
        }
        Ok(claims)
    }

    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        use jsonwebtoken::errors::ErrorKind;
        jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                TokenError(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "the bearer token has expired",
                        ErrorKind::ImmatureSignature => "the bearer token is not valid yet (nbf)",
                        ErrorKind::InvalidSignature => "the bearer token's signature is invalid",
                        ErrorKind::InvalidAlgorithm => {
                            "the bearer token is signed with an algorithm this service does not accept"
                        }
                        ErrorKind::InvalidIssuer => "the bearer token has the wrong issuer",
                        ErrorKind::InvalidAudience => "the bearer token has the wrong audience",
                        ErrorKind::MissingRequiredClaim(_) => {
                            "the bearer token lacks a required claim (sub, exp, iss or aud)"
                        }
                        _ => "the bearer token is malformed",
                    }
                    .to_owned(),
                )
            })
    }
}

/// Mints tokens (the `coupon-api token` command, the demo, the load tests).
#[derive(Clone)]
pub struct TokenSigner {
    key: EncodingKey,
    header: Header,
    issuer: Option<String>,
    audience: Option<String>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("alg", &self.header.alg)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A signer for `config`: the HS256 secret, or for RS256/ES256 the PEM private key at
    /// `private_key_file`.
    ///
    /// # Errors
    /// As [`TokenVerifier::from_config`], or the private key is missing or unreadable.
    pub fn from_config(
        config: &AuthConfig,
        private_key_file: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let private_pem = || -> anyhow::Result<Vec<u8>> {
            let path = private_key_file
                .context("RS256/ES256 tokens are minted with a private key: pass its PEM file")?;
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))
        };
        let key = match config.jwt_algorithm {
            JwtAlgorithm::Hs256 => EncodingKey::from_secret(hs256_secret(config)?),
            JwtAlgorithm::Rs256 => EncodingKey::from_rsa_pem(&private_pem()?)
                .context("not an RSA private key in PEM")?,
            JwtAlgorithm::Es256 => EncodingKey::from_ec_pem(&private_pem()?)
                .context("not an EC private key in PEM (PKCS#8)")?,
        };
        Ok(Self {
            key,
            header: Header::new(config.jwt_algorithm.jsonwebtoken()),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// An HS256 signer for `secret` (tests, benchmarks).
    pub fn hs256(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            issuer: None,
            audience: None,
        }
    }

    /// A token for `subject` with `role`, valid for `ttl_secs` from now.
    ///
    /// # Errors
    /// The signing library failed (a key unfit for the algorithm).
    pub fn mint(&self, subject: &str, role: Role, ttl_secs: u64) -> anyhow::Result<String> {
        let now = unix_now();
        let claims = Claims {
            sub: subject.to_owned(),
            role,
            exp: now + ttl_secs,
            iat: now,
            nbf: None,
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
        };
        self.sign(&claims)
    }

    /// Signs arbitrary `claims` (tests build expired or odd tokens with it).
    ///
    /// # Errors
    /// As [`Self::mint`].
    pub fn sign(&self, claims: &Claims) -> anyhow::Result<String> {
        jsonwebtoken::encode(&self.header, claims, &self.key).context("signing a token")
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn hs256_secret(config: &AuthConfig) -> anyhow::Result<&[u8]> {
    let secret = config
        .jwt_secret
        .as_ref()
        .context("JWT_SECRET must be set when JWT_ALGORITHM is HS256")?
        .expose_secret()
        .as_bytes();
    anyhow::ensure!(
        secret.len() >= MIN_HS256_SECRET_BYTES,
        "JWT_SECRET must be at least {MIN_HS256_SECRET_BYTES} bytes (RFC 7518 §3.2)"
    );
    Ok(secret)
}

fn public_key_pem(config: &AuthConfig) -> anyhow::Result<Vec<u8>> {
    let path = config
        .jwt_public_key_file
        .as_ref()
        .context("JWT_PUBLIC_KEY_FILE must be set when JWT_ALGORITHM is RS256 or ES256")?;
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_secret: Some(secret.into()),
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_max_lifetime: Duration::from_secs(86_400),
            allow_development_secret: false,
        }
    }

    #[test]
    fn a_minted_token_verifies_with_its_claims() {
        let verifier = TokenVerifier::from_config(&config(SECRET)).unwrap();
        let token = TokenSigner::hs256(SECRET)
            .mint("7", Role::User, 60)
            .unwrap();
        let claims = verifier.verify(&token).unwrap();
        assert_eq!((claims.sub.as_str(), claims.role), ("7", Role::User));
    }

    #[test]
    fn expired_and_foreign_tokens_are_refused() {
        let verifier = TokenVerifier::from_config(&config(SECRET)).unwrap();
        let signer = TokenSigner::hs256(SECRET);
        let now = unix_now();
        let expired = Claims {
            sub: "7".into(),
            role: Role::User,
            exp: now - LEEWAY_SECS - 10,
            iat: now - 100,
            nbf: None,
            iss: None,
            aud: None,
        };
        let err = verifier
            .verify(&signer.sign(&expired).unwrap())
            .unwrap_err();
        assert!(err.0.contains("expired"), "{err}");
        let other = TokenSigner::hs256("another secret of at least 32 bytes!!")
            .mint("7", Role::Admin, 60)
            .unwrap();
        let err = verifier.verify(&other).unwrap_err();
        assert!(err.0.contains("signature"), "{err}");
        assert!(verifier.verify("not.a.token").is_err());
    }

    #[test]
    fn a_short_or_missing_secret_is_a_configuration_error() {
        assert!(TokenVerifier::from_config(&config("short")).is_err());
        let mut missing = config(SECRET);
        missing.jwt_secret = None;
        assert!(TokenVerifier::from_config(&missing).is_err());
    }

    #[test]
    fn the_issuer_is_checked_when_configured() {
        let mut with_issuer = config(SECRET);
        with_issuer.jwt_issuer = Some("couponrush".into());
        let verifier = TokenVerifier::from_config(&with_issuer).unwrap();
        let plain = TokenSigner::hs256(SECRET)
            .mint("7", Role::User, 60)
            .unwrap();
        assert!(verifier.verify(&plain).is_err());
        let signed = TokenSigner::from_config(&with_issuer, None)
            .unwrap()
            .mint("7", Role::User, 60)
            .unwrap();
        assert_eq!(
            verifier.verify(&signed).unwrap().iss.as_deref(),
            Some("couponrush")
        );
    }

    #[test]
    fn rs256_and_es256_tokens_verify_with_only_the_public_key() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        for (algorithm, name) in [
            (JwtAlgorithm::Rs256, "rs256"),
            (JwtAlgorithm::Es256, "es256"),
        ] {
            let config = AuthConfig {
                jwt_algorithm: algorithm,
                jwt_secret: None,
                jwt_public_key_file: Some(dir.join(format!("{name}-public.pem"))),
                jwt_issuer: Some("https://login.example".into()),
                jwt_audience: Some("couponrush".into()),
                jwt_max_lifetime: Duration::from_secs(86_400),
                allow_development_secret: false,
            };
            let private = dir.join(format!("{name}-private.pem"));
            let token = TokenSigner::from_config(&config, Some(&private))
                .unwrap()
                .mint("9", Role::Admin, 60)
                .unwrap();
            let claims = TokenVerifier::from_config(&config)
                .unwrap()
                .verify(&token)
                .unwrap();
            assert_eq!(claims.role, Role::Admin, "{name}");
            let hs = TokenSigner::hs256(SECRET)
                .mint("9", Role::Admin, 60)
                .unwrap();
            let verifier = TokenVerifier::from_config(&config).unwrap();
            assert!(
                verifier.verify(&hs).is_err(),
                "{name} accepted an HS256 token"
            );
            let mut open = config.clone();
            open.jwt_audience = None;
            let err = TokenVerifier::from_config(&open).unwrap_err().to_string();
            assert!(err.contains("JWT_AUDIENCE"), "{name}: {err}");
            open.jwt_audience = config.jwt_audience.clone();
            open.jwt_issuer = None;
            assert!(TokenVerifier::from_config(&open).is_err(), "{name}");
        }
    }

    #[test]
    fn a_published_secret_is_refused_unless_development_is_allowed() {
        for secret in DEVELOPMENT_SECRETS {
            let mut published = config(secret);
            let err = TokenVerifier::from_config(&published)
                .unwrap_err()
                .to_string();
            assert!(err.contains("ALLOW_DEVELOPMENT_SECRET"), "{err}");
            published.allow_development_secret = true;
            assert!(TokenVerifier::from_config(&published).is_ok());
        }
    }

    #[test]
    fn a_token_with_an_audience_is_refused_when_none_is_configured() {
        let verifier = TokenVerifier::from_config(&config(SECRET)).unwrap();
        let mut for_other = config(SECRET);
        for_other.jwt_audience = Some("another-app".into());
        let token = TokenSigner::from_config(&for_other, None)
            .unwrap()
            .mint("ops", Role::Admin, 60)
            .unwrap();
        let err = verifier.verify(&token).unwrap_err();
        assert!(err.0.contains("audience"), "{err}");
    }

    #[test]
    fn not_yet_valid_future_and_long_lived_tokens_are_refused() {
        let verifier = TokenVerifier::from_config(&config(SECRET)).unwrap();
        let signer = TokenSigner::hs256(SECRET);
        let now = unix_now();
        let claims = |iat: u64, exp: u64, nbf: Option<u64>| Claims {
            sub: "7".into(),
            role: Role::User,
            exp,
            iat,
            nbf,
            iss: None,
            aud: None,
        };
        let cases = [
            ("nbf", claims(now, now + 7_200, Some(now + 3_600))),
            ("iat", claims(now + 3_600, now + 7_200, None)),
            ("exp - iat", claims(now, now + 86_401, None)),
        ];
        for (says, claims) in cases {
            let err = verifier.verify(&signer.sign(&claims).unwrap()).unwrap_err();
            assert!(err.0.contains(says), "{says}: {err}");
        }
        let fine = claims(now, now + 86_400, Some(now - 1));
        assert!(verifier.verify(&signer.sign(&fine).unwrap()).is_ok());
    }
}
