//! Load every tensor of a model one at a time and report time and memory: the check that model
//! input stays bounded by about one tensor, not the model.
//!
//! ```text
//! cargo run --release -p tenpak-model --example gguf_load_all [-- assets/SmolLM2-135M-Instruct.Q4_1.gguf]
//! ```
//!
//! Prints wall time, peak RSS (VmHWM) and the peak of anonymous memory (RssAnon, sampled while
//! each tensor is held). File-backed pages of the memory map count toward RSS but are page cache
//! the kernel can drop; the anonymous peak is what the loader itself allocates. Exits non-zero if
//! that peak exceeds two copies of the largest tensor in f32 (plus 64 MB of slack for the
//! process itself).

use std::path::PathBuf;
use std::time::Instant;

/// A field of /proc/self/status in kB.
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn main() -> tenpak_error::Result<()> {
    let path = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if !path.exists() {
        tenpak_error::bail!(
            "{} is missing: run `bash scripts/fetch-assets.sh` first",
            path.display()
        );
    }
    let anon_before = status_kb("RssAnon").unwrap_or(0);
    let start = Instant::now();
    let model = tenpak_model::open(&path)?;
    let opened = start.elapsed();
    let anon_open = status_kb("RssAnon").unwrap_or(0);

    let mut peak_anon = anon_open;
    let mut largest = 0usize;
    let mut total = 0usize;
    for info in model.tensors() {
        let values = model.load_f32(&info.name)?;
        // Sample while the tensor is alive: this is the high-water mark of one load.
        peak_anon = peak_anon.max(status_kb("RssAnon").unwrap_or(0));
        largest = largest.max(values.len());
        total += values.len();
    }
    let elapsed = start.elapsed();
    let hwm = status_kb("VmHWM").unwrap_or(0);

    let mb = |kb: u64| kb as f64 / 1024.0;
    println!(
        "model:            {} ({} tensors, {total} weights)",
        path.display(),
        model.tensors().len()
    );
    println!("open:             {:.3} s", opened.as_secs_f64());
    println!(
        "open + load all:  {:.3} s ({:.0} M weights/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!("all tensors, f32: {:.1} MB", total as f64 * 4.0 / 1048576.0);
    println!("largest, f32:     {:.1} MB", largest as f64 * 4.0 / 1048576.0);
    println!(
        "RssAnon:          {:.1} MB at start, {:.1} MB after open, {:.1} MB peak",
        mb(anon_before),
        mb(anon_open),
        mb(peak_anon)
    );
    println!("VmHWM (peak RSS): {:.1} MB (includes mapped file pages)", mb(hwm));

    let bound_kb = (2 * largest * 4 / 1024) as u64 + 64 * 1024;
    let grown = peak_anon.saturating_sub(anon_before);
    if grown > bound_kb {
        tenpak_error::bail!(
            "anonymous memory grew by {:.1} MB, more than two copies of the largest tensor ({:.1} MB with slack)",
            mb(grown),
            mb(bound_kb)
        );
    }
    println!(
        "bounded:          anonymous growth {:.1} MB <= {:.1} MB (2 x largest tensor + 64 MB)",
        mb(grown),
        mb(bound_kb)
    );
    Ok(())
}
