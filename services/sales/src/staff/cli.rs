//! `sales staff add|list|revoke`: the operator command for staff accounts,
//! against the database of `SALES_DATABASE_URL` (migrated first).
//!
//! - `sales staff add NAME`: a new account; its secret is generated and printed
//!   once (or taken from `SALES_STAFF_SECRET`, at least 12 characters, for
//!   scripted set-ups). Only its argon2id hash is stored.
//! - `sales staff list`: every account, active or revoked.
//! - `sales staff revoke NAME`: the account can no longer sign in or call the
//!   API, and its console sessions end at once.

use anyhow::{Context, bail};

use crate::{Config, MIGRATOR};

const USAGE: &str = "usage: sales staff add NAME | sales staff list | sales staff revoke NAME";

/// Runs `sales staff …` with the arguments after `staff`; the text to print.
pub async fn run(args: &[String]) -> anyhow::Result<String> {
    let config = Config::from_env().context("reading SALES_* configuration")?;
    let pool = platform::db::connect_and_migrate(&config.database, &MIGRATOR).await?;
    let out = match args {
        [cmd, name] if cmd == "add" => {
            let (secret, generated) = match std::env::var("SALES_STAFF_SECRET") {
                Ok(s) if !s.is_empty() => (s, false),
                _ => (super::new_secret(), true),
            };
            let account = super::add(&pool, name, &secret).await?;
            let mut out = format!("staff account {} added\n", account.name);
            if generated {
                out.push_str(&format!(
                    "secret (shown once; the console password): {secret}\n\
                     API credential: Authorization: Bearer {}:{secret}\n",
                    account.name
                ));
            } else {
                out.push_str(&format!(
                    "API credential: Authorization: Bearer {}:<SALES_STAFF_SECRET>\n",
                    account.name
                ));
            }
            out
        }
        [cmd] if cmd == "list" => {
            let mut out = String::from("name\tcreated\trevoked\n");
            for a in super::list(&pool).await? {
                out.push_str(&format!(
                    "{}\t{}\t{}\n",
                    a.name,
                    a.created_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    a.revoked_at.map_or_else(
                        || "-".to_owned(),
                        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                    )
                ));
            }
            out
        }
        [cmd, name] if cmd == "revoke" => {
            if !super::revoke(&pool, name).await? {
                bail!("no active staff account named {name:?}");
            }
            format!("staff account {name} revoked; its sessions are ended\n")
        }
        _ => bail!("{USAGE}"),
    };
    pool.close().await;
    Ok(out)
}
