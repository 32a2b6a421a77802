//! The benchmark suite's statistics, regression rule, schema, targets and reports.

use bench::report::Report;
use bench::results::Results;
use bench::stats::{compare, summarize, Verdict};
use bench::Benchmark;

/// A seeded normal sample (Box–Muller over SplitMix64).
fn normal_sample(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
    let mut s = seed;
    let mut u = || {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n).map(|_| mean + sd * (-2.0 * u().max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * u()).cos()).collect()
}

#[test]
fn summary_statistics_of_a_known_sample() {
    let s = summarize(&[5.0, 1.0, 3.0, 2.0, 4.0]);
    assert_eq!((s.n, s.median, s.min, s.max, s.q1, s.q3, s.iqr), (5, 3.0, 1.0, 5.0, 2.0, 4.0, 2.0));
    assert!((s.mean - 3.0).abs() < 1e-12 && (s.std - 2.5f64.sqrt()).abs() < 1e-12);
    assert_eq!((s.ci_low, s.ci_high), (1.0, 5.0), "below 8 samples the range is kept, not a CI");
    // Between ranks, quantiles interpolate linearly (numpy's default, type 7).
    let s = summarize(&[4.0, 1.0, 3.0, 2.0]);
    assert_eq!((s.median, s.q1, s.q3), (2.5, 1.75, 3.25));
    // No samples: nothing measured, every statistic NaN (not a mean of 0).
    let s = summarize(&[]);
    assert!(s.n == 0 && s.mean.is_nan() && s.median.is_nan());
    // Tukey's fences: quartiles 10.1875 and 10.8125 (IQR 0.625); 11.8 is past 1.5 IQR above the
    // third (11.75), 13 past 3 IQR (12.6875), 8 past 3 IQR below the first (8.3125).
    let s = summarize(&[10.0, 10.25, 10.5, 10.5, 10.5, 10.75, 10.0, 11.0, 11.8, 13.0, 8.0, 10.5]);
    assert_eq!((s.q1, s.q3), (10.1875, 10.8125));
    assert_eq!((s.outliers.low_severe, s.outliers.low_mild, s.outliers.high_mild, s.outliers.high_severe), (1, 0, 1, 1), "{:?}", s.outliers);
    assert_eq!(s.outliers.to_string(), "3 outliers (1 low severe, 1 high mild, 1 high severe)");
    assert_eq!(summarize(&[1.0, 2.0, 3.0, 4.0, 5.0]).outliers.to_string(), "no outliers");
}

#[test]
fn bootstrap_ci_covers_the_true_median_at_about_the_nominal_rate() {
    // 200 samples of 40 draws from N(10, 2): the true median is 10.
    let trials = 200;
    let covered = (0..trials)
        .filter(|&t| {
            let s = summarize(&normal_sample(40, 10.0, 2.0, 1000 + t));
            s.ci_low <= 10.0 && 10.0 <= s.ci_high
        })
        .count();
    let rate = covered as f64 / trials as f64;
    // Percentile bootstrap of a median is roughly nominal; allow for its known small-sample bias.
    assert!((0.88..=0.99).contains(&rate), "coverage {rate}");
}

