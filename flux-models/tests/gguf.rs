//! GGUF reader and dequantiser tests.
//!
//! The fixture (tests/fixtures/gguf/, made by scripts/make-gguf-fixtures.py) was written by the
//! `gguf` Python package's GGUFWriter; the expected values come from `gguf.quants.dequantize`,
//! llama.cpp's numpy port of ggml-quants.c, applied to the raw block bytes.
//! Error tests write corrupted copies of the fixture to the temp dir.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use flux_models::gguf::{GgmlType, GgufFile, GgufValue};
use flux_models::ModelError;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn fixture_path() -> PathBuf {
    fixture_dir().join("fixture.gguf")
}

fn fixture_bytes() -> Vec<u8> {
    std::fs::read(fixture_path()).expect("read fixture.gguf")
}

fn read_f32(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

/// A unique temp path for this test process.
fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("flux-gguf-{}-{n}-{tag}.gguf", std::process::id()))
}

/// Writes `bytes` to a temp file, opens it and removes the file (the map stays valid).
fn open_bytes(tag: &str, bytes: &[u8]) -> (PathBuf, flux_models::Result<GgufFile>) {
    let path = temp_path(tag);
    std::fs::write(&path, bytes).expect("write temp file");
    let result = GgufFile::open(&path);
    let _ = std::fs::remove_file(&path);
    (path, result)
}

/// Opens corrupted bytes expecting an error whose message names the file and every `needles`.
fn expect_open_error(tag: &str, bytes: &[u8], needles: &[&str]) -> String {
    let (path, result) = open_bytes(tag, bytes);
    let err = match result {
        Ok(_) => panic!("{tag}: corrupted file opened without error"),
        Err(e) => e,
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "{tag}: message does not name the file: {msg}"
    );
    for n in needles {
        assert!(
            msg.contains(n),
            "{tag}: message does not contain `{n}`: {msg}"
        );
    }
    msg
}

fn find(hay: &[u8], needle: &[u8]) -> usize {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .unwrap_or_else(|| panic!("{:?} not found", String::from_utf8_lossy(needle)))
}

