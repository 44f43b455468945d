//! The configuration files: a TOML file through the real loader (`Config::load`, as `serve` and
//! `check-config` read `--config`), with the token file it may name, and the caller policy built
//! from what it accepts.
//!
//! Input: the TOML text; a line `#--token-file--` splits off the token file's content. Where the
//! TOML says `@TOKEN_FILE@`, the target puts the token file's path.
#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use cognito_gateway::{Config, Policy, config::Flags};
use libfuzzer_sys::fuzz_target;

const SPLIT: &str = "\n#--token-file--\n";

/// A directory of this process's own for the two files.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!(
            "cognito-gateway-fuzz-config-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("the temporary directory is writable");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (toml, token_file) = text.split_once(SPLIT).unwrap_or((text, ""));
    // Paths the fuzzer might name that read forever or are not files to read.
    if ["/dev", "/proc", "/sys"].iter().any(|p| toml.contains(p)) {
        return;
    }
    let config_path = dir().join("gateway.toml");
    let token_path = dir().join("tokens.toml");
    let toml = toml.replace("@TOKEN_FILE@", &token_path.display().to_string());
    std::fs::write(&config_path, toml).expect("the temporary directory is writable");
    std::fs::write(&token_path, token_file).expect("the temporary directory is writable");
    for local in [false, true] {
        let flags = Flags {
            listen: "127.0.0.1:0".parse().expect("a literal address"),
            health_listen: None,
            local,
            config: Some(config_path.clone()),
            redis_url: None,
        };
        let Ok(config) = Config::load(flags) else {
            continue;
        };
        // What a reload does with an accepted file: read it again, identically, then build the
        // policy, keeping the rates of callers that did not change.
        let again = config
            .reread()
            .expect("a file accepted once is accepted again");
        assert!(
            config.restart_needed(&again).is_empty(),
            "the same file reads the same"
        );
        let policy = Policy::build(&config.access, &config.limits, None);
        let rebuilt = Policy::build(&again.access, &again.limits, Some(&policy));
        assert_eq!(policy.caller_names(), rebuilt.caller_names());
    }
});
