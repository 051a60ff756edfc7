//! Which model a job reads: a path the user typed, a file a server names by its `root/path`, or a
//! source the caller opened itself; and opening it, as a model or as a TenPak artifact.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tenpak_api::registry::Registry;
use tenpak_error::Result;
use tenpak_model::{self as model, ModelSource};

use crate::artifact::ArtifactSource;

/// Which model a job reads.
#[derive(Clone)]
pub enum ModelSpec {
    /// An HF directory, a `.safetensors` file or a `.gguf` file, named by its path.
    Path(PathBuf),
    /// The same at `path`, called `name` in every message and in the manifest (a server's
    /// `root/path`: its own paths never reach a client).
    Named {
        /// What to call it (`assets/model.gguf`).
        name: String,
        /// Where it is.
        path: PathBuf,
    },
    /// A source the caller opened itself (a custom host's own format, a test's in-memory model).
    Source(Arc<dyn ModelSource>),
}

impl std::fmt::Debug for ModelSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSpec::Path(path) => f.debug_tuple("Path").field(path).finish(),
            ModelSpec::Named { name, path } => f.debug_struct("Named").field("name", name).field("path", path).finish(),
            ModelSpec::Source(source) => f.debug_tuple("Source").field(&source.path()).finish(),
        }
    }
}

impl From<PathBuf> for ModelSpec {
    fn from(path: PathBuf) -> Self {
        ModelSpec::Path(path)
    }
}

impl ModelSpec {
    /// The model as messages name it: the path as given, or the name it was given.
    pub fn name(&self) -> String {
        match self {
            ModelSpec::Path(path) => path.display().to_string(),
            ModelSpec::Named { name, .. } => name.clone(),
            ModelSpec::Source(source) => source.path().display().to_string(),
        }
    }

    /// Open the model (HF directory, `.safetensors`, `.gguf`).
    pub fn open(&self) -> Result<Arc<dyn ModelSource>> {
        Ok(match self {
            ModelSpec::Path(path) => model::open(path)?.into(),
            ModelSpec::Named { name, path } => model::open_named(path, Path::new(name))?.into(),
            ModelSpec::Source(source) => source.clone(),
        })
    }

    /// Open a TenPak artifact (a directory with `manifest.json`), or else the model.
    pub fn open_any(&self, registry: Arc<Registry>) -> Result<Arc<dyn ModelSource>> {
        match self {
            ModelSpec::Path(path) if is_artifact(path) => Ok(Arc::new(ArtifactSource::open(path, registry)?)),
            ModelSpec::Named { name, path } if is_artifact(path) => Ok(Arc::new(ArtifactSource::open_named(path, Path::new(name), registry)?)),
            _ => self.open(),
        }
    }
}

/// Whether `path` is a TenPak artifact directory.
pub fn is_artifact(path: &Path) -> bool {
    path.join("manifest.json").exists()
}
