//! Text from a model or an artifact: KV-cached decoding on the runtime, greedy or sampled.
//!
//! The weights are loaded (an artifact's decoded through its codecs) once; the prompt runs in
//! one forward pass that fills each block's key/value cache ([`LlamaModel::forward_cached`]),
//! then every new token runs alone against the cache.

use std::sync::Arc;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tenpak_api::registry::Registry;
use tenpak_error::{Context, bail, ensure};
use tenpak_model::chat::{ChatTemplate, Message, TemplateSource};
use tenpak_model::runtime::{LlamaModel, RopeTables, ops};
use tenpak_model::tokenize::{self, Tokenizer};

use crate::model::ModelSpec;

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampling {
    /// The most likely token (the first, on a tie), as transformers' `do_sample=False`.
    Greedy,
    /// Drawn from the distribution at `temperature`, cut to the `top_k` most likely tokens (0:
    /// no cut) and then to the smallest set whose probability reaches `top_p`, by a generator
    /// seeded with `seed` (the same seed gives the same text).
    Sample {
        /// Logits are divided by it (> 0).
        temperature: f32,
        /// Keep this many of the most likely tokens; 0 keeps all.
        top_k: usize,
        /// Keep the most likely tokens until their probability reaches this (0 < top_p ≤ 1).
        top_p: f32,
        /// Random seed.
        seed: u64,
    },
}

/// Why generation stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The model produced its end-of-sequence token (included in the ids).
    Eos,
    /// `max_new_tokens` were generated.
    Length,
}

/// A generation's tokens and timings.
#[derive(Clone, Debug)]
pub struct Generation {
    /// The prompt's token ids.
    pub prompt: Vec<u32>,
    /// The new token ids, in order.
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub stop: Stop,
    /// Seconds for the prompt's forward pass.
    pub prompt_seconds: f64,
    /// Seconds for the new tokens after the first.
    pub generation_seconds: f64,
}

impl Generation {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_second(&self) -> f64 {
        self.prompt.len() as f64 / self.prompt_seconds.max(f64::MIN_POSITIVE)
    }

    /// New tokens per second (after the first, which the prompt pass yields).
    pub fn tokens_per_second(&self) -> f64 {
        self.tokens.len().saturating_sub(1) as f64 / self.generation_seconds.max(f64::MIN_POSITIVE)
    }
}

/// A model in memory with its tokenizer, ready to generate.
pub struct Generator {
    model: LlamaModel,
    tokenizer: Tokenizer,
    name: String,
    chat: Option<TemplateSource>,
}

impl Generator {
    /// Load `spec` (a model or an artifact, every weight decoded once) and its tokenizer.
    pub fn open(spec: &ModelSpec, registry: &Arc<Registry>) -> tenpak_error::Result<Generator> {
        let source = spec.open_any(registry.clone())?;
        let name = spec.name();
        let tokenizer = tokenize::for_model(source.as_ref()).with_context(|| name.clone())?;
        let chat = source.chat_template()?;
        let model = LlamaModel::load(source.config(), source.as_ref()).with_context(|| format!("loading {name}"))?;
        Ok(Generator { model, tokenizer, name, chat })
    }

    /// A model already loaded, with its tokenizer and its chat template if it has one.
    pub fn new(model: LlamaModel, tokenizer: Tokenizer, name: impl Into<String>, chat: Option<TemplateSource>) -> Generator {
        Generator { model, tokenizer, name: name.into(), chat }
    }

    /// The model's chat template, compiled, with the texts of its BOS/EOS tokens (from the
    /// source's tokenizer_config.json, else the configuration's token ids).
    pub fn chat_template(&self) -> tenpak_error::Result<ChatTemplate> {
        let source = self.chat.as_ref().with_context(|| {
            format!(
                "{}: the model ships no chat template (none in the GGUF's tokenizer.chat_template, chat_template.jinja or \
                 tokenizer_config.json); give a plain --prompt without --chat",
                self.name
            )
        })?;
        let config = self.model.config();
        let token = |id: Option<u32>| id.and_then(|id| self.tokenizer.id_to_token(id));
        Ok(ChatTemplate::new(source)?.with_special_tokens(token(config.bos_token_id), token(config.eos_token_id)))
    }

