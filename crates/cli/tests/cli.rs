//! The binary end to end: real files in, exit codes and messages out.

mod common;
use common::{bin, generate, root, text};

#[test]
fn inspect_cwru_reports_the_real_dataset() {
    let data = root().join("../shared/data/cwru12k_de.h5");
    if !data.exists() {
        eprintln!("SKIPPED: {} is not present", data.display());
        return;
    }
    let o = bin().arg("inspect").arg("--data").arg(&data).arg("--meta").arg(root().join("../shared/data/cwru12k_de.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Ids       53"), "{t}");
    assert!(t.contains("labels    0:1 1:12 2:12 3:28"), "{t}");
    assert!(t.contains("channels  2") && t.contains("12000 Hz"), "{t}");
    assert!(t.contains("min 121265") && t.contains("max 243938"), "{t}");
    assert!(t.contains("mismatch  none"), "{t}");
}

#[test]
fn inspect_names_each_mismatch() {
    let f = root().join("tests/fixtures");
    let o = bin().arg("inspect").arg("--data").arg(f.join("default_f32.h5")).arg("--meta").arg(f.join("meta_mismatch.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("Id 9: in the table, not in the store"), "{t}");
    assert!(t.contains("Id 5: in the store, not in the table"), "{t}");
    // A table that shares no Id with the store is described, then fails, as train would.
    let dir = tempfile::tempdir().unwrap();
    let header = std::fs::read_to_string(f.join("meta.csv")).unwrap().lines().next().unwrap().to_string();
    let table = dir.path().join("elsewhere.csv");
    std::fs::write(&table, format!("{header}\n")).unwrap();
    for json in [false, true] {
        let o = bin().arg("inspect").arg("--data").arg(f.join("default_f32.h5")).arg("--meta").arg(&table).args(json.then_some("--json")).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("no Id is in both") && t.contains("elsewhere.csv"), "{t}");
        assert!(if json { t.contains("\"ids\": 0") } else { t.contains("Ids       0 (in both)") }, "the description comes first: {t}");
    }
}

#[test]
fn bad_inputs_fail_with_a_message_naming_the_culprit() {
    let f = root().join("tests/fixtures");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["inspect".into(), "--data".into(), "/no/such.h5".into(), "--meta".into(), f.join("meta.csv").display().to_string()], "/no/such.h5"),
        (vec!["inspect".into(), "--data".into(), f.join("not_hdf5.h5").display().to_string(), "--meta".into(), f.join("meta.csv").display().to_string()], "not_hdf5.h5"),
        (vec!["inspect".into(), "--data".into(), f.join("default_f32.h5").display().to_string(), "--meta".into(), f.join("meta_no_label.csv").display().to_string()], "Label"),
        (vec!["generate".into(), "--count".into(), "0".into(), "--out".into(), "/tmp/x".into()], "count"),
        (vec!["generate".into(), "--complexity".into(), "fancy".into(), "--out".into(), "/tmp/x".into()], "fancy"),
        // The categories come from the registry: clap lists them and suggests the near one.
        (vec!["bench".into(), "--test".into(), "trainin".into()], "a similar value exists: 'training'"),
        // `--device` is typed too: a wrong value is a usage error listing the values.
        (vec!["bench".into(), "--device".into(), "tpu".into()], "invalid value 'tpu' for '--device <DEVICE>': unknown device `tpu`; expected cpu, cuda, cuda:N or auto"),
        (vec!["bench".into(), "--device".into(), "cuda:5000".into()], "GPU index 5000 is out of range (below 1024)"),
    ];
    for (args, needle) in cases {
        let o = bin().args(&args).output().unwrap();
        let t = text(&o);
        assert!(!o.status.success(), "{args:?} should fail: {t}");
        assert!(t.contains(needle), "{args:?}: {t}");
        assert!(!t.contains("panicked"), "{args:?}: {t}");
    }
}

#[test]
fn generate_then_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let o = bin().args(["generate", "--complexity", "complex", "--count", "30", "--length", "2048", "--channels", "2", "--name", "s", "--out"]).arg(dir.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = bin().arg("inspect").arg("--data").arg(dir.path().join("s.h5")).arg("--meta").arg(dir.path().join("s.csv")).output().unwrap();
    let t = text(&o);
    assert!(o.status.success() && t.contains("Ids       30") && t.contains("channels  2"), "{t}");
}

