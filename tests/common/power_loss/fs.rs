//! The in-memory filesystem: what processes see, and the trace of what they did.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::panic::Location;
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use jobsafe::vfs::{FileInfo, FileKind, Vfs, VfsFile};
use parking_lot::Mutex;

/// An inode number. Never reused within one filesystem.
pub type Ino = u64;

/// The root directory's inode.
pub const ROOT: Ino = 1;

/// Whether an inode is a file or a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// A file's bytes: `bytes`, then zeros up to `len` (so that zero-filled,
/// preallocated space costs nothing to copy).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileData {
    bytes: Vec<u8>,
    len: u64,
}

impl FileData {
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Applies `data[from..to]` at `offset + from`.
    pub fn write(&mut self, offset: u64, data: &Data, from: u64, to: u64) {
        if from >= to {
            return;
        }
        let at = offset + from;
        let end = offset + to;
        match data {
            Data::Zeros(_) => {
                let stored = self.bytes.len() as u64;
                if at < stored {
                    let stop = end.min(stored);
                    self.bytes[at as usize..stop as usize].fill(0);
                    if stop == stored {
                        // Keep no trailing zeros stored.
                        let keep = self
                            .bytes
                            .iter()
                            .rposition(|&b| b != 0)
                            .map_or(0, |i| i + 1);
                        self.bytes.truncate(keep);
                    }
                }
            }
            Data::Bytes(bytes) => {
                if self.bytes.len() < end as usize {
                    self.bytes.resize(end as usize, 0);
                }
                self.bytes[at as usize..end as usize]
                    .copy_from_slice(&bytes[from as usize..to as usize]);
            }
        }
        self.len = self.len.max(end);
    }

    /// Reads at `offset` into `buf`; returns how many bytes there were.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> usize {
        if offset >= self.len {
            return 0;
        }
        let n = (self.len - offset).min(buf.len() as u64) as usize;
        let buf = &mut buf[..n];
        buf.fill(0);
        let stored = self.bytes.len() as u64;
        if offset < stored {
            let m = ((stored - offset) as usize).min(n);
            buf[..m].copy_from_slice(&self.bytes[offset as usize..offset as usize + m]);
        }
        n
    }

    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.len as usize];
        self.read(0, &mut out);
        out
    }
}

/// What one write wrote.
#[derive(Clone, Debug)]
pub enum Data {
    Bytes(Arc<[u8]>),
    Zeros(u64),
}

impl Data {
    fn of(buf: &[u8]) -> Self {
        if buf.iter().all(|&b| b == 0) {
            Data::Zeros(buf.len() as u64)
        } else {
            Data::Bytes(buf.into())
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(b) => b.len() as u64,
            Data::Zeros(n) => *n,
        }
    }
}

/// An inode.
#[derive(Clone, Debug)]
pub enum Node {
    File(FileData),
    Dir(BTreeMap<OsString, Ino>),
}

impl Node {
    pub fn empty(kind: Kind) -> Self {
        match kind {
            Kind::File => Node::File(FileData::default()),
            Kind::Dir => Node::Dir(BTreeMap::new()),
        }
    }

    fn kind(&self) -> Kind {
        match self {
            Node::File(_) => Kind::File,
            Node::Dir(_) => Kind::Dir,
        }
    }
}

/// A change to directory entries, durable as a whole (or not at all) once
/// every directory it touches was flushed after it: each name in a directory
/// set to an inode, or removed.
#[derive(Clone, Debug)]
pub struct DirEffect {
    pub changes: Vec<EntryChange>,
}

/// A name in a directory set to an inode (of a kind), or removed (`None`).
pub type EntryChange = (Ino, OsString, Option<(Ino, Kind)>);

impl DirEffect {
    fn one(dir: Ino, name: OsString, target: Option<(Ino, Kind)>) -> Self {
        DirEffect {
            changes: vec![(dir, name, target)],
        }
    }
}

/// One recorded operation that can change what a power loss leaves.
#[derive(Clone, Debug)]
pub enum Event {
    Write { ino: Ino, offset: u64, data: Data },
    SyncFile { ino: Ino, site: Site },
    Dir(DirEffect),
    SyncDir { ino: Ino, site: Site },
}

