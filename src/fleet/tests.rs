//! The fleet's scripts against a real `redis-server`, where the gateway cannot set the scene: a
//! settle that comes late, after its lease or its request id's lifetime. tests/api/fleet.rs
//! drives whole replicas.

use super::*;
use crate::{domain::UserPoolId, gate::Claim};

#[path = "../../tests/kit/redis.rs"]
#[allow(
    dead_code,
    unreachable_pub,
    reason = "the kit serves the API tests too, as their own module; these use part of it"
)]
mod kit;

const TIMES: Times = Times {
    cooldown: Duration::from_secs(30),
    lease: Duration::from_secs(5),
    request_ttl: Duration::from_secs(3600),
};

fn store(redis: &kit::Redis, times: Times, on_unavailable: OnUnavailable) -> FleetStore {
    let settings = FleetSettings {
        redis_url: redis.url(),
        redis_password: None,
        redis_ca: None,
        key_prefix: "cognito-gateway".into(),
        user_key_secret: [1; 32],
        timeout: Duration::from_secs(2),
        on_unavailable,
        replicas_hint: 1,
    };
    let budgets = Budgets {
        backend: (1_000_000, 1_000_000),
        pool: (0, 0),
    };
    FleetStore::new(&settings, times, budgets).expect("a usable URL")
}

fn ticket(user: u8, request: Option<u8>, claim: u64) -> Ticket {
    Ticket {
        user: [user; 16],
        request: request.map(|request| [request; 16]),
        pool: UserPoolId::parse("us-east-1_Fleet".into()).unwrap(),
        caller: None,
        claim,
    }
}

fn sent(id: &str) -> Outcome {
    Outcome::Sent {
        request_id: Some(id.into()),
    }
}

fn unknown() -> Outcome {
    Outcome::Unknown {
        exception: "Timeout".into(),
        request_id: None,
        from_cognito: false,
    }
}

/// Two calls granted `user` in turn (claims 1 and 2), with `request`: the first's lease lapsed
/// (as time would have it) before the second was, so a settle of the first is late.
async fn overtaken(
    store: &FleetStore,
    redis: &kit::Redis,
    user: u8,
    request: Option<u8>,
) -> (Ticket, Ticket) {
    let first = ticket(user, request, 1);
    assert_eq!(claim(store, &first).await, Claim::Granted);
    redis.end_cooldowns();
    let second = ticket(user, request, 2);
    assert_eq!(claim(store, &second).await, Claim::Granted);
    (first, second)
}

async fn claim(store: &FleetStore, ticket: &Ticket) -> Claim {
    store.claim(ticket).await.expect("the store answers")
}

fn remembered(claim: &Claim) -> Option<&Outcome> {
    match claim {
        Claim::Remembered { outcome, .. } => Some(outcome),
        _ => None,
    }
}

#[tokio::test]
async fn a_late_settle_leaves_another_calls_outcome_alone() {
    let redis = kit::Redis::start();
    let store = store(&redis, TIMES, OnUnavailable::Deny);
    // A call's lease lapses; another is granted the user, sends, and is remembered.
    let (first, second) = overtaken(&store, &redis, 1, None).await;
    store.settle(&second, Some(&sent("r2"))).await.unwrap();
    // As time would have it: the second's cooldown is nearly over.
    redis.expire_in(&store.shared.keys.user(&first.user), Duration::from_secs(2));
    // The first call ends at last, failed or unknown: the second's send stays remembered, and
    // after an unknown outcome the cooldown runs from the first call's end too.
    for (late, extended) in [(None, false), (Some(unknown()), true)] {
        store.settle(&first, late.as_ref()).await.unwrap();
        let next = claim(&store, &ticket(1, None, 3)).await;
        assert_eq!(remembered(&next), Some(&sent("r2")), "after {late:?}");
        let Claim::Remembered { left, .. } = next else {
            unreachable!("checked above")
        };
        assert_eq!(
            left > Duration::from_secs(2),
            extended,
            "{left:?} after {late:?}"
        );
    }
}

#[tokio::test]
async fn a_late_outcome_told_while_another_call_is_in_flight_is_kept_by_it() {
    let redis = kit::Redis::start();
    let store = store(&redis, TIMES, OnUnavailable::Deny);
    let (first, second) = overtaken(&store, &redis, 8, None).await;
    // The first call ends at last, and may have sent; the second is still in flight.
    store.settle(&first, Some(&unknown())).await.unwrap();
    assert_eq!(claim(&store, &ticket(8, None, 3)).await, Claim::Busy);
    // The second sends nothing: the first's outcome is remembered, its cooldown from its end.
    store.settle(&second, None).await.unwrap();
    let next = claim(&store, &ticket(8, None, 4)).await;
    assert_eq!(remembered(&next), Some(&unknown()));
    let Claim::Remembered { left, .. } = next else {
        unreachable!("checked above")
    };
    assert!(left > TIMES.cooldown - Duration::from_secs(5), "{left:?}");
}

