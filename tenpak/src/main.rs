//! The `tenpak` command line.
//!
//! Flags are parsed by clap into raw values, then turned into the same request the server builds
//! from JSON, and validated into one plan ([`PackPlan::build`]) before any work starts. Outcomes
//! map to exit codes in one place, by the error's kind: 0 ok, 1 error, 2 a request to change
//! (usage errors too), 130 cancelled.

mod progress;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use tenpak_error::{Context, Error, Kind, Result};
use tenpak_export::{CtOptions, GgufOptions, export_compressed_tensors, export_gguf};
use tenpak_pack::artifact::Artifact;
use tenpak_pack::eval::kld::BaseLogits;
use tenpak_pack::eval::{self, BaseSpec, CompareRequest, EvalRequest, PplOptions, Protocol};
use tenpak_model::chat::Message;
use tenpak_pack::generate::{Generation, Generator, Sampling, Stop};
use tenpak_pack::limits::Limits;
use tenpak_pack::plan::{PackPlan, PackRequest, PresetSpec, TaskSpec, default_output};
use tenpak_pack::text::TextSpec;
use tenpak_pack::preset::{BUILTIN, Preset};
use tenpak_pack::sweep::{self, SweepRequest};
use tenpak_pack::unpack::{DenseDType, unpack};
use tenpak_pack::{pack, report};
use tenpak_plugins::builtins;
#[cfg(feature = "studio")]
use tenpak_studio::config::StudioConfig;

use crate::progress::Bar;

/// Which positions `tenpak eval` scores (the library's [`Protocol`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ProtocolArg {
    /// TenPak's (DESIGN.md): the text without special tokens, every position but the first of
    /// each window.
    Tenpak,
    /// `llama-perplexity`'s default, to compare with its output: the text tokenized with the
    /// special tokens the tokenizer adds (a BOS where the model wants one), the first token of
    /// each window replaced by that BOS, and only the second half of each window scored
    /// (predictions of positions `ctx/2 + 1 .. ctx − 1`).
    LlamaCpp,
}

impl From<ProtocolArg> for Protocol {
    fn from(arg: ProtocolArg) -> Self {
        match arg {
            ProtocolArg::Tenpak => Protocol::Tenpak,
            ProtocolArg::LlamaCpp => Protocol::LlamaCpp,
        }
    }
}

/// Element type of `tenpak unpack`'s weights (the library's [`DenseDType`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum DTypeArg {
    /// 32-bit float: exactly the decoded values.
    F32,
    /// 16-bit float: half the size; decoded values rounded once more.
    F16,
    /// bfloat16.
    Bf16,
}

impl From<DTypeArg> for DenseDType {
    fn from(arg: DTypeArg) -> Self {
        match arg {
            DTypeArg::F32 => DenseDType::F32,
            DTypeArg::F16 => DenseDType::F16,
            DTypeArg::Bf16 => DenseDType::Bf16,
        }
    }
}

/// Formats `tenpak export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum ExportFormat {
    /// GGUF, llama.cpp's format (a file).
    Gguf,
    /// compressed-tensors "pack-quantized" int4 (a Hugging Face directory for vLLM / transformers).
    CompressedTensors,
}

