//! The gate on tokio's paused clock.

use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::time::Instant;

use super::*;

/// A result as the service's would be: a request id, or an error text (`HTTP 5..`: an unknown
/// outcome).
type Result = std::result::Result<Option<String>, String>;

impl FlightResult for Result {
    fn remembered(&self) -> Option<Outcome> {
        match self {
            Ok(request_id) => Some(Outcome::Sent {
                request_id: request_id.clone(),
            }),
            Err(error) if error.starts_with("HTTP 5") => Some(unknown()),
            Err(_) => None,
        }
    }

    fn unanswered(&self) {}
}

type Gate = UserGate<Result>;

const TIMES: Times = Times {
    cooldown: Duration::from_secs(30),
    lease: Duration::from_secs(5),
    request_ttl: Duration::from_secs(3600),
};

/// A store with budgets out of the way (the tests of budgets set their own). The buckets run on the
/// real clock, not tokio's paused one: these are far beyond what the tests spend.
fn store() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(TIMES, (10_000_000, 10_000_000), (0, 0)))
}

fn gate() -> Arc<Gate> {
    gate_on(&store())
}

/// A gate whose store the test can look into.
fn gate_on(store: &Arc<MemoryStore>) -> Arc<Gate> {
    Arc::new(UserGate::new([7; 32], Arc::clone(store) as _))
}

fn ticket(gate: &Gate, name: &str) -> Ticket {
    Ticket {
        user: gate.user_key(&pool(), name),
        request: None,
        pool: pool(),
        caller: None,
        claim: 0,
    }
}

fn with_request(gate: &Gate, name: &str, id: &str) -> Ticket {
    let id = RequestId::parse(id.into()).unwrap().unwrap();
    Ticket {
        request: Some(gate.request_key("billing", &id)),
        ..ticket(gate, name)
    }
}

fn pool() -> UserPoolId {
    UserPoolId::parse("us-east-1_Gate".into()).unwrap()
}

fn ok(id: &str) -> Result {
    Ok(Some(id.into()))
}

fn unknown() -> Outcome {
    Outcome::Unknown {
        exception: "InternalErrorException".into(),
        request_id: None,
        from_cognito: true,
    }
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
) -> impl FnOnce() -> Pin<Box<dyn Future<Output = Result> + Send>> + use<> {
    let sends = Arc::clone(sends);
    move || {
        sends.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            result
        })
    }
}

fn flown(answer: Answer<Result>) -> (Result, bool) {
    match answer {
        Answer::Flown {
            result,
            deduplicated,
        } => (result, deduplicated),
        Answer::Remembered { outcome, .. } => panic!("remembered {outcome:?}, expected a flight"),
    }
}

