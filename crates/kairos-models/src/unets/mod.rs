//! UNets, mirroring diffusers' `models/unets/`.

pub mod unet_2d_blocks;
pub mod unet_2d_condition;
