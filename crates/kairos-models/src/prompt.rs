//! AUTOMATIC1111 (stable-diffusion-webui) prompt syntax: attention weights, `BREAK`, 75-token
//! chunks and emphasis, following `modules/prompt_parser.py` (`parse_prompt_attention`),
//! `modules/sd_hijack_clip.py` (`tokenize_line`, `process_tokens`) and `modules/sd_emphasis.py`.
//!
//! - `(text)` multiplies the weight of `text` by 1.1, `[text]` divides it by 1.1, `(text:1.3)`
//!   multiplies it by 1.3; brackets nest and multiply, unclosed ones apply to the end of the
//!   prompt, unmatched `)` and `]` are literal; `\(`, `\)`, `\[`, `\]`, `\\` are literal
//!   characters and a backslash before any other character is dropped.
//! - `BREAK` (a whole word, upper case) ends the current 75-token chunk.
//! - Each chunk is `<|startoftext|>`, 75 tokens (padded with `<|endoftext|>`), `<|endoftext|>`,
//!   encoded separately; the embeddings are concatenated. A chunk that fills up moves the text
//!   after its last comma to the next chunk when that comma is at most
//!   `comma_padding_backtrack` tokens back.
//! - "Original" emphasis multiplies each token's embedding by its weight, then rescales the
//!   whole chunk so that its mean is what it was before.
//!
//! Differences from A1111:
//! - No prompt editing (`[a:b:0.5]`), alternation (`[a|b]`) or `AND` (composable diffusion):
//!   their characters are read by the attention parser only, as A1111's parser does for the
//!   text each schedule produces.
//! - No textual-inversion embeddings.
//! - A1111 marks `BREAK` with the weight −1, so a `BREAK` inside brackets gets its weight
//!   multiplied and then is encoded as the word "BREAK" with a negative weight; here `BREAK`
//!   always ends the chunk.
//! - Weights are read with ASCII digits only (Python's `float` also reads other scripts' digits).
//! - "Original" emphasis leaves a chunk without weights exactly as encoded, and skips the mean
//!   restoration when the weighted mean is near 0, where A1111's division gives NaN or huge
//!   values ([`apply_emphasis`]).
//! - A1111 restores the mean over all prompts encoded in one call (several only with prompt
//!   editing); [`encode_prompt`] encodes one prompt.

use candle_core::{DType, Tensor};
use regex::Regex;
use std::sync::OnceLock;

use crate::text_encoders::clip::CLIPTextTransformer;
use crate::text_encoders::TextEncoderError;
use crate::tokenizer::{CLIPTokenizer, TokenizerError, BOS_TOKEN_ID, EOS_TOKEN_ID};

/// Tokens of the prompt in one chunk (A1111's `chunk_length`).
pub const CHUNK_LENGTH: usize = 75;

/// The longest prompt parsed or tokenized, in characters (the server's request limit too): 20,000
/// characters is some 270 chunks of 75 tokens, far past any model's use, and bounds the parse,
/// the token lists and the text-encoder passes a prompt can ask for.
pub const MAX_PROMPT_CHARS: usize = 20_000;

/// Refuses a prompt over [`MAX_PROMPT_CHARS`] before anything is allocated for it.
pub fn check_prompt_length(text: &str) -> Result<(), PromptError> {
    if text.len() > MAX_PROMPT_CHARS {
        let chars = text.chars().count();
        if chars > MAX_PROMPT_CHARS {
            return Err(PromptError::TooLong { chars, limit: MAX_PROMPT_CHARS });
        }
    }
    Ok(())
}

/// A1111's round-bracket multiplier.
const ROUND_BRACKET_MULTIPLIER: f64 = 1.1;

/// Errors of prompt parsing and encoding.
#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    /// `(text:weight)` whose weight is not a number (A1111 raises here too).
    #[error("invalid attention weight {weight:?} in `(text:weight)`; expected a number such as 1.3 or .8")]
    InvalidWeight {
        /// The characters between `:` and `)`.
        weight: String,
    },
    /// A prompt over [`MAX_PROMPT_CHARS`].
    #[error("the prompt has {chars} characters, above the limit of {limit}; shorten it (a CLIP encoder reads 75 tokens a chunk)")]
    TooLong {
        /// Its length in characters.
        chars: usize,
        /// [`MAX_PROMPT_CHARS`].
        limit: usize,
    },
    /// Tokenizing failed.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// Encoding failed.
    #[error(transparent)]
    TextEncoder(#[from] TextEncoderError),
}