/// Offset just past a GGUF string (u64 length + bytes) equal to `s`.
fn after_string(bytes: &[u8], s: &str) -> usize {
    let mut pat = (s.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(s.as_bytes());
    find(bytes, &pat) + pat.len()
}

/// Offsets of the fields of the tensor-info entry `name`: (n_dims, first dim, type, offset).
fn tensor_info_offsets(bytes: &[u8], name: &str) -> (usize, usize, usize, usize) {
    let nd = after_string(bytes, name);
    let n_dims = u32::from_le_bytes(bytes[nd..nd + 4].try_into().unwrap()) as usize;
    let ty = nd + 4 + 8 * n_dims;
    (nd, nd + 4, ty, ty + 4)
}

/// Start of the data section: the end of the last tensor info, aligned to 64.
fn data_start(bytes: &[u8]) -> usize {
    let (_, _, _, off) = tensor_info_offsets(bytes, "t.q2_k");
    (off + 8).next_multiple_of(64)
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn header_and_every_metadata_value() {
    let f = GgufFile::open(&fixture_path()).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.path(), fixture_path());
    assert_eq!(f.alignment(), 64);
    use GgufValue::*;
    let s = |v: &str| String(v.to_string());
    let expected: Vec<(&str, GgufValue)> = vec![
        ("general.alignment", U32(64)),
        ("general.architecture", s("llama")),
        ("general.name", s("flux gguf fixture")),
        (
            "test.array.bool",
            Array(vec![Bool(true), Bool(false), Bool(true)]),
        ),
        ("test.array.f32", Array(vec![F32(0.5), F32(-0.25)])),
        ("test.array.f64", Array(vec![F64(0.1)])),
        ("test.array.i32", Array(vec![I32(1), I32(-2), I32(3)])),
        (
            "test.array.nested",
            Array(vec![
                Array(vec![I32(1), I32(2)]),
                Array(vec![I32(3)]),
                Array(vec![I32(4), I32(5), I32(6)]),
            ]),
        ),
        (
            "test.array.nested_str",
            Array(vec![Array(vec![s("x"), s("y")]), Array(vec![s("z")])]),
        ),
        (
            "test.array.string",
            Array(vec![s("a"), s("bc"), s(""), s("ünï ✓")]),
        ),
        ("test.array.u64", Array(vec![U64(0), U64(u64::MAX)])),
        ("test.array.u8", Array(vec![U8(0), U8(255), U8(7)])),
        ("test.bool_false", Bool(false)),
        ("test.bool_true", Bool(true)),
        ("test.f32", F32(1.5)),
        ("test.f64", F64(std::f64::consts::PI)),
        ("test.i16", I16(-30000)),
        ("test.i32", I32(-2_000_000_000)),
        ("test.i64", I64(-(1 << 62))),
        ("test.i8", I8(-100)),
        ("test.string", s("héllo wörld ✓")),
        ("test.u16", U16(60000)),
        ("test.u32", U32(4_000_000_000)),
        ("test.u64", U64((1 << 63) + 5)),
        ("test.u8", U8(200)),
    ];
    let got: Vec<(&str, GgufValue)> = f
        .metadata()
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    assert_eq!(got, expected);
    for (k, v) in &expected {
        assert_eq!(f.get(k), Some(v));
    }
    assert_eq!(f.get("no.such.key"), None);
}

#[test]
fn value_accessors_and_typed_getters() {
    let f = GgufFile::open(&fixture_path()).unwrap();
    let v = |k: &str| f.get(k).unwrap();
    assert_eq!(v("test.u8").as_u64(), Some(200));
    assert_eq!(v("test.i8").as_u64(), None);
    assert_eq!(v("test.i8").as_i64(), Some(-100));
    assert_eq!(v("test.u64").as_u64(), Some((1 << 63) + 5));
    assert_eq!(v("test.u64").as_i64(), None);
    assert_eq!(v("test.i64").as_i64(), Some(-(1 << 62)));
    assert_eq!(v("test.u32").as_u64(), Some(4_000_000_000));
    assert_eq!(v("test.i32").as_f64(), Some(-2e9));
    assert_eq!(v("test.f32").as_f64(), Some(1.5));
    assert_eq!(v("test.f32").as_u64(), None);
    assert_eq!(v("test.bool_true").as_bool(), Some(true));
    assert_eq!(v("test.bool_true").as_u64(), None);
    assert_eq!(v("test.string").as_str(), Some("héllo wörld ✓"));
    assert_eq!(v("test.string").as_array(), None);
    let arr = v("test.array.string").as_array().unwrap();
    assert_eq!(arr.len(), 4);
    assert_eq!(arr[3].as_str(), Some("ünï ✓"));

    assert_eq!(f.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(f.get_u64("general.alignment").unwrap(), 64);
    assert_eq!(f.get_u64("test.u16").unwrap(), 60000);
    assert_eq!(f.get_f64("test.f64").unwrap(), std::f64::consts::PI);
    assert_eq!(f.get_f64("test.u8").unwrap(), 200.0);

    let file = fixture_path().display().to_string();
    for err in [
        f.get_str("test.u8").unwrap_err(),
        f.get_u64("test.string").unwrap_err(),
        f.get_u64("test.i8").unwrap_err(),
        f.get_f64("test.array.f32").unwrap_err(),
    ] {
        let msg = err.to_string();
        assert!(matches!(err, ModelError::Gguf { .. }), "{msg}");
        assert!(msg.contains(&file) && msg.contains("`test."), "{msg}");
    }
    let msg = f.get_str("missing.key").unwrap_err().to_string();
    assert!(msg.contains(&file) && msg.contains("missing.key"), "{msg}");
}

#[test]
fn tensor_table() {
    let f = GgufFile::open(&fixture_path()).unwrap();
    let expected: &[(&str, GgmlType, &[usize])] = &[
        ("t.f32", GgmlType::F32, &[2, 3, 8]),
        ("t.f16", GgmlType::F16, &[4, 16]),
        ("t.bf16", GgmlType::BF16, &[2, 32]),
        ("t.q4_0", GgmlType::Q4_0, &[3, 64]),
        ("t.q4_1", GgmlType::Q4_1, &[3, 64]),
        ("t.q5_0", GgmlType::Q5_0, &[3, 64]),
        ("t.q5_1", GgmlType::Q5_1, &[3, 64]),
        ("t.q8_0", GgmlType::Q8_0, &[3, 64]),
        ("t.q4_k", GgmlType::Q4_K, &[2, 512]),
        ("t.q5_k", GgmlType::Q5_K, &[2, 512]),
        ("t.q6_k", GgmlType::Q6_K, &[2, 512]),
        ("t.q2_k", GgmlType::Q2_K, &[1, 256]),
    ];
    assert_eq!(f.tensors().len(), expected.len());
    for (t, &(name, ty, shape)) in f.tensors().iter().zip(expected) {
        assert_eq!(t.name, name);
        assert_eq!(t.ggml_type, ty, "{name}");
        assert_eq!(t.shape(), shape, "{name}");
        let mut dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        dims.reverse();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(t.n_elements(), shape.iter().product::<usize>() as u64);
        assert_eq!(t.offset % 64, 0, "{name}: offset honours general.alignment");
        assert_eq!(f.tensor_info(name), Some(t));
    }
    assert_eq!(f.tensor_info("nope"), None);

    // The manifest written by the generator agrees.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("manifest.json")).unwrap())
            .unwrap();
    for entry in manifest["tensors"].as_array().unwrap() {
        let t = f.tensor_info(entry["name"].as_str().unwrap()).unwrap();
        assert_eq!(t.ggml_type.to_string(), entry["type"].as_str().unwrap());
        let shape: Vec<usize> = entry["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(t.shape(), shape);
    }
}

#[test]
fn dequantisation_matches_python_gguf_reference() {
    let f = GgufFile::open(&fixture_path()).unwrap();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir().join("manifest.json")).unwrap())
            .unwrap();
    let mut checked = 0;
    for entry in manifest["tensors"].as_array().unwrap() {
        let Some(file) = entry["expected"].as_str() else {
            continue;
        };
        let name = entry["name"].as_str().unwrap();
        let expected = read_f32(&fixture_dir().join(file));
        let (shape, got) = f.tensor_f32(name).unwrap();
        assert_eq!(shape, f.tensor_info(name).unwrap().shape());
        assert_eq!(got.len(), expected.len(), "{name}");
        for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
            // Same operations in the same order as llama.cpp: bit-identical results.
            assert_eq!(
                g.to_bits(),
                e.to_bits(),
                "{name}[{i}]: got {g}, expected {e}"
            );
        }
        checked += 1;
    }
    assert_eq!(checked, 11, "one tensor of each supported type");
}

