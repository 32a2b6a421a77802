//! How times and memory are taken: warm-up, then repeated samples of a closure, wall clock
//! (`std::time::Instant`, monotonic); memory as the peak-RSS delta of the process
//! (`/proc/self/status` VmHWM after resetting it through `/proc/self/clear_refs`); how busy the
//! rest of the machine was meanwhile ([`Contention`]), and how fast the machine itself ran
//! ([`calibration_ms`]).

use std::time::Instant;

/// Per-call wall times in ms after `warmup` untimed calls. CPU work is synchronous, so the
/// clock read after the call closes it; a device whose kernels run asynchronously must
/// synchronize inside `f` before it returns.
pub fn time_ms(warmup: usize, samples: usize, mut f: impl FnMut()) -> Vec<f64> {
    for _ in 0..warmup {
        f();
    }
    (0..samples)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect()
}

/// Per-call wall times in ms of a call far shorter than the clock's and the machine's jitter
/// (tens of µs): each sample times as many calls as fill `sample_ms` (counted from the mean of the
/// warm-up calls, so that one preempted call does not set it; at most 10 000), divided by their
/// number — criterion's iterations per sample. One call per sample, a 20 µs batch build moved by
/// ±30 % between quick runs on a quiet machine. Returns the per-call times and the calls per sample.
pub fn time_ms_batched(warmup: usize, samples: usize, sample_ms: f64, mut f: impl FnMut()) -> (Vec<f64>, usize) {
    let warmup = warmup.max(1);
    let t = Instant::now();
    for _ in 0..warmup {
        f();
    }
    let one = t.elapsed().as_secs_f64() * 1e3 / warmup as f64;
    let calls = (sample_ms / one.max(1e-6)).ceil().clamp(1.0, 10_000.0) as usize;
    let times = time_ms(0, samples, || {
        for _ in 0..calls {
            f();
        }
    });
    (times.into_iter().map(|t| t / calls as f64).collect(), calls)
}

/// [`time_ms`] over training steps: a step that fails, or diverges (a non-finite loss or
/// gradient, no update), is no measurement of a step, so any such step fails the whole timing
/// with the count and the first reason, instead of its time being counted. An fp16 step whose
/// loss scale was lowered did a whole step's work, as a PyTorch step under `GradScaler` does.
pub fn time_steps(warmup: usize, samples: usize, mut step: impl FnMut() -> engine::Result<engine::StepOutput>) -> crate::error::Result<Vec<f64>> {
    let (mut failed, mut first) = (0usize, None::<String>);
    let times = time_ms(warmup, samples, || match step() {
        Ok(out) if out.update != engine::Update::NonFinite => {}
        outcome => {
            failed += 1;
            first.get_or_insert_with(|| match outcome {
                Err(e) => e.to_string(),
                Ok(out) => format!("the step was skipped (loss {})", out.loss),
            });
        }
    });
    match first {
        None => Ok(times),
        Some(why) => Err(crate::error::BenchError::Input(format!("{failed} of {} timed steps failed: {why}", warmup + samples))),
    }
}

/// The description of `time_ms` stored with every timed metric.
pub fn method(warmup: usize, samples: usize) -> String {
    format!("wall clock (Instant), {warmup} warm-up + {samples} timed calls, CPU work synchronous")
}

fn status_kb(key: &str) -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok())
}

/// /proc's "kB" are KiB; every memory figure of the suite is in MB of 10⁶ bytes (the engine's
/// byte counts / 1e6), so that they can be compared.
fn kib_to_mb(kib: f64) -> f64 {
    kib * 1024.0 / 1e6
}

/// Current resident set, MB.
pub fn rss_mb() -> Option<f64> {
    status_kb("VmRSS:").map(kib_to_mb)
}

/// Runs `f` and returns its result and the rise of peak RSS over the RSS before it, MB
/// (`None` where /proc is not available).
pub fn peak_rss_delta<R>(f: impl FnOnce() -> R) -> (R, Option<f64>) {
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let before = rss_mb();
    let r = f();
    let peak = status_kb("VmHWM:").map(kib_to_mb);
    let delta = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some((p - b).max(0.0)),
        _ => None,
    };
    (r, delta)
}

/// Total memory of the machine, MB.
pub fn total_memory_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse::<f64>().ok()).map(kib_to_mb)
}

/// Share of the CPU time of the CPUs this process may run on (its affinity) that *other*
/// processes used while a category ran: their busy time in `/proc/stat` less this process's
/// (`/proc/self/stat`: utime + stime of all its threads), over their total — `torch_ref.py`'s
/// `oth%`, restricted to our CPUs. On a VM the host's other guests count too (steal time is busy
/// time not ours). 0 on a quiet machine; a timing taken beside a busy neighbour is slower for
/// reasons of the neighbour's. A CPU quota (a cgroup's `cpu.max`) does not show in `/proc/stat`:
/// a neighbour inside the same quota is missed.
pub struct Contention {
    cpus: Vec<usize>,
    start: Option<CpuTicks>,
}

