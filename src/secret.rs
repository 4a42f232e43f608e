//! Values that must never reach a log or a client: secret settings, and the credentials inside
//! a database URL.
//!
//! Both the configuration and the auth layer use these, so they live below both. This module
//! never prints a secret; it only hides one.

/// A secret setting. Its `Debug` never shows the value, so a logged `Config` leaks nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// `url` with the password of its `user:password@` part, and any `password=` query parameter
/// (PostgreSQL's other way to give one), replaced by `***`, for logs and errors. Anything that
/// is not a URL with credentials comes back unchanged.
pub fn redact_url(url: &str) -> String {
    let url = redact_userinfo(url);
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    // The authority ends at the first '/', '?' or '#'; credentials end at its last '@'.
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_len];
    let Some(at) = authority.rfind('@') else {
        return url.to_string();
    };
    let userinfo = &authority[..at];
    let Some(colon) = userinfo.find(':') else {
        return url.to_string();
    };
    format!(
        "{}{}:***{}",
        &url[..authority_start],
        &userinfo[..colon],
        &url[authority_start + at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_nothing_else_changes() {
        for (url, shown) in [
            (
                "postgres://u:p@127.0.0.1/db",
                "postgres://u:***@127.0.0.1/db",
            ),
            (
                "postgres://user:p%40ss:w@host:5432/db?sslmode=require",
                "postgres://user:***@host:5432/db?sslmode=require",
            ),
            ("postgres://user@host/db", "postgres://user@host/db"),
            (
                "postgres://user@host/db?sslmode=require&password=hunter2",
                "postgres://user@host/db?sslmode=require&password=***",
            ),
            ("sqlite://data/streamhub.db", "sqlite://data/streamhub.db"),
            ("sqlite://data/a@b.db", "sqlite://data/a@b.db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn a_secret_debug_never_shows_its_value() {
        let secret = Secret::from("hunter2".to_string());
        assert_eq!(format!("{secret:?}"), "Secret(<redacted>)");
        assert_eq!(secret.expose(), "hunter2");
    }
}
