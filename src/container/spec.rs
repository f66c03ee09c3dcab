//! `container.json` as the seeds' "Execution Container Format" gives it, and its check into a [`Plan`]:
//! everything that can be refused is refused here, before any node runs (unknown node types and
//! executors, cycles, missing dependencies and inputs, output names that are not plain file names, tool
//! paths that leave the root, numbers outside their bounds).
//!
//! Node kinds omex runs: `model_inference` (a node whose `type` or `executor` says so) and `file_reader`
//! (a tool node with a `tool` entry of the agent schema's `file_access` type). omex's additions to a node:
//! `instruction` (the task of an inference node; default `input_data.prompt`), `tool`, `timeout_seconds`
//! and `max_tokens`.

use crate::agent::file_reader::FileReader;
use crate::error::{Error, Result};
use crate::format::agent::{is_safe_name, tool_file_access, FileAccess, ToolConfig};
use crate::memory::budget::parse_size;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const MAX_CONTAINER_BYTES: u64 = 4 << 20;
pub const MAX_NODES: usize = 256;
pub const MAX_ANSWER_TOKENS: u32 = 32768;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Container {
    pub omex_version: String,
    pub container_id: String,
    #[serde(default)]
    pub container_type: Option<String>,
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub model_reference: Option<ModelReference>,
    #[serde(default)]
    pub execution_config: ExecutionConfig,
    #[serde(default)]
    pub resources: Resources,
    pub execution_graph: ExecutionGraph,
    #[serde(default)]
    pub input_data: BTreeMap<String, String>,
    #[serde(default)]
    pub completion_policy: CompletionPolicy,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelReference {
    pub model_id: String,
    #[serde(default)]
    pub model_version: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub stop_sequences: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default)]
    pub max_memory_mb: Option<u64>,
    #[serde(default)]
    pub max_compute_units: Option<u32>,
    #[serde(default)]
    pub priority: Option<String>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionGraph {
    #[serde(default)]
    pub entry_node: Option<String>,
    pub nodes: Vec<NodeSpec>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub inputs: Vec<String>,
    #[serde(default)]
    pub outputs: Vec<String>,
    #[serde(default)]
    pub executor: Option<String>,
    #[serde(default)]
    pub memory_allocation: Option<String>,
    #[serde(default)]
    pub dependencies: Vec<String>,
    #[serde(default)]
    pub guidance: Option<String>,
    #[serde(default)]
    pub model_config: Option<serde_json::Value>,
    #[serde(default)]
    pub instruction: Option<String>,
    #[serde(default)]
    pub tool: Option<ToolConfig>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionPolicy {
    #[serde(default)]
    pub retry_on_fail: bool,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default)]
    pub retry_delay_ms: u64,
    #[serde(default)]
    pub memory_pressure_strategy: Option<String>,
}

/// Where an inference node's input comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    /// An output file of an earlier node.
    Output { node: usize, file: String },
    /// `input_data.KEY`.
    Data(String),
}

#[derive(Clone, Debug)]
pub enum NodeKind {
    /// Runs the model on the CPU (`local_cpu`) or where `--backend` says.
    Inference { cpu: bool, inputs: Vec<Input> },
    /// Reads the files (or folders' files) `paths` under the root.
    FileReader { access: FileAccess, paths: Vec<String> },
}

#[derive(Clone, Debug)]
pub struct PlannedNode {
    pub spec: NodeSpec,
    pub kind: NodeKind,
    /// Bytes of `memory_allocation`.
    pub memory: Option<u64>,
    /// Indices of the nodes this one depends on.
    pub deps: Vec<usize>,
    pub output: String,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub container: Container,
    /// The file it was read from.
    pub path: PathBuf,
    /// The folder tool paths are relative to (canonical).
    pub root: PathBuf,
    pub nodes: Vec<PlannedNode>,
    /// Node indices in an order where each comes after its dependencies.
    pub order: Vec<usize>,
}

