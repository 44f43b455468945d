//! The observability assets against what the gateway exports: the Grafana dashboard
//! (`observability/grafana-dashboard.json`), the Prometheus alerting rules
//! (`observability/alerts.yaml`) and their promtool unit tests (`observability/alerts_test.yaml`),
//! the collector and Prometheus examples, and `docs/observability.md`.
//!
//! Every PromQL expression is parsed (`promql-parser`) and taken apart: each metric must be one
//! the gateway exports (as the OpenTelemetry Collector's Prometheus exporters name it), each label
//! in a `{...}` matcher one that metric carries (with a known value, for the labels whose values
//! are a closed set), each label of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right` one
//! that the expression's metrics carry; an unknown function, like any syntax error, fails the
//! parse. [`EXPORTED`] is the list. It lives in `exported.rs` with
//! `exported_names_are_the_sources`, which ties it to `src/`: renaming a metric or an attribute
//! there fails that test, and the tests here then name every panel and alert using the old name.
//!
//! Whether the rules are valid and do what their unit tests say is promtool's job, not this file's:
//! `.ci/run` runs `promtool check rules` and `promtool test rules` (see docs/observability.md).

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
    path::PathBuf,
    sync::LazyLock,
};

use exported::{EXPORTED, TARGET_LABELS, known_value, series};
use promql_parser::{
    label::{MatchOp, Matcher},
    parser::{Expr, MatrixSelector, VectorSelector},
    util::{ExprVisitor, walk_expr},
};
use regex::{Captures, Regex};
use serde::Deserialize;
use serde_json::Value;

mod exported;
mod monitoring;

/// A runbook URL: an absolute base, then a page of docs/ and an anchor in it.
static RUNBOOK: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(https?://[^\s#]+)/([\w.-]+\.md)#([\w-]+)$").expect("a valid regex")
});

// ------------------------------------------------------------------------------------------------
// Files
// ------------------------------------------------------------------------------------------------

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(relative: &str) -> String {
    let path = root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml<T: serde::de::DeserializeOwned>(relative: &str) -> T {
    yaml_serde::from_str(&read(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("observability/grafana-dashboard.json"))
        .expect("observability/grafana-dashboard.json is valid JSON")
}

/// The dashboard's panels, those inside collapsed rows included.
fn panels(dashboard: &Value) -> Vec<Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        panels.push(panel);
    }
    panels
}

/// observability/alerts.yaml as these tests read it. promtool checks the rest of the format; the
/// `deny_unknown_fields` keeps the file to alerting rules with only these keys (no `record`, no
/// `keep_firing_for`).
#[derive(Debug, Deserialize)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    /// Optional for promtool; `alert_rules_are_complete` requires it.
    #[serde(rename = "for")]
    pending: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn alerts() -> RuleFile {
    yaml("observability/alerts.yaml")
}

fn rules(file: &RuleFile) -> impl Iterator<Item = &AlertRule> {
    file.groups.iter().flat_map(|group| &group.rules)
}

/// observability/alerts_test.yaml, promtool's unit tests, as far as these tests read it.
#[derive(Debug, Deserialize)]
struct RuleTests {
    rule_files: Vec<String>,
    tests: Vec<RuleTest>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RuleTest {
    name: String,
    input_series: Vec<InputSeries>,
    promql_expr_test: Vec<PromqlExprTest>,
}

#[derive(Debug, Deserialize)]
struct InputSeries {
    series: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PromqlExprTest {
    exp_samples: Vec<Sample>,
}

#[derive(Debug, Deserialize)]
struct Sample {
    labels: String,
}

/// The node at the end of `keys`, if each key on the way exists.
fn at<'a>(node: &'a yaml_serde::Value, keys: &[&str]) -> Option<&'a yaml_serde::Value> {
    keys.iter().try_fold(node, |node, key| node.get(key))
}

/// The strings of a YAML sequence (none if it is something else).
fn strings(node: Option<&yaml_serde::Value>) -> Vec<&str> {
    node.and_then(yaml_serde::Value::as_sequence)
        .map(|items| items.iter().filter_map(yaml_serde::Value::as_str).collect())
        .unwrap_or_default()
}

fn assert_none(problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{} problem(s):\n  {}",
        problems.len(),
        problems.join("\n  ")
    );
}

// ------------------------------------------------------------------------------------------------
// Grafana variables, and PromQL taken apart
// ------------------------------------------------------------------------------------------------

