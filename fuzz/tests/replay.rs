//! The short form of the fuzzing, on the stable toolchain (part of the workspace tests): every
//! committed corpus file, then a seeded mutation loop for a fixed time, through each target
//! function of `flux_fuzz` (the same bodies the libFuzzer binaries run).
//!
//! A finding (a panic, a call slower than [`SLOW`], or an allocation beyond [`alloc_limit`]) fails
//! the test, names the target and writes the input to `target/flux-fuzz-findings/` for a
//! regression test (`FLUX_FUZZ_INPUT=<target>=<file>` reruns it alone, with its backtrace).
//! `FLUX_FUZZ_SECONDS` sets the mutation time per target (default 10 s; 0 runs
//! the corpus only); `FLUX_FUZZ_SEED` the seed (default: fixed, so CI runs are repeatable);
//! `FLUX_FUZZ_TARGETS=a,b` runs only those targets; `FLUX_FUZZ_TRACE=1` writes each input to
//! `target/flux-fuzz-findings/<target>-last` before running it (for aborts).

use std::alloc::{GlobalAlloc, Layout, System};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counts live heap bytes and their peak, to check that no input makes a loader allocate more
/// than its size justifies.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Relaxed) + layout.size();
            PEAK.fetch_max(live, Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let live =
                    LIVE.fetch_add(new_size - layout.size(), Relaxed) + new_size - layout.size();
                PEAK.fetch_max(live, Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The most heap one call may add for an input of `len` bytes: 64 bytes per input byte (a
/// dequantised Q4 tensor is 7x its bytes, a tokenizer built from a vocabulary some 30x) plus
/// 64 MiB for fixed costs. A header that asks for gigabytes exceeds it.
fn alloc_limit(len: usize) -> usize {
    64 * len + (64 << 20)
}

/// A call slower than this is a finding (a loop whose bound comes from the file).
const SLOW: Duration = Duration::from_secs(5);

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

fn findings_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/flux-fuzz-findings")
}

/// Runs one input; on a finding saves it and returns the description.
fn run_one(name: &str, f: fn(&[u8]), data: &[u8], origin: &str) -> Result<(), String> {
    if std::env::var_os("FLUX_FUZZ_TRACE").is_some() {
        // Before the call: an abort (stack overflow) leaves the input behind.
        let _ = std::fs::create_dir_all(findings_dir());
        let _ = std::fs::write(findings_dir().join(format!("{name}-last")), data);
    }
    let base = LIVE.load(Relaxed);
    PEAK.store(base, Relaxed);
    let start = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| f(data)));
    let took = start.elapsed();
    let added = PEAK.load(Relaxed).saturating_sub(base);
    let problem = match outcome {
        Err(e) => Some(format!(
            "panicked: {}",
            e.downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| e.downcast_ref::<&str>().copied())
                .unwrap_or("(non-string payload)")
        )),
        Ok(()) if took > SLOW => Some(format!("took {took:.1?} (limit {SLOW:?})")),
        Ok(()) if added > alloc_limit(data.len()) => Some(format!(
            "allocated {added} bytes for a {}-byte input (limit {})",
            data.len(),
            alloc_limit(data.len())
        )),
        Ok(()) => None,
    };
    let Some(problem) = problem else {
        return Ok(());
    };
    let dir = findings_dir();
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("{name}-{:016x}", fnv(data)));
    let _ = std::fs::write(&file, data);
    Err(format!(
        "target `{name}` on {origin}: {problem}; input saved to {} (replay: cargo +nightly fuzz run {name} --features libfuzzer {})",
        file.display(),
        file.display()
    ))
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

/// xorshift64*: a small seeded generator, so a CI failure can be rerun with the same seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// Integers that headers get wrong: zero, one, the edges of each width, and huge counts.
const INTERESTING: [u64; 12] = [
    0,
    1,
    2,
    0x7f,
    0xff,
    0x7fff,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 32,
    i64::MAX as u64,
    u64::MAX,
];

