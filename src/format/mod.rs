//! The on-disk format of a `model.omex/` directory. See the README's "The omex format" section for the
//! specification a newcomer can implement from; this module is that specification as code.
//!
//! ```text
//! model.omex/
//!   metadata.json            seed metadata schema + `files` (size and sha256 of every file)
//!   graph.json               seed graph schema; node configs carry every hyper-parameter
//!   weights/quantization.json  index: tensor -> file, offset, dtype, shape, layout, sections
//!   weights/embedding.bin    token embedding (layer id EMBEDDING_LAYER)
//!   weights/layer_N.bin      block N's tensors (layer id N)
//!   weights/head.bin         final norm and, when not tied, the output head (layer id HEAD_LAYER)
//!   tokenizer/tokenizer.json Hugging Face tokenizers format; tokenizer_config.json: specials, template
//!   agents/ adapters/ optimization/ preprocessors/ postprocessors/ extensions/   optional
//! ```

pub mod adapter;
pub mod agent;
pub mod checksum;
pub mod dtype;
pub mod graph;
pub mod index;
pub mod metadata;
pub mod reader;
pub mod record;
pub mod writer;

pub use dtype::{DType, SectionKind};
pub use index::{TensorEntry, WeightIndex};
pub use metadata::Metadata;
pub use reader::{Blob, ModelDir, TensorView};
pub use record::Record;
pub use writer::LayerFileWriter;

/// The optional folders of the seed layout: accepted, and their JSON files checked, when present.
pub const OPTIONAL_DIRS: [&str; 6] =
    ["agents", "adapters", "optimization", "preprocessors", "postprocessors", "extensions"];
