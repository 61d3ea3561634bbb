//! The live dashboard `bftnet up` serves on 127.0.0.1: a page that shows
//! the nodes, the links between them, commit rate and latency, and a
//! timeline of events, with controls that run the `bftnet` commands.
//!
//! A thin shell around [`model`] (where every rule lives, unit-tested):
//! once a second it asks every running node for `/status` and `/metrics`
//! (and `/evidence` when a node's evidence count changed), reads what was
//! appended to the testnet's event log (`events.jsonl`, see
//! [`super::events`]), hands both to the [`model::Tracker`], and pushes
//! the resulting state and events to every open page over server-sent
//! events.
//!
//! HTTP API (what the page reads; also handy with curl):
//! - `GET /api/state`: the page state (nodes, links, series, lessons);
//! - `GET /api/events`: every event kept, oldest first;
//! - `GET /api/stream`: server-sent events, `state` (the page state, each
//!   poll) and `event` (one event; the backlog first);
//! - `POST /api/control` with a JSON body `{"action": "kill", "node": 0}`
//!   (actions `kill`, `restart` with optional `behaviour`, `partition` with
//!   `spec`, `heal`, `load-start` with `rate`, `load-stop`): runs the
//!   equivalent `bftnet` command and answers `{command, ok, output}`.

pub mod model;

use super::error::NetError;
use super::events::{self, EventKind, EventTail};
use super::launch::{find_bftnet, http_get, node_alive, proxy_alive};
use super::layout::{read_faults, Layout, State};
use super::load::{self, Load, LoadOptions};
use axum::extract::State as Extract;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use bftd::config::Cluster;
use futures_util::stream::{self, Stream, StreamExt};
use model::{NodeSample, Tracker};
use serde::{Deserialize, Serialize};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// The port the dashboard tries first, so its address stays the same
/// from one run to the next (bookmarks, a browser tab left open).
pub const DEFAULT_PORT: u16 = 7300;
/// How often the nodes are asked.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How long a node may take to answer one poll.
const POLL_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a control's `bftnet` command may take (a restart waits for
/// the node to be healthy, 30 s at most).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

