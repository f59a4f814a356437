//! Artifact copies in object storage, through the `object_store` crate.

use std::collections::BTreeSet;
use std::fmt;
use std::future::Future;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use object_store::path::{Path as ObjectPath, PathPart};
use object_store::{ObjectStore, PutPayload};
use percent_encoding::percent_decode_str;

use super::checkpoint::Artifact;
use super::shared::{ArtifactStorage, parts};
use crate::background::{self, Background};
use crate::error::{Error, Result};

/// The runtime that drives the object stores' clients: its own, so that a
/// long upload never delays PostgreSQL's fences on theirs.
static RUNTIME: Background = Background::new("jobsafe-objects", 2);

/// Artifacts kept in object storage (S3, Google Cloud Storage, Azure Blob
/// Storage, or any other [`ObjectStore`]): each copy one object, which every
/// machine with access to the bucket reads. Feature `object-store`.
///
/// ```text
/// <prefix>/jobs/<job dir>/<name>
/// <prefix>/subjects/<subject dir>/<name>
/// ```
///
/// # Whole or absent
/// A copy becomes visible only whole, as the object stores make uploads:
/// a copy of at most [`part_len`](Self::part_len) bytes is one `PUT`, which
/// replaces the object at once or not at all; a longer one is a multipart
/// upload, its parts sent first and invisible until the request that
/// completes it names them all (the manifest of the upload). A crash or an
/// error midway leaves the old object, or none. The parts of an upload that
/// never completed stay in the bucket, invisible to readers and to listings,
/// until the store drops them: on S3, give the bucket a lifecycle rule that
/// aborts incomplete multipart uploads after a day (`object_store` cannot
/// list them). Whatever [`fetch`](ArtifactStorage::fetch) reads is checked
/// against the checkpoint's length and SHA-256 before it is used.
///
/// A copy in a local directory (`object_store::local::LocalFileSystem`)
/// is renamed into place, but not flushed: after a power loss it may be
/// short or empty, which the check finds. Its uploads cut off by a crash
/// leave temporary files beside the copies, which no listing shows and
/// [`remove_dir`](ArtifactStorage::remove_dir) does not remove.
///
/// # A network that goes silent
/// Each request (a `PUT`, a part, the completion, an abort, a `GET`'s
/// answer, a page of a listing, a deletion) must end within
/// [`request_timeout`](Self::request_timeout) (60 s unless set), and a
/// `GET`'s body must not pause longer than that between its bytes, whatever
/// the client's own timeouts and retries; then the call fails with a
/// transient [`Error::ObjectStore`]: a copy counts as not written, a fetch
/// fails (the stage runs again). A `PUT` or a part that timed out may still
/// land later, even after a newer copy: what [`fetch`](ArtifactStorage::fetch)
/// then returns does not verify, and the stage runs again.
///
/// # Errors that pass
/// [`Error::ObjectStore`] is transient for what `object_store` reports as
/// `Generic` after its own retries (a refused or reset connection, a server
/// error, but also refusals it does not classify: on S3 a failed listing,
/// whatever its status, and a credential that could not be fetched) and for
/// a request that went unanswered. It is not for a permission denied or a
/// missing credential that the store reports as such, or an operation it
/// does not support.
///
/// # Threads
/// The calls block their thread, as `std::fs` does, on any thread, a tokio
/// runtime's included: the client runs on a runtime of the crate's own (two
/// worker threads, started on first use, and the blocking pool tokio gives
/// each runtime).
///
/// # Example
/// An application names its bucket with the cloud's client, a feature of
/// `object_store` that it turns on in its own dependency on it (`aws`, `gcp`,
/// `azure`), for example
/// `object_store::aws::AmazonS3Builder::from_env().with_bucket_name("artifacts").build()?`.
/// Here, an in-memory store:
///
/// ```
/// use std::path::Path;
/// use std::sync::Arc;
/// use jobsafe::jobs::NewJob;
/// use jobsafe::pipeline::{Artifact, ArtifactStorage, ObjectStoreArtifacts};
/// use jobsafe::{ManualClock, MemStore, Pipeline};
/// use object_store::memory::InMemory;
/// use object_store::ObjectStore;
///
/// let bucket: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
/// let dir = tempfile::tempdir()?;
/// let pipeline = Pipeline::builder(MemStore::new(), Arc::new(ManualClock::new(0)), dir.path())
///     .shared_artifacts(ObjectStoreArtifacts::new(Arc::clone(&bucket)).prefix("render")?)
///     .stage("render", |ctx| {
///         ctx.write("page.html", b"<h1>hi</h1>")?;
///         Ok(())
///     })
///     .build()?;
/// pipeline.enqueue("site-1", NewJob::new("render"))?;
/// pipeline.run_pass()?;
/// // What another machine sees in the bucket: the job's directory, and its copy.
/// let other = ObjectStoreArtifacts::new(bucket).prefix("render")?;
/// let dirs = other.dirs(Path::new("jobs"))?;
/// assert_eq!(dirs.len(), 1);
/// let page = Artifact::of_bytes(format!("jobs/{}/page.html", dirs[0]), b"<h1>hi</h1>");
/// assert_eq!(other.fetch(&page)?.as_deref(), Some(&b"<h1>hi</h1>"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct ObjectStoreArtifacts {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    part_len: usize,
    request_timeout: Duration,
}

