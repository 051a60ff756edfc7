//! A TenPak host with one more codec linked in: the static path for third-party codecs.
//!
//! Linking `tenpak-codec-nf4` is all it takes: its `register_codec!` entry joins the built-ins'
//! in the same `inventory` registry, so `Registry::from_static()` (inside
//! `tenpak_plugins::builtins::registry()`) finds `nf4` beside `int4_residual`, `int8`, … and
//! presets can name it. No C ABI, no library to ship; the cost is rebuilding the host.
//!
//! ```text
//! tenpak-custom-host codecs
//! tenpak-custom-host pack MODEL PRESET OUTPUT
//! tenpak-custom-host unpack ARTIFACT OUTPUT
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use tenpak_error::{Context, Result, bail};
use tenpak_pack::artifact::Artifact;
use tenpak_pack::observe::Silent;
use tenpak_pack::plan::{PackPlan, PackRequest, PresetSpec};
use tenpak_pack::unpack::{DenseDType, unpack};
use tenpak_plugins::builtins;
use tenpak_pack::{pack, report};

// Name the crate so the linker keeps its registration (it is otherwise never referenced).
use tenpak_codec_nf4 as _;

fn run(args: &[String]) -> Result<()> {
    let registry = std::sync::Arc::new(builtins::registry()?);
    // The point of this binary: the third-party codec is there, from its crate, not a library.
    let source = registry.codec_source(tenpak_codec_nf4::ID).context("nf4 is not registered: was the crate linked?")?;
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["codecs"] => {
            for (id, source, codec) in registry.codecs() {
                println!("{id:<16} {:<70} [{source}]", codec.description());
            }
        }
        ["pack", model_path, preset, output] => {
            // The same request and plan as `tenpak pack`: every check happens before any work.
            let request = PackRequest {
                model: PathBuf::from(model_path).into(),
                preset: PresetSpec::from_cli(preset),
                output: PathBuf::from(output),
                force: false,
                calib: None,
                eval: None,
                target_bpw: None,
                tasks: None,
            };
            let plan = PackPlan::build(&request, &registry)?;
            let manifest = pack::run(&plan, &registry, &Silent)?;
            print!("{}", report::summary(&manifest));
            println!("nf4 from     {source}");
        }
        ["unpack", artifact, output] => {
            let artifact = Artifact::open(&PathBuf::from(artifact))?;
            unpack(&artifact, &registry, &PathBuf::from(output), DenseDType::F32, false, &Silent)?;
            println!("wrote {output}");
        }
        _ => bail!("usage: tenpak-custom-host codecs | pack MODEL PRESET OUTPUT | unpack ARTIFACT OUTPUT"),
    }
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
