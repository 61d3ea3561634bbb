//! The dashboard of `bftnet up`, against real processes: the JSON the page
//! reads, controls driven through it, the live event stream, and (where a
//! Chromium is installed) the rendered page.

mod common;

use common::{serial, Background, Testnet};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `bftnet up` (attached, with its default light load) serving the
/// dashboard on a free port; stopped with Ctrl-C on drop, then `down`.
struct Up {
    /// `bftnet down` and SIGKILL of any PID left, after the Ctrl-C.
    net: Testnet,
    up: Option<Background>,
    /// `127.0.0.1:PORT`.
    address: String,
}

impl Up {
    fn start(name: &str) -> Up {
        let net = Testnet {
            dir: std::env::temp_dir()
                .join(format!("bftnet-dashboard-{name}-{}", std::process::id())),
        };
        let _ = std::fs::remove_dir_all(&net.dir);
        let mut child = net
            .command("up", &["--ui-port", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn bftnet up");
        let stdout = child.stdout.take().expect("piped");
        let up = Background(child);
        // Read until the dashboard's line; keep draining afterwards so
        // `up` never sees its output closed (it would stop the testnet).
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.strip_prefix("dashboard: http://") {
                    let address = rest.split('/').next().unwrap_or_default().to_owned();
                    let _ = sender.send(address);
                }
            }
        });
        let address = receiver
            .recv_timeout(Duration::from_secs(120))
            .expect("bftnet up printed its dashboard's address");
        Up {
            net,
            up: Some(up),
            address,
        }
    }

    fn get(&self, path: &str) -> String {
        http(&self.address, "GET", path, None).1
    }

    fn state(&self) -> Value {
        serde_json::from_str(&self.get("/api/state")).expect("state is JSON")
    }

    fn events(&self) -> Vec<Value> {
        serde_json::from_str(&self.get("/api/events")).expect("events are JSON")
    }

    /// Runs a control; returns its reply.
    fn control(&self, body: &str) -> Value {
        let (code, reply) = http(&self.address, "POST", "/api/control", Some(body));
        let reply: Value = serde_json::from_str(&reply).expect("reply is JSON");
        assert_eq!(code, 200, "{body}: {reply}");
        assert_eq!(reply["ok"], true, "{body}: {reply}");
        reply
    }

    /// Waits up to `seconds` for the state to satisfy `check`.
    fn wait_state(&self, seconds: u64, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            let state = self.state();
            if check(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} within {seconds} s: {state}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until every node answers, commits happen, and the view has
    /// stayed the same for 2 s: a fresh testnet under load may change
    /// views while its nodes start one after another.
    fn settled(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(45);
        loop {
            let before = self.wait_state(30, "healthy testnet", healthy);
            std::thread::sleep(Duration::from_secs(2));
            let after = self.state();
            if healthy(&after) && after["view"] == before["view"] {
                return after;
            }
            assert!(Instant::now() < deadline, "views keep changing: {after}");
        }
    }

    fn dir_flag(&self) -> String {
        format!(" --dir {}", self.net.dir.display())
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut up) = self.up.take() {
            // Ctrl-C: `up` stops its testnet; `Testnet`'s drop then makes
            // sure nothing is left.
            let _ = Command::new("kill")
                .args(["-INT", &up.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline && matches!(up.0.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// One HTTP/1.1 exchange: `(status code, body)`.
fn http(address: &str, method: &str, path: &str, json: Option<&str>) -> (u16, String) {
    let mut stream = TcpStream::connect(address).expect("connect to the dashboard");
    stream
        .set_read_timeout(Some(Duration::from_secs(90)))
        .expect("timeout");
    let body = json.unwrap_or_default();
    let content = if json.is_some() {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{content}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read");
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_owned())
}

/// A page's view of `/api/stream`: the `event` messages it received, on a
/// thread reading the chunked stream.
struct StreamClient {
    events: Arc<Mutex<Vec<Value>>>,
    states: Arc<Mutex<u64>>,
    stream: TcpStream,
}

impl StreamClient {
    fn connect(address: &str) -> StreamClient {
        let mut stream = TcpStream::connect(address).expect("connect");
        write!(
            stream,
            "GET /api/stream HTTP/1.1\r\nHost: {address}\r\nAccept: text/event-stream\r\n\r\n"
        )
        .expect("send");
        let events = Arc::new(Mutex::new(Vec::new()));
        let states = Arc::new(Mutex::new(0));
        let reader = stream.try_clone().expect("clone");
        let (e, s) = (events.clone(), states.clone());
        std::thread::spawn(move || {
            let mut reader = BufReader::new(reader);
            let mut line = String::new();
            // The head, then chunks: a size line, data, CRLF.
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                line.clear();
            }
            let mut text = String::new();
            loop {
                line.clear();
                if !reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    return;
                }
                let Ok(size) = usize::from_str_radix(line.trim(), 16) else {
                    continue;
                };
                let mut chunk = vec![0; size + 2];
                if reader.read_exact(&mut chunk).is_err() || size == 0 {
                    return;
                }
                text.push_str(&String::from_utf8_lossy(&chunk[..size]));
                while let Some(end) = text.find("\n\n") {
                    let message: String = text.drain(..end + 2).collect();
                    let kind = message.lines().find_map(|l| l.strip_prefix("event: "));
                    let data: String = message
                        .lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .collect();
                    match kind {
                        Some("event") => e
                            .lock()
                            .unwrap()
                            .push(serde_json::from_str(&data).expect("event is JSON")),
                        Some("state") => *s.lock().unwrap() += 1,
                        _ => {}
                    }
                }
            }
        });
        StreamClient {
            events,
            states,
            stream,
        }
    }

    /// Waits up to `seconds` for an event of `kind` that `check` accepts.
    fn wait_event(&self, seconds: u64, kind: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        loop {
            if let Some(event) = self
                .events
                .lock()
                .unwrap()
                .iter()
                .find(|e| e["kind"] == kind && check(e))
            {
                return event.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {kind} event streamed within {seconds} s: {:?}",
                self.events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn healthy(state: &Value) -> bool {
    state["nodes"]
        .as_array()
        .is_some_and(|nodes| nodes.len() == 4 && nodes.iter().all(|n| n["answering"] == true))
        && state["height"].as_u64().unwrap_or(0) > 0
        && state["primary"].is_u64()
        && state["changing_view"] == false
}

/// The killed primary `killed` is down, and the honest nodes have
/// installed a view above `view` (the one it led) under another primary.
fn after_kill(state: &Value, killed: u64, view: u64) -> bool {
    role(state, killed) == "down"
        && state["view"].as_u64() > Some(view)
        && state["changing_view"] == false
        && state["primary"].as_u64() != Some(killed)
}

fn role(state: &Value, id: u64) -> String {
    state["nodes"][id as usize]["role"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The JSON the page reads describes the testnet; a kill and a partition
/// sent through the control API run the `bftnet` commands they echo,
/// reach every open page as events, and show in the node and link state;
/// a command typed in another shell shows too.
#[test]
fn dashboard_api_drives_a_kill_and_a_partition() {
    let _serial = serial();
    let started = Instant::now();
    let up = Up::start("api");
    let dir = up.dir_flag();
    assert!(up.get("/").contains("<title>bftd testnet</title>"));
    assert!(up.get("/app.js").contains("EventSource"));
    let state = up.settled();
    assert_eq!(
        (state["n"].as_u64(), state["quorum"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(state["network"]["links"].as_array().map(Vec::len), Some(12));
    assert!(
        up.events().iter().any(|e| e["kind"] == "up"),
        "{:?}",
        up.events()
    );

    let stream = StreamClient::connect(&up.address);
    // The stream starts with the backlog.
    stream.wait_event(5, "up", |_| true);

    // Controls refuse what a foreign page could send.
    let (code, _) = http(&up.address, "POST", "/api/control", None);
    assert_eq!(code, 403);

    // The primary now (a fresh testnet may have changed views already).
    let state = up.wait_state(10, "a healthy testnet", healthy);
    let primary = state["primary"].as_u64().unwrap();
    let view = state["view"].as_u64().unwrap();
    assert_eq!(role(&state, primary), "primary");
    let reply = up.control(&format!("{{\"action\": \"kill\", \"node\": {primary}}}"));
    assert_eq!(reply["command"], format!("bftnet kill{dir} {primary}"));
    let kill = stream.wait_event(5, "kill", |e| e["nodes"][0] == primary);
    assert_eq!(kill["command"], reply["command"]);
    let state = up.wait_state(40, "a new view after the kill", |s| {
        after_kill(s, primary, view)
    });
    assert!(state["lessons"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["concept"] == "fail-stop"));
    // A testnet may change views once while starting: look after the kill.
    let later = |e: &Value| e["seq"].as_u64() > kill["seq"].as_u64();
    stream.wait_event(5, "view-change", later);
    let new_view = stream.wait_event(5, "new-view", |e| {
        later(e) && e["nodes"][0].as_u64() != Some(primary)
    });
    assert!(new_view["detail"]
        .as_str()
        .unwrap()
        .contains("is the primary"));
    assert!(
        !stream
            .events
            .lock()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "node-lost"),
        "the kill was reported as a crash"
    );

    let reply = up.control("{\"action\": \"partition\", \"spec\": \"0,1/2,3\"}");
    assert_eq!(reply["command"], format!("bftnet partition{dir} 0,1/2,3"));
    stream.wait_event(5, "partition", |e| e["command"] == reply["command"]);
    let state = up.wait_state(5, "the partition in the state", |s| {
        s["network"]["partition"] == "0,1/2,3"
    });
    let cut = state["network"]["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["cut"] == true)
        .count();
    assert_eq!(cut, 8, "{}", state["network"]);
    assert!(state["lessons"].as_array().unwrap().iter().any(
        |l| l["concept"] == "partition" && l["text"].as_str().unwrap().contains("commits stop")
    ));

    // A command from another shell reaches the page through events.jsonl.
    up.net.ok("heal", &[]);
    stream.wait_event(5, "heal", |e| e["command"] == format!("bftnet heal{dir}"));
    up.wait_state(5, "no partition", |s| s["network"]["partition"].is_null());
    assert!(
        *stream.states.lock().unwrap() >= 3,
        "state pushed each poll"
    );
    let log = std::fs::read_to_string(up.net.dir.join("events.jsonl")).expect("events.jsonl");
    for kind in ["\"up\"", "\"kill\"", "\"partition\"", "\"heal\""] {
        assert!(log.contains(kind), "{kind} not in events.jsonl:\n{log}");
    }
    eprintln!(
        "dashboard API test: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The Chromium binary, if one is installed (`$CHROMIUM` instead, if set).
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        // Set but not a file (`CHROMIUM=`): skip, as without one.
        return Some(PathBuf::from(path)).filter(|path| path.is_file());
    }
    let path = std::env::var_os("PATH")?;
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|name| std::env::split_paths(&path).map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Loads the page in headless Chromium; returns the rendered DOM, and
/// writes a screenshot to `screenshot` if given. The page polls
/// (`?poll=`): headless Chromium's virtual clock stops while a stream is
/// open, and the test needs the clock to run until data has arrived.
fn browse(chromium: &PathBuf, address: &str, screenshot: Option<&PathBuf>) -> String {
    let profile = std::env::temp_dir().join(format!("bftnet-chromium-{}", std::process::id()));
    let mut command = Command::new(chromium);
    command.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=4000",
        "--window-size=1400,960",
    ]);
    command.arg(format!("--user-data-dir={}", profile.display()));
    match screenshot {
        Some(path) => command.arg(format!("--screenshot={}", path.display())),
        None => command.arg("--dump-dom"),
    };
    command.arg(format!("http://{address}/?poll=500"));
    let output = common::run_bounded(command, Duration::from_secs(60));
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn count(dom: &str, needle: &str) -> usize {
    dom.matches(needle).count()
}

/// In a real browser the page renders live data: 4 node cards, one
/// primary, and after the primary is killed, that node down, another
/// primary, and the view change on the timeline. Screenshots of a view
/// change and of a partition go to $BFTNET_SCREENSHOTS (docs/img for the
/// README), or a temporary directory.
#[test]
fn dashboard_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        // Straight to stderr, not `eprintln!`: the harness captures the
        // macros' output of passing tests, and a skip must be seen.
        let _ = writeln!(
            std::io::stderr(),
            "dashboard_renders_in_headless_chromium: SKIPPED (no chromium binary: apt-get install chromium, or set CHROMIUM)"
        );
        return;
    };
    let _serial = serial();
    let started = Instant::now();
    let shots = std::env::var_os("BFTNET_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("bftnet-shots-{}", std::process::id()))
        });
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let up = Up::start("browser");
    up.settled();
    let dom = browse(&chromium, &up.address, None);
    assert_eq!(count(&dom, "data-role=\""), 4, "{dom}");
    assert_eq!(count(&dom, "data-role=\"primary\""), 1, "{dom}");
    assert!(dom.contains("data-kind=\"up\""), "{dom}");

    // The primary now (a fresh testnet may have changed views already).
    let state = up.wait_state(10, "a healthy testnet", healthy);
    let primary = state["primary"].as_u64().unwrap();
    let view = state["view"].as_u64().unwrap();

    up.control(&format!("{{\"action\": \"kill\", \"node\": {primary}}}"));
    let state = up.wait_state(40, "a new view after the kill", |s| {
        after_kill(s, primary, view)
    });
    assert_ne!(state["primary"].as_u64(), Some(primary));
    let dom = browse(&chromium, &up.address, None);
    // Views may move on between the wait and the page: whichever view it
    // shows, the killed node is down and another one leads.
    assert!(
        dom.contains(&format!("data-id=\"{primary}\" data-role=\"down\"")),
        "{dom}"
    );
    assert_eq!(count(&dom, "data-role=\"primary\""), 1, "{dom}");
    assert!(dom.contains("data-kind=\"view-change\""), "{dom}");
    assert!(dom.contains("data-kind=\"new-view\""), "{dom}");
    assert!(dom.contains("data-kind=\"kill\""), "{dom}");
    let view_change = shots.join("dashboard-view-change.png");
    browse(&chromium, &up.address, Some(&view_change));

    // Back to four nodes, then a partition no side survives.
    up.control(&format!("{{\"action\": \"restart\", \"node\": {primary}}}"));
    up.control("{\"action\": \"partition\", \"spec\": \"0,1/2,3\"}");
    // Let the charts show commits stopping.
    std::thread::sleep(Duration::from_secs(4));
    let dom = browse(&chromium, &up.address, None);
    assert!(count(&dom, "class=\"link cut\"") == 4, "{dom}");
    assert!(dom.contains("data-concept=\"partition\""), "{dom}");
    let partition = shots.join("dashboard-partition.png");
    browse(&chromium, &up.address, Some(&partition));
    for shot in [&view_change, &partition] {
        let bytes = std::fs::metadata(shot).map_or(0, |m| m.len());
        assert!(bytes > 10_000, "{} is {bytes} bytes", shot.display());
    }
    eprintln!(
        "browser test: {:.1} s; screenshots in {}",
        started.elapsed().as_secs_f64(),
        shots.display()
    );
}
