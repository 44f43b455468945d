//! Sections 2 and 3, in process: the gateway (as the API tests spawn it) in front of the embedded
//! local Cognito, against the AWS SDK sending the same calls straight to it; rounds interleaved, so
//! the paired difference is the gateway's own overhead.

use std::{
    fmt::Write as _,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use aws_config::{BehaviorVersion, Region};
use aws_sdk_cognitoidentityprovider::{Client as SdkClient, config::Credentials};
use cognito_gateway::{
    Config,
    cognito::SdkBackend,
    config::{CognitoSettings, LimitSettings},
    local::{DEMO_POOL_ID, LocalCognito},
};

use crate::{
    IN_FLIGHT, ROUNDS, WARM_UP,
    kit::app::spawn_app_with,
    load::{Call, Counter, Who, concurrent, gateway_call, sequential, sequential_with_first},
    report::{table, us},
    stats::{Concurrent, Sequential, Summary, median, micros, spread},
};

/// Sequential calls per round.
const SEQUENTIAL_CALLS: usize = 2_000;
/// Sequential calls per round on error paths (one line each in the table).
const ERROR_CALLS: usize = 1_000;
/// Calls per concurrent round.
const CONCURRENT_CALLS: usize = 10_000;

/// Both paths' figures, sequential and concurrent.
pub(crate) struct InProcess {
    gateway_first: Duration,
    direct_first: Duration,
    gateway: Sequential,
    direct: Sequential,
    errors: Vec<Sequential>,
    /// Distinct unknown users: every call reaches Cognito, through the gateway or not.
    gateway_load: Concurrent,
    direct_load: Concurrent,
    /// One user (`alice`) from every call: the gateway's single-flight shares Cognito calls.
    gateway_same_user: Concurrent,
    direct_same_user: Concurrent,
    same_user_deduplicated: usize,
}

/// Measures both paths against one local Cognito, in this process.
pub(crate) async fn bench() -> InProcess {
    // Built as the API tests build it (the kit's spawn_app_with), with the production Cognito
    // settings.
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito starts");
    let backend =
        SdkBackend::with_endpoint(&local.endpoint_url(), "local-1", CognitoSettings::default())
            .await;
    let mut config = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    config.limits = limits_out_of_reach();
    let app = spawn_app_with(config, backend).await;

    let figures = {
        let gateway = app.client.clone();
        let direct = sdk_client(&local.endpoint_url()).await;
        let deduplicated = Counter::default();
        let gw_ok = gateway_call(&gateway, Who::Alice, &deduplicated);
        let sdk_ok = direct_call(&direct, Who::Alice);

        // The first call of each path, alone: it pays for connections and lazy initialisation.
        // alice becomes RESET_REQUIRED here; every later reset of alice is an OK no-op.
        let (gateway_first, _) = sequential_with_first(1, &gw_ok).await;
        let (direct_first, _) = sequential_with_first(1, &sdk_ok).await;
        sequential(WARM_UP, &gw_ok, "gateway warm-up").await;
        sequential(WARM_UP, &sdk_ok, "direct warm-up").await;

        let before = local.resets();
        let mut gw_seq = Sequential::new("gateway → local Cognito, `alice` OK");
        let mut sdk_seq = Sequential::new("SDK direct → local Cognito, `alice` OK");
        for _ in 0..ROUNDS {
            gw_seq.push(sequential(SEQUENTIAL_CALLS, &gw_ok, gw_seq.label).await);
            sdk_seq.push(sequential(SEQUENTIAL_CALLS, &sdk_ok, sdk_seq.label).await);
        }
        // Same work on both sides: no gateway call was answered without Cognito.
        assert_eq!(
            local.resets() - before,
            (2 * ROUNDS * SEQUENTIAL_CALLS) as u64,
            "every sequential call reached the local Cognito once"
        );
        assert_eq!(
            deduplicated.load(Ordering::Relaxed),
            0,
            "no sequential call deduplicated"
        );

        let gw_missing = gateway_call(&gateway, Who::Nobody, &deduplicated);
        let sdk_missing = direct_call(&direct, Who::Nobody);
        let gw_invalid = gateway_call(&gateway, Who::Invalid, &deduplicated);
        let mut errors = vec![
            Sequential::new("gateway, unknown user → NOT_FOUND"),
            Sequential::new("SDK direct, unknown user → UserNotFoundException"),
            Sequential::new("gateway, empty username → INVALID_ARGUMENT (no Cognito call)"),
        ];
        for _ in 0..ROUNDS {
            for (rounds, call) in errors
                .iter_mut()
                .zip([&gw_missing, &sdk_missing, &gw_invalid])
            {
                let latencies = sequential(ERROR_CALLS, call, rounds.label).await;
                rounds.push(latencies);
            }
        }

        let mut gw_load = Concurrent::new("gateway, distinct unknown users → NOT_FOUND");
        let mut sdk_load = Concurrent::new("SDK direct, distinct unknown users");
        let mut gw_same = Concurrent::new("gateway, `alice` from every call → OK");
        let mut sdk_same = Concurrent::new("SDK direct, `alice` from every call");
        let dedup_before = deduplicated.load(Ordering::Relaxed);
        for _ in 0..ROUNDS {
            for (rounds, call) in [
                (&mut gw_load, &gw_missing),
                (&mut sdk_load, &sdk_missing),
                (&mut gw_same, &gw_ok),
                (&mut sdk_same, &sdk_ok),
            ] {
                let before = local.resets();
                let load = concurrent(CONCURRENT_CALLS, IN_FLIGHT, call, rounds.label).await;
                rounds.push(load, local.resets() - before);
            }
        }
        let same_user_deduplicated = deduplicated.load(Ordering::Relaxed) - dedup_before;

        InProcess {
            gateway_first,
            direct_first,
            gateway: gw_seq,
            direct: sdk_seq,
            errors,
            gateway_load: gw_load,
            direct_load: sdk_load,
            gateway_same_user: gw_same,
            direct_same_user: sdk_same,
            same_user_deduplicated,
        }
        // The load's clients are dropped here: no call is in flight when graceful shutdown starts.
    };

    tokio::time::timeout(Duration::from_secs(15), app.stop())
        .await
        .expect("the in-process gateway stops")
        .expect("the server stops cleanly");
    figures
}

/// The gateway's limits out of the way, as the API tests have them (set field by field, so that a
/// new limit keeps its default): every check still runs, none refuses a call, and with no cooldown
/// every sequential reset reaches Cognito. In process nothing validates these, so they are set far
/// above any rate this machine reaches (the tests' 10 000/s would be within reach of 64 calls in
/// flight).
pub(crate) fn limits_out_of_reach() -> LimitSettings {
    let mut limits = Config::with_listen("127.0.0.1:0".parse().expect("a literal address")).limits;
    limits.backend_rps = 1_000_000;
    limits.backend_burst = 1_000_000;
    limits.default_rate_per_second = 1_000_000;
    limits.default_burst = 1_000_000;
    limits.user_cooldown = Duration::ZERO;
    limits
}

/// The SDK client as `SdkBackend::with_endpoint` configures its base: fixed credentials, an
/// explicit endpoint. (The gateway's per-region client adds its retry rules and timeouts on top.)
pub(crate) async fn sdk_client(endpoint_url: &str) -> SdkClient {
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(Region::new("local-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "bench"))
        .endpoint_url(endpoint_url)
        .load()
        .await;
    SdkClient::new(&config)
}

/// One AdminResetUserPassword straight to the local Cognito (`Alice` or `Nobody`).
pub(crate) fn direct_call(client: &SdkClient, who: Who) -> Call {
    assert_ne!(
        who,
        Who::Invalid,
        "the direct path has no validation to measure"
    );
    let client = client.clone();
    Arc::new(move || {
        let send = client
            .admin_reset_user_password()
            .user_pool_id(DEMO_POOL_ID)
            .username(who.username())
            .send();
        Box::pin(async move {
            match (send.await, who) {
                (Ok(_), Who::Alice) => true,
                (Err(error), Who::Nobody) => error
                    .as_service_error()
                    .is_some_and(|e| e.is_user_not_found_exception()),
                _ => false,
            }
        })
    })
}

/// The report's sections on the gateway in process: latency, overhead, throughput. `cpus` is the
/// runtime's worker count (one per CPU).
pub(crate) fn write(out: &mut String, in_process: &InProcess, cpus: usize) {
    let p = in_process;
    let _ = writeln!(
        out,
        "## In process: latency and the gateway's overhead\n\n\
         Built as the tests build it (`LocalCognito::start()`, `SdkBackend::with_endpoint(.., \
         \"local-1\", CognitoSettings::default())`, `App::build` on 127.0.0.1:0, no authentication, \
         rate limits set far above reach and a user cooldown of 0, so every check runs and none \
         refuses or deduplicates a call) in one tokio runtime with {cpus} workers, which the client, the gateway and the local Cognito share; no \
         log subscriber is installed (the binary's figures above include logging). The gateway is \
         called with a tonic client over one loopback HTTP/2 connection; \"SDK direct\" sends the \
         same `AdminResetUserPassword` straight to the same local Cognito with an AWS SDK client \
         configured as `SdkBackend::with_endpoint` configures its base, so the difference is what \
         the gateway adds: gRPC, admission (load shedding, caller, rate), validation, the user \
         gate and the second hop. After one cold call \
         and {WARM_UP} warm-up calls per path, {ROUNDS} rounds of {SEQUENTIAL_CALLS} sequential \
         calls, gateway and direct rounds interleaved; percentiles are per round, the table shows \
         their median over rounds. `alice` is reset by the cold call and every later reset is an \
         OK no-op, as in the demo; both paths made exactly one Cognito request per call (checked).\n",
    );
    let seq_row = |s: &Sequential| {
        let m = s.median();
        let (lo, hi) = s.p50_range();
        vec![
            s.label.to_owned(),
            us(m.p50),
            us(m.p90),
            us(m.p99),
            format!("{}–{}", us(lo), us(hi)),
        ]
    };
    let mut rows = vec![seq_row(&p.gateway), seq_row(&p.direct)];
    // Paired per round: each gateway round against the direct round run right after it.
    let paired = |f: fn(&Summary) -> f64| {
        let pairs = p.gateway.rounds.iter().zip(&p.direct.rounds);
        let deltas: Vec<f64> = pairs.clone().map(|(g, d)| f(g) - f(d)).collect();
        let ratios: Vec<f64> = pairs.map(|(g, d)| f(g) / f(d)).collect();
        (median(deltas), median(ratios))
    };
    let (d50, r50) = paired(|s| s.p50);
    let (d90, r90) = paired(|s| s.p90);
    let (d99, r99) = paired(|s| s.p99);
    rows.push(vec![
        "gateway overhead (paired per round)".to_owned(),
        format!("+{} (×{r50:.2})", us(d50)),
        format!("+{} (×{r90:.2})", us(d90)),
        format!("+{} (×{r99:.2})", us(d99)),
        String::new(),
    ]);
    rows.extend(p.errors.iter().map(seq_row));
    table(
        out,
        &[
            "sequential, µs",
            "p50",
            "p90",
            "p99",
            "p50 range over rounds",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "The gateway adds **{} µs at p50** (ratio {r50:.2}) to a call that costs {} µs straight to \
         the local Cognito. Error rows: {ERROR_CALLS} calls per round, each unknown user a new name. Cold first call (new \
         SDK client and connections): gateway {} µs, SDK direct {} µs.\n",
        us(d50),
        us(p.direct.median().p50),
        us(micros(p.gateway_first)),
        us(micros(p.direct_first)),
    );

    let _ = writeln!(
        out,
        "## In process: throughput\n\n\
         {IN_FLIGHT} calls in flight, {CONCURRENT_CALLS} calls per round, {ROUNDS} rounds, the four \
         paths interleaved. The gateway multiplexes the calls on one HTTP/2 connection and keeps \
         its own pool of HTTP/1.1 connections to the local Cognito; the direct client has such a \
         pool itself. The fair comparison is the first pair: each call names another unknown \
         user, so every call reaches Cognito on both paths. With one user from every call, the \
         gateway's per-user single-flight lets concurrent resets share one Cognito call (the last \
         column), which is its purpose, not speed.\n"
    );
    let load_row = |c: &Concurrent| {
        let (lo, mid, hi) = spread(c.calls_per_sec.clone());
        let m = Summary::median_of(&c.latencies);
        vec![
            c.label.to_owned(),
            format!("{mid:.0}"),
            format!("{lo:.0}–{hi:.0}"),
            us(m.p50),
            us(m.p99),
            format!("{:.2}", c.cognito_per_call()),
        ]
    };
    // Paired per round, as for latency.
    let ratio = |g: &Concurrent, d: &Concurrent| {
        let ratios = g
            .calls_per_sec
            .iter()
            .zip(&d.calls_per_sec)
            .map(|(g, d)| g / d);
        vec![
            "gateway / direct (paired per round)".to_owned(),
            format!("×{:.2}", median(ratios)),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        ]
    };
    let rows = vec![
        load_row(&p.gateway_load),
        load_row(&p.direct_load),
        ratio(&p.gateway_load, &p.direct_load),
        load_row(&p.gateway_same_user),
        load_row(&p.direct_same_user),
        ratio(&p.gateway_same_user, &p.direct_same_user),
    ];
    table(
        out,
        &[
            "concurrent",
            "calls/s",
            "range",
            "p50 µs",
            "p99 µs",
            "Cognito requests per call",
        ],
        &rows,
    );
    let _ = writeln!(
        out,
        "Same user: {} of {} gateway answers were marked `deduplicated` (shared a call in flight; \
         the cooldown is 0 here).\n",
        p.same_user_deduplicated, p.gateway_same_user.calls,
    );
}
