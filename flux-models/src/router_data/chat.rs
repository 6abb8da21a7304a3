//! The chat frame of a sample: the model's chat template around one user turn and one
//! assistant answer, and the token ranges of both.

use std::ops::Range;

use super::draft::Fail;
use crate::error::{ModelError, Result};
use crate::tokenizer::{ChatMessage, Tokenizer};

const USER_MARK: &str = "\u{E000}flux-router-user\u{E000}";
const ANSWER_MARK: &str = "\u{E001}flux-router-answer\u{E001}";

/// The template text around the user content and the answer, found once by rendering two
/// marker strings.
#[derive(Debug, Clone)]
pub(crate) struct ChatFrame {
    head: String,
    mid: String,
    tail: String,
    head_ids: Vec<u32>,
    mid_ids: Vec<u32>,
    /// The end-of-turn token that closes the answer.
    end_id: u32,
    /// Whether the template writes `end_id` right after the answer (ChatML's `<|im_end|>`);
    /// otherwise it is appended.
    end_in_tail: bool,
}

/// A tokenized sample: ids and the ranges of the user content and of the scored answer.
#[derive(Debug, Clone)]
pub(crate) struct Assembled {
    pub ids: Vec<u32>,
    pub prompt_span: Range<usize>,
    pub answer: Range<usize>,
}

impl ChatFrame {
    /// Renders the template around markers and tokenizes the pieces between them.
    pub fn new(tok: &Tokenizer) -> Result<Self> {
        let rendered = tok.apply_chat_template(
            &[
                ChatMessage::new("user", USER_MARK),
                ChatMessage::new("assistant", ANSWER_MARK),
            ],
            false,
        )?;
        let bad = |m: &str| ModelError::ChatTemplate {
            message: format!("{}: {m}", tok.source().display()),
        };
        let once = |mark: &str| {
            let at = rendered.find(mark)?;
            (rendered.matches(mark).count() == 1).then_some(at)
        };
        let (Some(u), Some(a)) = (once(USER_MARK), once(ANSWER_MARK)) else {
            return Err(bad(
                "the template does not write the user and assistant contents verbatim, once each",
            ));
        };
        if u > a {
            return Err(bad("the template writes the answer before the user turn"));
        }
        let head = rendered[..u].to_string();
        let mid = rendered[u + USER_MARK.len()..a].to_string();
        let tail = rendered[a + ANSWER_MARK.len()..].to_string();
        let head_ids = tok.encode(&head, false)?;
        let mid_ids = tok.encode(&mid, false)?;
        let tail_ids = tok.encode(&tail, false)?;
        let eos = tok.eos_ids();
        let (end_id, end_in_tail) = match tail_ids.first() {
            Some(&t) if eos.contains(&t) => (t, true),
            _ => match eos.first() {
                Some(&e) => (e, false),
                None => return Err(bad("the tokenizer has no end-of-sequence token")),
            },
        };
        Ok(Self {
            head,
            mid,
            tail,
            head_ids,
            mid_ids,
            end_id,
            end_in_tail,
        })
    }

    /// Tokens of the template around content and answer: head, middle and the end token.
    pub fn overhead(&self) -> usize {
        self.head_ids.len() + self.mid_ids.len() + 1
    }

    /// Tokens before the user content.
    pub fn head_len(&self) -> usize {
        self.head_ids.len()
    }

    /// Renders and tokenizes `content` + `answer`. The ids are the template's head, the
    /// content, the middle, the answer and the end-of-turn token, each tokenized on its own,
    /// and must equal the tokenization of the whole rendered text (otherwise the attempt is
    /// redrawn), so that the ranges are exact and the ids are what inference would see.
    pub fn assemble(
        &self,
        tok: &Tokenizer,
        content: &str,
        answer: &str,
    ) -> Result<Assembled, Fail> {
        let rendered = tok.apply_chat_template(
            &[
                ChatMessage::new("user", content),
                ChatMessage::new("assistant", answer),
            ],
            false,
        )?;
        let expected = [self.head.as_str(), content, &self.mid, answer, &self.tail].concat();
        if rendered != expected {
            return Err(Fail::Retry("the chat template changed the content".into()));
        }
        let content_ids = tok.encode(content, false)?;
        let answer_ids = tok.encode(answer, false)?;
        let mut ids = Vec::with_capacity(self.overhead() + content_ids.len() + answer_ids.len());
        ids.extend_from_slice(&self.head_ids);
        let p0 = ids.len();
        ids.extend_from_slice(&content_ids);
        let p1 = ids.len();
        ids.extend_from_slice(&self.mid_ids);
        let a0 = ids.len();
        ids.extend_from_slice(&answer_ids);
        ids.push(self.end_id);
        let joint = tok.encode(&rendered, false)?;
        let check = if self.end_in_tail {
            ids.len()
        } else {
            ids.len() - 1
        };
        if joint.len() < check || joint[..check] != ids[..check] {
            return Err(Fail::Retry(
                "piecewise and joint tokenization differ at a boundary".into(),
            ));
        }
        let a1 = ids.len();
        Ok(Assembled {
            ids,
            prompt_span: p0..p1,
            answer: a0..a1,
        })
    }
}

/// The token position right after the first occurrence of `text` in the decoding of
/// `ids[span]`: the smallest `i` such that `decode(ids[span.start..i])` contains `text`, or
/// `None` when the span does not contain it. Used to check where needles landed.
pub fn locate_text_end(
    tok: &Tokenizer,
    ids: &[u32],
    span: Range<usize>,
    text: &str,
) -> Result<Option<usize>> {
    let span = span.start.min(ids.len())..span.end.min(ids.len());
    let has = |end: usize| -> Result<bool> {
        Ok(tok.decode(&ids[span.start..end], false)?.contains(text))
    };
    if span.is_empty() || !has(span.end)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (span.start, span.end); // !has(lo) (or lo == start), has(hi)
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if has(mid)? {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Ok(Some(hi))
}
