//! Section 6: the fleet's cost. The same gateway twice in this process, in front of one local
//! Cognito: once deciding alone (the in-process store), once through a real `redis-server` on
//! loopback (`[fleet]`). Rounds interleaved; Redis' own command statistics count the round trips.

use std::{fmt::Write as _, sync::atomic::Ordering, time::Duration};

use cognito_gateway::{
    Config,
    config::{FleetSettings, OnUnavailable},
    local::LocalCognito,
};

use crate::{
    ROUNDS, WARM_UP,
    in_process::limits_out_of_reach,
    kit::{
        app::{sdk_backend, spawn_app_with, test_settings},
        redis::Redis,
    },
    load::{Call, Counter, Who, gateway_call, sequential},
    report::{table, us},
    stats::{Sequential, median},
};

/// Sequential calls per round and path.
const CALLS: usize = 1_000;

/// One kind of call, through both stores.
pub(crate) struct Pair {
    what: &'static str,
    alone: Sequential,
    fleet: Sequential,
    /// Redis round trips per fleet call, per round.
    round_trips: Vec<f64>,
}

pub(crate) struct FleetFigures {
    pairs: Vec<Pair>,
}

pub(crate) async fn bench() -> FleetFigures {
    let redis = Redis::start();
    let local = LocalCognito::start()
        .await
        .expect("the local Cognito binds a loopback port");
    let mut limits = limits_out_of_reach();
    // Repeats of alice are answered from the cooldown; unknown users are never remembered (a
    // definite failure), so each of those calls reaches Cognito.
    limits.user_cooldown = Duration::from_secs(3600);
    let mut alone = Config::with_listen("127.0.0.1:0".parse().expect("a literal address"));
    alone.limits = limits;
    let mut fleet = alone.clone();
    fleet.fleet = Some(FleetSettings {
        redis_url: redis.url(),
        redis_password: None,
        redis_ca: None,
        key_prefix: "cognito-gateway".into(),
        user_key_secret: [7; 32],
        timeout: Duration::from_millis(50),
        on_unavailable: OnUnavailable::Deny,
        replicas_hint: 1,
    });
    let endpoint = local.endpoint_url();
    let alone = spawn_app_with(alone, sdk_backend(&endpoint, test_settings()).await).await;
    let fleet = spawn_app_with(fleet, sdk_backend(&endpoint, test_settings()).await).await;
    let deduplicated = Counter::default();
    let mut pairs = Vec::new();
    for (what, who) in [
        (
            "a call that reaches Cognito (unknown user, NOT_FOUND)",
            Who::Nobody,
        ),
        ("a repeat answered from the cooldown (alice)", Who::Alice),
    ] {
        let calls: [Call; 2] = [
            gateway_call(&alone.client, who, &deduplicated),
            gateway_call(&fleet.client, who, &deduplicated),
        ];
        for call in &calls {
            sequential(WARM_UP, call, "warm-up").await;
        }
        let mut pair = Pair {
            what,
            alone: Sequential::new("in process"),
            fleet: Sequential::new("fleet (Redis on loopback)"),
            round_trips: Vec::new(),
        };
        for _ in 0..ROUNDS {
            pair.alone
                .push(sequential(CALLS, &calls[0], pair.alone.label).await);
            let before = redis.round_trips();
            pair.fleet
                .push(sequential(CALLS, &calls[1], pair.fleet.label).await);
            pair.round_trips
                .push((redis.round_trips() - before) as f64 / CALLS as f64);
        }
        pairs.push(pair);
    }
    assert!(
        deduplicated.load(Ordering::Relaxed) >= 2 * ROUNDS * CALLS,
        "alice's repeats were answered from the cooldown"
    );
    FleetFigures { pairs }
}

pub(crate) fn write(out: &mut String, figures: &FleetFigures) {
    let _ = writeln!(
        out,
        "\n## 6. The fleet: limits and the user gate in Redis against in process\n\n\
         The gateway twice in this process, before one local Cognito: deciding alone, and with \
         `[fleet]` on a `redis-server` on loopback (its own, started by the bench). Sequential \
         calls, {CALLS} a round, {ROUNDS} rounds, the two interleaved; medians over rounds, and \
         the added latency paired per round. Round trips are the scripts Redis ran (its \
         `INFO commandstats`: EVALSHA, EVAL, PING) per call.\n"
    );
    let mut rows = Vec::new();
    for pair in &figures.pairs {
        let (alone, fleet) = (pair.alone.median(), pair.fleet.median());
        let added = |pick: fn(&crate::stats::Summary) -> f64| {
            median(
                pair.alone
                    .rounds
                    .iter()
                    .zip(&pair.fleet.rounds)
                    .map(|(a, f)| pick(f) - pick(a)),
            )
        };
        rows.push(vec![
            pair.what.to_owned(),
            us(alone.p50),
            us(fleet.p50),
            format!("{:+.0}", added(|s| s.p50)),
            us(alone.p99),
            us(fleet.p99),
            format!("{:+.0}", added(|s| s.p99)),
            format!("{:.2}", median(pair.round_trips.iter().copied())),
        ]);
    }
    table(
        out,
        &[
            "call",
            "p50 alone (µs)",
            "p50 fleet (µs)",
            "added p50",
            "p99 alone (µs)",
            "p99 fleet (µs)",
            "added p99",
            "Redis round trips / call",
        ],
        &rows,
    );
}
