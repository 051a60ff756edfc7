//! End to end through the `tenpak` binary: Studio (`tenpak serve`) on loopback, plugins loaded
//! with `--plugin`, and the CLI's one-line errors and exit codes.

mod cli;
mod plugins;
mod server;
mod sweep;
