//! The linear layers' matrix products of a 512-token window of SmolLM2-135M, by each kernel the
//! runtime can use: candle's `gemm` (`Tensor::matmul`) and the system's OpenBLAS through
//! `runtime::ops::linear` (rows split in runs of 128 over rayon, OpenBLAS single-threaded).
//! Throughput is in floating-point operations (2·rows·k·n per product): criterion's "elem/s"
//! read as FLOP/s. Both kernels run on the process's rayon pool (2 threads on the bench machine).
//!
//! Run: `cargo bench -p tenpak-model --bench matmul` (about a minute). Needs libopenblas0.

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tenpak_model::runtime::blas::{self, Kernel};

/// (what, rows, k = in_features, n = out_features).
const SHAPES: &[(&str, usize, usize, usize)] = &[
    ("q/o 576→576", 512, 576, 576),
    ("k/v 576→192", 512, 576, 192),
    ("gate/up 576→1536", 512, 576, 1536),
    ("down 1536→576", 512, 1536, 576),
    ("lm_head block 576→2048", 511, 576, 2048),
];

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn bench(c: &mut Criterion) {
    let openblas = match blas::choose(Some("openblas")).expect("OpenBLAS opens (apt-get install libopenblas0)") {
        Kernel::OpenBlas(blas) => blas,
        Kernel::Candle => unreachable!(),
    };
    eprintln!("OpenBLAS: {}", openblas.config());
    let mut group = c.benchmark_group("linear");
    for &(what, rows, k, n) in SHAPES {
        let x = random((rows, k), 1);
        let w = random((n, k), 2);
        group.throughput(Throughput::Elements((2 * rows * k * n) as u64));
        group.bench_with_input(BenchmarkId::new("candle", what), &(), |b, _| b.iter(|| x.matmul(&w.t().unwrap()).unwrap()));
        let (xs, ws) = (x.flatten_all().unwrap().to_vec1::<f32>().unwrap(), w.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        group.bench_with_input(BenchmarkId::new("openblas", what), &(), |b, _| {
            b.iter(|| {
                let mut out = vec![0.0f32; rows * n];
                openblas.linear(&xs, rows, k, &ws, n, &mut out);
                out
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().without_plots().sample_size(30).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = bench
}
criterion_main!(benches);
