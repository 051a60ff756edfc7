//! `tenpak sweep`'s parts: the figure (SVG with every label, PNG of the asked size), bits per
//! weight over a GGUF's block linears against a hand count, the CSV round trip. (A tiny sweep end
//! to end through the CLI is in the `tenpak` crate's tests.)

use tenpak_testkit as util;


use candle_core::quantized::GgmlDType;
use tenpak_pack::sweep::plot::{X_LABEL, Y_LABEL};
use tenpak_pack::sweep::{
    CSV_HEADER, PlotOptions, Source, SweepRow, csv_text, ggml_bits_per_weight, gguf_linear_bits, is_gguf_block_linear, parse_csv,
    read_csv, write_csv, write_png, write_svg,
};
use util::{tiny_llama_config, tiny_llama_tensors, write_tiny_gguf_as};

fn row(source: Source, label: &str, target: Option<f64>, bpw: f64, ppl: f64, baseline: Option<f64>) -> SweepRow {
    SweepRow {
        source,
        label: label.to_owned(),
        target_bpw: target,
        bpw_linears: bpw,
        baseline_ppl: baseline,
        ppl,
        delta_pct: baseline.map(|b| 100.0 * (ppl - b) / b),
        seconds: 12.34,
    }
}

fn made_up_rows() -> Vec<SweepRow> {
    let b = Some(17.25);
    vec![
        row(Source::Tenpak, "bpw-4", Some(4.0), 3.98, 18.9, b),
        row(Source::Tenpak, "bpw-3", Some(3.0), 2.99, 23.4, b),
        row(Source::Tenpak, "bpw-5", Some(5.0), 4.97, 17.7, b),
        row(Source::LlamaCpp, "smollm2-Q4_K_M-imat", None, 5.5344, 17.9, b),
        row(Source::LlamaCpp, "smollm2-Q3_K_S-imat", None, 4.2344, 19.8, b),
        row(Source::LlamaCpp, "smollm2-f32", None, 32.0, 17.25, b),
    ]
}

/// Width and height from a PNG's IHDR chunk, after checking the signature.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(bytes.len() > 24, "{} bytes: too short for a PNG", bytes.len());
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "not a PNG signature");
    assert_eq!(&bytes[12..16], b"IHDR", "the first chunk is not IHDR");
    let be = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn the_figure_has_its_axes_labels_and_every_point_in_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    let rows = made_up_rows();
    let options = PlotOptions {
        title: "tiny: perplexity against bits per weight".into(),
        caption: "PPL on eval.txt: 64 windows × 512 tokens (TenPak protocol); calibration: 32 windows × 512 tokens".into(),
        width: 900,
        height: 560,
    };
    let svg_path = dir.path().join("sweep.svg");
    write_svg(&rows, &options, &svg_path).unwrap();
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg") && svg.len() > 1000, "{} bytes: {}", svg.len(), &svg[..svg.len().min(200)]);
    for text in [X_LABEL, Y_LABEL, &options.title, &options.caption, "baseline 17.250"] {
        assert!(svg.contains(text), "the SVG lacks `{text}`");
    }
    for r in &rows {
        assert!(svg.contains(&r.label), "the SVG lacks the label `{}`", r.label);
    }

    let png_path = dir.path().join("sweep.png");
    write_png(&rows, &options, &png_path).unwrap();
    let png = std::fs::read(&png_path).unwrap();
    assert_eq!(png_size(&png), (options.width, options.height));

    // Nothing finite to plot is refused, not drawn empty.
    let nan = [row(Source::Tenpak, "bpw-4", Some(4.0), 4.0, f64::NAN, None)];
    let e = write_svg(&nan, &options, &dir.path().join("nan.svg")).unwrap_err().to_string();
    assert!(e.contains("nothing to plot"), "{e}");
}

