//! `tenpak sweep` end to end: a tiny sweep at two targets beside two GGUFs and an unreadable
//! one, with no font for the PNG.

use std::path::Path;
use std::process::Command;

use candle_core::quantized::GgmlDType;
use tenpak_pack::sweep::plot::X_LABEL;
use tenpak_pack::sweep::{Source, read_csv};
use tenpak_testkit as util;
use util::{budget_preset, tiny, tiny_llama_config, tiny_llama_tensors, write_tiny_gguf, write_tiny_gguf_as};

fn sweep_cli(args: &[&str], font: &Path, cache: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tenpak"))
        .arg("sweep")
        .args(args)
        .env("TENPAK_FONT", font)
        .env("TENPAK_CACHE_DIR", cache)
        .env_remove("TENPAK_PROGRESS")
        .output()
        .expect("run tenpak")
}

#[test]
fn a_tiny_sweep_writes_its_table_and_svg_and_fails_the_png_without_a_font() {
    let t = tiny(71);
    let dir = tempfile::tempdir().unwrap();
    let preset = dir.path().join("tiny-budget.toml");
    std::fs::write(&preset, budget_preset("target_bpw = 6.0", "output")).unwrap();
    // Two GGUFs to compare with (their own tokenizer; Q8_0 linears, and f32), and one that is not a GGUF.
    let ggufs = dir.path().join("ggufs");
    std::fs::create_dir(&ggufs).unwrap();
    let config = tiny_llama_config(64, 128, 1, 300);
    let tensors = tiny_llama_tensors(&config, 5);
    let q8 = |name: &str| if name.ends_with("proj.weight") { GgmlDType::Q8_0 } else { GgmlDType::F32 };
    write_tiny_gguf_as(&ggufs.join("tiny-q8_0.gguf"), "llama", &config, &tensors, "smollm", &q8);
    write_tiny_gguf(&ggufs.join("tiny-f32.gguf"), "llama", &config, &tensors, "smollm", None);
    std::fs::write(ggufs.join("broken.gguf"), b"not a gguf").unwrap();
    let out = dir.path().join("sweep");
    let missing_font = dir.path().join("no-such-font.ttf");
    let (model, calib, eval) = (t.model.to_str().unwrap(), t.calib.to_str().unwrap(), t.eval.to_str().unwrap());
    let args = [
        model,
        "--bpw",
        "9,5",
        "--preset",
        preset.to_str().unwrap(),
        "--with-llamacpp",
        ggufs.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
        "--calib",
        calib,
        "--eval",
        eval,
    ];
    let started = std::time::Instant::now();
    let run = sweep_cli(&args, &missing_font, dir.path());
    let (stdout, stderr) = (String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("tiny sweep: {:.1} s", started.elapsed().as_secs_f64());

    // The PNG fails, naming the font path and the package; the table and the SVG are written.
    assert_eq!(run.status.code(), Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains(missing_font.to_str().unwrap()) && stderr.contains("fonts-dejavu-core"), "{stderr}");
    assert!(!out.join("sweep.png").exists());
    // Progress across the sweep (plain lines off a terminal, one per 2 s plus each job's last):
    // the first and the last point show, and the unreadable file is named.
    for point in ["point 1/4 bpw-9:", "point 4/4 tiny-q8_0: head"] {
        assert!(stderr.contains(point), "no `{point}` in:\n{stderr}");
    }
    assert!(stderr.contains("skipping") && stderr.contains("broken.gguf"), "{stderr}");

    let rows = read_csv(&out.join("sweep.csv")).unwrap();
    let labels: Vec<&str> = rows.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["bpw-9", "bpw-5", "tiny-f32", "tiny-q8_0"]);
    for line in &labels {
        assert!(stdout.contains(line), "no line for {line} in:\n{stdout}");
    }
    let baseline = rows[0].baseline_ppl.expect("TenPak rows carry the baseline");
    for r in &rows[..2] {
        assert_eq!(r.source, Source::Tenpak);
        let target = r.target_bpw.unwrap();
        assert!(r.bpw_linears <= target + 1e-4 && r.bpw_linears > 4.0, "{r:?}");
        assert!(out.join(format!("bpw-{target}.tenpak")).join("manifest.json").is_file());
        assert!((r.baseline_ppl.unwrap() - baseline).abs() < 1e-3 && r.ppl.is_finite(), "{r:?}");
    }
    // The first point scores the source; the second records that figure instead of running the
    // source over the windows again, and its protocol says so.
    let protocol = |label: &str| {
        let text = std::fs::read_to_string(out.join(format!("{label}.tenpak")).join("manifest.json")).unwrap();
        let manifest: serde_json::Value = serde_json::from_str(&text).unwrap();
        (manifest["evaluation"]["protocol"].as_str().unwrap().to_owned(), manifest["evaluation"]["baseline_ppl"].as_f64().unwrap())
    };
    let ((first, first_baseline), (second, second_baseline)) = (protocol("bpw-9"), protocol("bpw-5"));
    assert!(!first.contains("baseline reused") && second.contains("baseline reused"), "{first}\n{second}");
    assert_eq!(first_baseline.to_bits(), second_baseline.to_bits());
    let (f32_row, q8_row) = (&rows[2], &rows[3]);
    assert_eq!((f32_row.source, f32_row.target_bpw, f32_row.bpw_linears), (Source::LlamaCpp, None, 32.0));
    assert_eq!(q8_row.bpw_linears, 8.5);
    assert!((q8_row.baseline_ppl.unwrap() - baseline).abs() < 1e-3);
    let delta = 100.0 * (q8_row.ppl - baseline) / baseline;
    assert!((q8_row.delta_pct.unwrap() - delta).abs() < 1e-2, "{q8_row:?}");

    let svg = std::fs::read_to_string(out.join("sweep.svg")).unwrap();
    for text in ["bpw-9", "bpw-5", "tiny-q8_0", "tiny-f32", X_LABEL, "3 windows × 32 tokens", "calibration: 6 windows × 32 tokens"] {
        assert!(svg.contains(text), "the SVG lacks `{text}`");
    }

    // Again without --force: refused before any work, naming the artifacts.
    let again = sweep_cli(&args, &missing_font, dir.path());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(again.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bpw-9.tenpak") && stderr.contains("--force"), "{stderr}");
}