impl Plan {
    pub fn has_inference(&self) -> bool {
        self.nodes.iter().any(|n| matches!(n.kind, NodeKind::Inference { .. }))
    }
}

/// Reads and checks `path`; tool paths are resolved under `root` (default: the container's folder).
pub fn load(path: &Path, root: Option<&Path>) -> Result<Plan> {
    let bytes = crate::files::read_regular(path, MAX_CONTAINER_BYTES).map_err(|e| Error::io(path, e))?;
    let c: Container = serde_json::from_slice(&bytes).map_err(|e| Error::json(path, e))?;
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => path.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or(".".into()),
    };
    let root = root.canonicalize().map_err(|e| Error::io(&root, e))?;
    check(c, path, &root).map_err(|what| Error::invalid(path, what))
}

fn check(c: Container, path: &Path, root: &Path) -> std::result::Result<Plan, String> {
    if !c.omex_version.starts_with("0.") {
        return Err(format!("omex_version {:?}: this omex runs containers of version 0.x", c.omex_version));
    }
    if !is_safe_name(&c.container_id) {
        return Err(format!("container_id {:?}: must be letters, digits, '_', '-' or '.'", c.container_id));
    }
    if let Some(t) = &c.container_type {
        if t != "task_execution" {
            return Err(format!("container_type {t:?}: omex runs \"task_execution\" containers"));
        }
    }
    check_config(&c)?;
    let nodes = &c.execution_graph.nodes;
    if nodes.is_empty() || nodes.len() > MAX_NODES {
        return Err(format!("execution_graph.nodes: {} nodes (1 to {MAX_NODES})", nodes.len()));
    }
    let mut index = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if !is_safe_name(&n.id) {
            return Err(format!("nodes[{i}].id {:?}: must be letters, digits, '_', '-' or '.'", n.id));
        }
        if index.insert(n.id.as_str(), i).is_some() {
            return Err(format!("node {:?}: the id is used twice", n.id));
        }
    }
    let mut deps = Vec::new();
    for n in nodes {
        let mut d = Vec::new();
        for dep in &n.dependencies {
            match index.get(dep.as_str()) {
                Some(&j) if nodes[j].id != n.id => d.push(j),
                Some(_) => return Err(format!("node {:?}: depends on itself", n.id)),
                None => return Err(format!("node {:?}: dependency {dep:?} is no node", n.id)),
            }
        }
        deps.push(d);
    }
    let order = topo_order(nodes, &deps)?;
    if let Some(entry) = &c.execution_graph.entry_node {
        match index.get(entry.as_str()) {
            Some(&j) if deps[j].is_empty() => {}
            Some(_) => return Err(format!("execution_graph.entry_node {entry:?} has dependencies")),
            None => return Err(format!("execution_graph.entry_node {entry:?} is no node")),
        }
    }
    // Output names: plain file names, one output per node, unique over the container.
    let mut producer: HashMap<&str, usize> = HashMap::new();
    for (i, n) in nodes.iter().enumerate() {
        if n.outputs.len() != 1 {
            return Err(format!("node {:?}: give exactly one output file (it has {})", n.id, n.outputs.len()));
        }
        let o = &n.outputs[0];
        if !is_safe_name(o) || o == "manifest.json" {
            return Err(format!(
                "node {:?}: output {o:?} must be a plain file name in the run directory (no folders, no \"..\")",
                n.id
            ));
        }
        if producer.insert(o.as_str(), i).is_some() {
            return Err(format!("node {:?}: output {o:?} is written by another node too", n.id));
        }
    }
    let mut planned = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let memory = n
            .memory_allocation
            .as_deref()
            .map(|m| parse_size(m).map_err(|e| format!("node {:?}: memory_allocation {e}", n.id)))
            .transpose()?;
        if let (Some(m), Some(max)) = (memory, c.resources.max_memory_mb) {
            if m > max << 20 {
                return Err(format!(
                    "node {:?}: memory_allocation {} is over resources.max_memory_mb {max}",
                    n.id,
                    n.memory_allocation.as_deref().unwrap_or("")
                ));
            }
        }
        let kind = node_kind(&c, n, i, &deps, &producer, root)?;
        if let Some(t) = n.timeout_seconds {
            if !(1..=7 * 86400).contains(&t) {
                return Err(format!("node {:?}: timeout_seconds {t} (1 to 604800)", n.id));
            }
        }
        if let Some(m) = n.max_tokens {
            if !(1..=MAX_ANSWER_TOKENS).contains(&m) {
                return Err(format!("node {:?}: max_tokens {m} (1 to {MAX_ANSWER_TOKENS})", n.id));
            }
        }
        planned.push(PlannedNode {
            spec: n.clone(),
            kind,
            memory,
            deps: deps[i].clone(),
            output: n.outputs[0].clone(),
        });
    }
    Ok(Plan { container: c, path: path.to_path_buf(), root: root.to_path_buf(), nodes: planned, order })
}

