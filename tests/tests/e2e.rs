//! End-to-end tests of the `otstream` binary, one module per area.

// `otstream decode` on the payload spec's examples, files and stdin.
mod decode_cli;