#[test]
fn regression_rule_on_constructed_samples() {
    let base = normal_sample(50, 100.0, 2.0, 1);
    // 20 % slower: regression for a time, improvement-free.
    let slower: Vec<f64> = normal_sample(50, 120.0, 2.0, 2);
    assert_eq!(compare(&base, &slower, true, false, 0.05).verdict, Verdict::Regression);
    // 20 % faster: improvement.
    let faster = normal_sample(50, 80.0, 2.0, 3);
    assert_eq!(compare(&base, &faster, true, false, 0.05).verdict, Verdict::Improvement);
    // 2 % slower, inside the 5 % band: no change.
    let same = normal_sample(50, 102.0, 2.0, 4);
    assert_eq!(compare(&base, &same, true, false, 0.05).verdict, Verdict::NoChange);
    // Noisy 8 % slowdown whose CI reaches into the band: no change is called.
    let noisy_base = normal_sample(8, 100.0, 30.0, 5);
    let noisy = normal_sample(8, 108.0, 30.0, 6);
    assert_eq!(compare(&noisy_base, &noisy, true, false, 0.05).verdict, Verdict::NoChange);
    // Higher-is-better metrics flip the direction.
    assert_eq!(compare(&base, &slower, false, false, 0.05).verdict, Verdict::Improvement);
    assert_eq!(compare(&base, &faster, false, false, 0.05).verdict, Verdict::Regression);
    // Exact single values (counted, not timed): their ratio against the band.
    assert_eq!(compare(&[128.0], &[64.0], false, true, 0.05).verdict, Verdict::Regression);
    assert_eq!(compare(&[128.0], &[130.0], false, true, 0.05).verdict, Verdict::NoChange);
    // A single timing, or too few samples for a CI: the change is shown, no verdict called.
    let c = compare(&[128.0], &[64.0], false, false, 0.05);
    assert_eq!((c.verdict, c.change), (Verdict::NotCompared, -0.5));
    assert_eq!(compare(&base[..3], &slower[..3], true, false, 0.05).verdict, Verdict::NotCompared);
    assert_eq!(compare(&base[..8], &slower[..8], true, false, 0.05).verdict, Verdict::Regression);
    // A negative base (an accuracy drop below zero): a rise is a positive change, a fall negative.
    assert!((compare(&[-0.01], &[0.01], true, true, 0.05).change - 2.0).abs() < 1e-12);
    assert!((compare(&[-0.01], &[-0.02], true, true, 0.05).change + 1.0).abs() < 1e-12);
    assert_eq!(compare(&[-0.01], &[0.01], true, true, 0.05).verdict, Verdict::Regression, "a drop that grew is worse");
}

#[test]
fn too_few_samples_give_no_ci() {
    // With 3 samples the percentile bootstrap's interval is the range, which holds the median only
    // 75 % of the time: no "95 % CI" is given below MIN_CI_SAMPLES.
    let s = summarize(&[1.0, 3.0, 2.0]);
    assert_eq!(s.ci(), None);
    assert_eq!((s.ci_low, s.ci_high), (1.0, 3.0), "the range is kept, not called a CI");
    let s = summarize(&normal_sample(bench::stats::MIN_CI_SAMPLES, 10.0, 1.0, 7));
    assert!(s.ci().is_some_and(|(lo, hi)| lo <= s.median && s.median <= hi));
}

#[test]
fn targets_table_loads_and_overrides() {
    let t = bench::targets::default_targets();
    assert_eq!(t["training_performance"]["samples_per_second"], 50.0);
    assert_eq!(t["scalability"]["max_window_size"], 4096.0);
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("t.yaml");
    std::fs::write(&f, "training_performance:\n  batch_time_ms: 0.001\n").unwrap();
    let t2 = bench::targets::load_targets(&f).unwrap();
    assert_eq!(t2["training_performance"]["batch_time_ms"], 0.001);
    assert_eq!(t2["data_processing"]["batch_preparation_ms"], 50.0);
    std::fs::write(&f, "training_performance:\n  speed: 1\n").unwrap();
    let e = bench::targets::load_targets(&f).unwrap_err().to_string();
    assert!(e.contains("training_performance.speed"), "{e}");
    // A file with no target in it is refused, not run on the defaults as if read.
    for empty in ["", "\n# nothing\n", "{}", "training_performance: {}\n"] {
        std::fs::write(&f, empty).unwrap();
        let e = bench::targets::load_targets(&f).unwrap_err().to_string();
        assert!(e.contains("t.yaml: holds no targets"), "{empty:?}: {e}");
    }
    std::fs::write(&f, "bogus: {}\n").unwrap();
    let e = bench::targets::load_targets(&f).unwrap_err().to_string();
    assert!(e.contains("unknown targets section `bogus`"), "{e}");
}

