//! How every flux program ends on an error: one line on stderr, `PROGRAM: what went wrong`
//! (with its causes, `: `-joined), and exit code 1. Usage errors are clap's (exit code 2).
//!
//! A device that runs out of memory is reported the same way. burn's tensor operations cannot
//! return errors, so cubecl panics when an allocation fails (`can't allocate buffer of size: N`
//! from its memory pools, CUDA's `CUDA_ERROR_OUT_OF_MEMORY`, wgpu's out-of-memory); a panic
//! hook turns exactly those panics into the one-line error. Any other panic is a bug in flux and
//! keeps Rust's message and backtrace.

/// Runs `main` and exits with code 1 and a one-line message if it fails or if the device runs
/// out of memory.
pub fn exit_on_error(program: &str, main: impl FnOnce() -> anyhow::Result<()>) {
    report_out_of_memory(program);
    if let Err(e) = main() {
        let message = format!("{e:#}").replace('\n', " ");
        eprintln!("{program}: {message}");
        std::process::exit(1);
    }
}

/// Installs the panic hook that reports a failed device allocation as `PROGRAM: ...` and exits
/// with code 1 (from whichever thread panicked: cubecl allocates on its device thread too).
fn report_out_of_memory(program: &str) {
    let program = program.to_string();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        match out_of_memory(message) {
            Some(what) => {
                eprintln!(
                    "{program}: {what}: use a shorter prompt, fewer new tokens or a smaller \
                     batch, --dtype bf16 or f16, or a device with more free memory"
                );
                exit_now(1);
            }
            None => default_hook(info),
        }
    }));
}

/// Ends the process with `code` at once, from inside a panic hook. `std::process::exit` runs
/// the C exit handlers, and there the Vulkan driver's teardown (wgpu) reached Rust thread-locals
/// of the panicking thread: a second panic, and an abort (code 134) after the message.
fn exit_now(code: i32) -> ! {
    #[cfg(unix)]
    // SAFETY: `_exit` ends the process without running anything else; stderr is unbuffered and
    // stdout is flushed first, so no output is lost.
    unsafe {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        libc::_exit(code)
    }
    #[cfg(not(unix))]
    std::process::exit(code)
}

/// What failed, if the panic message is a failed device allocation.
fn out_of_memory(message: &str) -> Option<String> {
    const TOO_BIG: &str = "can't allocate buffer of size: ";
    if let Some(at) = message.find(TOO_BIG) {
        let digits: String = message[at + TOO_BIG.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(bytes) = digits.parse::<u64>() {
            return Some(format!(
                "the device could not allocate a buffer of {} (out of memory, or larger than its \
                 largest buffer)",
                bytes_text(bytes)
            ));
        }
    }
    let lower = message.to_ascii_lowercase();
    [
        "out of memory",
        "out-of-memory",
        "outofmemory",
        "out_of_memory",
    ]
    .iter()
    .any(|needle| lower.contains(needle))
    .then(|| "the device ran out of memory".to_string())
}

/// `bytes` in the largest binary unit that keeps it >= 1.
fn bytes_text(bytes: u64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_the_allocation_failures_of_cubecl_cuda_and_wgpu() {
        // cubecl's IoError::BufferTooBig as `unwrap` prints it (Debug is its Display).
        let pool = "called `Result::unwrap()` on an `Err` value: can't allocate buffer of size: \
                    40802189312\n   0: backtrace";
        assert_eq!(
            out_of_memory(pool).as_deref(),
            Some(
                "the device could not allocate a buffer of 38.0 GiB (out of memory, or larger \
                 than its largest buffer)"
            )
        );
        for message in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "An out-of-memory error happened during launch",
            "wgpu error: Out of Memory",
        ] {
            assert_eq!(
                out_of_memory(message).as_deref(),
                Some("the device ran out of memory"),
                "{message}"
            );
        }
        for other in ["index out of bounds: the len is 3 but the index is 7", ""] {
            assert_eq!(out_of_memory(other), None, "{other}");
        }
        assert_eq!(bytes_text(512), "512 bytes");
        assert_eq!(bytes_text(3 << 20), "3.0 MiB");
    }
}
