//! Artifacts every machine can read: a copy of each artifact a stage writes,
//! kept where the pipeline's other instances find it, so that a job taken
//! over on another machine skips the stages that finished on the first.
//!
//! The local artifact directory stays what stages read and write: the
//! pipeline copies each artifact to the [`ArtifactStorage`] as it is written,
//! and, when a checkpoint's artifact is missing or different in the local
//! directory, fetches the copy, checks it against the checkpoint's length and
//! SHA-256, and writes it back into the directory before the stage is
//! skipped. What does not verify is never written back, whatever the storage
//! returned: the stage runs again.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

use super::checkpoint::Artifact;
use crate::error::{Error, Result};
use crate::key::{Key, Prefix};
use crate::store::{Batch, Expect, SCAN_PAGE, Store};

/// Where a pipeline keeps the copies of its artifacts that every instance
/// can read; see [`PipelineBuilder::shared_artifacts`](super::PipelineBuilder::shared_artifacts).
/// [`StoreArtifacts`] keeps them in a [`Store`]; implement it for object
/// storage or a shared filesystem of your own.
///
/// Paths are relative to the artifact root, as in [`Artifact::path`]:
/// `jobs/<job dir>/<name>` or `subjects/<subject dir>/<name>`, each part a
/// plain name.
///
/// # Contract
/// - [`store`](ArtifactStorage::store) replaces what the path held. A crash
///   midway leaves the old copy (or nothing) for
///   [`fetch`](ArtifactStorage::fetch). Two stores of one path at once (a
///   runner that lost its job and does not know it yet, beside the one that
///   holds it) may leave either copy, or none whole: what `fetch` then
///   returns does not verify, and the stage runs again.
/// - `fetch` may return anything it likes for a damaged copy: the pipeline
///   checks the length and SHA-256 of what it gets, and uses nothing else.
/// - [`remove_dir`](ArtifactStorage::remove_dir) removes every copy under a
///   directory, and whatever an interrupted `store` left there.
pub trait ArtifactStorage: Send + Sync + fmt::Debug {
    /// Stores `bytes` as the copy of `artifact` (its path, length and
    /// SHA-256 are those of `bytes`), replacing what its path held.
    ///
    /// # Errors
    /// The storage's; the artifact then counts as not written.
    fn store(&self, artifact: &Artifact, bytes: &[u8]) -> Result<()>;

    /// The copy at `artifact`'s path, if it is the one recorded: `None` if
    /// there is none, or one of another length or digest (or torn).
    ///
    /// # Errors
    /// The storage's. The pipeline then runs the stage again rather than
    /// skip it, as when there is no copy.
    fn fetch(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>>;

    /// Removes every copy under `dir` (`jobs/<job dir>` or
    /// `subjects/<subject dir>`); how many.
    ///
    /// # Errors
    /// The storage's.
    fn remove_dir(&self, dir: &Path) -> Result<usize>;

    /// The directories under `top` (`jobs` or `subjects`) that hold a copy or
    /// part of one, by name, for the purge of orphans.
    ///
    /// # Errors
    /// The storage's.
    fn dirs(&self, top: &Path) -> Result<Vec<String>>;
}

/// Artifacts kept in a [`Store`]: each one as chunks of at most
/// [`CHUNK_LEN`](StoreArtifacts::CHUNK_LEN) bytes under a fresh upload id,
/// then a manifest that names the upload; older uploads of the path are
/// removed after the manifest moved on.
///
/// On [`PgStore`](crate::PgStore) every machine of the pipeline reads them,
/// which is what it is for. A [`LogStore`](crate::LogStore) holds its values
/// in memory, and is shared by one machine's processes only, whose artifact
/// directory is shared already: do not use it there.
///
/// ```text
/// <namespace>/file/<dir>/<name>                     manifest: length, SHA-256, upload, chunks
/// <namespace>/chunk/<dir>/<name>/<upload>/<index>   the bytes
/// ```
///
/// ```
/// use std::sync::Arc;
/// use jobsafe::jobs::NewJob;
/// use jobsafe::pipeline::StoreArtifacts;
/// use jobsafe::{ManualClock, MemStore, Pipeline, Prefix, Store};
///
/// // `PgStore` in a service; any store here.
/// let store = Arc::new(MemStore::new());
/// let dir = tempfile::tempdir()?;
/// let pipeline = Pipeline::builder(Arc::clone(&store), Arc::new(ManualClock::new(0)), dir.path())
///     .shared_artifacts(StoreArtifacts::new(Arc::clone(&store)))
///     .stage("render", |ctx| {
///         ctx.write("page.html", b"<h1>hi</h1>")?;
///         Ok(())
///     })
///     .build()?;
/// let job = pipeline.enqueue("site-1", NewJob::new("render"))?;
/// pipeline.run_pass()?;
/// // The copy another machine would fetch: a manifest, and its one chunk.
/// let manifests = store.list_all(&Prefix::new(["artifacts", "file"])?)?;
/// assert_eq!(manifests.len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct StoreArtifacts<S> {
    store: S,
    namespace: Prefix,
}

/// A copy's manifest.
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    schema: u32,
    len: u64,
    sha256: String,
    upload: String,
    chunks: u32,
}

impl<S: Store> StoreArtifacts<S> {
    /// The largest chunk: 1 MiB, well under the stores' value limit.
    pub const CHUNK_LEN: usize = 1 << 20;

    /// Copies kept in `store` under the namespace `artifacts`.
    pub fn new(store: S) -> Self {
        StoreArtifacts {
            store,
            namespace: Prefix::new(["artifacts"]).unwrap_or_default(),
        }
    }

