//! The signal store: one HDF5 file, one top-level dataset per sample, named by its decimal Id,
//! shape `(L, C)` or `(L,)`, float32 or float64 (read as f32).
//!
//! [`SignalStore`] is the small trait the rest of the system reads through; [`Hdf5Store`] is its
//! `rust-hdf5` implementation. The file is opened once to list the samples; reads are lazy and
//! take only the rows asked for (a hyperslab). `rust-hdf5` file handles are single-threaded, so
//! every worker thread keeps its own handle: reads from many threads never wait on a lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use rust_hdf5::{DatatypeMessage, H5Dataset, H5File, LinkClass, MappedView, StorageLayout};

use crate::error::{Result, SignalError};

/// Element type of a stored sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SampleType {
    F32,
    F64,
}

/// What the store knows of one sample without reading its values.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleInfo {
    pub id: u64,
    /// The dataset's name in the file (`"7"`, or `"007"` where a writer padded it).
    pub name: String,
    /// Number of time steps L.
    pub length: usize,
    /// Number of channels C (1 for a `(L,)` dataset).
    pub channels: usize,
    pub dtype: SampleType,
    pub chunked: bool,
    /// 1 for a `(L,)` dataset, 2 for `(L, C)`.
    pub rank: usize,
}

/// A dataset of the file that is not a readable sample, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredDataset {
    pub name: String,
    pub reason: String,
}

/// Read access to a collection of multichannel signals keyed by Id.
pub trait SignalStore: Send + Sync {
    /// Where the store lives, for messages.
    fn path(&self) -> &Path;
    /// Every readable sample, sorted by Id.
    fn samples(&self) -> &[SampleInfo];
    /// Datasets that are not samples (non-numeric names, unsupported shapes or types).
    fn ignored(&self) -> &[IgnoredDataset];
    /// Reads rows `start..start + rows` of sample `id` into `out` (`rows * C` values, row-major).
    fn read_rows_into(&self, id: u64, start: usize, rows: usize, out: &mut [f32]) -> Result<()>;

    /// The sample's position in [`samples`](Self::samples).
    fn index_of(&self, id: u64) -> Result<usize> {
        self.samples().binary_search_by_key(&id, |s| s.id).map_err(|_| SignalError::UnknownId { path: self.path().to_path_buf(), id })
    }

    /// The store's channel count: its samples' most common one (ties: the first sample's; 1 for
    /// an empty store). Training and evaluation take windows of this many channels and skip, by
    /// name, an Id with another.
    fn channels(&self) -> usize {
        let mut counts: Vec<(usize, usize)> = Vec::new();
        for s in self.samples() {
            match counts.iter_mut().find(|(c, _)| *c == s.channels) {
                Some((_, n)) => *n += 1,
                None => counts.push((s.channels, 1)),
            }
        }
        // (`max_by_key` keeps the last of equals: reversed, the first sample's count wins a tie.)
        counts.iter().rev().max_by_key(|&&(_, n)| n).map_or(1, |&(c, _)| c)
    }

    fn info(&self, id: u64) -> Result<&SampleInfo> {
        let i = self.index_of(id)?;
        Ok(&self.samples()[i])
    }

    /// Reads a whole sample, `(L, C)` row-major.
    fn read(&self, id: u64) -> Result<Vec<f32>> {
        let info = self.info(id)?;
        limits::check(|| format!("{}: reading Id {id} whole ({} × {} float32)", self.path().display(), info.length, info.channels), limits::bytes(&[info.length, info.channels], 4))?;
        let mut out = vec![0.0; info.length * info.channels];
        self.read_rows_into(id, 0, info.length, &mut out)?;
        Ok(out)
    }
}

/// An HDF5 signal store read with `rust-hdf5`.
pub struct Hdf5Store {
    path: PathBuf,
    key: u64,
    samples: Vec<SampleInfo>,
    ignored: Vec<IgnoredDataset>,
    /// Zero-copy views into the file's memory map, per sample, taken on first read where the
    /// layout allows (contiguous, native f32). Reads through a view are a plain copy: no lock,
    /// no parsing. Other samples read hyperslabs through the thread's own handle.
    views: Vec<OnceLock<Option<MappedView<f32>>>>,
}

