//! The command line's contract: errors are one line naming the file, with exit code 1 or 2.

use std::path::PathBuf;

use tenpak_testkit as util;

/// Corrupt files on the command line, with RUST_BACKTRACE=1: one line on stderr naming the file,
/// exit code 1 or 2, never a panic (101) or a library's backtrace.
#[test]
fn corrupt_inputs_give_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let real = std::fs::read(util::real_gguf()).unwrap();
    let mut cases: Vec<(PathBuf, &str)> = Vec::new();
    for (name, len) in [("header-cut.gguf", 100), ("data-cut.gguf", 3_000_000), ("empty.gguf", 0)] {
        let path = tmp.path().join(name);
        std::fs::write(&path, &real[..len]).unwrap();
        cases.push((path, "eval"));
    }
    let garbage = tmp.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a header").unwrap();
    cases.push((garbage, "eval"));
    let artifact = tmp.path().join("broken.tenpak");
    std::fs::create_dir_all(&artifact).unwrap();
    std::fs::write(artifact.join("manifest.json"), br#"{"format": "tenpak", "format_version": 1, "shards": [7]}"#).unwrap();
    cases.push((artifact.clone(), "info"));
    cases.push((artifact, "eval"));
    let text = util::asset("eval.txt");
    for (path, command) in cases {
        let mut cli = std::process::Command::new(env!("CARGO_BIN_EXE_tenpak"));
        cli.arg(command).arg(&path).env("RUST_BACKTRACE", "1");
        if command == "eval" {
            cli.arg("--text").arg(&text).args(["--samples", "1"]);
        }
        let out = cli.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        assert!(matches!(code, Some(1 | 2)), "{command} {}: exit {code:?}\n{stderr}", path.display());
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{command} {}: one line, got:\n{stderr}", path.display());
        assert!(lines[0].starts_with("error: ") && lines[0].contains(path.file_name().unwrap().to_str().unwrap()), "{stderr}");
    }
}
