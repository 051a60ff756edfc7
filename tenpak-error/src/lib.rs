//! The error every TenPak library crate returns: a [`Kind`] that front ends map to an outcome
//! (the CLI to an exit code, the server to an HTTP status), and the chain of messages that says
//! what failed, where and why (`preset `x`, [codec]: codec `int4_awq`: parameter `bits` must be
//! in [2, 8], got 9`).
//!
//! Why not `anyhow` in the libraries: a front end must decide from an error alone whether the
//! request was at fault (exit 2, HTTP 400), named something absent (404), asked for what this
//! build cannot do (422), was cancelled (130 / 409), ran out of a resource for now (a full disk,
//! a database that does not answer: 1 / 503) or met a failure of the machine (1 / 500).
//! That decision belongs to the code that *knows*, deep inside (a missing model file is "not
//! found"), and must survive every layer of context added on the way out. So the kind is a field
//! of the error, not a guess at the boundary; an error nobody classified gets the boundary's
//! default ([`Error::or_kind`]: bad request while checking a request, internal while running it).
//!
//! The rest works as `anyhow` does, so code reads the same: `?` converts any
//! `std::error::Error`, [`Context::context`] adds a message, [`bail!`], [`ensure!`] and [`err!`]
//! make new errors. `Display` prints the whole chain on one line, outermost first (`a: b: c`).
//! Only the binary (`tenpak`) uses `anyhow`, for its own glue.
#![deny(missing_docs)]

use std::error::Error as StdError;
use std::fmt;

/// What kind of failure an error is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Kind {
    /// The request is wrong: a bad preset, a text too short, an output that exists.
    BadRequest,
    /// Something the request names does not exist: a model, a text, a preset, a job.
    NotFound,
    /// Well-formed, but this build cannot do it: an architecture, a tensor type, a calibrator
    /// that needs gradients.
    Unsupported,
    /// The caller cancelled the work; nothing was left behind.
    Cancelled,
    /// A resource the work needs is exhausted or out of reach for now (the disk is full, the
    /// database is read-only or does not answer, the object store is down): not the request's
    /// fault, and worth trying again once the operator has fixed it.
    Unavailable,
    /// A failure that is not the request's fault: I/O, a bug.
    Internal,
}

impl Kind {
    /// The stable name (`bad_request`, …) the server puts in `{"error": {"code"}}`.
    pub fn code(self) -> &'static str {
        match self {
            Kind::BadRequest => "bad_request",
            Kind::NotFound => "not_found",
            Kind::Unsupported => "unsupported",
            Kind::Cancelled => "cancelled",
            Kind::Unavailable => "unavailable",
            Kind::Internal => "internal",
        }
    }

    /// The HTTP status for this kind.
    pub fn http_status(self) -> u16 {
        match self {
            Kind::BadRequest => 400,
            Kind::NotFound => 404,
            Kind::Unsupported => 422,
            Kind::Cancelled => 409,
            Kind::Unavailable => 503,
            Kind::Internal => 500,
        }
    }

    /// The `tenpak` exit code: 2 for a request the user must change (as clap does for usage
    /// errors), 130 for a cancellation (as for Ctrl-C), 1 for everything else.
    pub fn exit_code(self) -> u8 {
        match self {
            Kind::BadRequest => 2,
            Kind::Cancelled => 130,
            Kind::NotFound | Kind::Unsupported | Kind::Unavailable | Kind::Internal => 1,
        }
    }

    /// `error` with this kind (replacing any kind it had: the outermost classification wins),
    /// its message chain unchanged.
    pub fn tag(self, error: impl Into<Error>) -> Error {
        let mut error = error.into();
        error.kind = Some(self);
        error
    }

    /// A new error of this kind with `message`.
    pub fn error(self, message: impl fmt::Display) -> Error {
        self.tag(Error::msg(message))
    }
}

/// A failure: its [`Kind`] (once someone classified it) and its messages, outermost first.
pub struct Error {
    kind: Option<Kind>,
    /// Context added on the way out, innermost first (pushed as it is added).
    context: Vec<String>,
    /// The error at the root of the chain.
    root: Root,
}

