//! Kubernetes label selectors: the one parser. Configuration validates
//! `STOW_LABEL_SELECTOR` and hook selectors with it (exit 2 on a typo), and
//! restore evaluates it client-side on objects already in hand.
//!
//! Grammar, as the API server accepts it: requirements separated by commas
//! outside parentheses; each is `k=v`, `k==v`, `k!=v`, `k in (a,b)`,
//! `k notin (a,b)` (the space before the parenthesis is optional), `k` or
//! `!k`.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Req {
    Eq(String, String),
    Ne(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSelector(Vec<Req>);

/// The example every selector error ends with.
const EXPECTED: &str = "expected e.g. app=shop,tier!=cache,env in (a,b)";

/// Why a label selector does not parse. The text ends with an example of
/// the syntax; callers add the variable or the hook it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A `(` without its `)`, or the reverse, or nested parentheses.
    #[error("unbalanced parentheses; {EXPECTED}")]
    Unbalanced,
    /// Two commas in a row, or a trailing comma.
    #[error("an empty requirement (two commas in a row?); {EXPECTED}")]
    EmptyRequirement,
    /// `k in v` without parentheses.
    #[error("`{0}`: set values go in parentheses; {EXPECTED}")]
    SetWithoutParentheses(String),
    /// Not `[prefix/]name` with a DNS-subdomain prefix.
    #[error("`{0}` is not a label key; {EXPECTED}")]
    Key(String),
    /// Longer than 63 characters, or characters a label value cannot hold.
    #[error("`{0}` is not a label value; {EXPECTED}")]
    Value(String),
}

impl LabelSelector {
    /// Parses and validates `s`: label keys and values must be valid. The
    /// error is the reason only; callers name the variable.
    pub fn parse(s: &str) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        // An empty selector selects everything, as with the API server.
        if s.trim().is_empty() {
            return Ok(Self(reqs));
        }
        for part in split_requirements(s)? {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError::EmptyRequirement);
            }
            let set = |rest: &str| -> Result<Vec<String>, SelectorError> {
                let inner = rest
                    .trim()
                    .strip_prefix('(')
                    .and_then(|r| r.strip_suffix(')'))
                    .ok_or_else(|| SelectorError::SetWithoutParentheses(p.to_string()))?;
                Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
            };
            let req = if let Some(k) = p.strip_prefix('!') {
                Req::NotExists(k.trim().into())
            } else if let Some((k, rest)) = set_operator(p, "notin") {
                Req::NotIn(k.into(), set(rest)?)
            } else if let Some((k, rest)) = set_operator(p, "in") {
                Req::In(k.into(), set(rest)?)
            } else if let Some((k, v)) = p.split_once("!=") {
                Req::Ne(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = p.split_once("==").or_else(|| p.split_once('=')) {
                Req::Eq(k.trim().into(), v.trim().into())
            } else {
                Req::Exists(p.into())
            };
            let (key, values): (&str, &[String]) = match &req {
                Req::Eq(k, v) | Req::Ne(k, v) => (k, std::slice::from_ref(v)),
                Req::In(k, vs) | Req::NotIn(k, vs) => (k, vs),
                Req::Exists(k) | Req::NotExists(k) => (k, &[]),
            };
            if !is_label_key(key) {
                return Err(SelectorError::Key(key.to_string()));
            }
            if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
                return Err(SelectorError::Value(v.to_string()));
            }
            reqs.push(req);
        }
        Ok(Self(reqs))
    }

    /// Whether an object's `metadata.labels` satisfy every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            Req::Ne(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|x| vs.iter().any(|v| v == x)),
            Req::NotIn(k, vs) => get(k).is_none_or(|x| !vs.iter().any(|v| v == x)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        })
    }
}

/// Splits on commas outside parentheses; parentheses do not nest.
fn split_requirements(s: &str) -> Result<Vec<String>, SelectorError> {
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0i32, String::new());
    for ch in s.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(SelectorError::Unbalanced);
        }
        cur.push(ch);
    }
    if depth != 0 {
        return Err(SelectorError::Unbalanced);
    }
    parts.push(cur);
    Ok(parts)
}

/// `key <op> (…)` or `key <op>(…)`: the key and the rest from `(` on.
fn set_operator<'a>(req: &'a str, op: &str) -> Option<(&'a str, &'a str)> {
    let open = req.find('(')?;
    let head = req[..open].trim_end();
    let key = head.strip_suffix(op)?;
    // The operator is a word of its own: `key in`, not `domain`.
    if !key.ends_with(char::is_whitespace) {
        return None;
    }
    Some((key.trim(), &req[open..]))
}

/// A label key: an optional DNS-subdomain prefix and `/`, then a name.
pub fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    prefix.is_none_or(super::parse::is_dns_subdomain) && !name.is_empty() && is_label_value(name)
}

/// A label value: up to 63 of `[A-Za-z0-9._-]`, alphanumeric at both ends.
pub fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && (s.is_empty()
            || (s.starts_with(|c: char| c.is_ascii_alphanumeric())
                && s.ends_with(|c: char| c.is_ascii_alphanumeric())))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn matches_like_the_api_server() {
        let labels = json!({"app": "shop", "tier": "web"});
        let m = |s: &str| LabelSelector::parse(s).unwrap().matches(Some(&labels));
        assert!(m("app=shop"));
        assert!(m("app==shop,tier"));
        assert!(!m("app!=shop"));
        assert!(m("env!=prod"));
        assert!(m("tier in (web, db)"));
        assert!(m("tier in(web)"), "no space before the parenthesis");
        assert!(!m("tier notin (web)"));
        assert!(!m("tier notin(web)"));
        assert!(m("env notin (prod)"));
        assert!(m("!env"));
        assert!(!m("!app"));
        assert!(!m("app=shop,env"));
        assert!(!LabelSelector::parse("app=x").unwrap().matches(None));
        assert!(LabelSelector::parse("!app").unwrap().matches(None));
    }

    #[test]
    fn rejects_what_the_api_server_rejects() {
        for bad in [
            "app in web",
            "app=(x",
            "a,(b))",
            "-app=x",
            "app=-x",
            "example.com/=x",
            "app in (a,-b)",
            "a=b,,c",
        ] {
            let e = LabelSelector::parse(bad).unwrap_err().to_string();
            assert!(e.contains(EXPECTED), "{bad}: {e}");
        }
        // A key that merely ends in "in" is a key, not an operator.
        assert!(LabelSelector::parse("domain=x").is_ok());
        assert!(LabelSelector::parse("example.com/team in (a, b)").is_ok());
    }
}
