//! Helpers shared by this crate's tests: test matrices, encoding, reading headers back.
#![allow(dead_code)]

use tenpak_api::{Codec, Encoded, LayerStats, Params, WeightView};
use tenpak_quant::testing::{self, TestMatrix};

/// Random, heavy-tailed, LLM-like and adversarial matrices, with row lengths that exercise
/// non-dividing group sizes (100 with 32, 576 with 256, an odd 101).
pub fn matrices() -> Vec<TestMatrix> {
    let mut all = vec![
        testing::gaussian(6, 100, 1),
        testing::student_t(4, 576, 2),
        testing::laplace(5, 101, 3),
        testing::llm_like(8, 576, 4),
    ];
    all.extend(testing::adversarial(5, 100, 5));
    all
}

/// Group sizes to try on a matrix with `cols` columns: 8, non-dividing ones, the full row and
/// more than the full row.
pub fn group_sizes(cols: usize) -> Vec<usize> {
    vec![8, 32, 64, 100, 128, 256, cols, cols + 7]
}

pub fn encode(codec: &dyn Codec, m: &TestMatrix, params: &Params) -> Encoded {
    let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
    codec
        .encode(view, &LayerStats::none(), params)
        .unwrap_or_else(|e| panic!("{} [{}, {}] {params:?}: {e}", m.name, m.rows, m.cols))
}

/// `(scale, min)` of every group, read straight from the `scale_min` part.
pub fn headers(encoded: &Encoded, part: &str) -> Vec<(f32, f32)> {
    let values = encoded.part(part).unwrap().to_f16().unwrap();
    values
        .chunks_exact(2)
        .map(|p| (p[0].to_f32(), p[1].to_f32()))
        .collect()
}

/// Total bytes of all parts.
pub fn stored_bytes(encoded: &Encoded) -> u64 {
    encoded.parts.iter().map(|p| p.data.len() as u64).sum()
}

/// Σ (w − ŵ)² over each group (row-major over [rows, groups_per_row]).
pub fn group_errors(m: &TestMatrix, decoded: &[f32], group_size: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for row in 0..m.rows {
        for start in (0..m.cols).step_by(group_size) {
            let end = (start + group_size).min(m.cols);
            let range = row * m.cols + start..row * m.cols + end;
            out.push(
                m.data[range.clone()]
                    .iter()
                    .zip(&decoded[range])
                    .map(|(&a, &b)| (a as f64 - b as f64).powi(2))
                    .sum(),
            );
        }
    }
    out
}
