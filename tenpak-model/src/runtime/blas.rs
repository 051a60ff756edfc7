//! Matrix products through the system's OpenBLAS, found at run time.
//!
//! candle's CPU matrix product (the `gemm` crate) uses AVX2 and FMA on the stable toolchain;
//! OpenBLAS picks its kernel for the CPU it runs on (AVX-512 on a Skylake-X or later core) and is
//! faster on the shapes of a forward pass (BENCHMARKS.md, "Speed against llama.cpp"). The forward
//! pass finds it by name (`dlopen`, the first time a product is asked for) rather than through a
//! link, so that the kernel stays a run-time choice; the codecs' and calibrators' products link
//! the same library (their build.rs), which makes `libopenblas-dev` a build requirement and the
//! lookup here succeed on any machine that built TenPak. `TENPAK_MATMUL` chooses:
//!
//! - `auto` (the default): OpenBLAS when `libopenblas.so.0` opens, candle's otherwise;
//! - `candle`: candle's kernel, without looking for OpenBLAS;
//! - `openblas`: OpenBLAS or an error that says why it could not be opened.
//!
//! OpenBLAS runs on one thread in every call, in this process's whole life; TenPak spreads its
//! work over rayon's threads itself, one independent piece per task (windows through a block, a
//! block's layers, the rows of a codec's search). That is what keeps every figure the same bit
//! for bit at any thread count: how OpenBLAS sums a product depends on how it divides the product
//! among its threads on some CPUs. On a Skylake-X core (OpenBLAS 0.3.21's `SkylakeX` kernel) it
//! divides rows and columns and every output is the same sum at 1, 2 or 3 threads; on an AMD EPYC
//! (`Zen` kernel) a 511 × 576 · 2048ᵀ product differs in 45,925 of its 1,046,528 outputs between 1
//! and 2 threads, and even in 29,580 between one call and the same rows in four calls. So a
//! product must be one call on one thread to be reproducible; windows and layers in parallel
//! give the cores something to do instead.

use std::ffi::{CStr, c_char, c_int};
use std::sync::OnceLock;

use tenpak_error::{Context, bail};
/// `cblas_sgemm`'s enumerations (cblas.h).
const CBLAS_ROW_MAJOR: c_int = 101;
const CBLAS_NO_TRANS: c_int = 111;
const CBLAS_TRANS: c_int = 112;

type Sgemm = unsafe extern "C" fn(
    order: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const f32,
    lda: c_int,
    b: *const f32,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
);
type SetThreads = unsafe extern "C" fn(threads: c_int);
type Describe = unsafe extern "C" fn() -> *const c_char;

/// The library names tried, in order: Debian's runtime package, then the development link.
const LIBRARY_NAMES: [&str; 2] = ["libopenblas.so.0", "libopenblas.so"];

/// An opened OpenBLAS.
pub struct OpenBlas {
    sgemm: Sgemm,
    set_threads: SetThreads,
    /// `openblas_get_config()`: version, build options and the kernel chosen for this CPU.
    config: String,
    /// Kept open for the life of the process: the function pointers above point into it.
    _library: libloading::Library,
}

impl std::fmt::Debug for OpenBlas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBlas").field("config", &self.config).finish_non_exhaustive()
    }
}

impl OpenBlas {
    /// Open OpenBLAS from the system's library path, set to one thread (module documentation).
    pub fn open() -> tenpak_error::Result<OpenBlas> {
        let mut failures = Vec::new();
        for name in LIBRARY_NAMES {
            // SAFETY: opening OpenBLAS runs its initializers, which only read the CPU and the
            // environment.
            match unsafe { libloading::Library::new(name) } {
                Ok(library) => return Self::from_library(library).with_context(|| format!("{name} is not a usable OpenBLAS")),
                Err(error) => failures.push(format!("{name}: {error}")),
            }
        }
        bail!("OpenBLAS could not be opened ({}); on Debian: apt-get install libopenblas0", failures.join("; "))
    }