#[test]
fn suite_writes_every_report_well_formed_and_baselines_compare() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("out");
    // A target nothing can meet (a step in a microsecond) fails and shows up as failed.
    let mut targets = bench::targets::default_targets();
    targets.get_mut("training_performance").unwrap().insert("batch_time_ms".into(), 0.001);
    // Each sweep point is told as it ends, outside the log and the results.
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let sink = std::sync::Arc::clone(&told);
    let mut b = Benchmark::new(&save).quick(true).threads(2).targets(targets).on_progress(move |line| sink.lock().unwrap().push(line.to_string()));
    b.training().unwrap();
    let sweep = b.scalability().unwrap().sweep.clone();
    let told = told.lock().unwrap().clone();
    assert_eq!(told.len(), sweep.len(), "{told:?}");
    for (line, p) in told.iter().zip(&sweep) {
        assert!(line.starts_with(&format!("scalability: batch {} × window {}: ", p.batch, p.window)), "{line}");
    }
    b.hardware().unwrap();
    let files = b.report().unwrap();
    for f in [
        "comprehensive_benchmark_results.json",
        "reports/performance_report.html",
        "reports/performance_summary.md",
        "plots/training_performance.png",
        "plots/scalability_analysis.png",
        "plots/hardware_optimization.png",
        "benchmark.log",
    ] {
        assert!(files.contains(&save.join(f)), "{f} not reported as written");
        assert!(std::fs::metadata(save.join(f)).unwrap().len() > 0, "{f} is empty");
    }
    // No temporary file left anywhere below (reports and plots are written beside their final
    // name, as a hidden or `.tmp` file, then renamed).
    fn leftovers(dir: &std::path::Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .flat_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                if e.path().is_dir() {
                    leftovers(&e.path())
                } else if name.starts_with('.') || name.contains(".tmp") {
                    vec![e.path().display().to_string()]
                } else {
                    vec![]
                }
            })
            .collect()
    }
    assert_eq!(leftovers(&save), Vec::<String>::new(), "no temporary files left");

    // JSON: the schema round-trips, and targets were checked.
    let text = std::fs::read_to_string(save.join("comprehensive_benchmark_results.json")).unwrap();
    let r: Results = serde_json::from_str(&text).unwrap();
    assert_eq!(r.schema_version, bench::results::SCHEMA_VERSION);
    assert_eq!(serde_json::to_string(&r).unwrap(), serde_json::to_string(&serde_json::from_str::<Results>(&serde_json::to_string(&r).unwrap()).unwrap()).unwrap());
    assert_eq!(r.categories.len(), 3);
    let m = r.metric("training.small.batch_time_ms").unwrap();
    assert!(m.samples.len() >= 10 && m.summary.is_some() && !m.target.as_ref().unwrap().passed, "the impossible target failed");
    assert!(r.metric("training.small.samples_per_s").unwrap().target.is_some(), "the other targets are checked too");
    assert!(r.unmeasured_targets.contains(&"training_performance.gpu_utilization".to_string()), "targets no metric answered are listed: {:?}", r.unmeasured_targets);
    // An epoch is measured whole, three times, and answers the seed's epoch-time target.
    let epoch = r.metric("training.medium.epoch_time_min").unwrap();
    assert!(epoch.samples.len() == 3 && epoch.samples.iter().all(|m| *m > 0.0) && epoch.target.is_some(), "{epoch:?}");
    assert!(!r.unmeasured_targets.iter().any(|t| t.ends_with("epoch_time_minutes")), "{:?}", r.unmeasured_targets);
    assert!(r.metric("scalability.batch.max_batch_size").unwrap().value >= 256.0);
    assert!(!r.recommendations.is_empty() && r.recommendations.iter().all(|x| !x.evidence.is_empty()));
    assert_eq!(r.fingerprint.build_profile, if cfg!(debug_assertions) { "debug" } else { "release" });
    // The hardware category's memory by what holds it: fp32's parts add up to its memory metric,
    // and its state is four fp32 copies of mlp-medium's 689 024 parameters.
    let hardware = r.category(bench::CategoryKind::Hardware).unwrap();
    let note = hardware.notes.iter().find(|n| n.starts_with("memory by what holds it: ")).unwrap_or_else(|| panic!("no memory note in {:?}", hardware.notes));
    let fp32: Vec<f64> = note["memory by what holds it: fp32 ".len()..].split(['=', '+', ';']).take(4).map(|part| part.trim().split(' ').next().unwrap().parse().unwrap()).collect();
    let [total, state, activations, scratch] = fp32[..] else { panic!("{note}") };
    assert!((total - r.metric("hardware.cpu.fp32.memory_mb").unwrap().value).abs() < 0.051, "{note}");
    assert!((state + activations + scratch - total).abs() < 0.151 && (state - 16.0 * 689_024.0 / 1e6).abs() < 0.051 && activations > 0.0, "{note}");
    // The share said to be state, and the bound on what half precision could save (from the
    // parts' exact bytes: within a point of the rounded MB here).
    let number_after =
        |prefix: &str| -> f64 { note.split(prefix).nth(1).and_then(|t| t.split(' ').next()).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number after `{prefix}` in {note}")) };
    let (said_state, said_saving) = (number_after("this model's memory is "), number_after("would save at most "));
    assert!((said_state - 100.0 * state / total).abs() <= 1.0 && (said_saving - 50.0 * activations / total).abs() <= 1.0, "{note}");

    // HTML: parses; a section per category with inline SVG charts whose every bar and point has a
    // hover title (value, CI, n) and a sortable table; nothing loaded from outside the page.
    let html = std::fs::read_to_string(save.join("reports/performance_report.html")).unwrap();
    let dom = tl::parse(&html, tl::ParserOptions::default()).unwrap();
    for id in ["summary", "recommendations", "cat-training", "cat-scalability", "cat-hardware"] {
        assert!(dom.get_element_by_id(id).is_some(), "section #{id} missing");
    }
    let svgs = dom.query_selector("svg").unwrap().count();
    assert!(svgs >= 4, "charts inline: {svgs}");
    let groups: Vec<&str> = html.split("<g>").skip(1).map(|g| g.split("</g>").next().unwrap_or("")).collect();
    assert!(groups.len() >= 10, "bars and points drawn: {}", groups.len());
    for g in &groups {
        assert!(g.starts_with("<title>") && (g.contains("<rect") || g.contains("<circle")), "every bar and point carries its title: {g}");
    }
    assert!(html.contains("95% CI [") && html.contains(", n = "), "tooltips give the CI and the sample count");
    for chart in ["training_performance", "scalability_analysis", "hardware_optimization"] {
        assert!(html.contains(&format!("href=\"../plots/{chart}.png\"")), "{chart} linked");
    }
    assert_eq!(dom.query_selector("table.sortable").unwrap().count(), 3, "a sortable table per category");
    let scripts: Vec<&tl::HTMLTag> = dom.query_selector("script").unwrap().filter_map(|h| h.get(dom.parser())).filter_map(|n| n.as_tag()).collect();
    assert_eq!(scripts.len(), 1);
    assert!(scripts.iter().all(|t| t.attributes().get("src").is_none()), "inline script only");
    assert!(!html.contains("http://") && !html.contains("https://") && !html.contains("<link") && !html.contains("<img"), "no external resource");
    assert!(dom.query_selector("td").unwrap().count() > 50, "tables filled");
    let page = html.split("<script>").next().unwrap_or("");
    assert!(!page.contains("NaN") && !page.contains("inf\""), "no NaN or infinity drawn");

    // Markdown: headline sections.
    let md = std::fs::read_to_string(save.join("reports/performance_summary.md")).unwrap();
    for h in ["Pass rate:", "## Key indicators vs targets", "## Recommendations", "## Details", "## Scalability sweep"] {
        assert!(md.contains(h), "{h} missing");
    }

    // PNGs decode with the expected size.
    for p in ["training_performance", "scalability_analysis", "hardware_optimization"] {
        let dec = png::Decoder::new(std::fs::File::open(save.join(format!("plots/{p}.png"))).unwrap());
        let reader = dec.read_info().unwrap();
        assert_eq!((reader.info().width, reader.info().height), (bench::plots::WIDTH, bench::plots::HEIGHT), "{p}");
    }

    // Baselines: save, compare by name (every metric gets a verdict), then against a doctored
    // baseline (every time halved) to see regressions called and the fingerprint warned about.
    let base = b.save_baseline("ref").unwrap();
    let mut again = Benchmark::new(&save).quick(true).threads(2);
    again.hardware().unwrap();
    again.compare_baseline("ref", 0.05).unwrap();
    // Every metric is compared but those whose baseline is 0 (a relative change from 0 is none:
    // bf16's accuracy drop is often exactly 0).
    let base_results: Results = serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    for m in again.results().metrics() {
        let zero = base_results.metric(&m.id).is_some_and(|b| b.value == 0.0 && b.samples.is_empty());
        assert!(m.baseline.is_some() || zero, "{} compared", m.id);
    }
    // Same machine, so no fingerprint warning; but the training and scalability metrics of the
    // baseline were not measured this time, and that is said. (A busy machine, or one at another
    // speed — this binary's other tests run beside this one —, adds its own warnings, left out.)
    let warnings: Vec<&String> = again.results().baseline_warnings.iter().filter(|w| !w.contains("other processes used") && !w.contains("the machine itself ran")).collect();
    assert!(warnings.len() == 1 && warnings[0].contains("not measured in this run") && warnings[0].contains("training.small.batch_time_ms"), "{warnings:?}");
    let verdict = |id: &str| again.results().metric(id).and_then(|m| m.baseline.as_ref()).map(|c| c.verdict);
    assert_eq!(verdict("hardware.cpu.fp32.memory_mb"), Some(bench::stats::Verdict::NoChange), "an exact value is compared");
    assert_eq!(verdict("hardware.cpu.fp32.thread_speedup"), Some(bench::stats::Verdict::NotCompared), "a single timing ratio is not");
    // The mixed-precision speed-up is a median over paired steps: it has enough samples to judge.
    match verdict("hardware.cpu.bf16.mixed_precision_speedup") {
        Some(v) => assert_ne!(v, bench::stats::Verdict::NotCompared, "paired ratios are compared"),
        None => eprintln!("SKIPPED the speed-up's verdict: bf16 products do not run here"),
    }
    assert_eq!(verdict("hardware.cpu.fp32.final_probe_acc"), Some(bench::stats::Verdict::NotCompared), "nor a trained probe (its run's GEMM kernels are chosen by timing)");
    let mut doctored: Results = serde_json::from_str(&std::fs::read_to_string(&base).unwrap()).unwrap();
    for c in doctored.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            // A hundredth: `third` below is measured, so no machine's noise can undo the change.
            if m.unit == "ms" {
                m.samples.iter_mut().for_each(|s| *s *= 0.01);
                m.value *= 0.01;
            }
        }
    }
    doctored.fingerprint.cpu_model = "another CPU".into();
    doctored.fingerprint.cpu_gemm = "another GEMM".into();
    let fake = dir.path().join("doctored.json");
    std::fs::write(&fake, serde_json::to_string(&doctored).unwrap()).unwrap();
    let mut third = Benchmark::new(&save).quick(true).threads(2);
    third.hardware().unwrap();
    third.compare_baseline(fake.to_str().unwrap(), 0.05).unwrap();
    assert!(!third.results().regressions().is_empty(), "a 100x slowdown is a regression");
    assert!(third.results().baseline_warnings.iter().any(|w| w.contains("another CPU")), "fingerprint difference warned");
    assert!(third.results().baseline_warnings.iter().any(|w| w.contains("cpu gemm: another GEMM")), "GEMM kernel difference warned");
    // The Markdown and HTML reports count every verdict, as the terminal does (they counted
    // regressions only).
    let tally = bench::compare::tally(third.results());
    assert!(!tally.improvements.is_empty() || tally.no_change > 0, "{tally}");
    for report in [&bench::report::MarkdownReport as &dyn Report, &bench::report::HtmlReport] {
        let text = String::from_utf8(report.render(third.results()).unwrap()).unwrap();
        assert!(text.contains(&tally.to_string()), "{tally} missing from {}", report.file().display());
    }
    assert!(third.compare_baseline("no-such-baseline", 0.05).is_err());
    // A metric this run could not measure as a number is listed as not compared, not dropped
    // from the comparison without a word.
    let mut unmeasured = third.results().clone();
    let id = {
        let m = unmeasured.categories.iter_mut().flat_map(|c| c.metrics.iter_mut()).find(|m| m.unit == "ms").unwrap();
        m.samples.iter_mut().for_each(|s| *s = f64::NAN);
        m.value = f64::NAN;
        m.id.clone()
    };
    let warnings = bench::compare::compare(&mut unmeasured, "doctored", &doctored, 0.05);
    assert!(warnings.iter().any(|w| w.contains("this run's value is not finite") && w.contains(&id)), "{warnings:?}");
    // Values no run can measure are refused with the file and the metric named: a subnormal time
    // (every ratio against it overflows, and 45 regressions passed as "no change"), a time of
    // 1e308 ms (its change overflowed to "no change" the same way), a negative one, and more
    // samples than a run records (the comparison ran for minutes).
    let ms_metric = doctored.metrics().find(|m| m.unit == "ms" && !m.samples.is_empty()).map(|m| m.id.clone()).unwrap();
    let past = "past the magnitudes a measurement has";
    for (what, needle, edit) in [
        ("subnormal", past, &(|m: &mut bench::results::Metric| m.samples[0] = 5e-324) as &dyn Fn(&mut bench::results::Metric)),
        ("huge", past, &|m: &mut bench::results::Metric| m.value = 1e308),
        ("negative", "is negative", &|m: &mut bench::results::Metric| m.value = -1.0),
        ("samples", "more than the 10000", &|m: &mut bench::results::Metric| m.samples = vec![1.0; bench::MAX_BASELINE_SAMPLES + 1]),
    ] {
        let mut bad = doctored.clone();
        bad.categories.iter_mut().flat_map(|c| c.metrics.iter_mut()).filter(|m| m.id == ms_metric).for_each(edit);
        let path = dir.path().join(format!("bad_{what}.json"));
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        let e = third.compare_baseline(path.to_str().unwrap(), 0.05).unwrap_err().to_string();
        assert!(e.contains(&format!("bad_{what}.json")) && e.contains(&ms_metric) && e.contains(needle), "{what}: {e}");
    }
    // The machine a baseline's category recorded: a share of the CPUs past 1, a reference time of
    // 0 or below (every comparison warned of an infinitely slower machine).
    for (what, needle, edit) in [
        ("share", "others_cpu_share", &(|c: &mut bench::results::Category| c.others_cpu_share = Some(1e12)) as &dyn Fn(&mut bench::results::Category)),
        ("negative_share", "others_cpu_share", &|c: &mut bench::results::Category| c.others_cpu_share = Some(-1.0)),
        ("zero_reference", "calibration_ms", &|c: &mut bench::results::Category| c.calibration_ms = Some(0.0)),
        ("negative_reference", "calibration_ms", &|c: &mut bench::results::Category| c.calibration_ms = Some(-1.0)),
        ("huge_reference", "calibration_ms", &|c: &mut bench::results::Category| c.calibration_ms = Some(1e300)),
    ] {
        let mut bad = doctored.clone();
        bad.categories.iter_mut().for_each(edit);
        let path = dir.path().join(format!("bad_{what}.json"));
        std::fs::write(&path, serde_json::to_string(&bad).unwrap()).unwrap();
        let e = third.compare_baseline(path.to_str().unwrap(), 0.05).unwrap_err().to_string();
        assert!(e.contains(&format!("bad_{what}.json")) && e.contains(needle), "{what}: {e}");
    }
}

