//! The testnet's event log, `DIR/events.jsonl`: one JSON object per line,
//! appended by every `bftnet` command that changes the testnet (`up`,
//! `down`, `kill`, `restart`, `partition`, `heal`) and by the dashboard's
//! load control, with the equivalent command line.
//!
//! A file rather than a channel inside `bftnet up`, because those commands
//! run as other processes: a `bftnet kill 0` typed in another shell, or a
//! scenario runner calling the same command functions, must show on the
//! dashboard of the `bftnet up` that serves it. The dashboard tails the file
//! ([`EventTail`]); anyone else can (`tail -f DIR/events.jsonl | jq`).
//!
//! Each line is written with one `write` on a file opened for appending,
//! so lines from concurrent writers do not interleave (they are far below
//! the size at which a local file system would split an append).

use super::layout::Layout;
use serde::{Deserialize, Serialize};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

/// The log's file name in the testnet directory.
pub const EVENTS_FILE: &str = "events.jsonl";

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EventKind {
    /// `bftnet up` started (or brought back) the testnet.
    Up,
    /// The testnet's processes were stopped.
    Down,
    /// A node was SIGKILLed.
    Kill,
    /// A node was (re)started, perhaps as another behaviour.
    Restart,
    /// Links were cut at the fault proxy.
    Partition,
    /// The partition was removed.
    Heal,
    /// Extra load started.
    LoadStarted,
    /// Extra load stopped.
    LoadStopped,
    /// A node began to suspect the primary (seen in its metrics).
    Suspicion,
    /// Honest nodes started moving to a new view.
    ViewChange,
    /// A new view was installed: a new primary leads.
    NewView,
    /// A node holds new evidence of equivocation.
    Evidence,
    /// A node fetched blocks from its peers (state transfer).
    StateTransfer,
    /// A higher checkpoint became stable.
    Checkpoint,
    /// A node stopped without any bftnet command saying so (a crash).
    NodeLost,
    /// A kind this version does not know (written by a newer bftnet).
    #[serde(other)]
    Other,
}

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
    /// The nodes concerned (empty: the whole testnet).
    #[serde(default)]
    pub nodes: Vec<u16>,
    /// The `bftnet` command line that does this (none for what the nodes
    /// did on their own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// One sentence for people.
    #[serde(default)]
    pub detail: String,
}

impl Event {
    /// An event that happens now.
    pub fn now(kind: EventKind, nodes: Vec<u16>, command: Option<String>, detail: String) -> Event {
        Event {
            at_ms: now_ms(),
            kind,
            nodes,
            command,
            detail,
        }
    }
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

/// The log of the testnet in `layout`.
pub fn path(layout: &Layout) -> PathBuf {
    layout.dir.join(EVENTS_FILE)
}

/// Appends `event` to the testnet's log. A failure is reported on standard
/// error and otherwise ignored: the command it records has happened (or is
/// about to) whether or not the log says so.
pub fn record(layout: &Layout, event: &Event) {
    let path = path(layout);
    let Ok(mut line) = serde_json::to_string(event) else {
        return;
    };
    line.push('\n');
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(error) = written {
        super::launch::say(&format!(
            "warning: cannot append to {}: {error}",
            path.display()
        ));
    }
}

/// Records an event a `bftnet` command caused, now: a shorthand for the
/// command functions.
pub fn command(layout: &Layout, kind: EventKind, nodes: Vec<u16>, command: String, detail: String) {
    record(layout, &Event::now(kind, nodes, Some(command), detail));
}

/// Splits `buffer` into the events of its complete lines; returns them and
/// how many bytes those lines took (a partial last line is left for the
/// next read). Lines that do not parse are skipped: the log is a
/// convenience, and one bad line must not hide the rest.
pub fn parse_lines(buffer: &[u8]) -> (Vec<Event>, usize) {
    let Some(end) = buffer.iter().rposition(|&b| b == b'\n') else {
        return (Vec::new(), 0);
    };
    let complete = buffer.get(..=end).unwrap_or_default();
    let events = complete
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .filter_map(|line| serde_json::from_slice(line).ok())
        .collect();
    (events, end + 1)
}

/// Reads what is appended to a log, from where it last stopped.
#[derive(Debug)]
pub struct EventTail {
    path: PathBuf,
    offset: u64,
}

/// The most one read takes from the log (a huge log is read in steps).
const MAX_READ: u64 = 1 << 20;

impl EventTail {
    /// Tails the log at `path` from its beginning.
    pub fn new(path: PathBuf) -> EventTail {
        EventTail { path, offset: 0 }
    }

    /// The events appended since the last call. A log that shrank
    /// (`bftnet down --clean`, then a new testnet) is read again from its
    /// start.
    pub fn read_new(&mut self) -> Vec<Event> {
        let Ok(mut file) = std::fs::File::open(&self.path) else {
            self.offset = 0;
            return Vec::new();
        };
        let length = file.metadata().map_or(0, |meta| meta.len());
        if length < self.offset {
            self.offset = 0;
        }
        if length == self.offset || file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buffer = Vec::new();
        if file.take(MAX_READ).read_to_end(&mut buffer).is_err() {
            return Vec::new();
        }
        let (events, used) = parse_lines(&buffer);
        self.offset += used as u64;
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, nodes: Vec<u16>) -> Event {
        Event {
            at_ms: 5,
            kind,
            nodes,
            command: Some("bftnet kill 0".into()),
            detail: "d".into(),
        }
    }

    /// Complete lines become events, a partial last line waits for the
    /// next read, a bad line is skipped, an unknown kind still reads.
    #[test]
    fn lines_parse_and_partial_lines_wait() {
        let one = serde_json::to_string(&event(EventKind::Kill, vec![0])).unwrap();
        let two = serde_json::to_string(&event(EventKind::Heal, vec![])).unwrap();
        let text = format!("{one}\nnot json\n{{\"at_ms\":1,\"kind\":\"scenario-step\"}}\n{two}");
        let (events, used) = parse_lines(text.as_bytes());
        assert_eq!(events.len(), 2);
        assert_eq!(events[0], event(EventKind::Kill, vec![0]));
        assert_eq!(events[1].kind, EventKind::Other);
        assert_eq!(&text.as_bytes()[used..], two.as_bytes());
        assert_eq!(parse_lines(b"{\"at_ms\":1"), (Vec::new(), 0));
    }

    /// The tail returns each appended event once, across appends, and
    /// starts over on a log that was replaced by a shorter one.
    #[test]
    fn tail_reads_each_event_once() {
        let dir = std::env::temp_dir().join(format!("bftnet-events-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let layout = Layout::new(&dir);
        let mut tail = EventTail::new(path(&layout));
        assert!(tail.read_new().is_empty());
        record(&layout, &event(EventKind::Kill, vec![0]));
        record(&layout, &event(EventKind::Restart, vec![0]));
        assert_eq!(tail.read_new().len(), 2);
        assert!(tail.read_new().is_empty());
        record(&layout, &event(EventKind::Partition, vec![0, 1]));
        assert_eq!(tail.read_new()[0].kind, EventKind::Partition);
        std::fs::remove_file(path(&layout)).unwrap();
        record(&layout, &event(EventKind::Up, vec![]));
        assert_eq!(tail.read_new()[0].kind, EventKind::Up);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
