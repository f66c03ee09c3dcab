//! Agents and chat: a model directory's `agents/*.json` (the schema is `crate::format::agent`), the tools an
//! agent may use (`file_reader`, confined to a root the user names), the tool-call format and its tolerant
//! parser, and the interactive conversation loop (`chat`), all without a terminal: `omex chat` is a thin
//! shell over [`chat::Chat::run`].

pub mod chat;
pub mod file_reader;
pub mod tool_call;

use crate::error::{Error, Result};
use crate::format::agent::{is_safe_name, AgentConfig};
use file_reader::FileReader;
use std::path::{Path, PathBuf};

/// The folder of a model directory that holds its agents.
pub const AGENTS_DIR: &str = "agents";

/// The agents of a model directory, sorted by id; a file that does not check is an error naming it.
pub fn list(model: &Path) -> Result<Vec<(PathBuf, AgentConfig)>> {
    let dir = model.join(AGENTS_DIR);
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))? {
        let path = e.map_err(|e| Error::io(&dir, e))?.path();
        if path.extension().is_some_and(|x| x == "json") {
            let a = AgentConfig::load(&path)?;
            out.push((path, a));
        }
    }
    out.sort_by(|a, b| a.1.agent_id.cmp(&b.1.agent_id));
    Ok(out)
}

/// The agent `name` of a model directory: `agents/NAME.json`, else the file whose `agent_id` is `name`.
pub fn find(model: &Path, name: &str) -> Result<AgentConfig> {
    if !is_safe_name(name) {
        return Err(Error::Usage(format!("{name:?} is not an agent name (letters, digits, '_', '-', '.')")));
    }
    let direct = model.join(AGENTS_DIR).join(format!("{name}.json"));
    if direct.is_file() {
        let a = AgentConfig::load(&direct)?;
        if a.agent_id == name {
            return Ok(a);
        }
    }
    let all = list(model)?;
    let ids: Vec<_> = all.iter().map(|(_, a)| a.agent_id.clone()).collect();
    all.into_iter().map(|(_, a)| a).find(|a| a.agent_id == name).ok_or_else(|| {
        Error::Usage(format!(
            "{}: no agent {name:?} (agents: {})",
            model.display(),
            if ids.is_empty() { "none; add one with omex agent add".into() } else { ids.join(", ") }
        ))
    })
}

/// Checks the agent file `file` and copies it into the model's `agents/AGENT_ID.json`; an agent of that id
/// (or that file name) already there is refused, never replaced.
pub fn add(model: &Path, file: &Path) -> Result<PathBuf> {
    if !model.join(crate::format::metadata::METADATA_FILE).is_file() {
        return Err(Error::Usage(format!("{}: not an omex model directory (no metadata.json)", model.display())));
    }
    let bytes =
        crate::files::read_regular(file, crate::format::agent::MAX_AGENT_BYTES).map_err(|e| Error::io(file, e))?;
    let agent = AgentConfig::parse(&bytes, file)?;
    if list(model)?.iter().any(|(_, a)| a.agent_id == agent.agent_id) {
        return Err(Error::Usage(format!(
            "{}: an agent {:?} exists already; not replaced",
            model.display(),
            agent.agent_id
        )));
    }
    let dir = model.join(AGENTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let dest = dir.join(format!("{}.json", agent.agent_id));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&dest).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            Error::Usage(format!("{}: exists; not replaced", dest.display()))
        } else {
            Error::io(&dest, e)
        }
    })?;
    std::io::Write::write_all(&mut f, &bytes).map_err(|e| Error::io(&dest, e))?;
    Ok(dest)
}

/// The agent's `file_access` tools as readers under `root`; an agent with such tools needs a root.
pub fn tools(agent: &AgentConfig, root: Option<&Path>) -> Result<Vec<FileReader>> {
    let access = agent.file_tools();
    if access.is_empty() {
        return Ok(Vec::new());
    }
    let root = root.ok_or_else(|| {
        Error::Usage(format!(
            "agent {:?} has the file tool {:?}: name the folder it may read with --root DIR",
            agent.agent_id, access[0].tool_id
        ))
    })?;
    access.into_iter().map(|a| FileReader::new(a, root)).collect()
}

/// The system prompt of an agent: its own instructions, its description, `extra` (the user's `--system`),
/// and how to call its tools.
pub fn system_prompt(agent: &AgentConfig, extra: Option<&str>, tools: &[FileReader]) -> String {
    let mut parts: Vec<String> = Vec::new();
    parts.extend(agent.system_prompt.clone());
    if let Some(d) = &agent.description {
        parts.push(d.clone());
    }
    if let Some(f) = agent.response_format.as_ref().and_then(|r| r.formatting.as_deref()) {
        parts.push(format!("Format your answers as {f}."));
    }
    parts.extend(extra.map(str::to_string));
    if !tools.is_empty() {
        let list: Vec<_> = tools.iter().map(|t| (t.tool_id().to_string(), t.extensions().to_vec())).collect();
        parts.push(tool_call::instructions(&list));
    }
    parts.join("\n\n")
}
