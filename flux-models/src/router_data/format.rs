//! The split file format: a compact binary list of [`RouterSample`]s in one gzip stream.
//!
//! Layout (little-endian) of the decompressed stream:
//!
//! ```text
//! magic  b"FLUXRDAT"        8 bytes
//! version u32               = 1
//! count   u64               number of samples
//! per sample:
//!   n_ids u32, prompt_start u32, prompt_end u32, answer_start u32, answer_end u32,
//!   category u8 (index in TaskCategory::ALL), target f64, family_len u16, family (UTF-8),
//!   ids: n_ids x u32
//! ```
//!
//! The gzip header carries no file name and a zero time stamp, and the compression level is
//! fixed, so the same samples always give the same bytes.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use flate2::{Compression, GzBuilder};
use flux_router::TaskCategory;
use sha2::{Digest, Sha256};

use super::sample::RouterSample;
use crate::error::{ModelError, Result};

const MAGIC: &[u8; 8] = b"FLUXRDAT";
const VERSION: u32 = 1;
/// The gzip level of every split file (fixed so that the bytes are reproducible).
const GZIP_LEVEL: u32 = 6;
/// Most ids one sample may hold (a sanity bound on the length field: 64M tokens).
const MAX_IDS: usize = 1 << 26;
/// Ids read per step, so that a lying length field cannot make the reader allocate ahead of
/// the data actually present.
const IDS_CHUNK: usize = 1 << 16;

