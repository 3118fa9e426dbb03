//! Argument parsing and dispatch of the `streamshield` CLI.

mod auth_cmd;
mod cluster;
mod data;
mod local_cmd;
mod streams_cmd;
mod tasks_cmd;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use streamshield_client::{Client, ClientConfig, ClientTls};

#[derive(Parser, Debug)]
#[command(name = "streamshield", version, about = "StreamShield command line")]
pub struct Args {
    /// Comma-separated host:port of any cluster nodes.
    #[arg(
        long,
        global = true,
        env = "STREAMSHIELD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7070"
    )]
    pub endpoints: Vec<String>,
    /// Machine-readable output: one JSON document on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Give up on a call (with its retries) after this many seconds.
    #[arg(long, global = true, default_value_t = 10.0)]
    pub timeout: f64,
    /// Talk TLS, trusting this CA certificate (PEM), as etcdctl's --cacert.
    #[arg(long, global = true, env = "STREAMSHIELD_CACERT")]
    pub cacert: Option<PathBuf>,
    /// This client's certificate (PEM), issued by the cluster's CA.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "STREAMSHIELD_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// This client's private key (PEM).
    // Its own id: `key` is the positional argument of get/put.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "STREAMSHIELD_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
    /// A bearer token instead of a certificate (`auth token create`); sent
    /// as `authorization: Bearer <token>`.
    #[arg(
        long,
        global = true,
        env = "STREAMSHIELD_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Every node's role, term, leader and indexes.
    Status,
    /// Create and inspect jobs.
    #[command(subcommand)]
    Jobs(data::JobsCmd),
    /// Write a value (creates the state table on first write).
    Put(data::PutArgs),
    /// Read a value (linearizable unless --stale).
    Get(data::GetArgs),
    /// Delete a key.
    Delete(data::KeyArgs),
    /// List keys of a state table in key order.
    Scan(data::ScanArgs),
    /// Each task of a job: lease generation, key groups, last committed
    /// epoch and input offsets.
    Tasks { job: String },
    /// Partitioned logs of a job: create, describe, append, tail.
    #[command(subcommand)]
    Streams(streams_cmd::StreamsCmd),
    /// Cluster membership.
    #[command(subcommand)]
    Members(cluster::MembersCmd),
    /// Ask a node to build a snapshot now (which also purges its log),
    /// and with --save keep a copy of it here.
    Snapshot {
        /// The node to ask (default: every endpoint; with --save, the
        /// leader).
        #[arg(long)]
        node: Option<String>,
        /// Write the snapshot's files into this new directory, as
        /// `etcdctl snapshot save`; nodes started on empty data
        /// directories with `--restore-from DIR` begin from it.
        #[arg(long, value_name = "DIR")]
        save: Option<std::path::PathBuf>,
    },
    /// Who may do what: grants of roles, bearer tokens.
    #[command(subcommand)]
    Auth(auth_cmd::AuthCmd),
    /// Local clusters of server processes, for trying things out.
    #[command(subcommand)]
    Local(local_cmd::LocalCmd),
}

impl Args {
    pub fn client(&self) -> anyhow::Result<Client> {
        let mut cfg = ClientConfig::new(
            self.endpoints
                .iter()
                .map(|e| e.trim().to_string())
                .filter(|e| !e.is_empty()),
        );
        cfg.deadline = Duration::from_secs_f64(self.timeout.max(0.1));
        cfg.tls = self.tls()?;
        cfg.token = self.token.clone();
        Ok(Client::new(cfg)?)
    }

    /// TLS as the flags ask for it; plaintext without `--cacert`.
    pub fn tls(&self) -> anyhow::Result<Option<ClientTls>> {
        let Some(ca) = &self.cacert else {
            if self.cert.is_some() {
                anyhow::bail!("--cert and --key need --cacert (the cluster's CA certificate)");
            }
            return Ok(None);
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(Some(ClientTls::from_files(ca, identity)?))
    }
}

/// Prints `value` as JSON when asked to, else the human form.
pub fn emit(json: bool, value: serde_json::Value, human: impl FnOnce() -> String) {
    if json {
        println!("{value}");
    } else {
        println!("{}", human());
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match &args.command {
        Cmd::Status => cluster::status(&args).await,
        Cmd::Jobs(c) => data::jobs(&args, c).await,
        Cmd::Put(p) => data::put(&args, p).await,
        Cmd::Get(g) => data::get(&args, g).await,
        Cmd::Delete(k) => data::delete(&args, k).await,
        Cmd::Scan(s) => data::scan(&args, s).await,
        Cmd::Tasks { job } => tasks_cmd::run(&args, job).await,
        Cmd::Streams(s) => streams_cmd::run(&args, s).await,
        Cmd::Members(m) => cluster::members(&args, m).await,
        Cmd::Snapshot { node, save: None } => cluster::snapshot(&args, node.as_deref()).await,
        Cmd::Snapshot {
            node,
            save: Some(dir),
        } => cluster::save_snapshot(&args, node.as_deref(), dir).await,
        Cmd::Auth(a) => auth_cmd::run(&args, a).await,
        Cmd::Local(l) => local_cmd::run(&args, l).await,
    }
}
