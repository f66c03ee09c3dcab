//! Chat templates: a renderer for the known formats, chosen by recognising the Jinja template string (not a
//! Jinja engine). Each renders exactly what `transformers` renders with the model's template.

use serde::{Deserialize, Serialize};

use super::unicode::is_python_space;
use super::TokenizerError;

/// One message of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` (or any role the template accepts).
    pub role: String,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: content.into() }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }
}

/// The chat formats omex renders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatFormat {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message (SmolLM2, Qwen-style without tools); a
    /// default system message when the template adds one to conversations that have none.
    ChatMl { default_system: Option<String> },
    /// Llama-2 chat: `<s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {assistant} </s>`.
    Llama2,
    /// Llama-3 instruct: `<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>`.
    Llama3,
    /// Qwen2 / Qwen2.5 (ChatML, rendered as its template renders without `tools`): a system message first
    /// (the conversation's own, else `default_system`); `user`, `assistant` and later `system` messages as
    /// ChatML; runs of `tool` messages in one `user` turn of `<tool_response>` blocks; other roles dropped.
    Qwen2 { default_system: String },
}

/// Qwen2.5's system message for conversations that bring none.
pub const QWEN2_DEFAULT_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

fn unsupported(hint: impl Into<String>) -> TokenizerError {
    TokenizerError::UnsupportedChatTemplate { hint: hint.into() }
}

/// Python's `str.strip()`, which the templates' `.strip()` and `| trim` call.
fn py_strip(s: &str) -> &str {
    s.trim_matches(is_python_space)
}

