//! `omex serve` as a client sees it: the real binary on the real SmolLM2 (CPU engine), spoken to over plain
//! TCP by a small HTTP/1.1 client. Greedy text is checked against `omex run` on the same prompt; errors against
//! OpenAI's error shape; `/metrics` against the requests made; a full queue against 429; SIGTERM against the
//! exit status.

mod common;

use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const KEY: &str = "test-key-0123";
const PROMPT: &str = "The capital of France is";
const CHAT: &str = "What is the capital of France?";

/// A running `omex serve`, killed if the test ends without stopping it.
struct Serve {
    child: Child,
    addr: String,
    stderr: Arc<Mutex<String>>,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        let model = common::smollm2_omex("keep");
        let mut child = Command::new(common::omex_bin())
            .arg("serve")
            .arg(&model)
            .args(["--port", "0", "--backend", "cpu", "--threads", "2", "--ctx", "512"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("omex serve");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (mut err, log) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = err.read(&mut buf) {
                log.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // anything more on stdout would be a contract break; the test reads only one line
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(l))) => l,
            other => panic!("no listening line ({other:?}); stderr:\n{}", stderr.lock().unwrap()),
        };
        let addr = line.strip_prefix("omex serve: listening on http://").unwrap_or_else(|| panic!("{line:?}"));
        Serve { child, addr: addr.to_string(), stderr }
    }

    fn request(&self, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Response {
        http(&self.addr, method, path, key, body)
    }

    fn post(&self, path: &str, body: &Value) -> Response {
        self.request("POST", path, Some(KEY), Some(&body.to_string()))
    }

    fn connect(&self) -> TcpStream {
        connect(&self.addr)
    }

    fn metrics(&self) -> Metrics {
        let r = self.request("GET", "/metrics", Some(KEY), None);
        assert_eq!(r.status, 200);
        Metrics(r.text())
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// One request on its own connection; the whole response.
fn http(addr: &str, method: &str, path: &str, key: Option<&str>, body: Option<&str>) -> Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(k) = key {
        head.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    let mut s = connect(addr);
    s.write_all(format!("{head}\r\n{}", body.unwrap_or("")).as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    Response::parse(&raw)
}

struct Response {
    status: u16,
    headers: String,
    body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a header block");
        let headers = String::from_utf8(raw[..split].to_vec()).unwrap().to_ascii_lowercase();
        let status = headers.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
        let mut body = raw[split + 4..].to_vec();
        if headers.contains("transfer-encoding: chunked") {
            body = dechunk(&body);
        }
        Response { status, headers, body }
    }

    fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        assert!(self.headers.contains("content-type: text/event-stream"), "{}", self.headers);
        let text = self.text();
        assert!(text.ends_with("\n\n"), "{text:?}");
        text.split("\n\n").filter(|e| !e.is_empty()).map(|e| e.strip_prefix("data: ").expect(e).to_string()).collect()
    }

    /// Asserts an OpenAI error object with this status, type and code; returns its message.
    fn error(&self, status: u16, kind: &str, code: Option<&str>) -> String {
        assert_eq!(self.status, status, "{}", self.text());
        let e = &self.json()["error"];
        assert_eq!(e["type"], kind, "{e}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
        if let Some(c) = code {
            assert_eq!(e["code"], c, "{e}");
        }
        e["message"].as_str().expect("a message").to_string()
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 4 + size..];
    }
}

struct Metrics(String);

impl Metrics {
    fn get(&self, name: &str) -> u64 {
        let line = self.0.lines().find(|l| l.split(' ').next() == Some(name));
        let v = line.and_then(|l| l.split(' ').nth(1)).unwrap_or_else(|| panic!("no {name} in\n{}", self.0));
        v.parse::<f64>().unwrap() as u64
    }

    fn http(&self, code: u16) -> u64 {
        let name = format!("omex_http_responses_total{{code=\"{code}\"}}");
        self.0.lines().find(|l| l.starts_with(&name)).map_or(0, |l| l[name.len()..].trim().parse().unwrap())
    }
}

/// What `omex run` prints for the prompt (the generated text; it ends the line itself).
fn omex_run(args: &[&str]) -> String {
    let model = common::smollm2_omex("keep");
    let out = Command::new(common::omex_bin())
        .arg("run")
        .arg(&model)
        .args(args)
        .args(["--backend", "cpu", "--threads", "2", "--ctx", "512"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    text.strip_suffix('\n').expect("omex run ends with a newline").to_string()
}

/// The streamed chunks' text, the finish reason and the usage (asserting the chunk sequence's shape).
fn streamed(r: &Response, chat: bool) -> (String, String, Option<Value>) {
    assert_eq!(r.status, 200, "{}", r.text());
    let events = r.events();
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let (mut text, mut finish, mut usage) = (String::new(), None, None);
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], if chat { "chat.completion.chunk" } else { "text_completion" }, "{c}");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(u) = c.get("usage") {
            assert_eq!((i, c["choices"].as_array().map(Vec::len)), (chunks.len() - 1, Some(0)), "{c}");
            usage = Some(u.clone());
            continue;
        }
        assert!(finish.is_none(), "a chunk after the finish: {c}");
        let choice = &c["choices"][0];
        if chat {
            assert_eq!(choice["delta"].get("role").is_some(), i == 0, "the role comes in the first chunk: {c}");
        }
        let piece = if chat { &choice["delta"]["content"] } else { &choice["text"] };
        text.push_str(piece.as_str().unwrap_or(""));
        finish = choice["finish_reason"].as_str().map(str::to_string);
    }
    (text, finish.expect("a finish chunk"), usage)
}

