//! Router training data: determinism, well-formed samples (ranges, lengths, answers that
//! follow from the context), retrieval targets out of the sparse window's reach, the split
//! file format (round trip and corrupt files) and disjoint train / valid sources.
//! Needs the SmolLM2 GGUF and the State of the Union texts of scripts/fetch-models.sh, and the
//! code crates in the cargo registry (a build of this workspace puts them there).

mod common;

use common::cached;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flux_models::gguf::GgufFile;
use flux_models::router_data::{
    build_router_data, default_cargo_home, locate_text_end, read_split, write_split, DataConfig,
    RouterSample, Sources, Split, FAMILIES, SPARSE_REACH,
};
use flux_models::tokenizer::{ChatMessage, Tokenizer};
use flux_models::ModelError;
use flux_router::TaskCategory;

// ---------------------------------------------------------------------------------------------
// Fixtures

fn tokenizer() -> &'static Tokenizer {
    static TOK: OnceLock<Tokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let file = GgufFile::open(&cached(
            "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf",
        ))
        .unwrap();
        Tokenizer::from_gguf(&file).unwrap()
    })
}

fn sources() -> &'static Sources {
    static SOURCES: OnceLock<Sources> = OnceLock::new();
    SOURCES.get_or_init(|| Sources::load(&cached("texts/sotu"), &default_cargo_home()).unwrap())
}

const LENGTHS: [usize; 2] = [1024, 2048];

fn config(seed: u64) -> DataConfig {
    DataConfig {
        seed,
        train: 20,
        valid: 10,
        lengths: LENGTHS.to_vec(),
    }
}

/// The set of `config(0)`, built once.
fn data() -> &'static (Vec<RouterSample>, Vec<RouterSample>) {
    static DATA: OnceLock<(Vec<RouterSample>, Vec<RouterSample>)> = OnceLock::new();
    DATA.get_or_init(|| build_router_data(&config(0), tokenizer(), sources()).unwrap())
}

/// A fresh scratch folder.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("flux-router-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn decode(ids: &[u32]) -> String {
    tokenizer().decode(ids, false).unwrap()
}

fn content(s: &RouterSample) -> String {
    decode(&s.ids[s.prompt_span.clone()])
}

fn answer_text(s: &RouterSample) -> String {
    decode(&s.ids[s.answer.start..s.answer.end - 1])
}

// ---------------------------------------------------------------------------------------------
// Determinism

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    let dir = scratch("determinism");
    let (train, valid) = data();
    let (train2, valid2) = build_router_data(&config(0), tokenizer(), sources()).unwrap();
    let a = write_split(&dir.join("a.bin.gz"), train).unwrap();
    let b = write_split(&dir.join("b.bin.gz"), &train2).unwrap();
    assert_eq!(a, b, "same config, different train bytes");
    assert_eq!(
        write_split(&dir.join("va.bin.gz"), valid).unwrap(),
        write_split(&dir.join("vb.bin.gz"), &valid2).unwrap()
    );
    assert_eq!(
        std::fs::read(dir.join("a.bin.gz")).unwrap(),
        std::fs::read(dir.join("b.bin.gz")).unwrap()
    );
    let other = DataConfig {
        valid: 0,
        ..config(1)
    };
    let (train3, _) = build_router_data(&other, tokenizer(), sources()).unwrap();
    let c = write_split(&dir.join("c.bin.gz"), &train3).unwrap();
    assert_ne!(a, c, "a different seed gave the same data");
    assert!(!dir.join("a.bin.gz.tmp").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Samples

#[test]
fn samples_are_well_formed() {
    let tok = tokenizer();
    let (train, valid) = data();
    assert_eq!((train.len(), valid.len()), (20, 10));
    let eos = tok.eos_ids();
    for (split, samples) in [("train", train), ("valid", valid)] {
        let mut per_category = BTreeMap::new();
        for (i, s) in samples.iter().enumerate() {
            let at = format!("{split} {i} ({})", s.family);
            s.check(Some(tok.vocab_size()))
                .unwrap_or_else(|m| panic!("{at}: {m}"));
            let n = s.ids.len();
            assert!(
                LENGTHS
                    .iter()
                    .any(|&l| n <= l && n as f64 >= 0.7 * l as f64),
                "{at}: {n} tokens is not within 70-100% of a budget of {LENGTHS:?}"
            );
            assert_eq!(s.target, s.category.default_target(), "{at}");
            assert!(
                FAMILIES
                    .iter()
                    .any(|f| f.0 == s.category && f.1 == s.family),
                "{at}: family of another category"
            );
            assert!(
                eos.contains(&s.ids[s.answer.end - 1]),
                "{at}: answer not closed by EOS"
            );
            assert_eq!(s.answer.end, n, "{at}: ids go on after the answer");
            // The ranges are exactly the user content and the answer: rendering them again
            // with the chat template gives the same ids.
            let (c, a) = (content(s), answer_text(s));
            assert!(!a.trim().is_empty(), "{at}: empty answer");
            let text = tok
                .apply_chat_template(
                    &[
                        ChatMessage::new("user", c.as_str()),
                        ChatMessage::new("assistant", a.as_str()),
                    ],
                    false,
                )
                .unwrap();
            let again = tok.encode(&text, false).unwrap();
            assert_eq!(
                &again[..n],
                &s.ids[..],
                "{at}: ids differ from the rendered sample"
            );
            check_answer_follows(&at, s, &c, &a);
            *per_category.entry(s.category.index()).or_insert(0) += 1;
        }
        // Categories in turn: equal shares.
        assert!(
            per_category.values().all(|&k| k == samples.len() / 5),
            "{split}: {per_category:?}"
        );
    }
}

/// The text between the last `open` and the next `close` after it.
fn between<'a>(s: &'a str, open: &str, close: &str) -> &'a str {
    let start = s
        .rfind(open)
        .map(|i| i + open.len())
        .unwrap_or_else(|| panic!("no {open:?}"));
    let end = s[start..].find(close).map(|i| start + i).unwrap_or(s.len());
    &s[start..end]
}

