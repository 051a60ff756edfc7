//! tenpak-model's tests: model sources (safetensors, GGUF, the tokenizer a GGUF vocabulary
//! becomes), the runtime against plain reference forwards, and its gradients.

mod grad;
mod model_io;
mod runtime;
