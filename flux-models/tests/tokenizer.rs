//! Tokenizer tests against independent references: the real Qwen3 and Llama 3 `tokenizer.json`
//! files (npm, via scripts/fetch-models.sh), the ids transformers produced from the GGUF files
//! (tests/fixtures/reference), and chat prompts written out from the templates' documented format.

mod common;

use common::cached;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use flux_models::gguf::GgufFile;
use flux_models::tokenizer::{ChatMessage, Tokenizer};
use flux_models::ModelError;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------------
// Files

fn fixture(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(relative)
}

/// A fresh empty folder under the target's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("flux-tokenizer-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

const QWEN_GGUF: &str = "qwen2.5-coder-0.5b-instruct/qwen2.5-coder-0.5b-instruct.gguf";
const SMOL_GGUF: &str = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn qwen() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&GgufFile::open(&cached(QWEN_GGUF)).unwrap()).unwrap())
}

fn smol() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| Tokenizer::from_gguf(&GgufFile::open(&cached(SMOL_GGUF)).unwrap()).unwrap())
}

/// The real Qwen3 tokenizer (tokenizer.json only).
fn qwen3_real() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        Tokenizer::from_dir(cached("tokenizers/qwen3/tokenizer.json").parent().unwrap()).unwrap()
    })
}

