//! LoRA key layouts → groups of tensors per layer, and layer names → diffusers weight keys.
//!
//! Layouts (parameter names are normalised to kohya's `lora_down.weight` / `lora_up.weight` /
//! `alpha`; LyCORIS parameters keep their names):
//! - kohya / A1111 / LyCORIS: `lora_unet_<layer>.<param>`, `lora_te_<layer>.<param>` (SDXL:
//!   `lora_te1_` for CLIP-L, `lora_te2_` for OpenCLIP-bigG), where `<layer>` is the module path
//!   with `.` → `_`, taken either from the diffusers UNet (`down_blocks_0_attentions_0_...`, what
//!   sd-scripts writes for SD1/SD2 and LCM-LoRA, diffusers' kohya export) or from the LDM / SGM
//!   UNet (`input_blocks_1_1_...`, A1111-era trainers and sd-scripts for SDXL). Text-encoder names
//!   are transformers' (`text_model_encoder_layers_0_self_attn_q_proj`) for SD1, SD2 and SDXL:
//!   sd-scripts trains SD2's OpenCLIP as a converted `CLIPTextModel`, whose q/k/v kairos also uses.
//! - diffusers / PEFT: `unet.<module>.lora_A.weight` / `lora_B.weight`, `text_encoder.<module>...`,
//!   `text_encoder_2.<module>...`; diffusers' older `.lora.down/.up`, `.lora_linear_layer.down/.up`
//!   and attention-processor `processor.to_q_lora.down` (`to_out_lora` → `to_out.0`; in the text
//!   encoder `to_q_lora` → `q_proj`, `to_out_lora` → `out_proj`), as diffusers'
//!   `convert_unet_state_dict_to_peft` / `DIFFUSERS_OLD_TO_PEFT` rename them.
//!
//! LDM/SGM-derived kohya names are mapped with the single-file converter (`loading::ldm::unet_key`)
//! and the model's own `layers_per_block`, so they land on the same diffusers keys as a
//! single-file checkpoint does, whatever the block layout; diffusers does the same with
//! `_maybe_map_sgm_blocks_to_diffusers`, which reads `layers_per_block` from the UNet config.
//!
//! The SDXL refiner's only encoder is OpenCLIP-bigG, named `text_encoder_2` as in diffusers, so
//! `lora_te2_` / `text_encoder_2.` layers patch it and `lora_te1_` layers find no encoder.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::LoraProblem;
use crate::loading::{ldm, Component};

/// Which model a LoRA layer patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LoraTarget {
    /// `UNet2DConditionModel`.
    Unet,
    /// The first (SD1/SD2: only) CLIP text encoder; SDXL base: CLIP-L.
    TextEncoder,
    /// SDXL's OpenCLIP-bigG (`text_encoder_2`, the refiner's only encoder).
    TextEncoder2,
}

