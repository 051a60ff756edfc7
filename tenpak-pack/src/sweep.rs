//! `tenpak sweep`: one model packed at several bit rates by a measuring preset, beside other
//! quantizers' files (llama.cpp GGUFs), as a table (`sweep.csv`) and a figure (`sweep.svg`,
//! `sweep.png`) of perplexity against bits per weight on the block linears.
//!
//! The points are comparable because each is measured the same way: perplexity on one
//! evaluation text with the preset's `[evaluation]` windows and ctx by TenPak's protocol
//! ([`crate::eval`]), and bits per weight over the same tensors, the seven projections of every
//! block (from the manifest for TenPak; from the tensor types of the file for a GGUF). Everything
//! is checked before the first pack starts, and `sweep.csv` is rewritten after every point, so a
//! sweep that stops keeps what it measured.
//!
//! What is done once: the measuring allocator's measurements (cached on disk by the first pack,
//! read by the others) and the source model's perplexity (scored by the first pack; the others
//! record it, and their protocol says so, instead of running the original model over the windows
//! again). Each point still calibrates on its own, since its statistics come from the inputs its
//! own quantized blocks produce.

pub mod plot;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tenpak_error::{Context, Result, bail, ensure};
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;
use tenpak_api::registry::Registry;

use crate::artifact::Manifest;
use tenpak_error::{Error, Kind};
use crate::eval::{self, EvalRequest, PplOptions, Protocol};
use tenpak_model as model;
use crate::observe::{PackObserver, Update};
use crate::plan::{PackPlan, PackRequest, PresetSpec};
use crate::text::TextSpec;
use crate::preset::{BUILTIN, Preset};

pub use plot::{PlotOptions, write_png, write_svg};

/// The built-in preset a sweep uses when none is named, if this build ships one by that name.
pub const DEFAULT_PRESET: &str = "budget";

/// The CSV's header line.
pub const CSV_HEADER: &str = "source,label,target_bpw,bpw_linears,baseline_ppl,ppl,delta_pct,seconds";

/// Which tool made a point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A TenPak artifact packed by the sweep.
    Tenpak,
    /// A GGUF file made elsewhere (llama.cpp's `llama-quantize`), scored by the sweep.
    LlamaCpp,
}

impl Source {
    /// The name in the CSV: `tenpak` or `llama.cpp`.
    pub fn name(self) -> &'static str {
        match self {
            Source::Tenpak => "tenpak",
            Source::LlamaCpp => "llama.cpp",
        }
    }

    /// The source called `name` in the CSV, if any.
    pub fn parse(name: &str) -> Option<Source> {
        [Source::Tenpak, Source::LlamaCpp].into_iter().find(|s| s.name() == name)
    }
}

/// One point of a sweep: a row of `sweep.csv`.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    /// Who made it.
    pub source: Source,
    /// The artifact's or file's stem (`bpw-3.5`, `smollm2-Q4_K_M-imat`).
    pub label: String,
    /// The bits per weight asked of the allocator (TenPak points only).
    pub target_bpw: Option<f64>,
    /// Bits per weight over the block linears, as stored.
    pub bpw_linears: f64,
    /// Perplexity of the uncompressed model by the same protocol, when the sweep measured it.
    pub baseline_ppl: Option<f64>,
    /// Perplexity of this point.
    pub ppl: f64,
    /// `100 · (ppl − baseline) / baseline`, when there is a baseline.
    pub delta_pct: Option<f64>,
    /// Wall time spent on the point: planning and packing, or scoring a GGUF.
    pub seconds: f64,
}