static NEXT_STORE_KEY: AtomicU64 = AtomicU64::new(1);

/// Per-thread open handles: (store key, file, datasets opened so far). Bounded so that threads
/// that outlive many stores do not hoard file descriptors.
struct ThreadHandle {
    key: u64,
    file: H5File,
    datasets: HashMap<u64, H5Dataset>,
}
const HANDLES_PER_THREAD: usize = 4;
thread_local! {
    static HANDLES: RefCell<Vec<ThreadHandle>> = const { RefCell::new(Vec::new()) };
}

fn open_h5(path: &Path) -> Result<H5File> {
    let meta = crate::error::metadata_of(path)?;
    // Only a regular file can be an HDF5 store: opening a FIFO would wait for a writer forever.
    if !meta.is_file() {
        let what = if meta.is_dir() { "a directory" } else { "not a regular file (a pipe, socket or device)" };
        return Err(SignalError::NotHdf5 { path: path.to_path_buf(), reason: format!("{what}: a signal store is an HDF5 file") });
    }
    // A file cut short is named as such before the parser meets whatever the cut broke.
    let length = meta.len();
    if let Some(recorded) = recorded_length(path, length).map_err(|e| SignalError::Io { path: path.to_path_buf(), source: e })? {
        if length < recorded {
            let reason = format!(
                "the file is cut short: its superblock records {recorded} bytes, the file has {length} (an interrupted copy or download? h5py refuses it too); values past the cut would read as zeros"
            );
            return Err(SignalError::NotHdf5 { path: path.to_path_buf(), reason });
        }
    }
    // A file that is not HDF5 (or is corrupt) must be an error, never a panic inside the parser.
    let opened = std::panic::catch_unwind(|| H5File::options().best_effort_locking().open(path));
    match opened {
        Ok(Ok(f)) => Ok(f),
        Ok(Err(e)) => Err(SignalError::NotHdf5 { path: path.to_path_buf(), reason: e.to_string() }),
        Err(_) => Err(SignalError::NotHdf5 { path: path.to_path_buf(), reason: "the HDF5 parser failed on corrupt structures".into() }),
    }
}

/// The file's length as its superblock records it (the end-of-file address), or `None` where the
/// superblock records none (the undefined address), or where no superblock is found. The
/// superblock is where libhdf5 looks for it: at byte 0, else at 512, 1024, 2048, … (after a user
/// block).
///
/// libhdf5 refuses a file shorter than that (`truncated file` in `H5F__super_read`); rust-hdf5
/// does not check, and gives a chunk past the cut its fill value, zeros, as if never written.
/// Contiguous values past a cut are caught dataset by dataset ([`describe`]), chunked ones only
/// here. Superblock versions 0 and 1 keep the address after 24 (28) bytes and two addresses,
/// versions 2 and 3 after 12 bytes and two addresses; addresses are `size of offsets` bytes, little
/// endian, and libhdf5 stores this one as an absolute offset.
fn recorded_length(path: &Path, length: u64) -> std::io::Result<Option<u64>> {
    use std::io::{Read, Seek, SeekFrom};
    const SIGNATURE: &[u8] = b"\x89HDF\r\n\x1a\n";
    let mut file = std::fs::File::open(path)?;
    let mut head = Vec::with_capacity(64);
    let mut found = false;
    for at in std::iter::once(0).chain((9..64).map(|p| 1u64 << p)).take_while(|&at| at < length) {
        file.seek(SeekFrom::Start(at))?;
        head.clear();
        (&mut file).take(64).read_to_end(&mut head)?;
        if head.starts_with(SIGNATURE) {
            found = true;
            break;
        }
    }
    let (Some(&version), true) = (head.get(8), found) else { return Ok(None) };
    // A version-3 superblock of a file open for SWMR writing (flags: write and SWMR-write
    // access) records an end that a live writer may not have reached yet; libhdf5 skips the
    // check there too.
    if version == 3 && head.get(11).is_some_and(|&flags| flags & 0x5 == 0x5) {
        return Ok(None);
    }
    let (offsets_at, eof_after) = match version {
        0 => (13, 24),
        1 => (13, 28),
        2 | 3 => (9, 12),
        _ => return Ok(None),
    };
    let Some(&size) = head.get(offsets_at) else { return Ok(None) };
    let size = size as usize;
    let at = eof_after + 2 * size;
    let Some(bytes) = head.get(at..at + size).filter(|_| matches!(size, 2 | 4 | 8)) else { return Ok(None) };
    let address = bytes.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64);
    let undefined = bytes.iter().all(|&b| b == 0xff);
    Ok((!undefined).then_some(address))
}

