//! `agents/*.json`: an agent's role, tools and memory policy, as the seeds' "Agent Configuration" schema gives
//! them. Parsing checks every field a runtime would trust (sizes bounded, strategies and tool types known), so
//! `omex validate`, `omex agent add` and `omex chat --agent` refuse a bad file with the field at fault.
//!
//! Tools: only `file_access` (read-only, by extension, size-capped) is implemented; any other `tool_type`
//! (the seeds' `interpreter`, ...) is refused by name, because omex has no sandbox to run it in.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Largest agent file omex reads.
pub const MAX_AGENT_BYTES: u64 = 1 << 20;
/// Bounds of the token counts an agent may ask for.
pub const MAX_TOKENS: u32 = 1 << 20;
/// Default and largest size of one file a `file_access` tool reads.
pub const DEFAULT_FILE_BYTES: u64 = 256 << 10;
pub const MAX_FILE_BYTES: u64 = 16 << 20;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    pub agent_id: String,
    #[serde(default)]
    pub agent_type: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub tools: Vec<ToolConfig>,
    #[serde(default)]
    pub memory_management: Option<MemoryManagement>,
    #[serde(default)]
    pub response_format: Option<ResponseFormat>,
    /// omex's addition: the agent's own instructions, put first in its system prompt.
    #[serde(default)]
    pub system_prompt: Option<String>,
}

/// One tool entry. The fields of every tool type are accepted here; [`AgentConfig::check`] refuses those a
/// type does not take and the types omex does not run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolConfig {
    pub tool_id: String,
    pub tool_type: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub allowed_extensions: Vec<String>,
    /// omex's addition: the largest file the tool reads (default 256 KiB, at most 16 MiB).
    #[serde(default)]
    pub max_file_bytes: Option<u64>,
    #[serde(default)]
    pub supported_languages: Vec<String>,
    #[serde(default)]
    pub execution_mode: Option<String>,
    #[serde(default)]
    pub max_execution_time_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryManagement {
    /// The tokens of conversation the agent keeps (system prompt included).
    #[serde(default)]
    pub context_window_size: Option<u32>,
    /// A second cap on the same window: the smaller of the two applies.
    #[serde(default)]
    pub token_limit: Option<u32>,
    #[serde(default)]
    pub history_retention_strategy: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseFormat {
    /// The most tokens of one answer.
    #[serde(default)]
    pub max_length: Option<u32>,
    #[serde(default)]
    pub formatting: Option<String>,
    #[serde(default)]
    pub code_block_detection: Option<bool>,
}

/// A `file_access` tool as checked: what it may read.
#[derive(Clone, Debug, PartialEq)]
pub struct FileAccess {
    pub tool_id: String,
    /// Lower-case, with the dot: `.txt`.
    pub extensions: Vec<String>,
    pub max_file_bytes: u64,
}

/// Letters, digits, `_`, `-`, `.` (not first): a name that is safe as a file name.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && !s.starts_with('.')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl AgentConfig {
    /// Reads and checks the agent file at `path`.
    pub fn load(path: &Path) -> Result<AgentConfig> {
        let bytes = crate::files::read_regular(path, MAX_AGENT_BYTES).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes, path)
    }

    /// Parses and checks an agent's JSON; errors name `path` and the field.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<AgentConfig> {
        let a: AgentConfig = serde_json::from_slice(bytes).map_err(|e| Error::json(path, e))?;
        a.check().map_err(|what| Error::invalid(path, what))?;
        Ok(a)
    }

    /// Every rule beyond the JSON's shape, as a message naming the field.
    pub fn check(&self) -> std::result::Result<(), String> {
        if !is_safe_name(&self.agent_id) {
            return Err(format!(
                "agent_id {:?}: must be 1 to 128 letters, digits, '_', '-' or '.' (not first)",
                self.agent_id
            ));
        }
        let mut ids = std::collections::HashSet::new();
        for (i, t) in self.tools.iter().enumerate() {
            let at = format!("tools[{i}] ({:?})", t.tool_id);
            if t.tool_id.is_empty() || !ids.insert(t.tool_id.as_str()) {
                return Err(format!("{at}: tool_id must be non-empty and unique"));
            }
            tool_file_access(t).map_err(|e| format!("{at}: {e}"))?;
        }
        if let Some(m) = &self.memory_management {
            for (name, v) in [("context_window_size", m.context_window_size), ("token_limit", m.token_limit)] {
                if let Some(v) = v {
                    if !(16..=MAX_TOKENS).contains(&v) {
                        return Err(format!("memory_management.{name} {v}: must be 16 to {MAX_TOKENS} tokens"));
                    }
                }
            }
            if let Some(s) = &m.history_retention_strategy {
                if s != "sliding_window" {
                    return Err(format!(
                        "memory_management.history_retention_strategy {s:?}: omex keeps history by \"sliding_window\" only"
                    ));
                }
            }
        }
        if let Some(r) = &self.response_format {
            if let Some(n) = r.max_length {
                if !(1..=MAX_TOKENS).contains(&n) {
                    return Err(format!("response_format.max_length {n}: must be 1 to {MAX_TOKENS} tokens"));
                }
            }
        }
        Ok(())
    }

    /// The conversation window the agent asks for: the smaller of `context_window_size` and `token_limit`.
    pub fn window(&self) -> Option<usize> {
        let m = self.memory_management.as_ref()?;
        [m.context_window_size, m.token_limit].into_iter().flatten().min().map(|v| v as usize)
    }

    /// The agent's `file_access` tools (checked by [`AgentConfig::check`]).
    pub fn file_tools(&self) -> Vec<FileAccess> {
        self.tools.iter().filter_map(|t| tool_file_access(t).ok()).collect()
    }
}

/// Checks one tool entry: a `file_access` tool with read permission only and its extensions; any other type
/// is refused by name.
pub fn tool_file_access(t: &ToolConfig) -> std::result::Result<FileAccess, String> {
    if t.tool_type != "file_access" {
        return Err(format!(
            "tool_type {:?} is not supported: omex implements only \"file_access\" (read-only files); it runs no \
             interpreter or other tool without a real sandbox",
            t.tool_type
        ));
    }
    if !t.supported_languages.is_empty() || t.execution_mode.is_some() || t.max_execution_time_ms.is_some() {
        return Err("a file_access tool takes no supported_languages, execution_mode or max_execution_time_ms".into());
    }
    if t.permissions.is_empty() {
        return Err("permissions: give [\"read\"] (a file_access tool only reads)".into());
    }
    if let Some(p) = t.permissions.iter().find(|p| *p != "read") {
        return Err(format!("permissions: {p:?} is not granted by omex (file_access is read-only: [\"read\"])"));
    }
    if t.allowed_extensions.is_empty() {
        return Err("allowed_extensions: list the extensions the tool may read, e.g. [\".txt\", \".md\"]".into());
    }
    let mut extensions = Vec::new();
    for e in &t.allowed_extensions {
        let ok = e.len() >= 2
            && e.len() <= 16
            && e.starts_with('.')
            && e[1..].chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return Err(format!("allowed_extensions: {e:?} is not an extension like \".txt\""));
        }
        extensions.push(e.to_ascii_lowercase());
    }
    let max_file_bytes = t.max_file_bytes.unwrap_or(DEFAULT_FILE_BYTES);
    if !(1..=MAX_FILE_BYTES).contains(&max_file_bytes) {
        return Err(format!("max_file_bytes {max_file_bytes}: must be 1 to {MAX_FILE_BYTES}"));
    }
    Ok(FileAccess { tool_id: t.tool_id.clone(), extensions, max_file_bytes })
}
