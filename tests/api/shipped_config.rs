//! Every configuration shipped in deploy/ (each variant's `gateway.toml`, which kustomize's
//! configMapGenerator turns into its ConfigMap) passes `check-config`, with the files it names staged from the Secrets
//! shipped beside it; and a shipped file broken in one key is refused, naming the key.
//! (.ci/config_schema.py validates the same files against docs/config.schema.json.)

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use crate::kit::{binary::BIN, files::Files};

/// Where the manifests mount what the configurations name.
const MOUNTS: &str = "/etc/cognito-gateway/";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml_documents(path: &Path) -> Vec<yaml_serde::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    yaml_serde::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).unwrap())
        .collect()
}

fn string_map<'a>(document: &'a yaml_serde::Value, field: &str) -> Vec<(&'a str, &'a str)> {
    document
        .get(field)
        .and_then(yaml_serde::Value::as_mapping)
        .into_iter()
        .flatten()
        .filter_map(|(key, value)| Some((key.as_str()?, value.as_str()?)))
        .collect()
}

/// The variants' directories (deploy/k8s/*), sorted.
fn variants() -> Vec<PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(repo().join("deploy/k8s"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    dirs
}

fn manifests(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every variant's `gateway.toml`, by path.
fn shipped_configs() -> BTreeMap<PathBuf, String> {
    variants()
        .into_iter()
        .map(|dir| dir.join("gateway.toml"))
        .filter(|path| path.is_file())
        .map(|path| {
            let toml = std::fs::read_to_string(&path).unwrap();
            (path, toml)
        })
        .collect()
}

/// The Secrets' keys a variant's configuration may name (each mounted as a file of the key's
/// name): the variant's own first, then those of the others (an overlay uses its base's).
fn secret_keys(variant: &Path) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    let others = variants().into_iter().filter(|dir| dir != variant);
    for dir in std::iter::once(variant.to_owned()).chain(others) {
        for manifest in manifests(&dir) {
            for document in yaml_documents(&manifest) {
                if document.get("kind").and_then(yaml_serde::Value::as_str) == Some("Secret") {
                    for (key, value) in string_map(&document, "stringData") {
                        keys.entry(key.to_owned())
                            .or_insert_with(|| value.to_owned());
                    }
                }
            }
        }
    }
    keys
}

/// Runs `check-config` on `toml` as `variant`'s pod would: every file under MOUNTS staged in a
/// temporary directory from the Secrets, and the fleet's URL from the Secret's `url` (the pod's
/// COGNITO_GATEWAY_REDIS_URL).
fn check(variant: &Path, toml: &str) -> Output {
    let files = Files::new("shipped-config");
    let root = files.path("");
    let secrets = secret_keys(variant);
    let settings = toml
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'));
    for mounted in settings
        .flat_map(|line| line.split('"'))
        .filter(|s| s.starts_with(MOUNTS))
    {
        let name = Path::new(mounted).file_name().unwrap().to_str().unwrap();
        let content = secrets
            .get(name)
            .unwrap_or_else(|| panic!("{mounted}: no Secret in deploy/k8s has a key {name}"));
        let staged = root.join(&mounted[MOUNTS.len()..]);
        std::fs::create_dir_all(staged.parent().unwrap()).unwrap();
        std::fs::write(staged, content).unwrap();
    }
    let config = files.write(
        "gateway.toml",
        &toml.replace(MOUNTS, &format!("{}/", root.display())),
    );
    let mut command = Command::new(BIN);
    command
        .args(["check-config", "--config"])
        .arg(config)
        .env_remove("COGNITO_GATEWAY_REDIS_URL");
    if toml.contains("[fleet]") {
        command.args(["--redis-url", &secrets["url"]]);
    }
    command.output().unwrap()
}

#[test]
fn check_config_accepts_every_shipped_configuration() {
    let configs = shipped_configs();
    let names: Vec<_> = configs
        .keys()
        .map(|path| path.strip_prefix(repo()).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "deploy/k8s/shared/gateway.toml",
            "deploy/k8s/shared-jwt/gateway.toml",
            "deploy/k8s/sidecar/gateway.toml",
        ]
    );
    for (manifest, toml) in &configs {
        let checked = check(manifest.parent().unwrap(), toml);
        let stdout = String::from_utf8_lossy(&checked.stdout);
        assert!(
            checked.status.success() && stdout.starts_with("config OK"),
            "{}: {checked:?}",
            manifest.display()
        );
    }
}

#[test]
fn check_config_refuses_a_shipped_configuration_broken_in_one_key() {
    let configs = shipped_configs();
    let sidecar = repo().join("deploy/k8s/sidecar/gateway.toml");
    let toml = &configs[&sidecar];
    assert!(
        toml.contains("backend_rps = 5\n"),
        "the sidecar's backend_rps moved"
    );
    for (broken, key) in [
        (
            toml.replace("backend_rps = 5\n", "backend_rsp = 5\n"),
            "backend_rsp",
        ),
        (
            toml.replace("backend_rps = 5\n", "backend_rps = 0\n"),
            "limits.backend_rps",
        ),
        (
            toml.replace("mode = \"token\"", "mode = \"password\""),
            "mode",
        ),
    ] {
        let refused = check(sidecar.parent().unwrap(), &broken);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(2), "{key}: {refused:?}");
        assert!(stderr.contains(key), "{key}: {stderr}");
    }
}