/// The quality category on its generated data (noise as strong as the tones) measures what
/// pretraining adds: a random-init encoder is far from the target. On data where a random-init
/// encoder already passes (the generator's default noise 0.1), the category reports 0 steps and
/// says so, not the first probe's step. A run without the training, scalability or hardware
/// category writes no empty chart for it and removes one an earlier run left.
#[test]
fn a_target_met_before_training_is_said_and_charts_follow_the_categories_run() {
    let dir = tempfile::tempdir().unwrap();
    let save = dir.path().join("out");
    std::fs::create_dir_all(save.join("plots")).unwrap();
    std::fs::write(save.join("plots/training_performance.png"), b"an earlier run's chart").unwrap();
    // A directory of the user's that the run's scratch directory once shared a name with.
    std::fs::create_dir_all(save.join(".work")).unwrap();
    std::fs::write(save.join(".work/notes.txt"), b"mine").unwrap();
    let metric = |cat: &bench::results::Category, name: bench::MetricName| cat.metrics.iter().find(|m| m.name == name).map(|m| m.value);
    let mut b = Benchmark::new(&save).quick(true).threads(2);
    let cat = b.quality().unwrap().clone();
    assert!(metric(&cat, bench::MetricName::RandomInitProbeAcc).unwrap() < 0.6, "{cat:?}");
    assert!(metric(&cat, bench::MetricName::StepsToTarget).is_none_or(|s| s > 0.0) && !cat.notes.iter().any(|n| n.contains("already reaches")), "{cat:?}");
    let files = b.report().unwrap();
    assert!(!files.iter().any(|f| f.extension().is_some_and(|e| e == "png")), "{files:?}");
    assert!(!save.join("plots/training_performance.png").exists(), "the earlier run's chart is gone");
    let html = std::fs::read_to_string(save.join("reports/performance_report.html")).unwrap();
    assert!(!html.contains("../plots/"), "the report links no chart this run did not write");
    assert_eq!(std::fs::read(save.join(".work/notes.txt")).unwrap(), b"mine", "a directory the run did not make is left alone");
    let scratch: Vec<_> = std::fs::read_dir(&save).unwrap().map(|e| e.unwrap().file_name()).filter(|n| n.to_string_lossy().starts_with(".work-")).collect();
    assert!(scratch.is_empty(), "the run's scratch directory is removed: {scratch:?}");

    let easy = signal::synth::SynthConfig { count: 24, length: 8192, classes: 4, seed: 1, ..Default::default() };
    let g = signal::synth::generate(&easy, dir.path(), "easy", signal::store::Layout::Contiguous, &|_| {}).unwrap();
    let mut b = Benchmark::new(dir.path().join("easy_out")).quick(true).threads(2).quality_data(g.store, g.meta);
    let cat = b.quality().unwrap().clone();
    assert!(metric(&cat, bench::MetricName::RandomInitProbeAcc).unwrap() >= 0.75, "the default generator's data is easy: {cat:?}");
    assert_eq!(metric(&cat, bench::MetricName::StepsToTarget), Some(0.0), "{cat:?}");
    // The data came with --data/--meta: the note does not send the user back to them.
    assert!(cat.notes.iter().any(|n| n.contains("already reaches the target") && n.contains("too easy") && !n.contains("--data")), "{:?}", cat.notes);
}

