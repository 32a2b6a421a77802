//! A file whose size the file system does not know (a device, a pipe) is read only up to the
//! memory budget: a separate test binary, so that the small budget set here is the process's.

#[test]
#[cfg(unix)]
fn an_endless_file_stops_at_the_budget_with_an_error_naming_it() {
    assert!(limits::set_budget(1 << 20, "a budget of 1 MiB set by the test"), "the budget was already fixed");
    let path = std::path::Path::new("/dev/zero");
    let e = files::read(path).expect_err("/dev/zero has no end").to_string();
    assert!(e.contains("/dev/zero") && e.contains("1 MiB set by the test"), "{e}");
    // A regular file under the budget still reads whole.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("small");
    std::fs::write(&p, vec![7u8; 300_000]).unwrap();
    assert_eq!(files::read(&p).unwrap(), vec![7u8; 300_000]);
}
