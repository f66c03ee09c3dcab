//! The tokenizer's one error type. Every variant names the file (or GGUF field) and the problem, so a user
//! reading the message knows what to fix.

use std::path::PathBuf;

/// Everything that can go wrong while loading, converting or using a tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A file the tokenizer needs is not there.
    #[error("{path}: file not found ({what})")]
    MissingFile { path: PathBuf, what: &'static str },

    /// A file exists but cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file is not valid JSON.
    #[error("{file}: invalid JSON: {source}")]
    Json {
        file: String,
        #[source]
        source: serde_json::Error,
    },

    /// A JSON field is missing or has the wrong shape or value.
    #[error("{file}: field `{field}`: {problem}")]
    BadField { file: String, field: String, problem: String },

    /// A pre-tokenizer configuration omex does not implement natively.
    #[error(
        "{file}: unsupported pre_tokenizer {config}; omex implements ByteLevel (GPT-2 regex), \
         Sequence[Digits, ByteLevel] (SmolLM2), Sequence[Split(Llama-3 regex), ByteLevel] (Llama-3), \
         Metaspace, and none (SentencePiece with a Prepend normalizer)"
    )]
    UnknownPreTokenizer { file: String, config: String },

    /// A normalizer omex does not implement.
    #[error(
        "{file}: unsupported normalizer {config}; omex implements none and \
         Sequence[Prepend(\"▁\"), Replace(\" \", \"▁\")]"
    )]
    UnknownNormalizer { file: String, config: String },

    /// A decoder omex does not implement.
    #[error(
        "{file}: unsupported decoder {config}; omex implements ByteLevel and sequences of \
         Replace(\"▁\", \" \") or Metaspace, ByteFallback, Fuse, Strip(\" \", n, 0)"
    )]
    UnknownDecoder { file: String, config: String },

    /// The tokenizer model is not a BPE omex can run (WordPiece, Unigram, BPE dropout...).
    #[error("{file}: unsupported model: {problem}")]
    UnsupportedModel { file: String, problem: String },

    /// A merge names a token that is not in the vocabulary.
    #[error("{file}: merge #{index} (`{left}` `{right}`): {problem}")]
    BadMerge { file: String, index: usize, left: String, right: String, problem: String },

    /// A token named in a config (bos, eos, stop tokens...) is not in the vocabulary.
    #[error("{file}: `{field}` names token `{token}`, which is not in the vocabulary")]
    UnknownToken { file: String, field: String, token: String },

    /// A token id past the end of the vocabulary.
    #[error("token id {id} is out of range (vocabulary size {vocab_size})")]
    IdOutOfRange { id: u32, vocab_size: usize },

    /// GGUF tokenizer fields that do not fit together.
    #[error("GGUF field `{field}`: {problem}")]
    Gguf { field: &'static str, problem: String },

    /// The model has no chat template.
    #[error("this tokenizer has no chat template (tokenizer_config.json `chat_template` is absent)")]
    NoChatTemplate,

    /// A chat template that is not one of the formats omex renders.
    #[error(
        "unsupported chat template ({hint}); omex renders ChatML (SmolLM2), Llama-2 [INST] and \
         Llama-3 header templates"
    )]
    UnsupportedChatTemplate { hint: String },

    /// The messages break a rule of the chat template (the template itself would raise).
    #[error("chat template: {0}")]
    ChatMessages(String),
}

impl TokenizerError {
    pub(crate) fn field(file: &str, field: impl Into<String>, problem: impl Into<String>) -> Self {
        TokenizerError::BadField { file: file.to_string(), field: field.into(), problem: problem.into() }
    }
}