/// Missed targets that call for the same advice give it once, naming each target and metric.
#[test]
fn one_advice_per_missed_target_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Benchmark::new(dir.path()).quick(true).threads(2);
    b.data().unwrap();
    let mut r = b.results().clone();
    let mut failed = 0;
    for c in r.categories.iter_mut() {
        for m in c.metrics.iter_mut() {
            m.target = Some(bench::results::TargetCheck { target: format!("data.{}", m.name), op: ">=".into(), threshold: f64::MAX, passed: false });
            failed += 1;
        }
    }
    assert!(failed >= 2, "the data category measures several metrics");
    let recs = bench::recommendations(&r);
    let data: Vec<_> = recs.iter().filter(|x| x.text.starts_with("Data preparation")).collect();
    assert_eq!(data.len(), 1, "{recs:#?}");
    assert_eq!(data[0].evidence.matches("(target >=").count(), failed, "{:?}", data[0].evidence);
    // A lower precision's accuracy drop past its target gets advice of its own, naming it.
    let mut drop = r.categories[0].metrics[0].clone();
    (drop.category, drop.name, drop.config, drop.value) = (bench::CategoryKind::Hardware, bench::registry::MetricName::AccuracyDrop, "cpu.bf16".into(), 0.013);
    drop.target = Some(bench::results::TargetCheck { target: "hardware_optimization.accuracy_drop".into(), op: "<=".into(), threshold: 0.01, passed: false });
    r.categories[0].metrics.push(drop);
    let recs = bench::recommendations(&r);
    let advice = recs.iter().find(|x| x.topic.contains("hardware_optimization.accuracy_drop")).expect("advice for the drop");
    assert!(advice.text.starts_with("The bf16 run's probe ends further below fp32's") && !advice.text.contains("Misses its target"), "{advice:?}");
}

