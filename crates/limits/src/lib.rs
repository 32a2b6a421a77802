//! How much memory one request may take when its size comes from outside the program — a
//! declared HDF5 shape, a config number, a CLI count, a checkpoint's architecture — and size
//! arithmetic that cannot overflow.
//!
//! Every such size is turned into bytes with [`bytes`] (a saturating `u128` product: no size a
//! user can type wraps around) and passed to [`check`] before anything is allocated. Past the
//! budget, the caller gets an [`OverBudget`] error that names the value, how much it needs and
//! the limit — never an allocation failure, which aborts the process.
//!
//! The budget is per request, not a running total: each buffer a user-controlled number sizes
//! must fit in it on its own. Its default is 90 % of the least of the kernel's `MemAvailable`,
//! the address-space limit (`ulimit -v`) and the cgroup's room, when first asked, or 4 GiB where
//! none can be read; the CLI's `--memory-budget`, else the environment variable
//! `CID_MEMORY_BUDGET` (e.g. `512M`, `8G`), replaces it ([`init`]).
//!
//! The other resource a user's number sizes is threads: [`thread_cap`] bounds `data.num_workers`
//! and `bench --threads`.

use std::fmt;
use std::sync::OnceLock;

/// The environment variable that sets the budget.
pub const ENV: &str = "CID_MEMORY_BUDGET";

/// The largest single request this process will make, and where that number came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Budget {
    pub bytes: u64,
    /// Where the limit came from, for messages (`CID_MEMORY_BUDGET=512M`, `90 % of MemAvailable`).
    pub source: String,
}

static BUDGET: OnceLock<Budget> = OnceLock::new();

/// Fixes the budget for the rest of the process from the CLI's `--memory-budget` (`flag`), else
/// [`ENV`], else 90 % of the memory available: the one place each source is read. A value of
/// [`ENV`] that is not a size is an error naming the variable. The CLI calls this before any
/// work; code that never calls it (tests, benches) gets the same resolution from [`budget`].
pub fn init(flag: Option<u64>) -> Result<&'static Budget, String> {
    let resolved = resolve(flag)?;
    // Already fixed (a second call in one process): the first stays, as `budget` promised it.
    Ok(BUDGET.get_or_init(|| resolved))
}

/// Fixes the budget at `bytes` for the rest of the process, `source` naming where it came from in
/// messages: for callers other than the CLI (the fuzz targets). Returns false if a budget was
/// already in force, which then stays.
pub fn set_budget(bytes: u64, source: impl Into<String>) -> bool {
    BUDGET.set(Budget { bytes, source: source.into() }).is_ok()
}

/// The budget in force: [`init`]'s, or resolved on first use (a bad [`ENV`] value then falls
/// back to the default; only `init` can report it).
pub fn budget() -> &'static Budget {
    BUDGET.get_or_init(|| resolve(None).unwrap_or_else(|_| default_budget()))
}

fn resolve(flag: Option<u64>) -> Result<Budget, String> {
    if let Some(bytes) = flag {
        return Ok(Budget { bytes, source: format!("--memory-budget {}", as_typed(bytes)) });
    }
    match std::env::var(ENV) {
        // Set but empty reads as unset (as `CID_CPU_GEMM=`).
        Ok(v) if v.trim().is_empty() => Ok(default_budget()),
        Ok(v) => parse_size(&v).map(|bytes| Budget { bytes, source: format!("{ENV}={v}") }).map_err(|e| format!("{ENV}={v}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(default_budget()),
        Err(std::env::VarError::NotUnicode(v)) => Err(format!("{ENV}={}: not a size (not even text)", v.to_string_lossy())),
    }
}

fn default_budget() -> Budget {
    budget_from(available_memory())
}

/// The default budget given the memory available and which limit that is.
fn budget_from(available: Option<(u64, &str)>) -> Budget {
    match available {
        Some((avail, from)) => Budget { bytes: avail / 10 * 9, source: format!("90 % of the {} {from}", human(avail as u128)) },
        None => Budget { bytes: 4 << 30, source: "a default of 4 GiB (available memory unknown)".into() },
    }
}

/// The memory this process can have, in bytes, and which limit that is: the least of the
/// kernel's `MemAvailable`, the address-space limit (`ulimit -v`) and the cgroup's room
/// (`memory.max` less `memory.current`, where a container sets one).
fn available_memory() -> Option<(u64, &'static str)> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    least_memory(&MemoryFiles {
        meminfo: read("/proc/meminfo"),
        limits: read("/proc/self/limits"),
        cgroup_max: read("/sys/fs/cgroup/memory.max"),
        cgroup_current: read("/sys/fs/cgroup/memory.current"),
    })
}

/// The texts [`available_memory`] reads (`None`: not there), apart from reading them so that
/// their parsing is tested on any machine.
struct MemoryFiles {
    meminfo: Option<String>,
    limits: Option<String>,
    cgroup_max: Option<String>,
    cgroup_current: Option<String>,
}

