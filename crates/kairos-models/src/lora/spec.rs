//! How users name LoRAs: `--lora FILE[:STRENGTH]`, A1111's `<lora:NAME:STRENGTH>` prompt tags,
//! and the `--lora-dir` lookup of tag names.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;

use regex::Regex;

use super::LoraError;

/// A `--lora FILE[:STRENGTH]` argument. The strength (default 1) applies to UNet and text encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    /// The LoRA file.
    pub path: PathBuf,
    /// Multiplier of ΔW.
    pub strength: f64,
}

fn bad(text: &str, reason: impl Into<String>) -> LoraError {
    LoraError::BadReference { text: text.to_string(), reason: reason.into() }
}

fn finite(text: &str, s: &str) -> Result<f64, LoraError> {
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        _ => Err(bad(text, format!("strength `{s}` is not a finite number"))),
    }
}

impl FromStr for LoraSpec {
    type Err = LoraError;

    /// `FILE` or `FILE:STRENGTH`. The text after the last `:` is a strength only if it parses as
    /// a number, so paths with colons (`C:\loras\x.safetensors`) still work without one.
    fn from_str(text: &str) -> Result<Self, LoraError> {
        let (path, strength) = match text.rsplit_once(':') {
            Some((p, s)) if s.trim().parse::<f64>().is_ok() => (p, finite(text, s)?),
            _ => (text, 1.0),
        };
        if path.is_empty() {
            return Err(bad(text, "expected FILE[:STRENGTH], e.g. `style.safetensors:0.8`"));
        }
        Ok(Self { path: PathBuf::from(path), strength })
    }
}

/// A LoRA named in a prompt tag.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptLora {
    /// The name (a file stem, or a path relative to the LoRA directory, without extension).
    pub name: String,
    /// UNet multiplier.
    pub unet_strength: f64,
    /// Text-encoder multiplier.
    pub text_encoder_strength: f64,
}

/// Removes A1111's LoRA tags from a prompt and returns them: `<lora:NAME>`, `<lora:NAME:W>`,
/// `<lora:NAME:TE:UNET>` and the named forms `te=W`, `unet=W` (A1111's `extra_networks_lora`:
/// the UNet multiplier defaults to the text-encoder one). `<lyco:...>` is read the same way, as
/// A1111 does since 1.5. Other `<...>` text is left in the prompt.
pub fn extract_prompt_loras(prompt: &str) -> Result<(String, Vec<PromptLora>), LoraError> {
    static RE: OnceLock<Regex> = OnceLock::new();
    // A1111's re_extra_net, restricted to the network types handled here.
    let re = RE.get_or_init(|| {
        // A constant pattern; its validity is checked by the prompt-tag tests.
        Regex::new(r"<(?:lora|lyco):([^>]+)>").unwrap_or_else(|err| unreachable!("constant regex: {err}"))
    });
    let mut loras = Vec::new();
    for cap in re.captures_iter(prompt) {
        let (whole, args) = (&cap[0], &cap[1]);
        let mut parts = args.split(':');
        let name = parts.next().unwrap_or("").trim();
        if name.is_empty() {
            return Err(bad(whole, "no LoRA name; expected <lora:NAME[:WEIGHT[:UNET_WEIGHT]]>"));
        }
        let (mut te, mut unet) = (None, None);
        let mut positional = 0;
        for p in parts {
            match p.split_once('=') {
                Some(("te", v)) => te = Some(finite(whole, v)?),
                Some(("unet", v)) => unet = Some(finite(whole, v)?),
                Some((k, _)) => return Err(bad(whole, format!("unknown argument `{k}`; accepted: te=, unet="))),
                None => {
                    positional += 1;
                    match positional {
                        1 => te = Some(finite(whole, p)?),
                        2 => unet = Some(finite(whole, p)?),
                        _ => return Err(bad(whole, "too many weights; expected <lora:NAME[:WEIGHT[:UNET_WEIGHT]]>")),
                    }
                }
            }
        }
        let te = te.unwrap_or(1.0);
        loras.push(PromptLora { name: name.to_string(), text_encoder_strength: te, unet_strength: unet.unwrap_or(te) });
    }
    Ok((re.replace_all(prompt, "").into_owned(), loras))
}

