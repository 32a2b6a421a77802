//! Hostile inputs across every command, each run under an address-space limit (`ulimit -v`): the
//! process must end with exit code 1 and a message naming the culprit (file, Id, key or flag),
//! never a panic, an allocation failure or a signal. Sizes a user can type, sizes a file can
//! declare, and checkpoints cut short or from elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;
use common::{bin, root, text};

/// The address-space limit of every case, in KiB (4 GiB: far below what the absurd sizes ask).
const ULIMIT_KB: u64 = 4 << 20;

fn fixture(name: &str) -> String {
    root().join("tests/fixtures").join(name).display().to_string()
}

/// Runs the binary with `args` under the address-space limit.
fn run_limited(args: &[String]) -> Output {
    Command::new("sh")
        .arg("-c")
        // `timeout`: an input that hangs the binary fails the test instead of hanging it.
        .arg(format!("ulimit -v {ULIMIT_KB} && exec timeout 120 \"$0\" \"$@\""))
        .arg(env!("CARGO_BIN_EXE_contrastive-id"))
        .args(args)
        .env_remove("CID_MEMORY_BUDGET")
        .output()
        .expect("sh runs")
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// A small store and table, and a short run's checkpoint on them (the cnn, windows of 256).
struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    data: String,
    meta: String,
    ckpt: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ok = |o: Output| assert!(o.status.success(), "{}", text(&o));
    ok(bin().args(["generate", "--count", "8", "--length", "4096", "--channels", "2", "--out"]).arg(&dir).output().unwrap());
    let (data, meta) = (dir.join("synthetic.h5").display().to_string(), dir.join("synthetic.csv").display().to_string());
    let save = dir.join("save").display().to_string();
    let mut train = bin();
    train.args(["train", "--config"]).arg(root().join("configs/debug.yaml")).args(["--data", &data, "--meta", &meta]);
    for o in ["model.name=cnn", "data.window_size=256", "data.batch_size=4", "trainer.max_steps=2", &format!("environment.save_dir={save}"), "environment.experiment_name=r"] {
        train.args(["--override", o]);
    }
    ok(train.output().unwrap());
    let ckpt = dir.join("save/r/checkpoints/last");
    Setup { _dir: tmp, dir, data, meta, ckpt }
}

/// `train` on the setup's data with debug.yaml and these overrides.
fn train_with(s: &Setup, overrides: &[&str]) -> Vec<String> {
    let mut a = strings(&["train", "--config"]);
    a.push(root().join("configs/debug.yaml").display().to_string());
    a.extend(strings(&["--data", &s.data, "--meta", &s.meta, "--override", &format!("environment.save_dir={}", s.dir.join("hostile").display())]));
    for o in overrides {
        a.push("--override".into());
        a.push(o.to_string());
    }
    a
}

fn evaluate_with(s: &Setup, ckpt: &Path, extra: &[&str]) -> Vec<String> {
    let mut a = strings(&["evaluate", "--checkpoint", &ckpt.display().to_string(), "--data", &s.data, "--meta", &s.meta]);
    a.extend(strings(extra));
    a
}

