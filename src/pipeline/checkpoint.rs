//! Stage checkpoints: what a finished stage wrote, so that a re-run can skip it
//! only when every artifact is still exactly what was written.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::inputs::read_recorded;
use crate::error::Result;
use crate::fencing::FencingToken;
use crate::record::{Extra, Record, record_deserialize};
use crate::vfs::Vfs;

/// One file a stage wrote.
///
/// Its digest is SHA-256: verifying an artifact reads it whole anyway, SHA-256
/// reads at several hundred MB/s (far above the fsyncs that wrote it), and a
/// 256-bit collision-resistant digest means "verifies" is "has the same bytes",
/// even for content crafted to collide with a 64-bit hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Artifact {
    /// Where it is, relative to the pipeline's artifact root
    /// (`jobs/<job>/<name>` or `subjects/<subject>/<name>`).
    pub path: PathBuf,
    /// Its length in bytes.
    pub len: u64,
    /// Its SHA-256, in lower-case hex.
    pub sha256: String,
}

impl Artifact {
    /// Longest artifact name, in bytes.
    pub const MAX_NAME_LEN: usize = 200;

    /// The record of `bytes` written at `path` (relative to the artifact
    /// root): for an [`ArtifactStorage`](super::ArtifactStorage) of your
    /// own, and its tests.
    ///
    /// ```
    /// use jobsafe::pipeline::Artifact;
    ///
    /// let artifact = Artifact::of_bytes("jobs/j-1/out.txt", b"done");
    /// assert_eq!(artifact.len, 4);
    /// assert_eq!(artifact.sha256.len(), 64);
    /// ```
    pub fn of_bytes(path: impl Into<PathBuf>, bytes: &[u8]) -> Self {
        Artifact::of(path.into(), bytes)
    }

    pub(crate) fn of(path: PathBuf, bytes: &[u8]) -> Self {
        Artifact {
            path,
            len: bytes.len() as u64,
            sha256: hex(&Sha256::digest(bytes)),
        }
    }
}

/// What a finished stage recorded: its artifacts and who wrote them. Stored in
/// the same atomic batch as the job record's change, so only the runner that
/// owns the job can record one.
// `Deserialize` is written by `record_deserialize!`, as derive with
// `#[serde(flatten)] extra` would read it, without flatten's buffering.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Checkpoint {
    /// The job.
    pub job_id: String,
    /// The stage.
    pub stage: String,
    /// The attempt that ran it.
    pub attempt: u32,
    /// The fencing token of the runner that ran it.
    pub token: Option<FencingToken>,
    /// When it was recorded, by the pipeline's clock.
    pub recorded_ms: u64,
    /// Every artifact the stage wrote, in the order written.
    pub artifacts: Vec<Artifact>,
    /// A digest of this checkpoint's artifacts and of the previous stage's
    /// checkpoint: a stage whose inputs were re-made differently runs again.
    pub chain: String,
    #[serde(flatten)]
    pub(crate) extra: Extra,
}

// `token` has no `#[serde(default)]`, but derive reads a missing `Option` as
// `None` too.
record_deserialize! {
    Checkpoint, "struct Checkpoint",
    required [
        job_id = "job_id",
        stage = "stage",
        attempt = "attempt",
        recorded_ms = "recorded_ms",
        artifacts = "artifacts",
        chain = "chain",
    ],
    defaulted [token = "token"],
    unknown keep(extra),
    build Checkpoint {
        job_id,
        stage,
        attempt,
        token,
        recorded_ms,
        artifacts,
        chain,
        extra,
    },
}

impl Record for Checkpoint {
    const SCHEMA: u32 = 1;
}

/// Why a checkpoint does not let its stage be skipped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every artifact is there with its recorded digest, after the same inputs.
    Valid,
    /// Something differs; the stage runs again.
    Stale(String),
}

impl Checkpoint {
    /// Whether this checkpoint follows `previous_chain`, the chain of the
    /// stage before it as this run found it: if not, an earlier stage's
    /// artifacts changed, and this one's are stale whatever they hold.
    pub(crate) fn chain_follows(&self, previous_chain: &str) -> bool {
        chain_digest(previous_chain, &self.stage, &self.artifacts) == self.chain
    }

    /// Checks every artifact under `root`, read as a stage would read it (see
    /// [`read_recorded`]), and the chain from the previous stage.
    pub(crate) fn verify<V: Vfs>(
        &self,
        vfs: &V,
        root: &Path,
        previous_chain: &str,
    ) -> Result<Verdict> {
        if !self.chain_follows(previous_chain) {
            return Ok(Verdict::Stale(
                "an earlier stage's artifacts changed".to_owned(),
            ));
        }
        for artifact in &self.artifacts {
            if let Err(mismatch) = read_recorded(vfs, root, artifact, false)? {
                return Ok(Verdict::Stale(format!(
                    "{}: {mismatch}",
                    artifact.path.display()
                )));
            }
        }
        Ok(Verdict::Valid)
    }
}

/// The chain digest of a stage's artifacts after the previous stage's chain
/// (empty for the first stage).
pub(crate) fn chain_digest(previous: &str, stage: &str, artifacts: &[Artifact]) -> String {
    let mut hasher = Sha256::new();
    for part in [previous, stage] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part.as_bytes());
    }
    for artifact in artifacts {
        let path = artifact.path.to_string_lossy();
        hasher.update((path.len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        hasher.update(artifact.len.to_le_bytes());
        hasher.update(artifact.sha256.as_bytes());
    }
    hex(&hasher.finalize())
}

pub(super) fn hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}