/// Jiffies: the allowed CPUs' total and busy time, and this process's.
#[derive(Clone, Copy)]
struct CpuTicks {
    total: u64,
    busy: u64,
    mine: u64,
}

/// The CPUs this process may run on (`Cpus_allowed_list` of /proc/self/status, as `0-3,8`).
pub fn allowed_cpus() -> Option<Vec<usize>> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (usize, usize) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        // A list longer than any machine's CPUs is not one.
        if hi < lo || hi >= 1 << 16 {
            return None;
        }
        cpus.extend(lo..=hi);
    }
    (!cpus.is_empty()).then_some(cpus)
}

impl CpuTicks {
    fn now(cpus: &[usize]) -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let (mut total, mut busy) = (0u64, 0u64);
        // `cpuN  user nice system idle iowait irq softirq steal …`: the first eight add up to
        // the CPU's time; idle and iowait are the idle part.
        for line in stat.lines() {
            let mut fields = line.split_whitespace();
            let Some(cpu) = fields.next().and_then(|name| name.strip_prefix("cpu")).and_then(|n| n.parse::<usize>().ok()) else { continue };
            if !cpus.contains(&cpu) {
                continue;
            }
            let v: Vec<u64> = fields.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
            let (t, idle) = (v.iter().sum::<u64>(), v.get(3)? + v.get(4)?);
            (total, busy) = (total + t, busy + (t - idle));
        }
        // Fields after the command name (which may hold spaces and parentheses): utime and stime
        // are the 12th and 13th.
        let own = std::fs::read_to_string("/proc/self/stat").ok()?;
        let rest: Vec<&str> = own.rsplit_once(')')?.1.split_whitespace().collect();
        let mine = rest.get(11)?.parse::<u64>().ok()? + rest.get(12)?.parse::<u64>().ok()?;
        Some(CpuTicks { total, busy, mine })
    }
}

impl Contention {
    /// A share at or above this (a tenth of our CPUs' time) is said beside the category's timings.
    pub const NOTABLE: f64 = 0.1;

    pub fn start() -> Self {
        let cpus = allowed_cpus().unwrap_or_default();
        let start = CpuTicks::now(&cpus);
        Contention { cpus, start }
    }

    /// Other processes' share of the allowed CPUs' time since [`Contention::start`]; `None`
    /// without /proc or when too little time passed to tell.
    pub fn others_share(&self) -> Option<f64> {
        let (a, b) = (self.start?, CpuTicks::now(&self.cpus)?);
        let total = b.total.checked_sub(a.total).filter(|&t| t > 0)?;
        let others = (b.busy.saturating_sub(a.busy)).saturating_sub(b.mine.saturating_sub(a.mine));
        Some((others as f64 / total as f64).min(1.0))
    }
}

/// The median time, in ms, of a fixed reference workload — on each of `threads` threads at once
/// (at most the machine's cores, and 8), multiply-adds over its own 4 MiB of f32 (past L2: memory
/// and cores alike), the same in every run of every build — taken before each category: a
/// baseline's timings and this run's can only be compared where the machine ran at one speed. A
/// shared VM's speed moves by 10–30 % from one run to the next with no process of ours or of the
/// guest's to see; this is how such a move shows. The threads start once and each round is timed
/// between two barriers, so their start is not in it.
pub fn calibration_ms(threads: usize) -> f64 {
    const ROUNDS: usize = 11;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let n = threads.clamp(1, cores.min(8));
    let buffers: Vec<Vec<f32>> = (0..n).map(|t| (0..1 << 20).map(|i| ((i + t) % 97) as f32 * 0.01).collect()).collect();
    let pass = |data: &[f32]| {
        let mut acc = [0.0f32; 8];
        for c in std::hint::black_box(data).chunks_exact(8) {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = *a * 0.999 + x;
            }
        }
        std::hint::black_box(acc);
    };
    let barrier = std::sync::Barrier::new(n + 1);
    let mut samples: Vec<f64> = std::thread::scope(|s| {
        for b in &buffers {
            let (barrier, pass) = (&barrier, &pass);
            s.spawn(move || {
                for _ in 0..ROUNDS {
                    barrier.wait();
                    pass(b);
                    barrier.wait();
                }
            });
        }
        (0..ROUNDS)
            .map(|_| {
                barrier.wait();
                let t = Instant::now();
                barrier.wait();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    });
    samples.sort_by(f64::total_cmp);
    samples[ROUNDS / 2]
}