/// A Grafana variable: `$name`, `${name}` or `${name:format}`.
static VARIABLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\$(?:(\w+)|\{(\w+)(?::\w+)?\})").expect("a valid regex"));
/// A regex that is only an alternation of literals (`a|b|c`).
static ALTERNATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\w\-:./]*(\|[\w\-:./]*)*$").expect("a valid regex"));
/// `{{label}}` in a legend, `{{ $labels.label }}` in an annotation.
static LABEL_REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\{\{\s*(?:\$labels\.)?([A-Za-z_]\w*)\s*\}\}").expect("a valid regex")
});

/// The name in a [`VARIABLE`] match.
fn variable_name<'a>(found: &Captures<'a>) -> &'a str {
    found.get(1).or(found.get(2)).map_or("", |m| m.as_str())
}

/// The Grafana variables a text uses.
fn used_variables(text: &str) -> Vec<String> {
    VARIABLE
        .captures_iter(text)
        .map(|found| variable_name(&found).to_owned())
        .collect()
}

/// What Grafana puts in place of the variables it knows before it sends a query: a duration for
/// its interval variables, the value of a constant. Query variables stay as they are: they are
/// only used in matcher values (`job=~"$job"`), which are not checked; anywhere else they make
/// the expression fail to parse.
fn interpolate(expr: &str, constants: &BTreeMap<String, String>) -> String {
    VARIABLE
        .replace_all(expr, |found: &Captures<'_>| match variable_name(found) {
            "__interval" | "__rate_interval" | "__range" => "5m".to_owned(),
            name => constants
                .get(name)
                .cloned()
                .unwrap_or_else(|| found[0].to_owned()),
        })
        .into_owned()
}

/// The dashboard's constant variables and their values.
fn constants(dashboard: &Value) -> BTreeMap<String, String> {
    let variables = dashboard["templating"]["list"].as_array();
    variables
        .into_iter()
        .flatten()
        .filter(|v| v["type"] == "constant")
        .filter_map(|v| Some((v["name"].as_str()?.to_owned(), variable_query(v))))
        .collect()
}

/// What an expression uses.
#[derive(Debug, Default)]
struct Query {
    /// Each selector: its metric name (none for `{__name__="..."}`) and its matchers.
    selectors: Vec<(Option<String>, Vec<Matcher>)>,
    /// The labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
}

impl ExprVisitor for Query {
    type Error = Infallible;

    fn pre_visit(&mut self, expr: &Expr) -> Result<bool, Infallible> {
        match expr {
            Expr::VectorSelector(selector)
            | Expr::MatrixSelector(MatrixSelector { vs: selector, .. }) => {
                self.selectors.push(taken_apart(selector));
            }
            Expr::Aggregate(aggregate) => {
                let labels = aggregate.modifier.iter().flat_map(|m| &m.labels().labels);
                self.grouping.extend(labels.cloned());
                // walk_expr does not go into the parameter (`topk(k, ...)`).
                if let Some(parameter) = &aggregate.param {
                    walk_expr(self, parameter)?;
                }
            }
            Expr::Binary(binary) => {
                if let Some(modifier) = &binary.modifier {
                    let matching = modifier.matching.iter().map(|m| m.labels());
                    let labels = matching.chain(modifier.card.labels());
                    self.grouping
                        .extend(labels.flat_map(|l| &l.labels).cloned());
                }
            }
            _ => {}
        }
        Ok(true)
    }
}

fn taken_apart(selector: &VectorSelector) -> (Option<String>, Vec<Matcher>) {
    let matchers = &selector.matchers;
    let all = matchers
        .matchers
        .iter()
        .chain(matchers.or_matchers.iter().flatten());
    (selector.name.clone(), all.cloned().collect())
}