impl SweepRow {
    /// The row of a TenPak artifact packed at `target_bpw` in `seconds`, from its manifest.
    pub fn from_manifest(label: &str, target_bpw: f64, manifest: &Manifest, seconds: f64) -> Result<SweepRow> {
        let evaluation = manifest
            .evaluation
            .as_ref()
            .with_context(|| format!("{label}: the manifest has no evaluation (the sweep always asks for one)"))?;
        Ok(SweepRow {
            source: Source::Tenpak,
            label: label.to_owned(),
            target_bpw: Some(target_bpw),
            bpw_linears: manifest.totals.linear_bits_per_weight,
            baseline_ppl: Some(evaluation.baseline_ppl),
            ppl: evaluation.compressed_ppl,
            delta_pct: Some(evaluation.delta_pct),
            seconds,
        })
    }

    /// The row as a CSV record (no line end), fields in [`CSV_HEADER`]'s order.
    pub fn to_csv(&self) -> String {
        let optional = |value: Option<f64>, digits: usize| value.map_or(String::new(), |v| format!("{v:.digits$}"));
        [
            self.source.name().to_owned(),
            csv_field(&self.label),
            self.target_bpw.map_or(String::new(), |v| v.to_string()),
            format!("{:.4}", self.bpw_linears),
            optional(self.baseline_ppl, 4),
            format!("{:.4}", self.ppl),
            optional(self.delta_pct, 3),
            format!("{:.1}", self.seconds),
        ]
        .join(",")
    }

    /// A row from the fields of one CSV record; `at` (`sweep.csv line 3`) names it in errors.
    pub fn from_fields(fields: &[String], at: &str) -> Result<SweepRow> {
        const NAMES: [&str; 8] = ["source", "label", "target_bpw", "bpw_linears", "baseline_ppl", "ppl", "delta_pct", "seconds"];
        ensure!(fields.len() == NAMES.len(), "{at}: {} fields, expected {} ({CSV_HEADER})", fields.len(), NAMES.len());
        let optional = |i: usize| -> Result<Option<f64>> {
            let text = fields[i].trim();
            if text.is_empty() {
                return Ok(None);
            }
            text.parse().map(Some).map_err(|_| tenpak_error::err!("{at}, field `{}`: `{text}` is not a number", NAMES[i]))
        };
        let number = |i: usize| -> Result<f64> { optional(i)?.with_context(|| format!("{at}, field `{}`: empty", NAMES[i])) };
        let source = Source::parse(fields[0].trim())
            .with_context(|| format!("{at}, field `source`: `{}` is neither `tenpak` nor `llama.cpp`", fields[0]))?;
        Ok(SweepRow {
            source,
            label: fields[1].clone(),
            target_bpw: optional(2)?,
            bpw_linears: number(3)?,
            baseline_ppl: optional(4)?,
            ppl: number(5)?,
            delta_pct: optional(6)?,
            seconds: number(7)?,
        })
    }
}

impl fmt::Display for SweepRow {
    /// One line for a person: source, label, bits per weight, perplexity and its change, time.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target_bpw.map_or(String::new(), |t| format!(" (target {t})"));
        let delta = self.delta_pct.map_or(String::new(), |d| format!(" ({d:+.2}%)"));
        write!(
            f,
            "{:<9} {:<28} {:.3} bits/weight on linears{target}  PPL {:.4}{delta}  {:.1} s",
            self.source.name(),
            self.label,
            self.bpw_linears,
            self.ppl,
            self.seconds
        )
    }
}

/// `value` as a CSV field: quoted (with doubled quotes) when it holds a comma, quote or line end.
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) { format!("\"{}\"", value.replace('"', "\"\"")) } else { value.to_owned() }
}

/// The CSV text of `rows`: [`CSV_HEADER`], then one record per row, each line ending in `\n`.
pub fn csv_text(rows: &[SweepRow]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for row in rows {
        out.push_str(&row.to_csv());
        out.push('\n');
    }
    out
}

/// Write `rows` to `path` as CSV (through a temporary file renamed into place, so a reader never
/// sees half a table).
pub fn write_csv(path: &Path, rows: &[SweepRow]) -> Result<()> {
    let partial = path.with_extension("csv.partial");
    std::fs::write(&partial, csv_text(rows)).with_context(|| format!("{}: cannot write", partial.display()))?;
    std::fs::rename(&partial, path).with_context(|| format!("{}: cannot rename into place", path.display()))
}

