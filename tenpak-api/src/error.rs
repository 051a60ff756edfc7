use std::fmt;

/// What went wrong, coarsely; the message says the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The input data cannot be encoded as given: NaN or Inf weights, an empty matrix, a length
    /// that does not match the stated shape.
    InvalidInput,
    /// A parameter is missing, unknown, of the wrong type, or out of range.
    InvalidParam,
    /// An encoded value is malformed: a missing part, a part of the wrong size or dtype.
    Corrupt,
    /// A codec, calibrator or allocator id is not registered, or is registered twice.
    Registry,
    /// A codec needs calibration statistics that were not provided.
    MissingStats,
    /// Anything else.
    Other,
}

/// The error type of every fallible call in the API: a kind and a human-readable message that
/// names the tensor, part or parameter at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

/// Shorthand for `Result<T, tenpak_api::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error of `kind` carrying `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    /// [`ErrorKind::InvalidInput`].
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    /// [`ErrorKind::InvalidParam`].
    pub fn invalid_param(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidParam, message)
    }
    /// [`ErrorKind::Corrupt`].
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }
    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }
    /// The message of this error.
    pub fn message(&self) -> &str {
        &self.message
    }
    /// The same error with `context` put in front of the message (`"context: message"`).
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
