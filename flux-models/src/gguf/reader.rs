//! GGUF reader: memory-maps a llama.cpp model file and parses its header, metadata and tensor table.
//!
//! Layout (little-endian): magic "GGUF", version u32, tensor count u64, metadata count u64,
//! metadata key/values, tensor infos, padding to `general.alignment`, tensor data.
//! Every read is bounds-checked: a malformed file gives a [`ModelError`], never a panic.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{ModelError, Result};

/// Alignment of the data section when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// llama.cpp's GGML_MAX_DIMS: tensors have at most 4 dimensions.
const MAX_DIMS: u32 = 4;
/// Nested metadata arrays deeper than this are rejected (bounds the recursion).
const MAX_ARRAY_DEPTH: usize = 16;

/// A ggml tensor type id (llama.cpp's `enum ggml_type`); unknown ids are kept as `Other`.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
    /// An id this crate has no traits for; only an error when such a tensor is read.
    Other(u32),
}

/// One row of the type-traits table: (type, id, name, elements per block, bytes per block).
type Traits = (GgmlType, u32, &'static str, u64, u64);

const QK_K: u64 = 256;

/// The type-traits table (llama.cpp's `type_traits`): id, name, block size and bytes per block.
const TYPE_TRAITS: &[Traits] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 2 + 16),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 2 + 2 + 16),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 2 + 4 + 16),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 2 + 2 + 4 + 16),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 2 + 32),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 4 + 4 + 32),
    (
        GgmlType::Q2_K,
        10,
        "Q2_K",
        QK_K,
        2 + 2 + QK_K / 16 + QK_K / 4,
    ),
    (
        GgmlType::Q3_K,
        11,
        "Q3_K",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + 12,
    ),
    (GgmlType::Q4_K, 12, "Q4_K", QK_K, 2 + 2 + 12 + QK_K / 2),
    (
        GgmlType::Q5_K,
        13,
        "Q5_K",
        QK_K,
        2 + 2 + 12 + QK_K / 8 + QK_K / 2,
    ),
    (
        GgmlType::Q6_K,
        14,
        "Q6_K",
        QK_K,
        QK_K / 2 + QK_K / 4 + QK_K / 16 + 2,
    ),
    (GgmlType::Q8_K, 15, "Q8_K", QK_K, 4 + QK_K + QK_K / 8),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", QK_K, 2 + QK_K / 4),
    (
        GgmlType::IQ2_XS,
        17,
        "IQ2_XS",
        QK_K,
        2 + QK_K / 4 + QK_K / 32,
    ),
    (
        GgmlType::IQ3_XXS,
        18,
        "IQ3_XXS",
        QK_K,
        2 + QK_K / 4 + QK_K / 8,
    ),
    (GgmlType::IQ1_S, 19, "IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 2 + 16),
    (
        GgmlType::IQ3_S,
        21,
        "IQ3_S",
        QK_K,
        2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
    ),
    (GgmlType::IQ2_S, 22, "IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16),
    (
        GgmlType::IQ4_XS,
        23,
        "IQ4_XS",
        QK_K,
        2 + 2 + QK_K / 2 + QK_K / 64,
    ),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (
        GgmlType::IQ1_M,
        29,
        "IQ1_M",
        QK_K,
        QK_K / 8 + QK_K / 16 + QK_K / 32,
    ),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", QK_K, 2 + 4 * 13),
    (GgmlType::TQ2_0, 35, "TQ2_0", QK_K, 2 + 64),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 1 + 16),
];

