//! The small value parsers validation is built from. Each takes the variable
//! it parses, so that its error names it.

use std::collections::BTreeMap;
use std::time::Duration;

use super::error::ConfigError;
use super::vars as v;
use super::{LabelSelector, Secret};

/// `None` for unset (or blank) values, else the value trimmed.
pub(super) fn opt(raw: &Option<String>) -> Option<String> {
    raw.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
}

pub(super) fn parse_bool(
    var: &'static str,
    raw: &Option<String>,
    default: bool,
) -> Result<bool, ConfigError> {
    match raw.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None => Ok(default),
        Some("true" | "1" | "yes" | "on") => Ok(true),
        Some("false" | "0" | "no" | "off") => Ok(false),
        Some(_) => Err(ConfigError::invalid(
            var,
            raw.as_deref().unwrap_or_default(),
            "expected true or false",
        )),
    }
}

/// One of `choices`, case-insensitively.
pub(super) fn parse_enum<T: Copy>(
    var: &'static str,
    raw: &Option<String>,
    default: T,
    choices: &[(&str, T)],
) -> Result<T, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    choices
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(s.trim()))
        .map(|(_, val)| *val)
        .ok_or_else(|| {
            let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
            ConfigError::invalid(var, s, format!("expected one of {}", names.join(", ")))
        })
}

/// A comma-separated list, items trimmed, empty items dropped.
pub(super) fn list(raw: &Option<String>) -> Vec<String> {
    raw.as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// A list of globs, each checked to compile.
pub(super) fn globs(var: &'static str, raw: &Option<String>) -> Result<Vec<String>, ConfigError> {
    let items = list(raw);
    for g in &items {
        globset::Glob::new(g).map_err(|e| {
            ConfigError::invalid(
                var,
                raw.as_deref().unwrap_or_default(),
                format!("bad glob `{g}`: {}", e.kind()),
            )
        })?;
    }
    Ok(items)
}

/// RFC 1123 label: namespaces, plan names.
pub(super) fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 subdomain: storage class names.
pub(super) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A comma-separated list of names that each pass `valid`; `what` names
/// them in errors.
pub(super) fn names(
    var: &'static str,
    raw: &Option<String>,
    valid: fn(&str) -> bool,
    what: &str,
) -> Result<std::collections::BTreeSet<String>, ConfigError> {
    let items = list(raw);
    if let Some(bad) = items.iter().find(|n| !valid(n)) {
        return Err(ConfigError::invalid(
            var,
            raw.as_deref().unwrap_or_default(),
            format!("`{bad}` is not a valid {what}"),
        ));
    }
    Ok(items.into_iter().collect())
}

/// `old=new` pairs where both sides pass `valid`; `what` names them in errors.
pub(super) fn parse_map(
    var: &'static str,
    raw: &Option<String>,
    valid: fn(&str) -> bool,
    what: &str,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut map = BTreeMap::new();
    let text = raw.as_deref().unwrap_or_default();
    for pair in list(raw) {
        let Some((from, to)) = pair.split_once('=') else {
            return Err(ConfigError::invalid(
                var,
                text,
                format!("`{pair}` is not `old=new`"),
            ));
        };
        let (from, to) = (from.trim(), to.trim());
        for side in [from, to] {
            if !valid(side) {
                return Err(ConfigError::invalid(
                    var,
                    text,
                    format!("`{side}` is not a valid {what}"),
                ));
            }
        }
        if map.insert(from.to_string(), to.to_string()).is_some() {
            return Err(ConfigError::invalid(
                var,
                text,
                format!("`{from}` is mapped twice"),
            ));
        }
    }
    Ok(map)
}

/// A positive byte size such as `10MiB`.
pub(super) fn parse_size(
    var: &'static str,
    raw: &Option<String>,
    default: u64,
) -> Result<u64, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    let size: bytesize::ByteSize = s
        .trim()
        .parse()
        .map_err(|_| ConfigError::invalid(var, s, "expected a size such as 10MiB"))?;
    if size.as_u64() == 0 {
        return Err(ConfigError::invalid(var, s, "must be greater than zero"));
    }
    Ok(size.as_u64())
}

/// A duration of at least one second, in seconds when bare.
pub(super) fn positive_duration(
    var: &'static str,
    raw: &Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(s) = raw.as_deref() else {
        return Ok(default);
    };
    let d = parse_duration(var, s, Duration::from_secs(1))?;
    if d < Duration::from_secs(1) {
        return Err(ConfigError::invalid(var, s, "must be at least 1 second"));
    }
    Ok(d)
}

