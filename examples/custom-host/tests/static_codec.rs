//! The custom host really has the third-party codec, from its crate (not from a library).

use std::process::Command;

#[test]
fn nf4_is_listed_with_its_crate_as_the_source() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenpak-custom-host")).arg("codecs").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().find(|l| l.starts_with("nf4 ")).unwrap_or_else(|| panic!("no nf4 in:\n{stdout}"));
    assert!(line.ends_with("[tenpak-codec-nf4 0.1.0]"), "{line}");
}

#[test]
fn usage_errors_exit_non_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_tenpak-custom-host")).arg("frobnicate").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage"));
}