/// Parses `expr` and checks what it uses against [`EXPORTED`]; returns the labels its metrics carry
/// (for legends and annotations), or the problems, each prefixed with `context`.
fn check_query(context: &str, expr: &str) -> Result<BTreeSet<String>, Vec<String>> {
    let parsed = promql_parser::parser::parse(expr)
        .map_err(|e| vec![format!("{context}: {e} in `{expr}`")])?;
    let mut query = Query::default();
    let Ok(_) = walk_expr(&mut query, &parsed);
    let known = series();
    let mut problems = Vec::new();
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    for (name, matchers) in &query.selectors {
        let Some(name) = name else {
            problems.push(format!(
                "{context}: a selector without a metric name in `{expr}`"
            ));
            continue;
        };
        let Some(labels) = known.get(name) else {
            problems.push(format!(
                "{context}: `{name}` is not an exported metric (see EXPORTED in tests/observability/exported.rs)"
            ));
            continue;
        };
        available.extend(labels.iter().cloned());
        for matcher in matchers {
            if !labels.contains(&matcher.name) {
                problems.push(format!(
                    "{context}: `{name}` has no label `{}` (it has {labels:?})",
                    matcher.name
                ));
                continue;
            }
            // Literal values, and regexes that are only an alternation of literals, must be known;
            // Grafana variables and other regexes are not checked.
            if matcher.value.contains('$') {
                continue;
            }
            let values: Vec<&str> = match matcher.op {
                MatchOp::Equal | MatchOp::NotEqual => vec![matcher.value.as_str()],
                _ if ALTERNATION.is_match(&matcher.value) => matcher.value.split('|').collect(),
                _ => Vec::new(),
            };
            for value in values {
                if !known_value(&matcher.name, value) {
                    problems.push(format!(
                        "{context}: `{}{}\"{value}\"`: `{value}` is not a value `{}` takes",
                        matcher.name, matcher.op, matcher.name
                    ));
                }
            }
        }
    }
    for label in &query.grouping {
        if !available.contains(label) {
            problems.push(format!(
                "{context}: `by`/`on` label `{label}` is on none of the expression's metrics ({available:?})"
            ));
        }
    }
    if problems.is_empty() {
        Ok(available)
    } else {
        Err(problems)
    }
}

/// The `{{label}}` and `{{ $labels.label }}` references of a legend or an annotation.
fn label_references(text: &str) -> Vec<String> {
    LABEL_REFERENCE
        .captures_iter(text)
        .map(|c| c[1].to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------------

/// The dashboard imports: ids, grid positions, a Prometheus datasource variable used everywhere,
/// every target an expression, every variable defined and used.
#[test]
fn dashboard_is_importable() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    for key in ["title", "uid"] {
        if dashboard[key].as_str().is_none_or(str::is_empty) {
            problems.push(format!("no {key}"));
        }
    }
    if dashboard["uid"].as_str().is_some_and(|uid| uid.len() > 40) {
        problems.push("uid longer than 40 characters".to_owned());
    }
    match dashboard["schemaVersion"].as_u64() {
        Some(36..=41) => {}
        other => problems.push(format!("schemaVersion {other:?}, expected 36 to 41")),
    }

    let templating = dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut names = BTreeSet::new();
    for variable in &templating {
        let name = variable["name"].as_str().unwrap_or_default().to_owned();
        if name.is_empty() || !names.insert(name.clone()) {
            problems.push(format!("variable {name:?}: missing or repeated name"));
        }
    }
    let datasource = templating.iter().find(|v| v["name"] == "datasource");
    if !datasource.is_some_and(|v| v["type"] == "datasource" && v["query"] == "prometheus") {
        problems.push("no `datasource` variable of type datasource, query prometheus".to_owned());
    }
    if !templating
        .iter()
        .any(|v| v["name"] == "job" && v["type"] == "query")
    {
        problems.push("no `job` query variable".to_owned());
    }

    let panels = panels(&dashboard);
    if panels.len() < 10 {
        problems.push(format!("only {} panels", panels.len()));
    }
    let mut ids = BTreeSet::new();
    let mut boxes: Vec<(u64, [u64; 4])> = Vec::new();
    let mut used = BTreeSet::new();
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        let Some(id) = panel["id"].as_u64() else {
            problems.push(format!("panel {title:?}: no numeric id"));
            continue;
        };
        if !ids.insert(id) {
            problems.push(format!("panel {title:?}: id {id} repeated"));
        }
        let grid = &panel["gridPos"];
        let dims: Option<Vec<u64>> = ["h", "w", "x", "y"]
            .iter()
            .map(|k| grid[*k].as_u64())
            .collect();
        let Some(&[h, w, x, y]) = dims.as_deref() else {
            problems.push(format!("panel {title:?}: gridPos needs integer h, w, x, y"));
            continue;
        };
        if h == 0 || w == 0 || x + w > 24 {
            problems.push(format!(
                "panel {title:?}: gridPos {grid} outside the 24 columns"
            ));
        }
        for (other, [oh, ow, ox, oy]) in &boxes {
            if x < ox + ow && *ox < x + w && y < oy + oh && *oy < y + h {
                problems.push(format!("panel {title:?} overlaps panel {other}"));
            }
        }
        boxes.push((id, [h, w, x, y]));
        if panel["type"] == "row" {
            continue;
        }
        if panel["type"].as_str().is_none_or(str::is_empty) {
            problems.push(format!("panel {title:?}: no type"));
        }
        if panel["datasource"]["uid"] != "${datasource}" {
            problems.push(format!(
                "panel {title:?}: datasource is not ${{datasource}}"
            ));
        }
        let targets = panel["targets"].as_array().cloned().unwrap_or_default();
        if targets.is_empty() {
            problems.push(format!("panel {title:?}: no targets"));
        }
        let mut refs = BTreeSet::new();
        for target in &targets {
            let expr = target["expr"].as_str().unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("panel {title:?}: a target without expr"));
            }
            used.extend(used_variables(expr));
            let reference = target["refId"].as_str().unwrap_or_default();
            if reference.is_empty() || !refs.insert(reference.to_owned()) {
                problems.push(format!(
                    "panel {title:?}: refId {reference:?} missing or repeated"
                ));
            }
            if !target["datasource"].is_null() && target["datasource"]["uid"] != "${datasource}" {
                problems.push(format!(
                    "panel {title:?}: target {reference} has another datasource"
                ));
            }
        }
    }
    for variable in &templating {
        used.extend(used_variables(&variable_query(variable)));
    }
    for name in &used {
        if !names.contains(name) && !name.starts_with("__") {
            problems.push(format!("${name} is used but not defined"));
        }
    }
    for name in &names {
        if name != "datasource" && !used.contains(name) {
            problems.push(format!("variable {name} is defined but not used"));
        }
    }
    assert_none(&problems);
}