#[derive(Parser)]
#[command(name = "tenpak", version, about = "Compress LLM weights and measure what it cost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Load codecs, calibrators and allocators from a plugin library (.so/.dylib/.dll); repeatable.
    #[arg(long, global = true, value_name = "PATH")]
    plugin: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Compress a model (HF directory, .safetensors or .gguf) into an artifact.
    Pack {
        /// The model to compress.
        model: PathBuf,
        /// A built-in preset name (see `tenpak presets`) or a preset TOML file.
        /// `balanced` (the default) calibrates on --calib; `fast` needs no calibration text.
        #[arg(long, default_value = "balanced")]
        preset: String,
        /// Output directory [default: <model name>.tenpak beside the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
        /// Calibration text, for presets whose codecs need calibration statistics (windows and
        /// ctx from the preset's [calibration]). Must not be the evaluation text.
        #[arg(long, default_value = "assets/calib.txt")]
        calib: PathBuf,
        /// Evaluation text: baseline and compressed perplexity go into the manifest (windows and
        /// ctx from the preset's [evaluation]).
        #[arg(long, default_value = "assets/eval.txt")]
        eval: PathBuf,
        /// Skip the evaluation.
        #[arg(long)]
        no_eval: bool,
        /// Bits per weight on the block linears, for a preset whose allocator measures
        /// (`bit_budget`, e.g. the built-in `budget`): overrides its target_bpw.
        #[arg(long, value_name = "BITS")]
        target_bpw: Option<f64>,
        /// Print every tensor's codec, bits and error (default: on).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        tensors: bool,
        /// Also score the source and the artifact on these multiple-choice items (as
        /// `eval --tasks`) and record both accuracies in the manifest beside the perplexities.
        #[arg(long, value_name = "FILE.jsonl", conflicts_with = "no_eval")]
        tasks: Option<PathBuf>,
        /// With --tasks: only the first N items of each task.
        #[arg(long, value_name = "N", requires = "tasks")]
        task_limit: Option<usize>,
    },
    /// Perplexity of a model or an artifact on a text (protocol printed with the figure).
    Eval {
        /// A model (HF dir, .safetensors, .gguf) or a TenPak artifact directory.
        model: PathBuf,
        /// The text to score.
        #[arg(long, default_value = "assets/eval.txt")]
        text: PathBuf,
        /// Evaluate only the first N windows [default: all].
        #[arg(long)]
        samples: Option<usize>,
        /// Window length in tokens.
        #[arg(long, default_value_t = 512)]
        ctx: usize,
        /// Windows per forward pass (1 is fastest on small CPUs; more only adds memory).
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Which positions to score: TenPak's protocol, or llama-perplexity's (second half of
        /// each window, BOS as llama.cpp adds it) to compare with its output.
        #[arg(long, value_enum, default_value_t = ProtocolArg::Tenpak)]
        protocol: ProtocolArg,
        /// Compare with a base: a model or artifact (both run block by block on the same
        /// windows), or a base log-probability file in llama.cpp's `--kl-divergence-base` layout
        /// (from `--save-base` or `llama-perplexity`; needs --protocol llama-cpp). Prints KL
        /// divergence, same-top-token rate, Δp and the PPL ratio beside both perplexities.
        #[arg(long, value_name = "MODEL_OR_FILE")]
        base: Option<PathBuf>,
        /// Store this model's log-probabilities of the scored positions in FILE, in llama.cpp's
        /// `--kl-divergence-base` layout, to compare candidates against with --base FILE
        /// (or llama-perplexity --kl-divergence). Needs --protocol llama-cpp; about
        /// 2 · vocabulary bytes per scored token.
        #[arg(long, value_name = "FILE", conflicts_with = "base")]
        save_base: Option<PathBuf>,
        /// Multiple-choice accuracy instead of perplexity, as lm-eval-harness scores it (acc,
        /// acc_norm): items from a JSONL file (HellaSwag, ARC, PIQA, WinoGrande fields or a
        /// generic form; see `scripts/fetch-tasks.sh` and the README). With --base, the base is
        /// scored on the same items too.
        #[arg(long, value_name = "FILE.jsonl", conflicts_with = "save_base")]
        tasks: Option<PathBuf>,
        /// With --tasks: only the first N items of each task.
        #[arg(long, value_name = "N", requires = "tasks")]
        task_limit: Option<usize>,
    },
    /// Text from a model or an artifact after a prompt or in a chat: KV-cached decoding, greedy
    /// or sampled, streamed to stdout, with tokens/s for the prompt and for generation.
    ///
    /// With --chat the prompt is the user's turn, put into the model's chat template (from the
    /// GGUF metadata, chat_template.jinja or tokenizer_config.json) with --system before it;
    /// without --prompt, each line read from stdin is a turn of one conversation. --messages
    /// takes a whole conversation from a JSON file.
    Generate {
        /// A model (HF dir, .safetensors, .gguf) or a TenPak artifact directory.
        model: PathBuf,
        /// The prompt (tokenized with the special tokens the tokenizer adds), or with --chat the
        /// user's message.
        #[arg(long, required_unless_present_any = ["chat", "messages"])]
        prompt: Option<String>,
        /// Put the prompt into the model's chat template, as its reply's opening; without
        /// --prompt, chat turn by turn on stdin.
        #[arg(long)]
        chat: bool,
        /// With --chat: a system message before the user's.
        #[arg(long, requires = "chat")]
        system: Option<String>,
        /// A conversation to continue, in the chat template: a JSON list of {"role", "content"}.
        #[arg(long, value_name = "FILE.json", conflicts_with_all = ["prompt", "system"])]
        messages: Option<PathBuf>,
        /// Most new tokens; generation also stops at the end-of-sequence token.
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// 0 is greedy (the most likely token); above 0, tokens are drawn at this temperature.
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        /// When sampling: keep the this-many most likely tokens (0: all).
        #[arg(long, default_value_t = 40)]
        top_k: usize,
        /// When sampling: keep the most likely tokens until their probability reaches this.
        #[arg(long, default_value_t = 0.95)]
        top_p: f32,
        /// When sampling: the random seed (the same seed gives the same text).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Also generate from this base model with the same settings and print its text after.
        #[arg(long, value_name = "BASE")]
        compare: Option<PathBuf>,
    },
    /// Show an artifact's manifest: source, preset, sizes, perplexity, per-tensor errors.
    Info {
        /// The artifact directory.
        artifact: PathBuf,
        /// Print the per-tensor table too.
        #[arg(long)]
        tensors: bool,
        /// Print the raw manifest JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Write an artifact back out as a dense Hugging Face directory (safetensors + config + tokenizer).
    Unpack {
        /// The artifact directory.
        artifact: PathBuf,
        /// Output directory.
        #[arg(short, long)]
        output: PathBuf,
        /// Element type of the dense weights.
        #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
        dtype: DTypeArg,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
    },
    /// Write an artifact in another runtime's format: GGUF (llama.cpp) or compressed-tensors (vLLM, transformers).
    ///
    /// Tensors whose stored codes the format holds are carried over exactly (GGUF: int4 groups of
    /// 32 with f16 scale and min → Q4_1, int8 → Q8_0, ...; compressed-tensors: int4_awq with
    /// zero_point = "integer", alpha = 0, no outliers); the rest are re-quantized and the cost
    /// reported.
    Export {
        /// The artifact directory.
        artifact: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = ExportFormat::Gguf)]
        format: ExportFormat,
        /// Output file (GGUF) or directory (compressed-tensors).
        #[arg(short, long)]
        output: PathBuf,
        /// compressed-tensors: group size, 32 | 64 | 128 [default: the artifact's, else 32].
        #[arg(long)]
        group_size: Option<usize>,
        /// GGUF type for tensors with no exact GGUF form (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k ..
        /// q6_k, f16) [default: the type nearest each tensor's bits per weight].
        #[arg(long, value_name = "TYPE")]
        requant: Option<String>,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
        /// Print every tensor's GGUF type and cost.
        #[arg(long)]
        tensors: bool,
    },
    /// Run TenPak Studio, the HTTP job service (README: "Studio").
    Serve {
        /// The service's configuration file [default: every key at its default].
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Listen on this address instead of the configuration's `listen` (port 0: any free port;
        /// the address is printed once the server accepts connections).
        #[arg(long, value_name = "ADDR")]
        listen: Option<std::net::SocketAddr>,
    },
    /// Pack a model at several bit rates with a measuring preset and plot perplexity against bits
    /// per weight, beside llama.cpp's GGUFs scored the same way (sweep.csv, sweep.svg, sweep.png).
    Sweep {
        /// The model to compress.
        model: PathBuf,
        /// Bits per weight on the block linears, one artifact each (`bpw-<target>.tenpak`).
        #[arg(long, value_name = "BITS,...", value_delimiter = ',', required = true, num_args = 1..)]
        bpw: Vec<f64>,
        /// A preset whose allocator measures (`bit_budget`): a built-in name or a TOML file
        /// [default: the built-in `budget`, where this build has one].
        #[arg(long, value_name = "FILE_OR_NAME")]
        preset: Option<String>,
        /// A directory of GGUF files (llama.cpp's quantizations) to score with the same
        /// evaluation windows and ctx; each is a point labelled by its file stem.
        #[arg(long, value_name = "DIR")]
        with_llamacpp: Option<PathBuf>,
        /// Output directory: the artifacts, sweep.csv, sweep.svg and sweep.png.
        #[arg(short, long, value_name = "OUT_DIR")]
        output: PathBuf,
        /// Calibration text (windows and ctx from the preset's [calibration]).
        #[arg(long, default_value = "assets/calib.txt")]
        calib: PathBuf,
        /// Evaluation text (windows and ctx from the preset's [evaluation], for every point).
        #[arg(long, default_value = "assets/eval.txt")]
        eval: PathBuf,
        /// Replace existing artifacts in the output directory.
        #[arg(long)]
        force: bool,
    },
    /// List registered codecs, calibrators and allocators.
    Codecs,
    /// List built-in presets, and whether this build can run them.
    Presets,
}

