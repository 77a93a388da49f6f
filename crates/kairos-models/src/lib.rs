//! Model components on candle. Each module mirrors the diffusers (or transformers) module of the
//! same name, so that struct fields map one-to-one onto the diffusers state-dict keys.

mod error;
pub mod loading;

pub use error::ModelError;