/// Each family's answer really follows from its context.
fn check_answer_follows(at: &str, s: &RouterSample, c: &str, a: &str) {
    match s.family.as_str() {
        "niah" => {
            assert!(
                a.len() == 7 && a.bytes().all(|b| b.is_ascii_digit()),
                "{at}: {a}"
            );
            let needle = c
                .find(&format!(" is {a}."))
                .unwrap_or_else(|| panic!("{at}: no needle for {a}"));
            let key = c[..needle].rsplit("The secret code of ").next().unwrap();
            // The needle names the key once; the question names it again.
            let mentions = c.matches(&format!("secret code of {key}")).count();
            assert_eq!(
                mentions, 2,
                "{at}: the question asks about another key than {key:?}"
            );
        }
        "vt" => {
            let names: Vec<&str> = a.split(", ").collect();
            assert!((4..=6).contains(&names.len()), "{at}: {a}");
            let value = between(c, &format!("VAR {} = ", names[0]), ".");
            assert!(
                c.contains(&format!("value {value}")),
                "{at}: question about another value"
            );
            let mut last = 0;
            for w in names.windows(2) {
                let link = format!("VAR {} = VAR {}.", w[1], w[0]);
                let at_link = c
                    .find(&link)
                    .unwrap_or_else(|| panic!("{at}: no link {link}"));
                assert!(at_link > last, "{at}: chain out of order");
                last = at_link;
            }
        }
        "two_hop" => {
            let holds = c
                .find(&format!(" holds {a}."))
                .unwrap_or_else(|| panic!("{at}: no box holds {a}"));
            let boxname = c[..holds].rsplit("Box ").next().unwrap();
            let stored = c
                .find(&format!(" is stored in box {boxname}."))
                .unwrap_or_else(|| panic!("{at}: nothing stored in box {boxname}"));
            let key = c[..stored].rsplit("The ").next().unwrap();
            assert_eq!(
                c.matches(key).count(),
                2,
                "{at}: the question asks about another key than {key:?}"
            );
        }
        "sotu_next" => {
            let quoted = ["follows: '", "this one: '", "directly after '"]
                .iter()
                .find_map(|m| c.find(m).map(|i| &c[i + m.len()..]))
                .and_then(|rest| rest.split('\'').next())
                .unwrap_or_else(|| panic!("{at}: no quoted sentence"));
            // The next sentence of the address (the same paragraph or the next one).
            assert!(
                c.contains(&format!("{quoted} {a}")) || c.contains(&format!("{quoted}\n\n{a}")),
                "{at}: answer does not follow the quote"
            );
        }
        "sotu_sum" => {
            assert!(
                c.starts_with("You are given one or more State of the Union addresses."),
                "{at}"
            );
            assert!(
                c.ends_with("Opening paragraph of the last address:"),
                "{at}"
            );
            assert!(!c.contains(a), "{at}: the answer is still in the context");
        }
        "rs_lcc" => {
            assert!(
                c.starts_with("Please complete the code given below.\n\n// file: "),
                "{at}"
            );
            assert!(c.ends_with("\n\nNext lines of code:"), "{at}");
            assert!(
                a.lines().filter(|l| !l.trim().is_empty()).count() <= 3,
                "{at}: {a}"
            );
        }
        icl => {
            let input = between(c, "Input: ", "\nOutput:");
            let expected = match icl {
                "icl_sort" => {
                    let mut w: Vec<&str> = input.split(", ").collect();
                    w.sort();
                    w.join(", ")
                }
                "icl_count" => {
                    let letter = between(input, "letter \"", "\"");
                    let word = between(input, "in \"", "\"");
                    word.matches(letter).count().to_string()
                }
                "icl_base" => format!("{:b}", input.parse::<u64>().unwrap()),
                "icl_reverse" => input.chars().rev().collect(),
                other => panic!("{at}: unknown family {other}"),
            };
            assert_eq!(a, expected, "{at}: input {input:?}");
            assert!(
                c.matches("\nOutput: ").count() >= 5,
                "{at}: few demonstrations"
            );
        }
    }
}