/// The Mixed precision advice names whichever precision measured fastest in the run, not one a
/// CPU feature suggests (on an Intel Xeon without AMX, fp16 beat bf16).
#[test]
fn the_mixed_precision_advice_names_the_fastest_precision() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Benchmark::new(dir.path()).quick(true).threads(2);
    b.data().unwrap();
    let base = b.results().clone();
    let advice = |speeds: &[(&str, f64)]| {
        let mut r = base.clone();
        for &(config, value) in speeds {
            let mut m = r.categories[0].metrics[0].clone();
            (m.category, m.name, m.config, m.value) = (bench::CategoryKind::Hardware, bench::registry::MetricName::MixedPrecisionSpeedup, config.into(), value);
            (m.id, m.target) = (format!("hardware.{config}.mixed_precision_speedup"), None);
            r.categories[0].metrics.push(m);
        }
        let recs = bench::recommendations(&r);
        recs.into_iter().find(|x| x.topic == "Mixed precision").expect("the advice").text
    };
    let fp16 = advice(&[("cpu.bf16", 0.97), ("cpu.fp16", 1.22)]);
    assert!(fp16.starts_with("fp16 steps run at 1.22×") && fp16.contains("trainer.precision: 16 ") && fp16.contains("bf16 0.97×"), "{fp16}");
    let bf16 = advice(&[("cpu.bf16", 1.8), ("cpu.fp16", 1.2)]);
    assert!(bf16.starts_with("bf16 steps run at 1.80×") && bf16.contains("trainer.precision: bf16 "), "{bf16}");
    let neither = advice(&[("cpu.bf16", 0.9)]);
    assert!(neither.starts_with("No lower precision") && neither.contains("keep trainer.precision: 32"), "{neither}");
}

