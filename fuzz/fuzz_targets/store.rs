//! Arbitrary bytes as an HDF5 signal store: opening, listing and reading every sample must give
//! values or errors, never a crash.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signal::{Hdf5Store, SignalStore};

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("cid-fuzz-store-{}.h5", std::process::id()));
    if std::fs::write(&path, data).is_err() {
        return;
    }
    if let Ok(store) = Hdf5Store::open(&path) {
        for s in store.samples().to_vec() {
            if s.length.saturating_mul(s.channels) > 1 << 20 {
                continue;
            }
            let _ = store.read(s.id);
            let mut w = vec![0.0f32; s.channels.min(4) * 2];
            if s.length >= 2 && s.channels <= 4 {
                let _ = store.read_rows_into(s.id, s.length / 2, 1, &mut w[..s.channels]);
            }
        }
    }
});