#[test]
fn ggml_type_table() {
    for id in 0..64 {
        let t = GgmlType::from_id(id);
        assert_eq!(t.id(), id);
        match t {
            GgmlType::Other(_) => {
                assert_eq!(t.block_size(), None);
                assert_eq!(t.to_string(), format!("unknown type id {id}"));
            }
            _ => assert!(t.block_size().is_some() && t.type_size().is_some()),
        }
    }
    let sizes = [
        (GgmlType::F32, 1, 4),
        (GgmlType::F16, 1, 2),
        (GgmlType::BF16, 1, 2),
        (GgmlType::Q4_0, 32, 18),
        (GgmlType::Q4_1, 32, 20),
        (GgmlType::Q5_0, 32, 22),
        (GgmlType::Q5_1, 32, 24),
        (GgmlType::Q8_0, 32, 34),
        (GgmlType::Q2_K, 256, 84),
        (GgmlType::Q3_K, 256, 110),
        (GgmlType::Q4_K, 256, 144),
        (GgmlType::Q5_K, 256, 176),
        (GgmlType::Q6_K, 256, 210),
        (GgmlType::Q8_K, 256, 292),
    ];
    for (t, bs, ts) in sizes {
        assert_eq!((t.block_size(), t.type_size()), (Some(bs), Some(ts)), "{t}");
    }
    assert_eq!(GgmlType::from_id(30), GgmlType::BF16);
    assert_eq!(GgmlType::Q4_K.to_string(), "Q4_K");
}