enum Root {
    /// A message (from [`err!`], [`bail!`], [`Error::msg`]).
    Message(String),
    /// A converted error, with its `source()` chain rendered at conversion time.
    Error { error: Box<dyn StdError + Send + Sync + 'static>, sources: Vec<String> },
}

/// `Result<T, Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new unclassified error with `message`.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self { kind: None, context: Vec::new(), root: Root::Message(message.to_string()) }
    }

    /// A new unclassified error wrapping `error` (its sources become part of the chain).
    pub fn new(error: impl StdError + Send + Sync + 'static) -> Self {
        let mut sources = Vec::new();
        let mut next = error.source();
        while let Some(source) = next {
            sources.push(source.to_string());
            next = source.source();
        }
        Self { kind: None, context: Vec::new(), root: Root::Error { error: Box::new(error), sources } }
    }

    /// This error with `message` added as its outermost context.
    pub fn context(mut self, message: impl fmt::Display) -> Self {
        self.context.push(message.to_string());
        self
    }

    /// What kind of failure this is; [`Kind::Internal`] if nobody said.
    pub fn kind(&self) -> Kind {
        self.kind.unwrap_or(Kind::Internal)
    }

    /// The kind, if someone classified this error.
    pub fn kind_if_known(&self) -> Option<Kind> {
        self.kind
    }

    /// This error, classified as `default` if nobody classified it yet (a boundary's default:
    /// bad request while checking a request, internal while running it) — except an I/O error
    /// of a resource that ran out ([`out_of_resource`]: no space left, a read-only file system),
    /// which is [`Kind::Unavailable`] wherever it happened.
    pub fn or_kind(mut self, default: Kind) -> Self {
        let fault = self.downcast_ref::<std::io::Error>().is_some_and(out_of_resource);
        self.kind.get_or_insert(if fault { Kind::Unavailable } else { default });
        self
    }

    /// The error at the root of the chain, if it was converted from an `E`.
    pub fn downcast_ref<E: StdError + 'static>(&self) -> Option<&E> {
        match &self.root {
            Root::Error { error, .. } => error.downcast_ref::<E>(),
            Root::Message(_) => None,
        }
    }

    /// The messages, outermost first: the context added on the way out, then the root error
    /// and its sources.
    pub fn chain(&self) -> Vec<String> {
        let mut out: Vec<String> = self.context.iter().rev().cloned().collect();
        match &self.root {
            Root::Message(m) => out.push(m.clone()),
            Root::Error { error, sources } => {
                out.push(error.to_string());
                out.extend(sources.iter().cloned());
            }
        }
        out
    }

    /// The outermost message alone.
    pub fn message(&self) -> String {
        match (self.context.last(), &self.root) {
            (Some(outer), _) => outer.clone(),
            (None, Root::Message(m)) => m.clone(),
            (None, Root::Error { error, .. }) => error.to_string(),
        }
    }

    /// This error as a standard error (for APIs that take a `Box<dyn Error>`); its `Display` is
    /// the whole chain.
    pub fn into_std(self) -> Box<dyn StdError + Send + Sync + 'static> {
        Box::new(Std(self))
    }
}

impl fmt::Display for Error {
    /// The whole chain on one line, outermost first: `a: b: c`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.chain().join(": "))
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Some(kind) => write!(f, "{kind:?} error: {self}"),
            None => write!(f, "error: {self}"),
        }
    }
}

/// Whether an I/O error says a resource of the machine ran out or cannot be written, rather than
/// that the operation was wrong: no space left on the device, a disk quota exceeded, a read-only
/// file system. Such a failure is [`Kind::Unavailable`]: it goes away when the operator frees
/// space, and the same request then succeeds.
pub fn out_of_resource(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(error.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::ReadOnlyFilesystem)
}

/// Any standard error converts, as with `?` (which is why [`Error`] itself is not one).
impl<E: StdError + Send + Sync + 'static> From<E> for Error {
    fn from(error: E) -> Self {
        Error::new(error)
    }
}

/// [`Error`] as a `std::error::Error` ([`Error::into_std`]).
struct Std(Error);

impl fmt::Display for Std {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for Std {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for Std {}

/// Adding context to a failure (a `Result`'s error, an `Option`'s absence), and a kind.
pub trait Context<T> {
    /// The error, if any, with `message` added as its outermost context.
    fn context(self, message: impl fmt::Display) -> Result<T>;
    /// [`Context::context`], the message made only on failure.
    fn with_context<C: fmt::Display>(self, message: impl FnOnce() -> C) -> Result<T>;
    /// The error, if any, classified as `kind`.
    fn kind(self, kind: Kind) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for Result<T, E> {
    fn context(self, message: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(message))
    }
    fn with_context<C: fmt::Display>(self, message: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(message()))
    }
    fn kind(self, kind: Kind) -> Result<T> {
        self.map_err(|e| kind.tag(e))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, message: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(message))
    }
    fn with_context<C: fmt::Display>(self, message: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::msg(message()))
    }
    fn kind(self, kind: Kind) -> Result<T> {
        self.ok_or_else(|| kind.error("missing value"))
    }
}

