//! The observability assets against what the gateway exports: the Grafana dashboard
//! (`observability/grafana-dashboard.json`), the Prometheus alerting rules
//! (`observability/alerts.yaml`) and their promtool unit tests (`observability/alerts_test.yaml`),
//! the collector and Prometheus examples, and `docs/observability.md`.
//!
//! Every PromQL expression is taken apart: each metric must be one the gateway exports (as the
//! OpenTelemetry Collector's Prometheus exporters name it), each label in a `{...}` matcher one that
//! metric carries (with a known value, for the labels whose values are a closed set), each label of
//! `by`/`without`/`on`/`ignoring` one that the expression's metrics carry, each function a PromQL one.
//! [`EXPORTED`] is the list; `exported_names_are_the_sources` ties it to `src/`, so that renaming a
//! metric or an attribute there fails here, and the other tests then name every panel and alert still
//! using the old name.
//!
//! Plain text parsing only: `serde_json` for the dashboard, a reader for the small YAML subset the
//! rule files use. promtool checks more where it is installed (`promtool check rules`, `promtool test
//! rules observability/alerts_test.yaml`; see docs/observability.md), but nothing here needs it.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::LazyLock,
};

use regex::Regex;
use serde_json::Value;

// ------------------------------------------------------------------------------------------------
// What the gateway exports
// ------------------------------------------------------------------------------------------------

/// An OpenTelemetry instrument kind, which decides the Prometheus suffixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `_bucket`, `_sum`, `_count` series; `le` on the buckets.
    Histogram,
    /// Monotonic: `_total`.
    Counter,
    /// Not monotonic: a Prometheus gauge, no `_total`.
    UpDownCounter,
    Gauge,
}

/// One exported metric.
#[derive(Debug)]
struct Metric {
    /// The instrument's name in `src/`.
    otel: &'static str,
    /// Its unit (`.with_unit`), `""` for none.
    unit: &'static str,
    kind: Kind,
    /// Its attribute keys; the labels are these with dots turned into underscores.
    attributes: &'static [&'static str],
    /// The Prometheus name (for a histogram, without the `_bucket`/`_sum`/`_count` suffix).
    prometheus: &'static str,
}

/// THE list of what the gateway exports, and under which names Prometheus sees it after the
/// OpenTelemetry Collector's `prometheus` or `prometheusremotewrite` exporter with default settings
/// (dots to underscores, unit suffix, `_total` on monotonic counters; `service.name` becomes `job`,
/// `service.instance.id` `instance`).
///
/// The instruments are in src/metrics.rs (`Metrics`, `cognito_attributes`, `observe_callers`) and
/// src/telemetry.rs (`register_process_metrics`); the attributes of `rpc.server.duration` in
/// src/middleware/trace.rs, those of `cognito_gateway.rejections` in src/status.rs
/// (`rejection_attributes`). `exported_names_are_the_sources` checks each entry against them.
const EXPORTED: &[Metric] = &[
    Metric {
        otel: "rpc.server.duration",
        unit: "ms",
        kind: Kind::Histogram,
        attributes: &[
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "rpc.grpc.status_code",
            "cognito_gateway.caller",
        ],
        prometheus: "rpc_server_duration_milliseconds",
    },
    Metric {
        otel: "rpc.client.duration",
        unit: "ms",
        kind: Kind::Histogram,
        attributes: &[
            "rpc.system",
            "rpc.service",
            "rpc.method",
            "aws.exception",
            "cloud.region",
        ],
        prometheus: "rpc_client_duration_milliseconds",
    },
    Metric {
        otel: "cognito_gateway.rejections",
        unit: "",
        kind: Kind::Counter,
        attributes: &["reason", "limit"],
        prometheus: "cognito_gateway_rejections_total",
    },
    Metric {
        otel: "cognito_gateway.deduplicated",
        unit: "",
        kind: Kind::Counter,
        attributes: &[],
        prometheus: "cognito_gateway_deduplicated_total",
    },
    Metric {
        otel: "cognito_gateway.in_flight",
        unit: "",
        kind: Kind::UpDownCounter,
        attributes: &[],
        prometheus: "cognito_gateway_in_flight",
    },
    Metric {
        otel: "cognito_gateway.callers",
        unit: "",
        kind: Kind::Gauge,
        attributes: &[],
        prometheus: "cognito_gateway_callers",
    },
    Metric {
        otel: "cognito_gateway.limit",
        unit: "",
        kind: Kind::Gauge,
        attributes: &["setting"],
        prometheus: "cognito_gateway_limit",
    },
    Metric {
        otel: "process.memory.usage",
        unit: "By",
        kind: Kind::Gauge,
        attributes: &[],
        prometheus: "process_memory_usage_bytes",
    },
    Metric {
        otel: "process.cpu.time",
        unit: "s",
        kind: Kind::Counter,
        attributes: &["cpu.mode"],
        prometheus: "process_cpu_time_seconds_total",
    },
];

/// Labels every series has: from the resource (`service.name`, `service.instance.id`) or the scrape.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// Prometheus's own metrics the dashboard and alerts may use besides [`EXPORTED`]. None: `up` would
/// describe Prometheus's scrape of the collector, not the gateway (the alerts use the absence of
/// `cognito_gateway_callers` instead).
const PROMETHEUS_BUILTINS: &[&str] = &[];

