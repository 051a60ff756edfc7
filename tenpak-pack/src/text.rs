//! The texts a job reads: calibration and evaluation text from a file or given inline, with the
//! name and sha256 the manifest records.

use std::path::PathBuf;

use sha2::{Digest, Sha256};
use tenpak_error::{Context, Kind, Result};

use crate::artifact::safetensors_writer::hex;

/// Where a text comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TextSpec {
    /// A UTF-8 text file named on a command line: messages show its path, and a missing one
    /// gets the caller's hint (which flag to pass).
    File(PathBuf),
    /// A UTF-8 text file that messages and the manifest call `name` (a server's `root/path`:
    /// its own paths never reach a client).
    Named {
        /// What to call it (`assets/eval.txt`).
        name: String,
        /// Where it is.
        path: PathBuf,
    },
    /// Text given with the request; `name` stands for it in the manifest and in errors.
    Inline {
        /// What to call it (`calib_text (inline)`).
        name: String,
        /// The text.
        text: String,
    },
}

impl TextSpec {
    /// Read the text. A missing file is [`Kind::NotFound`]; `what` (`calibration text`) goes into
    /// that message, and for a [`TextSpec::File`] `hint` too (how to get one on the command line).
    pub fn load(&self, what: &str, hint: &str) -> Result<Text> {
        let read = |path: &PathBuf, name: String, hint: String| -> Result<(String, String)> {
            if !path.is_file() {
                return Err(Kind::NotFound.error(format!("{name}: no such {what}{hint}")));
            }
            let bytes = std::fs::read(path).with_context(|| format!("{name}: cannot read the {what}"))?;
            let content =
                String::from_utf8(bytes).map_err(|e| Kind::BadRequest.error(format!("{name}: the {what} is not UTF-8 ({e})")))?;
            Ok((name, content))
        };
        let (name, content) = match self {
            TextSpec::File(path) => read(path, path.display().to_string(), format!(" ({hint})"))?,
            TextSpec::Named { name, path } => read(path, name.clone(), String::new())?,
            TextSpec::Inline { name, text } => (name.clone(), text.clone()),
        };
        let sha256 = hex(&Sha256::digest(content.as_bytes()));
        Ok(Text { name, sha256, content })
    }
}

/// A text in memory, with the name and hash the manifest records.
#[derive(Clone, Debug)]
pub struct Text {
    /// A file path, or the inline text's name.
    pub name: String,
    /// sha256 of the UTF-8 bytes.
    pub sha256: String,
    /// The text.
    pub content: String,
}
