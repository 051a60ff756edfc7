//! The `tenpak` command line.
//!
//! Flags are parsed by clap into raw values, then turned into one validated job (preset checked
//! against the registry, paths resolved) before any work starts. Outcomes map to exit codes in
//! one place: 0 ok, 1 error, 2 usage.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tenpak_host::artifact::Artifact;
use tenpak_host::pack::{PackJob, pack};
use tenpak_host::preset::{BUILTIN, Preset};
use tenpak_host::unpack::{DenseDType, unpack};
use tenpak_host::{builtins, model, report};

#[derive(Parser)]
#[command(name = "tenpak", version, about = "Compress LLM weights and measure what it cost")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Load codecs from a plugin library (.so/.dylib/.dll); repeatable.
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
        #[arg(long, default_value = "fast")]
        preset: String,
        /// Output directory [default: <model name>.tenpak beside the current directory].
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
        /// Print every tensor's codec, bits and error (default: on).
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
        tensors: bool,
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
        #[arg(long, value_enum, default_value_t = DenseDType::F32)]
        dtype: DenseDType,
        /// Replace the output if it exists.
        #[arg(long)]
        force: bool,
    },
    /// List registered codecs, calibrators and allocators.
    Codecs,
    /// List built-in presets, and whether this build can run them.
    Presets,
}

fn default_output(model: &Path) -> PathBuf {
    let stem = model.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    PathBuf::from(format!("{stem}.tenpak"))
}

fn run(cli: Cli) -> Result<()> {
    let mut registry = builtins::registry()?;
    tenpak_host::plugins::load_all(&mut registry, &cli.plugin)?;
    let registry = Arc::new(registry);
    let progress = std::io::stderr().is_terminal() || std::env::var_os("TENPAK_PROGRESS").is_some();
    match cli.command {
        Command::Pack { model, preset, output, force, tensors } => {
            let (preset, preset_text) = Preset::load(&preset)?;
            preset.validate(&registry)?;
            let source = model::open(&model)?;
            let output = output.unwrap_or_else(|| default_output(&model));
            let started = std::time::Instant::now();
            let job = PackJob { model: source.as_ref(), preset: &preset, preset_text: &preset_text, output: output.clone(), force, progress: true };
            let manifest = pack(&job, &registry)?;
            if tensors {
                print!("{}", report::tensor_table(&manifest));
                println!();
            }
            print!("{}", report::summary(&manifest));
            println!("artifact      {} ({:.1} s)", output.display(), started.elapsed().as_secs_f64());
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
            unpack(&artifact, &registry, &output, dtype, force, progress)
                .with_context(|| format!("unpacking {}", dir.display()))?;
            println!("wrote {}", output.display());
        }
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
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
