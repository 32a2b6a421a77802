//! Files written whole or not at all, for every crate of the workspace: outputs go to a temporary
//! sibling, are synced, then renamed into place, and the directory is synced so the rename
//! survives a crash; a reader sees the old file or the new one, never half of one. Reads reserve
//! their memory fallibly, so a huge file is an error, not an aborted process.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The temporary sibling a file is written to before it is renamed into place
/// (`name.<pid>.tmp`).
pub fn tmp_path(path: &Path) -> PathBuf {
    tmp_path_ending(path, "tmp")
}

/// `name.<pid>.<tail>`: [`tmp_path`] with the tail given.
fn tmp_path_ending(path: &Path, tail: &str) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.{tail}", std::process::id()));
    path.with_file_name(name)
}

/// [`tmp_path`], after removing the temporaries of `path` whose writer is gone: what a writer
/// killed mid-write left (a signal gives it no chance to clean up; a killed `generate` left
/// gigabytes). Gone means both: no process of its pid runs here, and the file has not changed
/// for [`ABANDONED_AFTER`] (a writer on another host or in another container sharing the
/// directory has a pid this machine cannot see, but its file keeps changing). Only plain files
/// named exactly as [`tmp_path`] names them go. Removal is best effort: the write that follows
/// does not depend on it.
pub fn claim_tmp_path(path: &Path) -> PathBuf {
    claim_tmp_path_ending(path, "tmp")
}

/// [`claim_tmp_path`] for a writer that picks its format from the file's extension (a chart
/// renderer): `name.<pid>.tmp.<extension>`, e.g. `throughput.png.812.tmp.png`.
pub fn claim_tmp_path_keeping_extension(path: &Path) -> PathBuf {
    match path.extension().and_then(|e| e.to_str()) {
        Some(extension) => claim_tmp_path_ending(path, &format!("tmp.{extension}")),
        None => claim_tmp_path(path),
    }
}

/// [`claim_tmp_path`] for temporaries named `name.<pid>.<tail>`.
fn claim_tmp_path_ending(path: &Path, tail: &str) -> PathBuf {
    if let (Some(name), Ok(entries)) = (path.file_name().and_then(|n| n.to_str()), std::fs::read_dir(parent_of(path))) {
        let (prefix, suffix) = (format!("{name}."), format!(".{tail}"));
        for entry in entries.flatten() {
            let file = entry.file_name();
            let pid = file.to_str().and_then(|f| f.strip_prefix(&prefix)).and_then(|rest| rest.strip_suffix(&suffix)).and_then(|p| p.parse::<u32>().ok().filter(|pid| pid.to_string() == p));
            let abandoned = || entry.metadata().is_ok_and(|m| m.is_file() && unchanged_past_abandoned(&m));
            if pid.is_some_and(|pid| !process_is_running(pid)) && abandoned() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    tmp_path_ending(path, tail)
}

/// Removes the scratch directories in `dir` that killed processes left: those whose name starts
/// with `prefix`, that hold a `.lock` file (a [`DirLock`] their process took at once and held for
/// its life) whose lock can be taken now (the kernel releases it when the process ends, however
/// it ends, and a lock is seen across containers on one host), and that are older than
/// [`ABANDONED_AFTER`] (a directory made a moment ago may not have its lock yet). A directory
/// of the same name without a `.lock` is not a scratch directory and stays. Best effort; returns
/// how many went.
pub fn remove_abandoned_scratch(dir: &Path, prefix: &str) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut removed = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let named = entry.file_name().to_str().is_some_and(|n| n.starts_with(prefix));
        let old = || std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && unchanged_past_abandoned(&m));
        if !named || !old() || !path.join(".lock").is_file() {
            continue;
        }
        // Held while it is removed, so no process can take it over meanwhile.
        if let Ok(Some(_lock)) = DirLock::try_acquire(&path) {
            if std::fs::remove_dir_all(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// Whether a file or directory has not changed for [`ABANDONED_AFTER`] (a time in the future, or
/// none, is a change now).
fn unchanged_past_abandoned(m: &std::fs::Metadata) -> bool {
    m.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age >= ABANDONED_AFTER)
}

/// How long a temporary of a process not running here stays unchanged before
/// [`claim_tmp_path`] takes it for abandoned.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether process `pid` exists (where that cannot be asked, yes: a temporary is kept rather
/// than taken from a live writer).
fn process_is_running(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return true };
        // SAFETY: signal 0 only asks whether the process exists; nothing is sent.
        if pid <= 0 || unsafe { libc::kill(pid, 0) } == 0 {
            return true;
        }
        // EPERM: it exists, under another user.
        std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Writes `bytes` to `path` and syncs it (no rename: for files inside a directory that is itself
/// renamed into place).
pub fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory's entries (a rename into it is durable after this). A no-op where
/// directories cannot be opened for syncing.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether `name` can name a file of its own in a directory: not empty, not hidden (a leading
/// `.`), no separator. (`--save-baseline` names, `generate --name` stems.)
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\'])
}

/// An exclusive, advisory lock on a directory (`flock` on its `.lock` file), held until dropped:
/// two runs writing one run directory at once would interleave their logs and race on their
/// checkpoints. The kernel releases it when the process ends, however it ends, so a killed run
/// leaves no stale lock.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// Takes the lock, or `Ok(None)` where another process holds it.
    pub fn try_acquire(dir: &Path) -> std::io::Result<Option<DirLock>> {
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(dir.join(".lock"))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let e = std::io::Error::last_os_error();
                return if e.kind() == std::io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
            }
        }
        Ok(Some(DirLock { _file: file }))
    }
}