#[test]
fn train_then_evaluate_end_to_end_and_their_bad_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (h5, csv) = generate(d, "s", 20, 1024);
    let cfg = root().join("configs/debug.yaml");
    let o = bin()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(&h5)
        .arg("--meta")
        .arg(&csv)
        .args(["--override", "trainer.epochs=2", "--override", "data.truncate_length=null", "--override"])
        .arg(format!("environment.save_dir={}", d.join("runs").display()))
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("steps") && t.contains("last ckpt"), "{t}");
    assert!(t.contains("data.factory_name") && t.contains("not used"), "unused PHM-Vibench keys are reported: {t}");
    let ckpt = d.join("runs/contrastive_debug/checkpoints/last");
    assert!(ckpt.join("model.safetensors").exists());
    let o = bin().args(["evaluate", "--windows", "4", "--json", "--checkpoint"]).arg(&ckpt).arg("--data").arg(&h5).arg("--meta").arg(&csv).output().unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    for row in ["pretrained", "random_init", "spectrum_baseline"] {
        for probe in ["linear_probe_acc", "knn_acc"] {
            let acc = v[row][probe].as_f64().unwrap_or(f64::NAN);
            assert!((0.0..=1.0).contains(&acc), "{row}.{probe} = {acc}: {v}");
        }
    }
    // The text report and the JSON are one evaluation: the same accuracy in both (one GEMM
    // kernel for both runs, so no measured choice can round them apart).
    let json = bin().env("CID_CPU_GEMM", "faer").args(["evaluate", "--windows", "4", "--json", "--checkpoint"]).arg(&ckpt).arg("--data").arg(&h5).arg("--meta").arg(&csv).output().unwrap();
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&json.stdout)).unwrap();
    let o = bin().env("CID_CPU_GEMM", "faer").args(["evaluate", "--windows", "4", "--checkpoint"]).arg(&ckpt).arg("--data").arg(&h5).arg("--meta").arg(&csv).output().unwrap();
    let pct = |probe: &str| format!("{:.1} %", 100.0 * v["pretrained"][probe].as_f64().unwrap_or(f64::NAN));
    let line = String::from_utf8_lossy(&o.stdout).lines().find(|l| l.starts_with("pretrained")).map(str::to_string).unwrap_or_default();
    let (linear, knn) = (pct("linear_probe_acc"), pct("knn_acc"));
    assert!(line.contains(&linear) && line.contains(&knn), "the pretrained line should read {linear} and {knn}: {line:?}");

    // The bearing split over several draws: give each label two bearings (Fault_Size by Id), so
    // every draw holds one out per label.
    let table = std::fs::read_to_string(&csv).unwrap();
    let mut lines = table.lines();
    let mut bearings = format!("{},Fault_Size\n", lines.next().unwrap());
    for l in lines {
        let id: u64 = l.split(',').next().unwrap().parse().unwrap();
        bearings += &format!("{l},{}\n", if (id / 4).is_multiple_of(2) { "0.007" } else { "0.014" });
    }
    let bearing_csv = d.join("bearings.csv");
    std::fs::write(&bearing_csv, bearings).unwrap();
    let eval = |extra: &[&str]| bin().args(["evaluate", "--windows", "4", "--checkpoint"]).arg(&ckpt).arg("--data").arg(&h5).arg("--meta").arg(&bearing_csv).args(extra).output().unwrap();
    let o = eval(&["--split", "bearing", "--draws", "3", "--seed", "5", "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_str(&String::from_utf8_lossy(&o.stdout)).unwrap();
    let draws = v["draws"].as_array().unwrap();
    assert_eq!(draws.iter().map(|r| r["seed"].as_u64().unwrap()).collect::<Vec<_>>(), [5, 6, 7]);
    assert!(draws.iter().all(|r| !r["held_out"].as_array().unwrap().is_empty()), "every draw holds bearings out: {v}");
    // The summary is the draws' own numbers: the mean of each row, the margin over the better baseline.
    let acc = |r: &serde_json::Value, row: &str| r[row]["linear_probe_acc"].as_f64().unwrap();
    let mean = |f: &dyn Fn(&serde_json::Value) -> f64| draws.iter().map(f).sum::<f64>() / 3.0;
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    assert!(close(v["pretrained"]["linear_probe_acc"]["mean"].as_f64().unwrap(), mean(&|r| acc(r, "pretrained"))), "{v}");
    let margin = mean(&|r| acc(r, "pretrained") - acc(r, "random_init").max(acc(r, "spectrum_baseline")));
    assert!(close(v["margin_over_best_baseline"]["linear_probe_acc"]["mean"].as_f64().unwrap(), margin), "{v}");
    let t = text(&eval(&["--split", "bearing", "--draws", "2"]));
    assert!(t.contains("over 2 draws (seeds 0..=1)") && t.contains("pretrained − best baseline"), "{t}");
    // Draws that cannot be: named, no panic.
    for (extra, needle) in [
        (&["--split", "bearing", "--draws", "0"][..], "--draws"),
        (&["--split", "bearing", "--draws", "1001"], "--draws"),
        (&["--draws", "2"], "--split bearing"),
        (&["--split", "bearing", "--draws=-1"], "--draws"),
        (&["--split", "bearing", "--draws", "2", "--seed", "18446744073709551615"], "--seed"),
    ] {
        let o = eval(extra);
        let t = text(&o);
        assert!(!o.status.success() && t.contains(needle) && !t.contains("panicked"), "{extra:?}: {t}");
    }

    // A bad config, a missing file, a checkpoint of another architecture: clear errors, exit != 0.
    let bad = d.join("bad.yaml");
    std::fs::write(&bad, "data:\n  windw_size: 128\n").unwrap();
    let o = bin().args(["train", "--config"]).arg(&bad).arg("--data").arg(&h5).arg("--meta").arg(&csv).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("data.windw_size") && text(&o).contains("data.window_size"), "{}", text(&o));
    let o = bin()
        .args(["train", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(d.join("absent.h5"))
        .arg("--meta")
        .arg(&csv)
        .args(["--override", &format!("environment.save_dir={}", d.join("failed").display())])
        .output()
        .unwrap();
    assert!(!o.status.success() && text(&o).contains("absent.h5"), "{}", text(&o));
    let other = d.join("other");
    std::fs::create_dir_all(&other).unwrap();
    let o = bin().args(["generate", "--count", "20", "--length", "1024", "--channels", "2", "--name", "two", "--out"]).arg(&other).output().unwrap();
    assert!(o.status.success());
    let o = bin().args(["evaluate", "--checkpoint"]).arg(&ckpt).arg("--data").arg(other.join("two.h5")).arg("--meta").arg(other.join("two.csv")).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("was trained on 1 channels; ") && t.contains("two.h5 has 2") && !t.contains("panicked"), "{t}");
    let elsewhere = format!("environment.save_dir={}", d.join("failed").display());
    let o = bin().args(["train", "--config"]).arg(&cfg).arg("--data").arg(&h5).arg("--meta").arg(&csv).arg("--resume").arg(d.join("nope")).args(["--override", &elsewhere]).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("nope"), "{}", text(&o));
    assert!(!d.join("failed").exists(), "a run that cannot start writes nothing");
}

