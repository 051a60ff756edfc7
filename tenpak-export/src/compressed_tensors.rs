//! `tenpak export --format compressed-tensors`: an artifact as a Hugging Face directory in the
//! `compressed-tensors` "pack-quantized" layout (W4A16, asymmetric groups), which vLLM serves
//! with its int4 kernels and transformers loads through the `compressed-tensors` package.
//!
//! Per quantized linear `P` (weight `[out, in]`, groups of `g` along `in`):
//!
//! | tensor | dtype | shape | content |
//! |---|---|---|---|
//! | `P.weight_packed` | I32 | `[out, in/8]` | `q + 8` in 4-bit nibbles, column `8j + i` in bits `4i..4i+3` of word `j` |
//! | `P.weight_scale` | F16 | `[out, in/g]` | group scale `s` |
//! | `P.weight_zero_point` | I32 | `[out/8, in/g]` | `zp + 8`, packed the same way along `out` |
//! | `P.weight_shape` | I64 | `[2]` | `[out, in]` |
//!
//! with `q, zp ∈ [−8, 7]` and `W = (q − zp) · s` computed in f16. Everything else (embeddings,
//! `lm_head`, norms, biases, and linears whose shapes the format cannot hold: `in` not a multiple
//! of `g`, or `out` not a multiple of 8) is stored dense in f16, the linears among them listed in
//! `ignore`.
//!
//! The format's zero point is an integer and its scale f16. A tensor whose codec offers its
//! encoding as such groups ([`tenpak_api::Codec::native`]; of the built-ins, `int4_awq` with
//! `zero_point = "integer"`: 4-bit codes, `alpha = 0`, no outliers, no incoherence, the export's
//! group size) is carried over exactly: its codes, scales and zero points are copied, not
//! re-fitted (the format then rounds each `(q − zp)·s` to f16, which the
//! reported error includes). Every other grid (a float minimum per group, column scales,
//! double-quantized headers, other codecs) is re-fitted group by group to the artifact's decoded
//! values (scale searched around the group's range, the zero point and codes chosen for it, the
//! error measured in the format's own f16 arithmetic). The cost ‖Ŵ_ct − Ŵ‖² / ‖Ŵ‖² is reported
//! per tensor either way.

use std::collections::BTreeMap;
use std::path::Path;

use tenpak_error::{Context, Result, bail};
use half::f16;
use rayon::prelude::*;
use serde_json::json;
use tenpak_api::DType;
use tenpak_api::registry::Registry;
use tenpak_api::{NativeForm, NativeTarget};

use tenpak_pack::artifact::{Artifact, TensorRecord};
use tenpak_pack::artifact::safetensors_writer::ShardWriter;
use tenpak_pack::observe::{PackObserver, Stage, Tracker};

/// Group sizes vLLM's int4 kernels take for asymmetric weights.
pub const GROUP_SIZES: [usize; 3] = [32, 64, 128];

/// Options of a compressed-tensors export.
#[derive(Clone, Debug, Default)]
pub struct CtOptions {
    /// Group size (32, 64 or 128); default: the artifact's linears' own when it is one of these,
    /// else 32.
    pub group_size: Option<usize>,
    /// Replace an existing output directory.
    pub force: bool,
}

/// How one tensor was written.
#[derive(Clone, Debug)]
pub struct CtTensor {
    /// Hugging Face name of the weight.
    pub name: String,
    /// True if packed as int4; false if stored dense (f16).
    pub quantized: bool,
    /// True if the artifact's own codes, scales and zero points were copied (no re-fit).
    pub exact: bool,
    /// ‖Ŵ_ct − Ŵ‖² / ‖Ŵ‖² against the artifact's decode.
    pub rel_err: f64,
    /// Elements.
    pub numel: usize,
    /// True for the block linears.
    pub linear: bool,
    /// Stored bits (all of its tensors).
    pub bits: u64,
}

/// What a compressed-tensors export wrote.
#[derive(Clone, Debug)]
pub struct CtReport {
    /// Group size used.
    pub group_size: usize,
    /// Per tensor, in artifact order.
    pub tensors: Vec<CtTensor>,
    /// Size of `model.safetensors`.
    pub file_bytes: u64,
}