/// A flush call in the source: file and line of the call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Site {
    pub file: &'static str,
    pub line: u32,
}

impl Site {
    fn of(location: &'static Location<'static>) -> Self {
        Site {
            file: location.file(),
            line: location.line(),
        }
    }
}

impl fmt::Display for Site {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// A durable filesystem: what a power loss left, or what a fresh disk holds.
#[derive(Clone, Debug)]
pub struct Image {
    pub nodes: HashMap<Ino, Node>,
}

impl Image {
    /// A filesystem with nothing but its root directory.
    pub fn empty() -> Self {
        Image {
            nodes: HashMap::from([(ROOT, Node::empty(Kind::Dir))]),
        }
    }
}

#[derive(Debug, Default)]
struct LockState {
    exclusive: Option<u64>,
    shared: HashSet<u64>,
}

#[derive(Debug)]
struct Fs {
    nodes: HashMap<Ino, Node>,
    next_ino: Ino,
    record: bool,
    trace: Vec<Event>,
    locks: HashMap<Ino, LockState>,
    next_ofd: u64,
    open_files: usize,
    sites: BTreeMap<Site, u64>,
    disabled: Option<Site>,
    skipped: u64,
    /// The trace's length when the first flush of `disabled` was skipped.
    first_skipped_at: Option<usize>,
}

type Hook = Box<dyn FnOnce() -> io::Result<()> + Send>;
type NameFilter = Box<dyn Fn(&str) -> bool + Send>;

struct Shared {
    fs: Mutex<Fs>,
    /// Run once, right after a name the filter accepts appears: lets a test
    /// act as another process at that moment.
    on_create: Mutex<Option<(NameFilter, Hook)>>,
}

/// The in-memory filesystem (see the [module docs](super)). Clones share it.
///
/// Workloads here are single-threaded, so nothing could ever release a lock
/// that another open file holds: `lock` and `lock_shared` fail with
/// `WouldBlock` instead of waiting forever, and the store reports that.
#[derive(Clone)]
pub struct SimVfs {
    shared: Arc<Shared>,
}

impl fmt::Debug for SimVfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimVfs")
    }
}

impl SimVfs {
    /// An empty filesystem that records a trace.
    pub fn recording() -> Self {
        Self::with(Image::empty(), true)
    }

    /// A filesystem booted from `image` (a crash state), recording nothing.
    pub fn boot(image: Image) -> Self {
        Self::with(image, false)
    }

    /// A filesystem booted from `image` that records a trace: for crashes
    /// during what runs after a reboot.
    pub fn boot_recording(image: Image) -> Self {
        Self::with(image, true)
    }

    fn with(image: Image, record: bool) -> Self {
        let next_ino = image.nodes.keys().max().copied().unwrap_or(ROOT) + 1;
        SimVfs {
            shared: Arc::new(Shared {
                fs: Mutex::new(Fs {
                    nodes: image.nodes,
                    next_ino,
                    record,
                    trace: Vec::new(),
                    locks: HashMap::new(),
                    next_ofd: 1,
                    open_files: 0,
                    sites: BTreeMap::new(),
                    disabled: None,
                    skipped: 0,
                    first_skipped_at: None,
                }),
                on_create: Mutex::new(None),
            }),
        }
    }

    /// Turns every flush called from `site` into a no-op that reaches nothing.
    pub fn disable_site(&self, site: Site) {
        self.shared.fs.lock().disabled = Some(site);
    }

    /// Flushes skipped because their site was disabled.
    pub fn skipped_syncs(&self) -> u64 {
        self.shared.fs.lock().skipped
    }

    /// How many events the trace held when the first flush of the disabled
    /// site was skipped (`None` if none was): a crash at or before that point
    /// leaves a state the skip had no part in.
    pub fn first_skipped_at(&self) -> Option<usize> {
        self.shared.fs.lock().first_skipped_at
    }

