//! Helpers shared by every module's error type.

/// "outer: inner: root" — hyper's top-level messages alone say too little.
/// Credentials in URLs are redacted: the chain often names an endpoint.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    crate::config::redact_urls(&s)
}