/// Why a duration does not parse; the text is the reason a
/// [`ConfigError::Invalid`] or a hook's `timeout=` error gives.
#[derive(Debug, thiserror::Error)]
pub enum DurationError {
    /// Neither a number nor a span jiff understands.
    #[error("expected a duration such as 5m, 90s or 3d")]
    Syntax,
    /// jiff cannot total the span in seconds (e.g. it overflows).
    #[error("{0}")]
    Total(#[source] jiff::Error),
    /// A negative span such as `-5m`.
    #[error("must not be negative")]
    Negative,
    /// Longer than [`MAX_DURATION`]: no timeout or interval needs that, and
    /// converting it to times and deadlines would overflow.
    #[error("out of range: at most 36500d (100 years)")]
    TooLarge,
}

/// The longest duration any variable or hook option accepts: 100 years.
/// Far beyond every sensible setting, and small enough that adding it to a
/// timestamp or a deadline cannot overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 24 * 3600);

/// A duration: jiff's friendly format (`5m`, `1h 30m`, `3d`) or ISO 8601, or
/// a bare number in `bare_unit`. `s` is already trimmed.
pub(crate) fn duration(s: &str, bare_unit: Duration) -> Result<Duration, DurationError> {
    if let Ok(n) = s.parse::<u64>() {
        // Checked: `n as u32` used to wrap, so 4294967297 meant 1.
        let d = u32::try_from(n)
            .ok()
            .and_then(|n| bare_unit.checked_mul(n))
            .ok_or(DurationError::TooLarge)?;
        return at_most_max(d);
    }
    // Spans (not SignedDuration) so that `3d` means three 24-hour days.
    let span: jiff::Span = s.parse().map_err(|_| DurationError::Syntax)?;
    let secs = span
        .total(jiff::SpanTotal::from(jiff::Unit::Second).days_are_24_hours())
        .map_err(DurationError::Total)?;
    if secs < 0.0 {
        return Err(DurationError::Negative);
    }
    // Compared as a float first: from_secs_f64 panics on values it cannot hold.
    if !secs.is_finite() || secs > MAX_DURATION.as_secs_f64() {
        return Err(DurationError::TooLarge);
    }
    at_most_max(Duration::from_secs_f64(secs))
}

fn at_most_max(d: Duration) -> Result<Duration, DurationError> {
    if d > MAX_DURATION {
        Err(DurationError::TooLarge)
    } else {
        Ok(d)
    }
}

/// [`duration`] of a variable's value, the error naming the variable.
pub(crate) fn parse_duration(
    var: &'static str,
    s: &str,
    bare_unit: Duration,
) -> Result<Duration, ConfigError> {
    let s = s.trim();
    duration(s, bare_unit).map_err(|e| ConfigError::invalid(var, s, e))
}

/// A `STOW_KEEP_*` count.
pub(super) fn parse_count(
    var: &'static str,
    raw: &Option<String>,
) -> Result<Option<u32>, ConfigError> {
    raw.as_deref()
        .map(|s| {
            s.trim().parse::<u32>().map_err(|_| {
                ConfigError::invalid(var, s, "expected a whole number of snapshots, 0 or more")
            })
        })
        .transpose()
}

/// A password given inline or in a file (one of the two).
pub(super) fn read_password(
    inline_var: &'static str,
    inline: &Option<Secret>,
    file_var: &'static str,
    file: &Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(ConfigError::Conflict {
            a: inline_var,
            b: file_var,
            hint: "set only one",
        }),
        (Some(s), None) => Ok(Some(s.clone())),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                var: file_var,
                path: path.clone(),
                reason: e.kind().to_string(),
            })?;
            let pw = text.trim_end_matches(['\n', '\r']);
            if pw.is_empty() {
                return Err(ConfigError::File {
                    var: file_var,
                    path: path.clone(),
                    reason: "the file is empty".into(),
                });
            }
            Ok(Some(Secret::new(pw)))
        }
        (None, None) => Ok(None),
    }
}

/// `resource` or `resource.group`, lower case, as kubectl prints them.
pub(super) fn resource_list(
    var: &'static str,
    raw: &Option<String>,
) -> Result<Vec<String>, ConfigError> {
    let items = list(raw);
    for r in &items {
        let ok = r != "*"
            && r.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
            });
        if !ok && r != "*" {
            return Err(ConfigError::invalid(
                var,
                raw.as_deref().unwrap_or_default(),
                format!("`{r}` is not a resource name such as deployments or widgets.example.com"),
            ));
        }
    }
    Ok(items)
}

/// Parses the selector the way the API server does (equality and set-based
/// requirements), so a typo fails with exit 2 instead of mid-run.
pub(super) fn label_selector(s: &str) -> Result<String, ConfigError> {
    let s = s.trim();
    LabelSelector::parse(s).map_err(|why| ConfigError::invalid(v::LABEL_SELECTOR, s, why))?;
    Ok(s.to_string())
}

const MOVER_RESOURCE_KEYS: [&str; 6] = [
    "requests.cpu",
    "requests.memory",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// `STOW_MOVER_RESOURCES`: `key=quantity` pairs for the mover pod.
pub(super) fn mover_resources(
    raw: &Option<String>,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = raw.as_deref().unwrap_or_default();
    let mut out = BTreeMap::new();
    for pair in list(raw) {
        let (k, val) = pair.split_once('=').ok_or_else(|| {
            ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!("`{pair}` is not key=quantity"),
            )
        })?;
        if !MOVER_RESOURCE_KEYS.contains(&k.trim()) {
            return Err(ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!(
                    "unknown key `{k}`; expected one of {}",
                    MOVER_RESOURCE_KEYS.join(", ")
                ),
            ));
        }
        let q = val.trim();
        let digits = q.trim_end_matches(|c: char| c.is_ascii_alphabetic());
        let suffix = &q[digits.len()..];
        let ok_suffix = ["", "m", "k", "M", "G", "T", "Ki", "Mi", "Gi", "Ti"].contains(&suffix);
        if digits.is_empty() || digits.parse::<f64>().is_err() || !ok_suffix {
            return Err(ConfigError::invalid(
                v::MOVER_RESOURCES,
                text,
                format!("`{q}` is not a quantity such as 100m or 512Mi"),
            ));
        }
        out.insert(k.trim().to_string(), q.to_string());
    }
    Ok(out)
}
