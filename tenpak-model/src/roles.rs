//! What each weight of a Llama-family model (in Hugging Face names) does, and the model's
//! weight matrices as the layers an allocator plans.

use tenpak_api::{LayerInfo, LayerRole};

use crate::ModelSource;

/// The role of the tensor called `name`, and its block index if it is inside a block.
///
/// 1-D tensors (norm weights, biases) are [`LayerRole::Norm`] whatever their name: no built-in
/// preset quantizes them, they are a rounding error of the model's size.
pub fn classify(name: &str, shape: &[usize]) -> (LayerRole, Option<usize>) {
    let block = name
        .strip_prefix("model.layers.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|n| n.parse().ok());
    if shape.len() != 2 {
        return (LayerRole::Norm, block);
    }
    let role = if name.ends_with("self_attn.q_proj.weight") {
        LayerRole::AttnQ
    } else if name.ends_with("self_attn.k_proj.weight") {
        LayerRole::AttnK
    } else if name.ends_with("self_attn.v_proj.weight") {
        LayerRole::AttnV
    } else if name.ends_with("self_attn.o_proj.weight") {
        LayerRole::AttnO
    } else if name.ends_with("mlp.gate_proj.weight") {
        LayerRole::MlpGate
    } else if name.ends_with("mlp.up_proj.weight") {
        LayerRole::MlpUp
    } else if name.ends_with("mlp.down_proj.weight") {
        LayerRole::MlpDown
    } else if name == "model.embed_tokens.weight" {
        LayerRole::Embedding
    } else if name == "lm_head.weight" {
        LayerRole::LmHead
    } else {
        LayerRole::Other
    };
    (role, block)
}

/// Every 2-D tensor of `model` as an allocator sees it, in block order (tensors outside the
/// blocks last; the source's order within a block), so a probe walking the list runs each block
/// once. (Sources list tensors in their own order, often by name: block 10 before block 2.)
pub fn layer_infos(model: &dyn ModelSource) -> Vec<LayerInfo> {
    let mut infos: Vec<LayerInfo> = model
        .tensors()
        .iter()
        .filter(|t| t.shape.len() == 2)
        .map(|t| {
            let (role, block) = classify(&t.name, &t.shape);
            LayerInfo { name: t.name.clone(), role, block, rows: t.shape[0], cols: t.shape[1] }
        })
        .collect();
    infos.sort_by_key(|l| l.block.unwrap_or(usize::MAX));
    infos
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama_names() {
        assert_eq!(classify("model.layers.7.self_attn.k_proj.weight", &[192, 576]), (LayerRole::AttnK, Some(7)));
        assert_eq!(classify("model.layers.29.mlp.down_proj.weight", &[576, 1536]), (LayerRole::MlpDown, Some(29)));
        assert_eq!(classify("model.layers.3.input_layernorm.weight", &[576]), (LayerRole::Norm, Some(3)));
        assert_eq!(classify("model.layers.3.self_attn.q_proj.bias", &[576]), (LayerRole::Norm, Some(3)));
        assert_eq!(classify("model.embed_tokens.weight", &[49152, 576]), (LayerRole::Embedding, None));
        assert_eq!(classify("lm_head.weight", &[49152, 576]), (LayerRole::LmHead, None));
        assert_eq!(classify("model.norm.weight", &[576]), (LayerRole::Norm, None));
    }
}
