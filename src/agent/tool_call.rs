//! The tool-call format an agent's model is prompted with, and a parser that takes what a small model really
//! writes: `<tool_call>{"tool": "file_reader", "path": "notes.txt"}</tool_call>`, with the closing tag or
//! the quotes missing, single quotes, a code fence around it, or `key=value` pairs. What cannot be read as
//! a call is `Malformed`, with the reason the model is told; text without the opening tag is no call.

use serde_json::Value;

pub const OPEN: &str = "<tool_call>";
pub const CLOSE: &str = "</tool_call>";

#[derive(Clone, Debug, PartialEq)]
pub enum Parsed {
    /// No tool call in the text.
    None,
    Call(ToolCall),
    /// A call was started but could not be read; the reason is for the model.
    Malformed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct ToolCall {
    pub tool: String,
    pub path: String,
}

/// The system prompt's paragraph telling the model how to call `tools` (ids, and the extensions each reads).
pub fn instructions(tools: &[(String, Vec<String>)]) -> String {
    let mut s = String::new();
    for (id, exts) in tools {
        s.push_str(&format!(
            "You have a tool named {id} that reads the user's files ending in {}. To read a file, reply with \
             only this line, with the file's path:\n{OPEN}{{\"tool\": \"{id}\", \"path\": \"example.txt\"}}{CLOSE}\n",
            exts.join(", ")
        ));
    }
    s.push_str("You then receive the file's text in the next message. Answer the user from it.");
    s
}

/// Finds and reads the first tool call in `text`.
pub fn parse(text: &str) -> Parsed {
    let Some(start) = text.find(OPEN) else {
        return Parsed::None;
    };
    let body = &text[start + OPEN.len()..];
    let body = match body.find(CLOSE) {
        Some(end) => &body[..end],
        // A missing close tag: up to the end of the line that holds the closing brace, else the whole rest.
        None => body.find('}').map_or(body, |b| &body[..=b]),
    };
    let body = body.trim().trim_start_matches("```json").trim_start_matches("```").trim_end_matches("```").trim();
    if body.is_empty() {
        return Parsed::Malformed("the tool call is empty: give {\"tool\": ..., \"path\": ...}".into());
    }
    if body.len() > 4096 {
        return Parsed::Malformed("the tool call is too long".into());
    }
    let fields = json_fields(body).or_else(|| json_fields(&body.replace('\'', "\""))).or_else(|| loose_fields(body));
    let Some((tool, path)) = fields else {
        return Parsed::Malformed(format!(
            "cannot read the tool call {body:?}: write {{\"tool\": \"...\", \"path\": \"...\"}}"
        ));
    };
    match (tool, path) {
        (Some(tool), Some(path)) if !tool.is_empty() && !path.is_empty() => Parsed::Call(ToolCall { tool, path }),
        (None, _) | (Some(_), None) => Parsed::Malformed("the tool call needs both \"tool\" and \"path\"".into()),
        _ => Parsed::Malformed("the tool call's \"tool\" and \"path\" must not be empty".into()),
    }
}

type Fields = (Option<String>, Option<String>);

/// `{"tool": .., "path": ..}` (also `name` for `tool`, and `arguments: {path}` as OpenAI-style calls nest it).
fn json_fields(body: &str) -> Option<Fields> {
    let v: Value = serde_json::from_str(body).ok()?;
    let obj = v.as_object()?;
    let s = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| s.trim().to_string());
    let tool = s(obj.get("tool")).or_else(|| s(obj.get("name")));
    let path = s(obj.get("path")).or_else(|| s(obj.get("arguments").and_then(|a| a.get("path"))));
    Some((tool, path))
}

/// `tool: file_reader, path: notes.txt` or `tool=file_reader path="notes.txt"`: keys and values without JSON.
fn loose_fields(body: &str) -> Option<Fields> {
    let tool = loose_value(body, &["tool", "name"]);
    let path = loose_value(body, &["path", "file"]);
    (tool.is_some() || path.is_some()).then_some((tool, path))
}

/// The value after the first of `keys` followed by `:` or `=`: quoted, or up to `,`, `}`, a space or a line end.
fn loose_value(body: &str, keys: &[&str]) -> Option<String> {
    for key in keys {
        let mut from = 0;
        while let Some(at) = body[from..].find(key) {
            let start = from + at;
            from = start + key.len();
            let word_start = body[..start].chars().next_back().is_none_or(|c| !c.is_ascii_alphanumeric() && c != '_');
            let rest = body[from..].trim_start_matches(['"', '\'', '`']).trim_start();
            let Some(rest) = rest.strip_prefix([':', '=']) else {
                continue;
            };
            if !word_start {
                continue;
            }
            let rest = rest.trim_start();
            let value = match rest.chars().next() {
                Some(q @ ('"' | '\'' | '`')) => rest[1..].split(q).next().unwrap_or(""),
                _ => rest.split([',', '}', '\n', ' ']).next().unwrap_or(""),
            };
            return Some(value.trim().to_string());
        }
    }
    None
}
