//! Per-job authorization over mutual TLS: a certificate without a grant,
//! or with a grant for another job, is refused with PERMISSION_DENIED and
//! changes nothing; readers read and do not write; bearer tokens work until
//! revoked; grants are replicated state every node checks alike.

mod common;

use std::time::Duration;

use common::*;
use streamshield_client::certs::LocalCa;
use streamshield_client::{Client, ClientError, ClientTls, Consistency, Missing, Role};
use tonic::Code;

/// A client of `t` presenting the certificate issued for `name`, or only
/// a bearer `token`.
fn client_as(t: &TestCluster, name: Option<&str>, token: Option<String>) -> Client {
    let dir = t.dir.path().join("tls");
    let identity = name.map(|n| {
        let ca = LocalCa::load(&dir).expect("the cluster's CA");
        let (cert, key) = ca.issue_client(n).unwrap().write(&dir, n).unwrap();
        (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    });
    let mut cfg = client_config(t.cluster.endpoints());
    cfg.deadline = Duration::from_secs(5);
    cfg.tls = Some(ClientTls {
        ca: std::fs::read(dir.join("ca.pem")).unwrap(),
        identity,
    });
    cfg.token = token;
    Client::new(cfg).expect("client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grants_decide_who_may_write_and_read_each_job() {
    let t = TestCluster::start_with(3, &[], |c| c.enable_tls().expect("certificates")).await;
    let admin = t.client();
    admin.create_job("j", 4).await.expect("create j");
    admin.create_job("k", 4).await.expect("create k");
    admin
        .put("j", "s", "x", "admin's")
        .await
        .expect("admin put");

    // A valid certificate with no grant: refused, nothing changed.
    let alice = client_as(&t, Some("alice"), None);
    let e = alice.put("j", "s", "x", "alice's").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = alice.get("j", "s", "x", Consistency::Linearizable).await;
    assert_eq!(e.unwrap_err().code(), Code::PermissionDenied);
    let e = alice.create_job("mine", 4).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let e = alice
        .grant_role("alice", Role::Admin, None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let me = alice.who_am_i().await.expect("whoami needs no grant");
    assert_eq!(
        (me.principal.as_str(), me.authenticated_by.as_str()),
        ("alice", "certificate")
    );
    assert!(!me.superuser && me.grants.is_empty());

    // A writer of j writes j, not k.
    let g = admin
        .grant_role("alice", Role::Writer, Some("j"))
        .await
        .expect("grant");
    assert!(g.changed);
    alice
        .put("j", "s", "x", "alice's")
        .await
        .expect("alice writes j");
    let e = alice.put("k", "s", "x", "alice's").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    // Not even its state table came into being.
    let nothing = admin.get("k", "s", "x", Consistency::Linearizable).await;
    assert!(
        matches!(&nothing, Err(ClientError::NotFound(Missing::State { state, .. })) if state == "s"),
        "the refused write changed nothing: {nothing:?}"
    );

    // A reader of every job reads and does not write.
    admin
        .grant_role("bob", Role::Reader, Some("*"))
        .await
        .expect("grant");
    let bob = client_as(&t, Some("bob"), None);
    let kv = bob
        .get("j", "s", "x", Consistency::Linearizable)
        .await
        .expect("bob reads")
        .expect("x");
    assert_eq!(kv.value, b"alice's");
    let e = bob.put("j", "s", "x", "bob's").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");

    // Listing shows each caller the jobs it may read; deleting is an
    // admin's: alice (a writer of j) sees j, bob (a reader of all) both,
    // and neither deletes.
    let names = |jobs: Vec<streamshield_client::pb::JobSummary>| {
        jobs.into_iter().map(|j| j.job).collect::<Vec<_>>()
    };
    assert_eq!(names(alice.list_jobs().await.unwrap()), ["j"]);
    assert_eq!(names(bob.list_jobs().await.unwrap()), ["j", "k"]);
    for who in [&alice, &bob] {
        let e = who.delete_job("j", true).await.unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{e}");
        // Nor does either take a copy of the whole cluster's state.
        // (at the leader: a follower sends a denied caller there).
        let dir = t.dir.path().join("not-theirs");
        let (_, leader) = admin.wait_for_leader().await.unwrap();
        match who.save_snapshot(&leader, &dir).await {
            Err(streamshield_client::SaveSnapshotError::Client(e)) => {
                assert_eq!(e.code(), Code::PermissionDenied, "{e}")
            }
            other => panic!("a snapshot saved by a non-admin: {other:?}"),
        }
        assert!(!dir.exists());
    }
    let kv = admin.get("j", "s", "x", Consistency::Linearizable).await;
    assert_eq!(kv.unwrap().expect("x").value, b"alice's");

    // A bearer token stands for its principal until it is revoked.
    let token = admin.create_token("bot").await.expect("token");
    admin
        .grant_role("bot", Role::Writer, Some("k"))
        .await
        .expect("grant");
    let bot = client_as(&t, None, Some(token.token.clone()));
    bot.put("k", "s", "y", "bot's")
        .await
        .expect("the bot writes k");
    let me = bot.who_am_i().await.unwrap();
    assert_eq!(
        (me.principal.as_str(), me.authenticated_by.as_str()),
        ("bot", "token")
    );
    let listed = admin.list_grants(Some("bot")).await.unwrap();
    assert_eq!(listed.tokens.len(), 1);
    assert_eq!(listed.tokens[0].token_id, token.token_id);
    assert!(admin.revoke_token(&token.token_id).await.unwrap().changed);
    let e = bot.put("k", "s", "y", "again").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let forged = client_as(&t, None, Some("sst_not-a-token".into()));
    let e = forged.put("k", "s", "y", "forged").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // Revoking takes effect at once; every node holds the grants: a stale
    // read is served, and checked, by the replica it goes to.
    admin
        .revoke_role("alice", Role::Writer, Some("j"))
        .await
        .expect("revoke");
    let e = alice.put("j", "s", "x", "late").await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e}");
    let index = t.leader_status().await.unwrap().last_applied;
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    for id in [1, 2, 3] {
        t.wait_applied(id, index, Duration::from_secs(10)).await;
        let stale = bob
            .get_from(&t.addr(id), "j", "s", "x")
            .await
            .expect("bob reads any replica");
        assert_eq!(stale.kv.map(|kv| kv.value), Some(b"alice's".to_vec()));
        // No replica serves the revoked caller. Only the leader's denial
        // is final; a follower, which could lag behind a grant, sends the
        // caller to the leader instead.
        let e = alice
            .get_from(&t.addr(id), "j", "s", "x")
            .await
            .unwrap_err();
        let want = if id == leader {
            Code::PermissionDenied
        } else {
            Code::Unavailable
        };
        assert_eq!(e.code(), want, "node {id}: {e}");
    }
}
