//! A Hugging Face `tokenizer.json` built from the vocabulary a GGUF file embeds.
//!
//! GGUF stores a byte-level BPE tokenizer as plain lists (`tokenizer.ggml.tokens`, `merges`,
//! `token_type`) plus the *name* of the pre-tokenizer (`tokenizer.ggml.pre`); llama.cpp maps that
//! name to its regexes in `llama-vocab.cpp`. We map the same names to the pipeline the model's
//! original `tokenizer.json` uses, so the result tokenizes like both llama.cpp and the original.
//! An unknown name is an error, never a silent fallback: a wrong pre-tokenizer still produces
//! plausible ids, only wrong ones, and every perplexity figure would inherit the error.

use std::collections::HashMap;

use tenpak_error::{Context, bail};
use candle_core::quantized::gguf_file::Value;
use serde_json::{Map, Value as Json, json};

/// `tokenizer.ggml.pre` values this module knows how to express, grouped as llama.cpp groups them.
pub const SUPPORTED_PRE_TOKENIZERS: &[&str] = &[
    // \p{N} isolated, then the GPT-2 regex (llama.cpp's STARCODER group).
    "smollm",
    "starcoder",
    "refact",
    "codeshell",
    "command-r",
    "exaone",
    "minerva-7b",
    // the GPT-2 regex alone
    "gpt-2",
    "mpt",
    "olmo",
    "jais",
    // Llama 3's regex, digits in groups of up to three, merges ignored for whole-vocab words
    "llama-bpe",
    "llama3",
    "llama-v3",
    "smaug-bpe",
    // Qwen2's regex: Llama 3's with single digits
    "qwen2",
    "deepseek-r1-qwen",
];

/// The regex of Llama 3's `tokenizer.json` (llama.cpp's LLAMA3 pre-tokenizer is the same).
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regex of Qwen2's `tokenizer.json` (llama.cpp's QWEN2 pre-tokenizer): Llama 3's, except
/// that digits split one by one.
const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's token types (`llama_token_type`).
pub mod token_type {
    pub const NORMAL: i64 = 1;
    pub const UNKNOWN: i64 = 2;
    pub const CONTROL: i64 = 3;
    pub const USER_DEFINED: i64 = 4;
}

/// Build the `tokenizer.json` text for the tokenizer described by GGUF `metadata`.
/// Errors name the metadata key at fault; the caller adds the file name.
pub fn tokenizer_json_from_gguf(metadata: &HashMap<String, Value>) -> tenpak_error::Result<String> {
    let model = string_field(metadata, "tokenizer.ggml.model")?;
    if model != "gpt2" {
        bail!(
            "tokenizer.ggml.model is \"{model}\"; only byte-level BPE (\"gpt2\") tokenizers can be rebuilt from GGUF \
             (SentencePiece \"llama\" vocabularies are not supported yet)"
        );
    }
    let tokens = string_array(metadata, "tokenizer.ggml.tokens")?;
    let mut vocab = Map::new();
    for (id, token) in tokens.iter().enumerate() {
        if let Some(previous) = vocab.insert((*token).to_owned(), json!(id)) {
            bail!("tokenizer.ggml.tokens: token {token:?} appears twice (ids {previous} and {id})");
        }
    }

    let merges = string_array(metadata, "tokenizer.ggml.merges")?;
    let mut merge_list = Vec::with_capacity(merges.len());
    for (index, merge) in merges.iter().enumerate() {
        let Some((left, right)) = merge.split_once(' ') else {
            bail!("tokenizer.ggml.merges[{index}] = {merge:?}: expected two tokens separated by one space");
        };
        for part in [left, right] {
            if !vocab.contains_key(part) {
                bail!("tokenizer.ggml.merges[{index}] = {merge:?}: {part:?} is not in tokenizer.ggml.tokens");
            }
        }
        merge_list.push(json!(merge));
    }

    let token_types = match metadata.get("tokenizer.ggml.token_type") {
        None => vec![1; tokens.len()],
        Some(v) => {
            let items = v
                .to_vec()
                .map_err(|_| tenpak_error::err!("tokenizer.ggml.token_type: expected an array"))?;
            if items.len() != tokens.len() {
                bail!(
                    "tokenizer.ggml.token_type has {} entries, tokenizer.ggml.tokens has {}",
                    items.len(),
                    tokens.len()
                );
            }
            items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    integer(v).with_context(|| format!("tokenizer.ggml.token_type[{i}]: expected an integer"))
                })
                .collect::<tenpak_error::Result<Vec<i64>>>()?
        }
    };
    // Control and unknown tokens are special: matched whole in text, skipped when decoding with
    // skip_special_tokens. User-defined tokens are matched whole too but decode as text.
    let added_tokens: Vec<Json> = token_types
        .iter()
        .enumerate()
        .filter(|&(_, &t)| matches!(t, token_type::UNKNOWN | token_type::CONTROL | token_type::USER_DEFINED))
        .map(|(id, &t)| {
            json!({
                "id": id,
                "content": tokens[id],
                "single_word": false,
                "lstrip": false,
                "rstrip": false,
                "normalized": false,
                "special": t != token_type::USER_DEFINED,
            })
        })
        .collect();

    let pre = match metadata.get("tokenizer.ggml.pre") {
        Some(_) => string_field(metadata, "tokenizer.ggml.pre")?,
        None => bail!(
            "tokenizer.ggml.pre is missing, so the pre-tokenizer is unknown (supported: {})",
            SUPPORTED_PRE_TOKENIZERS.join(", ")
        ),
    };
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(pre)?;

    let add_bos = optional_bool(metadata, "tokenizer.ggml.add_bos_token")?.unwrap_or(false);
    let add_eos = optional_bool(metadata, "tokenizer.ggml.add_eos_token")?.unwrap_or(false);
    let special_token = |key: &str| -> tenpak_error::Result<(String, usize)> {
        let value = metadata
            .get(key)
            .with_context(|| format!("{key} is missing but add_*_token asks for it"))?;
        let id = integer(value).with_context(|| format!("{key}: expected an integer"))? as usize;
        let token = tokens
            .get(id)
            .with_context(|| format!("{key} = {id} is outside the vocabulary"))?;
        Ok(((*token).to_owned(), id))
    };
    let post_processor = if add_bos || add_eos {
        let bos = if add_bos {
            Some(special_token("tokenizer.ggml.bos_token_id")?)
        } else {
            None
        };
        let eos = if add_eos {
            Some(special_token("tokenizer.ggml.eos_token_id")?)
        } else {
            None
        };
        template_processing(bos, eos)
    } else {
        json!({"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true})
    };

    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": null,
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": false,
            "byte_fallback": false,
            "ignore_merges": ignore_merges,
            "vocab": vocab,
            "merges": merge_list,
        },
    });
    Ok(serde_json::to_string(&tokenizer).expect("a JSON value always serializes"))
}

