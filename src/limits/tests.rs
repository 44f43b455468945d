//! The limits on a fake clock: governor's `FakeRelativeClock` for the buckets, tokio's paused time
//! for the gate.

use std::sync::atomic::{AtomicUsize, Ordering};

use governor::clock::FakeRelativeClock;

use super::*;

#[test]
fn a_bucket_allows_its_burst_then_says_exactly_when() {
    let clock = FakeRelativeClock::default();
    let limit = RateLimit::with_clock(5, 10, clock.clone());
    for _ in 0..10 {
        limit.check().unwrap();
    }
    // 5 per second: the next token is 200 ms away.
    assert_eq!(limit.check(), Err(Duration::from_millis(200)));
    clock.advance(Duration::from_millis(150));
    assert_eq!(limit.check(), Err(Duration::from_millis(50)));
    clock.advance(Duration::from_millis(50));
    limit.check().unwrap();
    assert!(limit.check().is_err());
    // A full second refills five tokens, not more.
    clock.advance(Duration::from_secs(1));
    for _ in 0..5 {
        limit.check().unwrap();
    }
    assert!(limit.check().is_err());
}

#[test]
fn the_backend_guard_default_holds_25_per_second() {
    let clock = FakeRelativeClock::default();
    let guard = RateLimit::with_clock(25, 25, clock.clone());
    let mut admitted = 0;
    // Ten seconds of a caller hammering every millisecond.
    for _ in 0..10_000 {
        if guard.check().is_ok() {
            admitted += 1;
        }
        clock.advance(Duration::from_millis(1));
    }
    // The burst, then 25 per second: never above Cognito's 30 per second.
    assert!((250..=275).contains(&admitted), "{admitted}");
}

#[test]
fn each_pool_has_its_own_bucket_and_memory_stays_bounded() {
    let clock = FakeRelativeClock::default();
    let limit = PoolRateLimit::with_clock(2, 2, clock.clone());
    let (a, b) = (pool(), UserPoolId::parse("us-east-1_Other".into()).unwrap());
    limit.check(&a).unwrap();
    limit.check(&a).unwrap();
    assert_eq!(limit.check(&a), Err(Duration::from_millis(500)));
    limit.check(&b).unwrap();
    clock.advance(Duration::from_millis(500));
    limit.check(&a).unwrap();
    // Made-up pools, each used once: the buckets of those long idle are dropped.
    for i in 0..3 * POOL_BUCKETS_BEFORE_CLEANUP {
        let pool = UserPoolId::parse(format!("us-east-1_P{i}")).unwrap();
        limit.check(&pool).unwrap();
        clock.advance(Duration::from_secs(1));
    }
    assert!(
        limit.len() <= POOL_BUCKETS_BEFORE_CLEANUP + CLEANUP_EVERY,
        "{}",
        limit.len()
    );
}

fn pool() -> UserPoolId {
    UserPoolId::parse("us-east-1_Gate".into()).unwrap()
}

fn user(name: &str) -> Username {
    Username::parse(name.into()).unwrap()
}

fn outcome(id: &str) -> ResetOutcome {
    ResetOutcome {
        request_id: Some(id.into()),
    }
}

