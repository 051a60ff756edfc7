//! The fuzz harnesses: one function per untrusted input, each taking arbitrary bytes. Whatever
//! the bytes, a harness must return — the loader answering `Ok` or `Err` — never panic, read out
//! of bounds, or allocate beyond what the input's own size justifies. Each returns how many
//! things it got all the way through (tensors decoded, texts encoded), so a test can check that a
//! seed reaches the code it is meant for. The cargo-fuzz targets in
//! `fuzz/fuzz_targets/` are one call each; the regression tests in `tests/fuzz_regressions.rs`
//! replay every input a fuzzer ever crashed on through the same functions.
//!
//! The harnesses that decode through codecs take the registry to decode with (the fuzz targets
//! and the tests pass the built-in one, `tenpak_plugins::builtins::registry`).
//!
//! Inputs made of several files (a model directory, an artifact) are sections joined by
//! [`SEPARATOR`], so seeds can be built from real files and read by people.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenpak_api::registry::Registry;
use tenpak_api::{DType, Encoded, Params, Part};

use crate::artifact::ArtifactSource;
use tenpak_model::ModelSource;
use tenpak_model::gguf::GgufModel;
use tenpak_model::safetensors_source::SafetensorsModel;
use crate::preset::Preset;

/// Between the sections of a multi-file input.
pub const SEPARATOR: &[u8] = b"\n--tenpak-fuzz-section--\n";

/// Most decoded values a harness asks for; anything a corrupt input declares beyond this (which
/// the loaders must refuse or bound by the input's size) is not read.
const MAX_VALUES: usize = 1 << 24;

/// The sections of `data`.
pub fn sections(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    // memmem, not a compared window per byte: libFuzzer traces every comparison, and a window
    // per byte of a 100 KB input was most of the artifact and safetensors harnesses' time.
    while let Some(at) = memchr::memmem::find(rest, SEPARATOR) {
        out.push(&rest[..at]);
        rest = &rest[at + SEPARATOR.len()..];
    }
    out.push(rest);
    out
}

/// `sections` joined into one input.
pub fn join(sections: &[&[u8]]) -> Vec<u8> {
    sections.join(SEPARATOR)
}