/// Writes `samples` to `path` (through `path.tmp` and a rename, so that a reader never sees a
/// half-written file) and returns the sha256 (lowercase hex) of the written file.
pub fn write_split(path: &Path, samples: &[RouterSample]) -> Result<String> {
    for (i, s) in samples.iter().enumerate() {
        s.check(None).map_err(|m| ModelError::InvalidArgument {
            argument: "samples".into(),
            message: format!("sample {i} for {}: {m}", path.display()),
        })?;
        if s.ids.len() > MAX_IDS || s.family.is_empty() || s.family.len() > u16::MAX as usize {
            return Err(ModelError::InvalidArgument {
                argument: "samples".into(),
                message: format!(
                    "sample {i} for {}: {} ids (limit {MAX_IDS}), family of {} bytes (1..=65535)",
                    path.display(),
                    s.ids.len(),
                    s.family.len()
                ),
            });
        }
    }
    let tmp = tmp_path(path);
    let io = |e: std::io::Error| ModelError::io(&tmp, e);
    let file = File::create(&tmp).map_err(io)?;
    let hashing = HashingWriter {
        inner: BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(hashing, Compression::new(GZIP_LEVEL));
    {
        let mut out = BufWriter::with_capacity(1 << 16, &mut gz);
        out.write_all(MAGIC).map_err(io)?;
        out.write_all(&VERSION.to_le_bytes()).map_err(io)?;
        out.write_all(&(samples.len() as u64).to_le_bytes())
            .map_err(io)?;
        for s in samples {
            for v in [
                s.ids.len(),
                s.prompt_span.start,
                s.prompt_span.end,
                s.answer.start,
                s.answer.end,
            ] {
                out.write_all(&(v as u32).to_le_bytes()).map_err(io)?;
            }
            out.write_all(&[s.category.index() as u8]).map_err(io)?;
            out.write_all(&s.target.to_le_bytes()).map_err(io)?;
            out.write_all(&(s.family.len() as u16).to_le_bytes())
                .map_err(io)?;
            out.write_all(s.family.as_bytes()).map_err(io)?;
            for id in &s.ids {
                out.write_all(&id.to_le_bytes()).map_err(io)?;
            }
        }
        out.flush().map_err(io)?;
    }
    let hashing = gz.finish().map_err(io)?;
    let HashingWriter { inner, hasher } = hashing;
    let file = inner.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    drop(file);
    std::fs::rename(&tmp, path).map_err(|e| ModelError::io(path, e))?;
    Ok(hex(&hasher.finalize()))
}

/// Reads a split file written by [`write_split`]. A file that is not one (bad magic or
/// version), is truncated or corrupt, or holds a sample whose ranges lie outside its ids or
/// whose category is unknown is rejected with an error naming the file.
pub fn read_split(path: &Path) -> Result<Vec<RouterSample>> {
    let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut r = Reader {
        inner: BufReader::with_capacity(1 << 16, GzDecoder::new(BufReader::new(file))),
        path: path.to_path_buf(),
    };
    let mut magic = [0u8; 8];
    r.exact(&mut magic, "the header")?;
    if &magic != MAGIC {
        return Err(r.bad("not a router data file (bad magic)"));
    }
    let version = r.u32("the header")?;
    if version != VERSION {
        return Err(r.bad(format!(
            "format version {version}, this reader knows {VERSION}"
        )));
    }
    let count = r.u64("the header")?;
    let mut samples = Vec::with_capacity(count.min(1024) as usize);
    for i in 0..count {
        samples.push(read_sample(&mut r, i)?);
    }
    // Reading to the end also checks the gzip CRC.
    let mut rest = [0u8; 1];
    match r.inner.read(&mut rest) {
        Ok(0) => Ok(samples),
        Ok(_) => Err(r.bad(format!(
            "data after the {count} samples the header announces"
        ))),
        Err(e) => Err(r.bad(format!("after the last sample: {e}"))),
    }
}

fn read_sample<R: Read>(r: &mut Reader<R>, i: u64) -> Result<RouterSample> {
    let what = format!("sample {i}");
    let n_ids = r.u32(&what)? as usize;
    let prompt_span = r.u32(&what)? as usize..r.u32(&what)? as usize;
    let answer = r.u32(&what)? as usize..r.u32(&what)? as usize;
    let mut cat = [0u8; 1];
    r.exact(&mut cat, &what)?;
    let category = *TaskCategory::ALL
        .get(cat[0] as usize)
        .ok_or_else(|| r.bad(format!("{what}: unknown category index {}", cat[0])))?;
    let mut t = [0u8; 8];
    r.exact(&mut t, &what)?;
    let target = f64::from_le_bytes(t);
    let mut fl = [0u8; 2];
    r.exact(&mut fl, &what)?;
    let mut family = vec![0u8; u16::from_le_bytes(fl) as usize];
    r.exact(&mut family, &what)?;
    let family = String::from_utf8(family)
        .map_err(|_| r.bad(format!("{what}: family name is not UTF-8")))?;
    if family.is_empty() {
        return Err(r.bad(format!("{what}: empty family name")));
    }
    if n_ids > MAX_IDS {
        return Err(r.bad(format!("{what}: claims {n_ids} ids (limit {MAX_IDS})")));
    }
    let mut ids = Vec::with_capacity(n_ids.min(IDS_CHUNK));
    let mut buf = vec![0u8; 4 * n_ids.min(IDS_CHUNK)];
    while ids.len() < n_ids {
        let take = (n_ids - ids.len()).min(IDS_CHUNK);
        r.exact(&mut buf[..4 * take], &what)?;
        ids.extend(
            buf[..4 * take]
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    let sample = RouterSample {
        ids,
        prompt_span,
        answer,
        category,
        target,
        family,
    };
    sample
        .check(None)
        .map_err(|m| r.bad(format!("{what}: {m}")))?;
    Ok(sample)
}

/// `path` with `.tmp` appended to its file name.
pub(crate) fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

/// Lowercase hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct Reader<R> {
    inner: R,
    path: PathBuf,
}

impl<R: Read> Reader<R> {
    fn bad(&self, message: impl Into<String>) -> ModelError {
        ModelError::RouterData {
            path: self.path.clone(),
            message: message.into(),
        }
    }

    fn exact(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        self.inner.read_exact(buf).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => self.bad(format!("truncated in {what}")),
            _ => self.bad(format!("corrupt in {what}: {e}")),
        })
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let mut b = [0u8; 4];
        self.exact(&mut b, what)?;
        Ok(u32::from_le_bytes(b))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut b = [0u8; 8];
        self.exact(&mut b, what)?;
        Ok(u64::from_le_bytes(b))
    }
}
