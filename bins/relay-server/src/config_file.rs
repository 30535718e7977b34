//! The config file and the precedence of settings: flags > environment > TOML file >
//! defaults, for every flag of [`Cli`] without per-flag code.
//!
//! The file's keys are the flags' long names in snake_case. Parsing runs twice: a
//! lenient first pass over the command line and environment finds `--config` and
//! records where each value came from; then every file key whose flag was not set on
//! the command line or in the environment is validated with the flag's own value
//! parser and injected as `--flag=value`, and clap parses again, strictly. A flag added
//! to [`Cli`] later is therefore a valid file key as soon as it exists.

use std::any::TypeId;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, CommandFactory, FromArgMatches};

use crate::cli::Cli;

/// Argument ids that are not settings and so are neither file keys nor printed.
const NOT_SETTINGS: [&str; 4] = ["help", "version", "config", "print_config"];

/// Words that mark a key whose value is a secret, masked by `--print-config`
/// (`secret_auth`, `admin_token`, `registry_token`, `api_key`, ...). Booleans, such as
/// `insecure_api_keys_not_enforced`, are never masked. `database_url` and `redis_url`
/// may carry a password.
const SECRET_WORDS: [&str; 6] = ["token", "secret", "password", "api_key", "database_url", "redis_url"];

/// Why the settings could not be read.
#[derive(Debug)]
pub(crate) enum ConfigError {
    /// clap's own error (including `--help` and `--version`); it knows how to exit.
    Clap(clap::Error),
    /// A bad file, file key, or environment value; exit 2 with this message.
    Invalid(String),
}

/// The parsed command line, environment and file, plus what `--print-config` needs.
pub(crate) struct Settings {
    /// The typed flags.
    pub(crate) cli: Cli,
    command: Command,
    matches: ArgMatches,
}

impl Settings {
    /// Parses `args` (program name first) with the process environment and the config
    /// file they name.
    pub(crate) fn parse(args: Vec<OsString>) -> Result<Settings, ConfigError> {
        let command = Cli::command();
        // Lenient pass: only to find --config and where each value came from. Every
        // error it would report comes back in the strict pass below.
        let first =
            command.clone().ignore_errors(true).try_get_matches_from(&args).map_err(ConfigError::Clap)?;

        let mut argv = args;
        if let Some(path) = first.get_one::<std::path::PathBuf>("config") {
            let injected = file_args(&command, &first, path)?;
            argv.splice(1.min(argv.len())..1.min(argv.len()), injected);
        }
        let matches =
            command.clone().try_get_matches_from(&argv).map_err(|e| attribute_to_env(e, &command, &first))?;
        let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Clap)?;
        Ok(Settings { cli, command, matches })
    }

    /// The effective configuration as TOML, one line per setting in `--help` order,
    /// secrets shown as `"***"`, unset optional settings as comments.
    pub(crate) fn to_toml(&self) -> String {
        render_toml(&self.command, &self.matches)
    }
}

