//! Choosing, row by row, among encodings of one matrix in one format.
//!
//! Rows are independent twice over: in the stored format (each row has its own codes and
//! headers) and in the output error (`tr(E G Eᵀ) = Σ_r e_r G e_rᵀ`). So from several complete
//! encodings, each row can take the one whose own output error is lowest, and the assembled
//! matrix has the lowest error of any combination of them.

use tenpak_api::Part;
use tenpak_quant::AsymFormat;
use tenpak_quant::grid::GROUP_HEADER_BYTES;

/// One complete encoding and the output error of each of its rows.
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The `codes` part (u8, packed per row).
    pub codes: Part,
    /// The `scale_min` part (f16 pairs, per row).
    pub headers: Part,
    /// Its dequantization, row-major.
    pub decoded: Vec<f32>,
    /// `e_r G e_rᵀ` per row.
    pub row_errors: Vec<f64>,
}

/// Per row, the index of the candidate with the lowest error; ties go to the earliest.
pub fn choose(candidates: &[Candidate], rows: usize) -> Vec<usize> {
    (0..rows)
        .map(|r| {
            let mut best = 0;
            for (k, c) in candidates.iter().enumerate().skip(1) {
                if c.row_errors[r] < candidates[best].row_errors[r] {
                    best = k;
                }
            }
            best
        })
        .collect()
}

/// The encoding that takes row `r` from `candidates[choice[r]]`, byte for byte.
pub fn assemble(candidates: &[Candidate], choice: &[usize], format: AsymFormat) -> Candidate {
    let cols = format.layout().cols();
    let code_stride = format.row_code_bytes();
    let header_stride = format.layout().groups_per_row() * GROUP_HEADER_BYTES;
    let mut out = candidates[0].clone();
    for (r, &k) in choice.iter().enumerate().filter(|&(_, &k)| k != 0) {
        let from = &candidates[k];
        let span = |stride: usize| r * stride..(r + 1) * stride;
        out.codes.data[span(code_stride)].copy_from_slice(&from.codes.data[span(code_stride)]);
        out.headers.data[span(header_stride)]
            .copy_from_slice(&from.headers.data[span(header_stride)]);
        out.decoded[span(cols)].copy_from_slice(&from.decoded[span(cols)]);
        out.row_errors[r] = from.row_errors[r];
    }
    out
}