fn sample_type(dt: &DatatypeMessage) -> std::result::Result<SampleType, String> {
    match dt {
        DatatypeMessage::FloatingPoint { size: 4, .. } => Ok(SampleType::F32),
        DatatypeMessage::FloatingPoint { size: 8, .. } => Ok(SampleType::F64),
        other => Err(format!("unsupported element type {other:?}; expected float32 or float64")),
    }
}

/// Parses a dataset name as a decimal Id: digits only, as PHM-Vibench writes them.
pub fn parse_id(name: &str) -> Option<u64> {
    let name = name.strip_prefix('/').unwrap_or(name);
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

impl Hdf5Store {
    /// Opens the file and lists its samples. Reads no signal values.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = open_h5(&path)?;
        let file_bytes = std::fs::metadata(&path).map_err(|e| SignalError::Io { path: path.clone(), source: e })?.len();
        let mut samples = Vec::new();
        let mut ignored = Vec::new();
        let mut names = file.dataset_names();
        names.sort();
        for name in names {
            let Some(id) = parse_id(&name) else {
                ignored.push(IgnoredDataset { name, reason: "name is not a decimal Id".into() });
                continue;
            };
            match describe(&file, &name, id, file_bytes) {
                Ok(info) => samples.push(info),
                Err(reason) => ignored.push(IgnoredDataset { name, reason }),
            }
        }
        let (linked, not_followed) = links(&file, file_bytes);
        samples.extend(linked);
        ignored.extend(not_followed);
        // `7` and `007` are one Id: the shortest name is read (PHM-Vibench reads `f[str(id)]`),
        // the others are named as ignored.
        samples.sort_by(|a, b| (a.id, a.name.len(), &a.name).cmp(&(b.id, b.name.len(), &b.name)));
        let mut kept: Vec<SampleInfo> = Vec::with_capacity(samples.len());
        for s in samples {
            match kept.last() {
                Some(first) if first.id == s.id => ignored.push(IgnoredDataset { reason: format!("Id {} is also the dataset {:?}, which is read instead", s.id, first.name), name: s.name }),
                _ => kept.push(s),
            }
        }
        let samples = kept;
        let key = NEXT_STORE_KEY.fetch_add(1, Ordering::Relaxed);
        let views = samples.iter().map(|_| OnceLock::new()).collect();
        Ok(Hdf5Store { path, key, samples, ignored, views })
    }

    fn with_dataset<R>(&self, id: u64, f: impl FnOnce(&H5Dataset) -> Result<R>) -> Result<R> {
        HANDLES.with(|cell| {
            let mut handles = cell.borrow_mut();
            let pos = match handles.iter().position(|h| h.key == self.key) {
                Some(p) => p,
                None => {
                    if handles.len() >= HANDLES_PER_THREAD {
                        handles.remove(0);
                    }
                    let file = open_h5(&self.path)?;
                    handles.push(ThreadHandle { key: self.key, file, datasets: HashMap::new() });
                    handles.len() - 1
                }
            };
            let handle = &mut handles[pos];
            if !handle.datasets.contains_key(&id) {
                let name = self.samples.binary_search_by_key(&id, |s| s.id).map(|i| self.samples[i].name.as_str()).map_err(|_| self.bad(id, "no such dataset in the file"))?;
                let ds = handle.file.dataset(name).map_err(|e| self.bad(id, e.to_string()))?;
                handle.datasets.insert(id, ds);
            }
            f(&handle.datasets[&id])
        })
    }

    fn bad(&self, id: u64, reason: impl Into<String>) -> SignalError {
        SignalError::BadSample { path: self.path.clone(), id, reason: reason.into() }
    }
}

