//! Link the system's OpenBLAS (Debian: libopenblas-dev, installed by scripts/install-deps.sh):
//! ndarray's matrix products (its `blas` feature) and the Gram matrix's ssyrk call it through cblas,
//! and the error feedback's LAPACK (dpotrf through ndarray-linalg, dtrtri through lapack-sys).
fn main() {
    println!("cargo:rustc-link-lib=dylib=openblas");
}
