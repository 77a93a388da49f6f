//! Model components on candle. Each module mirrors the diffusers (or transformers) module of the
//! same name, so that struct fields map one-to-one onto the diffusers state-dict keys.

pub mod activations;
pub mod attention;
pub mod attention_processor;
pub mod autoencoders;
pub mod embeddings;
pub mod error;
pub mod loading;
// LoRA / LyCORIS merging at load time; LCM pieces (w-embedding, boundary conditions, timesteps).
pub mod lcm;
pub mod lora;
pub mod resnet;
pub mod transformers;
pub mod unets;

// CLIP tokenizer and text encoders (transformers' models/clip), A1111 prompt syntax.
pub mod prompt;
pub mod text_encoders;
pub mod tokenizer;

pub use error::ModelError;
