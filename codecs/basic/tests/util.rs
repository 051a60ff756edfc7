//! Helpers shared by this crate's tests.
#![allow(dead_code)]

use tenpak_api::{Codec, Encoded, LayerStats, Params, WeightView};
use tenpak_quant::testing::{self, TestMatrix};

/// Random, heavy-tailed, LLM-like and adversarial matrices (odd and even row lengths).
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

pub fn encode(codec: &dyn Codec, m: &TestMatrix, params: &Params) -> Encoded {
    let view = WeightView::new(&m.data, m.rows, m.cols).unwrap();
    codec
        .encode(view, &LayerStats::none(), params)
        .unwrap_or_else(|e| {
            panic!(
                "{} {} [{}, {}] {params:?}: {e}",
                codec.id(),
                m.name,
                m.rows,
                m.cols
            )
        })
}

/// Total bytes of all parts.
pub fn stored_bytes(encoded: &Encoded) -> u64 {
    encoded.parts.iter().map(|p| p.data.len() as u64).sum()
}
