//! What `STOW_PRECONDITION`, `STOW_PRE_HOOKS` and `STOW_POST_HOOKS` say,
//! parsed at configuration time so that a malformed value is exit 2.
//!
//! Two forms (README "Hooks and preconditions"):
//!
//! - compact: one entry per line; blank lines and `#` lines are ignored.
//!   Each line is `[option ...] target`, options `timeout=30s`,
//!   `on-error=fail|continue` and `scope=run|volume`, the target
//!   `exec:<ns>/<selector>/<container>:<command>`,
//!   `resource:<kind>/[<ns>/]<name>` (preconditions only) or a command.
//!   Commands are split into words like a shell does (quotes, backslash),
//!   but never run through one: the image has no shell, and argv is what
//!   pod exec takes anyway. Write `sh -c '…'` for shell syntax.
//! - JSON: an array (or, for a precondition, one object) of
//!   `{"exec": {"namespace", "selector", "container"}, "command": [argv],
//!   "timeout", "on_error", "scope"}`; without `exec` the command is
//!   local; `{"resource": "<kind>/<ns>/<name>"}` for preconditions.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

mod error;

pub use error::HookSpecError;

use super::selector::LabelSelector;

/// How long a hook command may run unless `timeout=` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Pods to exec in: `namespace`, label selector, container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pods {
    /// The namespace the pods are in.
    pub namespace: String,
    /// A label selector for the pods.
    pub selector: String,
    /// The container to exec in.
    pub container: String,
}

/// What a hook or a condition does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A process started by kubestow itself.
    Local {
        /// The command and its arguments; never run through a shell.
        argv: Vec<String>,
    },
    /// A command in each selected Running pod (a condition: the first).
    Exec {
        /// Which pods, and the container in them.
        pods: Pods,
        /// The command and its arguments, as pod exec takes them.
        argv: Vec<String>,
    },
    /// Preconditions only: the object exists and is ready.
    Resource {
        /// Kind, plural or `plural.group`, as written.
        kind: String,
        /// `None` for cluster-scoped objects.
        namespace: Option<String>,
        /// The object's name.
        name: String,
    },
}

/// What a failed hook does to the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    #[default]
    /// The run fails (after the post hooks).
    Fail,
    /// The failure is logged and the run goes on.
    Continue,
}

/// Once around the run, or around each volume of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    #[default]
    /// Once around the whole run.
    Run,
    /// Around each volume of a backup.
    Volume,
}

/// One hook, or one precondition (which ignores `on_error` and `scope`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    /// What runs, or what is checked.
    pub target: Target,
    /// How long it may take before it is killed (or the condition fails).
    pub timeout: Duration,
    /// What a failure does; preconditions ignore it.
    pub on_error: OnError,
    /// When it runs; preconditions ignore it.
    pub scope: Scope,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local { argv } => write!(f, "command `{}`", join(argv)),
            Target::Exec { pods, argv } => write!(
                f,
                "exec in {}/{}/{}: `{}`",
                pods.namespace,
                pods.selector,
                pods.container,
                join(argv)
            ),
            Target::Resource {
                kind,
                namespace,
                name,
            } => match namespace {
                Some(ns) => write!(f, "resource {kind}/{ns}/{name}"),
                None => write!(f, "resource {kind}/{name}"),
            },
        }
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)
    }
}

/// argv back to one line, quoting words that need it (for logs only).
pub fn join(argv: &[String]) -> String {
    argv.iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Which variable is parsed: preconditions allow `resource:` but no
/// `on-error`/`scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Precondition,
    Hooks,
}

/// `STOW_PRECONDITION`: every condition must be met. The error is the
/// reason for [`super::ConfigError`].
pub fn parse_preconditions(text: &str) -> Result<Vec<Hook>, HookSpecError> {
    parse(text, Kind::Precondition)
}

/// `STOW_PRE_HOOKS` / `STOW_POST_HOOKS`, in order.
pub fn parse_hooks(text: &str) -> Result<Vec<Hook>, HookSpecError> {
    parse(text, Kind::Hooks)
}

fn parse(text: &str, kind: Kind) -> Result<Vec<Hook>, HookSpecError> {
    let t = text.trim();
    let what = match kind {
        Kind::Precondition => "condition",
        Kind::Hooks => "hook",
    };
    if looks_like_json(t, kind) {
        return parse_json(t, kind);
    }
    let lines: Vec<(usize, &str)> = t
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let many = lines.len() > 1;
    lines
        .into_iter()
        .map(|(n, line)| {
            parse_line(line, kind).map_err(|e| {
                if many {
                    HookSpecError::Line {
                        number: n,
                        what,
                        line: line.to_string(),
                        source: Box::new(e),
                    }
                } else {
                    e
                }
            })
        })
        .collect()
}

