//! A string that never prints itself.

use std::fmt;

/// Holds a password or key. `Debug` and `Display` print `<redacted>`, so a
/// secret cannot leak through `{:?}` of a containing struct or an error.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a password or key.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The only way to reach the value; grep for it in reviews.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A URL that may carry credentials (`https://user:pass@host`): `Debug`
/// and `Display` print it with them replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The URL with its credentials; grep for it in reviews.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", redact_urls(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_urls(&self.0))
    }
}

/// `text` with the credentials of every URL in it (`scheme://user:pass@`)
/// replaced by `***`: URLs from the environment (endpoints, gateways,
/// repositories) reach logs, errors and summaries.
pub fn redact_urls(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the path, or where the URL ends in prose.
        let end = tail
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\'' | '`' | ')' | ']' | '>')
                    || c.is_whitespace()
            })
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_url_prints_without_its_credentials() {
        let u = SecretUrl::new("https://ci:pw-marker@gw:9091");
        assert!(!format!("{u:?} {u} {:?}", Some(&u)).contains("pw-marker"));
        assert_eq!(u.to_string(), "https://***@gw:9091");
        assert_eq!(u.expose(), "https://ci:pw-marker@gw:9091");
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_urls("cannot reach https://ak:sk@s3.local:9000/b: refused"),
            "cannot reach https://***@s3.local:9000/b: refused"
        );
        assert_eq!(
            redact_urls("\"http://u:p@gw\" and s3://key:secret@bucket/p?x=1"),
            "\"http://***@gw\" and s3://***@bucket/p?x=1"
        );
        assert_eq!(redact_urls("http://a@b@host/x"), "http://***@host/x");
        let plain = "https://s3.local:9000/bucket and no url at all: a@b";
        assert_eq!(redact_urls(plain), plain);
        assert_eq!(redact_urls("trailing ://"), "trailing ://");
    }

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter2-marker");
        assert!(!format!("{s:?} {s} {:?}", Some(&s)).contains("hunter2"));
        assert_eq!(s.expose(), "hunter2-marker");
    }
}
