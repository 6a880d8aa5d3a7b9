//! Leader election against the real API server: the write fence, and expiry judged
//! by the candidate's own clock (client-go's semantics).

use std::time::{Duration, Instant};

use berth::controller::leader::{Elector, LEASE_NAME, Timing};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, PostParams};
use serde_json::json;

use crate::common::{self, eventually};

fn timing() -> Timing {
    Timing::new(
        Duration::from_secs(4),
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .expect("valid timing")
}

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({ "metadata": { "name": name } })).expect("configmap")
}

#[tokio::test]
async fn the_fence_refuses_writes_past_the_renew_deadline_before_anyone_may_take_over() {
    let client = common::client().await;
    let ns = common::namespace(&client, "leader-fence").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let leader = Elector::new(leases.clone(), "fence-a".into(), timing());
    assert!(leader.try_acquire_or_renew().await.expect("take the Lease"));
    // The controllers' client: writes pass only while the gate is open.
    let fenced = berth::metrics::client(common::kube_config().await, Some(leader.gate.clone()))
        .expect("client");
    let maps: Api<ConfigMap> = Api::namespaced(fenced, &ns);
    maps.create(&PostParams::default(), &config_map("while-leading"))
        .await
        .expect("a leader writes");

    // No renewal (a frozen renew loop): the gate closes at the renew deadline...
    let renewed = Instant::now();
    eventually(Duration::from_secs(10), "the gate to close", || async {
        !leader.gate.is_open()
    })
    .await;
    let closed_after = renewed.elapsed();
    let refused = maps
        .create(&PostParams::default(), &config_map("after-deadline"))
        .await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("not the controller leader")),
        "a write past the renew deadline must be refused: {refused:?}"
    );
    maps.get("while-leading").await.expect("reads still pass");
    // ...while no other candidate may take the Lease yet: it has not expired.
    let follower = Elector::new(leases.clone(), "fence-b".into(), timing());
    assert!(
        !follower
            .try_acquire_or_renew()
            .await
            .expect("read the Lease"),
        "the Lease was free {closed_after:?} after the last renewal, before its holder stopped"
    );
    assert!(closed_after < Duration::from_secs(4));
    eventually(
        Duration::from_secs(15),
        "the follower to take over",
        || async { follower.try_acquire_or_renew().await.unwrap_or(false) },
    )
    .await;
    assert!(!leader.gate.is_open(), "the old leader stays fenced");
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}

/// A Lease held by `holder` whose `renewTime` is `renewed` (the holder's clock).
async fn put_lease(leases: &Api<Lease>, holder: &str, renewed: &str, transitions: i32) {
    let spec = json!({ "holderIdentity": holder, "leaseDurationSeconds": 4, "renewTime": renewed,
                       "acquireTime": renewed, "leaseTransitions": transitions });
    match leases.get_opt(LEASE_NAME).await.expect("get") {
        None => {
            let l: Lease =
                serde_json::from_value(json!({ "metadata": { "name": LEASE_NAME }, "spec": spec }))
                    .expect("lease");
            leases
                .create(&PostParams::default(), &l)
                .await
                .expect("create lease");
        }
        Some(mut l) => {
            l.spec = Some(serde_json::from_value(spec).expect("spec"));
            leases
                .replace(LEASE_NAME, &PostParams::default(), &l)
                .await
                .expect("replace lease");
        }
    }
}

#[tokio::test]
async fn candidates_judge_expiry_by_their_own_clock_not_the_holders() {
    let client = common::client().await;
    let ns = common::namespace(&client, "leader-skew").await;
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);

    // The holder's clock is years behind: its renewTime looks long expired, yet it
    // just renewed. A candidate must wait a lease duration from when it saw that.
    put_lease(&leases, "slow-clock", "2020-01-01T00:00:00.000000Z", 0).await;
    let candidate = Elector::new(leases.clone(), "candidate".into(), timing());
    let seen = Instant::now();
    assert!(
        !candidate.try_acquire_or_renew().await.expect("read"),
        "a Lease whose holder's clock is behind was taken at once"
    );
    eventually(
        Duration::from_secs(15),
        "the unchanged Lease to expire",
        || async { candidate.try_acquire_or_renew().await.unwrap_or(false) },
    )
    .await;
    assert!(
        seen.elapsed() >= Duration::from_secs(4),
        "taken after {:?}",
        seen.elapsed()
    );

    // The holder's clock is years ahead: its renewTime looks valid until then, yet
    // it stopped renewing. A candidate takes it a lease duration after it stopped.
    put_lease(&leases, "fast-clock", "2099-01-01T00:00:00.000000Z", 1).await;
    let other = Elector::new(leases.clone(), "other".into(), timing());
    assert!(!other.try_acquire_or_renew().await.expect("read"));
    eventually(
        Duration::from_secs(15),
        "a Lease whose holder's clock is ahead to expire",
        || async { other.try_acquire_or_renew().await.unwrap_or(false) },
    )
    .await;
    let _ = Api::<k8s_openapi::api::core::v1::Namespace>::all(client)
        .delete(&ns, &Default::default())
        .await;
}