/// A query variable's query (`query` as a string, or Grafana 10's `{ "query": ... }`).
fn variable_query(variable: &Value) -> String {
    variable["query"]
        .as_str()
        .or_else(|| variable["query"]["query"].as_str())
        .or_else(|| variable["definition"].as_str())
        .unwrap_or_default()
        .to_owned()
}

/// Every panel query, variable query and legend of the dashboard uses exported metrics and labels.
#[test]
fn dashboard_queries_use_exported_metrics_and_labels() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let mut checked = 0;
    let constants = constants(&dashboard);
    for panel in &panels(&dashboard) {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let context = format!("panel {title:?} {}", target["refId"]);
            checked += 1;
            match check_query(&context, &interpolate(expr, &constants)) {
                Ok(labels) => {
                    let legend = target["legendFormat"].as_str().unwrap_or_default();
                    for label in label_references(legend) {
                        if !labels.contains(&label) {
                            problems.push(format!(
                                "{context}: the legend names `{label}`, which the query's metrics do not carry"
                            ));
                        }
                    }
                }
                Err(found) => problems.extend(found),
            }
        }
    }
    // label_values(selector, label)
    let label_values = Regex::new(r"^label_values\((.*),\s*(\w+)\s*\)$").expect("a valid regex");
    for variable in dashboard["templating"]["list"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if variable["type"] != "query" {
            continue;
        }
        let query = variable_query(&variable);
        let context = format!("variable {}", variable["name"]);
        let Some(parts) = label_values.captures(&query) else {
            problems.push(format!(
                "{context}: expected label_values(selector, label), found {query:?}"
            ));
            continue;
        };
        checked += 1;
        match check_query(&context, &parts[1]) {
            Ok(labels) if !labels.contains(&parts[2]) => problems.push(format!(
                "{context}: `{}` is not a label of `{}`",
                &parts[2], &parts[1]
            )),
            Ok(_) => {}
            Err(found) => problems.extend(found),
        }
    }
    assert!(checked > 20, "only {checked} queries found");
    assert_none(&problems);
}