/// The values a matcher may name, for the labels whose values are a closed set; a literal outside
/// them is a typo. `limit` is checked in [`known_value`] (`backend` or `caller:<name>`).
const LABEL_VALUES: &[(&str, &[&str])] = &[
    // src/status.rs, `rejection_attributes` (the rows' reasons).
    (
        "reason",
        &[
            "UNAUTHENTICATED",
            "CALLER_NOT_ALLOWED",
            "RATE_LIMITED",
            "OVERLOADED",
        ],
    ),
    // `""` on success; else the Cognito exception name (src/status.rs, `cognito_row` and
    // `CREDENTIAL_CODES`) or the gateway's name for a failure on the way (src/cognito.rs,
    // `record_cognito_call`).
    (
        "aws_exception",
        &[
            "",
            "InvalidParameterException",
            "ResourceNotFoundException",
            "UserNotFoundException",
            "NotAuthorizedException",
            "TooManyRequestsException",
            "LimitExceededException",
            "UserLambdaValidationException",
            "UnexpectedLambdaException",
            "InvalidLambdaResponseException",
            "InvalidSmsRoleAccessPolicyException",
            "InvalidSmsRoleTrustRelationshipException",
            "InvalidEmailRoleAccessPolicyException",
            "OperationNotEnabledException",
            "InternalErrorException",
            "AccessDeniedException",
            "AccessDenied",
            "ExpiredTokenException",
            "ExpiredToken",
            "IncompleteSignature",
            "IncompleteSignatureException",
            "InvalidClientTokenId",
            "InvalidSignatureException",
            "MissingAuthenticationToken",
            "MissingAuthenticationTokenException",
            "RequestExpired",
            "SignatureDoesNotMatch",
            "UnrecognizedClientException",
            "Timeout",
            "Unreachable",
            "ConnectionLost",
            "RegionNotAllowed",
            "Misconfigured",
            "BadResponse",
            "_OTHER",
        ],
    ),
    ("rpc_system", &["grpc", "aws-api"]),
    // Cognito's, and this server's (src/middleware/trace.rs, `KNOWN_METHODS`; `_OTHER` for any
    // other path).
    (
        "rpc_service",
        &[
            "CognitoIdentityProvider",
            "cognitogateway.v1.UserAdminService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "_OTHER",
        ],
    ),
    // The API's method (proto/), health's and reflection's, and Cognito's.
    (
        "rpc_method",
        &[
            "ResetUserPassword",
            "Check",
            "Watch",
            "ServerReflectionInfo",
            "AdminResetUserPassword",
            "_OTHER",
        ],
    ),
    (
        "rpc_grpc_status_code",
        &[
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ],
    ),
    ("cpu_mode", &["user", "system"]),
    // src/metrics.rs, `observe_limits`.
    (
        "setting",
        &[
            "backend_rps",
            "backend_burst",
            "pool_rps",
            "max_in_flight",
            "max_in_flight_per_caller",
            "user_cooldown_secs",
        ],
    ),
];

/// Where the runbook for every alert lives.
const RUNBOOK: &str = "docs/operations.md#troubleshooting";

fn label_of(attribute: &str) -> String {
    attribute.replace('.', "_")
}

/// The series names a metric appears as, each with its labels.
fn series() -> BTreeMap<String, BTreeSet<String>> {
    let mut all = BTreeMap::new();
    for metric in EXPORTED {
        let mut labels: BTreeSet<String> = metric.attributes.iter().map(|a| label_of(a)).collect();
        labels.extend(TARGET_LABELS.iter().map(|l| (*l).to_owned()));
        if metric.kind == Kind::Histogram {
            let mut bucket = labels.clone();
            bucket.insert("le".to_owned());
            all.insert(format!("{}_bucket", metric.prometheus), bucket);
            all.insert(format!("{}_sum", metric.prometheus), labels.clone());
            all.insert(format!("{}_count", metric.prometheus), labels);
        } else {
            all.insert(metric.prometheus.to_owned(), labels);
        }
    }
    for builtin in PROMETHEUS_BUILTINS {
        all.insert(
            (*builtin).to_owned(),
            TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect(),
        );
    }
    all
}

/// Whether `value` is one a matcher on `label` may name literally.
fn known_value(label: &str, value: &str) -> bool {
    if label == "limit" {
        return value == "backend" || value == "pool" || value.starts_with("caller:");
    }
    match LABEL_VALUES.iter().find(|(l, _)| *l == label) {
        Some((_, values)) => values.contains(&value),
        None => true,
    }
}

/// The name the collector's Prometheus exporters give an instrument by default.
fn prometheus_name(metric: &Metric) -> String {
    let mut name = label_of(metric.otel);
    let unit = match metric.unit {
        "" => "",
        "ms" => "milliseconds",
        "s" => "seconds",
        "By" => "bytes",
        other => panic!("{}: unit {other:?} has no suffix here", metric.otel),
    };
    if !unit.is_empty() && !name.ends_with(unit) {
        name.push('_');
        name.push_str(unit);
    }
    if metric.kind == Kind::Counter {
        name.push_str("_total");
    }
    name
}

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

/// Every `.rs` file under `dir`, concatenated.
fn sources(dir: &Path) -> String {
    let mut all = String::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            all.push_str(&sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            all.push_str(&std::fs::read_to_string(&path).unwrap_or_default());
            all.push('\n');
        }
    }
    all
}

fn dashboard() -> Value {
    serde_json::from_str(&read("observability/grafana-dashboard.json"))
        .expect("observability/grafana-dashboard.json is valid JSON")
}

fn alerts() -> Yaml {
    parse_yaml(&read("observability/alerts.yaml")).expect("observability/alerts.yaml parses")
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
// PromQL, taken apart
// ------------------------------------------------------------------------------------------------

/// PromQL's functions.
const FUNCTIONS: &[&str] = &[
    "abs",
    "absent",
    "absent_over_time",
    "avg_over_time",
    "ceil",
    "changes",
    "clamp",
    "clamp_max",
    "clamp_min",
    "count_over_time",
    "day_of_month",
    "day_of_week",
    "day_of_year",
    "days_in_month",
    "delta",
    "deriv",
    "end",
    "exp",
    "floor",
    "histogram_quantile",
    "holt_winters",
    "hour",
    "idelta",
    "increase",
    "irate",
    "label_join",
    "label_replace",
    "last_over_time",
    "ln",
    "log10",
    "log2",
    "max_over_time",
    "min_over_time",
    "minute",
    "month",
    "predict_linear",
    "present_over_time",
    "quantile_over_time",
    "rate",
    "resets",
    "round",
    "scalar",
    "sgn",
    "sort",
    "sort_desc",
    "sqrt",
    "start",
    "stddev_over_time",
    "stdvar_over_time",
    "sum_over_time",
    "time",
    "timestamp",
    "vector",
    "year",
];

/// PromQL's aggregation operators (`sum by (x) (...)` as well as `sum(...) by (x)`).
const AGGREGATORS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
];

