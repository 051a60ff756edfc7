//! A manifest for people: the tables `tenpak pack` and `tenpak info` print.

use std::fmt::Write;

use crate::artifact::{EvaluationRecord, Manifest, TaskScore};

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
        out.push_str(&evaluation(e));
    }
    out
}

/// The evaluation record as `tenpak info`, `pack` and `eval --base` print it: both perplexities,
/// then the divergence figures when present, then the protocol.
pub fn evaluation(e: &EvaluationRecord) -> String {
    let mut out = format!("perplexity    baseline {:.4}, compressed {:.4}, delta {:+.3}%\n", e.baseline_ppl, e.compressed_ppl, e.delta_pct);
    if let Some(d) = &e.divergence {
        let _ = writeln!(
            out,
            "KL divergence mean {:.6} ± {:.6}, median {:.6}, p90 {:.6}, p99 {:.6}, p99.9 {:.6}, max {:.6} (nats/token, {} tokens)",
            d.kld_mean, d.kld_mean_err, d.kld_median, d.kld_p90, d.kld_p99, d.kld_p999, d.kld_max, d.tokens
        );
        let _ = writeln!(
            out,
            "same top      {:.3} ± {:.3} % of tokens\nΔp RMS        {:.3} ± {:.3} % (correct token)\nPPL ratio     {:.6} ± {:.6}",
            d.same_top_pct, d.same_top_err_pct, d.dp_rms_pct, d.dp_rms_err_pct, d.ppl_ratio, d.ppl_ratio_err
        );
    }
    if !e.tasks.is_empty() {
        let mut models = vec![("compressed", e.tasks.as_slice())];
        if !e.baseline_tasks.is_empty() {
            models.insert(0, ("baseline", e.baseline_tasks.as_slice()));
        }
        out.push_str(&task_table(&models));
    }
    let _ = writeln!(out, "  protocol    {}", e.protocol);
    out
}

/// Multiple-choice accuracies side by side, one column pair (acc, acc_norm, ± one standard
/// error, in %) per labelled model, one row per task in the first model's order.
pub fn task_table(models: &[(&str, &[TaskScore])]) -> String {
    let mut out = format!("{:<15} {:>6}", "task", "items");
    for (label, _) in models {
        let _ = write!(out, "  {:>20}  {:>20}", format!("acc % {label}"), format!("acc_norm % {label}"));
    }
    out.push('\n');
    let Some((_, first)) = models.first() else { return out };
    let pct = |v: Option<f64>, e: Option<f64>| match (v, e) {
        (Some(v), Some(e)) => format!("{:.2} ± {:.2}", 100.0 * v, 100.0 * e),
        _ => "-".to_owned(),
    };
    for row in first.iter() {
        let _ = write!(out, "{:<15} {:>6}", row.task, row.items);
        for (_, scores) in models {
            match scores.iter().find(|s| s.task == row.task) {
                Some(s) => {
                    let _ = write!(out, "  {:>20}  {:>20}", pct(Some(s.acc), Some(s.acc_err)), pct(s.acc_norm, s.acc_norm_err));
                }
                None => {
                    let _ = write!(out, "  {:>20}  {:>20}", "-", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}
