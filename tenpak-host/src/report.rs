//! Human-readable tables for `pack` and `info`.

use std::fmt::Write;

use crate::artifact::Manifest;

fn group_size(params: &tenpak_api::Params) -> String {
    params.get("group_size").map_or("-".into(), |v| v.to_string())
}

/// One line per tensor: name, role, codec, group size, bits per weight, relative MSE, SNR.
pub fn tensor_table(manifest: &Manifest) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<48} {:<9} {:<14} {:>6} {:>7} {:>11} {:>8}",
        "tensor", "role", "codec", "group", "bits/w", "rel_mse", "snr_db"
    );
    for t in &manifest.tensors {
        let _ = writeln!(
            out,
            "{:<48} {:<9} {:<14} {:>6} {:>7.3} {:>11.3e} {:>8}",
            t.name,
            t.role.name(),
            t.codec.as_deref().unwrap_or("raw f32"),
            group_size(&t.params),
            t.bits_per_weight,
            t.rel_mse,
            t.snr_db.map_or("exact".into(), |s| format!("{s:.2}")),
        );
    }
    out
}

/// Totals, size ratios and (when present) perplexity.
pub fn summary(manifest: &Manifest) -> String {
    let t = &manifest.totals;
    let mut out = String::new();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let _ = writeln!(out, "source        {} ({}, {})", manifest.source.path, manifest.source.format, manifest.source.architecture);
    let _ = writeln!(out, "preset        {}", manifest.preset.name);
    let _ = writeln!(out, "weights       {} ({} in block linears)", t.weights, t.linear_weights);
    let _ = writeln!(
        out,
        "bits/weight   {:.4} all tensors, {:.4} block linears",
        t.bits_per_weight, t.linear_bits_per_weight
    );
    let _ = writeln!(
        out,
        "size          {:.2} MiB stored; source {:.2} MiB ({:.2}x smaller); fp16 {:.2} MiB ({:.2}x smaller)",
        mib(t.stored_bytes),
        mib(t.source_bytes),
        t.ratio_vs_source,
        mib(t.fp16_bytes),
        t.ratio_vs_fp16
    );
    if let Some(c) = &manifest.calibration {
        let _ = writeln!(
            out,
            "calibration   {} on {} windows of {} tokens of {} (sha256 {}…), {:.0} s",
            c.calibrators.join(", "),
            c.windows,
            c.ctx,
            c.text,
            &c.text_sha256[..c.text_sha256.len().min(12)],
            c.seconds
        );
    }
    if let Some(e) = &manifest.evaluation {
        let _ = writeln!(
            out,
            "perplexity    baseline {:.4}, compressed {:.4}, delta {:+.3}%\n  protocol    {}",
            e.baseline_ppl, e.compressed_ppl, e.delta_pct, e.protocol
        );
    }
    out
}

/// One line per exported tensor: GGUF name, type, bits per weight (artifact → GGUF), exactness.
pub fn gguf_tensor_table(report: &crate::export::GgufReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<28} {:<6} {:>8} {:>8}  {}",
        "tensor", "type", "art b/w", "gguf b/w", "cost"
    );
    for t in &report.tensors {
        let _ = writeln!(
            out,
            "{:<28} {:<6} {:>8.3} {:>8.3}  {}",
            t.name,
            crate::model::ggml::name_of(t.dtype),
            t.artifact_bits_per_weight,
            t.bits_per_weight(),
            if t.exact {
                "exact".to_owned()
            } else {
                format!("re-quantized, rel err {:.3e}", t.rel_err)
            },
        );
    }
    out
}