/// Finds the file of a prompt-tag LoRA in `dir` (searched recursively): `NAME.safetensors`,
/// where NAME is a file stem or a path relative to `dir`. Not found or ambiguous is an error.
pub fn resolve_lora(name: &str, dir: &Path) -> Result<PathBuf, LoraError> {
    let not_found = |reason: String| LoraError::NotFound { name: name.to_string(), dir: dir.to_path_buf(), reason };
    let direct = dir.join(format!("{name}.safetensors"));
    if direct.is_file() {
        return Ok(direct);
    }
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| not_found(format!("cannot read {}: {e}", d.display())))?;
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
                && p.file_stem().is_some_and(|s| s == name)
            {
                found.push(p);
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(not_found(format!("no {name}.safetensors in it or its subfolders"))),
        _ => Err(not_found(format!("several files match: {found:?}; use the relative path as the name"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lora_args_parse() {
        let s: LoraSpec = "a/b.safetensors:0.8".parse().unwrap();
        assert_eq!((s.path, s.strength), (PathBuf::from("a/b.safetensors"), 0.8));
        let s: LoraSpec = "x.safetensors".parse().unwrap();
        assert_eq!(s.strength, 1.0);
        let s: LoraSpec = r"C:\l\x.safetensors:-0.5".parse().unwrap();
        assert_eq!((s.path, s.strength), (PathBuf::from(r"C:\l\x.safetensors"), -0.5));
        let s: LoraSpec = r"C:\l\x.safetensors".parse().unwrap();
        assert_eq!(s.path, PathBuf::from(r"C:\l\x.safetensors"));
        assert!(":0.5".parse::<LoraSpec>().is_err());
        assert!("x:inf".parse::<LoraSpec>().is_err());
    }

    #[test]
    fn prompt_tags_are_extracted_like_a1111() {
        let (p, l) = extract_prompt_loras("a cat <lora:style:0.8>, <lyco:x> <lora:y:0.5:1.2> <b>").unwrap();
        assert_eq!(p, "a cat ,   <b>");
        assert_eq!(l.len(), 3);
        assert_eq!(l[0], PromptLora { name: "style".into(), unet_strength: 0.8, text_encoder_strength: 0.8 });
        assert_eq!((l[1].unet_strength, l[1].text_encoder_strength), (1.0, 1.0));
        assert_eq!((l[2].text_encoder_strength, l[2].unet_strength), (0.5, 1.2));
        let (_, l) = extract_prompt_loras("<lora:z:unet=0.3:te=0>").unwrap();
        assert_eq!((l[0].text_encoder_strength, l[0].unet_strength), (0.0, 0.3));
        assert!(extract_prompt_loras("<lora::1>").is_err());
        assert!(extract_prompt_loras("<lora:a:x>").is_err());
        assert!(extract_prompt_loras("<lora:a:1:2:3>").is_err());
    }

    #[test]
    fn names_resolve_in_the_lora_dir() {
        let dir = std::env::temp_dir().join(format!("kairos-lora-dir-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub").join("style.safetensors"), b"").unwrap();
        assert_eq!(resolve_lora("style", &dir).unwrap(), dir.join("sub").join("style.safetensors"));
        assert_eq!(resolve_lora("sub/style", &dir).unwrap(), dir.join("sub/style.safetensors"));
        assert!(matches!(resolve_lora("none", &dir), Err(LoraError::NotFound { .. })));
        std::fs::write(dir.join("style.safetensors"), b"").unwrap();
        assert_eq!(resolve_lora("style", &dir).unwrap(), dir.join("style.safetensors"));
        std::fs::create_dir_all(dir.join("other")).unwrap();
        std::fs::write(dir.join("other").join("dup.safetensors"), b"").unwrap();
        std::fs::write(dir.join("sub").join("dup.safetensors"), b"").unwrap();
        assert!(resolve_lora("dup", &dir).unwrap_err().to_string().contains("several"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