/// The top-level soft and external links. A soft link is followed as h5py follows it
/// (`f['9']` reads the dataset the link names): a decimal name whose target is a readable
/// dataset is a sample under the link's name. An external link, a soft link whose target is
/// missing or unreadable, or one whose name is not an Id is named with its target, so that its
/// Id shows why it is missing instead of only as "in the table, not in the store".
fn links(file: &H5File, file_bytes: u64) -> (Vec<SampleInfo>, Vec<IgnoredDataset>) {
    let root = file.root_group();
    // Listed once: the reader lists every group path in the file per call.
    let groups: std::collections::HashSet<String> = root.group_names().unwrap_or_default().into_iter().collect();
    let (mut samples, mut ignored) = (Vec::new(), Vec::new());
    for name in root.link_names().unwrap_or_default() {
        let reason = match root.link_class(&name) {
            Ok(LinkClass::Soft { path }) => match parse_id(&name) {
                None => format!("a soft link to {path:?} whose name is not a decimal Id"),
                Some(id) => match soft_link_problem(&root, &groups, &name) {
                    Some(problem) => format!("a soft link to {path:?}: {problem}"),
                    None => match describe(file, &name, id, file_bytes) {
                        Ok(info) => {
                            samples.push(info);
                            continue;
                        }
                        Err(why) => format!("a soft link to {path:?}, which cannot be read: {why}"),
                    },
                },
            },
            Ok(LinkClass::External { file, path }) => format!("an external link to {path:?} in {file:?}, which this reader does not follow"),
            Ok(LinkClass::UserDefined { link_type }) => format!("a user-defined link (type {link_type}), which this reader does not follow"),
            Ok(LinkClass::Hard) | Err(_) => continue,
        };
        ignored.push(IgnoredDataset { name, reason });
    }
    (samples, ignored)
}

/// Why the top-level soft link `name` leads to no dataset, where its chain stays at the top
/// level: a loop, more links in a row than libhdf5 follows (16), a group or an external link at
/// its end (`groups`: the file's group names). `None` where it leads on (the reader then opens
/// it, and says what else is wrong).
fn soft_link_problem(root: &rust_hdf5::H5Group, groups: &std::collections::HashSet<String>, name: &str) -> Option<String> {
    const MAX_HOPS: usize = 16;
    let mut seen = vec![name.to_string()];
    for _ in 0..=MAX_HOPS {
        let at = seen.last()?;
        let path = match root.link_class(at) {
            Ok(LinkClass::Soft { path }) => path,
            Ok(LinkClass::External { file, path }) => return Some(format!("an external link to {path:?} in {file:?} at the end, which this reader does not follow")),
            _ => return None,
        };
        // Only top-level targets (`/x` or `x`) are followed here.
        let next = path.strip_prefix('/').unwrap_or(&path).to_string();
        if next.is_empty() {
            return Some("the root group, not a dataset".into());
        }
        if next.contains('/') {
            return None;
        }
        if seen.contains(&next) {
            return Some(format!("a loop of soft links ({} → {next})", seen.join(" → ")));
        }
        if groups.contains(&next) {
            return Some(format!("the group {next:?}, not a dataset"));
        }
        seen.push(next);
    }
    Some(format!("more than {MAX_HOPS} soft links in a row (libhdf5 follows at most {MAX_HOPS})"))
}

