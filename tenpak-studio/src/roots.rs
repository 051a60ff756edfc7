//! Names a request may use for models and texts: `root/relative/path` under one of the server's
//! configured roots, never anything outside them.
//!
//! A name is refused (bad request) when it has a NUL byte, a backslash, an empty, `.` or `..`
//! component, or a leading `/`; it is then resolved through the file system and refused again if
//! the real path (symlinks followed) is not inside the root's real path. A name whose root or file
//! does not exist is "not found".

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use tenpak_error::{Context, Result};

use tenpak_error::Kind;

/// Named directories, canonicalized once at start.
#[derive(Clone, Debug, Default)]
pub struct Roots {
    roots: BTreeMap<String, PathBuf>,
}

impl Roots {
    /// Roots from `(name, directory)` pairs; each directory must exist. A name must be a single
    /// plain component (`assets`, `models-2`).
    pub fn new(roots: &BTreeMap<String, PathBuf>) -> Result<Self> {
        let mut out = BTreeMap::new();
        for (name, dir) in roots {
            tenpak_error::ensure!(
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) && name != "." && name != "..",
                "model_roots: `{name}` is not a valid root name (letters, digits, `-`, `_`, `.`)"
            );
            let real = dir.canonicalize().with_context(|| format!("model_roots.{name}: {}", dir.display()))?;
            tenpak_error::ensure!(real.is_dir(), "model_roots.{name}: {} is not a directory", dir.display());
            out.insert(name.clone(), real);
        }
        Ok(Self { roots: out })
    }

    /// The root names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.roots.keys().map(String::as_str)
    }

    /// The roots' real directories (never shown to a client).
    pub fn real_dirs(&self) -> impl Iterator<Item = &Path> {
        self.roots.values().map(PathBuf::as_path)
    }

    /// The real path of `name` (`root/rest`), inside its root.
    pub fn resolve(&self, name: &str) -> Result<PathBuf> {
        let bad = |why: &str| Kind::BadRequest.error(format!("name `{}`: {why}", name.escape_debug()));
        if name.contains('\0') {
            return Err(bad("contains a NUL byte"));
        }
        if name.contains('\\') {
            return Err(bad("contains a backslash"));
        }
        if name.starts_with('/') {
            return Err(bad("absolute paths are not allowed; use `root/path`"));
        }
        let Some((root, rest)) = name.split_once('/') else {
            return Err(bad("expected `root/path` under one of the server's roots"));
        };
        let Some(root_dir) = self.roots.get(root) else {
            let known: Vec<&str> = self.names().collect();
            return Err(Kind::NotFound.error(format!("name `{name}`: no root `{root}` (roots: {})", known.join(", "))));
        };
        if rest.is_empty() || rest.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(bad("empty, `.` and `..` components are not allowed"));
        }
        let relative = Path::new(rest);
        if !relative.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(bad("only plain relative components are allowed"));
        }
        let joined = root_dir.join(relative);
        let real = match joined.canonicalize() {
            Ok(real) => real,
            Err(_) if joined.symlink_metadata().is_ok() => return Err(bad("a link that leads nowhere")),
            Err(_) => return Err(Kind::NotFound.error(format!("name `{name}`: no such file under root `{root}`"))),
        };
        if !real.starts_with(root_dir) {
            return Err(bad("leads outside its root"));
        }
        Ok(real)
    }
}
