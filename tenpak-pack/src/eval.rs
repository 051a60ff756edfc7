//! Perplexity, by the protocol every TenPak figure states (DESIGN.md, "Perplexity protocol"):
//! tokenize the whole text once without special tokens; split the ids into non-overlapping
//! windows of `ctx` tokens; take the first `samples` windows; score every position except the
//! first of each window; PPL = exp(mean negative log-likelihood).
//!
//! The protocol is llama.cpp's `llama-perplexity` minus its habit of scoring only the second half
//! of each window, and transformers' stride = ctx evaluation without a BOS token, so a figure
//! here can be reproduced with either by following [`PplReport::protocol`].

use std::sync::Arc;

use candle_core::Tensor;
use std::time::Instant;

use tenpak_error::{Context, bail, ensure};
use tenpak_api::registry::Registry;

use crate::artifact::{DivergenceRecord, EvaluationRecord};
use crate::limits::Limits;
use crate::model::ModelSpec;
use tenpak_error::{Error, Kind};
use crate::observe::{PackObserver, Stage, Tracker};
use crate::text::{Text, TextSpec};

pub mod kld;
use tenpak_model::{ModelConfig, ModelSource};
use tenpak_model::runtime::{self, Block, Head, LlamaModel, RopeTables};
use tenpak_model::tokenize::{self, Tokenizer};

/// Default window length, in tokens.
pub const DEFAULT_CTX: usize = 512;

/// How to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PplOptions {
    /// Window length in tokens (at least 2: a window scores `ctx − 1` tokens).
    pub ctx: usize,
    /// Evaluate only the first this-many windows; `None`: every whole window of the text.
    /// Asking for more windows than the text has evaluates all of them (the report says how many).
    pub samples: Option<usize>,
    /// Windows per forward pass. 1 is fastest on small CPUs: one 512-token window already gives
    /// the matrix products enough rows; larger batches only add memory.
    pub batch: usize,
}

impl Default for PplOptions {
    fn default() -> Self {
        PplOptions { ctx: DEFAULT_CTX, samples: None, batch: 1 }
    }
}

/// Which positions a perplexity run scores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Protocol {
    /// TenPak's (DESIGN.md): the text without special tokens, every position but the first of
    /// each window.
    #[default]
    Tenpak,
    /// `llama-perplexity`'s default, to compare with its output: the text tokenized with the
    /// special tokens the tokenizer adds (a BOS where the model wants one), the first token of
    /// each window replaced by that BOS, and only the second half of each window scored
    /// (predictions of positions `ctx/2 + 1 .. ctx − 1`).
    LlamaCpp,
}

impl Protocol {
    /// The first scored prediction of a window (index into its `ctx − 1` NLLs).
    pub fn first_scored(self, ctx: usize) -> usize {
        match self {
            Protocol::Tenpak => 0,
            Protocol::LlamaCpp => ctx / 2,
        }
    }
}

/// The outcome of a perplexity run.
#[derive(Clone, Debug, PartialEq)]
pub struct PplReport {
    /// exp(mean NLL).
    pub ppl: f64,
    /// Mean negative log-likelihood per scored token, in nats.
    pub mean_nll: f64,
    /// Tokens scored: `windows · (ctx − 1)`.
    pub tokens_scored: usize,
    /// Windows evaluated.
    pub windows: usize,
    /// Whole windows the text holds.
    pub windows_available: usize,
    /// Window length.
    pub ctx: usize,
    /// Tokens in the whole text.
    pub text_tokens: usize,
    /// Seconds spent in forward passes (tokenization and model loading excluded).
    pub seconds: f64,
    /// Tokens run through the model per second: `windows · ctx / seconds`.
    pub tokens_per_second: f64,
    /// The protocol in one sentence, to print beside the figure.
    pub protocol: String,
}

/// How many windows of `ctx` tokens to evaluate out of `text_tokens`, with `samples` as a cap;
/// errors if the text holds no whole window. `text_name` names the text in errors.
pub fn window_count(text_tokens: usize, ctx: usize, samples: Option<usize>, text_name: &str) -> tenpak_error::Result<usize> {
    ensure!(ctx >= 2, "ctx must be at least 2 tokens (one window scores ctx − 1 positions), got {ctx}");
    if samples == Some(0) {
        bail!("samples must be at least 1");
    }
    let available = text_tokens / ctx;
    if available == 0 {
        bail!(
            "{text_name}: {text_tokens} tokens, fewer than one window of {ctx} tokens; \
             use a longer text or a smaller ctx"
        );
    }
    Ok(samples.map_or(available, |cap| cap.min(available)))
}