/// `[{…}]`, `[]` or (a precondition) `{…}`; `[ -f /ready ]` is a
/// command. `["sh", …]` is JSON too, so that a bare argv is an error
/// rather than a strange command.
fn looks_like_json(t: &str, kind: Kind) -> bool {
    if let Some(rest) = t.strip_prefix('[') {
        return rest.trim_start().starts_with(['{', ']', '"']);
    }
    kind == Kind::Precondition && t.starts_with('{')
}

fn parse_line(line: &str, kind: Kind) -> Result<Hook, HookSpecError> {
    let mut hook = Hook {
        target: Target::Local { argv: Vec::new() },
        timeout: DEFAULT_TIMEOUT,
        on_error: OnError::Fail,
        scope: Scope::Run,
    };
    let mut rest = line.trim_start();
    // Leading `key=value` words are options; a command never starts with
    // one (there is no shell to take `FOO=1 cmd` as an assignment).
    loop {
        let word_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
        let word = &rest[..word_end];
        let Some((key, value)) = word.split_once('=') else {
            break;
        };
        let is_key = key.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !is_key {
            break;
        }
        set_option(&mut hook, kind, key, value)?;
        rest = rest[word_end..].trim_start();
    }
    hook.target = if let Some(spec) = rest.strip_prefix("exec:") {
        parse_exec(spec)?
    } else if let Some(spec) = rest.strip_prefix("resource:") {
        if kind == Kind::Hooks {
            return Err(HookSpecError::ResourceInHooks);
        }
        parse_resource(spec)?
    } else {
        let argv = split_words(rest)?;
        if argv.is_empty() {
            return Err(HookSpecError::NoCommand);
        }
        Target::Local { argv }
    };
    check_argv(&hook.target)?;
    Ok(hook)
}

fn set_option(hook: &mut Hook, kind: Kind, key: &str, value: &str) -> Result<(), HookSpecError> {
    match (key, kind) {
        ("timeout", _) => hook.timeout = parse_timeout(value)?,
        ("on-error" | "on_error", Kind::Hooks) => {
            hook.on_error = match value {
                "fail" => OnError::Fail,
                "continue" => OnError::Continue,
                _ => return Err(HookSpecError::OnError(value.to_string())),
            }
        }
        ("scope", Kind::Hooks) => {
            hook.scope = match value {
                "run" => Scope::Run,
                "volume" => Scope::Volume,
                _ => return Err(HookSpecError::Scope(value.to_string())),
            }
        }
        ("on-error" | "on_error" | "scope", Kind::Precondition) => {
            return Err(HookSpecError::HookOptionOnPrecondition(key.to_string()));
        }
        _ => {
            let known = match kind {
                Kind::Precondition => "timeout",
                Kind::Hooks => "timeout, on-error, scope",
            };
            return Err(HookSpecError::UnknownOption {
                key: key.to_string(),
                known,
            });
        }
    }
    Ok(())
}

fn parse_timeout(value: &str) -> Result<Duration, HookSpecError> {
    let d = super::parse::duration(value.trim(), Duration::from_secs(1)).map_err(|source| {
        HookSpecError::Timeout {
            value: value.to_string(),
            source,
        }
    })?;
    if d.is_zero() {
        return Err(HookSpecError::ZeroTimeout(value.to_string()));
    }
    Ok(d)
}

/// `<ns>/<selector>/<container>:<command>`. Namespaces, selectors and
/// container names hold no `:`, so the first one ends the pod part; a
/// selector may hold `/` (`app.kubernetes.io/name=db`), so the namespace
/// ends at the first `/` and the container starts after the last.
fn parse_exec(spec: &str) -> Result<Target, HookSpecError> {
    let (head, command) = spec.split_once(':').ok_or(HookSpecError::ExecNoColon)?;
    let bad_pods = || HookSpecError::ExecPods(head.to_string());
    let (namespace, more) = head.split_once('/').ok_or_else(bad_pods)?;
    let (selector, container) = more.rsplit_once('/').ok_or_else(bad_pods)?;
    let argv = split_words(command)?;
    if argv.is_empty() {
        return Err(HookSpecError::ExecNoCommand(head.to_string()));
    }
    pods(namespace.trim(), selector.trim(), container.trim(), argv)
}

fn pods(
    namespace: &str,
    selector: &str,
    container: &str,
    argv: Vec<String>,
) -> Result<Target, HookSpecError> {
    if !is_dns_label(namespace) {
        return Err(HookSpecError::Namespace(namespace.to_string()));
    }
    if selector.is_empty() {
        return Err(HookSpecError::EmptySelector);
    }
    LabelSelector::parse(selector).map_err(|source| HookSpecError::Selector {
        selector: selector.to_string(),
        source,
    })?;
    if !is_dns_label(container) {
        return Err(HookSpecError::Container(container.to_string()));
    }
    Ok(Target::Exec {
        pods: Pods {
            namespace: namespace.into(),
            selector: selector.into(),
            container: container.into(),
        },
        argv,
    })
}