    /// Runs `hook` once, right after the next name that `names` accepts
    /// appears: a file or a directory created, or a rename to it. The
    /// operation has happened; if the hook fails, the operation returns its
    /// error, so that a test can stop its caller there, as a process killed
    /// right after that operation (its error paths run, but nothing else).
    pub fn on_create(
        &self,
        names: impl Fn(&str) -> bool + Send + 'static,
        hook: impl FnOnce() -> io::Result<()> + Send + 'static,
    ) {
        *self.shared.on_create.lock() = Some((Box::new(names), Box::new(hook)));
    }

    /// Events recorded so far: a crash "after position `p`" keeps the first `p`.
    pub fn position(&self) -> usize {
        self.shared.fs.lock().trace.len()
    }

    pub fn trace(&self) -> Vec<Event> {
        self.shared.fs.lock().trace.clone()
    }

    /// Every flush site called so far, with how many flushes it made.
    pub fn sites(&self) -> BTreeMap<Site, u64> {
        self.shared.fs.lock().sites.clone()
    }

    /// Locks held by open files right now.
    pub fn held_locks(&self) -> usize {
        let fs = self.shared.fs.lock();
        fs.locks
            .values()
            .map(|l| l.shared.len() + usize::from(l.exclusive.is_some()))
            .sum()
    }

    pub fn open_files(&self) -> usize {
        self.shared.fs.lock().open_files
    }

    /// The bytes of the file at `path`, if there is one.
    pub fn contents(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.shared.fs.lock();
        let ino = fs.lookup(path).ok()?;
        match fs.nodes.get(&ino)? {
            Node::File(data) => Some(data.to_vec()),
            Node::Dir(_) => None,
        }
    }

    fn open(&self, ino: Ino, writable: bool) -> SimFile {
        let mut fs = self.shared.fs.lock();
        let ofd = fs.next_ofd;
        fs.next_ofd += 1;
        fs.open_files += 1;
        SimFile {
            vfs: self.clone(),
            ino,
            ofd,
            pos: 0,
            writable,
        }
    }

    fn create(&self, path: &Path, exclusive: bool) -> io::Result<SimFile> {
        let ino = {
            let mut fs = self.shared.fs.lock();
            let (dir, name) = fs.parent_of(path)?;
            match fs.entry(dir, &name) {
                Some(_) if exclusive => return Err(exists(path)),
                Some(ino) if fs.kind(ino) == Kind::Dir => {
                    return Err(err(io::ErrorKind::IsADirectory, path));
                }
                Some(ino) => ino,
                None => {
                    let ino = fs.new_node(Kind::File);
                    fs.set_entry(dir, &name, Some(ino));
                    fs.log(Event::Dir(DirEffect::one(
                        dir,
                        name,
                        Some((ino, Kind::File)),
                    )));
                    ino
                }
            }
        };
        let file = self.open(ino, true);
        self.run_hook(path)?;
        Ok(file)
    }

    /// Runs the hook of [`on_create`](Self::on_create) if `path`'s name is
    /// the one it waits for. Called with no lock held.
    fn run_hook(&self, path: &Path) -> io::Result<()> {
        let name = path
            .file_name()
            .map(OsStr::to_string_lossy)
            .unwrap_or_default();
        let hook = {
            let mut slot = self.shared.on_create.lock();
            match slot.as_ref() {
                Some((names, _)) if names(&name) => slot.take(),
                _ => None,
            }
        };
        match hook {
            Some((_, hook)) => hook(),
            None => Ok(()),
        }
    }

    /// Records a flush from `location`, unless its site is disabled.
    fn sync(&self, location: &'static Location<'static>, event: impl FnOnce(Site) -> Event) {
        let site = Site::of(location);
        let mut fs = self.shared.fs.lock();
        *fs.sites.entry(site).or_default() += 1;
        if fs.disabled == Some(site) {
            fs.skipped += 1;
            if fs.first_skipped_at.is_none() {
                fs.first_skipped_at = Some(fs.trace.len());
            }
            return;
        }
        fs.log(event(site));
    }
}

fn err(kind: io::ErrorKind, path: &Path) -> io::Error {
    io::Error::new(kind, format!("{}: {kind}", path.display()))
}

fn exists(path: &Path) -> io::Error {
    err(io::ErrorKind::AlreadyExists, path)
}

impl Fs {
    fn log(&mut self, event: Event) {
        if self.record {
            self.trace.push(event);
        }
    }