    fn from_library(library: libloading::Library) -> tenpak_error::Result<OpenBlas> {
        // SAFETY: the symbols are looked up by their C names with the signatures of cblas.h and
        // OpenBLAS's openblas_config.h (LP64 integers: Debian's libopenblas0 is the 32-bit-index
        // build; the 64-bit one is libopenblas64.so.0, which is not tried).
        unsafe {
            let sgemm = *library.get::<Sgemm>(b"cblas_sgemm\0")?;
            let set_threads = *library.get::<SetThreads>(b"openblas_set_num_threads\0")?;
            let describe = *library.get::<Describe>(b"openblas_get_config\0")?;
            let config = CStr::from_ptr(describe()).to_string_lossy().trim().to_string();
            let blas = OpenBlas { sgemm, set_threads, config, _library: library };
            blas.set_threads(1);
            Ok(blas)
        }
    }

    /// OpenBLAS's own description: version, build options and the core it chose
    /// (`OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64`).
    pub fn config(&self) -> &str {
        &self.config
    }

    /// Set the number of OpenBLAS threads (at least 1) for every later product in the process.
    /// Only tests set more than one (see the module documentation).
    pub fn set_threads(&self, threads: usize) {
        let threads = c_int::try_from(threads.max(1)).unwrap_or(c_int::MAX);
        // SAFETY: openblas_set_num_threads takes any positive count (capped at its MAX_THREADS).
        unsafe { (self.set_threads)(threads) }
    }

    /// `out = x · wᵀ`: `x` is `rows × k`, `w` is `n × k` (a linear layer's weight as stored),
    /// `out` is `rows × n`, all row-major.
    ///
    /// # Panics
    /// If a slice's length does not match its shape (callers check shapes first).
    pub fn linear(&self, x: &[f32], rows: usize, k: usize, w: &[f32], n: usize, out: &mut [f32]) {
        assert_eq!(x.len(), rows * k, "x is not {rows} × {k}");
        assert_eq!(w.len(), n * k, "w is not {n} × {k}");
        assert_eq!(out.len(), rows * n, "out is not {rows} × {n}");
        self.gemm(Operand { data: x, stride: k }, Operand { data: w, stride: k }, true, (rows, n, k), out, n);
    }

    /// `c = a · b` (or `a · bᵀ` when `b_transposed`) for row-major matrices in slices with row
    /// strides: `a` is `m × k`, `b` is `k × n` (`n × k` when transposed), `c` is `m × n` with rows
    /// `c_stride` apart; what lies between rows is neither read nor written.
    ///
    /// # Panics
    /// If a slice is too short for its shape and stride, a stride is shorter than its row, or a
    /// dimension exceeds `i32::MAX`.
    pub fn gemm(&self, a: Operand<'_>, b: Operand<'_>, b_transposed: bool, (m, n, k): (usize, usize, usize), c: &mut [f32], c_stride: usize) {
        let b_row = if b_transposed { (n, k) } else { (k, n) };
        a.check("a", (m, k));
        b.check("b", b_row);
        Operand { data: c, stride: c_stride }.check("c", (m, n));
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            c.chunks_mut(c_stride).take(m).for_each(|row| row[..n].fill(0.0));
            return;
        }
        let dim = |value: usize| c_int::try_from(value).expect("matrix dimension fits in a C int");
        let trans_b = if b_transposed { CBLAS_TRANS } else { CBLAS_NO_TRANS };
        // SAFETY: `check` made sure every row of a, b and c lies inside its slice at its stride
        // (a stride at least the row's length); OpenBLAS reads a and b and writes only the m × n
        // entries of c.
        unsafe {
            (self.sgemm)(
                CBLAS_ROW_MAJOR,
                CBLAS_NO_TRANS,
                trans_b,
                dim(m),
                dim(n),
                dim(k),
                1.0,
                a.data.as_ptr(),
                dim(a.stride),
                b.data.as_ptr(),
                dim(b.stride),
                0.0,
                c.as_mut_ptr(),
                dim(c_stride),
            )
        }
    }
}