#[tokio::test(start_paused = true)]
async fn fifty_concurrent_resets_of_one_user_make_one_send() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    let calls = (0..50).map(|_| {
        let gate = Arc::clone(&gate);
        let start = counting(&sends, Duration::from_millis(100), ok("r1"));
        let ticket = ticket(&gate, "alice");
        tokio::spawn(async move { gate.reset(ticket, start).await })
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
    let sends = Arc::new(AtomicUsize::new(0));
    let first = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r1")),
        )
        .await;
    assert!(!flown(first.unwrap()).1);
    tokio::time::advance(Duration::from_secs(29)).await;
    let repeat = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r2")),
        )
        .await
        .unwrap();
    assert_eq!(
        repeat,
        Answer::Remembered {
            outcome: sent("r1"),
            left: Duration::from_secs(1)
        },
        "the answer of the call it repeats, and what is left of the cooldown"
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    tokio::time::advance(Duration::from_secs(2)).await;
    let after = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r3")),
        )
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
        let answer = gate
            .reset(
                ticket(&gate, name),
                counting(&sends, Duration::ZERO, ok(name)),
            )
            .await
            .unwrap();
        assert!(!flown(answer).1);
    }
    let other_pool = UserPoolId::parse("us-east-1_Other".into()).unwrap();
    assert_ne!(
        gate.user_key(&pool(), "alice"),
        gate.user_key(&other_pool, "alice")
    );
    // The separator keeps ("a_b", "c") and ("a", "b_c")-like splits apart.
    let a = UserPoolId::parse("x_ab".into()).unwrap();
    let b = UserPoolId::parse("x_a".into()).unwrap();
    assert_ne!(gate.user_key(&a, "c"), gate.user_key(&b, "bc"));
    // A user key and a request key of the same text differ.
    let id = RequestId::parse("123e4567-e89b-12d3-a456-426614174000".into())
        .unwrap()
        .unwrap();
    assert_ne!(gate.request_key("x_a", &id), gate.user_key(&b, id.as_str()));
    // Another key, other hashes: the key is what makes them mean something.
    let other = UserGate::<Result>::new([8; 32], store());
    assert_ne!(
        other.user_key(&pool(), "alice"),
        gate.user_key(&pool(), "alice")
    );
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn definite_failures_are_shared_but_not_remembered() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    let failure: Result = Err("user not found".into());
    let (a, b) = tokio::join!(
        gate.reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::from_millis(10), failure.clone())
        ),
        gate.reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::from_millis(10), failure)
        ),
    );
    assert!(flown(a.unwrap()).0.is_err() && flown(b.unwrap()).0.is_err());
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let retry = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await
        .unwrap();
    assert!(!flown(retry).1);
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_is_remembered_like_a_success() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    let first = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, Err("HTTP 500".into())),
        )
        .await
        .unwrap();
    assert_eq!(flown(first), (Err("HTTP 500".into()), false));
    tokio::time::advance(Duration::from_secs(10)).await;
    let repeat = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await
        .unwrap();
    assert_eq!(
        repeat,
        Answer::Remembered {
            outcome: unknown(),
            left: Duration::from_secs(20)
        }
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1, "never sent again");
}