#[tokio::test]
async fn an_outcome_told_after_its_request_ids_lifetime_is_still_told() {
    let redis = kit::Redis::start();
    let times = Times {
        request_ttl: Duration::from_secs(1),
        ..TIMES
    };
    let store = store(&redis, times, OnUnavailable::Deny);
    let late = ticket(2, Some(2), 1);
    assert_eq!(claim(&store, &late).await, Claim::Granted);
    // Told 2 s after the call ended (an outage in between): the request id has lapsed (as time
    // would have it), the cooldown has not.
    let request_key = store.shared.keys.request(late.request.as_ref());
    redis.delete(&request_key);
    store
        .shared
        .settle(&late, Some(&sent("r1")), Duration::from_secs(2))
        .await
        .expect("the store takes it");
    let repeat = claim(&store, &ticket(2, None, 2)).await;
    assert_eq!(remembered(&repeat), Some(&sent("r1")));
    assert!(
        !redis.dump().iter().any(|(key, _)| *key == request_key),
        "a lapsed request id is not written again"
    );
}

#[tokio::test]
async fn something_unreadable_at_a_users_key_keeps_no_outcome_from_the_store() {
    let redis = kit::Redis::start();
    let store = store(&redis, TIMES, OnUnavailable::Deny);
    let (odd, wrong_type, told) = (
        ticket(3, Some(3), 1),
        ticket(5, Some(5), 1),
        ticket(4, None, 1),
    );
    for call in [&odd, &wrong_type, &told] {
        assert_eq!(claim(&store, call).await, Claim::Granted);
    }
    // What the gateway never writes sits at two users' keys, and at their request ids'.
    let keys = &store.shared.keys;
    redis.set_raw(&keys.user(&odd.user), "not json");
    redis.set_raw(&keys.request(odd.request.as_ref()), "[1]");
    redis.delete(&keys.user(&wrong_type.user));
    redis.add_to_set(&keys.user(&wrong_type.user), "x");
    redis.delete(&keys.request(wrong_type.request.as_ref()));
    redis.add_to_set(&keys.request(wrong_type.request.as_ref()), "y");
    store.shared.up.store(false, Ordering::Relaxed);
    for call in [&odd, &wrong_type, &told] {
        store.settle(call, Some(&sent("r"))).await.unwrap();
    }
    assert_eq!(store.shared.unsettled.lock().unwrap().len(), 3);
    // All are told (what is unreadable is left alone): the store can be used again.
    store
        .shared
        .flush()
        .await
        .expect("the store takes them all");
    assert!(store.shared.unsettled.lock().unwrap().is_empty());
    let dump = redis.dump();
    for (key, value) in [
        (keys.user(&odd.user), "not json"),
        (keys.request(odd.request.as_ref()), "[1]"),
        (keys.user(&wrong_type.user), "x"),
        (keys.request(wrong_type.request.as_ref()), "y"),
    ] {
        assert!(dump.contains(&(key, value.to_owned())), "{dump:?}");
    }
    store.shared.up.store(true, Ordering::Relaxed);
    let repeat = claim(&store, &ticket(4, None, 2)).await;
    assert_eq!(remembered(&repeat), Some(&sent("r")));
    // A claim of ours holding a late outcome the gateway never writes: its own outcome is kept.
    let oddly_late = ticket(9, None, 1);
    assert_eq!(claim(&store, &oddly_late).await, Claim::Granted);
    redis.set_raw(
        &keys.user(&oddly_late.user),
        r#"{"c":"1","l":null,"lu":"9999999999999"}"#,
    );
    store.settle(&oddly_late, Some(&sent("r9"))).await.unwrap();
    assert!(store.is_up(), "the settle went through");
    let repeat = claim(&store, &ticket(9, None, 2)).await;
    assert_eq!(remembered(&repeat), Some(&sent("r9")));
    // A claim takes such a key for nothing, and overwrites it.
    assert_eq!(claim(&store, &ticket(3, None, 2)).await, Claim::Granted);
    assert_eq!(claim(&store, &ticket(5, None, 2)).await, Claim::Granted);
}

#[tokio::test]
async fn a_late_settle_leaves_a_request_ids_later_outcome_alone() {
    let redis = kit::Redis::start();
    let times = Times {
        cooldown: Duration::ZERO,
        ..TIMES
    };
    let store = store(&redis, times, OnUnavailable::Deny);
    // A call with request id 5 is granted; its lease lapses before it is told (an outage). The
    // caller's retry of the id is granted, sends, and is recorded.
    let (first, retry) = overtaken(&store, &redis, 5, Some(5)).await;
    store.settle(&retry, Some(&sent("r5"))).await.unwrap();
    // The first call ends at last with nothing sent, or unknown: the id keeps its outcome.
    for late in [None, Some(unknown())] {
        store.settle(&first, late.as_ref()).await.unwrap();
        let again = claim(&store, &ticket(5, Some(5), 3)).await;
        assert_eq!(remembered(&again), Some(&sent("r5")), "after {late:?}");
    }
    // Nor is an id taken, once lapsed, for another user.
    let lapsed = ticket(6, Some(6), 1);
    assert_eq!(claim(&store, &lapsed).await, Claim::Granted);
    redis.delete(&store.shared.keys.request(lapsed.request.as_ref()));
    let other_user = ticket(7, Some(6), 2);
    assert_eq!(claim(&store, &other_user).await, Claim::Granted);
    store.settle(&lapsed, Some(&sent("r6"))).await.unwrap();
    let again = claim(&store, &ticket(7, Some(6), 3)).await;
    assert_eq!(
        again,
        Claim::Busy,
        "the id is still the other user's, in flight"
    );
}
