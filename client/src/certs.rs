//! A throwaway certificate authority for local clusters and tests, so that
//! `streamshield local up --tls` needs no other tool.
//!
//! It issues what a TLS cluster expects (see the server's `tls.rs`): node
//! certificates with `OU=streamshield-node`, `CN=node-<id>` and the
//! node's host names, used to serve and to dial peers; client certificates
//! named by their `CN`. Keys are ECDSA P-256. A real deployment issues
//! these from its own CA; the subjects are what matters.

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// The organizational unit the server takes as a node certificate.
pub const NODE_UNIT: &str = "streamshield-node";
/// The organizational unit the server takes as a cluster admin's.
pub const ADMIN_UNIT: &str = "streamshield-admin";

fn rcgen_error(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("issuing a certificate: {e}"))
}

/// A CA that can issue certificates; its key stays in memory and in
/// `ca-key.pem` of the folder it was written to.
pub struct LocalCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Issued {
    /// Writes `<name>.pem` and `<name>-key.pem` (0600) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> io::Result<(PathBuf, PathBuf)> {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}-key.pem"));
        std::fs::write(&cert, &self.cert_pem)?;
        write_private(&key, &self.key_pem)?;
        Ok((cert, key))
    }
}

fn write_private(path: &Path, text: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "StreamShield local CA");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl LocalCa {
    pub fn generate() -> io::Result<Self> {
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = ca_params().self_signed(&key).map_err(rcgen_error)?;
        Ok(Self { cert, key })
    }

    /// The CA written by [`Self::write`] to `dir`, to issue more from.
    pub fn load(dir: &Path) -> io::Result<Self> {
        let key_pem = std::fs::read_to_string(dir.join("ca-key.pem"))?;
        let key = KeyPair::from_pem(&key_pem).map_err(rcgen_error)?;
        // The same subject and key make an issuer whose certificates chain
        // to `ca.pem` as written.
        let cert = ca_params().self_signed(&key).map_err(rcgen_error)?;
        let on_disk = std::fs::read_to_string(dir.join("ca.pem"))?;
        if !on_disk.contains("BEGIN CERTIFICATE") {
            return Err(io::Error::other(format!(
                "{} holds no certificate",
                dir.join("ca.pem").display()
            )));
        }
        Ok(Self { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes `ca.pem` and `ca-key.pem` into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("ca.pem"), self.cert.pem())?;
        write_private(&dir.join("ca-key.pem"), &self.key.serialize_pem())
    }

    fn issue(
        &self,
        dn: DistinguishedName,
        hosts: &[&str],
        usages: Vec<ExtendedKeyUsagePurpose>,
    ) -> io::Result<Issued> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .map_err(rcgen_error)?;
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = usages;
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A node's certificate: it serves under `hosts` and dials its peers.
    pub fn issue_node(&self, id: u64, hosts: &[&str]) -> io::Result<Issued> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationalUnitName, NODE_UNIT);
        dn.push(DnType::CommonName, format!("node-{id}"));
        self.issue(
            dn,
            hosts,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        )
    }

    /// A cluster admin's certificate (`OU=streamshield-admin`): it may do
    /// everything without a grant, so a new cluster has someone who can
    /// grant roles.
    pub fn issue_admin(&self, name: &str) -> io::Result<Issued> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationalUnitName, ADMIN_UNIT);
        dn.push(DnType::CommonName, name);
        self.issue(dn, &[], vec![ExtendedKeyUsagePurpose::ClientAuth])
    }

    /// A client's certificate, naming the principal `name`; what it may do
    /// is what the principal is granted.
    pub fn issue_client(&self, name: &str) -> io::Result<Issued> {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        self.issue(dn, &[], vec![ExtendedKeyUsagePurpose::ClientAuth])
    }
}

/// Host names a local node's certificate lists.
pub const LOCAL_HOSTS: &[&str] = &["127.0.0.1", "localhost"];