/// Write `artifact` to the directory `out` in the compressed-tensors layout.
pub fn export_compressed_tensors(
    artifact: &Artifact,
    registry: &Registry,
    out: &Path,
    options: &CtOptions,
    observer: &dyn PackObserver,
) -> Result<CtReport> {
    if out.exists() && !options.force {
        bail!("{} already exists (pass --force to replace it)", out.display());
    }
    let manifest = artifact.manifest();
    let group_size = match options.group_size {
        Some(g) if GROUP_SIZES.contains(&g) => g,
        Some(g) => bail!("group size {g}: compressed-tensors int4 kernels take {GROUP_SIZES:?}"),
        None => {
            let own = manifest
                .tensors
                .iter()
                .filter(|t| t.role.is_block_linear())
                .filter_map(|t| t.params.get("group_size").and_then(|v| v.to_string().parse::<usize>().ok()))
                .next();
            own.filter(|g| GROUP_SIZES.contains(g)).unwrap_or(32)
        }
    };
    let config_path = artifact.dir().join("config.json");
    let config_text = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_str(&config_text).with_context(|| format!("{}: invalid JSON", config_path.display()))?;

    let tmp = tenpak_pack::artifact::temp_sibling(out)?;
    let result = (|| -> Result<CtReport> {
        std::fs::create_dir_all(&tmp)?;
        let mut shard = ShardWriter::create(&tmp.join("model.safetensors"))?;
        let tracker = Tracker::new(observer, manifest.tensors.len() as u64);
        let mut tensors = Vec::with_capacity(manifest.tensors.len());
        let mut ignore = Vec::new();
        for record in &manifest.tensors {
            tracker.begin(Stage::Export, None, &record.name)?;
            let values = artifact.load_f32(&record.name, registry)?;
            let linear = record.role.is_block_linear() || record.name == "lm_head.weight";
            let packable = record.role.is_block_linear()
                && record.shape.len() == 2
                && record.shape[1].is_multiple_of(group_size)
                && record.shape[0].is_multiple_of(8);
            let entry = if packable {
                let (rows, cols) = (record.shape[0], record.shape[1]);
                let exact = native_form(artifact, registry, record, &values, group_size)?;
                let is_exact = exact.is_some();
                let packed = match exact {
                    Some(packed) => packed,
                    None => pack_groups(&values, rows, cols, group_size),
                };
                let prefix = record.name.strip_suffix(".weight").context("a linear weight's name ends in .weight")?;
                let le = |words: &[i32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
                shard.add(&format!("{prefix}.weight_packed"), DType::I32, &[rows, cols / 8], &le(&packed.weight))?;
                let scales: Vec<u8> = packed.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
                shard.add(&format!("{prefix}.weight_scale"), DType::F16, &[rows, cols / group_size], &scales)?;
                shard.add(&format!("{prefix}.weight_zero_point"), DType::I32, &[rows / 8, cols / group_size], &le(&packed.zero_points))?;
                let shape: Vec<u8> = [rows as i64, cols as i64].iter().flat_map(|v| v.to_le_bytes()).collect();
                shard.add_as(&format!("{prefix}.weight_shape"), "I64", 8, &[2], &shape)?;
                let bits = 8 * (4 * packed.weight.len() + 2 * packed.scales.len() + 4 * packed.zero_points.len() + 16) as u64;
                CtTensor { name: record.name.clone(), quantized: true, exact: is_exact, rel_err: packed.rel_err, numel: values.len(), linear, bits }
            } else {
                let dense: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();
                let bytes: Vec<u8> = dense.iter().flat_map(|v| v.to_le_bytes()).collect();
                shard.add(&record.name, DType::F16, &record.shape, &bytes)?;
                if linear {
                    ignore.push(record.name.trim_end_matches(".weight").to_owned());
                }
                let rounded: Vec<f32> = dense.iter().map(|v| v.to_f32()).collect();
                let (rel_err, _) = tenpak_pack::encode::reconstruction_error(&values, &rounded);
                CtTensor { name: record.name.clone(), quantized: false, exact: false, rel_err, numel: values.len(), linear, bits: 16 * values.len() as u64 }
            };
            tensors.push(entry);
            tracker.end(Stage::Export, None, &record.name);
        }
        let written = shard.finish(&BTreeMap::from([("format".to_string(), "pt".to_string())]))?;
        if let Some(obj) = config.as_object_mut() {
            obj.insert("torch_dtype".into(), "float16".into());
            obj.insert("quantization_config".into(), quantization_config(group_size, &ignore));
        }
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
        let tokenizer = artifact.dir().join("tokenizer.json");
        if tokenizer.exists() {
            std::fs::copy(&tokenizer, tmp.join("tokenizer.json"))?;
        }
        Ok(CtReport { group_size, tensors, file_bytes: written.bytes })
    })();
    match result {
        Ok(report) => {
            if out.exists() {
                std::fs::remove_dir_all(out).with_context(|| format!("removing the old {}", out.display()))?;
            }
            std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
            Ok(report)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The `quantization_config` llm-compressor writes for W4A16 asymmetric groups (keys every
/// compressed-tensors version from 0.11 accepts: no `scale_dtype` / `zp_dtype`).
fn quantization_config(group_size: usize, ignore: &[String]) -> serde_json::Value {
    let mut ignore: Vec<String> = ignore.to_vec();
    if !ignore.iter().any(|n| n == "lm_head") {
        ignore.push("lm_head".into());
    }
    json!({
        "config_groups": {
            "group_0": {
                "format": "pack-quantized",
                "input_activations": null,
                "output_activations": null,
                "targets": ["Linear"],
                "weights": {
                    "actorder": null,
                    "block_structure": null,
                    "dynamic": false,
                    "group_size": group_size,
                    "num_bits": 4,
                    "observer": "minmax",
                    "observer_kwargs": {},
                    "strategy": "group",
                    "symmetric": false,
                    "type": "int"
                }
            }
        },
        "format": "pack-quantized",
        "global_compression_ratio": null,
        "ignore": ignore,
        "kv_cache_scheme": null,
        "quant_method": "compressed-tensors",
        "quantization_status": "compressed",
        "sparsity_config": {},
        "transform_config": {},
        "version": "0.12.2"
    })
}

/// A matrix in the pack-quantized layout.
pub struct Packed {
    /// `[rows, cols/8]` words of `q + 8` nibbles.
    pub weight: Vec<i32>,
    /// `[rows, cols/g]` scales.
    pub scales: Vec<f16>,
    /// `[rows/8, cols/g]` words of `zp + 8` nibbles, packed along rows.
    pub zero_points: Vec<i32>,
    /// ‖(q − zp)·s − x‖² / ‖x‖², decoded in f16 as the format does.
    pub rel_err: f64,
}

/// One group's fit: scale, zero point, codes, squared error.
struct GroupFit {
    scale: f16,
    zp: i32,
    codes: Vec<i32>,
    sq_err: f64,
}

/// The artifact's own codes, scales and zero points in the format, when the tensor's codec offers
/// them as 4-bit integer groups of `group` ([`tenpak_api::Codec::native`]; the built-in offer is
/// `int4_awq` on integer zero points). `values` is the artifact's decode, against which the
/// format's f16 arithmetic is measured. The caller has checked the shape (`cols` a multiple of
/// `group` and 8, `rows` of 8).
fn native_form(artifact: &Artifact, registry: &Registry, record: &TensorRecord, values: &[f32], group: usize) -> Result<Option<Packed>> {
    let Some(id) = record.codec.as_deref() else { return Ok(None) };
    let codec = registry.codec(id)?;
    let encoded = artifact.encoded(&record.name)?;
    let form = codec.native(&encoded, NativeTarget::CompressedTensors { group_size: group }).with_context(|| format!("{id}'s compressed-tensors form"))?;
    let Some(NativeForm::IntGroups { bits: 4, group_size, codes, scales, zero_points }) = form else { return Ok(None) };
    if group_size != group {
        return Ok(None);
    }
    let (rows, cols) = (record.shape[0], record.shape[1]);
    let groups = cols / group;
    if codes.len() != rows * cols || scales.len() != rows * groups || zero_points.len() != rows * groups {
        bail!("{}: {id}'s integer groups have unexpected sizes for [{rows}, {cols}] in groups of {group}", record.name);
    }
    // `q + 8` with q = code − 8 is the code itself; likewise the zero point. Eight 4-bit codes to
    // a word, column 8j + i in bits 4i..4i+3 of word j; zero points the same way along rows.
    let mut weight = vec![0i32; rows * cols / 8];
    for (i, &code) in codes.iter().enumerate() {
        weight[i / 8] |= ((u32::from(code) & 0xF) << (4 * (i % 8))) as i32;
    }
    let mut packed_zeros = vec![0i32; rows / 8 * groups];
    for r in 0..rows {
        for g in 0..groups {
            packed_zeros[(r / 8) * groups + g] |= ((u32::from(zero_points[r * groups + g]) & 0xF) << (4 * (r % 8))) as i32;
        }
    }
    let (mut sq_err, mut norm) = (0f64, 0f64);
    for (i, &v) in values.iter().enumerate() {
        let g = (i / cols) * groups + (i % cols) / group;
        let decoded = decode_value(i32::from(codes[i]) - 8, i32::from(zero_points[g]) - 8, scales[g]);
        sq_err += (f64::from(decoded) - f64::from(v)).powi(2);
        norm += f64::from(v).powi(2);
    }
    let rel_err = if sq_err == 0.0 { 0.0 } else { sq_err / norm.max(f64::MIN_POSITIVE) };
    Ok(Some(Packed { weight, scales, zero_points: packed_zeros, rel_err }))
}

/// What the format decodes `(q, zp, s)` to: `(q − zp) · s` in f16.
pub fn decode_value(q: i32, zp: i32, scale: f16) -> f32 {
    f16::from_f32((q - zp) as f32 * scale.to_f32()).to_f32()
}

/// The best `(s, zp, q)` for `x` among scales around its range (0.8x to 1.2x of
/// `(max − min)/15` in 41 steps, each rounded to f16, and the f16 neighbours of that step) and the
/// zero points next to `−8 − min/s`.
fn fit_group(x: &[f32]) -> GroupFit {
    let lo = x.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let range = hi - lo;
    let base = if range > 0.0 { range / 15.0 } else { (lo.abs() / 7.0).max(f32::MIN_POSITIVE) };
    let mut best: Option<GroupFit> = None;
    let centre = f16::from_f32(base);
    let candidates = (0..=40)
        .map(|k| f16::from_f32(base * (0.8 + 0.01 * k as f32)))
        // The f16 neighbours of the range's own step, where a grid the format can hold lies.
        .chain([-2i32, -1, 1, 2].map(|d| f16::from_bits((i32::from(centre.to_bits()) + d).clamp(1, 0x7BFF) as u16)));
    for scale in candidates {
        let s = scale.to_f32();
        if !(s.is_finite() && s > 0.0) {
            continue;
        }
        let centre = (-8.0 - lo / s).round().clamp(-8.0, 7.0) as i32;
        for zp in [centre - 1, centre, centre + 1] {
            if !(-8..=7).contains(&zp) {
                continue;
            }
            let mut sq_err = 0f64;
            let codes: Vec<i32> = x
                .iter()
                .map(|&v| {
                    let q = ((v / s) + zp as f32).round_ties_even().clamp(-8.0, 7.0) as i32;
                    sq_err += (f64::from(v) - f64::from(decode_value(q, zp, scale))).powi(2);
                    q
                })
                .collect();
            if best.as_ref().is_none_or(|b| sq_err < b.sq_err) {
                best = Some(GroupFit { scale, zp, codes, sq_err });
            }
        }
    }
    best.unwrap_or(GroupFit { scale: f16::ONE, zp: 0, codes: vec![0; x.len()], sq_err: x.iter().map(|&v| f64::from(v).powi(2)).sum() })
}

/// Fit and pack `values` (`[rows, cols]`, `cols` a multiple of `group` and of 8, `rows` a
/// multiple of 8).
pub fn pack_groups(values: &[f32], rows: usize, cols: usize, group: usize) -> Packed {
    assert!(cols.is_multiple_of(group) && cols.is_multiple_of(8) && rows.is_multiple_of(8) && values.len() == rows * cols);
    let groups = cols / group;
    let fits: Vec<(Vec<i32>, Vec<f16>, Vec<i32>, f64)> = values
        .par_chunks(cols)
        .map(|row| {
            let mut words = vec![0i32; cols / 8];
            let (mut scales, mut zps, mut err) = (Vec::with_capacity(groups), Vec::with_capacity(groups), 0f64);
            for (gi, chunk) in row.chunks(group).enumerate() {
                let fit = fit_group(chunk);
                for (i, &q) in fit.codes.iter().enumerate() {
                    let col = gi * group + i;
                    words[col / 8] |= (((q + 8) as u32 & 0xF) << (4 * (col % 8))) as i32;
                }
                scales.push(fit.scale);
                zps.push(fit.zp);
                err += fit.sq_err;
            }
            (words, scales, zps, err)
        })
        .collect();
    let mut weight = Vec::with_capacity(rows * cols / 8);
    let mut scales = Vec::with_capacity(rows * groups);
    let mut zero_points = vec![0i32; rows / 8 * groups];
    let mut sq_err = 0f64;
    for (r, (words, row_scales, zps, err)) in fits.into_iter().enumerate() {
        weight.extend(words);
        scales.extend(row_scales);
        for (gi, zp) in zps.into_iter().enumerate() {
            zero_points[(r / 8) * groups + gi] |= (((zp + 8) as u32 & 0xF) << (4 * (r % 8))) as i32;
        }
        sq_err += err;
    }
    let norm: f64 = values.iter().map(|&v| f64::from(v).powi(2)).sum();
    let rel_err = if sq_err == 0.0 { 0.0 } else { sq_err / norm.max(f64::MIN_POSITIVE) };
    Packed { weight, scales, zero_points, rel_err }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec's own examples: q = 0..7 packs to 0xFEDCBA98, q = −8..−1 to 0x76543210.
    #[test]
    fn nibbles_pack_as_the_library_does() {
        let pack = |qs: [i32; 8]| qs.iter().enumerate().fold(0u32, |w, (i, &q)| w | (((q + 8) as u32 & 0xF) << (4 * i)));
        assert_eq!(pack([0, 1, 2, 3, 4, 5, 6, 7]), 0xFEDC_BA98);
        assert_eq!(pack([-8, -7, -6, -5, -4, -3, -2, -1]), 0x7654_3210);
    }

    /// Values on an integer-zero-point f16 grid are reproduced exactly; the packed words,
    /// scales and zero points decode back to them; adversarial groups stay finite.
    #[test]
    fn grids_the_format_can_hold_round_trip_exactly() {
        let (rows, cols, group) = (8, 64, 32);
        let scale = f16::from_f32(0.0123);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| {
                let (r, c) = (i / cols, i % cols);
                let zp = (r as i32 % 16) - 8;
                let q = ((c * 7 + r) % 16) as i32 - 8;
                decode_value(q, zp, scale)
            })
            .collect();
        let packed = pack_groups(&values, rows, cols, group);
        assert_eq!(packed.rel_err, 0.0);
        // Unpack independently of the packer.
        for r in 0..rows {
            for c in 0..cols {
                let q = ((packed.weight[r * cols / 8 + c / 8] as u32 >> (4 * (c % 8))) & 0xF) as i32 - 8;
                let g = c / group;
                let zp = ((packed.zero_points[(r / 8) * (cols / group) + g] as u32 >> (4 * (r % 8))) & 0xF) as i32 - 8;
                assert_eq!(decode_value(q, zp, packed.scales[r * (cols / group) + g]), values[r * cols + c]);
            }
        }
        let mut hard = vec![0.5f32; 8 * 32];
        hard[3] = 1e4;
        hard[40..72].fill(-3.0);
        let packed = pack_groups(&hard, 8, 32, 32);
        assert!(packed.rel_err.is_finite() && packed.scales.iter().all(|s| s.to_f32() > 0.0));
    }
}