impl GgmlType {
    fn traits(self) -> Option<&'static Traits> {
        TYPE_TRAITS.iter().find(|t| t.0 == self)
    }

    /// The type with ggml id `id` (`Other(id)` when the id is not in the table).
    pub fn from_id(id: u32) -> GgmlType {
        TYPE_TRAITS
            .iter()
            .find(|t| t.1 == id)
            .map_or(GgmlType::Other(id), |t| t.0)
    }

    /// The ggml type id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::Other(id) => id,
            t => t.traits().map_or(u32::MAX, |t| t.1),
        }
    }

    /// Number of elements in one block (1 for plain types), `None` for unknown types.
    pub fn block_size(self) -> Option<u64> {
        self.traits().map(|t| t.3)
    }

    /// Number of bytes of one block, `None` for unknown types.
    pub fn type_size(self) -> Option<u64> {
        self.traits().map(|t| t.4)
    }

    /// Bytes taken by `n_elements` values, `None` for unknown types, a count that is not
    /// a whole number of blocks, or overflow.
    pub fn bytes_for(self, n_elements: u64) -> Option<u64> {
        let (bs, ts) = (self.block_size()?, self.type_size()?);
        if !n_elements.is_multiple_of(bs) {
            return None;
        }
        (n_elements / bs).checked_mul(ts)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.traits()) {
            (_, Some(t)) => f.write_str(t.2),
            (GgmlType::Other(id), None) => write!(f, "unknown type id {id}"),
            (t, None) => write!(f, "{t:?}"),
        }
    }
}

/// A GGUF metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The string, if this is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// Any non-negative integer as u64.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Floats, and integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            ref v => v.as_i64().map(|i| i as f64),
        }
    }

    /// The boolean, if this is a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Name of the GGUF value type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F32(_) => "f32",
            GgufValue::F64(_) => "f64",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
        }
    }
}

