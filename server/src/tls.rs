//! TLS on every connection of a node, and who the other end is.
//!
//! A node serves all its gRPC services on one port over TLS (rustls) and
//! dials its peers over TLS with its own certificate. Every certificate is
//! issued by the cluster's CA; which kind it is says what it may do
//! ([`CertRole`]): a node certificate (organizational unit
//! [`NODE_UNIT`], common name `node-<id>`) is the only one the Raft
//! service accepts, and only for messages of that node id, so no client
//! and no other node can speak for a member. Any other certificate of the
//! CA is a client, named by its common name.
//!
//! Client certificates are optional at the TLS layer: a client without one
//! completes the handshake and then hears `UNAUTHENTICATED` from
//! [`authenticate_client`], a precise answer instead of a broken
//! connection. A certificate of another CA fails the handshake.
//!
//! Certificates and keys are read again on SIGHUP ([`NodeTls::reload`]):
//! new connections, accepted and dialled, use the new ones; open ones go
//! on with what they negotiated.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Status};

/// The organizational unit of a node certificate.
pub const NODE_UNIT: &str = "streamshield-node";

/// A TLS handshake that takes longer is dropped, so a client that opens a
/// connection and says nothing holds no handshake task for long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a node's TLS material is. All three or none.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsFiles {
    /// The cluster CA's certificate (PEM): peers' and clients'
    /// certificates must be issued by it.
    pub ca_file: Option<PathBuf>,
    /// This node's certificate chain (PEM), with `OU=streamshield-node`,
    /// `CN=node-<id>` and the node's host names as subject alternative
    /// names.
    pub cert_file: Option<PathBuf>,
    /// This node's private key (PEM).
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The three paths, if all are set.
    pub fn paths(&self) -> Option<(&Path, &Path, &Path)> {
        Some((
            self.ca_file.as_deref()?,
            self.cert_file.as_deref()?,
            self.key_file.as_deref()?,
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} holds no usable {what}: {why}")]
    Pem {
        path: String,
        what: &'static str,
        why: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// The PEM material as read, kept for dialling peers.
#[derive(Clone)]
pub struct PemMaterial {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// A node's TLS state: what it serves with and what it dials with.
pub struct NodeTls {
    files: TlsFiles,
    server: RwLock<Arc<ServerConfig>>,
    material: RwLock<PemMaterial>,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn pem_error(path: &Path, what: &'static str, why: impl ToString) -> TlsError {
    TlsError::Pem {
        path: path.display().to_string(),
        what,
        why: why.to_string(),
    }
}

fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, "certificate", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificate", "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(files: &TlsFiles) -> Result<(ServerConfig, PemMaterial), TlsError> {
    let (ca_path, cert_path, key_path) = files
        .paths()
        .ok_or_else(|| TlsError::Config("ca_file, cert_file and key_file go together".into()))?;
    let material = PemMaterial {
        ca: read(ca_path)?,
        cert: read(cert_path)?,
        key: read(key_path)?,
    };
    let mut roots = RootCertStore::empty();
    for ca in certificates(ca_path, &material.ca)? {
        roots
            .add(ca)
            .map_err(|e| pem_error(ca_path, "CA certificate", e))?;
    }
    let chain = certificates(cert_path, &material.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&material.key)
        .map_err(|e| pem_error(key_path, "private key", e))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert_path.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, material))
}

impl NodeTls {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        let (server, material) = server_config(files)?;
        Ok(Self {
            files: files.clone(),
            server: RwLock::new(Arc::new(server)),
            material: RwLock::new(material),
        })
    }

    /// Reads the files again; on any error the node keeps what it had.
    pub fn reload(&self) -> Result<(), TlsError> {
        let (server, material) = server_config(&self.files)?;
        *self.server.write().expect("tls lock") = Arc::new(server);
        *self.material.write().expect("tls lock") = material;
        Ok(())
    }

    fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.server.read().expect("tls lock").clone())
    }

    /// What to dial peers with now.
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let m = self.material.read().expect("tls lock");
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&m.ca))
            .identity(tonic::transport::Identity::from_pem(&m.cert, &m.key))
    }
}

