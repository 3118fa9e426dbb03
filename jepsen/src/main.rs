//! `streamshield-jepsen`: run lab tests and sweeps from the command line.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use streamshield_client::local;
use streamshield_jepsen::bench::cli::{bench, run_matrix, BenchArgs, MatrixArgs};
use streamshield_jepsen::nemesis::{self, Fault};
use streamshield_jepsen::progress::Progress;

// The bench's tasks stand in for the operator runtime's, which allocate
// with mimalloc as the nodes do (PERFORMANCE.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use streamshield_jepsen::run::{run_test, summary_line, Outcome, TestOptions};
use streamshield_jepsen::soak::{self, SoakOptions};
use streamshield_jepsen::workload::{self, Judgement, Workload};

#[derive(Parser)]
#[command(name = "streamshield-jepsen", about = "StreamShield fault lab")]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// One workload under one nemesis set.
    Test {
        #[arg(long, default_value = "register")]
        workload: String,
        /// Comma-separated: kill,pause,partition,latency,drop,membership,restart-all; or all / none.
        #[arg(long, default_value = "partition,kill")]
        nemesis: String,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        /// Seconds of workload.
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        #[arg(long, default_value_t = 8)]
        concurrency: u64,
        /// Workers sharing one client: their overlapping calls travel
        /// together (WriteMany/GetMany), as a task's concurrent calls do
        /// (with one write call in flight, that takes three or more).
        #[arg(long, default_value_t = 4)]
        workers_per_client: u64,
        /// Fixes the nemesis schedule and the operations (default: random).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value = "store")]
        store: PathBuf,
    },
    /// Every workload under every single nemesis and under all of them.
    Sweep {
        #[arg(long, default_value_t = 30)]
        time_limit: u64,
        /// Runs in total, spread over the combinations.
        #[arg(long, default_value_t = 20)]
        runs: u64,
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value = "store")]
        store: PathBuf,
    },
    /// Closed-loop benchmark of one workload on StreamShield and/or etcd.
    Bench(BenchArgs),
    /// Every benchmark row on both targets, alternating; writes
    /// BENCHMARKS.md (what `make bench` runs).
    Matrix(MatrixArgs),
    /// Mixed load under faults that keep processes alive, every node's
    /// resident memory sampled each minute; fails if it grows more than
    /// the limit after the warm-up.
    Soak {
        #[arg(long, default_value_t = 60)]
        minutes: u64,
        #[arg(long, default_value_t = 10)]
        warmup_minutes: u64,
        #[arg(long, default_value_t = 20)]
        max_growth_percent: u64,
        #[arg(long, default_value_t = 16)]
        concurrency: u64,
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long, default_value = "store")]
        store: PathBuf,
    },
}

fn server_bin() -> anyhow::Result<PathBuf> {
    local::find_server_binary().ok_or_else(|| {
        anyhow!(
            "streamshield-server not found next to this binary; build it (cargo build --release --bins) or set {}",
            local::SERVER_BIN_ENV
        )
    })
}

fn print(o: &Outcome) {
    println!("{}", line(o));
}

fn line(o: &Outcome) -> String {
    format!(
        "{:<9} {:<28} {:<8} ops {:>6} (ok {:>6} fail {:>5} info {:>4})  nemesis events {:>3}  elections {:>3}  pause after heal {:>5}  seed {}  {}",
        o.workload,
        o.nemesis,
        o.verdict.name(),
        o.operations,
        o.counts.ok,
        o.counts.fail,
        o.counts.info,
        o.nemesis_events,
        o.elections,
        o.heal_pause_ms.map_or("-".to_string(), |ms| format!("{ms} ms")),
        o.seed,
        o.dir.join("index.html").display()
    )
}

async fn soak(o: &SoakOptions) -> anyhow::Result<bool> {
    println!(
        "soak: {} minutes, baseline at minute {}, limit {} %, seed {}",
        o.minutes, o.warmup_minutes, o.max_growth_percent, o.seed
    );
    let mut progress = Progress::new(o.minutes);
    progress.step("minute 1");
    let (_, verdict) = soak::run(o, |s| {
        let mib = |v: &[u64]| -> String {
            let v: Vec<String> = v.iter().map(|k| format!("{}", k / 1024)).collect();
            v.join(" / ")
        };
        progress.println(format!(
            "minute {:>3}  rss {} MiB (RocksDB {} MiB)  ok {:>7}  failed {:>6}",
            s.minute,
            mib(&s.rss_kib),
            mib(&s.rocksdb_kib),
            s.ok,
            s.failed
        ));
        if s.minute > 0 && s.minute < o.minutes {
            progress.done();
            progress.step(&format!("minute {}", s.minute + 1));
        }
    })
    .await?;
    progress.finish();
    let growth: Vec<String> = verdict
        .growth_percent
        .iter()
        .map(|g| format!("{g:.1} %"))
        .collect();
    println!(
        "soak {}: growth after warm-up per node {}; {}",
        if verdict.passed { "passed" } else { "FAILED" },
        growth.join(" / "),
        verdict.reason
    );
    Ok(verdict.passed)
}