/// A running dashboard; dropping it stops serving.
#[derive(Debug)]
pub struct Dashboard {
    /// Its address, `http://127.0.0.1:PORT/`.
    pub url: String,
    /// Why it is not on the port asked for, if it is not.
    pub note: Option<String>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dashboard {
    /// Its URL, and why it is not on the port asked for if it is not.
    pub fn location(&self) -> String {
        match &self.note {
            Some(note) => format!("{} ({note})", self.url),
            None => self.url.clone(),
        }
    }
}

impl Drop for Dashboard {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the server shares between the poller and the handlers.
#[derive(Debug)]
struct Shared {
    layout: Layout,
    /// `" --dir DIR"`, or "" for the default directory, for echoed commands.
    dir_flag: String,
    bftnet: PathBuf,
    tracker: Mutex<Tracker>,
    page: Mutex<Arc<String>>,
    updates: broadcast::Sender<Update>,
    extra_load: tokio::sync::Mutex<Option<(f64, Load)>>,
    load_rate: Mutex<Option<f64>>,
}

/// What the poller pushes to open pages.
#[derive(Clone, Debug)]
enum Update {
    State(Arc<String>),
    Event(Arc<String>),
}

impl Update {
    fn sse(&self) -> SseEvent {
        match self {
            Update::State(json) => SseEvent::default().event("state").data(json.as_str()),
            Update::Event(json) => SseEvent::default().event("event").data(json.as_str()),
        }
    }
}

/// Serves the dashboard of the testnet in `layout`: on `port`, or with
/// `None` on [`DEFAULT_PORT`], or any free port if that one is taken.
pub async fn start(layout: &Layout, port: Option<u16>) -> Result<Dashboard, NetError> {
    let bind = |port: u16| tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)));
    let (listener, note) = match port {
        Some(port) => (
            bind(port).await.map_err(|error| NetError::BadArgument {
                flag: "--ui-port",
                value: port.to_string(),
                reason: format!("cannot listen on 127.0.0.1:{port}: {error}"),
            })?,
            None,
        ),
        None => match bind(DEFAULT_PORT).await {
            Ok(listener) => (listener, None),
            Err(error) => (
                bind(0)
                    .await
                    .map_err(NetError::io("listen on", &layout.dir))?,
                Some(format!(
                    "port {DEFAULT_PORT} is taken ({error}), so a free one; --ui-port picks one"
                )),
            ),
        },
    };
    let address = listener
        .local_addr()
        .map_err(NetError::io("listen on", &layout.dir))?;
    let default = Layout::new(std::path::Path::new("testnet-data"));
    let shared = Arc::new(Shared {
        layout: layout.clone(),
        dir_flag: if layout.dir == default.dir {
            String::new()
        } else {
            format!(" --dir {}", layout.dir.display())
        },
        bftnet: find_bftnet()?,
        tracker: Mutex::new(Tracker::default()),
        page: Mutex::new(Arc::new("{}".into())),
        updates: broadcast::channel(256).0,
        extra_load: tokio::sync::Mutex::new(None),
        load_rate: Mutex::new(None),
    });
    let router = Router::new()
        .route(
            "/",
            get(|| async { Html(include_str!("../../../ui/index.html")) }),
        )
        .route(
            "/app.js",
            get(|| async { asset("text/javascript", include_str!("../../../ui/app.js")) }),
        )
        .route(
            "/style.css",
            get(|| async { asset("text/css", include_str!("../../../ui/style.css")) }),
        )
        .route("/api/state", get(state_handler))
        .route("/api/events", get(events_handler))
        .route("/api/stream", get(stream_handler))
        .route("/api/control", post(control_handler))
        .with_state(shared.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let poller = tokio::spawn(poll_loop(shared));
    Ok(Dashboard {
        url: format!("http://{address}/"),
        note,
        tasks: vec![server, poller],
    })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn state_handler(Extract(shared): Extract<Arc<Shared>>) -> Response {
    let page = lock(&shared.page).clone();
    json_response(StatusCode::OK, page.as_str().to_owned())
}

async fn events_handler(Extract(shared): Extract<Arc<Shared>>) -> Response {
    let events: Vec<model::Numbered> = lock(&shared.tracker).events().cloned().collect();
    json_response(
        StatusCode::OK,
        serde_json::to_string(&events).unwrap_or_default(),
    )
}

async fn stream_handler(
    Extract(shared): Extract<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    // Subscribe before taking the backlog: an event may then come twice
    // (the page keeps one per `seq`), but none is lost in between.
    let receiver = shared.updates.subscribe();
    let mut first = vec![Update::State(lock(&shared.page).clone())];
    first.extend(
        lock(&shared.tracker)
            .events()
            .filter_map(|event| serde_json::to_string(event).ok())
            .map(|json| Update::Event(Arc::new(json))),
    );
    let live = stream::unfold(receiver, |mut receiver| async move {
        loop {
            match receiver.recv().await {
                Ok(update) => return Some((update, receiver)),
                // A slow page misses some states; the next one is whole.
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    let updates = stream::iter(first)
        .chain(live)
        .map(|update| Ok(update.sse()));
    Sse::new(updates).keep_alive(KeepAlive::default())
}

/// A control request from the page.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ControlRequest {
    /// `kill`, `restart`, `partition`, `heal`, `load-start` or `load-stop`.
    pub action: String,
    /// The node (`kill`, `restart`).
    #[serde(default)]
    pub node: Option<u16>,
    /// `restart`: a behaviour, or `honest`; none keeps the node's.
    #[serde(default)]
    pub behaviour: Option<String>,
    /// `partition`: as `bftnet partition` takes it.
    #[serde(default)]
    pub spec: Option<String>,
    /// `load-start`: requests per second.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// What a control does.
#[derive(Clone, Debug, PartialEq)]
pub enum Control {
    /// Run `bftnet` with these arguments (`--dir` added).
    Command {
        /// The subcommand and its arguments.
        args: Vec<String>,
    },
    /// Start extra load in this process.
    LoadStart {
        /// Requests per second.
        rate: f64,
    },
    /// Stop it.
    LoadStop,
}

/// The answer to a control request.
#[derive(Clone, Debug, Serialize)]
pub struct ControlReply {
    /// The equivalent command line.
    pub command: String,
    /// Whether it worked.
    pub ok: bool,
    /// What it printed.
    pub output: String,
}

/// Checks a control request against a testnet of `n` nodes and turns it
/// into what to do. Arguments go to `bftnet` as separate words, never
/// through a shell.
pub fn control(request: &ControlRequest, n: usize) -> Result<Control, String> {
    let node = || match request.node {
        Some(id) if usize::from(id) < n => Ok(id.to_string()),
        Some(id) => Err(format!(
            "node {id} does not exist (nodes are 0..={})",
            n.saturating_sub(1)
        )),
        None => Err("which node? (\"node\": ID)".to_string()),
    };
    let command = |args: Vec<String>| Ok(Control::Command { args });
    match request.action.as_str() {
        "kill" => command(vec!["kill".into(), node()?]),
        "restart" => {
            let mut args = vec!["restart".into(), node()?];
            match request.behaviour.as_deref().map(str::trim) {
                None | Some("") => {}
                Some("honest") => args.push("--honest".into()),
                Some(behaviour) => {
                    behaviour
                        .parse::<bftd_protocol::byzantine::Behaviour>()
                        .map_err(|error| error.to_string())?;
                    args.extend(["--byzantine".into(), behaviour.to_string()]);
                }
            }
            command(args)
        }
        "partition" => {
            let spec = request.spec.as_deref().unwrap_or_default().replace(' ', "");
            super::proxy::parse_partition(&spec, n)?;
            command(vec!["partition".into(), spec])
        }
        "heal" => command(vec!["heal".into()]),
        "load-start" => match request.rate {
            Some(rate) if rate > 0.0 && rate <= 100_000.0 => Ok(Control::LoadStart { rate }),
            _ => Err("a rate of 1 to 100000 requests per second".into()),
        },
        "load-stop" => Ok(Control::LoadStop),
        other => Err(format!("unknown action `{other}`")),
    }
}

/// The command line a control echoes.
pub fn echo(control: &Control, dir_flag: &str) -> String {
    match control {
        Control::Command { args } => {
            let (sub, rest) = args
                .split_first()
                .map_or(("", &[][..]), |(s, r)| (s.as_str(), r));
            let mut line = format!("bftnet {sub}{dir_flag}");
            for arg in rest {
                line.push(' ');
                line.push_str(arg);
            }
            line
        }
        Control::LoadStart { rate } => {
            format!("bftnet load{dir_flag} --rate {rate} --duration 10m")
        }
        Control::LoadStop => "Ctrl-C the `bftnet load` above".into(),
    }
}

/// Whether a request may run controls: its `Host` (and `Origin`, if any)
/// is this loopback server, and it says it sends JSON. A web page from
/// elsewhere cannot send that content type without a CORS preflight this
/// server never approves, and a rebound DNS name fails the `Host` check.
pub fn trusted(headers: &HeaderMap) -> bool {
    let local = |value: &str| {
        let host = value
            .trim_start_matches("http://")
            .split(':')
            .next()
            .unwrap_or_default();
        matches!(host, "127.0.0.1" | "localhost")
    };
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    text(header::HOST).is_some_and(local)
        && text(header::ORIGIN).is_none_or(local)
        && text(header::CONTENT_TYPE).is_some_and(|t| t.starts_with("application/json"))
}

async fn control_handler(
    Extract(shared): Extract<Arc<Shared>>,
    headers: HeaderMap,
    body: String,
) -> Response {
    let reply = |status, reply: ControlReply| {
        json_response(status, serde_json::to_string(&reply).unwrap_or_default())
    };
    if !trusted(&headers) {
        return reply(
            StatusCode::FORBIDDEN,
            ControlReply {
                command: String::new(),
                ok: false,
                output: "controls take JSON from the dashboard's own page only".into(),
            },
        );
    }
    let n = State::load(&shared.layout).map_or(0, |state| state.n);
    let parsed = serde_json::from_str::<ControlRequest>(&body)
        .map_err(|error| error.to_string())
        .and_then(|request| control(&request, n));
    let control = match parsed {
        Ok(control) => control,
        Err(output) => {
            return reply(
                StatusCode::BAD_REQUEST,
                ControlReply {
                    command: String::new(),
                    ok: false,
                    output,
                },
            )
        }
    };
    let command = echo(&control, &shared.dir_flag);
    let (ok, output) = match control {
        Control::Command { args } => run_bftnet(&shared, &args).await,
        Control::LoadStart { rate } => start_load(&shared, rate, &command).await,
        Control::LoadStop => stop_load(&shared).await,
    };
    reply(
        StatusCode::OK,
        ControlReply {
            command,
            ok,
            output,
        },
    )
}

/// Runs `bftnet ARGS --dir DIR` (the command records its own event).
async fn run_bftnet(shared: &Shared, args: &[String]) -> (bool, String) {
    let mut command = tokio::process::Command::new(&shared.bftnet);
    command
        .args(args)
        .arg("--dir")
        .arg(&shared.layout.dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match tokio::time::timeout(CONTROL_TIMEOUT, command.output()).await {
        Ok(Ok(output)) => {
            let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&output.stderr));
            (output.status.success(), text.trim().to_owned())
        }
        Ok(Err(error)) => (
            false,
            format!("cannot run {}: {error}", shared.bftnet.display()),
        ),
        Err(_) => (
            false,
            format!("no answer within {} s", CONTROL_TIMEOUT.as_secs()),
        ),
    }
}

async fn start_load(shared: &Shared, rate: f64, command: &str) -> (bool, String) {
    let mut extra = shared.extra_load.lock().await;
    if let Some((running, _)) = &*extra {
        return (
            false,
            format!("a load of {running} tx/s already runs: stop it first"),
        );
    }
    let layout = &shared.layout;
    let (Ok(state), Ok(cluster)) = (State::load(layout), Cluster::load(&layout.cluster())) else {
        return (false, "cannot read the testnet's files".into());
    };
    let targets: Vec<u16> = state
        .nodes
        .iter()
        .filter(|node| node.honest() && node_alive(layout, &state, node.id))
        .map(|node| node.id)
        .collect();
    let options = LoadOptions {
        rate,
        duration: None,
        size: 128,
        clients_per_node: 1,
        ..LoadOptions::default()
    };
    match load::start(&cluster, &targets, options).await {
        Ok(load) => {
            *extra = Some((rate, load));
            *lock(&shared.load_rate) = Some(rate);
            events::command(
                layout,
                EventKind::LoadStarted,
                targets.clone(),
                command.to_owned(),
                format!("{rate} tx/s offered through {}", model_list(&targets)),
            );
            (
                true,
                format!("offering {rate} tx/s through {}", model_list(&targets)),
            )
        }
        Err(error) => (false, format!("cannot start the load: {error}")),
    }
}

async fn stop_load(shared: &Shared) -> (bool, String) {
    let Some((rate, load)) = shared.extra_load.lock().await.take() else {
        return (false, "no load started here runs".into());
    };
    *lock(&shared.load_rate) = None;
    load.stop();
    let report = load.finish().await;
    let summary = report.summary();
    events::command(
        &shared.layout,
        EventKind::LoadStopped,
        Vec::new(),
        "Ctrl-C the `bftnet load`".into(),
        format!(
            "the {rate} tx/s load stopped: {}",
            summary.lines().next().unwrap_or_default()
        ),
    );
    (true, summary)
}

fn model_list(ids: &[u16]) -> String {
    super::live::nodes_list(ids)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Asks the nodes, reads the event log, updates the tracker and the pages,
/// once per [`POLL_INTERVAL`], until aborted.
async fn poll_loop(shared: Arc<Shared>) {
    let mut tail = EventTail::new(events::path(&shared.layout));
    let mut ticker = tokio::time::interval(POLL_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Ok(state) = State::load(&shared.layout) else {
            continue;
        };
        let previous = lock(&shared.tracker).previous().to_vec();
        let samples = sample(&shared.layout, &state, &previous).await;
        // After the poll: a command records its event before it acts, so
        // a change this poll saw is explained by a line already written.
        let logged = tail.read_new();
        let faults = read_faults(&shared.layout);
        let proxy_running = proxy_alive(&shared.layout, &state);
        let load_rate = *lock(&shared.load_rate);
        let mut updates = Vec::new();
        let page = {
            let mut tracker = lock(&shared.tracker);
            for event in logged {
                updates.push(numbered_update(tracker.push(event)));
            }
            let derived = tracker.observe(events::now_ms(), samples.clone());
            for event in derived {
                updates.push(numbered_update(tracker.push(event)));
            }
            let page = model::page(
                &model::PageInput {
                    state: &state,
                    samples: &samples,
                    faults: &faults,
                    proxy_running,
                    extra_load: load_rate,
                },
                &tracker,
            );
            Arc::new(serde_json::to_string(&page).unwrap_or_default())
        };
        *lock(&shared.page) = page.clone();
        updates.push(Update::State(page));
        for update in updates {
            // No page open: nobody to tell.
            let _ = shared.updates.send(update);
        }
    }
}

fn numbered_update(numbered: model::Numbered) -> Update {
    Update::Event(Arc::new(
        serde_json::to_string(&numbered).unwrap_or_default(),
    ))
}

/// Every node's sample, asked all at once.
async fn sample(layout: &Layout, state: &State, previous: &[NodeSample]) -> Vec<NodeSample> {
    let mut asks = tokio::task::JoinSet::new();
    for node in &state.nodes {
        let running = node_alive(layout, state, node.id);
        let address = node.metrics;
        let before = previous.iter().find(|p| p.id == node.id).cloned();
        let sample = NodeSample {
            id: node.id,
            running,
            behaviour: node.behaviour.clone().unwrap_or_else(|| "honest".into()),
            status: None,
            counters: None,
            culprits: before
                .as_ref()
                .map(|b| b.culprits.clone())
                .unwrap_or_default(),
        };
        asks.spawn(async move { ask(sample, address, before).await });
    }
    let mut samples = Vec::new();
    while let Some(Ok(sample)) = asks.join_next().await {
        samples.push(sample);
    }
    samples.sort_by_key(|sample| sample.id);
    samples
}

/// Fills in one node's `/status` and `/metrics`, and its `/evidence` when
/// its evidence count moved.
async fn ask(
    mut sample: NodeSample,
    address: SocketAddr,
    before: Option<NodeSample>,
) -> NodeSample {
    if !sample.running {
        return sample;
    }
    let (status, metrics) = tokio::join!(
        http_get(address, "/status", POLL_TIMEOUT),
        http_get(address, "/metrics", POLL_TIMEOUT)
    );
    if let Ok((200, body)) = status {
        sample.status = serde_json::from_str(&body).ok();
    }
    if let Ok((200, body)) = metrics {
        sample.counters = Some(model::parse_metrics(&body));
    }
    let evidence = sample.counters.as_ref().map_or(0.0, |c| c.evidence);
    let known = before.and_then(|b| b.counters).map_or(0.0, |c| c.evidence);
    if evidence > 0.0 && evidence != known {
        if let Ok((200, body)) = http_get(address, "/evidence", POLL_TIMEOUT).await {
            let entries: Vec<String> = serde_json::from_str(&body).unwrap_or_default();
            sample.culprits = model::culprits(&entries);
        }
    }
    sample
}

/// Starts the dashboard for `bftnet up` and prints where it is; on
/// failure says why and goes on without it (the testnet runs either way).
pub async fn announce(layout: &Layout, port: Option<u16>) -> Option<Dashboard> {
    match start(layout, port).await {
        Ok(dashboard) => {
            super::launch::say_out(&format!(
                "dashboard: {}  (live nodes, links, commits, timeline and controls; --no-ui turns it off)",
                dashboard.location()
            ));
            Some(dashboard)
        }
        Err(error) => {
            super::launch::say(&format!("warning: no dashboard: {error}"));
            None
        }
    }
}

/// `bftnet ui`: serves the dashboard of a testnet that runs without an
/// attached `bftnet up` (`up --detach`), until Ctrl-C.
pub async fn ui(dir: &std::path::Path, port: Option<u16>) -> Result<(), NetError> {
    let layout = Layout::new(dir);
    State::load(&layout)?;
    let dashboard = start(&layout, port).await?;
    super::launch::say_out(&format!(
        "dashboard of {}: {}  (Ctrl-C stops serving it; the testnet keeps running)",
        layout.dir.display(),
        dashboard.location()
    ));
    super::launch::shutdown_signal().await;
    drop(dashboard);
    Ok(())
}