/// What a dataset declares, checked against what the file can hold: a declared shape is a
/// claim, and a corrupt or hostile file can claim exabytes. Nothing is allocated from it here.
fn describe(file: &H5File, name: &str, id: u64, file_bytes: u64) -> std::result::Result<SampleInfo, String> {
    let ds = file.dataset(name).map_err(|e| e.to_string())?;
    let shape = ds.shape();
    let (length, channels) = match shape.as_slice() {
        [l] => (*l, 1),
        [l, c] => (*l, *c),
        other => return Err(format!("shape {other:?}; expected (L, C) or (L,)")),
    };
    if channels == 0 {
        return Err("zero channels".into());
    }
    let dtype = sample_type(&ds.datatype().map_err(|e| e.to_string())?)?;
    let elem = if dtype == SampleType::F32 { 4 } else { 8 };
    let total = limits::bytes(&[length, channels], elem);
    if total > isize::MAX as u128 {
        return Err(format!("shape ({length}, {channels}) is larger than any address space"));
    }
    // Values in other files (h5py's `external=`): a declared size there is checked against
    // nothing this reader can see, and past a short file's end the reader gives zeros, so such a
    // dataset is named and left out rather than read.
    if ds.external_files().is_ok_and(|f| !f.is_empty()) {
        return Err("stored in external files (HDF5 external storage), which this reader does not follow; copy the values into the file (`h5repack`)".into());
    }
    let layout = ds.storage_layout();
    match layout {
        Ok(StorageLayout::Chunked) => {
            // A corrupt layout can declare chunks of exabytes, and the reader allocates a whole
            // chunk to read any part of it. HDF5 itself caps chunks below 4 GiB.
            let dims = ds.chunk_dims().unwrap_or_default();
            let chunk_bytes = limits::bytes(&dims, elem);
            if chunk_bytes > (64u128 << 20).max(total).min(4 << 30) {
                return Err(format!("chunk of {} for a dataset of {}: corrupt layout", limits::human(chunk_bytes), limits::human(total)));
            }
            limits::budget().check(|| format!("a chunk of {}", limits::human(chunk_bytes)), chunk_bytes).map_err(|e| e.to_string())?;
            // Chunks never written read as the fill value, so a chunked dataset can declare any
            // size in a small file. The values must be in the file: at most as compressed as
            // deflate can (1032:1), and not at all without a filter.
            let ratio = if ds.filters().is_ok_and(|f| f.is_empty()) { 1 } else { 1032 };
            if total > (file_bytes as u128).saturating_mul(ratio) {
                return Err(format!(
                    "shape ({length}, {channels}) needs {} of data, more than the file's {} can hold{}: never written, truncated or corrupt",
                    limits::human(total),
                    limits::human(file_bytes as u128),
                    if ratio > 1 { " compressed" } else { "" }
                ));
            }
        }
        // Contiguous values lie in the file itself (external files are refused above): a shape
        // that needs more bytes than the file has is a lie, a file cut short, or never written.
        Ok(StorageLayout::Contiguous) if total > file_bytes as u128 => {
            return Err(format!("shape ({length}, {channels}) needs {} of contiguous data, but the file holds {}: truncated or corrupt", limits::human(total), limits::human(file_bytes as u128)));
        }
        _ => {}
    }
    let chunked = matches!(layout, Ok(StorageLayout::Chunked));
    // A contiguous block whose size fits the file may still start too late to end inside it (a
    // file cut short): its last value is read now, so the store lists it as ignored instead of a
    // run failing on it later. (A chunked dataset's chunks lie anywhere: a cut one is found when
    // the Id is first read, and the Id skipped then.)
    if matches!(layout, Ok(StorageLayout::Contiguous)) && length > 0 {
        // The last value ends the block: one value read, whatever the width.
        let (starts, counts) = if shape.len() == 1 { (vec![length - 1], vec![1]) } else { (vec![length - 1, channels - 1], vec![1, 1]) };
        let last_value = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match dtype {
            SampleType::F32 => ds.read_slice::<f32>(&starts, &counts).map(drop),
            SampleType::F64 => ds.read_slice::<f64>(&starts, &counts).map(drop),
        }));
        if !matches!(last_value, Ok(Ok(()))) {
            return Err(format!(
                "its last value cannot be read ({}): the file was cut short, or is corrupt",
                match last_value {
                    Ok(Err(e)) => e.to_string(),
                    _ => "corrupt data structures".into(),
                }
            ));
        }
    }
    Ok(SampleInfo { id, name: name.to_string(), length, channels, dtype, chunked, rank: shape.len() })
}

impl SignalStore for Hdf5Store {
    fn path(&self) -> &Path {
        &self.path
    }

    fn samples(&self) -> &[SampleInfo] {
        &self.samples
    }

    fn ignored(&self) -> &[IgnoredDataset] {
        &self.ignored
    }