/// One entry of the tensor table.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` (ne[0]) varies fastest.
    pub dims: Vec<u64>,
    /// Storage type.
    pub ggml_type: GgmlType,
    /// Byte offset of the data relative to the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// Row-major shape as in PyTorch / Hugging Face: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        // `open` checked that the element count fits in the file, so each dim fits in usize.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Number of elements (product of the dims; checked against overflow at open).
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes of a GGUF file: memory-mapped from disk, or given in memory ([`GgufFile::from_bytes`]).
enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// A memory-mapped GGUF file with its parsed metadata and tensor table.
pub struct GgufFile {
    path: PathBuf,
    mmap: Bytes,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    by_name: HashMap<String, usize>,
    data_start: u64,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`; checks that every tensor's data lies inside the file.
    pub fn open(path: &Path) -> Result<GgufFile> {
        let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
        // SAFETY: the map is read-only; like every loader of model files we assume the file is not
        // truncated by another process while mapped.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
        Self::from_parts(path, Bytes::Mapped(mmap))
    }

    /// Parses a GGUF file held in memory, with the same checks as [`GgufFile::open`]; `path`
    /// only names the file in messages. (The fuzz targets under `fuzz/` read files this way.)
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<GgufFile> {
        Self::from_parts(path, Bytes::Owned(bytes))
    }

    fn from_parts(path: &Path, mmap: Bytes) -> Result<GgufFile> {
        let parsed = parse(path, &mmap)?;
        Ok(GgufFile {
            path: path.to_path_buf(),
            mmap,
            version: parsed.version,
            alignment: parsed.alignment,
            metadata: parsed.metadata,
            by_name: parsed
                .tensors
                .iter()
                .enumerate()
                .map(|(i, t)| (t.name.clone(), i))
                .collect(),
            tensors: parsed.tensors,
            data_start: parsed.data_start,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of the data section (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// All metadata key/values.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&GgufValue> {
        self.get(key)
            .ok_or_else(|| ModelError::gguf(&self.path, format!("missing metadata key `{key}`")))
    }

    fn wrong_type(&self, key: &str, want: &str, v: &GgufValue) -> ModelError {
        ModelError::gguf(
            &self.path,
            format!(
                "metadata key `{key}` is a {}, expected {want}",
                v.type_name()
            ),
        )
    }

    /// The string value of `key`; the error names the key and the file.
    pub fn get_str(&self, key: &str) -> Result<&str> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// The non-negative integer value of `key`; the error names the key and the file.
    pub fn get_u64(&self, key: &str) -> Result<u64> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    /// The numeric value of `key` as f64; the error names the key and the file.
    pub fn get_f64(&self, key: &str) -> Result<f64> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, "a number", v))
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The table entry of tensor `name`.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The raw (still quantised) bytes of tensor `name`.
    pub fn tensor_data(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8])> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        let unsupported = || ModelError::GgufTensorType {
            path: self.path.clone(),
            tensor: name.to_string(),
            ggml_type: info.ggml_type.to_string(),
        };
        // Sizes of known types were validated against the file length at open.
        let nbytes = info
            .ggml_type
            .bytes_for(info.n_elements())
            .ok_or_else(unsupported)?;
        let start = (self.data_start + info.offset) as usize;
        let bytes = self
            .mmap
            .get(start..start + nbytes as usize)
            .ok_or_else(|| {
                ModelError::gguf(
                    &self.path,
                    format!("data of tensor `{name}` lies past the end of the file"),
                )
            })?;
        Ok((info, bytes))
    }

    /// Tensor `name` dequantised to f32, with its row-major (HF) shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_string(),
            })?;
        if !super::dequant::is_supported(info.ggml_type) {
            return Err(ModelError::GgufTensorType {
                path: self.path.clone(),
                tensor: name.to_string(),
                ggml_type: info.ggml_type.to_string(),
            });
        }
        let (info, bytes) = self.tensor_data(name)?;
        let values =
            super::dequant::dequantize(&self.path, name, info.ggml_type, bytes, info.n_elements())?;
        Ok((info.shape(), values))
    }
}

struct Parsed {
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    data_start: u64,
}

/// Bounds-checked little-endian reader over the mapped bytes. `what` closures describe the
/// item being read; they run only when building an error.
struct Cursor<'a> {
    path: &'a Path,
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn err(&self, message: String) -> ModelError {
        ModelError::gguf(self.path, message)
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            return Err(self.err(format!(
                "truncated file: {} needs {n} bytes at offset {}, but the file has {} bytes",
                what(),
                self.pos,
                self.data.len()
            )));
        }
        let n = n as usize;
        let bytes = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        let b = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > self.remaining() as u64 {
            return Err(self.err(format!(
                "{} has length {len}, which does not fit in the {} bytes left in the file",
                what(),
                self.remaining()
            )));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec())
            .map_err(|e| self.err(format!("{} is not valid UTF-8: {e}", what())))
    }
}

/// GGUF metadata value type ids.
const T_U8: u32 = 0;
const T_I8: u32 = 1;
const T_U16: u32 = 2;
const T_I16: u32 = 3;
const T_U32: u32 = 4;
const T_I32: u32 = 5;
const T_F32: u32 = 6;
const T_BOOL: u32 = 7;
const T_STRING: u32 = 8;
const T_ARRAY: u32 = 9;
const T_U64: u32 = 10;
const T_I64: u32 = 11;
const T_F64: u32 = 12;

/// Smallest encoded size of a value of type `t` (used to bound array counts), `None` if unknown.
fn min_encoded_size(t: u32) -> Option<u64> {
    Some(match t {
        T_U8 | T_I8 | T_BOOL => 1,
        T_U16 | T_I16 => 2,
        T_U32 | T_I32 | T_F32 => 4,
        T_U64 | T_I64 | T_F64 => 8,
        T_STRING => 8,
        T_ARRAY => 12,
        _ => return None,
    })
}

fn read_value(cur: &mut Cursor<'_>, t: u32, key: &str, depth: usize) -> Result<GgufValue> {
    let what = || format!("value of metadata key `{key}`");
    Ok(match t {
        T_U8 => GgufValue::U8(u8::from_le_bytes(cur.array(&what)?)),
        T_I8 => GgufValue::I8(i8::from_le_bytes(cur.array(&what)?)),
        T_U16 => GgufValue::U16(u16::from_le_bytes(cur.array(&what)?)),
        T_I16 => GgufValue::I16(i16::from_le_bytes(cur.array(&what)?)),
        T_U32 => GgufValue::U32(u32::from_le_bytes(cur.array(&what)?)),
        T_I32 => GgufValue::I32(i32::from_le_bytes(cur.array(&what)?)),
        T_F32 => GgufValue::F32(f32::from_le_bytes(cur.array(&what)?)),
        T_U64 => GgufValue::U64(u64::from_le_bytes(cur.array(&what)?)),
        T_I64 => GgufValue::I64(i64::from_le_bytes(cur.array(&what)?)),
        T_F64 => GgufValue::F64(f64::from_le_bytes(cur.array(&what)?)),
        T_BOOL => {
            let [b] = cur.array(&what)?;
            if b > 1 {
                return Err(cur.err(format!(
                    "metadata key `{key}`: bool value has byte {b}, expected 0 or 1"
                )));
            }
            GgufValue::Bool(b == 1)
        }
        T_STRING => GgufValue::String(cur.string(&what)?),
        T_ARRAY => {
            if depth >= MAX_ARRAY_DEPTH {
                return Err(cur.err(format!(
                    "metadata key `{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH} levels"
                )));
            }
            let elem = cur.u32(&|| format!("element type of array `{key}`"))?;
            let min = min_encoded_size(elem).ok_or_else(|| {
                cur.err(format!(
                    "metadata key `{key}`: unknown array element type {elem}"
                ))
            })?;
            let count = cur.u64(&|| format!("length of array `{key}`"))?;
            // Check the count against the bytes left before allocating anything from it.
            if count
                .checked_mul(min)
                .is_none_or(|n| n > cur.remaining() as u64)
            {
                return Err(cur.err(format!(
                    "metadata key `{key}`: array length {count} does not fit in the {} bytes left in the file",
                    cur.remaining()
                )));
            }
            let mut items = Vec::with_capacity(count as usize);
            for _ in 0..count {
                items.push(read_value(cur, elem, key, depth + 1)?);
            }
            GgufValue::Array(items)
        }
        other => {
            return Err(cur.err(format!(
                "metadata key `{key}` has unknown value type {other}"
            )))
        }
    })
}

