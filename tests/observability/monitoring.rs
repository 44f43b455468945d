//! deploy/k8s/monitoring against its sources: the PrometheusRule holds exactly the rules of
//! observability/alerts.yaml, the dashboard ConfigMap exactly observability/grafana-dashboard.json
//! (both rendered by deploy/k8s/monitoring/render.py), and the ServiceMonitor, its Service, the
//! NetworkPolicy and the Deployment patch agree on one port, under the job name the alerts expect.
//! kubernetes-validate (deploy/check.sh) knows no CRD: what it cannot check of these is checked here.

use std::process::Command;

use serde_json::Value;

use super::{assert_none, at, dashboard, read, root, yaml};

const DIR: &str = "deploy/k8s/monitoring";

fn manifest(name: &str) -> yaml_serde::Value {
    yaml(&format!("{DIR}/{name}"))
}

fn str_at<'a>(node: &'a yaml_serde::Value, keys: &[&str]) -> &'a str {
    at(node, keys)
        .and_then(yaml_serde::Value::as_str)
        .unwrap_or_default()
}

/// The PrometheusRule's groups are alerts.yaml's, rule for rule, and the dashboard ConfigMap holds
/// the dashboard, labelled for Grafana's sidecar.
#[test]
fn monitoring_manifests_are_rendered_from_the_sources() {
    let mut problems = Vec::new();
    let rule = manifest("prometheusrule.yaml");
    let alerts: yaml_serde::Value = yaml("observability/alerts.yaml");
    if str_at(&rule, &["kind"]) != "PrometheusRule"
        || str_at(&rule, &["apiVersion"]) != "monitoring.coreos.com/v1"
    {
        problems
            .push("prometheusrule.yaml is not a monitoring.coreos.com/v1 PrometheusRule".into());
    }
    if at(&rule, &["spec", "groups"]) != alerts.get("groups") {
        problems.push(format!(
            "prometheusrule.yaml's groups differ from observability/alerts.yaml: run python3 {DIR}/render.py"
        ));
    }

    let config_map = manifest("grafana-dashboard.yaml");
    if str_at(&config_map, &["metadata", "labels", "grafana_dashboard"]) != "1" {
        problems.push("grafana-dashboard.yaml: no label grafana_dashboard: \"1\"".into());
    }
    let data = at(&config_map, &["data"]).and_then(yaml_serde::Value::as_mapping);
    let dashboards: Vec<Value> = data
        .into_iter()
        .flatten()
        .filter_map(|(_, text)| serde_json::from_str(text.as_str()?).ok())
        .collect();
    if dashboards != [dashboard()] {
        problems.push(format!(
            "grafana-dashboard.yaml does not hold exactly observability/grafana-dashboard.json: run python3 {DIR}/render.py"
        ));
    }
    assert_none(&problems);
}