/// The rows of a CSV text written by [`csv_text`]; `origin` names it in errors.
pub fn parse_csv(text: &str, origin: &str) -> Result<Vec<SweepRow>> {
    let records = csv_records(text).with_context(|| origin.to_owned())?;
    let Some((header, rows)) = records.split_first() else {
        bail!("{origin}: empty, expected the header `{CSV_HEADER}`");
    };
    ensure!(header.1.join(",") == CSV_HEADER, "{origin}: the header is `{}`, expected `{CSV_HEADER}`", header.1.join(","));
    rows.iter().map(|(line, fields)| SweepRow::from_fields(fields, &format!("{origin} line {line}"))).collect()
}

/// Read a `sweep.csv`.
pub fn read_csv(path: &Path) -> Result<Vec<SweepRow>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    parse_csv(&text, &path.display().to_string())
}

/// The records of a CSV text (RFC 4180: quoted fields may hold commas, doubled quotes and line
/// ends), each with the line it starts on; blank lines are skipped.
fn csv_records(text: &str) -> Result<Vec<(usize, Vec<String>)>> {
    let mut records = Vec::new();
    let (mut fields, mut field) = (Vec::new(), String::new());
    let (mut line, mut start, mut quoted, mut was_quoted) = (1, 1, false, false);
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                line += usize::from(c == '\n');
                field.push(c);
            }
            (false, '"') if field.is_empty() && !was_quoted => (quoted, was_quoted) = (true, true),
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, '\r') => {}
            (false, '\n') => {
                fields.push(std::mem::take(&mut field));
                if !(fields.len() == 1 && fields[0].is_empty() && !was_quoted) {
                    records.push((start, std::mem::take(&mut fields)));
                }
                fields.clear();
                was_quoted = false;
                line += 1;
                start = line;
            }
            (false, c) => field.push(c),
        }
    }
    ensure!(!quoted, "line {start}: a quoted field is not closed");
    if !field.is_empty() || !fields.is_empty() || was_quoted {
        fields.push(field);
        records.push((start, fields));
    }
    Ok(records)
}

/// Bits per weight of a GGML type: its block's bytes over its block's weights (Q4_0: 18 bytes
/// for 32 weights, 4.5 bits; Q4_K: 144 bytes for 256 weights, 4.5 bits).
pub fn ggml_bits_per_weight(dtype: GgmlDType) -> f64 {
    dtype.type_size() as f64 * 8.0 / dtype.block_size() as f64
}

/// The GGUF names of the block linears (`blk.N.<part>.weight`), TenPak's `linear_bits_per_weight`
/// tensors: attention q, k, v, output and MLP gate, up, down.
const GGUF_LINEAR_PARTS: [&str; 7] = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];

/// Whether GGUF tensor `name` is a block linear's weight (`blk.3.ffn_up.weight`).
pub fn is_gguf_block_linear(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("blk.") else { return false };
    let Some((block, rest)) = rest.split_once('.') else { return false };
    let part = rest.strip_suffix(".weight");
    !block.is_empty() && block.bytes().all(|b| b.is_ascii_digit()) && part.is_some_and(|p| GGUF_LINEAR_PARTS.contains(&p))
}

/// The block linears of a GGUF file: how many weights, their stored bits, and the weights of
/// each GGML type.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinearBits {
    /// Weights in block linears.
    pub weights: u64,
    /// Bits they occupy in the file (whole blocks of their types).
    pub bits: u64,
    /// Weights per GGML type name (`Q4_K` → n).
    pub types: BTreeMap<String, u64>,
}

impl LinearBits {
    /// `bits / weights`.
    pub fn bits_per_weight(&self) -> f64 {
        self.bits as f64 / self.weights.max(1) as f64
    }