/// Each category records the machine's speed before it (a fixed reference workload), and a
/// comparison says when the machine itself ran at another speed than the baseline's.
#[test]
fn a_machine_at_another_speed_is_said() {
    let reference = bench::measure::calibration_ms(2);
    assert!(reference.is_finite() && reference > 0.0, "{reference}");
    let dir = tempfile::tempdir().unwrap();
    let mut b = Benchmark::new(dir.path()).quick(true).threads(2);
    let cat = b.data().unwrap().clone();
    let now = cat.calibration_ms.expect("recorded before the category");
    let run = b.results().clone();
    let slower_then = |factor: f64| {
        let mut base = run.clone();
        base.categories.iter_mut().for_each(|c| c.calibration_ms = Some(now / factor));
        let mut again = run.clone();
        bench::compare::compare(&mut again, "base", &base, 0.05)
    };
    let warnings = slower_then(1.3);
    assert!(warnings.iter().any(|w| w.contains("the machine itself ran slower") && w.contains("+30 %")), "{warnings:?}");
    assert!(!slower_then(1.0).iter().any(|w| w.contains("the machine itself")));
}

/// The seed's data-loading and memory advice, from numbers this run measured: whether preparing
/// a batch could bound training (the data category's batch against the training step on the
/// same batch and window), and what each pair adds to a step (the batch sweep's two largest
/// points), the batch that fits, and what to do past it.
#[test]
fn data_loading_and_memory_advice_cite_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Benchmark::new(dir.path()).quick(true).threads(2);
    b.data().unwrap();
    let base = b.results().clone();
    let prep = base.metric("data.medium.B32.batch_prep_ms").expect("the data category times a batch of 32").value;
    let with = |step_ms: f64| {
        let mut r = base.clone();
        let mut m = r.categories[0].metrics[0].clone();
        (m.category, m.name, m.config, m.value, m.target) = (bench::CategoryKind::Training, bench::registry::MetricName::BatchTimeMs, "medium".into(), step_ms, None);
        m.id = "training.medium.batch_time_ms".into();
        r.categories[0].metrics.push(m);
        let mut sweep = bench::results::Category::new(bench::CategoryKind::Scalability);
        // Not on one line: only the two largest points give the numbers asserted below.
        for (batch, memory) in [(64, 20.0), (128, 50.0), (256, 90.0)] {
            sweep.sweep.push(bench::results::SweepPoint {
                axis: "batch".into(),
                batch,
                window: 1024,
                ok: true,
                step_ms: Some(1.0),
                step_ms_ci: None,
                samples: 2,
                memory_mb: Some(memory),
                note: String::new(),
            });
        }
        r.categories.push(sweep);
        r.fingerprint.memory_mb = Some(1000.0);
        let recs = bench::recommendations(&r);
        let text = |topic: &str| recs.iter().find(|x| x.topic == topic).map(|x| (x.text.clone(), x.evidence.clone())).unwrap_or_else(|| panic!("no {topic} advice: {recs:#?}"));
        (text("Data loading"), text("Memory"))
    };
    let ((slow, evidence), (memory, _)) = with(prep / 2.0);
    assert!(slow.contains("data preparation bounds training, up to 67 % of each step") && slow.contains("not storage") && evidence.contains("data.medium.B32.batch_prep_ms"), "{slow}");
    // 40 MB from B = 128 to 256: 0.3125 MB a pair, 10 MB fixed; (500 − 10) / 0.3125 = 1568.
    assert!(
        memory.contains("adds 0.312 MB") && memory.contains("about 10.0 MB do not grow") && memory.contains("about 1568 pairs fit") && memory.contains("trainer.accumulate_grad_batches"),
        "{memory}"
    );
    let ((fast, _), _) = with(prep * 9.0);
    assert!(fast.contains("9.0× less than the training step") && fast.contains("at most 10 % of a step's time"), "{fast}");
}