#[test]
fn unsupported_and_unknown_tensor_types_are_errors_naming_file_and_tensor() {
    let f = GgufFile::open(&fixture_path()).unwrap();
    let err = f.tensor_f32("t.q2_k").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::GgufTensorType { .. }), "{msg}");
    for n in [&fixture_path().display().to_string(), "t.q2_k", "Q2_K"] {
        assert!(msg.contains(n), "{msg}");
    }
    // Raw bytes of a known but unsupported type are still readable.
    let (info, bytes) = f.tensor_data("t.q2_k").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Q2_K);
    assert_eq!(bytes.len(), 84);

    let err = f.tensor_f32("t.missing").unwrap_err();
    assert!(matches!(err, ModelError::MissingTensor { .. }));
    assert!(err.to_string().contains("t.missing"));

    // An unknown type id opens fine and only fails when that tensor is read.
    let mut bytes = fixture_bytes();
    let (_, _, ty, _) = tensor_info_offsets(&bytes, "t.q2_k");
    put_u32(&mut bytes, ty, 200);
    let (path, result) = open_bytes("unknown-type", &bytes);
    let f = result.unwrap();
    let info = f.tensor_info("t.q2_k").unwrap();
    assert_eq!(info.ggml_type, GgmlType::Other(200));
    assert_eq!(info.ggml_type.id(), 200);
    let msg = f.tensor_f32("t.q2_k").unwrap_err().to_string();
    for n in [&path.display().to_string(), "t.q2_k", "200"] {
        assert!(msg.contains(n), "{msg}");
    }
    assert!(f.tensor_data("t.q2_k").is_err());
    assert!(f.tensor_f32("t.q4_0").is_ok());
}

#[test]
fn version_2_is_accepted() {
    let mut bytes = fixture_bytes();
    put_u32(&mut bytes, 4, 2);
    let (_, result) = open_bytes("v2", &bytes);
    let f = result.unwrap();
    assert_eq!(f.version(), 2);
    assert_eq!(f.tensor_f32("t.q8_0").unwrap().1.len(), 192);
}

#[test]
fn bad_magic_and_unsupported_versions() {
    let mut bytes = fixture_bytes();
    bytes[..4].copy_from_slice(b"GGML");
    expect_open_error("magic", &bytes, &["magic"]);
    for v in [0u32, 1, 4, 99] {
        let mut bytes = fixture_bytes();
        put_u32(&mut bytes, 4, v);
        expect_open_error("version", &bytes, &["version", &v.to_string()]);
    }
    expect_open_error("empty", &[], &["truncated", "magic"]);
}

