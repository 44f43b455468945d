//! The gate on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::*;

/// A result as the service's would be: a request id, or an error text.
type Result = std::result::Result<Option<String>, String>;

impl FlightResult for Result {
    fn remembered(&self) -> Option<Outcome> {
        self.as_ref().ok().map(|request_id| Outcome::Sent {
            request_id: request_id.clone(),
        })
    }

    fn unanswered(&self) {}
}

type Gate = UserGate<Result, &'static str>;

const COOLDOWN: Duration = Duration::from_secs(30);
const LEASE: Duration = Duration::from_secs(5);

fn gate() -> Arc<Gate> {
    Arc::new(UserGate::in_process(COOLDOWN, LEASE))
}

/// A gate whose store the test can look into.
fn gate_on(store: &Arc<MemoryStore>) -> Arc<Gate> {
    Arc::new(UserGate::new([7; 32], COOLDOWN, LEASE, Arc::clone(store) as _))
}

fn pool() -> UserPoolId {
    UserPoolId::parse("us-east-1_Gate".into()).unwrap()
}

fn user(name: &str) -> Username {
    Username::parse(name.into()).unwrap()
}

fn ok(id: &str) -> Result {
    Ok(Some(id.into()))
}

fn sent(id: &str) -> Outcome {
    Outcome::Sent {
        request_id: Some(id.into()),
    }
}

/// A backend stand-in that counts its sends and answers after `delay`.
fn counting(
    sends: &Arc<AtomicUsize>,
    delay: Duration,
    result: Result,
) -> impl FnOnce() -> std::result::Result<Pin<Box<dyn Future<Output = Result> + Send>>, &'static str>
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

fn flown(answer: Answer<Result>) -> (Result, bool) {
    match answer {
        Answer::Flown {
            result,
            deduplicated,
        } => (result, deduplicated),
        Answer::Remembered(outcome) => panic!("remembered {outcome:?}, expected a flight"),
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_resets_of_one_user_make_one_send() {
    let gate = gate();
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let calls = (0..50).map(|_| {
        let gate = Arc::clone(&gate);
        let start = counting(&sends, Duration::from_millis(100), ok("r1"));
        tokio::spawn(async move { gate.reset(key, start).await })
    });
    let mut shared = 0;
    for call in calls.collect::<Vec<_>>() {
        let (result, deduplicated) = flown(call.await.unwrap().unwrap());
        assert_eq!(result, ok("r1"));
        shared += usize::from(deduplicated);
    }
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    assert_eq!(shared, 49, "all but the first shared its call");
}

#[tokio::test(start_paused = true)]
async fn a_repeat_inside_the_window_makes_no_send_and_one_after_it_does() {
    let gate = gate();
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let first = gate
        .reset(key, counting(&sends, Duration::ZERO, ok("r1")))
        .await;
    assert!(!flown(first.unwrap()).1);
    tokio::time::advance(Duration::from_secs(29)).await;
    let repeat = gate
        .reset(key, counting(&sends, Duration::ZERO, ok("r2")))
        .await
        .unwrap();
    assert_eq!(
        repeat,
        Answer::Remembered(sent("r1")),
        "the answer of the call it repeats"
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let after = gate
        .reset(key, counting(&sends, Duration::ZERO, ok("r3")))
        .await
        .unwrap();
    assert!(!flown(after).1);
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn users_are_kept_apart() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    for name in ["alice", "bob"] {
        let key = gate.key(&pool(), &user(name));
        let answer = gate
            .reset(key, counting(&sends, Duration::ZERO, ok(name)))
            .await
            .unwrap();
        assert!(!flown(answer).1);
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
    let gate = gate();
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let failure: Result = Err("down".into());
    let (a, b) = tokio::join!(
        gate.reset(
            key,
            counting(&sends, Duration::from_millis(10), failure.clone())
        ),
        gate.reset(key, counting(&sends, Duration::from_millis(10), failure)),
    );
    assert!(flown(a.unwrap()).0.is_err() && flown(b.unwrap()).0.is_err());
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let retry = gate
        .reset(key, counting(&sends, Duration::ZERO, ok("r")))
        .await
        .unwrap();
    assert!(!flown(retry).1);
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_refused_start_leaves_nothing_behind() {
    let store = Arc::new(MemoryStore::default());
    let gate = gate_on(&store);
    let key = gate.key(&pool(), &user("alice"));
    let refused = gate
        .reset(key, || {
            Err::<std::future::Ready<Result>, _>("over the backend guard")
        })
        .await;
    assert!(matches!(refused, Err(GateError::Refused("over the backend guard"))));
    assert!(store.is_empty());
    assert_eq!(gate.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_caller_hanging_up_does_not_cancel_the_send() {
    let gate = gate();
    let key = gate.key(&pool(), &user("alice"));
    let sends = Arc::new(AtomicUsize::new(0));
    let leader = gate.reset(key, counting(&sends, Duration::from_millis(100), ok("r1")));
    // The leader gives up after 10 ms (its caller went away).
    assert!(
        tokio::time::timeout(Duration::from_millis(10), leader)
            .await
            .is_err()
    );
    // A retry joins the call still in flight instead of sending again.
    let retry = gate
        .reset(key, counting(&sends, Duration::ZERO, ok("r2")))
        .await
        .unwrap();
    assert_eq!(flown(retry), (ok("r1"), true));
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_claim_held_elsewhere_is_waited_for_and_lapses_with_its_lease() {
    let store = Arc::new(MemoryStore::default());
    let here = gate_on(&store);
    let key = here.key(&pool(), &user("alice"));
    // Another replica sharing the store claims the user, and dies before it settles.
    assert_eq!(store.claim(key, LEASE).await.unwrap(), Claim::Granted);
    let sends = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let answer = here
        .reset(key, counting(&sends, Duration::ZERO, ok("r")))
        .await
        .unwrap();
    assert!(!flown(answer).1);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let waited = started.elapsed();
    assert!(
        waited >= LEASE && waited < LEASE + 2 * BUSY_POLL,
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_under_many_distinct_users() {
    let store = Arc::new(MemoryStore::default());
    let gate = gate_on(&store);
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
        gate.reset(key, counting(&sends, Duration::ZERO, Ok(None)))
            .await
            .unwrap();
        if i % 25 == 24 {
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        peak = peak.max(store.len());
    }
    // 30 s of 25/s is 750 live users; sweeping lets the map reach at most about twice that.
    assert!(peak <= 2 * 1024, "peak {peak}");
    assert_eq!(sends.load(Ordering::SeqCst), 300_000);
    assert_eq!(gate.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_call_does_not_poison_the_user() {
    let gate = gate();
    let key = gate.key(&pool(), &user("alice"));
    let panicked = gate
        .reset(key, || {
            Ok(async {
                panic!("a backend bug");
                #[allow(unreachable_code)]
                Ok(None)
            })
        })
        .await;
    assert!(matches!(panicked, Err(GateError::Lost)));
    assert_eq!(gate.in_flight(), 0, "the entry went with the task");
    let sends = Arc::new(AtomicUsize::new(0));
    let next = tokio::time::timeout(
        Duration::from_secs(1),
        gate.reset(key, counting(&sends, Duration::ZERO, ok("r"))),
    )
    .await
    .expect("the claim was given back, not left to lapse")
    .unwrap();
    assert!(!flown(next).1);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}