#[test]
fn the_openai_api_over_the_real_model() {
    let s = Serve::start(&["--api-key", KEY, "--parallel", "4"]);
    let model_id = common::smollm2_omex("keep").file_name().unwrap().to_str().unwrap().replace(".omex", "");
    let (mut ok, mut bad, mut tokens) = (0, 0, (0, 0)); // 200s and 400s so far; prompt and completion tokens
    let mut count = |u: &Value| {
        tokens.0 += u["prompt_tokens"].as_u64().unwrap();
        tokens.1 += u["completion_tokens"].as_u64().unwrap();
        assert_eq!(u["total_tokens"].as_u64(), Some(tokens_of(u)), "{u}");
    };
    fn tokens_of(u: &Value) -> u64 {
        u["prompt_tokens"].as_u64().unwrap() + u["completion_tokens"].as_u64().unwrap()
    }

    // Health needs no key; everything else does.
    let h = s.request("GET", "/health", None, None);
    assert_eq!((h.status, h.json()), (200, json!({"status": "ok"})));
    s.request("GET", "/v1/models", None, None).error(401, "authentication_error", None);
    s.request("GET", "/v1/models", Some("wrong"), None).error(401, "authentication_error", None);
    let m = s.request("GET", "/v1/models", Some(KEY), None);
    assert_eq!(m.status, 200);
    assert_eq!((m.json()["object"].clone(), m.json()["data"][0]["id"].clone()), (json!("list"), json!(model_id)));
    ok += 2;

    // Greedy text is `omex run`'s.
    let want = omex_run(&["-p", PROMPT, "-n", "16"]);
    let r =
        s.post("/v1/completions", &json!({"model": model_id, "prompt": PROMPT, "max_tokens": 16, "temperature": 0}));
    let v = r.json();
    assert_eq!(r.status, 200, "{v}");
    assert_eq!(
        (v["object"].as_str(), v["choices"][0]["text"].as_str()),
        (Some("text_completion"), Some(want.as_str()))
    );
    assert_eq!(
        (v["choices"][0]["finish_reason"].as_str(), v["usage"]["completion_tokens"].as_u64()),
        (Some("length"), Some(16))
    );
    let prompt_tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    count(&v["usage"]);
    ok += 1;

    // A streamed chat: a role chunk, text chunks, the finish, the usage, [DONE]; the text is `omex run --chat`'s.
    let want_chat = omex_run(&["--chat", "-p", CHAT, "-n", "12"]);
    let body = json!({"model": model_id, "messages": [{"role": "user", "content": CHAT}], "max_tokens": 12,
                      "stream": true, "stream_options": {"include_usage": true}});
    let (text, finish, usage) = streamed(&s.post("/v1/chat/completions", &body), true);
    assert_eq!(text, want_chat);
    let usage = usage.expect("include_usage asks for a usage chunk");
    assert_eq!(finish, if usage["completion_tokens"] == 12 { "length" } else { "stop" });
    count(&usage);
    // The same, whole, with the content as an array of text parts.
    let body = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": CHAT}]}], "max_tokens": 12});
    let v = s.post("/v1/chat/completions", &body).json();
    assert_eq!(
        (v["object"].as_str(), v["choices"][0]["message"]["role"].as_str()),
        (Some("chat.completion"), Some("assistant"))
    );
    assert_eq!(v["choices"][0]["message"]["content"].as_str(), Some(want_chat.as_str()));
    count(&v["usage"]);
    ok += 2;

    // A stop string out of the middle of the greedy text: the text up to it, finish "stop", whole and streamed.
    let mid = want.char_indices().map(|(i, _)| i).nth(want.chars().count() / 2).unwrap();
    let stop: String = want[mid..].chars().take(3).collect();
    let cut = &want[..want.find(&stop).unwrap()];
    let body = json!({"prompt": PROMPT, "max_tokens": 16, "stop": ["<never>", stop]});
    let v = s.post("/v1/completions", &body).json();
    assert_eq!(
        (v["choices"][0]["text"].as_str(), v["choices"][0]["finish_reason"].as_str()),
        (Some(cut), Some("stop")),
        "{v}"
    );
    count(&v["usage"]);
    let mut body = body;
    body["stream"] = json!(true);
    let (text, finish, usage) = streamed(&s.post("/v1/completions", &body), false);
    assert_eq!((text.as_str(), finish.as_str(), usage), (cut, "stop", None));
    ok += 2;

    // Bad requests: 400 with OpenAI's error object, naming the field.
    let msg = [json!({"role": "user", "content": "hi"})];
    for (body, param) in [
        (json!({"messages": msg, "max_tokens": -1}), "max_tokens"),
        (json!({"messages": msg, "max_tokens": "5"}), "max_tokens"),
        (json!({"messages": msg, "temperature": "hot"}), "temperature"),
        (json!({"messages": msg, "temperature": 1e9}), "temperature"),
        (json!({"messages": msg, "n": 2}), "n"),
        (json!({"messages": msg, "stream": "yes"}), "stream"),
        (json!({"messages": "hi"}), "messages"),
        (json!({"messages": []}), "messages"),
        (json!({"prompt": ["a", "b"]}), "prompt"),
    ] {
        let path = if body.get("prompt").is_some() { "/v1/completions" } else { "/v1/chat/completions" };
        let r = s.post(path, &body);
        r.error(400, "invalid_request_error", None);
        assert_eq!(r.json()["error"]["param"], param, "{body}");
        bad += 1;
    }
    let m = s.post("/v1/chat/completions", &json!({"model": "gpt-4", "messages": msg}));
    assert!(m.error(400, "invalid_request_error", Some("model_not_found")).contains("gpt-4"));
    let long = "hello ".repeat(600);
    s.post("/v1/completions", &json!({"prompt": long})).error(
        400,
        "invalid_request_error",
        Some("context_length_exceeded"),
    );
    for raw in ["{\"messages\": [", "not json", "[1, 2]", ""] {
        s.request("POST", "/v1/chat/completions", Some(KEY), Some(raw)).error(400, "invalid_request_error", None);
    }
    bad += 6;

    // A body over --max-body (1 MiB) is refused from its Content-Length, before it is read.
    let mut c = s.connect();
    let head = format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", 2 << 20);
    c.write_all(head.as_bytes()).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    Response::parse(&raw).error(413, "invalid_request_error", None);
    s.request("GET", "/v1/nothing", Some(KEY), None).error(404, "not_found_error", None);
    s.request("GET", "/v1/chat/completions", Some(KEY), None).error(405, "invalid_request_error", None);

    // A client that goes away mid-stream cancels its request.
    let mut c = s.connect();
    let body = json!({"prompt": PROMPT, "max_tokens": 400, "ignore_eos": true, "stream": true}).to_string();
    let head = format!(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    c.write_all(format!("{head}{body}").as_bytes()).unwrap();
    // Leave after the first text chunk (a token was sampled: its time to first token is in the histogram).
    let (mut raw, mut buf) = (Vec::new(), [0u8; 512]);
    while !raw.windows(6).any(|w| w == b"data: ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "{}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    drop(c);
    let t = Instant::now();
    let mut polls = 1;
    while s.metrics().get("omex_requests_cancelled_total") == 0 {
        assert!(t.elapsed() < Duration::from_secs(10), "the dropped stream was not cancelled");
        std::thread::sleep(Duration::from_millis(50));
        polls += 1;
    }
    ok += 1;

    // The counters add up: 5 requests ran to their end, one was cancelled, one (too long) was refused.
    let m = s.metrics();
    // Each /metrics response counts once it is rendered: the polls are in, this one is not.
    assert_eq!(m.http(200), ok + polls, "{}", m.0);
    for (name, want) in [
        ("omex_requests_total", 6),
        ("omex_requests_finished_total", 5),
        ("omex_requests_cancelled_total", 1),
        ("omex_requests_rejected_total", 1),
        ("omex_requests_failed_total", 0),
        ("omex_queue_depth", 0),
        ("omex_active_sequences", 0),
        ("omex_kv_blocks_used", 0),
        ("omex_kv_blocks_total", 4 * 512 / 16),
        ("omex_time_to_first_token_seconds_count", 6),
    ] {
        assert_eq!(m.get(name), want, "{name} in\n{}", m.0);
    }
    // Two requests reported no usage: the streamed one with a stop string, and the cancelled one (which
    // generated some tokens before its client left); both read PROMPT.
    assert_eq!(m.get("omex_prompt_tokens_total"), tokens.0 + 2 * prompt_tokens, "{}", m.0);
    assert!(m.get("omex_completion_tokens_total") > tokens.1, "{}", m.0);
    assert!(
        m.get("omex_decode_steps_total") > 0 && m.get("omex_step_sequences_total") >= m.get("omex_decode_steps_total")
    );
    assert_eq!(m.get("omex_time_to_first_token_seconds_bucket{le=\"+Inf\"}"), 6);
    for (code, n) in [(400, bad), (401, 2), (404, 1), (405, 1), (413, 1)] {
        assert_eq!(m.http(code), n, "responses with status {code} in\n{}", m.0);
    }
}

#[test]
fn a_full_queue_is_429_and_sigterm_ends_the_requests_in_flight_and_exits_zero() {
    let mut s = Serve::start(&["--shutdown-grace", "1", "--parallel", "1", "--queue", "1"]);
    let mut c = s.connect();
    let body = json!({"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 2000,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(format!("{head}{body}").as_bytes()).unwrap();
    // Wait for the text to flow (the role chunk and a piece of text), then ask the server to stop.
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while raw.windows(9).filter(|w| w == b"\"content\"").count() < 2 {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended early: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&buf[..n]);
    }
    // The one place is taken: a second request waits, a third finds the queue full.
    let addr = s.addr.clone();
    let waiting = std::thread::spawn(move || {
        http(&addr, "POST", "/v1/completions", None, Some(r#"{"prompt": "Hello", "max_tokens": 4}"#))
    });
    let t = Instant::now();
    while s.metrics().get("omex_queue_depth") != 1 {
        assert!(t.elapsed() < Duration::from_secs(10), "the second request is not queued");
        std::thread::sleep(Duration::from_millis(20));
    }
    let full = s.request("POST", "/v1/completions", None, Some(r#"{"prompt": "Hi"}"#));
    full.error(429, "rate_limit_error", Some("rate_limit_exceeded"));
    assert_eq!(s.metrics().get("omex_requests_rejected_total"), 1);

    let t = Instant::now();
    // SAFETY: kill(2) on the pid of the child this test started and has not reaped.
    assert_eq!(unsafe { libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM) }, 0);
    // The stream ends (cancelled after the 1 s grace: an error event; or finished: [DONE]).
    c.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.ends_with("data: [DONE]\n\n0\r\n\r\n") || text.contains("\"code\":\"request_cancelled\""), "{text}");
    // The waiting request never got a place: cancelled at the end of the grace.
    waiting.join().unwrap().error(503, "server_error", Some("request_cancelled"));
    let status = loop {
        if let Some(st) = s.child.try_wait().unwrap() {
            break st;
        }
        assert!(t.elapsed() < Duration::from_secs(6), "still running 6 s after SIGTERM (grace 1 s)");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}; stderr:\n{}", s.stderr.lock().unwrap());
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());
    // It no longer listens.
    assert!(TcpStream::connect(&s.addr).is_err());
}

#[test]
fn clients_that_trickle_a_request_are_cut_off_and_streams_that_outlast_the_timeout_are_not() {
    let s = Serve::start(&["--read-timeout", "1", "--parallel", "2"]);
    // A header that never ends: the connection is closed once the timeout has passed.
    let mut header = s.connect();
    header.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A whole header and a tenth of the body it announces: 408, as an OpenAI error.
    let mut body = s.connect();
    body.write_all(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{\"prompt\":",
    )
    .unwrap();
    let t = Instant::now();
    // Meanwhile a stream that runs well past the timeout, with its request sent at once, is answered in full.
    let long =
        s.post("/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 300, "ignore_eos": true, "stream": true}));
    let (_, finish, _) = streamed(&long, false);
    assert_eq!(finish, "length");
    assert!(t.elapsed() > Duration::from_secs(1), "the stream was too short to test the timeout: {:?}", t.elapsed());

    let mut raw = Vec::new();
    body.read_to_end(&mut raw).unwrap();
    let message = Response::parse(&raw).error(408, "invalid_request_error", None);
    assert!(message.contains("did not arrive within 1 s"), "{message}");
    let mut raw = Vec::new();
    // The server closes the connection (whatever it says first); a reset reads as an error here, also fine.
    let _ = header.read_to_end(&mut raw);
    assert!(t.elapsed() < Duration::from_secs(25), "the trickling connections were held {:?}", t.elapsed());
    assert!(raw.is_empty() || raw.starts_with(b"HTTP/1.1 408"), "{}", String::from_utf8_lossy(&raw));
    // And the server goes on serving.
    let r = s.post("/v1/completions", &json!({"prompt": PROMPT, "max_tokens": 4}));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(s.stderr.lock().unwrap().is_empty() || !s.stderr.lock().unwrap().contains("panicked"));
}