#[test]
fn truncated_files() {
    let bytes = fixture_bytes();
    let key = after_string(&bytes, "test.string");
    let arr = after_string(&bytes, "test.array.string");
    let (nd, dim0, _, _) = tensor_info_offsets(&bytes, "t.q4_k");
    let q6 = tensor_info_offsets(&bytes, "t.q6_k").3;
    let q6_offset = u64::from_le_bytes(bytes[q6..q6 + 8].try_into().unwrap()) as usize;
    let cases: Vec<(usize, Vec<&str>)> = vec![
        (2, vec!["magic"]),
        (6, vec!["version"]),
        (12, vec!["tensor count"]),
        (20, vec!["metadata count"]),
        (30, vec!["metadata"]),
        (key + 2, vec!["test.string"]),
        (key + 20, vec!["test.string"]),
        (arr + 20, vec!["test.array.string"]),
        (nd - 2, vec!["name of tensor 8"]), // the name itself is cut: named by index
        (nd + 2, vec!["t.q4_k"]),
        (dim0 + 3, vec!["t.q4_k"]),
        (
            data_start(&bytes) + q6_offset + 100,
            vec!["t.q6_k", "truncated"],
        ),
        (bytes.len() - 100, vec!["t.q2_k"]),
    ];
    for (len, needles) in cases {
        let msg = expect_open_error(&format!("trunc{len}"), &bytes[..len], &needles);
        assert!(msg.contains("truncated") || msg.contains("fit"), "{msg}");
    }
}

#[test]
fn oversized_lengths_and_counts() {
    let good = fixture_bytes();

    // String value longer than the file.
    for len in [1u64 << 20, 1 << 40, u64::MAX] {
        let mut b = good.clone();
        let at = after_string(&b, "test.string") + 4;
        put_u64(&mut b, at, len);
        expect_open_error("strlen", &b, &["test.string", &len.to_string()]);
    }
    // Key string longer than the file.
    let mut b = good.clone();
    let at = after_string(&b, "test.u8") - "test.u8".len() - 8;
    put_u64(&mut b, at, 1 << 50);
    expect_open_error("keylen", &b, &["key of metadata entry"]);
    // Tensor name longer than the file.
    let mut b = good.clone();
    let at = after_string(&b, "t.q5_0") - "t.q5_0".len() - 8;
    put_u64(&mut b, at, u64::MAX - 3);
    expect_open_error("namelen", &b, &["name of tensor 5"]);

    // Absurd array counts (a plain and a string array), and an unknown element type.
    for (key, count) in [
        ("test.array.i32", 1u64 << 62),
        ("test.array.u8", u64::MAX),
        ("test.array.string", 1 << 40),
    ] {
        let mut b = good.clone();
        let at = after_string(&b, key) + 8;
        put_u64(&mut b, at, count);
        expect_open_error("arrcount", &b, &[key, &count.to_string()]);
    }
    let mut b = good.clone();
    let at = after_string(&b, "test.array.u8") + 4;
    put_u32(&mut b, at, 77);
    expect_open_error("arrtype", &b, &["test.array.u8", "77"]);
    // Unknown value type.
    let mut b = good.clone();
    let at = after_string(&b, "test.u16");
    put_u32(&mut b, at, 13);
    expect_open_error("valtype", &b, &["test.u16", "13"]);
    // Bool byte other than 0/1.
    let mut b = good.clone();
    let at = after_string(&b, "test.bool_true") + 4;
    b[at] = 7;
    expect_open_error("bool", &b, &["test.bool_true"]);

    // Absurd header counts.
    let mut b = good.clone();
    put_u64(&mut b, 8, u64::MAX);
    expect_open_error("ntensors", &b, &["tensor count"]);
    let mut b = good.clone();
    put_u64(&mut b, 16, 1 << 60);
    expect_open_error("nkv", &b, &["metadata count"]);

    // Tensor table: too many dims, overflowing element count, bad offsets, block misfit.
    let (nd, dim0, _, off) = tensor_info_offsets(&good, "t.q8_0");
    let mut b = good.clone();
    put_u32(&mut b, nd, 9);
    expect_open_error("ndims", &b, &["t.q8_0", "9 dimensions"]);
    let mut b = good.clone();
    put_u64(&mut b, dim0 + 8, u64::MAX / 2);
    expect_open_error("dims", &b, &["t.q8_0", "overflows"]);
    let mut b = good.clone();
    put_u64(&mut b, dim0 + 8, 1 << 40); // no overflow, but far more data than the file holds
    expect_open_error("bigdims", &b, &["t.q8_0", "past the end"]);
    let mut b = good.clone();
    put_u64(&mut b, dim0, 48);
    expect_open_error("blockmisfit", &b, &["t.q8_0", "block size"]);
    let mut b = good.clone();
    put_u64(&mut b, off, 1 << 20);
    expect_open_error("offset", &b, &["t.q8_0", "past the end"]);
    let mut b = good.clone();
    put_u64(&mut b, off, u64::MAX - 63);
    expect_open_error("offsetoverflow", &b, &["t.q8_0"]);
    let mut b = good.clone();
    put_u64(&mut b, off, 64 * 3 + 8);
    expect_open_error("misaligned", &b, &["t.q8_0", "alignment"]);
    // Duplicate tensor names.
    let mut b = good.clone();
    let at = after_string(&b, "t.q5_1") - 1;
    b[at] = b'0';
    expect_open_error("duptensor", &b, &["duplicate", "t.q5_0"]);
    // Bad alignment.
    let mut b = good.clone();
    let at = after_string(&b, "general.alignment") + 4;
    put_u32(&mut b, at, 48);
    expect_open_error("alignment", &b, &["general.alignment"]);
}

