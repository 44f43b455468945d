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
    let first = ticket(1, None, 1);
    assert_eq!(claim(&store, &first).await, Claim::Granted);
    // Its lease lapses; another call is granted the user, sends, and is remembered.
    redis.end_cooldowns();
    let second = ticket(1, None, 2);
    assert_eq!(claim(&store, &second).await, Claim::Granted);
    store.settle(&second, Some(&sent("r2"))).await.unwrap();
    // The first call ends at last, failed or unknown: the second's send stays remembered.
    let unknown = Outcome::Unknown {
        exception: "InternalErrorException".into(),
        request_id: None,
        from_cognito: true,
    };
    for late in [None, Some(unknown)] {
        store.settle(&first, late.as_ref()).await.unwrap();
        let next = claim(&store, &ticket(1, None, 3)).await;
        assert_eq!(remembered(&next), Some(&sent("r2")), "after {late:?}");
    }
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
        .map_err(StoreError::from)
        .expect("the store takes it");
    let repeat = claim(&store, &ticket(2, None, 2)).await;
    assert_eq!(remembered(&repeat), Some(&sent("r1")));
    assert!(
        !redis.dump().iter().any(|(key, _)| *key == request_key),
        "a lapsed request id is not written again"
    );
}

#[tokio::test]
async fn missed_outcomes_the_store_refuses_do_not_keep_it_down() {
    let redis = kit::Redis::start();
    let store = store(&redis, TIMES, OnUnavailable::Deny);
    let (refused, told) = (ticket(3, None, 1), ticket(4, None, 1));
    assert_eq!(claim(&store, &refused).await, Claim::Granted);
    assert_eq!(claim(&store, &told).await, Claim::Granted);
    // Something the settle script cannot read sits at one user's key.
    redis.set_raw(&store.shared.keys.user(&refused.user), "not json");
    store.shared.up.store(false, Ordering::Relaxed);
    store.settle(&refused, Some(&sent("r3"))).await.unwrap();
    store.settle(&told, Some(&sent("r4"))).await.unwrap();
    assert_eq!(store.shared.unsettled.lock().unwrap().len(), 2);
    // The refused one is dropped, the other told: the store can be used again.
    store.shared.flush().await.expect("nothing left unanswered");
    assert!(store.shared.unsettled.lock().unwrap().is_empty());
    // As the probe does once the flush is through.
    store.shared.up.store(true, Ordering::Relaxed);
    let repeat = claim(&store, &ticket(4, None, 2)).await;
    assert_eq!(remembered(&repeat), Some(&sent("r4")));
}