    /// The types and their shares, largest first: `Q4_K 72%, Q6_K 28%`.
    pub fn describe(&self) -> String {
        let mut types: Vec<(&String, &u64)> = self.types.iter().collect();
        types.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let share = |n: u64| 100.0 * n as f64 / self.weights.max(1) as f64;
        types.iter().map(|(name, n)| format!("{name} {:.0}%", share(**n))).collect::<Vec<_>>().join(", ")
    }
}

/// The block linears of the GGUF file at `path`, counted from its header's tensor table
/// (no tensor data is read).
pub fn gguf_linear_bits(path: &Path) -> Result<LinearBits> {
    let file = File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let content = Content::read(&mut BufReader::new(file))
        .map_err(|e| tenpak_error::err!("{}: not a GGUF file TenPak can read: {e}", path.display()))?;
    let mut out = LinearBits::default();
    for (name, info) in &content.tensor_infos {
        if !is_gguf_block_linear(name) {
            continue;
        }
        let numel = info.shape.dims().iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let numel = numel.with_context(|| format!("{}: tensor `{name}` has shape {:?}, more weights than can exist", path.display(), info.shape.dims()))?;
        let block = info.ggml_dtype.block_size() as u64;
        ensure!(
            numel % block == 0,
            "{}: tensor `{name}` has {numel} weights, not whole blocks of {block} ({:?})",
            path.display(),
            info.ggml_dtype
        );
        let bits = (numel / block).checked_mul(info.ggml_dtype.type_size() as u64 * 8);
        out.weights = out.weights.saturating_add(numel);
        out.bits = out.bits.saturating_add(bits.with_context(|| format!("{}: tensor `{name}`: more bytes than can exist", path.display()))?);
        *out.types.entry(model::ggml::name_of(info.ggml_dtype).to_owned()).or_default() += numel;
    }
    ensure!(out.weights > 0, "{}: no block linears (blk.N.attn_q.weight, …, blk.N.ffn_down.weight) in this GGUF", path.display());
    Ok(out)
}

/// What to sweep, as the user asked for it.
#[derive(Clone, Debug)]
pub struct SweepRequest {
    /// The model to pack.
    pub model: PathBuf,
    /// Bits per weight on the block linears, one pack each.
    pub targets: Vec<f64>,
    /// A preset whose allocator measures (`bit_budget`).
    pub preset: PresetSpec,
    /// A directory of GGUF files to score beside the packs.
    pub gguf_dir: Option<PathBuf>,
    /// Where the artifacts (`bpw-<target>.tenpak`), `sweep.csv`, `sweep.svg` and `sweep.png` go.
    pub output: PathBuf,
    /// Calibration text.
    pub calib: TextSpec,
    /// Evaluation text.
    pub eval: TextSpec,
    /// Replace existing artifacts.
    pub force: bool,
}

/// What a sweep wrote.
#[derive(Clone, Debug)]
pub struct SweepOutcome {
    /// Every point, TenPak's first, in the order measured.
    pub rows: Vec<SweepRow>,
    /// GGUF files left out, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
    /// The table.
    pub csv: PathBuf,
    /// The figure, as SVG.
    pub svg: PathBuf,
    /// The figure, as PNG.
    pub png: PathBuf,
    /// The protocol, as the figure's caption states it.
    pub caption: String,
}

/// The preset a sweep uses without `--preset`: the built-in [`DEFAULT_PRESET`] when this build
/// ships it, else an error asking for one.
pub fn default_preset() -> Result<PresetSpec> {
    if BUILTIN.iter().any(|(name, _)| *name == DEFAULT_PRESET) {
        return Ok(PresetSpec::Builtin(DEFAULT_PRESET.to_owned()));
    }
    Err(Kind::BadRequest.error(format!(
        "no --preset given and this build has no built-in `{DEFAULT_PRESET}` preset (built-in: {}): pass --preset FILE with a \
         measuring allocator (`bit_budget`), e.g. --preset scripts/rates/budget.toml",
        BUILTIN.iter().map(|(name, _)| *name).collect::<Vec<_>>().join(", ")
    )))
}

