//! Incremental detokenisation. A byte-level BPE token can carry half of a UTF-8 character, and
//! decoders such as SentencePiece's strip a leading space only at the start of a text, so ids are
//! decoded in a small window that keeps one piece of context, and text is released only once it
//! no longer ends in an incomplete character.

use super::Tokenizer;

/// Turns generated ids into text pieces as they arrive; the pieces concatenated equal
/// `decode(all ids, false)`.
pub struct StreamDecoder<'a> {
    tokenizer: &'a Tokenizer,
    ids: Vec<u32>,
    /// Start of the decoding window: the ids of the last released piece, kept as context.
    prefix_offset: usize,
    /// Ids before this were already released as text.
    read_offset: usize,
}

impl<'a> StreamDecoder<'a> {
    /// A decoder with nothing pushed yet.
    pub fn new(tokenizer: &'a Tokenizer) -> Self {
        Self {
            tokenizer,
            ids: Vec::new(),
            prefix_offset: 0,
            read_offset: 0,
        }
    }

    fn decode(&self, from: usize, to: usize) -> String {
        self.tokenizer
            .decode(&self.ids[from..to], false)
            .unwrap_or_default()
    }

    /// The text of the window past the context, or `None` while it is not final.
    fn pending(&self, final_only: bool) -> Option<String> {
        let context = self.decode(self.prefix_offset, self.read_offset);
        let full = self.decode(self.prefix_offset, self.ids.len());
        if final_only && (full.len() <= context.len() || full.ends_with('\u{FFFD}')) {
            return None;
        }
        // The window's text normally starts with the context's; where a decoder rewrites it,
        // release what follows the longest common prefix rather than repeat or drop text.
        let common = if full.starts_with(&context) {
            context.len()
        } else {
            full.char_indices()
                .zip(context.chars())
                .find(|((_, a), b)| a != b)
                .map(|((i, _), _)| i)
                .unwrap_or_else(|| context.len().min(full.len()))
        };
        Some(full.get(common..).unwrap_or_default().to_string())
    }

    /// Adds `id`; returns the text that became final, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let piece = self.pending(true)?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Drop ids that are no longer context, so the work per token stays small.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
        Some(piece)
    }

    /// The text still held back (an incomplete character comes out as U+FFFD); the decoder
    /// starts afresh afterwards.
    pub fn finish(&mut self) -> String {
        let rest = self.pending(false).unwrap_or_default();
        self.ids.clear();
        self.prefix_offset = 0;
        self.read_offset = 0;
        rest
    }
}
