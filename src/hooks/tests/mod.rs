//! Hook tests by topic: parsing the settings, the readiness and kind
//! rules, and running commands around a mode.

mod parse;
mod rules;
mod run;

use super::*;
use crate::config::{Config, vars as v};

fn config(extra: &[(&str, &str)], mode: &str) -> Result<Config, crate::config::ConfigErrors> {
    let mut pairs = vec![
        (v::MODE.to_string(), mode.to_string()),
        (
            v::REPOSITORY.to_string(),
            "file:///nonexistent/repo".to_string(),
        ),
        (v::PASSWORD.to_string(), "pw".to_string()),
        (v::KEEP_LAST.to_string(), "1".to_string()),
    ];
    pairs.extend(
        extra
            .iter()
            .map(|(k, val)| (k.to_string(), val.to_string())),
    );
    Config::from_vars(pairs, None)
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}