    /// Keeps the copies under `namespace` instead (one per pipeline, when
    /// several pipelines share a store and an artifact root layout).
    pub fn namespace(mut self, namespace: Prefix) -> Self {
        self.namespace = namespace;
        self
    }

    fn key(&self, kind: &str, path: &Path, rest: &[&str]) -> Result<Key> {
        let mut segments = self.namespace.segments().to_vec();
        segments.push(kind.to_owned());
        segments.extend(parts(path)?);
        segments.extend(rest.iter().map(|s| (*s).to_owned()));
        Key::new(segments)
    }

    fn prefix(&self, kind: &str, path: &Path) -> Result<Prefix> {
        let mut segments = self.namespace.segments().to_vec();
        segments.push(kind.to_owned());
        segments.extend(parts(path)?);
        Prefix::new(segments)
    }

    /// Deletes every key under `prefix` but those under `keep`, a page at a
    /// time; how many.
    fn delete_under(&self, prefix: &Prefix, keep: Option<&Prefix>) -> Result<usize> {
        let mut deleted = 0;
        for page in self.store.scan(prefix, SCAN_PAGE) {
            let mut batch = Batch::new();
            for key in page? {
                if keep.is_some_and(|keep| key.starts_with(keep)) {
                    continue;
                }
                batch = batch.delete(&key, Expect::Any);
                deleted += 1;
            }
            if !batch.is_empty() {
                self.store.apply(&batch)?;
            }
        }
        Ok(deleted)
    }
}

impl<S: Store> ArtifactStorage for StoreArtifacts<S> {
    fn store(&self, artifact: &Artifact, bytes: &[u8]) -> Result<()> {
        let upload = uuid::Uuid::new_v4().simple().to_string();
        let mut chunks = 0u32;
        for (index, chunk) in bytes.chunks(Self::CHUNK_LEN).enumerate() {
            let key = self.key("chunk", &artifact.path, &[&upload, &format!("{index:08}")])?;
            self.store.put(&key, chunk, Expect::Absent)?;
            chunks += 1;
        }
        let manifest = Manifest {
            schema: 1,
            len: artifact.len,
            sha256: artifact.sha256.clone(),
            upload: upload.clone(),
            chunks,
        };
        let value = serde_json::to_vec(&manifest).map_err(|e| {
            Error::InvalidArgument(format!("the manifest of an artifact does not encode: {e}"))
        })?;
        // Last: until now, readers see the old upload, whole.
        let manifest_key = self.key("file", &artifact.path, &[])?;
        self.store.put(&manifest_key, &value, Expect::Any)?;
        // The older uploads of the path (and parts of interrupted ones), but
        // the one the manifest names now (another writer's, if it came
        // after). Best effort: the copy is whole already, and what is left
        // goes with the next store of the path, or the purge.
        let named = match self.store.get(&manifest_key) {
            Ok(Some(entry)) => serde_json::from_slice::<Manifest>(&entry.value)
                .map(|m| m.upload)
                .unwrap_or(upload),
            _ => return Ok(()),
        };
        let keep = self.prefix("chunk", &artifact.path.join(&named))?;
        let _ = self.delete_under(&self.prefix("chunk", &artifact.path)?, Some(&keep));
        Ok(())
    }

    fn fetch(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>> {
        let entry = match self.store.get(&self.key("file", &artifact.path, &[])?) {
            Ok(Some(entry)) => entry,
            // A damaged manifest names nothing to fetch.
            Ok(None) => return Ok(None),
            Err(e) if e.is_corrupt() => return Ok(None),
            Err(e) => return Err(e),
        };
        let Ok(manifest) = serde_json::from_slice::<Manifest>(&entry.value) else {
            return Ok(None);
        };
        if manifest.len != artifact.len || manifest.sha256 != artifact.sha256 {
            return Ok(None);
        }
        let mut bytes = Vec::with_capacity(super::inputs::first_capacity(manifest.len));
        for index in 0..manifest.chunks {
            let key = self.key(
                "chunk",
                &artifact.path,
                &[&manifest.upload, &format!("{index:08}")],
            )?;
            match self.store.get(&key) {
                Ok(Some(chunk)) => bytes.extend_from_slice(&chunk.value),
                // Removed by a newer upload since the manifest was read, or
                // damaged: the caller checks the bytes anyway, and these
                // are not the recorded ones.
                Ok(None) => return Ok(None),
                Err(e) if e.is_corrupt() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(bytes))
    }

    fn remove_dir(&self, dir: &Path) -> Result<usize> {
        let files = self.delete_under(&self.prefix("file", dir)?, None)?;
        self.delete_under(&self.prefix("chunk", dir)?, None)?;
        Ok(files)
    }

    fn dirs(&self, top: &Path) -> Result<Vec<String>> {
        let mut found = BTreeSet::new();
        for kind in ["file", "chunk"] {
            let prefix = self.prefix(kind, top)?;
            let depth = prefix.segments().len();
            for page in self.store.scan(&prefix, SCAN_PAGE) {
                for key in page? {
                    if let Some(dir) = key.segments().get(depth) {
                        found.insert(dir.clone());
                    }
                }
            }
        }
        Ok(found.into_iter().collect())
    }
}

/// The parts of a relative artifact path, each a plain name.
pub(super) fn parts(path: &Path) -> Result<Vec<String>> {
    path.components()
        .map(|component| match component {
            Component::Normal(part) => part.to_str().map(str::to_owned),
            _ => None,
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "artifact path {} is not a relative path of plain names",
                path.display()
            ))
        })
}