/// Keywords followed by a label list.
const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Other keywords.
const KEYWORDS: &[&str] = &["and", "or", "unless", "bool", "offset", "inf", "nan"];

#[derive(Debug, Clone, PartialEq, Eq)]
struct Matcher {
    label: String,
    op: &'static str,
    value: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    Variable,
    Str,
    Number,
    Range,
    Matchers(Vec<Matcher>),
    Open,
    Close,
    Comma,
    Operator,
}

fn read_string(chars: &[char], i: &mut usize) -> Result<String, String> {
    let quote = chars[*i];
    *i += 1;
    let mut out = String::new();
    while let Some(&c) = chars.get(*i) {
        *i += 1;
        if c == quote {
            return Ok(out);
        }
        if c == '\\' && quote != '`' {
            match chars.get(*i) {
                Some(&escaped) => {
                    *i += 1;
                    if escaped != quote && escaped != '\\' {
                        out.push('\\');
                    }
                    out.push(escaped);
                }
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".to_owned())
}

fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == ':'
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == ':'
}

fn read_ident(chars: &[char], i: &mut usize) -> String {
    let start = *i;
    while chars.get(*i).copied().is_some_and(is_ident) {
        *i += 1;
    }
    chars[start..*i].iter().collect()
}

fn skip_spaces(chars: &[char], i: &mut usize) {
    while chars.get(*i).is_some_and(|c| c.is_whitespace()) {
        *i += 1;
    }
}

fn read_matchers(chars: &[char], i: &mut usize) -> Result<Vec<Matcher>, String> {
    *i += 1; // {
    let mut matchers = Vec::new();
    loop {
        skip_spaces(chars, i);
        match chars.get(*i) {
            Some('}') => {
                *i += 1;
                return Ok(matchers);
            }
            Some(&c) if is_ident_start(c) => {}
            other => return Err(format!("expected a label name in {{...}}, found {other:?}")),
        }
        let label = read_ident(chars, i);
        skip_spaces(chars, i);
        let rest: String = chars[*i..chars.len().min(*i + 2)].iter().collect();
        let op = if rest.starts_with("=~") {
            "=~"
        } else if rest.starts_with("!~") {
            "!~"
        } else if rest.starts_with("!=") {
            "!="
        } else if rest.starts_with('=') {
            "="
        } else {
            return Err(format!("expected a matcher operator after `{label}`"));
        };
        *i += op.len();
        skip_spaces(chars, i);
        if !matches!(chars.get(*i), Some('"' | '\'' | '`')) {
            return Err(format!("expected a quoted value after `{label}{op}`"));
        }
        let value = read_string(chars, i)?;
        matchers.push(Matcher { label, op, value });
        skip_spaces(chars, i);
        match chars.get(*i) {
            Some(',') => *i += 1,
            Some('}') => {}
            other => return Err(format!("expected `,` or `}}` in {{...}}, found {other:?}")),
        }
    }
}

/// A duration, as in a range or after `offset`.
static DURATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+(ms|[smhdwy]))+$").expect("regex"));
/// A whole Grafana variable (`$name`, `${name}`, `${name:format}`).
static VARIABLE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^\$(\w+|\{\w+(:\w+)?\})$").expect("regex"));
/// The Grafana variables in a text.
static VARIABLES: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\$\{?(\w+)").expect("regex"));
/// A regex that is only an alternation of literals (`a|b|c`).
static ALTERNATION: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[\w\-:]*(\|[\w\-:]*)*$").expect("regex"));
/// `{{label}}` in a legend, `{{ $labels.label }}` in an annotation.
static LABEL_REFERENCE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\{\{\s*(?:\$labels\.)?([A-Za-z_]\w*)\s*\}\}").expect("regex"));
/// A unit in an instrument's builder chain.
static WITH_UNIT: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"\.with_unit\(\s*"([^"]*)"\s*\)"#).expect("regex"));
/// The alert a promtool expectation names.
static ALERTNAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r#"alertname="(\w+)""#).expect("regex"));

fn tokenize(expr: &str) -> Result<Vec<Token>, String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        match c {
            _ if c.is_whitespace() => i += 1,
            '#' => {
                while chars.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
            }
            '"' | '\'' | '`' => {
                read_string(&chars, &mut i)?;
                tokens.push(Token::Str);
            }
            '{' => tokens.push(Token::Matchers(read_matchers(&chars, &mut i)?)),
            '[' => {
                let end = chars[i..]
                    .iter()
                    .position(|&c| c == ']')
                    .ok_or("unterminated [")?;
                let inside: String = chars[i + 1..i + end].iter().collect();
                // `[5m]`, `[$__rate_interval]`, a subquery's `[1h:1m]` or `[1h:]`.
                let subquery = inside.contains(':');
                for part in inside.split(':').map(str::trim) {
                    let valid = DURATION.is_match(part)
                        || VARIABLE.is_match(part)
                        || (subquery && part.is_empty());
                    if !valid {
                        return Err(format!("`[{inside}]` is not a range"));
                    }
                }
                i += end + 1;
                tokens.push(Token::Range);
            }
            '(' => {
                i += 1;
                tokens.push(Token::Open);
            }
            ')' => {
                i += 1;
                tokens.push(Token::Close);
            }
            ',' => {
                i += 1;
                tokens.push(Token::Comma);
            }
            '$' => {
                i += 1;
                if chars.get(i) == Some(&'{') {
                    let end = chars[i..]
                        .iter()
                        .position(|&c| c == '}')
                        .ok_or("unterminated ${")?;
                    i += end + 1;
                } else {
                    read_ident(&chars, &mut i);
                }
                tokens.push(Token::Variable);
            }
            _ if c.is_ascii_digit()
                || (c == '.' && chars.get(i + 1).is_some_and(char::is_ascii_digit)) =>
            {
                // Numbers, `1e-3`, durations (`offset 1h`).
                while let Some(&d) = chars.get(i) {
                    let exponent_sign = (d == '-' || d == '+')
                        && matches!(chars.get(i.wrapping_sub(1)), Some('e' | 'E'));
                    if d.is_ascii_alphanumeric() || d == '.' || exponent_sign {
                        i += 1;
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Number);
            }
            _ if is_ident_start(c) => tokens.push(Token::Ident(read_ident(&chars, &mut i))),
            _ => {
                let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
                if ["==", "!=", ">=", "<="].contains(&two.as_str()) {
                    i += 2;
                } else if "+-*/%^<>@".contains(c) {
                    i += 1;
                } else {
                    return Err(format!("unexpected `{c}`"));
                }
                tokens.push(Token::Operator);
            }
        }
    }
    Ok(tokens)
}

/// What an expression uses.
#[derive(Debug, Default)]
struct Query {
    /// Each metric selector: the name and its matchers.
    selectors: Vec<(String, Vec<Matcher>)>,
    /// The labels of `by`, `without`, `on`, `ignoring`, `group_left`, `group_right`.
    grouping: Vec<String>,
}

/// Takes `expr` apart: metrics, matchers, grouping labels. Unknown functions, selectors without a
/// metric name and unbalanced parentheses are errors.
fn parse_query(expr: &str) -> Result<Query, String> {
    let tokens = tokenize(expr)?;
    let mut query = Query::default();
    let mut depth = 0_i32;
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        let next = tokens.get(i + 1);
        match token {
            Token::Open => depth += 1,
            Token::Close => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced `)`".to_owned());
                }
            }
            Token::Matchers(_) => return Err("a `{...}` selector without a metric name".to_owned()),
            Token::Ident(word) if GROUPING.contains(&word.as_str()) => {
                if next == Some(&Token::Open) {
                    let mut j = i + 2;
                    loop {
                        match tokens.get(j) {
                            Some(Token::Ident(label)) => query.grouping.push(label.clone()),
                            Some(Token::Comma) => {}
                            Some(Token::Close) => break,
                            other => {
                                return Err(format!("unexpected {other:?} in `{word} (...)`"));
                            }
                        }
                        j += 1;
                    }
                    i = j;
                } else if word != "group_left" && word != "group_right" {
                    return Err(format!("`{word}` without a label list"));
                }
            }
            Token::Ident(word) if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) => {}
            Token::Ident(word) if AGGREGATORS.contains(&word.as_str()) => {
                let grouped = matches!(next, Some(Token::Ident(w)) if w == "by" || w == "without");
                if next != Some(&Token::Open) && !grouped {
                    return Err(format!("aggregation `{word}` without `(`"));
                }
            }
            Token::Ident(word) if FUNCTIONS.contains(&word.as_str()) => {
                (next == Some(&Token::Open))
                    .then_some(())
                    .ok_or_else(|| format!("function `{word}` without `(`"))?;
            }
            Token::Ident(word) if next == Some(&Token::Open) => {
                return Err(format!("unknown function `{word}`"));
            }
            Token::Ident(name) => {
                let matchers = match next {
                    Some(Token::Matchers(matchers)) => {
                        i += 1;
                        matchers.clone()
                    }
                    _ => Vec::new(),
                };
                query.selectors.push((name.clone(), matchers));
            }
            _ => {}
        }
        i += 1;
    }
    if depth != 0 {
        return Err("unbalanced `(`".to_owned());
    }
    Ok(query)
}