#[test]
fn hostile_inputs_end_with_exit_1_and_a_message_naming_the_culprit() {
    let s = setup();
    // Checkpoints: cut short, and foreign bytes under the right name.
    let cut = s.dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let model = std::fs::read(s.ckpt.join("model.safetensors")).unwrap();
    std::fs::write(cut.join("model.safetensors"), &model[..model.len() / 2]).unwrap();
    let foreign = s.dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    let mut header = br#"{"x":{"dtype":"F32","shape":[1000000000000,1000000000000],"data_offsets":[0,4]}}"#.to_vec();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.append(&mut header);
    bytes.extend_from_slice(&[0u8; 4]);
    std::fs::write(foreign.join("model.safetensors"), &bytes).unwrap();
    let state_cut = s.dir.join("state_cut");
    std::fs::create_dir_all(&state_cut).unwrap();
    std::fs::copy(s.ckpt.join("model.safetensors"), state_cut.join("model.safetensors")).unwrap();
    let state = std::fs::read(s.ckpt.join("training_state.safetensors")).unwrap();
    std::fs::write(state_cut.join("training_state.safetensors"), &state[..state.len() / 3]).unwrap();
    let tables = |h5: &str| -> Vec<String> {
        let csv = s.dir.join("liar.csv");
        std::fs::write(&csv, "Id,Label\n1,0\n2,1\n").unwrap();
        let mut a = strings(&["train", "--config"]);
        a.push(root().join("configs/debug.yaml").display().to_string());
        a.extend(strings(&[
            "--data",
            &fixture(h5),
            "--meta",
            &csv.display().to_string(),
            "--override",
            "data.window_size=256",
            "--override",
            "model.name=cnn",
            "--override",
            &format!("environment.save_dir={}", s.dir.join("h").display()),
        ]));
        a
    };
    // Files whose content is wrong in shape rather than in size.
    let file = |name: &str, content: &str| -> String {
        let p = s.dir.join(name);
        std::fs::write(&p, content).unwrap();
        p.display().to_string()
    };
    let config = |path: &str| -> Vec<String> { strings(&["train", "--config", path, "--data", &s.data, "--meta", &s.meta]) };
    let inspect_meta = |path: &str| -> Vec<String> { strings(&["inspect", "--data", &s.data, "--meta", path]) };
    // An endless file is read up to the budget: a small one, so the case takes 64 MB, not GBs.
    let small_budget = |mut args: Vec<String>| -> Vec<String> {
        args.splice(0..0, strings(&["--memory-budget", "64M"]));
        args
    };
    let brackets = file("brackets.yaml", &format!("data: {}", "[".repeat(100_000)));
    let not_a_mapping = file("list.yaml", "- data\n- model\n");
    let empty = file("empty.yaml", "# nothing but a comment\n");
    let dup_header = file("dup.csv", "Id,Label,Label\n1,0,1\n");
    let tiny_rate = file("rate.csv", "Id,Label,Sample_Rate\n1,0,1e-20\n");
    let nan_target = file("nan_targets.yaml", "data_processing:\n  batch_preparation_ms: .nan\n");
    let negative_target = file("negative_targets.yaml", "data_processing:\n  batch_preparation_ms: -1\n");
    let twice_target = file("twice_targets.yaml", "data_processing:\n  batch_preparation_ms: 5\n  batch_preparation_ms: 500\n");
    let negative_reference = file("reference.json", r#"{"data":{"vectorized":{"batch_prep_ms_median":-5}}}"#);
    let tiny_reference = file("tiny_reference.json", r#"{"train":[{"config":"small","amp":"none","samples_per_s":1e-310}]}"#);
    // A workbook whose one part unpacks to 100 MB (a few hundred kB on disk), under a 50 MB budget.
    let workbook = s.dir.join("bomb.xlsx");
    {
        use std::io::Write;
        let mut z = zip::ZipWriter::new(std::fs::File::create(&workbook).unwrap());
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(false);
        z.start_file("xl/worksheets/sheet1.xml", deflated).unwrap();
        let mb = vec![b' '; 1 << 20];
        for _ in 0..100 {
            z.write_all(&mb).unwrap();
        }
        z.finish().unwrap();
    }
    // A checkpoint whose architecture metadata says embedding 0 (same length: the header stays
    // well formed).
    let bad_arch = s.dir.join("bad_arch");
    std::fs::create_dir_all(&bad_arch).unwrap();
    let model = std::fs::read(s.ckpt.join("model.safetensors")).unwrap();
    let (from, to) = (br#"\"embed\":128"#, br#"\"embed\":0  "#);
    let at = model.windows(from.len()).position(|w| w == from).expect("the checkpoint's encoder_config names its embedding");
    let mut edited = model.clone();
    edited[at..at + from.len()].copy_from_slice(to);
    std::fs::write(bad_arch.join("model.safetensors"), edited).unwrap();
    // A table with a label column empty for one Id, and one sharing no Id with the store.
    let table = std::fs::read_to_string(&s.meta).unwrap();
    let mut lines = table.lines();
    let mut grouped = format!("{},Group\n", lines.next().unwrap());
    for (i, l) in lines.enumerate() {
        grouped.push_str(&format!("{l},{}\n", if i == 0 { "" } else { "g" }));
    }
    let grouped = file("grouped.csv", &grouped);
    let elsewhere = file("elsewhere.csv", "Id,Label\n100,0\n101,1\n");
    let long_label = file("long_label.csv", &format!("Id,Label\n1,{}\n", "x".repeat(100_000)));
    let scalar_section = file("scalar_section.yaml", "data: 5\nmodel:\n  name: cnn\n");
    let mut bomb = strings(&["--memory-budget", "50M"]);
    bomb.extend(inspect_meta(&workbook.display().to_string()));
    let one_label = s.dir.join("one_label.csv").display().to_string();
    std::fs::write(&one_label, (1..=8).map(|id| format!("{id},0\n")).fold("Id,Label\n".to_string(), |t, r| t + &r)).unwrap();
    let taken = s.dir.join("taken");
    std::fs::create_dir_all(taken.join("synthetic.csv")).unwrap();
    let taken_store = s.dir.join("taken_store");
    std::fs::create_dir_all(taken_store.join("synthetic.h5")).unwrap();
    let bench = |flag: &str, path: &str| -> Vec<String> { strings(&["bench", flag, path, "--test", "data", "--quick", "--save-dir", &s.dir.join("b").display().to_string()]) };
    // Save directories with something in the way of an output: refused before the suite runs.
    let blocked = s.dir.join("blocked");
    std::fs::create_dir_all(blocked.join("comprehensive_benchmark_results.json")).unwrap();
    let blocked_baselines = s.dir.join("blocked_baselines");
    std::fs::create_dir_all(&blocked_baselines).unwrap();
    std::fs::write(blocked_baselines.join("baselines"), "").unwrap();
    let mut resume = train_with(&s, &["model.name=cnn", "data.window_size=256", "data.batch_size=4"]);
    resume.extend(strings(&["--resume", &state_cut.display().to_string()]));
    // A pipe given as the store: opening it would wait for a writer forever.
    let fifo = s.dir.join("fifo.h5");
    assert!(Command::new("mkfifo").arg(&fifo).status().expect("mkfifo runs").success());
    let fifo = fifo.display().to_string();

    let cases: Vec<(Vec<String>, &str)> = vec![
        (strings(&["inspect", "--data", &fifo, "--meta", &s.meta]), "not a regular file (a pipe, socket or device)"),
        (strings(&["train", "--config", &root().join("configs/debug.yaml").display().to_string(), "--data", &fifo, "--meta", &s.meta]), "not a regular file"),
        // Memory a raised budget lets through and the machine (here `ulimit -v`) does not give.
        (
            strings(&["--memory-budget", "1000T", "generate", "--count", "1", "--length", "1000000000000", "--out", &s.dir.join("huge").display().to_string()]),
            "out of memory: a signal of 1000000000000 × 1 values",
        ),
        (strings(&["generate", "--count", "200000", "--length", "1", "--out", &s.dir.join("many").display().to_string()]), "200000 signals: a generated store holds at most 100000"),
        // Sizes a file declares.
        (tables("liar_contiguous.h5"), "800.0 GB"),
        (tables("liar_chunked.h5"), "800.0 GB"),
        (strings(&["inspect", "--data", &s.data, "--meta", &fixture("meta_far_cell.xlsx")]), "row 1048576"),
        // Config numbers.
        (train_with(&s, &["data.prefetch=1e12"]), "data.prefetch"),
        (train_with(&s, &["data.batch_size=1000000000"]), "data.batch_size"),
        (train_with(&s, &["data.batch_size=0"]), "data.batch_size"),
        (train_with(&s, &["data.batch_size=-3"]), "data.batch_size"),
        (train_with(&s, &["data.window_size=4000000000"]), "data.window_size"),
        (train_with(&s, &["data.num_window=1e15"]), "data.num_window"),
        (train_with(&s, &["data.num_workers=100000000"]), "data.num_workers"),
        (train_with(&s, &["model.d_model=1000000000"]), "model.d_model"),
        (train_with(&s, &["model.d_ff=1e12"]), "model.d_ff"),
        (train_with(&s, &["model.e_layers=1000000000"]), "model.e_layers"),
        (train_with(&s, &["model.num_patches=1000000000"]), "model.num_patches"),
        (train_with(&s, &["model.patch_size_L=1e12"]), "model.patch_size_L"),
        (train_with(&s, &["model.embedding_dim=1e12"]), "model.embedding_dim"),
        (train_with(&s, &["model.projection_dim=1000000000"]), "model.projection_dim"),
        (train_with(&s, &["trainer.max_steps=-1"]), "trainer.max_steps"),
        (train_with(&s, &["trainer.accumulate_grad_batches=1e15"]), "trainer.accumulate_grad_batches"),
        (train_with(&s, &["trainer.save_top_k=1e12"]), "trainer.save_top_k"),
        // Sizes under every cap whose product is past the memory limit: named by the keys.
        (train_with(&s, &["model.name=mlp-complex", "data.window_size=256", "data.batch_size=4", "model.embedding_dim=1000000"]), "model.embedding_dim = 1000000"),
        // CLI counts.
        (evaluate_with(&s, &s.ckpt, &["--windows", "100000000"]), "100000000 is more than 1024"),
        (evaluate_with(&s, &s.ckpt, &["--windows", "0"]), "--windows"),
        (strings(&["generate", "--length", "99999999999999", "--channels", "99999", "--out", &s.dir.join("g").display().to_string()]), "99999999999999"),
        (strings(&["generate", "--count", "1000000000", "--length", "1000000", "--out", &s.dir.join("g").display().to_string()]), "1000000000 signals: a generated store holds at most 100000"),
        (strings(&["bench", "--threads", "100000000", "--test", "hardware", "--save-dir", &s.dir.join("b").display().to_string()]), "--threads"),
        // Files without an end (read up to the memory budget, then named), and of the wrong shape.
        (small_budget(config("/dev/zero")), "/dev/zero"),
        (small_budget(inspect_meta("/dev/zero")), "/dev/zero"),
        (small_budget(evaluate_with(&s, Path::new("/dev/zero"), &[])), "/dev/zero"),
        (small_budget(bench("--targets", "/dev/zero")), "/dev/zero"),
        (config(&brackets), "nested 100000 deep"),
        (config(&not_a_mapping), "the top level must be a mapping"),
        (config(&empty), "holds no settings"),
        (inspect_meta(&dup_header), "repeats the header \"Label\""),
        // A cell of 100 kB is echoed as its start and end, not whole.
        (inspect_meta(&long_label), "bytes left out] … "),
        (bomb, "parts, unpacked"),
        (inspect_meta(&tiny_rate), "Sample_Rate 1e-20 Hz is outside"),
        (train_with(&s, &["task.temperature=1e-45"]), "temperature"),
        (train_with(&s, &["environment.seed=3", "trainer.seed=4"]), "environment.seed"),
        (train_with(&s, &["task.lr=1e6", "trainer.max_steps=1"]), "validation loss is NaN after step 1"),
        (train_with(&s, &["data.val_fraction=0.9"]), "data.val_fraction"),
        (train_with(&s, &["data.batch_size=1"]), "at least 2"),
        (train_with(&s, &["model.name=cnn", "data.input=spectrum", "data.window_size=256"]), "the 128 frequency bins of a window of 256 samples"),
        (bench("--targets", &negative_target), "not a finite number >= 0"),
        (bench("--targets", &twice_target), "duplicate"),
        (evaluate_with(&s, &s.ckpt, &["--label", "Name"]), "one class"),
        (evaluate_with(&s, &s.ckpt, &["--split", "bearing"]), "no label has two bearings"),
        (strings(&["evaluate", "--checkpoint", &s.ckpt.display().to_string(), "--data", &s.data, "--meta", &grouped, "--label", "Group"]), "grouped.csv is empty for Id"),
        (evaluate_with(&s, &s.ckpt, &["--label", "Lable"]), "has no column `Lable` (--label names the column to classify); its columns: Id,"),
        (evaluate_with(&s, &bad_arch, &[]), "encoder_config metadata is not a valid encoder"),
        (strings(&["train", "--config", &root().join("configs/debug.yaml").display().to_string(), "--data", &s.data, "--meta", &elsewhere]), "Id 100 is in"),
        (
            {
                let mut a = config(&scalar_section);
                a.extend(strings(&["--override", "data.window_size=256"]));
                a
            },
            "is not a mapping of keys",
        ),
        (strings(&["generate", "--name", "", "--count", "2", "--length", "100", "--out", &s.dir.join("named").display().to_string()]), "--name"),
        (strings(&["generate", "--name", "../up", "--count", "2", "--length", "100", "--out", &s.dir.join("named").display().to_string()]), "--name"),
        (bench("--targets", &nan_target), "data_processing.batch_preparation_ms` is NaN"),
        (bench("--reference", &negative_reference), "the value -5 for data.medium.B32.batch_prep_ms is not a time or rate"),
        (bench("--reference", &tiny_reference), "between 1e-9 and 1e12"),
        (bench("--baseline", "/no/such/baseline"), "/no/such/baseline"),
        (strings(&["bench", "--quick", "--test", "quality", "--save-dir", &blocked.display().to_string()]), "comprehensive_benchmark_results.json: in the way"),
        (strings(&["bench", "--quick", "--test", "data", "--save-baseline", "b1", "--save-dir", &blocked_baselines.display().to_string()]), "baselines: a file where the run writes a directory"),
        // A category that fails fails the run (it was exit 0 with the error in the report only).
        (strings(&["bench", "--quick", "--test", "quality", "--save-dir", &s.dir.join("bq").display().to_string(), "--data", &s.data, "--meta", &one_label]), "1 category failed: quality"),
        // A generated file whose name a directory holds: nothing is written (the store was
        // published, then the table failed; a failed rename left the store's temporary file).
        (strings(&["generate", "--count", "2", "--length", "100", "--out", &taken.display().to_string()]), "synthetic.csv"),
        (strings(&["generate", "--count", "2", "--length", "100", "--out", &taken_store.display().to_string()]), "synthetic.h5: I/O error: is a directory"),
        // Checkpoints cut short or from elsewhere.
        (evaluate_with(&s, &cut, &[]), "model.safetensors"),
        (evaluate_with(&s, &foreign, &[]), "model.safetensors"),
        (resume, "training_state.safetensors"),
    ];
    for (args, needle) in &cases {
        let o = run_limited(args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{args:?} should exit 1:\n{t}");
        assert!(t.contains(needle), "{args:?}: the message should name `{needle}`:\n{t}");
        for bad in ["panicked", "memory allocation", "capacity overflow", "RUST_BACKTRACE"] {
            assert!(!t.contains(bad), "{args:?}: {bad}:\n{t}");
        }
    }
    // Every training run above failed, the NaN one at its first validation: none wrote a
    // checkpoint or a ranking (the NaN run's used to be ranked best).
    let mut written = Vec::new();
    assert!(s.dir.join("hostile").is_dir(), "the failed runs made their save directory (else the walk below checks nothing)");
    let mut dirs = vec![s.dir.join("hostile")];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name.starts_with("last") || name.starts_with("best") || name == "top_k.json" {
                written.push(e.path());
            } else if e.path().is_dir() {
                dirs.push(e.path());
            }
        }
    }
    assert!(written.is_empty(), "failed runs wrote {written:?}");
    let left: Vec<_> = std::fs::read_dir(&taken).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("synthetic.csv")], "generate wrote nothing beside the directory in its way");
    let left: Vec<_> = std::fs::read_dir(&taken_store).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("synthetic.h5")], "generate wrote nothing beside the directory in its way");
    for (dir, only) in [(&blocked, "comprehensive_benchmark_results.json"), (&blocked_baselines, "baselines")] {
        let left: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from(only)], "bench measured or wrote nothing in {}", dir.display());
    }
}