/// Builds a minimal GGUF file: header + the given raw key/value bytes, no tensors.
fn synthetic(n_kv: u64, kv: &[u8]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&n_kv.to_le_bytes());
    b.extend_from_slice(kv);
    b
}

fn gguf_string(s: &str) -> Vec<u8> {
    let mut b = (s.len() as u64).to_le_bytes().to_vec();
    b.extend_from_slice(s.as_bytes());
    b
}

#[test]
fn synthetic_files() {
    // No tensors, no metadata: valid.
    let (_, r) = open_bytes("minimal", &synthetic(0, &[]));
    let f = r.unwrap();
    assert!(f.tensors().is_empty() && f.metadata().is_empty());

    // Arrays nested 10 deep are fine; 10,000 deep is rejected without overflowing the stack.
    for (depth, ok) in [(10usize, true), (10_000, false)] {
        let mut kv = gguf_string("deep");
        kv.extend_from_slice(&9u32.to_le_bytes());
        for _ in 0..depth {
            kv.extend_from_slice(&9u32.to_le_bytes());
            kv.extend_from_slice(&1u64.to_le_bytes());
        }
        kv.extend_from_slice(&0u32.to_le_bytes()); // innermost: empty array of u8
        kv.extend_from_slice(&0u64.to_le_bytes());
        let (path, r) = open_bytes("deep", &synthetic(1, &kv));
        match r {
            Ok(f) => {
                assert!(ok);
                let mut v = f.get("deep").unwrap();
                for _ in 0..depth {
                    v = &v.as_array().unwrap()[0];
                }
                assert_eq!(v.as_array().unwrap().len(), 0);
            }
            Err(e) => {
                assert!(!ok);
                let msg = e.to_string();
                assert!(
                    msg.contains(&path.display().to_string()) && msg.contains("deep"),
                    "{msg}"
                );
            }
        }
    }

    // Duplicate key.
    let mut kv = Vec::new();
    for _ in 0..2 {
        kv.extend(gguf_string("dup"));
        kv.extend_from_slice(&0u32.to_le_bytes());
        kv.push(1);
    }
    expect_open_error("dupkey", &synthetic(2, &kv), &["duplicate", "dup"]);

    // Invalid UTF-8 in a string value.
    let mut kv = gguf_string("bad.utf8");
    kv.extend_from_slice(&8u32.to_le_bytes());
    kv.extend_from_slice(&2u64.to_le_bytes());
    kv.extend_from_slice(&[0xff, 0xfe]);
    expect_open_error("utf8", &synthetic(1, &kv), &["bad.utf8", "UTF-8"]);
}

