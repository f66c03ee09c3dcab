//! An interactive conversation over any reader and writer (a terminal, a pipe, a test's buffers): each line
//! the user writes is a turn, the answer streams back, and the conversation stays in the session's KV cache.
//!
//! The prompt of each turn is the whole kept conversation, tokenized message by message with the model's
//! chat template and with every earlier answer as the very ids that were generated, so the session finds
//! its cache a prefix of the new prompt and prefills only the new turn. Memory is a sliding window: when
//! the conversation and room for an answer pass `window` tokens, the oldest turns drop out (the system
//! prompt stays) and the session prefills the rest again from the end of the system prompt.
//!
//! Commands: `/reset` forgets the conversation, `/save FILE` writes the transcript (never over an existing
//! file), `/help`; end of input (Ctrl-D) leaves. The `cancel` flag (set by Ctrl-C in `omex chat`) stops the
//! current answer and the conversation goes on.

use super::file_reader::{render_files, FileReader};
use super::tool_call::{self, Parsed};
use crate::error::{Error, Result};
use crate::runtime::{GenerateOptions, Session, StopReason};
use crate::tokenizer::ChatMessage;
use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

/// Tool calls answered in a row before the model must answer in words.
pub const MAX_TOOL_ROUNDS: usize = 3;
/// Longest input line taken (longer lines are refused, not truncated).
pub const MAX_LINE_BYTES: usize = 1 << 20;

#[derive(Clone, Debug)]
pub struct ChatConfig {
    /// The system message; `None`: the template's default (if any).
    pub system: Option<String>,
    /// Tokens of conversation kept (system prompt, turns and the answer being written); at most the context.
    pub window: usize,
    /// Sampling, stop strings and the most tokens of one answer.
    pub generate: GenerateOptions,
    /// The `file_reader` tools the model may call.
    pub tools: Vec<FileReader>,
}

/// One exchange: the user's message (or a tool's result) and the answer, with the answer's generated ids.
#[derive(Clone, Debug)]
struct Turn {
    user: ChatMessage,
    answer: String,
    answer_ids: Vec<u32>,
}

pub struct Chat {
    session: Session,
    cfg: ChatConfig,
    turns: VecDeque<Turn>,
    /// Every message since the last `/reset`, dropped turns included (what `/save` writes).
    transcript: Vec<ChatMessage>,
    dropped: usize,
    last_prompt: Vec<u32>,
}

/// What one answered line did, for callers and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct TurnReport {
    pub answer: String,
    pub stop: StopReason,
    /// Tokens prefilled for this turn (what the cache did not hold).
    pub prefilled: usize,
    pub prompt_tokens: usize,
    pub tool_calls: usize,
}

impl Chat {
    pub fn new(session: Session, cfg: ChatConfig) -> Result<Chat> {
        let ctx = session.context_length();
        if cfg.window < 16 || cfg.window > ctx {
            return Err(Error::Usage(format!(
                "a chat window of {} tokens: must be 16 to the context's {ctx} (raise --ctx or lower the window)",
                cfg.window
            )));
        }
        if cfg.generate.max_tokens == 0 {
            return Err(Error::Usage("an answer of at most 0 tokens: give at least 1".into()));
        }
        let mut chat =
            Chat { session, cfg, turns: VecDeque::new(), transcript: Vec::new(), dropped: 0, last_prompt: vec![] };
        chat.reset();
        Ok(chat)
    }

    /// Forgets the conversation (the system prompt stays).
    pub fn reset(&mut self) {
        self.turns.clear();
        self.transcript.clear();
        self.transcript.extend(self.cfg.system.iter().map(|s| ChatMessage::system(s.as_str())));
        self.session.reset();
        self.dropped = 0;
    }

    /// Turns dropped from the window since the last reset.
    pub fn dropped_turns(&self) -> usize {
        self.dropped
    }

    pub fn kept_turns(&self) -> usize {
        self.turns.len()
    }

    /// The ids of the last prompt (the kept conversation and the generation prompt).
    pub fn last_prompt(&self) -> &[u32] {
        &self.last_prompt
    }

    pub fn transcript(&self) -> &[ChatMessage] {
        &self.transcript
    }

    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Reads lines from `input` until it ends, answering each on `out`.
    pub fn run(&mut self, input: &mut dyn BufRead, out: &mut dyn Write, cancel: &AtomicBool) -> Result<()> {
        let io = |e| Error::io("chat output", e);
        let mut line = String::new();
        loop {
            write!(out, "> ").and_then(|()| out.flush()).map_err(io)?;
            line.clear();
            let n = read_line(input, &mut line)?;
            if n == 0 {
                writeln!(out).map_err(io)?;
                return Ok(());
            }
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            if let Some(cmd) = text.strip_prefix('/') {
                self.command(cmd, out)?;
                continue;
            }
            match self.answer(text, out, cancel) {
                Ok(r) if r.stop == StopReason::Cancelled => writeln!(out, "\n[stopped]").map_err(io)?,
                Ok(_) => writeln!(out).map_err(io)?,
                // A turn that cannot run (too long for the window...) is reported; the chat goes on.
                Err(e @ Error::Usage(_)) => writeln!(out, "[error: {e}]").map_err(io)?,
                Err(e) => return Err(e),
            }
        }
    }

