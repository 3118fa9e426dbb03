//! A job as its program defines it: a chain of stages joined by streams.
//!
//! Stage `i` reads the stream stage `i - 1` writes (the first reads the
//! job's source stream) and owns its own store job, `<name>.<stage>`:
//! its state tables, its tasks' leases and its output stream live there.
//! Each stage has its own key groups, so a stateless stage and the keyed
//! stage after it can both own every key group.

use std::sync::Arc;

use streamshield_client::{pb, Client, ClientError};

use crate::config::JobConfig;
use crate::error::RuntimeError;
use crate::operator::{DynOperator, Operator};
use crate::state::{LIST_TABLE, MAP_TABLE};

type MakeOperator = Arc<dyn Fn() -> Box<dyn DynOperator> + Send + Sync>;

#[derive(Clone)]
pub struct StageDef {
    pub name: String,
    /// The stream the stage's tasks emit into, in the stage's store job.
    pub output: Option<String>,
    make: MakeOperator,
}

impl StageDef {
    pub(crate) fn operator(&self) -> Box<dyn DynOperator> {
        (self.make)()
    }
}

/// A job's stages, in order.
#[derive(Clone)]
pub struct JobDef {
    pub name: String,
    /// The stream the first stage reads, in the first stage's store job.
    pub source: String,
    pub stages: Vec<StageDef>,
}

/// Where a stage reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRef {
    pub job: String,
    pub stream: String,
}

impl StreamRef {
    /// How a lease and a checkpoint name the stream (in the characters
    /// a stream name may have).
    pub fn label(&self) -> String {
        format!("{}.{}", self.job, self.stream)
    }
}

impl JobDef {
    pub fn new(name: impl Into<String>, source: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            source: source.into(),
            stages: Vec::new(),
        }
    }

    /// Adds a stage after the last; `make` builds one operator per task.
    pub fn stage<O: Operator>(
        mut self,
        name: &str,
        output: Option<&str>,
        make: impl Fn() -> O + Send + Sync + 'static,
    ) -> Self {
        self.stages.push(StageDef {
            name: name.into(),
            output: output.map(Into::into),
            make: Arc::new(move || Box::new(make())),
        });
        self
    }

    pub fn stage_index(&self, name: &str) -> Result<usize, RuntimeError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| RuntimeError::UnknownStage(name.into()))
    }

    /// The store job of stage `i`.
    pub fn store_job(&self, cfg: &JobConfig, i: usize) -> String {
        format!("{}.{}", cfg.namespace(), self.stages[i].name)
    }

    pub fn input_of(&self, cfg: &JobConfig, i: usize) -> StreamRef {
        if i == 0 {
            StreamRef {
                job: self.store_job(cfg, 0),
                stream: self.source.clone(),
            }
        } else {
            StreamRef {
                job: self.store_job(cfg, i - 1),
                stream: self.stages[i - 1].output.clone().unwrap_or_default(),
            }
        }
    }

    /// The stream the last stage writes: the job's result.
    pub fn result(&self, cfg: &JobConfig) -> Option<StreamRef> {
        let last = self.stages.len().checked_sub(1)?;
        Some(StreamRef {
            job: self.store_job(cfg, last),
            stream: self.stages[last].output.clone()?,
        })
    }

    /// Tasks writing each partition of stage `i`'s input (the source
    /// stream has one writer, its producer).
    pub fn upstream_tasks(&self, cfg: &JobConfig, i: usize) -> u32 {
        if i == 0 {
            1
        } else {
            cfg.parallelism_of(&self.stages[i - 1].name)
        }
    }

    /// Whether every stage but the last has an output to feed the next.
    pub fn validate(&self, cfg: &JobConfig) -> Result<(), RuntimeError> {
        if self.stages.is_empty() {
            return Err(RuntimeError::Config(format!(
                "job {:?} has no stage",
                self.name
            )));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if i + 1 < self.stages.len() && s.output.is_none() {
                return Err(RuntimeError::Config(format!(
                    "stage {:?} feeds stage {:?} but has no output stream",
                    s.name,
                    self.stages[i + 1].name
                )));
            }
        }
        for stage in cfg.parallelism.keys() {
            self.stage_index(stage)?;
        }
        Ok(())
    }

    /// Creates the store jobs and streams the job needs, and declares
    /// each job's map and list tables ([`MAP_TABLE`], [`LIST_TABLE`]);
    /// what exists already is kept (and must have the configured
    /// partitions).
    pub async fn setup(&self, client: &Client, cfg: &JobConfig) -> Result<(), RuntimeError> {
        self.validate(cfg)?;
        for i in 0..self.stages.len() {
            let job = self.store_job(cfg, i);
            match client.create_job(&job, cfg.key_groups).await {
                Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let info = client.describe_job(&job).await?;
            if info.key_groups != cfg.key_groups {
                return Err(RuntimeError::Config(format!(
                    "store job {job:?} has {} key groups, the configuration {}",
                    info.key_groups, cfg.key_groups
                )));
            }
            // Map entries and list elements are stored one per key,
            // placed by the key they belong to; their tables must be
            // declared so before their first write (a table's placement
            // never changes).
            let prefix = pb::KeyPlacement::Prefix as i32;
            for table in [MAP_TABLE, LIST_TABLE] {
                if !info
                    .states
                    .iter()
                    .any(|t| t.name == table && t.placement == prefix)
                {
                    client
                        .declare_table(
                            &job,
                            table,
                            pb::WriteMode::Async,
                            Some(pb::KeyPlacement::Prefix),
                        )
                        .await?;
                }
            }
            let mut streams = vec![self.stages[i].output.clone()];
            if i == 0 {
                streams.push(Some(self.source.clone()));
            }
            for stream in streams.into_iter().flatten() {
                match client.create_stream(&job, &stream, cfg.partitions, 0).await {
                    Ok(_) | Err(ClientError::AlreadyExists(_)) => {}
                    Err(e) => return Err(e.into()),
                }
                let have = client.describe_stream(&job, &stream).await?.partitions;
                if have != cfg.partitions {
                    return Err(RuntimeError::Config(format!(
                        "stream {job}/{stream} has {have} partitions, the configuration {}",
                        cfg.partitions
                    )));
                }
            }
        }
        Ok(())
    }
}