/// The alerting rules are complete: each has a `for:`, labels.severity and the runbook
/// annotations, and a CognitoGateway name of its own. (promtool checks that they are valid.)
#[test]
fn alert_rules_are_complete() {
    let alerts = alerts();
    let alert_name = Regex::new(r"^CognitoGateway[A-Z][A-Za-z]+$").expect("a valid regex");
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let mut bases = BTreeSet::new();
    for group in &alerts.groups {
        if group.rules.is_empty() {
            problems.push(format!("group {}: no rules", group.name));
        }
    }
    for rule in rules(&alerts) {
        let context = format!("alert {:?}", rule.alert);
        if !alert_name.is_match(&rule.alert) {
            problems.push(format!("{context}: not named CognitoGateway<Something>"));
        }
        if !names.insert(rule.alert.as_str()) {
            problems.push(format!("{context}: repeated"));
        }
        if rule.pending.is_none() {
            problems.push(format!("{context}: no `for:` duration"));
        }
        let severity = rule.labels.get("severity").map_or("", String::as_str);
        if !["critical", "warning", "info"].contains(&severity) {
            problems.push(format!(
                "{context}: labels.severity {severity:?} is not critical, warning or info"
            ));
        }
        for key in ["summary", "description", "runbook_url"] {
            if rule.annotations.get(key).is_none_or(String::is_empty) {
                problems.push(format!("{context}: no annotations.{key}"));
            }
        }
        if let Some(url) = rule.annotations.get("runbook_url") {
            match RUNBOOK.captures(url) {
                Some(parts) => {
                    bases.insert(parts[1].to_owned());
                    if !anchors(&parts[2]).contains(&parts[3]) {
                        problems.push(format!(
                            "{context}: runbook_url {url}: docs/{} has no heading #{}",
                            &parts[2], &parts[3]
                        ));
                    }
                }
                None => problems.push(format!(
                    "{context}: runbook_url {url} is not an absolute <base>/<page>.md#<anchor>"
                )),
            }
        }
    }
    // One base for all, which render.py --runbook-base-url changes.
    if bases.len() > 1 {
        problems.push(format!("runbook_url bases differ: {bases:?}"));
    }
    if names.len() < 6 {
        problems.push(format!("only {} alerts", names.len()));
    }
    assert_none(&problems);
}

/// The anchors of a page of docs/: its headings as GitHub and GitLab slug them.
fn anchors(page: &str) -> BTreeSet<String> {
    read(&format!("docs/{page}"))
        .lines()
        .filter_map(|line| line.strip_prefix('#'))
        .map(|heading| {
            heading
                .trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
                .map(|c| if c == ' ' { '-' } else { c })
                .collect()
        })
        .collect()
}

/// Every alert expression, and every label its annotations name, is the gateway's.
#[test]
fn alert_queries_use_exported_metrics_and_labels() {
    let alerts = alerts();
    let mut problems = Vec::new();
    let mut checked = 0;
    for rule in rules(&alerts) {
        let context = format!("alert {}", rule.alert);
        checked += 1;
        match check_query(&context, &rule.expr) {
            Ok(labels) => {
                for (key, text) in &rule.annotations {
                    for label in label_references(text) {
                        if !labels.contains(&label) {
                            problems.push(format!(
                                "{context}: annotations.{key} names label `{label}`, which the expression's metrics do not carry"
                            ));
                        }
                    }
                }
            }
            Err(found) => problems.extend(found),
        }
    }
    assert!(checked > 5, "only {checked} alert expressions found");
    assert_none(&problems);
}