    fn command(&mut self, cmd: &str, out: &mut dyn Write) -> Result<()> {
        let io = |e| Error::io("chat output", e);
        let (name, arg) = cmd.split_once(char::is_whitespace).map_or((cmd, ""), |(n, a)| (n, a.trim()));
        match name {
            "reset" => {
                self.reset();
                writeln!(out, "[conversation reset]").map_err(io)?;
            }
            "save" if !arg.is_empty() => match self.save(Path::new(arg)) {
                Ok(()) => writeln!(out, "[saved {} messages to {arg}]", self.transcript.len()).map_err(io)?,
                Err(e) => writeln!(out, "[error: {e}]").map_err(io)?,
            },
            _ => writeln!(
                out,
                "[commands: /reset forgets the conversation, /save FILE writes it as JSON (a new file), /help; \
                 Ctrl-C stops an answer, Ctrl-D leaves]"
            )
            .map_err(io)?,
        }
        Ok(())
    }

    /// Writes the transcript as JSON to a new file; an existing file is never replaced.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json = serde_json::json!({ "messages": self.transcript, "dropped_turns": self.dropped });
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Usage(format!("{}: exists; not overwritten (give a new file name)", path.display()))
            } else {
                Error::io(path, e)
            }
        })?;
        let text = serde_json::to_string_pretty(&json).map_err(|e| Error::Usage(e.to_string()))?;
        f.write_all(text.as_bytes()).and_then(|()| f.write_all(b"\n")).map_err(|e| Error::io(path, e))
    }

    /// Answers one user message, streaming the answer to `out`; tool calls are run and answered (at most
    /// [`MAX_TOOL_ROUNDS`] in a row).
    pub fn answer(&mut self, text: &str, out: &mut dyn Write, cancel: &AtomicBool) -> Result<TurnReport> {
        let mut user = ChatMessage::user(text);
        let mut report = TurnReport {
            answer: String::new(),
            stop: StopReason::MaxTokens,
            prefilled: 0,
            prompt_tokens: 0,
            tool_calls: 0,
        };
        for round in 0..=MAX_TOOL_ROUNDS {
            let (answer, stop, prefilled, prompt_tokens) = self.one_turn(user.clone(), out, cancel)?;
            report.prefilled += prefilled;
            report.prompt_tokens = prompt_tokens;
            report.stop = stop;
            report.answer = answer.clone();
            if self.cfg.tools.is_empty() || stop == StopReason::Cancelled || round == MAX_TOOL_ROUNDS {
                break;
            }
            let Some(result) = self.tool_result(&answer) else {
                break;
            };
            report.tool_calls += 1;
            let first = result.lines().next().unwrap_or("");
            writeln!(out, "\n[tool: {first}]").map_err(|e| Error::io("chat output", e))?;
            user = ChatMessage::user(result);
        }
        Ok(report)
    }

    /// What the model gets back for the tool call in `answer`, if it holds one: the files, or why the call
    /// could not be read or run.
    pub fn tool_result(&self, answer: &str) -> Option<String> {
        match tool_call::parse(answer) {
            Parsed::None => None,
            Parsed::Malformed(why) => Some(format!("The tool call was not understood: {why}")),
            Parsed::Call(call) => Some(self.run_tool(&call.tool, &call.path)),
        }
    }

    fn run_tool(&self, tool: &str, path: &str) -> String {
        let Some(reader) = self.cfg.tools.iter().find(|t| t.tool_id() == tool) else {
            let known: Vec<_> = self.cfg.tools.iter().map(|t| t.tool_id()).collect();
            return format!("There is no tool {tool:?} (tools: {}).", known.join(", "));
        };
        match reader.read_path(path) {
            Ok(files) if files.is_empty() => format!("{tool} {path}: no readable files there."),
            Ok(files) => format!("{tool} {path}: {} file(s)\n{}", files.len(), render_files(&files)),
            Err(e) => format!("{tool} {path} failed: {e}"),
        }
    }

    /// Generates the answer to `user` within the window, dropping old turns as needed.
    fn one_turn(
        &mut self,
        user: ChatMessage,
        out: &mut dyn Write,
        cancel: &AtomicBool,
    ) -> Result<(String, StopReason, usize, usize)> {
        let window = self.cfg.window;
        let reserve = self.cfg.generate.max_tokens.min(window / 4).max(1);
        let ids = loop {
            let ids = self.prompt_ids(&user)?;
            if ids.len() + reserve <= window || self.turns.is_empty() {
                break ids;
            }
            self.turns.pop_front();
            self.dropped += 1;
        };
        if ids.len() >= window {
            return Err(Error::Usage(format!(
                "this message makes a prompt of {} tokens with the system prompt, over the chat window of {window}",
                ids.len()
            )));
        }
        let mut opts = self.cfg.generate.clone();
        opts.max_tokens = opts.max_tokens.min(window - ids.len());
        opts.truncate_prompt = false;
        cancel.store(false, Ordering::SeqCst);
        let mut write_err = None;
        let mut on_text = |piece: &str| {
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|()| out.flush()) {
                write_err = Some(e);
                return false;
            }
            !cancel.load(Ordering::SeqCst)
        };
        self.last_prompt = ids.clone();
        let g = self.session.generate_from_ids(ids, &opts, &mut on_text)?;
        if let Some(e) = write_err {
            return Err(Error::io("chat output", e));
        }
        self.transcript.push(user.clone());
        self.transcript.push(ChatMessage::assistant(g.text.as_str()));
        let prompt_tokens = g.prompt_ids.len();
        self.turns.push_back(Turn { user, answer: g.text.clone(), answer_ids: g.output_ids });
        Ok((g.text, g.stop, g.timings.prompt_tokens, prompt_tokens))
    }

    /// The ids of the kept conversation plus `user` and the generation prompt, message by message (see the
    /// module's comment); when the template does not render a conversation as a growing string, the whole
    /// text is tokenized at once instead.
    fn prompt_ids(&self, user: &ChatMessage) -> Result<Vec<u32>> {
        let tok = self.session.tokenizer();
        let render =
            |m: &[ChatMessage], gen: bool| tok.apply_chat_template(m, gen).map_err(|e| Error::Tokenizer(e.to_string()));
        let mut msgs: Vec<ChatMessage> = self.cfg.system.iter().map(|s| ChatMessage::system(s.as_str())).collect();
        let mut text = String::new();
        let mut ids: Vec<u32> = Vec::new();
        let mut grows = true;
        // Appends the tokens of `next[text.len()..]`, BOS-aware for the first piece.
        let push = |ids: &mut Vec<u32>, text: &mut String, next: String, grows: &mut bool| {
            if !next.starts_with(text.as_str()) {
                *grows = false;
                return;
            }
            let piece = &next[text.len()..];
            if ids.is_empty() {
                ids.extend(tok.encode_with_specials(piece));
            } else {
                ids.extend(tok.encode(piece));
            }
            *text = next;
        };
        if !msgs.is_empty() {
            push(&mut ids, &mut text, render(&msgs, false)?, &mut grows);
        }
        for t in &self.turns {
            msgs.push(t.user.clone());
            push(&mut ids, &mut text, render(&msgs, false)?, &mut grows);
            // The generation prompt, the answer as generated, then what the template closes a message with.
            let with_gen = render(&msgs, true)?;
            msgs.push(ChatMessage::assistant(t.answer.as_str()));
            let full = render(&msgs, false)?;
            let gen_prefix = with_gen.get(text.len()..).filter(|_| with_gen.starts_with(text.as_str()));
            let tail = gen_prefix
                .and_then(|g| full.strip_prefix(text.as_str())?.strip_prefix(g)?.strip_prefix(t.answer.as_str()));
            match (gen_prefix, tail) {
                (Some(g), Some(tail)) if grows => {
                    ids.extend(tok.encode(g));
                    ids.extend_from_slice(&t.answer_ids);
                    ids.extend(tok.encode(tail));
                    text = full;
                }
                _ => push(&mut ids, &mut text, full, &mut grows),
            }
        }
        msgs.push(user.clone());
        push(&mut ids, &mut text, render(&msgs, true)?, &mut grows);
        if !grows {
            return Ok(tok.encode_with_specials(&render(&msgs, true)?));
        }
        Ok(ids)
    }
}

/// Reads one line of at most [`MAX_LINE_BYTES`]; 0 at the end of the input.
fn read_line(input: &mut dyn BufRead, line: &mut String) -> Result<usize> {
    let mut bytes = Vec::new();
    let n = std::io::Read::take(&mut *input, MAX_LINE_BYTES as u64 + 1)
        .read_until(b'\n', &mut bytes)
        .map_err(|e| Error::io("chat input", e))?;
    if bytes.len() > MAX_LINE_BYTES {
        return Err(Error::Usage(format!("an input line over {MAX_LINE_BYTES} bytes")));
    }
    line.push_str(&String::from_utf8_lossy(&bytes));
    Ok(n)
}
