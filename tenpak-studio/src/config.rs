//! `studio.toml`: how `tenpak serve` runs.
//!
//! ```toml
//! listen = "127.0.0.1:8686"          # a non-loopback address requires a token
//! data_dir = "studio-data"           # job database and artifacts
//! token_file = "/etc/tenpak/token"   # or token = "..."; bearer token for every route but /health
//! workers = 1                        # jobs run at once in this process
//! max_queued = 16                    # queued jobs beyond this are refused (429)
//! max_body_bytes = 33554432          # request bodies beyond this are refused (413)
//! max_text_bytes = 16777216          # texts (inline or named) beyond this are refused (413)
//! max_header_bytes = 65536           # a request head beyond this is refused (431)
//! plugins = []                       # plugin libraries (codecs, calibrators, allocators), loaded at start
//!
//! [limits]                           # what one request may ask for (tenpak_pack::limits::Limits)
//! preset_bytes = 65536               # inline preset text
//! overrides = 256                    # [[overrides]] per preset (pattern_bytes = 256 each)
//! candidates = 64                    # [[allocator.candidates]] per preset
//! group_size = 65536                 # any codec table's group_size
//! windows = 4096                     # calibration / evaluation windows
//! ctx = 32768                        # tokens per window (and the model's own maximum)
//!
//! [model_roots]                      # where models and texts may come from: `assets/calib.txt`
//! assets = "assets"
//!
//! [artifacts]                        # default: the directory data_dir/artifacts
//! url = "s3://my-bucket/tenpak"      # or file:///srv/artifacts
//! options = { region = "eu-west-1" } # object_store's S3 options; AWS_* variables are read too
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tenpak_error::{Context, Result, bail};
use serde::Deserialize;

use super::artifacts::ArtifactsConfig;
use tenpak_pack::limits::Limits;

/// The server's configuration, as in the file (paths relative to the file's directory).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudioConfig {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Job database and artifacts.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Named directories models and texts may come from.
    #[serde(default)]
    pub model_roots: BTreeMap<String, PathBuf>,
    /// Bearer token.
    #[serde(default)]
    pub token: Option<String>,
    /// File holding the bearer token (trailing whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Concurrent jobs in this process.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// Most jobs waiting at once.
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// Largest request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: u64,
    /// Largest text, inline or a named file.
    #[serde(default = "default_max_text")]
    pub max_text_bytes: u64,
    /// Largest request head (request line and headers), in bytes.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// What one request may ask for: preset size and entries, group sizes, windows, ctx.
    #[serde(default)]
    pub limits: Limits,
    /// Plugin libraries (codecs, calibrators, allocators), loaded at start (never from a request).
    #[serde(default)]
    pub plugins: Vec<PathBuf>,
    /// Job database; default a SQLite file in `data_dir`.
    #[serde(default)]
    pub database_url: Option<String>,
    /// Where finished artifacts are stored.
    #[serde(default)]
    pub artifacts: ArtifactsConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8686))
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("studio-data")
}
fn default_workers() -> usize {
    1
}
fn default_max_queued() -> usize {
    16
}
fn default_max_body() -> u64 {
    32 << 20
}
fn default_max_text() -> u64 {
    16 << 20
}
fn default_max_header() -> usize {
    64 << 10
}

impl Default for StudioConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

impl StudioConfig {
    /// Read `path`; relative paths in it are taken from the file's directory.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: StudioConfig = toml::from_str(&text).map_err(|e| tenpak_error::err!("{}: {e}", path.display()))?;
        let base = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        config.rebase(base);
        Ok(config)
    }

    fn rebase(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.data_dir);
        self.model_roots.values_mut().for_each(fix);
        self.plugins.iter_mut().for_each(fix);
        if let Some(p) = self.token_file.as_mut() {
            fix(p);
        }
    }

    /// The bearer token, from `token` or `token_file`; refuses both, an empty token, and a
    /// non-loopback `listen` without one.
    pub fn token(&self) -> Result<Option<String>> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => bail!("set `token` or `token_file`, not both"),
            (Some(t), None) => Some(t.clone()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("token_file {}", path.display()))?
                    .trim_end()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        if token.as_deref() == Some("") {
            bail!("the token is empty");
        }
        if token.is_none() && !self.listen.ip().is_loopback() {
            bail!("listen = {} is not a loopback address: set `token` or `token_file` first", self.listen);
        }
        if self.workers == 0 {
            bail!("workers must be at least 1");
        }
        Ok(token)
    }
}
