//! Arbitrary bytes as a YAML run configuration (and as one `--override`): a validated config or an
//! error naming a key, never a crash; a config that loads survives its own round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    limits::set_budget(256 << 20, "the fuzz target's 256 MiB");
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cfg) = train::Config::from_yaml(text, &[]) {
        let again = train::Config::from_yaml(&cfg.to_yaml(), &[]).expect("a loaded config reloads from its own YAML");
        assert_eq!(again, cfg, "round trip");
        let _ = cfg.encoder(2).init(engine::CpuDevice::new(), 2, 0);
    }
    let line = text.lines().next().unwrap_or("");
    let _ = train::Config::from_yaml("", &[line.to_string()]);
});
