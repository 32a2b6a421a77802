//! The machine fingerprint stored with every result set, so that comparisons across machines
//! are flagged.

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub cpu_model: String,
    pub logical_cpus: usize,
    pub threads: usize,
    pub memory_mb: Option<f64>,
    pub gpu: String,
    /// The CPU device's GEMM kernel (`Packed` AVX2 or `Faer`): results differ between them.
    #[serde(default)]
    pub cpu_gemm: String,
    pub os: String,
    pub crate_version: String,
    /// The commit the binary was built from (`git describe --always --dirty`).
    pub git_commit: String,
    pub build_profile: String,
    /// The compiler that built the binary.
    pub rustc: String,
}

impl Fingerprint {
    pub fn collect(threads: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()).unwrap_or_else(|| std::env::consts::ARCH.to_string());
        Fingerprint {
            cpu_model,
            logical_cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            threads,
            memory_mb: crate::measure::total_memory_mb(),
            gpu: match engine::CudaDevice::probe(0) {
                Ok(_) => "CUDA device 0".into(),
                Err(e) => format!("none ({e})"),
            },
            cpu_gemm: engine::cpu::plan::GemmPolicy::from_env().describe(),
            os: format!("{} {}", std::env::consts::OS, std::env::consts::ARCH),
            crate_version: env!("CARGO_PKG_VERSION").into(),
            // What the binary was built from (`build.rs`), not what the machine running it has.
            git_commit: env!("CID_BUILD_COMMIT").into(),
            build_profile: if cfg!(debug_assertions) { "debug".into() } else { "release".into() },
            rustc: env!("CID_BUILD_RUSTC").into(),
        }
    }

    /// What differs from another fingerprint in ways that change timings.
    pub fn differences(&self, other: &Fingerprint) -> Vec<String> {
        let mut d = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {b} → {a}"));
            }
        };
        check("cpu", self.cpu_model.clone(), other.cpu_model.clone());
        check("threads", self.threads.to_string(), other.threads.to_string());
        check("logical cpus", self.logical_cpus.to_string(), other.logical_cpus.to_string());
        check("gpu", self.gpu.clone(), other.gpu.clone());
        check("cpu gemm", self.cpu_gemm.clone(), other.cpu_gemm.clone());
        check("build", self.build_profile.clone(), other.build_profile.clone());
        // Another compiler generates other code; another version of this crate may measure
        // another way. (Another commit is what a baseline is compared with, and not said.)
        check("rustc", self.rustc.clone(), other.rustc.clone());
        check("contrastive-id", self.crate_version.clone(), other.crate_version.clone());
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fingerprint_saved_before_the_gemm_field_still_loads() {
        let mut value = serde_json::to_value(Fingerprint::collect(2)).unwrap();
        value.as_object_mut().unwrap().remove("cpu_gemm");
        let old: Fingerprint = serde_json::from_value(value).unwrap();
        assert_eq!(old.cpu_gemm, "");
        assert!(Fingerprint::collect(2).differences(&old).iter().any(|d| d.starts_with("cpu gemm")));
    }

    /// The build's compiler and commit are recorded (by `build.rs`), and another compiler is a
    /// difference said; another commit is not (a baseline is from another commit).
    #[test]
    fn the_compiler_that_built_the_binary_is_recorded_and_compared() {
        let now = Fingerprint::collect(2);
        assert!(now.rustc.starts_with("rustc "), "{}", now.rustc);
        assert!(!now.git_commit.is_empty());
        let other = Fingerprint { rustc: "rustc 1.0.0".into(), git_commit: "abc1234".into(), ..now.clone() };
        assert_eq!(now.differences(&other), vec![format!("rustc: rustc 1.0.0 → {}", now.rustc)]);
    }
}
