//! A cluster over mutual TLS: only certificates of the cluster's CA get
//! in, only node certificates reach the Raft service (and only for their
//! own node id), a node with a certificate of another CA cannot join, and
//! certificates rotate on SIGHUP under load without a failed request.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use streamshield_client::certs::{LocalCa, LOCAL_HOSTS};
use streamshield_client::{Client, ClientError, ClientTls, Consistency};
use streamshield_proto::v1::{self as pb, admin_client::AdminClient, raft_client::RaftClient};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

async fn tls_cluster(nodes: u64) -> TestCluster {
    TestCluster::start_with(nodes, &[], |c| c.enable_tls().expect("certificates")).await
}

fn tls_dir(t: &TestCluster) -> std::path::PathBuf {
    t.dir.path().join("tls")
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A client of `t` with `tls` instead of the admin identity.
fn client_with(t: &TestCluster, tls: Option<ClientTls>) -> Client {
    let mut cfg = client_config(t.cluster.endpoints());
    cfg.deadline = Duration::from_secs(3);
    cfg.tls = tls;
    Client::new(cfg).expect("client")
}

/// A raw channel to node `id` presenting `identity` (cert, key PEM).
async fn channel(t: &TestCluster, id: u64, identity: Option<(Vec<u8>, Vec<u8>)>) -> Channel {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&tls_dir(t).join("ca.pem"))))
        .domain_name("127.0.0.1");
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{}", t.addr(id)))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("TLS connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_clusters_certificates_get_in() {
    let t = tls_cluster(3).await;
    let admin = t.client();
    admin.create_job("j", 4).await.expect("create job");
    admin.put("j", "s", "k", "v").await.expect("put");
    let dir = tls_dir(&t);

    // The CA trusted, no certificate of its own: UNAUTHENTICATED.
    let anonymous = client_with(
        &t,
        Some(ClientTls::from_files(&dir.join("ca.pem"), None).unwrap()),
    );
    let e = anonymous.put("j", "s", "k", "anonymous").await.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");
    let e = anonymous
        .get("j", "s", "k", Consistency::Linearizable)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated, "{e}");

    // A certificate of another CA: the handshake fails, nothing is done.
    let other_ca = LocalCa::generate().unwrap();
    let stranger = other_ca.issue_client("admin").unwrap();
    let outsider = client_with(
        &t,
        Some(ClientTls {
            ca: read(&dir.join("ca.pem")),
            identity: Some((
                stranger.cert_pem.clone().into_bytes(),
                stranger.key_pem.clone().into_bytes(),
            )),
        }),
    );
    let e = outsider.put("j", "s", "k", "outsider").await.unwrap_err();
    assert!(
        matches!(
            e,
            ClientError::Unavailable { .. } | ClientError::DeadlineExceeded(_)
        ),
        "{e}"
    );
    // Plaintext to a TLS node gets nowhere either.
    let plain = client_with(&t, None);
    assert!(plain.put("j", "s", "k", "plain").await.is_err());

    // A client certificate of the right CA reaches the client API, never
    // the Raft service.
    let admin_id = (
        read(&dir.join("admin.pem")),
        read(&dir.join("admin-key.pem")),
    );
    let ch = channel(&t, 1, Some(admin_id)).await;
    let vote = pb::VoteRequest {
        vote: Some(pb::Vote {
            leader_id: Some(pb::LeaderId {
                term: 1,
                node_id: 2,
            }),
            committed: false,
        }),
        ..Default::default()
    };
    let e = RaftClient::new(ch.clone()).vote(vote).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    AdminClient::new(ch)
        .status(pb::StatusRequest {})
        .await
        .expect("the admin API takes a client certificate");

    // A node certificate speaks for its own node only.
    let node2 = (
        read(&dir.join("node-2.pem")),
        read(&dir.join("node-2-key.pem")),
    );
    let ch = channel(&t, 1, Some(node2)).await;
    let mut as_three = vote;
    as_three
        .vote
        .as_mut()
        .unwrap()
        .leader_id
        .as_mut()
        .unwrap()
        .node_id = 3;
    let e = RaftClient::new(ch).vote(as_three).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{}", e.message());
    assert!(
        e.message().contains("certified for node 2"),
        "{}",
        e.message()
    );

    // Nothing of it changed anything.
    let kv = admin
        .get("j", "s", "k", Consistency::Linearizable)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((kv.value.as_slice(), kv.version), (&b"v"[..], 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_with_another_cas_certificate_cannot_join() {
    let mut t = tls_cluster(3).await;
    let client = t.client();
    client.create_job("j", 4).await.expect("create job");
    let dir = tls_dir(&t);
    // Node 4 gets the cluster's CA to trust, but its own certificate
    // comes from another CA.
    let other = LocalCa::generate().unwrap();
    let spec = {
        t.cluster.make_joiner(4).ok();
        let issued = other.issue_node(4, LOCAL_HOSTS).unwrap();
        let (cert, key) = issued.write(&dir, "stranger-4").unwrap();
        t.cluster.set_node_args(
            4,
            vec![
                format!("--tls-ca={}", dir.join("ca.pem").display()),
                format!("--tls-cert={}", cert.display()),
                format!("--tls-key={}", key.display()),
            ],
        );
        t.cluster.add_node(4).expect("start node 4")
    };
    let leader = t.wait_for_leader(Duration::from_secs(10)).await;
    let mut admin = AdminClient::new(
        channel(
            &t,
            leader,
            Some((
                read(&dir.join("admin.pem")),
                read(&dir.join("admin-key.pem")),
            )),
        )
        .await,
    );
    admin
        .add_learner(pb::AddLearnerRequest {
            id: 4,
            addr: spec.addr.clone(),
            blocking: false,
        })
        .await
        .expect("the learner is recorded");
    for i in 0..20u64 {
        client
            .put("j", "s", format!("k{i}"), "v")
            .await
            .expect("put");
    }
    let index = t.status(leader).await.unwrap().last_applied;
    // The others catch up; node 4 receives nothing, however long it waits.
    for id in [1, 2, 3] {
        t.wait_applied(id, index, Duration::from_secs(10)).await;
    }
    // Node 4 is asked through a client that trusts its certificate's CA
    // (the cluster's own clients cannot even complete a handshake with
    // it), so each check reads its real status.
    let mut cfg = client_config(vec![spec.addr.clone()]);
    cfg.tls = Some(ClientTls {
        ca: other.cert_pem().into_bytes(),
        identity: Some((
            read(&dir.join("admin.pem")),
            read(&dir.join("admin-key.pem")),
        )),
    });
    let stranger = Client::new(cfg).expect("client of node 4");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = 0;
    while Instant::now() < deadline {
        if let Ok(s) = stranger.node_status(&spec.addr).await {
            assert_eq!(s.last_log_index, 0, "node 4 received entries: {s:?}");
            seen += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        seen > 0,
        "node 4's status was never read, so nothing was checked"
    );
}

/// The DER of the certificate node `id` serves now, read off a new
/// connection.
async fn served_certificate(t: &TestCluster, id: u64) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};
    let mut roots = RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&tls_dir(t).join("ca.pem"))) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(t.addr(id)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn pem_to_der(pem: &str) -> Vec<u8> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_rotate_on_sighup_under_load_with_no_failed_request() {
    let mut t = tls_cluster(3).await;
    let client = t.client();
    client.create_job("j", 8).await.expect("create job");
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4u64 {
        let (c, stop, done) = (client.clone(), stop.clone(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(Ordering::Relaxed) {
                c.put("j", "s", format!("w{w}-{i}"), format!("{i}"))
                    .await
                    .unwrap_or_else(|e| panic!("write {w}-{i} failed during rotation: {e}"));
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            i
        }));
    }
    let wait_for_writes = |n: u64| {
        let done = done.clone();
        async move {
            let target = done.load(Ordering::Relaxed) + n;
            let deadline = Instant::now() + Duration::from_secs(30);
            while done.load(Ordering::Relaxed) < target {
                assert!(Instant::now() < deadline, "writes stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    wait_for_writes(100).await;

    // New keys and certificates for every node, same CA, then SIGHUP.
    let dir = tls_dir(&t);
    let ca = LocalCa::load(&dir).unwrap();
    let mut fresh = Vec::new();
    for id in [1, 2, 3] {
        let issued = ca.issue_node(id, LOCAL_HOSTS).unwrap();
        issued.write(&dir, &format!("node-{id}")).unwrap();
        fresh.push(pem_to_der(&issued.cert_pem));
    }
    for id in [1, 2, 3] {
        let pid = t.cluster.pid(id).expect("pid");
        unsafe { libc::kill(pid, libc::SIGHUP) };
    }
    for (i, id) in [1u64, 2, 3].iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while served_certificate(&t, *id).await != fresh[i] {
            assert!(
                Instant::now() < deadline,
                "node {id} still serves its old certificate"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    wait_for_writes(100).await;
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for w in writers {
        written += w.await.expect("no write failed");
    }
    assert!(written >= 200);
    // The processes kept running through it.
    for id in [1, 2, 3] {
        assert!(
            t.cluster.exit_status(id).unwrap().is_none(),
            "node {id} exited"
        );
    }
}