/// Types used, what was exact and what was re-quantized (the worst first), bits per weight, size.
pub fn gguf_summary(report: &crate::export::GgufReport) -> String {
    use std::collections::BTreeMap;
    let mut out = String::new();
    let mut types: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for t in &report.tensors {
        *types
            .entry((crate::model::ggml::name_of(t.dtype), t.exact))
            .or_default() += 1;
    }
    let list: Vec<String> = types
        .iter()
        .map(|((name, exact), n)| {
            format!(
                "{name} {n}{}",
                if *exact { " exact" } else { " re-quantized" }
            )
        })
        .collect();
    let _ = writeln!(out, "gguf types    {}", list.join(" · "));
    let mut requantized: Vec<&crate::export::TensorExport> =
        report.tensors.iter().filter(|t| !t.exact).collect();
    requantized.sort_by(|a, b| b.rel_err.total_cmp(&a.rel_err));
    if let Some(worst) = requantized.first() {
        let mean = requantized.iter().map(|t| t.rel_err).sum::<f64>() / requantized.len() as f64;
        let _ = writeln!(
            out,
            "re-quantized  {} of {} tensors (no exact GGUF form): mean rel err {mean:.3e}, worst {:.3e} ({})",
            requantized.len(),
            report.tensors.len(),
            worst.rel_err,
            worst.name
        );
    } else {
        let _ = writeln!(
            out,
            "exact         every tensor decodes to the artifact's values"
        );
    }
    let _ = writeln!(
        out,
        "bits/weight   {:.3} on the linears, {:.3} overall (artifact: {:.3} / {:.3})",
        report.bits_per_weight(|t| t.linear),
        report.bits_per_weight(|_| true),
        artifact_bits(report, true),
        artifact_bits(report, false)
    );
    let _ = writeln!(
        out,
        "file          {:.1} MiB",
        report.file_bytes as f64 / (1 << 20) as f64
    );
    out
}

fn artifact_bits(report: &crate::export::GgufReport, linear_only: bool) -> f64 {
    let (bits, n) = report
        .tensors
        .iter()
        .filter(|t| !linear_only || t.linear)
        .fold((0.0, 0usize), |(b, n), t| {
            (b + t.artifact_bits_per_weight * t.numel as f64, n + t.numel)
        });
    bits / n.max(1) as f64
}

/// What a compressed-tensors export packed, its cost, and its size; with `per_tensor`, a line
/// per tensor first.
pub fn ct_summary(report: &crate::export::CtReport, per_tensor: bool) -> String {
    let mut out = String::new();
    if per_tensor {
        let _ = writeln!(out, "{:<48} {:<8} {:>11}", "tensor", "stored", "rel err");
        for t in &report.tensors {
            let stored = match (t.quantized, t.exact) {
                (true, true) => "int4 =",
                (true, false) => "int4",
                _ => "f16",
            };
            let _ = writeln!(out, "{:<48} {:<8} {:>11.3e}", t.name, stored, t.rel_err);
        }
        let _ = writeln!(out);
    }
    let packed: Vec<&crate::export::compressed_tensors::CtTensor> = report.tensors.iter().filter(|t| t.quantized).collect();
    let dense_linears = report.tensors.iter().filter(|t| t.linear && !t.quantized).count();
    let (bits, n) = report.tensors.iter().filter(|t| t.linear && t.name != "lm_head.weight").fold((0u64, 0usize), |(b, n), t| (b + t.bits, n + t.numel));
    let mean = packed.iter().map(|t| t.rel_err).sum::<f64>() / packed.len().max(1) as f64;
    let worst = packed.iter().max_by(|a, b| a.rel_err.total_cmp(&b.rel_err));
    let _ = writeln!(
        out,
        "int4 groups   {} linears packed (W4A16 asymmetric, groups of {}), {} linears kept f16",
        packed.len(),
        report.group_size,
        dense_linears
    );
    let exact = packed.iter().filter(|t| t.exact).count();
    if exact > 0 {
        let _ = writeln!(out, "exact         {exact} of {} packed linears carry the artifact's own codes, scales and zero points (\"int4 =\")", packed.len());
    }
    if let Some(worst) = worst {
        let what = if exact == packed.len() { "f16 rounding" } else { "re-fitted" };
        let _ = writeln!(out, "{what:<13} mean rel err {mean:.3e} against the artifact's decode, worst {:.3e} ({})", worst.rel_err, worst.name);
    }
    let _ = writeln!(out, "bits/weight   {:.3} on the block linears", bits as f64 / n.max(1) as f64);
    let _ = writeln!(out, "file          {:.1} MiB (model.safetensors)", report.file_bytes as f64 / (1 << 20) as f64);
    out
}