impl fmt::Debug for ObjectStoreArtifacts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectStoreArtifacts")
            .field("store", &format_args!("{}", self.store))
            .field("prefix", &self.prefix.as_ref())
            .field("part_len", &self.part_len)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl ObjectStoreArtifacts {
    /// Copies up to this length are one `PUT`; longer ones are sent in parts
    /// of this length, unless set otherwise: 8 MiB.
    pub const DEFAULT_PART_LEN: usize = 8 << 20;

    /// The shortest part S3 accepts, but for an upload's last one: 5 MiB.
    pub const MIN_PART_LEN: usize = 5 << 20;

    /// Copies in `store`, under the prefix `artifacts`.
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Self {
            store,
            prefix: ObjectPath::from("artifacts"),
            part_len: Self::DEFAULT_PART_LEN,
            request_timeout: Duration::from_secs(60),
        }
    }

    /// Keeps the copies under `prefix` (`/`-separated) instead of
    /// `artifacts`. Give each pipeline a prefix of its own: the purge of
    /// orphans removes what it does not know under `jobs` and `subjects`.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `prefix` is empty or not a valid object
    /// path: an empty part, a `.` or `..`, a leading or trailing `/`, or a
    /// character that object paths encode (`~`, `%`, `#`, `\`, ...).
    pub fn prefix(mut self, prefix: &str) -> Result<Self> {
        let refused =
            |why: &str| Error::InvalidArgument(format!("object store prefix {prefix:?}: {why}"));
        let parsed = ObjectPath::parse(prefix).map_err(|e| refused(&e.to_string()))?;
        if parsed.as_ref().is_empty() {
            return Err(refused("empty: name a prefix the pipeline has to itself"));
        }
        if parsed.as_ref() != prefix
            || prefix
                .split('/')
                .any(|part| PathPart::from(part).as_ref() != part)
        {
            return Err(refused(
                "not a plain object path: use letters, digits, `-`, `_` and `.` between `/`",
            ));
        }
        self.prefix = parsed;
        Ok(self)
    }

    /// Sends copies longer than `len` bytes as multipart uploads in parts of
    /// `len` bytes ([`DEFAULT_PART_LEN`](Self::DEFAULT_PART_LEN) unless set).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `len` is below
    /// [`MIN_PART_LEN`](Self::MIN_PART_LEN), which S3 would refuse only at
    /// the upload's end.
    pub fn part_len(mut self, len: usize) -> Result<Self> {
        if len < Self::MIN_PART_LEN {
            return Err(Error::InvalidArgument(format!(
                "object store part length {len} is below the {} bytes S3 accepts",
                Self::MIN_PART_LEN
            )));
        }
        self.part_len = len;
        Ok(self)
    }

    /// The longest each request may wait for its answer, and a download
    /// between its bytes, before the call fails as transient (60 s unless
    /// set). An upload's request carries its whole body (a part, or a copy of
    /// at most `part_len` bytes): raise the timeout, or lower `part_len`, for
    /// a link that does not move that much in that time.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `timeout` is zero.
    pub fn request_timeout(mut self, timeout: Duration) -> Result<Self> {
        if timeout.is_zero() {
            return Err(Error::InvalidArgument(
                "object store request timeout is zero".into(),
            ));
        }
        self.request_timeout = timeout;
        Ok(self)
    }

    /// The object of a relative artifact path (or directory).
    fn object(&self, path: &Path) -> Result<ObjectPath> {
        let mut object = self.prefix.clone();
        for part in parts(path)? {
            object = object.child(PathPart::from(part));
        }
        Ok(object)
    }

    /// Runs `work` on the crate's runtime, and names `object` in its error.
    fn call<T: Send + 'static>(
        &self,
        object: &ObjectPath,
        work: impl Future<Output = std::result::Result<T, Failed>> + Send + 'static,
    ) -> Result<T> {
        let error = |failed: Failed| Error::ObjectStore {
            step: failed.step,
            location: format!("{}/{object}", self.store),
            transient: failed.transient,
            source: failed.source,
        };
        if RUNTIME.is_current_thread() {
            return Err(error(Failed {
                step: "wait for the object store's runtime",
                transient: false,
                not_found: false,
                source: "called on the runtime's own thread, which would wait for itself".into(),
            }));
        }
        let runtime = RUNTIME.handle().map_err(|e| {
            error(Failed {
                step: "start the object store's runtime",
                transient: true,
                not_found: false,
                source: Box::new(e),
            })
        })?;
        background::block_on(&runtime, work)
            .unwrap_or_else(|| {
                Err(Failed {
                    step: "wait for the object store's runtime",
                    transient: true,
                    not_found: false,
                    source: "the request ended without an answer".into(),
                })
            })
            .map_err(error)
    }

    /// One `PUT` of the whole copy.
    fn put(&self, object: &ObjectPath, bytes: &[u8]) -> Result<()> {
        let (store, location, timeout) = (
            Arc::clone(&self.store),
            object.clone(),
            self.request_timeout,
        );
        let payload = PutPayload::from(bytes.to_vec());
        self.call(object, async move {
            within(timeout, "store artifact", store.put(&location, payload)).await?;
            Ok(())
        })
    }

    /// A multipart upload: the parts first, then the completion, which makes
    /// the object visible whole. Aborted after an error, best effort.
    fn put_in_parts(&self, object: &ObjectPath, bytes: &[u8]) -> Result<()> {
        let (store, location, timeout) = (
            Arc::clone(&self.store),
            object.clone(),
            self.request_timeout,
        );
        let all = Bytes::copy_from_slice(bytes);
        let part_len = self.part_len;
        self.call(object, async move {
            let mut upload = within(
                timeout,
                "start artifact upload",
                store.put_multipart(&location),
            )
            .await?;
            let mut sent = Ok(());
            for start in (0..all.len()).step_by(part_len) {
                let part = all.slice(start..all.len().min(start + part_len));
                let request = upload.put_part(PutPayload::from(part));
                sent = within(timeout, "store artifact part", request).await;
                if sent.is_err() {
                    break;
                }
            }
            let ended = match sent {
                Ok(()) => within(timeout, "complete artifact upload", upload.complete())
                    .await
                    .map(drop),
                Err(failed) => Err(failed),
            };
            if ended.is_err() {
                // The parts sent stay in the bucket (invisible) until the
                // store drops them if this fails too.
                let _ = within(timeout, "abort artifact upload", upload.abort()).await;
            }
            ended
        })
    }

    /// Every object under `object`, by a listing that may take several pages.
    async fn list(
        store: Arc<dyn ObjectStore>,
        object: ObjectPath,
        timeout: Duration,
    ) -> std::result::Result<Vec<ObjectPath>, Failed> {
        let mut listing = store.list(Some(&object));
        let mut found = Vec::new();
        while let Some(meta) = within(timeout, "list artifacts", async {
            listing.next().await.transpose()
        })
        .await?
        {
            found.push(meta.location);
        }
        Ok(found)
    }
}