    /// The token ids of `messages` rendered by `template`, opening the assistant's turn. The
    /// template writes every special token itself, so the tokenizer adds none (as transformers'
    /// `apply_chat_template(..., add_generation_prompt=True)`).
    pub fn encode_chat(&self, template: &ChatTemplate, messages: &[Message]) -> tenpak_error::Result<Vec<u32>> {
        let text = template.render(messages, true)?;
        Ok(self.tokenizer.encode(text, false).map_err(|e| tenpak_error::err!("tokenizing the chat prompt: {e}"))?.get_ids().to_vec())
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The model as given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The token ids of `prompt`, with the special tokens the tokenizer adds (a BOS where the
    /// model wants one), as transformers' `tokenizer(prompt)` gives them.
    pub fn encode(&self, prompt: &str) -> tenpak_error::Result<Vec<u32>> {
        Ok(self.tokenizer.encode(prompt, true).map_err(|e| tenpak_error::err!("tokenizing the prompt: {e}"))?.get_ids().to_vec())
    }

    /// Text of `ids` (special tokens skipped).
    pub fn decode(&self, ids: &[u32]) -> tenpak_error::Result<String> {
        self.tokenizer.decode(ids, true).map_err(|e| tenpak_error::err!("decoding tokens: {e}"))
    }

    /// Generate up to `max_new_tokens` after `prompt` (token ids), stopping at the model's
    /// end-of-sequence token. `on_token(id)` sees each new token as soon as it is chosen.
    pub fn generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        sampling: Sampling,
        on_token: &mut dyn FnMut(u32) -> tenpak_error::Result<()>,
    ) -> tenpak_error::Result<Generation> {
        ensure!(!prompt.is_empty(), "the prompt has no tokens");
        if let Sampling::Sample { temperature, top_p, .. } = sampling {
            ensure!(temperature > 0.0 && temperature.is_finite(), "temperature must be positive, got {temperature}");
            ensure!(top_p > 0.0 && top_p <= 1.0, "top_p must be in (0, 1], got {top_p}");
        }
        let config = self.model.config();
        let limit = config.max_position_embeddings;
        let positions = prompt.len() + max_new_tokens;
        ensure!(
            positions <= limit,
            "{} prompt tokens + {max_new_tokens} new ones exceed the model's max_position_embeddings {limit}",
            prompt.len()
        );
        let rope = RopeTables::new(config, positions)?;
        let mut cache = self.model.new_cache();
        let mut rng = match sampling {
            Sampling::Sample { seed, .. } => Some(StdRng::seed_from_u64(seed)),
            Sampling::Greedy => None,
        };
        let eos = config.eos_token_id;
        let started = Instant::now();
        let mut logits = self.model.forward_cached(prompt, &rope, &mut cache)?;
        let prompt_seconds = started.elapsed().as_secs_f64();
        let started = Instant::now();
        let mut tokens = Vec::with_capacity(max_new_tokens);
        let mut stop = Stop::Length;
        while tokens.len() < max_new_tokens {
            let rows = logits.dims()[0];
            let last = logits.narrow(0, rows - 1, 1)?;
            let next = ops::with_f32_slice(&last, |row| choose(row, sampling, rng.as_mut()))??;
            tokens.push(next);
            on_token(next)?;
            if Some(next) == eos {
                stop = Stop::Eos;
                break;
            }
            if tokens.len() < max_new_tokens {
                logits = self.model.forward_cached(&[next], &rope, &mut cache)?;
            }
        }
        Ok(Generation { prompt: prompt.to_vec(), tokens, stop, prompt_seconds, generation_seconds: started.elapsed().as_secs_f64() })
    }
}

/// The next token from one row of logits.
fn choose(row: &[f32], sampling: Sampling, rng: Option<&mut StdRng>) -> tenpak_error::Result<u32> {
    if let Some((i, v)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        bail!("the logit of token {i} is {v}: the model produced non-finite logits (are its weights finite?)");
    }
    let argmax = || row.iter().enumerate().fold(0, |best, (i, &v)| if v > row[best] { i } else { best }) as u32;
    match (sampling, rng) {
        (Sampling::Greedy, _) => Ok(argmax()),
        (Sampling::Sample { temperature, top_k, top_p, .. }, Some(rng)) => {
            // Most likely first; ties by id, so the order (and the draw) is deterministic.
            let mut order: Vec<u32> = (0..row.len() as u32).collect();
            order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            if top_k > 0 {
                order.truncate(top_k);
            }
            let max = f64::from(row[order[0] as usize]);
            let weights: Vec<f64> = order.iter().map(|&t| ((f64::from(row[t as usize]) - max) / f64::from(temperature)).exp()).collect();
            let total: f64 = weights.iter().sum();
            let mut kept = 0;
            let mut mass = 0.0;
            for w in &weights {
                kept += 1;
                mass += w / total;
                if mass >= f64::from(top_p) {
                    break;
                }
            }
            let total: f64 = weights[..kept].iter().sum();
            let mut draw = rng.random::<f64>() * total;
            for (&t, &w) in order.iter().zip(&weights[..kept]) {
                if draw < w {
                    return Ok(t);
                }
                draw -= w;
            }
            Ok(order[kept - 1])
        }
        (Sampling::Sample { .. }, None) => unreachable!("a sampling run has its generator"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_cuts_and_is_seeded() {
        let row = [0.0f32, 5.0, 4.9, -3.0, 5.0];
        assert_eq!(choose(&row, Sampling::Greedy, None).unwrap(), 1, "the first of two maxima");
        // top_k = 1 is greedy whatever the temperature.
        let one = Sampling::Sample { temperature: 100.0, top_k: 1, top_p: 1.0, seed: 3 };
        let mut rng = StdRng::seed_from_u64(3);
        assert!((0..50).all(|_| choose(&row, one, Some(&mut rng)).unwrap() == 1));
        // top_p small keeps the top token only.
        let nucleus = Sampling::Sample { temperature: 1.0, top_k: 0, top_p: 0.01, seed: 3 };
        assert!((0..50).all(|_| choose(&row, nucleus, Some(&mut rng)).unwrap() == 1));
        // Three near-equal tokens at top_k = 3: all three drawn, never the others; the same seed
        // draws the same sequence.
        let three = Sampling::Sample { temperature: 1.0, top_k: 3, top_p: 1.0, seed: 9 };
        let draws = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..200).map(|_| choose(&row, three, Some(&mut rng)).unwrap()).collect::<Vec<_>>()
        };
        let a = draws(9);
        assert!(a.iter().all(|t| [1, 2, 4].contains(t)) && [1, 2, 4].iter().all(|t| a.contains(t)), "{a:?}");
        assert_eq!(a, draws(9));
        assert!(choose(&[0.0, f32::NAN], Sampling::Greedy, None).unwrap_err().to_string().contains("token 1"));
    }
}
