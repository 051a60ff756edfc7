//! An export for people: the tables `tenpak export` prints.

use std::fmt::Write;

/// One line per exported tensor: GGUF name, type, bits per weight (artifact → GGUF), exactness.
pub fn gguf_tensor_table(report: &crate::GgufReport) -> String {
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
            t.dtype.name(),
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
pub fn gguf_summary(report: &crate::GgufReport) -> String {
    use std::collections::BTreeMap;
    let mut out = String::new();
    let mut types: BTreeMap<(&str, bool), usize> = BTreeMap::new();
    for t in &report.tensors {
        *types
            .entry((t.dtype.name(), t.exact))
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
    let mut requantized: Vec<&crate::TensorExport> =
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

fn artifact_bits(report: &crate::GgufReport, linear_only: bool) -> f64 {
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
pub fn ct_summary(report: &crate::CtReport, per_tensor: bool) -> String {
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
    let packed: Vec<&crate::compressed_tensors::CtTensor> = report.tensors.iter().filter(|t| t.quantized).collect();
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
