//! `streamshield-runtime`: runs the shipped example jobs (`run`,
//! `status`), writes their generated input (`generate`) and checks their
//! result against the ground truth (`verify`).

mod demo;
mod timeline;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use streamshield_client::{Client, ClientConfig};
use streamshield_runtime::cli::{run_command, RuntimeCommand};
use streamshield_runtime::examples::{self, window_sum, wordcount};
use streamshield_runtime::source::{append_all, Verdict};

// A task session allocates per buffered op and per batch sent; mimalloc,
// as in the nodes, took the bench's tasks (which stand in for these) from
// 6.35 to 6.05 machine CPU µs per committed update (PERFORMANCE.md, "The
// allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use streamshield_runtime::{JobConfig, StreamRef};

#[derive(Parser)]
#[command(name = "streamshield-runtime", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Data {
    /// The job's TOML file (its `job` names the example).
    config: std::path::PathBuf,
    #[arg(long, env = "STREAMSHIELD_ENDPOINTS", value_delimiter = ',')]
    endpoints: Vec<String>,
    /// Input records (lines for wordcount, events for windowed-sum).
    #[arg(long, default_value_t = 100_000)]
    records: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Distinct users (windowed-sum).
    #[arg(long, default_value_t = 1000)]
    users: u32,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Runtime(RuntimeCommand),
    /// Writes an example's seeded input (what exists already is kept).
    Generate(Data),
    /// Compares an example's result with its ground truth; exits 1 unless
    /// exactly equal.
    Verify(Data),
    /// A local cluster, the windowed job, a worker kill and a leader kill,
    /// checked against the ground truth; draws the timeline (what `make
    /// demo` runs).
    Demo {
        #[arg(long, default_value = "demo-timeline.png")]
        picture: std::path::PathBuf,
    },
}

async fn generate(d: &Data) -> anyhow::Result<()> {
    let cfg = JobConfig::from_file(&d.config)?;
    let client = Client::new(ClientConfig::new(d.endpoints.iter().cloned()))?;
    let job = examples::all()
        .into_iter()
        .find(|j| j.name == cfg.job)
        .with_context(|| format!("no example named {:?}", cfg.job))?;
    job.setup(&client, &cfg).await?;
    let input = match cfg.job.as_str() {
        wordcount::NAME => wordcount::input(&cfg, d.records, d.seed),
        _ => window_sum::input(&cfg, d.records, d.users, d.seed),
    };
    let to = StreamRef {
        job: job.store_job(&cfg, 0),
        stream: job.source.clone(),
    };
    let n = append_all(&client, &to, input).await?;
    println!("wrote {n} records to {}", to.label());
    Ok(())
}

async fn verify(d: &Data) -> anyhow::Result<Verdict> {
    let cfg = JobConfig::from_file(&d.config)?;
    let client = Client::new(ClientConfig::new(d.endpoints.iter().cloned()))?;
    let v = match cfg.job.as_str() {
        wordcount::NAME => {
            wordcount::verify(&client, &wordcount::job(), &cfg, d.records, d.seed).await?
        }
        window_sum::NAME => {
            window_sum::verify(
                &client,
                &window_sum::job(),
                &cfg,
                d.records,
                d.users,
                d.seed,
            )
            .await?
        }
        other => anyhow::bail!("no example named {other:?}"),
    };
    Ok(v)
}

#[tokio::main]
async fn main() -> ExitCode {
    streamshield_client::init_cli_logging();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Runtime(cmd) => run_command(&examples::all(), cmd)
            .await
            .map_err(anyhow::Error::from),
        Command::Generate(d) => generate(&d).await.map(|()| 0),
        Command::Demo { picture } => demo::run(&picture).await.map(|exact| i32::from(!exact)),
        Command::Verify(d) => verify(&d).await.map(|v| {
            println!("{}", serde_json::to_string(&v).expect("serializes"));
            if v.exact() {
                0
            } else {
                1
            }
        }),
    };
    match code {
        Ok(c) => ExitCode::from(c as u8),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