#[test]
fn gguf_bits_per_weight_count_the_block_linears_from_their_types() {
    // Block sizes and bytes from ggml's block layouts (ggml-common.h), by hand.
    for (dtype, bits) in [
        (GgmlDType::F32, 32.0),
        (GgmlDType::F16, 16.0),
        (GgmlDType::Q4_0, 18.0 * 8.0 / 32.0),
        (GgmlDType::Q4_1, 20.0 * 8.0 / 32.0),
        (GgmlDType::Q5_0, 22.0 * 8.0 / 32.0),
        (GgmlDType::Q8_0, 34.0 * 8.0 / 32.0),
        (GgmlDType::Q2K, 84.0 * 8.0 / 256.0),
        (GgmlDType::Q4K, 144.0 * 8.0 / 256.0),
        (GgmlDType::Q6K, 210.0 * 8.0 / 256.0),
    ] {
        assert_eq!(ggml_bits_per_weight(dtype), bits, "{dtype:?}");
    }
    for (name, linear) in [
        ("blk.0.attn_q.weight", true),
        ("blk.12.attn_output.weight", true),
        ("blk.3.ffn_down.weight", true),
        ("blk.0.attn_q.bias", false),
        ("blk.0.attn_norm.weight", false),
        ("blk.x.ffn_up.weight", false),
        ("token_embd.weight", false),
        ("output.weight", false),
    ] {
        assert_eq!(is_gguf_block_linear(name), linear, "{name}");
    }

    // Two blocks, hidden 256 (4 heads of 64, 2 kv heads), intermediate 512: every k-quant fits.
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_llama_config(256, 512, 2, 300);
    let tensors = tiny_llama_tensors(&config, 3);
    let dtype = |name: &str| match name {
        n if n.contains("q_proj") => GgmlDType::Q4K,
        n if n.contains("k_proj") => GgmlDType::Q6K,
        n if n.contains("v_proj") => GgmlDType::Q8_0,
        n if n.contains("o_proj") => GgmlDType::Q5_0,
        n if n.contains("gate_proj") => GgmlDType::Q4_1,
        n if n.contains("up_proj") => GgmlDType::F16,
        n if n.contains("down_proj") => GgmlDType::Q2K,
        n if n.contains("embed") => GgmlDType::Q8_0,
        _ => GgmlDType::F32,
    };
    let path = dir.path().join("mixed.gguf");
    write_tiny_gguf_as(&path, "llama", &config, &tensors, "smollm", &dtype);
    let counted = gguf_linear_bits(&path).unwrap();

    // Per block: q 256×256 at 144 bytes per 256, k 128×256 at 210/256, v 128×256 at 34/32,
    // o 256×256 at 22/32, gate 512×256 at 20/32, up 512×256 at 2 bytes, down 256×512 at 84/256.
    let per_block_bits = 65536 / 256 * 144 * 8
        + 32768 / 256 * 210 * 8
        + 32768 / 32 * 34 * 8
        + 65536 / 32 * 22 * 8
        + 131072 / 32 * 20 * 8
        + 131072 * 16
        + 131072 / 256 * 84 * 8;
    let per_block_weights = 65536 + 32768 + 32768 + 65536 + 3 * 131072;
    assert_eq!(counted.weights, 2 * per_block_weights);
    assert_eq!(counted.bits, 2 * per_block_bits);
    assert_eq!(counted.bits_per_weight(), per_block_bits as f64 / per_block_weights as f64);
    let types: Vec<(&str, u64)> = counted.types.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(
        types,
        [("F16", 262144), ("Q2_K", 262144), ("Q4_1", 262144), ("Q4_K", 131072), ("Q5_0", 131072), ("Q6_K", 65536), ("Q8_0", 65536)]
    );

    // The real model: every linear is Q4_1, 5 bits per weight (its Q8_0 embedding is not a linear).
    let real = gguf_linear_bits(&util::real_gguf()).unwrap();
    assert_eq!(real.bits_per_weight(), 5.0);
    assert_eq!(real.types.keys().collect::<Vec<_>>(), ["Q4_1"]);

    let e = gguf_linear_bits(&dir.path().join("absent.gguf")).unwrap_err().to_string();
    assert!(e.contains("absent.gguf"), "{e}");
}

#[test]
fn the_csv_round_trips_one_row_per_point() {
    let mut rows = made_up_rows();
    rows.push(row(Source::LlamaCpp, "odd, \"quoted\" name", None, 4.5, 20.125, None));
    let text = csv_text(&rows);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert_eq!(lines.len(), rows.len() + 1);
    assert!(lines[1].starts_with("tenpak,bpw-4,4,3.9800,17.2500,18.9000,"), "{}", lines[1]);
    assert!(lines[7].starts_with("llama.cpp,\"odd, \"\"quoted\"\" name\",,4.5000,,20.1250,,"), "{}", lines[7]);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sweep.csv");
    write_csv(&path, &rows).unwrap();
    let back = read_csv(&path).unwrap();
    assert_eq!(back.len(), rows.len());
    let close = |a: Option<f64>, b: Option<f64>, digits: i32| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 0.5 * 10f64.powi(-digits),
        (a, b) => a.is_none() && b.is_none(),
    };
    for (a, b) in rows.iter().zip(&back) {
        assert_eq!((a.source, &a.label, a.target_bpw), (b.source, &b.label, b.target_bpw));
        assert!(close(Some(a.bpw_linears), Some(b.bpw_linears), 4) && close(Some(a.ppl), Some(b.ppl), 4), "{a:?} vs {b:?}");
        assert!(close(a.baseline_ppl, b.baseline_ppl, 4) && close(a.delta_pct, b.delta_pct, 3), "{a:?} vs {b:?}");
        assert!(close(Some(a.seconds), Some(b.seconds), 1), "{a:?} vs {b:?}");
    }

    let bad = format!("{CSV_HEADER}\ntenpak,bpw-4,4,x,,18.9,,1.0\n");
    let e = parse_csv(&bad, "sweep.csv").unwrap_err().to_string();
    assert!(e.contains("sweep.csv line 2") && e.contains("bpw_linears") && e.contains("`x`"), "{e}");
    let e = parse_csv("source,label\n", "sweep.csv").unwrap_err().to_string();
    assert!(e.contains("header"), "{e}");
}
