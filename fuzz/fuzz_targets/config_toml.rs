//! The TOML config file (`--config`): the binary's own `config_file` and `cli` modules,
//! included by path (the binary has no library), parse the input as the file. Checks:
//! never a panic; a refusal is a `ConfigError`, not an exit.
#![no_main]
#![allow(dead_code, unreachable_pub, missing_docs)]

#[path = "../../bins/relay-server/src/cli.rs"]
mod cli;
#[path = "../../bins/relay-server/src/config_file.rs"]
mod config_file;
#[path = "../../bins/relay-server/src/discovery.rs"]
mod discovery;

use std::ffi::OsString;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn config_path() -> &'static std::path::PathBuf {
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| std::env::temp_dir().join(format!("relay-fuzz-config-{}.toml", std::process::id())))
}

fuzz_target!(|data: &[u8]| {
    let path = config_path();
    std::fs::write(path, data).expect("write the config file");
    let args: Vec<OsString> = vec!["relay-server".into(), "--config".into(), path.clone().into_os_string()];
    let _ = config_file::Settings::parse(args);
});