/// The artifact name of target `bpw`: `bpw-3.5.tenpak`.
pub fn artifact_name(bpw: f64) -> String {
    format!("bpw-{bpw}.tenpak")
}

/// A TenPak point, planned.
struct PackPoint {
    target: f64,
    label: String,
    plan: PackPlan,
    plan_seconds: f64,
}

/// A GGUF point, checked.
struct GgufPoint {
    path: PathBuf,
    label: String,
    bits: LinearBits,
}

/// Every point of a sweep, checked, before any work.
struct Prepared {
    preset: Preset,
    packs: Vec<PackPoint>,
    ggufs: Vec<GgufPoint>,
    skipped: Vec<(PathBuf, String)>,
    caption: String,
}

/// Run the sweep: check everything, pack every target, score every GGUF, then write the table
/// and the figure. `on_point` sees each row as it is measured; `observer` sees every pack's and
/// evaluation's progress (its details prefixed `point i/N label:`) and warnings, and may cancel.
/// A GGUF that cannot be read or scored is skipped with a warning; a failed pack stops the sweep
/// (the rows measured before it stay in `sweep.csv`). Without a font the CSV and SVG are
/// written and the PNG fails, naming the font path and the package that provides it.
pub fn run(
    request: &SweepRequest,
    registry: &Arc<Registry>,
    observer: &dyn PackObserver,
    on_point: &mut dyn FnMut(&SweepRow),
) -> std::result::Result<SweepOutcome, Error> {
    let prepared = prepare(request, registry, observer).map_err(|e| e.or_kind(Kind::BadRequest))?;
    measure(request, prepared, registry, observer, on_point).map_err(|e| e.or_kind(Kind::Internal))
}

fn prepare(request: &SweepRequest, registry: &Registry, observer: &dyn PackObserver) -> Result<Prepared> {
    let (preset, _) = request.preset.load()?;
    let allocator = registry.allocator(&preset.allocator.id).with_context(|| format!("preset `{}`, [allocator]", preset.name))?;
    ensure!(
        !allocator.needs(&preset.allocator_config()).is_none(),
        "tenpak sweep needs a preset whose allocator measures (`bit_budget`), so that each target is met; preset `{}` uses `{}`",
        preset.name,
        preset.allocator.id
    );
    check_targets(&request.targets)?;
    if request.output.is_file() {
        bail!("{}: a file, not a directory for the sweep's outputs", request.output.display());
    }
    let existing: Vec<String> = request
        .targets
        .iter()
        .map(|&t| request.output.join(artifact_name(t)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() && !request.force {
        bail!("{} already exist{} (pass --force to replace)", existing.join(", "), if existing.len() == 1 { "s" } else { "" });
    }
    let (ggufs, skipped) = match &request.gguf_dir {
        Some(dir) => gguf_points(dir, observer)?,
        None => (Vec::new(), Vec::new()),
    };
    let mut packs = Vec::new();
    for &target in &request.targets {
        let started = Instant::now();
        let pack_request = PackRequest {
            model: request.model.clone().into(),
            preset: request.preset.clone(),
            output: request.output.join(artifact_name(target)),
            force: request.force,
            calib: Some(request.calib.clone()),
            eval: Some(request.eval.clone()),
            target_bpw: Some(target),
            tasks: None,
        };
        let label = format!("bpw-{target}");
        let plan = PackPlan::build(&pack_request, registry).with_context(|| format!("target {target} bits per weight"))?;
        packs.push(PackPoint { target, label, plan, plan_seconds: started.elapsed().as_secs_f64() });
    }
    let caption = caption(&packs[0].plan);
    Ok(Prepared { preset, packs, ggufs, skipped, caption })
}

/// Targets: at least one, each finite and positive, none twice.
fn check_targets(targets: &[f64]) -> Result<()> {
    ensure!(!targets.is_empty(), "--bpw: no target given (e.g. --bpw 3,3.5,4,4.5,5,6)");
    for (i, &t) in targets.iter().enumerate() {
        ensure!(t.is_finite() && t > 0.0, "--bpw: {t} is not a positive number of bits per weight");
        ensure!(!targets[..i].contains(&t), "--bpw: {t} is given twice");
    }
    Ok(())
}

/// Every `*.gguf` in `dir` by name, checked: those TenPak reads become points, the others are
/// skipped with the reason (warned through `observer`).
fn gguf_points(dir: &Path, observer: &dyn PackObserver) -> Result<(Vec<GgufPoint>, Vec<(PathBuf, String)>)> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("--with-llamacpp {}: cannot list the directory", dir.display()))?;
    let mut paths = Vec::new();
    for entry in entries {
        let path = entry.with_context(|| format!("--with-llamacpp {}: cannot list the directory", dir.display()))?.path();
        if path.is_file() && path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            paths.push(path);
        }
    }
    paths.sort();
    ensure!(!paths.is_empty(), "--with-llamacpp {}: no *.gguf file there", dir.display());
    let (mut points, mut skipped) = (Vec::new(), Vec::new());
    for path in paths {
        let checked = model::open(&path).and_then(|_| gguf_linear_bits(&path));
        match checked {
            Ok(bits) => {
                let label = path.file_stem().map_or_else(|| path.display().to_string(), |s| s.to_string_lossy().into_owned());
                points.push(GgufPoint { path, label, bits });
            }
            Err(e) => {
                observer.warning(&format!("skipping {}: {e:#}", path.display()));
                skipped.push((path, format!("{e:#}")));
            }
        }
    }
    Ok((points, skipped))
}