/// Prometheus finds the pods: the ServiceMonitor selects the metrics Service and scrapes its port,
/// which leads to the container port the patch opens, where --metrics-listen (the env twin) serves,
/// and which the NetworkPolicy admits; the job name is the one the alerts and dashboard use.
#[test]
fn the_service_monitor_reaches_the_metrics_port() {
    let mut problems = Vec::new();
    let monitor = manifest("servicemonitor.yaml");
    let service = manifest("service.yaml");
    let patch = manifest("deployment-patch.yaml");
    let policy = manifest("networkpolicy.yaml");

    let selector = at(&monitor, &["spec", "selector", "matchLabels"])
        .and_then(yaml_serde::Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    let labels = at(&service, &["metadata", "labels"])
        .and_then(yaml_serde::Value::as_mapping)
        .cloned()
        .unwrap_or_default();
    if selector.is_empty() || selector.iter().any(|(k, v)| labels.get(k) != Some(v)) {
        problems.push(format!(
            "the ServiceMonitor's selector {selector:?} does not select the Service ({labels:?})"
        ));
    }
    let job_label = str_at(&monitor, &["spec", "jobLabel"]);
    if labels
        .get(job_label)
        .and_then(yaml_serde::Value::as_str)
        .is_none_or(|job| job != "cognito-gateway")
    {
        problems.push(format!(
            "the job (the Service's {job_label:?} label) is not cognito-gateway, which CognitoGatewayNotReporting names"
        ));
    }

    let endpoints = at(&monitor, &["spec", "endpoints"])
        .and_then(yaml_serde::Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let service_port = at(&service, &["spec", "ports"])
        .and_then(yaml_serde::Value::as_sequence)
        .and_then(|ports| ports.first().cloned())
        .unwrap_or_default();
    for endpoint in &endpoints {
        if str_at(endpoint, &["port"]) != str_at(&service_port, &["name"]) {
            problems.push(format!(
                "endpoint {endpoint:?} names no port of the Service"
            ));
        }
        if str_at(endpoint, &["path"]) != "/metrics" {
            problems.push(format!("endpoint {endpoint:?}: path is not /metrics"));
        }
    }
    if endpoints.is_empty() {
        problems.push("the ServiceMonitor has no endpoint".into());
    }

    let container = at(&patch, &["spec", "template", "spec", "containers"])
        .and_then(yaml_serde::Value::as_sequence)
        .and_then(|containers| containers.first().cloned())
        .unwrap_or_default();
    let container_port = at(&container, &["ports"])
        .and_then(yaml_serde::Value::as_sequence)
        .and_then(|ports| ports.first().cloned())
        .unwrap_or_default();
    if str_at(&service_port, &["targetPort"]) != str_at(&container_port, &["name"]) {
        problems.push("the Service's targetPort is not the patch's container port name".into());
    }
    let port = at(&container_port, &["containerPort"]).and_then(yaml_serde::Value::as_u64);
    let listen = at(&container, &["env"])
        .and_then(yaml_serde::Value::as_sequence)
        .into_iter()
        .flatten()
        .find(|env| str_at(env, &["name"]) == "COGNITO_GATEWAY_METRICS_LISTEN")
        .map(|env| str_at(env, &["value"]).to_owned())
        .unwrap_or_default();
    if port.is_none_or(|port| !listen.ends_with(&format!(":{port}"))) {
        problems.push(format!(
            "COGNITO_GATEWAY_METRICS_LISTEN {listen:?} is not on the container port {port:?}"
        ));
    }
    let admitted = at(&policy, &["spec", "ingress"])
        .and_then(yaml_serde::Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("ports")?.as_sequence())
        .flatten()
        .any(|p| p.get("port").and_then(yaml_serde::Value::as_u64) == port);
    if !admitted {
        problems.push(format!("the NetworkPolicy does not admit port {port:?}"));
    }
    assert_none(&problems);
}

/// render.py puts a new runbook base into every rule of the PrometheusRule (and of alerts.yaml,
/// which it leaves alone when told to write elsewhere).
#[test]
fn render_sets_the_runbook_base() {
    let out = std::env::temp_dir().join(format!("cognito-gateway-render-{}", std::process::id()));
    let base = "https://runbooks.internal.test/platform/cognito-gateway/docs";
    let status = Command::new("python3")
        .arg(root().join(DIR).join("render.py"))
        .args(["--runbook-base-url", base, "--output"])
        .arg(&out)
        .status()
        .expect("python3 runs (with PyYAML: .ci/run installs it)");
    assert!(status.success(), "render.py failed");
    let rendered: yaml_serde::Value = yaml_serde::from_str(
        &std::fs::read_to_string(out.join("prometheusrule.yaml")).expect("rendered"),
    )
    .expect("rendered YAML parses");
    let _ = std::fs::remove_dir_all(&out);
    let urls: Vec<String> = at(&rendered, &["spec", "groups"])
        .and_then(yaml_serde::Value::as_sequence)
        .into_iter()
        .flatten()
        .filter_map(|group| group.get("rules")?.as_sequence())
        .flatten()
        .map(|rule| str_at(rule, &["annotations", "runbook_url"]).to_owned())
        .collect();
    assert!(urls.len() > 6, "{urls:?}");
    for url in &urls {
        assert_eq!(
            url.strip_prefix(base),
            Some("/operations.md#troubleshooting"),
            "{url}"
        );
    }
    // The sources are untouched.
    assert!(!read("observability/alerts.yaml").contains(base));
}
