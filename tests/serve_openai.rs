//! `omex serve` driven by real clients: the official `openai` Python package (tests/serve/openai_client.py),
//! 32 concurrent streaming clients (tests/serve/load.py) and misbehaving raw-socket clients
//! (tests/serve/faults.py), each against its own server on the real SmolLM2 (CPU engine, 2 threads, context
//! 512, 8 sequences at once, an API key). The expected greedy texts come from `omex run` on the same model and
//! engine. Every server is stopped with SIGTERM and must exit with status 0.
//!
//! Needs python3 with the `openai` package (`pip install -r tests/serve/requirements.txt`; .ci/run installs it
//! into a venv). Without it the tests fail, unless OMEX_SKIP_PY_SERVE=1, which skips them (loudly).
//! OMEX_PYTHON picks another interpreter than `python3` from PATH.

mod common;

use common::{omex_bin, smollm2_omex};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

const KEY: &str = "testkey";

/// The tests share a 2-core machine: one server and its clients at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve").join(name)
}

/// The Python that has `openai`, or `None` (said loudly) when it is missing and OMEX_SKIP_PY_SERVE=1.
fn python() -> Option<String> {
    let py = std::env::var("OMEX_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe =
        Command::new(&py).args(["-c", "import openai, sys; print(openai.__version__, sys.executable)"]).output();
    let why = match probe {
        Ok(o) if o.status.success() => {
            eprintln!("serve_openai: openai {}", String::from_utf8_lossy(&o.stdout).trim());
            return Some(py);
        }
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().lines().last().unwrap_or("").to_string(),
        Err(e) => format!("cannot run {py}: {e}"),
    };
    let fix = "pip install -r tests/serve/requirements.txt (in a venv: python3 -m venv ~/.cache/omex/venv && \
               ~/.cache/omex/venv/bin/pip install -r tests/serve/requirements.txt, then put ~/.cache/omex/venv/bin \
               first in PATH)";
    if std::env::var("OMEX_SKIP_PY_SERVE").as_deref() == Ok("1") {
        eprintln!(
            "\n*** SKIPPED: the `omex serve` client tests need `{py}` with the openai package ({why}); \
                   OMEX_SKIP_PY_SERVE=1 skips them. To run them: {fix}\n"
        );
        return None;
    }
    panic!(
        "`{py}` cannot import the openai package ({why}).\nInstall it: {fix}\n(or set OMEX_SKIP_PY_SERVE=1 to skip \
         these tests)"
    );
}

/// A running `omex serve`; dropped without [`Server::stop`] (a failed test), it is killed.
struct Server {
    child: Option<Child>,
    base: String,
    pid: u32,
    log: PathBuf,
    stdout: Receiver<String>,
    /// When SIGTERM was sent (a second one may mean "stop now").
    signalled: Option<Instant>,
}

impl Server {
    fn start(model: &Path, extra: &[&str], tag: &str) -> Server {
        let log = tmp().join(format!("serve-{tag}-{}.log", std::process::id()));
        let stderr = File::create(&log).unwrap();
        let mut child = Command::new(omex_bin())
            .arg("serve")
            .arg(model)
            .args(["--port", "0", "--backend", "cpu", "--threads", "2", "--ctx", "512", "--parallel", "8"])
            .args(["--api-key", KEY])
            .args(extra)
            .env_remove("OMEX_API_KEY")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn omex serve");
        let pid = child.id();
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Server { child: Some(child), base: String::new(), pid, log, stdout: rx, signalled: None };
        // The first stdout line says where it listens.
        match server.stdout.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => {
                let url = line.strip_prefix("omex serve: listening on http://");
                assert!(url.is_some(), "the first stdout line of omex serve: {line:?}\n{}", server.log_text());
                server.base = format!("http://{}", url.unwrap());
            }
            Err(RecvTimeoutError::Timeout) => {
                panic!("omex serve did not say it listens within 60 s\n{}", server.log_text())
            }
            Err(RecvTimeoutError::Disconnected) => {
                let status = server.child.as_mut().unwrap().wait().unwrap();
                panic!("omex serve exited ({status}) before listening\n{}", server.log_text());
            }
        }
        eprintln!("serve_openai: {tag}: omex serve (pid {pid}) listening on {}", server.base);
        server
    }

    fn host_port(&self) -> String {
        self.base.trim_start_matches("http://").to_string()
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(60).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!("--- omex serve stderr ({}) ---\n{}", self.log.display(), tail.join("\n"))
    }

    fn sigterm(&mut self) {
        self.signalled = Some(Instant::now());
        let pid = libc::pid_t::try_from(self.pid).unwrap();
        // SAFETY: kill(2) on the pid of our own child, which we have not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0, "kill -TERM {pid}");
    }

    /// SIGTERM (unless sent already), then the exit status and how long after SIGTERM it came (within `limit`;
    /// killed and failed past it). The server printed nothing else on stdout.
    fn stop(mut self, limit: Duration) -> (ExitStatus, Duration) {
        if self.signalled.is_none() {
            self.sigterm();
        }
        let t0 = self.signalled.unwrap();
        let child = self.child.as_mut().unwrap();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if t0.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("omex serve did not exit within {limit:?} of SIGTERM\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let took = t0.elapsed();
        self.child = None;
        let extra: Vec<String> = self.stdout.try_iter().collect();
        assert!(extra.is_empty(), "omex serve printed more on stdout than its one line: {extra:?}");
        (status, took)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            eprintln!("{}", self.log_text());
        }
    }
}

