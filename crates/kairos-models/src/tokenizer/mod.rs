//! The OpenAI CLIP byte-level BPE tokenizer, as transformers' `CLIPTokenizer` (5.24,
//! `models/clip/tokenization_clip.py`) builds it on the `tokenizers` library, shipped inside the
//! binary so that it works offline.
//!
//! The merges (`clip_merges.txt`) are the first 49152 − 256 − 2 lines of OpenAI's
//! `bpe_simple_vocab_16e6.txt.gz` (written by `tools/fixtures/clip.py`); the vocabulary is
//! derived from them exactly as OpenAI's `simple_tokenizer.py` does: the 256 byte characters,
//! the same with `</w>`, one entry per merge, then `<|startoftext|>` and `<|endoftext|>`, 49408
//! ids in all. This is the `vocab.json` / `merges.txt` of every Stable Diffusion 1/2 and SDXL
//! tokenizer folder.
//!
//! Differences from transformers:
//! - Only encoding; no decoding, offsets or attention masks (the text encoders of Stable
//!   Diffusion are run without a padding mask).
//! - Padding and truncation are done here on the raw ids ([`CLIPTokenizer::encode`]) rather than
//!   by the `tokenizers` post-processor, which gives the same ids as
//!   `tokenizer(text, padding="max_length", max_length=77, truncation=True)`.
//!
//! Like transformers (and unlike OpenAI's `simple_tokenizer.py`, which runs `ftfy`), the text is
//! only NFC-normalised, whitespace-collapsed and lowercased, so curly quotes, HTML entities and
//! fullwidth characters are kept as they are. Also like transformers, the pad token is a special
//! token: with SD2's pad token `!` every `!` in a prompt becomes id 0 rather than a `!` BPE token.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{self, Lowercase, Replace, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// `<|startoftext|>`, put before the prompt's tokens.
pub const BOS_TOKEN: &str = "<|startoftext|>";
/// `<|endoftext|>`, put after the prompt's tokens; also the SD1 pad token and the unknown token.
pub const EOS_TOKEN: &str = "<|endoftext|>";
/// Id of [`BOS_TOKEN`].
pub const BOS_TOKEN_ID: u32 = 49406;
/// Id of [`EOS_TOKEN`].
pub const EOS_TOKEN_ID: u32 = 49407;
/// Number of ids in the CLIP vocabulary.
pub const VOCAB_SIZE: usize = 49408;
/// The context length of every CLIP text encoder used by Stable Diffusion (`model_max_length`).
pub const MODEL_MAX_LENGTH: usize = 77;

/// `bpe_simple_vocab_16e6.txt` merges used by CLIP, with a `#version` header line.
const MERGES: &str = include_str!("clip_merges.txt");

/// transformers' pre-tokenizer split pattern (OpenAI's `simple_tokenizer.py` pattern).
const SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

/// Errors of the CLIP tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The embedded vocabulary could not be turned into a tokenizer (a build defect).
    #[error("building the CLIP tokenizer failed: {source}")]
    Build {
        /// What the `tokenizers` library reported.
        #[source]
        source: tokenizers::Error,
    },
    /// The `tokenizers` library failed on this text.
    #[error("tokenizing {text:?} failed: {source}")]
    Encode {
        /// The text given.
        text: String,
        /// What the `tokenizers` library reported.
        #[source]
        source: tokenizers::Error,
    },
    /// A padded length too short to hold `<|startoftext|>` and `<|endoftext|>`.
    #[error("max_length must be at least 2 (room for <|startoftext|> and <|endoftext|>), got {max_length}")]
    MaxLengthTooShort {
        /// The length asked for.
        max_length: usize,
    },
    /// A pad token this tokenizer does not know.
    #[error("unsupported CLIP pad token {token:?}; accepted: \"<|endoftext|>\" (SD1, SDXL) or \"!\" (SD2, SDXL text_encoder_2)")]
    UnsupportedPadToken {
        /// The token given.
        token: String,
    },
}