/// A backend stand-in that counts its sends and answers after `delay`.
fn counting(
    sends: &Arc<AtomicUsize>,
    delay: Duration,
    result: FlightResult,
) -> impl FnOnce() -> Result<std::pin::Pin<Box<dyn Future<Output = FlightResult> + Send>>, GatewayError>
+ use<> {
    let sends = Arc::clone(sends);
    move || {
        sends.fetch_add(1, Ordering::SeqCst);
        Ok(Box::pin(async move {
            tokio::time::sleep(delay).await;
            result
        }))
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_resets_of_one_user_make_one_send() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let calls = (0..50).map(|_| {
        let gate = Arc::clone(&gate);
        let start = counting(&sends, Duration::from_millis(100), Ok(outcome("r1")));
        tokio::spawn(async move { gate.reset(key, start).await })
    });
    let mut shared = 0;
    for call in calls.collect::<Vec<_>>() {
        let reset = call.await.unwrap().unwrap();
        assert_eq!(reset.outcome, outcome("r1"));
        shared += usize::from(reset.deduplicated);
    }
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    assert_eq!(shared, 49, "all but the first shared its call");
}

#[tokio::test(start_paused = true)]
async fn a_repeat_inside_the_window_makes_no_send_and_one_after_it_does() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let first = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r1"))))
        .await;
    assert!(!first.unwrap().deduplicated);
    tokio::time::advance(Duration::from_secs(29)).await;
    let repeat = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r2"))))
        .await
        .unwrap();
    assert!(repeat.deduplicated);
    assert_eq!(
        repeat.outcome,
        outcome("r1"),
        "the answer of the call it repeats"
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let after = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r3"))))
        .await
        .unwrap();
    assert!(!after.deduplicated);
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn users_are_kept_apart() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let sends = Arc::new(AtomicUsize::new(0));
    for name in ["alice", "bob"] {
        let key = gate.key(&pool(), &user(name));
        assert!(
            !gate
                .reset(key, counting(&sends, Duration::ZERO, Ok(outcome(name))))
                .await
                .unwrap()
                .deduplicated
        );
    }
    let other_pool = UserPoolId::parse("us-east-1_Other".into()).unwrap();
    assert_ne!(
        gate.key(&pool(), &user("alice")),
        gate.key(&other_pool, &user("alice"))
    );
    // The separator keeps ("a_b", "c") and ("a", "b_c")-like splits apart.
    let a = UserPoolId::parse("x_ab".into()).unwrap();
    let b = UserPoolId::parse("x_a".into()).unwrap();
    assert_ne!(gate.key(&a, &user("c")), gate.key(&b, &user("bc")));
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn failures_are_shared_but_not_remembered() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let failure = Err(GatewayError::Backend(BackendError::Unreachable(
        "down".into(),
    )));
    let (a, b) = tokio::join!(
        gate.reset(
            key,
            counting(&sends, Duration::from_millis(10), failure.clone())
        ),
        gate.reset(key, counting(&sends, Duration::from_millis(10), failure)),
    );
    assert!(a.is_err() && b.is_err());
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let retry = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r"))))
        .await
        .unwrap();
    assert!(!retry.deduplicated);
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refused_start_leaves_nothing_behind() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let refused = gate
        .reset(key, || {
            Err::<std::future::Ready<FlightResult>, _>(GatewayError::RateLimited {
                limit: crate::status::Limit::Backend,
                wait: Duration::from_millis(40),
            })
        })
        .await;
    assert!(matches!(refused, Err(GatewayError::RateLimited { .. })));
    assert!(gate.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_caller_hanging_up_does_not_cancel_the_send() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let leader = gate.reset(
        key,
        counting(&sends, Duration::from_millis(100), Ok(outcome("r1"))),
    );
    // The leader gives up after 10 ms (its caller went away).
    assert!(
        tokio::time::timeout(Duration::from_millis(10), leader)
            .await
            .is_err()
    );
    // A retry joins the call still in flight instead of sending again.
    let retry = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r2"))))
        .await
        .unwrap();
    assert_eq!(retry.outcome, outcome("r1"));
    assert!(retry.deduplicated);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_under_many_distinct_users() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let sends = Arc::new(AtomicUsize::new(0));
    let mut peak = 0;
    // 300,000 distinct users (over three hours of traffic) at 25 resets a second, the backend
    // guard's rate. The bound does not depend on the count: more only takes longer.
    for i in 0..300_000u32 {
        let key = {
            let mut key = [0u8; 16];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key
        };
        gate.reset(
            key,
            counting(&sends, Duration::ZERO, Ok(ResetOutcome::default())),
        )
        .await
        .unwrap();
        if i % 25 == 24 {
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        peak = peak.max(gate.len());
    }
    // 30 s of 25/s is 750 live users; sweeping lets the map reach at most about twice that.
    assert!(peak <= 2 * 1024, "peak {peak}");
    assert_eq!(sends.load(Ordering::SeqCst), 300_000);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_does_not_poison_the_user() {
    let gate = Arc::new(UserGate::new(Duration::from_secs(30)));
    let key = gate.key(&pool(), &user("alice"));
    let panicked = gate
        .reset(key, || {
            Ok(async {
                panic!("a backend bug");
                #[allow(unreachable_code)]
                Ok(ResetOutcome::default())
            })
        })
        .await;
    assert!(panicked.is_err());
    assert!(gate.is_empty(), "the entry went with the task");
    let sends = Arc::new(AtomicUsize::new(0));
    let next = gate
        .reset(key, counting(&sends, Duration::ZERO, Ok(outcome("r"))))
        .await
        .unwrap();
    assert!(!next.deduplicated);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}