/// Kahn's order; the nodes left over are on or behind a cycle, named in the error.
fn topo_order(nodes: &[NodeSpec], deps: &[Vec<usize>]) -> std::result::Result<Vec<usize>, String> {
    let mut pending: Vec<usize> = deps.iter().map(Vec::len).collect();
    let mut order = Vec::new();
    let mut ready: Vec<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
    while let Some(i) = ready.pop() {
        order.push(i);
        for (j, d) in deps.iter().enumerate() {
            for _ in d.iter().filter(|&&x| x == i) {
                pending[j] -= 1;
                if pending[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    if order.len() < nodes.len() {
        let stuck: Vec<_> = (0..nodes.len()).filter(|i| !order.contains(i)).map(|i| nodes[i].id.as_str()).collect();
        return Err(format!("the dependencies form a cycle through the nodes {}", stuck.join(", ")));
    }
    Ok(order)
}

/// The nodes `i` depends on, directly or through others.
fn ancestors(i: usize, deps: &[Vec<usize>]) -> Vec<usize> {
    let mut seen = vec![false; deps.len()];
    let mut stack = deps[i].clone();
    while let Some(j) = stack.pop() {
        if !std::mem::replace(&mut seen[j], true) {
            stack.extend(&deps[j]);
        }
    }
    (0..deps.len()).filter(|&j| seen[j]).collect()
}

fn node_kind(
    c: &Container,
    n: &NodeSpec,
    i: usize,
    deps: &[Vec<usize>],
    producer: &HashMap<&str, usize>,
    root: &Path,
) -> std::result::Result<NodeKind, String> {
    let id = &n.id;
    let executor = n.executor.as_deref();
    if let Some(e) = executor {
        if !["local_device", "local_gpu", "local_cpu", "model_inference"].contains(&e) {
            return Err(format!(
                "node {id:?}: executor {e:?} is unknown (local_device, local_gpu, local_cpu or model_inference)"
            ));
        }
    }
    if n.kind == "model_inference" || executor == Some("model_inference") {
        if n.tool.is_some() {
            return Err(format!("node {id:?}: a model_inference node takes no tool"));
        }
        let before = ancestors(i, deps);
        let mut inputs = Vec::new();
        for input in &n.inputs {
            if let Some(key) = input.strip_prefix("input_data.") {
                if !c.input_data.contains_key(key) {
                    return Err(format!("node {id:?}: input {input:?}: input_data has no {key:?}"));
                }
                inputs.push(Input::Data(key.to_string()));
                continue;
            }
            match producer.get(input.as_str()) {
                Some(&j) if before.contains(&j) => inputs.push(Input::Output { node: j, file: input.clone() }),
                Some(&j) => {
                    return Err(format!(
                        "node {id:?}: input {input:?} is written by node {:?}, which is not among its dependencies",
                        c.execution_graph.nodes[j].id
                    ))
                }
                None => {
                    return Err(format!(
                        "node {id:?}: input {input:?} is missing: it is no node's output nor input_data.KEY"
                    ))
                }
            }
        }
        if n.instruction.is_none() && !c.input_data.contains_key("prompt") {
            return Err(format!("node {id:?}: give it an \"instruction\", or input_data a \"prompt\""));
        }
        return Ok(NodeKind::Inference { cpu: executor == Some("local_cpu"), inputs });
    }
    if n.kind == "file_reader" {
        let tool = n.tool.as_ref().ok_or_else(|| {
            format!("node {id:?}: a file_reader node needs a \"tool\" (tool_type \"file_access\", permissions, allowed_extensions)")
        })?;
        let access = tool_file_access(tool).map_err(|e| format!("node {id:?}: tool: {e}"))?;
        if n.inputs.is_empty() {
            return Err(format!("node {id:?}: list the files or folders to read in \"inputs\""));
        }
        let reader = FileReader::new(access.clone(), root).map_err(|e| e.to_string())?;
        for p in &n.inputs {
            reader.resolve(p).map_err(|e| format!("node {id:?}: input: {e}"))?;
        }
        return Ok(NodeKind::FileReader { access, paths: n.inputs.clone() });
    }
    Err(format!("node {id:?}: type {:?} is unknown: omex runs \"model_inference\" and \"file_reader\" nodes", n.kind))
}

fn check_config(c: &Container) -> std::result::Result<(), String> {
    let e = &c.execution_config;
    if let Some(m) = e.max_tokens {
        if !(1..=MAX_ANSWER_TOKENS).contains(&m) {
            return Err(format!("execution_config.max_tokens {m} (1 to {MAX_ANSWER_TOKENS})"));
        }
    }
    if let Some(t) = e.temperature {
        if !(t.is_finite() && (0.0..=100.0).contains(&t)) {
            return Err(format!("execution_config.temperature {t} (a finite number, 0 to 100)"));
        }
    }
    if let Some(p) = e.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("execution_config.top_p {p} (in (0, 1])"));
        }
    }
    if let Some(r) = e.repetition_penalty {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("execution_config.repetition_penalty {r} (a finite number > 0)"));
        }
    }
    if e.stop_sequences.len() > 16 || e.stop_sequences.iter().any(|s| s.is_empty() || s.len() > 256) {
        return Err("execution_config.stop_sequences: at most 16 non-empty strings of at most 256 bytes".into());
    }
    let r = &c.resources;
    if let Some(m) = r.max_memory_mb {
        if !(1..=1 << 24).contains(&m) {
            return Err(format!("resources.max_memory_mb {m} (1 to 16777216)"));
        }
    }
    if let Some(u) = r.max_compute_units {
        if !(1..=1024).contains(&u) {
            return Err(format!("resources.max_compute_units {u} (1 to 1024)"));
        }
    }
    if let Some(p) = &r.priority {
        if !["low", "normal", "high"].contains(&p.as_str()) {
            return Err(format!("resources.priority {p:?} (low, normal or high)"));
        }
    }
    if let Some(t) = r.timeout_seconds {
        if !(1..=7 * 86400).contains(&t) {
            return Err(format!("resources.timeout_seconds {t} (1 to 604800)"));
        }
    }
    let p = &c.completion_policy;
    if p.max_retries > 10 {
        return Err(format!("completion_policy.max_retries {} (at most 10)", p.max_retries));
    }
    if p.retry_delay_ms > 600_000 {
        return Err(format!("completion_policy.retry_delay_ms {} (at most 600000)", p.retry_delay_ms));
    }
    if let Some(s) = &p.memory_pressure_strategy {
        if !["none", "dynamic_precision_reduction"].contains(&s.as_str()) {
            return Err(format!(
                "completion_policy.memory_pressure_strategy {s:?} (none or dynamic_precision_reduction)"
            ));
        }
    }
    Ok(())
}