/// The pad token of a Stable Diffusion tokenizer folder (`special_tokens_map.json`'s
/// `pad_token`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PadToken {
    /// `<|endoftext|>` (id 49407): SD1's `openai/clip-vit-large-patch14` tokenizer, SDXL's
    /// `tokenizer`.
    #[default]
    EndOfText,
    /// `!` (id 0): SD2's tokenizer and SDXL's `tokenizer_2`, following OpenCLIP, which pads
    /// with zeros.
    Exclamation,
}

impl PadToken {
    /// The pad token written as in `special_tokens_map.json`.
    pub fn from_token(token: &str) -> Result<Self, TokenizerError> {
        match token {
            EOS_TOKEN => Ok(Self::EndOfText),
            "!" => Ok(Self::Exclamation),
            _ => Err(TokenizerError::UnsupportedPadToken { token: token.to_string() }),
        }
    }

    /// The token's text.
    pub fn token(self) -> &'static str {
        match self {
            Self::EndOfText => EOS_TOKEN,
            Self::Exclamation => "!",
        }
    }

    /// The token's id.
    pub fn id(self) -> u32 {
        match self {
            Self::EndOfText => EOS_TOKEN_ID,
            Self::Exclamation => 0,
        }
    }
}

/// The CLIP tokenizer of Stable Diffusion (transformers' `CLIPTokenizer`).
#[derive(Clone)]
pub struct CLIPTokenizer {
    tokenizer: Tokenizer,
    pad_token: PadToken,
}

impl std::fmt::Debug for CLIPTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CLIPTokenizer").field("pad_token", &self.pad_token).finish_non_exhaustive()
    }
}

impl CLIPTokenizer {
    /// Builds the tokenizer from the embedded vocabulary, padding with `pad_token`.
    pub fn new(pad_token: PadToken) -> Result<Self, TokenizerError> {
        let build = |source| TokenizerError::Build { source };
        let merges: Vec<(String, String)> = MERGES
            .lines()
            .filter(|line| !line.starts_with("#version"))
            .filter_map(|line| line.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        let vocab = clip_vocab(&merges);
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .continuing_subword_prefix(String::new())
            .end_of_word_suffix("</w>".to_string())
            .unk_token(EOS_TOKEN.to_string())
            .fuse_unk(false)
            .build()
            .map_err(build)?;
        let mut tokenizer = Tokenizer::new(bpe);
        let normalizer = normalizers::Sequence::new(vec![
            NFC.into(),
            Replace::new(normalizers::replace::ReplacePattern::Regex(r"\s+".into()), " ").map_err(build)?.into(),
            Lowercase.into(),
        ]);
        tokenizer.with_normalizer(Some(normalizer)).map_err(build)?;
        let split = Split::new(SplitPattern::Regex(SPLIT_PATTERN.into()), SplitDelimiterBehavior::Removed, true)
            .map_err(build)?;
        // transformers' `ByteLevel(add_prefix_space=False)`: trim_offsets and use_regex default on.
        let byte_level = ByteLevel::new(false, true, true);
        tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![split.into(), byte_level.into()])));
        // transformers registers bos, eos, unk and pad as special added tokens: they are matched in
        // the raw text before normalisation and never split.
        let mut specials = vec![AddedToken::from(BOS_TOKEN, true), AddedToken::from(EOS_TOKEN, true)];
        if pad_token != PadToken::EndOfText {
            specials.push(AddedToken::from(pad_token.token(), true));
        }
        tokenizer.add_special_tokens(specials).map_err(build)?;
        Ok(Self { tokenizer, pad_token })
    }

    /// The pad token.
    pub fn pad_token(&self) -> PadToken {
        self.pad_token
    }

    /// The id of a vocabulary entry (for example `",</w>"`), if it exists.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The prompt's token ids without `<|startoftext|>`, `<|endoftext|>`, padding or truncation
    /// (transformers' `tokenizer(text, add_special_tokens=False).input_ids`), for A1111-style
    /// chunking of long prompts.
    pub fn encode_raw(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|source| TokenizerError::Encode { text: text.to_string(), source })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// `<|startoftext|>`, the prompt's ids truncated to `max_length - 2`, `<|endoftext|>`, then
    /// the pad id up to `max_length` (transformers' `tokenizer(text, padding="max_length",
    /// max_length=max_length, truncation=True).input_ids`; Stable Diffusion uses
    /// [`MODEL_MAX_LENGTH`]).
    pub fn encode(&self, text: &str, max_length: usize) -> Result<Vec<u32>, TokenizerError> {
        if max_length < 2 {
            return Err(TokenizerError::MaxLengthTooShort { max_length });
        }
        let raw = self.encode_raw(text)?;
        Ok(self.wrap(&raw[..raw.len().min(max_length - 2)], max_length))
    }

    /// `<|startoftext|>`, `ids`, `<|endoftext|>`, then the pad id up to `max_length` (or no
    /// padding if `ids` already fill it).
    pub fn wrap(&self, ids: &[u32], max_length: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(max_length.max(ids.len() + 2));
        out.push(BOS_TOKEN_ID);
        out.extend_from_slice(ids);
        out.push(EOS_TOKEN_ID);
        out.resize(out.len().max(max_length), self.pad_token.id());
        out
    }
}