/// Removes the temporaries ([`tmp_path`]: `*.tmp`) a killed writer left in `dir`; call it only
/// while holding the directory's [`DirLock`], so no live writer's temporary goes. Returns how
/// many went.
pub fn remove_stale_temporaries(dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                std::fs::remove_dir_all(&path)?;
            } else {
                std::fs::remove_file(&path)?;
            }
            removed += 1;
        }
    }
    Ok(removed)
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_of(path: &Path) -> &Path {
    path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `path` atomically: a temporary file, fsync, rename, fsync of the directory. On an
/// error nothing is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = claim_tmp_path(path);
    let written = write_synced(&tmp, bytes);
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    publish(&tmp, path)
}

/// Puts a file some other writer (an HDF5 library, a chart renderer) finished at `tmp` into place
/// at `path` as [`write_atomic`] does: syncs it, renames it, syncs the directory. On an error
/// the temporary file is removed and `path` is left as it was.
pub fn publish(tmp: &Path, path: &Path) -> std::io::Result<()> {
    let r = std::fs::File::open(tmp).and_then(|f| f.sync_all()).and_then(|()| std::fs::rename(tmp, path));
    if r.is_err() {
        let _ = std::fs::remove_file(tmp);
    }
    r?;
    sync_dir(parent_of(path))
}

/// Points `link` at `target` (relative to the link's directory) atomically: a new link under a
/// temporary name is renamed over the old one (or over an old plain directory's place, which is
/// first moved aside and removed after).
#[cfg(unix)]
pub fn replace_with_symlink(link: &Path, target: &Path) -> std::io::Result<()> {
    let tmp = tmp_path(link);
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    let meta = std::fs::symlink_metadata(link);
    if meta.as_ref().is_ok_and(|m| m.is_dir()) {
        // A plain directory (written before links were used) cannot be renamed over: move it
        // aside first. For this instant the name is missing; only older layouts pass here.
        let aside = link.with_extension("old");
        let _ = std::fs::remove_dir_all(&aside);
        std::fs::rename(link, &aside)?;
        std::fs::rename(&tmp, link)?;
        let _ = std::fs::remove_dir_all(&aside);
        return Ok(());
    }
    std::fs::rename(&tmp, link)
}

#[cfg(not(unix))]
pub fn replace_with_symlink(link: &Path, target: &Path) -> std::io::Result<()> {
    // Without symbolic links: copy the target's files into the named directory (not atomic).
    let dir = parent_of(link).join(target);
    let _ = std::fs::remove_dir_all(link);
    std::fs::create_dir_all(link)?;
    for e in std::fs::read_dir(&dir)? {
        let e = e?;
        std::fs::copy(e.path(), link.join(e.file_name()))?;
    }
    Ok(())
}