impl From<candle_core::Error> for PromptError {
    fn from(err: candle_core::Error) -> Self {
        Self::TextEncoder(err.into())
    }
}

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum PromptPart {
    /// Text with its attention weight.
    Text {
        /// The text, with brackets and escapes resolved.
        text: String,
        /// Product of the enclosing brackets' multipliers.
        weight: f64,
    },
    /// `BREAK`: start a new chunk.
    Break,
}

/// How weights act on the embeddings (A1111's "Emphasis mode" setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Emphasis {
    /// "None": the prompt is not parsed; brackets and `BREAK` are plain text.
    None,
    /// "Ignore": brackets are parsed and removed, weights are not applied.
    Ignore,
    /// "Original" (A1111's default): weights applied, then the chunk's mean restored.
    #[default]
    Original,
    /// "No norm": weights applied, mean not restored.
    NoNorm,
}

/// Options of [`tokenize_prompt`] and [`encode_prompt`], with A1111's defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptOptions {
    /// Emphasis mode.
    pub emphasis: Emphasis,
    /// A1111's "Prompt word wrap length limit": how many tokens back from a full chunk's end a
    /// comma may be for the text after it to move to the next chunk; 0 disables it.
    pub comma_padding_backtrack: usize,
    /// A1111's "Clip skip" (1 = last layer); see [`CLIPTextTransformer::clip_skip_hidden_state`].
    pub clip_skip: usize,
}

impl Default for PromptOptions {
    fn default() -> Self {
        Self { emphasis: Emphasis::Original, comma_padding_backtrack: 20, clip_skip: 1 }
    }
}

/// A1111's `re_attention`: escapes, brackets, `:weight)`, plain runs, lone colons.
fn re_attention() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        // A constant pattern; its validity is checked by every test that parses a prompt.
        Regex::new(r"\\\(|\\\)|\\\[|\\\]|\\\\|\\|\(|\[|:([+-]?[.0-9]+)\)|\)|\]|[^\\()\[\]:]+|:")
            .unwrap_or_else(|err| unreachable!("constant regex: {err}"))
    })
}

/// A1111's `re_break`.
fn re_break() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"(?s)\s*\bBREAK\b\s*").unwrap_or_else(|err| unreachable!("constant regex: {err}")))
}

/// Splits a prompt into text pieces with attention weights and `BREAK`s (A1111's
/// `parse_prompt_attention`); neighbouring pieces of equal weight are merged.
pub fn parse_prompt_attention(text: &str) -> Result<Vec<PromptPart>, PromptError> {
    check_prompt_length(text)?;
    let mut res: Vec<PromptPart> = Vec::new();
    let mut round_brackets: Vec<usize> = Vec::new();
    let mut square_brackets: Vec<usize> = Vec::new();
    let square_bracket_multiplier = 1.0 / ROUND_BRACKET_MULTIPLIER;

    let multiply_range = |res: &mut [PromptPart], start: usize, multiplier: f64| {
        for part in &mut res[start..] {
            if let PromptPart::Text { weight, .. } = part {
                *weight *= multiplier;
            }
        }
    };

    for m in re_attention().captures_iter(text) {
        let token = &m[0];
        if let Some(escaped) = token.strip_prefix('\\') {
            res.push(PromptPart::Text { text: escaped.to_string(), weight: 1.0 });
        } else if token == "(" {
            round_brackets.push(res.len());
        } else if token == "[" {
            square_brackets.push(res.len());
        } else if let (Some(weight), Some(&start)) = (m.get(1), round_brackets.last()) {
            let weight: f64 = weight
                .as_str()
                .parse()
                .map_err(|_| PromptError::InvalidWeight { weight: weight.as_str().to_string() })?;
            round_brackets.pop();
            multiply_range(&mut res, start, weight);
        } else if let (")", Some(start)) = (token, round_brackets.last().copied()) {
            round_brackets.pop();
            multiply_range(&mut res, start, ROUND_BRACKET_MULTIPLIER);
        } else if let ("]", Some(start)) = (token, square_brackets.last().copied()) {
            square_brackets.pop();
            multiply_range(&mut res, start, square_bracket_multiplier);
        } else {
            for (i, part) in re_break().split(token).enumerate() {
                if i > 0 {
                    res.push(PromptPart::Break);
                }
                res.push(PromptPart::Text { text: part.to_string(), weight: 1.0 });
            }
        }
    }
    for &start in &round_brackets {
        multiply_range(&mut res, start, ROUND_BRACKET_MULTIPLIER);
    }
    for &start in &square_brackets {
        multiply_range(&mut res, start, square_bracket_multiplier);
    }
    if res.is_empty() {
        res.push(PromptPart::Text { text: String::new(), weight: 1.0 });
    }

    // Merge runs of identical weights.
    let mut merged: Vec<PromptPart> = Vec::with_capacity(res.len());
    for part in res {
        match (merged.last_mut(), part) {
            (Some(PromptPart::Text { text, weight }), PromptPart::Text { text: next, weight: w }) if *weight == w => {
                text.push_str(&next)
            }
            (_, part) => merged.push(part),
        }
    }
    Ok(merged)
}

