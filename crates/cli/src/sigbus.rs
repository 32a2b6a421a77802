//! A signal store changed underneath a run ends it with a message and exit code 1, not a crash.
//!
//! Contiguous float32 samples are read through a memory map of the HDF5 file (zero-copy, the
//! data pipeline's fast path). The map is taken under a shared file lock, which keeps out writers
//! that honour HDF5 file locking (h5py and the HDF5 library by default). A writer that ignores
//! locks and truncates the file in place (`truncate`, `cp` over it, `HDF5_USE_FILE_LOCKING=FALSE`)
//! makes the next read of a vanished page raise SIGBUS. No data can be recovered at that point, so
//! the handler says what happened and exits; replacing a store by renaming a new file over it is
//! always safe (the run keeps reading the old one).

#[cfg(unix)]
extern "C" fn on_sigbus(_: libc::c_int) {
    const MESSAGE: &[u8] = b"error: a signal store changed underneath this run (SIGBUS while reading a memory-mapped HDF5 file: it was truncated or rewritten in place); keep stores unchanged while a run reads them, or replace them by renaming a new file over the old one\n";
    // SAFETY: write(2) and _exit(2) are async-signal-safe; MESSAGE is a static byte string.
    unsafe {
        libc::write(2, MESSAGE.as_ptr().cast(), MESSAGE.len());
        libc::_exit(1);
    }
}

/// Installs the SIGBUS handler for the whole process.
pub fn install() {
    #[cfg(unix)]
    // SAFETY: a zeroed sigaction with a plain handler and an empty mask is a valid argument, and
    // the handler only calls async-signal-safe functions.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
    }
}