    fn new_node(&mut self, kind: Kind) -> Ino {
        let ino = self.next_ino;
        self.next_ino += 1;
        self.nodes.insert(ino, Node::empty(kind));
        ino
    }

    fn kind(&self, ino: Ino) -> Kind {
        self.nodes.get(&ino).map_or(Kind::File, Node::kind)
    }

    fn dir(&self, ino: Ino) -> Option<&BTreeMap<OsString, Ino>> {
        match self.nodes.get(&ino) {
            Some(Node::Dir(entries)) => Some(entries),
            _ => None,
        }
    }

    fn entry(&self, dir: Ino, name: &OsStr) -> Option<Ino> {
        self.dir(dir)?.get(name).copied()
    }

    fn set_entry(&mut self, dir: Ino, name: &OsStr, target: Option<Ino>) {
        if let Some(Node::Dir(entries)) = self.nodes.get_mut(&dir) {
            match target {
                Some(ino) => entries.insert(name.to_owned(), ino),
                None => entries.remove(name),
            };
        }
    }

    fn names(path: &Path) -> io::Result<Vec<&OsStr>> {
        let mut components = path.components();
        if components.next() != Some(Component::RootDir) {
            return Err(err(io::ErrorKind::InvalidInput, path));
        }
        let mut names = Vec::new();
        for c in components {
            match c {
                Component::Normal(name) => names.push(name),
                Component::CurDir => {}
                _ => return Err(err(io::ErrorKind::InvalidInput, path)),
            }
        }
        Ok(names)
    }

    fn walk(&self, path: &Path, names: &[&OsStr]) -> io::Result<Ino> {
        let mut ino = ROOT;
        for name in names {
            let entries = self
                .dir(ino)
                .ok_or_else(|| err(io::ErrorKind::NotADirectory, path))?;
            ino = *entries
                .get(*name)
                .ok_or_else(|| err(io::ErrorKind::NotFound, path))?;
        }
        Ok(ino)
    }

    fn lookup(&self, path: &Path) -> io::Result<Ino> {
        self.walk(path, &Self::names(path)?)
    }

    /// The directory that holds `path`, and `path`'s name in it.
    fn parent_of(&self, path: &Path) -> io::Result<(Ino, OsString)> {
        let names = Self::names(path)?;
        let Some((name, parents)) = names.split_last() else {
            return Err(err(io::ErrorKind::InvalidInput, path));
        };
        let dir = self.walk(path, parents)?;
        if self.dir(dir).is_none() {
            return Err(err(io::ErrorKind::NotADirectory, path));
        }
        Ok((dir, (*name).to_owned()))
    }

    fn file(&self, ino: Ino) -> io::Result<&FileData> {
        match self.nodes.get(&ino) {
            Some(Node::File(data)) => Ok(data),
            _ => Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
    }
}

impl SimVfs {
    /// The operations that make a name appear, before the hook runs.
    fn rename_locked(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.shared.fs.lock();
        let (from_dir, from_name) = fs.parent_of(from)?;
        let (to_dir, to_name) = fs.parent_of(to)?;
        let ino = fs
            .entry(from_dir, &from_name)
            .ok_or_else(|| err(io::ErrorKind::NotFound, from))?;
        let kind = fs.kind(ino);
        if let Some(target) = fs.entry(to_dir, &to_name) {
            if target == ino {
                return Ok(());
            }
            match (kind, fs.kind(target)) {
                (Kind::File, Kind::Dir) => return Err(err(io::ErrorKind::IsADirectory, to)),
                (Kind::Dir, Kind::File) => return Err(err(io::ErrorKind::NotADirectory, to)),
                (Kind::Dir, Kind::Dir) if fs.dir(target).is_some_and(|e| !e.is_empty()) => {
                    return Err(err(io::ErrorKind::DirectoryNotEmpty, to));
                }
                _ => {}
            }
        }
        fs.set_entry(from_dir, &from_name, None);
        fs.set_entry(to_dir, &to_name, Some(ino));
        // One change, even between two directories: atomic, old name or new.
        let effect = DirEffect {
            changes: vec![
                (from_dir, from_name, None),
                (to_dir, to_name, Some((ino, kind))),
            ],
        };
        fs.log(Event::Dir(effect));
        Ok(())
    }