impl LoraTarget {
    /// The component name ([`Component::name`]) this target patches.
    pub fn component_name(self) -> &'static str {
        match self {
            Self::Unet => "unet",
            Self::TextEncoder => "text_encoder",
            Self::TextEncoder2 => "text_encoder_2",
        }
    }

    /// The target of a component by its [`Component::name`] (the inverse of
    /// [`component_name`](Self::component_name)).
    pub fn of_component(name: &str) -> Option<Self> {
        [Self::Unet, Self::TextEncoder, Self::TextEncoder2].into_iter().find(|t| t.component_name() == name)
    }

    /// kohya prefixes (without the trailing `_`) → target. `lora_te_` is SD1/SD2's encoder,
    /// `lora_te1_` / `lora_te2_` SDXL's (sd-scripts' `LORA_PREFIX_TEXT_ENCODER1/2`).
    const KOHYA_PREFIXES: [(&'static str, Self); 4] = [
        ("lora_unet_", Self::Unet),
        ("lora_te_", Self::TextEncoder),
        ("lora_te1_", Self::TextEncoder),
        ("lora_te2_", Self::TextEncoder2),
    ];

    /// diffusers / PEFT key prefixes → target.
    const DOTTED_PREFIXES: [(&'static str, Self); 3] =
        [("unet.", Self::Unet), ("text_encoder.", Self::TextEncoder), ("text_encoder_2.", Self::TextEncoder2)];
}

/// How a layer is named in the file.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum LayerName {
    /// kohya: the module path with `_` for `.` (without `lora_unet_` / `lora_te*_`).
    Kohya(String),
    /// diffusers: the module path (text-encoder paths without their `text_model.` fixed).
    Dotted(String),
}

/// The tensors of one layer, parameters under normalised names.
#[derive(Debug)]
pub(crate) struct LayerGroup {
    pub target: LoraTarget,
    pub name: LayerName,
    /// The layer's name in the file, for messages.
    pub file_name: String,
    pub params: BTreeMap<String, Tensor>,
}

/// diffusers suffixes → kohya parameter names. Longest first where one ends another.
const DOTTED_SUFFIXES: &[(&str, &str)] = &[
    (".lora_A.weight", "lora_down.weight"),
    (".lora_B.weight", "lora_up.weight"),
    (".lora_linear_layer.down.weight", "lora_down.weight"),
    (".lora_linear_layer.up.weight", "lora_up.weight"),
    (".lora.down.weight", "lora_down.weight"),
    (".lora.up.weight", "lora_up.weight"),
    ("_lora.down.weight", "lora_down.weight"),
    ("_lora.up.weight", "lora_up.weight"),
    (".alpha", "alpha"),
];

fn unknown_layout(key: &str) -> LoraProblem {
    LoraProblem {
        key: key.to_string(),
        reason: "unknown LoRA key layout; accepted: kohya/LyCORIS `lora_unet_*` / `lora_te_*` / \
                 `lora_te1_*` / `lora_te2_*` (.lora_down/.lora_up/.alpha, hada_*, lokr_*, diff), \
                 diffusers/PEFT `unet.*` / `text_encoder.*` / `text_encoder_2.*` (lora_A/lora_B, \
                 .lora.down/.up, lora_linear_layer, *_lora)"
            .into(),
    }
}

/// Splits a diffusers / PEFT key into (target, module path, normalised parameter).
fn parse_dotted(key: &str) -> Option<(LoraTarget, String, &'static str)> {
    let (target, rest) = LoraTarget::DOTTED_PREFIXES.iter().find_map(|(p, t)| Some((*t, key.strip_prefix(p)?)))?;
    let (module, param) = DOTTED_SUFFIXES.iter().find_map(|(s, p)| rest.strip_suffix(s).map(|m| (m, *p)))?;
    let is_processor = key.ends_with("_lora.down.weight") || key.ends_with("_lora.up.weight");
    let module = if is_processor {
        // `attn1.processor.to_q_lora` → `attn1.to_q`; text encoder `self_attn.to_q_lora` → `q_proj`.
        let module = module.replace(".processor.", ".");
        let (parent, leaf) = module.rsplit_once('.')?;
        let leaf = match (target == LoraTarget::Unet, leaf) {
            (true, "to_out") => "to_out.0",
            (true, l @ ("to_q" | "to_k" | "to_v")) => l,
            (false, "to_q") => "q_proj",
            (false, "to_k") => "k_proj",
            (false, "to_v") => "v_proj",
            (false, "to_out") => "out_proj",
            _ => return None,
        };
        format!("{parent}.{leaf}")
    } else {
        module.to_string()
    };
    Some((target, module, param))
}

/// Groups the tensors of a LoRA file by layer. Keys that fit no layout are returned as problems.
pub(crate) fn group(tensors: HashMap<String, Tensor>) -> (Vec<LayerGroup>, Vec<LoraProblem>) {
    let mut groups: BTreeMap<(LoraTarget, LayerName), LayerGroup> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut keys: Vec<String> = tensors.keys().cloned().collect();
    keys.sort();
    let mut tensors = tensors;
    for key in keys {
        let Some(tensor) = tensors.remove(&key) else {
            continue;
        };
        let kohya = key.split_once('.').and_then(|(name, param)| {
            let (target, layer) =
                LoraTarget::KOHYA_PREFIXES.iter().find_map(|(p, t)| Some((*t, name.strip_prefix(p)?)))?;
            Some((target, LayerName::Kohya(layer.to_string()), name, param.to_string()))
        });
        let parsed = kohya.or_else(|| {
            let (target, module, param) = parse_dotted(&key)?;
            Some((target, LayerName::Dotted(module), "", param.to_string()))
        });
        let Some((target, name, file_name, param)) = parsed else {
            problems.push(unknown_layout(&key));
            continue;
        };
        let file_name = if file_name.is_empty() {
            match &name {
                LayerName::Dotted(m) => format!("{}.{m}", target.component_name()),
                LayerName::Kohya(k) => k.clone(),
            }
        } else {
            file_name.to_string()
        };
        groups
            .entry((target, name.clone()))
            .or_insert_with(|| LayerGroup { target, name, file_name, params: BTreeMap::new() })
            .params
            .insert(param, tensor);
    }
    (groups.into_values().collect(), problems)
}

/// Resolves layer names to the diffusers weight keys of one component.
pub(crate) struct Resolver<'a> {
    base: &'a Component,
    /// kohya-style name (`.` → `_`) → module path, for every weight of the component.
    kohya: HashMap<String, String>,
    /// `layers_per_block` of the UNet, for LDM block indices (`None` for the text encoder).
    layers_per_block: Option<usize>,
}

