//! Mirrors diffusers 0.42.1 `models/unets/unet_2d_blocks.py`: `CrossAttnDownBlock2D`,
//! `DownBlock2D`, `UNetMidBlock2DCrossAttn`, `CrossAttnUpBlock2D`, `UpBlock2D`.
//!
//! Differences:
//! - Constructors take the resnet settings as a [`ResnetBlock2DConfig`] template (its
//!   `out_channels` is set per resnet) and the attention settings as [`CrossAttnArgs`], instead
//!   of diffusers' flat keyword lists; `add_downsample` carries the downsample padding.
//! - Absent: `dual_cross_attention`, `only_cross_attention`, attention masks, ControlNet/T2I
//!   residuals, FreeU, gradient checkpointing, dropout.
//! - Up blocks take the skip connections as a slice and consume it from the end, as diffusers
//!   does with `res_hidden_states_tuple[-1]`.

use candle_core::Tensor;
use candle_nn::VarBuilder;

use crate::error::{ModelError, Result};
use crate::resnet::{Downsample2D, ResnetBlock2D, ResnetBlock2DConfig, Upsample2D};
use crate::transformers::transformer_2d::{Transformer2DModel, Transformer2DModelConfig};

/// The attention settings the cross-attention blocks pass to each `Transformer2DModel`.
#[derive(Debug, Clone)]
pub struct CrossAttnArgs {
    /// Heads; the head width is `out_channels / num_attention_heads`.
    pub num_attention_heads: usize,
    /// `BasicTransformerBlock`s per `Transformer2DModel`.
    pub transformer_layers_per_block: usize,
    /// Channels of `encoder_hidden_states`.
    pub cross_attention_dim: usize,
    /// Linear `proj_in`/`proj_out` (SD2).
    pub use_linear_projection: bool,
    /// Upcast `q·kᵀ` (SD2.1-v).
    pub upcast_attention: bool,
}

impl CrossAttnArgs {
    fn transformer(&self, channels: usize, norm_num_groups: usize) -> Result<Transformer2DModelConfig> {
        let heads = self.num_attention_heads;
        if heads == 0 || !channels.is_multiple_of(heads) {
            return Err(ModelError::InvalidConfig {
                field: "attention_head_dim",
                reason: format!("{heads} heads do not divide the block's {channels} channels"),
            });
        }
        Ok(Transformer2DModelConfig {
            num_attention_heads: heads,
            attention_head_dim: channels / heads,
            in_channels: channels,
            num_layers: self.transformer_layers_per_block,
            norm_num_groups,
            cross_attention_dim: self.cross_attention_dim,
            use_linear_projection: self.use_linear_projection,
            upcast_attention: self.upcast_attention,
        })
    }
}

fn resnet(
    vb: VarBuilder,
    in_channels: usize,
    out_channels: usize,
    template: &ResnetBlock2DConfig,
) -> Result<ResnetBlock2D> {
    let config = ResnetBlock2DConfig { out_channels: Some(out_channels), ..template.clone() };
    ResnetBlock2D::new(vb, in_channels, &config)
}

/// The down blocks' `downsamplers.0`: a stride-2 3×3 convolution with the given padding.
fn downsampler(vb: VarBuilder, channels: usize, padding: Option<usize>) -> Result<Option<Downsample2D>> {
    padding
        .map(|padding| Downsample2D::new(vb.pp("downsamplers").pp(0), channels, true, Some(channels), padding))
        .transpose()
}

/// The up blocks' `upsamplers.0`: nearest ×2 then a 3×3 convolution.
fn upsampler(vb: VarBuilder, channels: usize, add_upsample: bool) -> Result<Option<Upsample2D>> {
    add_upsample.then(|| Upsample2D::new(vb.pp("upsamplers").pp(0), channels, true, Some(channels))).transpose()
}

/// Pops the skip connection of up-block resnet `i` (the last one left), erroring if none is left.
fn skip(res_hidden_states_tuple: &[Tensor], i: usize, needed: usize) -> Result<&Tensor> {
    if res_hidden_states_tuple.len() != needed {
        return Err(ModelError::BadInput {
            name: "res_hidden_states_tuple",
            expected: format!("{needed} skip connections"),
            got: vec![res_hidden_states_tuple.len()],
        });
    }
    Ok(&res_hidden_states_tuple[needed - 1 - i])
}

/// `CrossAttnDownBlock2D`: `num_layers` × (resnet, transformer), then an optional downsampler.
#[derive(Debug, Clone)]
pub struct CrossAttnDownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    downsamplers: Option<Downsample2D>,
}