/// Every truncation of the header and tables, and random byte corruptions: errors, never panics.
#[test]
fn corrupted_files_never_panic() {
    let good = fixture_bytes();
    let table_end = data_start(&good);
    let path = temp_path("fuzz");
    let exercise = |bytes: &[u8]| {
        std::fs::write(&path, bytes).unwrap();
        if let Ok(f) = GgufFile::open(&path) {
            for t in f.tensors() {
                let _ = t.shape();
                let _ = f.tensor_f32(&t.name);
            }
            true
        } else {
            false
        }
    };
    for len in 0..table_end {
        assert!(!exercise(&good[..len]), "truncated at {len} opened");
    }
    // In the data section a cut may fall in the final padding, which is allowed.
    for len in (table_end..good.len()).step_by(37) {
        exercise(&good[..len]);
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = || {
        // xorshift64: deterministic, no extra crate.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for _ in 0..1500 {
        let mut b = good.clone();
        for _ in 0..1 + next() % 4 {
            let at = (next() % table_end as u64) as usize;
            b[at] = match next() % 3 {
                0 => next() as u8,
                1 => 0xff,
                _ => b[at] ^ (1 << (next() % 8)),
            };
        }
        exercise(&b);
    }
    let _ = std::fs::remove_file(&path);
}

/// Real model check against Python references made by
/// `scripts/make-gguf-fixtures.py --dump MODEL.gguf DIR [TENSOR...]`:
/// `FLUX_GGUF_REAL=MODEL.gguf FLUX_GGUF_REF=DIR cargo test -p flux-models --test gguf -- --ignored --nocapture real_`
#[test]
#[ignore]
fn real_file_matches_python_reference() {
    let model = PathBuf::from(std::env::var("FLUX_GGUF_REAL").expect("FLUX_GGUF_REAL"));
    let dir = PathBuf::from(std::env::var("FLUX_GGUF_REF").expect("FLUX_GGUF_REF"));
    let f = GgufFile::open(&model).unwrap();
    let list = std::fs::read_to_string(dir.join("tensors.txt")).unwrap();
    for name in list.lines().filter(|l| !l.is_empty()) {
        let expected = read_f32(&dir.join(format!("{name}.f32")));
        let (shape, got) = f.tensor_f32(name).unwrap();
        assert_eq!(got.len(), expected.len(), "{name}");
        let mut max_abs = 0f32;
        let mut n_diff_bits = 0usize;
        for (g, e) in got.iter().zip(&expected) {
            max_abs = max_abs.max((g - e).abs());
            n_diff_bits += (g.to_bits() != e.to_bits()) as usize;
        }
        let ty = f.tensor_info(name).unwrap().ggml_type;
        println!(
            "{name} {ty} {shape:?}: max abs diff {max_abs:e}, {n_diff_bits} of {} values differ bitwise",
            got.len()
        );
        assert_eq!(n_diff_bits, 0, "{name}");
    }
}

/// Times the dequantisation of every tensor of `FLUX_GGUF_REAL`.
#[test]
#[ignore]
fn real_file_full_dequant_timing() {
    let model = PathBuf::from(std::env::var("FLUX_GGUF_REAL").expect("FLUX_GGUF_REAL"));
    let t0 = std::time::Instant::now();
    let f = GgufFile::open(&model).unwrap();
    let t_open = t0.elapsed();
    let mut n = 0u64;
    let mut checksum = 0f64;
    for t in f.tensors() {
        let (_, v) = f.tensor_f32(&t.name).unwrap();
        n += v.len() as u64;
        checksum += v[v.len() / 2] as f64;
    }
    println!(
        "{}: open {:?}, dequantised {} tensors / {n} values in {:?} (checksum {checksum})",
        model.display(),
        t_open,
        f.tensors().len(),
        t0.elapsed() - t_open
    );
}