fn run(cli: Cli) -> Result<(), Error> {
    run_inner(cli).map_err(|e| e.or_kind(Kind::Internal))
}

fn run_inner(cli: Cli) -> Result<()> {
    let mut registry = builtins::registry()?;
    tenpak_plugins::dynamic::load_all(&mut registry, &cli.plugin)?;
    #[cfg(not(feature = "studio"))]
    if let Command::Serve { .. } = cli.command {
        tenpak_error::bail!("this tenpak was built without Studio (cargo feature `studio`)");
    }
    #[cfg(feature = "studio")]
    if let Command::Serve { config, listen } = cli.command {
        let mut config = match config {
            Some(path) => StudioConfig::load(&path)?,
            None => StudioConfig::default(),
        };
        if let Some(listen) = listen {
            config.listen = listen;
        }
        tenpak_plugins::dynamic::load_all(&mut registry, &config.plugins)?;
        return tenpak_studio::run(config, registry, |address| {
            use std::io::Write;
            println!("listening on http://{address}");
            let _ = std::io::stdout().flush();
        });
    }
    let registry = Arc::new(registry);
    let progress = std::io::stderr().is_terminal() || std::env::var_os("TENPAK_PROGRESS").is_some();
    match cli.command {
        Command::Pack { model, preset, output, force, calib, eval, no_eval, target_bpw, tensors, tasks, task_limit } => {
            let request = PackRequest {
                output: output.unwrap_or_else(|| default_output(&model)),
                model: model.into(),
                preset: PresetSpec::from_cli(&preset),
                force,
                calib: Some(TextSpec::File(calib)),
                eval: (!no_eval).then_some(TextSpec::File(eval)),
                target_bpw,
                tasks: tasks.map(|file| TaskSpec { name: file.display().to_string(), file, limit: task_limit }),
            };
            let started = std::time::Instant::now();
            let plan = PackPlan::build(&request, &registry)?;
            let bar = Bar::new("pack", true);
            let manifest = pack::run(&plan, &registry, &bar);
            bar.finish();
            let manifest = manifest?;
            if tensors {
                print!("{}", report::tensor_table(&manifest));
                println!();
            }
            print!("{}", report::summary(&manifest));
            println!("stages        {}", bar.stage_times());
            println!("matmul        {}", tenpak_model::runtime::blas::kernel()?.describe());
            println!("artifact      {} ({:.1} s)", plan.output.display(), started.elapsed().as_secs_f64());
        }
        Command::Eval { model, base, tasks: Some(tasks), task_limit, .. } => {
            let items = tenpak_pack::tasks::read_items(&tasks, &tasks.display().to_string(), task_limit)?;
            let mut reports = Vec::new();
            for (label, path) in std::iter::once(("model", &model)).chain(base.as_ref().map(|b| ("base", b))) {
                let bar = Bar::new("tasks", progress);
                let report = tenpak_pack::tasks::run(&path.clone().into(), &registry, &items, &mut |done, total| {
                    use tenpak_pack::observe::{PackObserver, Stage, Update};
                    let detail = format!("{label}: item {done}/{total}");
                    bar.update(&Update { stage: Stage::Evaluate, block: None, done: done as u64, total: total as u64, detail });
                    Ok(())
                });
                bar.finish();
                let report = report?;
                eprintln!("{label}: {} items in {:.1} s", items.len(), report.seconds);
                reports.push((label, path, report));
            }
            println!("tasks         {} ({} items)", tasks.display(), items.len());
            for (label, path, _) in &reports {
                println!("{label:<13} {}", path.display());
            }
            print!("{}", report::task_table(&reports.iter().map(|(label, _, r)| (*label, r.scores.as_slice())).collect::<Vec<_>>()));
        }
        Command::Eval { model, text, samples, ctx, batch, protocol, base: Some(base), .. } => {
            let request = CompareRequest {
                candidate: model.clone().into(),
                base: if BaseLogits::is_base_file(&base) { BaseSpec::Stored(base.clone()) } else { BaseSpec::Model(base.clone().into()) },
                text: TextSpec::File(text),
                options: PplOptions { ctx, samples, batch },
                protocol: protocol.into(),
            };
            let bar = Bar::new("eval", true);
            let outcome = eval::compare(&request, &registry, &bar, &Limits::none());
            bar.finish();
            let (record, report) = outcome?;
            println!("model         {}", model.display());
            println!("base          {}", base.display());
            print!("{}", report::evaluation(&record));
            println!("tokens scored {} ({} windows of {})", report.tokens_scored, report.windows, report.ctx);
            println!("time          {:.1} s", report.seconds);
            println!("matmul        {}", tenpak_model::runtime::blas::kernel()?.describe());
        }
        Command::Eval { model, text, samples, ctx, batch, protocol, base: None, save_base, .. } => {
            let request = EvalRequest {
                model: model.clone().into(),
                text: TextSpec::File(text),
                options: PplOptions { ctx, samples, batch },
                protocol: protocol.into(),
            };
            let bar = Bar::new("eval", true);
            let report = match &save_base {
                Some(path) => eval::store_base(&request, path, &registry, &bar),
                None => eval::run(&request, &registry, &bar),
            };
            bar.finish();
            let report = report?;
            if let Some(path) = &save_base {
                println!("base logits   {}", path.display());
            }
            println!("model         {}", model.display());
            println!("ppl           {:.4}", report.ppl);
            println!("tokens scored {} ({} windows of {})", report.tokens_scored, report.windows, report.ctx);
            println!("speed         {:.1} tokens/s ({:.1} s)", report.tokens_per_second, report.seconds);
            println!("matmul        {}", tenpak_model::runtime::blas::kernel()?.describe());
            println!("protocol      {}", report.protocol);
        }
        Command::Generate { model, prompt, chat, system, messages, max_tokens, temperature, top_k, top_p, seed, compare } => {
            let sampling = if temperature == 0.0 { Sampling::Greedy } else { Sampling::Sample { temperature, top_k, top_p, seed } };
            let conversation = match (&messages, &prompt) {
                (Some(file), _) => Some(read_messages(file)?),
                (None, Some(prompt)) if chat => {
                    Some(system.iter().map(|s| Message::new("system", s.as_str())).chain([Message::new("user", prompt.as_str())]).collect())
                }
                _ => None,
            };
            if chat && conversation.is_none() {
                if compare.is_some() {
                    return Err(Error::msg("--compare needs the conversation up front: give --prompt or --messages with --chat"));
                }
                return chat_on_stdin(&Generator::open(&model.clone().into(), &registry)?, system, max_tokens, sampling);
            }
            for (label, path) in std::iter::once(("model", model)).chain(compare.map(|base| ("base", base))) {
                let generator = Generator::open(&path.clone().into(), &registry)?;
                println!("--- {label} {} ---", path.display());
                let prompt_ids = match (&conversation, &prompt) {
                    (Some(messages), _) => {
                        let template = generator.chat_template()?;
                        eprintln!("{label}: chat template from {}", template.origin());
                        generator.encode_chat(&template, messages)?
                    }
                    (None, Some(prompt)) => {
                        print!("{prompt}");
                        generator.encode(prompt)?
                    }
                    (None, None) => unreachable!("clap requires --prompt, --chat or --messages"),
                };
                let generation = stream_generation(&generator, &prompt_ids, max_tokens, sampling)?;
                println!();
                report_generation(label, &generation);
            }
        }
        Command::Info { artifact, tensors, json } => {
            let artifact = Artifact::open(&artifact)?;
            if json {
                println!("{}", serde_json::to_string_pretty(artifact.manifest())?);
                return Ok(());
            }
            print!("{}", report::summary(artifact.manifest()));
            println!("shards        {} verified (sha256)", artifact.manifest().shards.len());
            if tensors {
                println!();
                print!("{}", report::tensor_table(artifact.manifest()));
            }
        }
        Command::Unpack { artifact: dir, output, dtype, force } => {
            let artifact = Artifact::open(&dir)?;
            let bar = Bar::new("unpack", progress);
            let result = unpack(&artifact, &registry, &output, dtype.into(), force, &bar);
            bar.finish();
            result.with_context(|| format!("unpacking {}", dir.display()))?;
            println!("wrote {}", output.display());
        }
        Command::Export { artifact: dir, format: ExportFormat::CompressedTensors, output, group_size, requant, force, tensors } => {
            if requant.is_some() {
                return Err(Kind::BadRequest.error("--requant applies to --format gguf only").into());
            }
            let artifact = Artifact::open(&dir)?;
            let bar = Bar::new("export", progress);
            let result = export_compressed_tensors(&artifact, &registry, &output, &CtOptions { group_size, force }, &bar);
            bar.finish();
            let exported = result.with_context(|| format!("exporting {}", dir.display()))?;
            print!("{}", tenpak_export::report::ct_summary(&exported, tensors));
            println!("wrote         {}", output.display());
        }
        Command::Export { artifact: dir, format: ExportFormat::Gguf, output, group_size, requant, force, tensors } => {
            if group_size.is_some() {
                return Err(Kind::BadRequest.error("--group-size applies to --format compressed-tensors only").into());
            }
            let requant = requant
                .map(|name| {
                    tenpak_model::ggml::parse_name(&name).ok_or_else(|| {
                        Kind::BadRequest.error(format!("--requant {name}: not a GGUF type (q4_0, q4_1, q5_0, q5_1, q8_0, q2_k .. q6_k, f16)"))
                    })
                })
                .transpose()?;
            let artifact = Artifact::open(&dir)?;
            let bar = Bar::new("export", progress);
            let options = GgufOptions { requant, force };
            let result = export_gguf(&artifact, &registry, &output, &options, &bar);
            bar.finish();
            let exported = result.with_context(|| format!("exporting {}", dir.display()))?;
            if tensors {
                print!("{}", tenpak_export::report::gguf_tensor_table(&exported));
                println!();
            }
            print!("{}", tenpak_export::report::gguf_summary(&exported));
            println!("wrote         {}", output.display());
        }
        Command::Sweep { model, bpw, preset, with_llamacpp, output, calib, eval, force } => {
            let preset = match preset {
                Some(preset) => PresetSpec::from_cli(&preset),
                None => sweep::default_preset()?,
            };
            let request = SweepRequest {
                model,
                targets: bpw,
                preset,
                gguf_dir: with_llamacpp,
                output,
                calib: TextSpec::File(calib),
                eval: TextSpec::File(eval),
                force,
            };
            let bar = Bar::new("sweep", true);
            let outcome = sweep::run(&request, &registry, &bar, &mut |row| bar.println(&row.to_string()));
            bar.finish();
            let outcome = outcome?;
            for (path, reason) in &outcome.skipped {
                println!("skipped       {}: {reason}", path.display());
            }
            println!("protocol      {}", outcome.caption);
            for path in [&outcome.csv, &outcome.svg, &outcome.png] {
                println!("wrote         {}", path.display());
            }
        }
        Command::Serve { .. } => unreachable!("handled above"),
        Command::Codecs => {
            println!("codecs:");
            for (id, source, codec) in registry.codecs() {
                println!("  {id:<16} {:<60} [{source}]", codec.description());
                for p in codec.params() {
                    println!("      {:<20} = {:<10} {}", p.name, p.default, p.doc);
                }
            }
            println!("calibrators:");
            for (id, source) in registry.calibrators() {
                println!("  {id:<16} [{source}]");
            }
            println!("allocators:");
            for (id, source, allocator) in registry.allocators() {
                println!("  {id:<16} {:<60} [{source}]", allocator.description());
            }
        }
        Command::Presets => {
            for (name, text) in BUILTIN {
                let preset = Preset::parse(text, name)?;
                let status = match preset.validate(&registry) {
                    Ok(()) => "ready".to_string(),
                    Err(e) => format!("not runnable in this build: {e:#}"),
                };
                println!("{name:<10} {}\n           {status}", preset.description);
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    // An error is reported as one line; a backtrace is for a bug (a panic), which RUST_BACKTRACE
    // still gives. Libraries (candle) capture one into every error when RUST_BACKTRACE is set, and
    // RUST_LIB_BACKTRACE=0 turns that off unless the user set it.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: first thing in main, before any other thread exists.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.kind().exit_code())
        }
    }
}

/// Generate after `prompt_ids`, printing the text as it comes: everything so far is decoded and
/// what is new printed, since a token may end inside a multi-byte character the next completes.
fn stream_generation(generator: &Generator, prompt_ids: &[u32], max_tokens: usize, sampling: Sampling) -> Result<Generation> {
    use std::io::Write;
    let mut shown = String::new();
    let mut tokens = Vec::new();
    generator.generate(prompt_ids, max_tokens, sampling, &mut |token| {
        tokens.push(token);
        let text = generator.decode(&tokens)?;
        if let Some(new) = text.strip_prefix(shown.as_str()) {
            print!("{new}");
            let _ = std::io::stdout().flush();
        }
        shown = text;
        Ok(())
    })
}

/// The speeds and the reason generation stopped, on stderr.
fn report_generation(label: &str, generation: &Generation) {
    eprintln!(
        "{label}: {} prompt tokens at {:.1} tokens/s; {} new tokens at {:.1} tokens/s; stopped at {}",
        generation.prompt.len(),
        generation.prompt_tokens_per_second(),
        generation.tokens.len(),
        generation.tokens_per_second(),
        match generation.stop {
            Stop::Eos => "the end-of-sequence token",
            Stop::Length => "--max-tokens",
        }
    );
}

/// A conversation from `file`: a JSON list of `{"role", "content"}`.
fn read_messages(file: &std::path::Path) -> Result<Vec<Message>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let messages: Vec<Message> = serde_json::from_str(&text)
        .with_context(|| format!("{}: expected a JSON list of {{\"role\": ..., \"content\": ...}}", file.display()))?;
    if messages.is_empty() {
        return Err(Error::msg(format!("{}: the conversation is empty", file.display())));
    }
    Ok(messages)
}

/// A chat on stdin: each line is the user's turn; the reply (without its end-of-turn token) joins
/// the conversation, which the template renders anew for every turn. Ends at end of input.
fn chat_on_stdin(generator: &Generator, system: Option<String>, max_tokens: usize, sampling: Sampling) -> Result<()> {
    use std::io::{BufRead, Write};
    let template = generator.chat_template()?;
    eprintln!("chat with {} (template from {}); one line per turn, end with Ctrl-D", generator.name(), template.origin());
    let mut messages: Vec<Message> = system.into_iter().map(|s| Message::new("system", s)).collect();
    let stdin = std::io::stdin();
    let interactive = stdin.is_terminal();
    loop {
        if interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 {
            break;
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        messages.push(Message::new("user", line));
        let ids = generator.encode_chat(&template, &messages)?;
        let generation = stream_generation(generator, &ids, max_tokens, sampling)?;
        println!();
        report_generation("model", &generation);
        messages.push(Message::new("assistant", generator.decode(&generation.tokens)?));
    }
    Ok(())
}
