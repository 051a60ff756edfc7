//! The model's tokenizer, from its `tokenizer.json` or from the one a GGUF's vocabulary becomes
//! ([`crate::gguf_tokenizer`]), through the `tokenizers` crate.
//!
//! Perplexity and calibration both tokenize raw text without special tokens: a BOS token at the
//! start of a 700 kB text would be one token in 150,000, and its presence would differ between
//! runtimes for no benefit.

use std::str::FromStr;

use tenpak_error::{Context, bail};
pub use tokenizers::Tokenizer;

use crate::{ModelSource, TokenizerSource};

/// Load the tokenizer `source` describes. `model` names the model in errors.
pub fn load(source: &TokenizerSource, model: &str) -> tenpak_error::Result<Tokenizer> {
    let tokenizer = match source {
        TokenizerSource::File(path) => Tokenizer::from_file(path).map_err(|e| {
            let file = path.file_name().map_or_else(|| "tokenizer.json".into(), |n| n.to_string_lossy());
            tenpak_error::err!("{model}: cannot load its tokenizer ({file}): {e}")
        })?,
        TokenizerSource::Json(json) => Tokenizer::from_str(json)
            .map_err(|e| tenpak_error::err!("{model}: the tokenizer built from the GGUF vocabulary does not load: {e}"))?,
        TokenizerSource::Missing => {
            bail!("{model}: no tokenizer found (expected tokenizer.json beside the weights, or a GGUF vocabulary)")
        }
    };
    Ok(without_bpe_cache(tokenizer))
}

/// `tokenizer` with its BPE word cache turned off.
///
/// tokenizers 0.23 keeps that cache in a thread-local map keyed by a per-instance id and never
/// removes an instance's entry, not even when the tokenizer is dropped: every tokenizer built
/// leaks up to 10,000 cached words on each thread that used it (found by the `gguf_tokenizer`
/// fuzz target, whose memory grew by 2.4 KB per input; `tenpak serve` builds one per job).
/// TenPak tokenizes each text once, so the cache buys little here.
fn without_bpe_cache(mut tokenizer: Tokenizer) -> Tokenizer {
    if let tokenizers::ModelWrapper::BPE(bpe) = tokenizer.get_model() {
        let mut bpe = bpe.clone();
        bpe.resize_cache(0);
        tokenizer.with_model(bpe);
    }
    tokenizer
}

/// The tokenizer of `model`, with the source's explanation when it has none.
pub fn for_model(model: &dyn ModelSource) -> tenpak_error::Result<Tokenizer> {
    let name = model.path().display().to_string();
    let source = model.tokenizer();
    if let (TokenizerSource::Missing, Some(why)) = (&source, model.tokenizer_error()) {
        bail!("{name}: no usable tokenizer: {why}");
    }
    load(&source, &name)
}

/// Token ids of `text`, without special tokens (no BOS/EOS added).
pub fn encode(tokenizer: &Tokenizer, text: &str) -> tenpak_error::Result<Vec<u32>> {
    let encoding = tokenizer.encode(text, false).map_err(|e| tenpak_error::err!("tokenization failed: {e}"))?;
    Ok(encoding.get_ids().to_vec())
}

/// Token ids of the text in file `path`, without special tokens. Errors name the file.
pub fn encode_file(tokenizer: &Tokenizer, path: &std::path::Path) -> tenpak_error::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the text", path.display()))?;
    encode(tokenizer, &text).with_context(|| path.display().to_string())
}

/// Token ids of a prefix of the text in file `path` holding at least `min_tokens` tokens (or the
/// whole text, if it holds fewer), without special tokens; see [`encode_prefix`].
pub fn encode_file_prefix(tokenizer: &Tokenizer, path: &std::path::Path, min_tokens: usize) -> tenpak_error::Result<Vec<u32>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read the text", path.display()))?;
    encode_prefix(tokenizer, &text, min_tokens).with_context(|| path.display().to_string())
}

/// Token ids of a prefix of `text` holding at least `min_tokens` tokens (or the whole text, if it
/// holds fewer), without special tokens.
///
/// Calibration needs only its first windows, and tokenizing a whole 10 MB text costs about a
/// gigabyte of transient memory in the tokenizer. The prefix ends at a line break (so no word is
/// cut) and grows fourfold until it holds enough tokens; the ids of a prefix can differ from the
/// whole text's only in the last few tokens before the cut, which lie past the windows used.
pub fn encode_prefix(tokenizer: &Tokenizer, text: &str, min_tokens: usize) -> tenpak_error::Result<Vec<u32>> {
    // Eight bytes per token is generous for English BPE (about 4.5 is typical).
    let mut budget = min_tokens.saturating_mul(8).max(4096);
    loop {
        let prefix = if budget >= text.len() {
            text
        } else {
            let cut = text[..text.floor_char_boundary(budget)].rfind('\n').map_or(budget, |i| i + 1);
            &text[..text.floor_char_boundary(cut)]
        };
        let ids = encode(tokenizer, prefix)?;
        // One window beyond the cut keeps the boundary's tokens out of the windows used.
        if prefix.len() == text.len() || ids.len() >= min_tokens + 64 {
            return Ok(ids);
        }
        budget = budget.saturating_mul(4);
    }
}