/// The values of `matches` as TOML, keyed by `command`'s long flag names.
fn render_toml(command: &Command, matches: &ArgMatches) -> String {
    let mut out = String::from("# effective relay-server configuration\n");
    for arg in settings(command) {
        let id = arg.get_id().as_str();
        let key = toml_key(arg);
        let raw: Vec<String> = matches
            .get_raw(id)
            .map(|values| values.map(|v| v.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let is_list = matches!(arg.get_action(), ArgAction::Append);
        if raw.is_empty() && !is_list {
            let _ = writeln!(out, "# {key} is not set");
            continue;
        }
        let secret = !is_bool(arg) && SECRET_WORDS.iter().any(|w| key.contains(w));
        let render = |v: &String| -> String {
            if secret {
                toml::Value::String("***".into()).to_string()
            } else if key.ends_with("_url") {
                // A database URL may carry a password: show everything else.
                toml::Value::String(mask_url_password(v)).to_string()
            } else if is_bool(arg) || is_number(arg) || takes_bool(arg) {
                v.clone()
            } else {
                toml::Value::String(v.clone()).to_string()
            }
        };
        let value = if is_list {
            format!("[{}]", raw.iter().map(render).collect::<Vec<_>>().join(", "))
        } else {
            render(&raw[raw.len() - 1])
        };
        let _ = writeln!(out, "{key} = {value}");
    }
    out
}

/// `scheme://user:password@host/...` with the password shown as `***`; anything else
/// unchanged.
fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else { return url.to_owned() };
    match rest[..at].find(':') {
        Some(colon) => format!("{}{}:***{}", &url[..scheme_end], &rest[..colon], &rest[at..]),
        None => url.to_owned(),
    }
}

/// The arguments that are settings: every long flag except help, version, and the
/// config-file flags themselves.
fn settings(command: &Command) -> impl Iterator<Item = &Arg> {
    command.get_arguments().filter(|a| a.get_long().is_some() && !NOT_SETTINGS.contains(&a.get_id().as_str()))
}

fn toml_key(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

fn is_bool(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// A flag that takes `true` or `false` as its value (`--console false`).
fn takes_bool(arg: &Arg) -> bool {
    arg.get_value_parser().type_id() == TypeId::of::<bool>()
}

fn is_number(arg: &Arg) -> bool {
    let id = arg.get_value_parser().type_id();
    [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
        TypeId::of::<i8>(),
        TypeId::of::<i16>(),
        TypeId::of::<i32>(),
        TypeId::of::<i64>(),
        TypeId::of::<isize>(),
        TypeId::of::<f32>(),
        TypeId::of::<f64>(),
    ]
    .iter()
    .any(|t| id == *t)
}

/// Reads the file at `path` and turns each key not already set by a flag or the
/// environment into `--flag=value` arguments, after checking the value with the
/// flag's own parser.
fn file_args(command: &Command, first: &ArgMatches, path: &Path) -> Result<Vec<OsString>, ConfigError> {
    let shown = path.display();
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::Invalid(format!("cannot read config file {shown}: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| ConfigError::Invalid(format!("config file {shown} is not valid TOML: {e}")))?;

    let mut injected = Vec::new();
    for (key, value) in &table {
        let Some(arg) = settings(command).find(|a| toml_key(a) == *key) else {
            return Err(ConfigError::Invalid(format!(
                "unknown key `{key}` in config file {shown} (keys are the long flag names in snake_case; see --help)"
            )));
        };
        let bad = |why: String| {
            ConfigError::Invalid(format!("invalid value for key `{key}` in config file {shown}: {why}"))
        };
        let explicit = matches!(
            first.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        let long = arg.get_long().unwrap_or_default();

        if is_bool(arg) {
            let toml::Value::Boolean(b) = value else {
                return Err(bad(format!("expected true or false, found {}", value.type_str())));
            };
            let set = *b == matches!(arg.get_action(), ArgAction::SetTrue);
            if set && !explicit {
                injected.push(OsString::from(format!("--{long}")));
            }
            continue;
        }

        let items: Vec<&toml::Value> = match value {
            toml::Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        if items.len() != 1 && !matches!(arg.get_action(), ArgAction::Append) {
            return Err(bad("expected a single value, found an array".into()));
        }
        for item in items {
            let text = match item {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(bad(format!("expected a string or a number, found {}", other.type_str())));
                }
            };
            if let Err(why) = check_value(arg, &text) {
                return Err(bad(format!("{text:?}: {why}")));
            }
            if !explicit {
                injected.push(OsString::from(format!("--{long}={text}")));
            }
        }
    }
    Ok(injected)
}

/// Runs `text` through `arg`'s own value parser, alone, so that an error is about this
/// value and not about other flags (`requires` and the like are checked later).
fn check_value(arg: &Arg, text: &str) -> Result<(), String> {
    let lone = Arg::new("value")
        .long("value")
        .action(arg.get_action().clone())
        .value_parser(arg.get_value_parser().clone())
        .value_delimiter(arg.get_value_delimiter());
    let argv = [OsString::from("check"), OsString::from(format!("--value={text}"))];
    match Command::new("check").arg(lone).try_get_matches_from(argv) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == ErrorKind::InvalidValue => {
            let possible: Vec<String> =
                arg.get_possible_values().iter().map(|v| v.get_name().to_owned()).collect();
            Err(format!("possible values: {}", possible.join(", ")))
        }
        Err(e) => Err(clap_detail(&e)),
    }
}

/// Names the environment variable when clap refused a value that came from it (clap
/// itself names only the flag, which the operator may never have typed).
fn attribute_to_env(e: clap::Error, command: &Command, first: &ArgMatches) -> ConfigError {
    if !matches!(e.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return ConfigError::Clap(e);
    }
    let Some(ContextValue::String(flag)) = e.get(ContextKind::InvalidArg) else {
        return ConfigError::Clap(e);
    };
    let long = flag.split_whitespace().next().unwrap_or_default().trim_start_matches("--");
    let Some(arg) = command.get_arguments().find(|a| a.get_long() == Some(long)) else {
        return ConfigError::Clap(e);
    };
    match (first.value_source(arg.get_id().as_str()), arg.get_env()) {
        (Some(ValueSource::EnvVariable), Some(var)) => ConfigError::Invalid(format!(
            "invalid value in environment variable {}: {}",
            var.to_string_lossy(),
            clap_line(&e)
        )),
        _ => ConfigError::Clap(e),
    }
}

/// The reason inside a clap error: the value parser's own message when there is one.
fn clap_detail(e: &clap::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => source.to_string(),
        None => clap_line(e),
    }
}

/// The first line of a rendered clap error, without its "error: " prefix.
fn clap_line(e: &clap::Error) -> String {
    let rendered = e.to_string();
    let line = rendered.lines().next().unwrap_or_default();
    line.trim_start_matches("error: ").to_owned()
}

#[cfg(test)]
mod tests {
    //! `--print-config` masking, against a command with the secret-bearing flags other
    //! parts of the relay add (admin token, API keys).

    use clap::{Arg, ArgAction, Command};

    use super::{mask_url_password, render_toml};

    #[test]
    fn print_config_masks_tokens_and_api_keys_but_not_other_values() {
        let command = Command::new("relay-server")
            .arg(Arg::new("admin_token").long("admin-token"))
            .arg(Arg::new("secret_auth").long("secret-auth"))
            .arg(Arg::new("api_key").long("api-key").action(ArgAction::Append))
            .arg(
                Arg::new("insecure_api_keys_not_enforced")
                    .long("insecure-api-keys-not-enforced")
                    .action(ArgAction::SetTrue),
            )
            .arg(Arg::new("room_id_prefix").long("room-id-prefix"));
        let matches = command
            .clone()
            .try_get_matches_from([
                "relay-server",
                "--admin-token=hunter2",
                "--secret-auth=s3cr3t",
                "--api-key=ABEiM0RVZneImaq7zN3u/w==,One",
                "--api-key=AAAAAAAAAAAAAAAAAAAAAA==,Two",
                "--insecure-api-keys-not-enforced",
                "--room-id-prefix=1a2b3c4d",
            ])
            .expect("parse");
        let text = render_toml(&command, &matches);
        assert!(
            !text.contains("hunter2") && !text.contains("s3cr3t") && !text.contains("ABEiM0RV"),
            "{text}"
        );
        let table: toml::Table = text.parse().expect("valid TOML");
        assert_eq!(table["admin_token"].as_str(), Some("***"));
        assert_eq!(table["secret_auth"].as_str(), Some("***"));
        let keys = table["api_key"].as_array().expect("array");
        assert_eq!(keys.len(), 2);
        assert!(keys.iter().all(|k| k.as_str() == Some("***")));
        assert_eq!(table["insecure_api_keys_not_enforced"].as_bool(), Some(true));
        assert_eq!(table["room_id_prefix"].as_str(), Some("1a2b3c4d"));
    }

    #[test]
    fn url_passwords_are_masked_and_the_rest_kept() {
        assert_eq!(
            mask_url_password("postgres://relay:s3cret@db:5432/relay"),
            "postgres://relay:***@db:5432/relay"
        );
        assert_eq!(mask_url_password("postgres://relay@db/relay"), "postgres://relay@db/relay");
        assert_eq!(mask_url_password("redis://:pw@127.0.0.1:6379"), "redis://:***@127.0.0.1:6379");
        assert_eq!(mask_url_password("host=db user=relay"), "host=db user=relay");
    }
}