impl<'a> Resolver<'a> {
    pub fn new(base: &'a Component) -> Self {
        let kohya = base
            .keys()
            .filter_map(|k| k.strip_suffix(".weight"))
            .map(|m| (m.replace('.', "_"), m.to_string()))
            .collect();
        let layers_per_block = base
            .config
            .get("layers_per_block")
            .and_then(serde_json::Value::as_u64)
            .and_then(|n| usize::try_from(n).ok());
        Self { base, kohya, layers_per_block }
    }

    /// The component resolved against.
    pub fn base(&self) -> &'a Component {
        self.base
    }

    /// The diffusers weight key (`<module>.weight`) that a layer patches, with its shape.
    pub fn weight_key(&self, name: &LayerName) -> Option<(String, Vec<usize>)> {
        let module = match name {
            // PEFT text-encoder LoRAs of some trainers drop transformers' `text_model.` prefix.
            LayerName::Dotted(m) => [m.clone(), format!("text_model.{m}")]
                .into_iter()
                .find(|m| self.base.shape(&format!("{m}.weight")).is_some()),
            LayerName::Kohya(k) => self.kohya.get(k.as_str()).cloned().or_else(|| {
                let lpb = self.layers_per_block?;
                let diffusers = ldm_kohya_to_diffusers(k, lpb)?;
                self.kohya.get(&diffusers.replace('.', "_")).cloned()
            }),
        }?;
        let key = format!("{module}.weight");
        let shape = self.base.shape(&key)?.to_vec();
        Some((key, shape))
    }
}

/// An LDM-derived kohya UNet name (`input_blocks_1_1_transformer_blocks_0_attn1_to_q`) → the
/// diffusers module path, possibly with `_` left inside the block-local part (the caller matches
/// it in kohya form).
fn ldm_kohya_to_diffusers(name: &str, lpb: usize) -> Option<String> {
    // LDM ResBlock sublayers are `<name>.<index>`; everything else inside a block keeps its
    // underscores, which `unet_key` carries through unchanged.
    let dot_resnet = |rest: &str| -> String {
        for sub in ["in_layers_", "out_layers_", "emb_layers_"] {
            if let Some(i) = rest.strip_prefix(sub) {
                return format!("{}.{i}", sub.trim_end_matches('_'));
            }
        }
        rest.to_string()
    };
    let with_rest = |head: String, rest: &str| {
        if rest.is_empty() {
            format!("{head}.weight")
        } else {
            format!("{head}.{}.weight", dot_resnet(rest))
        }
    };
    let split_num = |s: &str| -> Option<(usize, String)> {
        let (n, rest) = s.split_once('_').unwrap_or((s, ""));
        Some((n.parse().ok()?, rest.to_string()))
    };
    // `<block>_<i>_<j>_<rest>`; `label_emb` is SDXL's size/crop embedding MLP (`label_emb.0.0/0.2`).
    let two_indices = ["input_blocks", "output_blocks", "label_emb"].iter().find_map(|block| {
        let r = name.strip_prefix(block)?.strip_prefix('_')?;
        Some((block, r))
    });
    let ldm_key = if let Some((block, r)) = two_indices {
        let (i, r) = split_num(r)?;
        let (j, r) = split_num(&r)?;
        with_rest(format!("{block}.{i}.{j}"), &r)
    } else if let Some(r) = name.strip_prefix("middle_block_") {
        let (k, r) = split_num(r)?;
        with_rest(format!("middle_block.{k}"), &r)
    } else if let Some(r) = name.strip_prefix("time_embed_") {
        format!("time_embed.{r}.weight")
    } else if let Some(r) = name.strip_prefix("out_") {
        format!("out.{r}.weight")
    } else {
        return None;
    };
    ldm::unet_key(&ldm_key, lpb)?.strip_suffix(".weight").map(str::to_string)
}