/// One to four mutations of `seed` (with `other` for splicing), libFuzzer's kinds in small.
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        let len = d.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = rng.next() as u8;
            }
            2 if len >= 8 => {
                // An interesting integer of width 1, 2, 4 or 8 at a random offset.
                let width = 1 << rng.below(4);
                let i = rng.below(len - width + 1);
                let v = INTERESTING[rng.below(INTERESTING.len())].to_le_bytes();
                d[i..i + width].copy_from_slice(&v[..width]);
            }
            3 => d.truncate(rng.below(len + 1)),
            4 if len > 0 => {
                let (a, n) = (rng.below(len), 1 + rng.below(64));
                d.drain(a..(a + n).min(len));
            }
            5 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(32);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(at..at, bytes);
            }
            6 if len > 0 => {
                // Repeat a chunk (duplicate keys, tensors, lines).
                let a = rng.below(len);
                let n = 1 + rng.below((len - a).min(256));
                let chunk = d[a..a + n].to_vec();
                let at = rng.below(len + 1);
                d.splice(at..at, chunk);
            }
            7 if !other.is_empty() => {
                // Splice: a prefix of this input, a suffix of another.
                let cut = rng.below(len + 1);
                let from = rng.below(other.len());
                d.truncate(cut);
                d.extend_from_slice(&other[from..]);
            }
            8 if len > 0 => {
                // An ASCII digit or JSON/Jinja token, for the text formats.
                const TOKENS: [&[u8]; 12] = [
                    b"0",
                    b"-1",
                    b"1e999",
                    b"99999999999999999999",
                    b"\"",
                    b"{",
                    b"}",
                    b"[",
                    b"]",
                    b"null",
                    b"{%",
                    b"%}",
                ];
                let t = TOKENS[rng.below(TOKENS.len())];
                let at = rng.below(len + 1);
                d.splice(at..at, t.iter().copied());
            }
            _ => {}
        }
    }
    d
}

/// `FLUX_FUZZ_INPUT=<target>=<file>` runs that one input, outside `catch_unwind`, so that a
/// finding shows its backtrace.
#[test]
fn one_input_given_in_the_environment() {
    let Ok(spec) = std::env::var("FLUX_FUZZ_INPUT") else {
        return;
    };
    let (name, file) = spec
        .split_once('=')
        .expect("FLUX_FUZZ_INPUT is <target>=<file>");
    let &(_, f) = flux_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target `{name}`"));
    f(&std::fs::read(file).unwrap_or_else(|e| panic!("{file}: {e}")));
}

#[test]
fn corpus_and_mutations_of_every_target() {
    if std::env::var("FLUX_FUZZ_INPUT").is_ok() {
        return;
    }
    let seconds: u64 = std::env::var("FLUX_FUZZ_SECONDS")
        .ok()
        .map(|s| s.parse().expect("FLUX_FUZZ_SECONDS is a number of seconds"))
        .unwrap_or(10);
    let seed: u64 = std::env::var("FLUX_FUZZ_SEED")
        .ok()
        .map(|s| s.parse().expect("FLUX_FUZZ_SEED is an integer"))
        .unwrap_or(14);
    let mut findings = Vec::new();
    let only = std::env::var("FLUX_FUZZ_TARGETS").ok();
    for &(name, f) in flux_fuzz::TARGETS {
        if only
            .as_ref()
            .is_some_and(|o| !o.split(',').any(|t| t == name))
        {
            continue;
        }
        let dir = corpus_dir(name);
        let mut corpus: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let p = e.unwrap().path();
                let bytes = std::fs::read(&p).unwrap();
                (p, bytes)
            })
            .collect();
        corpus.sort();
        assert!(!corpus.is_empty(), "{} has no seed", dir.display());
        for (path, data) in &corpus {
            if let Err(e) = run_one(name, f, data, &path.display().to_string()) {
                findings.push(e);
            }
        }
        let mut rng = Rng(seed ^ fnv(name.as_bytes()) | 1);
        let start = Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < Duration::from_secs(seconds) {
            let seed_file = &corpus[rng.below(corpus.len())].1;
            let other = &corpus[rng.below(corpus.len())].1;
            let data = mutate(&mut rng, seed_file, other);
            runs += 1;
            if let Err(e) = run_one(name, f, &data, &format!("mutation {runs} (seed {seed})")) {
                findings.push(e);
                break;
            }
        }
        eprintln!(
            "flux-fuzz {name}: {} corpus files, {runs} mutations in {:.1?}",
            corpus.len(),
            start.elapsed()
        );
    }
    assert!(findings.is_empty(), "findings:\n{}", findings.join("\n"));
}