/// The least of the limits the texts set, in bytes, and which one it is. A limit a text does
/// not set (`unlimited`, `max`, a line missing) is no limit.
fn least_memory(f: &MemoryFiles) -> Option<(u64, &'static str)> {
    let meminfo = f.meminfo.as_deref().and_then(|t| {
        let kb: u64 = t.lines().find(|l| l.starts_with("MemAvailable:"))?.split_whitespace().nth(1)?.parse().ok()?;
        kb.checked_mul(1024)
    });
    // `Max address space  <soft> <hard> bytes`: the soft limit is the one that refuses.
    let address_space = f.limits.as_deref().and_then(|t| t.lines().find(|l| l.starts_with("Max address space"))?.split_whitespace().nth(3)?.parse::<u64>().ok());
    let cgroup = f.cgroup_max.as_deref().and_then(|max| {
        let max: u64 = max.trim().parse().ok()?;
        let used: u64 = f.cgroup_current.as_deref().and_then(|c| c.trim().parse().ok()).unwrap_or(0);
        Some(max.saturating_sub(used))
    });
    [(meminfo, "available at start"), (address_space, "of the address-space limit (ulimit -v)"), (cgroup, "left under the cgroup's memory.max")]
        .into_iter()
        .filter_map(|(v, from)| v.map(|v| (v, from)))
        .min_by_key(|(v, _)| *v)
}

/// The most compute threads a run may ask for (`data.num_workers`, `bench --threads`), and the
/// cores it was derived from.
#[derive(Clone, Copy, Debug)]
pub struct ThreadCap {
    /// Four per core, and at least 256: oversubscribing on purpose works, but a typo like
    /// `1000000` is an error instead of a million OS threads.
    pub max: usize,
    pub cores: usize,
}

/// This machine's [`ThreadCap`].
pub fn thread_cap() -> ThreadCap {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ThreadCap { max: 4 * cores.max(64), cores }
}

/// Parses a size: a number of bytes, optionally with a unit K, M, G, T (powers of 1024; `KB`,
/// `MiB`, … are read the same) — `512M`, `1.5G`, `1048576`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.trim().is_empty() {
        return Err(format!("`{s}` is not a size (examples: 512M, 8G, 1048576)"));
    }
    let scale: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        "T" | "TB" | "TIB" => 1 << 40,
        _ => return Err(format!("unknown unit `{}` in size `{s}`; use K, M, G or T", unit.trim())),
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("`{s}` is not a size (examples: 512M, 8G, 1048576)"))?;
    let b = n * scale as f64;
    if !(b.is_finite() && b >= 1.0 && b < u64::MAX as f64) {
        return Err(format!("size `{s}` is out of range"));
    }
    Ok(b as u64)
}

/// `bytes` in the units the flag takes ([`parse_size`]: `30M` for 30 MiB, the largest unit that
/// divides it), so that a message echoes the flag in its own terms rather than in decimal
/// megabytes (`--memory-budget 30M`, not 31.5 MB).
fn as_typed(bytes: u64) -> String {
    match [(40, "T"), (30, "G"), (20, "M"), (10, "K")].into_iter().find(|&(shift, _)| bytes >= 1 << shift && bytes.is_multiple_of(1 << shift)) {
        Some((shift, unit)) => format!("{}{unit}", bytes >> shift),
        None => bytes.to_string(),
    }
}

/// The bytes of `dims` elements of `elem` bytes each: a saturating `u128` product, so a size
/// from outside never wraps into a small number.
pub fn bytes(dims: &[usize], elem: usize) -> u128 {
    dims.iter().fold(elem as u128, |acc, &d| acc.saturating_mul(d as u128))
}

/// `bytes` as a readable amount: `800.0 GB`, `12.5 MB`, `512 B` (powers of 1000).
pub fn human(bytes: u128) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A request larger than the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverBudget {
    /// What asked, naming the value and where it came from (a file and Id, a key, a flag).
    pub what: String,
    pub bytes: u128,
    pub limit: u64,
    pub source: String,
}

impl fmt::Display for OverBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} needs {}, more than the memory budget of {} ({}); raise it with --memory-budget or {ENV} if the machine has the memory",
            self.what,
            human(self.bytes),
            human(self.limit as u128),
            self.source
        )
    }
}

impl std::error::Error for OverBudget {}

impl Budget {
    /// Whether a request of `bytes` fits; `what` is only built when it does not.
    pub fn check(&self, what: impl FnOnce() -> String, bytes: u128) -> Result<(), OverBudget> {
        if bytes <= self.bytes as u128 {
            Ok(())
        } else {
            Err(OverBudget { what: what(), bytes, limit: self.bytes, source: self.source.clone() })
        }
    }
}