/// One chunk: `<|startoftext|>`, 75 tokens, `<|endoftext|>`, with a weight per token.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptChunk {
    /// [`CHUNK_LENGTH`] + 2 token ids; after the first `<|endoftext|>` they are the tokenizer's
    /// pad id (A1111's `process_tokens` for SD2; SD1 pads with `<|endoftext|>` anyway).
    pub tokens: Vec<u32>,
    /// One weight per token; 1 for the special and padding tokens.
    pub multipliers: Vec<f64>,
}

/// A prompt cut into chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenizedPrompt {
    /// At least one chunk.
    pub chunks: Vec<PromptChunk>,
    /// A1111's token count: 75 per chunk before the last, plus the tokens of the last.
    pub token_count: usize,
}

/// Chunk under construction (A1111's `PromptChunk` before `next_chunk` pads it).
#[derive(Default)]
struct ChunkBuilder {
    chunks: Vec<PromptChunk>,
    tokens: Vec<u32>,
    multipliers: Vec<f64>,
    token_count: usize,
    last_comma: Option<usize>,
}

impl ChunkBuilder {
    /// A1111's `next_chunk`: pads the current chunk, wraps it in start/end tokens, starts a new one.
    fn next_chunk(&mut self, is_last: bool, pad_id: u32) {
        self.token_count += if is_last { self.tokens.len() } else { CHUNK_LENGTH };
        let mut tokens = Vec::with_capacity(CHUNK_LENGTH + 2);
        tokens.push(BOS_TOKEN_ID);
        tokens.append(&mut self.tokens);
        tokens.resize(CHUNK_LENGTH + 1, EOS_TOKEN_ID);
        tokens.push(EOS_TOKEN_ID);
        if let Some(end) = tokens.iter().position(|&t| t == EOS_TOKEN_ID) {
            tokens[end + 1..].fill(pad_id);
        }
        let mut multipliers = Vec::with_capacity(CHUNK_LENGTH + 2);
        multipliers.push(1.0);
        multipliers.append(&mut self.multipliers);
        multipliers.resize(CHUNK_LENGTH + 2, 1.0);
        self.last_comma = None;
        self.chunks.push(PromptChunk { tokens, multipliers });
    }
}

/// Parses and tokenizes a prompt into 77-token chunks with per-token weights (A1111's
/// `tokenize_line`).
pub fn tokenize_prompt(
    tokenizer: &CLIPTokenizer,
    prompt: &str,
    options: &PromptOptions,
) -> Result<TokenizedPrompt, PromptError> {
    check_prompt_length(prompt)?;
    let parsed = match options.emphasis {
        Emphasis::None => vec![PromptPart::Text { text: prompt.to_string(), weight: 1.0 }],
        _ => parse_prompt_attention(prompt)?,
    };
    let comma_token = tokenizer.token_to_id(",</w>");
    let pad_id = tokenizer.pad_token().id();
    let backtrack = options.comma_padding_backtrack;
    let mut chunk = ChunkBuilder::default();
    for part in &parsed {
        let (text, weight) = match part {
            PromptPart::Break => {
                chunk.next_chunk(false, pad_id);
                continue;
            }
            PromptPart::Text { text, weight } => (text, *weight),
        };
        for token in tokenizer.encode_raw(text)? {
            if Some(token) == comma_token {
                chunk.last_comma = Some(chunk.tokens.len());
            } else if let Some(last_comma) = chunk.last_comma.filter(|&c| {
                backtrack != 0 && chunk.tokens.len() == CHUNK_LENGTH && chunk.tokens.len() - c <= backtrack
            }) {
                // Move the text after the last comma to the next chunk.
                let reloc_tokens = chunk.tokens.split_off(last_comma + 1);
                let reloc_multipliers = chunk.multipliers.split_off(last_comma + 1);
                chunk.next_chunk(false, pad_id);
                chunk.tokens = reloc_tokens;
                chunk.multipliers = reloc_multipliers;
            }
            if chunk.tokens.len() == CHUNK_LENGTH {
                chunk.next_chunk(false, pad_id);
            }
            chunk.tokens.push(token);
            chunk.multipliers.push(weight);
        }
    }
    if !chunk.tokens.is_empty() || chunk.chunks.is_empty() {
        chunk.next_chunk(true, pad_id);
    }
    Ok(TokenizedPrompt { chunks: chunk.chunks, token_count: chunk.token_count })
}

