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
    pub git_commit: String,
    pub build_profile: String,
    pub rustc: String,
}

impl Fingerprint {
    pub fn collect(threads: usize) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()).unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let git_commit = std::process::Command::new("git")
            .args(["rev-parse", "--short", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let rustc = std::process::Command::new("rustc").arg("--version").output().ok().map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default();
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
            git_commit,
            build_profile: if cfg!(debug_assertions) { "debug".into() } else { "release".into() },
            rustc,
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
}