/// A scratch directory of this process, emptied for each input.
fn scratch() -> PathBuf {
    let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let dir = base.join(format!("tenpak-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch directory");
    dir
}

/// Read every tensor of `model` whose size is within bounds; how many loaded.
fn read_all(model: &dyn ModelSource) -> usize {
    model.tensors().iter().filter(|info| info.numel() <= MAX_VALUES && model.load_f32(&info.name).is_ok()).count()
}

/// A GGUF file: header, metadata, tensor table, the configuration and tokenizer derived from
/// them, and every tensor dequantized.
pub fn gguf(data: &[u8]) -> usize {
    let Ok(model) = GgufModel::from_bytes(Path::new("fuzz.gguf"), data) else { return 0 };
    let _ = model.config_json();
    read_all(&model)
}

/// The GGUF tokenizer builder on the metadata of a GGUF header, and the tokenizer it builds
/// encoding a short text.
pub fn gguf_tokenizer(data: &[u8]) -> usize {
    let Ok(content) = tenpak_model::gguf::read_content(data) else { return 0 };
    let Ok(json) = tenpak_model::gguf_tokenizer::tokenizer_json_from_gguf(&content.metadata) else { return 0 };
    let Ok(tokenizer) = tenpak_model::tokenize::load(&tenpak_model::TokenizerSource::Json(json), "fuzz") else { return 0 };
    usize::from(tokenizer.encode("Hello, world! 123 déjà vu", false).is_ok())
}

/// A Hugging Face directory: sections `config.json`, then `model.safetensors`; or
/// `config.json`, `model.safetensors.index.json`, then shards `model-0000N.safetensors`.
pub fn safetensors(data: &[u8]) -> usize {
    let parts = sections(data);
    let dir = scratch();
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("scratch write");
    write("config.json", parts[0]);
    match parts.len() {
        1 => {}
        2 => write("model.safetensors", parts[1]),
        _ => {
            write("model.safetensors.index.json", parts[1]);
            for (i, shard) in parts[2..].iter().enumerate() {
                write(&format!("model-{:05}.safetensors", i + 1), shard);
            }
        }
    }
    let loaded = SafetensorsModel::open_dir(&dir).map_or(0, |model| {
        let _ = model.config_json();
        read_all(&model)
    });
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// An artifact: sections `manifest.json`, then the shards it lists, in order. Each shard's size
/// and sha256 in the manifest are set to the shard's real ones first (a fuzzer cannot forge a
/// digest, and the verification is not what is being tested beyond that), then the artifact is
/// opened and every tensor decoded through the built-in codecs.
pub fn artifact(data: &[u8], registry: &Arc<Registry>) -> usize {
    let parts = sections(data);
    let dir = scratch();
    let mut manifest = parts[0].to_vec();
    if let Ok(mut json) = serde_json::from_slice::<serde_json::Value>(parts[0])
        && let Some(shards) = json.get_mut("shards").and_then(|s| s.as_array_mut())
    {
        for (i, shard) in shards.iter_mut().enumerate() {
            let Some(file) = shard.get("file").and_then(|f| f.as_str()).map(str::to_owned) else { continue };
            let Some(bytes) = parts.get(i + 1) else { continue };
            let path = dir.join(&file);
            if file.contains("..") || file.is_empty() || !path.starts_with(&dir) || std::fs::create_dir_all(path.parent().unwrap_or(&dir)).is_err() {
                continue;
            }
            if std::fs::write(&path, bytes).is_err() {
                continue; // a directory of that name, say
            }
            shard["bytes"] = serde_json::json!(bytes.len());
            shard["sha256"] = serde_json::json!(crate::artifact::safetensors_writer::hex(&<sha2::Sha256 as sha2::Digest>::digest(bytes)));
        }
        manifest = serde_json::to_vec(&json).expect("a Value serializes");
    }
    std::fs::write(dir.join("manifest.json"), manifest).expect("scratch write");
    let loaded = ArtifactSource::open(&dir, registry.clone()).map_or(0, |source| {
        let _ = source.config_json();
        read_all(&source)
    });
    let _ = std::fs::remove_dir_all(&dir);
    loaded
}

/// A preset: TOML text parsed, checked against `registry`, and turned into the
/// allocator's rules.
pub fn preset(data: &[u8], registry: &Registry) -> usize {
    let Ok(text) = std::str::from_utf8(data) else { return 0 };
    let Ok(preset) = Preset::parse(text, "fuzz") else { return 0 };
    let _ = preset.eval_options();
    if preset.validate(registry).is_err() {
        return 0;
    }
    let _ = preset.allocator_config();
    1
}

/// One codec's `decode` on arbitrary parts. Sections: codec id, params as JSON, `rows cols`,
/// then each part as `name`, one dtype byte (an index into [`DType::ALL`]), `shape` as space-separated numbers, and the data.
pub fn codec_decode(data: &[u8], registry: &Registry) -> usize {
    let parts = sections(data);
    let [id, params, shape, rest @ ..] = parts.as_slice() else { return 0 };
    let Ok(id) = std::str::from_utf8(id) else { return 0 };
    let Ok(codec) = registry.codec(id) else { return 0 };
    let Ok(params) = serde_json::from_slice::<Params>(params) else { return 0 };
    let numbers = |bytes: &[u8]| -> Option<Vec<usize>> {
        std::str::from_utf8(bytes).ok()?.split_whitespace().map(|n| n.parse().ok()).collect()
    };
    let Some(shape) = numbers(shape) else { return 0 };
    let [rows, cols] = shape[..] else { return 0 };
    if rows.checked_mul(cols).is_none_or(|n| n > MAX_VALUES) {
        return 0;
    }
    let mut stored = Vec::new();
    for chunk in rest.chunks(4) {
        let [name, dtype, shape, bytes] = chunk else { return 0 };
        let (Ok(name), Some(&dtype), Some(shape)) = (std::str::from_utf8(name), dtype.first(), numbers(shape)) else { return 0 };
        let Ok(part) = Part::new(name, DType::ALL[dtype as usize % DType::ALL.len()], shape, bytes.to_vec()) else { return 0 };
        stored.push(part);
    }
    let encoded = Encoded { codec: id.to_owned(), params, shape: [rows, cols], parts: stored };
    let _ = codec.size_bits(&encoded);
    let Ok(values) = codec.decode(&encoded) else { return 0 };
    assert_eq!(values.len(), rows * cols, "codec `{id}` decoded {} values for a {rows}x{cols} tensor", values.len());
    1
}