/// Below this ratio |mean(weighted z)| / mean(|weighted z|) "Original" emphasis does not rescale:
/// the mean is then mostly cancellation, and dividing by it gives NaN or huge values. An encoder
/// whose final LayerNorm has zero bias has per-token means of 0, so the ratio is at rounding
/// level there (float32 sums of 77 × 768 values: ~1e-7); 1e-3 is far above that and far below a
/// mean that carries the embeddings' scale, where A1111's formula is kept as it is.
const MIN_MEAN_RATIO: f64 = 1e-3;

/// Applies per-token weights to a chunk's embeddings `z` [batch, tokens, hidden] (A1111's
/// `Emphasis.after_transformers`): "Original" multiplies, then rescales by
/// mean(z) / mean(weighted z) over the whole tensor; "No norm" only multiplies.
///
/// Differences from A1111, both where its formula is not a number: all-1 multipliers return `z`
/// unchanged (A1111's multiply-by-1 and rescale by mean(z) / mean(z) is the identity, except
/// that it gives NaN when mean(z) is 0), and "Original" skips the rescale, leaving the weighted
/// `z` as "No norm" does, when |mean(weighted z)| is below [`MIN_MEAN_RATIO`] times
/// mean(|weighted z|).
pub fn apply_emphasis(z: &Tensor, multipliers: &[f64], emphasis: Emphasis) -> Result<Tensor, PromptError> {
    if matches!(emphasis, Emphasis::None | Emphasis::Ignore) || multipliers.iter().all(|&m| m == 1.0) {
        return Ok(z.clone());
    }
    let (_, tokens, _) = z.dims3()?;
    // A1111 builds the multipliers with torch.asarray: float32.
    let multipliers: Vec<f32> = multipliers.iter().map(|&m| m as f32).collect();
    let multipliers = Tensor::from_vec(multipliers, (1, tokens, 1), z.device())?.to_dtype(z.dtype())?;
    let weighted = z.broadcast_mul(&multipliers)?;
    if emphasis == Emphasis::NoNorm {
        return Ok(weighted);
    }
    let original_mean = z.mean_all()?;
    let new_mean = weighted.mean_all()?;
    let scalar = |t: &Tensor| t.to_dtype(DType::F64)?.to_scalar::<f64>();
    let new_mean_f64 = scalar(&new_mean)?;
    // Written so that a NaN mean skips the rescale too.
    let well_conditioned = new_mean_f64.abs() > MIN_MEAN_RATIO * scalar(&weighted.abs()?.mean_all()?)?;
    if !well_conditioned {
        return Ok(weighted);
    }
    Ok(weighted.broadcast_mul(&(original_mean / new_mean)?)?)
}

/// Encodes a prompt as A1111 does: chunks through the text encoder (with clip skip), emphasis
/// per chunk, concatenated to [1, 77 × chunks, hidden]. Also returns the pooled output of the
/// first chunk.
pub fn encode_prompt(
    text_model: &CLIPTextTransformer,
    tokenizer: &CLIPTokenizer,
    prompt: &str,
    options: &PromptOptions,
) -> Result<(Tensor, Tensor), PromptError> {
    encode_prompt_with(tokenizer, prompt, options, text_model.device(), &mut |input_ids| {
        let output = text_model.forward(input_ids)?;
        Ok((text_model.clip_skip_hidden_state(&output, options.clip_skip)?, output.pooler_output))
    })
}

/// One chunk's ids `[1, 77]` → its embeddings `[1, 77, hidden]` and pooled vector (see
/// [`encode_prompt_with`]).
pub type ChunkEncoder<'a> = dyn FnMut(&Tensor) -> Result<(Tensor, Tensor), PromptError> + 'a;

