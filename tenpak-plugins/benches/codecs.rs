//! Encode and decode throughput of every built-in codec, in weights per second.
//!
//! Shapes: 576×1536 (a SmolLM2-135M MLP projection) and 4096×11008 (a Llama-7B MLP projection);
//! random LLM-like weights (heavy-tailed, per-row scales, outlier columns). Each runs on a rayon
//! pool of 1 thread and of 2 threads (`pool.install`), so the parallel speed-up is visible.
//! Codecs are taken from the registry by id, exactly as the host uses them.
//!
//! Run: `cargo bench -p tenpak-plugins --bench codecs` (a few minutes).

use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use tenpak_api::{LayerStats, Params, WeightView};
// Name every codec crate so the linker keeps its registration.
use tenpak_codec_basic as _;
use tenpak_codec_int4_residual as _;
use tenpak_codec_int4_rtn as _;

const SHAPES: &[(usize, usize)] = &[(576, 1536), (4096, 11008)];
const THREADS: &[usize] = &[1, 2];

fn configs() -> Vec<(&'static str, &'static str, Params)> {
    vec![
        (
            "int4_rtn",
            "int4_rtn g128",
            Params::new().with("group_size", 128usize),
        ),
        (
            "int4_residual",
            "int4_residual g128 search",
            Params::new().with("group_size", 128usize),
        ),
        (
            "int4_residual",
            "int4_residual g128 search +2b residual g128",
            Params::new()
                .with("group_size", 128usize)
                .with("residual_bits", 2usize),
        ),
        ("int8", "int8 per row", Params::new()),
        ("keep", "keep f16", Params::new().with("dtype", "f16")),
    ]
}

fn bench(c: &mut Criterion) {
    let registry = tenpak_api::registry::Registry::from_static().expect("registry");
    let pools: Vec<_> = THREADS
        .iter()
        .map(|&n| {
            (
                n,
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .build()
                    .expect("thread pool"),
            )
        })
        .collect();
    for &(rows, cols) in SHAPES {
        let weights = tenpak_quant::testing::llm_like(rows, cols, 42);
        let view = WeightView::new(&weights.data, rows, cols).expect("shape");
        let shape = format!("{rows}x{cols}");
        for (op, is_encode) in [("encode", true), ("decode", false)] {
            let mut group = c.benchmark_group(format!("{op}/{shape}"));
            group.throughput(Throughput::Elements((rows * cols) as u64));
            group.sample_size(10);
            group.warm_up_time(Duration::from_millis(500));
            group.measurement_time(Duration::from_secs(2));
            for (id, label, params) in configs() {
                let codec = registry.codec(id).expect("codec registered");
                let encoded = codec
                    .encode(view, &LayerStats::none(), &params)
                    .expect("encode");
                for (threads, pool) in &pools {
                    group.bench_function(BenchmarkId::new(label, format!("{threads}t")), |b| {
                        if is_encode {
                            b.iter(|| {
                                pool.install(|| {
                                    codec
                                        .encode(view, &LayerStats::none(), &params)
                                        .expect("encode")
                                })
                            })
                        } else {
                            b.iter(|| pool.install(|| codec.decode(&encoded).expect("decode")))
                        }
                    });
                }
            }
            group.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