async fn main_async(args: Args) -> anyhow::Result<bool> {
    // The program by its name, not the path it was started from, so that
    // reports read the same on every machine.
    let command: String = std::env::args()
        .enumerate()
        .map(|(i, a)| match i {
            0 => std::path::Path::new(&a)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or(a),
            _ => a,
        })
        .collect::<Vec<_>>()
        .join(" ");
    match args.cmd {
        Cmd::Bench(a) => bench(a).await,
        Cmd::Matrix(a) => run_matrix(a, command).await,
        Cmd::Soak {
            minutes,
            warmup_minutes,
            max_growth_percent,
            concurrency,
            seed,
            store,
        } => {
            let opts = SoakOptions {
                minutes,
                warmup_minutes,
                max_growth_percent,
                concurrency,
                seed: seed.unwrap_or_else(rand::random),
                store,
                server_bin: server_bin()?,
            };
            soak(&opts).await
        }
        Cmd::Test {
            workload,
            nemesis,
            nodes,
            time_limit,
            concurrency,
            workers_per_client,
            seed,
            store,
        } => {
            let workload: Workload = workload.parse().map_err(|e: String| anyhow!(e))?;
            let faults: Vec<Fault> = nemesis::parse_list(&nemesis).map_err(|e| anyhow!(e))?;
            let seed = seed.unwrap_or_else(rand::random);
            let opts = TestOptions {
                workload,
                nemesis: faults,
                nodes,
                time_limit: Duration::from_secs(time_limit),
                concurrency,
                workers_per_client,
                seed,
                store,
                server_bin: server_bin()?,
                command: format!("{command} --seed {seed}"),
            };
            let o = run_test(&opts).await?;
            print(&o);
            println!("{}", summary_line(&o));
            Ok(o.verdict == Judgement::Valid)
        }
        Cmd::Sweep {
            time_limit,
            runs,
            nodes,
            store,
        } => {
            let mut combos: Vec<(Workload, Vec<Fault>)> = Vec::new();
            for w in workload::ALL {
                for f in nemesis::ALL {
                    combos.push((*w, vec![*f]));
                }
                combos.push((*w, nemesis::ALL.to_vec()));
            }
            let bin = server_bin()?;
            let mut tally: std::collections::BTreeMap<&str, u64> = Default::default();
            let mut table = vec![
                "| workload | nemesis | result | operations | ok | fail | info | nemesis events | elections | seed |".to_string(),
                "|---|---|---|---|---|---|---|---|---|---|".to_string(),
            ];
            let mut progress = Progress::new(runs);
            for i in 0..runs as usize {
                let (w, f) = combos[i % combos.len()].clone();
                progress.step(&format!("{} under {}", w.name(), nemesis::name_of(&f)));
                let seed: u64 = rand::random();
                let opts = TestOptions {
                    workload: w,
                    nemesis: f.clone(),
                    nodes,
                    time_limit: Duration::from_secs(time_limit),
                    concurrency: 8,
                    workers_per_client: 4,
                    seed,
                    store: store.clone(),
                    server_bin: bin.clone(),
                    command: format!(
                        "streamshield-jepsen test --workload {} --nemesis {} --nodes {nodes} --time-limit {time_limit} --seed {seed}",
                        w.name(),
                        nemesis::name_of(&f)
                    ),
                };
                let o = run_test(&opts).await.with_context(|| format!("run {i}"))?;
                progress.done();
                progress.println(line(&o));
                *tally.entry(o.verdict.name()).or_default() += 1;
                table.push(format!(
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    o.workload,
                    o.nemesis,
                    match o.verdict {
                        Judgement::Invalid => "**INVALID**",
                        j => j.name(),
                    },
                    o.operations,
                    o.counts.ok,
                    o.counts.fail,
                    o.counts.info,
                    o.nemesis_events,
                    o.elections,
                    o.seed
                ));
            }
            progress.finish();
            let count = |j: Judgement| tally.get(j.name()).copied().unwrap_or(0);
            table.push(String::new());
            table.push(format!(
                "{runs} runs: {} valid, {} unknown (too little progress to judge), {} invalid",
                count(Judgement::Valid),
                count(Judgement::Unknown),
                count(Judgement::Invalid)
            ));
            let text = table.join("\n") + "\n";
            std::fs::create_dir_all(&store)?;
            std::fs::write(store.join("sweep-summary.md"), &text)?;
            println!("\n{text}");
            // An unknown run proves nothing, so the sweep does not pass.
            Ok(count(Judgement::Valid) == runs)
        }
    }
}

fn main() -> ExitCode {
    streamshield_client::init_cli_logging();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("streamshield-jepsen: {e}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the running test is dropped, and dropping the
    // lab kills its server processes and proxies.
    let run = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = main_async(Args::parse()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
            _ = term.recv() => Err(anyhow!("terminated")),
        }
    };
    match rt.block_on(run) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("streamshield-jepsen: {e:#}");
            ExitCode::from(2)
        }
    }
}
