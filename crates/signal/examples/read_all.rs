//! Reads every sample of a store whole and prints what happened (a debugging aid for odd files).
//! `cargo run --release -p cid-signal --example read_all -- FILE.h5`
use signal::{Hdf5Store, SignalStore};
fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: read_all FILE.h5");
        std::process::exit(2);
    };
    match Hdf5Store::open(&path) {
        Err(e) => println!("open: {e}"),
        Ok(store) => {
            for i in store.ignored() {
                println!("ignored {:?}: {}", i.name, i.reason);
            }
            for s in store.samples() {
                match store.read(s.id) {
                    Ok(v) => println!("Id {}: {} values ({} x {}, chunked {})", s.id, v.len(), s.length, s.channels, s.chunked),
                    Err(e) => println!("Id {}: {e}", s.id),
                }
            }
        }
    }
}