/// The chunking and emphasis of [`encode_prompt`] around any encoder: `encode` maps one chunk's
/// ids `[1, 77]` to its embeddings `[1, 77, hidden]` and a pooled vector. SDXL runs it once per
/// text encoder (A1111/Forge weight, chunk and pad each encoder's tokens on their own) with the
/// pooled vector of the first chunk, as A1111's `zs[0].pooled`.
pub fn encode_prompt_with(
    tokenizer: &CLIPTokenizer,
    prompt: &str,
    options: &PromptOptions,
    device: &candle_core::Device,
    encode: &mut ChunkEncoder<'_>,
) -> Result<(Tensor, Tensor), PromptError> {
    let tokenized = tokenize_prompt(tokenizer, prompt, options)?;
    let mut zs = Vec::with_capacity(tokenized.chunks.len());
    let mut pooled = None;
    for chunk in &tokenized.chunks {
        let input_ids = Tensor::new(chunk.tokens.as_slice(), device)?.unsqueeze(0)?; // [1, 77]
        let (z, chunk_pooled) = encode(&input_ids)?;
        zs.push(apply_emphasis(&z, &chunk.multipliers, options.emphasis)?);
        pooled.get_or_insert(chunk_pooled);
    }
    // tokenize_prompt always returns at least one chunk (it closes a last one when there is none).
    let pooled = pooled.unwrap_or_else(|| unreachable!("tokenize_prompt returned no chunk"));
    Ok((Tensor::cat(&zs, 1)?, pooled))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(text: &str, weight: f64) -> PromptPart {
        PromptPart::Text { text: text.to_string(), weight }
    }

    /// The doctests of A1111's `parse_prompt_attention`; weights compared exactly, since the
    /// multiplications happen in the same order on f64 as in Python.
    #[test]
    fn parse_prompt_attention_matches_a1111_doctests() {
        let cases: Vec<(&str, Vec<PromptPart>)> = vec![
            ("normal text", vec![text("normal text", 1.0)]),
            ("an (important) word", vec![text("an ", 1.0), text("important", 1.1), text(" word", 1.0)]),
            ("(unbalanced", vec![text("unbalanced", 1.1)]),
            (r"\(literal\]", vec![text("(literal]", 1.0)]),
            ("(unnecessary)(parens)", vec![text("unnecessaryparens", 1.1)]),
            (
                "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
                vec![
                    text("a ", 1.0),
                    text("house", 1.5730000000000004),
                    text(" ", 1.1),
                    text("on", 1.0),
                    text(" a ", 1.1),
                    text("hill", 0.55),
                    text(", sun, ", 1.1),
                    text("sky", 1.4641000000000006),
                    text(".", 1.1),
                ],
            ),
        ];
        for (prompt, expected) in cases {
            assert_eq!(parse_prompt_attention(prompt).unwrap(), expected, "{prompt}");
        }
    }

    #[test]
    fn parse_prompt_attention_breaks_and_edge_cases() {
        assert_eq!(
            parse_prompt_attention("a cat BREAK a dog").unwrap(),
            vec![text("a cat", 1.0), PromptPart::Break, text("a dog", 1.0)]
        );
        // Not a whole word: plain text.
        assert_eq!(parse_prompt_attention("BREAKFAST").unwrap(), vec![text("BREAKFAST", 1.0)]);
        assert_eq!(parse_prompt_attention("").unwrap(), vec![text("", 1.0)]);
        // Unmatched closers and `:weight)` without an opener are literal text.
        assert_eq!(parse_prompt_attention("a) b] c:1.2)").unwrap(), vec![text("a) b] c:1.2)", 1.0)]);
        // A backslash before an ordinary character is dropped; `\\` is a backslash.
        assert_eq!(parse_prompt_attention(r"a\b \\ c").unwrap(), vec![text(r"ab \ c", 1.0)]);
        assert_eq!(parse_prompt_attention("[x]").unwrap(), vec![text("x", 1.0 / 1.1)]);
        assert_eq!(parse_prompt_attention("(x:-0.5)").unwrap(), vec![text("x", -0.5)]);
        let err = parse_prompt_attention("(x:1.2.3)").unwrap_err();
        assert!(matches!(&err, PromptError::InvalidWeight { weight } if weight == "1.2.3"), "{err}");
    }
}