#[test]
fn retrieval_targets_lie_beyond_the_sparse_window() {
    let tok = tokenizer();
    // Long enough budgets that the rule applies to every QA sample (>= SPARSE_REACH + 600).
    let config = DataConfig {
        seed: 3,
        train: 10,
        valid: 0,
        lengths: vec![3840],
    };
    let (train, _) = build_router_data(&config, tok, sources()).unwrap();
    let mut checked = 0;
    for (i, s) in train.iter().enumerate() {
        let c = content(s);
        let a = answer_text(s);
        let targets: Vec<String> = match s.family.as_str() {
            "niah" => vec![format!(" is {a}.")],
            "two_hop" => {
                let holds = format!(" holds {a}.");
                let boxname = c[..c.find(&holds).unwrap()]
                    .rsplit("Box ")
                    .next()
                    .unwrap()
                    .to_string();
                vec![holds, format!(" is stored in box {boxname}.")]
            }
            "vt" => a.split(", ").map(|n| format!("VAR {n} = ")).collect(),
            "sotu_next" => vec![a.clone()],
            _ => continue,
        };
        let n = s.ids.len();
        assert!(n >= SPARSE_REACH + 600, "sample {i}: {n} tokens");
        for t in targets {
            assert!(
                c.contains(&t),
                "sample {i} ({}): {t:?} not in the context",
                s.family
            );
            let end = locate_text_end(tok, &s.ids, s.prompt_span.clone(), &t)
                .unwrap()
                .unwrap();
            assert!(
                end + SPARSE_REACH <= n,
                "sample {i} ({}): {t:?} ends at token {end} of {n}, within the sparse reach",
                s.family
            );
            checked += 1;
        }
    }
    assert!(checked >= 4, "only {checked} targets checked");
}

// ---------------------------------------------------------------------------------------------
// File format