/// Reads a whole file, reserving its memory fallibly: a file larger than what can be had is an
/// `OutOfMemory` error naming its size, never an abort. The errors do not name the path: the
/// caller's error type does.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let oom = |e: String| std::io::Error::new(std::io::ErrorKind::OutOfMemory, e);
    let mut f = open_without_waiting(path)?;
    let len = f.metadata()?.len();
    let mut buf = Vec::new();
    let n = usize::try_from(len).map_err(|_| oom(format!("{len} bytes do not fit in memory")))?;
    // The path is the caller's to name (each wraps the error with it).
    limits::check(|| "reading the whole file".to_string(), len as u128).map_err(|e| oom(e.to_string()))?;
    buf.try_reserve_exact(n).map_err(|e| oom(format!("{len} bytes could not be had: {e}")))?;
    // The declared bytes straight into the reservation; then whatever follows them, since the
    // declared length is a hint, not a bound: a pipe, a device (`/dev/zero`) or a file still
    // growing says 0 or less than it gives. That rest is read in chunks, each checked against the
    // budget.
    Read::by_ref(&mut f).take(len).read_to_end(&mut buf)?;
    let mut chunk = vec![0u8; 1 << 16];
    let past = || format!("{}: reading on past the {len} bytes the file system declared (a device, a pipe, a file still growing?)", path.display());
    loop {
        let k = match f.read(&mut chunk) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        limits::check(past, (buf.len() + k) as u128).map_err(|e| oom(e.to_string()))?;
        // Grown at most to the budget (doubling would reserve up to twice it), exactly, so a read
        // that fits the budget never asks the allocator for more. (The allocator's own words would
        // say "memory allocation failed": the file is the news.)
        if buf.capacity() - buf.len() < k {
            let budget = usize::try_from(limits::budget().bytes).unwrap_or(usize::MAX);
            let grown = buf.capacity().saturating_mul(2).min(budget).max(buf.len() + k);
            buf.try_reserve_exact(grown - buf.len()).map_err(|_| oom(format!("{}: {} bytes do not fit in this process's memory", past(), buf.len() + k)))?;
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(buf)
}

/// Opens a file for reading without waiting for a writer: opening a FIFO (a named pipe) blocks
/// until something opens it for writing, which for a path typed by mistake is forever. Opened
/// non-blocking, then read blocking: a FIFO with no writer reads as empty (the caller's parser
/// then names the file), one with a writer (a shell's `<(…)`) reads whole.
#[cfg(unix)]
fn open_without_waiting(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NONBLOCK).open(path)?;
    let fd = f.as_raw_fd();
    // SAFETY: `fcntl` on a descriptor this function owns, reading then setting its status flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

#[cfg(not(unix))]
fn open_without_waiting(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::File::open(path)
}

/// Asks the kernel to drop a file's pages from its cache (after writing back any still dirty), so
/// that the next read of it comes from the disk: how a benchmark reads a file it has just
/// written at the disk's speed instead of memory's. `Ok(false)` where the system has no such
/// request (then the pages may stay). Pages of the file mapped by some process stay.
pub fn evict_from_page_cache(path: &Path) -> std::io::Result<bool> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(path)?;
        // Dirty pages are not dropped: written back first.
        f.sync_data()?;
        // SAFETY: `posix_fadvise` on a descriptor this function owns; offset 0, length 0 = the whole file.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            return Err(std::io::Error::from_raw_os_error(rc));
        }
        Ok(true)
    }
    #[cfg(not(target_os = "linux"))]
    {
        std::fs::metadata(path)?;
        Ok(false)
    }
}

