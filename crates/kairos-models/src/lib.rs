//! Model components on candle. Each module mirrors the diffusers (or transformers) module of the
//! same name, so that struct fields map one-to-one onto the diffusers state-dict keys.

// CLIP tokenizer and text encoders (transformers' models/clip), A1111 prompt syntax.
pub mod prompt;
pub mod text_encoders;
pub mod tokenizer;

pub mod activations;
pub mod attention_processor;
pub mod autoencoders;
pub mod error;
pub mod loading;
pub mod resnet;

pub use error::ModelError;
pub mod attention;
pub mod embeddings;
pub mod transformers;
pub mod unets;
