//! Transformer models, mirroring diffusers' `models/transformers/`.

pub mod transformer_2d;
