//! One split's corpus, prepared for the generators: addresses cut into sentences and
//! paragraphs, the word list, crates as lines; and haystacks of real text with items
//! inserted at sentence boundaries.

use std::cell::RefCell;
use std::ops::Range;

use flux_router::TaskCategory;

use super::draft::{Attempt, Draft, Fail, Gen};
use super::sources::{Sources, Split};
use super::text::{paragraphs, split_sentences, word_list};
use crate::error::Result;
use crate::tokenizer::Tokenizer;

/// Words per paragraph at least (the address files have no paragraph breaks).
const PARAGRAPH_WORDS: usize = 80;

/// An address as sentences grouped into paragraphs.
#[derive(Debug)]
pub(crate) struct Address {
    pub year: u32,
    pub president: String,
    pub sentences: Vec<String>,
    pub paragraphs: Vec<Range<usize>>,
    /// Whether sentence `i` opens a paragraph.
    pub para_start: Vec<bool>,
}

/// A crate as the lines of its files, each file headed by `// file: <path>`.
#[derive(Debug)]
pub(crate) struct CodeCrate {
    pub lines: Vec<String>,
    /// Index of each file's header line.
    pub file_starts: Vec<usize>,
}

/// One split's share of the sources.
#[derive(Debug)]
pub(crate) struct SplitCorpus {
    pub addresses: Vec<Address>,
    /// Lowercase words of 6-10 letters of the split's addresses (keys, box names, ICL inputs).
    pub words: Vec<String>,
    pub crates: Vec<CodeCrate>,
    /// Token count of `" " + sentence`, per address and sentence (`u32::MAX`: not counted).
    sentence_tokens: RefCell<Vec<Vec<u32>>>,
}

/// A piece of context text with its estimated token count. `origin` is the (address,
/// sentence) it comes from, `None` for inserted items.
#[derive(Debug, Clone)]
pub(crate) struct Piece {
    pub text: String,
    pub tokens: usize,
    pub origin: Option<(usize, usize)>,
}

impl SplitCorpus {
    /// Prepares the addresses and crates of `split`.
    pub fn new(sources: &Sources, split: Split) -> Self {
        let addresses: Vec<Address> = sources
            .addresses_of(split)
            .map(|a| {
                let sentences = split_sentences(&a.text);
                let paragraphs = paragraphs(&sentences, PARAGRAPH_WORDS);
                let mut para_start = vec![false; sentences.len()];
                for p in &paragraphs {
                    para_start[p.start] = true;
                }
                Address {
                    year: a.year,
                    president: a.president.clone(),
                    sentences,
                    paragraphs,
                    para_start,
                }
            })
            .collect();
        let words = word_list(sources.addresses_of(split).map(|a| a.text.as_str()), 6, 10);
        let crates = sources
            .crates_of(split)
            .map(|c| {
                let mut lines = Vec::new();
                let mut file_starts = Vec::new();
                for f in &c.files {
                    if !lines.is_empty() {
                        lines.push(String::new());
                    }
                    file_starts.push(lines.len());
                    lines.push(format!("// file: {}", f.path));
                    lines.extend(f.text.lines().map(|l| l.trim_end().to_string()));
                }
                CodeCrate { lines, file_starts }
            })
            .collect();
        let sentence_tokens = RefCell::new(
            addresses
                .iter()
                .map(|a| vec![u32::MAX; a.sentences.len()])
                .collect(),
        );
        Self {
            addresses,
            words,
            crates,
            sentence_tokens,
        }
    }

    /// Tokens of `" " + sentence` (counted once, then cached).
    pub fn sentence_tokens(&self, tok: &Tokenizer, doc: usize, i: usize) -> Result<usize> {
        let cached = self.sentence_tokens.borrow()[doc][i];
        if cached != u32::MAX {
            return Ok(cached as usize);
        }
        let n = tok
            .encode(&format!(" {}", self.addresses[doc].sentences[i]), false)?
            .len();
        self.sentence_tokens.borrow_mut()[doc][i] = n as u32;
        Ok(n)
    }

    /// Tokens of paragraph `p` of address `doc` (its sentences and the break before it).
    pub fn paragraph_tokens(&self, tok: &Tokenizer, doc: usize, p: usize) -> Result<usize> {
        let mut n = 1;
        for i in self.addresses[doc].paragraphs[p].clone() {
            n += self.sentence_tokens(tok, doc, i)?;
        }
        Ok(n)
    }

    /// Text of paragraph `p` of address `doc`.
    pub fn paragraph_text(&self, doc: usize, p: usize) -> String {
        let a = &self.addresses[doc];
        a.sentences[a.paragraphs[p].clone()].join(" ")
    }
}