/// Accepted connections after their TLS handshake. Handshakes run side by
/// side, so one slow client holds up nobody.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<NodeTls>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    tracing::warn!(error = %e, "accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // Nagle with delayed ACKs added 40 ms to about 1% of requests
            // (measured with `streamshield-jepsen bench`).
            let _ = tcp.set_nodelay(true);
            if tx.is_closed() {
                return;
            }
            let acceptor = tls.acceptor();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// What a verified certificate of the cluster's CA stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRole {
    Node(u64),
    /// `admin`: the certificate has organizational unit [`ADMIN_UNIT`].
    Client {
        name: String,
        admin: bool,
    },
}

/// The organizational unit of a cluster admin's certificate: it may do
/// everything without a grant, so that a new cluster has someone who can
/// grant roles.
pub const ADMIN_UNIT: &str = "streamshield-admin";

/// The role of the certificate `der`; `None` if it names no one.
pub fn cert_role(der: &[u8]) -> Option<CertRole> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let cn = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let has_unit = |unit: &str| {
        subject
            .iter_organizational_unit()
            .any(|ou| ou.as_str() == Ok(unit))
    };
    if has_unit(NODE_UNIT) {
        let id = cn.strip_prefix("node-")?.parse().ok()?;
        return Some(CertRole::Node(id));
    }
    Some(CertRole::Client {
        admin: has_unit(ADMIN_UNIT),
        name: cn,
    })
}

/// The role of the client certificate the connection of `request`
/// presented, if it presented one.
fn peer_role<T>(request: &Request<T>) -> Option<CertRole> {
    let certs = request.peer_certs()?;
    cert_role(certs.first()?.as_ref())
}

/// Which node a Raft request comes from, proven by its certificate; the
/// Raft service checks each message's sender against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerNode(pub u64);

/// Who a client request says it comes from, as far as its connection and
/// headers tell; `service::authz` decides what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A node serving plaintext (`--insecure`): nobody is authenticated,
    /// and every caller may do everything.
    Insecure,
    /// A client certificate of the cluster's CA. `admin`: a node's or a
    /// cluster admin's certificate.
    Certificate { principal: String, admin: bool },
    /// No certificate, an `authorization: Bearer` token instead, not yet
    /// looked up.
    Token(String),
}

/// The Raft service's interceptor on a TLS node: only node certificates.
pub fn authenticate_peer(mut request: Request<()>) -> Result<Request<()>, Status> {
    match peer_role(&request) {
        Some(CertRole::Node(id)) => {
            request.extensions_mut().insert(PeerNode(id));
            Ok(request)
        }
        Some(CertRole::Client { name, .. }) => Err(Status::permission_denied(format!(
            "the Raft service takes node certificates only; {name:?} is a client's"
        ))),
        None => Err(Status::unauthenticated(
            "the Raft service needs a node certificate of the cluster's CA",
        )),
    }
}

/// The client services' interceptor on a TLS node: a certificate of the
/// cluster's CA (node or client), or else a bearer token.
pub fn authenticate_client(mut request: Request<()>) -> Result<Request<()>, Status> {
    let caller = match peer_role(&request) {
        Some(CertRole::Client { name, admin }) => Caller::Certificate {
            principal: name,
            admin,
        },
        Some(CertRole::Node(id)) => Caller::Certificate {
            principal: format!("node-{id}"),
            admin: true,
        },
        None => match bearer_token(&request) {
            Some(token) => Caller::Token(token),
            None => {
                return Err(Status::unauthenticated(
                    "this node needs a client certificate of the cluster's CA or an `authorization: Bearer <token>` header",
                ))
            }
        },
    };
    request.extensions_mut().insert(caller);
    Ok(request)
}

/// The client services' interceptor on a node without TLS.
pub fn anyone(mut request: Request<()>) -> Result<Request<()>, Status> {
    request.extensions_mut().insert(Caller::Insecure);
    Ok(request)
}

fn bearer_token<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("authorization")?.to_str().ok()?;
    let token = value.strip_prefix("Bearer ")?.trim();
    (!token.is_empty()).then(|| token.to_string())
}