/// A new unclassified [`Error`] from a format string: `err!("{path}: no such file")`.
#[macro_export]
macro_rules! err {
    ($($arg:tt)*) => {
        $crate::Error::msg(format!($($arg)*))
    };
}

/// Return early with [`err!`]'s error.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::err!($($arg)*).into())
    };
}

/// Return early with [`err!`]'s error unless `cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            $crate::bail!($($arg)*);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")
    }

    #[test]
    fn the_chain_prints_outermost_first_on_one_line() {
        let e: Result<()> = Err(io()).context("reading model.gguf").context("opening the model");
        let e = e.unwrap_err();
        assert_eq!(e.to_string(), "opening the model: reading model.gguf: no such file");
        assert_eq!(e.message(), "opening the model");
        assert_eq!(e.chain(), ["opening the model", "reading model.gguf", "no such file"]);
        assert!(e.downcast_ref::<std::io::Error>().is_some());
        assert_eq!(err!("a {}", 1).context("b").to_string(), "b: a 1");
    }

    #[test]
    fn the_outermost_kind_wins_and_boundaries_fill_in_a_default() {
        let e = Kind::NotFound.error("model.gguf: no such file").context("opening");
        assert_eq!(e.kind(), Kind::NotFound);
        assert_eq!(e.to_string(), "opening: model.gguf: no such file");
        assert_eq!(Kind::BadRequest.tag(e).kind(), Kind::BadRequest);
        let unclassified = err!("something");
        assert_eq!(unclassified.kind(), Kind::Internal);
        assert_eq!(unclassified.kind_if_known(), None);
        assert_eq!(err!("x").or_kind(Kind::BadRequest).kind(), Kind::BadRequest);
        assert_eq!(Kind::Unsupported.error("x").or_kind(Kind::BadRequest).kind(), Kind::Unsupported);
        let tagged: Result<()> = Err(io()).kind(Kind::NotFound);
        assert_eq!(tagged.unwrap_err().kind(), Kind::NotFound);
    }

    #[test]
    fn a_full_disk_is_unavailable_wherever_it_happens() {
        let full: Result<()> = Err(std::io::Error::from_raw_os_error(28)).context("writing shard_0.safetensors");
        assert_eq!(full.unwrap_err().or_kind(Kind::Internal).kind(), Kind::Unavailable);
        let read_only = Error::new(std::io::Error::from_raw_os_error(30)).or_kind(Kind::BadRequest);
        assert_eq!(read_only.kind(), Kind::Unavailable);
        assert_eq!(Error::new(io()).or_kind(Kind::Internal).kind(), Kind::Internal, "a missing file is not a resource fault");
        assert_eq!(Kind::NotFound.tag(std::io::Error::from_raw_os_error(28)).or_kind(Kind::Internal).kind(), Kind::NotFound);
    }

    #[test]
    fn macros_and_options() {
        fn check(n: i32) -> Result<i32> {
            ensure!(n > 0, "n must be positive, got {n}");
            if n > 10 {
                bail!("n = {n} is too large");
            }
            Ok(n)
        }
        assert_eq!(check(3).unwrap(), 3);
        assert_eq!(check(0).unwrap_err().to_string(), "n must be positive, got 0");
        assert_eq!(check(11).unwrap_err().to_string(), "n = 11 is too large");
        assert_eq!(None::<u8>.context("no tensor `x`").unwrap_err().to_string(), "no tensor `x`");
        let std = err!("inner").context("outer").into_std();
        assert_eq!(std.to_string(), "outer: inner");
    }

    #[test]
    fn kinds_map_to_outcomes() {
        assert_eq!((Kind::BadRequest.exit_code(), Kind::BadRequest.http_status()), (2, 400));
        assert_eq!((Kind::Cancelled.exit_code(), Kind::Cancelled.http_status()), (130, 409));
        assert_eq!(Kind::NotFound.code(), "not_found");
        assert_eq!((Kind::Unavailable.exit_code(), Kind::Unavailable.http_status(), Kind::Unavailable.code()), (1, 503, "unavailable"));
    }
}