/// The HF pre-tokenizer equivalent to llama.cpp's regexes for `pre`, and whether BPE skips the
/// merges for words already in the vocabulary (llama.cpp's `ignore_merges`, set for Llama 3).
pub fn pre_tokenizer(pre: &str) -> tenpak_error::Result<(Json, bool)> {
    // ByteLevel with use_regex applies the GPT-2 regex
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ and maps bytes to
    // the printable alphabet the vocabulary is written in.
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    Ok(match pre {
        // llama.cpp: {"\p{N}", <GPT-2 regex>}; the StarCoder/SmolLM tokenizer.json says the same as
        // Digits(individual_digits) followed by ByteLevel.
        "smollm" | "starcoder" | "refact" | "codeshell" | "command-r" | "exaone" | "minerva-7b" => (
            json!({
                "type": "Sequence",
                "pretokenizers": [{"type": "Digits", "individual_digits": true}, byte_level(true)],
            }),
            false,
        ),
        "gpt-2" | "mpt" | "olmo" | "jais" => (byte_level(true), false),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => (
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": LLAMA3_REGEX}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ],
            }),
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" => (
            json!({
                "type": "Sequence",
                "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ],
            }),
            false,
        ),
        other => bail!(
            "tokenizer.ggml.pre is \"{other}\", a pre-tokenizer TenPak cannot reproduce (supported: {})",
            SUPPORTED_PRE_TOKENIZERS.join(", ")
        ),
    })
}

/// A `TemplateProcessing` post-processor that wraps each sequence in the given BOS/EOS tokens.
fn template_processing(bos: Option<(String, usize)>, eos: Option<(String, usize)>) -> Json {
    let wrap = |seq: &str, type_id: u32| -> Vec<Json> {
        let special = |t: &(String, usize)| json!({"SpecialToken": {"id": t.0, "type_id": type_id}});
        let mut parts = Vec::new();
        parts.extend(bos.as_ref().map(special));
        parts.push(json!({"Sequence": {"id": seq, "type_id": type_id}}));
        parts.extend(eos.as_ref().map(special));
        parts
    };
    let single = wrap("A", 0);
    let pair: Vec<Json> = wrap("A", 0).into_iter().chain(wrap("B", 1)).collect();
    let mut special_tokens = Map::new();
    for (token, id) in bos.iter().chain(eos.iter()) {
        special_tokens.insert(token.clone(), json!({"id": token, "ids": [id], "tokens": [token]}));
    }
    json!({"type": "TemplateProcessing", "single": single, "pair": pair, "special_tokens": special_tokens})
}

fn string_field<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> tenpak_error::Result<&'a str> {
    match metadata.get(key) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => bail!("{key}: expected a string, found {:?}", other.value_type()),
        None => bail!("{key} is missing"),
    }
}

fn string_array<'a>(metadata: &'a HashMap<String, Value>, key: &str) -> tenpak_error::Result<Vec<&'a str>> {
    let items = match metadata.get(key) {
        Some(Value::Array(items)) => items,
        Some(other) => bail!("{key}: expected an array of strings, found {:?}", other.value_type()),
        None => bail!("{key} is missing"),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, v)| match v {
            Value::String(s) => Ok(s.as_str()),
            other => bail!("{key}[{i}]: expected a string, found {:?}", other.value_type()),
        })
        .collect()
}

fn optional_bool(metadata: &HashMap<String, Value>, key: &str) -> tenpak_error::Result<Option<bool>> {
    match metadata.get(key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => bail!("{key}: expected a boolean, found {:?}", other.value_type()),
    }
}

/// Any GGUF integer value as i64 (token ids and types come as u32 or i32 depending on the writer).
pub(crate) fn integer(value: &Value) -> tenpak_error::Result<i64> {
    Ok(match value {
        Value::U8(v) => *v as i64,
        Value::I8(v) => *v as i64,
        Value::U16(v) => *v as i64,
        Value::I16(v) => *v as i64,
        Value::U32(v) => *v as i64,
        Value::I32(v) => *v as i64,
        Value::U64(v) => i64::try_from(*v).context("integer out of range")?,
        Value::I64(v) => *v,
        other => bail!("expected an integer, found {:?}", other.value_type()),
    })
}