/// Reads a whole text file as [`read`] does.
pub fn read_to_string(path: &Path) -> std::io::Result<String> {
    String::from_utf8(read(path)?).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO no one writes to reads as empty instead of blocking the process for ever; one with
    /// a writer reads whole.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_read_without_waiting_for_a_writer() {
        let d = tempfile::tempdir().unwrap();
        let fifo = d.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let (tx, rx) = std::sync::mpsc::channel();
        let path = fifo.clone();
        std::thread::spawn(move || tx.send(read(&path).map_err(|e| e.to_string())));
        let got = rx.recv_timeout(std::time::Duration::from_secs(10)).expect("reading a FIFO with no writer returned within 10 s");
        assert_eq!(got, Ok(Vec::new()));
        // A writer that is there first: this end, opened for reading and writing (which does not
        // wait), holds the bytes in the pipe until the reader has taken them, then closes.
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let mut keeper = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
        keeper.write_all(b"all of it").unwrap();
        let path = fifo.clone();
        let reader = std::thread::spawn(move || read(&path).unwrap());
        let waiting = |keeper: &std::fs::File| {
            let mut n: libc::c_int = 0;
            // SAFETY: FIONREAD writes the bytes waiting in the pipe into `n`.
            assert_eq!(unsafe { libc::ioctl(keeper.as_raw_fd(), libc::FIONREAD, &mut n) }, 0);
            n
        };
        let t0 = std::time::Instant::now();
        while waiting(&keeper) > 0 {
            assert!(t0.elapsed().as_secs() < 10, "the reader took the bytes within 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        drop(keeper);
        let got = reader.join().unwrap();
        assert_eq!(got, b"all of it");
    }

    /// Eviction is asked of the kernel where it can be (Linux), leaves the file whole, and names
    /// a missing file as an error.
    #[test]
    fn a_file_evicted_from_the_page_cache_reads_back_whole() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("store.h5");
        std::fs::write(&p, vec![7u8; 1 << 20]).unwrap();
        assert_eq!(evict_from_page_cache(&p).unwrap(), cfg!(target_os = "linux"));
        assert_eq!(read(&p).unwrap(), vec![7u8; 1 << 20]);
        assert_eq!(evict_from_page_cache(&d.path().join("missing.h5")).unwrap_err().kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn atomic_write_replaces_whole_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
        assert!(write_atomic(&d.path().join("missing/a.json"), b"x").is_err());
    }

    /// The pid of a child that has exited and been reaped: it names no process (until reused).
    #[cfg(unix)]
    fn dead_pid() -> u32 {
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let pid = dead.id();
        dead.wait().unwrap();
        pid
    }

    /// Sets a file's or directory's modification time past [`ABANDONED_AFTER`].
    #[cfg(unix)]
    fn age_past_abandoned(path: &Path) {
        let old = std::time::SystemTime::now() - ABANDONED_AFTER - std::time::Duration::from_secs(1);
        std::fs::File::open(path).unwrap().set_modified(old).unwrap();
    }

    /// A killed writer's temporary goes with the next write of the same file; a live writer's
    /// (this process's), another file's and a name of another form stay.
    #[test]
    #[cfg(unix)]
    fn a_write_removes_the_temporaries_of_dead_writers_only() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("synthetic.h5");
        let dead_pid = dead_pid();
        let keep =
            [format!("synthetic.h5.{}.tmp", std::process::id()), "synthetic.h5.x.tmp".into(), format!("other.h5.{dead_pid}.tmp"), "synthetic.h5.1.tmp".into(), format!("synthetic.h5.0{dead_pid}.tmp")];
        for name in keep.iter().chain([&format!("synthetic.h5.{dead_pid}.tmp")]) {
            std::fs::write(d.path().join(name), b"partial").unwrap();
            age_past_abandoned(&d.path().join(name));
        }
        // A dead pid's temporary that changed a moment ago (a writer elsewhere) stays too.
        std::fs::write(d.path().join(format!("fresh.h5.{dead_pid}.tmp")), b"partial").unwrap();
        assert_eq!(claim_tmp_path(&d.path().join("fresh.h5")), tmp_path(&d.path().join("fresh.h5")));
        assert!(d.path().join(format!("fresh.h5.{dead_pid}.tmp")).exists(), "changed within ABANDONED_AFTER: kept");
        std::fs::remove_file(d.path().join(format!("fresh.h5.{dead_pid}.tmp"))).unwrap();
        let tmp = claim_tmp_path(&p);
        assert_eq!(tmp, tmp_path(&p));
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        let mut want = keep.to_vec();
        want.sort();
        assert_eq!(left, want, "only the dead writer's abandoned temporary of this file goes (pid 1 is init: running; 0-padded is not a name tmp_path writes)");
    }

    /// A scratch directory goes once its lock is free and it is old; one whose lock is held, a
    /// fresh one, one without a lock file and other names stay.
    #[test]
    #[cfg(unix)]
    fn abandoned_scratch_directories_go_once_their_lock_is_free() {
        let d = tempfile::tempdir().unwrap();
        let make = |name: &str, lock: bool, age: bool| {
            let p = d.path().join(name);
            std::fs::create_dir(&p).unwrap();
            std::fs::create_dir(p.join("quality")).unwrap();
            if lock {
                std::fs::write(p.join(".lock"), b"").unwrap();
            }
            if age {
                age_past_abandoned(&p);
            }
            p
        };
        make(".work-dead", true, true);
        let live = make(".work-live", true, true);
        let _held = DirLock::try_acquire(&live).unwrap().expect("free");
        age_past_abandoned(&live);
        make(".work-fresh", true, false);
        make(".work-user", false, true);
        make("other-dead", true, true);
        assert_eq!(remove_abandoned_scratch(d.path(), ".work-"), 1);
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, [".work-fresh", ".work-live", ".work-user", "other-dead"]);
    }

    /// A chart's temporary keeps its extension last, and a killed renderer's goes with the next
    /// chart of the same name; a `.tmp` of the same file (another naming) stays.
    #[test]
    #[cfg(unix)]
    fn a_chart_temporary_keeps_its_extension_and_a_dead_ones_goes() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("throughput.png");
        let dead_pid = dead_pid();
        for name in [format!("throughput.png.{dead_pid}.tmp.png"), format!("throughput.png.{dead_pid}.tmp")] {
            std::fs::write(d.path().join(&name), b"partial").unwrap();
            age_past_abandoned(&d.path().join(&name));
        }
        let tmp = claim_tmp_path_keeping_extension(&p);
        assert_eq!(tmp, d.path().join(format!("throughput.png.{}.tmp.png", std::process::id())));
        assert_eq!(tmp.extension().unwrap(), "png", "the renderer reads the format from the extension");
        let left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert_eq!(left, [format!("throughput.png.{dead_pid}.tmp")], "the dead chart temporary went, the other naming stayed");
        assert_eq!(claim_tmp_path_keeping_extension(&d.path().join("plain")), tmp_path(&d.path().join("plain")), "no extension: the plain temporary");
    }

    #[test]
    #[cfg(unix)]
    fn a_link_swap_always_resolves_to_a_whole_directory() {
        let d = tempfile::tempdir().unwrap();
        for (i, name) in ["v1", "v2"].iter().enumerate() {
            std::fs::create_dir(d.path().join(name)).unwrap();
            std::fs::write(d.path().join(name).join("f"), [i as u8]).unwrap();
            replace_with_symlink(&d.path().join("last"), Path::new(name)).unwrap();
            assert_eq!(std::fs::read(d.path().join("last/f")).unwrap(), vec![i as u8]);
        }
        // An old plain directory is replaced too.
        std::fs::remove_file(d.path().join("last")).unwrap();
        std::fs::create_dir(d.path().join("last")).unwrap();
        replace_with_symlink(&d.path().join("last"), Path::new("v1")).unwrap();
        assert_eq!(std::fs::read(d.path().join("last/f")).unwrap(), vec![0]);
    }

    #[test]
    fn a_directory_lock_is_held_once_and_stale_temporaries_go() {
        let d = tempfile::tempdir().unwrap();
        let first = DirLock::try_acquire(d.path()).unwrap();
        assert!(first.is_some());
        // flock locks belong to the open file: a second open in this process is refused too.
        assert!(DirLock::try_acquire(d.path()).unwrap().is_none(), "a held lock is held");
        drop(first);
        assert!(DirLock::try_acquire(d.path()).unwrap().is_some(), "released on drop");
        std::fs::create_dir(d.path().join("last@s3.123.tmp")).unwrap();
        std::fs::write(d.path().join("top_k.json.9.tmp"), b"x").unwrap();
        std::fs::write(d.path().join("keep.json"), b"x").unwrap();
        assert_eq!(remove_stale_temporaries(d.path()).unwrap(), 2);
        let mut left: Vec<String> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        left.sort();
        assert_eq!(left, vec![".lock".to_string(), "keep.json".to_string()], "the lock file stays; {left:?}");
    }

    #[test]
    fn reads_report_what_they_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        std::fs::write(&p, "héllo").unwrap();
        assert_eq!(read_to_string(&p).unwrap(), "héllo");
        assert!(read(&d.path().join("nope")).is_err());
    }
}
