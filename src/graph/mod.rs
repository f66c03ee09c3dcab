//! The model IR: a decoder-only transformer described entirely by `graph.json`. The converter builds a
//! [`Transformer`] and writes it as graph nodes; the runtime reads the nodes back and builds its model from
//! them, never from a hard-coded architecture.

mod config;

pub use config::{
    limits, Activation, BlockWeights, MoeConfig, MoeWeights, Norm, RopeConfig, RopeScaling, RopeStyle, SlidingWindow,
    Transformer,
};