/// The figure's caption: evaluation text, windows × ctx, calibration windows × ctx and text.
fn caption(plan: &PackPlan) -> String {
    let mut out = match &plan.evaluation {
        Some(e) => format!("PPL on {}: {} windows × {} tokens (TenPak protocol)", e.text.name, e.windows, e.options.ctx),
        None => "no evaluation".to_owned(),
    };
    if let Some(c) = &plan.calibration {
        out.push_str(&format!("; calibration: {} windows × {} tokens of {}", c.windows, c.ctx, c.text.name));
    }
    out.push_str(&format!("; preset {}", plan.preset.name));
    out
}

fn measure(
    request: &SweepRequest,
    prepared: Prepared,
    registry: &Arc<Registry>,
    observer: &dyn PackObserver,
    on_point: &mut dyn FnMut(&SweepRow),
) -> Result<SweepOutcome> {
    let Prepared { preset, packs, ggufs, mut skipped, caption } = prepared;
    std::fs::create_dir_all(&request.output).with_context(|| format!("{}: cannot create the directory", request.output.display()))?;
    let csv = request.output.join("sweep.csv");
    let (pack_count, total) = (packs.len(), packs.len() + ggufs.len());
    let eval_windows = packs[0].plan.evaluation.as_ref().map(|e| e.windows);
    let mut rows: Vec<SweepRow> = Vec::new();
    let mut record = |row: SweepRow, rows: &mut Vec<SweepRow>| -> Result<()> {
        on_point(&row);
        rows.push(row);
        write_csv(&csv, rows)
    };
    for (i, mut point) in packs.into_iter().enumerate() {
        // Every point packs the same model and scores the same windows: the first scores the
        // source, the others record its figure instead of running the source again.
        if let (Some(e), Some(baseline)) = (point.plan.evaluation.as_mut(), rows.first().and_then(|r| r.baseline_ppl)) {
            e.known_baseline = Some(baseline);
        }
        let started = Instant::now();
        let prefix = PointObserver { inner: observer, prefix: format!("point {}/{total} {}:", i + 1, point.label) };
        let manifest = crate::pack::run(&point.plan, registry, &prefix).with_context(|| format!("packing {}", point.label))?;
        let seconds = point.plan_seconds + started.elapsed().as_secs_f64();
        record(SweepRow::from_manifest(&point.label, point.target, &manifest, seconds)?, &mut rows)?;
    }
    let baseline = rows.first().and_then(|r| r.baseline_ppl);
    let options = preset.eval_options();
    for (i, point) in ggufs.into_iter().enumerate() {
        let prefix = PointObserver { inner: observer, prefix: format!("point {}/{total} {}:", pack_count + i + 1, point.label) };
        match score_gguf(&point, request, &options, baseline, eval_windows, registry, &prefix) {
            Ok(row) => record(row, &mut rows)?,
            Err(e) if e.kind() == Kind::Cancelled => return Err(e.into()),
            Err(e) => {
                observer.warning(&format!("skipping {}: {e}", point.path.display()));
                skipped.push((point.path, e.to_string()));
            }
        }
    }
    write_csv(&csv, &rows)?;
    let (svg, png) = write_figures(request, &rows, &caption, &csv)?;
    Ok(SweepOutcome { rows, skipped, csv, svg, png, caption })
}

