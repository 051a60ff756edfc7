use candle_core::{Device, Tensor};
use std::time::Instant;
fn bench(m: usize, n: usize, k: usize, reps: usize, transposed: bool) {
    let a = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
    let w = if transposed { Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu).unwrap() } else { Tensor::randn(0f32, 1.0, (k, n), &Device::Cpu).unwrap() };
    let run = || if transposed { a.matmul(&w.t().unwrap()).unwrap() } else { a.matmul(&w).unwrap() };
    run();
    let t = Instant::now();
    for _ in 0..reps { run(); }
    let s = t.elapsed().as_secs_f64() / reps as f64;
    println!("m{m} n{n} k{k} t={transposed}: {:.2} ms, {:.1} GFLOP/s", s * 1e3, 2.0 * (m * n * k) as f64 / s / 1e9);
}
fn main() {
    println!("candle threads {}, rayon threads {}", candle_core::utils::get_num_threads(), rayon::current_num_threads());
    for &(m, n, k) in &[(512, 576, 576), (512, 192, 576), (512, 960, 576), (512, 1536, 576), (512, 3072, 576), (512, 576, 1536), (256, 49152, 576), (512, 49152, 576), (511, 1024, 576), (511, 2048, 576), (511, 4096, 576), (511, 8192, 576)] {
        bench(m, n, k, 10, true);
    }
    bench(512, 1536, 576, 10, false);
}
#[allow(dead_code)]
fn threads() {}