#[tokio::test(start_paused = true)]
async fn a_request_id_keeps_its_outcome_beyond_the_cooldown() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    const ID: &str = "123e4567-e89b-12d3-a456-426614174000";
    let first = gate
        .reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::ZERO, ok("r1")),
        )
        .await
        .unwrap();
    assert!(!flown(first).1);
    // Past the cooldown, a new call for alice sends again, but a retry of the id does not.
    tokio::time::advance(TIMES.cooldown + Duration::from_secs(1)).await;
    let retry = gate
        .reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::ZERO, ok("r2")),
        )
        .await
        .unwrap();
    assert_eq!(
        retry,
        Answer::Remembered {
            outcome: sent("r1"),
            left: Duration::ZERO
        }
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    // The id belongs to alice: for bob it is refused, and nothing is sent.
    let reused = gate
        .reset(
            with_request(&gate, "bob", ID),
            counting(&sends, Duration::ZERO, ok("r3")),
        )
        .await;
    assert!(
        matches!(reused, Err(GateError::RequestReused)),
        "{reused:?}"
    );
    // Another caller's equal id is another id.
    let mut other_caller = with_request(&gate, "bob", ID);
    other_caller.request =
        Some(gate.request_key("ops", &RequestId::parse(ID.into()).unwrap().unwrap()));
    let bob = gate
        .reset(other_caller, counting(&sends, Duration::ZERO, ok("r4")))
        .await
        .unwrap();
    assert!(!flown(bob).1);
    // Past the id's own lifetime it is forgotten.
    tokio::time::advance(TIMES.request_ttl).await;
    let fresh = gate
        .reset(
            with_request(&gate, "bob", ID),
            counting(&sends, Duration::ZERO, ok("r5")),
        )
        .await
        .unwrap();
    assert!(!flown(fresh).1);
    assert_eq!(sends.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn a_request_id_whose_call_failed_definitely_is_processed_anew() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    const ID: &str = "00000000-0000-4000-8000-000000000001";
    let failed = gate
        .reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::ZERO, Err("throttled".into())),
        )
        .await
        .unwrap();
    assert!(flown(failed).0.is_err());
    let retry = gate
        .reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await
        .unwrap();
    assert_eq!(flown(retry), (ok("r"), false));
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_request_id_that_joined_a_call_learns_its_outcome() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    const ID: &str = "00000000-0000-4000-8000-000000000002";
    // A call without an id is in flight; a call with an id joins it.
    let (plain, with_id) = tokio::join!(
        gate.reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::from_millis(100), ok("r1"))
        ),
        async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            gate.reset(
                with_request(&gate, "alice", ID),
                counting(&sends, Duration::ZERO, ok("r2")),
            )
            .await
        }
    );
    assert_eq!(flown(plain.unwrap()), (ok("r1"), false));
    assert!(matches!(
        with_id.unwrap(),
        Answer::Remembered { outcome, .. } if outcome == sent("r1")
    ));
    // Long after the cooldown, the id still answers with the call it joined.
    tokio::time::advance(TIMES.cooldown * 2).await;
    let retry = gate
        .reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::ZERO, ok("r3")),
        )
        .await
        .unwrap();
    assert!(matches!(retry, Answer::Remembered { outcome, .. } if outcome == sent("r1")));
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn budgets_are_spent_only_by_calls_that_go_to_cognito() {
    let store = Arc::new(MemoryStore::new(TIMES, (1, 1), (0, 0)));
    let gate = gate_on(&store);
    let sends = Arc::new(AtomicUsize::new(0));
    gate.reset(
        ticket(&gate, "alice"),
        counting(&sends, Duration::ZERO, ok("r")),
    )
    .await
    .unwrap();
    // Alice's repeat is answered from memory, whatever the budget.
    let repeat = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await
        .unwrap();
    assert!(matches!(repeat, Answer::Remembered { .. }));
    // Bob needs a send, and the backend guard has none left this second.
    let refused = gate
        .reset(
            ticket(&gate, "bob"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await;
    assert!(
        matches!(refused, Err(GateError::Limited { limit: crate::rate::Limit::Backend, wait })
            if wait > Duration::from_millis(900) && wait <= Duration::from_secs(1)),
        "{refused:?}"
    );
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    assert_eq!(gate.in_flight(), 0, "a refusal leaves nothing behind");
    // A pool's own share is refused as the pool's.
    let pools = Arc::new(MemoryStore::new(TIMES, (100, 100), (1, 1)));
    let gate = gate_on(&pools);
    gate.reset(
        ticket(&gate, "alice"),
        counting(&sends, Duration::ZERO, ok("r")),
    )
    .await
    .unwrap();
    let refused = gate
        .reset(
            ticket(&gate, "bob"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(GateError::Limited {
                limit: crate::rate::Limit::Pool(_),
                ..
            })
        ),
        "{refused:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_caller_hanging_up_does_not_cancel_the_send() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    let leader = gate.reset(
        ticket(&gate, "alice"),
        counting(&sends, Duration::from_millis(100), ok("r1")),
    );
    // The leader gives up after 10 ms (its caller went away).
    assert!(
        tokio::time::timeout(Duration::from_millis(10), leader)
            .await
            .is_err()
    );
    // A retry joins the call still in flight instead of sending again.
    let retry = gate
        .reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r2")),
        )
        .await
        .unwrap();
    assert_eq!(flown(retry), (ok("r1"), true));
    assert_eq!(sends.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn a_claim_held_elsewhere_is_waited_for_and_lapses_with_its_lease() {
    let store = store();
    let here = gate_on(&store);
    // Another replica sharing the store claims the user, and dies before it settles.
    assert_eq!(
        store.claim(&ticket(&here, "alice")).await.unwrap(),
        Claim::Granted
    );
    let sends = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let answer = here
        .reset(
            ticket(&here, "alice"),
            counting(&sends, Duration::ZERO, ok("r")),
        )
        .await
        .unwrap();
    assert!(!flown(answer).1);
    assert_eq!(sends.load(Ordering::SeqCst), 1);
    let waited = started.elapsed();
    assert!(
        waited >= TIMES.lease && waited < TIMES.lease + 2 * BUSY_POLL,
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn only_calls_that_wait_on_another_are_noted_as_waiting() {
    use std::sync::atomic::AtomicBool;
    let store = store();
    let gate = gate_on(&store);
    let sends = Arc::new(AtomicUsize::new(0));
    let noted = || {
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        (flag, move || set.store(true, Ordering::SeqCst))
    };
    // A leader, and a caller here that joins its call.
    let (leader_waited, leader_waits) = noted();
    let leader = {
        let gate = Arc::clone(&gate);
        let start = counting(&sends, Duration::from_millis(100), ok("r1"));
        let ticket = ticket(&gate, "alice");
        tokio::spawn(async move { gate.reset_noting(ticket, leader_waits, start).await })
    };
    tokio::task::yield_now().await;
    let (joiner_waited, joiner_waits) = noted();
    let joined = gate
        .reset_noting(
            ticket(&gate, "alice"),
            joiner_waits,
            counting(&sends, Duration::ZERO, ok("r2")),
        )
        .await
        .unwrap();
    assert!(flown(joined).1, "it shared the leader's call");
    leader.await.unwrap().unwrap();
    assert!(joiner_waited.load(Ordering::SeqCst));
    assert!(!leader_waited.load(Ordering::SeqCst));
    // Remembered: nothing to wait on.
    let (repeat_waited, repeat_waits) = noted();
    gate.reset_noting(
        ticket(&gate, "alice"),
        repeat_waits,
        counting(&sends, Duration::ZERO, ok("r3")),
    )
    .await
    .unwrap();
    assert!(!repeat_waited.load(Ordering::SeqCst));
    // A claim held elsewhere (another replica): waited on too.
    assert_eq!(store.claim_now(&ticket(&gate, "bob")), Claim::Granted);
    let (busy_waited, busy_waits) = noted();
    gate.reset_noting(
        ticket(&gate, "bob"),
        busy_waits,
        counting(&sends, Duration::ZERO, ok("r4")),
    )
    .await
    .unwrap();
    assert!(busy_waited.load(Ordering::SeqCst));
    assert_eq!(sends.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_under_many_distinct_users() {
    let store = store();
    let gate = gate_on(&store);
    let sends = Arc::new(AtomicUsize::new(0));
    let mut peak = 0;
    // 300,000 distinct users (over three hours of traffic) at 25 resets a second, the backend
    // guard's rate, each with a request id. The bound does not depend on the count: more only
    // takes longer. Request ids live longest: an hour here.
    for i in 0..300_000u32 {
        let mut ticket = ticket(&gate, &i.to_string());
        ticket.request = Some(ticket.user);
        gate.reset(ticket, counting(&sends, Duration::ZERO, Ok(None)))
            .await
            .unwrap();
        if i % 25 == 24 {
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        peak = peak.max(store.len());
    }
    // An hour of 25/s is 90,000 live ids, 30 s of it 750 users; sweeping lets the maps reach
    // at most about twice that.
    assert!(peak <= 2 * (90_000 + 750) + 2 * 1024, "peak {peak}");
    assert_eq!(sends.load(Ordering::SeqCst), 300_000);
    assert_eq!(gate.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_panics_after_it_may_have_sent_is_an_unknown_outcome() {
    let gate = gate();
    let panicked = gate
        .reset(ticket(&gate, "alice"), || async {
            panic!("a backend bug");
            #[allow(unreachable_code)]
            Ok(None)
        })
        .await;
    assert!(matches!(panicked, Err(GateError::Lost)));
    assert_eq!(gate.in_flight(), 0, "the entry went with the task");
    // The reset may have gone out before the panic: repeats are told so, and nothing is sent.
    let sends = Arc::new(AtomicUsize::new(0));
    let next = tokio::time::timeout(
        Duration::from_secs(1),
        gate.reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::ZERO, ok("r")),
        ),
    )
    .await
    .expect("the claim was settled, not left to lapse")
    .unwrap();
    assert!(
        matches!(&next, Answer::Remembered { outcome: Outcome::Unknown { exception, .. }, .. } if exception == "Panic"),
        "{next:?}"
    );
    assert_eq!(sends.load(Ordering::SeqCst), 0);
}

/// Two calls granted `base`'s user in turn (claims 1 and 2): the first's lease lapsed before the
/// second, so a settle of the first is late.
async fn overtaken(store: &MemoryStore, base: Ticket, lease: Duration) -> (Ticket, Ticket) {
    let first = Ticket {
        claim: 1,
        ..base.clone()
    };
    assert_eq!(store.claim_now(&first), Claim::Granted);
    tokio::time::advance(lease).await;
    let second = Ticket { claim: 2, ..base };
    assert_eq!(store.claim_now(&second), Claim::Granted);
    (first, second)
}

#[tokio::test(start_paused = true)]
async fn a_late_settle_leaves_another_calls_claim_alone() {
    let store = store();
    let gate = gate_on(&store);
    // A call's lease lapses; another is granted the user.
    let (first, second) = overtaken(&store, ticket(&gate, "alice"), TIMES.lease).await;
    // The first call ends at last, with nothing sent: the second still holds the user.
    store.settle_now(&first, None);
    assert_eq!(store.claim_now(&ticket(&gate, "alice")), Claim::Busy);
    store.settle_now(&second, Some(&sent("r2")));
    assert!(matches!(
        store.claim_now(&ticket(&gate, "alice")),
        Claim::Remembered { outcome, .. } if outcome == sent("r2")
    ));
}

#[tokio::test(start_paused = true)]
async fn a_late_settle_leaves_another_calls_outcome_alone() {
    let store = store();
    let gate = gate_on(&store);
    // A call's lease lapses; another is granted the user, sends, and is remembered.
    let (first, second) = overtaken(&store, ticket(&gate, "alice"), TIMES.lease).await;
    store.settle_now(&second, Some(&sent("r2")));
    tokio::time::advance(Duration::from_secs(10)).await;
    // The first call ends at last, failed or unknown: the second's send stays remembered, and
    // after an unknown outcome the cooldown runs from the first call's end too.
    for (late, cooldown_left) in [
        (None, TIMES.cooldown - Duration::from_secs(10)),
        (Some(unknown()), TIMES.cooldown),
    ] {
        store.settle_now(&first, late.as_ref());
        assert!(
            matches!(
                store.claim_now(&ticket(&gate, "alice")),
                Claim::Remembered { outcome, left } if outcome == sent("r2") && left == cooldown_left
            ),
            "after a late settle with {late:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_late_outcome_told_while_another_call_is_in_flight_is_kept_by_it() {
    let store = store();
    let gate = gate_on(&store);
    let (first, second) = overtaken(&store, ticket(&gate, "alice"), TIMES.lease).await;
    // The first call ends at last, and may have sent; the second is still in flight.
    store.settle_now(&first, Some(&unknown()));
    assert_eq!(store.claim_now(&ticket(&gate, "alice")), Claim::Busy);
    tokio::time::advance(Duration::from_secs(1)).await;
    // The second sends nothing: the first's outcome is remembered, its cooldown from its end.
    store.settle_now(&second, None);
    assert_eq!(
        store.claim_now(&ticket(&gate, "alice")),
        Claim::Remembered {
            outcome: unknown(),
            left: TIMES.cooldown - Duration::from_secs(1),
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_call_in_flight_that_sends_is_remembered_over_a_late_outcome() {
    let times = Times {
        cooldown: Duration::from_secs(30),
        lease: Duration::from_secs(60),
        ..TIMES
    };
    let store = Arc::new(MemoryStore::new(times, (10_000_000, 10_000_000), (0, 0)));
    let gate = gate_on(&store);
    let (first, second) = overtaken(&store, ticket(&gate, "alice"), times.lease).await;
    store.settle_now(&first, Some(&unknown()));
    // The second sends: repeats are told of its send, for its cooldown (the later to end).
    tokio::time::advance(Duration::from_secs(10)).await;
    store.settle_now(&second, Some(&sent("r2")));
    assert_eq!(
        store.claim_now(&ticket(&gate, "alice")),
        Claim::Remembered {
            outcome: sent("r2"),
            left: times.cooldown,
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_late_settle_leaves_a_request_ids_later_outcome_alone() {
    let times = Times {
        cooldown: Duration::ZERO,
        ..TIMES
    };
    let store = Arc::new(MemoryStore::new(times, (10_000_000, 10_000_000), (0, 0)));
    let gate = gate_on(&store);
    // A call with a request id is granted; its lease lapses before it is told.
    let id = with_request(&gate, "alice", "7f0c5a1e-2b6d-4c3e-9a8f-1d2e3f4a5b6c");
    // The caller's retry of the id is granted, sends, and is recorded.
    let (first, retry) = overtaken(&store, id, TIMES.lease).await;
    store.settle_now(&retry, Some(&sent("r2")));
    // The first call ends at last, with nothing sent or unknown: the id keeps its outcome.
    for late in [None, Some(unknown())] {
        store.settle_now(&first, late.as_ref());
        assert!(
            matches!(
                store.claim_now(&Ticket { claim: 3, ..first.clone() }),
                Claim::Remembered { outcome, .. } if outcome == sent("r2")
            ),
            "after a late settle with {late:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn without_a_cooldown_an_outcome_is_kept_only_for_those_who_waited() {
    let times = Times {
        cooldown: Duration::ZERO,
        ..TIMES
    };
    let store = Arc::new(MemoryStore::new(times, (10_000_000, 10_000_000), (0, 0)));
    let gate = gate_on(&store);
    let mut claim = ticket(&gate, "alice");
    claim.claim = 1;
    // Nobody waited: nothing is remembered.
    assert_eq!(store.claim_now(&claim), Claim::Granted);
    store.settle_now(&claim, Some(&sent("r1")));
    assert_eq!(store.claim_now(&claim), Claim::Granted);
    // A call from elsewhere waited on this one: it learns the outcome rather than send again.
    assert_eq!(store.claim_now(&ticket(&gate, "alice")), Claim::Busy);
    store.settle_now(&claim, Some(&sent("r2")));
    assert!(matches!(
        store.claim_now(&ticket(&gate, "alice")),
        Claim::Remembered { outcome, .. } if outcome == sent("r2")
    ));
    tokio::time::advance(FLIGHT_GRACE).await;
    assert_eq!(store.claim_now(&ticket(&gate, "alice")), Claim::Granted);
}

#[tokio::test(start_paused = true)]
async fn a_call_without_a_request_id_never_gets_another_calls_request_id_answer() {
    let gate = gate();
    let sends = Arc::new(AtomicUsize::new(0));
    const ID: &str = "00000000-0000-4000-8000-000000000003";
    gate.reset(
        with_request(&gate, "bob", ID),
        counting(&sends, Duration::ZERO, ok("r1")),
    )
    .await
    .unwrap();
    // The id, reused for alice (a caller's bug), beside a plain call for alice.
    let (reused, plain) = tokio::join!(
        gate.reset(
            with_request(&gate, "alice", ID),
            counting(&sends, Duration::from_millis(10), ok("r2"))
        ),
        gate.reset(
            ticket(&gate, "alice"),
            counting(&sends, Duration::from_millis(10), ok("r3"))
        ),
    );
    assert!(
        matches!(reused, Err(GateError::RequestReused)),
        "{reused:?}"
    );
    assert!(plain.is_ok(), "{plain:?}");
}

#[tokio::test(start_paused = true)]
async fn too_many_request_ids_lose_their_oldest_first() {
    let store = store();
    let gate = gate_on(&store);
    let key = |i: u32| {
        let mut key = [0u8; 16];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key
    };
    let with_id = |i: u32, user: &str| Ticket {
        request: Some(key(i)),
        ..ticket(&gate, user)
    };
    let total = 110_000;
    for i in 0..total {
        let ticket = with_id(i, &i.to_string());
        assert_eq!(store.claim_now(&ticket), Claim::Granted);
        store.settle_now(&ticket, Some(&sent("r")));
        tokio::time::advance(Duration::from_millis(1)).await;
    }
    assert!(store.len() <= 2 * 100_000, "{}", store.len());
    // The newest id still belongs to its user; the oldest was forgotten, so it is free again.
    let newest = with_id(total - 1, "someone else");
    assert_eq!(store.claim_now(&newest), Claim::RequestReused);
    let oldest = with_id(0, "someone else");
    assert_eq!(store.claim_now(&oldest), Claim::Granted);
}