impl Gen<'_> {
    /// Real text from the split's addresses, starting at paragraph `para` of address `doc` and
    /// running on through the following addresses, as sentence pieces (`"\n\n"` before a
    /// paragraph or address, `" "` otherwise) of at most `max_tokens` tokens in all.
    pub fn haystack_from(&self, doc: usize, para: usize, max_tokens: usize) -> Attempt<Vec<Piece>> {
        let corpus = self.corpus;
        let n_docs = corpus.addresses.len();
        if n_docs == 0 {
            return Err(Fail::Retry("no addresses in this split".into()));
        }
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut d = doc;
        let mut i = corpus.addresses[d]
            .paragraphs
            .get(para)
            .map_or(0, |p| p.start);
        let mut visited = 0usize;
        loop {
            let a = &corpus.addresses[d];
            if i >= a.sentences.len() {
                d = (d + 1) % n_docs;
                i = 0;
                visited += 1;
                if visited > n_docs {
                    break;
                }
                continue;
            }
            let brk = a.para_start[i];
            let tokens = corpus.sentence_tokens(self.tok, d, i)? + usize::from(brk);
            if used + tokens > max_tokens {
                break;
            }
            let sep = if brk { "\n\n" } else { " " };
            out.push(Piece {
                text: format!("{sep}{}", a.sentences[i]),
                tokens,
                origin: Some((d, i)),
            });
            used += tokens;
            i += 1;
        }
        Ok(out)
    }

    /// A haystack from a random paragraph of a random address.
    pub fn haystack(&mut self, max_tokens: usize) -> Attempt<Vec<Piece>> {
        let n_docs = self.corpus.addresses.len();
        if n_docs == 0 {
            return Err(Fail::Retry("no addresses in this split".into()));
        }
        let doc = self.below(0, n_docs);
        let para = self.below(0, self.corpus.addresses[doc].paragraphs.len());
        self.haystack_from(doc, para, max_tokens)
    }

    /// The context of a retrieval sample: a haystack filling what the question and the answer
    /// leave of the budget, with `items` (in this order) inserted at random sentence boundaries
    /// in its first 80 % (see `depth_limit`). Returns the context text and whether the far rule
    /// applies to the items.
    pub fn scatter_in_haystack(
        &mut self,
        items: Vec<Piece>,
        question: &str,
        answer: &str,
    ) -> Attempt<(String, bool)> {
        let inserted = tokens(&items);
        let (q_tok, a_tok) = (self.count(question)?, self.count(answer)?);
        let room = self.context_budget(q_tok, a_tok)?.saturating_sub(inserted);
        let mut hay = self.haystack(room)?;
        let (limit, enforce_far) =
            self.depth_limit(tokens(&hay) + inserted, q_tok, a_tok, inserted, 0.8);
        self.insert_items(&mut hay, items, limit)?;
        Ok((join(&hay), enforce_far))
    }

    /// A retrieval sample: `items` scattered in a haystack ([`Self::scatter_in_haystack`]),
    /// then the question; `far_texts` are the items the far rule measures.
    #[allow(clippy::too_many_arguments)]
    pub fn haystack_draft(
        &mut self,
        family: &'static str,
        category: TaskCategory,
        items: Vec<Piece>,
        question: &str,
        answer: String,
        far_texts: Vec<String>,
    ) -> Attempt<Draft> {
        let (context, enforce_far) = self.scatter_in_haystack(items, question, &answer)?;
        Ok(Draft {
            family,
            category,
            content: self.content(&context, question),
            answer,
            far_texts,
            enforce_far,
        })
    }

    /// Inserts `items` (in this order) as sentences at distinct random sentence boundaries
    /// of `hay` whose token offset lies in `0..=limit`.
    pub fn insert_items(
        &mut self,
        hay: &mut Vec<Piece>,
        items: Vec<Piece>,
        limit: usize,
    ) -> Attempt<()> {
        let mut eligible = Vec::new();
        let mut offset = 0usize;
        for b in 0..=hay.len() {
            if offset > limit {
                break;
            }
            // Between sentences (not in front of a paragraph break, so items read as part of
            // the prose), or at the very start.
            if b == 0 || b == hay.len() || !hay[b].text.starts_with('\n') {
                eligible.push(b);
            }
            if b < hay.len() {
                offset += hay[b].tokens;
            }
        }
        if eligible.len() < items.len() {
            return Err(Fail::Retry(
                "too few sentence boundaries for the items".into(),
            ));
        }
        // k distinct boundaries, sorted.
        let mut chosen: Vec<usize> = Vec::with_capacity(items.len());
        while chosen.len() < items.len() {
            let b = eligible[self.below(0, eligible.len())];
            if !chosen.contains(&b) {
                chosen.push(b);
            }
        }
        chosen.sort_unstable();
        for (b, item) in chosen.into_iter().zip(items).rev() {
            hay.insert(b, item);
        }
        Ok(())
    }
}

/// Concatenation of the pieces, leading white space removed.
pub(crate) fn join(pieces: &[Piece]) -> String {
    let mut s = String::with_capacity(pieces.iter().map(|p| p.text.len()).sum());
    for p in pieces {
        s.push_str(&p.text);
    }
    s.trim_start().to_string()
}

/// Total estimated tokens of the pieces.
pub(crate) fn tokens(pieces: &[Piece]) -> usize {
    pieces.iter().map(|p| p.tokens).sum()
}

/// An inserted sentence: `" " + text`, counted.
pub(crate) fn item(g: &Gen, text: &str) -> Attempt<Piece> {
    let text = format!(" {text}");
    Ok(Piece {
        tokens: g.count(&text)?,
        text,
        origin: None,
    })
}