/// A row-major matrix operand of [`OpenBlas::gemm`]: its data from the first element, and the
/// distance between the starts of its rows.
#[derive(Clone, Copy, Debug)]
pub struct Operand<'a> {
    /// From the first element of the first row on.
    pub data: &'a [f32],
    /// Elements from one row's start to the next's.
    pub stride: usize,
}

impl Operand<'_> {
    /// Panic unless `rows × cols` fits at this stride.
    fn check(&self, what: &str, (rows, cols): (usize, usize)) {
        assert!(self.stride >= cols.max(1), "{what}: row stride {} is shorter than a row of {cols}", self.stride);
        let needed = if rows == 0 || cols == 0 { 0 } else { (rows - 1) * self.stride + cols };
        assert!(self.data.len() >= needed, "{what}: {} values cannot hold {rows} × {cols} at stride {}", self.data.len(), self.stride);
    }
}

/// Which kernel multiplies matrices in this process.
#[derive(Debug)]
pub enum Kernel {
    /// The system's OpenBLAS.
    OpenBlas(OpenBlas),
    /// candle's `gemm`.
    Candle,
}

impl Kernel {
    /// One line for reports: `OpenBLAS 0.3.21 … SkylakeX …` or `candle gemm (…)`.
    pub fn describe(&self) -> String {
        match self {
            Kernel::OpenBlas(blas) => blas.config().to_string(),
            Kernel::Candle => format!("candle gemm ({})", candle_features()),
        }
    }
}

/// The vector extensions candle's `gemm` uses on this CPU (it has no AVX-512 path on stable Rust).
fn candle_features() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            return "AVX2 + FMA";
        }
        return "SSE";
    }
    #[allow(unreachable_code)]
    "portable"
}

/// Run `f` with OpenBLAS on one thread, for work spread over rayon's threads (windows through a
/// block, a block's layers) and for every encode, so that a codec's products give the same bits
/// whatever the thread count. OpenBLAS is set to one thread when it is opened ([`kernel`]); this
/// also sets it where the kernel is candle's (`TENPAK_MATMUL=candle`), since the codecs and
/// calibrators link OpenBLAS for their own products either way.
pub fn single_threaded<R>(f: impl FnOnce() -> R) -> R {
    static PINNED: OnceLock<()> = OnceLock::new();
    PINNED.get_or_init(|| {
        if !matches!(kernel(), Ok(Kernel::OpenBlas(_))) {
            // Opening it again sets the linked library to one thread; where there is none to
            // open, the codecs were built without it and nothing needs pinning.
            let _ = OpenBlas::open();
        }
    });
    f()
}

static KERNEL: OnceLock<Result<Kernel, String>> = OnceLock::new();

/// The kernel chosen by `TENPAK_MATMUL` (see the module documentation), decided once per process.
/// Errors only when `TENPAK_MATMUL=openblas` and OpenBLAS does not open, or the variable holds
/// something else.
pub fn kernel() -> tenpak_error::Result<&'static Kernel> {
    KERNEL
        .get_or_init(|| choose(std::env::var("TENPAK_MATMUL").ok().as_deref()).map_err(|error| format!("{error:#}")))
        .as_ref()
        .map_err(|error| tenpak_error::err!("{error}"))
}