/// Runs a client script against `server` (at most `limit`), prints its output, fails with it and the server's
/// log when it fails.
fn run_script(py: &str, name: &str, args: &[String], limit: Duration, server: &Server) -> String {
    let out_path = tmp().join(format!("{name}-{}.out", std::process::id()));
    let out = File::create(&out_path).unwrap();
    let t0 = Instant::now();
    let mut child = Command::new(py)
        .arg(script(name))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {py} {name}: {e}"));
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    println!("--- {name} ({:.1} s) ---\n{text}", t0.elapsed().as_secs_f64());
    match status {
        Some(s) if s.success() => text,
        Some(s) => panic!("{name} failed ({s}):\n{text}\n{}", server.log_text()),
        None => panic!("{name} ran past {limit:?} and was killed:\n{text}\n{}", server.log_text()),
    }
}

/// (kind, prompt, max_tokens) whose greedy output `omex run` gives and the server must give too.
const EXPECT: [(&str, &str, usize); 5] = [
    ("completion", "The capital of France is", 24),
    ("completion", "def fibonacci(n):", 32),
    ("completion", "Once upon a time, in a small village,", 32),
    ("completion", "1, 2, 3, 4, 5,", 30),
    ("chat", "Write a haiku about the sea.", 32),
];

/// The greedy outputs of `omex run --json` (same engine, threads and context as the server), as the JSON
/// file openai_client.py reads.
fn expected(model: &Path) -> PathBuf {
    let mut items = Vec::new();
    for (kind, prompt, n) in EXPECT {
        let n_arg = n.to_string();
        let mut args = vec!["run", model.to_str().unwrap(), "-p", prompt, "-n", &n_arg, "--backend", "cpu"];
        args.extend(["--threads", "2", "--ctx", "512", "--json"]);
        if kind == "chat" {
            args.push("--chat");
        }
        let out = Command::new(omex_bin()).args(&args).output().unwrap();
        assert!(out.status.success(), "omex {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        items.push(serde_json::json!({
            "kind": kind,
            "prompt": prompt,
            "max_tokens": n,
            "text": v["text"],
            "prompt_tokens": v["prompt_ids"].as_array().unwrap().len(),
            "completion_tokens": v["output_ids"].as_array().unwrap().len(),
            "stop": v["stop"],
        }));
    }
    let path = tmp().join(format!("serve-expected-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_vec_pretty(&items).unwrap()).unwrap();
    path
}

fn assert_clean_exit(status: ExitStatus, took: Duration) {
    assert!(status.success(), "omex serve exited with {status} after SIGTERM (want 0)");
    eprintln!("serve_openai: omex serve exited 0, {:.2} s after SIGTERM", took.as_secs_f64());
}

#[test]
fn openai_client_gets_what_omex_run_gives() {
    let Some(py) = python() else { return };
    let _serial = serial();
    let model = smollm2_omex("keep");
    let expected = expected(&model);
    // No --model-id: the id is the directory's name without `.omex`.
    let id = model.file_name().unwrap().to_str().unwrap().strip_suffix(".omex").unwrap().to_string();
    let server = Server::start(&model, &[], "openai");
    let args = [server.base.clone(), KEY.into(), id, expected.display().to_string()];
    run_script(&py, "openai_client.py", &args, Duration::from_secs(120), &server);
    let (status, took) = server.stop(Duration::from_secs(30));
    assert_clean_exit(status, took);
}

#[test]
fn load_32_streaming_clients() {
    let Some(py) = python() else { return };
    let _serial = serial();
    let model = smollm2_omex("keep");
    // A queue of 20 beside 8 running sequences: 32 clients overflow it by 4, so 429s come too.
    let server = Server::start(&model, &["--queue", "20", "--model-id", "smollm2"], "load");
    let args: Vec<String> = [&server.base, KEY, "smollm2", "--pid", &server.pid.to_string()]
        .iter()
        .map(|s| s.to_string())
        .chain(["--clients", "32", "--duration", "20", "--max-tokens", "24", "--expect-429"].map(String::from))
        .collect();
    run_script(&py, "load.py", &args, Duration::from_secs(90), &server);
    let (status, took) = server.stop(Duration::from_secs(30));
    assert_clean_exit(status, took);
}

/// Sends a raw HTTP request and returns the connection.
fn raw_request(host_port: &str, path: &str, body: &str) -> TcpStream {
    let mut s = TcpStream::connect(host_port).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {host_port}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: \
         application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).unwrap();
    s
}

