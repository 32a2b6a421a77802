//! Arbitrary bytes as a metadata table (CSV and XLSX paths): a table or an error, never a crash.
#![no_main]
use libfuzzer_sys::fuzz_target;
use signal::Metadata;

fuzz_target!(|data: &[u8]| {
    let dir = std::env::temp_dir();
    for ext in ["csv", "xlsx"] {
        let path = dir.join(format!("cid-fuzz-table-{}.{ext}", std::process::id()));
        if std::fs::write(&path, data).is_ok() {
            let _ = Metadata::load(&path);
        }
    }
});