/// The kernel for a `TENPAK_MATMUL` value.
pub fn choose(setting: Option<&str>) -> tenpak_error::Result<Kernel> {
    match setting.unwrap_or("auto").trim() {
        "" | "auto" => Ok(OpenBlas::open().map_or(Kernel::Candle, Kernel::OpenBlas)),
        "candle" => Ok(Kernel::Candle),
        "openblas" => Ok(Kernel::OpenBlas(OpenBlas::open().context("TENPAK_MATMUL=openblas")?)),
        other => bail!("TENPAK_MATMUL must be auto, candle or openblas, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `x · wᵀ` in f64, the plain way.
    fn reference(x: &[f32], rows: usize, k: usize, w: &[f32], n: usize) -> Vec<f64> {
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for c in 0..n {
                out[r * n + c] = (0..k).map(|i| x[r * k + i] as f64 * w[c * k + i] as f64).sum();
            }
        }
        out
    }

    fn random(len: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn openblas() -> OpenBlas {
        OpenBlas::open().expect("the tests need OpenBLAS (scripts/install-deps.sh installs libopenblas-dev)")
    }

    #[test]
    fn linear_matches_the_reference_on_awkward_shapes() {
        let blas = openblas();
        // One row, odd sizes, a run boundary (128, 129 rows), the model's shapes.
        for (case, &(rows, k, n)) in
            [(1, 1, 1), (1, 576, 1536), (3, 7, 5), (128, 33, 17), (129, 64, 65), (300, 576, 192), (512, 1536, 576)].iter().enumerate()
        {
            let x = random(rows * k, case as u64 + 1);
            let w = random(n * k, case as u64 + 101);
            let mut out = vec![f32::NAN; rows * n];
            blas.linear(&x, rows, k, &w, n, &mut out);
            let want = reference(&x, rows, k, &w, n);
            for (i, (&got, &want)) in out.iter().zip(&want).enumerate() {
                // f32 accumulation over k terms of magnitude ≤ 1.
                let bound = 1e-6 * (k as f64).max(1.0) * 4.0;
                assert!((got as f64 - want).abs() <= bound, "{rows}×{k}·{n}ᵀ at {i}: {got} vs {want}");
            }
        }
    }

    /// What the module documentation promises: after opening, and in and after a
    /// [`single_threaded`] region, a product is the same call on one thread, so it gives the same
    /// bits as the same call made on one thread explicitly, on a shape that some CPUs' kernels
    /// (AMD Zen) sum differently at two threads.
    #[test]
    fn products_run_on_one_thread() {
        let (rows, k, n) = (511, 576, 2048);
        let x = random(rows * k, 7);
        let w = random(n * k, 8);
        let product = |blas: &OpenBlas| {
            let mut out = vec![0.0f32; rows * n];
            blas.linear(&x, rows, k, &w, n, &mut out);
            out.iter().map(|v| v.to_bits()).collect::<Vec<u32>>()
        };
        let blas = openblas();
        let opened = product(&blas);
        let inside = single_threaded(|| product(&blas));
        let after = product(&blas);
        blas.set_threads(1);
        let explicit = product(&blas);
        assert!(opened == explicit && inside == explicit && after == explicit);
    }

    #[test]
    fn non_finite_inputs_propagate() {
        let blas = openblas();
        let (rows, k, n) = (2, 3, 2);
        let mut x = random(rows * k, 3);
        x[1] = f32::NAN;
        x[3] = f32::INFINITY;
        let w = vec![1.0f32; n * k];
        let mut out = vec![0.0f32; rows * n];
        blas.linear(&x, rows, k, &w, n, &mut out);
        assert!(out[0].is_nan() && out[1].is_nan(), "a NaN in row 0 reaches both outputs: {out:?}");
        assert!(out[2] == f32::INFINITY && out[3] == f32::INFINITY, "an ∞ in row 1 stays ∞: {out:?}");
    }

    #[test]
    fn settings_are_checked() {
        assert!(matches!(choose(Some("candle")).unwrap(), Kernel::Candle));
        assert!(matches!(choose(Some("openblas")).unwrap(), Kernel::OpenBlas(_)));
        let error = choose(Some("mkl")).unwrap_err().to_string();
        assert!(error.contains("TENPAK_MATMUL") && error.contains("mkl"), "{error}");
    }
}