/// Checks `expr` against [`EXPORTED`]; returns the labels its metrics carry (for legends and
/// annotations), or the problems, each prefixed with `context`.
fn check_query(context: &str, expr: &str) -> Result<BTreeSet<String>, Vec<String>> {
    let query = parse_query(expr).map_err(|e| vec![format!("{context}: {e} in `{expr}`")])?;
    let known = series();
    let mut problems = Vec::new();
    let mut available: BTreeSet<String> = TARGET_LABELS.iter().map(|l| (*l).to_owned()).collect();
    for (name, matchers) in &query.selectors {
        let Some(labels) = known.get(name) else {
            problems.push(format!(
                "{context}: `{name}` is not an exported metric (see EXPORTED in tests/observability.rs)"
            ));
            continue;
        };
        available.extend(labels.iter().cloned());
        for matcher in matchers {
            if !labels.contains(&matcher.label) {
                problems.push(format!(
                    "{context}: `{name}` has no label `{}` (it has {labels:?})",
                    matcher.label
                ));
                continue;
            }
            // Literal values, and regexes that are only an alternation of literals, must be known;
            // Grafana variables and other regexes are not checked.
            if matcher.value.contains('$') {
                continue;
            }
            let values: Vec<&str> = match matcher.op {
                "=" | "!=" => vec![matcher.value.as_str()],
                _ if ALTERNATION.is_match(&matcher.value) => matcher.value.split('|').collect(),
                _ => Vec::new(),
            };
            for value in values {
                if !known_value(&matcher.label, value) {
                    problems.push(format!(
                        "{context}: `{}{}\"{value}\"`: `{value}` is not a value `{}` takes",
                        matcher.label, matcher.op, matcher.label
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

/// The Grafana variables an expression uses (`$name`, `${name}`, `${name:format}`).
fn used_variables(expr: &str) -> Vec<String> {
    VARIABLES
        .captures_iter(expr)
        .map(|c| c[1].to_owned())
        .collect()
}

// ------------------------------------------------------------------------------------------------
// YAML, the subset the rule files use
// ------------------------------------------------------------------------------------------------

/// A YAML node: block mappings and sequences, plain and quoted scalars, `|` and `>` block scalars,
/// flow sequences of scalars, `{}`. Enough for the files under observability/; not a YAML parser.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Yaml {
    Null,
    Str(String),
    Seq(Vec<Yaml>),
    Map(Vec<(String, Yaml)>),
}

impl Yaml {
    fn get(&self, key: &str) -> Option<&Yaml> {
        match self {
            Yaml::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn str(&self) -> Option<&str> {
        match self {
            Yaml::Str(s) => Some(s),
            _ => None,
        }
    }

    fn seq(&self) -> &[Yaml] {
        match self {
            Yaml::Seq(items) => items,
            _ => &[],
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Yaml::Map(entries) => entries.iter().map(|(k, _)| k.as_str()).collect(),
            _ => Vec::new(),
        }
    }

    fn path(&self, keys: &[&str]) -> Option<&Yaml> {
        keys.iter().try_fold(self, |node, key| node.get(key))
    }
}

#[derive(Debug, Clone)]
struct Line {
    number: usize,
    indent: usize,
    text: String,
}

struct YamlReader {
    lines: Vec<Line>,
    pos: usize,
}

impl YamlReader {
    fn is_blank(line: &Line) -> bool {
        line.text.is_empty() || line.text.starts_with('#')
    }

    fn skip_blank(&mut self) {
        while self.lines.get(self.pos).is_some_and(Self::is_blank) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<Line> {
        self.skip_blank();
        self.lines.get(self.pos).cloned()
    }

    fn is_item(text: &str) -> bool {
        text == "-" || text.starts_with("- ")
    }

    fn block(&mut self, min_indent: usize) -> Result<Yaml, String> {
        let Some(line) = self.peek() else {
            return Ok(Yaml::Null);
        };
        if line.indent < min_indent {
            return Ok(Yaml::Null);
        }
        if Self::is_item(&line.text) {
            self.seq(line.indent)
        } else {
            self.map(line.indent)
        }
    }

    fn map(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut entries: Vec<(String, Yaml)> = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent || (line.indent == indent && Self::is_item(&line.text)) {
                break;
            }
            if line.indent > indent {
                return Err(format!("line {}: unexpected indentation", line.number));
            }
            let (key, rest) = split_key(&line.text)
                .ok_or_else(|| format!("line {}: expected `key: value`", line.number))?;
            if entries.iter().any(|(k, _)| *k == key) {
                return Err(format!("line {}: duplicate key `{key}`", line.number));
            }
            self.pos += 1;
            let value = self.value(&rest, indent, line.number)?;
            entries.push((key, value));
        }
        Ok(Yaml::Map(entries))
    }

    fn seq(&mut self, indent: usize) -> Result<Yaml, String> {
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent != indent || !Self::is_item(&line.text) {
                if line.indent > indent {
                    return Err(format!("line {}: unexpected indentation", line.number));
                }
                break;
            }
            let rest = line.text[1..].trim_start().to_owned();
            if rest.is_empty() {
                self.pos += 1;
                items.push(self.block(indent + 1)?);
            } else if split_key(&rest).is_some() {
                // `- key: value`: a mapping whose first line is this one, two columns in.
                self.lines[self.pos] = Line {
                    number: line.number,
                    indent: indent + 2,
                    text: rest,
                };
                items.push(self.map(indent + 2)?);
            } else {
                self.pos += 1;
                items.push(scalar(&strip_comment(&rest), line.number)?);
            }
        }
        Ok(Yaml::Seq(items))
    }

    fn value(&mut self, rest: &str, indent: usize, number: usize) -> Result<Yaml, String> {
        let rest = strip_comment(rest);
        if rest.is_empty() {
            return match self.peek() {
                Some(next) if next.indent > indent => self.block(indent + 1),
                Some(next) if next.indent == indent && Self::is_item(&next.text) => {
                    self.seq(indent)
                }
                _ => Ok(Yaml::Null),
            };
        }
        if rest.starts_with('|') || rest.starts_with('>') {
            let mut block: Vec<&Line> = Vec::new();
            while let Some(line) = self.lines.get(self.pos) {
                if !line.text.is_empty() && line.indent <= indent {
                    break;
                }
                block.push(line);
                self.pos += 1;
            }
            while block.last().is_some_and(|l| l.text.is_empty()) {
                block.pop();
            }
            let text: Vec<&str> = block.iter().map(|l| l.text.as_str()).collect();
            let joined = if rest.starts_with('|') {
                text.join("\n")
            } else {
                text.join(" ")
            };
            return Ok(Yaml::Str(joined));
        }
        scalar(&rest, number)
    }
}

/// `key: value` or `key:` (the key unquoted, as in these files).
fn split_key(text: &str) -> Option<(String, String)> {
    if text.starts_with(['"', '\'', '[', '{']) {
        return None;
    }
    let (key, rest) = match text.find(": ") {
        Some(at) => (&text[..at], &text[at + 2..]),
        None => (text.strip_suffix(':')?, ""),
    };
    let valid = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    valid.then(|| (key.to_owned(), rest.to_owned()))
}

/// Drops a ` # comment` outside quotes.
fn strip_comment(text: &str) -> String {
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in text.char_indices() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' && previous.is_whitespace() => return text[..at].trim().to_owned(),
            None => {}
        }
        previous = c;
    }
    text.trim().to_owned()
}

fn scalar(text: &str, number: usize) -> Result<Yaml, String> {
    let text = text.trim();
    if let Some(inner) = text.strip_prefix('"') {
        let chars: Vec<char> = text.chars().collect();
        let mut i = 0;
        let value = read_string(&chars, &mut i).map_err(|e| format!("line {number}: {e}"))?;
        if i != chars.len() {
            return Err(format!(
                "line {number}: text after a quoted scalar: {inner}"
            ));
        }
        return Ok(Yaml::Str(value));
    }
    if let Some(inner) = text.strip_prefix('\'') {
        let inner = inner
            .strip_suffix('\'')
            .ok_or_else(|| format!("line {number}: unterminated '"))?;
        return Ok(Yaml::Str(inner.replace("''", "'")));
    }
    if let Some(inner) = text.strip_prefix('[') {
        let inner = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("line {number}: unterminated ["))?;
        return inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| scalar(s, number))
            .collect::<Result<Vec<_>, _>>()
            .map(Yaml::Seq);
    }
    if text == "{}" {
        return Ok(Yaml::Map(Vec::new()));
    }
    if text.starts_with('{') {
        return Err(format!("line {number}: flow mappings are not supported"));
    }
    Ok(Yaml::Str(text.to_owned()))
}

fn parse_yaml(source: &str) -> Result<Yaml, String> {
    let mut lines = Vec::new();
    for (index, raw) in source.lines().enumerate() {
        let trimmed = raw.trim_start_matches(' ');
        if trimmed.starts_with('\t') {
            return Err(format!("line {}: tab indentation", index + 1));
        }
        lines.push(Line {
            number: index + 1,
            indent: raw.len() - trimmed.len(),
            text: trimmed.trim_end().to_owned(),
        });
    }
    let mut reader = YamlReader { lines, pos: 0 };
    let root = reader.block(0)?;
    if let Some(line) = reader.peek() {
        return Err(format!("line {}: not part of the document", line.number));
    }
    Ok(root)
}

// ------------------------------------------------------------------------------------------------
// The tests
// ------------------------------------------------------------------------------------------------

/// [`EXPORTED`] is what `src/` builds: each name with the right instrument kind and unit, each
/// attribute key, each reason and exception name; and the Prometheus names follow from them.
#[test]
fn exported_names_are_the_sources() {
    let src = sources(&root().join("src"));
    let mut problems = Vec::new();
    for metric in EXPORTED {
        let derived = prometheus_name(metric);
        if derived != metric.prometheus {
            problems.push(format!(
                "{}: the collector names it `{derived}`, EXPORTED says `{}`",
                metric.otel, metric.prometheus
            ));
        }
        let builder = match metric.kind {
            Kind::Histogram => r"f64_histogram",
            Kind::Counter => r"(u64|f64)_(observable_)?counter",
            Kind::UpDownCounter => r"(i64|f64)_(observable_)?up_down_counter",
            Kind::Gauge => r"(u64|i64|f64)_(observable_)?gauge",
        };
        let pattern = format!(r#"\.{builder}\(\s*"{}"\s*\)"#, regex::escape(metric.otel));
        let Some(found) = Regex::new(&pattern).expect("regex").find(&src) else {
            problems.push(format!(
                "{}: no `{builder}(\"{}\")` in src/ (renamed, or another instrument kind?)",
                metric.otel, metric.otel
            ));
            continue;
        };
        // The unit is set in the same builder chain, before `.build()`.
        let chain = &src[found.end()..];
        let chain = &chain[..chain.find(".build()").unwrap_or(chain.len())];
        let unit = WITH_UNIT
            .captures(chain)
            .map(|c| c[1].to_owned())
            .unwrap_or_default();
        if unit != metric.unit {
            problems.push(format!(
                "{}: unit {unit:?} in src/, {:?} in EXPORTED",
                metric.otel, metric.unit
            ));
        }
        for attribute in metric.attributes {
            if !src.contains(&format!("\"{attribute}\"")) {
                problems.push(format!(
                    "{}: attribute \"{attribute}\" appears nowhere in src/",
                    metric.otel
                ));
            }
        }
    }
    for (label, values) in LABEL_VALUES {
        if *label != "reason" && *label != "aws_exception" {
            continue;
        }
        for value in values.iter().filter(|v| !v.is_empty()) {
            if !src.contains(&format!("\"{value}\"")) {
                problems.push(format!("{label} value \"{value}\" appears nowhere in src/"));
            }
        }
    }
    assert_none(&problems);
}

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

    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        // Collapsed rows hold their panels.
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        panels.push(panel);
    }
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
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().cloned().unwrap_or_default() {
        panels.extend(panel["panels"].as_array().cloned().unwrap_or_default());
        panels.push(panel);
    }
    for panel in &panels {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        for target in panel["targets"].as_array().cloned().unwrap_or_default() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let context = format!("panel {title:?} {}", target["refId"]);
            checked += 1;
            match check_query(&context, expr) {
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
    let label_values = Regex::new(r"^label_values\((.*),\s*(\w+)\s*\)$").expect("regex");
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

/// The alerting rules are complete: each has alert, expr, for, labels.severity and the runbook
/// annotations, and nothing else.
#[test]
fn alert_rules_are_complete() {
    let alerts = alerts();
    let duration = Regex::new(r"^(\d+[smhdw])+$").expect("regex");
    let alert_name = Regex::new(r"^CognitoGateway[A-Z][A-Za-z]+$").expect("regex");
    let mut problems = Vec::new();
    let mut names = BTreeSet::new();
    let groups = alerts.get("groups").map(Yaml::seq).unwrap_or_default();
    if groups.is_empty() {
        problems.push("no groups".to_owned());
    }
    for group in groups {
        let group_name = group.get("name").and_then(Yaml::str).unwrap_or_default();
        if group_name.is_empty() {
            problems.push("a group without a name".to_owned());
        }
        let rules = group.get("rules").map(Yaml::seq).unwrap_or_default();
        if rules.is_empty() {
            problems.push(format!("group {group_name}: no rules"));
        }
        for rule in rules {
            let name = rule.get("alert").and_then(Yaml::str).unwrap_or_default();
            let context = format!("alert {name:?}");
            if !alert_name.is_match(name) {
                problems.push(format!("{context}: not named CognitoGateway<Something>"));
            }
            if !names.insert(name.to_owned()) {
                problems.push(format!("{context}: repeated"));
            }
            for key in rule.keys() {
                if !["alert", "expr", "for", "labels", "annotations"].contains(&key) {
                    problems.push(format!("{context}: unexpected key `{key}`"));
                }
            }
            if rule
                .get("expr")
                .and_then(Yaml::str)
                .is_none_or(|e| e.trim().is_empty())
            {
                problems.push(format!("{context}: no expr"));
            }
            if !rule
                .get("for")
                .and_then(Yaml::str)
                .is_some_and(|f| duration.is_match(f))
            {
                problems.push(format!("{context}: no `for:` duration"));
            }
            let severity = rule
                .path(&["labels", "severity"])
                .and_then(Yaml::str)
                .unwrap_or_default();
            if !["critical", "warning", "info"].contains(&severity) {
                problems.push(format!(
                    "{context}: labels.severity {severity:?} is not critical, warning or info"
                ));
            }
            for key in ["summary", "description", "runbook_url"] {
                if rule
                    .path(&["annotations", key])
                    .and_then(Yaml::str)
                    .is_none_or(str::is_empty)
                {
                    problems.push(format!("{context}: no annotations.{key}"));
                }
            }
            let runbook = rule
                .path(&["annotations", "runbook_url"])
                .and_then(Yaml::str);
            if runbook.is_some_and(|r| r != RUNBOOK) {
                problems.push(format!("{context}: runbook_url is not {RUNBOOK}"));
            }
        }
    }
    if names.len() < 6 {
        problems.push(format!("only {} alerts", names.len()));
    }
    assert_none(&problems);
}

/// Every alert expression, and every label its annotations name, is the gateway's.
#[test]
fn alert_queries_use_exported_metrics_and_labels() {
    let alerts = alerts();
    let mut problems = Vec::new();
    let mut checked = 0;
    for group in alerts.get("groups").map(Yaml::seq).unwrap_or_default() {
        for rule in group.get("rules").map(Yaml::seq).unwrap_or_default() {
            let name = rule.get("alert").and_then(Yaml::str).unwrap_or_default();
            let expr = rule.get("expr").and_then(Yaml::str).unwrap_or_default();
            let context = format!("alert {name}");
            checked += 1;
            match check_query(&context, expr) {
                Ok(labels) => {
                    for (key, text) in match rule.get("annotations") {
                        Some(Yaml::Map(entries)) => entries.clone(),
                        _ => Vec::new(),
                    } {
                        for label in label_references(text.str().unwrap_or_default()) {
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
    }
    assert!(checked > 5, "only {checked} alert expressions found");
    assert_none(&problems);
}

/// observability/alerts_test.yaml (promtool's unit tests) loads alerts.yaml, makes its series from
/// exported metrics with their real labels, and shows every alert firing.
#[test]
fn alert_unit_tests_cover_every_alert() {
    let tests = parse_yaml(&read("observability/alerts_test.yaml"))
        .expect("observability/alerts_test.yaml parses");
    let alerts = alerts();
    let defined: BTreeSet<&str> = alerts
        .get("groups")
        .map(Yaml::seq)
        .unwrap_or_default()
        .iter()
        .flat_map(|g| g.get("rules").map(Yaml::seq).unwrap_or_default())
        .filter_map(|r| r.get("alert").and_then(Yaml::str))
        .collect();
    let mut problems = Vec::new();
    let files: Vec<&str> = tests
        .get("rule_files")
        .map(Yaml::seq)
        .unwrap_or_default()
        .iter()
        .filter_map(Yaml::str)
        .collect();
    if files != ["alerts.yaml"] {
        problems.push(format!("rule_files is {files:?}, expected [alerts.yaml]"));
    }
    let known = series();
    let mut fired = BTreeSet::new();
    for test in tests.get("tests").map(Yaml::seq).unwrap_or_default() {
        let test_name = test.get("name").and_then(Yaml::str).unwrap_or("<unnamed>");
        for input in test.get("input_series").map(Yaml::seq).unwrap_or_default() {
            let selector = input.get("series").and_then(Yaml::str).unwrap_or_default();
            let context = format!("test {test_name:?}, series {selector}");
            match parse_query(selector) {
                Ok(query) if query.selectors.len() == 1 => {
                    let (name, matchers) = &query.selectors[0];
                    let Some(labels) = known.get(name) else {
                        problems.push(format!("{context}: `{name}` is not an exported metric"));
                        continue;
                    };
                    // A series carries all its labels (bar `instance`, which needs
                    // service.instance.id), each once, with a known value.
                    let given: BTreeSet<&str> = matchers.iter().map(|m| m.label.as_str()).collect();
                    let missing: Vec<&String> = labels
                        .iter()
                        .filter(|l| *l != "instance" && !given.contains(l.as_str()))
                        .filter(|l| !(name == "cognito_gateway_rejections_total" && *l == "limit"))
                        .collect();
                    if !missing.is_empty() {
                        problems.push(format!("{context}: missing labels {missing:?}"));
                    }
                    for matcher in matchers {
                        if matcher.op != "=" || !labels.contains(&matcher.label) {
                            problems.push(format!("{context}: label `{}`", matcher.label));
                        } else if !known_value(&matcher.label, &matcher.value) {
                            problems.push(format!(
                                "{context}: `{}` is not a value of `{}`",
                                matcher.value, matcher.label
                            ));
                        }
                    }
                }
                Ok(_) => problems.push(format!("{context}: expected one selector")),
                Err(e) => problems.push(format!("{context}: {e}")),
            }
        }
        for case in test
            .get("promql_expr_test")
            .map(Yaml::seq)
            .unwrap_or_default()
        {
            for sample in case.get("exp_samples").map(Yaml::seq).unwrap_or_default() {
                let labels = sample.get("labels").and_then(Yaml::str).unwrap_or_default();
                let Some(name) = ALERTNAME.captures(labels).map(|c| c[1].to_owned()) else {
                    continue;
                };
                if !defined.contains(name.as_str()) {
                    problems.push(format!("test {test_name:?}: no alert named {name}"));
                }
                if labels.contains(r#"alertstate="firing""#) {
                    fired.insert(name);
                }
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
    let collector = parse_yaml(&read("observability/otel-collector.yaml"))
        .expect("observability/otel-collector.yaml parses");
    let mut problems = Vec::new();
    if collector
        .path(&["receivers", "otlp", "protocols", "grpc"])
        .is_none()
    {
        problems.push("collector: no otlp receiver with gRPC".to_owned());
    }
    for exporter in ["prometheus", "prometheusremotewrite"] {
        if collector.path(&["exporters", exporter]).is_none() {
            problems.push(format!("collector: no {exporter} exporter"));
        }
    }
    for pipeline in ["metrics", "traces"] {
        let Some(definition) = collector.path(&["service", "pipelines", pipeline]) else {
            problems.push(format!("collector: no {pipeline} pipeline"));
            continue;
        };
        for kind in ["receivers", "processors", "exporters"] {
            let components = definition.get(kind).map(Yaml::seq).unwrap_or_default();
            if components.is_empty() && kind != "processors" {
                problems.push(format!("collector: {pipeline} pipeline has no {kind}"));
            }
            for component in components.iter().filter_map(Yaml::str) {
                if collector.path(&[kind, component]).is_none() {
                    problems.push(format!(
                        "collector: {pipeline} pipeline uses {component}, not defined in {kind}"
                    ));
                }
            }
        }
    }
    let metrics_exporters = collector
        .path(&["service", "pipelines", "metrics", "exporters"])
        .map(Yaml::seq)
        .unwrap_or_default();
    if !metrics_exporters
        .iter()
        .filter_map(Yaml::str)
        .any(|e| e.starts_with("prometheus"))
    {
        problems.push("collector: metrics go to no Prometheus exporter".to_owned());
    }

    let prometheus = parse_yaml(&read("observability/prometheus.yml"))
        .expect("observability/prometheus.yml parses");
    let rules: Vec<&str> = prometheus
        .get("rule_files")
        .map(Yaml::seq)
        .unwrap_or_default()
        .iter()
        .filter_map(Yaml::str)
        .collect();
    if !rules.contains(&"alerts.yaml") {
        problems.push("prometheus.yml: alerts.yaml is not in rule_files".to_owned());
    }
    let scrapes = prometheus
        .get("scrape_configs")
        .map(Yaml::seq)
        .unwrap_or_default();
    if !scrapes
        .iter()
        .any(|s| s.get("honor_labels").and_then(Yaml::str) == Some("true"))
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
    let alerts = alerts();
    for group in alerts.get("groups").map(Yaml::seq).unwrap_or_default() {
        for rule in group.get("rules").map(Yaml::seq).unwrap_or_default() {
            if let Some(name) = rule.get("alert").and_then(Yaml::str)
                && !docs.contains(name)
            {
                problems.push(format!("alert {name} is not in the docs"));
            }
        }
    }
    let telemetry = read("src/telemetry.rs");
    let variable = Regex::new(r"OTEL_[A-Z_]*[A-Z]").expect("regex");
    for found in variable.find_iter(&telemetry) {
        if !docs.contains(found.as_str()) {
            problems.push(format!("{} is not in the docs", found.as_str()));
        }
    }
    let link = Regex::new(r"\]\((\.\./observability/[^)#\s]+)").expect("regex");
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
    let good = r#"sum by (job, rpc_method) (rate(rpc_server_duration_milliseconds_count{job=~"$job", rpc_grpc_status_code=~"2|4|13"}[$__rate_interval])) / ignoring (instance) vector($backend_rps) and on (job) cognito_gateway_callers offset 1h > 0"#;
    assert_eq!(check_query("good", good).map(|_| ()), Ok(()));
    let bad = [
        // A misspelled metric.
        r#"sum(rate(rpc_server_duration_miliseconds_count[5m]))"#,
        // An OTel name, not the Prometheus one.
        r#"rpc.server.duration"#,
        // A counter without _total.
        r#"rate(cognito_gateway_rejections[5m])"#,
        // A label the metric does not have (it is on the server metric, not the client one).
        r#"rpc_client_duration_milliseconds_count{rpc_grpc_status_code="0"}"#,
        // A misspelled label.
        r#"rpc_server_duration_milliseconds_count{rpc_status_code="0"}"#,
        // `le` off the buckets.
        r#"rpc_server_duration_milliseconds_count{le="100"}"#,
        // A `by` label none of the metrics carries.
        r#"sum by (reason) (rate(rpc_server_duration_milliseconds_count[5m]))"#,
        r#"sum without (cognito_gateway_calller) (cognito_gateway_in_flight)"#,
        // Misspelled values.
        r#"cognito_gateway_rejections_total{reason="RATE_LIMITD"}"#,
        r#"cognito_gateway_rejections_total{limit="backnd"}"#,
        r#"rpc_client_duration_milliseconds_count{aws_exception=~"TooManyRequestException|LimitExceededException"}"#,
        // A misspelled function, unbalanced parentheses, a selector without a name.
        r#"hisogram_quantile(0.99, rpc_server_duration_milliseconds_bucket)"#,
        r#"sum(rate(cognito_gateway_deduplicated_total[5m])"#,
        r#"{__name__="cognito_gateway_callers"}"#,
        // Not a range.
        r#"rate(cognito_gateway_deduplicated_total[5 minutes])"#,
    ];
    for expr in bad {
        assert!(check_query("bad", expr).is_err(), "accepted a typo: {expr}");
    }
}

/// The YAML reader reads what the rule files use, and refuses what it does not understand.
#[test]
fn yaml_reader() {
    let parsed = parse_yaml(
        "a:\n  - x: '1'\n    y: \"two # three\"  # comment\n    z: |\n      l1\n\n      l2\n  - [p, q]\nb: {}\nc:\n- 1\n",
    )
    .expect("parses");
    let items = parsed.get("a").map(Yaml::seq).unwrap_or_default();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0].get("x"), Some(&Yaml::Str("1".to_owned())));
    assert_eq!(
        items[0].get("y"),
        Some(&Yaml::Str("two # three".to_owned()))
    );
    assert_eq!(items[0].get("z"), Some(&Yaml::Str("l1\n\nl2".to_owned())));
    assert_eq!(
        items[1],
        Yaml::Seq(vec![Yaml::Str("p".to_owned()), Yaml::Str("q".to_owned())])
    );
    assert_eq!(parsed.get("b"), Some(&Yaml::Map(Vec::new())));
    assert_eq!(
        parsed.get("c"),
        Some(&Yaml::Seq(vec![Yaml::Str("1".to_owned())]))
    );
    assert!(parse_yaml("a: 1\n  b: 2\n").is_err(), "bad indentation");
    assert!(parse_yaml("a: 1\na: 2\n").is_err(), "duplicate key");
}