/// The value of a Jinja string literal's body (`\n`, `\t`, `\'`, `\"`, `\\` escapes).
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some(e @ ('\'' | '"' | '\\')) => out.push(e),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The system message a ChatML template adds when the first message is not a system one (SmolLM2's
/// `{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n...<|im_end|>\n' }}`).
fn chatml_default_system(t: &str) -> Option<String> {
    let cond = t.find("!= 'system'").or_else(|| t.find("!= \"system\""))?;
    let rest = &t[cond..];
    let marker = "<|im_start|>system";
    let after = &rest[rest.find(marker)? + marker.len()..];
    let after = after.strip_prefix('\n').or_else(|| after.strip_prefix("\\n"))?;
    let end = after.find("<|im_end|>")?;
    Some(unescape(&after[..end]))
}

/// The default system message of a Qwen2.5 template: the `<|im_start|>system\n...<|im_end|>` literal
/// that is text only (the other one concatenates `messages[0]['content']`).
fn qwen2_default_system(t: &str) -> Option<String> {
    let marker = "<|im_start|>system\\n";
    t.match_indices(marker).find_map(|(at, _)| {
        let after = &t[at + marker.len()..];
        let body = &after[..after.find("<|im_end|>")?];
        (!body.contains(['\'', '"', '{', '}'])).then(|| unescape(body))
    })
}

/// Whether a ChatML template is Qwen2.5's (tool calls as `<tool_call>`, results as `<tool_response>`).
fn is_qwen2_template(t: &str) -> bool {
    t.contains("if tools") && t.contains("<tool_response>") && t.contains("messages[0]['role'] == 'system'")
}

impl ChatFormat {
    /// The format of Qwen2 models whose GGUF brings no template: Qwen2.5's.
    pub fn qwen2() -> ChatFormat {
        ChatFormat::Qwen2 { default_system: QWEN2_DEFAULT_SYSTEM.to_string() }
    }

    /// Recognises the format of a Jinja chat template.
    pub fn detect(template: &str) -> Result<ChatFormat, TokenizerError> {
        let has = |s: &str| template.contains(s);
        let reads_content = has("message['content']") || has("message.content") || has("message[\"content\"]");
        if has("<|im_start|>") && has("<|im_end|>") {
            if is_qwen2_template(template) {
                let default_system = qwen2_default_system(template).unwrap_or_else(|| QWEN2_DEFAULT_SYSTEM.into());
                return Ok(ChatFormat::Qwen2 { default_system });
            }
            if has("tool") {
                return Err(unsupported("a ChatML template with tool calls"));
            }
            if !reads_content {
                return Err(unsupported("a ChatML template that does not read message content"));
            }
            return Ok(ChatFormat::ChatMl { default_system: chatml_default_system(template) });
        }
        if has("<|start_header_id|>") && has("<|end_header_id|>") && has("<|eot_id|>") {
            if has("tools") || has("Knowledge") || has("date_string") {
                return Err(unsupported("a Llama-3.1+ template with tools or dates"));
            }
            return Ok(ChatFormat::Llama3);
        }
        if has("[INST]") && has("[/INST]") {
            if !has("<<SYS>>") {
                return Err(unsupported("an [INST] template without <<SYS>> (Mistral style)"));
            }
            return Ok(ChatFormat::Llama2);
        }
        let head: String = template.chars().take(60).collect();
        Err(unsupported(format!("template starting {head:?}")))
    }

    /// Renders `messages`; `bos` and `eos` are the tokenizer's BOS/EOS token strings.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        bos: &str,
        eos: &str,
    ) -> Result<String, TokenizerError> {
        let mut out = String::new();
        match self {
            ChatFormat::ChatMl { default_system } => {
                for (i, m) in messages.iter().enumerate() {
                    if let (0, Some(sys)) = (i, default_system) {
                        if m.role != "system" {
                            out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                        }
                    }
                    out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
                }
                if add_generation_prompt {
                    out.push_str("<|im_start|>assistant\n");
                }
            }
            ChatFormat::Llama2 => {
                let first = messages.first().ok_or_else(|| {
                    TokenizerError::ChatMessages("the Llama-2 template needs at least one message".into())
                })?;
                let (system, turns) = match first.role.as_str() {
                    "system" => (Some(first.content.as_str()), &messages[1..]),
                    _ => (None, messages),
                };
                for (i, m) in turns.iter().enumerate() {
                    if (m.role == "user") != (i % 2 == 0) {
                        return Err(TokenizerError::ChatMessages(
                            "Conversation roles must alternate user/assistant/user/assistant/...".into(),
                        ));
                    }
                    let content = match (i, system) {
                        (0, Some(sys)) => format!("<<SYS>>\n{sys}\n<</SYS>>\n\n{}", m.content),
                        _ => m.content.clone(),
                    };
                    match m.role.as_str() {
                        "user" => out.push_str(&format!("{bos}[INST] {} [/INST]", py_strip(&content))),
                        "assistant" => out.push_str(&format!(" {} {eos}", py_strip(&content))),
                        _ => {}
                    }
                }
            }
            ChatFormat::Qwen2 { default_system } => render_qwen2(&mut out, messages, default_system)?,
            ChatFormat::Llama3 => {
                for (i, m) in messages.iter().enumerate() {
                    if i == 0 {
                        out.push_str(bos);
                    }
                    let content = py_strip(&m.content);
                    out.push_str(&format!("<|start_header_id|>{}<|end_header_id|>\n\n{content}<|eot_id|>", m.role));
                }
                if add_generation_prompt {
                    out.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        if add_generation_prompt && matches!(self, ChatFormat::Qwen2 { .. }) {
            out.push_str("<|im_start|>assistant\n");
        }
        Ok(out)
    }
}

/// Qwen2.5's template without tools (see [`ChatFormat::Qwen2`]); the generation prompt is added by the caller.
fn render_qwen2(out: &mut String, messages: &[ChatMessage], default_system: &str) -> Result<(), TokenizerError> {
    let first = messages
        .first()
        .ok_or_else(|| TokenizerError::ChatMessages("the Qwen2 template needs at least one message".into()))?;
    let system = if first.role == "system" { first.content.as_str() } else { default_system };
    out.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
    for (i, m) in messages.iter().enumerate() {
        match m.role.as_str() {
            "user" | "assistant" => {}
            "system" if i > 0 => {}
            "tool" => {
                if i == 0 || messages[i - 1].role != "tool" {
                    out.push_str("<|im_start|>user");
                }
                out.push_str(&format!("\n<tool_response>\n{}\n</tool_response>", m.content));
                if messages.get(i + 1).is_none_or(|n| n.role != "tool") {
                    out.push_str("<|im_end|>\n");
                }
                continue;
            }
            _ => continue,
        }
        out.push_str(&format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_smollm2_default_system() {
        let t = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}\
                 {{ '<|im_start|>system\\nYou are nice<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + \
                 message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
        let f = ChatFormat::detect(t).unwrap();
        assert_eq!(f, ChatFormat::ChatMl { default_system: Some("You are nice".into()) });
        assert!(matches!(ChatFormat::detect("{{ messages }}"), Err(TokenizerError::UnsupportedChatTemplate { .. })));
    }

    #[test]
    fn detects_qwen2_default_system() {
        let t = "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- else %}{%- if messages[0]['role'] == 'system' %}\
                 {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}\
                 {{- '<|im_start|>system\\nBe Qwen.<|im_end|>\\n' }}{%- endif %}{%- endif %}\
                 {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' }}<tool_response>";
        assert_eq!(ChatFormat::detect(t).unwrap(), ChatFormat::Qwen2 { default_system: "Be Qwen.".into() });
        let got = ChatFormat::qwen2().render(&[ChatMessage::user("hi")], true, "", "").unwrap();
        let want = format!(
            "<|im_start|>system\n{QWEN2_DEFAULT_SYSTEM}<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n\
                            <|im_start|>assistant\n"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn strips_like_python() {
        assert_eq!(py_strip("\u{1c} a \u{3000}\n"), "a");
        assert_eq!(unescape(r"a\nb\'c"), "a\nb'c");
    }
}