#[test]
fn a_memory_budget_past_a_value_names_it_and_the_limit() {
    let s = setup();
    // 8 Ids × 2 regions × 1024 windows of 256 × 2 values with their embeddings: ~120 MB.
    let mut a = strings(&["--memory-budget", "4M"]);
    a.extend(evaluate_with(&s, &s.ckpt, &["--windows", "1024"]));
    let o = run_limited(&a);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(t.contains("--windows 1024") && t.contains("(--memory-budget 4M)"), "{t}");
}

#[test]
fn output_to_a_closed_pipe_or_a_full_disk_is_no_panic() {
    let s = setup();
    // A reader that stops early (`| head -1`): quiet success, as for any Unix filter.
    let table = s.dir.join("long.csv");
    let rows: String = (1..20_000).map(|i| format!("{i},0\n")).collect();
    std::fs::write(&table, format!("Id,Label\n{rows}")).unwrap();
    let mut child = bin().args(["inspect", "--data", &s.data, "--meta"]).arg(&table).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // the reader goes away before the first line
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(!text(&o).contains("panicked"), "{}", text(&o));
    // A full disk behind stdout: an error that says so, exit 1.
    if Path::new("/dev/full").exists() {
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = bin().args(["inspect", "--data", &s.data, "--meta", &s.meta]).stdout(full).output().unwrap();
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "{t}");
        assert!(t.contains("writing to standard output") && !t.contains("panicked"), "{t}");
        // And behind stderr, where the error itself goes: still exit 1, not a panic's 101 (whose
        // message could not be seen either).
        let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
        let o = bin().args(["inspect", "--data", "/no/such/store.h5", "--meta", &s.meta]).stderr(full).output().unwrap();
        assert_eq!(o.status.code(), Some(1), "{}", String::from_utf8_lossy(&o.stdout));
    } else {
        eprintln!("SKIPPED (no /dev/full): the full-disk case was not run");
    }
}