    fn read_rows_into(&self, id: u64, start: usize, rows: usize, out: &mut [f32]) -> Result<()> {
        let idx = self.index_of(id)?;
        let info = &self.samples[idx];
        if start.checked_add(rows).is_none_or(|end| end > info.length) {
            return Err(self.bad(id, format!("rows {start}..+{rows} out of range (length {})", info.length)));
        }
        if out.len() != rows * info.channels {
            return Err(self.bad(id, format!("buffer holds {} values, need {}", out.len(), rows * info.channels)));
        }
        if rows == 0 {
            return Ok(());
        }
        let view = self.views[idx].get_or_init(|| {
            if info.dtype != SampleType::F32 || info.chunked {
                return None;
            }
            self.with_dataset(id, |ds| Ok(ds.read_mapped::<f32>().ok())).ok().flatten()
        });
        if let Some(v) = view {
            let c = info.channels;
            out.copy_from_slice(&v[start * c..(start + rows) * c]);
            return Ok(());
        }
        let (starts, counts): (Vec<usize>, Vec<usize>) = if info.rank == 1 { (vec![start], vec![rows]) } else { (vec![start, 0], vec![rows, info.channels]) };
        let read = |ds: &H5Dataset| -> Result<()> {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match info.dtype {
                SampleType::F32 => ds.read_slice_into::<f32>(out, &starts, &counts),
                SampleType::F64 => ds.read_slice::<f64>(&starts, &counts).map(|v| {
                    for (o, x) in out.iter_mut().zip(v) {
                        *o = x as f32;
                    }
                }),
            }));
            match r {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(self.bad(id, format!("read failed: {e}"))),
                Err(_) => Err(self.bad(id, "read failed: corrupt data structures")),
            }
        };
        self.with_dataset(id, read)
    }
}

/// How [`write_store`] lays out each sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    Contiguous,
    /// Chunks of `rows` time steps, gzip level `gzip` (0 = no compression).
    Chunked {
        rows: usize,
        gzip: u32,
    },
}

/// One sample to write: Id, `(L, C)` row-major values, C.
pub struct SampleData<'a> {
    pub id: u64,
    pub values: &'a [f32],
    pub channels: usize,
}

/// Writes samples as a signal store h5py reads back. The file appears only when complete
/// (written to a temporary name, synced, then renamed: [`files::publish`]).
pub fn write_store<'a>(path: &Path, samples: impl IntoIterator<Item = SampleData<'a>>, layout: Layout) -> Result<()> {
    let tmp = files::claim_tmp_path(path);
    let werr = |reason: String| SignalError::Write { path: path.to_path_buf(), reason };
    let result = (|| -> Result<()> {
        let file = H5File::create(&tmp).map_err(|e| werr(e.to_string()))?;
        let written = (|| -> Result<()> {
            for s in samples {
                if s.channels == 0 || !s.values.len().is_multiple_of(s.channels) {
                    return Err(werr(format!("Id {}: {} values do not split into {} channels", s.id, s.values.len(), s.channels)));
                }
                let rows = s.values.len() / s.channels;
                let mut b = file.new_dataset::<f32>().shape([rows, s.channels]);
                if let Layout::Chunked { rows: chunk_rows, gzip } = layout {
                    b = b.chunk(&[chunk_rows.clamp(1, rows.max(1)), s.channels]);
                    if gzip > 0 {
                        b = b.deflate(gzip);
                    }
                }
                let ds = b.create(&s.id.to_string()).map_err(|e| werr(format!("Id {}: {e}", s.id)))?;
                ds.write_raw(s.values).map_err(|e| werr(format!("Id {}: {e}", s.id)))?;
            }
            Ok(())
        })();
        // Closed on every path: a file dropped unclosed (a write failed on a full disk) has the
        // library print its own complaint before ours.
        let closed = file.close().map_err(|e| werr(e.to_string()));
        written.and(closed)
    })();
    // Nothing half-written stays behind: not on a failed write, nor where the rename fails (a
    // directory of that name).
    match result {
        Ok(()) => files::publish(&tmp, path).map_err(|e| SignalError::Io { path: path.to_path_buf(), source: e }),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}
