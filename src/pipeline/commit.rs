//! The end of a stage that returned `Ok`: its checkpoint, recorded in one batch
//! with the job's `stage_done` event, so that only the runner that still owns
//! the job can record it.

use serde_json::json;

use super::checkpoint::{Artifact, Checkpoint, chain_digest};
use super::run::RunCtx;
use crate::error::Result;
use crate::record::{self as codec, Extra};
use crate::store::{BatchOp, Expect, Store};
use crate::vfs::Vfs;

impl<S: Store + 'static, V: Vfs> RunCtx<'_, S, V> {
    /// Records the checkpoint of `stage`, which wrote `written` after the
    /// stage whose chain is `previous_chain`; returns this stage's chain.
    ///
    /// # Errors
    /// [`Error::StaleWorker`](crate::Error::StaleWorker) or
    /// [`Error::InvalidTransition`](crate::Error::InvalidTransition) if the
    /// runner no longer owns a running job (nothing is recorded); store errors.
    pub(super) fn record_checkpoint(
        &self,
        stage: &str,
        previous_chain: &str,
        written: &[Artifact],
    ) -> Result<Checkpoint> {
        let inner = &self.pipeline.inner;
        let chain = chain_digest(previous_chain, stage, written);
        let key = self.pipeline.checkpoint_key(self.id(), stage)?;
        let checkpoint = Checkpoint {
            job_id: self.id().to_owned(),
            stage: stage.to_owned(),
            attempt: self.worker.attempt,
            token: self.worker.token,
            recorded_ms: inner.clock.now_ms(),
            artifacts: written.to_vec(),
            chain,
            extra: Extra::new(),
        };
        let record = BatchOp::Put {
            value: codec::encode(&key, &checkpoint)?,
            key,
            expect: Expect::Any,
        };
        inner.jobs.append_event_with(
            self.worker,
            "stage_done",
            json!({ "stage": stage, "artifacts": written.len() }),
            &[record],
        )?;
        Ok(checkpoint)
    }
}
