//! How every flux program ends on an error: one line on stderr, `PROGRAM: what went wrong`
//! (with its causes, `: `-joined), and exit code 1. Usage errors are clap's (exit code 2).

/// Runs `main` and exits with code 1 and a one-line message if it fails.
pub fn exit_on_error(program: &str, main: impl FnOnce() -> anyhow::Result<()>) {
    if let Err(e) = main() {
        let message = format!("{e:#}").replace('\n', " ");
        eprintln!("{program}: {message}");
        std::process::exit(1);
    }
}