#[test]
fn a_bad_environment_variable_is_named() {
    let f = root().join("tests/fixtures");
    let inspect = ["inspect".to_string(), "--data".into(), f.join("default_f32.h5").display().to_string(), "--meta".into(), f.join("meta.csv").display().to_string()];
    for (var, value, needle) in [
        ("CID_CPU_GEMM", "garbage", "CID_CPU_GEMM=garbage"),
        ("CID_MEMORY_BUDGET", "1e12", "CID_MEMORY_BUDGET=1e12: unknown unit"),
        ("CID_CPU_AMX", "yes", "CID_CPU_AMX=yes: expected on or off"),
        ("CID_CPU_FP16", "Emulate", "CID_CPU_FP16=\"Emulate\": expected `emulate`"),
    ] {
        let o = bin().env(var, value).args(&inspect).output().unwrap();
        let t = text(&o);
        assert!(!o.status.success() && t.contains(needle) && !t.contains("panicked"), "{var}={value}: {t}");
    }
    // Empty is unset for each of them (`CID_CPU_FP16= cmd`).
    for var in ["CID_CPU_GEMM", "CID_CPU_AMX", "CID_CPU_FP16"] {
        let o = bin().env(var, "").args(&inspect).output().unwrap();
        assert!(o.status.success(), "{var}=: {}", text(&o));
    }
    // AMX asked for on a CPU without it: said, and the run goes on with the other kernels.
    if !engine::cpu::amx::available() {
        let o = bin().env("CID_CPU_AMX", "on").args(&inspect).output().unwrap();
        assert!(o.status.success() && text(&o).contains("warning: CID_CPU_AMX=on: this CPU has no AMX-BF16"), "{}", text(&o));
    } else {
        eprintln!("SKIPPED (this CPU has AMX): the warning for CID_CPU_AMX=on without AMX was not run");
    }
    // A kernel this CPU cannot run is refused by name, not run (or silently replaced).
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512f") {
        let o = bin().env("CID_CPU_GEMM", "packed-avx512").args(&inspect).output().unwrap();
        let t = text(&o);
        assert!(!o.status.success() && t.contains("CID_CPU_GEMM=packed-avx512: this CPU lacks"), "{t}");
    } else {
        eprintln!("SKIPPED (this CPU has AVX-512F): the refusal of a kernel the CPU lacks was not run");
    }
    // A budget from the environment is named as such in the error it causes; the flag wins over it.
    let out = tempfile::tempdir().unwrap();
    let generate = |flag: &[&str]| bin().env("CID_MEMORY_BUDGET", "1M").args(flag).args(["generate", "--count", "100000", "--length", "100000", "--out"]).arg(out.path()).output().unwrap();
    let t = text(&generate(&[]));
    assert!(t.contains("memory budget of 1.0 MB (CID_MEMORY_BUDGET=1M)"), "{t}");
    let t = text(&generate(&["--memory-budget", "2M"]));
    assert!(t.contains("memory budget of 2.1 MB (--memory-budget 2M)"), "{t}");
}

