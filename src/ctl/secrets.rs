//! `turnd ctl secrets`: the fleet's TURN REST secrets in the Redis list
//! `PREFIX:secrets` (newest first), as `[cluster] secrets-from-redis` reads them. The
//! list is checked here the way the nodes check it, so a change the nodes would
//! refuse is not made. Secrets come from standard input, so they stay out of `ps` and
//! shell history; `list` prints fingerprints (the first 8 bytes of SHA-256, in hex),
//! never a secret.

use clap::Subcommand;
use std::io::BufRead;
use std::time::Duration;
use turnd::cluster::{parse_secrets, Settings};
use turnd::config::Config;

/// What to do with the list.
#[derive(Subcommand, Debug)]
pub enum SecretsAction {
    /// Print the fingerprint of each secret, newest first.
    List,
    /// Put the secret read from standard input at the head (the newest): every node
    /// accepts it within one publish interval.
    Add,
    /// Remove the secret read from standard input: every node refuses credentials
    /// minted with it within one interval. The last secret cannot be removed.
    Remove,
}

/// Why the command failed.
#[derive(Debug)]
pub enum Error {
    /// The config or the input is not usable.
    Usage(String),
    /// The change would leave a list the nodes refuse.
    Refused(String),
    /// Redis could not be reached or failed.
    Redis(String),
}

/// Runs `action` against the Redis of `config`'s `[cluster]`.
pub fn run(config: &Config, action: &SecretsAction, timeout: Duration) -> Result<(), Error> {
    if !config.cluster.enabled() {
        return Err(Error::Usage("secrets: [cluster] redis is not set in the config".into()));
    }
    if !config.cluster.secrets_from_redis {
        eprintln!("note: [cluster] secrets-from-redis is off in this config: its node does not read the list");
    }
    let settings = Settings::from_config(&config.cluster).map_err(|e| Error::Usage(e.to_string()))?;
    let secret = match action {
        SecretsAction::List => None,
        SecretsAction::Add | SecretsAction::Remove => Some(read_secret()?),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Usage(format!("cannot start a runtime: {e}")))?;
    runtime.block_on(async {
        tokio::time::timeout(timeout, exchange(&settings, action, secret))
            .await
            .map_err(|_| Error::Redis(format!("Redis did not answer within {timeout:?}")))?
    })
}

/// One line of standard input, without its line ending.
fn read_secret() -> Result<Vec<u8>, Error> {
    let mut line = Vec::new();
    std::io::stdin().lock().read_until(b'\n', &mut line).map_err(|e| Error::Usage(format!("stdin: {e}")))?;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    if line.is_empty() {
        return Err(Error::Usage("secrets: give the secret on standard input (one line)".into()));
    }
    Ok(line)
}

async fn exchange(settings: &Settings, action: &SecretsAction, secret: Option<Vec<u8>>) -> Result<(), Error> {
    let redis_error = |e: redis::RedisError| Error::Redis(format!("Redis: {e}"));
    let mut conn = settings.redis_client().get_multiplexed_async_connection().await.map_err(redis_error)?;
    let key = settings.secrets_key();
    let kind: String = redis::cmd("TYPE").arg(&key).query_async(&mut conn).await.map_err(redis_error)?;
    let current: Vec<Vec<u8>> = match kind.as_str() {
        "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).query_async(&mut conn).await.map_err(redis_error)?,
        "none" => Vec::new(),
        other => return Err(Error::Refused(format!("{key} holds a {other}, not a list: fix it with redis-cli"))),
    };
    match (action, secret) {
        (SecretsAction::List, _) => {
            for s in &current {
                println!("{}", fingerprint(s));
            }
            eprintln!("{} secret(s) in {key}", current.len());
            Ok(())
        }
        (SecretsAction::Add, Some(secret)) => {
            if current.contains(&secret) {
                return Err(Error::Refused(format!("{key} already holds that secret ({})", fingerprint(&secret))));
            }
            let next: Vec<Vec<u8>> = std::iter::once(secret.clone()).chain(current).collect();
            parse_secrets("list", next)
                .map_err(|e| Error::Refused(format!("not added: the nodes would refuse the list: {e}")))?;
            redis::cmd("LPUSH").arg(&key).arg(&secret).query_async::<()>(&mut conn).await.map_err(redis_error)?;
            println!("added {} at the head of {key}", fingerprint(&secret));
            Ok(())
        }
        (SecretsAction::Remove, Some(secret)) => {
            if !current.contains(&secret) {
                return Err(Error::Refused(format!("{key} does not hold that secret ({})", fingerprint(&secret))));
            }
            if current.iter().all(|s| *s == secret) {
                return Err(Error::Refused(format!(
                    "not removed: it is the last secret in {key} (the nodes would keep it anyway; add the next one first)"
                )));
            }
            redis::cmd("LREM").arg(&key).arg(0).arg(&secret).query_async::<()>(&mut conn).await.map_err(redis_error)?;
            println!("removed {} from {key}", fingerprint(&secret));
            Ok(())
        }
        _ => Err(Error::Usage("secrets: no secret given".into())),
    }
}

/// The first 8 bytes of the secret's SHA-256, in hex: enough to tell secrets apart.
fn fingerprint(secret: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret);
    digest.as_ref().iter().take(8).map(|b| format!("{b:02x}")).collect()
}
