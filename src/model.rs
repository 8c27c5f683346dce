//! The domain: typed identifiers, state enums and the task record, shared by the store, the
//! runner, the events and the HTTP layer (none of which the model knows of).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// One of a command's two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// A task's identity: a UUID, printed in its hyphenated lower-case form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub Uuid);

impl TaskId {
    pub fn new() -> Self {
        TaskId(Uuid::new_v4())
    }
}

impl Default for TaskId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for TaskId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(TaskId)
    }
}

/// The lifecycle of a task (API.md section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    Received,
    Pending,
    Starting,
    Running,
    Finished,
    Failed,
    Cancelled,
    Expired,
}

impl TaskState {
    pub const ALL: [TaskState; 8] = [
        TaskState::Received,
        TaskState::Pending,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Finished,
        TaskState::Failed,
        TaskState::Cancelled,
        TaskState::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::Received => "RECEIVED",
            TaskState::Pending => "PENDING",
            TaskState::Starting => "STARTING",
            TaskState::Running => "RUNNING",
            TaskState::Finished => "FINISHED",
            TaskState::Failed => "FAILED",
            TaskState::Cancelled => "CANCELLED",
            TaskState::Expired => "EXPIRED",
        }
    }

    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Finished | TaskState::Failed | TaskState::Cancelled | TaskState::Expired
        )
    }

    /// A task that has not started may still be updated or cancelled without killing anything.
    pub fn is_queued(self) -> bool {
        matches!(self, TaskState::Received | TaskState::Pending)
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskState::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown state `{s}`"))
    }
}

/// The state of the container a task runs in, reported beside the task's own state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContainerState {
    Building,
    Ready,
    Removed,
}

impl ContainerState {
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Building => "building",
            ContainerState::Ready => "ready",
            ContainerState::Removed => "removed",
        }
    }
}

impl FromStr for ContainerState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "building" => Ok(ContainerState::Building),
            "ready" => Ok(ContainerState::Ready),
            "removed" => Ok(ContainerState::Removed),
            other => Err(format!("unknown container state `{other}`")),
        }
    }
}

/// Whether a task that asked for another task's container got it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Locality {
    Hit,
    Miss,
}

impl Locality {
    pub fn as_str(self) -> &'static str {
        match self {
            Locality::Hit => "hit",
            Locality::Miss => "miss",
        }
    }
}

/// Current time in the API's timestamp form: RFC 3339, UTC, milliseconds.
pub fn now_rfc3339() -> String {
    chrono::Utc::now()
        .format("%Y-%m-%dT%H:%M:%S%.3fZ")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_is_case_insensitive() {
        for st in TaskState::ALL {
            assert_eq!(st.as_str().parse::<TaskState>(), Ok(st));
        }
        assert_eq!("running".parse::<TaskState>(), Ok(TaskState::Running));
        assert!("DONE".parse::<TaskState>().is_err());
    }

    #[test]
    fn terminal_and_queued_are_disjoint() {
        for st in TaskState::ALL {
            assert!(!(st.is_terminal() && st.is_queued()), "{st}");
        }
        assert!(TaskState::Expired.is_terminal());
        assert!(TaskState::Pending.is_queued());
        assert!(!TaskState::Starting.is_queued());
    }

    #[test]
    fn task_id_parses_and_prints() {
        let id = TaskId::new();
        assert_eq!(id.to_string().parse::<TaskId>().ok(), Some(id));
        assert!("not-a-uuid".parse::<TaskId>().is_err());
    }
}

/// The task record (docs/api.rst, `The task record`), as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub task_name: String,
    pub state: TaskState,
    pub image: String,
    pub priority: i64,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub output_truncated: bool,
    pub error: Option<String>,
    pub container: Option<ContainerRef>,
    pub reused_container_of: Option<TaskId>,
    pub locality: Option<Locality>,
    pub spec: Value,
    /// An invocation's function (API.md section 5); absent for other tasks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionRef>,
    /// An invocation's answer, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// A pipeline's steps: the task id of each invocation, in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<TaskId>>,
    /// The Docker exec the task ran as (not shown in the API).
    #[serde(skip)]
    pub exec_id: Option<String>,
    /// Raw bytes of stdout and of stderr stored so far (a running task's output is stored as
    /// it comes; `stdout`/`stderr` are their text).
    #[serde(skip)]
    pub output_stored: (u64, u64),
}

/// The function version an invocation ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionRef {
    pub namespace: String,
    pub name: String,
    pub version: i64,
}

/// The container a task runs (or ran) in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRef {
    pub id: String,
    pub state: ContainerState,
}

/// How a task ended.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub exit_code: Option<i64>,
    pub stdout: String,
    pub stderr: String,
    pub output_truncated: bool,
    pub error: Option<String>,
}