/// observability/alerts_test.yaml (promtool's unit tests) loads alerts.yaml, makes its series from
/// exported metrics with their real labels, and shows every alert firing. (promtool runs them.)
#[test]
fn alert_unit_tests_cover_every_alert() {
    let tests: RuleTests = yaml("observability/alerts_test.yaml");
    let alerts = alerts();
    let defined: BTreeSet<&str> = rules(&alerts).map(|r| r.alert.as_str()).collect();
    let mut problems = Vec::new();
    if tests.rule_files != ["alerts.yaml"] {
        problems.push(format!(
            "rule_files is {:?}, expected [alerts.yaml]",
            tests.rule_files
        ));
    }
    let known = series();
    let mut fired = BTreeSet::new();
    for test in &tests.tests {
        for input in &test.input_series {
            let context = format!("test {:?}, series {}", test.name, input.series);
            let parsed = promql_parser::parser::parse(&input.series);
            let Ok(Expr::VectorSelector(selector)) = &parsed else {
                problems.push(format!("{context}: not one selector: {parsed:?}"));
                continue;
            };
            let (name, matchers) = taken_apart(selector);
            let Some(labels) = name.as_ref().and_then(|name| known.get(name)) else {
                problems.push(format!("{context}: {name:?} is not an exported metric"));
                continue;
            };
            // A series carries all its labels (bar `instance`, which needs service.instance.id),
            // each once, with a known value.
            let given: BTreeSet<&str> = matchers.iter().map(|m| m.name.as_str()).collect();
            // `error_type` only on failures, `limit` only on RATE_LIMITED.
            let optional = |label: &str| {
                label == "instance"
                    || label == "error_type"
                    || (name.as_deref() == Some("cognito_gateway_rejections_total")
                        && label == "limit")
            };
            let missing: Vec<&String> = labels
                .iter()
                .filter(|l| !optional(l) && !given.contains(l.as_str()))
                .collect();
            if !missing.is_empty() {
                problems.push(format!("{context}: missing labels {missing:?}"));
            }
            for matcher in &matchers {
                if matcher.op != MatchOp::Equal || !labels.contains(&matcher.name) {
                    problems.push(format!("{context}: label `{}`", matcher.name));
                } else if !known_value(&matcher.name, &matcher.value) {
                    problems.push(format!(
                        "{context}: `{}` is not a value of `{}`",
                        matcher.value, matcher.name
                    ));
                }
            }
        }
        for sample in test.promql_expr_test.iter().flat_map(|c| &c.exp_samples) {
            let Ok(Expr::VectorSelector(selector)) = promql_parser::parser::parse(&sample.labels)
            else {
                problems.push(format!("test {:?}: labels {:?}", test.name, sample.labels));
                continue;
            };
            let label = |name| selector.matchers.find_matchers(name).pop().map(|m| m.value);
            let Some(name) = label("alertname") else {
                continue;
            };
            if !defined.contains(name.as_str()) {
                problems.push(format!("test {:?}: no alert named {name}", test.name));
            }
            if label("alertstate").is_some_and(|state| state == "firing") {
                fired.insert(name);
            }
        }
    }
    for name in &defined {
        if !fired.contains(*name) {
            problems.push(format!("alert {name}: no test shows it firing"));
        }
    }
    assert_none(&problems);
}

/// The collector example receives OTLP and feeds both pipelines to exporters it defines; the
/// Prometheus example loads the rules and keeps the collector's `job` and `instance`.
#[test]
fn collector_and_prometheus_examples_are_wired() {
    let collector: yaml_serde::Value = yaml("observability/otel-collector.yaml");
    let mut problems = Vec::new();
    if at(&collector, &["receivers", "otlp", "protocols", "grpc"]).is_none() {
        problems.push("collector: no otlp receiver with gRPC".to_owned());
    }
    for exporter in ["prometheus", "prometheusremotewrite"] {
        if at(&collector, &["exporters", exporter]).is_none() {
            problems.push(format!("collector: no {exporter} exporter"));
        }
    }
    for pipeline in ["metrics", "traces"] {
        let Some(definition) = at(&collector, &["service", "pipelines", pipeline]) else {
            problems.push(format!("collector: no {pipeline} pipeline"));
            continue;
        };
        for kind in ["receivers", "processors", "exporters"] {
            let components = strings(definition.get(kind));
            if components.is_empty() && kind != "processors" {
                problems.push(format!("collector: {pipeline} pipeline has no {kind}"));
            }
            for component in components {
                if at(&collector, &[kind, component]).is_none() {
                    problems.push(format!(
                        "collector: {pipeline} pipeline uses {component}, not defined in {kind}"
                    ));
                }
            }
        }
    }
    let metrics_exporters = strings(at(
        &collector,
        &["service", "pipelines", "metrics", "exporters"],
    ));
    if !metrics_exporters
        .iter()
        .any(|e| e.starts_with("prometheus"))
    {
        problems.push("collector: metrics go to no Prometheus exporter".to_owned());
    }

    let prometheus: yaml_serde::Value = yaml("observability/prometheus.yml");
    if !strings(prometheus.get("rule_files")).contains(&"alerts.yaml") {
        problems.push("prometheus.yml: alerts.yaml is not in rule_files".to_owned());
    }
    let scrapes = prometheus
        .get("scrape_configs")
        .and_then(yaml_serde::Value::as_sequence);
    if !scrapes
        .into_iter()
        .flatten()
        .any(|s| s["honor_labels"].as_bool() == Some(true))
    {
        problems.push("prometheus.yml: no scrape with honor_labels: true".to_owned());
    }
    assert_none(&problems);
}

