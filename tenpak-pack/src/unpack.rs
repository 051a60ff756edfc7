//! `tenpak unpack`: an artifact back to a dense Hugging Face directory any runtime loads.

use std::collections::BTreeMap;
use std::path::Path;

use tenpak_error::{Context, Result, bail};
use half::{bf16, f16};
use tenpak_api::DType;
use tenpak_api::registry::Registry;

use crate::artifact::{Artifact, CHAT_TEMPLATE_FILE};
use crate::artifact::safetensors_writer::ShardWriter;
use crate::observe::{PackObserver, Stage, Tracker};

/// Element type of the unpacked weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DenseDType {
    /// 32-bit float: exactly the decoded values.
    F32,
    /// 16-bit float: half the size; decoded values rounded once more.
    F16,
    /// bfloat16.
    Bf16,
}

impl DenseDType {
    fn torch_name(self) -> &'static str {
        match self {
            DenseDType::F32 => "float32",
            DenseDType::F16 => "float16",
            DenseDType::Bf16 => "bfloat16",
        }
    }
    fn encode(self, values: &[f32]) -> (DType, Vec<u8>) {
        match self {
            DenseDType::F32 => (DType::F32, values.iter().flat_map(|v| v.to_le_bytes()).collect()),
            DenseDType::F16 => (DType::F16, values.iter().flat_map(|v| f16::from_f32(*v).to_le_bytes()).collect()),
            DenseDType::Bf16 => (DType::BF16, values.iter().flat_map(|v| bf16::from_f32(*v).to_le_bytes()).collect()),
        }
    }
}

/// Write `artifact` as `out/model.safetensors` + `config.json` + `tokenizer.json`, through a
/// temporary directory renamed into place.
///
/// `observer` sees one step per tensor and may cancel between tensors.
pub fn unpack(
    artifact: &Artifact,
    registry: &Registry,
    out: &Path,
    dtype: DenseDType,
    force: bool,
    observer: &dyn PackObserver,
) -> Result<()> {
    if out.exists() && !force {
        bail!("{} already exists (pass --force to replace it)", out.display());
    }
    let tmp = crate::artifact::temp_sibling(out)?;
    let result = (|| -> Result<()> {
        std::fs::create_dir_all(&tmp)?;
        let mut shard = ShardWriter::create(&tmp.join("model.safetensors"))?;
        let tensors = &artifact.manifest().tensors;
        let tracker = Tracker::new(observer, tensors.len() as u64);
        for t in tensors {
            tracker.begin(Stage::Unpack, None, &t.name)?;
            let values = artifact.load_f32(&t.name, registry)?;
            let (dt, bytes) = dtype.encode(&values);
            shard.add(&t.name, dt, &t.shape, &bytes)?;
            tracker.end(Stage::Unpack, None, &t.name);
        }
        shard.finish(&BTreeMap::from([("format".to_string(), "pt".to_string())]))?;
        let config_path = artifact.dir().join("config.json");
        let config = std::fs::read_to_string(&config_path).with_context(|| format!("reading {}", config_path.display()))?;
        let mut config: serde_json::Value =
            serde_json::from_str(&config).with_context(|| format!("{}: invalid JSON", config_path.display()))?;
        if let Some(obj) = config.as_object_mut() {
            obj.insert("torch_dtype".into(), dtype.torch_name().into());
        }
        std::fs::write(tmp.join("config.json"), serde_json::to_string_pretty(&config)?)?;
        for side in ["tokenizer.json", CHAT_TEMPLATE_FILE] {
            let path = artifact.dir().join(side);
            if path.exists() {
                std::fs::copy(&path, tmp.join(side)).with_context(|| format!("copying {}", path.display()))?;
            }
        }
        if out.exists() {
            std::fs::remove_dir_all(out).with_context(|| format!("removing the old {}", out.display()))?;
        }
        std::fs::rename(&tmp, out).with_context(|| format!("renaming {} to {}", tmp.display(), out.display()))?;
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}