fn parse(path: &Path, data: &[u8]) -> Result<Parsed> {
    let mut cur = Cursor { path, data, pos: 0 };
    let magic = cur.array::<4>(&|| "magic".to_string())?;
    if &magic != b"GGUF" {
        return Err(cur.err(format!(
            "bad magic \"{}\" (expected \"GGUF\"); not a GGUF file",
            magic.escape_ascii()
        )));
    }
    let version = cur.u32(&|| "version".to_string())?;
    if version != 2 && version != 3 {
        let hint = if matches!(version.swap_bytes(), 2 | 3) {
            "; this is a big-endian GGUF file, only little-endian files are read"
        } else {
            ""
        };
        return Err(cur.err(format!(
            "unsupported GGUF version {version} (supported: 2, 3){hint}"
        )));
    }
    let n_tensors = cur.u64(&|| "tensor count".to_string())?;
    let n_kv = cur.u64(&|| "metadata count".to_string())?;

    // Each key/value takes at least 13 bytes (key length, type, 1-byte value).
    if n_kv
        .checked_mul(13)
        .is_none_or(|n| n > cur.remaining() as u64)
    {
        return Err(cur.err(format!(
            "metadata count {n_kv} does not fit in the {} bytes left in the file",
            cur.remaining()
        )));
    }
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = cur.string(&|| format!("key of metadata entry {i}"))?;
        let t = cur.u32(&|| format!("value type of metadata key `{key}`"))?;
        let value = read_value(&mut cur, t, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(cur.err(format!("duplicate metadata key `{key}`")));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() => a,
            _ => {
                return Err(cur.err(format!(
                    "metadata key `general.alignment` is {v:?}, expected a power of two"
                )))
            }
        },
    };

    // Each tensor info takes at least 24 bytes (name length, n_dims, type, offset).
    if n_tensors
        .checked_mul(24)
        .is_none_or(|n| n > cur.remaining() as u64)
    {
        return Err(cur.err(format!(
            "tensor count {n_tensors} does not fit in the {} bytes left in the file",
            cur.remaining()
        )));
    }
    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = cur.string(&|| format!("name of tensor {i}"))?;
        let n_dims = cur.u32(&|| format!("n_dims of tensor `{name}`"))?;
        if n_dims > MAX_DIMS {
            return Err(cur.err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(cur.u64(&|| format!("dimension {d} of tensor `{name}`"))?);
        }
        let ggml_type = GgmlType::from_id(cur.u32(&|| format!("type of tensor `{name}`"))?);
        let offset = cur.u64(&|| format!("data offset of tensor `{name}`"))?;
        if !seen.insert(name.clone()) {
            return Err(cur.err(format!("duplicate tensor name `{name}`")));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        });
    }

    let file_len = data.len() as u64;
    let data_start = (cur.pos as u64)
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| cur.err("data section offset overflows".to_string()))?;
    for t in &tensors {
        check_tensor(&cur, t, alignment, data_start, file_len)?;
    }
    Ok(Parsed {
        version,
        alignment,
        metadata,
        tensors,
        data_start,
    })
}