impl CrossAttnDownBlock2D {
    /// Builds the block under `vb` (e.g. `down_blocks.0`); `add_downsample` is the downsample
    /// padding, `None` for the last block.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        resnet_config: &ResnetBlock2DConfig,
        attn: &CrossAttnArgs,
        add_downsample: Option<usize>,
    ) -> Result<Self> {
        let transformer = attn.transformer(out_channels, resnet_config.groups)?;
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let in_channels = if i == 0 { in_channels } else { out_channels };
            resnets.push(resnet(vb.pp("resnets").pp(i), in_channels, out_channels, resnet_config)?);
            attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), &transformer)?);
        }
        let downsamplers = downsampler(vb, out_channels, add_downsample)?;
        Ok(Self { resnets, attentions, downsamplers })
    }

    /// Returns the output and the skip connections (one per resnet, plus the downsampled one).
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hidden_states = hidden_states.clone();
        let mut output_states = Vec::with_capacity(self.resnets.len() + 1);
        for (resnet, attn) in self.resnets.iter().zip(&self.attentions) {
            hidden_states = resnet.forward(&hidden_states, temb)?;
            hidden_states = attn.forward(&hidden_states, encoder_hidden_states)?;
            output_states.push(hidden_states.clone());
        }
        if let Some(downsampler) = &self.downsamplers {
            hidden_states = downsampler.forward(&hidden_states)?;
            output_states.push(hidden_states.clone());
        }
        Ok((hidden_states, output_states))
    }
}

/// `DownBlock2D`: `num_layers` resnets, then an optional downsampler.
#[derive(Debug, Clone)]
pub struct DownBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsamplers: Option<Downsample2D>,
}

impl DownBlock2D {
    /// Builds the block under `vb`; `add_downsample` is the downsample padding.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        out_channels: usize,
        num_layers: usize,
        resnet_config: &ResnetBlock2DConfig,
        add_downsample: Option<usize>,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|i| {
                let in_channels = if i == 0 { in_channels } else { out_channels };
                resnet(vb.pp("resnets").pp(i), in_channels, out_channels, resnet_config)
            })
            .collect::<Result<Vec<_>>>()?;
        let downsamplers = downsampler(vb, out_channels, add_downsample)?;
        Ok(Self { resnets, downsamplers })
    }

    /// Returns the output and the skip connections (one per resnet, plus the downsampled one).
    pub fn forward(&self, hidden_states: &Tensor, temb: Option<&Tensor>) -> Result<(Tensor, Vec<Tensor>)> {
        let mut hidden_states = hidden_states.clone();
        let mut output_states = Vec::with_capacity(self.resnets.len() + 1);
        for resnet in &self.resnets {
            hidden_states = resnet.forward(&hidden_states, temb)?;
            output_states.push(hidden_states.clone());
        }
        if let Some(downsampler) = &self.downsamplers {
            hidden_states = downsampler.forward(&hidden_states)?;
            output_states.push(hidden_states.clone());
        }
        Ok((hidden_states, output_states))
    }
}

/// `UNetMidBlock2DCrossAttn`: a resnet, then `num_layers` × (transformer, resnet).
#[derive(Debug, Clone)]
pub struct UNetMidBlock2DCrossAttn {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
}

impl UNetMidBlock2DCrossAttn {
    /// Builds the block under `vb` (`mid_block`); channels stay `in_channels`. The resnets'
    /// `output_scale_factor` is the UNet's `mid_block_scale_factor`.
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        num_layers: usize,
        resnet_config: &ResnetBlock2DConfig,
        attn: &CrossAttnArgs,
    ) -> Result<Self> {
        let transformer = attn.transformer(in_channels, resnet_config.groups)?;
        let mut resnets = vec![resnet(vb.pp("resnets").pp(0), in_channels, in_channels, resnet_config)?];
        let mut attentions = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), &transformer)?);
            resnets.push(resnet(vb.pp("resnets").pp(i + 1), in_channels, in_channels, resnet_config)?);
        }
        Ok(Self { resnets, attentions })
    }

    /// `[N, C, H, W]` → `[N, C, H, W]`.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let mut hidden_states = self.resnets[0].forward(hidden_states, temb)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            hidden_states = attn.forward(&hidden_states, encoder_hidden_states)?;
            hidden_states = resnet.forward(&hidden_states, temb)?;
        }
        Ok(hidden_states)
    }
}

/// `CrossAttnUpBlock2D`: `num_layers` × (concat skip, resnet, transformer), then an optional
/// upsampler.
#[derive(Debug, Clone)]
pub struct CrossAttnUpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2DModel>,
    upsamplers: Option<Upsample2D>,
}