/// `<kind>/<ns>/<name>`, or `<kind>/<name>` for cluster-scoped objects.
fn parse_resource(spec: &str) -> Result<Target, HookSpecError> {
    let parts: Vec<&str> = spec.trim().split('/').collect();
    let (kind, namespace, name) = match parts.as_slice() {
        [k, ns, n] => (*k, Some(*ns), *n),
        [k, n] => (*k, None, *n),
        _ => return Err(HookSpecError::ResourceForm(spec.to_string())),
    };
    let kind_ok = !kind.is_empty()
        && kind
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    if !kind_ok {
        return Err(HookSpecError::Kind(kind.to_string()));
    }
    if let Some(ns) = namespace
        && !is_dns_label(ns)
    {
        return Err(HookSpecError::Namespace(ns.to_string()));
    }
    if name.is_empty() {
        return Err(HookSpecError::EmptyName);
    }
    Ok(Target::Resource {
        kind: kind.into(),
        namespace: namespace.map(String::from),
        name: name.into(),
    })
}

/// Lines are the separator; a `;` between hooks is the likely mistake.
fn check_argv(target: &Target) -> Result<(), HookSpecError> {
    let argv = match target {
        Target::Local { argv } | Target::Exec { argv, .. } => argv,
        Target::Resource { .. } => return Ok(()),
    };
    if argv[1..]
        .iter()
        .any(|w| w.starts_with("exec:") || w.starts_with("resource:"))
    {
        return Err(HookSpecError::Semicolon);
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Splits a command line into words as a POSIX shell would, without any
/// expansion: `'…'` is literal, `"…"` allows `\"` and `\\`, a backslash
/// outside quotes escapes the next character.
pub fn split_words(s: &str) -> Result<Vec<String>, HookSpecError> {
    let unterminated = |quote| HookSpecError::Unterminated {
        quote,
        text: s.to_string(),
    };
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(unterminated('\'')),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(unterminated('"')),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(unterminated('"')),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => cur.push(c),
                    None => return Err(HookSpecError::LoneBackslash(s.to_string())),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

/// One entry of the JSON form.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonHook {
    exec: Option<JsonPods>,
    command: Option<Vec<String>>,
    resource: Option<String>,
    /// `"30s"`, or a number of seconds.
    timeout: Option<serde_json::Value>,
    #[serde(alias = "on-error")]
    on_error: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonPods {
    namespace: String,
    selector: String,
    container: String,
}

fn parse_json(t: &str, kind: Kind) -> Result<Vec<Hook>, HookSpecError> {
    let entries: Vec<JsonHook> = if t.starts_with('{') {
        vec![serde_json::from_str(t).map_err(HookSpecError::Json)?]
    } else {
        serde_json::from_str(t).map_err(HookSpecError::Json)?
    };
    let what = match kind {
        Kind::Precondition => "condition",
        Kind::Hooks => "hook",
    };
    entries
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            json_hook(e, kind).map_err(|source| HookSpecError::JsonEntry {
                what,
                index: i + 1,
                source: Box::new(source),
            })
        })
        .collect()
}

fn json_hook(e: JsonHook, kind: Kind) -> Result<Hook, HookSpecError> {
    let mut hook = Hook {
        target: Target::Local { argv: Vec::new() },
        timeout: DEFAULT_TIMEOUT,
        on_error: OnError::Fail,
        scope: Scope::Run,
    };
    if let Some(t) = &e.timeout {
        let text = match t {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Number(n) => n.to_string(),
            other => return Err(HookSpecError::JsonTimeout(other.clone())),
        };
        hook.timeout = parse_timeout(&text)?;
    }
    if let Some(v) = &e.on_error {
        set_option(&mut hook, kind, "on-error", v)?;
    }
    if let Some(v) = &e.scope {
        set_option(&mut hook, kind, "scope", v)?;
    }
    let argv = |cmd: Option<Vec<String>>| -> Result<Vec<String>, HookSpecError> {
        match cmd {
            Some(a) if !a.is_empty() && !a[0].is_empty() => Ok(a),
            Some(_) => Err(HookSpecError::EmptyCommand),
            None => Err(HookSpecError::MissingCommand),
        }
    };
    hook.target = match (e.exec, e.resource) {
        (Some(_), Some(_)) => return Err(HookSpecError::ExecAndResource),
        (Some(p), None) => pods(
            p.namespace.trim(),
            p.selector.trim(),
            p.container.trim(),
            argv(e.command)?,
        )?,
        (None, Some(r)) => {
            if kind == Kind::Hooks {
                return Err(HookSpecError::JsonResourceInHooks);
            }
            if e.command.is_some() {
                return Err(HookSpecError::ResourceWithCommand);
            }
            parse_resource(&r)?
        }
        (None, None) => Target::Local {
            argv: argv(e.command)?,
        },
    };
    Ok(hook)
}
