//! Why a hook or precondition value does not parse.

use crate::config::parse::DurationError;
use crate::config::selector::SelectorError;

/// The form an `exec:` target takes, for its errors.
const EXEC_FORM: &str = "expected exec:<namespace>/<label selector>/<container>:<command>";

/// Why a hook or precondition value does not parse. The text is the reason
/// the configuration error gives after the variable and value.
///
/// The wrapping variants print their source too: the configuration error
/// carries the whole reason as text.
#[derive(Debug, thiserror::Error)]
pub enum HookSpecError {
    /// One line of several is wrong; names the line.
    #[error("line {number} ({what} `{line}`): {source}")]
    Line {
        /// 1-based, counting blank and comment lines.
        number: usize,
        /// `hook` or `condition`.
        what: &'static str,
        /// The line, trimmed.
        line: String,
        /// What is wrong with it.
        #[source]
        source: Box<HookSpecError>,
    },
    /// One entry of the JSON form is wrong; names the entry.
    #[error("{what} {index} of the JSON array: {source}")]
    JsonEntry {
        /// `hook` or `condition`.
        what: &'static str,
        /// 1-based.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: Box<HookSpecError>,
    },
    /// The JSON form does not deserialise.
    #[error("invalid JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// `resource:` in `STOW_PRE_HOOKS`/`STOW_POST_HOOKS`.
    #[error("`resource:` is a precondition; hooks run a command or exec")]
    ResourceInHooks,
    /// `{"resource": …}` in the JSON form of hooks.
    #[error("`resource` is a precondition; hooks run a command or exec")]
    JsonResourceInHooks,
    /// Options but no target.
    #[error("no command after the options")]
    NoCommand,
    /// `on-error=` other than fail or continue.
    #[error("on-error={0}: expected fail or continue")]
    OnError(String),
    /// `scope=` other than run or volume.
    #[error("scope={0}: expected run or volume")]
    Scope(String),
    /// `on-error` or `scope` on a precondition.
    #[error("`{0}` is a hook option; a precondition that fails always skips the run")]
    HookOptionOnPrecondition(String),
    /// An option key that is not known; also catches `FOO=1 cmd`.
    #[error(
        "unknown option `{key}` (known: {known}); to set a variable for a command, run it through `env` or `sh -c`"
    )]
    UnknownOption {
        /// The key as written.
        key: String,
        /// The keys this variable accepts.
        known: &'static str,
    },
    /// `timeout=` that is not a duration.
    #[error("timeout={value}: {source}")]
    Timeout {
        /// The value as written.
        value: String,
        /// Why it is not a duration.
        #[source]
        source: DurationError,
    },
    /// `timeout=0s`.
    #[error("timeout={0}: must be more than zero")]
    ZeroTimeout(String),
    /// A JSON `timeout` that is neither a string nor a number.
    #[error("timeout {0}: expected e.g. \"30s\" or 30")]
    JsonTimeout(serde_json::Value),
    /// `exec:` without the `:` that starts the command.
    #[error("no `:` before the command; {EXEC_FORM}")]
    ExecNoColon,
    /// `exec:` whose pod part is not namespace/selector/container.
    #[error("`{0}`: {EXEC_FORM}")]
    ExecPods(String),
    /// `exec:<pods>:` with nothing after.
    #[error("no command after `exec:{0}:`")]
    ExecNoCommand(String),
    /// Not an RFC 1123 label.
    #[error("`{0}` is not a namespace name")]
    Namespace(String),
    /// An exec target without a selector.
    #[error("the label selector is empty; name the pods, e.g. app=db")]
    EmptySelector,
    /// An exec target's selector does not parse.
    #[error("selector `{selector}`: {source}")]
    Selector {
        /// The selector as written.
        selector: String,
        /// Why it does not parse.
        #[source]
        source: SelectorError,
    },
    /// Not an RFC 1123 label.
    #[error("`{0}` is not a container name")]
    Container(String),
    /// `resource:` with too few or too many `/` parts.
    #[error(
        "`{0}`: expected resource:<kind>/<namespace>/<name>, or resource:<kind>/<name> for cluster-scoped objects"
    )]
    ResourceForm(String),
    /// A kind with characters no kind has.
    #[error("`{0}` is not a kind (e.g. deployment, statefulsets.apps, Widget.example.com)")]
    Kind(String),
    /// `resource:<kind>/<ns>/`.
    #[error("the object name is empty")]
    EmptyName,
    /// `{"resource": …, "command": …}`.
    #[error("`resource` takes no `command`")]
    ResourceWithCommand,
    /// `{"exec": …, "resource": …}`.
    #[error("`exec` and `resource` exclude each other")]
    ExecAndResource,
    /// A JSON `command` that is `[]` or starts with `""`.
    #[error("`command` is empty")]
    EmptyCommand,
    /// A JSON entry without `command` (and without `resource`).
    #[error("`command` (a list of arguments) is missing")]
    MissingCommand,
    /// A later word is a target: entries were joined with `;`.
    #[error("entries are separated by line breaks (or use the JSON form), not by `;`")]
    Semicolon,
    /// A quote that is not closed; `quote` is `'` or `"`.
    #[error("unterminated {quote} in `{text}`")]
    Unterminated {
        /// The quote character.
        quote: char,
        /// The whole command line.
        text: String,
    },
    /// A backslash with nothing to escape.
    #[error("`{0}` ends with a lone backslash")]
    LoneBackslash(String),
}
