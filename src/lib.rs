//! omex: a GPU-first model format and runtime.