/// docs/observability.md describes every metric (both names), every alert, every OTEL_ variable
/// src/telemetry.rs reads, and links only to files that exist under observability/.
#[test]
fn docs_describe_every_metric_and_alert() {
    let docs = read("docs/observability.md");
    let mut problems = Vec::new();
    for metric in EXPORTED {
        for name in [metric.otel, metric.prometheus] {
            if !docs.contains(&format!("`{name}")) {
                problems.push(format!("metric {name} is not in the docs"));
            }
        }
    }
    for rule in rules(&alerts()) {
        if !docs.contains(&rule.alert) {
            problems.push(format!("alert {} is not in the docs", rule.alert));
        }
    }
    let telemetry = read("src/telemetry.rs");
    let variable = Regex::new(r"OTEL_[A-Z_]*[A-Z]").expect("a valid regex");
    for found in variable.find_iter(&telemetry) {
        if !docs.contains(found.as_str()) {
            problems.push(format!("{} is not in the docs", found.as_str()));
        }
    }
    let link = Regex::new(r"\]\((\.\./observability/[^)#\s]+)").expect("a valid regex");
    for found in link.captures_iter(&docs) {
        if !root().join("docs").join(&found[1]).exists() {
            problems.push(format!(
                "the docs link to {}, which does not exist",
                &found[1]
            ));
        }
    }
    assert_none(&problems);
}

/// The checks above catch typos: each of these expressions must be refused, and a correct one
/// accepted.
#[test]
fn promql_checks_catch_typos() {
    let good = r#"sum by (job, rpc_method) (rate(rpc_server_call_duration_seconds_count{job=~"$job", rpc_response_status_code=~"UNKNOWN|DEADLINE_EXCEEDED|INTERNAL"}[$__rate_interval])) / ignoring (instance) vector($backend_rps) and on (job) cognito_gateway_callers offset 1h > 0"#;
    let constants = BTreeMap::from([("backend_rps".to_owned(), "5".to_owned())]);
    assert_eq!(
        check_query("good", &interpolate(good, &constants)).map(|_| ()),
        Ok(())
    );
    let bad = [
        // A misspelled metric.
        r#"sum(rate(rpc_server_call_duration_second_count[5m]))"#,
        // An OTel name, not the Prometheus one; the names before semantic conventions v1.39.
        r#"rpc.server.call.duration"#,
        r#"rpc_server_duration_milliseconds_count"#,
        r#"rpc_server_call_duration_seconds_count{rpc_grpc_status_code="0"}"#,
        // A method that is not fully qualified.
        r#"rpc_server_call_duration_seconds_count{rpc_method="ResetUserPassword"}"#,
        // A counter without _total.
        r#"rate(cognito_gateway_rejections[5m])"#,
        // A label the metric does not have (it is on the server metric, not the client one).
        r#"rpc_client_call_duration_seconds_count{rpc_response_status_code="OK"}"#,
        // A misspelled label.
        r#"rpc_server_call_duration_seconds_count{rpc_status_code="OK"}"#,
        // `le` off the buckets.
        r#"rpc_server_call_duration_seconds_count{le="0.1"}"#,
        // A `by`, `without` or `group_left` label none of the metrics carries.
        r#"sum by (reason) (rate(rpc_server_call_duration_seconds_count[5m]))"#,
        r#"sum without (cognito_gateway_calller) (cognito_gateway_in_flight)"#,
        r#"cognito_gateway_in_flight * on (job) group_left (settings) cognito_gateway_limit"#,
        // Misspelled values.
        r#"cognito_gateway_rejections_total{reason="RATE_LIMITD"}"#,
        r#"cognito_gateway_rejections_total{limit="backnd"}"#,
        r#"rpc_client_call_duration_seconds_count{error_type=~"TooManyRequestException|LimitExceededException"}"#,
        // A misspelled metric in the parameter of an aggregation.
        r#"topk(scalar(cognito_gateway_calers), cognito_gateway_in_flight)"#,
        // A misspelled function, unbalanced parentheses, a selector without a name.
        r#"hisogram_quantile(0.99, rpc_server_call_duration_seconds_bucket)"#,
        r#"sum(rate(cognito_gateway_deduplicated_total[5m])"#,
        r#"{__name__="cognito_gateway_callers"}"#,
        // Not a range.
        r#"rate(cognito_gateway_deduplicated_total[5 minutes])"#,
        // A Grafana variable that is neither an interval nor a constant, outside a matcher.
        r#"vector($backend_rps)"#,
    ];
    for expr in bad {
        assert!(check_query("bad", expr).is_err(), "accepted a typo: {expr}");
    }
}