/// A layer's module path in diffusers naming with `_` for `.`, from the file alone (no model):
/// for recognising which kinds of layers a file trains. LDM/SGM names are converted with
/// `layers_per_block` 2, which can move block indices but never the layer kind at the end
/// (`in_layers_2` → `conv1`, `0_op` → `downsamplers_0_conv`).
pub(crate) fn diffusers_like_name(name: &LayerName) -> String {
    match name {
        LayerName::Kohya(k) => ldm_kohya_to_diffusers(k, 2).unwrap_or_else(|| k.clone()).replace('.', "_"),
        LayerName::Dotted(d) => d.replace('.', "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldm_names_map_like_the_single_file_converter() {
        // (name, layers_per_block, diffusers module path); SD1 and SDXL have 2.
        let cases = [
            (
                "input_blocks_1_1_transformer_blocks_0_attn1_to_q",
                2,
                "down_blocks.0.attentions.0.transformer_blocks_0_attn1_to_q",
            ),
            ("input_blocks_4_0_in_layers_2", 2, "down_blocks.1.resnets.0.conv1"),
            ("input_blocks_4_0_skip_connection", 2, "down_blocks.1.resnets.0.conv_shortcut"),
            ("input_blocks_3_0_op", 2, "down_blocks.0.downsamplers.0.conv"),
            ("input_blocks_0_0", 2, "conv_in"),
            ("middle_block_0_emb_layers_1", 2, "mid_block.resnets.0.time_emb_proj"),
            ("middle_block_1_proj_in", 2, "mid_block.attentions.0.proj_in"),
            ("output_blocks_2_1_conv", 2, "up_blocks.0.upsamplers.0.conv"),
            ("output_blocks_5_2_conv", 2, "up_blocks.1.upsamplers.0.conv"),
            ("output_blocks_11_0_out_layers_3", 2, "up_blocks.3.resnets.2.conv2"),
            ("time_embed_2", 2, "time_embedding.linear_2"),
            ("out_2", 2, "conv_out"),
            // SDXL: the size/crop embedding, and SDXL 1.0's third block.
            ("label_emb_0_0", 2, "add_embedding.linear_1"),
            ("label_emb_0_2", 2, "add_embedding.linear_2"),
            (
                "input_blocks_7_1_transformer_blocks_9_ff_net_2",
                2,
                "down_blocks.2.attentions.0.transformer_blocks_9_ff_net_2",
            ),
            // layers_per_block 1: input_blocks 1, 2 are block 0's resnet and downsampler.
            ("input_blocks_2_0_op", 1, "down_blocks.0.downsamplers.0.conv"),
            ("output_blocks_3_0_emb_layers_1", 1, "up_blocks.1.resnets.1.time_emb_proj"),
        ];
        for (k, lpb, want) in cases {
            assert_eq!(ldm_kohya_to_diffusers(k, lpb).as_deref(), Some(want), "{k}");
        }
        assert_eq!(ldm_kohya_to_diffusers("input_blocks_x_1_proj_in", 2), None);
    }

    #[test]
    fn dotted_names_normalise_like_diffusers() {
        let p = parse_dotted;
        assert_eq!(
            p("unet.a.attn1.processor.to_out_lora.up.weight"),
            Some((LoraTarget::Unet, "a.attn1.to_out.0".into(), "lora_up.weight"))
        );
        assert_eq!(
            p("text_encoder.text_model.encoder.layers.0.self_attn.to_k_lora.down.weight"),
            Some((LoraTarget::TextEncoder, "text_model.encoder.layers.0.self_attn.k_proj".into(), "lora_down.weight"))
        );
        assert_eq!(
            p("unet.a.ff.net.2.lora.down.weight"),
            Some((LoraTarget::Unet, "a.ff.net.2".into(), "lora_down.weight"))
        );
        assert_eq!(p("vae.a.lora_A.weight"), None);
        assert_eq!(
            p("text_encoder_2.text_model.encoder.layers.3.mlp.fc1.lora_A.weight"),
            Some((LoraTarget::TextEncoder2, "text_model.encoder.layers.3.mlp.fc1".into(), "lora_down.weight"))
        );
        assert_eq!(
            p("text_encoder_2.text_model.encoder.layers.0.self_attn.processor.to_out_lora.up.weight"),
            Some((LoraTarget::TextEncoder2, "text_model.encoder.layers.0.self_attn.out_proj".into(), "lora_up.weight"))
        );
    }
}
