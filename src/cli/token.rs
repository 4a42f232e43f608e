//! `streamhub token`: mints an HS256 bearer token from the server's own secret, for development
//! and tests. It reads the secret from the same flags and environment as the server and prints
//! only the token (to stdout); it never contacts a server and never prints the secret.
//!
//! Production tokens should come from a real identity provider (RS256 or EdDSA, checked with
//! `--auth-public-key-file`): whoever holds the HS256 secret can mint any identity.

use super::{CliResult, fail};
use crate::auth::{
    DEFAULT_MAX_TOKEN_TTL_SECS, MetricsAccess, Role, TokenGrants, load_hs256_secret,
    mint_hs256_with,
};
use crate::secret::Secret;
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// Mint a development token signed with the HS256 secret.
///
/// Example: `STREAMHUB_AUTH_HS256_SECRET=$(cat secret) streamhub token --sub alice --ttl 1h`,
/// then send `authorization: Bearer <printed token>`.
#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The user id the token is for (`sub`).
    #[arg(long)]
    pub sub: String,
    /// `user` may act only as itself; `service` may act for any user.
    #[arg(long, value_enum, default_value_t = Role::User)]
    pub role: Role,
    /// How long the token is valid: seconds, or a number with s, m, h or d (e.g. 90s, 15m, 1h,
    /// 7d).
    #[arg(long, default_value = "1h", value_parser = parse_ttl)]
    pub ttl: Duration,
    /// Audience to put in `aud`; match the server's --auth-audience.
    #[arg(long, env = "STREAMHUB_AUTH_AUDIENCE")]
    pub audience: Option<String>,
    /// Issuer to put in `iss`; match the server's --auth-issuer.
    #[arg(long, env = "STREAMHUB_AUTH_ISSUER")]
    pub issuer: Option<String>,
    /// Chat rooms the token opens (`rooms` claim): comma-separated exact ids or prefixes ending
    /// in `*` (`team-*`; `*` opens every room, direct messages included).
    #[arg(long, value_delimiter = ',')]
    pub rooms: Option<Vec<String>>,
    /// Collaboration documents the token opens (`documents` claim), in the syntax of --rooms.
    #[arg(long, value_delimiter = ',')]
    pub documents: Option<Vec<String>>,
    /// Metrics access (`metrics` claim): `read` allows QueryMetrics, `write` also
    /// CollectMetrics.
    #[arg(long, value_enum)]
    pub metrics: Option<MetricsAccess>,
    /// The server's HS256 secret.
    #[arg(long, env = "STREAMHUB_AUTH_HS256_SECRET", hide_env_values = true)]
    pub auth_hs256_secret: Option<Secret>,
    /// File holding the server's HS256 secret.
    #[arg(
        long,
        env = "STREAMHUB_AUTH_HS256_SECRET_FILE",
        conflicts_with = "auth_hs256_secret"
    )]
    pub auth_hs256_secret_file: Option<PathBuf>,
}

/// `90`, `90s`, `15m`, `1h`, `7d`: a positive duration.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 60 * 60,
        "d" => 24 * 60 * 60,
        _ => return Err(format!("{text:?}: the unit must be s, m, h or d")),
    };
    let secs = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(scale))
        .ok_or_else(|| format!("{text:?} is not a duration like 90s, 15m, 1h or 7d"))?;
    if secs == 0 {
        return Err("the ttl must be longer than zero".to_string());
    }
    Ok(Duration::from_secs(secs))
}

pub fn run(args: TokenArgs) -> CliResult<()> {
    if args.sub.is_empty() {
        return Err(fail("--sub must not be empty"));
    }
    let secret = load_hs256_secret(
        args.auth_hs256_secret.as_ref(),
        args.auth_hs256_secret_file.as_deref(),
    )
    .map_err(|e| fail(e.to_string()))?
    .ok_or_else(|| {
        fail(
            "no HS256 secret: give --auth-hs256-secret-file or STREAMHUB_AUTH_HS256_SECRET \
             (the server's own)",
        )
    })?;
    if args.ttl.as_secs() > DEFAULT_MAX_TOKEN_TTL_SECS {
        eprintln!(
            "warning: --ttl is {} s; a server with the default --auth-max-token-ttl-secs \
             ({DEFAULT_MAX_TOKEN_TTL_SECS}) refuses this token",
            args.ttl.as_secs()
        );
    }
    let token = mint_hs256_with(
        &secret,
        &args.sub,
        args.role,
        args.ttl,
        &TokenGrants {
            audience: args.audience.as_deref(),
            issuer: args.issuer.as_deref(),
            rooms: args.rooms.as_deref(),
            documents: args.documents.as_deref(),
            metrics: args.metrics,
        },
    )
    .map_err(|e| fail(e.to_string()))?;
    println!("{token}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn ttl_forms() {
        for (text, secs) in [
            ("90", 90),
            ("90s", 90),
            ("15m", 900),
            ("1h", 3600),
            ("7d", 604_800),
        ] {
            assert_eq!(parse_ttl(text), Ok(Duration::from_secs(secs)), "{text}");
        }
        for bad in [
            "",
            "0",
            "0h",
            "h",
            "1w",
            "-1h",
            "1.5h",
            "99999999999999999999d",
        ] {
            assert!(parse_ttl(bad).is_err(), "{bad}");
        }
    }
}