/// The CLIP vocabulary in id order, as OpenAI's `simple_tokenizer.py` builds it.
fn clip_vocab(merges: &[(String, String)]) -> Vocab {
    let byte_chars = bytes_to_unicode();
    let tokens = byte_chars
        .iter()
        .map(|c| c.to_string())
        .chain(byte_chars.iter().map(|c| format!("{c}</w>")))
        .chain(merges.iter().map(|(a, b)| format!("{a}{b}")))
        .chain([BOS_TOKEN.to_string(), EOS_TOKEN.to_string()]);
    let mut vocab = Vocab::new();
    for (id, token) in (0u32..).zip(tokens) {
        vocab.insert(token, id);
    }
    vocab
}

/// GPT-2's reversible byte → printable character table, in the order of its values: the 188
/// printable Latin-1 bytes keep their own character, the other 68 bytes map to U+0100..U+0143.
fn bytes_to_unicode() -> Vec<char> {
    let printable = |b: &u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    (0..=255u8).filter(printable).map(char::from).chain(('\u{100}'..).take(256 - 188)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_has_clip_size_and_special_ids() {
        let merges = MERGES.lines().filter(|l| !l.starts_with("#version")).count();
        assert_eq!(merges, 49152 - 256 - 2);
        let tokenizer = CLIPTokenizer::new(PadToken::EndOfText).unwrap();
        let vocab = tokenizer.tokenizer.get_vocab(true);
        assert_eq!(vocab.len(), VOCAB_SIZE);
        assert_eq!(vocab[BOS_TOKEN], BOS_TOKEN_ID);
        assert_eq!(vocab[EOS_TOKEN], EOS_TOKEN_ID);
        assert_eq!(vocab["!"], 0);
    }

    #[test]
    fn too_short_max_length_is_an_error() {
        let tokenizer = CLIPTokenizer::new(PadToken::EndOfText).unwrap();
        assert!(matches!(tokenizer.encode("cat", 1), Err(TokenizerError::MaxLengthTooShort { max_length: 1 })));
        assert_eq!(tokenizer.encode("", 2).unwrap(), vec![BOS_TOKEN_ID, EOS_TOKEN_ID]);
    }

    #[test]
    fn pad_token_from_text() {
        assert_eq!(PadToken::from_token("!").unwrap(), PadToken::Exclamation);
        assert_eq!(PadToken::from_token("<|endoftext|>").unwrap(), PadToken::EndOfText);
        let err = PadToken::from_token("<pad>").unwrap_err().to_string();
        assert!(err.contains("<pad>") && err.contains("accepted"), "{err}");
    }
}