#[test]
fn split_files_round_trip() {
    let dir = scratch("roundtrip");
    let (train, _) = data();
    let path = dir.join("train.bin.gz");
    let sha = write_split(&path, train).unwrap();
    assert_eq!(sha.len(), 64);
    assert_eq!(&read_split(&path).unwrap(), train);
    let empty = dir.join("empty.bin.gz");
    write_split(&empty, &[]).unwrap();
    assert!(read_split(&empty).unwrap().is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// A raw (uncompressed) one-sample file with the given fields.
fn raw_file(
    n_ids: u32,
    prompt: (u32, u32),
    answer: (u32, u32),
    category: u8,
    ids: &[u32],
) -> Vec<u8> {
    let mut b = b"FLUXRDAT".to_vec();
    b.extend(1u32.to_le_bytes());
    b.extend(1u64.to_le_bytes());
    for v in [n_ids, prompt.0, prompt.1, answer.0, answer.1] {
        b.extend(v.to_le_bytes());
    }
    b.push(category);
    b.extend(1.0f64.to_le_bytes());
    b.extend(4u16.to_le_bytes());
    b.extend(b"niah");
    for id in ids {
        b.extend(id.to_le_bytes());
    }
    b
}

fn read_err(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let err = read_split(&path).expect_err(name);
    let msg = err.to_string();
    assert!(
        msg.contains(name),
        "{name}: message does not name the file: {msg}"
    );
    msg
}

#[test]
fn corrupt_split_files_are_errors() {
    let dir = scratch("corrupt");
    let (train, _) = data();
    let good_path = dir.join("good.bin.gz");
    write_split(&good_path, &train[..3]).unwrap();
    let good = std::fs::read(&good_path).unwrap();
    // Truncated anywhere: an error, never a panic.
    for cut in [
        0,
        5,
        10,
        20,
        good.len() / 3,
        good.len() / 2,
        good.len() - 9,
        good.len() - 1,
    ] {
        read_err(&dir, &format!("cut{cut}.bin.gz"), &good[..cut]);
    }
    // A flipped byte in the compressed data or the CRC.
    for at in [good.len() / 2, good.len() - 6] {
        let mut bad = good.clone();
        bad[at] ^= 0x5a;
        read_err(&dir, &format!("flip{at}.bin.gz"), &bad);
    }
    let msg = read_err(&dir, "plain.bin.gz", b"not gzip at all");
    assert!(msg.contains("invalid router data file"), "{msg}");
    let msg = read_err(&dir, "magic.bin.gz", &gzip(b"NOTMAGIC\x01\0\0\0"));
    assert!(msg.contains("magic"), "{msg}");
    let ids = [1, 2, 3, 4, 5, 6];
    let msg = read_err(
        &dir,
        "range.bin.gz",
        &gzip(&raw_file(6, (1, 4), (4, 9), 0, &ids)),
    );
    assert!(msg.contains("outside"), "{msg}");
    let msg = read_err(
        &dir,
        "category.bin.gz",
        &gzip(&raw_file(6, (1, 4), (4, 6), 9, &ids)),
    );
    assert!(msg.contains("unknown category"), "{msg}");
    // A length field far beyond the data: rejected without allocating for it.
    let msg = read_err(
        &dir,
        "huge.bin.gz",
        &gzip(&raw_file(u32::MAX, (1, 4), (4, 6), 0, &ids)),
    );
    assert!(msg.contains("limit"), "{msg}");
    let msg = read_err(
        &dir,
        "long.bin.gz",
        &gzip(&raw_file(50_000_000, (1, 4), (4, 6), 0, &ids)),
    );
    assert!(msg.contains("truncated"), "{msg}");
    let mut extra = raw_file(6, (1, 4), (4, 6), 0, &ids);
    extra.push(0);
    let msg = read_err(&dir, "extra.bin.gz", &gzip(&extra));
    assert!(msg.contains("after"), "{msg}");
    // The hand-made file without the defects reads.
    let ok = dir.join("ok.bin.gz");
    std::fs::write(&ok, gzip(&raw_file(6, (1, 4), (4, 6), 0, &ids))).unwrap();
    let s = read_split(&ok).unwrap();
    assert_eq!(s[0].category, TaskCategory::Code);
    assert!(matches!(
        read_split(&dir.join("missing.bin.gz")),
        Err(ModelError::Io { .. })
    ));
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---------------------------------------------------------------------------------------------
// Sources

#[test]
fn train_and_valid_sources_are_disjoint() {
    let s = sources();
    assert_eq!(s.addresses.len(), 233);
    assert_eq!(
        s.sotu_sha256,
        "805ccd2b2645318eb01caa3d4a0d374bee2544c1d5e48d2c66f8feaf7ae25790"
    );
    let names = |split| -> BTreeSet<&str> {
        s.addresses_of(split)
            .map(|a| a.file_name.as_str())
            .collect()
    };
    let (tr, va) = (names(Split::Train), names(Split::Valid));
    assert!(tr.is_disjoint(&va));
    assert_eq!(va.len(), 24);
    let crates =
        |split| -> BTreeSet<&str> { s.crates_of(split).map(|c| c.name.as_str()).collect() };
    let (ctr, cva) = (crates(Split::Train), crates(Split::Valid));
    assert!(ctr.is_disjoint(&cva) && !cva.is_empty() && ctr.len() >= 15);
    // Summaries of valid samples name validation addresses only.
    let valid_pairs: BTreeSet<String> = s
        .addresses_of(Split::Valid)
        .map(|a| format!("({}, {})", a.year, a.president))
        .collect();
    let (_, valid) = data();
    let mut seen = 0;
    for smp in valid.iter().filter(|x| x.family == "sotu_sum") {
        for part in content(smp).split("Address ").skip(1) {
            let Some(pair) = part
                .split(':')
                .next()
                .and_then(|h| h.split_once(' '))
                .map(|h| h.1.to_string())
            else {
                continue;
            };
            if pair.starts_with('(') {
                assert!(valid_pairs.contains(&pair), "valid sample uses {pair}");
                seen += 1;
            }
        }
    }
    assert!(seen > 0);
}

#[test]
fn bad_inputs_are_errors() {
    let missing = Sources::load(Path::new("/nonexistent/sotu"), &default_cargo_home());
    assert!(missing
        .unwrap_err()
        .to_string()
        .contains("/nonexistent/sotu"));
    let empty = scratch("empty-sotu");
    let err = Sources::load(&empty, &default_cargo_home())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no .txt files"), "{err}");
    std::fs::remove_dir_all(&empty).unwrap();
    for lengths in [vec![], vec![100], vec![2048, 256]] {
        let c = DataConfig {
            lengths,
            ..config(0)
        };
        let err = build_router_data(&c, tokenizer(), sources()).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidArgument { ref argument, .. } if argument == "lengths"),
            "{err}"
        );
    }
}
