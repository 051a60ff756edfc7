//! One tensor into the artifact: encoded by its planned codec (or stored raw), measured, recorded.
//! Both pack paths (calibration-free and the pipeline) write every tensor through here.

use tenpak_error::{Context, Result};
use tenpak_api::registry::Registry;
use tenpak_api::{Encoded, LayerPlan, LayerStats, Params, WeightView};

use crate::artifact::{ArtifactWriter, TensorRecord};
use tenpak_model::TensorInfo;
use tenpak_model::roles;

/// Error of a reconstruction: relative MSE and SNR in dB (`None` when exact).
pub fn reconstruction_error(original: &[f32], decoded: &[f32]) -> (f64, Option<f64>) {
    error_of(original.iter().copied(), decoded)
}

fn error_of(original: impl Iterator<Item = f32>, decoded: &[f32]) -> (f64, Option<f64>) {
    let (mut signal, mut noise) = (0f64, 0f64);
    for (w, &d) in original.zip(decoded) {
        signal += (w as f64) * (w as f64);
        noise += ((w - d) as f64) * ((w - d) as f64);
    }
    let rel = if signal > 0.0 { noise / signal } else if noise > 0.0 { f64::INFINITY } else { 0.0 };
    let snr = (noise > 0.0).then(|| 10.0 * (signal / noise).log10());
    (rel, snr)
}

/// Values kept in bf16 when that loses nothing.
enum Compact {
    F32(Vec<f32>),
    Bf16(Vec<half::bf16>),
}

impl Compact {
    fn of(values: Vec<f32>) -> Compact {
        if values.iter().all(|v| half::bf16::from_f32(*v).to_f32().to_bits() == v.to_bits()) {
            Compact::Bf16(values.iter().map(|v| half::bf16::from_f32(*v)).collect())
        } else {
            Compact::F32(values)
        }
    }
}

/// A tensor record for `info` stored raw (32 bits per weight); encoding fills in the rest.
fn raw_record(info: &TensorInfo) -> TensorRecord {
    let (role, _) = roles::classify(&info.name, &info.shape);
    TensorRecord {
        name: info.name.clone(),
        shape: info.shape.clone(),
        role,
        source_dtype: info.dtype.name(),
        codec: None,
        codec_source: None,
        params: Params::new(),
        bits: info.numel() as u64 * 32,
        bits_per_weight: 32.0,
        rel_mse: 0.0,
        snr_db: None,
        parts: Vec::new(),
    }
}

/// Write tensor `info` with the values `values`: raw if the plan has no entry for it, else
/// encoded by the planned codec with `stats`. Returns what a reader of the artifact will decode.
pub(crate) fn write_tensor(
    writer: &mut ArtifactWriter,
    registry: &Registry,
    info: &TensorInfo,
    values: Vec<f32>,
    plan: Option<&LayerPlan>,
    stats: &LayerStats,
) -> Result<Vec<f32>> {
    write_prepared(writer, prepare_tensor(registry, info, values, plan, stats)?)
}

/// A tensor ready to be written: its record, and its values raw or encoded with their decode.
pub(crate) enum Prepared {
    /// Stored as it is.
    Raw(TensorRecord, Vec<f32>),
    /// Encoded; the decode is what a reader will see.
    Encoded(TensorRecord, Encoded, Vec<f32>),
}

/// The part of [`write_tensor`] that needs no writer: encode (or not) and measure. Independent
/// tensors can be prepared in parallel and written in order.
pub(crate) fn prepare_tensor(
    registry: &Registry,
    info: &TensorInfo,
    values: Vec<f32>,
    plan: Option<&LayerPlan>,
    stats: &LayerStats,
) -> Result<Prepared> {
    let mut record = raw_record(info);
    let Some(lp) = plan else {
        return Ok(Prepared::Raw(record, values));
    };
    let codec = registry.codec(&lp.codec)?;
    let view = WeightView::new(&values, info.shape[0], info.shape[1])?;
    // OpenBLAS on one thread inside a codec: the same bits at any thread count (see
    // `blas::single_threaded`).
    let encoded = tenpak_model::runtime::blas::single_threaded(|| codec.encode(view, stats, &lp.params))
        .with_context(|| format!("encoding `{}` with {}", info.name, lp.codec))?;
    let numel = values.len();
    // The original, the codes and the decode are alive together; a bf16 source's values hold
    // exactly in bf16, so keep them at half the size meanwhile (the largest tensor, a 150k-token
    // embedding, is most of a pack's peak memory).
    let original = Compact::of(values);
    let decoded = tenpak_model::runtime::blas::single_threaded(|| codec.decode(&encoded))
        .with_context(|| format!("decoding `{}` with {}", info.name, lp.codec))?;
    let (rel_mse, snr_db) = match &original {
        Compact::F32(v) => error_of(v.iter().copied(), &decoded),
        Compact::Bf16(v) => error_of(v.iter().map(|x| x.to_f32()), &decoded),
    };
    drop(original);
    record.codec = Some(lp.codec.clone());
    record.codec_source = registry.codec_source(&lp.codec).map(str::to_owned);
    record.params = encoded.params.clone();
    record.bits = codec.size_bits(&encoded);
    record.bits_per_weight = record.bits as f64 / numel.max(1) as f64;
    record.rel_mse = rel_mse;
    record.snr_db = snr_db;
    Ok(Prepared::Encoded(record, encoded, decoded))
}

/// Write a prepared tensor; returns what a reader of the artifact will decode.
pub(crate) fn write_prepared(writer: &mut ArtifactWriter, prepared: Prepared) -> Result<Vec<f32>> {
    match prepared {
        Prepared::Raw(record, values) => {
            writer.add_raw(record, &values)?;
            Ok(values)
        }
        Prepared::Encoded(record, encoded, decoded) => {
            writer.add_encoded(record, &encoded)?;
            Ok(decoded)
        }
    }
}
