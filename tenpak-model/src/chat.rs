//! Chat templates: the Jinja template a model ships to turn a conversation into its prompt text,
//! rendered the way transformers' `apply_chat_template` renders it.
//!
//! Where a template comes from: a GGUF's `tokenizer.chat_template`, an HF directory's
//! `chat_template.jinja` or `tokenizer_config.json`'s `chat_template` (a string, or a list of
//! named templates of which "default" is used), and an artifact's `chat_template.jinja`, copied
//! there from its source at pack time.
//!
//! transformers renders with jinja2 (`trim_blocks`, `lstrip_blocks`), with the tokenizer's special
//! tokens (`bos_token`, `eos_token`, ...) as variables, the functions `raise_exception` and
//! `strftime_now`, and a `tojson` filter; Python string methods (`.strip()`, `.startswith()`,
//! `.split()`) work because the template runs in Python. Here minijinja renders it, with the
//! same settings, functions and variables, and minijinja-contrib's Python methods.

use std::path::Path;

use serde::Serialize;
use tenpak_error::{Context, bail};

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Message {
    /// "system", "user" or "assistant" (any role the template knows).
    pub role: String,
    /// The turn's text.
    pub content: String,
}

impl Message {
    /// A turn of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message { role: role.into(), content: content.into() }
    }
}

/// A model's chat template as found beside its weights, with the special tokens' texts when the
/// source names them (an HF `tokenizer_config.json`); otherwise the caller derives them from the
/// configuration's token ids ([`ChatTemplate::with_special_tokens`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSource {
    /// The Jinja text.
    pub template: String,
    /// Where it came from, for messages ("model.gguf: tokenizer.chat_template").
    pub origin: String,
    /// The BOS token's text, when the source says.
    pub bos_token: Option<String>,
    /// The EOS token's text, when the source says.
    pub eos_token: Option<String>,
}

/// The chat template of the HF directory `dir`: `chat_template.jinja` (what transformers writes
/// since 4.47), else `tokenizer_config.json`'s `chat_template`; `None` when neither has one.
/// Errors name the file that is malformed.
pub fn find_in_dir(dir: &Path, shown: &Path) -> tenpak_error::Result<Option<TemplateSource>> {
    let config_path = dir.join("tokenizer_config.json");
    let config: Option<serde_json::Value> = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path)
            .with_context(|| format!("reading {}", shown.join("tokenizer_config.json").display()))?;
        Some(serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", shown.join("tokenizer_config.json").display()))?)
    } else {
        None
    };
    let token = |key: &str| -> Option<String> {
        match config.as_ref()?.get(key)? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
            _ => None,
        }
    };
    let (bos_token, eos_token) = (token("bos_token"), token("eos_token"));
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let template = std::fs::read_to_string(&jinja).with_context(|| format!("reading {}", shown.join("chat_template.jinja").display()))?;
        let origin = shown.join("chat_template.jinja").display().to_string();
        return Ok(Some(TemplateSource { template, origin, bos_token, eos_token }));
    }
    let Some(entry) = config.as_ref().and_then(|c| c.get("chat_template")) else { return Ok(None) };
    let origin = format!("{}: chat_template", shown.join("tokenizer_config.json").display());
    let template = match entry {
        serde_json::Value::String(s) => s.clone(),
        // A list of {"name", "template"}: transformers uses "default" unless told otherwise.
        serde_json::Value::Array(list) => {
            let named = |name: &str| {
                list.iter().find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name)).and_then(|t| t.get("template")?.as_str())
            };
            match named("default") {
                Some(t) => t.to_owned(),
                None => bail!("{origin}: a list of named templates without a \"default\""),
            }
        }
        serde_json::Value::Null => return Ok(None),
        _ => bail!("{origin}: neither a string nor a list of named templates"),
    };
    Ok(Some(TemplateSource { template, origin, bos_token, eos_token }))
}

/// A compiled chat template, ready to render conversations.
pub struct ChatTemplate {
    env: minijinja::Environment<'static>,
    origin: String,
    bos_token: String,
    eos_token: String,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compile `source`; a syntax error is reported with the template's origin and line.
    pub fn new(source: &TemplateSource) -> tenpak_error::Result<ChatTemplate> {
        let mut env = minijinja::Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<String, minijinja::Error> {
            Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
        });
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.template.clone())
            .map_err(|e| tenpak_error::err!("{}: the chat template does not compile: {}", source.origin, describe(&e)))?;
        Ok(ChatTemplate {
            env,
            origin: source.origin.clone(),
            bos_token: source.bos_token.clone().unwrap_or_default(),
            eos_token: source.eos_token.clone().unwrap_or_default(),
        })
    }

    /// The template with `bos`/`eos` as its `bos_token`/`eos_token`, where its source named none.
    pub fn with_special_tokens(mut self, bos: Option<String>, eos: Option<String>) -> ChatTemplate {
        if self.bos_token.is_empty() {
            self.bos_token = bos.unwrap_or_default();
        }
        if self.eos_token.is_empty() {
            self.eos_token = eos.unwrap_or_default();
        }
        self
    }

    /// Where the template came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The prompt text of `messages`; with `add_generation_prompt`, followed by what opens the
    /// assistant's turn (as transformers' argument of that name). A template's
    /// `raise_exception(...)` (a conversation it does not accept) is an error with its message.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> tenpak_error::Result<String> {
        let template = self.env.get_template("chat").map_err(|e| tenpak_error::err!("{}: {e}", self.origin))?;
        template
            .render(minijinja::context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| tenpak_error::err!("{}: rendering the conversation: {}", self.origin, describe(&e)))
    }
}

