//! `kairos serve`: the A1111 API, kairos' endpoints and the web UI (see `kairos-server`).

use std::path::PathBuf;

use clap::Args;
use kairos_pipeline::ModelOptions;
use kairos_server::ServerConfig;

/// Arguments of `kairos serve`.
#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Checkpoints: .safetensors/.ckpt files and diffusers folders, searched recursively; a
    /// request names a model only by an entry of this folder.
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// LoRAs for `<lora:NAME:WEIGHT>` prompt tags (NAME.safetensors, searched recursively).
    #[arg(long)]
    lora_dir: Option<PathBuf>,
    /// VAEs for the `sd_vae` option (files or diffusers folders).
    #[arg(long)]
    vae_dir: Option<PathBuf>,
    /// TAESD (folder or decoder file) for live previews; without it previews use the
    /// latent → RGB approximation.
    #[arg(long)]
    taesd: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7860")]
    listen: String,
    /// HTTP basic auth on every route, UI included: user:pass[,user2:pass2].
    #[arg(long)]
    api_auth: Option<String>,
    /// Jobs that may wait in the queue (one more runs); a full queue answers 503 with Retry-After.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    queue_size: u64,
    /// Origins allowed by CORS, comma-separated (`*` for any); off by default.
    #[arg(long, value_delimiter = ',')]
    cors_allow_origins: Vec<String>,
    /// Largest width x height x batch_size a request may ask for.
    #[arg(long, default_value_t = 2048 * 2048)]
    max_pixels: u64,
    /// Memory budget of the model cache in MiB (file sizes; the least recently used model goes
    /// first; one model is always kept).
    #[arg(long, default_value_t = 16384)]
    model_cache_mb: u64,
    /// Dtype of the network weights: auto (the default) picks the faster of f32 and bf16 on this
    /// CPU at start-up, from a short probe cached in the user's cache directory (f16 on a GPU).
    #[arg(long, value_enum, default_value_t, env = "KAIROS_DTYPE")]
    dtype: super::DtypeArg,
    /// Compute device: cpu, cuda[:N] or metal[:N].
    #[arg(long, default_value = "cpu")]
    device: super::DeviceArg,
    #[command(flatten)]
    hints: super::inspect::HintArgs,
}

/// Runs `kairos serve`.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let auth = match &args.api_auth {
        Some(text) => kairos_server::parse_auth(text).map_err(|e| anyhow::anyhow!("--api-auth: {e}"))?,
        None => Vec::new(),
    };
    let device = args.device.device()?;
    let (dtype, _) = args.dtype.resolve(&device);
    let config = ServerConfig {
        models_dir: args.models_dir,
        lora_dir: args.lora_dir,
        vae_dir: args.vae_dir,
        taesd: args.taesd,
        queue_size: args.queue_size as usize,
        max_pixels: args.max_pixels,
        auth,
        cors_allow_origins: args.cors_allow_origins,
        model_cache_bytes: args.model_cache_mb << 20,
        model_options: ModelOptions { load: args.hints.load_options(), dtype, device, ..ModelOptions::default() },
    };
    kairos_server::run(&args.listen, config)?;
    Ok(())
}