/// [`Budget::check`] against the process's budget.
pub fn check(what: impl FnOnce() -> String, bytes: u128) -> Result<(), OverBudget> {
    budget().check(what, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each limit read from its file's text, `unlimited` and `max` as none, the least one kept
    /// and named.
    #[test]
    fn the_least_of_the_memory_limits_is_read_from_each_files_text() {
        let meminfo = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    8000000 kB\n".to_string();
        let limits = |soft: &str| {
            format!("Limit                     Soft Limit           Hard Limit           Units\nMax stack size            8388608              unlimited            bytes\nMax address space         {soft:<20} unlimited            bytes\n")
        };
        let files = |limits: Option<String>, max: Option<&str>, current: Option<&str>| MemoryFiles {
            meminfo: Some(meminfo.clone()),
            limits,
            cgroup_max: max.map(str::to_string),
            cgroup_current: current.map(str::to_string),
        };
        assert_eq!(least_memory(&files(Some(limits("unlimited")), Some("max\n"), None)), Some((8_000_000 * 1024, "available at start")));
        assert_eq!(least_memory(&files(Some(limits("4000000000")), Some("max\n"), None)), Some((4_000_000_000, "of the address-space limit (ulimit -v)")));
        assert_eq!(least_memory(&files(None, Some("3000000000\n"), Some("1000000000\n"))), Some((2_000_000_000, "left under the cgroup's memory.max")));
        assert_eq!(least_memory(&files(None, Some("1000\n"), Some("5000\n"))), Some((0, "left under the cgroup's memory.max")), "a cgroup past its max has no room");
        assert_eq!(least_memory(&MemoryFiles { meminfo: None, limits: None, cgroup_max: None, cgroup_current: None }), None);
        assert_eq!(
            least_memory(&MemoryFiles { meminfo: Some("MemAvailable: lots kB\n".into()), limits: None, cgroup_max: None, cgroup_current: None }),
            None,
            "a line that does not parse is no limit"
        );
    }

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_say_why() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size(" 8 GiB "), Ok(8 << 30));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert!(parse_size("12Q").unwrap_err().contains("unknown unit `Q`"));
        // The unit as typed, not upper-cased.
        assert!(parse_size("1e12").unwrap_err().contains("unknown unit `e12`"), "{:?}", parse_size("1e12"));
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("0").is_err() && parse_size("-1G").is_err() && parse_size("1e30T").is_err());
    }

    #[test]
    fn a_budget_from_the_flag_is_echoed_as_typed() {
        assert_eq!(as_typed(30 << 20), "30M");
        assert_eq!(as_typed(3 << 29), "1536M");
        assert_eq!(as_typed(8 << 30), "8G");
        assert_eq!(as_typed(1000), "1000");
        assert_eq!(resolve(Some(64 << 20)).unwrap().source, "--memory-budget 64M");
    }

    #[test]
    fn byte_products_saturate_instead_of_wrapping() {
        assert_eq!(bytes(&[100_000_000_000, 2], 4), 800_000_000_000);
        assert_eq!(bytes(&[usize::MAX, usize::MAX, usize::MAX], 8), u128::MAX);
        assert_eq!(bytes(&[], 4), 4);
    }

    #[test]
    fn over_budget_names_the_value_the_amount_and_the_limit() {
        let b = Budget { bytes: 1 << 30, source: "CID_MEMORY_BUDGET=1G".into() };
        assert!(b.check(|| unreachable!("built only on failure"), 1 << 30).is_ok());
        let e = b.check(|| "`evaluate --windows 100000000`".into(), 819_200_000_000).unwrap_err().to_string();
        assert!(e.contains("--windows 100000000") && e.contains("819.2 GB") && e.contains("1.1 GB") && e.contains("CID_MEMORY_BUDGET=1G"), "{e}");
        assert_eq!(human(999), "999 B");
        assert_eq!(human(160_000), "160.0 kB");
    }

    #[test]
    fn the_default_budget_is_nine_tenths_of_the_memory_available_and_says_so() {
        let b = budget_from(Some((10_000_000_000, "available at start")));
        assert_eq!(b.bytes, 9_000_000_000);
        assert_eq!(b.source, "90 % of the 10.0 GB available at start");
        let b = budget_from(None);
        assert_eq!((b.bytes, b.source.contains("4 GiB")), (4 << 30, true), "{}", b.source);
        // Where Linux says how much memory there is, this machine's budget is neither zero nor
        // above it (the amounts move between reads, so only the bounds are checked).
        let here = default_budget();
        if let Some(total_kb) = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| t.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()) {
            assert!(here.bytes > 0 && here.bytes <= total_kb * 1024, "{} of {total_kb} kB", here.bytes);
        } else {
            eprintln!("SKIPPED the default budget's bounds: no MemTotal in /proc/meminfo here");
        }
    }
}