#[test]
fn the_thread_count_does_not_change_a_run() {
    // PHM-Vibench's debug config (the ISFM, dropout on) on 1 and on 3 workers, with the GEMMs on
    // the packed kernel (the measured plan is keyed by thread count and may pick faer for some
    // shapes on one count and not the other: docs/checkpoints.md).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (h5, csv) = generate(d, "s", 20, 4096);
    let losses = |workers: usize| -> Vec<String> {
        let save = d.join(format!("w{workers}"));
        let o = bin()
            .env("CID_CPU_GEMM", "packed")
            .args(["train", "--config"])
            .arg(root().join("configs/debug.yaml"))
            .arg("--data")
            .arg(&h5)
            .arg("--meta")
            .arg(&csv)
            // Batches large enough for the parallel paths (2 × 16 windows × 32 patches of d_model 64).
            .args(["--override", "trainer.epochs=3", "--override", "data.truncate_length=null", "--override", "data.batch_size=16", "--override", "data.window_size=1024"])
            .args(["--override", &format!("data.num_workers={workers}"), "--override"])
            .arg(format!("environment.save_dir={}", save.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        let metrics = std::fs::read_to_string(save.join("contrastive_debug/metrics.jsonl")).unwrap();
        // Losses as written (shortest round-trip decimals: equal strings, equal bits).
        metrics.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|v| v.get("train_contrastive_loss").filter(|x| x.is_number()).map(|x| x.to_string())).collect()
    };
    let (one, three) = (losses(1), losses(3));
    assert!(!one.is_empty(), "no losses were written");
    assert_eq!(one, three, "losses on 1 and on 3 workers");
}

/// `trainer.precision: 16`: a named error suggesting bf16 on a CPU without AVX512-FP16; with
/// CID_CPU_FP16=emulate (or such a CPU), fp16 products with dynamic loss scaling, the scale logged
/// each step and saved with the training state, and a resume that continues from it.
#[test]
fn precision_16_trains_with_loss_scaling_and_resumes_its_scale() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (h5, csv) = generate(d, "s", 20, 1024);
    let train = |epochs: &str, resume: Option<&std::path::Path>, emulate: bool| {
        let mut c = bin();
        c.args(["train", "--config"]).arg(root().join("configs/debug.yaml")).arg("--data").arg(&h5).arg("--meta").arg(&csv);
        for o in ["trainer.precision=16", &format!("trainer.epochs={epochs}"), &format!("environment.save_dir={}", d.join("runs").display())] {
            c.args(["--override", o]);
        }
        if let Some(r) = resume {
            c.arg("--resume").arg(r);
        }
        if emulate {
            c.env("CID_CPU_FP16", "emulate");
        } else {
            c.env_remove("CID_CPU_FP16");
        }
        c.env_remove("CID_CPU_GEMM").output().unwrap()
    };
    if !packed_kernel_runs() {
        eprintln!("SKIPPED: fp16 products need the packed GEMM kernel (AVX2 + FMA)");
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if !std::arch::is_x86_feature_detected!("avx512fp16") {
        let o = train("1", None, false);
        let t = text(&o);
        assert!(o.status.code() == Some(1) && t.contains("trainer.precision") && t.contains("AVX512-FP16") && t.contains("use bf16"), "{t}");
    } else {
        eprintln!("SKIPPED the error for precision 16 without AVX512-FP16: this CPU has it");
    }
    let o = train("2", None, true);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let run = d.join("runs/contrastive_debug");
    let scales = || -> Vec<f64> {
        std::fs::read_to_string(run.join("metrics.jsonl"))
            .unwrap()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["kind"] == "step")
            .map(|v| v["loss_scale"].as_f64().expect("an fp16 step logs its loss scale"))
            .collect()
    };
    let first = scales();
    assert!(!first.is_empty() && first.iter().all(|&s| s > 0.0 && s <= 65536.0), "{first:?}");
    let state_file = run.join("checkpoints/last/training_state.safetensors");
    let bytes = std::fs::read(&state_file).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
    let saved = format!("loss_scale\\\":[{}", first.last().unwrap());
    assert!(header.contains(&saved), "the checkpoint holds the last scale ({saved}): {header}");
    // The resume continues from the saved scale: set it to 512 in the checkpoint (no run reaches
    // that from 65536 in a few steps without overflowing 7 times), and the resumed run's first
    // step logs 512 (or 256, had that step overflowed).
    let at = header.find(&saved).unwrap() + saved.len() - first.last().unwrap().to_string().len();
    let end = at + header[at..].find(',').unwrap();
    let mut edited = format!("{}512.0{}", &header[..at], &header[end..]);
    while edited.len() % 8 != 0 {
        edited.push(' ');
    }
    let mut out = (edited.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(edited.as_bytes());
    out.extend_from_slice(&bytes[8 + n..]);
    std::fs::write(&state_file, &out).unwrap();
    let o = train("3", Some(&run.join("checkpoints/last")), true);
    assert!(o.status.success(), "{}", text(&o));
    let all = scales();
    assert!(all.len() > first.len() && [512.0, 256.0].contains(&all[first.len()]), "the resumed run starts from the saved scale: {all:?}");
}

/// `compare` judges one saved run against another without running anything: the same run is no
/// regression (exit 0); a run whose batch times doubled is, named with its change (exit 1); a
/// save directory stands for its results file, a baseline name is looked up under --save-dir,
/// and a file that is not a results file is named.
#[test]
fn compare_judges_two_saved_runs() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("base");
    let o = bin().args(["bench", "--test", "data", "--quick", "--save-baseline", "first", "--save-dir"]).arg(&base).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let results = base.join("comprehensive_benchmark_results.json");
    let o = bin().arg("compare").arg(&results).arg(&base).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("0 regression(s), 0 improvement(s)"), "{}", text(&o));
    // Every batch-preparation sample of the current run doubled: each such metric regresses.
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    let mut slowed = 0;
    for c in v["categories"].as_array_mut().unwrap() {
        for m in c["metrics"].as_array_mut().unwrap() {
            if m["id"].as_str().unwrap().ends_with("batch_prep_ms") && m["samples"].as_array().unwrap().len() >= 8 {
                m["value"] = (m["value"].as_f64().unwrap() * 2.0).into();
                let doubled: Vec<f64> = m["samples"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() * 2.0).collect();
                m["samples"] = doubled.into();
                slowed += 1;
            }
        }
    }
    assert!(slowed > 0);
    let slower = dir.path().join("slower.json");
    std::fs::write(&slower, serde_json::to_vec(&v).unwrap()).unwrap();
    let o = bin().args(["compare", "first"]).arg(&slower).arg("--save-dir").arg(&base).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    // Each slowed metric changed by +100 %; it is called a regression where its bootstrap CI
    // clears the band (a timing with an outlier may not), and nothing else is.
    let called: Vec<&str> = t.lines().filter(|l| l.starts_with("REGRESSION")).collect();
    assert!(!called.is_empty() && called.len() <= slowed && called.iter().all(|l| l.contains("batch_prep_ms") && l.contains("+100.0 %")), "{t}");
    assert!(t.contains(&format!("{} regression(s)", called.len())), "{t}");
    // `bench --baseline` gates the same way: against a baseline whose batch preparation took a
    // hundredth of the time, a new run of the category regresses and exits 1 (its reports
    // written). The new run is measured, so the factor is one no machine's noise could undo.
    let mut faster: serde_json::Value = serde_json::from_slice(&std::fs::read(&results).unwrap()).unwrap();
    for c in faster["categories"].as_array_mut().unwrap() {
        for m in c["metrics"].as_array_mut().unwrap() {
            if m["id"].as_str().unwrap().ends_with("batch_prep_ms") {
                m["value"] = (m["value"].as_f64().unwrap() * 0.01).into();
                let scaled: Vec<f64> = m["samples"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() * 0.01).collect();
                m["samples"] = scaled.into();
            }
        }
    }
    let fast = dir.path().join("fast_baseline.json");
    std::fs::write(&fast, serde_json::to_vec(&faster).unwrap()).unwrap();
    let rerun = dir.path().join("rerun");
    let o = bin().args(["bench", "--test", "data", "--quick", "--baseline"]).arg(&fast).arg("--save-dir").arg(&rerun).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.lines().any(|l| l.starts_with("REGRESSION") && l.contains("batch_prep_ms")), "{t}");
    assert!(rerun.join("reports/performance_summary.md").is_file());
    // A bare name that is both a saved baseline and a run here is ambiguous: both are named.
    std::fs::create_dir_all(dir.path().join("first")).unwrap();
    std::fs::copy(&slower, dir.path().join("first/comprehensive_benchmark_results.json")).unwrap();
    let o = bin().current_dir(dir.path()).args(["compare", "first"]).arg(&results).arg("--save-dir").arg(&base).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("is both the baseline") && text(&o).contains("baselines/first.json"), "{}", text(&o));
    // A value no measurement has (its change would overflow to "no change"), and a failed
    // category in the run judged.
    let mut absurd = v.clone();
    absurd["categories"][0]["metrics"][0]["value"] = 1e308.into();
    std::fs::write(dir.path().join("absurd.json"), serde_json::to_vec(&absurd).unwrap()).unwrap();
    let o = bin().arg("compare").arg(&base).arg(dir.path().join("absurd.json")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("past the magnitudes a measurement has"), "{}", text(&o));
    let mut failed = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&results).unwrap()).unwrap();
    failed["categories"][0]["status"] = "error".into();
    std::fs::write(dir.path().join("failed.json"), serde_json::to_vec(&failed).unwrap()).unwrap();
    let o = bin().arg("compare").arg(&base).arg(dir.path().join("failed.json")).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("1 category failed: data"), "{}", text(&o));
    // JSON: the current run with each metric's change.
    let o = bin().arg("compare").arg(&base).arg(&slower).arg("--json").output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let verdicts: Vec<&str> = j["categories"][0]["metrics"].as_array().unwrap().iter().filter_map(|m| m["baseline"]["verdict"].as_str()).collect();
    assert_eq!(verdicts.iter().filter(|v| **v == "regression").count(), called.len(), "{verdicts:?}");
    // Bad inputs are named.
    let o = bin().arg("compare").arg(base.join("benchmark.log")).arg(&base).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("benchmark.log") && text(&o).contains("not a results file"), "{}", text(&o));
    for (content, kind) in [("[1, 2, 3]", "a JSON array"), ("", "empty"), ("3", "a bare JSON value")] {
        std::fs::write(dir.path().join("odd.json"), content).unwrap();
        let o = bin().arg("compare").arg(dir.path().join("odd.json")).arg(&base).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains("odd.json: not a results file") && text(&o).contains(kind), "{}", text(&o));
    }
    let o = bin().args(["compare", "nothere"]).arg(&base).arg("--save-dir").arg(&base).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("baselines/nothere.json"), "{}", text(&o));
    // The baseline's zero metrics and failed categories are warned about; a FIFO is refused, not
    // read until it ends; a save directory that is a link to nothing is named.
    let mut zeroed = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&results).unwrap()).unwrap();
    let first_id = zeroed["categories"][0]["metrics"][0]["id"].as_str().unwrap().to_string();
    zeroed["categories"][0]["metrics"][0]["value"] = 0.0.into();
    zeroed["categories"][0]["metrics"][0]["samples"] = serde_json::json!([]);
    zeroed["categories"][0]["status"] = "error".into();
    std::fs::write(dir.path().join("zeroed.json"), serde_json::to_vec(&zeroed).unwrap()).unwrap();
    let o = bin().arg("compare").arg(dir.path().join("zeroed.json")).arg(&results).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains(&format!("1 metric(s) not compared: the baseline's value is 0 or not finite: {first_id}")) && t.contains("the baseline's 1 category failed: data"), "{t}");
    // A baseline (or a run) that shares no metric judged nothing: that fails, on either side,
    // and under `bench --baseline` too.
    let mut empty = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&results).unwrap()).unwrap();
    empty["categories"] = serde_json::json!([]);
    std::fs::write(dir.path().join("empty.json"), serde_json::to_vec(&empty).unwrap()).unwrap();
    for (a, b) in [(dir.path().join("empty.json"), results.clone()), (results.clone(), dir.path().join("empty.json"))] {
        let o = bin().arg("compare").arg(&a).arg(&b).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        assert!(text(&o).contains("no metric could be compared with the baseline") && text(&o).contains("nothing was judged"), "{}", text(&o));
    }
    // One whose every shared metric the rule cannot judge (one sample each: a quality run's
    // probe accuracies always are) passes, saying it checked nothing.
    let mut single = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&results).unwrap()).unwrap();
    for c in single["categories"].as_array_mut().unwrap() {
        for m in c["metrics"].as_array_mut().unwrap() {
            m["samples"] = serde_json::json!([1.0]);
            m["exact"] = false.into();
        }
    }
    std::fs::write(dir.path().join("single.json"), serde_json::to_vec(&single).unwrap()).unwrap();
    let o = bin().arg("compare").arg(dir.path().join("single.json")).arg(dir.path().join("single.json")).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("warning: no metric got a verdict") && text(&o).contains("checked nothing") && text(&o).contains("0 no change"), "{}", text(&o));
    let o = bin().args(["bench", "--test", "data", "--quick", "--baseline"]).arg(dir.path().join("empty.json")).arg("--save-dir").arg(dir.path().join("against-empty")).output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no metric could be compared"), "{}", text(&o));
    // A metric whose direction changed is not judged (its ratio would read backwards), and a
    // target the run judged failed (by its value, whatever its `passed` says) is said.
    let mut turned = serde_json::from_slice::<serde_json::Value>(&std::fs::read(&results).unwrap()).unwrap();
    let flip = turned["categories"][0]["metrics"][0]["lower_is_better"].as_bool().unwrap();
    turned["categories"][0]["metrics"][0]["lower_is_better"] = (!flip).into();
    let target_metric = turned["categories"][0]["metrics"].as_array_mut().unwrap().iter_mut().find(|m| m["target"].is_object()).unwrap();
    let target_id = target_metric["id"].as_str().unwrap().to_string();
    let value = target_metric["value"].as_f64().unwrap();
    target_metric["target"]["threshold"] = (if target_metric["target"]["op"] == "<=" { value / 2.0 - 1.0 } else { value * 2.0 + 1.0 }).into();
    std::fs::write(dir.path().join("turned.json"), serde_json::to_vec(&turned).unwrap()).unwrap();
    let o = bin().arg("compare").arg(&results).arg(dir.path().join("turned.json")).output().unwrap();
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains(&format!("1 metric(s) not compared: their unit or direction (lower or higher is better) differs from the baseline's: {first_id}")), "{t}");
    assert!(t.contains("1 target(s) failed in") && t.contains(&format!("{target_id} = ")), "{t}");
    #[cfg(unix)]
    {
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
        let o = bin().arg("compare").arg(&fifo).arg(&base).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains("not a regular file"), "{}", text(&o));
        let dangling = dir.path().join("dangling");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
        let o = bin().args(["bench", "--test", "data", "--quick", "--save-dir"]).arg(&dangling).output().unwrap();
        assert_eq!(o.status.code(), Some(1));
        assert!(text(&o).contains("a symbolic link that leads nowhere"), "{}", text(&o));
    }
    let o = bin().arg("compare").arg(&base).arg(&base).args(["--noise", "2"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("--noise must be in [0, 1)"), "{}", text(&o));
}