fn llama3_real_json() -> &'static Value {
    static T: OnceLock<Value> = OnceLock::new();
    T.get_or_init(|| {
        let text = std::fs::read_to_string(cached("tokenizers/llama3/tokenizer.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

// ---------------------------------------------------------------------------------------------
// A minimal GGUF writer (metadata only, no tensors)

enum Kv {
    U32(u32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn gguf_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_gguf(path: &Path, kvs: &[(&str, Kv)]) {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes()); // tensors
    b.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        gguf_str(&mut b, key);
        match value {
            Kv::U32(v) => {
                b.extend_from_slice(&4u32.to_le_bytes());
                b.extend_from_slice(&v.to_le_bytes());
            }
            Kv::Bool(v) => {
                b.extend_from_slice(&7u32.to_le_bytes());
                b.push(u8::from(*v));
            }
            Kv::Str(s) => {
                b.extend_from_slice(&8u32.to_le_bytes());
                gguf_str(&mut b, s);
            }
            Kv::Strs(list) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&8u32.to_le_bytes());
                b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                for s in list {
                    gguf_str(&mut b, s);
                }
            }
            Kv::I32s(list) => {
                b.extend_from_slice(&9u32.to_le_bytes());
                b.extend_from_slice(&5u32.to_le_bytes());
                b.extend_from_slice(&(list.len() as u64).to_le_bytes());
                for v in list {
                    b.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
    }
    std::fs::write(path, b).unwrap();
}

/// A byte-level BPE GGUF vocabulary the way llama.cpp's converter writes one from a real
/// tokenizer.json: every id's token, added tokens typed control (special) or user-defined.
fn gguf_vocab_from_tokenizer_json(real: &Value) -> (Vec<String>, Vec<i32>, Vec<String>) {
    let vocab = real["model"]["vocab"].as_object().unwrap();
    let added = real["added_tokens"].as_array().unwrap();
    let n = vocab.len().max(
        added
            .iter()
            .map(|t| t["id"].as_u64().unwrap() as usize + 1)
            .max()
            .unwrap_or(0),
    );
    let mut tokens = vec![String::new(); n];
    let mut types = vec![1i32; n];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    for t in added {
        let id = t["id"].as_u64().unwrap() as usize;
        tokens[id] = t["content"].as_str().unwrap().to_string();
        types[id] = if t["special"].as_bool().unwrap() {
            3
        } else {
            4
        };
    }
    let merges = real["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            pair => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
        })
        .collect();
    (tokens, types, merges)
}

/// Llama 3's real vocabulary written as a GGUF (`pre` = llama-bpe, BOS added), then read back.
fn llama3_from_gguf() -> &'static Tokenizer {
    static T: OnceLock<Tokenizer> = OnceLock::new();
    T.get_or_init(|| {
        let (tokens, types, merges) = gguf_vocab_from_tokenizer_json(llama3_real_json());
        let path = temp_dir("llama3-gguf").join("llama3-vocab.gguf");
        write_gguf(
            &path,
            &[
                ("general.architecture", Kv::Str("llama".into())),
                ("tokenizer.ggml.model", Kv::Str("gpt2".into())),
                ("tokenizer.ggml.pre", Kv::Str("llama-bpe".into())),
                ("tokenizer.ggml.tokens", Kv::Strs(tokens)),
                ("tokenizer.ggml.token_type", Kv::I32s(types)),
                ("tokenizer.ggml.merges", Kv::Strs(merges)),
                ("tokenizer.ggml.bos_token_id", Kv::U32(128000)),
                ("tokenizer.ggml.eos_token_id", Kv::U32(128009)),
                ("tokenizer.chat_template", Kv::Str(llama3_template())),
            ],
        );
        let tokenizer = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        tokenizer
    })
}

// ---------------------------------------------------------------------------------------------
// Texts

/// Texts without special tokens, in NFC (so that decode(encode(x)) == x under Qwen's NFC).
const TEXTS: &[&str] = &[
    "Hello, world! This is a test.",
    "The quick brown fox jumps over the lazy dog.",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "\tfor (int i = 0; i < 10; ++i) {\n\t\tprintf(\"%d\\n\", i);\n\t}\n",
    "class A:\n    def f(self, x):  # comment\n        return {'a': [1, 2, 3]}\n\n\n",
    "12345 3.14159",
    "In 1969, Apollo 11 landed; 2+2=4, 1,000,000 and 007. Prices rose 12% in Q3 2024.",
    "东京是日本的首都。北京是中国的首都。東京は日本の首都です。한국어 텍스트입니다.",
    "I ❤️ Rust 🦀🚀🫠🪿 — family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵, 👍🏽 and 🤖.",
    "Les élèves étudient à l'université. Ça va? Ñandú, naïve, façade, Øresund, Straße.",
    "line one\n\n\nline two\r\n\r\nline three\n \n  \n\t\n",
    "  multiple   spaces  ",
    "trailing spaces   ",
    " leading space",
    "I'm sure they'll say it's John's; we've, you'd, HE'S, I'M, they're.",
    "x=1;y=2 // comment\n<div class=\"a\">text</div>\n$ ls -la | grep '^d' && echo \"ok\"",
    "Ελληνικά, русский язык, العربية, हिन्दी, עברית, ภาษาไทย",
    "Tiếng Việt: việc, hợp, nhiều, điều; Čeština: jeho; Türkçe: gelmektedir; فارسی: ایران",
    "non\u{a0}breaking and zero\u{200b}width, tab\there, math ∑ x² ≤ ½ ∞",
    "a",
    "",
];

/// Texts whose NFC form differs (Qwen normalises; decode gives the NFC text back).
const NON_NFC: &[&str] = &[
    "cafe\u{301} and e\u{301}le\u{300}ve",
    "A\u{30a} \u{212b}ngstr\u{f6}m",
];

fn ids(t: &Tokenizer, text: &str) -> Vec<u32> {
    t.encode(text, false).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Encoding against the real tokenizers

#[test]
fn qwen_gguf_vocabulary_is_qwen3s_regular_vocabulary() {
    // The premise of comparing with Qwen3: same byte-level vocabulary and merges below the
    // added tokens (151643 entries), and the same split / normaliser.
    let ours: Value = serde_json::from_str(&qwen().to_tokenizer_json().unwrap()).unwrap();
    let real: Value = serde_json::from_str(&qwen3_real().to_tokenizer_json().unwrap()).unwrap();
    let real_vocab = real["model"]["vocab"].as_object().unwrap();
    let our_vocab = ours["model"]["vocab"].as_object().unwrap();
    assert_eq!(real_vocab.len(), 151_643);
    for (token, id) in real_vocab {
        assert_eq!(our_vocab.get(token), Some(id), "token {token:?}");
    }
    assert_eq!(ours["model"]["merges"], real["model"]["merges"]);
    assert_eq!(ours["normalizer"], real["normalizer"]);
    assert_eq!(
        ours["pre_tokenizer"]["pretokenizers"][0],
        real["pre_tokenizer"]["pretokenizers"][0]
    );
    // The added tokens Qwen2.5 has are Qwen3's first 22, same ids and text.
    for t in real["added_tokens"].as_array().unwrap().iter().take(22) {
        let id = t["id"].as_u64().unwrap() as u32;
        assert_eq!(qwen().token_to_id(t["content"].as_str().unwrap()), Some(id));
    }
}

#[test]
fn qwen_gguf_encodes_like_the_real_qwen3_tokenizer() {
    for text in TEXTS.iter().chain(NON_NFC) {
        assert_eq!(ids(qwen(), text), ids(qwen3_real(), text), "text {text:?}");
    }
    // Special tokens written in the text are single tokens for both.
    let chat = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(ids(qwen(), chat), ids(qwen3_real(), chat));
    assert_eq!(ids(qwen(), chat)[0], 151644);
    // Digits one by one, code indentation as whitespace runs.
    assert_eq!(ids(qwen(), "12345").len(), 5);
}

#[test]
fn llama3_vocabulary_through_gguf_encodes_like_the_real_llama3_tokenizer() {
    let real: tokenizers::Tokenizer = llama3_real_json().to_string().parse().unwrap();
    let ours = llama3_from_gguf();
    assert!(ours.warnings().is_empty(), "{:?}", ours.warnings());
    for text in TEXTS {
        let expected = real.encode(*text, false).unwrap().get_ids().to_vec();
        assert_eq!(ids(ours, text), expected, "text {text:?}");
    }
    // ignore_merges: a chunk that is a vocabulary entry is one token even where the merges
    // would not build it (588 such entries in Llama 3's vocabulary).
    assert_eq!(ids(ours, " việc"), [100769]);
    // Llama 3 splits digits in runs of three.
    assert_eq!(ids(ours, "12345").len(), 2);
    // llama-bpe adds BOS (llama.cpp's default for it, and Llama 3's own post-processor).
    assert!(ours.adds_bos());
    let with_bos = ours.encode("Hello", true).unwrap();
    assert_eq!(with_bos[0], 128000);
    assert_eq!(&with_bos[1..], ids(ours, "Hello").as_slice());
    // <|eot_id|> and <|end_of_text|> end generation along with the named EOS.
    assert_eq!(ours.eos_ids()[0], 128009);
    assert!(ours.eos_ids().contains(&128001));
}

/// The ids transformers produced when loading the same GGUF files (the parity reference).
#[test]
fn gguf_tokenizers_match_the_transformers_reference_ids() {
    for (file, tokenizer) in [
        ("reference/qwen2.5.json", qwen()),
        ("reference/smollm2.json", smol()),
    ] {
        let reference: Value =
            serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
        for case in reference["cases"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let expected: Vec<u32> = case["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            assert_eq!(ids(tokenizer, text), expected, "{file}: {text:?}");
        }
    }
}

/// transformers builds SmolLM2's GGUF tokenizer with GPT-2's split only, without the real
/// tokenizer's `Digits` step. On ASCII digits that gives the same ids (no merge of this
/// vocabulary joins a digit to anything), but a space before a non-ASCII numeral (², ½, ٣, ४)
/// is merged with the numeral's first byte under GPT-2's split and kept apart under `Digits`.
#[test]
fn smollm2_digit_split_versus_transformers_gpt2_split() {
    let ours: Value = serde_json::from_str(&smol().to_tokenizer_json().unwrap()).unwrap();
    assert_eq!(ours["pre_tokenizer"]["pretokenizers"][0]["type"], "Digits");
    let mut gpt2_only = ours.clone();
    gpt2_only["pre_tokenizer"] = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    let gpt2_only: tokenizers::Tokenizer = gpt2_only.to_string().parse().unwrap();
    let gpt2_ids = |text: &str| gpt2_only.encode(text, false).unwrap().get_ids().to_vec();
    let digit_heavy = [
        "12345 3.14159",
        "In 1969, Apollo 11 landed on the Moon; 2+2=4. Prices rose 12% in Q3.",
        "x1 = 0x1F; v2.0.13-rc4, 1e-9 a1b2c3",
        " 0 00 000 0000 00000 $100.00 #42 @3 -7 +8",
    ];
    let ascii_numerals_only = |t: &&&str| {
        t.chars()
            .filter(|c| c.is_numeric())
            .all(|c| c.is_ascii_digit())
    };
    for text in TEXTS.iter().chain(&digit_heavy).filter(ascii_numerals_only) {
        assert_eq!(ids(smol(), text), gpt2_ids(text), "text {text:?}");
    }
    let merges = ours["model"]["merges"].as_array().unwrap();
    let joins_a_digit = |m: &Value| {
        let text = format!("{}{}", m[0].as_str().unwrap(), m[1].as_str().unwrap());
        text.chars().any(|c| c.is_ascii_digit())
    };
    assert_eq!(merges.iter().filter(|m| joins_a_digit(m)).count(), 0);
    // The difference: " ½" is Ġ + Â½ for SmolLM2, ĠÂ + ½ for GPT-2's split.
    assert_eq!(ids(smol(), " ½"), [216, 16738]);
    assert_eq!(gpt2_ids(" ½"), [3351, 138]);
    assert_ne!(ids(smol(), "x ² ٣"), gpt2_ids("x ² ٣"));
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[test]
fn decode_inverts_encode_for_both_gguf_files() {
    for (name, t) in [("qwen", qwen()), ("smol", smol())] {
        for text in TEXTS {
            let encoded = ids(t, text);
            assert_eq!(
                t.decode(&encoded, false).unwrap(),
                *text,
                "{name}: {text:?}"
            );
        }
        // Qwen normalises to NFC; SmolLM2 does not normalise.
        for text in NON_NFC {
            use_nfc_or_not(name, t, text);
        }
    }
}

fn use_nfc_or_not(name: &str, t: &Tokenizer, text: &str) {
    let back = t.decode(&ids(t, text), false).unwrap();
    if name == "qwen" {
        assert_ne!(back, text);
        assert_eq!(
            back.chars().count(),
            text.chars().count() - text.matches(['\u{301}', '\u{300}', '\u{30a}']).count()
        );
    } else {
        assert_eq!(back, text);
    }
}

#[test]
fn special_tokens_decode_and_can_be_skipped() {
    let t = qwen();
    let chat = "<|im_start|>user\nHi<|im_end|>\n";
    let encoded = ids(t, chat);
    assert_eq!(t.decode(&encoded, false).unwrap(), chat);
    assert_eq!(t.decode(&encoded, true).unwrap(), "user\nHi\n");
    assert_eq!(t.token_text(151645).as_deref(), Some("<|im_end|>"));
    assert_eq!(t.token_text(ids(t, " world")[0]).as_deref(), Some(" world"));
    assert_eq!(t.token_text(u32::MAX), None);
    // A token that is part of a character reads as U+FFFD on its own.
    let melting = ids(t, "🫠");
    assert_eq!(melting.len(), 3);
    assert!(t.token_text(melting[0]).unwrap().contains('\u{FFFD}'));
    assert_eq!(t.token_text(ids(t, "🦀")[0]).as_deref(), Some("🦀"));
    // Ids past the vocabulary are skipped, never a panic.
    assert_eq!(
        t.decode(&[u32::MAX, encoded[0]], false).unwrap(),
        "<|im_start|>"
    );
}

#[test]
fn stream_decoder_matches_decode_and_never_splits_a_character() {
    for (name, t) in [("qwen", qwen()), ("smol", smol())] {
        let mut held_back = 0;
        for text in TEXTS
            .iter()
            .chain(&["<|im_start|>assistant\n🫠🫠 ok<|im_end|>"])
        {
            let encoded = ids(t, text);
            let mut stream = t.stream_decoder();
            let mut out = String::new();
            for &id in &encoded {
                match stream.push(id) {
                    Some(piece) => {
                        assert!(
                            !piece.contains('\u{FFFD}'),
                            "{name}: {text:?}: piece {piece:?}"
                        );
                        out.push_str(&piece);
                    }
                    None => held_back += 1,
                }
            }
            out.push_str(&stream.finish());
            assert_eq!(out, t.decode(&encoded, false).unwrap(), "{name}: {text:?}");
        }
        // Emoji and CJK are several tokens per character in both vocabularies.
        assert!(
            held_back > 5,
            "{name}: only {held_back} tokens were held back"
        );
    }
    // An incomplete character at the end comes out of finish() as U+FFFD.
    let t = qwen();
    let melting = ids(t, "a🫠");
    let mut stream = t.stream_decoder();
    assert_eq!(stream.push(melting[0]).as_deref(), Some("a"));
    assert_eq!(stream.push(melting[1]), None);
    assert_eq!(stream.push(melting[2]), None);
    assert_eq!(stream.finish(), t.decode(&melting[1..3], false).unwrap());
    // After finish the decoder starts afresh.
    assert_eq!(stream.push(melting[0]).as_deref(), Some("a"));
}

// ---------------------------------------------------------------------------------------------
// Saving

#[test]
fn save_dir_then_from_dir_gives_the_same_tokenizer() {
    for (name, t) in [
        ("qwen", qwen()),
        ("smol", smol()),
        ("llama3", llama3_from_gguf()),
    ] {
        let dir = temp_dir(&format!("save-{name}"));
        t.save_dir(&dir).unwrap();
        let back = Tokenizer::from_dir(&dir).unwrap();
        for text in TEXTS.iter().chain(NON_NFC) {
            assert_eq!(ids(&back, text), ids(t, text), "{name}: {text:?}");
            assert_eq!(
                back.encode(text, true).unwrap(),
                t.encode(text, true).unwrap(),
                "{name}: {text:?}"
            );
        }
        assert_eq!(back.bos_id(), t.bos_id(), "{name}");
        assert_eq!(back.eos_ids(), t.eos_ids(), "{name}");
        assert_eq!(back.adds_bos(), t.adds_bos(), "{name}");
        assert_eq!(back.vocab_size(), t.vocab_size(), "{name}");
        assert_eq!(back.chat_template(), t.chat_template(), "{name}");
        assert_eq!(
            back.tokenizer_config_json(),
            t.tokenizer_config_json(),
            "{name}"
        );
        assert_eq!(
            back.to_tokenizer_json().unwrap(),
            t.to_tokenizer_json().unwrap(),
            "{name}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn tokenizer_config_json_has_the_special_tokens_and_template() {
    let c = qwen().tokenizer_config_json();
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert_eq!(c["bos_token"], "<|endoftext|>");
    assert_eq!(c["pad_token"], "<|endoftext|>");
    assert_eq!(c["add_bos_token"], false);
    assert_eq!(c["chat_template"].as_str(), qwen().chat_template());
    let c = smol().tokenizer_config_json();
    assert_eq!(c["bos_token"], "<|im_start|>");
    assert_eq!(c["eos_token"], "<|im_end|>");
    assert_eq!(smol().eos_ids(), &[2, 0]);
    assert_eq!(qwen().eos_ids(), &[151645, 151643]);
}

#[test]
fn from_dir_reads_tokenizer_config_and_generation_config() {
    // The real Qwen3 tokenizer.json with its tokenizer_config.json (fixture) and an
    // eos_token_id list in generation_config.json.
    let dir = temp_dir("qwen3-dir");
    std::fs::copy(
        cached("tokenizers/qwen3/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tokenizer/qwen3/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [151645, 151643], "bos_token_id": 151643}"#,
    )
    .unwrap();
    std::fs::write(dir.join("config.json"), r#"{"eos_token_id": 151645}"#).unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(t.eos_ids(), &[151645, 151643]);
    assert_eq!(
        t.bos_id(),
        None,
        "Qwen3's tokenizer_config.json says bos_token: null"
    );
    assert!(!t.adds_bos());
    assert!(t.chat_template().unwrap().contains("<think>"));
    assert_eq!(t.vocab_size(), 151_669);

    // add_bos_token: true without a BOS-adding post-processor: encode adds it.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": {"content": "<|endoftext|>", "special": true}, "eos_token": "<|im_end|>", "add_bos_token": true}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": 151643}"#,
    )
    .unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    assert!(t.adds_bos());
    assert_eq!(t.encode("Hi", true).unwrap(), [151643, 13048]);
    assert_eq!(t.encode("Hi", false).unwrap(), [13048]);
    assert_eq!(t.eos_ids(), &[151645, 151643]);
    assert_eq!(t.chat_template(), None);
    // chat_template.jinja wins over tokenizer_config.json.
    std::fs::write(dir.join("chat_template.jinja"), "{{ messages[0].content }}").unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        t.apply_chat_template(&[ChatMessage::new("user", "x")], false)
            .unwrap(),
        "x"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Chat templates

fn conversation() -> Vec<ChatMessage> {
    vec![
        ChatMessage::new("system", "You are a helpful assistant."),
        ChatMessage::new("user", "What is 2+2?"),
    ]
}

#[test]
fn chat_templates_of_the_gguf_files_render_chatml() {
    // Both files carry ChatML templates: <|im_start|>{role}\n{content}<|im_end|>\n per message,
    // then the assistant header as generation prompt.
    let expected = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
                    <|im_start|>user\nWhat is 2+2?<|im_end|>\n\
                    <|im_start|>assistant\n";
    for (name, t) in [("qwen", qwen()), ("smol", smol())] {
        assert_eq!(
            t.apply_chat_template(&conversation(), true).unwrap(),
            expected,
            "{name}"
        );
        let without = t.apply_chat_template(&conversation(), false).unwrap();
        assert_eq!(
            without,
            expected.strip_suffix("<|im_start|>assistant\n").unwrap(),
            "{name}"
        );
    }
    // Without a system message each template inserts its default one.
    let user_only = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        qwen().apply_chat_template(&user_only, true).unwrap(),
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(
        smol().apply_chat_template(&user_only, true).unwrap(),
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    // The rendered prompt encodes with the special tokens as single ids.
    let prompt = qwen().apply_chat_template(&conversation(), true).unwrap();
    let encoded = ids(qwen(), &prompt);
    assert_eq!(encoded.iter().filter(|&&id| id == 151644).count(), 3);
    // The transformers reference renders the same prompt.
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("reference/qwen2.5.json")).unwrap())
            .unwrap();
    let messages: Vec<ChatMessage> = reference["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect();
    for t in [qwen(), smol()] {
        assert_eq!(
            t.apply_chat_template(&messages, true).unwrap(),
            reference["chat_prompt"].as_str().unwrap()
        );
    }
}

fn config_template(relative: &str) -> String {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(relative)).unwrap()).unwrap();
    config["chat_template"].as_str().unwrap().to_string()
}

fn llama3_template() -> String {
    config_template("tokenizer/llama3/tokenizer_config.json")
}

#[test]
fn qwen3_and_llama3_templates_render() {
    // Qwen3: ChatML; the last assistant turn gets an empty think block only when it is the
    // answer to the last user query, and `enable_thinking` is undefined (thinking on).
    let dir = temp_dir("qwen3-template");
    std::fs::copy(
        cached("tokenizers/qwen3/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::copy(
        fixture("tokenizer/qwen3/tokenizer_config.json"),
        dir.join("tokenizer_config.json"),
    )
    .unwrap();
    let qwen3 = Tokenizer::from_dir(&dir).unwrap();
    assert_eq!(
        qwen3.apply_chat_template(&conversation(), true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    );
    let mut turns = conversation();
    turns.push(ChatMessage::new(
        "assistant",
        "<think>\nsimple\n</think>\n\n4",
    ));
    turns.push(ChatMessage::new("user", "And 3+3?"));
    assert_eq!(
        qwen3.apply_chat_template(&turns, true).unwrap(),
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n\
         <|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n"
    );
    let _ = std::fs::remove_dir_all(&dir);

    // Llama 3: BOS, then per message the role header, a blank line, the trimmed content, <|eot_id|>.
    let llama = llama3_from_gguf();
    assert_eq!(
        llama.apply_chat_template(&conversation(), true).unwrap(),
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful assistant.<|eot_id|>\
         <|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>\
         <|start_header_id|>assistant<|end_header_id|>\n\n"
    );
}

#[test]
fn chat_template_errors_are_reported() {
    // raise_exception() carries its message.
    let dir = temp_dir("template-errors");
    std::fs::copy(
        cached("tokenizers/qwen3/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversations must start with a user message') }}{% endif %}ok",
    )
    .unwrap();
    let t = Tokenizer::from_dir(&dir).unwrap();
    let err = t.apply_chat_template(&conversation(), true).unwrap_err();
    assert!(matches!(err, ModelError::ChatTemplate { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("Conversations must start with a user message"),
        "{err}"
    );
    assert_eq!(
        t.apply_chat_template(&[ChatMessage::new("user", "x")], true)
            .unwrap(),
        "ok"
    );
    // A syntax error, and a tokenizer without a template.
    std::fs::write(dir.join("chat_template.jinja"), "{% for m in messages %}").unwrap();
    let err = Tokenizer::from_dir(&dir)
        .unwrap()
        .apply_chat_template(&conversation(), true)
        .unwrap_err();
    assert!(matches!(err, ModelError::ChatTemplate { .. }), "{err:?}");
    std::fs::remove_file(dir.join("chat_template.jinja")).unwrap();
    let err = Tokenizer::from_dir(&dir)
        .unwrap()
        .apply_chat_template(&conversation(), true)
        .unwrap_err();
    assert!(err.to_string().contains("no chat template"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn missing_tokenizer_json_names_the_path() {
    let dir = temp_dir("missing");
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains(&dir.join("tokenizer.json").display().to_string()),
        "{err}"
    );
    let err = Tokenizer::from_dir(&dir.join("nope")).unwrap_err();
    assert!(
        err.to_string()
            .contains(&dir.join("nope").display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn malformed_files_name_the_path() {
    let dir = temp_dir("malformed");
    let path = dir.join("tokenizer.json");
    for text in [
        "{ not json",
        r#"{"model": {"type": "BPE", "vocab": {"a": "x"}}}"#,
        "",
    ] {
        std::fs::write(&path, text).unwrap();
        let err = Tokenizer::from_dir(&dir).unwrap_err();
        assert!(matches!(err, ModelError::Tokenizer { .. }), "{err:?}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
    // A good tokenizer.json with a malformed tokenizer_config.json.
    std::fs::copy(cached("tokenizers/qwen3/tokenizer.json"), &path).unwrap();
    std::fs::write(dir.join("tokenizer_config.json"), "{\"eos_token\": ").unwrap();
    let err = Tokenizer::from_dir(&dir).unwrap_err();
    assert!(matches!(err, ModelError::Json { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer_config.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn gguf_error(name: &str, kvs: &[(&str, Kv)]) -> String {
    let path = temp_dir(&format!("gguf-{name}")).join(format!("{name}.gguf"));
    write_gguf(&path, kvs);
    let file = GgufFile::open(&path).unwrap();
    let err = Tokenizer::from_gguf(&file).unwrap_err();
    assert!(matches!(err, ModelError::Tokenizer { .. }), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(&path.display().to_string()), "{message}");
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
    message
}

#[test]
fn gguf_tokenizer_errors_name_the_file_and_key() {
    let model = || ("tokenizer.ggml.model", Kv::Str("gpt2".into()));
    let tokens = || {
        (
            "tokenizer.ggml.tokens",
            Kv::Strs(vec!["a".into(), "b".into(), "ab".into()]),
        )
    };
    let merges = || ("tokenizer.ggml.merges", Kv::Strs(vec!["a b".into()]));

    let e = gguf_error("no-tokens", &[model(), merges()]);
    assert!(
        e.contains("tokenizer.ggml.tokens") && e.contains("missing"),
        "{e}"
    );
    let e = gguf_error("no-model", &[tokens(), merges()]);
    assert!(e.contains("tokenizer.ggml.model"), "{e}");
    let e = gguf_error("no-merges", &[model(), tokens()]);
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
    let e = gguf_error(
        "spm",
        &[("tokenizer.ggml.model", Kv::Str("llama".into())), tokens()],
    );
    assert!(
        e.contains("tokenizer.ggml.model") && e.contains("llama"),
        "{e}"
    );
    let e = gguf_error(
        "tokens-not-strings",
        &[
            model(),
            ("tokenizer.ggml.tokens", Kv::I32s(vec![1, 2])),
            merges(),
        ],
    );
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    let e = gguf_error(
        "empty",
        &[
            model(),
            ("tokenizer.ggml.tokens", Kv::Strs(vec![])),
            merges(),
        ],
    );
    assert!(e.contains("tokenizer.ggml.tokens"), "{e}");
    // A merge naming a token the vocabulary lacks.
    let e = gguf_error(
        "bad-merge",
        &[
            model(),
            tokens(),
            ("tokenizer.ggml.merges", Kv::Strs(vec!["a c".into()])),
        ],
    );
    assert!(e.contains("tokenizer.ggml.merges"), "{e}");
}

#[test]
fn tiny_gguf_vocabulary_builds_and_notes_what_it_guessed() {
    let path = temp_dir("tiny").join("tiny.gguf");
    write_gguf(
        &path,
        &[
            ("tokenizer.ggml.model", Kv::Str("gpt2".into())),
            ("tokenizer.ggml.pre", Kv::Str("brand-new".into())),
            (
                "tokenizer.ggml.tokens",
                Kv::Strs(
                    ["<s>", "</s>", "a", "b", "ab", "Ġ", "Ġab", "<tool>"]
                        .map(String::from)
                        .to_vec(),
                ),
            ),
            (
                "tokenizer.ggml.token_type",
                Kv::I32s(vec![3, 3, 1, 1, 1, 1, 1, 4]),
            ),
            (
                "tokenizer.ggml.merges",
                Kv::Strs(vec!["a b".into(), "Ġ ab".into()]),
            ),
            ("tokenizer.ggml.bos_token_id", Kv::U32(0)),
            ("tokenizer.ggml.eos_token_id", Kv::U32(1)),
            ("tokenizer.ggml.padding_token_id", Kv::U32(99)),
            ("tokenizer.ggml.add_bos_token", Kv::Bool(true)),
        ],
    );
    let t = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(t.encode("ab ab<tool>", true).unwrap(), [0, 4, 6, 7]);
    assert_eq!(t.encode("ab ab<tool>", false).unwrap(), [4, 6, 7]);
    assert_eq!(t.decode(&[0, 4, 6, 7, 1], true).unwrap(), "ab ab<tool>");
    assert_eq!(t.bos_id(), Some(0));
    assert_eq!(t.eos_ids(), &[1]);
    assert_eq!(t.vocab_size(), 8);
    let warnings = t.warnings().join("\n");
    assert!(
        warnings.contains("brand-new") && warnings.contains("GPT-2"),
        "{warnings}"
    );
    assert!(
        warnings.contains("tokenizer.ggml.padding_token_id"),
        "{warnings}"
    );
    let err = t.apply_chat_template(&conversation(), true).unwrap_err();
    assert!(matches!(err, ModelError::ChatTemplate { .. }));
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
