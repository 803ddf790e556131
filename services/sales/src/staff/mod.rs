//! Staff accounts: one per person, made and revoked by an operator
//! (`sales staff add|list|revoke`, [`cli`]), each with a secret kept only as an
//! argon2id hash. The secret is the password of the console's sign-in and, as
//! `Authorization: Bearer <name>:<secret>`, the person's credential for the staff
//! endpoints of the API. Every audited action names the account verified here,
//! never a name the client supplies.
//!
//! # Layout
//! - this module: the `staff_accounts` store, verification, and the layer
//!   ([`authenticate`]) that verifies the bearer credential of the staff routes.
//! - [`cli`]: the operator command.

pub mod cli;

use std::{collections::HashMap, sync::Arc};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{
        SaltString,
        rand_core::{OsRng, RngCore},
    },
};
use axum::{
    extract::{Request, State},
    http::HeaderValue,
    middleware::Next,
    response::{IntoResponse, Response},
};
use base64::Engine;
use parking_lot::Mutex;
use platform::auth::{STAFF_MEMBER_HEADER, StaffMember, bearer_token};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::{db::Db, store};

/// Shortest secret `staff add` accepts when one is given to it.
pub const MIN_SECRET: usize = 12;

pub use crate::store::staff::Account;

/// Why an account could not be added.
#[derive(Debug, thiserror::Error)]
pub enum AddError {
    #[error(
        "a staff name is 1–64 characters: lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
    )]
    BadName,
    #[error("the secret must be at least {MIN_SECRET} characters")]
    ShortSecret,
    #[error("an active account named {0:?} exists (revoke it first)")]
    Exists(String),
    #[error("hashing the secret: {0}")]
    Hash(String),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Whether `name` may name an account.
pub fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 64
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// `len` random bytes from the operating system, base64url without padding.
pub fn random_token(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A fresh secret for a new account (32 random bytes).
pub fn new_secret() -> String {
    random_token(32)
}

fn hash_secret(secret: &str) -> Result<String, AddError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AddError::Hash(e.to_string()))
}

/// Adds an account for `name` with `secret`.
pub async fn add(pool: &PgPool, name: &str, secret: &str) -> Result<Account, AddError> {
    if !valid_name(name) {
        return Err(AddError::BadName);
    }
    if secret.chars().count() < MIN_SECRET {
        return Err(AddError::ShortSecret);
    }
    let secret = secret.to_owned();
    let hash = tokio::task::spawn_blocking(move || hash_secret(&secret))
        .await
        .map_err(|e| AddError::Hash(e.to_string()))??;
    let row = store::staff::insert(pool, name, &hash).await;
    match row {
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("staff_accounts_active_name") => {
            Err(AddError::Exists(name.to_owned()))
        }
        other => Ok(other?),
    }
}

/// Every account, active and revoked, by name.
pub async fn list(pool: &PgPool) -> Result<Vec<Account>, sqlx::Error> {
    store::staff::list(pool).await
}

/// Revokes the active account `name` and ends its console sessions; false if
/// there is none.
pub async fn revoke(pool: &PgPool, name: &str) -> Result<bool, sqlx::Error> {
    store::staff::revoke(pool, name).await
}

/// The verified person of a credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub id: Uuid,
    pub name: String,
}

/// Verifies staff credentials. Argon2 is slow by design, so a credential once
/// verified against an account's hash is remembered (by its digest) for as long
/// as that account's hash is the same; revocation is checked on every call.
#[derive(Clone, Default)]
pub struct Verifier {
    verified: Arc<Mutex<HashMap<[u8; 32], String>>>,
}

/// Most remembered credentials; the memory is cleared when it is full.
const REMEMBERED: usize = 1024;

/// A hash to verify against when the name is unknown, so the time taken does
/// not say whether an account exists.
fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_secret(&random_token(16)).unwrap_or_default())
}

fn argon2_verify(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            Argon2::default()
                .verify_password(secret.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

impl Verifier {
    /// The active account `name` if `secret` is its secret.
    pub async fn verify(
        &self,
        pool: &PgPool,
        name: &str,
        secret: &str,
    ) -> Result<Option<Verified>, sqlx::Error> {
        let row = store::staff::active(pool, name).await?;
        let key: [u8; 32] = Sha256::new()
            .chain_update(name.as_bytes())
            .chain_update([0])
            .chain_update(secret.as_bytes())
            .finalize()
            .into();
        if let Some((id, hash)) = &row
            && self.verified.lock().get(&key) == Some(hash)
        {
            return Ok(Some(Verified {
                id: *id,
                name: name.to_owned(),
            }));
        }
        let hash = row
            .as_ref()
            .map_or_else(|| decoy_hash().to_owned(), |(_, h)| h.clone());
        let secret = secret.to_owned();
        let matches = {
            let hash = hash.clone();
            tokio::task::spawn_blocking(move || argon2_verify(&secret, &hash))
                .await
                .unwrap_or(false)
        };
        match row {
            Some((id, _)) if matches => {
                let mut verified = self.verified.lock();
                if verified.len() >= REMEMBERED {
                    verified.clear();
                }
                verified.insert(key, hash);
                Ok(Some(Verified {
                    id,
                    name: name.to_owned(),
                }))
            }
            _ => Ok(None),
        }
    }
}

/// Records `who` on the request: the [`StaffMember`] extension and the
/// `X-Staff-Member` header the audit records read.
pub fn record(request: &mut Request, who: &str) {
    if let Ok(value) = HeaderValue::from_str(who) {
        request.headers_mut().insert(STAFF_MEMBER_HEADER, value);
    }
    request.extensions_mut().insert(StaffMember {
        name: who.to_owned(),
    });
}

/// What [`authenticate`] needs: the database and the verifier.
#[derive(Clone)]
pub struct Gate {
    pub db: Db,
    pub staff: Verifier,
}

/// The layer of the staff routes: removes any `X-Staff-Member` the client sent,
/// and when the request presents `Bearer <name>:<secret>` of an active account,
/// records that person ([`record`]). The routes' [`platform::auth::Staff`]
/// extractor then refuses anyone else (401 without a credential, 403 with a
/// wrong one).
pub async fn authenticate(State(state): State<Gate>, mut request: Request, next: Next) -> Response {
    request.headers_mut().remove(STAFF_MEMBER_HEADER);
    let presented = bearer_token(request.headers())
        .and_then(|t| t.split_once(':'))
        .map(|(name, secret)| (name.to_owned(), secret.to_owned()));
    if let Some((name, secret)) = presented {
        let verified = state
            .db
            .guard(async { Ok(state.staff.verify(&state.db.pool, &name, &secret).await?) })
            .await;
        match verified {
            Ok(Some(who)) => record(&mut request, &who.name),
            Ok(None) => {}
            Err(e) => return e.into_response(),
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_lowercase_words() {
        for ok in ["alice", "bob.smith", "ops-1", "a", "x_y"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "Alice", "-x", "a b", "a:b", &"a".repeat(65), "é"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn secrets_verify_only_against_their_own_hash() {
        let hash = hash_secret("correct horse battery").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(argon2_verify("correct horse battery", &hash));
        assert!(!argon2_verify("correct horse batterY", &hash));
        assert!(!argon2_verify("correct horse battery", "not a hash"));
        assert_ne!(new_secret(), new_secret());
    }
}
