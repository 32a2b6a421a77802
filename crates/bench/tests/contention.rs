//! The share of our CPUs other processes take while a category runs, measured and said. Its own
//! test binary: its spinning processes would disturb the other tests' runs.

use bench::Benchmark;

/// Busy-loop processes, killed when dropped (a failed assertion included).
struct Spinners(Vec<std::process::Child>);

impl Drop for Spinners {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// With a spinning process per CPU we may run on, the data category records the share of those
/// CPUs other processes took and notes it, and a comparison against that run warns.
#[test]
fn a_busy_neighbour_is_measured_and_said() {
    let Some(cpus) = bench::measure::allowed_cpus() else {
        eprintln!("SKIPPED: no /proc/self/status to read this process's CPUs from");
        return;
    };
    let usable = std::thread::available_parallelism().map_or(1, |n| n.get());
    if usable < cpus.len() {
        // A cgroup quota below the CPUs in the mask: /proc/stat does not see it.
        eprintln!("SKIPPED: a CPU quota ({usable} of {} CPUs) hides a neighbour from /proc/stat", cpus.len());
        return;
    }
    let spinners = Spinners(cpus.iter().map(|_| std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn().expect("sh")).collect());
    let dir = tempfile::tempdir().unwrap();
    let mut b = Benchmark::new(dir.path()).quick(true).threads(2);
    let cat = b.data().cloned();
    drop(spinners);
    let cat = cat.unwrap();
    let share = cat.others_cpu_share.expect("/proc tells");
    assert!(share >= 0.3, "{} spinning processes took {share:.2} of our CPUs", cpus.len());
    assert!(cat.notes.iter().any(|n| n.contains("other processes used")), "{:?}", cat.notes);
    let base = b.results().clone();
    let mut again = base.clone();
    let warnings = bench::compare::compare(&mut again, "busy", &base, 0.05);
    assert!(warnings.iter().any(|w| w.starts_with("in the baseline, other processes used")), "{warnings:?}");
}