/// `sweep.svg`, then `sweep.png` (which alone needs a font), beside the written `csv`.
fn write_figures(request: &SweepRequest, rows: &[SweepRow], caption: &str, csv: &Path) -> Result<(PathBuf, PathBuf)> {
    let model = request.model.file_name().map_or_else(|| request.model.display().to_string(), |n| n.to_string_lossy().into_owned());
    let title = format!("{model}: perplexity against bits per weight");
    let options = PlotOptions { title, caption: caption.to_owned(), ..PlotOptions::default() };
    let (svg, png) = (request.output.join("sweep.svg"), request.output.join("sweep.png"));
    write_svg(rows, &options, &svg)?;
    write_png(rows, &options, &png).with_context(|| format!("wrote {} and {}, but not the PNG", csv.display(), svg.display()))?;
    Ok((svg, png))
}

/// The row of one GGUF: its perplexity by the packs' protocol, its bits from its tensor types.
fn score_gguf(
    point: &GgufPoint,
    request: &SweepRequest,
    options: &PplOptions,
    baseline: Option<f64>,
    eval_windows: Option<usize>,
    registry: &Arc<Registry>,
    observer: &dyn PackObserver,
) -> std::result::Result<SweepRow, Error> {
    let started = Instant::now();
    let eval_request =
        EvalRequest { model: point.path.clone().into(), text: request.eval.clone(), options: options.clone(), protocol: Protocol::Tenpak };
    let report = eval::run(&eval_request, registry, observer)?;
    if eval_windows.is_some_and(|w| w != report.windows) {
        observer.warning(&format!(
            "{}: its tokenizer makes {} evaluation windows of the text where the packed model's makes {}: its perplexity \
             is over other tokens",
            point.label,
            report.windows,
            eval_windows.unwrap_or_default()
        ));
    }
    Ok(SweepRow {
        source: Source::LlamaCpp,
        label: point.label.clone(),
        target_bpw: None,
        bpw_linears: point.bits.bits_per_weight(),
        baseline_ppl: baseline,
        ppl: report.ppl,
        delta_pct: baseline.map(|b| 100.0 * (report.ppl - b) / b),
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Passes a point's progress on with its details prefixed (`point 2/8 bpw-3.5: block 3/30`).
struct PointObserver<'a> {
    inner: &'a dyn PackObserver,
    prefix: String,
}

impl PackObserver for PointObserver<'_> {
    fn update(&self, update: &Update) {
        let detail = format!("{} {}", self.prefix, update.detail);
        self.inner.update(&Update { detail, ..update.clone() });
    }
    fn warning(&self, message: &str) {
        self.inner.warning(&format!("{} {message}", self.prefix));
    }
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
}