/// A point of the scalability sweep past the memory budget ends its axis's sweep and is named;
/// the points measured before it stay in the results (one such point used to fail the category
/// and drop the whole sweep). A budget no point fits fails the category, with no empty chart.
#[test]
fn a_sweep_point_past_the_memory_budget_ends_its_sweep_not_the_category() {
    let dir = tempfile::tempdir().unwrap();
    let run = |budget: &str| bin().args(["--memory-budget", budget, "bench", "--quick", "--test", "scalability", "--save-dir"]).arg(dir.path()).output().unwrap();
    // mlp-medium at W = 4096 needs 36 MB: the window sweep stops there, with W = 256…2048 measured
    // (steps of a few ms: far from the quick sweep's 1.5 s time limit on any machine).
    let o = run("30M");
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("comprehensive_benchmark_results.json")).unwrap()).unwrap();
    let cat = &v["categories"][0];
    let window: Vec<&serde_json::Value> = cat["sweep"].as_array().unwrap().iter().filter(|p| p["axis"] == "window").collect();
    let last = window.last().unwrap();
    assert!(window.len() == 5 && window[..4].iter().all(|p| p["ok"] == true), "{window:?}");
    assert!(last["ok"] == false && last["window"] == 4096 && last["note"].as_str().unwrap().contains("memory budget"), "{last}");
    assert!(cat["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().starts_with("window sweep stopped at 4096: ")), "{cat}");
    assert!(dir.path().join("plots/scalability_analysis.png").is_file());
    let o = run("2M");
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("no point ran"), "{}", text(&o));
    assert!(!dir.path().join("plots/scalability_analysis.png").exists(), "no chart of a sweep that measured nothing");
}

