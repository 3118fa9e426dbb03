//! How a client reaches the cluster: endpoints, deadlines, TLS, token.

use std::collections::HashMap;
use std::time::Duration;

/// How a client reaches the cluster and how long it keeps trying.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` of any nodes; the rest are discovered.
    pub endpoints: Vec<String>,
    /// A call (with all its retries) gives up after this. Default 10 s.
    pub deadline: Duration,
    /// One attempt on one node gives up after this. Default 3 s.
    pub attempt_timeout: Duration,
    /// Dial these addresses instead of the ones named (endpoints and
    /// leader hints alike), e.g. a fault-injecting proxy per node.
    pub dial: HashMap<String, String>,
    /// Send concurrent writes and gets to the same node together, in one
    /// `WriteMany`/`GetMany` call (see `coalesce.rs`). Default on.
    pub coalesce: bool,
    /// Talk TLS with these; plaintext if none. Default none.
    pub tls: Option<ClientTls>,
    /// Sent as `authorization: Bearer <token>` on every call: the identity
    /// of a client without a certificate (`streamshield auth token
    /// create`). Default none.
    pub token: Option<String>,
}

/// What a client talks TLS with: the cluster CA's certificate, and its own
/// certificate and key (PEM), which a node of a TLS cluster requires.
#[derive(Debug, Clone)]
pub struct ClientTls {
    pub ca: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads the PEM files, as etcdctl's `--cacert`, `--cert`, `--key`.
    pub fn from_files(
        ca: &std::path::Path,
        identity: Option<(&std::path::Path, &std::path::Path)>,
    ) -> std::io::Result<Self> {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot read {}: {e}", p.display()))
            })
        };
        Ok(Self {
            ca: read(ca)?,
            identity: match identity {
                Some((cert, key)) => Some((read(cert)?, read(key)?)),
                None => None,
            },
        })
    }

    pub(super) fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let c = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca));
        match &self.identity {
            Some((cert, key)) => c.identity(tonic::transport::Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

impl ClientConfig {
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(3),
            dial: HashMap::new(),
            coalesce: true,
            tls: None,
            token: None,
        }
    }
}