/// Validates one tensor's dims, type and data range against the file.
fn check_tensor(
    cur: &Cursor<'_>,
    t: &GgufTensorInfo,
    alignment: u64,
    data_start: u64,
    file_len: u64,
) -> Result<()> {
    let name = &t.name;
    let n = t
        .dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(|| {
            cur.err(format!(
                "tensor `{name}`: element count of dims {:?} overflows",
                t.dims
            ))
        })?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(cur.err(format!(
            "tensor `{name}`: data offset {} is not a multiple of the alignment {alignment}",
            t.offset
        )));
    }
    let start = data_start.checked_add(t.offset);
    // Unknown types have no size: only their start is checked; reading them is an error anyway.
    let nbytes = match (t.ggml_type.block_size(), t.ggml_type.type_size()) {
        (Some(bs), Some(ts)) => {
            let ne0 = t.dims.first().copied().unwrap_or(1);
            if !ne0.is_multiple_of(bs) {
                return Err(cur.err(format!(
                    "tensor `{name}`: row length {ne0} is not a multiple of the {} block size {bs}",
                    t.ggml_type
                )));
            }
            (n / bs).checked_mul(ts)
        }
        _ => Some(0),
    };
    match (start, nbytes) {
        (Some(s), Some(nb)) if s.checked_add(nb).is_some_and(|e| e <= file_len) => Ok(()),
        _ => Err(cur.err(format!(
            "truncated file: data of tensor `{name}` ({} bytes at offset {} of the data section, which starts at {data_start}) extends past the end of the file ({file_len} bytes)",
            nbytes.map_or("too many".to_string(), |b| b.to_string()),
            t.offset
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of a GGUF v3 file with one metadata key of value type `t` and no tensors.
    fn header_with_key(key: &[u8], t: u32) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes()); // tensors
        b.extend(1u64.to_le_bytes()); // metadata entries
        b.extend((key.len() as u64).to_le_bytes());
        b.extend(key);
        b.extend(t.to_le_bytes());
        b.extend([0u8; 8]);
        b
    }

    // Found by fuzzing (fuzz/, target `gguf`): a key with a newline made a two-line error.
    #[test]
    fn names_from_the_file_keep_the_error_on_one_line() {
        let bytes = header_with_key(b"llama.e\n\x1b[31m", 131072);
        let err = GgufFile::from_bytes(Path::new("m.gguf"), bytes)
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "m.gguf: invalid GGUF file: metadata key `llama.e\\n\\u{1b}[31m` has unknown value type 131072"
        );
    }

    #[test]
    fn from_bytes_reads_what_open_reads() {
        let mut bytes = header_with_key(b"general.alignment", T_U32);
        bytes.truncate(bytes.len() - 8);
        bytes.extend(64u32.to_le_bytes());
        let f = GgufFile::from_bytes(Path::new("m.gguf"), bytes).unwrap();
        assert_eq!((f.version(), f.alignment(), f.tensors().len()), (3, 64, 0));
        assert_eq!(f.path(), Path::new("m.gguf"));
    }
}