    fn hard_link_locked(&self, from: &Path, to: &Path) -> io::Result<()> {
        let mut fs = self.shared.fs.lock();
        let ino = fs.lookup(from)?;
        if fs.kind(ino) == Kind::Dir {
            return Err(err(io::ErrorKind::PermissionDenied, from));
        }
        let (dir, name) = fs.parent_of(to)?;
        if fs.entry(dir, &name).is_some() {
            return Err(exists(to));
        }
        fs.set_entry(dir, &name, Some(ino));
        fs.log(Event::Dir(DirEffect::one(
            dir,
            name,
            Some((ino, Kind::File)),
        )));
        Ok(())
    }

    fn create_dir_locked(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.shared.fs.lock();
        let (dir, name) = fs.parent_of(path)?;
        if fs.entry(dir, &name).is_some() {
            return Err(exists(path));
        }
        let ino = fs.new_node(Kind::Dir);
        fs.set_entry(dir, &name, Some(ino));
        fs.log(Event::Dir(DirEffect::one(
            dir,
            name,
            Some((ino, Kind::Dir)),
        )));
        Ok(())
    }
}

impl Vfs for SimVfs {
    type File = SimFile;

    fn create_new(&self, path: &Path, _mode: u32) -> io::Result<SimFile> {
        self.create(path, true)
    }

    fn open_read(&self, path: &Path) -> io::Result<SimFile> {
        let ino = {
            let fs = self.shared.fs.lock();
            let ino = fs.lookup(path)?;
            if fs.kind(ino) == Kind::Dir {
                return Err(err(io::ErrorKind::IsADirectory, path));
            }
            ino
        };
        Ok(self.open(ino, false))
    }

    fn open_or_create(&self, path: &Path, _mode: u32) -> io::Result<SimFile> {
        self.create(path, false)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.rename_locked(from, to)?;
        self.run_hook(to)
    }

    fn hard_link(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.hard_link_locked(from, to)?;
        self.run_hook(to)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.shared.fs.lock();
        let (dir, name) = fs.parent_of(path)?;
        let ino = fs
            .entry(dir, &name)
            .ok_or_else(|| err(io::ErrorKind::NotFound, path))?;
        if fs.kind(ino) == Kind::Dir {
            return Err(err(io::ErrorKind::IsADirectory, path));
        }
        fs.set_entry(dir, &name, None);
        fs.log(Event::Dir(DirEffect::one(dir, name, None)));
        Ok(())
    }

    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.create_dir_locked(path)?;
        self.run_hook(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        let mut fs = self.shared.fs.lock();
        let (dir, name) = fs.parent_of(path)?;
        let ino = fs
            .entry(dir, &name)
            .ok_or_else(|| err(io::ErrorKind::NotFound, path))?;
        match fs.dir(ino) {
            None => return Err(err(io::ErrorKind::NotADirectory, path)),
            Some(entries) if !entries.is_empty() => {
                return Err(err(io::ErrorKind::DirectoryNotEmpty, path));
            }
            Some(_) => {}
        }
        fs.set_entry(dir, &name, None);
        fs.log(Event::Dir(DirEffect::one(dir, name, None)));
        Ok(())
    }

    fn read_dir(&self, path: &Path) -> io::Result<Vec<OsString>> {
        let fs = self.shared.fs.lock();
        let ino = fs.lookup(path)?;
        let entries = fs
            .dir(ino)
            .ok_or_else(|| err(io::ErrorKind::NotADirectory, path))?;
        Ok(entries.keys().cloned().collect())
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        let location = Location::caller();
        let ino = self.shared.fs.lock().lookup(path)?;
        self.sync(location, |site| Event::SyncDir { ino, site });
        Ok(())
    }