#[test]
fn faults_then_a_graceful_stop() {
    let Some(py) = python() else { return };
    let _serial = serial();
    let model = smollm2_omex("keep");
    let grace = 5;
    let extra = ["--max-body", "65536", "--shutdown-grace", &grace.to_string(), "--model-id", "smollm2"];
    let mut server = Server::start(&model, &extra, "faults");
    let args: Vec<String> = [&server.base, KEY, "smollm2", "--max-body", "65536", "--parallel", "8"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    run_script(&py, "faults.py", &args, Duration::from_secs(150), &server);

    // SIGTERM while a stream is running and two idle connections are open (one kept alive after a request,
    // one with half its headers sent): the stream ends normally within the grace, new requests are refused
    // (503 or a closed listener), the idle connections do not hold the server past the grace, and it exits 0.
    let mut kept = TcpStream::connect(server.host_port()).unwrap();
    kept.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let _ = kept.read(&mut [0u8; 1024]).unwrap();
    let mut half = TcpStream::connect(server.host_port()).unwrap();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthor").unwrap();
    let body = r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":64,"ignore_eos":true,"stream":true}"#;
    let mut stream = raw_request(&server.host_port(), "/v1/completions", body);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("data:") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed before its first event: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    server.sigterm();
    std::thread::sleep(Duration::from_millis(200));
    if let Ok(mut late) = TcpStream::connect(server.host_port()) {
        late.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let req =
            format!("GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nConnection: close\r\n\r\n");
        if late.write_all(req.as_bytes()).is_ok() {
            let mut answer = Vec::new();
            let _ = late.read_to_end(&mut answer);
            let answer = String::from_utf8_lossy(&answer);
            assert!(
                answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
                "a request after SIGTERM: want 503 or a closed connection, got {answer:?}"
            );
        }
    }
    stream.read_to_end(&mut got).unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("data: [DONE]"), "the stream in flight at SIGTERM ran to its end:\n{text}");
    let compact = text.replace(' ', "");
    assert!(compact.contains("\"finish_reason\":\"length\""), "its finish_reason is length:\n{text}");
    let (status, took) = server.stop(Duration::from_secs(30));
    assert_clean_exit(status, took);
    assert!(took < Duration::from_secs(grace + 5), "exit {took:?} after SIGTERM, grace {grace} s");
    drop((kept, half));
}