/// Perplexity of `model` on the token ids of a whole text (`ids`, from [`tokenize::encode`]).
/// `progress(done, total)` is called after each batch of windows.
pub fn perplexity(
    model: &LlamaModel,
    ids: &[u32],
    text_name: &str,
    options: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> tenpak_error::Result<PplReport> {
    perplexity_with(model, ids, text_name, options, &mut |done, total| {
        progress(done, total);
        Ok(())
    })
}

/// [`perplexity`], where `step(done, total)` may stop the run by returning an error (a
/// cancellation), which is returned as it is.
pub fn perplexity_with(
    model: &LlamaModel,
    ids: &[u32],
    text_name: &str,
    options: &PplOptions,
    step: &mut dyn FnMut(usize, usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<PplReport> {
    perplexity_by(model, ids, text_name, options, Protocol::Tenpak, None, step)
}

/// [`perplexity_with`] by `protocol`; with `bos`, the first token of every window is replaced by
/// it (llama.cpp's habit when its vocabulary adds a BOS).
pub fn perplexity_by(
    model: &LlamaModel,
    ids: &[u32],
    text_name: &str,
    options: &PplOptions,
    protocol: Protocol,
    bos: Option<u32>,
    step: &mut dyn FnMut(usize, usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<PplReport> {
    let scoring = Scoring::new(ids, text_name, options, protocol, bos, model.config())?;
    let started = Instant::now();
    let mut nll_sum = 0.0f64;
    for (first_window, window_ids) in &scoring.batches {
        let n = window_ids.len() / options.ctx;
        nll_sum += scoring.scored(&model.token_nll(window_ids, n, None)?, *first_window)?;
        step(first_window + n, scoring.windows)?;
    }
    Ok(scoring.report(nll_sum, started.elapsed().as_secs_f64()))
}

/// [`perplexity_by`] with one block of `weights` in memory at a time: every window's hidden
/// states go through block 0, then block 1, and so on, each block loaded, run and dropped. The
/// same operations on the same values as the whole-model forward (so the same figure, bit for
/// bit), with memory bounded by one block, the hidden states of the windows, and the embedding
/// and head, whatever the model's size. `step(done, total)` counts blocks.
pub fn perplexity_streamed(
    config: &ModelConfig,
    weights: &(impl runtime::WeightLoader + ?Sized),
    ids: &[u32],
    text_name: &str,
    options: &PplOptions,
    protocol: Protocol,
    bos: Option<u32>,
    step: &mut dyn FnMut(usize, usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<PplReport> {
    config.validate()?;
    let scoring = Scoring::new(ids, text_name, options, protocol, bos, config)?;
    let started = Instant::now();
    let total = config.num_hidden_layers + 1;
    let (hidden, head) = run_blocks(config, weights, &scoring, &mut |done| step(done, total))?;
    let ids: Vec<&[u32]> = scoring.batches.iter().map(|(_, window_ids)| window_ids.as_slice()).collect();
    let nlls = runtime::llama::token_nll_windows(&head, &hidden, &ids)?;
    let mut nll_sum = 0.0f64;
    for (nll, (first_window, _)) in nlls.iter().zip(&scoring.batches) {
        nll_sum += scoring.scored(nll, *first_window)?;
    }
    step(total, total)?;
    Ok(scoring.report(nll_sum, started.elapsed().as_secs_f64()))
}

/// The hidden states of `scoring`'s batches after the last block, and the model's head, with one
/// block of `weights` in memory at a time (see [`perplexity_streamed`]). `step(blocks done)` is
/// called after each block.
fn run_blocks(
    config: &ModelConfig,
    weights: &(impl runtime::WeightLoader + ?Sized),
    scoring: &Scoring<'_>,
    step: &mut dyn FnMut(usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<(Vec<Tensor>, Head)> {
    let ctx = scoring.ctx;
    let embed_tokens = runtime::llama::load_tensor(weights, "model.embed_tokens.weight", &[config.vocab_size, config.hidden_size])?;
    let mut hidden = scoring
        .batches
        .iter()
        .map(|(_, window_ids)| runtime::llama::embed(&embed_tokens, window_ids, window_ids.len() / ctx))
        .collect::<tenpak_error::Result<Vec<_>>>()?;
    let tied = config.tie_word_embeddings || weights.tensor_shape("lm_head.weight").is_none();
    let embed_tokens = tied.then_some(embed_tokens);
    let rope = RopeTables::new(config, ctx)?;
    for index in 0..config.num_hidden_layers {
        let block = Block::load(config, index, weights).with_context(|| format!("loading block {index}"))?;
        hidden = runtime::llama::forward_windows(&block, &hidden, &rope)?;
        step(index + 1)?;
    }
    let head = Head::load(config, weights, embed_tokens.as_ref())?;
    Ok((hidden, head))
}

/// The windows of one perplexity run and how they are scored.
struct Scoring<'a> {
    /// Per forward pass: its first window and the token ids of its windows (BOS applied).
    batches: Vec<(usize, Vec<u32>)>,
    ids_len: usize,
    windows: usize,
    ctx: usize,
    text_name: &'a str,
    protocol: Protocol,
    bos: Option<u32>,
}

impl<'a> Scoring<'a> {
    fn new(
        ids: &[u32],
        text_name: &'a str,
        options: &PplOptions,
        protocol: Protocol,
        bos: Option<u32>,
        config: &ModelConfig,
    ) -> tenpak_error::Result<Self> {
        let PplOptions { ctx, samples, batch } = *options;
        ensure!(batch >= 1, "batch must be at least 1 window");
        let windows = window_count(ids.len(), ctx, samples, text_name)?;
        let rope_limit = config.max_position_embeddings;
        ensure!(ctx <= rope_limit, "ctx {ctx} exceeds the model's max_position_embeddings {rope_limit}");
        let batches = (0..windows)
            .step_by(batch)
            .map(|first| {
                let n = batch.min(windows - first);
                let mut window_ids = ids[first * ctx..(first + n) * ctx].to_vec();
                if let Some(bos) = bos {
                    window_ids.iter_mut().step_by(ctx).for_each(|token| *token = bos);
                }
                (first, window_ids)
            })
            .collect();
        Ok(Self { batches, ids_len: ids.len(), windows, ctx, text_name, protocol, bos })
    }

    /// Every window as (batch, window within the batch, window index), in order.
    fn windows(&self) -> Vec<(usize, usize, usize)> {
        let mut items = Vec::with_capacity(self.windows);
        for (b, (first, window_ids)) in self.batches.iter().enumerate() {
            items.extend((0..window_ids.len() / self.ctx).map(|w| (b, w, first + w)));
        }
        items
    }

    /// The token ids of one window (BOS applied).
    fn window_ids(&self, batch: usize, window: usize) -> &[u32] {
        &self.batches[batch].1[window * self.ctx..(window + 1) * self.ctx]
    }

    /// The scored part of one batch's NLLs (every position is checked for a non-finite value,
    /// scored or not).
    fn scored(&self, nll: &[f32], first_window: usize) -> tenpak_error::Result<f64> {
        let all = sum_nll(nll, first_window, self.ctx, self.text_name)?;
        let first = self.protocol.first_scored(self.ctx);
        Ok(if first == 0 {
            all
        } else {
            nll.chunks(self.ctx - 1).map(|w| w[first..].iter().map(|&v| f64::from(v)).sum::<f64>()).sum()
        })
    }

    fn report(&self, nll_sum: f64, seconds: f64) -> PplReport {
        let (windows, ctx, text_name) = (self.windows, self.ctx, self.text_name);
        let mut report = report(nll_sum, windows, self.ids_len, ctx, text_name, seconds);
        if self.protocol == Protocol::LlamaCpp {
            let first = self.protocol.first_scored(ctx);
            report.tokens_scored = windows * (ctx - 1 - first);
            report.mean_nll = nll_sum / report.tokens_scored as f64;
            report.ppl = report.mean_nll.exp();
            report.protocol = format!(
                "llama-perplexity's protocol: {text_name} tokenized with the tokenizer's special tokens ({} tokens){}; the first \
                 {windows} non-overlapping {ctx}-token windows; only predictions of positions {}..{} of each window scored \
                 ({} tokens); PPL = exp(mean NLL)",
                self.ids_len,
                if self.bos.is_some() { ", each window's first token replaced by BOS" } else { ", no BOS" },
                first + 1,
                ctx - 1,
                report.tokens_scored
            );
        }
        report
    }
}

/// The sum of the NLLs of windows `first_window..` (each `ctx − 1` values), refusing a
/// non-finite one with its window and position.
pub fn sum_nll(nll: &[f32], first_window: usize, ctx: usize, text_name: &str) -> tenpak_error::Result<f64> {
    let mut sum = 0f64;
    for (i, &value) in nll.iter().enumerate() {
        if !value.is_finite() {
            let (window, position) = (first_window + i / (ctx - 1), i % (ctx - 1) + 1);
            bail!(
                "{text_name}: the negative log-likelihood at window {window}, position {position} is {value}: \
                 the model produced non-finite logits (are its weights finite?)"
            );
        }
        sum += f64::from(value);
    }
    Ok(sum)
}

/// The report for the first `windows` windows of a text of `text_tokens` tokens, whose scored
/// negative log-likelihoods sum to `nll_sum`, computed in `seconds`.
pub fn report(nll_sum: f64, windows: usize, text_tokens: usize, ctx: usize, text_name: &str, seconds: f64) -> PplReport {
    let tokens_scored = windows * (ctx - 1);
    let mean_nll = nll_sum / tokens_scored as f64;
    let available = text_tokens / ctx;
    PplReport {
        ppl: mean_nll.exp(),
        mean_nll,
        tokens_scored,
        windows,
        windows_available: available,
        ctx,
        text_tokens,
        seconds,
        tokens_per_second: (windows * ctx) as f64 / seconds.max(f64::MIN_POSITIVE),
        protocol: format!(
            "{text_name} tokenized whole without special tokens ({text_tokens} tokens); the first {windows} of {available} \
             non-overlapping {ctx}-token windows, each from position 0; every position but the first scored \
             ({tokens_scored} tokens); PPL = exp(mean NLL)"
        ),
    }
}

/// Tokenize `text` (named `text_name` in errors and in the protocol) and compute its perplexity.
pub fn perplexity_of_text(
    model: &LlamaModel,
    tokenizer: &Tokenizer,
    text: &str,
    text_name: &str,
    options: &PplOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> tenpak_error::Result<PplReport> {
    let ids = tokenize::encode(tokenizer, text).map_err(|e| e.context(text_name.to_owned()))?;
    perplexity(model, &ids, text_name, options, progress)
}

/// What to evaluate: a model (HF directory, `.safetensors`, `.gguf`) or a TenPak artifact
/// directory, on a text.
#[derive(Clone, Debug)]
pub struct EvalRequest {
    /// The model or artifact.
    pub model: ModelSpec,
    /// The text to score.
    pub text: TextSpec,
    /// Windows, length, batch.
    pub options: PplOptions,
    /// Which positions are scored.
    pub protocol: Protocol,
}

/// Check an evaluation before any weight is loaded, from what the model's configuration and
/// tokenizer say (a server runs this before it accepts the request): the window settings within
/// `limits` and within the model's context, a configuration the runtime runs, and a text that
/// holds at least one window. `model` names the model in errors. Returns the text, read. Errors
/// are [`Kind::BadRequest`] unless they say otherwise.
pub fn check(request: &EvalRequest, config: &ModelConfig, tokenizer: &Tokenizer, model: &str, limits: &Limits) -> Result<Text, Error> {
    let checked = || -> tenpak_error::Result<Text> {
        let PplOptions { ctx, samples, batch } = request.options;
        limits.check_ctx(ctx, "ctx")?;
        if let Some(windows) = samples {
            ensure!(windows >= 1, "windows must be at least 1");
            limits.check_windows(windows, "windows")?;
        }
        ensure!(batch >= 1, "batch must be at least 1 window");
        let limit = config.max_position_embeddings;
        ensure!(ctx <= limit, "ctx {ctx} exceeds the model's max_position_embeddings {limit} ({model})");
        config.validate().with_context(|| model.to_owned())?;
        let text = request.text.load("text", "pass --text FILE")?;
        // Enough of the text for the windows asked (one, when all are): the check stays cheap on
        // a long text, and a text shorter than that is tokenized whole, so the count is exact.
        let ids = tokenize::encode_prefix(tokenizer, &text.content, ctx * samples.unwrap_or(1)).context(text.name.clone())?;
        window_count(ids.len(), ctx, samples, &text.name)?;
        Ok(text)
    };
    checked().map_err(|e| e.or_kind(Kind::BadRequest))
}

/// Perplexity of the request's model on its text. The text and window settings are checked
/// before any weight is loaded ([`check`]); the model is then run block by block
/// ([`perplexity_streamed`]), so memory stays bounded by one block and the windows' hidden
/// states, whatever the model's size. Errors are [`Kind::BadRequest`] unless they say otherwise.
pub fn run(request: &EvalRequest, registry: &Arc<Registry>, observer: &dyn PackObserver) -> Result<PplReport, Error> {
    run_within(request, registry, observer, &Limits::none())
}

/// [`run`] under `limits`.
pub fn run_within(request: &EvalRequest, registry: &Arc<Registry>, observer: &dyn PackObserver, limits: &Limits) -> Result<PplReport, Error> {
    let checked = || -> tenpak_error::Result<_> {
        let source = request.model.open_any(registry.clone())?;
        let name = source.path().display().to_string();
        let tokenizer = tokenize::for_model(source.as_ref())?;
        let text = check(request, source.config(), &tokenizer, &name, limits)?;
        let (ids, bos) = protocol_ids(&tokenizer, &text, request.protocol)?;
        window_count(ids.len(), request.options.ctx, request.options.samples, &text.name)?;
        Ok((source, text, ids, bos))
    };
    let (source, text, ids, bos) = checked().map_err(|e| e.or_kind(Kind::BadRequest))?;
    let scored = || -> tenpak_error::Result<PplReport> {
        let config = source.config().clone();
        let tracker = Tracker::new(observer, config.num_hidden_layers as u64 + 1);
        tracker.begin(Stage::Evaluate, None, format!("scoring {} block by block", source.path().display()))?;
        perplexity_streamed(&config, source.as_ref(), &ids, &text.name, &request.options, request.protocol, bos, &mut |done, total| {
            tracker.end(Stage::Evaluate, None, if done < total { format!("block {done}/{}", total - 1) } else { "head".to_owned() });
            tracker.check()
        })
        .with_context(|| format!("scoring {}", source.path().display()))
    };
    scored().map_err(|e| e.or_kind(Kind::Internal))
}

/// What a candidate is compared against.
#[derive(Clone, Debug)]
pub enum BaseSpec {
    /// The base model (or artifact), run block by block alongside the candidate.
    Model(ModelSpec),
    /// Base log-probabilities stored in llama.cpp's `--kl-divergence-base` file layout (by
    /// `tenpak eval --save-base` or by `llama-perplexity`): the tokens come from the file, and the
    /// comparison follows llama.cpp's protocol.
    Stored(std::path::PathBuf),
}

/// A candidate's next-token distributions against a base's ([`compare`]).
#[derive(Clone, Debug)]
pub struct CompareRequest {
    /// The candidate: a model or an artifact.
    pub candidate: ModelSpec,
    /// The base.
    pub base: BaseSpec,
    /// The text (unused with a stored base, whose file holds its tokens).
    pub text: TextSpec,
    /// Windows, length, batch.
    pub options: PplOptions,
    /// Which positions are compared, and how ([`kld`]).
    pub protocol: Protocol,
}

/// The candidate's and the base's perplexity and the divergence statistics on the same tokens,
/// as one evaluation record (the manifest's form), with the candidate's own report.
pub fn compare(request: &CompareRequest, registry: &Arc<Registry>, observer: &dyn PackObserver, limits: &Limits) -> Result<(EvaluationRecord, PplReport), Error> {
    let opened = || -> tenpak_error::Result<_> {
        let source = request.candidate.open_any(registry.clone())?;
        let name = source.path().display().to_string();
        let tokenizer = tokenize::for_model(source.as_ref())?;
        Ok((source, name, tokenizer))
    };
    let (source, name, tokenizer) = opened().map_err(|e| e.or_kind(Kind::BadRequest))?;
    let config = source.config().clone();
    match &request.base {
        BaseSpec::Model(base_spec) => {
            let eval_request = EvalRequest { model: request.candidate.clone(), text: request.text.clone(), options: request.options.clone(), protocol: request.protocol };
            let prepared = || -> tenpak_error::Result<_> {
                let text = check(&eval_request, &config, &tokenizer, &name, limits)?;
                let base = base_spec.open_any(registry.clone())?;
                let (b, c) = (base.config(), &config);
                ensure!(
                    b.vocab_size == c.vocab_size && b.hidden_size == c.hidden_size && b.num_hidden_layers == c.num_hidden_layers,
                    "{} (vocabulary {}, hidden {}, {} blocks) is not the base of {name} (vocabulary {}, hidden {}, {} blocks)",
                    base.path().display(), b.vocab_size, b.hidden_size, b.num_hidden_layers, c.vocab_size, c.hidden_size, c.num_hidden_layers
                );
                let (ids, bos) = protocol_ids(&tokenizer, &text, request.protocol)?;
                window_count(ids.len(), request.options.ctx, request.options.samples, &text.name)?;
                Ok((text, base, ids, bos))
            };
            let (text, base, ids, bos) = prepared().map_err(|e| e.or_kind(Kind::BadRequest))?;
            let scored = || -> tenpak_error::Result<_> {
                let tracker = Tracker::new(observer, 2 * config.num_hidden_layers as u64 + 1);
                tracker.begin(Stage::Evaluate, None, format!("comparing {name} with {}", base.path().display()))?;
                let compared = compare_streamed(base.as_ref(), source.as_ref(), &ids, &text.name, &request.options, request.protocol, bos, &mut |detail| {
                    tracker.end(Stage::Evaluate, None, detail);
                    tracker.check()
                })?;
                Ok((compared, text.sha256.clone()))
            };
            let (compared, sha) = scored().map_err(|e| e.or_kind(Kind::Internal))?;
            let source = format!("text sha256 {sha}; base {}", base_spec.name());
            Ok((compared_record(compared.base.ppl, compared.divergence, &compared.candidate, &source), compared.candidate))
        }
        BaseSpec::Stored(path) => {
            let scored = || -> tenpak_error::Result<_> {
                ensure!(
                    request.protocol == Protocol::LlamaCpp,
                    "{} holds llama.cpp's base log-probabilities: compare against it with --protocol llama-cpp",
                    path.display()
                );
                let mut stored = kld::BaseLogits::open(path)?;
                ensure!(
                    stored.vocab == config.vocab_size,
                    "{}: a vocabulary of {} tokens, but {name} has {}",
                    path.display(), stored.vocab, config.vocab_size
                );
                ensure!(
                    stored.ctx == request.options.ctx,
                    "{} was computed with windows of {} tokens; pass --ctx {}",
                    path.display(), stored.ctx, stored.ctx
                );
                let windows = request.options.samples.map_or(stored.windows, |s| s.min(stored.windows));
                let options = PplOptions { samples: Some(windows), ..request.options.clone() };
                let bos = added_bos(&tokenizer)?;
                let tokens = stored.tokens.clone();
                let file_name = path.display().to_string();
                let scoring = Scoring::new(&tokens, &file_name, &options, Protocol::LlamaCpp, bos, &config)?;
                let tracker = Tracker::new(observer, config.num_hidden_layers as u64 + 2);
                let started = Instant::now();
                let (hidden, head) = run_tracked(source.as_ref(), &scoring, &tracker)?;
                tracker.begin(Stage::Evaluate, None, "comparing with the stored base")?;
                let items = scoring.windows();
                let mut compared = Vec::with_capacity(items.len());
                for group in items.chunks(rayon::current_num_threads().max(1)) {
                    let rows = group.iter().map(|_| stored.next_window()).collect::<tenpak_error::Result<Vec<_>>>()?;
                    let work: Vec<_> = group.iter().zip(rows).collect();
                    compared.extend(runtime::llama::per_window(&work, |&(&(b, w, _), ref rows)| {
                        kld::compare_window(&head, &hidden[b].get(w)?, &kld::BaseRows::Stored(rows), scoring.window_ids(b, w), Protocol::LlamaCpp)
                    })?);
                    tracker.check()?;
                }
                tracker.end(Stage::Evaluate, None, "compared");
                let windows: Vec<usize> = items.iter().map(|&(_, _, window)| window).collect();
                let (divergence, _) = summarize(&file_name, scoring.protocol.first_scored(scoring.ctx), &windows, &compared)?;
                // The candidate's perplexity as `tenpak eval --protocol llama-cpp` computes it;
                // the base's is the file's (as llama.cpp reads it).
                let ids_of: Vec<&[u32]> = scoring.batches.iter().map(|(_, window_ids)| window_ids.as_slice()).collect();
                let mut nll_sum = 0.0f64;
                for (nll, (first_window, _)) in runtime::llama::token_nll_windows(&head, &hidden, &ids_of)?.iter().zip(&scoring.batches) {
                    nll_sum += scoring.scored(nll, *first_window)?;
                }
                Ok((divergence, scoring.report(nll_sum, started.elapsed().as_secs_f64())))
            };
            let (divergence, report) = scored().map_err(|e| e.or_kind(Kind::BadRequest))?;
            let source = format!("tokens and base log-probabilities from {}", path.display());
            Ok((compared_record(divergence.ppl_base, divergence, &report, &source), report))
        }
    }
}

/// [`run_within`] of a base model by llama.cpp's protocol, storing its log-probabilities of the
/// scored positions in `path` in llama.cpp's `--kl-divergence-base` layout ([`kld::BaseLogits`]),
/// for later [`compare`]s (by TenPak or by `llama-perplexity --kl-divergence`).
pub fn store_base(request: &EvalRequest, path: &std::path::Path, registry: &Arc<Registry>, observer: &dyn PackObserver) -> Result<PplReport, Error> {
    let prepared = || -> tenpak_error::Result<_> {
        ensure!(request.protocol == Protocol::LlamaCpp, "base log-probabilities are stored in llama.cpp's form: pass --protocol llama-cpp");
        let source = request.model.open_any(registry.clone())?;
        let name = source.path().display().to_string();
        let tokenizer = tokenize::for_model(source.as_ref())?;
        let text = check(request, source.config(), &tokenizer, &name, &Limits::none())?;
        let (ids, bos) = protocol_ids(&tokenizer, &text, Protocol::LlamaCpp)?;
        Ok((source, text, ids, bos))
    };
    let (source, text, ids, bos) = prepared().map_err(|e| e.or_kind(Kind::BadRequest))?;
    let stored = || -> tenpak_error::Result<PplReport> {
        let config = source.config().clone();
        let scoring = Scoring::new(&ids, &text.name, &request.options, Protocol::LlamaCpp, bos, &config)?;
        let tracker = Tracker::new(observer, config.num_hidden_layers as u64 + 2);
        let started = Instant::now();
        let (hidden, head) = run_tracked(source.as_ref(), &scoring, &tracker)?;
        tracker.begin(Stage::Evaluate, None, format!("storing log-probabilities in {}", path.display()))?;
        let ctx = scoring.ctx;
        let mut writer = kld::BaseLogitsWriter::create(path, ctx, config.vocab_size, scoring.windows, &ids)?;
        let mut nll_sum = 0.0f64;
        for group in scoring.windows().chunks(rayon::current_num_threads().max(1)) {
            let stored = runtime::llama::per_window(group, |&(b, w, _)| kld::store_window(&head, &hidden[b].get(w)?, scoring.window_ids(b, w)))?;
            for (rows, _) in &stored {
                writer.write_window(rows)?;
            }
            tracker.check()?;
        }
        writer.finish()?;
        // The perplexity as `tenpak eval` computes it (the stored rows' own NLLs differ in the
        // last digits: llama.cpp sums them in f32).
        let ids_of: Vec<&[u32]> = scoring.batches.iter().map(|(_, window_ids)| window_ids.as_slice()).collect();
        for (nll, (first_window, _)) in runtime::llama::token_nll_windows(&head, &hidden, &ids_of)?.iter().zip(&scoring.batches) {
            nll_sum += scoring.scored(nll, *first_window)?;
        }
        tracker.end(Stage::Evaluate, None, "stored");
        Ok(scoring.report(nll_sum, started.elapsed().as_secs_f64()))
    };
    stored().map_err(|e| e.or_kind(Kind::Internal))
}

/// [`run_blocks`] of `source` with each block reported to `tracker` (and cancellable there).
fn run_tracked(source: &dyn ModelSource, scoring: &Scoring<'_>, tracker: &Tracker<'_>) -> tenpak_error::Result<(Vec<Tensor>, Head)> {
    let blocks = source.config().num_hidden_layers;
    tracker.begin(Stage::Evaluate, None, format!("scoring {} block by block", source.path().display()))?;
    run_blocks(source.config(), source, scoring, &mut |done| {
        tracker.end(Stage::Evaluate, None, format!("block {done}/{blocks}"));
        tracker.check()
    })
}

/// The token ids of `text` by `protocol`, and the BOS llama.cpp's protocol puts at each window's
/// start (the one the tokenizer adds before an empty text), if any.
fn protocol_ids(tokenizer: &Tokenizer, text: &Text, protocol: Protocol) -> tenpak_error::Result<(Vec<u32>, Option<u32>)> {
    Ok(match protocol {
        Protocol::Tenpak => (tokenize::encode(tokenizer, &text.content).context(text.name.clone())?, None),
        Protocol::LlamaCpp => (with_specials(tokenizer, &text.content).context(text.name.clone())?, added_bos(tokenizer)?),
    })
}

/// Token ids of `text` with the special tokens the tokenizer adds.
fn with_specials(tokenizer: &Tokenizer, text: &str) -> tenpak_error::Result<Vec<u32>> {
    Ok(tokenizer.encode(text, true).map_err(|e| tenpak_error::err!("tokenization failed: {e}"))?.get_ids().to_vec())
}

/// The BOS llama.cpp's protocol puts at each window's start: the one the tokenizer adds before an
/// empty text, if any.
fn added_bos(tokenizer: &Tokenizer) -> tenpak_error::Result<Option<u32>> {
    Ok(with_specials(tokenizer, "")?.first().copied())
}

/// A candidate's next-token distributions against its base's on the windows of `ids`, both
/// models run block by block ([`perplexity_streamed`]: one block of each in memory at a time,
/// beside both models' hidden states of the windows), the heads compared window by window
/// ([`kld::compare_window`]). `step(detail)` is called after each block and at the end.
#[allow(clippy::too_many_arguments)]
pub fn compare_streamed(
    base: &dyn ModelSource,
    candidate: &dyn ModelSource,
    ids: &[u32],
    text_name: &str,
    options: &PplOptions,
    protocol: Protocol,
    bos: Option<u32>,
    step: &mut dyn FnMut(String) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<Compared> {
    let config = candidate.config();
    config.validate()?;
    let scoring = Scoring::new(ids, text_name, options, protocol, bos, config)?;
    let blocks = config.num_hidden_layers;
    let started = Instant::now();
    let mut run = |weights: &dyn ModelSource, what: &str| -> tenpak_error::Result<(Vec<Tensor>, Head)> {
        run_blocks(weights.config(), weights, &scoring, &mut |done| step(format!("{what}: block {done}/{blocks}")))
            .with_context(|| format!("scoring {}", weights.path().display()))
    };
    let (base_hidden, base_head) = run(base, "base")?;
    let (hidden, head) = run(candidate, "candidate")?;
    // Both perplexities as `tenpak eval` computes them (the same hidden states, the same NLL
    // kernel: the same figures, bit for bit); the divergence from whole-row comparisons.
    let ids_of: Vec<&[u32]> = scoring.batches.iter().map(|(_, window_ids)| window_ids.as_slice()).collect();
    let ppl = |head: &Head, hidden: &[Tensor]| -> tenpak_error::Result<PplReport> {
        let mut nll_sum = 0.0f64;
        for (nll, (first_window, _)) in runtime::llama::token_nll_windows(head, hidden, &ids_of)?.iter().zip(&scoring.batches) {
            nll_sum += scoring.scored(nll, *first_window)?;
        }
        Ok(scoring.report(nll_sum, started.elapsed().as_secs_f64()))
    };
    let base_report = ppl(&base_head, &base_hidden)?;
    let items = scoring.windows();
    let compared = runtime::llama::per_window(&items, |&(b, w, _)| {
        let base_rows = kld::BaseRows::Model(&base_head, base_hidden[b].get(w)?);
        kld::compare_window(&head, &hidden[b].get(w)?, &base_rows, scoring.window_ids(b, w), protocol)
    })?;
    let windows: Vec<usize> = items.iter().map(|&(_, _, window)| window).collect();
    let (divergence, _) = summarize(text_name, protocol.first_scored(scoring.ctx), &windows, &compared)?;
    let report = ppl(&head, &hidden)?;
    step("compared".to_owned())?;
    Ok(Compared { divergence, base: base_report, candidate: report })
}

/// What [`compare_streamed`] measures.
#[derive(Clone, Debug)]
pub struct Compared {
    /// The divergence statistics (their PPL figures from the compared rows, as llama.cpp's).
    pub divergence: DivergenceRecord,
    /// The base's perplexity, as [`perplexity_streamed`] computes it.
    pub base: PplReport,
    /// The candidate's perplexity, likewise.
    pub candidate: PplReport,
}

/// The divergence statistics of per-window comparisons (`windows[i]` is the index of the window
/// `compared[i]` comes from, its first comparison that of position `first + 1`), and the sum of
/// the candidate's negative log-likelihoods.
pub fn summarize(
    text_name: &str,
    first: usize,
    windows: &[usize],
    compared: &[Vec<runtime::kernels::TokenComparison>],
) -> tenpak_error::Result<(DivergenceRecord, f64)> {
    let mut divergence = kld::Divergence::default();
    let mut nll_sum = 0.0f64;
    for (&window, tokens) in windows.iter().zip(compared) {
        for (j, c) in tokens.iter().enumerate() {
            divergence.push(c, || format!("{text_name}: window {window}, position {}", first + j + 1))?;
            nll_sum += c.nll;
        }
    }
    Ok((divergence.record()?, nll_sum))
}

/// The evaluation record of a comparison: both perplexities and the divergence on the same tokens.
fn compared_record(baseline_ppl: f64, divergence: DivergenceRecord, report: &PplReport, source: &str) -> EvaluationRecord {
    EvaluationRecord {
        baseline_ppl,
        compressed_ppl: report.ppl,
        delta_pct: 100.0 * (report.ppl - baseline_ppl) / baseline_ppl,
        protocol: format!("{} ({source})", report.protocol),
        divergence: Some(divergence),
        tasks: Vec::new(),
        baseline_tasks: Vec::new(),
    }
}

/// The source model's perplexity, as the evaluation record takes it.
#[derive(Clone, Copy, Debug)]
pub enum Baseline {
    /// Scored by this pack.
    Scored(f64),
    /// Scored earlier in this process on the same model, text and windows
    /// ([`crate::plan::Evaluation::known_baseline`]).
    Reused(f64),
}

/// The manifest's evaluation entry; `warning` is appended to the protocol when set.
pub fn evaluation_record(
    baseline: Baseline,
    compressed: &PplReport,
    divergence: Option<DivergenceRecord>,
    text: &Text,
    warning: Option<&str>,
) -> EvaluationRecord {
    let mut protocol = format!("{} (text sha256 {})", compressed.protocol, text.sha256);
    let baseline_ppl = match baseline {
        Baseline::Scored(ppl) => ppl,
        Baseline::Reused(ppl) => {
            protocol.push_str("; baseline reused from an earlier pack of the same model on the same windows");
            ppl
        }
    };
    if let Some(warning) = warning {
        protocol.push_str(&format!("; WARNING: {warning}"));
    }
    EvaluationRecord {
        baseline_ppl,
        compressed_ppl: compressed.ppl,
        delta_pct: 100.0 * (compressed.ppl - baseline_ppl) / baseline_ppl,
        protocol,
        divergence,
        tasks: Vec::new(),
        baseline_tasks: Vec::new(),
    }
}