    fn metadata(&self, path: &Path) -> io::Result<FileInfo> {
        let fs = self.shared.fs.lock();
        let ino = fs.lookup(path)?;
        let (kind, len) = match fs.nodes.get(&ino) {
            Some(Node::File(data)) => (FileKind::File, data.len()),
            _ => (FileKind::Dir, 0),
        };
        // No clock: every file is as old as can be, so a sweep takes every
        // temp file it is allowed to.
        Ok(FileInfo::new(kind, len, UNIX_EPOCH, ino))
    }
}

/// An open file of a [`SimVfs`]: one open file description, for locks.
pub struct SimFile {
    vfs: SimVfs,
    ino: Ino,
    ofd: u64,
    pos: u64,
    writable: bool,
}

impl fmt::Debug for SimFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimFile(ino {})", self.ino)
    }
}

impl SimFile {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if !self.writable {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "file opened read-only",
            ));
        }
        let mut fs = self.vfs.shared.fs.lock();
        let data = Data::of(buf);
        match fs.nodes.get_mut(&self.ino) {
            Some(Node::File(file)) => file.write(offset, &data, 0, data.len()),
            _ => return Err(io::Error::from(io::ErrorKind::IsADirectory)),
        }
        fs.log(Event::Write {
            ino: self.ino,
            offset,
            data,
        });
        Ok(())
    }

    fn conflict(&self, exclusive: bool) -> bool {
        let fs = self.vfs.shared.fs.lock();
        let Some(state) = fs.locks.get(&self.ino) else {
            return false;
        };
        let other_exclusive = state.exclusive.is_some_and(|o| o != self.ofd);
        let other_shared = state.shared.iter().any(|&o| o != self.ofd);
        other_exclusive || (exclusive && other_shared)
    }

    fn take(&self, exclusive: bool) -> bool {
        if self.conflict(exclusive) {
            return false;
        }
        let mut fs = self.vfs.shared.fs.lock();
        let state = fs.locks.entry(self.ino).or_default();
        state.shared.remove(&self.ofd);
        state.exclusive = state.exclusive.filter(|&o| o != self.ofd);
        if exclusive {
            state.exclusive = Some(self.ofd);
        } else {
            state.shared.insert(self.ofd);
        }
        true
    }

    fn would_wait(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "lock on inode {} is held by another open file: nothing would release it",
                self.ino
            ),
        )
    }
}

impl VfsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.write_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn read_to_end(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        let fs = self.vfs.shared.fs.lock();
        let file = fs.file(self.ino)?;
        let start = buf.len();
        let n = file.len().saturating_sub(self.pos) as usize;
        buf.resize(start + n, 0);
        file.read(self.pos, &mut buf[start..]);
        self.pos += n as u64;
        Ok(n)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let fs = self.vfs.shared.fs.lock();
        Ok(fs.file(self.ino)?.read(offset, buf))
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.write_at(buf, offset)
    }

    fn size(&self) -> io::Result<u64> {
        let fs = self.vfs.shared.fs.lock();
        Ok(fs.file(self.ino)?.len())
    }

    fn sync_all(&self) -> io::Result<()> {
        let ino = self.ino;
        self.vfs
            .sync(Location::caller(), |site| Event::SyncFile { ino, site });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        let ino = self.ino;
        self.vfs
            .sync(Location::caller(), |site| Event::SyncFile { ino, site });
        Ok(())
    }

    fn lock(&self) -> io::Result<()> {
        if self.take(true) {
            Ok(())
        } else {
            Err(self.would_wait())
        }
    }

    fn lock_shared(&self) -> io::Result<()> {
        if self.take(false) {
            Ok(())
        } else {
            Err(self.would_wait())
        }
    }

    fn try_lock(&self) -> io::Result<bool> {
        Ok(self.take(true))
    }

    fn try_lock_shared(&self) -> io::Result<bool> {
        Ok(self.take(false))
    }

    fn unlock(&self) -> io::Result<()> {
        let mut fs = self.vfs.shared.fs.lock();
        if let Some(state) = fs.locks.get_mut(&self.ino) {
            state.shared.remove(&self.ofd);
            state.exclusive = state.exclusive.filter(|&o| o != self.ofd);
        }
        Ok(())
    }
}

impl Drop for SimFile {
    fn drop(&mut self) {
        // Closing the last descriptor of an open file releases its locks.
        let _ = self.unlock();
        self.vfs.shared.fs.lock().open_files -= 1;
    }
}