/// A minijinja error with its cause chain and the template line.
fn describe(error: &minijinja::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// transformers' `strftime_now(format)`: the local time in a C `strftime` format.
fn strftime_now(format: String) -> Result<String, minijinja::Error> {
    use chrono::format::{Item, StrftimeItems};
    if StrftimeItems::new(&format).any(|item| matches!(item, Item::Error)) {
        return Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, format!("strftime_now: bad format {format:?}")));
    }
    Ok(chrono::Local::now().format(&format).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> ChatTemplate {
        ChatTemplate::new(&TemplateSource { template: text.into(), origin: "test".into(), bos_token: None, eos_token: None })
            .unwrap()
            .with_special_tokens(Some("<s>".into()), Some("</s>".into()))
    }

    #[test]
    fn renders_like_jinja2_with_trimmed_blocks() {
        // Llama-2's template shape: bos_token, raise_exception, .strip(), block tags on their own
        // lines (trim_blocks / lstrip_blocks remove the newlines and indentation around them).
        let t = template(
            "{% if messages[0]['role'] == 'system' %}\n  {% set sys = messages[0]['content'].strip() %}\n{% endif %}\n\
             {% for m in messages if m['role'] != 'system' %}\n\
               {% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}\n\
                 {{ raise_exception('roles must alternate') }}\n\
               {% endif %}\n\
               {% if m['role'] == 'user' %}{{ bos_token + '[INST] ' + (sys + ' ' if sys else '') + m['content'] | trim + ' [/INST]' }}\
               {% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}\n\
             {% endfor %}",
        );
        let text = t
            .render(&[Message::new("system", "  Be brief.  "), Message::new("user", "Hi "), Message::new("assistant", "Hello.")], false)
            .unwrap();
        assert_eq!(text, "<s>[INST] Be brief. Hi [/INST] Hello. </s>");
        let err = t.render(&[Message::new("assistant", "x")], false).unwrap_err().to_string();
        assert!(err.contains("roles must alternate"), "{err}");
    }

    #[test]
    fn generation_prompt_json_and_python_methods() {
        // Booleans print as jinja2 prints Python's (`True`); tojson keeps non-ASCII text as it is
        // (transformers' tojson passes ensure_ascii=False).
        let t = template(
            "{% for m in messages %}<|{{ m.role }}|>{{ m.content.split(' ')[0] | tojson }}{% endfor %}\
             {% if add_generation_prompt %}<|assistant|>{% endif %}{{ 'x'.startswith('x') }}",
        );
        assert_eq!(t.render(&[Message::new("user", "héllo world")], true).unwrap(), "<|user|>\"héllo\"<|assistant|>True");
        assert_eq!(t.render(&[Message::new("user", "a")], false).unwrap(), "<|user|>\"a\"True");
    }

    #[test]
    fn errors_name_the_origin() {
        let bad = ChatTemplate::new(&TemplateSource { template: "{% for %}".into(), origin: "m.gguf: tokenizer.chat_template".into(), bos_token: None, eos_token: None });
        let err = bad.unwrap_err().to_string();
        assert!(err.contains("m.gguf: tokenizer.chat_template") && err.contains("does not compile"), "{err}");
        assert!(template("{{ strftime_now('%Y') }}").render(&[], false).unwrap().len() == 4);
    }

    #[test]
    fn finds_templates_in_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(find_in_dir(dir.path(), Path::new("m")).unwrap(), None);
        std::fs::write(
            dir.path().join("tokenizer_config.json"),
            r#"{"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>",
                "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}]}"#,
        )
        .unwrap();
        let found = find_in_dir(dir.path(), Path::new("m")).unwrap().unwrap();
        assert_eq!((found.template.as_str(), found.bos_token.as_deref(), found.eos_token.as_deref()), ("D", Some("<s>"), Some("</s>")));
        assert!(found.origin.ends_with("tokenizer_config.json: chat_template"), "{}", found.origin);
        std::fs::write(dir.path().join("chat_template.jinja"), "J").unwrap();
        let found = find_in_dir(dir.path(), Path::new("m")).unwrap().unwrap();
        assert_eq!((found.template.as_str(), found.eos_token.as_deref()), ("J", Some("</s>")));
        std::fs::write(dir.path().join("tokenizer_config.json"), "{").unwrap();
        let err = find_in_dir(dir.path(), Path::new("m")).unwrap_err().to_string();
        assert!(err.contains("m/tokenizer_config.json"), "{err}");
    }
}