/// The hardware category measures every reduced precision that runs here alike: with fp16
/// products on (CID_CPU_FP16=emulate) fp16 gets what bf16 gets — step time, speed-up, memory, the
/// linear probe after the same steps and the accuracy it gives up (fp16 had a step time only).
#[test]
fn the_hardware_category_measures_each_reduced_precision_alike() {
    if !packed_kernel_runs() {
        eprintln!("SKIPPED: fp16 products need the packed GEMM kernel (AVX2 + FMA)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let o = bin().env("CID_CPU_FP16", "emulate").env_remove("CID_CPU_GEMM").args(["bench", "--quick", "--test", "hardware", "--save-dir"]).arg(dir.path()).output().unwrap();
    // The category's targets (bf16 ≥ 1.2× faster) fail on a CPU without bf16 instructions: the
    // exit code is not the point here, the metrics are.
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.path().join("comprehensive_benchmark_results.json")).unwrap()).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    let ids: Vec<&str> = v["categories"][0]["metrics"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    for precision in ["bf16", "fp16"] {
        let step = format!("hardware.cpu.{precision}.threads");
        assert!(ids.iter().any(|id| id.starts_with(&step) && id.ends_with(".step_ms")), "{precision} step time missing from {ids:?}");
        for metric in ["mixed_precision_speedup", "memory_mb", "final_probe_acc", "accuracy_drop"] {
            let id = format!("hardware.cpu.{precision}.{metric}");
            assert!(ids.contains(&id.as_str()), "{id} missing from {ids:?}");
        }
    }
}

/// Whether this CPU runs the packed GEMM kernel (AVX2 + FMA), which fp16 products need.
fn packed_kernel_runs() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}
