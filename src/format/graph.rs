//! `graph.json`: the seed's graph schema (graph_id, graph_type, nodes, edges, entry_points). Node configs are
//! free-form JSON here; `crate::graph` gives them types and builds the model from them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const GRAPH_FILE: &str = "graph.json";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GraphFile {
    pub graph_id: String,
    pub graph_type: String,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
    pub entry_points: BTreeMap<String, EntryPoint>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Node {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
    pub config: serde_json::Value,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Edge {
    /// `node_id.output_name`
    pub from: String,
    /// `node_id.input_name`
    pub to: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct EntryPoint {
    pub inputs: Vec<String>,
    pub outputs: Vec<String>,
}

impl GraphFile {
    pub fn node(&self, id: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id)
    }

    /// Structural problems: duplicate ids, edges naming missing nodes, nodes not reached from an entry input.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for n in &self.nodes {
            if !seen.insert(n.id.as_str()) {
                out.push(format!("node id {:?} appears twice", n.id));
            }
        }
        for e in &self.edges {
            for end in [&e.from, &e.to] {
                let node = end.split('.').next().unwrap_or("");
                if self.node(node).is_none() {
                    out.push(format!("edge {} -> {} names a missing node {node:?}", e.from, e.to));
                }
            }
        }
        if self.entry_points.is_empty() {
            out.push("no entry_points".into());
        }
        out
    }
}