/// Input channels of up-block resnet `i`: the previous output plus the skip connection.
fn up_resnet_in_channels(
    i: usize,
    num_layers: usize,
    in_channels: usize,
    prev_output_channel: usize,
    out_channels: usize,
) -> usize {
    let res_skip_channels = if i == num_layers - 1 { in_channels } else { out_channels };
    let resnet_in_channels = if i == 0 { prev_output_channel } else { out_channels };
    resnet_in_channels + res_skip_channels
}

impl CrossAttnUpBlock2D {
    /// Builds the block under `vb` (e.g. `up_blocks.1`).
    #[allow(clippy::too_many_arguments)] // mirrors diffusers' constructor
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        prev_output_channel: usize,
        out_channels: usize,
        num_layers: usize,
        resnet_config: &ResnetBlock2DConfig,
        attn: &CrossAttnArgs,
        add_upsample: bool,
    ) -> Result<Self> {
        let transformer = attn.transformer(out_channels, resnet_config.groups)?;
        let mut resnets = Vec::with_capacity(num_layers);
        let mut attentions = Vec::with_capacity(num_layers);
        for i in 0..num_layers {
            let in_ch = up_resnet_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels);
            resnets.push(resnet(vb.pp("resnets").pp(i), in_ch, out_channels, resnet_config)?);
            attentions.push(Transformer2DModel::new(vb.pp("attentions").pp(i), &transformer)?);
        }
        let upsamplers = upsampler(vb, out_channels, add_upsample)?;
        Ok(Self { resnets, attentions, upsamplers })
    }

    /// The number of skip connections `forward` consumes.
    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// `res_hidden_states_tuple` holds exactly [`Self::num_resnets`] skip connections, consumed
    /// from the end; `upsample_size` forces the upsampled size.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        res_hidden_states_tuple: &[Tensor],
        temb: Option<&Tensor>,
        encoder_hidden_states: &Tensor,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let n = self.resnets.len();
        let mut hidden_states = hidden_states.clone();
        for (i, (resnet, attn)) in self.resnets.iter().zip(&self.attentions).enumerate() {
            let res_hidden_states = skip(res_hidden_states_tuple, i, n)?;
            hidden_states = Tensor::cat(&[&hidden_states, res_hidden_states], 1)?;
            hidden_states = resnet.forward(&hidden_states, temb)?;
            hidden_states = attn.forward(&hidden_states, encoder_hidden_states)?;
        }
        match &self.upsamplers {
            Some(upsampler) => upsampler.forward(&hidden_states, upsample_size),
            None => Ok(hidden_states),
        }
    }
}

/// `UpBlock2D`: `num_layers` × (concat skip, resnet), then an optional upsampler.
#[derive(Debug, Clone)]
pub struct UpBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsamplers: Option<Upsample2D>,
}

impl UpBlock2D {
    /// Builds the block under `vb` (e.g. `up_blocks.0`).
    pub fn new(
        vb: VarBuilder,
        in_channels: usize,
        prev_output_channel: usize,
        out_channels: usize,
        num_layers: usize,
        resnet_config: &ResnetBlock2DConfig,
        add_upsample: bool,
    ) -> Result<Self> {
        let resnets = (0..num_layers)
            .map(|i| {
                let in_ch = up_resnet_in_channels(i, num_layers, in_channels, prev_output_channel, out_channels);
                resnet(vb.pp("resnets").pp(i), in_ch, out_channels, resnet_config)
            })
            .collect::<Result<Vec<_>>>()?;
        let upsamplers = upsampler(vb, out_channels, add_upsample)?;
        Ok(Self { resnets, upsamplers })
    }

    /// The number of skip connections `forward` consumes.
    pub fn num_resnets(&self) -> usize {
        self.resnets.len()
    }

    /// As [`CrossAttnUpBlock2D::forward`], without cross-attention.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        res_hidden_states_tuple: &[Tensor],
        temb: Option<&Tensor>,
        upsample_size: Option<(usize, usize)>,
    ) -> Result<Tensor> {
        let n = self.resnets.len();
        let mut hidden_states = hidden_states.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            let res_hidden_states = skip(res_hidden_states_tuple, i, n)?;
            hidden_states = Tensor::cat(&[&hidden_states, res_hidden_states], 1)?;
            hidden_states = resnet.forward(&hidden_states, temb)?;
        }
        match &self.upsamplers {
            Some(upsampler) => upsampler.forward(&hidden_states, upsample_size),
            None => Ok(hidden_states),
        }
    }
}