impl ArtifactStorage for ObjectStoreArtifacts {
    fn store(&self, artifact: &Artifact, bytes: &[u8]) -> Result<()> {
        let object = self.object(&artifact.path)?;
        if bytes.len() <= self.part_len {
            self.put(&object, bytes)
        } else {
            self.put_in_parts(&object, bytes)
        }
    }

    fn fetch(&self, artifact: &Artifact) -> Result<Option<Vec<u8>>> {
        let object = self.object(&artifact.path)?;
        let (store, location, timeout) = (
            Arc::clone(&self.store),
            object.clone(),
            self.request_timeout,
        );
        let recorded = artifact.clone();
        self.call(&object, async move {
            let found = within(timeout, "fetch artifact", async {
                match store.get(&location).await {
                    Ok(found) => Ok(Some(found)),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
            let Some(found) = found else {
                return Ok(None);
            };
            // Another copy than the recorded one: not worth its download.
            if found.meta.size != recorded.len {
                return Ok(None);
            }
            // The body as it arrives: each wait for its next bytes bound,
            // not the whole download, whatever the copy's length.
            let mut body = found.into_stream();
            let mut bytes = Vec::with_capacity(super::inputs::first_capacity(recorded.len));
            while let Some(chunk) = within(
                timeout,
                "fetch artifact body",
                body.next().map(Option::transpose),
            )
            .await?
            {
                if bytes.len() + chunk.len() > usize::try_from(recorded.len).unwrap_or(usize::MAX) {
                    // Longer than it said: not the recorded copy.
                    return Ok(None);
                }
                bytes.extend_from_slice(&chunk);
            }
            let fetched = Artifact::of(recorded.path.clone(), &bytes);
            Ok((fetched == recorded).then_some(bytes))
        })
    }

    fn remove_dir(&self, dir: &Path) -> Result<usize> {
        let object = self.object(dir)?;
        let (store, location, timeout) = (
            Arc::clone(&self.store),
            object.clone(),
            self.request_timeout,
        );
        self.call(&object, async move {
            let mut removed = 0;
            for copy in Self::list(Arc::clone(&store), location, timeout).await? {
                match within(timeout, "remove artifact", store.delete(&copy)).await {
                    Ok(()) => removed += 1,
                    // Removed by another purge meanwhile.
                    Err(failed) if failed.not_found => {}
                    Err(failed) => return Err(failed),
                }
            }
            Ok(removed)
        })
    }

    /// By a listing of every copy under `top` rather than by directory
    /// (with a delimiter): a local directory's store lists the directories
    /// that its removals left empty, which hold no copy.
    fn dirs(&self, top: &Path) -> Result<Vec<String>> {
        let object = self.object(top)?;
        let (store, location, timeout) = (
            Arc::clone(&self.store),
            object.clone(),
            self.request_timeout,
        );
        let copies = self.call(&object, Self::list(store, location, timeout))?;
        let mut names = BTreeSet::new();
        for copy in &copies {
            let mut below = copy.prefix_match(&object).into_iter().flatten();
            // `<dir>/<name>`: a directory holds the copy.
            let (Some(dir), Some(_)) = (below.next(), below.next()) else {
                continue;
            };
            // A name this storage wrote is one plain component; what else is
            // in the bucket (`%2E%2E`, an encoded `/`, bytes that are not
            // UTF-8) names no directory of the pipeline's, and is skipped.
            let Ok(name) = percent_decode_str(dir.as_ref()).decode_utf8() else {
                continue;
            };
            let mut components = Path::new(name.as_ref()).components();
            if let (Some(Component::Normal(_)), None) = (components.next(), components.next())
                && !name.contains('/')
            {
                names.insert(name.into_owned());
            }
        }
        Ok(names.into_iter().collect())
    }
}

/// A request that failed, before it is told where.
struct Failed {
    step: &'static str,
    transient: bool,
    /// The object was not there (or no longer).
    not_found: bool,
    source: Box<dyn std::error::Error + Send + Sync + 'static>,
}

/// Awaits `request` for at most `timeout`.
async fn within<T>(
    timeout: Duration,
    step: &'static str,
    request: impl Future<Output = object_store::Result<T>>,
) -> std::result::Result<T, Failed> {
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(Failed {
            step,
            transient: is_transient(&e),
            not_found: matches!(e, object_store::Error::NotFound { .. }),
            source: Box::new(e),
        }),
        Err(_elapsed) => Err(Failed {
            step,
            transient: true,
            not_found: false,
            source: format!("no answer within {} ms", timeout.as_millis()).into(),
        }),
    }
}

/// Whether an error of `object_store` may pass if the call is repeated: the
/// errors its client gives after its own retries (a refused connection, a
/// 5xx, a timeout) and a task that ended; not a denied permission, a missing
/// credential or a request the store does not support.
fn is_transient(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
    )
}
