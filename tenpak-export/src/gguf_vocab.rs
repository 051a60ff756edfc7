//! `tokenizer.ggml.*` metadata for a `tokenizer.json`: the inverse of
//! [`tenpak_model::gguf_tokenizer`], for the byte-level BPE tokenizers it can express.
//!
//! The pre-tokenizer is named the way llama.cpp names it (`tokenizer.ggml.pre`): the name whose
//! pipeline, as [`tenpak_model::gguf_tokenizer`] writes it, equals the file's (ignoring
//! `trim_offsets`, which changes offsets, never ids). A pipeline no name matches is refused: llama.cpp
//! would tokenize it with some other regex, and every id would be subtly wrong.

use tenpak_error::{Context, Result, bail};
use candle_core::quantized::gguf_file::Value;
use serde_json::Value as Json;

use tenpak_model::ModelConfig;
use tenpak_model::gguf_tokenizer::{SUPPORTED_PRE_TOKENIZERS, pre_tokenizer, token_type};

/// llama.cpp's type for padding entries that only fill the embedding (`LLAMA_TOKEN_TYPE_UNUSED`).
const UNUSED: i32 = 5;

/// The `tokenizer.ggml.*` metadata for `tokenizer_json`. The token list is padded with
/// `[PAD<id>]` entries up to `config.vocab_size` (the embedding's rows), as llama.cpp's converter
/// does, since llama.cpp wants one token per embedding row.
pub fn tokenizer_metadata(
    tokenizer_json: &str,
    config: &ModelConfig,
) -> Result<Vec<(String, Value)>> {
    let root: Json =
        serde_json::from_str(tokenizer_json).context("tokenizer.json is not valid JSON")?;
    let model = root.get("model").context("tokenizer.json has no `model`")?;
    let kind = model.get("type").and_then(Json::as_str).unwrap_or("(none)");
    if kind != "BPE" {
        bail!(
            "tokenizer.json: model type {kind}; only byte-level BPE tokenizers can be written to GGUF"
        );
    }
    // Qwen2's tokenizer.json normalizes to NFC, which llama.cpp does not do; the two agree on
    // every NFC text (all the ids of ordinary text), so NFC alone is accepted, as is the empty
    // normalizer sequence transformers writes for some byte-level tokenizers.
    let normalizer = &root["normalizer"];
    let normalizer_ok = normalizer.is_null()
        || normalizer["type"] == "NFC"
        || normalizer["type"] == "Sequence"
            && normalizer["normalizers"].as_array().is_some_and(Vec::is_empty);
    if !normalizer_ok {
        bail!(
            "tokenizer.json: normalizer {}: a SentencePiece-style BPE; only byte-level BPE tokenizers \
             (GPT-2 / Llama 3 / Qwen2 / SmolLM style) can be written to GGUF",
            serde_json::to_string(normalizer).unwrap_or_default()
        );
    }
    // Tokens by id: the BPE vocabulary, then the added tokens (which may extend it).
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .context("tokenizer.json: model.vocab is not an object")?;
    let mut tokens: Vec<Option<String>> = Vec::new();
    let mut types: Vec<i32> = Vec::new();
    let mut put = |id: u64, token: &str, ty: i64| -> Result<()> {
        let id = usize::try_from(id)
            .ok()
            .filter(|&i| i < 10_000_000)
            .with_context(|| format!("token id {id} is implausible"))?;
        if tokens.len() <= id {
            tokens.resize(id + 1, None);
            types.resize(id + 1, token_type::NORMAL as i32);
        }
        tokens[id] = Some(token.to_owned());
        types[id] = ty as i32;
        Ok(())
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .with_context(|| format!("tokenizer.json: vocab[{token:?}] is not a token id"))?;
        put(id, token, token_type::NORMAL)?;
    }
    for (i, added) in root
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let id = added["id"]
            .as_u64()
            .with_context(|| format!("tokenizer.json: added_tokens[{i}].id"))?;
        let content = added["content"]
            .as_str()
            .with_context(|| format!("tokenizer.json: added_tokens[{i}].content"))?;
        let special = added["special"].as_bool().unwrap_or(false);
        put(
            id,
            content,
            if special {
                token_type::CONTROL
            } else {
                token_type::USER_DEFINED
            },
        )?;
    }
    if tokens.len() > config.vocab_size {
        bail!(
            "tokenizer.json has {} tokens, more than the embedding's {} rows",
            tokens.len(),
            config.vocab_size
        );
    }
    // Byte fallback only acts on a symbol the vocabulary lacks, by emitting the `<0xNN>` tokens
    // of its bytes. A byte-level BPE whose vocabulary holds all 256 byte symbols never falls
    // back, and one without `<0xNN>` tokens falls back to nothing (the unknown token, as without
    // the flag): either way the flag changes no id.
    if model.get("byte_fallback").and_then(Json::as_bool) == Some(true) {
        let missing = byte_level_alphabet()
            .into_iter()
            .filter(|c| !vocab.contains_key(&c.to_string()))
            .count();
        let byte_tokens = vocab.keys().filter(|t| is_byte_token(t)).count();
        if missing > 0 && byte_tokens > 0 {
            bail!(
                "tokenizer.json: byte_fallback is on, {missing} of the 256 byte-level symbols are not in the \
                 vocabulary and it has {byte_tokens} <0xNN> byte tokens (a SentencePiece-style BPE); only \
                 byte-level BPE tokenizers can be written to GGUF"
            );
        }
    }
    let mut strings = Vec::with_capacity(config.vocab_size);
    for (id, token) in tokens.iter().enumerate() {
        match token {
            Some(t) => strings.push(Value::String(t.clone())),
            None => bail!(
                "tokenizer.json: no token has id {id} (ids below {} must all be used)",
                tokens.len()
            ),
        }
    }
    for id in tokens.len()..config.vocab_size {
        strings.push(Value::String(format!("[PAD{id}]")));
        types.push(UNUSED);
    }

    let merges = model
        .get("merges")
        .and_then(Json::as_array)
        .context("tokenizer.json: model.merges is not an array")?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) if pair.len() == 2 && pair.iter().all(Json::is_string) => {
                Ok(Value::String(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or(""),
                    pair[1].as_str().unwrap_or("")
                )))
            }
            other => bail!(
                "tokenizer.json: model.merges[{i}] = {other}: expected \"a b\" or [\"a\", \"b\"]"
            ),
        })
        .collect::<Result<Vec<_>>>()?;

    let pre = pre_tokenizer_name(
        &root["pre_tokenizer"],
        model
            .get("ignore_merges")
            .and_then(Json::as_bool)
            .unwrap_or(false),
    )?;
    let (add_bos, add_eos) = added_specials(&root["post_processor"]);

    let mut md = vec![
        (
            "tokenizer.ggml.model".to_owned(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_owned(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_owned(), Value::Array(strings)),
        (
            "tokenizer.ggml.token_type".to_owned(),
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_owned(), Value::Array(merges)),
    ];
    if let Some(bos) = config.bos_token_id {
        md.push(("tokenizer.ggml.bos_token_id".into(), Value::U32(bos)));
    }
    if let Some(eos) = config.eos_token_id {
        md.push(("tokenizer.ggml.eos_token_id".into(), Value::U32(eos)));
    }
    if add_bos && config.bos_token_id.is_none() || add_eos && config.eos_token_id.is_none() {
        bail!(
            "tokenizer.json adds BOS/EOS tokens but the model configuration names no bos_token_id/eos_token_id"
        );
    }
    md.push(("tokenizer.ggml.add_bos_token".into(), Value::Bool(add_bos)));
    md.push(("tokenizer.ggml.add_eos_token".into(), Value::Bool(add_eos)));
    Ok(md)
}

/// Whether `token` is a SentencePiece byte token `<0xNN>`.
fn is_byte_token(token: &str) -> bool {
    token.len() == 6
        && token.starts_with("<0x")
        && token.ends_with('>')
        && token[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// GPT-2's byte-level alphabet: the character each byte 0..=255 is written as in the vocabulary
/// (printable Latin-1 as itself, the others as U+0100 onwards, in byte order).
fn byte_level_alphabet() -> Vec<char> {
    let mut shifted = 0u32;
    (0u32..256)
        .map(|b| {
            let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
            let code = if printable {
                b
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(code).expect("below U+0200")
        })
        .collect()
}

/// llama.cpp's name for the pre-tokenizer pipeline `pre` (with BPE's `ignore_merges`).
fn pre_tokenizer_name(pre: &Json, ignore_merges: bool) -> Result<&'static str> {
    let wanted = without_trim_offsets(pre);
    for name in SUPPORTED_PRE_TOKENIZERS {
        let (pipeline, ignores) = pre_tokenizer(name).expect("every supported name has a pipeline");
        if ignores == ignore_merges && without_trim_offsets(&pipeline) == wanted {
            return Ok(name);
        }
    }
    bail!(
        "tokenizer.json: its pre-tokenizer {} matches none llama.cpp knows by name (TenPak writes: {})",
        serde_json::to_string(pre).unwrap_or_default(),
        SUPPORTED_PRE_TOKENIZERS.join(", ")
    )
}

fn without_trim_offsets(value: &Json) -> Json {
    match value {
        Json::Object(map) => Json::Object(
            map.iter()
                .filter(|(k, _)| *k != "trim_offsets")
                .map(|(k, v)| (k.clone(), without_trim_offsets(v)))
                .collect(),
        ),
        Json::Array(items) => Json::Array(items.iter().map(without_trim_offsets).collect()),
        other => other.clone(),
    }
}

/// Whether the post-processor wraps a single sequence in a special token before / after it
/// (a `TemplateProcessing`, alone or inside a `Sequence`).
fn added_specials(post: &Json) -> (bool, bool) {
    match post.get("type").and_then(Json::as_str) {
        Some("TemplateProcessing") => {
            let single = post["single"].as_array().cloned().unwrap_or_default();
            let position = single.iter().position(|p| p.get("Sequence").is_some());
            let is_special = |p: &Json| p.get("SpecialToken").is_some();
            match position {
                Some(at) => (
                    single[..at].iter().any(is_special),
                    single[at + 1..].iter().any(is_special),
                ),
                None => (false, false),
            }
        }
        Some("Sequence") => post["processors"]
            .as_array()
            .into_iter()
            .flatten()
            .map(added_specials)
            .fold((false, false), |(b, e), (b2, e2)| (b || b2, e || e2)),
        _ => (false, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A byte-level BPE tokenizer.json: the 256 byte symbols and one merge, GPT-2's pipeline.
    fn byte_level_json() -> Json {
        let alphabet = byte_level_alphabet();
        let mut vocab = serde_json::Map::new();
        for (i, c) in alphabet.iter().enumerate() {
            vocab.insert(c.to_string(), json!(i));
        }
        vocab.insert("ab".into(), json!(256));
        let (pre, _) = tenpak_model::gguf_tokenizer::pre_tokenizer("gpt-2").unwrap();
        json!({
            "normalizer": null,
            "pre_tokenizer": pre,
            "post_processor": null,
            "model": {"type": "BPE", "vocab": vocab, "merges": ["a b"]},
        })
    }

    fn metadata(json: &Json) -> Result<Vec<(String, Value)>> {
        let config = tenpak_testkit::tiny_llama_config(8, 16, 1, 260);
        tokenizer_metadata(&json.to_string(), &config)
    }

    fn names(md: &[(String, Value)]) -> String {
        format!("{md:?}")
    }

    /// transformers writes byte-level tokenizers with `byte_fallback: true` and an empty
    /// normalizer sequence; neither changes an id (every byte has its symbol), so the GGUF
    /// metadata is the same as without them.
    #[test]
    fn byte_fallback_and_an_empty_normalizer_on_a_byte_level_bpe_change_nothing() {
        let plain = metadata(&byte_level_json()).unwrap();
        let mut variant = byte_level_json();
        variant["model"]["byte_fallback"] = json!(true);
        variant["normalizer"] = json!({"type": "Sequence", "normalizers": []});
        assert_eq!(names(&metadata(&variant).unwrap()), names(&plain));
        assert!(names(&plain).contains("\"gpt-2\""));
    }

    /// Byte fallback onto `<0xNN>` tokens where byte symbols are missing, and SentencePiece's
    /// normalizers, are refused by name.
    #[test]
    fn sentencepiece_style_tokenizers_are_refused_by_name() {
        // A byte symbol missing: harmless without <0xNN> tokens (nothing to fall back to), a
        // SentencePiece-style vocabulary with them.
        let mut missing = byte_level_json();
        missing["model"]["byte_fallback"] = json!(true);
        let vocab = missing["model"]["vocab"].as_object_mut().unwrap();
        let id = vocab.remove("A").unwrap();
        vocab.insert("<0x41>".into(), id.clone());
        let err = metadata(&missing).unwrap_err().to_string();
        assert!(err.contains("byte_fallback") && err.contains("1 of the 256") && err.contains("<0xNN>"), "{err}");
        missing["model"]["vocab"].as_object_mut().unwrap().remove("<0x41>");
        missing["model"]["vocab"].as_object_mut().unwrap().insert("A-less".into(), id);
        metadata(&missing).unwrap();
        let mut spm = byte_level_json();
        spm["normalizer"] = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]});
        let err = metadata(&spm).unwrap_err().to_string();
        assert!(err.contains("normalizer") && err.contains("Replace"), "{err}");
    }
}
